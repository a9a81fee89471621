# RFC 0108 "Basics": a container with the default network (veth, DHCPv4, IPv6 RA).
{
  networking.useNetworkd = true;
  nixos.containers.instances.demo = {
    network = { };
    system-config =
      { pkgs, ... }:
      {
        environment.systemPackages = [ pkgs.hello ];
      };
  };
}

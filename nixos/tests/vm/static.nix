# Static addresses (the migrator's translation of hostAddress/localAddress): the container is
# reachable at its containerPool address, the host at its hostAddresses, both families.
{ ... }:
{
  name = "nixos-nspawn-static";

  nodes.machine = {
    imports = [ ./common.nix ];
    nixos.containers.instances.static = {
      network.v4.static = {
        hostAddresses = [ "10.231.136.1/24" ];
        containerPool = [ "10.231.136.2/24" ];
      };
      network.v6.static = {
        hostAddresses = [ "fd42:ab::1/64" ];
        containerPool = [ "fd42:ab::2/64" ];
      };
      system-config = {
        services.nginx.enable = true;
        networking.firewall.allowedTCPPorts = [ 80 ];
      };
    };
  };

  testScript = ''
    machine.wait_for_unit("systemd-nspawn@static.service")
    machine.wait_until_succeeds("ip -4 addr show ve-static | grep -q 10.231.136.1/24")
    machine.wait_until_succeeds("ip -6 addr show ve-static | grep -q fd42:ab::1/64")
    machine.wait_until_succeeds("ping -c1 10.231.136.2")
    machine.wait_until_succeeds("ping -c1 fd42:ab::2")
    machine.wait_until_succeeds("curl -sf http://10.231.136.2/ >/dev/null")
    # The container's default route points at the host.
    machine.succeed("systemd-run -M static --wait --pipe -- ip -4 route | grep -q 'default via 10.231.136.1'")
    # No DHCP server on a statically addressed link.
    machine.fail("networkctl status ve-static | grep -q 'DHCP4 server'")
  '';
}

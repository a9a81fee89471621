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
    ${builtins.readFile ./helpers.py}

    wait_for_container(machine, "static")
    machine.wait_until_succeeds("ip -4 addr show ve-static | grep -q 10.231.136.1/24")
    machine.wait_until_succeeds("ip -6 addr show ve-static | grep -q fd42:ab::1/64")
    machine.wait_until_succeeds("ping -c1 10.231.136.2")
    machine.wait_until_succeeds("ping -c1 fd42:ab::2")
    machine.wait_until_succeeds("curl -sf http://10.231.136.2/ >/dev/null")
    # The container's default route points at the host.
    inside(machine, "static", "ip -4 route | grep -q 'default via 10.231.136.1'")
    inside(machine, "static", "ip -6 route | grep -q 'default via fd42:ab::1'")
  '';
}

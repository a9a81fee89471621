# RFC 0108 zones: two containers on the bridge vz-demo reach each other; no ve-* links.
{ ... }:
{
  name = "nixos-nspawn-zone";

  nodes.machine = {
    imports = [ ./common.nix ];
    nixos.containers.zones.demo = { };
    nixos.containers.instances = {
      test1.network.zone = "demo";
      test2.network.zone = "demo";
    };
  };

  testScript = ''
    ${builtins.readFile ./helpers.py}

    wait_for_container(machine, "test1")
    wait_for_container(machine, "test2")
    machine.wait_until_succeeds("networkctl status vz-demo | grep -q '20-vz-demo.network'")
    machine.succeed("ip link show vz-demo")
    machine.fail("ip link show ve-test1")
    machine.succeed("ip link show vb-test1 | grep -q 'master vz-demo'")

    for c in ["test1", "test2"]:
        inside_eventually(machine, c, "ip -4 addr show host0 | grep -q inet")

    # Container to container over the zone, by the address the other got from the zone's DHCP.
    addr = inside(machine, "test2", "ip -4 -o addr show host0 | awk '{print $4}' | cut -d/ -f1").strip()
    inside_eventually(machine, "test1", f"ping -c1 {addr}")
    machine.wait_until_succeeds("ping -4 -c1 test2")
  '';
}

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
    machine.wait_for_unit("systemd-nspawn@test1.service")
    machine.wait_for_unit("systemd-nspawn@test2.service")
    machine.wait_until_succeeds("networkctl status vz-demo | grep -q '20-vz-demo.network'")
    machine.succeed("ip link show vz-demo")
    machine.fail("ip link show ve-test1")
    machine.succeed("ip link show vb-test1 | grep -q 'master vz-demo'")

    for c in ["test1", "test2"]:
        machine.wait_until_succeeds(f"systemd-run -M {c} --wait --pipe -- ip -4 addr show host0 | grep -q inet")

    # Container to container over the zone, by the address the other got from the zone's DHCP.
    addr = machine.succeed(
        "systemd-run -M test2 --wait --pipe -- ip -4 -o addr show host0 | awk '{print $4}' | cut -d/ -f1"
    ).strip()
    machine.wait_until_succeeds(f"systemd-run -M test1 --wait --pipe -- ping -c1 {addr}")
    machine.wait_until_succeeds("ping -4 -c1 test2")
  '';
}

# Migration from a legacy container (containers.<name>, privateNetwork with hostAddress and
# localAddress) to nixos.containers.instances, following RFC 0108's migration plan: stop the
# legacy container, move its state to /var/lib/machines, switch to the new configuration.
# A second legacy container keeps running beside the new one (coexistence).
{ lib, nixos-nspawn, ... }:
let
  guest = {
    services.nginx.enable = true;
    networking.firewall.allowedTCPPorts = [ 80 ];
  };
  legacy = {
    containers.test2 = {
      autoStart = true;
      privateNetwork = true;
      hostAddress = "10.231.136.1";
      localAddress = "10.231.136.2";
      config = guest;
    };
  };
in
{
  name = "nixos-nspawn-migration";

  nodes.machine = {
    imports = [ ./common.nix ];
    environment.systemPackages = lib.optional (nixos-nspawn != null) nixos-nspawn;
    # A legacy container that is not migrated and must keep working.
    containers.stay = {
      autoStart = true;
      config = { };
    };
    specialisation.legacy.configuration = legacy;
    specialisation.migrated.configuration = {
      # What the migrator emits for the legacy pair: point-to-point, no NAT, no RA.
      nixos.containers.instances.test2 = {
        network = {
          pointToPoint = true;
          masquerade = false;
          routerAdvertisements = false;
          v4.static = {
            hostAddresses = [ "10.231.136.1/32" ];
            containerPool = [ "10.231.136.2/32" ];
          };
        };
        system-config = guest;
      };
    };
  };

  testScript = ''
    ${builtins.readFile ./helpers.py}

    machine.wait_for_unit("container@stay.service")
    machine.succeed("/run/booted-system/specialisation/legacy/bin/switch-to-configuration test")
    machine.wait_for_unit("container@test2.service")
    machine.wait_until_succeeds("curl -sf http://10.231.136.2/ >/dev/null")
    machine.succeed("nixos-container run test2 -- sh -c 'echo precious > /root/data'")

    ${lib.optionalString (nixos-nspawn != null) ''
      report = machine.succeed("nixos-nspawn migrate --dry-run --json")
      import json
      names = [c["name"] for c in json.loads(report)["containers"]]
      assert "test2" in names, report
    ''}

    # RFC 0108 migration plan: stop, move the state, switch.
    machine.succeed("systemctl stop container@test2.service")
    machine.succeed("mkdir -p /var/lib/machines && cp -a /var/lib/nixos-containers/test2 /var/lib/machines/test2")
    machine.succeed("/run/booted-system/specialisation/migrated/bin/switch-to-configuration test")
    wait_for_container(machine, "test2")
    inside_eventually(machine, "test2", "systemctl is-active nginx.service")
    inside(machine, "test2", "grep -q precious /root/data")
    machine.wait_until_succeeds("curl -sf http://10.231.136.2/ >/dev/null")
    # The legacy state is untouched (rollback = the old container still works).
    machine.succeed("test -f /var/lib/nixos-containers/test2/root/data")
    # Coexistence: the unmigrated legacy container still runs.
    machine.succeed("systemctl is-active container@stay.service")
    machine.succeed("nixos-container run stay -- true")
  '';
}

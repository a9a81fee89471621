# activation.strategy: what `switch-to-configuration test` on the host does with a running
# container whose configuration changed (the triggers in its drop-in), and with a container
# that was removed from the configuration (stopped, not restarted on the bare template).
{ lib, ... }:
let
  container = strategy: motd: {
    network = { };
    activation.strategy = strategy;
    system-config.users.motd = motd;
  };
  instances = motd: bind: {
    dyn = container "dynamic" motd // lib.optionalAttrs bind { bindMounts."/mnt/host-etc" = { hostPath = "/etc"; }; };
    rel = container "reload" motd;
    res = container "restart" motd;
    non = container "none" motd;
  };
in
{
  name = "nixos-nspawn-activation";

  nodes.machine = {
    imports = [ ./common.nix ];
    nixos.containers.instances = instances "one" false;
    specialisation.system-changed.configuration = {
      nixos.containers.instances = lib.mkForce (instances "two" false);
    };
    specialisation.bind-added.configuration = {
      nixos.containers.instances = lib.mkForce (instances "one" true);
    };
    specialisation.res-removed.configuration = {
      nixos.containers.instances = lib.mkForce (removeAttrs (instances "one" false) [ "res" ]);
    };
  };

  testScript = ''
    ${builtins.readFile ./helpers.py}

    containers = ["dyn", "rel", "res", "non"]
    machine.wait_for_unit("multi-user.target")
    for c in containers:
        wait_for_container(machine, c)

    def switch(spec):
        out = machine.succeed(f"/run/booted-system/specialisation/{spec}/bin/switch-to-configuration test 2>&1")
        print(out)
        return out

    def units(out, verb):
        for line in out.splitlines():
            if line.startswith(f"{verb} the following units:"):
                return line
        return ""

    # Only the containers' systems changed.
    out = switch("system-changed")
    assert "systemd-nspawn@dyn.service" in units(out, "reloading"), out
    assert "systemd-nspawn@rel.service" in units(out, "reloading"), out
    assert "systemd-nspawn@res.service" in units(out, "restarting") + units(out, "starting"), out
    for verb in ["reloading", "restarting", "stopping", "starting"]:
        assert "systemd-nspawn@non.service" not in units(out, verb), out
    # The reload ran switch-to-configuration inside: the new motd is active.
    inside(machine, "dyn", "grep -q two /etc/motd")
    inside(machine, "rel", "grep -q two /etc/motd")
    inside(machine, "non", "grep -q one /etc/motd")

    # Back, then a change that needs a restart (a new bind mount for dyn).
    machine.succeed("/run/booted-system/bin/switch-to-configuration test")
    for c in containers:
        wait_for_container(machine, c)
    out = switch("bind-added")
    assert "systemd-nspawn@dyn.service" in units(out, "restarting") + units(out, "starting"), out
    inside_eventually(machine, "dyn", "test -e /mnt/host-etc/hostname")

    # Removing an instance stops its container and does not start it again.
    machine.succeed("/run/booted-system/bin/switch-to-configuration test")
    for c in containers:
        wait_for_container(machine, c)
    out = switch("res-removed")
    assert "systemd-nspawn@res.service" in units(out, "stopping"), out
    assert "systemd-nspawn@res.service" not in units(out, "starting") + units(out, "restarting"), out
    machine.fail("systemctl is-active systemd-nspawn@res.service")
  '';
}

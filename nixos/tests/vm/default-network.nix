# RFC 0108 "Basics": network = { } gives the container a veth with DHCPv4 and IPv6 SLAAC, and
# its name resolves on the host through nss-mymachines.
{ ... }:
{
  name = "nixos-nspawn-default-network";

  nodes.machine =
    { pkgs, ... }:
    {
      imports = [ ./common.nix ];
      nixos.containers.instances.demo = {
        network = { };
        system-config =
          { pkgs, ... }:
          {
            environment.systemPackages = [ pkgs.hello ];
            services.nginx.enable = true;
            networking.firewall.allowedTCPPorts = [ 80 ];
          };
      };
    };

  testScript = ''
    ${builtins.readFile ./helpers.py}

    machine.wait_for_unit("machines.target")
    machine.wait_for_unit("systemd-nspawn@demo.service")
    machine.succeed("test -f /etc/systemd/nspawn/demo.nspawn")
    machine.succeed("grep -qx 'Parameters=/nix/store/.*/init' /etc/systemd/nspawn/demo.nspawn")

    # The container is up and runs its own networkd on host0.
    wait_for_container(machine, "demo")
    inside(machine, "demo", "hello | grep -q 'Hello, world!'")
    inside_eventually(machine, "demo", "networkctl status host0 | grep -q 'State: routable'")

    # Host side: ve-demo configured by 20-ve-demo.network, DHCP server, an IPv4 for the guest.
    machine.wait_until_succeeds("networkctl status ve-demo | grep -q '20-ve-demo.network'")
    inside_eventually(machine, "demo", "ip -4 addr show host0 | grep -q inet")
    inside_eventually(machine, "demo", "ip -6 addr show host0 scope global | grep -q inet6")

    # nss-mymachines: the name resolves and answers.
    machine.wait_until_succeeds("ping -4 -c1 demo")
    machine.wait_until_succeeds("curl -sf http://demo/ >/dev/null")

    # machinectl controls it.
    machine.succeed("machinectl reboot demo")
    wait_for_container(machine, "demo")
  '';
}

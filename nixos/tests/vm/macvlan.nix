# RFC 0108 "Advanced Features": a MACVLAN of eth1 moved into the container, configured only
# through raw systemd.nspawn / systemd.network settings (network.veth = false).
{ ... }:
{
  name = "nixos-nspawn-macvlan";

  nodes.machine =
    { lib, ... }:
    {
      imports = [ ./common.nix ];
      virtualisation.vlans = [ 1 ];
      systemd.network.networks."40-eth1" = {
        matchConfig.Name = "eth1";
        networkConfig.MACVLAN = "mv-eth1-host";
        linkConfig.RequiredForOnline = "no";
        address = lib.mkForce [ ];
        addresses = lib.mkForce [ ];
      };
      systemd.network.netdevs."20-mv-eth1-host" = {
        netdevConfig = {
          Name = "mv-eth1-host";
          Kind = "macvlan";
        };
        extraConfig = ''
          [MACVLAN]
          Mode=bridge
        '';
      };
      systemd.network.networks."20-mv-eth1-host" = {
        matchConfig.Name = "mv-eth1-host";
        address = lib.mkForce [ "192.168.2.2/24" ];
      };

      systemd.nspawn.vlandemo.networkConfig.MACVLAN = "eth1";
      nixos.containers.instances.vlandemo = {
        network.veth = false;
        system-config = {
          systemd.network.networks."10-mv-eth1" = {
            matchConfig.Name = "mv-eth1";
            address = [ "192.168.2.5/24" ];
          };
        };
      };
    };

  nodes.client = {
    virtualisation.vlans = [ 1 ];
    networking.interfaces.eth1.ipv4.addresses = [
      {
        address = "192.168.2.10";
        prefixLength = 24;
      }
    ];
  };

  testScript = ''
    ${builtins.readFile ./helpers.py}

    start_all()
    wait_for_container(machine, "vlandemo")
    machine.succeed("grep -qx 'MACVLAN=eth1' /etc/systemd/nspawn/vlandemo.nspawn")
    machine.succeed("grep -qx 'VirtualEthernet=no' /etc/systemd/nspawn/vlandemo.nspawn")
    inside_eventually(machine, "vlandemo", "ip addr show mv-eth1 | grep -q 192.168.2.5")
    client.wait_for_unit("network.target")
    client.wait_until_succeeds("ping -c1 192.168.2.5")
    machine.wait_until_succeeds("ping -c1 192.168.2.5")
  '';
}

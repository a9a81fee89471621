# Our extensions: a container on an existing host bridge (legacy hostBridge) and one with a
# MACVLAN instead of a veth (legacy macvlans), the latter set through raw systemd.nspawn keys.
{
  networking.useNetworkd = true;
  nixos.containers.instances.onbr = {
    network.bridge = "br0";
    network.v4.static = {
      hostAddresses = [ "192.168.1.1/24" ];
      containerPool = [ "192.168.1.50/24" ];
    };
  };
  nixos.containers.instances.vlandemo = {
    network.veth = false;
    system-config.systemd.network.networks."10-mv-eth1" = {
      matchConfig.Name = "mv-eth1";
      address = [ "192.168.2.5/24" ];
    };
  };
  systemd.nspawn.vlandemo.networkConfig.MACVLAN = "eth1";
}

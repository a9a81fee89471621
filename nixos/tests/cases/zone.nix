# RFC 0108: two containers in one zone.
{
  networking.useNetworkd = true;
  nixos.containers.zones.demo = { };
  nixos.containers.instances = {
    test1.network.zone = "demo";
    test2.network.zone = "demo";
  };
}

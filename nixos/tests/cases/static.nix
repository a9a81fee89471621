# RFC 0108 static addresses, plus host addresses (the migrator's translation of
# hostAddress/localAddress).
{
  networking.useNetworkd = true;
  nixos.containers.instances.static = {
    network = {
      v4.static.containerPool = [ "10.237.1.3/16" ];
      v6.static.containerPool = [ "2a01:4f9:4b:1659:3aa3:cafe::3/96" ];
    };
    system-config = { };
  };
  nixos.containers.instances.legacy = {
    network.v4.static = {
      hostAddresses = [ "10.231.136.1/30" ];
      containerPool = [ "10.231.136.2/30" ];
    };
    network.v6.static = {
      hostAddresses = [ "fc00::1/64" ];
      containerPool = [ "fc00::2/64" ];
    };
  };
}

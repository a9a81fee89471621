# Every assertion at once.
{ lib, ... }:
{
  networking.useNetworkd = false;
  containers.old = { privateNetwork = true; };
  system.nssDatabases.hosts = lib.mkForce [ "files" "dns" ];
  nixos.containers.zones."a-much-too-long-zone" = { };
  nixos.containers.instances = {
    old.network = { };
    "bad name" = { };
    # Dots: switch-to-configuration-ng mis-parses systemd-nspawn@a.b.service; "_" and edge
    # hyphens: the guest's networking.hostName type refuses them (issue 8 #5).
    "a.b" = { };
    x_y = { };
    "-lead" = { };
    a.network = { zone = "nowhere"; v4.static.containerPool = [ "10.1.0.2/24" ]; };
    b.network.v4.static = { containerPool = [ "10.1.0.2/24" ]; };
    c.network.v4.static.hostAddresses = [ "10.1.0.2/24" ];
    mv.network = { veth = false; bridge = "br0"; };
    hp.forwardPorts = [ { hostPort = 80; } ];
  };
}

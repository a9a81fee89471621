# Port forwards, bind mounts, user namespacing, ephemeral, credentials, timeout, strategy:
# the migrator's shape, with raw systemd.nspawn keys merged into the module's.
{ lib, ... }:
{
  networking.useNetworkd = true;
  nixos.containers.instances.web = {
    network = { };
    forwardPorts = [
      { hostPort = 8080; containerPort = 80; }
      { protocol = "udp"; hostPort = 5353; }
    ];
    bindMounts = {
      "/srv/data" = { hostPath = "/data/web"; isReadOnly = false; };
      "/etc/ssl/certs" = { };
      "/var/cache/x" = { hostPath = "/cache"; options = "norbind"; };
    };
    privateUsers = { mode = "pick"; ownership = "auto"; };
    ephemeral = true;
    credentials = [ { id = "db"; path = "/run/keys/db"; } ];
    timeoutStartSec = "3min";
    restart = "on-failure";
    activation.strategy = "restart";
    autoStart = false;
  };
  systemd.nspawn.web.execConfig.Capability = [ "CAP_NET_ADMIN" ];
  systemd.nspawn.web.networkConfig.MACVLAN = "eth1";
  systemd.services."systemd-nspawn@web".serviceConfig.DeviceAllow = [ "/dev/fuse rwm" ];
  systemd.services."systemd-nspawn@web".after = [ "network-online.target" ];
  systemd.services."systemd-nspawn@web".wants = [ "network-online.target" ];
}

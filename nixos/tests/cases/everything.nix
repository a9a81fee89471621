# Every instance and zone option at once, with non-default values, and the raw keys the
# migrator emits next to them (issue 8: "every option" must evaluate with nixpkgs' real files).
{ pkgs, lib, ... }:
{
  networking.useNetworkd = true;
  nixos.containers.zones.lab = {
    hostAddresses = [
      "10.250.0.1/24"
      "fd42:250::1/64"
    ];
    v4.addrPool = [ ];
    v6.addrPool = [ ];
  };
  nixos.containers.instances = {
    full = {
      specialArgs.greeting = "hello";
      system-config =
        { greeting, ... }:
        {
          users.motd = greeting;
        };
      network = {
        zone = "lab";
        v4.static.containerPool = [ "10.250.0.2/24" ];
        v6.static.containerPool = [ "fd42:250::2/64" ];
      };
      forwardPorts = [
        {
          protocol = "udp";
          hostPort = 5353;
          containerPort = 53;
        }
      ];
      activation = {
        strategy = "reload";
        reloadScript = pkgs.writeShellScript "reload-full" "true";
      };
      ephemeral = true;
      bindMounts = {
        "/srv" = {
          hostPath = "/srv/full";
          isReadOnly = false;
          options = "idmap";
        };
        "/etc/ssl/certs" = { };
      };
      credentials = [
        {
          id = "token";
          path = "/run/keys/token";
        }
      ];
      autoStart = false;
      timeoutStartSec = "2min";
      privateUsers = {
        mode = "524288:65536";
        ownership = "map";
      };
    };
    # A second zone member without own addresses, and an ephemeral container whose legacy
    # --link-journal= flag the migrator kept (a raw key replaces the module's default).
    member = {
      network.zone = "lab";
      ephemeral = true;
      activation.strategy = "dynamic";
    };
  };
  systemd.nspawn.member.execConfig.LinkJournal = "no";
}

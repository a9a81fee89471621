# The options of one container, `nixos.containers.instances.<name>`.
#
# Shared by the host module (nixos/module.nix) and by nixos/lib/eval-container.nix, which
# evaluates an imperative container file against exactly these options.
#
# Arguments:
# - lib
# - nixpkgsDefault: default of `nixpkgs` (the host's `pkgs.path`); null = no default (the
#   option must then be set, as in an imperative container file)
# - nixpkgsDefaultText: literal shown in the docs for that default
{
  lib,
  nixpkgsDefault ? null,
  nixpkgsDefaultText ? null,
}:

let
  inherit (lib) mkOption types literalExpression;

  # Not "a string": a list of addresses with a prefix, e.g. "10.231.0.1/24" or "fd00::1/64".
  addressWithPrefix = types.strMatching "[0-9a-fA-F.:]+/[0-9]+";

  staticOptions = family: example: {
    hostAddresses = mkOption {
      type = types.listOf addressWithPrefix;
      default = [ ];
      example = [ example.host ];
      description = ''
        IPv${family} addresses (with prefix length) put on the host side of the container's
        link: `ve-<name>` for a plain veth, or the zone bridge `vz-<zone>` when
        `network.zone` is set. The first one is the container's default gateway. With
        `network.bridge` they are not put anywhere (the bridge is yours): the first one is only
        the gateway, as `hostAddress` was for a legacy container on a `hostBridge`.
        When any static address is set, the DHCP server and router advertisements of the
        default mode are turned off for this container.
      '';
    };
    containerPool = mkOption {
      type = types.listOf addressWithPrefix;
      default = [ ];
      example = [ example.container ];
      description = ''
        IPv${family} addresses (with prefix length) the container gets on `host0`.
        Must not collide with another container's addresses (an assertion checks this).
      '';
    };
  };

  networkModule = {
    options = {
      zone = mkOption {
        type = types.nullOr (types.strMatching "[a-zA-Z0-9_-]{1,12}");
        default = null;
        example = "web";
        description = ''
          Put the container into the network zone `<zone>` (`[Network] Zone=` in
          {manpage}`systemd.nspawn(5)`): its host-side link `vb-<name>` is enslaved to the
          bridge `vz-<zone>`, which is configured by `nixos.containers.zones.<zone>`.
          The zone must be declared there.
        '';
      };
      bridge = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "br0";
        description = ''
          (Extension of RFC 0108.) Enslave the container's host-side link to an existing
          host bridge (`[Network] Bridge=`). No host-side networkd unit is generated: the
          bridge is yours to configure. The container gets no DHCP client by default; give
          it `v4.static`/`v6.static` addresses or configure `host0` in `system-config`.
        '';
      };
      veth = mkOption {
        type = types.bool;
        default = true;
        example = false;
        description = ''
          (Extension of RFC 0108.) Whether the container gets a virtual Ethernet link
          (`[Network] VirtualEthernet=`). `false` gives a private network namespace with
          only `lo`, for containers that get their links another way, for example
          `systemd.nspawn.<name>.networkConfig.MACVLAN = "eth1";`.
        '';
      };
      masquerade = mkOption {
        type = types.bool;
        default = true;
        example = false;
        description = ''
          (Extension of RFC 0108.) Whether the host side of a plain veth (`ve-<name>`, no
          `zone`, no `bridge`) masquerades the container's traffic (`IPMasquerade=both` in
          {manpage}`systemd.network(5)`, which also turns on IP forwarding on the host).
          `false` leaves forwarding and NAT to the host's own configuration, as a legacy
          `nixos-container` did (it only added addresses and routes), for example
          `networking.nat.internalInterfaces = [ "ve-+" ];`.
        '';
      };
      routerAdvertisements = mkOption {
        type = types.bool;
        default = true;
        example = false;
        description = ''
          (Extension of RFC 0108.) Whether the host side of a plain veth sends IPv6 router
          advertisements (`IPv6SendRA=yes`) when the container has no static IPv6 address.
          `false` sends none, as a legacy `nixos-container` did.
        '';
      };
      pointToPoint = mkOption {
        type = types.bool;
        default = false;
        example = true;
        description = ''
          (Extension of RFC 0108.) Configure the static addresses of a plain veth the way a
          legacy `nixos-container` did with `hostAddress`/`localAddress`: each end gets its
          addresses exactly as given. A full-length address (`/32`, `/128`) becomes a
          point-to-point address whose `Peer=` is the other end's first address of that
          family (`[Address]` in {manpage}`systemd.network(5)`); a shorter one gets a host
          route to the other end instead. The container's default route goes through the
          first host address with `GatewayOnLink=yes`. No subnet is shared, so several
          containers may use the same host address on their own `ve-<name>` links.
          Needs a host address and a container address of the same family.
        '';
      };
      v4.static = staticOptions "4" {
        host = "10.231.136.1/24";
        container = "10.231.136.2/24";
      };
      v6.static = staticOptions "6" {
        host = "fd42:ab::1/64";
        container = "fd42:ab::2/64";
      };
    };
  };

  forwardPortModule = {
      options = {
        protocol = mkOption {
          type = types.enum [
            "tcp"
            "udp"
          ];
          default = "tcp";
          example = "udp";
          description = "Protocol of the forwarded port.";
        };
        hostPort = mkOption {
          type = types.port;
          example = 8080;
          description = "Port on the host.";
        };
        containerPort = mkOption {
          type = types.nullOr types.port;
          default = null;
          example = 80;
          description = "Port in the container; `null` means the same as `hostPort`.";
        };
      };
    };

  bindMountModule =
    { name, ... }:
    {
      options = {
        mountPoint = mkOption {
          type = types.str;
          default = name;
          defaultText = literalExpression "<name>";
          example = "/var/lib/data";
          description = "Mount point inside the container (the attribute name by default).";
        };
        hostPath = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "/srv/data";
          description = ''
            Directory on the host; `null` means the same path as the mount point.
          '';
        };
        isReadOnly = mkOption {
          type = types.bool;
          default = true;
          example = false;
          description = ''
            Mount read-only (`BindReadOnly=`) or read-write (`Bind=`). Read-only by default,
            as for legacy `containers.<name>.bindMounts`.
          '';
        };
        options = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "rbind,idmap";
          description = ''
            Mount options appended as `:<options>` (see `--bind=` in
            {manpage}`systemd-nspawn(1)`: `rbind`, `norbind`, `idmap`, `noidmap`, …).
          '';
        };
      };
    };

  credentialModule = {
    options = {
      id = mkOption {
        type = types.strMatching "[a-zA-Z0-9_.-]+";
        example = "db-password";
        description = "Credential name inside the container.";
      };
      path = mkOption {
        type = types.str;
        example = "/run/keys/db-password";
        description = "File (or socket) on the host the credential is read from.";
      };
    };
  };
in
{ name, config, ... }:
{
  options = {
    system-config = mkOption {
      type = types.deferredModule;
      default = { };
      example = literalExpression ''
        { pkgs, ... }: {
          environment.systemPackages = [ pkgs.hello ];
          services.nginx.enable = true;
        }
      '';
      description = ''
        The container's NixOS configuration, a NixOS module. Several definitions are merged
        like `imports`. The module adds `boot.isContainer = true`, networkd on `host0` and
        `networking.useHostResolvConf = false` (see `network`).
      '';
    };

    nixpkgs = mkOption (
      {
        type = types.path;
        example = literalExpression "inputs.nixpkgs-stable";
        description = ''
          The nixpkgs the container's system is built from (its `nixos/lib/eval-config.nix`).
        '';
      }
      // lib.optionalAttrs (nixpkgsDefault != null) {
        default = nixpkgsDefault;
        defaultText = nixpkgsDefaultText;
      }
    );

    specialArgs = mkOption {
      type = types.attrsOf types.unspecified;
      default = { };
      example = literalExpression "{ inherit inputs; }";
      description = "Extra arguments passed to the modules of `system-config`.";
    };

    network = mkOption {
      type = types.nullOr (types.submodule networkModule);
      default = null;
      example = literalExpression ''{ v4.static.containerPool = [ "10.231.136.2/24" ]; }'';
      description = ''
        `null`: the container shares the host's network (`[Network] Private=no`).

        `{ }`: the RFC 0108 default mode: a veth pair, the host side `ve-<name>` gets an
        address from networkd's pool, serves DHCPv4 and IPv6 router advertisements and
        masquerades; the container runs networkd and DHCP on `host0`.
        Host names of containers resolve on the host through nss-mymachines.
      '';
    };

    forwardPorts = mkOption {
      type = types.listOf (types.submodule forwardPortModule);
      default = [ ];
      example = literalExpression ''[ { protocol = "tcp"; hostPort = 8080; containerPort = 80; } ]'';
      description = ''
        Ports forwarded from the host to the container (`[Network] Port=`). Needs a
        private network with a veth (`network != null`).
      '';
    };

    activation = {
      strategy = mkOption {
        type = types.enum [
          "none"
          "reload"
          "restart"
          "dynamic"
        ];
        default = "dynamic";
        example = "restart";
        description = ''
          What `switch-to-configuration` on the host does with a running container whose
          configuration changed:

          - `dynamic`: reload (run `switch-to-configuration test` inside the container) when
            only the container's system changed; restart when anything that needs a restart
            changed (the `.nspawn` file other than `Parameters=`, the host-side network units);
          - `reload`: always reload, never restart;
          - `restart`: always restart;
          - `none`: leave it alone (it picks up the change on its next start).
        '';
      };
      reloadScript = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = literalExpression ''pkgs.writeShellScript "reload" "…"'';
        description = ''
          Run this on the host instead of `switch-to-configuration test` inside the
          container when the container is reloaded. It gets the container name and the new
          system's store path as arguments.
        '';
      };
    };

    ephemeral = mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = ''
        Run the container from a throw-away snapshot of its directory (`[Exec] Ephemeral=yes`):
        every change is lost when it stops.
      '';
    };

    bindMounts = mkOption {
      type = types.attrsOf (types.submodule bindMountModule);
      default = { };
      example = literalExpression ''{ "/srv/data" = { hostPath = "/data/web"; isReadOnly = false; }; }'';
      description = "Host directories mounted into the container, keyed by mount point.";
    };

    credentials = mkOption {
      type = types.listOf (types.submodule credentialModule);
      default = [ ];
      example = literalExpression ''[ { id = "db-password"; path = "/run/keys/db"; } ]'';
      description = ''
        Credentials passed into the container (`--load-credential=<id>:<path>` of
        {manpage}`systemd-nspawn(1)`); services inside read them with `LoadCredential=<id>`.
      '';
    };

    autoStart = mkOption {
      type = types.bool;
      default = true;
      example = false;
      description = "Start the container at boot (it is wanted by `machines.target`).";
    };

    timeoutStartSec = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "2min";
      description = ''
        `TimeoutStartSec=` of `systemd-nspawn@<name>.service`; `null` keeps systemd's
        default. Raise it for containers that take long to boot.
      '';
    };

    restart = mkOption {
      type = types.nullOr (
        types.enum [
          "no"
          "on-success"
          "on-failure"
          "on-abnormal"
          "on-watchdog"
          "on-abort"
          "always"
        ]
      );
      default = null;
      example = "on-failure";
      description = ''
        (Extension of RFC 0108.) `Restart=` of `systemd-nspawn@<name>.service`
        ({manpage}`systemd.service(5)`): whether systemd starts the container again after it
        stopped. `null` keeps the stock unit, which has no `Restart=` (so `no`). A container
        migrated from `nixos-container` gets `"on-failure"`, what legacy's
        `container@.service` had.
      '';
    };

    privateUsers = {
      mode = mkOption {
        type = types.strMatching "no|yes|identity|pick|[0-9]+(:[0-9]+)?";
        default = "no";
        example = "pick";
        description = ''
          User namespacing (`[Exec] PrivateUsers=`): `no`, `yes`, `identity`, `pick`, or a
          base UID (optionally `base:range`). Always written out, because the stock
          `systemd-nspawn@.service` passes `-U`. With `pick` or a base UID, the Nix store
          and the per-container profile directories are mounted with `idmap`.
        '';
      };
      ownership = mkOption {
        type = types.nullOr (
          types.enum [
            "off"
            "chown"
            "map"
            "auto"
          ]
        );
        default = null;
        example = "auto";
        description = ''
          `[Files] PrivateUsersOwnership=`: how files of the container's directory are made
          to fit the user namespace. `chown` rewrites the whole tree on the host, for good.
          Ignored when `mode = "no"`.
        '';
      };
    };
  };
}

# nixos.containers: NixOS containers on systemd-nspawn and systemd-networkd (NixOS RFC 0108).
#
# What renders how is specified in ./RENDERING.md; the data is computed in ./lib/instance.nix.
{
  config,
  lib,
  pkgs,
  options,
  ...
}:

let
  inherit (lib)
    attrNames
    attrValues
    concatLists
    concatMap
    concatStringsSep
    filterAttrs
    length
    literalExpression
    mapAttrs
    mapAttrs'
    mapAttrsToList
    mkIf
    mkMerge
    mkOption
    nameValuePair
    optionalAttrs
    types
    ;

  cfg = config.nixos.containers;
  I = import ./lib/instance.nix { inherit lib; };

  instanceOptions = import ./lib/instance-options.nix {
    inherit lib;
    nixpkgsDefault = pkgs.path;
    nixpkgsDefaultText = literalExpression "pkgs.path";
  };

  zoneOptions =
    { name, ... }:
    {
      options = {
        hostAddresses = mkOption {
          type = types.listOf (types.strMatching "[0-9a-fA-F.:]+/[0-9]+");
          default = [ ];
          example = [
            "10.231.200.1/24"
            "fd42:200::1/64"
          ];
          description = ''
            Static IPv4/IPv6 addresses (with prefix) of the zone bridge `vz-${name}`. The first
            of each family is the gateway of members that have a static `containerPool` but no
            `hostAddresses` of their own.
          '';
        };
        v4.addrPool = mkOption {
          type = types.listOf types.str;
          default = [ "0.0.0.0/24" ];
          example = [ ];
          description = ''
            IPv4 addresses of the bridge taken from networkd's pool (`0.0.0.0/<prefix>`
            means "any free subnet of that size", see `Address=` in
            {manpage}`systemd.network(5)`). When non-empty the bridge also runs a DHCPv4
            server for the zone. Set to `[ ]` for a zone with static addresses only.
          '';
        };
        v6.addrPool = mkOption {
          type = types.listOf types.str;
          default = [ "::/64" ];
          example = [ ];
          description = ''
            IPv6 prefixes of the bridge taken from networkd's pool (`::/64`: a free ULA /64).
            When non-empty the bridge sends router advertisements for SLAAC.
          '';
        };
      };
    };

  instances = cfg.instances;
  names = attrNames instances;
  privateNetworked = filterAttrs (_: i: i.network != null) instances;

  zoneOf = i: if i.network != null then i.network.zone else null;
  zoneMembers = zone: filterAttrs (_: i: zoneOf i == zone) instances;
  zoneHostAddresses =
    i: if zoneOf i != null && cfg.zones ? ${zoneOf i} then cfg.zones.${zoneOf i}.hostAddresses else [ ];

  systems = mapAttrs (
    name: inst: I.evalSystem name inst (zoneHostAddresses inst) pkgs.stdenv.hostPlatform
  ) instances;
  toplevelOf = name: systems.${name}.config.system.build.toplevel;

  # Host-side network units belonging to one instance (its veth, or its zone's units).
  hostUnitNamesOf =
    name: inst:
    let
      z = zoneOf inst;
    in
    if z != null then
      [ "20-vz-${z}" ]
    else if I.hasVeth inst && inst.network.bridge == null then
      [ "20-ve-${name}" ]
    else
      [ ];

  netConfigKeys = [
    "matchConfig"
    "linkConfig"
    "networkConfig"
    "address"
    "gateway"
    "dns"
    "routes"
    "dhcpServerConfig"
    "ipv6SendRAConfig"
    "extraConfig"
  ];
  networkData =
    n:
    let
      v = config.systemd.network.networks.${n} or { };
    in
    filterAttrs (k: _: builtins.elem k netConfigKeys) v;

  nspawnData =
    name:
    let
      v = config.systemd.nspawn.${name};
    in
    {
      inherit (v) execConfig filesConfig networkConfig;
    };

  restartHashOf =
    name: inst: I.restartHash (nspawnData name) (map networkData (hostUnitNamesOf name inst));

  sed = "${pkgs.gnused}/bin/sed";
  systemdRun = "${config.systemd.package}/bin/systemd-run";

  # The drop-ins must not change when only nixpkgs does: switch-to-configuration-ng restarts a
  # unit for any other [Service] difference (main.rs compare_units), which would turn every
  # nixpkgs bump into a restart of every container. So no store path in them: the scripts are
  # called through stable /etc paths (the files behind them change, the unit text does not),
  # ExecStart= names systemd-nspawn as the stock template does, and the default PATH that
  # NixOS gives every service (coreutils, findutils, grep, sed, systemd store paths) is off for
  # the instances and the template drop-in that nspawn.nix creates. Where a nixpkgs is too
  # old to have `enableDefaultPath`, the PATH stays (README: "Activation").
  hookDir = name: "nixos-nspawn/hooks/${name}";
  serviceOptions = options.systemd.services.type.getSubOptions [ ];
  noDefaultPath = lib.optionalAttrs (serviceOptions ? enableDefaultPath) {
    enableDefaultPath = false;
  };

  reloadScriptOf =
    name: inst:
    pkgs.writeShellScript "nspawn-${name}-reload" (
      I.reloadScriptText {
        inherit name sed systemdRun;
        inherit (inst.activation) reloadScript;
      }
    );

  # Same as the ExecStart= of systemd's systemd-nspawn@.service, plus the credentials.
  dropinOf =
    name: inst:
    {
      overrideStrategy = "asDropin";
      wantedBy = lib.optional inst.autoStart "machines.target";
      serviceConfig = {
        ExecStartPre = [ "/etc/${hookDir name}/pre-start" ];
        ExecReload = "/etc/${hookDir name}/reload";
      }
      // optionalAttrs (inst.timeoutStartSec != null) { TimeoutStartSec = inst.timeoutStartSec; }
      // optionalAttrs (inst.restart != null) { Restart = inst.restart; }
      // optionalAttrs (inst.credentials != [ ]) {
        ExecStart = [
          ""
          (I.templateExecStart "systemd-nspawn" inst)
        ];
      };
    }
    // noDefaultPath
    // I.activationSettings inst (toplevelOf name) (restartHashOf name inst);

  hookFiles =
    name: inst:
    {
      "${hookDir name}/pre-start".source = pkgs.writeShellScript "nspawn-${name}-pre-start" ''
        set -e
        ${I.preStart name}'';
      "${hookDir name}/reload".source = reloadScriptOf name inst;
    };

  # Host interfaces on which networkd runs a DHCPv4 server for containers: the NixOS firewall
  # drops UDP 67 on them unless opened (nftables always; iptables in nixpkgs versions without
  # its own ve-+/vz-+ DHCP rule).
  dhcpInterfaces =
    mapAttrsToList (n: _: "ve-${n}") (
      filterAttrs (
        _: i: I.hasVeth i && i.network.zone == null && i.network.bridge == null && I.staticAddresses i == [ ]
      ) instances
    )
    ++ map (z: "vz-${z}") (attrNames (filterAttrs (_: z: z.v4.addrPool != [ ]) cfg.zones));

  # ---- assertions -----------------------------------------------------------------------

  addrOwners = concatLists (
    mapAttrsToList (
      name: i:
      map (a: {
        inherit name;
        addr = I.withoutPrefix a;
        full = a;
      }) (
        if i.network == null then
          [ ]
        else
          i.network.v4.static.containerPool ++ i.network.v6.static.containerPool
      )
    ) instances
  );
  hostAddrsOf =
    i:
    if i.network == null then
      [ ]
    else
      map I.withoutPrefix (i.network.v4.static.hostAddresses ++ i.network.v6.static.hostAddresses);
  collisions = lib.unique (
    concatMap (
      o:
      let
        # Each pair once: only against owners with a greater name.
        others = lib.filter (p: p.addr == o.addr && p.name > o.name) addrOwners;
        hostClash = lib.filter (n: n != o.name && builtins.elem o.addr (hostAddrsOf instances.${n})) names;
      in
      map (p: "${o.addr} (containerPool of ${o.name} and of ${p.name})") others
      ++ map (n: "${o.addr} (containerPool of ${o.name}, hostAddresses of ${n})") hostClash
    ) addrOwners
  );
  dupWithin = lib.filter (
    o: length (lib.filter (p: p.addr == o.addr && p.name == o.name) addrOwners) > 1
  ) addrOwners;

  legacyNames =
    if options ? containers then attrNames (config.containers or { }) else [ ];
  bothWorlds = lib.filter (n: builtins.elem n legacyNames) names;

  badNames = lib.filter (n: !I.validName n) names;
  badZones = lib.filter (z: builtins.match "[a-zA-Z0-9_-]{1,12}" z == null) (attrNames cfg.zones);
  missingZones = lib.filter (n: zoneOf instances.${n} != null && !(cfg.zones ? ${zoneOf instances.${n}})) names;
  vethConflicts = lib.filter (
    n:
    let
      nw = instances.${n}.network;
    in
    nw != null && !nw.veth && (nw.zone != null || nw.bridge != null)
  ) names;
  portsWithoutVeth = lib.filter (n: instances.${n}.forwardPorts != [ ] && !I.hasVeth instances.${n}) names;
  needsNetworkd = privateNetworked != { } || cfg.zones != { };
  # Read-write bind mounts into a user-namespaced container without an idmapped mount: the
  # container's root sees the host's files as owned by nobody (tried with systemd-nspawn 252).
  unmappedBinds = concatLists (
    mapAttrsToList (
      n: i:
      lib.optionals (I.idmapped i) (
        map (b: "${n}: ${b.mountPoint}") (
          lib.filter (
            b:
            !b.isReadOnly
            && (b.options == null || builtins.match "(.*,)?(no)?idmap(,.*)?" b.options == null)
          ) (attrValues i.bindMounts)
        )
      )
    ) instances
  );
  # A static containerPool with no host-side address to route through.
  unroutable = lib.filter (
    n:
    let
      i = instances.${n};
      nw = i.network;
    in
    nw != null
    && nw.bridge == null
    && (nw.v4.static.containerPool != [ ] || nw.v6.static.containerPool != [ ])
    && nw.v4.static.hostAddresses == [ ]
    && nw.v6.static.hostAddresses == [ ]
    && zoneHostAddresses i == [ ]
  ) names;
  list = ns: concatStringsSep ", " ns;
in
{
  imports = [ ./lib/imperative-paths.nix ];

  options.nixos.containers = {
    instances = mkOption {
      type = types.attrsOf (types.submodule instanceOptions);
      default = { };
      example = literalExpression ''
        {
          demo = {
            network = { };
            system-config = { pkgs, ... }: { environment.systemPackages = [ pkgs.hello ]; };
          };
        }
      '';
      description = ''
        NixOS containers run by `systemd-nspawn@<name>.service` from `/var/lib/machines/<name>`,
        configured by `/etc/systemd/nspawn/<name>.nspawn` (NixOS RFC 0108). Manage them with
        {manpage}`machinectl(1)`. Any `systemd.nspawn.<name>` or
        `systemd.services."systemd-nspawn@<name>"` setting you add is merged with what this
        module generates.
      '';
    };

    zones = mkOption {
      type = types.attrsOf (types.submodule zoneOptions);
      default = { };
      example = literalExpression ''{ web = { }; }'';
      description = ''
        Network zones: a bridge `vz-<zone>` on the host, configured by systemd-networkd, that
        the containers with `network.zone = "<zone>"` are connected to.
      '';
    };

    rendered = mkOption {
      type = types.attrsOf types.unspecified;
      readOnly = true;
      internal = true;
      description = ''
        Per instance: the evaluated container system (`system`), its `toplevel`, and the
        data this module rendered (for introspection and tests).
      '';
    };
  };

  config = mkMerge [
    {
      nixos.containers.rendered = mapAttrs (name: inst: {
        system = systems.${name};
        toplevel = toplevelOf name;
        nspawn = I.nspawnSettings name inst (toplevelOf name);
        preStart = I.preStart name;
        reloadScript = I.reloadScriptText {
          inherit name sed systemdRun;
          inherit (inst.activation) reloadScript;
        };
        description = I.describe name inst;
      }) instances;
    }

    (mkIf (instances != { } || cfg.zones != { }) {
      assertions = [
        {
          assertion = badNames == [ ];
          message = ''
            nixos.containers.instances: invalid container name(s): ${list badNames}.
            A name is one host name label of 1 to 63 characters: letters, digits and "-", not
            starting or ending with "-" (no "." and no "_": the container's networking.hostName,
            systemd-nspawn and switch-to-configuration refuse or mis-parse them). Ways out:
              1. rename the instance (its state lives in /var/lib/machines/<name>), or
              2. for a migrated legacy container, pass a new name to the migrator.
          '';
        }
        {
          assertion = badZones == [ ];
          message = ''
            nixos.containers.zones: invalid zone name(s): ${list badZones}. The bridge is named
            "vz-<zone>" and interface names have at most 15 bytes, so a zone name has 1 to 12
            letters, digits, "-" or "_". Ways out:
              1. rename the zone (and network.zone of its members), or
              2. use an existing bridge instead: network.bridge = "<bridge>";
          '';
        }
        {
          assertion = missingZones == [ ];
          message = ''
            nixos.containers.instances: ${
              list (map (n: "${n} uses zone \"${zoneOf instances.${n}}\"") missingZones)
            }, which is not declared. Ways out:
              1. declare it: nixos.containers.zones.<zone> = { };
              2. remove network.zone from the instance to give it its own veth.
          '';
        }
        {
          assertion = collisions == [ ] && dupWithin == [ ];
          message = ''
            nixos.containers.instances: static addresses collide: ${
              list (collisions ++ map (o: "${o.addr} (twice in containerPool of ${o.name})") dupWithin)
            }. Ways out:
              1. give each container its own network.v4/v6.static.containerPool addresses, or
              2. drop the static addresses of one of them and let it use DHCP (network = { }).
          '';
        }
        {
          assertion = !needsNetworkd || config.networking.useNetworkd;
          message = ''
            nixos.containers: containers with a private network (${
              list (attrNames privateNetworked)
            }${lib.optionalString (cfg.zones != { }) "; zones ${list (attrNames cfg.zones)}"}) need systemd-networkd on the host,
            but networking.useNetworkd is false. Ways out:
              1. set networking.useNetworkd = true; (port your networking.interfaces settings;
                 most work unchanged), or
              2. give these containers the host's network: network = null;
          '';
        }
        {
          assertion = bothWorlds == [ ];
          message = ''
            Container name(s) ${list bothWorlds} are declared both in the legacy `containers`
            and in `nixos.containers.instances`; one name can only be one machine. Ways out:
              1. finish the migration: remove containers.<name> (state in
                 /var/lib/nixos-containers/<name> stays untouched), or
              2. keep the legacy container for now and remove nixos.containers.instances.<name>, or
              3. give the new instance another name.
          '';
        }
        {
          assertion = vethConflicts == [ ];
          message = ''
            nixos.containers.instances: ${list vethConflicts}: network.veth = false cannot be
            combined with network.zone or network.bridge (both need the veth). Ways out:
              1. remove network.veth = false, or
              2. remove network.zone / network.bridge.
          '';
        }
        {
          assertion = portsWithoutVeth == [ ];
          message = ''
            nixos.containers.instances: ${list portsWithoutVeth}: forwardPorts need a private
            network with a veth (systemd-nspawn refuses Port= otherwise). Ways out:
              1. give the container a network: network = { };
              2. remove forwardPorts (with the host network the ports are reachable directly).
          '';
        }
        {
          assertion = instances == { } || builtins.elem "mymachines" config.system.nssDatabases.hosts;
          message = ''
            nixos.containers: "mymachines" is missing from system.nssDatabases.hosts, so container
            names do not resolve on the host (`ping <name>`). NixOS adds it by default; something
            overrides the list. Ways out:
              1. add it back: system.nssDatabases.hosts = lib.mkOrder 400 [ "mymachines" ];
              2. or accept that names do not resolve and use addresses.
          '';
        }
      ];

      warnings = map (
        n:
        "nixos.containers.instances.${n}: network.v4/v6.static.containerPool is set but no host-side address "
        + "(network.v4/v6.static.hostAddresses${lib.optionalString (zoneOf instances.${n} != null) " or the zone's hostAddresses"}): "
        + "the host side gets no address and the container no gateway. Add hostAddresses in the same subnet."
      ) unroutable
      ++ map (
        b:
        "nixos.containers.instances.${b}: read-write bind mount into a container with privateUsers.mode = "
        + "\"pick\" (or a base UID) without an idmapped mount: root in the container cannot write to it. "
        + "Add options = \"idmap\"; (or \"noidmap\" to keep it as it is and silence this)."
      ) unmappedBinds;

      systemd.nspawn = mapAttrs (name: inst: I.nspawnDefinitions name inst (toplevelOf name)) instances;

      systemd.network.networks = mkMerge (
        mapAttrsToList (name: inst: if inst.network == null then { } else I.hostNetworks name inst) instances
        ++ mapAttrsToList (zone: zcfg: I.zoneNetworks zone zcfg (zoneMembers zone)) cfg.zones
      );
      systemd.network.netdevs = mkMerge (mapAttrsToList I.zoneNetdevs cfg.zones);

      systemd.services =
        mapAttrs' (name: inst: nameValuePair "systemd-nspawn@${name}" (dropinOf name inst)) instances
        // {
          # The template drop-in nspawn.nix adds (SYSTEMD_NSPAWN_UNIFIED_HIERARCHY) is read
          # together with each instance's: keep store paths out of it too (see noDefaultPath).
          "systemd-nspawn@" = lib.mapAttrs (_: lib.mkDefault) noDefaultPath;
        };

      environment.etc = mkMerge (mapAttrsToList hookFiles instances);

      networking.firewall.interfaces = lib.genAttrs dhcpInterfaces (_: {
        allowedUDPPorts = [ 67 ];
      });

      # /var/lib/machines itself comes from systemd's tmpfiles.d/systemd-nspawn.conf
      # (`Q /var/lib/machines 0700`: a btrfs subvolume where possible, which ephemeral
      # containers snapshot); a `d` line here would win over it and make it a plain directory.
      systemd.tmpfiles.rules = [
        "d /nix/var/nix/profiles/per-nspawn 0755 root root -"
        "d /nix/var/nix/gcroots/per-nspawn 0755 root root -"
      ];
    })
  ];
}

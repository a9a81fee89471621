# What one container instance renders to, as plain data. The single implementation of
# nixos/RENDERING.md on the Nix side; used by nixos/module.nix (declarative containers) and
# nixos/lib/eval-container.nix (imperative ones).
#
# Pure: every function takes the evaluated instance options (`inst`, see instance-options.nix)
# and returns attribute sets in the shape of the NixOS options they are assigned to.
{ lib }:

let
  inherit (lib)
    attrValues
    concatMap
    filter
    head
    optional
    optionalAttrs
    optionals
    ;

  units = import ./units.nix { inherit lib; };

  hasPrefixLength = a: builtins.match ".*/[0-9]+" a != null;
  withoutPrefix = a: head (lib.splitString "/" a);
  isV6 = a: lib.hasInfix ":" a;
in
rec {
  inherit units;

  # A name that every consumer takes: systemd-nspawn's machine name (hostname_is_valid: no
  # "_" since systemd 247), the guest's networking.hostName (nixpkgs network-interfaces.nix: one
  # DNS label, 1-63 characters, alphanumeric at both ends) and switch-to-configuration-ng, whose
  # template-instance regex `^(.*)@[^\.]*\.(.*)$` (main.rs, TEMPLATE_UNIT_RE) mis-parses
  # systemd-nspawn@a.b.service, so a dotted instance would never be reloaded or restarted.
  # Same rule as the migrator's src/legacy/names.rs.
  validName = name: builtins.match "[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?" name != null;

  # The guest's default networking.hostName: the name itself. An invalid name fails the
  # module's assertion; until then (anything that reads the container's system before the
  # assertions, e.g. `nix eval` of a unit) the guest gets a cleaned-up name instead of a raw
  # type error from networking.hostName.
  guestHostName =
    name:
    let
      dashed = lib.concatMapStrings (c: if builtins.match "[a-zA-Z0-9]" c != null then c else "-") (
        lib.stringToCharacters name
      );
      trimmed = builtins.match "-*([a-zA-Z0-9](.*[a-zA-Z0-9])?)-*" (builtins.substring 0 63 dashed);
      candidate = if trimmed == null then "" else builtins.head trimmed;
    in
    if validName name then
      name
    else if validName candidate then
      candidate
    else
      "container";

  # No length limit for `ve-<name>`: when it is longer than an interface name may be (15
  # bytes), systemd-nspawn (since systemd 247) names the link with a hash and gives it the full
  # name as an alternative name, and networkd's `[Match] Name=` matches alternative names too
  # (checked with systemd-networkd 252 in tests/legacy_behaviour.rs). Legacy containers with
  # such names ran the same way on kernels with altnames (Linux 5.5+).

  portSpec =
    p:
    "${p.protocol}:${toString p.hostPort}:${
      toString (if p.containerPort == null then p.hostPort else p.containerPort)
    }";

  # nspawn splits a bind spec on `:` and reads `\` as an escape: escape both in the paths
  # (`/srv/a:b` → `/srv/a\:b`), as the migrator's unit-value writer does.
  bindPath = builtins.replaceStrings [ "\\" ":" ] [ "\\\\" "\\:" ];
  bindSpec =
    b:
    (
      if b.hostPath == null then
        bindPath b.mountPoint
      else
        "${bindPath b.hostPath}:${bindPath b.mountPoint}"
    )
    + lib.optionalString (b.options != null) ":${b.options}";

  # `pick` or a base UID: the shared store and profile dirs need idmapped mounts.
  idmapped =
    inst:
    inst.privateUsers.mode == "pick" || builtins.match "[0-9]+(:[0-9]+)?" inst.privateUsers.mode != null;

  hasVeth = inst: inst.network != null && inst.network.veth;

  # network.pointToPoint: a full-length address (/32, /128) is point-to-point.
  fullLength = a: if isV6 a then "128" else "32";
  isFullLength = a: lib.hasSuffix "/${fullLength a}" a;
  # The `[Address]` sections of one end of a point-to-point veth, one address family: its own
  # addresses as given, the first one with the other end's first address as `Peer=` when it is
  # full-length (legacy: `ip addr add <own>` plus `ip route add <other>`).
  p2pAddresses =
    own: other:
    lib.imap0 (
      n: a:
      { Address = a; }
      // optionalAttrs (n == 0 && other != [ ] && isFullLength a) {
        Peer = "${withoutPrefix (head other)}/${fullLength a}";
      }
    ) own;
  # `[Address]` / `[Route]` sections as unit text, appended through `extraConfig`: the
  # `addresses` / `routes` options changed shape between nixpkgs releases (`addressConfig`
  # wrappers before 24.05, plain attribute sets since), extraConfig reads the same in all of
  # them, and networkd treats the sections alike wherever they stand.
  sectionsText =
    section: entries:
    lib.concatMapStrings (
      e:
      "[${section}]\n" + lib.concatStrings (lib.mapAttrsToList (k: v: "${k}=${v}\n") e) + "\n"
    ) entries;

  # The host route to the other end when the own address is not full-length (with a peer
  # the kernel adds that route itself).
  p2pRoutes =
    own: other:
    optional (own != [ ] && other != [ ] && !isFullLength (head own)) {
      Destination = "${withoutPrefix (head other)}/${fullLength (head own)}";
    };

  staticAddresses =
    inst:
    let
      n = inst.network;
    in
    if n == null then
      [ ]
    else
      n.v4.static.hostAddresses
      ++ n.v6.static.hostAddresses
      ++ n.v4.static.containerPool
      ++ n.v6.static.containerPool;

  # The three sections of <name>.nspawn as plain data (defaults resolved), for the imperative
  # files and the introspection data; the module assigns nspawnDefinitions.
  nspawnSettings =
    name: inst: toplevel:
    lib.mapAttrs (
      _: lib.mapAttrs (_: v: if lib.isAttrs v && (v._type or null) == "override" then v.content else v)
    ) (nspawnDefinitions name inst toplevel);

  # The three sections of <name>.nspawn, as `systemd.nspawn.<name>.*Config` definitions.
  # `toplevel` is the container's system (a store path, or any string in previews).
  nspawnDefinitions =
    name: inst: toplevel:
    let
      idmap = p: if idmapped inst then "${p}:${p}:idmap" else p;
      bindIdmap = spec: if idmapped inst then "${spec}:idmap" else spec;
      binds = attrValues inst.bindMounts;
      n = inst.network;
    in
    {
      execConfig = {
        Boot = "no";
        Parameters = "${toplevel}/init";
        KillSignal = "SIGRTMIN+3";
        NotifyReady = "yes";
        PrivateUsers = inst.privateUsers.mode;
      }
      # The stock systemd-nspawn@.service passes --link-journal=try-guest; systemd-nspawn
      # refuses Ephemeral= with a journal link ("--ephemeral and --link-journal= may not be
      # combined"; systemd 252 still takes try-guest but refuses guest and host). The file wins
      # over the command line (--settings=override); `auto` is what legacy ephemeral containers
      # ran with (legacy drops the flag). A default: a raw
      # systemd.nspawn.<name>.execConfig.LinkJournal (a legacy --link-journal= flag) replaces it.
      // optionalAttrs inst.ephemeral {
        Ephemeral = "yes";
        LinkJournal = lib.mkDefault "auto";
      };

      filesConfig = {
        BindReadOnly =
          map idmap [
            "/nix/store"
            "/nix/var/nix/db"
            "/nix/var/nix/daemon-socket"
          ]
          ++ map bindSpec (filter (b: b.isReadOnly) binds);
        Bind = [
          (bindIdmap "/nix/var/nix/profiles/per-nspawn/${name}:/nix/var/nix/profiles")
          (bindIdmap "/nix/var/nix/gcroots/per-nspawn/${name}:/nix/var/nix/gcroots")
        ]
        ++ map bindSpec (filter (b: !b.isReadOnly) binds);
      }
      // optionalAttrs (inst.privateUsers.mode != "no" && inst.privateUsers.ownership != null) {
        PrivateUsersOwnership = inst.privateUsers.ownership;
      };

      networkConfig = {
        Private = if n == null then "no" else "yes";
        VirtualEthernet = if hasVeth inst then "yes" else "no";
      }
      // optionalAttrs (n != null && n.zone != null) { Zone = n.zone; }
      // optionalAttrs (n != null && n.bridge != null) { Bridge = n.bridge; }
      // optionalAttrs (inst.forwardPorts != [ ]) { Port = map portSpec inst.forwardPorts; };
    };

  # Host-side `systemd.network.networks` for a plain veth (no zone, no bridge).
  hostNetworks =
    name: inst:
    let
      n = inst.network;
      v4 = n.v4.static;
      v6 = n.v6.static;
      noStatic = staticAddresses inst == [ ];
      hostAddrs = v4.hostAddresses ++ v6.hostAddresses;
      p2p = n.pointToPoint && !noStatic;
    in
    optionalAttrs (hasVeth inst && n.zone == null && n.bridge == null) {
      "20-ve-${name}" = {
        matchConfig.Name = "ve-${name}";
        networkConfig =
          optionalAttrs (!p2p) {
            # Without a static address, take a /28 and a /64 from networkd's pools, as
            # systemd's own 80-container-ve.network does (DHCPServer= needs an address).
            Address = if noStatic then [ "0.0.0.0/28" "::/64" ] else hostAddrs;
          }
          // optionalAttrs n.masquerade { IPMasquerade = "both"; }
          // optionalAttrs noStatic {
            DHCPServer = "yes";
            LinkLocalAddressing = "yes";
          }
          // optionalAttrs (n.routerAdvertisements && v6.hostAddresses == [ ] && v6.containerPool == [ ]) {
            IPv6SendRA = "yes";
          };
      }
      // optionalAttrs p2p {
        extraConfig =
          sectionsText "Address" (
            p2pAddresses v4.hostAddresses v4.containerPool ++ p2pAddresses v6.hostAddresses v6.containerPool
          )
          + sectionsText "Route" (
            p2pRoutes v4.hostAddresses v4.containerPool ++ p2pRoutes v6.hostAddresses v6.containerPool
          );
      };
    };

  # Host-side units of one zone: the bridge and its network.
  # `members`: the instances (name → inst) that are in this zone.
  zoneNetdevs = zone: zcfg: {
    "20-vz-${zone}" = {
      netdevConfig = {
        Name = "vz-${zone}";
        Kind = "bridge";
      };
    };
  };

  zoneNetworks =
    zone: zcfg: members:
    let
      memberHost = concatMap (
        i: i.network.v4.static.hostAddresses ++ i.network.v6.static.hostAddresses
      ) (attrValues members);
    in
    {
      "20-vz-${zone}" = {
        matchConfig.Name = "vz-${zone}";
        networkConfig = {
          Address = zcfg.v4.addrPool ++ zcfg.v6.addrPool ++ zcfg.hostAddresses ++ memberHost;
          IPMasquerade = "both";
          LinkLocalAddressing = "yes";
          # The bridge has no carrier until the first container starts; configure anyway.
          ConfigureWithoutCarrier = "yes";
        }
        // optionalAttrs (zcfg.v4.addrPool != [ ]) { DHCPServer = "yes"; }
        // optionalAttrs (zcfg.v6.addrPool != [ ]) { IPv6SendRA = "yes"; };
      };
    };

  # Container-side `systemd.network.networks` (goes into the container's system-config).
  # `zoneHostAddresses`: the zone's hostAddresses, gateway fallback for zone members.
  guestNetworks =
    name: inst: zoneHostAddresses:
    let
      n = inst.network;
      v4 = n.v4.static;
      v6 = n.v6.static;
      pool = v4.containerPool ++ v6.containerPool;
      gw4 = if v4.hostAddresses != [ ] then v4.hostAddresses else filter (a: !isV6 a) zoneHostAddresses;
      gw6 = if v6.hostAddresses != [ ] then v6.hostAddresses else filter isV6 zoneHostAddresses;
      gateways =
        optional (v4.containerPool != [ ] && gw4 != [ ]) (withoutPrefix (head gw4))
        ++ optional (v6.containerPool != [ ] && gw6 != [ ]) (withoutPrefix (head gw6));
      noStatic = staticAddresses inst == [ ];
      p2p = n.pointToPoint && pool != [ ];
      # Legacy: `ip route add default via <hostAddress>` on a link without a shared subnet.
      p2pGateways =
        family: hostAddresses:
        optional (family.containerPool != [ ] && hostAddresses != [ ]) {
          Gateway = withoutPrefix (head hostAddresses);
          GatewayOnLink = "yes";
        };
      networkConfig =
        optionalAttrs (pool != [ ] && !p2p) { Address = pool; }
        // optionalAttrs (gateways != [ ] && !p2p) { Gateway = gateways; }
        # mkDefault: the guest's own networking.interfaces.host0 (useDHCP, static addresses)
        # decides when it says something.
        // optionalAttrs (noStatic && n.bridge == null) { DHCP = lib.mkDefault "yes"; };
    in
    # `40-host0`: the name nixpkgs gives the unit of the guest's own `networking.interfaces.host0`
    # and `defaultGateway` (network-interfaces-systemd.nix), so both are merged into one unit by
    # the module system. networkd applies only the first unit matching a link; under separate
    # names the guest's settings would be ignored, where legacy applied its own addresses and
    # routes and the guest's scripted networking alike. Nothing to say (a bridged container
    # without static addresses): no unit of ours.
    optionalAttrs (hasVeth inst && (networkConfig != { } || p2p)) {
      "40-host0" = {
        matchConfig.Name = "host0";
        inherit networkConfig;
      }
      // optionalAttrs p2p {
        extraConfig =
          sectionsText "Address" (
            p2pAddresses v4.containerPool v4.hostAddresses ++ p2pAddresses v6.containerPool v6.hostAddresses
          )
          + sectionsText "Route" (
            p2pRoutes v4.containerPool v4.hostAddresses
            ++ p2pRoutes v6.containerPool v6.hostAddresses
            ++ p2pGateways v4 gw4
            ++ p2pGateways v6 gw6
          );
      };
    };

  # The module added to every container's system-config.
  guestModule =
    name: inst: zoneHostAddresses: hostPlatform:
    { options, lib, ... }:
    {
      config = lib.mkMerge [
        {
          boot.isContainer = true;
          networking.hostName = lib.mkDefault (guestHostName name);
        }
        # DNS. nixpkgs' container-config.nix sets useHostResolvConf = mkDefault true for every
        # container. With the host's network that is what the container needs (nspawn's
        # ResolvConf=auto gives it the host's resolver), so it stays. With a private network the
        # container runs networkd, and networkd.nix enables resolved, which learns the servers
        # by DHCP (or from the guest's own units): the container manages its resolv.conf. Beat
        # container-config's mkDefault (1000) without a second mkDefault (two different
        # mkDefaults are a conflict) and still below anything the user sets (100).
        (lib.mkIf (inst.network != null) {
          networking.useHostResolvConf = lib.mkOverride 900 false;
          networking.useNetworkd = true;
          networking.useDHCP = lib.mkDefault false;
          systemd.network.networks = guestNetworks name inst zoneHostAddresses;
        })
        # Current nixpkgs tells nspawn containers apart (boot.isNspawnContainer implies
        # boot.isContainer and adds the nspawn-specific settings); older ones only know
        # boot.isContainer.
        (
          if options.boot ? isNspawnContainer then { boot.isNspawnContainer = true; } else { }
        )
        (
          if options ? nixpkgs && options.nixpkgs ? hostPlatform then
            { nixpkgs.hostPlatform = lib.mkDefault hostPlatform; }
          else
            { }
        )
      ];
    };

  # Evaluate the container's NixOS system with its own nixpkgs.
  evalSystem =
    name: inst: zoneHostAddresses: hostPlatform:
    # toString: a path is not copied to the store, a flake input (attribute set with outPath)
    # works too.
    import "${toString inst.nixpkgs}/nixos/lib/eval-config.nix" {
      system = null;
      modules = [
        (guestModule name inst zoneHostAddresses hostPlatform)
        inst.system-config
      ];
      inherit (inst) specialArgs;
      prefix = [
        "nixos"
        "containers"
        "instances"
        name
        "system-config"
      ];
    };

  # The ExecStartPre= script: the machine directory nspawn insists on (etc/os-release,
  # etc/machine-id, var/) and the per-container profile and GC-root directories bound into it.
  # A migrated root may hold dangling absolute symlinks (etc/os-release → /etc/static/…): never
  # write through a symlink, it would land on the host.
  preStart = name: ''
    root=/var/lib/machines/${name}
    mkdir -p -m 0755 /nix/var/nix/profiles/per-nspawn/${name} /nix/var/nix/gcroots/per-nspawn/${name}
    if [ ! -e "$root" ] && [ ! -L "$root" ]; then
      mkdir -p -m 0755 "$root"
    fi
    for d in etc var; do
      if [ ! -e "$root/$d" ] && [ ! -L "$root/$d" ]; then
        mkdir -m 0755 "$root/$d"
      fi
    done
    for f in etc/os-release etc/machine-id; do
      if [ ! -e "$root/$f" ] && [ ! -L "$root/$f" ]; then
        : > "$root/$f"
      fi
    done
  '';

  # The ExecReload= script. It must not mention the container's system by store path:
  # the drop-in would then change on every update and switch-to-configuration would restart
  # instead of reload. It reads the current system from the .nspawn file instead.
  reloadScriptText =
    {
      name,
      sed,
      systemdRun,
      reloadScript ? null,
    }:
    ''
      set -eu
      nspawn=/etc/systemd/nspawn/${name}.nspawn
      params=$(${sed} -n 's/^Parameters=//p' "$nspawn")
      toplevel=''${params%/init}
      if [ -z "$toplevel" ] || [ ! -e "$toplevel/bin/switch-to-configuration" ]; then
        echo "systemd-nspawn@${name}: no Parameters=<system>/init in $nspawn, cannot reload" >&2
        exit 1
      fi
    ''
    + (
      if reloadScript != null then
        ''
          exec ${reloadScript} ${name} "$toplevel"
        ''
      else
        ''
          exec ${systemdRun} --machine=${name} --pipe --wait --quiet --collect \
            --service-type=exec -- "$toplevel/bin/switch-to-configuration" test
        ''
    );

  # restartTriggers / reloadTriggers / *IfChanged of the drop-in, per activation strategy.
  # `restartHash`: hash of everything that needs a restart (the .nspawn settings without
  # Parameters=, the host-side network units).
  activationSettings =
    inst: toplevel: restartHash:
    {
      none = {
        restartIfChanged = false;
        restartTriggers = [ ];
        reloadTriggers = [ ];
      };
      # reloadIfChanged turns every change, restart triggers included, into a reload.
      reload = {
        reloadIfChanged = true;
        restartTriggers = [
          toplevel
          restartHash
        ];
        reloadTriggers = [ ];
      };
      restart = {
        restartTriggers = [
          toplevel
          restartHash
        ];
        reloadTriggers = [ ];
      };
      # Not restartTriggers/reloadTriggers: systemd-lib writes those into a writeText file
      # whose store path changes with every nixpkgs update (its builder changes), and a changed
      # X-Restart-Triggers= path is a restart. The values themselves go into the unit instead:
      # X-Reload-Triggers= is the container's system (a reload exactly when it changes),
      # X-NixOS-Nspawn-Settings= the hash of everything that needs a restart (any other [Unit]
      # key that changes is a restart for switch-to-configuration; systemd ignores X- keys).
      dynamic = {
        restartTriggers = [ ];
        reloadTriggers = [ ];
        unitConfig = {
          X-Reload-Triggers = [ "${toplevel}" ];
          X-NixOS-Nspawn-Settings = restartHash;
        };
      };
    }
    .${inst.activation.strategy};

  restartHash =
    nspawn: networks:
    builtins.hashString "sha256" (
      builtins.toJSON {
        nspawn = nspawn // {
          execConfig = removeAttrs nspawn.execConfig [ "Parameters" ];
        };
        inherit networks;
      }
    );

  credentialFlags = inst: map (c: "--load-credential=${c.id}:${c.path}") inst.credentials;

  # The stock systemd-nspawn@.service command line (`program` is systemd-nspawn) plus the
  # instance's credentials: the ExecStart= a drop-in needs when it has to add flags.
  templateExecStart =
    program: inst:
    builtins.concatStringsSep " " (
      [
        program
        "--quiet"
        "--keep-unit"
        "--boot"
        "--link-journal=try-guest"
        "--network-veth"
        "-U"
        "--settings=override"
        "--machine=%i"
      ]
      ++ credentialFlags inst
    );

  # JSON-able description of an instance (everything but the system itself).
  describe =
    name: inst:
    {
      inherit name;
      inherit (inst)
        forwardPorts
        ephemeral
        autoStart
        timeoutStartSec
        restart
        privateUsers
        credentials
        ;
      network = inst.network;
      activation = {
        inherit (inst.activation) strategy;
        reloadScript = if inst.activation.reloadScript == null then null else toString inst.activation.reloadScript;
      };
      bindMounts = lib.mapAttrs (_: b: { inherit (b) hostPath isReadOnly options; }) inst.bindMounts;
    };

  # Whether a list of addresses contains duplicates, by address without prefix.
  addressKey = withoutPrefix;

  inherit hasPrefixLength withoutPrefix;
}

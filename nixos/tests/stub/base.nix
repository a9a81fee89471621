# Test stub: the parts of NixOS that the real nixpkgs modules evaluated here (see host.nix and
# fake-nixpkgs/nixos/lib/eval-config.nix) read but that are not among the vendored files, as
# minimal option declarations with NixOS' defaults. Definitions of options that no module here
# declares (the rest of NixOS: users, security, services, ...) are ignored (`_module.check =
# false`), so configurations written for a real host evaluate unchanged; ../lib/check-options.nix
# checks separately that everything nixos/ itself defines is declared. Nothing here renders text:
# that is the real files' job.
nixpkgs:
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption types;
  opt = type: default: mkOption { inherit type default; };
  anything = opt types.anything;
  # The vendored systemd-network-units.nix is older than the vendored networkd.nix: it still
  # reads list sections under their old keys (`routes = [ { routeConfig = …; } ]`), which the
  # newer networkd.nix has already flattened (`routes = [ { Gateway = …; } ]`). With a nixpkgs
  # checkout the pair matches and nothing is changed; with the mismatched pair each flat entry
  # is put back under its old key before the real renderer sees it.
  oldSubsectionKeys = {
    addresses = "addressConfig";
    routingPolicyRules = "routingPolicyRuleConfig";
    routes = "routeConfig";
    dhcpServerStaticLeases = "dhcpServerStaticLeaseConfig";
    bridgeFDBs = "bridgeFDBConfig";
    bridgeMDBs = "bridgeMDBConfig";
    bridgeVLANs = "bridgeVLANConfig";
    wireguardPeers = "wireguardPeerConfig";
  };
  unitsText = builtins.readFile "${nixpkgs}/nixos/lib/systemd-network-units.nix";
  readsOldKeys = lib.hasInfix "x.routeConfig" unitsText;
  nest =
    def:
    def
    // lib.mapAttrs (
      field: key: map (x: if x ? ${key} then x else { ${key} = x; }) def.${field}
    ) (lib.filterAttrs (field: _: def ? ${field}) oldSubsectionKeys);
  networkUnitsShim =
    units:
    if readsOldKeys then
      units
      // {
        networkToUnit = def: units.networkToUnit (nest def);
        netdevToUnit = def: units.netdevToUnit (nest def);
      }
    else
      units;
in
{
  options = {
    assertions = opt (types.listOf types.unspecified) [ ];
    warnings = opt (types.listOf types.str) [ ];

    # nixos/modules/system/etc/etc.nix: the type the real modules write into.
    environment.etc = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule (
          { name, config, options, ... }:
          {
            freeformType = types.attrsOf types.anything;
            options = {
              enable = opt types.bool true;
              target = opt types.str name;
              text = opt (types.nullOr types.lines) null;
              source = mkOption { type = types.unspecified; };
              mode = opt types.str "symlink";
            };
            config.source = lib.mkIf (config.text != null) (
              lib.mkDerivedConfig options.text (pkgs.writeText "etc-${baseNameOf name}")
            );
          }
        )
      );
    };
    environment.systemPackages = opt (types.listOf types.unspecified) [ ];

    boot.kernelPackages = anything { kernel.version = "6.12"; };
    boot.kernelModules = opt (types.listOf types.str) [ ];
    boot.kernel.sysctl = opt (types.attrsOf types.anything) { };
    boot.initrd.systemd.enable = opt types.bool false;
    boot.initrd.network.enable = opt types.bool false;
    boot.initrd.network.flushBeforeStage2 = opt types.bool true;
    boot.initrd.network.udhcpc.enable = opt types.bool false;
    boot.initrd.network.udhcpc.extraArgs = opt (types.listOf types.str) [ ];

    system.nixos.distroId = opt types.str "nixos";
    system.build.installBootLoader = opt types.unspecified null;
    system.activationScripts = opt (types.attrsOf types.unspecified) { };

    # nixos/modules/system/boot/systemd/tmpfiles.nix
    systemd.tmpfiles.rules = opt (types.listOf types.str) [ ];
    users.users = opt (types.attrsOf types.anything) { };
    users.groups = opt (types.attrsOf types.anything) { utmp.name = "utmp"; };
    services.resolved.enable = opt types.bool false;
    services.openssh.enable = opt types.bool false;
    services.openssh.package = anything (pkgs.openssh or null);
    boot.extraSystemdUnitPaths = opt (types.listOf types.str) [ ];
    boot.initrd.systemd.package = anything pkgs.systemd;
    i18n.imperativeLocale = opt types.bool false;
    ids.uids = opt (types.attrsOf types.int) { systemd-network = 152; systemd-resolve = 153; };
    ids.gids = opt (types.attrsOf types.int) { systemd-journal = 62; systemd-network = 152; systemd-resolve = 153; utmp = 29; };
    lib.kernelConfig.isEnabled = anything (_: true);
    system.etc.overlay.enable = opt types.bool false;
    system.fsPackages = opt (types.listOf types.unspecified) [ ];
    time.timeZone = opt (types.nullOr types.str) null;
    virtualisation.vswitch.package = anything null;
    virtualisation.containers.enable = opt types.bool false;
    system.stateVersion = opt types.str "26.05";
    networking.networkmanager.enable = opt types.bool false;
    nix.package = anything pkgs.nix;
    services.firewalld.enable = opt types.bool false;
    services.udev.enable = opt types.bool true;

    # nixos/modules/services/networking/nftables.nix (the tables the firewall fills).
    networking.nftables = {
      enable = opt types.bool false;
      rulesetFile = opt (types.nullOr types.unspecified) null;
      ruleset = opt types.lines "";
      tables = opt (types.attrsOf (
        types.submodule (
          { name, ... }:
          {
            options = {
              enable = opt types.bool true;
              name = opt types.str name;
              family = mkOption { type = types.str; };
              content = opt types.lines "";
            };
          }
        )
      )) { };
    };
    services.nscd.enable = opt types.bool true;
    services.dbus.enable = opt types.bool true;
    security.polkit.enable = opt types.bool false;
  };

  config = {
    _module.check = false;
    # nixpkgs' utils, with one observation point: the unit sets generateUnits turns into a
    # directory (/etc/systemd/nspawn, /etc/systemd/system) stay visible as `units` on its
    # result, so the tests read the text nixpkgs put into each file.
    _module.args.utils =
      let
        real = import "${nixpkgs}/nixos/lib/utils.nix" { inherit lib config pkgs; };
        sdlib = real.systemdUtils.lib;
      in
      real
      // {
        systemdUtils = real.systemdUtils // {
          network = real.systemdUtils.network // {
            units = networkUnitsShim real.systemdUtils.network.units;
          };
          lib =
            # The vendored networkd.nix (see ../shared/nixpkgs/MANIFEST.md) is newer than the
            # vendored systemd-lib.nix and calls a check the latter lacks: systemd.network(5)'s
            # [IPv6AcceptRA] RouteMetric=, an integer or three integers separated by ":". Only
            # added when the systemd-lib in use has none.
            lib.optionalAttrs (!(sdlib ? assertRouteMetricOrTriple)) {
              assertRouteMetricOrTriple =
                name: group: attr:
                let
                  v = attr.${name};
                  ok =
                    if lib.isInt v then
                      v >= 0 && v <= 4294967295
                    else
                      lib.isString v && builtins.match "[0-9]+(:[0-9]+:[0-9]+)?" v != null;
                in
                lib.optional (
                  attr ? ${name} && !ok
                ) "Systemd ${group} field `${name}' must be an integer or three integers separated by \":\".";
            }
            // sdlib
            // {
              generateUnits = args: sdlib.generateUnits args // { inherit (args) units; };
            };
        };
      };
  };
}

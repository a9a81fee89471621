# Test stub: a NixOS host reduced to the options nixos.containers reads and writes, with
# nixpkgs' types and rendering (see systemd-options.nix). Every other option path is accepted
# as free-form data, so configurations written for a real host evaluate unchanged.
#
# Mirrors, from nixpkgs:
# - nixos/modules/system/boot/systemd/nspawn.nix: systemd.nspawn.<name>.{exec,files,network}Config
#   with the same allowed keys, rendered to the text of /etc/systemd/nspawn/<name>.nspawn;
# - nixos/lib/systemd-lib.nix + systemd-unit-options.nix: systemd.services.<name> with
#   restartTriggers/reloadTriggers (X-Restart-Triggers=/X-Reload-Triggers= pointing at a
#   writeText of the triggers), restartIfChanged/reloadIfChanged, preStart (ExecStartPre= a
#   unit script), overrideStrategy, wantedBy;
# - nixos/modules/system/boot/systemd.nix: "mymachines" in system.nssDatabases.hosts.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib) mkOption types;
  fake = import ./fake.nix { inherit lib; };
  units = import ../../lib/units.nix { inherit lib; };

  inherit (fake) unitOption;

  # nspawn.nix's checkExec/checkFiles/checkNetwork (assertOnlyFields).
  onlyFields =
    fields:
    types.addCheck (types.attrsOf unitOption) (
      attrs:
      let
        bad = lib.filter (n: !builtins.elem n fields) (builtins.attrNames attrs);
      in
      if bad == [ ] then true else builtins.trace "Systemd nspawn has extra fields [${toString bad}]." false
    );
  execFields = [
    "Boot" "ProcessTwo" "Parameters" "Environment" "User" "WorkingDirectory" "PivotRoot"
    "Capability" "DropCapability" "NoNewPrivileges" "KillSignal" "Personality" "MachineID"
    "PrivateUsers" "NotifyReady" "SystemCallFilter" "LimitCPU" "LimitFSIZE" "LimitDATA"
    "LimitSTACK" "LimitCORE" "LimitRSS" "LimitNOFILE" "LimitAS" "LimitNPROC" "LimitMEMLOCK"
    "LimitLOCKS" "LimitSIGPENDING" "LimitMSGQUEUE" "LimitNICE" "LimitRTPRIO" "LimitRTTIME"
    "OOMScoreAdjust" "CPUAffinity" "Hostname" "ResolvConf" "Timezone" "LinkJournal" "Ephemeral"
    "AmbientCapability"
  ];
  filesFields = [
    "ReadOnly" "Volatile" "Bind" "BindReadOnly" "TemporaryFileSystem" "Overlay"
    "OverlayReadOnly" "PrivateUsersChown" "BindUser" "Inaccessible" "PrivateUsersOwnership"
  ];
  networkFields = [
    "Private" "VirtualEthernet" "VirtualEthernetExtra" "Interface" "MACVLAN" "IPVLAN" "Bridge"
    "Zone" "Port"
  ];

  nspawnModule = {
    options = {
      execConfig = mkOption {
        type = onlyFields execFields;
        default = { };
      };
      filesConfig = mkOption {
        type = onlyFields filesFields;
        default = { };
      };
      networkConfig = mkOption {
        type = onlyFields networkFields;
        default = { };
      };
    };
  };

  listOfStr = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };

  serviceModule =
    { name, config, ... }:
    {
      freeformType = types.attrsOf types.anything;
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
        };
        overrideStrategy = mkOption {
          type = types.enum [
            "asDropinIfExists"
            "asDropin"
          ];
          default = "asDropinIfExists";
        };
        description = mkOption {
          type = types.str;
          default = "";
        };
        wantedBy = listOfStr;
        after = listOfStr;
        before = listOfStr;
        wants = listOfStr;
        requires = listOfStr;
        partOf = listOfStr;
        restartTriggers = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        reloadTriggers = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        restartIfChanged = mkOption {
          type = types.bool;
          default = true;
        };
        reloadIfChanged = mkOption {
          type = types.bool;
          default = false;
        };
        stopIfChanged = mkOption {
          type = types.bool;
          default = true;
        };
        preStart = mkOption {
          type = types.lines;
          default = "";
        };
        path = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        environment = mkOption {
          type = types.attrsOf (types.nullOr types.str);
          default = { };
        };
        unitConfig = mkOption {
          type = types.attrsOf unitOption;
          default = { };
        };
        serviceConfig = mkOption {
          type = types.attrsOf unitOption;
          default = { };
        };
        text = mkOption {
          type = types.str;
          readOnly = true;
        };
      };
      config =
        let
          triggers =
            ts:
            toString (
              map (x: if builtins.isPath x then "${x}" else x) (lib.flatten ts)
            );
          scriptName = builtins.replaceStrings [ "\\" "@" ] [ "-" "_" ] "${name}-pre-start";
          # stage2ServiceConfig: the default PATH of every NixOS service.
          fullPath = config.path ++ [
            pkgs.coreutils
            pkgs.findutils
            pkgs.gnugrep
            pkgs.gnused
            pkgs.systemd
          ];
        in
        {
          environment.PATH = "${lib.concatMapStringsSep ":" (p: "${p}/bin") fullPath}:${
            lib.concatMapStringsSep ":" (p: "${p}/sbin") fullPath
          }";
          unitConfig =
            lib.optionalAttrs (config.requires != [ ]) { Requires = toString config.requires; }
            // lib.optionalAttrs (config.wants != [ ]) { Wants = toString config.wants; }
            // lib.optionalAttrs (config.after != [ ]) { After = toString config.after; }
            // lib.optionalAttrs (config.before != [ ]) { Before = toString config.before; }
            // lib.optionalAttrs (config.partOf != [ ]) { PartOf = toString config.partOf; }
            // lib.optionalAttrs (config.restartTriggers != [ ]) {
              X-Restart-Triggers = fake.storePath "X-Restart-Triggers-${name}" (triggers config.restartTriggers);
            }
            // lib.optionalAttrs (config.reloadTriggers != [ ]) {
              X-Reload-Triggers = fake.storePath "X-Reload-Triggers-${name}" (triggers config.reloadTriggers);
            }
            // lib.optionalAttrs (config.description != "") { Description = config.description; };
          serviceConfig = lib.mkIf (config.preStart != "") {
            ExecStartPre = [
              "${
                fake.storePath "unit-script-${scriptName}" "set -e\n\n${config.preStart}"
              }/bin/${scriptName}"
            ];
          };
          text = units.serviceText {
            inherit (config)
              unitConfig
              environment
              serviceConfig
              wantedBy
              reloadIfChanged
              restartIfChanged
              stopIfChanged
              ;
          };
        };
    };
in
{
  imports = [ ./systemd-options.nix ];

  # Anything not declared below is accepted and kept as data.
  freeformType = types.attrsOf types.anything;

  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    networking.useNetworkd = mkOption {
      type = types.bool;
      default = false;
    };
    system.nssDatabases.hosts = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    # The legacy nixos-container module's option, for the coexistence assertion.
    containers = mkOption {
      type = types.attrsOf types.anything;
      default = { };
    };
    systemd.nspawn = mkOption {
      type = types.attrsOf (types.submodule nspawnModule);
      default = { };
    };
    systemd.services = mkOption {
      type = types.attrsOf (types.submodule serviceModule);
      default = { };
    };
    systemd.tmpfiles.rules = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
  };

  config = {
    # As nixos/modules/system/boot/systemd.nix and config/nsswitch.nix.
    system.nssDatabases.hosts = lib.mkMerge [
      (lib.mkOrder 400 [ "mymachines" ])
      (lib.mkOrder 998 [ "files" ])
      (lib.mkOrder 999 [ "myhostname" ])
      (lib.mkOrder 1499 [ "dns" ])
    ];
  };
}

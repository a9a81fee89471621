# Test stub of nixpkgs' nixos/lib/eval-config.nix: evaluates a container's system-config like
# the real one (same arguments, same module system, `config`/`options` in the result) but
# against a tiny option set (../../../systemd-options.nix plus the handful of options the
# module sets) with everything else accepted as free-form data. Nothing is built:
# system.build.toplevel is a fake store path that changes whenever the configuration does.
{
  system ? null,
  modules,
  specialArgs ? { },
  prefix ? [ ],
  lib ? import ../../lib,
  ...
}:

let
  fake = import ../../../fake.nix { inherit lib; };
  inherit (lib) mkOption types;

  base =
    { config, ... }:
    {
      imports = [ ../../../systemd-options.nix ];
      freeformType = types.attrsOf types.anything;
      options = {
        # As nixos/modules/virtualisation/nixos-containers.nix (current nixpkgs).
        boot.isContainer = mkOption {
          type = types.bool;
          default = config.boot.isNspawnContainer;
        };
        boot.isNspawnContainer = mkOption {
          type = types.bool;
          default = false;
        };
        networking = {
          hostName = mkOption {
            type = types.str;
            default = "nixos";
          };
          useNetworkd = mkOption {
            type = types.bool;
            default = false;
          };
          useDHCP = mkOption {
            type = types.bool;
            default = true;
          };
          useHostResolvConf = mkOption {
            type = types.bool;
            default = config.boot.isContainer;
          };
        };
        nixpkgs.hostPlatform = mkOption {
          type = types.unspecified;
        };
        environment.systemPackages = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        assertions = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        system.build.toplevel = mkOption {
          type = types.str;
          readOnly = true;
        };
      };
      config = {
        _module.args.pkgs = fake.pkgs ../.. config.nixpkgs.hostPlatform;
        system.build.toplevel =
          let
            data = builtins.toJSON (
              fake.plain (removeAttrs config [ "_module" "system" ])
            );
          in
          fake.storePath "nixos-system-${config.networking.hostName}" data;
      };
    };

  eval = lib.evalModules {
    inherit prefix;
    modules = [ base ] ++ modules;
    specialArgs = {
      modulesPath = toString ../../nixos/modules;
    }
    // specialArgs;
  };
in
eval // { inherit (eval.config._module.args) pkgs; }

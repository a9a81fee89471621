# Test stub of nixpkgs' nixos/lib/eval-config.nix: evaluates a container's system-config like
# the real one (same arguments, same module system, `config`/`options`/`pkgs` in the result)
# with nixpkgs' real modules for what a container's networking is made of: container-config.nix,
# nixos-containers.nix (boot.isContainer/isNspawnContainer), network-interfaces*.nix (the
# networking options and their types, networking.hostName included), networkd.nix, systemd.nix.
# The rest of NixOS is ../../../base.nix. Nothing is built: system.build.toplevel is a fake store
# path that changes whenever the configuration does.
{
  system ? null,
  modules,
  specialArgs ? { },
  prefix ? [ ],
  lib ? import ../../lib,
  ...
}:

let
  nixpkgs = import ../../../../lib/nixpkgs.nix;
  fake = import ../../../fake.nix { inherit lib; };
  inherit (lib) mkOption types;

  base =
    { config, ... }@args:
    {
      imports = [
        (import ../../../base.nix nixpkgs)
        "${nixpkgs}/nixos/modules/virtualisation/container-config.nix"
        "${nixpkgs}/nixos/modules/virtualisation/nixos-containers.nix"
        "${nixpkgs}/nixos/modules/tasks/network-interfaces.nix"
        "${nixpkgs}/nixos/modules/tasks/network-interfaces-systemd.nix"
        "${nixpkgs}/nixos/modules/system/boot/networkd.nix"
        "${nixpkgs}/nixos/modules/system/boot/systemd.nix"
      ];
      options = {
        nixpkgs.hostPlatform = mkOption {
          type = types.unspecified;
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
            data = builtins.toJSON {
              inherit (config.networking) hostName;
              units = lib.mapAttrs (_: u: u.text) config.systemd.network.units;
              # What the modules define, modules that are functions called with the module
              # arguments (options no module here declares are ignored by the evaluation, so
              # the configuration itself has to be part of the fake system).
              definitions = fake.plain (
                map (m: if lib.isFunction m then m (args // { inherit lib; }) else m) modules
              );
            };
          in
          fake.storePath "nixos-system-${config.networking.hostName}" data;
      };
    };

  eval = lib.evalModules {
    inherit prefix;
    modules = [ base ] ++ modules;
    specialArgs = {
      modulesPath = "${nixpkgs}/nixos/modules";
    }
    // specialArgs;
  };
in
eval // { inherit (eval.config._module.args) pkgs; }

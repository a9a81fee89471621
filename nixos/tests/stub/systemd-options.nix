# Test stub: the subset of NixOS's systemd options that nixos.containers writes to, with the
# same types and merge rules as nixpkgs (nixos/lib/systemd-unit-options.nix,
# nixos/modules/system/boot/{networkd,systemd/nspawn}.nix), rendered by ../../lib/units.nix the
# way nixpkgs renders them. Used for the host (render.nix) and for the guest
# (stub/fake-nixpkgs/nixos/lib/eval-config.nix). Nothing is built: store paths are fake but
# deterministic (a hash of the content).
{ config, lib, ... }:

let
  inherit (lib) mkOption types;
  fake = import ./fake.nix { inherit lib; };
  units = import ../../lib/units.nix { inherit lib; };

  inherit (fake) unitOption;
  section = mkOption {
    type = types.attrsOf unitOption;
    default = { };
  };
  strList = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };

  networkModule = {
    freeformType = types.attrsOf types.anything;
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      matchConfig = section;
      linkConfig = section;
      networkConfig = section;
      dhcpV4Config = section;
      dhcpServerConfig = section;
      ipv6SendRAConfig = section;
      address = strList;
      gateway = strList;
      dns = strList;
      routes = mkOption {
        type = types.listOf (types.submodule { options.routeConfig = section; });
        default = [ ];
      };
      extraConfig = mkOption {
        type = types.lines;
        default = "";
      };
    };
  };

  netdevModule = {
    freeformType = types.attrsOf types.anything;
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      matchConfig = section;
      netdevConfig = section;
      bridgeConfig = section;
      macvlanConfig = section;
      extraConfig = mkOption {
        type = types.lines;
        default = "";
      };
    };
  };
in
{
  options.systemd = {
    package = mkOption {
      type = types.str;
      default = fake.storePath "systemd-257" "systemd";
    };
    network = {
      enable = mkOption {
        type = types.bool;
        default = config.networking.useNetworkd or false;
      };
      networks = mkOption {
        type = types.attrsOf (types.submodule networkModule);
        default = { };
      };
      netdevs = mkOption {
        type = types.attrsOf (types.submodule netdevModule);
        default = { };
      };
      # What nixpkgs puts in /etc/systemd/network: file name → text.
      renderedUnits = mkOption {
        type = types.attrsOf types.str;
        readOnly = true;
      };
    };
  };

  config.systemd.network.renderedUnits =
    lib.mapAttrs' (n: v: lib.nameValuePair "${n}.network" (units.networkText v)) (
      lib.filterAttrs (_: v: v.enable) config.systemd.network.networks
    )
    // lib.mapAttrs' (n: v: lib.nameValuePair "${n}.netdev" (units.netdevText v)) (
      lib.filterAttrs (_: v: v.enable) config.systemd.network.netdevs
    );
}

# What a host gets from a configuration that uses nixos.containers, as plain data, without
# nixpkgs and without building anything:
#
#   NIXPKGS_LIB=/path/to/nixpkgs/lib nix-instantiate --eval --strict --json nixos/tests/render.nix \
#     --arg nixpkgsLib /path/to/nixpkgs/lib --arg configuration ./nspawn-containers.nix
#
# `configuration` is a NixOS module (a path, a function or an attribute set), for example the
# file the migrator writes. It is evaluated together with ../default.nix against the stub host
# in ./stub/host.nix (nixpkgs' option types and unit rendering for the options the module
# writes, everything else free-form); each container's `nixpkgs` defaults to the stub tree in
# ./stub/fake-nixpkgs, whose eval-config.nix evaluates system-config and fakes the toplevel.
# NIXPKGS_LIB must also be set in the environment, for that stub tree.
#
# Result:
#   nspawn.<name>           text of /etc/systemd/nspawn/<name>.nspawn
#   network."<file name>"   host networkd units (.network and .netdev), as in /etc/systemd/network
#   guest.<name>."<file>"   the container's own networkd units
#   dropins.<name>          /etc/systemd/system/systemd-nspawn@<name>.service.d/overrides.conf
#   scripts.<name>          { preStart; reload; } shell script bodies
#   toplevel.<name>         the (fake) store path of the container's system
#   description.<name>      the JSON description of the instance
#   assertions              messages of failed assertions
#   warnings
{
  nixpkgsLib,
  configuration,
  hostPlatform ? {
    system = "x86_64-linux";
  },
}:

let
  lib = import nixpkgsLib;
  fake = import ./stub/fake.nix { inherit lib; };
  units = import ../lib/units.nix { inherit lib; };

  eval = lib.evalModules {
    modules = [
      ./stub/host.nix
      ../default.nix
      configuration
      { _module.args.pkgs = fake.pkgs ./stub/fake-nixpkgs hostPlatform; }
    ];
  };
  cfg = eval.config;
  rendered = cfg.nixos.containers.rendered;
in
{
  nspawn = lib.mapAttrs (_: units.nspawnText) cfg.systemd.nspawn;
  network = cfg.systemd.network.renderedUnits;
  guest = lib.mapAttrs (_: r: r.system.config.systemd.network.renderedUnits) rendered;
  dropins = lib.mapAttrs' (
    n: v: lib.nameValuePair (lib.removePrefix "systemd-nspawn@" n) v.text
  ) (lib.filterAttrs (n: _: lib.hasPrefix "systemd-nspawn@" n) cfg.systemd.services);
  scripts = lib.mapAttrs (_: r: {
    inherit (r) preStart;
    reload = r.reloadScript;
  }) rendered;
  toplevel = lib.mapAttrs (_: r: r.toplevel) rendered;
  description = lib.mapAttrs (_: r: fake.plain r.description) rendered;
  guestSettings = lib.mapAttrs (_: r: {
    inherit (r.system.config.boot) isContainer isNspawnContainer;
    inherit (r.system.config.networking)
      hostName
      useNetworkd
      useHostResolvConf
      useDHCP
      ;
  }) rendered;
  assertions = map (a: a.message) (lib.filter (a: !a.assertion) cfg.assertions);
  inherit (cfg) warnings;
}

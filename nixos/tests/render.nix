# What a host gets from a configuration that uses nixos.containers, as plain data, rendered by
# the real nixpkgs code and without building anything:
#
#   NIXPKGS=/path/to/nixpkgs nix-instantiate --eval --read-write-mode --strict --json \
#     nixos/tests/render.nix \
#     --arg configuration ./nspawn-containers.nix
#
# (without NIXPKGS: the vendored files in ../shared/nixpkgs next to the repository.)
#
# `configuration` is a NixOS module (a path, a function or an attribute set), for example the
# file the migrator writes. It is evaluated together with ../default.nix and nixpkgs' own
# systemd, nspawn, networkd, firewall, nsswitch and networking modules (./stub/host.nix); each
# container's `nixpkgs` defaults to the stub tree in ./stub/fake-nixpkgs, whose eval-config.nix
# evaluates system-config with nixpkgs' container-config.nix, networking and networkd modules and
# fakes only the toplevel. Packages are fake derivations (./stub/fake.nix): their paths are a
# hash of name and content; NIXOS_NSPAWN_FAKE_SALT=<anything> changes them all (a nixpkgs
# update), NIXOS_NSPAWN_FAKE_PKGS="a b" adds packages a guest configuration names. Without a
# full checkout's nixos/modules/services/networking/helpers.nix the harness writes a shimmed
# firewall-iptables.nix into the store, hence --read-write-mode (lib/firewall-iptables.nix).
#
# Result:
#   nspawn.<name>           text of /etc/systemd/nspawn/<name>.nspawn (nixpkgs' nspawn.nix)
#   network."<file name>"   host networkd units (.network and .netdev, nixpkgs' networkd.nix)
#   guest.<name>."<file>"   the container's own networkd units
#   units."<unit>"          text of every unit file (or drop-in) NixOS writes for the containers:
#                           systemd-nspawn@<name>.service and the systemd-nspawn@.service drop-in
#   dropins.<name>          the text NixOS writes for systemd-nspawn@<name>.service
#   unitStrategy.<unit>     asDropin / asDropinIfExists (full unit unless upstream has one)
#   wants."<target>"        units the target wants (wantedBy)
#   firewallInterfaces      per interface the ports nixpkgs' firewall opens
#   nftables                with `nftables = true`: the nixos-fw table as `nft -f` reads it
#   tmpfiles                systemd.tmpfiles.rules
#   imperativeNetwork       the nixos-nspawn-imperative-network service (lib/imperative-paths.nix)
#   scripts.<name>          { preStart; reload; } shell script bodies
#   toplevel.<name>         the (fake) store path of the container's system
#   description.<name>      the JSON description of the instance
#   guestSettings.<name>    the container's evaluated networking settings
#   undeclared.host         option paths nixos/ defines on the host that no option declares
#   undeclared.guest.<name> the same for the module it adds to each container
#   assertions              messages of failed assertions (when there are any, only these and
#                           the warnings: NixOS stops there too)
#   warnings
{
  configuration,
  nixpkgs ? import ./lib/nixpkgs.nix,
  hostPlatform ? {
    system = "x86_64-linux";
  },
  # Also render the firewall with nftables (networking.nftables.enable).
  nftables ? false,
  # Render even when assertions fail (to check that nothing but the assertions fails).
  ignoreAssertions ? false,
}:

let
  lib = import "${nixpkgs}/lib";
  fake = import ./stub/fake.nix { inherit lib; };

  eval = lib.evalModules {
    modules = [
      (import ./stub/host.nix nixpkgs)
      ../default.nix
      configuration
      {
        _module.args.pkgs = fake.pkgs ./stub/fake-nixpkgs hostPlatform;
        networking.nftables.enable = lib.mkDefault nftables;
      }
    ];
  };
  cfg = eval.config;
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) cfg.assertions);
  rendered = cfg.nixos.containers.rendered;
  checkOptions = import ./lib/check-options.nix { inherit lib; };
  I = import ../lib/instance.nix { inherit lib; };
  ours = n: lib.hasPrefix "systemd-nspawn@" n;
  units = lib.filterAttrs (n: u: ours n && u.enable) cfg.systemd.units;
  # As NixOS' toplevel: failed assertions stop the evaluation before anything is rendered.
  ifAssertionsHold =
    result:
    if failedAssertions != [ ] && !ignoreAssertions then
      {
        assertions = failedAssertions;
        inherit (cfg) warnings;
      }
    else
      result;
in
ifAssertionsHold {
  nspawn = lib.mapAttrs' (n: v: lib.nameValuePair (lib.removeSuffix ".nspawn" n) v.text) (
    lib.filterAttrs (_: v: v.enable) (cfg.environment.etc."systemd/nspawn".source.units or { })
  );
  network = lib.mapAttrs (_: u: u.text) (lib.filterAttrs (_: u: u.enable) cfg.systemd.network.units);
  guest = lib.mapAttrs (
    _: r: lib.mapAttrs (_: u: u.text) (lib.filterAttrs (_: u: u.enable) r.system.config.systemd.network.units)
  ) rendered;
  units = lib.mapAttrs (_: u: u.text) units;
  unitStrategy = lib.mapAttrs (_: u: u.overrideStrategy) units;
  dropins = lib.mapAttrs' (
    n: u: lib.nameValuePair (lib.removeSuffix ".service" (lib.removePrefix "systemd-nspawn@" n)) u.text
  ) (lib.filterAttrs (n: _: n != "systemd-nspawn@.service") units);
  wants = lib.foldl' (
    acc: n:
    lib.foldl' (a: t: a // { ${t} = (a.${t} or [ ]) ++ [ n ]; }) acc (cfg.systemd.units.${n}.wantedBy or [ ])
  ) { } (lib.attrNames units);
  # Per interface, what nixpkgs' firewall.nix opens (iptables and nftables render from this).
  firewallInterfaces = lib.mapAttrs (_: i: {
    inherit (i) allowedTCPPorts allowedUDPPorts;
  }) cfg.networking.firewall.allInterfaces;
  # The nixos-fw table of firewall-nftables.nix, as nftables.nix hands it to `nft -f`.
  nftables =
    let
      t = cfg.networking.nftables.tables."nixos-fw";
    in
    if cfg.networking.nftables.enable then "table ${t.family} ${t.name} {\n${t.content}\n}\n" else null;
  tmpfiles = cfg.systemd.tmpfiles.rules;
  imperativeNetwork =
    let
      s = cfg.systemd.services.nixos-nspawn-imperative-network;
    in
    {
      inherit (s)
        script
        wantedBy
        before
        after
        unitConfig
        serviceConfig
        ;
    };
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
    resolved = r.system.config.services.resolved.enable;
  }) rendered;
  # Option paths nixos/ defines that nothing declares (see lib/check-options.nix).
  undeclared = {
    host = checkOptions eval.options (
      (import ../module.nix {
        inherit (eval) config options;
        inherit lib;
        pkgs = eval.config._module.args.pkgs;
      }).config
    );
    guest = lib.mapAttrs (
      name: r:
      checkOptions r.system.options (
        (I.guestModule name cfg.nixos.containers.instances.${name} [ ] hostPlatform {
          inherit lib;
          inherit (r.system) options;
        }).config
      )
    ) rendered;
  };
  assertions = failedAssertions;
  inherit (cfg) warnings;
}

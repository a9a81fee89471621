# Test stub: the pkgs the real nixpkgs files ask for, as tiny fake derivations. Nothing is
# built: an output path is a hash of the derivation's name and content, so rendered text changes
# exactly when its inputs change (as real store paths would) and is the same in every run.
{ lib }:

rec {
  # NIXOS_NSPAWN_FAKE_SALT changes every package's path, as a nixpkgs update does.
  salt = builtins.getEnv "NIXOS_NSPAWN_FAKE_SALT";
  storePath =
    name: content:
    "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" "${salt}${name}\n${content}")}-${name}";

  # A derivation-shaped attribute set: `"${d}"`, lib.getExe, lib.isDerivation and
  # overrideAttrs (used by systemd-lib's makeJobScript) work on it.
  drv =
    name: content:
    let
      self = {
        type = "derivation";
        inherit name;
        outPath = storePath name content;
        drvPath = storePath "${name}.drv" content;
        outputs = [ "out" ];
        outputName = "out";
        meta.mainProgram = lib.last (lib.splitString "-" name);
        override = _: self;
        overrideAttrs =
          f:
          let
            new = f self;
          in
          drv (new.name or name) content
          // lib.optionalAttrs (self ? exe) { inherit (self) exe; }
          // {
            meta = self.meta;
          };
      };
    in
    self // { out = self; };

  # A package with programs: getExe gives <out>/bin/<name>.
  package = name: drv name name;

  # A script whose executable is <out>/bin/<name> (writeShellScriptBin, writeShellApplication).
  binScript =
    name: text:
    let
      d = drv name text;
    in
    d // { meta.mainProgram = name; };

  # The pkgs attributes the module and the real nixpkgs files use.
  pkgs = path: hostPlatform: rec {
    inherit (lib) types;
    inherit path lib;
    system = hostPlatform.system or "x86_64-linux";
    stdenv = {
      inherit hostPlatform;
      buildPlatform = hostPlatform;
      isLinux = true;
    };
    buildPackages = pkgs path hostPlatform;
    writeText = name: text: drv name text;
    writeTextFile = { name, text, ... }@a: drv name (builtins.toJSON (removeAttrs a [ "checkPhase" ]));
    writeShellScript = name: text: drv name "#!/bin/sh\n${text}";
    writeShellScriptBin = binScript;
    writeShellApplication = { name, text, ... }: binScript name text;
    writeScript = name: text: drv name text;
    runCommand = name: env: script: drv name (builtins.toJSON env + script);
    runCommandLocal = runCommand;
    symlinkJoin = { name, paths, ... }: drv name (toString paths);
    writeScriptBin = binScript;
    runtimeShell = "${package "bash"}/bin/bash";
    formats.json = _: {
      type = types.anything;
      generate = name: value: drv name (builtins.toJSON value);
    };
    # The features systemd.nix asks the package about, as nixpkgs' default build has them.
    systemd =
      package "systemd"
      // lib.genAttrs [
        "withBootloader" "withCryptsetup" "withEfi" "withHostnamed" "withImportd" "withLocaled"
        "withMachined" "withNspawn" "withOpenSSL" "withPortabled" "withRepart" "withTimedated"
        "withTpm2Tss" "withTpm2Units" "withUtmp"
      ] (_: true)
      // {
        version = "259";
        util = package "systemd-util";
      };
  }
  // lib.genAttrs [
    "coreutils"
    "findutils"
    "gnugrep"
    "gnused"
    "hello"
    "nginx"
    "curl"
    "bash"
    "lndir"
    "iptables"
    "iptables-nftables-compat"
    "nftables"
    "kmod"
    "iproute2"
    "jq"
    "glibc"
    "openresolv"
    "openssh"
    "gnupgMinimal"
    "host"
    "ipset"
    "iptables-legacy"
    "iputils"
    "iw"
    "mstpd"
    "nettools"
    "nixos-firewall-tool"
    "procps"
    "systemd-cryptsetup-generator"
    "wirelesstools"
    "nixos-container"
    "util-linuxMinimal"
    "gnutar"
    "gzip"
    "e2fsprogs"
    "util-linux"
    "shadow"
    "nix"
  ] package
  # More fake packages by name, for evaluating real guest configurations (e.g. the Nix the
  # migrator emits): NIXOS_NSPAWN_FAKE_PKGS="postgresql_15 redis".
  // lib.genAttrs (lib.filter (s: s != "") (
    lib.splitString " " (builtins.getEnv "NIXOS_NSPAWN_FAKE_PKGS")
  )) package;

  # A JSON-able copy of a value: functions become a marker, derivations their path.
  plain =
    v:
    if lib.isFunction v then
      "<function>"
    else if lib.isDerivation v then
      "${v.outPath}"
    else if lib.isAttrs v then
      lib.mapAttrs (_: plain) v
    else if lib.isList v then
      map plain v
    else if builtins.isPath v then
      toString v
    else
      v;
}

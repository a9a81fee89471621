# Test stub: fake but deterministic store paths and packages, so that the texts the stubs
# render change exactly when their inputs change (as real store paths would).
{ lib }:

rec {
  storePath =
    name: content:
    "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" "${name}\n${content}")}-${name}";

  package = name: {
    type = "derivation";
    inherit name;
    outPath = storePath name name;
  };

  # The pkgs attributes the tests and the module use.
  pkgs = path: hostPlatform: {
    inherit path;
    stdenv = {
      inherit hostPlatform;
      buildPlatform = hostPlatform;
    };
    writeText = name: text: storePath name text;
    writeShellScript = name: text: storePath name "#!/bin/sh\n${text}";
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
    "systemd"
  ] package
  # More fake packages by name, for evaluating real guest configurations (e.g. the Nix the
  # migrator emits): NIXOS_NSPAWN_FAKE_PKGS="postgresql_15 redis".
  // lib.genAttrs (lib.filter (s: s != "") (
    lib.splitString " " (builtins.getEnv "NIXOS_NSPAWN_FAKE_PKGS")
  )) package;

  # nixpkgs' unitOption (systemd-unit-options.nix): lists concatenate, scalars must agree.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (def: lib.isList def.value) defs' then
        lib.concatMap (def: lib.toList def.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };

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

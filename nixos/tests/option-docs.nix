# Every option of nixos.containers documents itself: a description, an example, and a default
# (or defaultText) unless it must be set. Returns the list of problems (empty = fine).
#   NIXPKGS=PATH nix-instantiate --eval --read-write-mode --strict --json nixos/tests/option-docs.nix
{
  nixpkgs ? import ./lib/nixpkgs.nix,
}:

let
  lib = import "${nixpkgs}/lib";
  fake = import ./stub/fake.nix { inherit lib; };
  eval = lib.evalModules {
    modules = [
      (import ./stub/host.nix nixpkgs)
      ../default.nix
      { _module.args.pkgs = fake.pkgs ./stub/fake-nixpkgs { system = "x86_64-linux"; }; }
    ];
  };
  docs = lib.filter (o: lib.hasPrefix "nixos.containers." o.name && o.visible && !o.internal) (
    lib.optionAttrSetToDocList eval.options
  );
  # Options a user must always set (no sensible default).
  required = [
    "nixos.containers.instances.<name>.forwardPorts.*.hostPort"
    "nixos.containers.instances.<name>.credentials.*.id"
    "nixos.containers.instances.<name>.credentials.*.path"
  ];
  problems =
    o:
    lib.optional ((o.description or null) == null || o.description == "") "${o.name}: no description"
    ++ lib.optional (!(o ? example)) "${o.name}: no example"
    ++ lib.optional (!(o ? default) && !(builtins.elem o.name required)) "${o.name}: no default";
in
{
  count = builtins.length docs;
  problems = lib.concatMap problems docs;
}

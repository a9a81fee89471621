# NixOS VM tests of the module, one file per behaviour, in the style of nixpkgs' nixos/tests
# (runTest modules). Used by the flake's `checks`; without flakes:
#   nix-build nixos/tests -A default-network --arg pkgs 'import <nixpkgs> { }'
{
  pkgs,
  module ? ../default.nix,
  # The nixos-nspawn package, for the migration test.
  package ? null,
}:

let
  runTest =
    file:
    pkgs.testers.runNixOSTest {
      imports = [
        file
        { _module.args.nixos-nspawn = package; }
      ];
      globalTimeout = 15 * 60;
      defaults = {
        imports = [ module ];
      };
    };
in
{
  default-network = runTest ./vm/default-network.nix;
  zone = runTest ./vm/zone.nix;
  static = runTest ./vm/static.nix;
  macvlan = runTest ./vm/macvlan.nix;
  port-forward = runTest ./vm/port-forward.nix;
  activation = runTest ./vm/activation.nix;
  migration = runTest ./vm/migration.nix;
}

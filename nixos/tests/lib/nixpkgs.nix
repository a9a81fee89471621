# Where the real nixpkgs files are: $NIXPKGS (a nixpkgs checkout) when set, otherwise the
# vendored copies in ../shared/nixpkgs next to the repository (see its MANIFEST.md).
let
  env = builtins.getEnv "NIXPKGS";
  dir = if env != "" then env else toString ../../../../shared/nixpkgs;
in
if builtins.pathExists "${dir}/lib/default.nix" && builtins.pathExists "${dir}/nixos/lib/systemd-lib.nix" then
  dir
else
  throw "nixos/tests: no nixpkgs at ${dir}: set NIXPKGS to a nixpkgs checkout (the tests evaluate the module with nixpkgs' real lib and NixOS modules)"

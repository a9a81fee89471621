# Test stub of nixpkgs' lib: the real nixpkgs lib, found through $NIXPKGS_LIB (nixpkgs itself
# is not available where these tests run). See ../../../render.nix.
let
  dir = builtins.getEnv "NIXPKGS_LIB";
in
if dir == "" then
  throw "the stub nixpkgs (nixos/tests/stub/fake-nixpkgs) needs NIXPKGS_LIB set to nixpkgs' lib directory"
else
  import dir

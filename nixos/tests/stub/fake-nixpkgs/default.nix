# Test stub of a nixpkgs tree; only nixos/lib/eval-config.nix and lib/ are provided.
throw "nixos/tests/stub/fake-nixpkgs is a test stub: only nixos/lib/eval-config.nix and lib can be used"

# Test stub of a nixpkgs tree: its lib is the real nixpkgs lib (see ../../../lib/nixpkgs.nix).
import "${import ../../../lib/nixpkgs.nix}/lib"

# nixpkgs' firewall-iptables.nix, evaluated unchanged. It imports ./helpers.nix (the
# `ip46tables` shell function), which the vendored ../shared/nixpkgs does not hold; with a full
# checkout the real file is used, otherwise ./ip46tables.nix stands in for it.
nixpkgs:
let
  file = "${nixpkgs}/nixos/modules/services/networking/firewall-iptables.nix";
  helpers = "${nixpkgs}/nixos/modules/services/networking/helpers.nix";
  text = builtins.readFile file;
  shimmed = builtins.replaceStrings [ "import ./helpers.nix" ] [ "import ${./ip46tables.nix}" ] text;
in
if builtins.pathExists helpers then
  file
else if shimmed == text then
  throw "nixos/tests: ${file} no longer imports ./helpers.nix; update nixos/tests/lib/firewall-iptables.nix"
else
  builtins.toFile "firewall-iptables.nix" shimmed

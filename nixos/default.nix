# The NixOS module of nixos-nspawn: `nixos.containers.instances.<name>` and
# `nixos.containers.zones.<zone>` (NixOS RFC 0108). Exported by the flake as
# `nixosModules.default`; without flakes: `imports = [ /path/to/nixos-nspawn/nixos ];`.
{
  imports = [ ./module.nix ];
}

# Test stub: a NixOS host made of the real nixpkgs modules that matter to nixos.containers
# (systemd with its unit rendering, nspawn, networkd, the firewall in both variants, nsswitch,
# the networking options), from the nixpkgs that ../lib/nixpkgs.nix finds, plus ./base.nix for
# the rest of NixOS. `systemd.units."<name>".text` and `systemd.network.units."<file>".text`
# are what NixOS would write to /etc/systemd.
nixpkgs:
{ lib, ... }:
{
  imports = [
    (import ./base.nix nixpkgs)
    "${nixpkgs}/nixos/modules/system/boot/systemd.nix"
    "${nixpkgs}/nixos/modules/system/boot/systemd/nspawn.nix"
    "${nixpkgs}/nixos/modules/system/boot/networkd.nix"
    "${nixpkgs}/nixos/modules/services/networking/firewall.nix"
    (import ../lib/firewall-iptables.nix nixpkgs)
    "${nixpkgs}/nixos/modules/services/networking/firewall-nftables.nix"
    "${nixpkgs}/nixos/modules/config/nsswitch.nix"
    "${nixpkgs}/nixos/modules/tasks/network-interfaces.nix"
    "${nixpkgs}/nixos/modules/tasks/network-interfaces-systemd.nix"
    # The legacy containers module: boot.isContainer and `containers` (coexistence).
    "${nixpkgs}/nixos/modules/virtualisation/nixos-containers.nix"
  ];
}

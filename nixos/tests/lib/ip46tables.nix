# Stand-in for nixpkgs' nixos/modules/services/networking/helpers.nix (not among the vendored
# files): the shell function the iptables firewall script calls for both address families.
{ config, lib }:
''
  ip46tables() {
    iptables -w "$@"
    ${lib.optionalString config.networking.enableIPv6 ''
      ip6tables -w "$@"
    ''}
  }
''

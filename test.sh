#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine as root: installs the real tools the
# tests use (nix-instantiate, systemd-nspawn, networkd), then fmt, clippy and every test.
set -euo pipefail
cd "$(dirname "$0")"
need=()
command -v nix-instantiate >/dev/null || need+=(nix-bin)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v systemd-analyze >/dev/null || need+=(systemd)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v setfacl >/dev/null || need+=(acl)
command -v setfattr >/dev/null || need+=(attr)
command -v rsync >/dev/null || need+=(rsync)
# The state tests make small btrfs and XFS filesystems on loop devices (tests/state_fs.rs …)
# and check inode flags with chattr/lsattr.
command -v mkfs.btrfs >/dev/null || need+=(btrfs-progs)
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
command -v chattr >/dev/null || need+=(e2fsprogs)
command -v losetup >/dev/null || need+=(mount)
# nft: checks the firewall rules the module gets from nixpkgs' firewall-nftables.nix, and loads
# them for the DHCP-through-the-firewall test.
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || need+=(nftables)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "test.sh: missing ${need[*]}; install them (apt-get install ${need[*]}) or run as root" >&2
    exit 1
  fi
fi
# The NixOS module is evaluated with nixpkgs' real files: $NIXPKGS (a checkout) or the vendored
# copies in ../shared/nixpkgs. Without them the module tests would fail (REQUIRE_REAL_TOOLS);
# say why up front.
if [ -z "${NIXPKGS:-}" ] && [ ! -f ../shared/nixpkgs/nixos/lib/systemd-lib.nix ]; then
  echo "test.sh: no nixpkgs files: set NIXPKGS to a nixpkgs checkout or provide ../shared/nixpkgs" >&2
  exit 1
fi
export NIXOS_NSPAWN_REQUIRE_REAL_TOOLS=1
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets

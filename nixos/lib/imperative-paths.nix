# Where imperative containers live, made visible to systemd at boot.
#
# `nixos-nspawn migrate` (for legacy imperative containers) and the imperative verbs keep a
# container's trusted settings file in /var/lib/nixos-nspawn/imperative/nspawn/<name>.nspawn,
# because NixOS turns /etc/systemd/nspawn into a link into the read-only store as soon as any
# systemd.nspawn entry is declared. systemd-nspawn trusts /etc/systemd/nspawn and
# /run/systemd/nspawn alike (systemd.nspawn(5), ".nspawn File Discovery"), and reads the file
# only when a container starts, which is after systemd-tmpfiles-setup.service: a tmpfiles link
# /run/systemd/nspawn -> that directory is enough, at every boot and after every switch.
#
# Unit drop-ins of imperative containers live in /etc/systemd/system.control, which PID 1
# searches before /etc/systemd/system (systemd.unit(5), "Unit File Load Path") and which NixOS
# does not manage; nothing is needed for it except that it exists.
#
# See ../README.md, "Where imperative containers live".
{ ... }:
{
  systemd.tmpfiles.rules = [
    "d /var/lib/nixos-nspawn 0755 root root -"
    "d /var/lib/nixos-nspawn/imperative 0755 root root -"
    "d /var/lib/nixos-nspawn/imperative/nspawn 0755 root root -"
    "L+ /run/systemd/nspawn - - - - /var/lib/nixos-nspawn/imperative/nspawn"
    "d /etc/systemd/system.control 0755 root root -"
  ];
}

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
# Host network units of imperative containers (`nixos-nspawn create/update`) persist in
# /var/lib/nixos-nspawn/imperative/network, because /etc/systemd/network is a store link once
# networkd is configured. systemd-networkd also reads /run/systemd/network
# (systemd.network(5)); that directory may hold files of systemd-network-generator, so each
# unit is linked into it one by one, before networkd starts (and by the CLI when it installs
# one on the running host).
#
# See ../README.md, "Where imperative containers live".
{ ... }:
{
  systemd.services.nixos-nspawn-imperative-network = {
    description = "Network units of imperative nixos-nspawn containers";
    wantedBy = [ "systemd-networkd.service" ];
    before = [ "systemd-networkd.service" ];
    after = [ "local-fs.target" ];
    unitConfig.DefaultDependencies = false;
    serviceConfig = {
      Type = "oneshot";
      RemainAfterExit = true;
    };
    script = ''
      mkdir -p /run/systemd/network
      for f in /var/lib/nixos-nspawn/imperative/network/*.network; do
        if [ -e "$f" ]; then ln -sfn "$f" /run/systemd/network/; fi
      done
    '';
  };
  systemd.tmpfiles.rules = [
    "d /var/lib/nixos-nspawn 0755 root root -"
    "d /var/lib/nixos-nspawn/imperative 0755 root root -"
    "d /var/lib/nixos-nspawn/imperative/nspawn 0755 root root -"
    "d /var/lib/nixos-nspawn/imperative/network 0755 root root -"
    "L+ /run/systemd/nspawn - - - - /var/lib/nixos-nspawn/imperative/nspawn"
    "d /etc/systemd/system.control 0755 root root -"
  ];
}

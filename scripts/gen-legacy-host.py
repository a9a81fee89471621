#!/usr/bin/env python3
"""Generate a synthetic legacy NixOS host tree with N containers, for benchmarks.

Usage: gen-legacy-host.py N OUTDIR

The tree looks like a real host after `nixos-rebuild switch` with legacy containers:
/etc/static -> /nix/store/<hash>-etc/etc, declarative .conf files symlinked through it,
generated container@NAME.service units (store symlinks) with their start scripts,
/var/lib/nixos-containers/NAME rootfs stubs, and /etc/nixos/configuration.nix declaring every
container in a mix of real-world styles. Every 10th container is imperative.
"""
import hashlib
import os
import sys

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"


def store_hash(seed: str) -> str:
    d = hashlib.sha256(seed.encode()).digest()
    return "".join(ALPHABET[b % 32] for b in d[:32])


def write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def link(target: str, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(target, path)


def main() -> None:
    n, out = int(sys.argv[1]), sys.argv[2]
    etc_hash = store_hash(f"etc-{n}")
    store_etc = f"/nix/store/{etc_hash}-etc/etc"
    link(store_etc, f"{out}/etc/static")
    nix = ["{ config, lib, pkgs, ... }:", "let", '  prefix = "10.250";', "in", "{", "  system.stateVersion = \"23.11\";"]
    for i in range(n):
        name = f"c{i}"
        a, b = divmod(i, 250)
        host_addr, local_addr = f"10.{100 + a}.{b}.1", f"10.{100 + a}.{b}.2"
        os.makedirs(f"{out}/var/lib/nixos-containers/{name}/etc", exist_ok=True)
        write(f"{out}/var/lib/nixos-containers/{name}/etc/os-release", 'ID=nixos\nNAME=NixOS\n')
        write(f"{out}/var/lib/nixos-containers/{name}/etc/machine-id", f"{store_hash(name)}\n")
        if i % 10 == 9:
            # imperative, as `nixos-container create` writes it
            write(
                f"{out}/etc/nixos-containers/{name}.conf",
                f"PRIVATE_NETWORK=1\nHOST_ADDRESS={host_addr}\nLOCAL_ADDRESS={local_addr}\n"
                "HOST_BRIDGE=\nHOST_PORT=\nAUTO_START=0\n",
            )
            write(
                f"{out}/var/lib/nixos-containers/{name}/etc/nixos/configuration.nix",
                "{ config, lib, pkgs, ... }:\n\nwith lib;\n\n{ boot.isContainer = true;\n"
                f'  networking.hostName = mkDefault "{name}";\n  networking.useDHCP = false;\n'
                "  services.openssh.enable = true;\n}\n",
            )
            prof = f"{out}/nix/var/nix/profiles/per-container/{name}"
            for g in (1, 2):
                link(f"/nix/store/{store_hash(name + str(g))}-nixos-system-{name}-23.11", f"{prof}/system-{g}-link")
            link("system-2-link", f"{prof}/system")
            continue
        toplevel = f"/nix/store/{store_hash('top' + name)}-nixos-system-{name}-23.11"
        flags = f" --bind-ro=/srv/{name}:/srv/data --bind=/var/log/{name}:/var/log/app"
        if i % 7 == 3:
            flags += " -U --resolv-conf=off"
        conf = (
            f"SYSTEM_PATH={toplevel}\nCOPY_RESOLV_CONF=1\nPRIVATE_NETWORK=1\n"
            + (f"HOST_PORT=tcp:{8000 + i}:80\n" if i % 3 == 0 else "")
            + f"HOST_ADDRESS={host_addr}\nLOCAL_ADDRESS={local_addr}\n\nPRIVATE_USERS=no\n"
            + 'INTERFACES=""\nMACVLANS=""\n'
            + ("AUTO_START=1\n" if i % 2 == 0 else "")
            + f'EXTRA_NSPAWN_FLAGS="{flags}"\n'
        )
        write(f"{out}/nix/store/{etc_hash}-etc/etc/nixos-containers/{name}.conf", conf, 0o444)
        link(f"/etc/static/nixos-containers/{name}.conf", f"{out}/etc/nixos-containers/{name}.conf")
        script = f"/nix/store/{store_hash('start' + name)}-unit-script-container_-start/bin/container_-start"
        write(
            f"{out}{script}",
            "#!/nix/store/xxx-bash/bin/bash\nset -e\n"
            f'exec systemd-nspawn --keep-unit -M "$INSTANCE" -D "$root" $extraFlags \\\n'
            f'  --capability="CAP_NET_ADMIN" --tmpfs=/tmp/{name} \\\n'
            "  --notify-ready=yes --kill-signal=SIGRTMIN+3 ${EXTRA_NSPAWN_FLAGS-} \\\n"
            '  /nix/store/xxx-container-init "${SYSTEM_PATH:-/nix/var/nix/profiles/system}/init"\n',
            0o555,
        )
        unit_store = f"/nix/store/{store_hash('unit' + name)}-unit-container-{name}.service/container@{name}.service"
        write(
            f"{out}{unit_store}",
            f"[Unit]\nDescription=Container '{name}'\nAfter=network.target\n\n[Service]\n"
            f'Environment="INSTANCE={name}"\nEnvironment="root=/var/lib/nixos-containers/{name}"\n'
            f"ExecStart={script}\nDeviceAllow=/dev/net/tun rwm\nDevicePolicy=closed\nKillMode=mixed\n"
            "TimeoutStartSec=1min\nType=notify\nX-RestartIfChanged=true\n",
            0o444,
        )
        link(unit_store, f"{out}/etc/systemd/system/container@{name}.service")
        style = i % 3
        body = (
            "    config = { config, pkgs, ... }: {\n"
            "      # the app\n"
            "      services.nginx.enable = true;\n"
            "      networking.firewall.interfaces.eth0.allowedTCPPorts = [ 80 ];\n"
            "      networking.useHostResolvConf = lib.mkForce false;\n"
            "    };\n"
        )
        common = (
            f'    privateNetwork = true;\n    hostAddress = "{host_addr}";\n    localAddress = "{local_addr}";\n'
            + ("    autoStart = true;\n" if i % 2 == 0 else "")
            + (f'    forwardPorts = [ {{ protocol = "tcp"; hostPort = {8000 + i}; containerPort = 80; }} ];\n' if i % 3 == 0 else "")
            + f'    bindMounts."/srv/data" = {{ hostPath = "/srv/{name}"; }};\n'
            + f'    bindMounts."/var/log/app" = {{ hostPath = "/var/log/{name}"; isReadOnly = false; }};\n'
            + ('    extraFlags = [ "-U" "--resolv-conf=off" ];\n' if i % 7 == 3 else "")
        )
        if style == 0:
            nix.append(f"  containers.{name} = {{\n{common}{body}  }};")
        elif style == 1:
            nix.append(f"  containers.{name} = lib.mkIf true {{\n{common}{body}  }};")
        else:
            for line in common.strip().splitlines():
                nix.append(f"  containers.{name}.{line.strip()}")
            nix.append(f"  containers.{name}.config = {{ pkgs, ... }}: {{ services.redis.servers.\"\".enable = true; }};")
    nix.append("}")
    write(f"{out}/etc/nixos/configuration.nix", "\n".join(nix) + "\n")


if __name__ == "__main__":
    main()

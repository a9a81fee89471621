# Shared by the VM tests (included into each testScript).
import shlex


def inside_cmd(container, cmd):
    """A host command that runs `cmd` in the container through its systemd (machined)."""
    return (
        f"systemd-run -M {container} --wait --pipe --quiet "
        f"--setenv=PATH=/run/current-system/sw/bin -- /bin/sh -c {shlex.quote(cmd)}"
    )


def inside(node, container, cmd):
    return node.succeed(inside_cmd(container, cmd))


def inside_eventually(node, container, cmd):
    return node.wait_until_succeeds(inside_cmd(container, cmd))


def wait_for_container(node, container):
    node.wait_for_unit(f"systemd-nspawn@{container}.service")
    inside_eventually(node, container, "systemctl is-active multi-user.target")

//! Activation on the running host (`--root /`): which commands `update`/`rollback` run for
//! each decision. Only commands are run here (recording stand-ins first on `PATH`); no file
//! is read or written, so the live root is safe to name. One test per process: `PATH` is
//! set for the whole process.
#![allow(clippy::unwrap_used)]

use nixos_nspawn::host::HostRoot;
use nixos_nspawn::imperative::Ctx;
use nixos_nspawn::imperative::activation::{Action, DROPIN, Decision, Files};
use nixos_nspawn::imperative::create::bring_up;
use nixos_nspawn::imperative::update::activate;
use nixos_nspawn::runner::Runner;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

fn files(params: &str, net: &str, dropin: Option<&str>) -> Files {
    let mut f = Files::new();
    f.insert(
        "web.nspawn".into(),
        format!("[Exec]\nBoot=no\nParameters={params}/init\n"),
    );
    f.insert("20-ve-web.network".into(), net.into());
    if let Some(d) = dropin {
        f.insert(DROPIN.into(), d.into());
    }
    f
}

#[test]
fn each_decision_runs_its_commands_on_the_live_host() {
    let si = tempfile::tempdir().unwrap();
    let log = si.path().join("calls.log");
    for prog in [
        "systemctl",
        "networkctl",
        "systemd-run",
        "machinectl",
        "reload-hook",
    ] {
        let p = si.path().join(prog);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\necho \"{prog} $*\" >> {log}\n\
                 if [ \"$1\" = is-active ]; then grep -qx \"$3\" {si}/active 2>/dev/null; exit $?; fi\n\
                 if [ -e {si}/fail-$1 ]; then echo \"Job for $2 failed (stand-in)\" >&2; exit 1; fi\n",
                log = log.display(),
                si = si.path().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // SAFETY of the test: this process runs this one test only.
    unsafe {
        std::env::set_var(
            "PATH",
            format!("{}:{}", si.path().display(), std::env::var("PATH").unwrap()),
        )
    };
    let host = HostRoot::new("/").unwrap();
    let runner = Runner { verbose: false };
    let mut ctx = Ctx::new(&host, &runner, PathBuf::new());
    let calls = || {
        let v: Vec<String> = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        let _ = std::fs::remove_file(&log);
        v
    };
    let net = "[Network]\nAddress=0.0.0.0/28\n";
    let old = files("/nix/store/a-sys", net, None);
    let d = |action, why: &str| Decision {
        action,
        reasons: vec![why.to_string()],
    };
    let running =
        || std::fs::write(si.path().join("active"), "systemd-nspawn@web.service\n").unwrap();
    let stopped = || std::fs::write(si.path().join("active"), "").unwrap();

    // Reload of a running container: switch-to-configuration test inside it.
    running();
    let new = files("/nix/store/b-sys", net, None);
    activate(
        &mut ctx,
        "web",
        &old,
        &new,
        &d(Action::Reload, "x"),
        "/nix/store/b-sys",
        None,
    )
    .unwrap();
    assert_eq!(
        calls(),
        [
            "systemctl is-active --quiet systemd-nspawn@web.service",
            "systemd-run --machine=web --pipe --wait --quiet --collect --service-type=exec -- /nix/store/b-sys/bin/switch-to-configuration test"
        ]
    );
    // With activation.reloadScript: that script, with the name and the system.
    activate(
        &mut ctx,
        "web",
        &old,
        &new,
        &d(Action::Reload, "x"),
        "/nix/store/b-sys",
        Some(format!("{}/reload-hook", si.path().display())),
    )
    .unwrap();
    assert_eq!(calls()[1], "reload-hook web /nix/store/b-sys");

    // Restart, with changed network units and a new drop-in: daemon-reload, networkd reload,
    // then the restart.
    let new = files(
        "/nix/store/b-sys",
        "[Network]\nAddress=10.0.0.1/24\n",
        Some("[Service]\nTimeoutStartSec=5min\n"),
    );
    activate(
        &mut ctx,
        "web",
        &old,
        &new,
        &d(Action::Restart, "x"),
        "/nix/store/b-sys",
        None,
    )
    .unwrap();
    assert_eq!(
        calls(),
        [
            "systemctl daemon-reload",
            "networkctl reload",
            "systemctl is-active --quiet systemd-nspawn@web.service",
            "systemctl restart systemd-nspawn@web.service"
        ]
    );

    // Not running: neither reloaded nor restarted, and it says so.
    stopped();
    activate(
        &mut ctx,
        "web",
        &old,
        &files("/nix/store/c-sys", net, None),
        &d(Action::Restart, "x"),
        "/nix/store/c-sys",
        None,
    )
    .unwrap();
    assert_eq!(
        calls(),
        ["systemctl is-active --quiet systemd-nspawn@web.service"]
    );
    assert!(
        ctx.out
            .last()
            .unwrap()
            .contains("web is not running: nothing to restart"),
        "{:?}",
        ctx.out
    );

    // Nothing: no command at all about the container.
    running();
    activate(
        &mut ctx,
        "web",
        &old,
        &old,
        &d(Action::Nothing, "x"),
        "/nix/store/a-sys",
        None,
    )
    .unwrap();
    assert!(calls().is_empty());

    // create on the live host: daemon-reload for a drop-in, networkd reload for its units,
    // then the start (asked for, or autoStart).
    bring_up(&mut ctx, "web", &new, true).unwrap();
    assert_eq!(
        calls(),
        [
            "systemctl daemon-reload",
            "networkctl reload",
            "machinectl start web"
        ]
    );
    bring_up(&mut ctx, "web", &old, false).unwrap();
    assert_eq!(calls(), ["networkctl reload"]);
    assert!(
        ctx.out
            .last()
            .unwrap()
            .contains("start it with: machinectl start web")
    );

    // A failing restart names the command and carries its stderr.
    std::fs::write(si.path().join("fail-restart"), "").unwrap();
    let e = activate(
        &mut ctx,
        "web",
        &old,
        &files("/nix/store/d-sys", net, None),
        &d(Action::Restart, "x"),
        "/nix/store/d-sys",
        None,
    )
    .unwrap_err();
    let e = e.to_string();
    assert!(
        e.contains("`systemctl restart systemd-nspawn@web.service` failed (exit code 1): Job for systemd-nspawn@web.service failed (stand-in)"),
        "{e}"
    );
}

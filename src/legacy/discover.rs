//! Finding legacy containers on disk.
//!
//! Probes both layouts (`/etc/nixos-containers` + `/var/lib/nixos-containers` for hosts with
//! `system.stateVersion` ≥ 22.05, `/etc/containers` + `/var/lib/containers` before), tells
//! declarative from imperative containers the way `nixos-container` does (a declarative `.conf`
//! is a link into `/etc/static`, i.e. the read-only store; an imperative one a plain file), and
//! reads each container's `.conf`, generated unit and start script with the pure readers.
//!
//! `/etc/containers` and `/var/lib/containers` are shared with podman: there a `.conf` only
//! counts as a container when a `container@NAME` unit, a state dir with `etc/os-release` or a
//! per-container profile backs it, and podman's own names are never taken.
//!
//! Every read goes through [`HostRoot`], so links resolve inside `--root`, and anything inside a
//! container's rootfs is resolved with the rootfs as its root. A file that cannot be read is a
//! warning; the scan goes on.

use crate::host::{self, HostRoot};
use crate::legacy::model::{Kind, Layout, SourceFacts, Value};
use crate::legacy::{conf, names, unit};
use crate::warnings::{Category, Warning, WarningSpec};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub const DISK_UNREADABLE: WarningSpec = WarningSpec {
    code: "disk-unreadable",
    category: Category::NeedsHuman,
    summary: "a legacy container file or directory could not be read",
};
pub const INVALID_MACHINE_NAME: WarningSpec = WarningSpec {
    code: "invalid-machine-name",
    category: Category::NeedsHuman,
    summary: "a legacy container name is not one the new world takes (a systemd machine name that is also one host-name label: no `.`, no `_`, at most 63 characters); the container must be renamed",
};
pub const RISKY_MACHINE_NAME: WarningSpec = WarningSpec {
    code: "risky-machine-name",
    category: Category::ChangedMeaning,
    summary: "a legacy container name is valid but gives long or confusing unit and interface names",
};
pub const STATE_WITHOUT_CONF: WarningSpec = WarningSpec {
    code: "state-without-conf",
    category: Category::NeedsHuman,
    summary: "a legacy state directory has no .conf: the container is no longer deployed, but its data is still there",
};
pub const CONF_WITHOUT_STATE: WarningSpec = WarningSpec {
    code: "conf-without-state",
    category: Category::ChangedMeaning,
    summary: "a deployed legacy container has no state directory: it was never started, so there is nothing to copy",
};
pub const STATE_IN_OTHER_LAYOUT: WarningSpec = WarningSpec {
    code: "state-in-other-layout",
    category: Category::NeedsHuman,
    summary: "a container's state lives in the other legacy layout (/var/lib/containers vs /var/lib/nixos-containers)",
};
pub const UNIT_MISSING: WarningSpec = WarningSpec {
    code: "unit-missing",
    category: Category::NeedsHuman,
    summary: "a declarative container has no generated container@NAME.service unit",
};
pub const ROOTFS_CONFIG_SYMLINK: WarningSpec = WarningSpec {
    code: "rootfs-config-symlink",
    category: Category::ChangedMeaning,
    summary: "an imperative container's etc/nixos/configuration.nix is a symlink; it is followed only inside the container's rootfs",
};
pub const CONF_NOT_UTF8: WarningSpec = WarningSpec {
    code: "conf-not-utf8",
    category: Category::NeedsHuman,
    summary: "a container .conf has a value that is not UTF-8; systemd refuses to load such a file",
};

/// Warning codes owned by discovery.
pub const WARNINGS: &[&WarningSpec] = &[
    &DISK_UNREADABLE,
    &INVALID_MACHINE_NAME,
    &RISKY_MACHINE_NAME,
    &STATE_WITHOUT_CONF,
    &CONF_WITHOUT_STATE,
    &STATE_IN_OTHER_LAYOUT,
    &UNIT_MISSING,
    &ROOTFS_CONFIG_SYMLINK,
    &CONF_NOT_UTF8,
];

/// Everything found on disk.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DiskScan {
    /// Sorted by name; one entry per name.
    pub containers: Vec<DiskContainer>,
    /// Findings not tied to one container.
    pub problems: Vec<Warning>,
    /// Host paths of every file read, in reading order.
    pub files_read: Vec<PathBuf>,
}

/// One legacy container as found on disk. All paths are host paths.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskContainer {
    pub name: String,
    /// The layout of its `.conf` (or, without one, of its state dir).
    pub layout: Layout,
    /// `None` when there is no usable `.conf` (state dir only, or an unreadable link).
    pub kind: Option<Kind>,
    pub conf_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub profile_dir: Option<PathBuf>,
    pub has_profile_generations: bool,
    /// `STATE/etc/nixos/configuration.nix`, resolved inside the rootfs, when it is a file.
    pub rootfs_config: Option<PathBuf>,
    /// `machines.target.wants/container@NAME.service` exists.
    pub auto_start_link: bool,
    /// `.conf` facts, then unit facts.
    pub facts: Vec<SourceFacts>,
    pub warnings: Vec<Warning>,
}

/// podman's files in `/etc/containers` (and `nixos-container list`'s skip list).
const PODMAN_CONF_NAMES: &[&str] = &[
    "libpod",
    "containers",
    "registries",
    "storage",
    "mounts",
    "policy",
    "seccomp",
    "shortnames",
    "containers-storage",
];
/// podman's directories in `/var/lib/containers`.
const PODMAN_STATE_NAMES: &[&str] = &["storage", "cache", "sigstore", "libpod"];

const SYSTEMD_DIR: &str = "/etc/systemd/system";
const PROFILES: &str = "/nix/var/nix/profiles/per-container";

struct Scan<'a> {
    host: &'a HostRoot,
    out: DiskScan,
}

#[derive(Default)]
struct Found {
    /// (layout, conf path, lstat kind of the conf)
    confs: Vec<(Layout, PathBuf, host::Kind)>,
    states: Vec<(Layout, PathBuf)>,
}

fn io_msg(e: &std::io::Error) -> String {
    e.to_string()
}

impl Scan<'_> {
    fn problem(&mut self, spec: &WarningSpec, option: &str, path: &Path, message: String) {
        self.out
            .problems
            .push(Warning::new(spec, option, message).at(path, None));
    }

    /// List a directory; `None` when it does not exist.
    fn list(&mut self, dir: &Path) -> Option<Vec<host::Entry>> {
        match self.host.read_dir(dir) {
            Ok(v) => Some(v),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                let msg = format!(
                    "cannot list {}: {}; containers there are not found. Check the permissions (run as root) and retry",
                    dir.display(),
                    io_msg(&e)
                );
                self.problem(&DISK_UNREADABLE, &dir.display().to_string(), dir, msg);
                None
            }
        }
    }

    /// The kind of what `path` leads to (links followed inside the root); errors are `None`.
    fn followed(&self, path: &Path) -> Option<host::Kind> {
        self.host.kind_followed(path).ok().flatten()
    }

    fn read_text(&mut self, path: &Path) -> Result<(String, bool), std::io::Error> {
        let bytes = self.host.read(path)?;
        self.out.files_read.push(path.to_path_buf());
        match String::from_utf8(bytes) {
            Ok(s) => Ok((s, true)),
            Err(e) => Ok((String::from_utf8_lossy(e.as_bytes()).into_owned(), false)),
        }
    }
}

fn is_generation_link(name: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(name) else {
        return false;
    };
    s.strip_prefix("system-")
        .and_then(|r| r.strip_suffix("-link"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Find every legacy container under the host root.
pub fn discover_disk(host: &HostRoot) -> DiskScan {
    let mut s = Scan {
        host,
        out: DiskScan::default(),
    };
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    for layout in [Layout::NixosContainers, Layout::Containers] {
        let conf_dir = PathBuf::from(layout.conf_dir());
        for e in s.list(&conf_dir).unwrap_or_default() {
            let raw = e.name.as_bytes();
            let Some(stem) = raw.strip_suffix(b".conf") else {
                continue;
            };
            let path = conf_dir.join(&e.name);
            let Ok(name) = std::str::from_utf8(stem) else {
                let msg = format!(
                    "{} has a name that is not UTF-8; it is not read. Rename or remove it",
                    path.display()
                );
                s.problem(&DISK_UNREADABLE, &path.display().to_string(), &path, msg);
                continue;
            };
            if name.is_empty() {
                continue;
            }
            if layout == Layout::Containers && PODMAN_CONF_NAMES.contains(&name) {
                continue;
            }
            if matches!(e.kind, host::Kind::Dir | host::Kind::Other) {
                let msg = format!(
                    "{} is not a regular file or a link to one, so it is not a container configuration; it is ignored. Move it out of {} if it does not belong there",
                    path.display(),
                    conf_dir.display()
                );
                s.problem(&DISK_UNREADABLE, &path.display().to_string(), &path, msg);
                continue;
            }
            found
                .entry(name.to_string())
                .or_default()
                .confs
                .push((layout, path, e.kind));
        }
        let state_root = PathBuf::from(layout.state_dir());
        for e in s.list(&state_root).unwrap_or_default() {
            let Ok(name) = std::str::from_utf8(e.name.as_bytes()) else {
                continue;
            };
            if layout == Layout::Containers && PODMAN_STATE_NAMES.contains(&name) {
                continue;
            }
            let path = state_root.join(name);
            let is_dir = match e.kind {
                host::Kind::Dir => true,
                host::Kind::Symlink => s.followed(&path) == Some(host::Kind::Dir),
                _ => false,
            };
            if is_dir {
                found
                    .entry(name.to_string())
                    .or_default()
                    .states
                    .push((layout, path));
            }
        }
    }
    for (name, f) in found {
        // A binary file in the .conf directory (and no state of that name) is not a
        // container: report it once, as a host problem, instead of inventing a container.
        if f.states.is_empty() && !f.confs.is_empty() {
            let binary: Vec<(PathBuf, String)> = f
                .confs
                .iter()
                .filter(|(_, _, k)| *k == host::Kind::File)
                .filter_map(|(_, p, _)| {
                    let (text, _) = s.read_text(p).ok()?;
                    conf::binary_content(&text).map(|w| (p.clone(), w))
                })
                .collect();
            if binary.len() == f.confs.len() {
                for (p, what) in binary {
                    let msg = format!(
                        "{} is not a text file ({what}), so it is not a container definition and was not read. \
                         Move it out of the directory, or restore the container's .conf from a backup",
                        p.display()
                    );
                    s.problem(&conf::CONF_NOT_TEXT, &p.display().to_string(), &p, msg);
                }
                continue;
            }
        }
        if let Some(c) = container(&mut s, &name, f) {
            s.out.containers.push(c);
        }
    }
    s.out
}

fn container(s: &mut Scan<'_>, name: &str, f: Found) -> Option<DiskContainer> {
    let unit_path = PathBuf::from(SYSTEMD_DIR).join(format!("container@{name}.service"));
    let has_unit = s.followed(&unit_path) == Some(host::Kind::File);
    let profile = PathBuf::from(PROFILES).join(name);
    let has_profile = s.followed(&profile) == Some(host::Kind::Dir);
    // lstat STATE/etc/os-release with STATE/etc resolved inside the rootfs: on NixOS the file
    // is a link into the guest's /nix/store, which only exists while the container runs.
    let os_release_in = |s: &Scan<'_>, state: &Path| {
        s.host
            .resolve_in(state, Path::new("/etc"))
            .ok()
            .and_then(|etc| s.host.kind(&etc.join("os-release")).ok().flatten())
            .is_some()
    };
    // In the podman-shared layout only backed names count.
    let backed = |s: &Scan<'_>, layout: Layout| {
        layout == Layout::NixosContainers
            || has_unit
            || has_profile
            || f.states
                .iter()
                .any(|(l, p)| *l == layout && os_release_in(s, p))
    };
    let confs: Vec<_> = f
        .confs
        .iter()
        .filter(|(l, _, _)| backed(s, *l))
        .cloned()
        .collect();
    let states: Vec<_> = f
        .states
        .iter()
        .filter(|(l, p)| *l == Layout::NixosContainers || os_release_in(s, p))
        .cloned()
        .collect();
    if confs.is_empty() && states.is_empty() {
        return None;
    }
    let mut warnings = Vec::new();
    let opt = format!("containers.{name}");
    let (layout, conf_file, conf_kind) = match confs.first() {
        Some((l, p, k)) => (*l, Some(p.clone()), Some(*k)),
        None => (states[0].0, None, None),
    };
    if let Some((l2, p2, _)) = confs.get(1) {
        warnings.push(
            Warning::new(
                &STATE_IN_OTHER_LAYOUT,
                opt.clone(),
                format!(
                    "container {name}: both {} and {} exist; the first ({}) is used. Remove the stale one after checking which the host really runs",
                    conf_file.as_deref().unwrap_or(Path::new("?")).display(),
                    p2.display(),
                    l2.conf_dir()
                ),
            )
            .at(p2, None),
        );
    }
    let state_dir = match states.iter().find(|(l, _)| *l == layout) {
        Some((_, p)) => Some(p.clone()),
        None => states.first().map(|(l, p)| {
            if conf_file.is_some() {
                warnings.push(
                    Warning::new(
                        &STATE_IN_OTHER_LAYOUT,
                        opt.clone(),
                        format!(
                            "container {name}: its configuration is in {} but its state is in {} ({}); the legacy tool no longer finds that state since the host's stateVersion changed, so the container runs with an empty root. Decide which state to migrate; {} is used",
                            layout.conf_dir(),
                            p.display(),
                            l.state_dir(),
                            p.display()
                        ),
                    )
                    .at(p, None),
                );
            }
            p.clone()
        }),
    };
    if states.len() > 1 {
        let all: Vec<String> = states
            .iter()
            .map(|(_, p)| p.display().to_string())
            .collect();
        warnings.push(
            Warning::new(
                &STATE_IN_OTHER_LAYOUT,
                opt.clone(),
                format!(
                    "container {name}: there are state directories in both layouts ({}); only {} is migrated. Compare them and keep the one in use",
                    all.join(", "),
                    state_dir.as_deref().unwrap_or(Path::new("?")).display()
                ),
            )
            .at(state_dir.clone().unwrap_or_default(), None),
        );
    }

    let mut facts = Vec::new();
    let mut kind = None;
    if let (Some(path), Some(k)) = (&conf_file, conf_kind) {
        kind = match k {
            host::Kind::File => Some(Kind::Imperative),
            host::Kind::Symlink => {
                let target = s.host.read_link(path).unwrap_or_default();
                let into_store =
                    |p: &Path| p.starts_with("/etc/static") || p.starts_with("/nix/store");
                match s.host.resolve(path) {
                    Ok(resolved) if into_store(&target) || into_store(&resolved) => {
                        Some(Kind::Declarative)
                    }
                    Ok(_) => Some(Kind::Imperative),
                    // A link loop: neither kind can be told.
                    Err(_) => None,
                }
            }
            _ => None,
        };
        // Check what the link leads to before opening it: opening a FIFO would block.
        let readable = match s.host.kind_followed(path) {
            Ok(Some(host::Kind::File)) => Ok(()),
            Ok(None) => Err(format!(
                "it is a link to {}, which does not exist under the host root",
                s.host.read_link(path).unwrap_or_default().display()
            )),
            Ok(Some(_)) => Err("it does not lead to a regular file".to_string()),
            Err(e) => Err(io_msg(&e)),
        };
        let read = readable.and_then(|()| s.read_text(path).map_err(|e| io_msg(&e)));
        match read {
            Ok((text, _)) if conf::binary_content(&text).is_some() => {
                let what = conf::binary_content(&text).unwrap_or_default();
                warnings.push(
                    Warning::new(
                        &conf::CONF_NOT_TEXT,
                        opt.clone(),
                        format!(
                            "{} is not a text file ({what}), so it is not a container definition and was not read. \
                             Move it out of the directory, or restore the container's .conf from a backup",
                            path.display(),
                        ),
                    )
                    .at(path, None),
                );
            }
            Ok((text, utf8)) => {
                let cf = conf::read_conf(name, path, &text);
                if !utf8 {
                    let bad: Vec<&str> = cf
                        .options
                        .iter()
                        .filter(|(_, (v, _))| value_has_replacement(v))
                        .map(|(k, _)| k.as_str())
                        .collect();
                    if !bad.is_empty() {
                        warnings.push(
                            Warning::new(
                                &CONF_NOT_UTF8,
                                opt.clone(),
                                format!(
                                    "container {name}: {} has bytes that are not UTF-8 in {}; systemd refuses to load the file, so the container cannot start as it is. Rewrite the values in UTF-8",
                                    path.display(),
                                    bad.join(", ")
                                ),
                            )
                            .at(path, None),
                        );
                    }
                }
                facts.push(cf);
            }
            Err(e) => warnings.push(
                Warning::new(
                    &DISK_UNREADABLE,
                    opt.clone(),
                    format!(
                        "container {name}: cannot read {}: {e}; its deployed settings are unknown. Repair the file (for a declarative container: rebuild the host configuration) or remove it",
                        path.display(),
                    ),
                )
                .at(path, None),
            ),
        }
    }
    if let Err(msg) = names::check_machine_name(name) {
        let at = conf_file
            .clone()
            .or_else(|| state_dir.clone())
            .unwrap_or_default();
        warnings.push(
            Warning::new(
                &INVALID_MACHINE_NAME,
                opt.clone(),
                format!("container {name} ({}): {msg}", at.display()),
            )
            .at(at, None),
        );
    } else {
        let private = facts.first().is_some_and(|f| {
            matches!(
                f.options.get("privateNetwork"),
                Some((Value::Bool(true), _))
            )
        });
        for n in names::legacy_name_notes(name, private) {
            warnings.push(
                Warning::new(&RISKY_MACHINE_NAME, opt.clone(), n).at(
                    conf_file
                        .clone()
                        .or_else(|| state_dir.clone())
                        .unwrap_or_default(),
                    None,
                ),
            );
        }
    }

    // The generated unit and its start script.
    if has_unit {
        match s.read_text(&unit_path) {
            Ok((text, _)) => {
                let script_path = unit::parse_unit(&text).exec_start();
                let script = match &script_path {
                    Some(p) if s.followed(p) == Some(host::Kind::File) => match s.read_text(p) {
                        Ok((t, _)) => Some((p.clone(), t)),
                        Err(e) => {
                            warnings.push(
                                Warning::new(
                                    &DISK_UNREADABLE,
                                    opt.clone(),
                                    format!(
                                        "container {name}: cannot read its start script {}: {}",
                                        p.display(),
                                        io_msg(&e)
                                    ),
                                )
                                .at(p, None),
                            );
                            None
                        }
                    },
                    _ => None,
                };
                let mut uf = unit::read_unit(
                    name,
                    &unit_path,
                    &text,
                    script.as_ref().map(|(p, t)| (p.as_path(), t.as_str())),
                );
                // Extra veths' host-side settings live in the postStart script.
                let has_veths = matches!(
                    uf.options.get("extraVeths"),
                    Some((Value::Attrs(v), _)) if !v.is_empty()
                );
                if has_veths
                    && let Some(post) = unit::parse_unit(&text).exec_start_post()
                    && s.followed(&post) == Some(host::Kind::File)
                    && let Ok((t, _)) = s.read_text(&post)
                {
                    unit::read_post_start(&mut uf, &post, &t);
                }
                facts.push(uf);
            }
            Err(e) => warnings.push(
                Warning::new(
                    &DISK_UNREADABLE,
                    opt.clone(),
                    format!(
                        "container {name}: cannot read {}: {}; timeoutStartSec, allowedDevices, capabilities and tmpfs are unknown. Evaluate the host configuration with --from-json (see README)",
                        unit_path.display(),
                        io_msg(&e)
                    ),
                )
                .at(&unit_path, None),
            ),
        }
    } else if kind == Some(Kind::Declarative) {
        warnings.push(
            Warning::new(
                &UNIT_MISSING,
                opt.clone(),
                format!(
                    "container {name}: {} is declarative but {} does not exist, so timeoutStartSec, allowedDevices, capabilities, tmpfs and extraVeths are unknown from disk. Rebuild the host configuration, or evaluate it with --from-json (see README)",
                    conf_file.as_deref().unwrap_or(Path::new("?")).display(),
                    unit_path.display()
                ),
            )
            .at(conf_file.clone().unwrap_or_default(), None),
        );
    }

    let ephemeral = facts
        .iter()
        .any(|f| matches!(f.options.get("ephemeral"), Some((Value::Bool(true), _))));
    match (&conf_file, &state_dir) {
        (Some(c), None) if ephemeral => warnings.push(
            Warning::new(
                &CONF_WITHOUT_STATE,
                opt.clone(),
                format!(
                    "container {name}: {} exists and {}/{name} does not, as expected: the container is ephemeral, its root lives in /run/nixos-containers/{name} only while it runs. There is no state to copy",
                    c.display(),
                    layout.state_dir()
                ),
            )
            .at(c, None),
        ),
        (Some(c), None) if kind.is_some() => warnings.push(
            Warning::new(
                &CONF_WITHOUT_STATE,
                opt.clone(),
                format!(
                    "container {name}: {} exists but {}/{name} does not: the container was never started (or its state was removed), so there is no state to copy; it will start with a fresh root",
                    c.display(),
                    layout.state_dir()
                ),
            )
            .at(c, None),
        ),
        (None, Some(st)) => warnings.push(
            Warning::new(
                &STATE_WITHOUT_CONF,
                opt.clone(),
                format!(
                    "container {name}: {} exists but there is no {}/{name}.conf: the container is no longer deployed (removed from the configuration or half-destroyed). Its data is left untouched; migrate it by defining the container again, or delete the directory when it is not needed",
                    st.display(),
                    layout.conf_dir()
                ),
            )
            .at(st, None),
        ),
        _ => {}
    }

    let auto_start_link = s.host.exists(
        &PathBuf::from(SYSTEMD_DIR)
            .join("machines.target.wants")
            .join(format!("container@{name}.service")),
    );
    let (profile_dir, has_profile_generations) = if has_profile {
        let gens = s
            .list(&profile)
            .unwrap_or_default()
            .iter()
            .any(|e| is_generation_link(e.name.as_bytes()));
        (Some(profile.clone()), gens)
    } else {
        (None, false)
    };

    // The imperative guest configuration, resolved inside the rootfs only.
    let mut rootfs_config = None;
    if let Some(st) = &state_dir {
        let wanted = Path::new("/etc/nixos/configuration.nix");
        match s.host.resolve_in(st, wanted) {
            Ok(resolved) => {
                if s.host.kind(&resolved).ok().flatten() == Some(host::Kind::File) {
                    let literal = st.join("etc/nixos/configuration.nix");
                    if resolved != literal {
                        warnings.push(
                            Warning::new(
                                &ROOTFS_CONFIG_SYMLINK,
                                format!("containers.{name}.config"),
                                format!(
                                    "container {name}: {} is a symlink; inside the container it means {}, which is what is used. Check that it is the guest configuration you expect",
                                    literal.display(),
                                    resolved.display()
                                ),
                            )
                            .at(&literal, None),
                        );
                    }
                    rootfs_config = Some(resolved);
                } else if let Some(link) = s
                    .host
                    .resolve_in(st, Path::new("/etc/nixos"))
                    .ok()
                    .map(|dir| dir.join("configuration.nix"))
                    .filter(|l| s.host.kind(l).ok().flatten() == Some(host::Kind::Symlink))
                {
                    let literal = st.join("etc/nixos/configuration.nix");
                    let target = s.host.read_link(&link).unwrap_or_default();
                    warnings.push(
                        Warning::new(
                            &ROOTFS_CONFIG_SYMLINK,
                            format!("containers.{name}.config"),
                            format!(
                                "container {name}: {} is a symlink to {}, which does not exist inside the container's root; it was not followed out of the container. The guest configuration must be supplied by hand",
                                literal.display(),
                                target.display()
                            ),
                        )
                        .at(&literal, None),
                    );
                }
            }
            Err(e) => warnings.push(
                Warning::new(
                    &DISK_UNREADABLE,
                    format!("containers.{name}.config"),
                    format!(
                        "container {name}: cannot resolve {}/etc/nixos/configuration.nix: {}",
                        st.display(),
                        io_msg(&e)
                    ),
                )
                .at(st, None),
            ),
        }
    }

    Some(DiskContainer {
        name: name.to_string(),
        layout,
        kind,
        conf_file,
        state_dir,
        profile_dir,
        has_profile_generations,
        rootfs_config,
        auto_start_link,
        facts,
        warnings,
    })
}

fn value_has_replacement(v: &Value) -> bool {
    match v {
        Value::Str(s) => s.contains('\u{FFFD}'),
        Value::List(l) => l.iter().any(value_has_replacement),
        Value::Attrs(a) => a.values().any(value_has_replacement),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::SourceKind;
    use crate::legacy::merge::merge;
    use std::os::unix::fs::symlink;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/hosts")
            .join(name)
            .join("root")
    }

    /// Copy a fixture tree into a temp dir, keeping symlinks as symlinks.
    fn copy_fixture(name: &str) -> tempfile::TempDir {
        let src = fixture(name);
        let dst = tempfile::tempdir().unwrap();
        for e in walkdir::WalkDir::new(&src).follow_links(false) {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(&src).unwrap();
            let to = dst.path().join(rel);
            let ft = e.file_type();
            if ft.is_symlink() {
                symlink(std::fs::read_link(e.path()).unwrap(), &to).unwrap();
            } else if ft.is_dir() {
                std::fs::create_dir_all(&to).unwrap();
            } else {
                std::fs::copy(e.path(), &to).unwrap();
            }
        }
        dst
    }

    fn by_name<'a>(scan: &'a DiskScan, n: &str) -> &'a DiskContainer {
        scan.containers
            .iter()
            .find(|c| c.name == n)
            .unwrap_or_else(|| panic!("no container {n}"))
    }

    fn codes(c: &DiskContainer) -> Vec<&'static str> {
        c.warnings.iter().map(|w| w.code).collect()
    }

    #[test]
    fn example_host() {
        let t = copy_fixture("example");
        let host = HostRoot::new(t.path()).unwrap();
        let scan = discover_disk(&host);
        let names: Vec<_> = scan.containers.iter().map(|c| c.name.as_str()).collect();
        // podman's registries/storage/containers/policy/libpod are not containers.
        assert_eq!(names, vec!["br", "db", "lan", "scratch", "vpn", "web"]);
        assert!(scan.problems.is_empty(), "{:#?}", scan.problems);
        for c in &scan.containers {
            assert_eq!(c.layout, Layout::NixosContainers, "{}", c.name);
            assert!(
                c.warnings.iter().all(|w| w.code != "conf-without-state"),
                "{}: {:#?}",
                c.name,
                c.warnings
            );
        }
        let web = by_name(&scan, "web");
        assert_eq!(web.kind, Some(Kind::Declarative));
        assert_eq!(
            web.conf_file.as_deref(),
            Some(Path::new("/etc/nixos-containers/web.conf"))
        );
        assert_eq!(
            web.state_dir.as_deref(),
            Some(Path::new("/var/lib/nixos-containers/web"))
        );
        assert!(web.auto_start_link);
        assert_eq!(web.rootfs_config, None);
        assert_eq!(web.facts.len(), 2);
        assert!(web.warnings.is_empty(), "{:#?}", web.warnings);
        let m = merge("web", web.facts.clone());
        assert!(m.warnings.is_empty(), "{:#?}", m.warnings);
        let o = &m.options;
        assert_eq!(o.host_address.as_ref().unwrap().value, "10.233.1.1");
        assert_eq!(o.forward_ports.as_ref().unwrap().value[0].host_port, 8080);
        let binds = &o.bind_mounts.as_ref().unwrap().value;
        assert_eq!(binds.len(), 2);
        assert!(
            binds
                .iter()
                .any(|b| b.mount_point == "/var/www" && b.is_read_only)
        );
        assert!(
            binds
                .iter()
                .any(|b| b.mount_point == "/var/lib/app" && !b.is_read_only)
        );
        assert!(!o.enable_tun.as_ref().unwrap().value);
        assert_eq!(o.timeout_start_sec.as_ref().unwrap().value, "1min");

        let db = by_name(&scan, "db");
        let m = merge("db", db.facts.clone());
        let o = &m.options;
        assert!(!o.private_network.as_ref().unwrap().value);
        assert_eq!(o.tmpfs.as_ref().unwrap().value, vec!["/var/tmp"]);
        assert_eq!(
            o.additional_capabilities.as_ref().unwrap().value,
            vec!["CAP_IPC_LOCK", "CAP_SYS_NICE"]
        );
        assert_eq!(o.allowed_devices.as_ref().unwrap().value.len(), 1);
        assert_eq!(o.timeout_start_sec.as_ref().unwrap().value, "5min");
        assert_eq!(
            o.timeout_start_sec.as_ref().unwrap().origin.kind,
            SourceKind::Unit
        );

        let vpn = by_name(&scan, "vpn");
        assert!(!vpn.auto_start_link);
        let m = merge("vpn", vpn.facts.clone());
        let o = &m.options;
        assert!(o.enable_tun.as_ref().unwrap().value);
        assert_eq!(
            o.additional_capabilities.as_ref().unwrap().value,
            Vec::<String>::new()
        );
        assert_eq!(o.allowed_devices.as_ref().unwrap().value, vec![]);
        assert_eq!(
            o.extra_flags.as_ref().unwrap().value,
            vec!["-U", "--resolv-conf=off", "--system-call-filter=@keyring"]
        );
        assert!(!o.auto_start.as_ref().unwrap().value);

        let lan = merge("lan", by_name(&scan, "lan").facts.clone());
        assert_eq!(lan.options.macvlans.unwrap().value, vec!["eth1"]);
        let br = merge("br", by_name(&scan, "br").facts.clone());
        assert_eq!(br.options.host_bridge.unwrap().value, "br0");
        assert_eq!(br.options.local_address.unwrap().value, "192.168.1.20/24");

        let scratch = by_name(&scan, "scratch");
        assert_eq!(scratch.kind, Some(Kind::Imperative));
        assert_eq!(scratch.facts.len(), 1);
        assert!(scratch.profile_dir.is_some());
        assert!(scratch.has_profile_generations);
        assert_eq!(
            scratch.rootfs_config.as_deref(),
            Some(Path::new(
                "/var/lib/nixos-containers/scratch/etc/nixos/configuration.nix"
            ))
        );
        assert!(scratch.warnings.is_empty(), "{:#?}", scratch.warnings);
        assert!(
            scan.files_read
                .contains(&PathBuf::from("/etc/nixos-containers/web.conf"))
        );
        assert!(
            scan.files_read.iter().any(|p| p.starts_with("/nix/store")
                && p.to_string_lossy().ends_with("container_web-start"))
        );
    }

    fn json_to_value(j: &serde_json::Value) -> Value {
        match j {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => Value::Int(n.as_i64().unwrap()),
            serde_json::Value::String(s) => Value::Str(s.clone()),
            serde_json::Value::Array(a) => Value::List(a.iter().map(json_to_value).collect()),
            serde_json::Value::Object(o) => Value::Attrs(
                o.iter()
                    .map(|(k, v)| (k.clone(), json_to_value(v)))
                    .collect(),
            ),
        }
    }

    /// The deployed files of `example` are what its configuration.nix deploys, except for the
    /// one documented drift (vpn.autoStart). Checked with the real nix-instantiate.
    #[test]
    fn example_fixture_matches_its_nix_configuration() {
        let nix_dir = fixture("example").join("etc/nixos");
        let out = std::process::Command::new("nix-instantiate")
            .current_dir(&nix_dir)
            .args(["--eval", "--strict", "--json", "-E"])
            .arg("builtins.mapAttrs (n: v: removeAttrs v [ \"config\" ]) (import ./configuration.nix { config = { }; lib = { mkForce = x: x; }; pkgs = { }; }).containers")
            .output();
        let Ok(out) = out else {
            eprintln!("skipped: nix-instantiate not installed");
            return;
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let t = copy_fixture("example");
        let scan = discover_disk(&HostRoot::new(t.path()).unwrap());
        let mut drift = Vec::new();
        let defined = j.as_object().unwrap();
        assert_eq!(defined.len(), 5);
        for (name, opts) in defined {
            let c = by_name(&scan, name);
            assert_eq!(c.kind, Some(Kind::Declarative), "{name}");
            let mut ev = SourceFacts::new(name.as_str(), SourceKind::EvalJson, "/tmp/eval.json");
            for (k, v) in opts.as_object().unwrap() {
                ev.set(k, json_to_value(v), None);
            }
            let mut facts = c.facts.clone();
            facts.push(ev);
            let m = merge(name, facts);
            for w in &m.warnings {
                assert_eq!(w.code, "config-not-deployed", "{name}: {w:#?}");
                drift.push(w.option.clone());
            }
        }
        assert_eq!(drift, vec!["containers.vpn.autoStart".to_string()]);
    }

    #[test]
    fn pre2205_host_shares_dirs_with_podman() {
        let t = copy_fixture("pre2205");
        let host = HostRoot::new(t.path()).unwrap();
        let scan = discover_disk(&host);
        let names: Vec<_> = scan.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["mail", "old1", "web"]);
        assert!(scan.problems.is_empty(), "{:#?}", scan.problems);
        for c in &scan.containers {
            assert_eq!(c.layout, Layout::Containers);
            assert!(c.warnings.is_empty(), "{}: {:#?}", c.name, c.warnings);
        }
        let mail = merge("mail", by_name(&scan, "mail").facts.clone());
        // [old] enableTun used modifier "rw"; the old script copies resolv.conf unconditionally.
        assert!(mail.options.enable_tun.unwrap().value);
        assert!(mail.options.copy_resolv_conf.unwrap().value);
        assert!(mail.options.private_users.is_none());
        let old1 = by_name(&scan, "old1");
        assert_eq!(old1.kind, Some(Kind::Imperative));
        let m = merge("old1", old1.facts.clone());
        let p = &m.options.forward_ports.unwrap().value[0];
        assert_eq!((p.host_port, p.container_port), (8022, Some(22)));
        assert_eq!(
            old1.state_dir.as_deref(),
            Some(Path::new("/var/lib/containers/old1"))
        );
    }

    #[test]
    fn podman_only_host_has_no_containers() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("etc/containers")).unwrap();
        std::fs::create_dir_all(r.join("var/lib/containers/storage/overlay")).unwrap();
        std::fs::create_dir_all(r.join("var/lib/containers/cache")).unwrap();
        std::fs::create_dir_all(r.join("var/lib/containers/mystery")).unwrap();
        for f in [
            "registries.conf",
            "storage.conf",
            "containers.conf",
            "libpod.conf",
            "mounts.conf",
            "custom.conf",
        ] {
            std::fs::write(r.join("etc/containers").join(f), "[x]\n").unwrap();
        }
        let scan = discover_disk(&HostRoot::new(r).unwrap());
        assert!(scan.containers.is_empty(), "{:#?}", scan.containers);
        // With a state dir that the legacy start script created, custom.conf is a container.
        std::fs::create_dir_all(r.join("var/lib/containers/custom/etc")).unwrap();
        std::fs::write(r.join("var/lib/containers/custom/etc/os-release"), "").unwrap();
        let scan = discover_disk(&HostRoot::new(r).unwrap());
        assert_eq!(scan.containers.len(), 1);
        assert_eq!(scan.containers[0].name, "custom");
    }

    #[test]
    fn broken_host() {
        let t = copy_fixture("broken");
        let host = HostRoot::new(t.path()).unwrap();
        let scan = discover_disk(&host);
        let names: Vec<_> = scan.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "bad..name",
                "dangling",
                "dotdot",
                "eph",
                "ghost",
                "good",
                "latin1",
                "loop",
                "mangled",
                "orphan",
                "under_score"
            ]
        );
        // dir.conf is reported, not listed.
        assert_eq!(scan.problems.len(), 1, "{:#?}", scan.problems);
        assert!(scan.problems[0].message.contains("dir.conf"));

        assert!(
            by_name(&scan, "good").warnings.is_empty(),
            "{:#?}",
            by_name(&scan, "good").warnings
        );
        let good = merge("good", by_name(&scan, "good").facts.clone());
        let veths = good.options.extra_veths.unwrap();
        assert_eq!(veths.value.len(), 2);
        assert_eq!(
            veths.value["good-dmz"].host_address.as_deref(),
            Some("192.168.50.1/24")
        );
        assert_eq!(
            veths.value["good-dmz"].local_address.as_deref(),
            Some("192.168.50.2/24")
        );
        assert_eq!(veths.value["good-lan"].host_bridge.as_deref(), Some("br1"));
        assert!(
            veths
                .origin
                .file
                .to_string_lossy()
                .ends_with("container_good-post-start")
        );
        assert!(codes(by_name(&scan, "ghost")).contains(&"conf-without-state"));
        let eph = by_name(&scan, "eph");
        assert_eq!(codes(eph), vec!["conf-without-state"]);
        assert!(eph.warnings[0].message.contains("ephemeral"));
        assert!(!eph.warnings[0].needs_human());
        let orphan = by_name(&scan, "orphan");
        assert_eq!(orphan.kind, None);
        assert_eq!(codes(orphan), vec!["state-without-conf"]);
        let bad = by_name(&scan, "bad..name");
        assert!(codes(bad).contains(&"invalid-machine-name"));
        let w = bad
            .warnings
            .iter()
            .find(|w| w.code == "invalid-machine-name")
            .unwrap();
        assert!(
            w.message.contains("/etc/nixos-containers/bad..name.conf"),
            "{}",
            w.message
        );
        assert!(w.message.contains("\"bad-name\""), "{}", w.message);
        assert!(codes(by_name(&scan, "under_score")).contains(&"invalid-machine-name"));
        assert!(codes(by_name(&scan, "dangling")).contains(&"disk-unreadable"));
        assert_eq!(by_name(&scan, "dangling").kind, Some(Kind::Declarative));
        assert!(codes(by_name(&scan, "loop")).contains(&"disk-unreadable"));
        assert_eq!(by_name(&scan, "loop").kind, None);

        let mangled = by_name(&scan, "mangled");
        let conf_codes: Vec<_> = mangled.facts[0].warnings.iter().map(|w| w.code).collect();
        assert!(
            conf_codes.contains(&"conf-malformed-line"),
            "{conf_codes:?}"
        );
        assert!(conf_codes.contains(&"conf-bad-value"), "{conf_codes:?}");
        assert!(conf_codes.contains(&"conf-unknown-key"), "{conf_codes:?}");
        // The planted configuration.nix -> /etc/shadow is not followed out of the rootfs.
        assert_eq!(mangled.rootfs_config, None);
        assert!(codes(mangled).contains(&"rootfs-config-symlink"));
        assert!(
            !scan
                .files_read
                .iter()
                .any(|p| p == Path::new("/etc/shadow"))
        );
        let dotdot = by_name(&scan, "dotdot");
        assert_eq!(dotdot.rootfs_config, None);
        assert!(codes(dotdot).contains(&"rootfs-config-symlink"));

        // latin1.conf: the non-UTF-8 byte is in a comment, which systemd never checks.
        let latin1 = by_name(&scan, "latin1");
        assert!(latin1.warnings.is_empty(), "{:#?}", latin1.warnings);
        assert_eq!(latin1.facts.len(), 1);
    }

    #[test]
    fn planted_link_to_a_guest_file_is_followed_inside_the_rootfs() {
        let t = copy_fixture("broken");
        let st = t.path().join("var/lib/nixos-containers/dotdot");
        std::fs::write(st.join("etc/shadow"), "guest's own shadow").unwrap();
        let host = HostRoot::new(t.path()).unwrap();
        let scan = discover_disk(&host);
        let d = by_name(&scan, "dotdot");
        assert_eq!(
            d.rootfs_config.as_deref(),
            Some(Path::new("/var/lib/nixos-containers/dotdot/etc/shadow"))
        );
        assert!(codes(d).contains(&"rootfs-config-symlink"));
    }

    #[test]
    fn a_rootfs_etc_link_does_not_make_a_podman_dir_a_container() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        // The host itself has /etc/os-release; a directory in /var/lib/containers whose `etc`
        // points at /etc must not borrow it (nor the real machine's /etc/os-release).
        std::fs::create_dir_all(r.join("etc/containers")).unwrap();
        std::fs::write(r.join("etc/os-release"), "ID=nixos\n").unwrap();
        std::fs::write(r.join("etc/containers/trap.conf"), "X=1\n").unwrap();
        std::fs::create_dir_all(r.join("var/lib/containers/trap")).unwrap();
        symlink("/etc", r.join("var/lib/containers/trap/etc")).unwrap();
        let scan = discover_disk(&HostRoot::new(r).unwrap());
        assert!(scan.containers.is_empty(), "{:#?}", scan.containers);
    }

    #[test]
    fn non_utf8_value_and_device_nodes_and_fifos() {
        let t = copy_fixture("broken");
        let cd = t.path().join("etc/nixos-containers");
        std::fs::write(
            cd.join("latin1.conf"),
            b"PRIVATE_NETWORK=1\nHOST_ADDRESS=caf\xe9\n",
        )
        .unwrap();
        // A FIFO named like a conf must not hang the scan; a device node must not be read.
        let fifo = std::ffi::CString::new(cd.join("fifo.conf").as_os_str().as_bytes()).unwrap();
        // SAFETY: plain mkfifo(3) on a NUL-terminated path inside our temp dir.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let dev = std::ffi::CString::new(cd.join("null.conf").as_os_str().as_bytes()).unwrap();
        // SAFETY: mknod(2) of /dev/null's numbers inside our temp dir (needs root; checked below).
        let made_dev =
            unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 3)) } == 0;
        let scan = discover_disk(&HostRoot::new(t.path()).unwrap());
        assert!(codes(by_name(&scan, "latin1")).contains(&"conf-not-utf8"));
        assert!(
            scan.problems
                .iter()
                .any(|p| p.message.contains("fifo.conf"))
        );
        if made_dev {
            assert!(
                scan.problems
                    .iter()
                    .any(|p| p.message.contains("null.conf"))
            );
        }
        assert!(
            scan.containers
                .iter()
                .all(|c| c.name != "fifo" && c.name != "null")
        );
    }

    #[test]
    fn state_left_in_the_old_layout_is_found() {
        let t = copy_fixture("example");
        let r = t.path();
        // The host bumped stateVersion: the conf moved, the state stayed in /var/lib/containers.
        std::fs::create_dir_all(r.join("var/lib/containers/moved/etc")).unwrap();
        std::fs::write(r.join("var/lib/containers/moved/etc/os-release"), "").unwrap();
        std::fs::write(r.join("etc/nixos-containers/moved.conf"), "PRIVATE_NETWORK=1\nHOST_ADDRESS=10.233.9.1\nLOCAL_ADDRESS=10.233.9.2\nHOST_BRIDGE=\nHOST_PORT=\nAUTO_START=0\n").unwrap();
        let scan = discover_disk(&HostRoot::new(r).unwrap());
        let c = by_name(&scan, "moved");
        assert_eq!(c.layout, Layout::NixosContainers);
        assert_eq!(
            c.state_dir.as_deref(),
            Some(Path::new("/var/lib/containers/moved"))
        );
        assert!(codes(c).contains(&"state-in-other-layout"));
    }

    #[test]
    fn empty_root_and_unreadable_dir() {
        let t = tempfile::tempdir().unwrap();
        let scan = discover_disk(&HostRoot::new(t.path()).unwrap());
        assert_eq!(scan, DiskScan::default());
        // /etc/nixos-containers is a file: listed as a problem, not a crash.
        std::fs::create_dir_all(t.path().join("etc")).unwrap();
        std::fs::write(t.path().join("etc/nixos-containers"), "x").unwrap();
        let scan = discover_disk(&HostRoot::new(t.path()).unwrap());
        assert_eq!(scan.problems.len(), 1);
        assert_eq!(scan.problems[0].code, "disk-unreadable");
    }

    #[test]
    fn generation_links() {
        for ok in ["system-1-link", "system-42-link"] {
            assert!(is_generation_link(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "system",
            "system--link",
            "system-x-link",
            "system-1-link.bak",
        ] {
            assert!(!is_generation_link(bad.as_bytes()), "{bad}");
        }
    }
}

//! The legacy world as data: what one legacy container is, every option typed, and where each
//! value came from.
//!
//! Readers (`conf`, `unit`, `nix_source`, `eval`) all speak the same vocabulary: a
//! [`SourceFacts`] maps *legacy option names* (`hostAddress`, `bindMounts`, `extraFlags`, … as
//! in `containers.<name>.<option>`) to untyped [`Value`]s with their [`Origin`]. `merge` then
//! combines the sources of one container and converts them to the typed [`LegacyOptions`] the
//! translator reads. "Unset" is not "false": every typed field is an `Option`.

use crate::warnings::Warning;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Which kind of source a fact came from. The order is the merge priority (last wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// `/etc/{nixos-,}containers/NAME.conf`: what is deployed.
    Conf,
    /// `/etc/systemd/system/container@NAME.service` and its start script: what is deployed.
    Unit,
    /// The host's Nix source, read statically: what is configured.
    NixSource,
    /// `nix eval --json` output given with `--from-json`: what is configured, fully evaluated.
    EvalJson,
}

impl SourceKind {
    /// True for sources that describe the running (deployed) system rather than the config.
    pub fn is_deployed(self) -> bool {
        matches!(self, SourceKind::Conf | SourceKind::Unit)
    }
}

/// Where a fact came from: a host path and, when known, a 1-based line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub kind: SourceKind,
    pub file: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

impl Origin {
    pub fn new(kind: SourceKind, file: impl Into<PathBuf>, line: Option<usize>) -> Self {
        Origin {
            kind,
            file: file.into(),
            line,
        }
    }

    /// `file:line` (or just `file`) for messages.
    pub fn location(&self) -> String {
        match self.line {
            Some(l) => format!("{}:{}", self.file.display(), l),
            None => self.file.display().to_string(),
        }
    }
}

/// A Nix expression kept verbatim because it is code, not data (a guest `config` module, a
/// `nixpkgs` path expression, or a value that could not be reduced statically).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NixExpr {
    /// The exact source text, comments included.
    pub text: String,
    /// Where the text starts.
    pub origin: Origin,
    /// 1-based column of the first character of `text` on its line (for re-indenting).
    pub column: usize,
    /// Identifiers the text (and [`NixExpr::lets`]) uses but does not bind (`pkgs`, `lib`,
    /// `config`, `inputs`, …). The renderer binds `config`, `lib`, `pkgs` and takes the others
    /// as module arguments; the translator reports them.
    pub free_vars: Vec<String>,
    /// `let` bindings of the host file the text needs (transitively), carried with it so that
    /// the copy evaluates where it lands: the renderer writes `let <lets> in <text>`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lets: Vec<LetBinding>,
    /// The names of `free_vars` that are arguments of the host file's module function
    /// (`{ config, inputs, ... }:`): every module of that configuration receives them, so the
    /// generated file (imported into the same configuration) does too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub module_args: Vec<String>,
    /// For a guest `config`: the files of the host's configuration tree its relative paths
    /// name (transitively, through their own relative paths), as read, so that the translator
    /// can apply the guest rules to them too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub guest_files: Vec<GuestFile>,
    /// For names of `free_vars` the reader could not carry (and that are not module
    /// arguments): why, as the reader saw it (`serverName` → "a parameter of the function
    /// `{ serverName }: …` at line 1, …"), so that the report says which limit it is.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub why_free: Vec<(String, String)>,
}

/// A file a guest `config` names by a relative path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GuestFile {
    /// Host path (a directory's `default.nix` when the path names a directory).
    pub path: PathBuf,
    /// The text, or why it could not be read.
    pub content: Result<String, String>,
}

impl NixExpr {
    /// An expression with no carried bindings and no known module arguments.
    pub fn plain(text: String, origin: Origin, column: usize, free_vars: Vec<String>) -> Self {
        NixExpr {
            text,
            origin,
            column,
            free_vars,
            lets: Vec::new(),
            module_args: Vec::new(),
            guest_files: Vec::new(),
            why_free: Vec::new(),
        }
    }

    /// Take over the carried bindings and module arguments of `others` (the parts a combined
    /// expression was built from), without duplicates.
    pub fn absorb<'a>(&mut self, others: impl IntoIterator<Item = &'a NixExpr>) {
        for o in others {
            for l in &o.lets {
                if !self.lets.iter().any(|m| m.name == l.name) {
                    self.lets.push(l.clone());
                }
            }
            for a in &o.module_args {
                if !self.module_args.contains(a) {
                    self.module_args.push(a.clone());
                }
            }
            for v in &o.free_vars {
                if !self.free_vars.contains(v) && !self.lets.iter().any(|l| &l.name == v) {
                    self.free_vars.push(v.clone());
                }
            }
            for g in &o.guest_files {
                if !self.guest_files.iter().any(|h| h.path == g.path) {
                    self.guest_files.push(g.clone());
                }
            }
            for w in &o.why_free {
                if !self.why_free.iter().any(|(n, _)| *n == w.0) {
                    self.why_free.push(w.clone());
                }
            }
        }
        let bound: Vec<String> = self.lets.iter().map(|l| l.name.clone()).collect();
        self.free_vars.retain(|v| !bound.contains(v));
        self.module_args.retain(|v| !bound.contains(v));
        self.why_free.retain(|(v, _)| !bound.contains(v));
        self.lets.sort_by_key(|l| l.line);
        self.free_vars.sort();
        self.module_args.sort();
    }
}

/// One `let` binding of the host file carried into the generated file, verbatim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LetBinding {
    /// The name it binds.
    pub name: String,
    /// The whole binding as written: `prefix = "10.0.0";` or `inherit (config) flake;`.
    pub text: String,
    /// 1-based line of the binding in the host file (`NixExpr::origin.file`).
    pub line: usize,
}

/// An untyped value as a source states it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    List(Vec<Value>),
    Attrs(BTreeMap<String, Value>),
    /// Not reducible to data statically: the expression, verbatim.
    Expr(NixExpr),
}

/// Everything one source says about one container.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceFacts {
    pub container: String,
    pub kind: SourceKind,
    /// The file this source is (host path): the `.conf`, the unit, the Nix file, the JSON file.
    pub file: PathBuf,
    /// Legacy option name → value and origin. Only options the source actually states.
    pub options: BTreeMap<String, (Value, Origin)>,
    /// A condition the whole container definition sits under (`lib.mkIf cond { … }`), verbatim.
    pub condition: Option<NixExpr>,
    /// What the reader found wrong or could not read, about this container.
    pub warnings: Vec<Warning>,
}

impl SourceFacts {
    pub fn new(container: impl Into<String>, kind: SourceKind, file: impl Into<PathBuf>) -> Self {
        SourceFacts {
            container: container.into(),
            kind,
            file: file.into(),
            options: BTreeMap::new(),
            condition: None,
            warnings: Vec::new(),
        }
    }

    pub fn set(&mut self, option: &str, value: Value, line: Option<usize>) {
        let origin = Origin::new(self.kind, self.file.clone(), line);
        self.options.insert(option.to_string(), (value, origin));
    }
}

/// A value together with where it came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sourced<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> Sourced<T> {
    pub fn new(value: T, origin: Origin) -> Self {
        Sourced { value, origin }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Defined in the host's NixOS configuration (`.conf` is a symlink into `/etc/static`).
    Declarative,
    /// Created with `nixos-container create` (`.conf` is a plain, writable file).
    Imperative,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Declarative => "declarative",
            Kind::Imperative => "imperative",
        }
    }
}

/// Which generation of the legacy layout a container lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Layout {
    /// `/etc/nixos-containers` + `/var/lib/nixos-containers` (host stateVersion ≥ 22.05).
    NixosContainers,
    /// `/etc/containers` + `/var/lib/containers` (older hosts; shared with podman).
    Containers,
}

impl Layout {
    pub fn conf_dir(self) -> &'static str {
        match self {
            Layout::NixosContainers => "/etc/nixos-containers",
            Layout::Containers => "/etc/containers",
        }
    }

    pub fn state_dir(self) -> &'static str {
        match self {
            Layout::NixosContainers => "/var/lib/nixos-containers",
            Layout::Containers => "/var/lib/containers",
        }
    }
}

/// `privateUsers`: `"no"`, `"identity"`, `"pick"` or a base UID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrivateUsers {
    No,
    Identity,
    Pick,
    Base(u32),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ForwardPort {
    /// `tcp` or `udp` (the legacy default is `tcp`).
    pub protocol: String,
    pub host_port: u16,
    /// `None` means "same as `host_port`" (the legacy default).
    pub container_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct BindMount {
    /// Where it appears inside the container.
    pub mount_point: String,
    /// `None`: the same path as `mount_point` on the host.
    pub host_path: Option<String>,
    /// Legacy default: `true`.
    pub is_read_only: bool,
    /// nspawn mount options (`host:mp:opts`), only possible through `extraFlags`.
    pub options: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct AllowedDevice {
    pub node: String,
    pub modifier: String,
}

/// One `extraVeths.<name>` entry (the same `networkOptions` as the main link).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExtraVeth {
    pub host_bridge: Option<String>,
    pub host_address: Option<String>,
    pub host_address6: Option<String>,
    pub local_address: Option<String>,
    pub local_address6: Option<String>,
}

/// Every `containers.<name>` option, typed. `None` = not set by any source (legacy default).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LegacyOptions {
    /// The guest NixOS module, verbatim.
    pub config: Option<Sourced<NixExpr>>,
    /// A prebuilt system toplevel (`SYSTEM_PATH` / `path`).
    pub path: Option<Sourced<String>>,
    pub flake: Option<Sourced<String>>,
    /// `nixpkgs`: a literal path, or an expression such as `pkgs.path` / `inputs.nixpkgs`.
    pub nixpkgs: Option<Sourced<NixExpr>>,
    pub special_args: Option<Sourced<NixExpr>>,
    pub auto_start: Option<Sourced<bool>>,
    pub restart_if_changed: Option<Sourced<bool>>,
    pub timeout_start_sec: Option<Sourced<String>>,
    pub ephemeral: Option<Sourced<bool>>,
    pub enable_tun: Option<Sourced<bool>>,
    pub copy_resolv_conf: Option<Sourced<bool>>,
    pub private_network: Option<Sourced<bool>>,
    pub network_namespace: Option<Sourced<String>>,
    pub private_users: Option<Sourced<PrivateUsers>>,
    pub interfaces: Option<Sourced<Vec<String>>>,
    pub macvlans: Option<Sourced<Vec<String>>>,
    pub extra_veths: Option<Sourced<BTreeMap<String, ExtraVeth>>>,
    pub host_bridge: Option<Sourced<String>>,
    pub host_address: Option<Sourced<String>>,
    pub host_address6: Option<Sourced<String>>,
    pub local_address: Option<Sourced<String>>,
    pub local_address6: Option<Sourced<String>>,
    pub local_mac_address: Option<Sourced<String>>,
    pub forward_ports: Option<Sourced<Vec<ForwardPort>>>,
    pub bind_mounts: Option<Sourced<Vec<BindMount>>>,
    pub allowed_devices: Option<Sourced<Vec<AllowedDevice>>>,
    pub tmpfs: Option<Sourced<Vec<String>>>,
    pub additional_capabilities: Option<Sourced<Vec<String>>>,
    pub extra_flags: Option<Sourced<Vec<String>>>,
    /// Options whose value is a Nix expression that could not be read statically: the option
    /// name and the expression. The translator reports each one (evaluate with Nix to get it).
    pub unresolved: BTreeMap<String, Sourced<NixExpr>>,
}

/// One legacy container, all sources merged.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LegacyContainer {
    pub name: String,
    /// `None` when the container is only configured (in Nix), not deployed: no `.conf` on disk.
    pub kind: Option<Kind>,
    pub layout: Option<Layout>,
    /// Host path of the `.conf`, when there is one.
    pub conf_file: Option<PathBuf>,
    /// Host path of the state directory (`/var/lib/{nixos-,}containers/NAME`), when it exists.
    pub state_dir: Option<PathBuf>,
    /// `/nix/var/nix/profiles/per-container/NAME`, when it exists.
    pub profile_dir: Option<PathBuf>,
    /// True when the profile holds `system-N-link` generations (imperative or flake containers).
    pub has_profile_generations: bool,
    /// For imperative containers: the guest's `etc/nixos/configuration.nix` inside the rootfs.
    pub rootfs_config: Option<PathBuf>,
    pub options: LegacyOptions,
    /// The `lib.mkIf` condition the container definition sits under, if any.
    pub condition: Option<NixExpr>,
    /// Which kinds of source described this container.
    pub sources: Vec<SourceKind>,
    /// Reader and merge findings (malformed lines, disagreements, unreadable values).
    pub warnings: Vec<Warning>,
}

/// The whole legacy side of one host.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LegacyHost {
    pub containers: Vec<LegacyContainer>,
    /// Findings not tied to one container (a Nix file that does not parse, an unreadable dir).
    pub problems: Vec<Warning>,
    /// Host paths of every file that was read, in reading order (for the report).
    pub files_read: Vec<PathBuf>,
    /// Per container name: its legacy GC-root directory
    /// (`/nix/var/nix/gcroots/per-container/NAME`), when it is a directory.
    pub gcroots_dirs: BTreeMap<String, PathBuf>,
    /// Every binding of the Nix source that defines a container (for `migrate --rewrite`).
    #[serde(skip)]
    pub nix_sites: Vec<crate::legacy::nix_source::DefinitionSite>,
    /// Per container: the file and line of every option the Nix source reader read for it
    /// (`migrate --rewrite` checks that each lies inside a binding it replaces).
    #[serde(skip)]
    pub nix_option_lines: BTreeMap<String, Vec<(PathBuf, usize)>>,
}

//! Translating a legacy container into the new world. Every decision lives here, driven by one
//! table ([`mapping::MAPPINGS`]); no I/O.
//!
//! [`translate`] runs every option row of the table in table order (the order matters in a few
//! documented places: `config` runs first so later rows know what the guest configures;
//! `privateNetwork` decides the network mode before the address rows; `extraFlags` runs last
//! because the legacy start script put the flags after everything else, so they win), then
//! checks the result (no key rendered twice).
//!
//! The warnings in [`Instance::warnings`] are the translator's own. Reader findings stay in
//! [`LegacyContainer::warnings`]; the translator does not repeat a problem the reader already
//! reported for the same option (one warning per problem).

pub mod example;
pub mod flags;
pub mod guest;
pub mod host_refs;
pub mod mapping;
pub mod model;
pub mod network;
pub mod options;

pub use model::*;

use crate::legacy::{Kind, LegacyContainer, Origin};
use crate::nixtext;
use crate::warnings::{Category, Warning, WarningSpec};
use std::path::{Path, PathBuf};

/// What the translator needs to know besides the container itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    /// Host path of the Nix file that will be written, e.g. `/etc/nixos/nspawn-containers.nix`.
    /// Relative paths in copied Nix text are rewritten to resolve from its directory.
    pub output_file: PathBuf,
}

macro_rules! spec {
    ($name:ident, $code:literal, $cat:ident, $summary:literal) => {
        pub const $name: WarningSpec = WarningSpec {
            code: $code,
            category: Category::$cat,
            summary: $summary,
        };
    };
}

spec!(
    UNRESOLVED_EXPRESSION,
    "unresolved-expression",
    NeedsHuman,
    "an option's value is a Nix expression that could not be read statically; evaluate the host configuration (--from-json) or translate it by hand"
);
spec!(
    P2P_PREFIX_CHOSEN,
    "p2p-prefix-chosen",
    ChangedMeaning,
    "a host/local address pair written with prefixes that differ or do not hold both addresses became one subnet on the veth; the chosen prefix is named in the message (pairs without prefixes stay point-to-point and are not reported)"
);
spec!(
    ADDRESS_PAIR_INCOMPLETE,
    "address-pair-incomplete",
    ChangedMeaning,
    "only one end of a point-to-point pair is set (hostAddress without localAddress or the reverse): that end keeps its /32 (/128), but the routes legacy's scripts added towards the missing end are gone; the message says what to add"
);
spec!(
    BRIDGE_ADDRESS_WITHOUT_PREFIX,
    "bridge-address-without-prefix",
    NeedsHuman,
    "a bridged container's localAddress has no /prefix; the guest gets a /32 (/128) and may need a route"
);
spec!(
    INVALID_ADDRESS,
    "invalid-address",
    NeedsHuman,
    "an address option is not an IP address (with optional /prefix); it was not translated"
);
spec!(
    ADDRESSES_WITHOUT_PRIVATE_NETWORK,
    "addresses-without-private-network",
    ChangedMeaning,
    "network options set while privateNetwork = false were ignored by the legacy module and are ignored now"
);
spec!(
    FORWARD_PORTS_IGNORED,
    "forward-ports-ignored",
    ChangedMeaning,
    "forwardPorts without privateNetwork were silently ignored by the legacy module; they stay ignored"
);
spec!(
    INJECTED_FLAGS,
    "injected-flags",
    NeedsHuman,
    "an additionalCapabilities item is not a capability name (quotes, spaces, '=' or '--'): it smuggled flags into the legacy start script and was not carried over"
);
spec!(
    UNKNOWN_EXTRA_FLAG,
    "unknown-extra-flag",
    NeedsHuman,
    "an extraFlags entry has no .nspawn or drop-in equivalent the tool knows; port it by hand"
);
spec!(
    EXTRA_FLAG_IGNORED,
    "extra-flag-ignored",
    ChangedMeaning,
    "an extraFlags entry is provided by the new module or systemd-nspawn@.service itself, or cannot apply there; it was dropped"
);
spec!(
    NETWORK_NAMESPACE,
    "network-namespace",
    NeedsHuman,
    "networkNamespace / --network-namespace-path has no .nspawn equivalent; the container now gets its own network namespace"
);
spec!(
    LOCAL_MAC_ADDRESS,
    "local-mac-address",
    NeedsHuman,
    "localMacAddress has no nspawn key; set the MAC inside the guest (networkd [Link] MACAddress= on host0)"
);
spec!(
    PREBUILT_SYSTEM_PATH,
    "prebuilt-system-path",
    NeedsHuman,
    "the container runs a prebuilt system path with no config to rebuild from; give it a system-config"
);
spec!(
    FLAKE_CONTAINER,
    "flake-container",
    NeedsHuman,
    "the container is built from a flake; import its nixosConfigurations modules into system-config by hand"
);
spec!(
    MISSING_SYSTEM_CONFIG,
    "missing-system-config",
    NeedsHuman,
    "no guest configuration was found for the container"
);
spec!(
    REMOVED_PKGS_OPTION,
    "removed-pkgs-option",
    NeedsHuman,
    "containers.<name>.pkgs was removed from NixOS (it threw an error); use nixpkgs or the guest's nixpkgs.pkgs"
);
spec!(
    NOT_AUTO_STARTED,
    "not-auto-started",
    ChangedMeaning,
    "the legacy container was not started at boot; the new instance is not either"
);
spec!(
    IMPERATIVE_GUEST_CONFIG,
    "imperative-guest-config",
    NeedsHuman,
    "an imperative container's configuration lives in its rootfs; eth0 and useHostResolvConf could not be rewritten there"
);
spec!(
    ETH0_REFERENCE,
    "eth0-reference",
    ChangedMeaning,
    "the guest config referenced eth0; inside an nspawn container the veth is host0, so the references were rewritten"
);
spec!(
    USE_HOST_RESOLV_CONF_REMOVED,
    "use-host-resolv-conf-removed",
    ChangedMeaning,
    "networking.useHostResolvConf was removed from the guest config; [Exec] ResolvConf= takes over"
);
spec!(
    GUEST_FILES_NOT_REWRITTEN,
    "guest-files-not-rewritten",
    NeedsHuman,
    "the guest config imports files the tool could not read (missing, outside the configuration directory, not a relative path); their content was not checked for the guest rules (eth0, useHostResolvConf, boot.isContainer, a gateway without interface)"
);
spec!(
    GUEST_FILES_COPIED,
    "guest-files-copied",
    ChangedMeaning,
    "files the guest config imports needed eth0/useHostResolvConf rewrites: rewritten copies are written next to the output and imported instead (originals unchanged)"
);
spec!(
    FREE_VARIABLE,
    "free-variable",
    NeedsHuman,
    "copied Nix text uses names the legacy host file binds in a way that cannot be carried over (parameters of a function around the module, `a.b = …` bindings, one name bound twice); bind them in the new file"
);
spec!(
    MODULE_ARGUMENT,
    "module-argument",
    ChangedMeaning,
    "copied Nix text uses arguments of the host's module function (inputs, specialArgs); the generated module takes them the same way, so it must be imported into that configuration"
);
spec!(
    GUEST_CONFIG_UNPARSABLE,
    "guest-config-unparsable",
    NeedsHuman,
    "the guest config text does not parse, so it was copied without the eth0/useHostResolvConf/path rewrites"
);
spec!(
    UNREWRITABLE_PATH,
    "unrewritable-path",
    NeedsHuman,
    "a relative path with interpolation in copied Nix text cannot be rewritten for the new file's directory"
);
spec!(
    EXTRA_VETH_UNITS,
    "extra-veth-units",
    ChangedMeaning,
    "extraVeths became VirtualEthernetExtra= plus generated host and guest networkd units; the guest must use networkd"
);
spec!(
    INTERFACE_NAME_TOO_LONG,
    "interface-name-too-long",
    NeedsHuman,
    "an interface name is longer than 15 characters; the kernel refuses it"
);
spec!(
    INVALID_VALUE,
    "invalid-value",
    NeedsHuman,
    "an option value is malformed for its new key and was not carried over"
);
spec!(
    FORWARD_PORTS_WITHOUT_VETH,
    "forward-ports-without-veth",
    ChangedMeaning,
    "forwardPorts on a private network without a veth (macvlan or moved interfaces only): the module forwards ports over its veth only, so they were dropped; the message names the raw Port= keys that keep nspawn's own forwarding"
);
spec!(
    VETH_WITHOUT_ADDRESSES,
    "veth-without-addresses",
    ChangedMeaning,
    "a veth without host or local addresses: legacy left both ends unconfigured, the module's default mode runs a DHCP server, NAT and router advertisements on ve-<name> and DHCP in the guest; the message says how to keep the links unconfigured"
);
spec!(
    NETWORK_ZONE_DECLARED,
    "network-zone-declared",
    ChangedMeaning,
    "--network-zone= needs the zone declared for the module: nixos.containers.zones.<zone> is emitted, whose bridge serves DHCP, NAT and router advertisements where legacy's bridge was left unconfigured"
);
spec!(
    GUEST_GATEWAY_WITHOUT_INTERFACE,
    "guest-gateway-without-interface",
    NeedsHuman,
    "the guest sets networking.defaultGateway(6) without an interface and the tool could not give it one (several links, none, a second default route from the module, or a value it cannot rewrite); the container now runs systemd-networkd, where NixOS requires defaultGateway.interface"
);
spec!(
    GUEST_GATEWAY_INTERFACE_ADDED,
    "guest-gateway-interface-added",
    ChangedMeaning,
    "the guest's networking.defaultGateway(6) named no interface (legacy's scripted networking did not need one); the container now runs systemd-networkd, where NixOS requires one, so it was rewritten to { address = …; interface = <the container's only link>; }"
);
spec!(
    CONTAINER_UNIT_OVERRIDE,
    "container-unit-override",
    NeedsHuman,
    "the host configuration overrides systemd.services.\"container@<name>\" (or the container@ template); the migrated container runs as systemd-nspawn@<name>.service, so those settings stop applying: move them"
);
spec!(
    BIND_MOUNTS_COPIED_AS_NIX,
    "bind-mounts-copied-as-nix",
    ChangedMeaning,
    "bindMounts is computed by Nix code (a secret's path, a module argument, …): it is copied verbatim into the generated file, where the host configuration evaluates it; its paths are not known before that, so the .nspawn preview lacks their Bind= lines, no RequiresMountsFor= is added for them, and a `:` or `\\` in them is now taken literally"
);
spec!(
    HOST_BRIDGE_COPIED_AS_NIX,
    "host-bridge-copied-as-nix",
    ChangedMeaning,
    "hostBridge is computed by Nix code (an option of the host configuration, a let binding over it): it is copied into the generated file as network.bridge, with the let bindings it uses, and evaluated there by the host configuration; its name is known only then, so the .nspawn preview lacks its Bridge= line and the name is not checked before the build"
);
spec!(
    ADDRESSES_COPIED_AS_NIX,
    "addresses-copied-as-nix",
    ChangedMeaning,
    "a hostAddress/localAddress(6) is computed by Nix code (a module argument, an option of the host configuration): it is copied into the module's static addresses, with the let bindings it uses, and evaluated by the host configuration; a plain veth then uses network.pointToPoint, which puts each end as given, as legacy's scripts did; the value is known only at build time, so the networkd preview lacks it"
);
spec!(
    INTERNAL_KEY_CONFLICT,
    "internal-key-conflict",
    NeedsHuman,
    "the translator produced a .nspawn key twice (module and raw); this is a bug in nixos-nspawn, please report it"
);

/// Warning codes owned by the translator.
pub const WARNINGS: &[&WarningSpec] = &[
    &UNRESOLVED_EXPRESSION,
    &P2P_PREFIX_CHOSEN,
    &ADDRESS_PAIR_INCOMPLETE,
    &BRIDGE_ADDRESS_WITHOUT_PREFIX,
    &INVALID_ADDRESS,
    &ADDRESSES_WITHOUT_PRIVATE_NETWORK,
    &FORWARD_PORTS_IGNORED,
    &INJECTED_FLAGS,
    &UNKNOWN_EXTRA_FLAG,
    &EXTRA_FLAG_IGNORED,
    &NETWORK_NAMESPACE,
    &LOCAL_MAC_ADDRESS,
    &PREBUILT_SYSTEM_PATH,
    &FLAKE_CONTAINER,
    &MISSING_SYSTEM_CONFIG,
    &REMOVED_PKGS_OPTION,
    &NOT_AUTO_STARTED,
    &IMPERATIVE_GUEST_CONFIG,
    &ETH0_REFERENCE,
    &USE_HOST_RESOLV_CONF_REMOVED,
    &FREE_VARIABLE,
    &MODULE_ARGUMENT,
    &GUEST_FILES_NOT_REWRITTEN,
    &GUEST_FILES_COPIED,
    &GUEST_CONFIG_UNPARSABLE,
    &UNREWRITABLE_PATH,
    &EXTRA_VETH_UNITS,
    &INTERFACE_NAME_TOO_LONG,
    &INVALID_VALUE,
    &FORWARD_PORTS_WITHOUT_VETH,
    &VETH_WITHOUT_ADDRESSES,
    &NETWORK_ZONE_DECLARED,
    &GUEST_GATEWAY_WITHOUT_INTERFACE,
    &GUEST_GATEWAY_INTERFACE_ADDED,
    &CONTAINER_UNIT_OVERRIDE,
    &BIND_MOUNTS_COPIED_AS_NIX,
    &HOST_BRIDGE_COPIED_AS_NIX,
    &ADDRESSES_COPIED_AS_NIX,
    &INTERNAL_KEY_CONFLICT,
    // Declared with the unit-value writer whose rules they report; emitted by the translator.
    &crate::render::unit::UNIT_VALUE_REFUSED,
    &crate::render::unit::BIND_PATH_COLON,
];

/// What the guest config says about name resolution (found by the `config` row, used by the
/// `copyResolvConf` row).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestResolv {
    /// The guest set `networking.useHostResolvConf` to false (plain or `mkForce`).
    pub use_host_resolv_conf_false: bool,
    /// The guest enables systemd-resolved.
    pub uses_resolved: bool,
}

/// What the `config` row does with a guest `networking.defaultGateway(6)` that names no
/// interface. The container's links are known only after every row ran (`extraFlags` last),
/// the `config` row runs first: it finds them, [`network::after_rows`] decides, and the row
/// runs again with the decision when there is one to apply (its output replaces the first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GatewayDecision {
    /// First pass: find them ([`Tx::bare_gateways`]), change nothing, say nothing.
    #[default]
    Find,
    /// Give them this interface (the container's only link).
    Rewrite(String),
    /// Leave them as they are, for this reason (needs a human).
    Keep(String),
}

/// Where the `config` row's output sits in [`Instance::warnings`] and [`Instance::applied`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowOutput {
    pub warnings: std::ops::Range<usize>,
    pub applied: std::ops::Range<usize>,
}

/// The translation in progress: the input, the context and the instance being built.
/// Row handlers (see [`mapping`]) read the legacy options and write here.
pub struct Tx<'a> {
    pub c: &'a LegacyContainer,
    pub ctx: &'a Context,
    pub i: Instance,
    pub guest_resolv: GuestResolv,
    /// The legacy `privateNetwork` value (default false): gates addresses and ports.
    pub private_network: bool,
    pub gateway: GatewayDecision,
    /// Guest gateways without an interface the `config` row found (the binding as written,
    /// in the config text or a file it imports).
    pub bare_gateways: Vec<String>,
    pub config_output: Option<RowOutput>,
}

impl<'a> Tx<'a> {
    fn new(c: &'a LegacyContainer, ctx: &'a Context) -> Self {
        let kind = c.kind.unwrap_or(Kind::Declarative);
        let i = Instance {
            name: c.name.clone(),
            kind,
            state: StateMove {
                from: c.state_dir.clone(),
                to: Path::new("/var/lib/machines").join(&c.name),
            },
            spec: InstanceSpec {
                system_config: None,
                nixpkgs: None,
                special_args: None,
                network: None,
                forward_ports: Vec::new(),
                activation_strategy: ActivationStrategy::None,
                ephemeral: false,
                bind_mounts: Vec::new(),
                bind_mounts_expr: None,
                auto_start: false,
                timeout_start_sec: None,
                restart: None,
                private_users: PrivateUsersSpec {
                    mode: "no".to_string(),
                    ownership: None,
                },
                condition: c.condition.clone(),
            },
            raw_nspawn: NspawnSettings::default(),
            dropin: Dropin::default(),
            host_networks: Vec::new(),
            guest_networks: Vec::new(),
            guest_files: std::collections::BTreeMap::new(),
            applied: Vec::new(),
            warnings: Vec::new(),
        };
        Tx {
            c,
            ctx,
            i,
            guest_resolv: GuestResolv::default(),
            private_network: false,
            gateway: GatewayDecision::Find,
            bare_gateways: Vec::new(),
            config_output: None,
        }
    }

    /// `containers.<name>.<option>`, the name quoted when Nix needs it.
    pub fn opt(&self, option: &str) -> String {
        format!("containers.{}.{}", nixtext::attr_name(&self.c.name), option)
    }

    /// Add a warning about `option`, located at `origin` when known. The message should say
    /// what happened and how to fix it; the container name and location are prefixed here.
    pub fn warn(
        &mut self,
        spec: &WarningSpec,
        option: &str,
        origin: Option<&Origin>,
        message: impl AsRef<str>,
    ) {
        let opt = self.opt(option);
        let loc = origin
            .map(|o| format!(" ({})", o.location()))
            .unwrap_or_default();
        let mut w = Warning::new(
            spec,
            opt.clone(),
            format!("{opt}{loc}: {}", message.as_ref()),
        );
        if let Some(o) = origin {
            w = w.at(o.file.clone(), o.line);
        }
        self.i.warnings.push(w);
    }

    pub fn applied(&mut self, option: &str, target: impl Into<String>) {
        let option = self.opt(option);
        self.i.applied.push(Applied {
            option,
            target: target.into(),
        });
    }

    fn push(map: &mut std::collections::BTreeMap<String, Vec<String>>, key: &str, value: String) {
        let v = map.entry(key.to_string()).or_default();
        if !v.contains(&value) {
            v.push(value);
        }
    }

    /// Append a raw `[Exec]` value (duplicates are dropped).
    pub fn exec(&mut self, key: &str, value: impl Into<String>) {
        Self::push(&mut self.i.raw_nspawn.exec, key, value.into());
    }
    pub fn files(&mut self, key: &str, value: impl Into<String>) {
        Self::push(&mut self.i.raw_nspawn.files, key, value.into());
    }
    pub fn network(&mut self, key: &str, value: impl Into<String>) {
        Self::push(&mut self.i.raw_nspawn.network, key, value.into());
    }
    /// Set a single-valued raw key, replacing an earlier value.
    pub fn set_exec(&mut self, key: &str, value: impl Into<String>) {
        self.i
            .raw_nspawn
            .exec
            .insert(key.to_string(), vec![value.into()]);
    }
    pub fn set_files(&mut self, key: &str, value: impl Into<String>) {
        self.i
            .raw_nspawn
            .files
            .insert(key.to_string(), vec![value.into()]);
    }
    pub fn dropin_service(&mut self, key: &str, value: impl Into<String>) {
        Self::push(&mut self.i.dropin.service, key, value.into());
    }
    pub fn dropin_unit(&mut self, key: &str, value: impl Into<String>) {
        Self::push(&mut self.i.dropin.unit, key, value.into());
    }

    /// Make sure the container has its own network namespace (`Private=yes`), without a veth
    /// unless something else asks for one.
    pub fn ensure_private_network(&mut self) -> &mut NetworkSpec {
        self.i.spec.network.get_or_insert_with(|| NetworkSpec {
            veth: false,
            ..NetworkSpec::default()
        })
    }

    /// Was this option already reported by a reader (same option path)?
    pub fn reader_warned(&self, option: &str) -> bool {
        let opt = self.opt(option);
        // A reader's warning about a part (`bindMounts."/x"`) is about the option too.
        let part = format!("{opt}.");
        self.c
            .warnings
            .iter()
            .any(|w| w.option == opt || w.option.starts_with(&part))
    }
}

/// `Restart=` of legacy's `container@.service` (nixos-containers.nix, `serviceDirectives`).
pub const LEGACY_RESTART: &str = "on-failure";

/// What the legacy `container@.service` had and the stock `systemd-nspawn@.service` lacks,
/// independent of any option (nixos-containers.nix, `serviceDirectives`), and the state rule of
/// ephemeral containers.
fn service_defaults(tx: &mut Tx) {
    // A crashed container was restarted; the stock unit has no Restart= at all. An option,
    // not a raw drop-in key: `nixos-nspawn update` of an imperative container renders its
    // drop-in from the options alone (eval-container.nix) and would drop a raw key.
    tx.i.spec.restart = Some(LEGACY_RESTART.to_string());
    // Legacy ran an ephemeral container from /run/nixos-containers/<name>, empty at every
    // boot, never from /var/lib/nixos-containers/<name>: that directory (if any, e.g. from
    // before the container was made ephemeral) must not become the snapshot source of every
    // boot. The new root starts empty, as legacy's did; the old directory is left untouched.
    if tx.i.spec.ephemeral
        && let Some(old) = tx.i.state.from.take()
    {
        tx.applied(
            "ephemeral",
            format!(
                "{} is not copied: legacy ran the ephemeral container from an empty /run/nixos-containers/{}",
                old.display(),
                tx.c.name
            ),
        );
    }
}

/// Translate one legacy container.
pub fn translate(c: &LegacyContainer, ctx: &Context) -> Instance {
    let mut tx = Tx::new(c, ctx);

    // Unresolved expressions: one warning per option, unless a reader already said so or the
    // option's own row handles it (`pkgs`, and `bindMounts`, copied as Nix).
    for (option, expr) in &c.options.unresolved {
        if option == "pkgs"
            || crate::legacy::nix_source::CARRIED_AS_NIX.contains(&option.as_str())
            || tx.reader_warned(option)
        {
            continue;
        }
        let first_line = expr
            .value
            .text
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        tx.warn(
            &UNRESOLVED_EXPRESSION,
            option,
            Some(&expr.origin),
            format!(
                "the value `{first_line}` could not be read without evaluating Nix, so it was not translated; \
                 re-run with --from-json (nix eval of the host's containers) or port it by hand"
            ),
        );
    }

    // A `lib.mkIf` condition around the whole definition is copied like any other expression.
    if let Some(cond) = &c.condition {
        let copied = options::copy_expr(&mut tx, "<mkIf condition>", cond);
        tx.i.spec.condition = Some(copied);
    }

    for row in mapping::MAPPINGS {
        if let mapping::Handler::Option(f) = row.handler {
            f(&mut tx);
        }
    }
    // Decisions that depend on several rows (and on extraFlags, which run last).
    network::after_rows(&mut tx);
    service_defaults(&mut tx);

    refuse_unwritable(&mut tx);

    let module = crate::render::nspawn::module_settings(&tx.i.name, &tx.i.spec);
    let clashes = crate::render::nspawn::conflicts(&module, &tx.i.raw_nspawn);
    for k in clashes {
        tx.warn(
            &INTERNAL_KEY_CONFLICT,
            "extraFlags",
            None,
            format!("{k} was produced both by the module options and as a raw key; the raw value is dropped"),
        );
        let (sec, key) = k.split_once('.').unwrap_or(("", ""));
        let map = match sec {
            "Exec" => &mut tx.i.raw_nspawn.exec,
            "Files" => &mut tx.i.raw_nspawn.files,
            _ => &mut tx.i.raw_nspawn.network,
        };
        map.remove(key);
    }
    tx.i
}

/// Values systemd would misread (a control character ends a line and so injects one) are
/// taken out by the unit-value writer's check; each becomes a warning on the option that
/// produced it, whose "applied" record goes away (it was not applied).
fn refuse_unwritable(tx: &mut Tx) {
    use crate::render::unit::{UNIT_VALUE_REFUSED, refuse_unwritable};
    for r in refuse_unwritable(&mut tx.i) {
        let from =
            tx.i.applied
                .iter()
                .position(|a| !r.value.is_empty() && a.target.contains(&r.value));
        let option = match from {
            Some(pos) => tx.i.applied.remove(pos).option,
            None => format!("containers.{}", nixtext::attr_name(&tx.c.name)),
        };
        tx.i.applied
            .retain(|a| r.value.is_empty() || !a.target.contains(&r.value));
        // Where the value came from, so that the fix names the file to edit.
        let o = &tx.c.options;
        let origin = match option.rsplit('.').next().unwrap_or("") {
            "extraFlags" => o.extra_flags.as_ref().map(|s| s.origin.clone()),
            "privateUsers" => o.private_users.as_ref().map(|s| s.origin.clone()),
            "bindMounts" => o.bind_mounts.as_ref().map(|s| s.origin.clone()),
            "timeoutStartSec" => o.timeout_start_sec.as_ref().map(|s| s.origin.clone()),
            _ => None,
        };
        let loc = origin
            .as_ref()
            .map(|o| format!(" ({})", o.location()))
            .unwrap_or_default();
        let mut w = Warning::new(
            &UNIT_VALUE_REFUSED,
            option.clone(),
            format!(
                "{option}{loc}: {}: {}; it was not carried over. Fix: {}",
                r.target, r.reason, r.fix
            ),
        );
        if let Some(o) = origin {
            w = w.at(o.file, o.line);
        }
        tx.i.warnings.push(w);
    }
}

#[cfg(test)]
mod tests;

//! The new world as data: what one migrated container becomes.
//!
//! An [`Instance`] is split by *who renders what*, so that the emitted Nix, the `.nspawn`
//! preview and the NixOS module (`nixos/`) agree:
//!
//! - [`InstanceSpec`]: the options of `nixos.containers.instances.<name>`; our NixOS module turns
//!   them into `.nspawn` keys following the rules in `render::nspawn::module_settings` (the two
//!   implementations are kept equal by a test);
//! - `raw_nspawn`: keys the module has no option for, emitted as `systemd.nspawn.<name>.*Config`;
//! - `dropin`: settings for `systemd-nspawn@<name>.service`;
//! - `host_networks` / `guest_networks`: networkd units the module does not generate.
//!
//! A key may be produced by exactly one of these, never two (NixOS would refuse the conflict).

use crate::legacy::{BindMount, ForwardPort, Kind, NixExpr};
use crate::warnings::Warning;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `activation.strategy` of the RFC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActivationStrategy {
    None,
    Reload,
    Restart,
    Dynamic,
}

impl ActivationStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            ActivationStrategy::None => "none",
            ActivationStrategy::Reload => "reload",
            ActivationStrategy::Restart => "restart",
            ActivationStrategy::Dynamic => "dynamic",
        }
    }
}

/// `network.v4.static` / `network.v6.static`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StaticAddresses {
    /// Addresses (with prefix) put on the host side of the veth (`ve-<name>`).
    pub host_addresses: Vec<String>,
    /// Addresses (with prefix) the container gets on `host0`.
    pub container_pool: Vec<String>,
    /// `host_addresses` computed by Nix code (legacy `hostAddress = cfg.ip;`): copied verbatim
    /// and evaluated by the host configuration; the emitted Nix adds /32 (/128) to a value
    /// without a prefix, as legacy's scripts took one. Rendered after the literal ones.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host_address_exprs: Vec<NixExpr>,
    /// `container_pool` computed by Nix code, likewise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub container_pool_exprs: Vec<NixExpr>,
}

impl StaticAddresses {
    /// Host addresses, literal or computed.
    pub fn has_host(&self) -> bool {
        !self.host_addresses.is_empty() || !self.host_address_exprs.is_empty()
    }

    /// Container addresses, literal or computed.
    pub fn has_pool(&self) -> bool {
        !self.container_pool.is_empty() || !self.container_pool_exprs.is_empty()
    }
}

/// `network = { … }`. `None` in [`InstanceSpec::network`] means `network = null` (host network).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetworkSpec {
    /// `network.zone`: join the nspawn zone bridge `vz-<zone>`.
    pub zone: Option<String>,
    /// `network.bridge` (our extension): enslave the host side to an existing host bridge.
    pub bridge: Option<String>,
    /// `network.bridge` when legacy's `hostBridge` is computed by Nix code (`cfg.bridge.name`):
    /// copied verbatim (with its carried `let` bindings) and evaluated by the host
    /// configuration, whose module renders `Bridge=` from it. Its name is not known before.
    pub bridge_expr: Option<NixExpr>,
    /// `network.veth` (our extension, default true): false = a private network namespace with
    /// no veth at all (macvlan- or interface-only containers).
    pub veth: bool,
    /// `network.masquerade` (our extension, default true): `IPMasquerade=both` on `ve-<name>`.
    /// Legacy never masqueraded; migrated veths set it to false.
    pub masquerade: bool,
    /// `network.routerAdvertisements` (our extension, default true): `IPv6SendRA=yes` on
    /// `ve-<name>` without static IPv6 addresses. Legacy sent none.
    pub router_advertisements: bool,
    /// `network.pointToPoint` (our extension, default false): the static addresses are put on
    /// each end as given, full-length ones with the other end as `Peer=`, and the guest's
    /// default route is on-link: what legacy `hostAddress`/`localAddress` did.
    pub point_to_point: bool,
    pub v4: StaticAddresses,
    pub v6: StaticAddresses,
}

impl NetworkSpec {
    /// Enslaved to a host bridge (named, or computed by Nix code).
    pub fn bridged(&self) -> bool {
        self.bridge.is_some() || self.bridge_expr.is_some()
    }

    /// The bridge for a message: its name, or the expression that computes it.
    pub fn bridge_label(&self) -> Option<String> {
        match (&self.bridge, &self.bridge_expr) {
            (Some(b), _) => Some(b.clone()),
            (None, Some(e)) => Some(format!("`{}`", e.text.trim())),
            (None, None) => None,
        }
    }
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            zone: None,
            bridge: None,
            bridge_expr: None,
            veth: true,
            masquerade: true,
            router_advertisements: true,
            point_to_point: false,
            v4: StaticAddresses::default(),
            v6: StaticAddresses::default(),
        }
    }
}

/// `privateUsers = { mode; ownership; }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PrivateUsersSpec {
    /// `no`, `identity`, `pick` or a base UID (as text): `[Exec] PrivateUsers=`.
    pub mode: String,
    /// `off`, `chown`, `map` or `auto`: `[Files] PrivateUsersOwnership=` (only when mode ≠ no).
    pub ownership: Option<String>,
}

/// The options of `nixos.containers.instances.<name>`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InstanceSpec {
    /// `system-config`: the guest module, already rewritten (eth0 → host0, no useHostResolvConf).
    pub system_config: Option<NixExpr>,
    pub nixpkgs: Option<NixExpr>,
    pub special_args: Option<NixExpr>,
    /// `None` = `network = null` (host networking).
    pub network: Option<NetworkSpec>,
    pub forward_ports: Vec<ForwardPort>,
    pub activation_strategy: ActivationStrategy,
    pub ephemeral: bool,
    /// Keyed by mount point in the output.
    pub bind_mounts: Vec<BindMount>,
    /// Legacy `bindMounts` when it is computed by Nix code: copied verbatim (with its carried
    /// `let` bindings), same shape as the module's `bindMounts`; merged with `bind_mounts`.
    pub bind_mounts_expr: Option<NixExpr>,
    pub auto_start: bool,
    pub timeout_start_sec: Option<String>,
    /// `restart`: `Restart=` of the service (`None` = the stock unit's, none).
    pub restart: Option<String>,
    pub private_users: PrivateUsersSpec,
    /// A `lib.mkIf` condition wrapping the whole instance, verbatim.
    pub condition: Option<NixExpr>,
}

/// The three sections of a `.nspawn` file: key → values (a list renders as repeated lines),
/// keys sorted as Nix attribute sets sort them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NspawnSettings {
    pub exec: BTreeMap<String, Vec<String>>,
    pub files: BTreeMap<String, Vec<String>>,
    pub network: BTreeMap<String, Vec<String>>,
}

/// Settings for the `systemd-nspawn@<name>.service` drop-in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Dropin {
    /// `[Unit]` keys such as `After=`, `Wants=`, `RequiresMountsFor=`.
    pub unit: BTreeMap<String, Vec<String>>,
    /// `[Service]` keys such as `DeviceAllow=`, `TimeoutStartSec=`, `Environment=`.
    pub service: BTreeMap<String, Vec<String>>,
}

impl Dropin {
    pub fn is_empty(&self) -> bool {
        self.unit.is_empty() && self.service.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    Host,
    Guest,
}

/// One systemd-networkd file (`.network` or `.netdev`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetworkdUnit {
    /// File name, e.g. `20-ve-web.network` or `30-web-ext.netdev`.
    pub file_name: String,
    pub side: Side,
    /// Sections in order; a section name may repeat (`[Address]`, `[Route]`).
    pub sections: Vec<(String, Vec<(String, String)>)>,
}

/// What happens to the container's state directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StateMove {
    /// Legacy state directory (host path); `None` when there is none (ephemeral, never started).
    pub from: Option<PathBuf>,
    /// `/var/lib/machines/<name>`.
    pub to: PathBuf,
}

/// One legacy option that was translated: what it became.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// Legacy option, e.g. `containers.web.hostAddress`.
    pub option: String,
    /// Where it went, e.g. `nixos.containers.instances.web.network.v4.static.hostAddresses`
    /// or `[Network] MACVLAN=` or `systemd-nspawn@web.service DeviceAllow=`.
    pub target: String,
}

/// One migrated container.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Instance {
    pub name: String,
    /// New-world kind: declarative containers stay declarative, imperative ones imperative.
    pub kind: Kind,
    pub state: StateMove,
    pub spec: InstanceSpec,
    pub raw_nspawn: NspawnSettings,
    pub dropin: Dropin,
    pub host_networks: Vec<NetworkdUnit>,
    pub guest_networks: Vec<NetworkdUnit>,
    pub applied: Vec<Applied>,
    pub warnings: Vec<Warning>,
    /// Rewritten copies of files the guest config imports (host path → text), written next to
    /// the output; the originals are not touched.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub guest_files: BTreeMap<std::path::PathBuf, String>,
}

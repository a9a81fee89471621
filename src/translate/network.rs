//! Network rows: `privateNetwork`, the p2p/bridge addresses, `hostBridge`, `forwardPorts`,
//! `interfaces`, `macvlans`, `extraVeths`, `localMacAddress`, `networkNamespace`.
//!
//! The legacy model is a point-to-point veth: `/32` (`/128`) addresses on both ends plus host
//! routes and an on-link default route, all set up by shell scripts, and nothing else (no NAT,
//! no router advertisements). A pair without prefixes is carried as exactly that
//! (`network.pointToPoint`, rendered as networkd `[Address] Peer=` and `GatewayOnLink=`), so
//! containers may share a host address as they did. Only pairs that already carried prefixes
//! (which legacy's own route commands refused unless they fit) go through [`choose_prefix`],
//! which keeps fitting prefixes and reports any other choice (`p2p-prefix-chosen`).

use super::*;
use crate::legacy::Origin;
use std::net::IpAddr;

/// An address with an optional `/prefix`, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: Option<u8>,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let prefix = match p {
            Some(p) => {
                let p: u8 = p.trim().parse().ok()?;
                if p > full(addr) {
                    return None;
                }
                Some(p)
            }
            None => None,
        };
        Some(Cidr { addr, prefix })
    }
}

fn full(a: IpAddr) -> u8 {
    if a.is_ipv4() { 32 } else { 128 }
}

fn bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

fn mask(width: u8, p: u8) -> u128 {
    let all: u128 = if width == 32 {
        u32::MAX as u128
    } else {
        u128::MAX
    };
    if p == 0 {
        0
    } else {
        all & !((1u128 << (width - p)) - 1).min(all)
    }
}

fn network_of(a: IpAddr, p: u8) -> String {
    let w = full(a);
    let n = bits(a) & mask(w, p);
    let ip: IpAddr = match a {
        IpAddr::V4(_) => IpAddr::V4((n as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(n.into()),
    };
    format!("{ip}/{p}")
}

fn common_prefix(a: IpAddr, b: IpAddr) -> u8 {
    let w = full(a);
    let x = bits(a) ^ bits(b);
    let lz = x.leading_zeros() as u8 - (128 - w);
    lz.min(w)
}

/// Is `a` unusable as a host address in a `/p` subnet (network or broadcast address;
/// for IPv6 the subnet-router anycast address)? `/31` and `/127` have none.
fn reserved_in(a: IpAddr, p: u8) -> bool {
    let w = full(a);
    if p + 1 >= w {
        return false;
    }
    let host = bits(a) & !mask(w, p) & if w == 32 { u32::MAX as u128 } else { u128::MAX };
    let host_max = if w - p >= 128 {
        u128::MAX
    } else {
        (1u128 << (w - p)) - 1
    };
    host == 0 || (w == 32 && host == host_max)
}

/// The prefixes chosen for a host/container address pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixChoice {
    pub host: String,
    pub local: String,
    /// Why, for the warning; `None` when both given prefixes were kept as they were.
    pub reason: Option<String>,
}

/// Choose subnet prefixes for a legacy host/local address pair.
///
/// Given prefixes are kept when both addresses lie in the subnet they describe. Otherwise the
/// smallest subnet that contains both as usable host addresses is chosen: the `/31` (`/127`)
/// pair when they form one, else the longest prefix ≤ /30 (/126) where neither is the network
/// or broadcast address.
pub fn choose_prefix(host: &str, local: &str) -> Result<PrefixChoice, String> {
    let h = Cidr::parse(host).ok_or_else(|| format!("`{host}` is not an IP address"))?;
    let l = Cidr::parse(local).ok_or_else(|| format!("`{local}` is not an IP address"))?;
    if h.addr.is_ipv4() != l.addr.is_ipv4() {
        return Err(format!(
            "`{host}` and `{local}` are not the same address family"
        ));
    }
    let w = full(h.addr);
    if h.addr == l.addr {
        return Err(format!(
            "host and container address are the same ({})",
            h.addr
        ));
    }
    let common = common_prefix(h.addr, l.addr);
    for (given, side) in [(h.prefix, "hostAddress"), (l.prefix, "localAddress")] {
        if let Some(p) = given
            && p < w
            && common >= p
            && !reserved_in(h.addr, p)
            && !reserved_in(l.addr, p)
        {
            let reason = if h.prefix == l.prefix {
                None
            } else {
                Some(format!(
                    "used the /{p} given on {side} for both ends ({})",
                    network_of(h.addr, p)
                ))
            };
            return Ok(PrefixChoice {
                host: format!("{}/{p}", h.addr),
                local: format!("{}/{p}", l.addr),
                reason,
            });
        }
    }
    let pair = w - 1;
    let mut p = if common >= pair {
        pair
    } else {
        common.min(w - 2)
    };
    while p > 0 && (reserved_in(h.addr, p) || reserved_in(l.addr, p)) {
        p -= 1;
    }
    let reason = format!(
        "the prefixes written on this pair do not describe one subnet holding both addresses, so /{p} ({}) was \
         chosen: the smallest subnet holding both {} and {} as host addresses (legacy's own route commands refuse a \
         route with host bits set; write both addresses without a prefix to keep them point-to-point)",
        network_of(h.addr, p),
        h.addr,
        l.addr
    );
    Ok(PrefixChoice {
        host: format!("{}/{p}", h.addr),
        local: format!("{}/{p}", l.addr),
        reason: Some(reason),
    })
}

/// `addr` with its own prefix, or the full-length one (`/32`, `/128`).
fn with_prefix(c: &Cidr) -> String {
    format!("{}/{}", c.addr, c.prefix.unwrap_or(full(c.addr)))
}

type Opt<'a> = Option<&'a crate::legacy::Sourced<String>>;

fn is_set(tx: &Tx, field: Opt, name: &str) -> bool {
    field.is_some() || tx.c.options.unresolved.contains_key(name)
}

/// Row `privateNetwork`: host networking (`network = null`) or a private namespace, with a veth
/// when any address, bridge or MAC option is set (legacy added `--network-veth` then).
pub fn private_network(tx: &mut Tx) {
    let o = &tx.c.options;
    let veth = is_set(tx, o.host_address.as_ref(), "hostAddress")
        || is_set(tx, o.host_address6.as_ref(), "hostAddress6")
        || is_set(tx, o.local_address.as_ref(), "localAddress")
        || is_set(tx, o.local_address6.as_ref(), "localAddress6")
        || is_set(tx, o.host_bridge.as_ref(), "hostBridge")
        || is_set(tx, o.local_mac_address.as_ref(), "localMacAddress");
    // An unreadable privateNetwork (reported as unresolved-expression) is assumed true when
    // network options are set, since they only had an effect with it; false otherwise.
    let unresolved = o.unresolved.contains_key("privateNetwork");
    let ports = o
        .forward_ports
        .as_ref()
        .is_some_and(|p| !p.value.is_empty());
    let pn = match &o.private_network {
        Some(s) => s.value,
        None => unresolved && (veth || ports),
    };
    tx.private_network = pn;
    if unresolved {
        tx.applied(
            "privateNetwork",
            format!(
                "unreadable; assumed {pn} because network options are {}set",
                if pn { "" } else { "not " }
            ),
        );
    }
    if !pn {
        tx.i.spec.network = None;
        tx.applied("privateNetwork", "nixos.containers.instances.<name>.network = null ([Network] Private=no, VirtualEthernet=no)");
        return;
    }
    // Legacy only put addresses and routes on ve-<name> (nixos-containers.nix, postStart): no
    // NAT, no forwarding, no router advertisements. Keep it that way for static addresses; a
    // veth without addresses gets the module's DHCP mode, which is reported (see
    // `veth_without_addresses`).
    let legacy_static = is_set(tx, o.host_address.as_ref(), "hostAddress")
        || is_set(tx, o.host_address6.as_ref(), "hostAddress6")
        || is_set(tx, o.local_address.as_ref(), "localAddress")
        || is_set(tx, o.local_address6.as_ref(), "localAddress6");
    tx.i.spec.network = Some(NetworkSpec {
        veth,
        masquerade: !legacy_static,
        router_advertisements: !legacy_static,
        ..NetworkSpec::default()
    });
    tx.applied(
        "privateNetwork",
        if veth {
            "network = { … } ([Network] Private=yes, VirtualEthernet=yes)"
        } else {
            "network.veth = false ([Network] Private=yes, VirtualEthernet=no)"
        },
    );
}

/// Warn that a network option has no effect without `privateNetwork` (legacy ignored it too).
fn ignored_without_private(tx: &mut Tx, option: &str, origin: &Origin) {
    tx.warn(
        &ADDRESSES_WITHOUT_PRIVATE_NETWORK,
        option,
        Some(origin),
        "is set but privateNetwork is false: the legacy module ignored it (host networking) and so does the \
         migration; set privateNetwork = true in the legacy config and re-run if the container should have its own network",
    );
}

/// One address family's plan, computed the same way by the host and the local row.
struct Family {
    host: Option<String>,
    local: Option<String>,
    /// Render as legacy did (`network.pointToPoint`): both addresses full-length.
    p2p: bool,
    /// (row that reports it, warning, message)
    warning: Option<(&'static str, &'static WarningSpec, String)>,
    /// An end computed by Nix code is carried as Nix (each row copies its own); `Err(why)`:
    /// it cannot be, for this reason (each computed row reports it).
    computed: Option<Result<(), String>>,
}

fn family(tx: &Tx, v6: bool) -> Family {
    let o = &tx.c.options;
    let (h, l, hn, ln) = if v6 {
        (
            o.host_address6.as_ref(),
            o.local_address6.as_ref(),
            "hostAddress6",
            "localAddress6",
        )
    } else {
        (
            o.host_address.as_ref(),
            o.local_address.as_ref(),
            "hostAddress",
            "localAddress",
        )
    };
    let bridge = tx.i.spec.network.as_ref().and_then(|n| n.bridge_label());
    let hc = h.map(|s| (s, Cidr::parse(&s.value)));
    let lc = l.map(|s| (s, Cidr::parse(&s.value)));
    let mut f = Family {
        host: None,
        local: None,
        p2p: false,
        warning: None,
        computed: None,
    };
    for (c, name) in [(&hc, hn), (&lc, ln)] {
        if let Some((s, None)) = c {
            f.warning = Some((
                name,
                &INVALID_ADDRESS,
                format!(
                    "`{}` is not an IP address with an optional /prefix; it was not translated: fix the value",
                    s.value
                ),
            ));
            return f;
        }
    }
    let hc = hc.and_then(|(_, c)| c);
    let lc = lc.and_then(|(_, c)| c);
    // An end computed by Nix code (`hostAddress = cfg.ip;`): the generated module evaluates it
    // in the host configuration to what legacy got, and the module's point-to-point mode puts
    // each end as given, as legacy's scripts did (without a prefix: /32 with the other end as
    // Peer=; with one: kept, plus a host route to the other end), so nothing is chosen from
    // its value. A literal end keeps its value (the expression of a computed end supersedes a
    // deployed value, as on a rebuild).
    let hx = tx.c.options.unresolved.get(hn);
    let lx = tx.c.options.unresolved.get(ln);
    if hx.is_some() || lx.is_some() {
        let has_h = hx.is_some() || hc.is_some();
        let has_l = lx.is_some() || lc.is_some();
        // On a bridge the guest's address must carry the bridge's prefix; a computed one is
        // carried only when its text shows one (`"${ip}/24"`).
        let shows_prefix = |e: &crate::legacy::NixExpr| {
            let t = e.text.trim();
            t.ends_with('"')
                && t[..t.len() - 1]
                    .rsplit_once('/')
                    .is_some_and(|(_, p)| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        };
        f.computed = Some(if bridge.is_some() {
            match lx {
                Some(e) if !shows_prefix(&e.value) => Err(format!(
                    "on bridge {} the container's address needs the bridge's prefix, and the text does not show one",
                    bridge.clone().unwrap_or_default()
                )),
                _ => Ok(()),
            }
        } else if !(has_h && has_l) {
            Err(format!(
                "the other end ({}) is not set, so there is no point-to-point pair to carry it into",
                if has_h { ln } else { hn }
            ))
        } else {
            Ok(())
        });
        // A deployed value of a computed end is used only when the expression is not carried.
        let carry = f.computed == Some(Ok(()));
        f.host = hc
            .as_ref()
            .filter(|_| !(carry && hx.is_some()))
            .map(with_prefix);
        f.local = lc
            .as_ref()
            .filter(|_| !(carry && lx.is_some()))
            .map(with_prefix);
        f.p2p = bridge.is_none() && carry;
        return f;
    }
    // Both ends without a prefix (or full-length): legacy's point-to-point pair, kept as it
    // was: each end's /32 (/128) with the other as peer, on a plain veth or a bridge alike
    // (the guest side of legacy's container init did not depend on the bridge).
    if let (Some(h), Some(l)) = (&hc, &lc)
        && h.addr.is_ipv4() == l.addr.is_ipv4()
        && h.addr != l.addr
        && h.prefix.is_none_or(|p| p == full(h.addr))
        && l.prefix.is_none_or(|p| p == full(l.addr))
    {
        f.host = Some(with_prefix(h));
        f.local = Some(with_prefix(l));
        f.p2p = true;
        return f;
    }
    if let Some(br) = bridge {
        if let Some(l) = &lc {
            f.local = Some(with_prefix(l));
            if l.prefix.is_none() {
                f.warning = Some((
                    ln,
                    &BRIDGE_ADDRESS_WITHOUT_PREFIX,
                    format!(
                        "`{}` on bridge {br} has no /prefix; the guest gets {} and only reaches the gateway through an \
                         explicit route: add the bridge's prefix (e.g. /24) to the address",
                        l.addr,
                        with_prefix(l)
                    ),
                ));
            }
        }
        if let Some(hc) = &hc {
            let p = hc
                .prefix
                .or(lc.and_then(|l| l.prefix))
                .unwrap_or(full(hc.addr));
            f.host = Some(format!("{}/{p}", hc.addr));
        }
        return f;
    }
    match (hc, lc) {
        (Some(_), Some(_)) => match choose_prefix(
            &h.map(|s| s.value.clone()).unwrap_or_default(),
            &l.map(|s| s.value.clone()).unwrap_or_default(),
        ) {
            Ok(ch) => {
                f.host = Some(ch.host);
                f.local = Some(ch.local);
                if let Some(r) = ch.reason {
                    f.warning = Some((
                        hn,
                        &P2P_PREFIX_CHOSEN,
                        format!(
                            "{r}. If other containers share this host address or subnet, their subnets now overlap on \
                             different ve-* links: give each container its own subnet"
                        ),
                    ));
                }
            }
            Err(e) => {
                f.warning = Some((
                    hn,
                    &INVALID_ADDRESS,
                    format!("{e}; the addresses were not translated: fix them"),
                ));
            }
        },
        (Some(hc), None) => {
            f.host = Some(with_prefix(&hc));
            f.warning = Some((
                hn,
                &ADDRESS_PAIR_INCOMPLETE,
                format!(
                    "there is no {ln}: ve-{name} gets {} as in legacy, but legacy's container init also added a route to {a} \
                     and a default route through it on eth0, which nothing adds now. Set {ln} (the container then gets \
                     both routes), or give the guest networking.defaultGateway = {{ address = \"{a}\"; interface = \"host0\"; }} \
                     with its own address",
                    with_prefix(&hc),
                    name = tx.c.name,
                    a = hc.addr
                ),
            ));
        }
        (None, Some(lc)) => {
            f.local = Some(with_prefix(&lc));
            f.warning = Some((
                ln,
                &ADDRESS_PAIR_INCOMPLETE,
                format!(
                    "there is no {hn}: the container gets {} as in legacy, but legacy also added a host route to it on \
                     ve-{}, which nothing adds now (the module warns that the container has no gateway). Set {hn} and \
                     re-run: the pair then stays point-to-point",
                    with_prefix(&lc),
                    tx.c.name
                ),
            ));
        }
        (None, None) => {}
    }
    f
}

fn address_row(tx: &mut Tx, v6: bool, host_side: bool) {
    let o = &tx.c.options;
    let (name, field) = match (v6, host_side) {
        (false, true) => ("hostAddress", o.host_address.as_ref()),
        (true, true) => ("hostAddress6", o.host_address6.as_ref()),
        (false, false) => ("localAddress", o.local_address.as_ref()),
        (true, false) => ("localAddress6", o.local_address6.as_ref()),
    };
    if let Some(e) = tx.c.options.unresolved.get(name).cloned()
        && computed_address(tx, v6, host_side, name, &e, field.map(|f| &f.value))
    {
        return;
    }
    let Some(src) = field.cloned() else { return };
    if !tx.private_network {
        ignored_without_private(tx, name, &src.origin);
        return;
    }
    let f = family(tx, v6);
    if let Some((row, spec, msg)) = &f.warning
        && *row == name
    {
        tx.warn(spec, name, Some(&src.origin), msg);
    }
    let p2p = f.p2p;
    let value = if host_side { f.host } else { f.local };
    let Some(value) = value else { return };
    let fam = if v6 { "v6" } else { "v4" };
    let Some(net) = tx.i.spec.network.as_mut() else {
        return;
    };
    if p2p {
        net.point_to_point = true;
    }
    let st = if v6 { &mut net.v6 } else { &mut net.v4 };
    let (list, what) = if host_side {
        (&mut st.host_addresses, "hostAddresses")
    } else {
        (&mut st.container_pool, "containerPool")
    };
    if !list.contains(&value) {
        list.push(value.clone());
    }
    tx.applied(
        name,
        format!(
            "network.{fam}.static.{what} = [ \"{value}\" ]{}",
            if p2p {
                " (network.pointToPoint = true: point-to-point with the other end as Peer=, as legacy)"
            } else {
                ""
            }
        ),
    );
}

/// An address row whose value is computed by Nix code: carried as Nix when [`family`] says
/// it can be, else reported as a value the translation needs (a deployed value, `deployed`,
/// is then used meanwhile by the caller). `true` when the row is done.
fn computed_address(
    tx: &mut Tx,
    v6: bool,
    host_side: bool,
    name: &str,
    e: &crate::legacy::Sourced<crate::legacy::NixExpr>,
    deployed: Option<&String>,
) -> bool {
    if !tx.private_network {
        ignored_without_private(tx, name, &e.origin);
        return true;
    }
    let f = family(tx, v6);
    let first = e.value.text.lines().next().unwrap_or("").trim().to_string();
    if let Some(Err(why)) = &f.computed {
        let meanwhile = match deployed {
            Some(d) => format!(" Until then the deployed value {d} is used."),
            None => " It was not translated.".to_string(),
        };
        tx.warn(
            &UNRESOLVED_EXPRESSION,
            name,
            Some(&e.origin),
            format!(
                "the value `{first}` is computed by Nix code and cannot be carried as Nix here: {why}; the translation \
                 needs the address itself. Re-run with --from-json (nix eval of the host's containers) or port it by \
                 hand.{meanwhile}"
            ),
        );
        return deployed.is_none();
    }
    let copied = super::options::copy_expr(tx, name, &e.value);
    let bridged = tx.i.spec.network.as_ref().is_some_and(|n| n.bridged());
    let Some(net) = tx.i.spec.network.as_mut() else {
        return true;
    };
    if f.p2p {
        net.point_to_point = true;
    }
    let st = if v6 { &mut net.v6 } else { &mut net.v4 };
    let (list, what) = if host_side {
        (&mut st.host_address_exprs, "hostAddresses")
    } else {
        (&mut st.container_pool_exprs, "containerPool")
    };
    list.push(copied);
    let fam = if v6 { "v6" } else { "v4" };
    let superseded = deployed
        .map(|d| format!(" (the deployed value {d} is superseded by it, as on a rebuild)"))
        .unwrap_or_default();
    let how = if bridged && host_side {
        "it is the container's gateway on the bridge (as legacy's hostAddress was)".to_string()
    } else if bridged {
        "it is the container's address on the bridge, with the prefix its text shows".to_string()
    } else {
        "network.pointToPoint puts each end as given, as legacy's scripts did: without a prefix it becomes /32 \
         (/128) with the other end as Peer=, with one it is kept and the other end gets a host route"
            .to_string()
    };
    tx.warn(
        &ADDRESSES_COPIED_AS_NIX,
        name,
        Some(&e.origin),
        format!(
            "`{name} = {first}` is computed by Nix code{superseded}; it is copied into the generated file as \
             network.{fam}.static.{what}, with what it uses from the host file, and the host configuration evaluates \
             it there to the value legacy got; {how}. The value is known only then: the networkd preview lacks it, and \
             it is checked as an address only by the module's option type at build time"
        ),
    );
    tx.applied(
        name,
        format!("network.{fam}.static.{what} = [ ({first}) ] (copied as Nix)"),
    );
    true
}

pub fn host_address(tx: &mut Tx) {
    address_row(tx, false, true)
}
pub fn host_address6(tx: &mut Tx) {
    address_row(tx, true, true)
}
pub fn local_address(tx: &mut Tx) {
    address_row(tx, false, false)
}
pub fn local_address6(tx: &mut Tx) {
    address_row(tx, true, false)
}

/// Row `hostBridge`: `network.bridge` ([Network] Bridge=).
pub fn host_bridge(tx: &mut Tx) {
    // Computed by Nix code (`cfg.bridge.name`, `config.my.bridge`): the generated file is a
    // module of the same host configuration, so the expression (with the `let` bindings it
    // needs) evaluates there to the same name; the module renders Bridge= from it. A value
    // read from a deployed .conf meanwhile is superseded by it, as on a rebuild.
    if let Some(src) = tx.c.options.unresolved.get("hostBridge").cloned() {
        if !tx.private_network {
            ignored_without_private(tx, "hostBridge", &src.origin);
            return;
        }
        let copied = super::options::copy_expr(tx, "hostBridge", &src.value);
        let first = copied.text.lines().next().unwrap_or("").trim().to_string();
        let deployed =
            tx.c.options
                .host_bridge
                .as_ref()
                .map(|d| {
                    format!(
                        " (the deployed {} names {}, superseded by it as on a rebuild)",
                        d.origin.location(),
                        d.value
                    )
                })
                .unwrap_or_default();
        tx.warn(
            &HOST_BRIDGE_COPIED_AS_NIX,
            "hostBridge",
            Some(&src.origin),
            format!(
                "hostBridge `{first}` is computed by Nix code{deployed}; it is copied into the generated file as \
                 network.bridge, with what it uses from the host file, and the host configuration evaluates it there \
                 to the name legacy got. That name is known only then: the .nspawn preview has no Bridge= line, and \
                 the name is not checked for a valid interface name before the build"
            ),
        );
        if let Some(n) = tx.i.spec.network.as_mut() {
            n.bridge = None;
            n.bridge_expr = Some(copied);
            n.veth = true;
        }
        tx.applied(
            "hostBridge",
            format!("network.bridge = ({first}) (copied as Nix; [Network] Bridge= at build time)"),
        );
        return;
    }
    let Some(src) = tx.c.options.host_bridge.clone() else {
        return;
    };
    if !tx.private_network {
        ignored_without_private(tx, "hostBridge", &src.origin);
        return;
    }
    if !valid_ifname(&src.value) {
        bad_ifname(tx, "hostBridge", &src.origin, &src.value);
        return;
    }
    if let Some(n) = tx.i.spec.network.as_mut() {
        n.bridge = Some(src.value.clone());
        n.veth = true;
    }
    tx.applied(
        "hostBridge",
        format!("network.bridge = \"{}\" ([Network] Bridge=)", src.value),
    );
}

/// Row `localMacAddress`: nothing in nspawn sets the veth MAC.
pub fn local_mac_address(tx: &mut Tx) {
    let Some(src) = tx.c.options.local_mac_address.clone() else {
        return;
    };
    if !tx.private_network {
        ignored_without_private(tx, "localMacAddress", &src.origin);
        return;
    }
    tx.warn(
        &LOCAL_MAC_ADDRESS,
        "localMacAddress",
        Some(&src.origin),
        format!(
            "`{}` cannot be set by nspawn (it derives a stable MAC from the machine name); inside the guest add \
             systemd.network.networks.\"10-host0\" with matchConfig.Name = \"host0\" and linkConfig.MACAddress = \"{}\", \
             or accept the new MAC (check DHCP reservations)",
            src.value, src.value
        ),
    );
}

/// Row `forwardPorts`: `forwardPorts` ([Network] Port=), only with a private network.
pub fn forward_ports(tx: &mut Tx) {
    let Some(src) = tx.c.options.forward_ports.clone() else {
        return;
    };
    if src.value.is_empty() {
        return;
    }
    if !tx.private_network {
        let o = &tx.c.options;
        let own_links = o.macvlans.as_ref().is_some_and(|m| !m.value.is_empty())
            || o.interfaces.as_ref().is_some_and(|i| !i.value.is_empty());
        let msg = if own_links {
            "privateNetwork is false, so the legacy module wrote no HOST_PORT and silently ignored forwardPorts \
             (the container's macvlans or moved interfaces give it its own namespace, but nothing forwarded to it); \
             they stay ignored"
        } else {
            "the container uses the host's network (privateNetwork = false), where the legacy module silently \
             ignored forwardPorts; they stay ignored. The services already listen on the host's ports"
        };
        tx.warn(
            &FORWARD_PORTS_IGNORED,
            "forwardPorts",
            Some(&src.origin),
            msg,
        );
        return;
    }
    for p in &src.value {
        let proto = p.protocol.to_ascii_lowercase();
        if proto != "tcp" && proto != "udp" {
            tx.warn(
                &INVALID_VALUE,
                "forwardPorts",
                Some(&src.origin),
                format!(
                    "protocol `{}` is neither tcp nor udp; the forward of port {} was dropped",
                    p.protocol, p.host_port
                ),
            );
            continue;
        }
        let mut p = p.clone();
        p.protocol = proto;
        if !tx.i.spec.forward_ports.contains(&p) {
            tx.i.spec.forward_ports.push(p);
        }
    }
    tx.applied("forwardPorts", "forwardPorts ([Network] Port=)");
}

/// A kernel interface name: 1–15 bytes, no `/`, no whitespace, not `.`/`..`.
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.chars().any(|c| {
            c == '/' || c == ':' || c.is_whitespace() || c.is_control() || c == '"' || c == '\''
        })
}

fn bad_ifname(tx: &mut Tx, option: &str, origin: &Origin, name: &str) {
    if name.len() > 15 && !name.chars().any(|c| c.is_whitespace() || c == '/') {
        tx.warn(
            &INTERFACE_NAME_TOO_LONG,
            option,
            Some(origin),
            format!("`{name}` is {} characters long, the kernel allows 15; rename it (the legacy container could not use it either)", name.len()),
        );
    } else {
        tx.warn(
            &INVALID_VALUE,
            option,
            Some(origin),
            format!("`{name}` is not a valid interface name; it was not carried over"),
        );
    }
}

/// systemd's unit-name escaping of a path component (`systemd-escape`).
pub fn systemd_escape(s: &str) -> String {
    let mut out = String::new();
    for (i, b) in s.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b':' || b == b'_' || (b == b'.' && i > 0);
        if keep {
            out.push(b as char);
        } else if b == b'/' {
            out.push('-');
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Row `interfaces`: [Network] Interface= and ordering after the device.
pub fn interfaces(tx: &mut Tx) {
    let Some(src) = tx.c.options.interfaces.clone() else {
        return;
    };
    if src.value.is_empty() {
        return;
    }
    tx.ensure_private_network();
    for ifname in &src.value {
        if !valid_ifname(ifname) {
            bad_ifname(tx, "interfaces", &src.origin, ifname);
            continue;
        }
        tx.network("Interface", ifname.clone());
        let dev = format!(
            "sys-subsystem-net-devices-{}.device",
            systemd_escape(ifname)
        );
        tx.dropin_unit("After", dev.clone());
        tx.dropin_unit("Wants", dev);
    }
    tx.applied(
        "interfaces",
        "[Network] Interface= + systemd-nspawn@<name>.service After=/Wants= the device",
    );
}

/// Row `macvlans`: [Network] MACVLAN= (implies a private network; `mv-<if>` inside).
pub fn macvlans(tx: &mut Tx) {
    let Some(src) = tx.c.options.macvlans.clone() else {
        return;
    };
    if src.value.is_empty() {
        return;
    }
    tx.ensure_private_network();
    for ifname in &src.value {
        if !valid_ifname(ifname) {
            bad_ifname(tx, "macvlans", &src.origin, ifname);
            continue;
        }
        tx.network("MACVLAN", ifname.clone());
    }
    tx.applied(
        "macvlans",
        "[Network] MACVLAN= (the guest still sees mv-<if>)",
    );
}

/// Row `extraVeths`: [Network] VirtualEthernetExtra= plus host and guest networkd units.
pub fn extra_veths(tx: &mut Tx) {
    let Some(src) = tx.c.options.extra_veths.clone() else {
        return;
    };
    if src.value.is_empty() {
        return;
    }
    tx.ensure_private_network();
    let mut names = Vec::new();
    for (vname, ev) in &src.value {
        if !valid_ifname(vname) {
            bad_ifname(tx, "extraVeths", &src.origin, vname);
            continue;
        }
        tx.network("VirtualEthernetExtra", vname.clone());
        names.push(vname.clone());
        let mut host_net: Vec<(String, String)> = Vec::new();
        let mut guest_net: Vec<(String, String)> = Vec::new();
        // Point-to-point pairs, as legacy's scripts set them up (`ip addr add <own>` and
        // `ip route add <other>` on each side): `[Address]` sections with `Peer=`.
        let mut host_p2p: Vec<(String, Vec<(String, String)>)> = Vec::new();
        let mut guest_p2p: Vec<(String, Vec<(String, String)>)> = Vec::new();
        for (h, l) in [
            (&ev.host_address, &ev.local_address),
            (&ev.host_address6, &ev.local_address6),
        ] {
            if let Some(br) = &ev.host_bridge {
                if let Some(l) = l {
                    match Cidr::parse(l) {
                        Some(c) => {
                            if c.prefix.is_none() {
                                tx.warn(
                                    &BRIDGE_ADDRESS_WITHOUT_PREFIX,
                                    "extraVeths",
                                    Some(&src.origin),
                                    format!("extraVeths.{vname}.localAddress `{l}` on bridge {br} has no /prefix; add the bridge's prefix"),
                                );
                            }
                            guest_net.push(("Address".into(), with_prefix(&c)));
                        }
                        None => tx.warn(
                            &INVALID_ADDRESS,
                            "extraVeths",
                            Some(&src.origin),
                            format!("extraVeths.{vname}: `{l}` is not an IP address; fix it"),
                        ),
                    }
                }
                continue;
            }
            let full_pair =
                |a: &str| Cidr::parse(a).filter(|c| c.prefix.is_none_or(|p| p == full(c.addr)));
            if let (Some(hc), Some(lc)) = (
                h.as_deref().and_then(full_pair),
                l.as_deref().and_then(full_pair),
            ) && hc.addr.is_ipv4() == lc.addr.is_ipv4()
                && hc.addr != lc.addr
            {
                let addr = |own: &Cidr, other: &Cidr| {
                    (
                        "Address".to_string(),
                        vec![
                            ("Address".to_string(), with_prefix(own)),
                            ("Peer".to_string(), with_prefix(other)),
                        ],
                    )
                };
                host_p2p.push(addr(&hc, &lc));
                guest_p2p.push(addr(&lc, &hc));
                continue;
            }
            match (h, l) {
                (Some(h), Some(l)) => match choose_prefix(h, l) {
                    Ok(ch) => {
                        if let Some(r) = ch.reason {
                            tx.warn(
                                &P2P_PREFIX_CHOSEN,
                                "extraVeths",
                                Some(&src.origin),
                                format!("extraVeths.{vname}: {r}"),
                            );
                        }
                        host_net.push(("Address".into(), ch.host));
                        guest_net.push(("Address".into(), ch.local));
                    }
                    Err(e) => tx.warn(
                        &INVALID_ADDRESS,
                        "extraVeths",
                        Some(&src.origin),
                        format!("extraVeths.{vname}: {e}; fix the addresses"),
                    ),
                },
                (Some(a), None) | (None, Some(a)) => match Cidr::parse(a) {
                    Some(c) => {
                        let v = with_prefix(&c);
                        if h.is_some() {
                            host_net.push(("Address".into(), v))
                        } else {
                            guest_net.push(("Address".into(), v))
                        }
                    }
                    None => tx.warn(
                        &INVALID_ADDRESS,
                        "extraVeths",
                        Some(&src.origin),
                        format!("extraVeths.{vname}: `{a}` is not an IP address; fix it"),
                    ),
                },
                (None, None) => {}
            }
        }
        if let Some(br) = &ev.host_bridge {
            host_net.push(("Bridge".into(), br.clone()));
        }
        let file = format!("30-{vname}.network");
        let m = (
            "Match".to_string(),
            vec![("Name".to_string(), vname.clone())],
        );
        let mut host_sections = vec![m.clone(), ("Network".to_string(), host_net)];
        host_sections.extend(host_p2p);
        let mut guest_sections = vec![m, ("Network".to_string(), guest_net)];
        guest_sections.extend(guest_p2p);
        tx.i.host_networks.push(NetworkdUnit {
            file_name: file.clone(),
            side: Side::Host,
            sections: host_sections,
        });
        tx.i.guest_networks.push(NetworkdUnit {
            file_name: file,
            side: Side::Guest,
            sections: guest_sections,
        });
    }
    if !names.is_empty() {
        tx.warn(
            &EXTRA_VETH_UNITS,
            "extraVeths",
            Some(&src.origin),
            format!(
                "{} became [Network] VirtualEthernetExtra= with networkd units on the host and in the guest (point-to-point \
                 pairs as legacy set them, /32 with the other end as Peer=; addresses with a prefix as subnets); the guest \
                 must use systemd-networkd (the module enables it for veth containers) — check them",
                names.join(", ")
            ),
        );
        tx.applied(
            "extraVeths",
            "[Network] VirtualEthernetExtra= + host/guest systemd.network.networks",
        );
    }
}

/// Row `networkNamespace`: no `.nspawn` key exists.
pub fn network_namespace(tx: &mut Tx) {
    let Some(src) = tx.c.options.network_namespace.clone() else {
        return;
    };
    tx.ensure_private_network();
    network_namespace_warning(tx, "networkNamespace", &src.value, Some(&src.origin));
}

pub fn network_namespace_warning(tx: &mut Tx, option: &str, path: &str, origin: Option<&Origin>) {
    tx.warn(
        &NETWORK_NAMESPACE,
        option,
        origin,
        format!(
            "joining the network namespace {path} has no .nspawn key; the migrated container is isolated in its own \
             namespace (only lo) instead of sharing the host's. Override ExecStart= of systemd-nspawn@{}.service with --network-namespace-path={path}, or \
             rework the networking",
            tx.c.name
        ),
    );
}

/// Checks after every row (and `extraFlags`) ran, on the network as it was finally decided.
pub fn after_rows(tx: &mut Tx) {
    ports_without_veth(tx);
    veth_without_addresses(tx);
    zone_declared(tx);
    guest_default_gateway(tx);
}

/// A guest `defaultGateway(6)` without `interface` (found by the `config` row): NixOS refuses
/// it under networkd, which the module turns on in a container with a private network (legacy's
/// guest used scripted networking, `ip route replace default via …`, which needs no device).
/// Decide what the gateway's interface is, and run the `config` row again with the decision.
fn guest_default_gateway(tx: &mut Tx) {
    if tx.bare_gateways.is_empty() {
        return;
    }
    // Host networking: the module does not turn networkd on in the guest; nothing changes.
    let Some(net) = &tx.i.spec.network else {
        return;
    };
    tx.gateway = gateway_decision(tx, net);
    super::options::rerun_config(tx);
}

/// The guest-side network links of the container, by name.
fn guest_links(tx: &Tx, net: &NetworkSpec) -> Vec<String> {
    let mut links = Vec::new();
    if net.veth {
        links.push("host0".to_string());
    }
    let raw = &tx.i.raw_nspawn.network;
    let values = |k: &str| raw.get(k).cloned().unwrap_or_default();
    for v in values("VirtualEthernetExtra") {
        links.push(v.rsplit(':').next().unwrap_or(&v).to_string());
    }
    for v in values("MACVLAN") {
        links.push(format!("mv-{v}"));
    }
    for v in values("IPVLAN") {
        links.push(format!("iv-{v}"));
    }
    links.extend(values("Interface"));
    links
}

fn gateway_decision(tx: &Tx, net: &NetworkSpec) -> GatewayDecision {
    let links = guest_links(tx, net);
    let [link] = links.as_slice() else {
        return GatewayDecision::Keep(if links.is_empty() {
            "The container has no network link besides lo".to_string()
        } else {
            format!(
                "The container has several links ({}); which one the gateway is on cannot be read from the configuration",
                links.join(", ")
            )
        });
    };
    if link == "host0" {
        // The module's own default route on host0 (its gateway: the first host address of the
        // family): legacy's container init added `default via <hostAddress>`, and the guest's
        // scripted networking replaced it (`ip route replace default`); networkd would keep both.
        for (v6, st, opt) in [
            (false, &net.v4, "hostAddress"),
            (true, &net.v6, "hostAddress6"),
        ] {
            let gw = if v6 {
                "defaultGateway6"
            } else {
                "defaultGateway"
            };
            let bare_here = tx.bare_gateways.iter().any(|b| {
                let six = b.contains("defaultGateway6");
                b.contains(gw) && six == v6
            });
            let host = st
                .host_addresses
                .first()
                .map(|h| h.split('/').next().unwrap_or(h).to_string())
                .or_else(|| {
                    st.host_address_exprs
                        .first()
                        .map(|e| format!("`{}` (computed)", e.text.trim()))
                });
            if let (true, Some(host)) = (bare_here, host) {
                return GatewayDecision::Keep(format!(
                    "The container also has {opt} = {host}: legacy's container init added a default route through it, \
                     which the guest's scripted networking replaced with its own gateway (`ip route replace default`); \
                     the module routes through {host} on host0 too, and networkd would keep both default routes. Keep one: \
                     drop this gateway if it is {host} or may go, or move the container's default route into the guest \
                     by hand"
                ));
            }
        }
        // The module's DHCP client on host0 (a plain veth without static addresses) brings a
        // default route of its own.
        let no_static = [&net.v4, &net.v6]
            .iter()
            .all(|s| !s.has_host() && !s.has_pool());
        if no_static && !net.bridged() {
            return GatewayDecision::Keep(
                "The module runs DHCP on host0 of this container (no static addresses, no bridge), which brings a \
                 default route of its own"
                    .to_string(),
            );
        }
    }
    GatewayDecision::Rewrite(link.clone())
}

/// The module forwards ports over its veth only (and asserts so). Legacy passed `--port=` to
/// nspawn with any private network; with only a macvlan or a moved interface nspawn's DNAT
/// pointed at that link's address.
fn ports_without_veth(tx: &mut Tx) {
    let no_veth = tx.i.spec.network.as_ref().is_some_and(|n| !n.veth);
    if !no_veth || tx.i.spec.forward_ports.is_empty() {
        return;
    }
    let ports: Vec<String> = std::mem::take(&mut tx.i.spec.forward_ports)
        .iter()
        .map(|p| {
            format!(
                "\"{}:{}:{}\"",
                p.protocol,
                p.host_port,
                p.container_port.unwrap_or(p.host_port)
            )
        })
        .collect();
    let origin =
        tx.c.options
            .forward_ports
            .as_ref()
            .map(|s| s.origin.clone());
    let option = if origin.is_some() {
        "forwardPorts"
    } else {
        "extraFlags"
    };
    tx.warn(
        &FORWARD_PORTS_WITHOUT_VETH,
        option,
        origin.as_ref(),
        format!(
            "the container has a private network but no veth (only macvlans or moved interfaces), and the module \
             forwards ports over its veth only, so the forwards were dropped. Legacy passed them to nspawn, which \
             DNATs to the container's own address; to keep that, add systemd.nspawn.{}.networkConfig.Port = [ {} ];",
            crate::nixtext::attr_name(&tx.c.name),
            ports.join(" ")
        ),
    );
}

/// A veth the legacy module never configured (no host/local address: `localMacAddress`, a
/// `--network-veth` flag, or addresses it could not read) now gets the module's default mode.
fn veth_without_addresses(tx: &mut Tx) {
    let Some(n) = &tx.i.spec.network else { return };
    let st = |s: &StaticAddresses| !s.has_host() && !s.has_pool();
    if !n.veth || n.zone.is_some() || n.bridged() || !st(&n.v4) || !st(&n.v6) {
        return;
    }
    // Addresses the reader could not read are reported as such (unresolved-expression):
    // legacy did configure them.
    let unresolved = [
        "hostAddress",
        "hostAddress6",
        "localAddress",
        "localAddress6",
    ]
    .iter()
    .any(|o| tx.c.options.unresolved.contains_key(*o));
    if unresolved {
        return;
    }
    let name = crate::nixtext::attr_name(&tx.c.name);
    tx.warn(
        &VETH_WITHOUT_ADDRESSES,
        "privateNetwork",
        tx.c.options.private_network.as_ref().map(|s| &s.origin),
        format!(
            "the container has a veth but no hostAddress/localAddress, so legacy left ve-{0} and the guest's eth0 \
             unconfigured; the module now serves DHCP, NAT (IPMasquerade) and IPv6 router advertisements on ve-{0} and \
             runs DHCP on host0, so the container gets an address and a route to the outside. To keep both ends \
             unconfigured, add systemd.network.networks.\"20-ve-{0}\".enable = lib.mkForce false; on the host and \
             systemd.network.networks.\"40-host0\".enable = lib.mkForce false; to nixos.containers.instances.{name}.system-config",
            tx.c.name
        ),
    );
}

/// `--network-zone=` names a zone the module must have declared (it asserts so): the
/// emitted file declares it (render::nix), with the module's zone defaults.
fn zone_declared(tx: &mut Tx) {
    let Some(zone) = tx.i.spec.network.as_ref().and_then(|n| n.zone.clone()) else {
        return;
    };
    tx.warn(
        &NETWORK_ZONE_DECLARED,
        "extraFlags",
        None,
        format!(
            "--network-zone={zone}: the module needs the zone declared, so nixos.containers.zones.{z} = {{ }}; is emitted. \
             Legacy's nspawn created the bridge vz-{zone} and left it unconfigured (the zone's containers reached only each \
             other); the declared zone's bridge serves DHCP, NAT and IPv6 router advertisements. To keep it without \
             addresses, declare nixos.containers.zones.{z} = {{ v4.addrPool = [ ]; v6.addrPool = [ ]; }};",
            z = crate::nixtext::attr_name(&zone)
        ),
    );
}

//! systemd-networkd units: the ones the NixOS module generates for an instance
//! ([`module_networks`], per `nixos/RENDERING.md`) and the text of any unit ([`render`]).

use super::unit::{self, File};
use crate::translate::{InstanceSpec, NetworkdUnit, Side};

/// An address without its `/prefix`.
pub fn strip_prefix(addr: &str) -> &str {
    addr.split('/').next().unwrap_or(addr)
}

fn is_v6(addr: &str) -> bool {
    addr.contains(':')
}

fn full_length(addr: &str) -> &'static str {
    if is_v6(addr) { "128" } else { "32" }
}

fn is_full_length(addr: &str) -> bool {
    addr.ends_with(&format!("/{}", full_length(addr)))
}

type Section = (String, Vec<(String, String)>);

fn kv(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_string(), v.into())
}

/// `network.pointToPoint`, one end, one family: the `[Address]` sections (own addresses as
/// given, the first with the other end as `Peer=` when full-length) — `p2pAddresses` in
/// nixos/lib/instance.nix.
fn p2p_addresses(own: &[String], other: &[String]) -> Vec<Section> {
    own.iter()
        .enumerate()
        .map(|(n, a)| {
            let mut keys = vec![kv("Address", a.clone())];
            if let (0, Some(o), true) = (n, other.first(), is_full_length(a)) {
                keys.push(kv(
                    "Peer",
                    format!("{}/{}", strip_prefix(o), full_length(a)),
                ));
            }
            ("Address".to_string(), keys)
        })
        .collect()
}

/// The host route to the other end when the own address is not full-length (`p2pRoutes`).
fn p2p_routes(own: &[String], other: &[String]) -> Vec<Section> {
    match (own.first(), other.first()) {
        (Some(a), Some(o)) if !is_full_length(a) => vec![(
            "Route".to_string(),
            vec![kv(
                "Destination",
                format!("{}/{}", strip_prefix(o), full_length(a)),
            )],
        )],
        _ => Vec::new(),
    }
}

/// The networkd units the module generates for instance `name`: the host side of the veth
/// (`20-ve-<name>.network`) and the guest's `40-host0.network` (only when it configures
/// something; the name is the one nixpkgs gives the guest's own `networking.interfaces.host0`,
/// so that NixOS merges the two into one unit).
pub fn module_networks(name: &str, spec: &InstanceSpec) -> Vec<NetworkdUnit> {
    let mut out = Vec::new();
    let Some(n) = &spec.network else {
        return out;
    };
    if !n.veth {
        return out;
    }
    // Computed addresses count as static (the module sees them after evaluation); the preview
    // cannot show them.
    let no_static = !n.v4.has_host() && !n.v6.has_host() && !n.v4.has_pool() && !n.v6.has_pool();
    let no_static_v6 = !n.v6.has_host() && !n.v6.has_pool();
    let (v4, v6) = (&n.v4, &n.v6);

    if n.zone.is_none() && !n.bridged() {
        let p2p = n.point_to_point && !no_static;
        let mut net = Vec::new();
        if !p2p {
            for a in v4.host_addresses.iter().chain(&v6.host_addresses) {
                net.push(kv("Address", a.clone()));
            }
        }
        if no_static {
            // Pools for networkd's DHCP server and the IPv6 ULA prefix, as systemd's own
            // 80-container-ve.network has them (our unit replaces that one).
            net.push(kv("Address", "0.0.0.0/28"));
            net.push(kv("Address", "::/64"));
            net.push(kv("DHCPServer", "yes"));
        }
        if n.masquerade {
            net.push(kv("IPMasquerade", "both"));
        }
        if no_static {
            net.push(kv("LinkLocalAddressing", "yes"));
        }
        if n.router_advertisements && no_static_v6 {
            net.push(kv("IPv6SendRA", "yes"));
        }
        let mut sections = vec![
            ("Match".to_string(), vec![kv("Name", format!("ve-{name}"))]),
            ("Network".to_string(), net),
        ];
        if p2p {
            sections.extend(p2p_addresses(&v4.host_addresses, &v4.container_pool));
            sections.extend(p2p_addresses(&v6.host_addresses, &v6.container_pool));
            sections.extend(p2p_routes(&v4.host_addresses, &v4.container_pool));
            sections.extend(p2p_routes(&v6.host_addresses, &v6.container_pool));
        }
        out.push(NetworkdUnit {
            file_name: format!("20-ve-{name}.network"),
            side: Side::Host,
            sections,
        });
    }

    let pool_empty = !v4.has_pool() && !v6.has_pool();
    let p2p = n.point_to_point && !pool_empty;
    let mut net = Vec::new();
    if !p2p {
        for a in v4.container_pool.iter().chain(&v6.container_pool) {
            net.push(kv("Address", a.clone()));
        }
        if let (false, Some(g)) = (v4.container_pool.is_empty(), v4.host_addresses.first()) {
            net.push(kv("Gateway", strip_prefix(g)));
        }
        if let (false, Some(g)) = (v6.container_pool.is_empty(), v6.host_addresses.first()) {
            net.push(kv("Gateway", strip_prefix(g)));
        }
    }
    if no_static && !n.bridged() {
        net.push(kv("DHCP", "yes"));
    }
    if net.is_empty() && !p2p {
        return out;
    }
    let mut sections = vec![
        ("Match".to_string(), vec![kv("Name", "host0")]),
        ("Network".to_string(), net),
    ];
    if p2p {
        sections.extend(p2p_addresses(&v4.container_pool, &v4.host_addresses));
        sections.extend(p2p_addresses(&v6.container_pool, &v6.host_addresses));
        sections.extend(p2p_routes(&v4.container_pool, &v4.host_addresses));
        sections.extend(p2p_routes(&v6.container_pool, &v6.host_addresses));
        // Legacy: `ip route add default via <hostAddress>` with no shared subnet.
        for st in [v4, v6] {
            if let (false, Some(g)) = (st.container_pool.is_empty(), st.host_addresses.first()) {
                sections.push((
                    "Route".to_string(),
                    vec![kv("Gateway", strip_prefix(g)), kv("GatewayOnLink", "yes")],
                ));
            }
        }
    }
    out.push(NetworkdUnit {
        file_name: "40-host0.network".to_string(),
        side: Side::Guest,
        sections,
    });
    out
}

/// The unit file text exactly as NixOS renders `systemd.network.{networks,netdevs}` (see
/// nixos/RENDERING.md): each section is `[Section]\n`, its keys in byte order (repeated keys
/// keep their order), then a blank line.
pub fn render(u: &NetworkdUnit) -> String {
    let mut out = String::new();
    for (name, keys) in &u.sections {
        out.push('[');
        out.push_str(name);
        out.push_str("]\n");
        let mut sorted: Vec<&(String, String)> = keys.iter().collect();
        sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (k, v) in sorted {
            out.push_str(&unit::line(File::Networkd, name, k, v));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::{ActivationStrategy, NetworkSpec, PrivateUsersSpec, StaticAddresses};

    fn spec(network: Option<NetworkSpec>) -> InstanceSpec {
        InstanceSpec {
            system_config: None,
            nixpkgs: None,
            special_args: None,
            network,
            forward_ports: vec![],
            activation_strategy: ActivationStrategy::Restart,
            ephemeral: false,
            bind_mounts: vec![],
            bind_mounts_expr: None,
            auto_start: true,
            timeout_start_sec: None,
            restart: None,
            private_users: PrivateUsersSpec {
                mode: "no".into(),
                ownership: None,
            },
            condition: None,
        }
    }

    #[test]
    fn dhcp_mode_when_no_static_addresses() {
        let units = module_networks("web", &spec(Some(NetworkSpec::default())));
        let text: Vec<String> = units.iter().map(render).collect();
        assert_eq!(units[0].file_name, "20-ve-web.network");
        assert_eq!(
            text[0],
            "[Match]\nName=ve-web\n\n[Network]\nAddress=0.0.0.0/28\nAddress=::/64\nDHCPServer=yes\n\
             IPMasquerade=both\nIPv6SendRA=yes\nLinkLocalAddressing=yes\n\n"
        );
        assert_eq!(text[1], "[Match]\nName=host0\n\n[Network]\nDHCP=yes\n\n");
    }

    #[test]
    fn static_addresses_and_gateways() {
        let n = NetworkSpec {
            v4: StaticAddresses {
                host_addresses: vec!["10.0.0.1/30".into()],
                container_pool: vec!["10.0.0.2/30".into()],
                ..StaticAddresses::default()
            },
            v6: StaticAddresses {
                host_addresses: vec!["fc00::1/126".into()],
                container_pool: vec!["fc00::2/126".into()],
                ..StaticAddresses::default()
            },
            ..NetworkSpec::default()
        };
        let units = module_networks("web", &spec(Some(n)));
        assert_eq!(
            render(&units[0]),
            "[Match]\nName=ve-web\n\n[Network]\nAddress=10.0.0.1/30\nAddress=fc00::1/126\nIPMasquerade=both\n\n"
        );
        assert_eq!(
            render(&units[1]),
            "[Match]\nName=host0\n\n[Network]\nAddress=10.0.0.2/30\nAddress=fc00::2/126\nGateway=10.0.0.1\nGateway=fc00::1\n\n"
        );
    }

    #[test]
    fn point_to_point_without_nat_or_router_advertisements() {
        let n = NetworkSpec {
            masquerade: false,
            router_advertisements: false,
            point_to_point: true,
            v4: StaticAddresses {
                host_addresses: vec!["192.168.100.10/32".into()],
                container_pool: vec!["192.168.100.11/32".into()],
                ..StaticAddresses::default()
            },
            v6: StaticAddresses {
                host_addresses: vec!["fc00::1/64".into()],
                container_pool: vec!["fc00::2/128".into()],
                ..StaticAddresses::default()
            },
            ..NetworkSpec::default()
        };
        let units = module_networks("a", &spec(Some(n)));
        // A full-length address gets the other end as peer; a shorter one a host route to it.
        assert_eq!(
            render(&units[0]),
            "[Match]\nName=ve-a\n\n[Network]\n\n[Address]\nAddress=192.168.100.10/32\nPeer=192.168.100.11/32\n\n\
             [Address]\nAddress=fc00::1/64\n\n[Route]\nDestination=fc00::2/128\n\n"
        );
        assert_eq!(units[1].file_name, "40-host0.network");
        assert_eq!(
            render(&units[1]),
            "[Match]\nName=host0\n\n[Network]\n\n[Address]\nAddress=192.168.100.11/32\nPeer=192.168.100.10/32\n\n\
             [Address]\nAddress=fc00::2/128\nPeer=fc00::1/128\n\n[Route]\nGateway=192.168.100.10\nGatewayOnLink=yes\n\n\
             [Route]\nGateway=fc00::1\nGatewayOnLink=yes\n\n"
        );
    }

    #[test]
    fn bridge_zone_host_network_and_no_veth() {
        let bridged = NetworkSpec {
            bridge: Some("br0".into()),
            ..NetworkSpec::default()
        };
        // No host side for a bridge, and no guest unit with nothing in it: the guest's own
        // networking.interfaces.host0 (40-host0.network) must not be shadowed (issue 13.1).
        let units = module_networks("web", &spec(Some(bridged)));
        assert!(units.is_empty(), "{units:?}");
        let zoned = NetworkSpec {
            zone: Some("lab".into()),
            ..NetworkSpec::default()
        };
        assert_eq!(
            module_networks("web", &spec(Some(zoned))).len(),
            1,
            "DHCP in the zone"
        );
        assert!(module_networks("web", &spec(None)).is_empty());
        let no_veth = NetworkSpec {
            veth: false,
            ..NetworkSpec::default()
        };
        assert!(module_networks("web", &spec(Some(no_veth))).is_empty());
    }
}

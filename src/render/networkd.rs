//! systemd-networkd units: the ones the NixOS module generates for an instance
//! ([`module_networks`], per `nixos/RENDERING.md`) and the text of any unit ([`render`]).

use super::unit::{self, File};
use crate::translate::{InstanceSpec, NetworkdUnit, Side};

/// An address without its `/prefix`.
pub fn strip_prefix(addr: &str) -> &str {
    addr.split('/').next().unwrap_or(addr)
}

/// The networkd units the module generates for instance `name`: the host side of the veth
/// (`20-ve-<name>.network`) and the guest's `20-host0.network`.
pub fn module_networks(name: &str, spec: &InstanceSpec) -> Vec<NetworkdUnit> {
    let mut out = Vec::new();
    let Some(n) = &spec.network else {
        return out;
    };
    if !n.veth {
        return out;
    }
    let no_static = n.v4.host_addresses.is_empty()
        && n.v6.host_addresses.is_empty()
        && n.v4.container_pool.is_empty()
        && n.v6.container_pool.is_empty();
    let no_static_v6 = n.v6.host_addresses.is_empty() && n.v6.container_pool.is_empty();

    if n.zone.is_none() && n.bridge.is_none() {
        let mut net = Vec::new();
        for a in n.v4.host_addresses.iter().chain(&n.v6.host_addresses) {
            net.push(("Address".to_string(), a.clone()));
        }
        if no_static {
            // Pools for networkd's DHCP server and the IPv6 ULA prefix, as systemd's own
            // 80-container-ve.network has them (our unit replaces that one).
            net.push(("Address".to_string(), "0.0.0.0/28".to_string()));
            net.push(("Address".to_string(), "::/64".to_string()));
            net.push(("DHCPServer".to_string(), "yes".to_string()));
        }
        net.push(("IPMasquerade".to_string(), "both".to_string()));
        if no_static {
            net.push(("LinkLocalAddressing".to_string(), "yes".to_string()));
        }
        if no_static_v6 {
            net.push(("IPv6SendRA".to_string(), "yes".to_string()));
        }
        out.push(NetworkdUnit {
            file_name: format!("20-ve-{name}.network"),
            side: Side::Host,
            sections: vec![
                (
                    "Match".to_string(),
                    vec![("Name".to_string(), format!("ve-{name}"))],
                ),
                ("Network".to_string(), net),
            ],
        });
    }

    let mut net = Vec::new();
    for a in n.v4.container_pool.iter().chain(&n.v6.container_pool) {
        net.push(("Address".to_string(), a.clone()));
    }
    if let (false, Some(g)) = (n.v4.container_pool.is_empty(), n.v4.host_addresses.first()) {
        net.push(("Gateway".to_string(), strip_prefix(g).to_string()));
    }
    if let (false, Some(g)) = (n.v6.container_pool.is_empty(), n.v6.host_addresses.first()) {
        net.push(("Gateway".to_string(), strip_prefix(g).to_string()));
    }
    if no_static && n.bridge.is_none() {
        net.push(("DHCP".to_string(), "yes".to_string()));
    }
    out.push(NetworkdUnit {
        file_name: "20-host0.network".to_string(),
        side: Side::Guest,
        sections: vec![
            (
                "Match".to_string(),
                vec![("Name".to_string(), "host0".to_string())],
            ),
            ("Network".to_string(), net),
        ],
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
            auto_start: true,
            timeout_start_sec: None,
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
            },
            v6: StaticAddresses {
                host_addresses: vec!["fc00::1/126".into()],
                container_pool: vec!["fc00::2/126".into()],
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
    fn bridge_zone_host_network_and_no_veth() {
        let bridged = NetworkSpec {
            bridge: Some("br0".into()),
            ..NetworkSpec::default()
        };
        let units = module_networks("web", &spec(Some(bridged)));
        assert_eq!(units.len(), 1, "no host side for a bridge");
        assert_eq!(render(&units[0]), "[Match]\nName=host0\n\n[Network]\n\n");
        let zoned = NetworkSpec {
            zone: Some("lab".into()),
            ..NetworkSpec::default()
        };
        assert_eq!(module_networks("web", &spec(Some(zoned))).len(), 1);
        assert!(module_networks("web", &spec(None)).is_empty());
        let no_veth = NetworkSpec {
            veth: false,
            ..NetworkSpec::default()
        };
        assert!(module_networks("web", &spec(Some(no_veth))).is_empty());
    }
}

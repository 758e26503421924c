//! The files Hetzner's installimage writes into every new system it installs, as it writes them
//! (read from its source, `../shared/reference/real-consumers.md`): the network configuration
//! for the interface it found, `/etc/hosts`, the resolvers, its sysctls and the GRUB kernel
//! command line. The simulated installimage (caph-sim) and `caph-image verify`'s local install
//! both write them from here.

use std::net::Ipv4Addr;

/// The network installimage found in the rescue system and writes into the new system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// The interface name the installed system will see (`enp0s31f6`, `ens3`).
    pub interface: String,
    /// The main IPv4 address.
    pub ipv4: String,
    /// Its prefix length.
    pub ipv4_prefix: u8,
    /// The IPv4 default gateway, where there is one.
    pub ipv4_gateway: Option<String>,
    /// An IPv6 address with its prefix length (`2a01:4f8::2/64`), where there is one.
    pub ipv6: Option<String>,
    /// The IPv6 default gateway, where there is one.
    pub ipv6_gateway: Option<String>,
}

/// Where a distribution's network configuration goes, and its text: netplan for Ubuntu,
/// ifupdown for Debian (installimage's `setup_network_config` for the two families this
/// project's images come in). `distro` is os-release's `ID` or installimage's image name part,
/// lower case.
pub fn network_config(distro: &str, network: &Network) -> (&'static str, String) {
    if distro == "ubuntu" {
        ("etc/netplan/01-netcfg.yaml", netplan(network))
    } else {
        ("etc/network/interfaces", ifupdown_interfaces(network))
    }
}

/// installimage's netplan file for Ubuntu: the address as a /32 with Hetzner's on-link
/// gateway, and Hetzner's resolvers. installimage writes it 0600 and runs `netplan generate`.
fn netplan(network: &Network) -> String {
    // Hetzner's on-link gateway for dedicated servers' /32 setups.
    const GATEWAY: &str = "172.31.1.1";
    format!(
        "### Hetzner Online GmbH installimage\nnetwork:\n  version: 2\n  renderer: networkd\n  ethernets:\n    {iface}:\n      addresses:\n        - {ip}/32\n      routes:\n        - on-link: true\n          to: 0.0.0.0/0\n          via: {GATEWAY}\n      nameservers:\n        addresses:\n          - 185.12.64.1\n          - 185.12.64.2\n",
        iface = network.interface,
        ip = network.ipv4
    )
}

/// installimage's `/etc/network/interfaces` (`gen_etc_network_interfaces_entry`) for a machine
/// that is not a virtual one: the address with its netmask and gateway, a host route to the
/// address's network where the gateway is not a private address, and an IPv6 stanza where the
/// interface has an IPv6 address.
pub fn ifupdown_interfaces(network: &Network) -> String {
    let iface = &network.interface;
    let prefix = network.ipv4_prefix.min(32);
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    let dotted = |value: u32| Ipv4Addr::from(value).to_string();
    let mut text = format!(
        "### Hetzner Online GmbH installimage\n\nsource /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\niface lo inet6 loopback\n\nauto {iface}\niface {iface} inet static\n  address {ip}\n  netmask {netmask}\n",
        ip = network.ipv4,
        netmask = dotted(mask)
    );
    if let Some(gateway) = &network.ipv4_gateway {
        text.push_str(&format!("  gateway {gateway}\n"));
        let private = gateway
            .parse::<Ipv4Addr>()
            .is_ok_and(|address| address.is_private());
        if !private && let Ok(address) = network.ipv4.parse::<Ipv4Addr>() {
            let network_address = dotted(u32::from(address) & mask);
            text.push_str(&format!(
                "  # route {network_address}/{prefix} via {gateway}\n  up route add -net {network_address} netmask {} gw {gateway} dev {iface}\n",
                dotted(mask)
            ));
        }
    }
    if let Some(ipv6) = &network.ipv6 {
        let (address, length) = ipv6.split_once('/').unwrap_or((ipv6, "64"));
        text.push_str(&format!(
            "\niface {iface} inet6 static\n  address {address}\n  netmask {length}\n"
        ));
        if let Some(gateway) = &network.ipv6_gateway {
            text.push_str(&format!("  gateway {gateway}\n"));
        }
    }
    text
}

/// installimage's `/etc/hosts`: its header, localhost, the main address with the short name
/// (no FQDN for a short hostname), the IPv6 names, and the IPv6 address where there is one.
pub fn hosts(hostname: &str, network: &Network) -> String {
    let mut hosts = format!(
        "### Hetzner Online GmbH installimage\n127.0.0.1 localhost.localdomain localhost\n{} {hostname}\n::1     ip6-localhost ip6-loopback\nfe00::0 ip6-localnet\nff00::0 ip6-mcastprefix\nff02::1 ip6-allnodes\nff02::2 ip6-allrouters\nff02::3 ip6-allhosts\n",
        network.ipv4
    );
    if let Some(ipv6) = &network.ipv6 {
        let address = ipv6.split('/').next().unwrap_or(ipv6);
        hosts.push_str(&format!("{address} {hostname}\n"));
    }
    hosts
}

/// installimage's resolvers (`DNSRESOLVER` and `DNSRESOLVER_V6` in its config.sh). It shuffles
/// each list and interleaves them; these are written in this order.
const RESOLVERS: &[&str] = &[
    "185.12.64.1",
    "2a01:4ff:ff00::add:2",
    "185.12.64.2",
    "2a01:4ff:ff00::add:1",
];

/// `/etc/resolv.conf` as installimage writes it on Debian and on Ubuntu before 18.04.
pub fn resolv_conf() -> String {
    let mut text = String::from("### Hetzner Online GmbH installimage\n# nameserver config\n");
    for resolver in RESOLVERS {
        text.push_str(&format!("nameserver {resolver}\n"));
    }
    text
}

/// Where installimage writes its sysctls.
pub const SYSCTL_PATH: &str = "etc/sysctl.d/99-hetzner.conf";

/// installimage's `/etc/sysctl.d/99-hetzner.conf` (`generate_sysctlconf`) on a machine that is
/// not a virtual one.
pub const SYSCTL: &str = "\
### Hetzner Online GmbH installimage
# sysctl config
#net.ipv4.ip_forward=1
net.ipv4.conf.all.rp_filter=1
net.ipv4.icmp_echo_ignore_broadcasts=1
# ipv6 settings (no autoconfiguration)
net.ipv6.conf.default.autoconf=0
net.ipv6.conf.default.accept_dad=0
net.ipv6.conf.default.accept_ra=0
net.ipv6.conf.default.accept_ra_defrtr=0
net.ipv6.conf.default.accept_ra_rtr_pref=0
net.ipv6.conf.default.accept_ra_pinfo=0
net.ipv6.conf.default.accept_source_route=0
net.ipv6.conf.default.accept_redirects=0
net.ipv6.conf.all.autoconf=0
net.ipv6.conf.all.accept_dad=0
net.ipv6.conf.all.accept_ra=0
net.ipv6.conf.all.accept_ra_defrtr=0
net.ipv6.conf.all.accept_ra_rtr_pref=0
net.ipv6.conf.all.accept_ra_pinfo=0
net.ipv6.conf.all.accept_source_route=0
net.ipv6.conf.all.accept_redirects=0
";

/// The `GRUB_CMDLINE_LINUX_DEFAULT` installimage's `generate_config_grub` writes into
/// `/etc/default/grub` on Debian and Ubuntu: `consoleblank=0`, and `elevator=noop` on a virtual
/// machine (which is where `caph-image verify` boots a node). It replaces the image's value, so
/// an image's `quiet` is gone and systemd's status lines reach the console.
pub fn grub_cmdline_default(virtual_machine: bool) -> &'static str {
    if virtual_machine {
        "consoleblank=0 elevator=noop"
    } else {
        "consoleblank=0"
    }
}

/// The SSH host key types installimage knows (`generate_new_sshkeys`), with the private key file
/// whose presence in the image makes it make a new key of that type, and the `rm -f` pattern it
/// clears first; a type without a file is skipped ("skipping ed25519 key gen"), so an image with
/// no host keys comes up with none.
pub const HOST_KEY_TYPES: &[(&str, &str, &str)] = &[
    ("rsa1", "ssh_host_key", "ssh_host_k"),
    ("dsa", "ssh_host_dsa_key", "ssh_host_dsa_"),
    ("rsa", "ssh_host_rsa_key", "ssh_host_rsa_"),
    ("ecdsa", "ssh_host_ecdsa_key", "ssh_host_ecdsa_"),
    ("ed25519", "ssh_host_ed25519_key", "ssh_host_ed25519_"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn network(gateway: &str) -> Network {
        Network {
            interface: "enp0s31f6".into(),
            ipv4: "203.0.113.10".into(),
            ipv4_prefix: 26,
            ipv4_gateway: Some(gateway.into()),
            ipv6: Some("2a01:4f8::2/64".into()),
            ipv6_gateway: Some("fe80::1".into()),
        }
    }

    #[test]
    fn a_public_gateway_gets_installimages_host_route() {
        let text = ifupdown_interfaces(&network("203.0.113.1"));
        assert!(text.contains("auto enp0s31f6\niface enp0s31f6 inet static\n  address 203.0.113.10\n  netmask 255.255.255.192\n  gateway 203.0.113.1\n"), "{text}");
        assert!(
            text.contains(
                "up route add -net 203.0.113.0 netmask 255.255.255.192 gw 203.0.113.1 dev enp0s31f6"
            ),
            "{text}"
        );
        assert!(text.contains(
            "iface enp0s31f6 inet6 static\n  address 2a01:4f8::2\n  netmask 64\n  gateway fe80::1\n"
        ));
    }

    #[test]
    fn a_private_gateway_needs_no_route() {
        let text = ifupdown_interfaces(&network("10.0.2.2"));
        assert!(!text.contains("route add"), "{text}");
    }

    #[test]
    fn hosts_names_both_addresses() {
        let text = hosts("node-1", &network("10.0.2.2"));
        assert!(text.starts_with("### Hetzner Online GmbH installimage\n"));
        assert!(text.contains("\n203.0.113.10 node-1\n") && text.ends_with("2a01:4f8::2 node-1\n"));
    }
}

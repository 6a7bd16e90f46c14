//! The guarded outbound HTTP client: which addresses a tenant's URL may reach, and a client that
//! cannot be talked into reaching any other.
//!
//! A tenant chooses the URL, so without a guard a webhook (or a job handler) is a way into the deployment's own
//! network (the cloud metadata endpoint, an admin port on loopback, a database on a private
//! subnet). The guard holds at three points:
//! * a literal IP host is checked when the sink is configured (hyper connects to it without
//!   asking any resolver, so only that check sees it);
//! * a host name is resolved by [`GuardedResolver`] at every connection, which drops refused
//!   addresses before hyper sees them, so a name that is re-pointed at a private address after
//!   configuration (DNS rebinding) still cannot reach it;
//! * redirects are not followed and system proxies are not used: either would hand the choice
//!   of address to someone else.
//!
//! [`refusal`] is the one classification, pure, used by all three.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// IPv4 networks a webhook may not reach, with what they are (IANA special-purpose registry).
const REFUSED_V4: &[(Ipv4Addr, u8, &str)] = &[
    (
        Ipv4Addr::new(0, 0, 0, 0),
        8,
        "an unspecified (\"this network\") address",
    ),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "a private address"),
    (Ipv4Addr::new(100, 64, 0, 0), 10, "a shared (CGNAT) address"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "a loopback address"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "a link-local address"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "a private address"),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        "an IETF protocol assignment",
    ),
    (Ipv4Addr::new(192, 0, 2, 0), 24, "a documentation address"),
    (Ipv4Addr::new(192, 88, 99, 0), 24, "a 6to4 relay address"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "a private address"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "a benchmarking address"),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "a documentation address",
    ),
    (Ipv4Addr::new(203, 0, 113, 0), 24, "a documentation address"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "a multicast address"),
    (
        Ipv4Addr::new(255, 255, 255, 255),
        32,
        "the broadcast address",
    ),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "a reserved address"),
];

/// IPv6 networks a webhook may not reach. Anything outside global unicast (`2000::/3`) is
/// refused as well; these are listed to name them, or because they lie inside `2000::/3`.
const REFUSED_V6: &[(Ipv6Addr, u8, &str)] = &[
    (Ipv6Addr::UNSPECIFIED, 128, "the unspecified address"),
    (Ipv6Addr::LOCALHOST, 128, "the loopback address"),
    // An IPv4-mapped address reaches the IPv4 host it embeds, 127.0.0.1 included.
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        "an IPv4-mapped address",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "a local-use NAT64 address",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "a discard-only address",
    ),
    // Teredo, benchmarking, ORCHID and the other IETF assignments.
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "an IETF protocol assignment",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "a documentation address",
    ),
    // 6to4 (deprecated) tunnels to the IPv4 address it embeds.
    (
        Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
        16,
        "a 6to4 address",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "a documentation address",
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        "an SRv6 segment identifier",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "a unique local (private) address",
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        "a link-local address",
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "a site-local address",
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        "a multicast address",
    ),
];

/// The well-known NAT64 prefix `64:ff9b::/96`: the address stands for the IPv4 one it embeds.
const NAT64: (Ipv6Addr, u8) = (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96);

/// Why a webhook may not reach `ip` (e.g. "a loopback address"), or `None` when it is a public
/// unicast address.
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => REFUSED_V4
            .iter()
            .find(|(network, len, _)| v4_in(v4, *network, *len))
            .map(|(_, _, kind)| *kind),
        IpAddr::V6(v6) => {
            // On a DNS64 network a v4-only host resolves to NAT64 addresses only: judge the
            // IPv4 address they stand for, so public hosts stay reachable there.
            if v6_in(v6, NAT64.0, NAT64.1) {
                let [.., a, b, c, d] = v6.octets();
                return refusal(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
            }
            if let Some((_, _, kind)) = REFUSED_V6
                .iter()
                .find(|(network, len, _)| v6_in(v6, *network, *len))
            {
                return Some(kind);
            }
            let global_unicast = v6.segments()[0] & 0xe000 == 0x2000;
            (!global_unicast).then_some("not a global unicast address")
        }
    }
}

fn v4_in(ip: Ipv4Addr, network: Ipv4Addr, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(network)
}

fn v6_in(ip: Ipv6Addr, network: Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(network)
}

/// A host refused by the outbound policy: its every address is one [`refusal`] names.
#[derive(Debug)]
pub struct RefusedTarget {
    host: String,
    address: IpAddr,
    kind: &'static str,
}

impl fmt::Display for RefusedTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} resolves only to addresses webhooks may not reach ({} is {})",
            self.host, self.address, self.kind
        )
    }
}

impl std::error::Error for RefusedTarget {}

/// The policy refusal inside a failed request, if that is why it failed.
pub fn refused_target(err: &reqwest::Error) -> Option<&RefusedTarget> {
    let mut source = std::error::Error::source(err);
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<RefusedTarget>() {
            return Some(refused);
        }
        source = err.source();
    }
    None
}

/// Resolves with the system resolver (tokio's `lookup_host`) and keeps only the addresses the
/// policy allows, at every connection.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    allow_private_targets: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private_targets = self.allow_private_targets;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port (or the scheme's) in its place.
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let first_refused = resolved
                .iter()
                .find_map(|addr| refusal(addr.ip()).map(|kind| (addr.ip(), kind)));
            let allowed: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|addr| allow_private_targets || refusal(addr.ip()).is_none())
                .collect();
            match (allowed.is_empty(), first_refused) {
                (true, Some((address, kind))) => Err(Box::new(RefusedTarget {
                    host,
                    address,
                    kind,
                }) as _),
                (true, None) => Err(format!("{host} has no addresses").into()),
                (false, _) => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

/// The client of one sink: `timeout` for a whole request (connect, send, response), no
/// redirects, no proxies, names resolved through [`GuardedResolver`].
pub fn client(
    allow_private_targets: bool,
    user_agent: &str,
    timeout: Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(user_agent)
        .dns_resolver(Arc::new(GuardedResolver {
            allow_private_targets,
        }))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(ip: &str) -> Option<&'static str> {
        refusal(ip.parse().expect("a test address"))
    }

    #[test]
    fn loopback_private_link_local_and_other_special_ipv4_addresses_are_refused() {
        for (ip, kind) in [
            ("127.0.0.1", "a loopback address"),
            ("127.255.255.254", "a loopback address"),
            ("10.0.0.1", "a private address"),
            ("10.255.255.255", "a private address"),
            ("172.16.0.1", "a private address"),
            ("172.31.255.255", "a private address"),
            ("192.168.1.1", "a private address"),
            ("169.254.169.254", "a link-local address"),
            ("100.64.0.1", "a shared (CGNAT) address"),
            ("100.127.255.255", "a shared (CGNAT) address"),
            ("0.0.0.0", "an unspecified (\"this network\") address"),
            ("0.1.2.3", "an unspecified (\"this network\") address"),
            ("192.0.0.8", "an IETF protocol assignment"),
            ("192.0.2.1", "a documentation address"),
            ("198.51.100.7", "a documentation address"),
            ("203.0.113.9", "a documentation address"),
            ("198.18.0.1", "a benchmarking address"),
            ("224.0.0.1", "a multicast address"),
            ("239.255.255.250", "a multicast address"),
            ("255.255.255.255", "the broadcast address"),
            ("240.0.0.1", "a reserved address"),
        ] {
            assert_eq!(refused(ip), Some(kind), "{ip}");
        }
    }

    #[test]
    fn loopback_mapped_local_and_other_special_ipv6_addresses_are_refused() {
        for (ip, kind) in [
            ("::1", "the loopback address"),
            ("::", "the unspecified address"),
            ("::ffff:127.0.0.1", "an IPv4-mapped address"),
            ("::ffff:8.8.8.8", "an IPv4-mapped address"),
            ("fe80::1", "a link-local address"),
            ("fc00::1", "a unique local (private) address"),
            ("fd12:3456::1", "a unique local (private) address"),
            ("fec0::1", "a site-local address"),
            ("ff02::1", "a multicast address"),
            ("2001:db8::1", "a documentation address"),
            ("3fff::1", "a documentation address"),
            ("2001::1", "an IETF protocol assignment"),
            ("2002:7f00:1::1", "a 6to4 address"),
            ("100::1", "a discard-only address"),
            ("64:ff9b:1::1", "a local-use NAT64 address"),
            ("64:ff9b::7f00:1", "a loopback address"),
            ("64:ff9b::a9fe:a9fe", "a link-local address"),
            ("::127.0.0.1", "not a global unicast address"),
            ("4000::1", "not a global unicast address"),
        ] {
            assert_eq!(refused(ip), Some(kind), "{ip}");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.215.14",
            "172.32.0.1",
            "172.15.255.255",
            "100.128.0.1",
            "192.169.0.1",
            "11.0.0.1",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "64:ff9b::808:808",
        ] {
            assert_eq!(refused(ip), None, "{ip}");
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_with_only_refused_addresses() {
        let guarded = GuardedResolver {
            allow_private_targets: false,
        };
        let name: Name = "localhost".parse().expect("a valid name");
        let err = match guarded.resolve(name).await {
            Ok(addrs) => panic!("localhost resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(err) => err,
        };
        let refused = err
            .downcast_ref::<RefusedTarget>()
            .expect("a policy refusal");
        assert_eq!(refused.host, "localhost");
        assert!(refused.address.is_loopback(), "{refused}");

        let allowing = GuardedResolver {
            allow_private_targets: true,
        };
        let name: Name = "localhost".parse().expect("a valid name");
        let addrs: Vec<SocketAddr> = allowing.resolve(name).await.expect("allowed").collect();
        assert!(
            addrs.iter().all(|addr| addr.ip().is_loopback()),
            "{addrs:?}"
        );
        assert!(!addrs.is_empty());
    }
}

//! Where the trunks' providers are, found once at start (RFC 3263 §4.2): an
//! IP address is taken as it is; a host name with a port is looked up
//! (A/AAAA); a host name without one asks DNS for `_sip._udp.<host>` (or
//! `_sip._tcp.<host>` for a TCP trunk) SRV records first — lowest priority,
//! then highest weight first, the first target that resolves wins — and
//! falls back to A/AAAA on port 5060.
//!
//! With `[sip] dns_servers` the lookups go to those servers; otherwise SRV
//! goes to the system's resolvers and A/AAAA through the system's own lookup
//! (so /etc/hosts counts).

use crate::config::{split_hostport, Config};
use crate::sip::Transport;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// A host as configured, with its port if one was given, and the transport.
pub type Place = (String, Option<u16>, Transport);

const SIP_PORT: u16 = 5060;

/// Every trunk host and outbound proxy of `config`, located.
pub async fn trunk_places(config: &Config) -> HashMap<Place, SocketAddr> {
    let mut places: Vec<Place> = Vec::new();
    for t in &config.trunks {
        let transport = t.sip_transport();
        places.push((t.host.get_ref().clone(), t.port, transport));
        let proxy = t.outbound_proxy.get_ref();
        if !proxy.is_empty() {
            let (host, port) = split_hostport(proxy);
            places.push((host, port, transport));
        }
    }
    if places.is_empty() {
        return HashMap::new();
    }
    let dns = Dns::new(&config.sip.dns_servers);
    let mut found = HashMap::new();
    for place in places {
        if let Some(addr) = dns.locate(&place.0, place.1, place.2).await {
            tracing::info!(host = %place.0, %addr, "trunk host located");
            found.insert(place, addr);
        }
    }
    found
}

struct Dns {
    resolver: Option<TokioResolver>,
    /// Lookups of A/AAAA go to `resolver` too (configured servers).
    own_servers: bool,
}

impl Dns {
    fn new(servers: &[SocketAddr]) -> Dns {
        if servers.is_empty() {
            let resolver = TokioResolver::builder_tokio().map(|b| b.build());
            if let Err(e) = &resolver {
                tracing::warn!("no system DNS configuration ({e}); SRV lookups are skipped");
            }
            return Dns {
                resolver: resolver.ok(),
                own_servers: false,
            };
        }
        let mut config = ResolverConfig::new();
        for s in servers {
            config.add_name_server(NameServerConfig::new(*s, Protocol::Udp));
        }
        let builder =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
        Dns {
            resolver: Some(builder.build()),
            own_servers: true,
        }
    }

    async fn locate(&self, host: &str, port: Option<u16>, t: Transport) -> Option<SocketAddr> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(SocketAddr::new(ip, port.unwrap_or(SIP_PORT)));
        }
        if port.is_none() {
            if let Some(addr) = self.srv(host, t).await {
                return Some(addr);
            }
        }
        self.address(host, port.unwrap_or(SIP_PORT)).await
    }

    /// The first SRV target of `_sip._udp.<host>` (or `_tcp`) that resolves.
    async fn srv(&self, host: &str, t: Transport) -> Option<SocketAddr> {
        let resolver = self.resolver.as_ref()?;
        let proto = t.as_str().to_ascii_lowercase();
        let name = format!("_sip._{proto}.{}.", host.trim_end_matches('.'));
        let lookup = match resolver.srv_lookup(name.as_str()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(%name, "no SRV records: {e}");
                return None;
            }
        };
        let mut records: Vec<_> = lookup.iter().cloned().collect();
        records.sort_by_key(|r| (r.priority(), std::cmp::Reverse(r.weight())));
        for r in records {
            let target = r.target().to_utf8();
            if let Some(addr) = self.address(target.trim_end_matches('.'), r.port()).await {
                return Some(addr);
            }
        }
        None
    }

    async fn address(&self, host: &str, port: u16) -> Option<SocketAddr> {
        match (&self.resolver, self.own_servers) {
            (Some(r), true) => {
                let ips = r.lookup_ip(format!("{host}.").as_str()).await.ok()?;
                ips.iter().next().map(|ip| SocketAddr::new(ip, port))
            }
            _ => tokio::net::lookup_host((host, port)).await.ok()?.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_and_port_split_with_ipv6_in_brackets() {
        assert_eq!(
            split_hostport("proxy.example:5070"),
            ("proxy.example".into(), Some(5070))
        );
        assert_eq!(
            split_hostport("proxy.example"),
            ("proxy.example".into(), None)
        );
        assert_eq!(
            split_hostport("[2001:db8::1]:5080"),
            ("2001:db8::1".into(), Some(5080))
        );
        assert_eq!(split_hostport("2001:db8::1"), ("2001:db8::1".into(), None));
    }

    #[tokio::test]
    async fn an_address_is_taken_as_it_is() {
        let dns = Dns::new(&[]);
        assert_eq!(
            dns.locate("192.0.2.1", None, Transport::Udp).await,
            Some(([192, 0, 2, 1], 5060).into())
        );
        assert_eq!(
            dns.locate("192.0.2.1", Some(5070), Transport::Tcp).await,
            Some(([192, 0, 2, 1], 5070).into())
        );
    }
}

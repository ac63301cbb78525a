//! Where the trunks' providers are (RFC 3263 §4): an IP address is taken as
//! it is; a host name with a port is looked up (A/AAAA); a host name without
//! one asks DNS for `_sip._udp.<host>` (or `_sip._tcp.<host>` for a TCP
//! trunk) SRV records first — ordered by priority, and within one priority
//! at random weighted by the records' weights (RFC 2782), each target's
//! addresses in turn — and falls back to A/AAAA on port 5060. Calls and
//! registrations try the addresses in that order (`outside::Targets`).
//!
//! Asked once at start, then again when the answers' TTL runs out (at least
//! every hour, at most every 30 s; a name that did not resolve is asked again
//! after 30 s).
//!
//! With `[sip] dns_servers` the lookups go to those servers; otherwise SRV
//! goes to the system's resolvers and A/AAAA through the system's own lookup
//! (so /etc/hosts counts).

use crate::config::{split_hostport, Config};
use crate::sip::Transport;
use crate::tu::Env;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A host as configured, with its port if one was given, and the transport.
pub type Place = (String, Option<u16>, Transport);

/// Each place's addresses, best first, and when to ask again.
#[derive(Debug, Default)]
pub struct Places {
    pub found: HashMap<Place, Vec<SocketAddr>>,
    /// `None`: nothing to ask again (addresses only, or no trunks).
    pub ask_again: Option<Duration>,
}

impl Places {
    /// The addresses of `host` (with `port`) over `t`.
    pub fn get(&self, host: &str, port: Option<u16>, t: Transport) -> Vec<SocketAddr> {
        self.found
            .get(&(host.to_string(), port, t))
            .cloned()
            .unwrap_or_default()
    }
}

const SIP_PORT: u16 = 5060;
const MIN_REFRESH: Duration = Duration::from_secs(30);
const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// Answers that carry no TTL (the system's own lookup) hold this long.
const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// Every trunk host and outbound proxy of `config`.
fn places(config: &Config) -> Vec<Place> {
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
    places
}

/// Every trunk host and outbound proxy of `config`, located.
pub async fn trunk_places(config: &Config) -> Places {
    let places = places(config);
    if places.iter().all(|p| p.0.parse::<IpAddr>().is_ok()) {
        let found = places
            .into_iter()
            .map(|p| {
                let addr =
                    p.0.parse()
                        .map(|ip| SocketAddr::new(ip, p.1.unwrap_or(SIP_PORT)));
                (p, addr.into_iter().collect())
            })
            .collect();
        return Places {
            found,
            ask_again: None,
        };
    }
    let dns = Dns::new(&config.sip.dns_servers);
    let mut found = HashMap::new();
    let mut ask_again = MAX_REFRESH;
    for place in places {
        let (addrs, ttl) = dns.locate(&place.0, place.1, place.2).await;
        tracing::debug!(host = %place.0, ?addrs, ?ttl, "trunk host located");
        ask_again = ask_again.min(ttl.unwrap_or(MIN_REFRESH));
        found.insert(place, addrs);
    }
    Places {
        found,
        ask_again: Some(ask_again.max(MIN_REFRESH)),
    }
}

/// Asks DNS again whenever the answers run out, and hands each trunk its new
/// addresses (a change is one log line, and `moved` hears of it). Runs until
/// the PBX stops.
pub async fn keep_located(
    config: Config,
    env: Arc<Env>,
    first: Duration,
    moved: impl Fn(crate::outside::TrunkId),
) {
    let mut wait = first;
    loop {
        tokio::time::sleep(wait).await;
        let places = trunk_places(&config).await;
        for (i, (t, line)) in config.trunks.iter().zip(&env.outside.lines).enumerate() {
            let located = t.located(&|h, p, tr| places.get(h, p, tr));
            let addrs: Vec<String> = located.send_to.iter().map(|r| r.addr.to_string()).collect();
            let empty = located.send_to.is_empty();
            for ip in &located.from {
                env.guard.trust(*ip);
            }
            if line.targets.replace(located) {
                match empty {
                    true => tracing::warn!(trunk = %line.name, "trunk host no longer resolves"),
                    false => {
                        tracing::info!(trunk = %line.name, targets = %addrs.join(" "), "trunk host moved")
                    }
                }
                moved(crate::outside::TrunkId(i));
            }
        }
        wait = places.ask_again.unwrap_or(MAX_REFRESH);
    }
}

/// `records` (priority, weight, target) in the order RFC 2782 asks: lowest
/// priority first; within one priority, each next one drawn at random with a
/// chance proportional to its weight (zero-weight ones rarely first).
/// `draw(total)` gives a number in `0..=total`.
pub fn srv_order<T>(mut records: Vec<(u16, u16, T)>, mut draw: impl FnMut(u32) -> u32) -> Vec<T> {
    records.sort_by_key(|r| r.0);
    let mut out = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let priority = records[0].0;
        let n = records.iter().take_while(|r| r.0 == priority).count();
        let mut group: Vec<(u16, u16, T)> = records.drain(..n).collect();
        // Zero weights first, so a draw of 0 can pick them.
        group.sort_by_key(|r| r.1 != 0);
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.1)).sum();
            let pick = draw(total).min(total);
            let mut sum = 0;
            let i = group
                .iter()
                .position(|r| {
                    sum += u32::from(r.1);
                    sum >= pick
                })
                .unwrap_or(0);
            out.push(group.remove(i).2);
        }
    }
    out
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

    /// The addresses of `host`, best first, and how long they hold.
    async fn locate(
        &self,
        host: &str,
        port: Option<u16>,
        t: Transport,
    ) -> (Vec<SocketAddr>, Option<Duration>) {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return (
                vec![SocketAddr::new(ip, port.unwrap_or(SIP_PORT))],
                Some(MAX_REFRESH),
            );
        }
        if port.is_none() {
            let found = self.srv(host, t).await;
            if !found.0.is_empty() {
                return found;
            }
        }
        self.address(host, port.unwrap_or(SIP_PORT)).await
    }

    /// The addresses of the SRV targets of `_sip._udp.<host>` (or `_tcp`), in
    /// RFC 2782 order.
    async fn srv(&self, host: &str, t: Transport) -> (Vec<SocketAddr>, Option<Duration>) {
        let Some(resolver) = self.resolver.as_ref() else {
            return (Vec::new(), None);
        };
        let proto = t.as_str().to_ascii_lowercase();
        let name = format!("_sip._{proto}.{}.", host.trim_end_matches('.'));
        let lookup = match resolver.srv_lookup(name.as_str()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(%name, "no SRV records: {e}");
                return (Vec::new(), None);
            }
        };
        let mut ttl = ttl_of(lookup.as_lookup().valid_until());
        let records = lookup
            .iter()
            .map(|r| (r.priority(), r.weight(), (r.target().to_utf8(), r.port())))
            .collect();
        let ordered = srv_order(records, |total| rand::random_range(0..=total));
        let mut addrs = Vec::new();
        for (target, port) in ordered {
            let (found, t) = self.address(target.trim_end_matches('.'), port).await;
            ttl = ttl.min(t.unwrap_or(MIN_REFRESH));
            for a in found {
                if !addrs.contains(&a) {
                    addrs.push(a);
                }
            }
        }
        (addrs, Some(ttl))
    }

    async fn address(&self, host: &str, port: u16) -> (Vec<SocketAddr>, Option<Duration>) {
        match (&self.resolver, self.own_servers) {
            (Some(r), true) => match r.lookup_ip(format!("{host}.").as_str()).await {
                Ok(ips) => {
                    let ttl = ttl_of(ips.valid_until());
                    (
                        ips.iter().map(|ip| SocketAddr::new(ip, port)).collect(),
                        Some(ttl),
                    )
                }
                Err(_) => (Vec::new(), None),
            },
            _ => match tokio::net::lookup_host((host, port)).await {
                Ok(addrs) => (addrs.collect(), Some(DEFAULT_TTL)),
                Err(_) => (Vec::new(), None),
            },
        }
    }
}

fn ttl_of(valid_until: Instant) -> Duration {
    valid_until.saturating_duration_since(Instant::now())
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
            dns.locate("192.0.2.1", None, Transport::Udp).await.0,
            [([192, 0, 2, 1], 5060).into()]
        );
        assert_eq!(
            dns.locate("192.0.2.1", Some(5070), Transport::Tcp).await.0,
            [([192, 0, 2, 1], 5070).into()]
        );
    }

    #[test]
    fn srv_records_go_by_priority_then_by_weighted_draw() {
        let records = vec![
            (20, 0, "backup"),
            (10, 10, "a"),
            (10, 30, "b"),
            (10, 0, "z"),
        ];
        // Draws of 0 take the first in line (the zero weight), the highest
        // draw the last: within priority 10 only, the backup after them all.
        assert_eq!(srv_order(records.clone(), |_| 0), ["z", "a", "b", "backup"]);
        assert_eq!(
            srv_order(records.clone(), |total| total),
            ["b", "a", "z", "backup"]
        );
        // A draw of 15 of 40 falls into b's share (a holds 1..=10).
        let mut draws = vec![15, 0, 0, 0].into_iter();
        assert_eq!(
            srv_order(records, |_| draws.next().unwrap_or(0)),
            ["b", "z", "a", "backup"]
        );
    }

    #[test]
    fn srv_weights_share_the_first_place_in_proportion() {
        let mut firsts = HashMap::new();
        for _ in 0..4000 {
            let records = vec![(10, 10, "light"), (10, 30, "heavy")];
            let first = srv_order(records, |total| rand::random_range(0..=total))[0];
            *firsts.entry(first).or_insert(0) += 1;
        }
        let heavy = firsts.get("heavy").copied().unwrap_or(0);
        assert!((2700..3300).contains(&heavy), "heavy first {heavy} of 4000");
    }
}

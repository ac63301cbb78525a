//! Our own address toward a destination: the configured advertised address, or
//! the one the kernel would use to reach it, looked up once per destination and
//! kept (a lookup creates and connects a socket: far too slow per message).

use dashmap::DashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

/// Destinations remembered before the cache starts over (bounded memory when
/// many phones come and go).
const MAX_REMEMBERED: usize = 4096;

/// Our address toward destinations; cheap to share.
#[derive(Debug, Default)]
pub struct LocalAddrs {
    /// `advertise_ip` from the configuration: used for everything when set.
    fixed: Option<IpAddr>,
    toward: DashMap<IpAddr, IpAddr>,
    lookups: AtomicU64,
}

impl LocalAddrs {
    pub fn new(fixed: Option<IpAddr>) -> LocalAddrs {
        LocalAddrs {
            fixed,
            ..LocalAddrs::default()
        }
    }

    /// The configured advertised address, if any.
    pub fn advertised(&self) -> Option<IpAddr> {
        self.fixed
    }

    /// Our address toward `peer` (127.0.0.1 when the kernel knows no route).
    pub fn toward(&self, peer: SocketAddr) -> IpAddr {
        if let Some(ip) = self.fixed {
            return ip;
        }
        if let Some(ip) = self.toward.get(&peer.ip()) {
            return *ip;
        }
        let ip = self.lookup(peer).unwrap_or(IpAddr::from([127, 0, 0, 1]));
        if self.toward.len() >= MAX_REMEMBERED {
            self.toward.clear();
        }
        self.toward.insert(peer.ip(), ip);
        ip
    }

    /// How many times the kernel was asked.
    #[cfg(test)]
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// The local address the kernel would use to reach `peer` (no packet is sent).
    fn lookup(&self, peer: SocketAddr) -> Option<IpAddr> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let any: SocketAddr = if peer.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let s = std::net::UdpSocket::bind(any).ok()?;
        s.connect(peer).ok()?;
        s.local_addr().ok().map(|a| a.ip())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_toward_a_destination_is_looked_up_once() {
        let addrs = LocalAddrs::new(None);
        for port in 5060..5160 {
            let ip = addrs.toward(SocketAddr::from(([127, 0, 0, 1], port)));
            assert!(ip.is_loopback());
        }
        assert_eq!(
            addrs.lookups(),
            1,
            "one lookup for 100 messages to one host"
        );
        addrs.toward(SocketAddr::from(([127, 0, 0, 2], 5060)));
        assert_eq!(addrs.lookups(), 2);
    }

    #[test]
    fn an_advertised_address_needs_no_lookup() {
        let addrs = LocalAddrs::new(Some(IpAddr::from([192, 0, 2, 1])));
        assert_eq!(
            addrs.toward(SocketAddr::from(([127, 0, 0, 1], 1))),
            IpAddr::from([192, 0, 2, 1])
        );
        assert_eq!(addrs.lookups(), 0);
    }
}

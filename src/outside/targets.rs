//! Where a trunk is, as DNS last said (RFC 3263 §4): the addresses its
//! requests go to, in the order to try them, and the addresses its provider's
//! requests come from. Replaced whole when DNS is asked again (at the
//! records' TTL); read by every call and registration of the trunk.
//!
//! The target that answered last is preferred: the next call starts there
//! instead of waiting again for one that is down, until DNS is asked again
//! (then the order starts from its best target once more).

use crate::sip::Remote;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// One answer of DNS for a trunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Located {
    /// Where requests go (the outbound proxy's or the provider's addresses),
    /// best first.
    pub send_to: Vec<Remote>,
    /// Where the provider's requests come from (its own addresses, and the
    /// proxy's).
    pub from: Vec<IpAddr>,
}

/// A trunk's current [`Located`], shared.
#[derive(Debug, Default)]
pub struct Targets {
    located: RwLock<Arc<Located>>,
    /// The index in `send_to` that answered last.
    preferred: AtomicUsize,
}

impl Targets {
    pub fn new(located: Located) -> Targets {
        Targets {
            located: RwLock::new(Arc::new(located)),
            preferred: AtomicUsize::new(0),
        }
    }

    pub fn get(&self) -> Arc<Located> {
        let guard = self.located.read().unwrap_or_else(|p| p.into_inner());
        Arc::clone(&guard)
    }

    /// DNS answered again: `located` replaces what was known, and the order
    /// starts from its best target. Returns whether anything changed.
    pub fn replace(&self, located: Located) -> bool {
        let mut guard = self.located.write().unwrap_or_else(|p| p.into_inner());
        self.preferred.store(0, Ordering::Release);
        let changed = **guard != located;
        *guard = Arc::new(located);
        changed
    }

    /// The targets in the order to try them now: from the preferred one on,
    /// round to the ones before it.
    pub fn in_order(&self) -> Vec<Remote> {
        let located = self.get();
        let n = located.send_to.len();
        let first = self.preferred.load(Ordering::Acquire);
        (0..n).map(|i| located.send_to[(first + i) % n]).collect()
    }

    /// `remote` answered: later requests start there.
    pub fn answered(&self, remote: Remote) {
        if let Some((i, _)) = self.position(remote) {
            self.preferred.store(i, Ordering::Release);
        }
    }

    /// `remote` failed (no answer, 503): if it was the preferred target, the
    /// next one is preferred now.
    pub fn failed(&self, remote: Remote) {
        if let Some((i, n)) = self.position(remote) {
            let next = (i + 1) % n;
            let _ = self
                .preferred
                .compare_exchange(i, next, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Where `remote` is among the targets, and how many there are.
    fn position(&self, remote: Remote) -> Option<(usize, usize)> {
        let located = self.get();
        let same = |r: &Remote| r.addr == remote.addr && r.transport == remote.transport;
        let i = located.send_to.iter().position(same)?;
        Some((i, located.send_to.len()))
    }

    /// Whether the provider's requests may come from `ip`.
    pub fn sends_from(&self, ip: IpAddr) -> bool {
        self.get().from.contains(&ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(s: &str) -> Remote {
        Remote::udp(s.parse().expect("addr"))
    }

    fn two() -> Targets {
        Targets::new(Located {
            send_to: vec![remote("192.0.2.1:5060"), remote("192.0.2.2:5060")],
            from: vec![[192, 0, 2, 1].into(), [192, 0, 2, 2].into()],
        })
    }

    #[test]
    fn the_target_that_answered_last_comes_first_until_dns_answers_again() {
        let t = two();
        assert_eq!(
            t.in_order(),
            [remote("192.0.2.1:5060"), remote("192.0.2.2:5060")]
        );
        t.answered(remote("192.0.2.2:5060"));
        assert_eq!(
            t.in_order(),
            [remote("192.0.2.2:5060"), remote("192.0.2.1:5060")]
        );
        t.failed(remote("192.0.2.2:5060"));
        assert_eq!(t.in_order()[0], remote("192.0.2.1:5060"), "the next one");
        t.failed(remote("192.0.2.2:5060"));
        assert_eq!(
            t.in_order()[0],
            remote("192.0.2.1:5060"),
            "not preferred: no change"
        );
        t.answered(remote("192.0.2.2:5060"));
        // An address DNS no longer gives changes nothing.
        t.answered(remote("192.0.2.9:5060"));
        assert_eq!(t.in_order()[0], remote("192.0.2.2:5060"));
        let same = t.get().as_ref().clone();
        assert!(!t.replace(same), "the same answer");
        assert_eq!(
            t.in_order()[0],
            remote("192.0.2.1:5060"),
            "best first again"
        );
    }

    #[test]
    fn a_new_dns_answer_replaces_the_targets_and_the_sources() {
        let t = two();
        assert!(t.sends_from([192, 0, 2, 2].into()));
        let moved = Located {
            send_to: vec![remote("198.51.100.7:5080")],
            from: vec![[198, 51, 100, 7].into()],
        };
        assert!(t.replace(moved));
        assert_eq!(t.in_order(), [remote("198.51.100.7:5080")]);
        assert!(!t.sends_from([192, 0, 2, 2].into()));
        assert!(t.sends_from([198, 51, 100, 7].into()));
        assert!(Targets::default().in_order().is_empty(), "nothing resolved");
    }
}

//! The guard: who may talk to the PBX. A PBX on a public address is scanned
//! and has its passwords guessed within minutes; the guard
//!
//! - limits each source address's request rate (a token bucket: `rate` a
//!   second, `burst` at once) and bans a source that exceeds it;
//! - counts failed authentications (a wrong password, an unknown user) per
//!   source and per user in a sliding window, and bans a source after
//!   `max_auth_failures`; a user guessed at from many sources is locked for
//!   every address that has not authenticated as them before (their own
//!   phones keep working);
//! - never limits the allow-listed networks (the office's own), nor the
//!   addresses trusted at run time (the trunks' providers, as DNS and their
//!   registrations show them: a busy carrier sends many requests from one
//!   address);
//! - writes one security log line per event (see [`SECURITY`]).
//!
//! A ban is answered with nothing ([`Admit::Drop`]: a scanner learns nothing
//! and costs us no more than a lookup), except for an address that
//! authenticated successfully within the last hour — a real phone, perhaps
//! behind the attacker's NAT, or one with a stale password — which gets 503
//! with Retry-After ([`Admit::Refuse`]) so it backs off instead of
//! retransmitting into silence.
//!
//! Shared by the UDP/TCP edge (every datagram asks [`Guard::admit`]) and the
//! shards (which report authentications); sans-IO: every input carries `now`.

use crate::sip::auth::Verdict;
use dashmap::DashMap;
use ipnet::IpNet;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The tracing target of security events: each line reads
/// `SECURITY <event> source=<ip> …` (events: `auth-failed`, `ban`, `lift`,
/// `user-locked`, and `toll-denied` from the outside line's fraud guard), the
/// form `conf/fail2ban/sipdesk.conf` matches.
pub const SECURITY: &str = "sipdesk::security";

/// How long a successful authentication makes an address "known".
const KNOWN_FOR: Duration = Duration::from_secs(3600);

/// Sources tracked at most (a flood from spoofed addresses cannot grow memory
/// without bound; beyond, new sources are tracked only once old ones age out).
const MAX_SOURCES: usize = 100_000;

/// Addresses trusted at run time, at most.
const MAX_TRUSTED: usize = 1024;

/// The rules (`[security]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Never limited or banned.
    pub allow: Vec<IpNet>,
    /// Requests a second one source may send, sustained.
    pub rate: u32,
    /// Requests one source may send at once.
    pub burst: u32,
    /// Failed authentications in `window` before a ban (or a user's lock).
    pub max_auth_failures: u32,
    pub window: Duration,
    /// How long a ban (or a lock) lasts.
    pub ban: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allow: Vec::new(),
            rate: 200,
            burst: 600,
            max_auth_failures: 10,
            window: Duration::from_secs(60),
            ban: Duration::from_secs(600),
        }
    }
}

/// What the edge does with a datagram from a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Pass,
    /// Banned: no answer at all.
    Drop,
    /// Banned, but a known phone's address: requests get 503 + Retry-After
    /// (the ban's remaining seconds); responses still pass.
    Refuse {
        retry_after: u64,
    },
}

/// Why a source was banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Rate,
    AuthFailures,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Rate => "rate",
            Reason::AuthFailures => "auth-failures",
        }
    }
}

#[derive(Debug)]
struct Source {
    tokens: f64,
    refilled: Instant,
    failures: VecDeque<Instant>,
    banned_until: Option<Instant>,
    /// When it last authenticated successfully.
    known_at: Option<Instant>,
    seen: Instant,
}

#[derive(Debug, Default)]
struct User {
    failures: VecDeque<Instant>,
    locked_until: Option<Instant>,
    /// Addresses that authenticated as this user (they stay allowed in a lock).
    own: Vec<IpAddr>,
}

/// Counters for `/metrics` and the benchmarks.
#[derive(Debug, Default)]
pub struct GuardStats {
    pub dropped: AtomicU64,
    pub refused: AtomicU64,
    pub bans: AtomicU64,
    pub auth_failures: AtomicU64,
}

/// The shared guard; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    policy: Arc<Policy>,
    sources: Arc<DashMap<IpAddr, Source>>,
    users: Arc<DashMap<String, User>>,
    /// Trusted at run time (trunk providers); `trusting` is false while empty,
    /// so a datagram costs no lookup here.
    trusted: Arc<dashmap::DashSet<IpAddr>>,
    trusting: Arc<std::sync::atomic::AtomicBool>,
    pub stats: Arc<GuardStats>,
}

/// Drops the failures older than the window.
fn expire(failures: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while failures
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= window)
    {
        failures.pop_front();
    }
}

impl Guard {
    pub fn new(policy: Policy) -> Guard {
        Guard {
            policy: Arc::new(policy),
            ..Guard::default()
        }
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        self.policy.allow.iter().any(|n| n.contains(&ip))
            || (self.trusting.load(Ordering::Relaxed) && self.trusted.contains(&ip))
    }

    /// From now on `ip` (a trunk's provider) is never limited or banned; a
    /// ban it had is lifted. `false` when it was trusted already (or the
    /// trusted set is full).
    pub fn trust(&self, ip: IpAddr) -> bool {
        if self.trusted.len() >= MAX_TRUSTED || !self.trusted.insert(ip) {
            return false;
        }
        self.trusting.store(true, Ordering::Relaxed);
        self.sources.remove(&ip);
        true
    }

    fn source(
        &self,
        now: Instant,
        ip: IpAddr,
    ) -> Option<dashmap::mapref::one::RefMut<'_, IpAddr, Source>> {
        if !self.sources.contains_key(&ip) && self.sources.len() >= MAX_SOURCES {
            return None;
        }
        Some(self.sources.entry(ip).or_insert_with(|| Source {
            tokens: f64::from(self.policy.burst),
            refilled: now,
            failures: VecDeque::new(),
            banned_until: None,
            known_at: None,
            seen: now,
        }))
    }

    /// A datagram from `ip` arrived (`request`: it is a request, not a
    /// response): pass it, drop it, or refuse it.
    pub fn admit(&self, now: Instant, ip: IpAddr, request: bool) -> Admit {
        if self.allowed(ip) {
            return Admit::Pass;
        }
        let Some(mut s) = self.source(now, ip) else {
            return Admit::Pass;
        };
        s.seen = now;
        if let Some(until) = s.banned_until {
            if now < until {
                let known = s
                    .known_at
                    .is_some_and(|t| now.saturating_duration_since(t) < KNOWN_FOR);
                return match (known, request) {
                    (true, false) => Admit::Pass,
                    (true, true) => {
                        self.stats.refused.fetch_add(1, Ordering::Relaxed);
                        Admit::Refuse {
                            retry_after: until.saturating_duration_since(now).as_secs().max(1),
                        }
                    }
                    (false, _) => {
                        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        Admit::Drop
                    }
                };
            }
            s.banned_until = None;
            tracing::warn!(target: SECURITY, "SECURITY lift source={ip}");
        }
        if !request {
            return Admit::Pass;
        }
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        let burst = f64::from(self.policy.burst);
        s.tokens = (s.tokens + elapsed * f64::from(self.policy.rate)).min(burst);
        s.refilled = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            return Admit::Pass;
        }
        self.ban(&mut s, now, ip, Reason::Rate);
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        Admit::Drop
    }

    fn ban(&self, s: &mut Source, now: Instant, ip: IpAddr, reason: Reason) {
        s.banned_until = Some(now + self.policy.ban);
        s.failures.clear();
        self.stats.bans.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            target: SECURITY,
            "SECURITY ban source={ip} reason={} secs={}",
            reason.as_str(),
            self.policy.ban.as_secs()
        );
    }

    /// A request from `ip` carried credentials that failed (`user`: the name
    /// they claimed, if any). Logged; the source is banned after too many.
    pub fn auth_failed(&self, now: Instant, ip: IpAddr, user: Option<&str>, method: &str) {
        self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        let shown = user.map_or_else(|| "-".to_string(), sanitize);
        tracing::warn!(target: SECURITY, "SECURITY auth-failed source={ip} user={shown} method={method}");
        let policy = &self.policy;
        if let Some(user) = user {
            let mut u = self.users.entry(user.to_string()).or_default();
            expire(&mut u.failures, now, policy.window);
            u.failures.push_back(now);
            let locked = u.locked_until.is_some_and(|t| now < t);
            if !locked && u.failures.len() >= policy.max_auth_failures as usize {
                u.locked_until = Some(now + policy.ban);
                u.failures.clear();
                tracing::warn!(
                    target: SECURITY,
                    "SECURITY user-locked source={ip} user={shown} secs={}",
                    policy.ban.as_secs()
                );
            }
        }
        if self.allowed(ip) {
            return;
        }
        let Some(mut s) = self.source(now, ip) else {
            return;
        };
        expire(&mut s.failures, now, policy.window);
        s.failures.push_back(now);
        if s.failures.len() >= policy.max_auth_failures as usize {
            self.ban(&mut s, now, ip, Reason::AuthFailures);
        }
    }

    /// `ip` authenticated as `user`: whether it may (a locked user only from
    /// addresses that authenticated as them before the lock). Allowed ones
    /// become known addresses.
    pub fn auth_ok(&self, now: Instant, ip: IpAddr, user: &str) -> bool {
        let mut u = self.users.entry(user.to_string()).or_default();
        let own = u.own.contains(&ip);
        if u.locked_until.is_some_and(|t| now < t) && !own {
            tracing::warn!(target: SECURITY, "SECURITY auth-failed source={ip} user={} method=locked", sanitize(user));
            return false;
        }
        if !own {
            if u.own.len() >= 16 {
                u.own.remove(0);
            }
            u.own.push(ip);
        }
        drop(u);
        if let Some(mut s) = self.source(now, ip) {
            s.known_at = Some(now);
        }
        true
    }

    /// An authentication's verdict as the guard sees it: a failure is
    /// counted (and may ban `ip`); a success for a locked user from an address
    /// not theirs becomes a failure.
    pub fn verdict(&self, now: Instant, ip: IpAddr, method: &str, v: Verdict) -> Verdict {
        match v {
            Verdict::Authenticated(user) if !self.auth_ok(now, ip, &user) => {
                Verdict::Forbidden { user: Some(user) }
            }
            Verdict::Forbidden { user } => {
                self.auth_failed(now, ip, user.as_deref(), method);
                Verdict::Forbidden { user }
            }
            v => v,
        }
    }

    /// Forgets what no longer matters: sources idle for a window and unbanned,
    /// users with nothing recent. Returns how many sources are tracked.
    pub fn sweep(&self, now: Instant) -> usize {
        let window = self.policy.window.max(KNOWN_FOR);
        self.sources.retain(|ip, s| {
            if s.banned_until.is_some_and(|t| now >= t) {
                s.banned_until = None;
                tracing::warn!(target: SECURITY, "SECURITY lift source={ip}");
            }
            s.banned_until.is_some() || now.saturating_duration_since(s.seen) < window
        });
        self.users.retain(|_, u| {
            expire(&mut u.failures, now, self.policy.window);
            let locked = u.locked_until.is_some_and(|t| now < t);
            locked || !u.failures.is_empty() || !u.own.is_empty()
        });
        self.sources.len()
    }

    /// Whether `ip` is banned right now.
    #[cfg(test)]
    fn banned(&self, now: Instant, ip: IpAddr) -> bool {
        self.sources
            .get(&ip)
            .and_then(|s| s.banned_until)
            .is_some_and(|t| now < t)
    }
}

/// A claimed user name as it may appear in a log line: printable ASCII
/// without spaces or `=`, at most 64 characters (an attacker cannot forge
/// another field or line).
pub(crate) fn sanitize(user: &str) -> String {
    user.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_graphic() && c != '=' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            allow: vec!["10.0.0.0/8".parse().expect("net")],
            rate: 10,
            burst: 20,
            max_auth_failures: 3,
            window: Duration::from_secs(60),
            ban: Duration::from_secs(600),
        }
    }

    const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9));
    const PHONE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));

    #[test]
    fn a_source_over_its_rate_is_banned_and_dropped_until_the_ban_ends() {
        let g = Guard::new(policy());
        let t0 = Instant::now();
        let passed = (0..25)
            .filter(|_| g.admit(t0, ATTACKER, true) == Admit::Pass)
            .count();
        assert_eq!(passed, 20, "the burst");
        assert!(g.banned(t0, ATTACKER));
        // Banned: even at a slow pace, and responses too, nothing passes.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(g.admit(later, ATTACKER, true), Admit::Drop);
        assert_eq!(g.admit(later, ATTACKER, false), Admit::Drop);
        let after = t0 + Duration::from_secs(601);
        assert_eq!(g.admit(after, ATTACKER, true), Admit::Pass, "lifted");
        // The allow-listed office network is never limited.
        let office: IpAddr = "10.1.2.3".parse().expect("ip");
        assert!((0..1000).all(|_| g.admit(t0, office, true) == Admit::Pass));
        // A steady 10 a second passes forever.
        let g = Guard::new(policy());
        assert!((0..200)
            .all(|i| g.admit(t0 + Duration::from_millis(100 * i), PHONE, true) == Admit::Pass));
    }

    #[test]
    fn a_trusted_provider_address_is_never_limited_and_its_ban_is_lifted() {
        let g = Guard::new(policy());
        let t0 = Instant::now();
        while g.admit(t0, ATTACKER, true) == Admit::Pass {}
        assert_eq!(g.admit(t0, ATTACKER, true), Admit::Drop, "banned");
        assert!(g.trust(ATTACKER));
        assert!(!g.trust(ATTACKER), "once");
        assert!((0..1000).all(|_| g.admit(t0, ATTACKER, true) == Admit::Pass));
        assert!(!g.banned(t0, ATTACKER));
    }

    #[test]
    fn failed_authentications_ban_the_source_and_a_known_phone_is_refused_not_dropped() {
        let g = Guard::new(policy());
        let t0 = Instant::now();
        assert!(g.auth_ok(t0, PHONE, "201"));
        for i in 0..3 {
            assert!(!g.banned(t0, PHONE), "{i}");
            g.auth_failed(t0 + Duration::from_secs(i), PHONE, Some("202"), "REGISTER");
        }
        assert!(g.banned(t0, PHONE));
        assert_eq!(
            g.admit(t0 + Duration::from_secs(10), PHONE, true),
            Admit::Refuse { retry_after: 592 },
            "a known phone's address: 503, not silence"
        );
        assert_eq!(g.admit(t0, PHONE, false), Admit::Pass, "its responses pass");
        // Failures spread wider than the window do not add up.
        let g = Guard::new(policy());
        for i in 0..10 {
            g.auth_failed(t0 + Duration::from_secs(31 * i), ATTACKER, None, "INVITE");
        }
        assert!(!g.banned(t0 + Duration::from_secs(310), ATTACKER));
    }

    #[test]
    fn a_user_guessed_at_from_many_sources_is_locked_except_for_its_own_phones() {
        let g = Guard::new(policy());
        let t0 = Instant::now();
        assert!(g.auth_ok(t0, PHONE, "201"));
        for i in 0..3u8 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, i));
            g.auth_failed(t0, ip, Some("201"), "REGISTER");
        }
        let guesser = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 50));
        assert!(!g.auth_ok(t0, guesser, "201"), "even the right password");
        assert!(g.auth_ok(t0, PHONE, "201"), "the user's own phone");
        assert!(
            g.auth_ok(t0 + Duration::from_secs(601), guesser, "201"),
            "lock over"
        );
    }

    #[test]
    fn idle_sources_are_forgotten_and_claimed_names_cannot_forge_log_fields() {
        let g = Guard::new(policy());
        let t0 = Instant::now();
        g.admit(t0, PHONE, true);
        g.auth_failed(t0, ATTACKER, Some("x"), "REGISTER");
        assert_eq!(g.sweep(t0 + Duration::from_secs(30)), 2);
        assert_eq!(g.sweep(t0 + Duration::from_secs(3601)), 0);
        assert_eq!(sanitize("a b=c\nSECURITY ban"), "a?b?c?SECURITY?ban");
    }
}

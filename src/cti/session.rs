//! Who is logged in to the desk: session tokens and the login guard. Sans-IO:
//! every input carries `now`; the HTTP layer holds these behind one lock each
//! and never across an `.await`.
//!
//! A token is 256 random bits, shown once to its owner (a cookie for the
//! browser, a bearer token for tools) and kept here only in memory: a restart
//! logs everybody out, which is what a PBX restart should do.

use serde::Serialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// What a logged-in user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Acts only as themself.
    Agent,
    /// Sees every agent and queue, and may set any agent's state.
    Supervisor,
}

/// A session token (hex of 32 random bytes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Token(String);

impl Token {
    fn new() -> Token {
        let raw: [u8; 32] = rand::random();
        Token(hex::encode(raw))
    }
    pub fn parse(s: &str) -> Option<Token> {
        (s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit())).then(|| Token(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One logged-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub extension: String,
    pub role: Role,
    pub expires: Instant,
}

/// Sessions one extension may hold at once (browsers, tools, phones' apps).
pub const MAX_PER_EXTENSION: usize = 16;

/// The live sessions.
#[derive(Debug)]
pub struct Sessions {
    ttl: Duration,
    map: HashMap<Token, Session>,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl,
            map: HashMap::new(),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new session for a user whose password was just verified; beyond
    /// [`MAX_PER_EXTENSION`] of theirs, the one renewed longest ago ends.
    pub fn open(&mut self, now: Instant, extension: &str, role: Role) -> (Token, Session) {
        self.purge(now);
        let mut theirs: Vec<(Instant, Token)> = self
            .map
            .iter()
            .filter(|(_, s)| s.extension == extension)
            .map(|(t, s)| (s.expires, t.clone()))
            .collect();
        if theirs.len() >= MAX_PER_EXTENSION {
            theirs.sort_by_key(|(expires, _)| *expires);
            for (_, t) in &theirs[..=theirs.len() - MAX_PER_EXTENSION] {
                self.map.remove(t);
            }
        }
        let session = Session {
            extension: extension.to_string(),
            role,
            expires: now + self.ttl,
        };
        let token = Token::new();
        self.map.insert(token.clone(), session.clone());
        (token, session)
    }

    /// The session of a token, if it is live.
    pub fn check(&self, now: Instant, token: &Token) -> Option<Session> {
        self.map.get(token).filter(|s| s.expires > now).cloned()
    }

    /// Extends a live session by the full lifetime: the same token goes on
    /// working (an open event stream is not dropped).
    pub fn renew(&mut self, now: Instant, token: &Token) -> Option<Session> {
        let ttl = self.ttl;
        let s = self.map.get_mut(token).filter(|s| s.expires > now)?;
        s.expires = now + ttl;
        Some(s.clone())
    }

    pub fn close(&mut self, token: &Token) {
        self.map.remove(token);
    }

    fn purge(&mut self, now: Instant) {
        self.map.retain(|_, s| s.expires > now);
    }
}

/// Login failures within this window count together.
const WINDOW: Duration = Duration::from_secs(300);
/// From this many failures on, each further attempt waits a second first.
const SLOW_AFTER: u32 = 3;
/// At this many failures the source (or the extension) is blocked.
const BLOCK_AT: u32 = 10;
const BLOCK_FOR: Duration = Duration::from_secs(900);
/// Most sources and extensions tracked (a spray of addresses cannot grow it
/// without bound; the oldest records go first).
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first: Instant,
    blocked_until: Option<Instant>,
}

impl Failures {
    /// Still counts: blocking, or failures within the window (an ended block
    /// starts over).
    fn live(&self, now: Instant) -> bool {
        match self.blocked_until {
            Some(until) => until > now,
            None => now.saturating_duration_since(self.first) < WINDOW,
        }
    }
}

/// What the guard says about a login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go ahead.
    Now,
    /// Go ahead after this pause (recent failures).
    After(Duration),
    /// Refused for this long.
    Blocked(Duration),
}

/// Rate limit on logins, per source address and per extension: failures slow
/// further attempts down, then block them for a while.
#[derive(Debug, Default)]
pub struct LoginGuard {
    by_source: HashMap<IpAddr, Failures>,
    by_extension: HashMap<String, Failures>,
}

impl LoginGuard {
    pub fn admit(&self, now: Instant, source: IpAddr, extension: &str) -> Admit {
        let worst = [
            self.by_source.get(&source),
            self.by_extension.get(extension),
        ]
        .into_iter()
        .flatten()
        .filter(|f| f.live(now))
        .map(|f| (f.count, f.blocked_until))
        .fold((0, None), |(c, b), (fc, fb)| (c.max(fc), b.max(fb)));
        match worst {
            (_, Some(until)) if until > now => Admit::Blocked(until - now),
            (count, _) if count >= SLOW_AFTER => Admit::After(Duration::from_secs(1)),
            _ => Admit::Now,
        }
    }

    /// A wrong password (or unknown extension); true when this failure blocks.
    pub fn failed(&mut self, now: Instant, source: IpAddr, extension: &str) -> bool {
        let a = note(&mut self.by_source, source, now);
        let b = note(&mut self.by_extension, extension.to_string(), now);
        a || b
    }

    /// A good password clears the extension's and the source's record.
    pub fn succeeded(&mut self, source: IpAddr, extension: &str) {
        self.by_source.remove(&source);
        self.by_extension.remove(extension);
    }
}

fn note<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Failures>, key: K, now: Instant) -> bool {
    if map.len() >= MAX_TRACKED {
        map.retain(|_, f| f.live(now));
    }
    let f = map.entry(key).or_insert(Failures {
        count: 0,
        first: now,
        blocked_until: None,
    });
    if !f.live(now) {
        *f = Failures {
            count: 0,
            first: now,
            blocked_until: None,
        };
    }
    f.count += 1;
    if f.count >= BLOCK_AT && f.blocked_until.is_none() {
        f.blocked_until = Some(now + BLOCK_FOR);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn a_session_lives_its_ttl_and_renewal_extends_the_same_token() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(60));
        let (token, session) = s.open(t0, "201", Role::Agent);
        assert_eq!(session.expires, t0 + Duration::from_secs(60));
        assert!(s.check(t0 + Duration::from_secs(59), &token).is_some());
        let renewed = s.renew(t0 + Duration::from_secs(50), &token).expect("live");
        assert_eq!(renewed.expires, t0 + Duration::from_secs(110));
        assert!(s.check(t0 + Duration::from_secs(100), &token).is_some());
        assert!(s.check(t0 + Duration::from_secs(110), &token).is_none());
        assert!(
            s.renew(t0 + Duration::from_secs(111), &token).is_none(),
            "too late"
        );
    }

    #[test]
    fn an_extension_holds_at_most_sixteen_sessions_and_the_stalest_goes() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(60));
        let tokens: Vec<Token> = (0..MAX_PER_EXTENSION as u64)
            .map(|i| s.open(t0 + Duration::from_secs(i), "201", Role::Agent).0)
            .collect();
        let other = s.open(t0, "202", Role::Agent).0;
        let newest = s.open(t0 + Duration::from_secs(30), "201", Role::Agent).0;
        let now = t0 + Duration::from_secs(31);
        assert!(s.check(now, &tokens[0]).is_none(), "the stalest one ended");
        assert!(tokens[1..].iter().all(|t| s.check(now, t).is_some()));
        assert!(s.check(now, &newest).is_some() && s.check(now, &other).is_some());
    }

    #[test]
    fn a_forged_or_closed_token_is_no_session() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(60));
        let (token, _) = s.open(t0, "201", Role::Supervisor);
        assert!(s.check(t0, &Token::new()).is_none());
        assert!(Token::parse("not hex").is_none());
        s.close(&token);
        assert!(s.check(t0, &token).is_none());
    }

    #[test]
    fn failures_slow_down_then_block_the_source_and_the_extension() {
        let t0 = Instant::now();
        let mut g = LoginGuard::default();
        for _ in 0..SLOW_AFTER {
            assert_eq!(g.admit(t0, ip(1), "201"), Admit::Now);
            assert!(!g.failed(t0, ip(1), "201"));
        }
        assert_eq!(
            g.admit(t0, ip(1), "201"),
            Admit::After(Duration::from_secs(1))
        );
        for _ in SLOW_AFTER..BLOCK_AT - 1 {
            assert!(!g.failed(t0, ip(1), "201"));
        }
        assert!(g.failed(t0, ip(1), "201"), "the tenth failure blocks");
        assert_eq!(
            g.admit(t0, ip(1), "202"),
            Admit::Blocked(BLOCK_FOR),
            "the source"
        );
        assert_eq!(
            g.admit(t0, ip(2), "201"),
            Admit::Blocked(BLOCK_FOR),
            "the extension"
        );
        assert_eq!(
            g.admit(t0, ip(2), "202"),
            Admit::Now,
            "others are not affected"
        );
        assert_eq!(
            g.admit(t0 + BLOCK_FOR, ip(1), "201"),
            Admit::Now,
            "blocks end"
        );
    }

    #[test]
    fn a_block_outlasts_the_failure_window() {
        let t0 = Instant::now();
        let mut g = LoginGuard::default();
        for _ in 0..BLOCK_AT {
            g.failed(t0, ip(1), "201");
        }
        let later = t0 + WINDOW + Duration::from_secs(1);
        assert!(!g.failed(later, ip(1), "201"), "a failure while blocked");
        assert_eq!(
            g.admit(later, ip(1), "201"),
            Admit::Blocked(BLOCK_FOR - WINDOW - Duration::from_secs(1))
        );
    }

    #[test]
    fn a_good_password_clears_the_record_and_old_failures_are_forgotten() {
        let t0 = Instant::now();
        let mut g = LoginGuard::default();
        for _ in 0..SLOW_AFTER {
            g.failed(t0, ip(1), "201");
        }
        assert_eq!(
            g.admit(t0 + WINDOW, ip(1), "201"),
            Admit::Now,
            "window passed"
        );
        g.succeeded(ip(1), "201");
        assert_eq!(g.admit(t0, ip(1), "201"), Admit::Now);
    }
}

//! Trunks: the PBX's connections to SIP providers. This part is registration:
//! for each trunk that registers, sipdesk is a UAC (RFC 3261 §10) — it sends
//! REGISTER, answers the provider's 401/407 digest challenge, refreshes at
//! three quarters of the granted expiry, takes a 423's Min-Expires, and when
//! the provider is unreachable or refuses retries with a backoff (5 s doubling
//! to 5 minutes), never in a tight loop. A provider with several addresses
//! (DNS SRV, RFC 3263 §4.3) is tried at the next one at once when one sends
//! nothing or 503; the backoff starts when none is left. Each change of a trunk's status is
//! one log line, and the status is shared ([`Board`]) for the API and
//! `/metrics`.
//!
//! A transaction user of shard 0 (its Call-IDs hash there): it acts only
//! through its [`Cx`].

use crate::outside::TrunkId;
use crate::sip::message::{build::random_tag, Auth, Builder, HeaderName, Message, Method};
use crate::sip::{CallId, Remote};
use crate::tu::ReqId;
use dashmap::DashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The context of a trunk input.
pub(crate) type Cx<'a> = crate::tu::Cx<'a, Timer>;

/// A trunk's registration timer (refresh or retry), by the trunk's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timer(pub usize);

/// The first retry after a failure; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A trunk that registers, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub name: String,
    /// The trunk (its targets are where REGISTERs go: the provider, or its
    /// outbound proxy).
    pub trunk: TrunkId,
    /// The provider's domain: the Request-URI and the account's AOR.
    pub domain: String,
    pub username: String,
    pub auth_username: String,
    pub password: String,
    /// The expiry asked for.
    pub expires: u32,
    /// The secret `line` parameter of our Contact: the provider's INVITEs
    /// to it are known as this trunk's wherever they come from.
    pub line: String,
}

/// A trunk's registration, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Status {
    Registering,
    Up { expires_in_secs: u32 },
    Down { reason: String },
}

/// Every trunk's status (shared: shard 0 writes, the desk reads).
#[derive(Debug, Clone, Default)]
pub struct Board(Arc<DashMap<String, Status>>);

impl Board {
    /// Whether any trunk is registered now.
    pub fn any_up(&self) -> bool {
        self.0
            .iter()
            .any(|e| matches!(e.value(), Status::Up { .. }))
    }

    /// Every trunk's status, by name.
    pub fn all(&self) -> Vec<(String, Status)> {
        let mut v: Vec<_> = self
            .0
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// One trunk's registration dialog state.
#[derive(Debug)]
struct Registration {
    spec: Spec,
    call_id: CallId,
    tag: String,
    cseq: u32,
    /// The expiry asked for now (a 423 raises it).
    expires: u32,
    /// Our REGISTER in flight, and whether it answered a challenge.
    in_flight: Option<(ReqId, bool)>,
    /// Where the REGISTER in flight went.
    sent_to: Option<Remote>,
    /// Where the registration was last accepted.
    bound_to: Option<Remote>,
    /// Targets that failed in a row this round (each next one is tried at once).
    targets_failed: usize,
    /// Failures in a row (the backoff doubles with each).
    failures: u32,
    /// When the timer is armed for (a stale firing is ignored).
    timer_at: Option<Instant>,
}

/// The registrations of shard 0's trunks.
#[derive(Debug, Default)]
pub struct Trunks {
    regs: Vec<Registration>,
    board: Board,
    /// The PBX is stopping: registrations are removed (Expires: 0), never
    /// refreshed or retried.
    stopping: bool,
}

impl Trunks {
    pub fn new(specs: &[Spec], board: Board) -> Trunks {
        let regs = specs
            .iter()
            .map(|spec| Registration {
                expires: spec.expires,
                spec: spec.clone(),
                call_id: CallId::from(format!("{}@trunk", random_tag())),
                tag: random_tag(),
                cseq: 0,
                in_flight: None,
                sent_to: None,
                bound_to: None,
                targets_failed: 0,
                failures: 0,
                timer_at: None,
            })
            .collect();
        Trunks {
            regs,
            board,
            stopping: false,
        }
    }

    /// The shard started: every trunk registers.
    pub fn on_start(&mut self, cx: &mut Cx<'_>) {
        for i in 0..self.regs.len() {
            // Our Call-IDs must come back to this shard.
            self.regs[i].call_id = cx.new_call_id();
            self.set(cx, i, Status::Registering);
            self.register(cx, i, None);
        }
    }

    fn set(&self, cx: &Cx<'_>, i: usize, status: Status) {
        let name = &self.regs[i].spec.name;
        if let Some(t) = cx.env.outside.trunk_named(name) {
            cx.env
                .outside
                .set_up(t, !matches!(status, Status::Down { .. }));
        }
        let old = self.board.0.insert(name.clone(), status.clone());
        let changed = !matches!(
            (&old, &status),
            (Some(Status::Up { .. }), Status::Up { .. })
        ) && old.as_ref() != Some(&status);
        if changed {
            match &status {
                Status::Up { expires_in_secs } => {
                    tracing::info!(trunk = %name, expires_in_secs, "trunk up: registered")
                }
                Status::Down { reason } => tracing::warn!(trunk = %name, %reason, "trunk down"),
                Status::Registering => tracing::info!(trunk = %name, "trunk registering"),
            }
        }
    }

    /// Sends trunk `i`'s REGISTER (with `authorization`: a challenge's answer).
    fn register(&mut self, cx: &mut Cx<'_>, i: usize, authorization: Option<(&str, String)>) {
        let line = cx.env.outside.line(self.regs[i].spec.trunk);
        let Some(remote) = line.targets.in_order().first().copied() else {
            return self.failed(cx, i, "its host does not resolve".into());
        };
        let r = &mut self.regs[i];
        let expires = if self.stopping { 0 } else { r.expires };
        r.cseq += 1;
        let (user, domain) = (&r.spec.username, &r.spec.domain);
        let mut b = Builder::request(&Method::Register, format!("sip:{domain}").as_bytes());
        b.header("Via", cx.via(remote))
            .header("Max-Forwards", "70")
            .header("From", format!("<sip:{user}@{domain}>;tag={}", r.tag))
            .header("To", format!("<sip:{user}@{domain}>"))
            .header("Call-ID", r.call_id.to_string())
            .header("CSeq", format!("{} REGISTER", r.cseq))
            .header(
                "Contact",
                format!(
                    "<sip:{user}@{};transport={};line={}>",
                    cx.hostport(remote),
                    remote.transport.as_str().to_ascii_lowercase(),
                    r.spec.line
                ),
            )
            .header("Expires", expires.to_string())
            .header("User-Agent", crate::sip::message::build::PRODUCT);
        let answered = authorization.is_some();
        if let Some((name, value)) = authorization {
            b.header(name, value);
        }
        let id = cx.send(b.finish(), remote);
        r.in_flight = Some((id, answered));
        r.sent_to = Some(remote);
    }

    /// The answer to one of our REGISTERs (`None`: it timed out or was not sent).
    pub fn on_response(&mut self, cx: &mut Cx<'_>, id: ReqId, resp: Option<&Message>) {
        let Some(i) = self
            .regs
            .iter()
            .position(|r| r.in_flight.is_some_and(|(f, _)| f == id))
        else {
            return;
        };
        let code = resp.and_then(Message::status).unwrap_or(408);
        if code < 200 {
            return;
        }
        let answered = self.regs[i].in_flight.take().is_some_and(|(_, a)| a);
        let r = &mut self.regs[i];
        let targets = &cx.env.outside.line(r.spec.trunk).targets;
        let sent_to = r.sent_to.take();
        if let Some(remote) = sent_to {
            match (code, resp) {
                (408 | 503, _) | (_, None) => targets.failed(remote),
                _ => targets.answered(remote),
            }
            if (200..300).contains(&code) {
                r.bound_to = Some(remote);
            }
        }
        if matches!((code, resp), (408 | 503, _) | (_, None)) && !self.stopping {
            // RFC 3263 §4.3: the next address, at once, while one is left.
            r.targets_failed += 1;
            if r.targets_failed < targets.get().send_to.len() {
                tracing::info!(trunk = %r.spec.name, code, "no registration at this address; trying the next");
                return self.register(cx, i, None);
            }
        }
        self.regs[i].targets_failed = 0;
        match (code, resp) {
            (200..=299, Some(resp)) => self.registered(cx, i, resp),
            (401 | 407, Some(resp)) if !answered || stale(resp, code) => {
                match self.answer(i, resp) {
                    Some(auth) => self.register(cx, i, Some(auth)),
                    None => self.failed(cx, i, "a challenge we cannot answer".into()),
                }
            }
            (401 | 407, Some(_)) => self.failed(cx, i, "credentials refused".into()),
            (423, Some(resp)) if !answered => {
                let min = resp.value(HeaderName::MinExpires).and_then(parse_u32);
                match min {
                    Some(min) if min > self.regs[i].expires => {
                        self.regs[i].expires = min;
                        self.register(cx, i, None);
                    }
                    _ => self.failed(cx, i, "423 without a usable Min-Expires".into()),
                }
            }
            (408, _) | (_, None) => self.failed(cx, i, "no answer".into()),
            (code, Some(resp)) => {
                let reason = String::from_utf8_lossy(resp.reason().unwrap_or_default());
                self.failed(cx, i, format!("{code} {reason}"));
            }
        }
    }

    /// The Authorization (401) or Proxy-Authorization (407) answering `resp`'s
    /// challenge.
    fn answer(&self, i: usize, resp: &Message) -> Option<(&'static str, String)> {
        let r = &self.regs[i];
        let uri = format!("sip:{}", r.spec.domain);
        let creds = (r.spec.auth_username.as_str(), r.spec.password.as_str());
        crate::sip::auth::authorization(resp, "REGISTER", &uri, creds, &random_tag())
    }

    fn registered(&mut self, cx: &mut Cx<'_>, i: usize, resp: &Message) {
        if self.stopping {
            let reason = "unregistered (the PBX stops)".to_string();
            return self.set(cx, i, Status::Down { reason });
        }
        let asked = self.regs[i].expires;
        let granted = resp
            .value(HeaderName::Expires)
            .and_then(parse_u32)
            .unwrap_or(asked)
            .max(1);
        let r = &mut self.regs[i];
        r.failures = 0;
        self.set(
            cx,
            i,
            Status::Up {
                expires_in_secs: granted,
            },
        );
        let refresh = Duration::from_secs(u64::from(granted) * 3 / 4).max(Duration::from_secs(1));
        self.arm(cx, i, cx.now + refresh);
    }

    fn failed(&mut self, cx: &mut Cx<'_>, i: usize, reason: String) {
        let r = &mut self.regs[i];
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << r.failures.min(10))
            .min(MAX_BACKOFF);
        r.failures = r.failures.saturating_add(1);
        self.set(cx, i, Status::Down { reason });
        if !self.stopping {
            self.arm(cx, i, cx.now + backoff);
        }
    }

    /// The PBX stops: every registered trunk removes its registration
    /// (REGISTER with Expires: 0), so the provider stops sending calls here.
    pub fn on_stop(&mut self, cx: &mut Cx<'_>) {
        self.stopping = true;
        for i in 0..self.regs.len() {
            let up = matches!(
                self.board.0.get(&self.regs[i].spec.name).as_deref(),
                Some(Status::Up { .. })
            );
            if up && self.regs[i].in_flight.is_none() {
                self.register(cx, i, None);
            }
        }
    }

    /// Our TCP connection to `peer` closed (or never opened): a REGISTER in
    /// flight there is unanswered (a transport error, RFC 3261 §18.4); a
    /// registration accepted there is renewed over a new connection after
    /// the first backoff (so a provider that drops every connection is not
    /// asked in a tight loop).
    pub fn on_closed(&mut self, cx: &mut Cx<'_>, peer: std::net::SocketAddr) {
        let over = |r: Option<Remote>| {
            r.is_some_and(|r| r.transport == crate::sip::Transport::Tcp && r.addr == peer)
        };
        for i in 0..self.regs.len() {
            let r = &self.regs[i];
            match r.in_flight {
                Some((id, _)) if over(r.sent_to) => self.on_response(cx, id, None),
                None if over(r.bound_to) && !self.stopping => {
                    tracing::info!(trunk = %r.spec.name, %peer, "trunk connection closed; registering again");
                    self.regs[i].bound_to = None;
                    self.arm(cx, i, cx.now + FIRST_BACKOFF);
                }
                _ => {}
            }
        }
    }

    /// DNS gave trunk `t` new addresses: a registration made at an address
    /// that is gone, or that is down, is made again at once.
    pub fn on_relocated(&mut self, cx: &mut Cx<'_>, t: TrunkId) {
        let targets = cx.env.outside.line(t).targets.get();
        for i in 0..self.regs.len() {
            let r = &self.regs[i];
            if r.spec.trunk != t || r.in_flight.is_some() || self.stopping {
                continue;
            }
            let kept = r
                .bound_to
                .is_some_and(|b| targets.send_to.iter().any(|s| s.addr == b.addr));
            if !kept {
                tracing::info!(trunk = %r.spec.name, "trunk host moved; registering at its new address");
                self.regs[i].bound_to = None;
                self.register(cx, i, None);
            }
        }
    }

    fn arm(&mut self, cx: &mut Cx<'_>, i: usize, at: Instant) {
        self.regs[i].timer_at = Some(at);
        cx.timer(at, Timer(i));
    }

    /// A refresh or retry is due.
    pub fn on_timer(&mut self, cx: &mut Cx<'_>, t: &Timer, at: Instant) {
        let Some(r) = self.regs.get_mut(t.0) else {
            return;
        };
        if r.timer_at != Some(at) || r.in_flight.is_some() || self.stopping {
            return;
        }
        r.timer_at = None;
        self.register(cx, t.0, None);
    }

    /// Whether shard 0 has trunks to register.
    pub fn is_empty(&self) -> bool {
        self.regs.is_empty()
    }
}

/// Whether a challenge says our credentials were right but the nonce old.
fn stale(resp: &Message, code: u16) -> bool {
    let name = match code {
        401 => HeaderName::WwwAuthenticate,
        _ => HeaderName::ProxyAuthenticate,
    };
    resp.values(name).filter_map(Auth::parse).any(|c| {
        c.param("stale")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"true"))
    })
}

fn parse_u32(v: &[u8]) -> Option<u32> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::auth::{Algorithm, DigestAuthority, Ha1, Verdict};
    use crate::testkit::{Harness, Setup};
    use crate::tu::{Counters, Effect};

    const PROVIDER: &str = "192.0.2.50:5060";

    fn spec() -> Spec {
        Spec {
            name: "carrier".into(),
            trunk: TrunkId(0),
            domain: "carrier.example".into(),
            username: "office".into(),
            auth_username: "office".into(),
            password: "s3cret".into(),
            expires: 120,
            line: "5ecret".into(),
        }
    }

    /// The trunks driven with a fake clock; effects collected per input.
    struct Lab {
        h: Harness,
        trunks: Trunks,
        board: Board,
        counters: Counters,
        now: Instant,
    }

    impl Lab {
        fn new() -> Lab {
            Lab::at(&[PROVIDER])
        }
        /// The trunk's provider at these addresses, in order.
        fn at(addrs: &[&str]) -> Lab {
            let remotes = addrs.iter().map(|a| Remote::udp(a.parse().expect("addr")));
            Lab::with(remotes.collect())
        }
        fn with(remotes: Vec<Remote>) -> Lab {
            let located = crate::outside::Located {
                from: remotes.iter().map(|r| r.addr.ip()).collect(),
                send_to: remotes,
            };
            let line = crate::outside::Line::located(
                "carrier".into(),
                crate::sip::Transport::Udp,
                located,
                "carrier.example".into(),
            );
            let outside = crate::outside::Outside::new(vec![line], Vec::new(), Default::default());
            let h = Harness::new(Setup {
                outside,
                ..Setup::default()
            });
            let board = Board::default();
            let now = h.t0;
            Lab {
                trunks: Trunks::new(&[spec()], board.clone()),
                h,
                board,
                counters: Counters::new(crate::store::IdGen::new(1, 0, 1)),
                now,
            }
        }
        fn run(&mut self, f: impl FnOnce(&mut Trunks, &mut Cx<'_>)) -> Vec<Effect<Timer>> {
            let mut out = Vec::new();
            let env = std::sync::Arc::clone(&self.h.env);
            let mut cx = Cx::new(
                self.now,
                self.h.wall0,
                &env,
                0,
                &mut self.counters,
                &mut out,
            );
            f(&mut self.trunks, &mut cx);
            out
        }
        fn status(&self) -> Option<Status> {
            self.board.all().into_iter().next().map(|(_, s)| s)
        }
    }

    /// The REGISTER among `out` (sent to the provider), and its id.
    fn sent(out: &[Effect<Timer>]) -> (ReqId, Message) {
        let (id, m, to) = sent_to(out);
        assert_eq!(to, PROVIDER);
        (id, m)
    }

    /// The REGISTER among `out`, its id, and where it went.
    fn sent_to(out: &[Effect<Timer>]) -> (ReqId, Message, String) {
        out.iter()
            .find_map(|e| match e {
                Effect::Send {
                    id,
                    request: Ok(m),
                    remote,
                } => Some((*id, m.clone(), remote.addr.to_string())),
                _ => None,
            })
            .expect("a REGISTER")
    }

    fn timer(out: &[Effect<Timer>]) -> Instant {
        out.iter()
            .find_map(|e| match e {
                Effect::Timer { at, .. } => Some(*at),
                _ => None,
            })
            .expect("a timer")
    }

    fn answer(req: &Message, code: u16, headers: &[(&str, String)]) -> Message {
        let mut b = Builder::reply(req, PROVIDER.parse().expect("addr"), code, "Reason");
        for (n, v) in headers {
            b.header(n, v.as_str());
        }
        crate::sip::message::parse(b.finish(), &Default::default()).expect("response")
    }

    #[test]
    fn a_trunk_registers_with_digest_and_refreshes_at_three_quarters_of_its_expiry() {
        let mut lab = Lab::new();
        let provider = DigestAuthority::new(
            "carrier.example",
            vec![Algorithm::Md5],
            Duration::from_secs(300),
            lab.now,
        );
        let (id, first) = sent(&lab.run(|t, cx| t.on_start(cx)));
        assert_eq!(lab.status(), Some(Status::Registering));
        assert_eq!(first.request_uri_bytes(), Some(&b"sip:carrier.example"[..]));
        assert_eq!(first.value(HeaderName::Expires), Some(&b"120"[..]));
        let contact = String::from_utf8_lossy(first.value(HeaderName::Contact).unwrap_or_default());
        assert!(
            contact.ends_with(";line=5ecret>"),
            "the trunk's token: {contact}"
        );
        let challenge: Vec<_> = provider
            .challenges(lab.now, false)
            .into_iter()
            .map(|c| ("WWW-Authenticate", c))
            .collect();
        let out = lab.run(|t, cx| t.on_response(cx, id, Some(&answer(&first, 401, &challenge))));
        let (id, second) = sent(&out);
        assert_eq!(second.call_id(), first.call_id(), "one registration dialog");
        let creds = second.authorizations(HeaderName::Authorization);
        let verdict = provider.verify(lab.now, b"REGISTER", creds, |u| {
            (u == "office").then(|| Ha1::from_password("office", "carrier.example", "s3cret"))
        });
        assert_eq!(verdict, Verdict::Authenticated("office".into()));
        let ok = answer(&second, 200, &[("Expires", "100".into())]);
        let out = lab.run(|t, cx| t.on_response(cx, id, Some(&ok)));
        assert_eq!(
            lab.status(),
            Some(Status::Up {
                expires_in_secs: 100
            })
        );
        let refresh = timer(&out);
        assert_eq!(refresh, lab.now + Duration::from_secs(75));
        lab.now = refresh;
        let (_, third) = sent(&lab.run(|t, cx| t.on_timer(cx, &Timer(0), refresh)));
        assert_eq!(third.cseq().map(|c| c.seq), Some(3));
    }

    #[test]
    fn a_stopping_pbx_removes_its_registration_and_never_registers_again() {
        let mut lab = Lab::new();
        let (id, first) = sent(&lab.run(|t, cx| t.on_start(cx)));
        let ok = answer(&first, 200, &[("Expires", "100".into())]);
        let refresh = timer(&lab.run(|t, cx| t.on_response(cx, id, Some(&ok))));
        let (id, bye) = sent(&lab.run(|t, cx| t.on_stop(cx)));
        assert_eq!(bye.value(HeaderName::Expires), Some(&b"0"[..]));
        assert_eq!(bye.call_id(), first.call_id(), "the same registration");
        let out = lab.run(|t, cx| t.on_response(cx, id, Some(&answer(&bye, 200, &[]))));
        assert!(matches!(lab.status(), Some(Status::Down { .. })));
        assert!(out.is_empty(), "no refresh armed: {out:?}");
        lab.now = refresh;
        assert!(lab
            .run(|t, cx| t.on_timer(cx, &Timer(0), refresh))
            .is_empty());
    }

    #[test]
    fn refused_credentials_and_silence_take_the_trunk_down_with_a_growing_backoff() {
        let mut lab = Lab::new();
        let (id, first) = sent(&lab.run(|t, cx| t.on_start(cx)));
        let challenge = [(
            "WWW-Authenticate",
            "Digest realm=\"c\", nonce=\"n1\", qop=\"auth\"".to_string(),
        )];
        let (id, second) =
            sent(&lab.run(|t, cx| t.on_response(cx, id, Some(&answer(&first, 401, &challenge)))));
        // Challenged again though we answered: the password is wrong.
        let out = lab.run(|t, cx| t.on_response(cx, id, Some(&answer(&second, 401, &challenge))));
        assert_eq!(
            lab.status(),
            Some(Status::Down {
                reason: "credentials refused".into()
            })
        );
        assert_eq!(timer(&out), lab.now + Duration::from_secs(5));
        // Then no answer at all, again and again: 10 s, 20 s, ... at most 5 min.
        let mut waits = Vec::new();
        for _ in 0..8 {
            let at = lab.now + Duration::from_secs(600);
            lab.now = at;
            let _ = lab.run(|t, cx| {
                t.regs[0].timer_at = Some(at);
                t.on_timer(cx, &Timer(0), at)
            });
            let id = lab.trunks.regs[0]
                .in_flight
                .map(|(id, _)| id)
                .expect("sent");
            let out = lab.run(|t, cx| t.on_response(cx, id, None));
            waits.push(timer(&out).duration_since(lab.now).as_secs());
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(
            lab.status(),
            Some(Status::Down {
                reason: "no answer".into()
            })
        );
    }

    #[test]
    fn a_provider_address_that_is_silent_or_503_moves_the_registration_to_the_next_at_once() {
        let mut lab = Lab::at(&["192.0.2.50:5060", "192.0.2.51:5060", "192.0.2.52:5060"]);
        let (id, _, to) = sent_to(&lab.run(|t, cx| t.on_start(cx)));
        assert_eq!(to, "192.0.2.50:5060");
        let out = lab.run(|t, cx| t.on_response(cx, id, None));
        let (id, second, to) = sent_to(&out);
        assert_eq!(to, "192.0.2.51:5060", "the next address, without waiting");
        assert_eq!(lab.status(), Some(Status::Registering));
        let out = lab.run(|t, cx| t.on_response(cx, id, Some(&answer(&second, 503, &[]))));
        let (id, third, to) = sent_to(&out);
        assert_eq!(to, "192.0.2.52:5060");
        let ok = answer(&third, 200, &[("Expires", "100".into())]);
        let refresh = timer(&lab.run(|t, cx| t.on_response(cx, id, Some(&ok))));
        assert!(matches!(lab.status(), Some(Status::Up { .. })));
        lab.now = refresh;
        let (id, refreshed, to) = sent_to(&lab.run(|t, cx| t.on_timer(cx, &Timer(0), refresh)));
        assert_eq!(to, "192.0.2.52:5060", "refreshed where it answered");
        // All of them silent: down, with the backoff (no tight loop).
        let mut out = lab.run(|t, cx| t.on_response(cx, id, Some(&answer(&refreshed, 503, &[]))));
        for _ in 0..2 {
            let (id, _, _) = sent_to(&out);
            out = lab.run(|t, cx| t.on_response(cx, id, None));
        }
        assert!(matches!(lab.status(), Some(Status::Down { .. })));
        assert_eq!(timer(&out), lab.now + Duration::from_secs(5));
        assert!(!out.iter().any(|e| matches!(e, Effect::Send { .. })));
    }

    #[test]
    fn a_closed_tcp_connection_is_a_transport_error_and_a_dropped_registration_is_renewed() {
        let tcp = Remote {
            transport: crate::sip::Transport::Tcp,
            addr: PROVIDER.parse().expect("addr"),
            conn: None,
        };
        let peer = tcp.addr;
        let mut lab = Lab::with(vec![tcp]);
        let _ = sent(&lab.run(|t, cx| t.on_start(cx)));
        // The connection never opened: no answer, at once, not after Timer F.
        let out = lab.run(|t, cx| t.on_closed(cx, peer));
        assert_eq!(
            lab.status(),
            Some(Status::Down {
                reason: "no answer".into()
            })
        );
        let retry = timer(&out);
        lab.now = retry;
        let (id, again) = sent(&lab.run(|t, cx| t.on_timer(cx, &Timer(0), retry)));
        let ok = answer(&again, 200, &[("Expires", "600".into())]);
        let _ = lab.run(|t, cx| t.on_response(cx, id, Some(&ok)));
        // The provider drops the connection: registered again over a new
        // one, soon, not at the refresh 7.5 minutes later.
        let out = lab.run(|t, cx| t.on_closed(cx, peer));
        assert!(matches!(lab.status(), Some(Status::Up { .. })));
        let renew = timer(&out);
        assert_eq!(renew, lab.now + Duration::from_secs(5));
        lab.now = renew;
        let (_, renewed) = sent(&lab.run(|t, cx| t.on_timer(cx, &Timer(0), renew)));
        assert_eq!(renewed.call_id(), again.call_id());
        // Another peer's connection is none of its business.
        let other = lab.run(|t, cx| t.on_closed(cx, "192.0.2.99:5060".parse().expect("addr")));
        assert!(other.is_empty());
    }

    #[test]
    fn a_registration_follows_its_provider_when_dns_moves_it() {
        let mut lab = Lab::new();
        let (id, first) = sent(&lab.run(|t, cx| t.on_start(cx)));
        let ok = answer(&first, 200, &[("Expires", "600".into())]);
        let _ = lab.run(|t, cx| t.on_response(cx, id, Some(&ok)));
        let targets = &lab.h.env.outside.line(TrunkId(0)).targets;
        // DNS answers again with the same address and one more: nothing to do.
        let mut more = targets.get().as_ref().clone();
        more.send_to
            .push(Remote::udp("192.0.2.60:5060".parse().expect("addr")));
        targets.replace(more);
        assert!(lab.run(|t, cx| t.on_relocated(cx, TrunkId(0))).is_empty());
        // The registered address is gone: registered again at the new one, now.
        let moved = crate::outside::Located {
            send_to: vec![Remote::udp("192.0.2.60:5060".parse().expect("addr"))],
            from: vec![[192, 0, 2, 60].into()],
        };
        lab.h.env.outside.line(TrunkId(0)).targets.replace(moved);
        let (_, again, to) = sent_to(&lab.run(|t, cx| t.on_relocated(cx, TrunkId(0))));
        assert_eq!(to, "192.0.2.60:5060");
        assert_eq!(again.call_id(), first.call_id());
    }
}

//! The SIP endpoint of one shard: the transaction user that sits on the transaction
//! layer. It checks every request against RFC 3261 §8.2 (version, mandatory
//! headers, Max-Forwards, Require, URI scheme, method), authenticates, hands
//! REGISTER to the registrar and answers OPTIONS. Sans-IO like the core below it:
//! inputs carry `now`; outputs are polled. Answers that confirm a store write are
//! held until the runtime reports that the store has flushed (group commit).

use crate::registrar::{Binding, Outcome, Registrar, UnixMillis};
use crate::sip::auth::{DigestAuthority, Verdict};
use crate::sip::message::{parse, Builder, HeaderName, Limits, Message, Method};
use crate::sip::transaction::{reply_remote, TransactionLayer, Transmit, TxEvent, TxId};
use crate::sip::{Remote, SipError};
use crate::users::Users;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::b2bua::ALLOW;

/// Counters shared by all shards.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub dropped_malformed: AtomicU64,
    /// Requests answered without a transaction (400 for bad ones, 503 when overloaded).
    pub answered_statelessly: AtomicU64,
    pub registrations: AtomicU64,
    /// Calls in progress (local and bridged), over all shards.
    pub live_calls: std::sync::atomic::AtomicI64,
}

/// What every shard shares: read-mostly maps and handles, never held across `.await`.
#[derive(Debug)]
pub struct Shared {
    pub users: Users,
    pub registrar: Registrar,
    /// Every extension's live state (one source of truth).
    pub presence: crate::presence::Presence,
    pub auth: DigestAuthority,
    pub limits: Limits,
    pub store: crate::store::Store,
    /// Where durable changes go (queued to the writer task in the running PBX).
    pub writer: crate::store::Writer,
    pub timers: crate::sip::transaction::TimerConfig,
    /// Media sessions (test numbers, relay); `None` runs without media.
    pub media: Option<crate::media::Media>,
    pub test_numbers: crate::config::TestNumbersConfig,
    /// Fixed address for SDP, else the local address toward each phone.
    pub advertise_ip: Option<std::net::IpAddr>,
    /// Our SIP port (Via and Contact of what we send).
    pub sip_port: u16,
    /// A call without RTP for this long is hung up.
    pub inactivity: Duration,
    /// Unanswered calls give up after this long (480).
    pub ring_timeout: Duration,
    /// Whether INVITEs to extensions need digest credentials (407).
    pub authenticate_calls: bool,
    /// Our SIP domain (From/To of the calls we place).
    pub domain: String,
    /// How many shards there are (dispatch is by Call-ID hash modulo this).
    pub shard_count: usize,
    /// Beyond this many live transactions a shard answers new requests with 503
    /// (completed UDP transactions stay 32 s: a flood must not grow memory unbounded).
    pub max_transactions_per_shard: usize,
    pub stats: Stats,
    /// Groups and queues, and the queues' waiting lines (the ACD).
    pub routing: crate::routing::Directory,
    /// The caller index (sticky routing) and response records.
    pub history: crate::history::History,
    /// Played to a party the other one holds; `None`: no music on hold.
    pub hold_music: Option<Arc<crate::media::prompt::Prompt>>,
    /// Feature codes an agent dials to set presence.
    pub features: crate::config::FeaturesConfig,
}

/// An answer that confirms a store write, waiting for the flush.
#[derive(Debug)]
struct Held {
    /// The shard's write sequence number that must be durable first.
    seq: u64,
    tx: TxId,
    answer: Bytes,
    /// Where the request came from (to build a 500 if the flush fails).
    remote: Remote,
}

/// Reports a media session's inactivity (by Call-ID) back to the shard.
pub type IdleNotifier = Arc<dyn Fn(String) + Send + Sync>;

/// One shard's SIP state.
pub struct Endpoint {
    pub(crate) shared: Arc<Shared>,
    pub(crate) layer: TransactionLayer,
    /// Wall clock at `mono_base`: bindings need absolute time, the core only `now`.
    wall_base: UnixMillis,
    mono_base: Instant,
    /// Stateless answers and 2xx retransmissions (outside transactions).
    pub(crate) out: VecDeque<Transmit>,
    /// Calls answered by this shard, by Call-ID.
    pub(crate) calls: std::collections::HashMap<String, crate::b2bua::LocalCall>,
    /// Bridged calls by the Call-ID of leg A.
    pub(crate) bridges: std::collections::HashMap<String, crate::b2bua::Bridge>,
    /// Every leg's Call-ID → (leg A's Call-ID, which leg).
    pub(crate) legs: std::collections::HashMap<String, (String, crate::b2bua::Side)>,
    /// Our client transactions that belong to bridges.
    pub(crate) pending: std::collections::HashMap<TxId, crate::b2bua::Pending>,
    /// Calls the PBX placed (originate), by the Call-ID of leg A.
    pub(crate) originations: std::collections::HashMap<String, crate::b2bua::Origination>,
    /// Queue calls of this shard waiting for an agent (they look again whenever
    /// presence changes).
    pub(crate) waiting_calls: std::collections::HashSet<String>,
    /// BLF subscriptions of this shard by Call-ID, and their keys by extension.
    pub(crate) subscriptions: std::collections::HashMap<String, crate::blf::Subscription>,
    pub(crate) subscriptions_by_ext: std::collections::HashMap<String, Vec<String>>,
    /// Branches of ended calls that may still answer (CANCEL/2xx races).
    pub(crate) orphans: std::collections::HashMap<TxId, (Message, Remote)>,
    /// This shard's index (B-leg Call-IDs are chosen to hash here).
    pub(crate) shard: usize,
    /// Dialog timers (stale entries are skipped when they fire).
    pub(crate) call_timers: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, String)>>,
    idle: IdleNotifier,
    /// Final answers waiting for the store write they confirm.
    held: VecDeque<Held>,
    write_seq: u64,
    flush_wanted: bool,
    /// Malformed input is logged at most once a second; the rest is counted.
    last_warn: Option<Instant>,
    suppressed: u64,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("transactions", &self.layer.len())
            .field("calls", &self.calls.len())
            .field("held", &self.held.len())
            .finish()
    }
}

impl Endpoint {
    pub fn new(
        shared: Arc<Shared>,
        layer: TransactionLayer,
        wall_base: UnixMillis,
        mono_base: Instant,
        idle: IdleNotifier,
        shard: usize,
    ) -> Self {
        Endpoint {
            shared,
            layer,
            wall_base,
            mono_base,
            out: VecDeque::new(),
            calls: std::collections::HashMap::new(),
            bridges: std::collections::HashMap::new(),
            legs: std::collections::HashMap::new(),
            pending: std::collections::HashMap::new(),
            orphans: std::collections::HashMap::new(),
            waiting_calls: std::collections::HashSet::new(),
            subscriptions: std::collections::HashMap::new(),
            subscriptions_by_ext: std::collections::HashMap::new(),
            originations: std::collections::HashMap::new(),
            shard,
            call_timers: std::collections::BinaryHeap::new(),
            idle,
            held: VecDeque::new(),
            write_seq: 0,
            flush_wanted: false,
            last_warn: None,
            suppressed: 0,
        }
    }

    pub(crate) fn idle_notifier(&self, call_id: String) -> impl Fn() + Send + 'static {
        let idle = Arc::clone(&self.idle);
        move || idle(call_id.clone())
    }

    pub(crate) fn wall(&self, now: Instant) -> UnixMillis {
        let since = now.saturating_duration_since(self.mono_base);
        UnixMillis(self.wall_base.0 + since.as_millis() as u64)
    }

    /// Raw bytes from a datagram or a TCP frame.
    pub fn handle_bytes(&mut self, now: Instant, bytes: Bytes, remote: Remote) {
        let parsed = parse(bytes, &self.shared.limits);
        self.handle_parsed(now, parsed, remote);
    }

    /// A message parsed by the transport (which parses to pick the shard).
    pub fn handle_parsed(
        &mut self,
        now: Instant,
        parsed: Result<Message, SipError>,
        remote: Remote,
    ) {
        self.shared.stats.received.fetch_add(1, Ordering::Relaxed);
        let msg = match parsed {
            Ok(m) => m,
            Err(e) => {
                self.shared
                    .stats
                    .dropped_malformed
                    .fetch_add(1, Ordering::Relaxed);
                self.warn(
                    now,
                    format_args!("dropped unreadable message from {remote}: {e}"),
                );
                return;
            }
        };
        if msg.is_request() {
            if let Some(reason) = self.stateless_problem(&msg) {
                self.answer_statelessly(now, &msg, remote, 400, reason);
            } else if self.layer.len() >= self.shared.max_transactions_per_shard {
                self.answer_statelessly(now, &msg, remote, 503, "Service Unavailable (Overloaded)");
            } else {
                self.layer.handle_request(now, msg, remote);
            }
        } else {
            self.layer.handle_response(now, msg, remote);
        }
        self.process_events(now);
    }

    /// Problems that stop a request from forming a transaction; answered with a
    /// stateless 400 (or dropped when there is no Via to answer to).
    fn stateless_problem(&self, msg: &Message) -> Option<&'static str> {
        if let Some(defect) = msg.defect() {
            return Some(defect);
        }
        if msg.top_via().is_none() {
            return Some("Bad Via Header");
        }
        if msg.vias().any(|v| v.is_none()) {
            return Some("Bad Via Header");
        }
        for (name, reason) in [
            (HeaderName::From, "Missing Or Bad From Header"),
            (HeaderName::To, "Missing Or Bad To Header"),
        ] {
            let ok = match name {
                HeaderName::From => msg.from_header().is_some(),
                _ => msg.to_header().is_some(),
            };
            if !ok {
                return Some(reason);
            }
        }
        if msg.call_id().is_none_or(|c| c.is_empty()) {
            return Some("Missing Call-ID Header");
        }
        match msg.cseq() {
            None => Some("Missing Or Bad CSeq Header"),
            Some(c) if Some(&c.method) != msg.method() => Some("CSeq Method Does Not Match"),
            Some(_) => None,
        }
    }

    fn answer_statelessly(
        &mut self,
        now: Instant,
        req: &Message,
        remote: Remote,
        code: u16,
        reason: &'static str,
    ) {
        self.shared
            .stats
            .answered_statelessly
            .fetch_add(1, Ordering::Relaxed);
        self.warn(now, format_args!("{code} {reason} to {remote}"));
        if req.top_via().is_none() || req.method() == Some(&Method::Ack) {
            return; // nowhere to answer, or never answered
        }
        let mut b = Builder::response(req, remote.addr, code, reason, Some(&to_tag()));
        if code == 503 {
            b.header("Retry-After", "5");
        }
        let bytes = b.finish();
        self.out.push_back(Transmit {
            remote: reply_remote(req, remote),
            payload: bytes,
        });
    }

    fn warn(&mut self, now: Instant, what: std::fmt::Arguments<'_>) {
        let due = self
            .last_warn
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
        if due {
            if self.suppressed > 0 {
                tracing::warn!("{what} (and {} more bad messages)", self.suppressed);
            } else {
                tracing::warn!("{what}");
            }
            self.last_warn = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
            tracing::debug!("{what}");
        }
    }

    /// An extension's presence changed (any shard's doing): its BLF subscribers
    /// are notified, waiting queue calls look for an agent again.
    pub fn handle_presence(&mut self, now: Instant, change: &crate::presence::Change) {
        self.notify_change(now, change);
        if !self.waiting_calls.is_empty() {
            self.retry_waiting_calls(now);
        }
        self.process_events(now);
    }

    /// Whether this shard needs presence changes: it has BLF subscriptions or
    /// queue calls waiting for an agent.
    pub fn wants_presence(&self) -> bool {
        !self.subscriptions.is_empty() || !self.waiting_calls.is_empty()
    }

    /// Presence changes were missed (this shard fell behind the stream): look
    /// at everything again.
    pub fn handle_presence_lag(&mut self, now: Instant) {
        self.notify_all(now);
        if !self.waiting_calls.is_empty() {
            self.retry_waiting_calls(now);
        }
        self.process_events(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.layer.handle_timeout(now);
        self.fire_call_timers(now);
        self.process_events(now);
    }

    /// The store has flushed every write up to `seq`: release what they confirm.
    pub fn handle_flushed(&mut self, now: Instant, seq: u64) {
        while self.held.front().is_some_and(|h| h.seq <= seq) {
            if let Some(h) = self.held.pop_front() {
                self.send_final(now, h.tx, h.answer);
            }
        }
        self.process_events(now);
    }

    /// The store failed to flush: what was held cannot be confirmed.
    pub fn handle_flush_failed(&mut self, now: Instant) {
        for h in std::mem::take(&mut self.held) {
            if let Some(req) = self.layer.request(h.tx).cloned() {
                self.reply(
                    now,
                    h.tx,
                    &req,
                    h.remote,
                    500,
                    "Server Internal Error (Storage)",
                );
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front().or_else(|| self.layer.poll_transmit())
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.layer.poll_timeout(), self.next_call_timer()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// `Some(seq)` once: the runtime should flush the store and then call
    /// `handle_flushed(seq)`.
    pub fn poll_flush(&mut self) -> Option<u64> {
        std::mem::take(&mut self.flush_wanted).then_some(self.write_seq)
    }

    /// Live transactions and held answers (for tests and metrics).
    pub fn load(&self) -> (usize, usize) {
        (self.layer.len(), self.held.len())
    }

    fn process_events(&mut self, now: Instant) {
        while let Some(ev) = self.layer.poll_event() {
            match ev {
                TxEvent::Request {
                    tx,
                    request,
                    remote,
                } => self.handle_request(now, tx, request, remote),
                TxEvent::Ack { request, .. } => {
                    // A dialog we answered ourselves comes first: the PBX may be both
                    // ends of one Call-ID (an origination calling a test number).
                    let leg = request
                        .call_id()
                        .filter(|_| !self.is_local_dialog(&request))
                        .and_then(|c| self.legs.get(&*String::from_utf8_lossy(c)).cloned());
                    match leg {
                        Some((a, crate::b2bua::Side::A)) => self.bridge_ack(&a, &request),
                        Some(_) => {}
                        None => self.ack(now, &request),
                    }
                }
                TxEvent::Response { tx, response } => {
                    if let Some(p) = self.pending.get(&tx).cloned() {
                        self.bridge_response(now, p, tx, Some(response));
                    } else if self.orphans.contains_key(&tx) {
                        self.orphan_response(now, tx, &response);
                    }
                }
                TxEvent::StrayResponse { .. } => {
                    tracing::debug!("response matches nothing we sent; dropped");
                }
                TxEvent::Timeout { tx } => {
                    if let Some(p) = self.pending.get(&tx).cloned() {
                        self.bridge_response(now, p, tx, None);
                    }
                    self.orphans.remove(&tx);
                }
                TxEvent::Terminated { .. } => {}
            }
        }
    }

    pub(crate) fn send_final(&mut self, now: Instant, tx: TxId, bytes: Bytes) {
        if let Err(e) = self.layer.respond(now, tx, bytes) {
            tracing::debug!(?tx, "answer not sent: {e}");
        }
    }

    pub(crate) fn reply(
        &mut self,
        now: Instant,
        tx: TxId,
        req: &Message,
        remote: Remote,
        code: u16,
        reason: &str,
    ) {
        let bytes = self.response(req, remote, code, reason).finish();
        self.send_final(now, tx, bytes);
    }

    pub(crate) fn response(
        &self,
        req: &Message,
        remote: Remote,
        code: u16,
        reason: &str,
    ) -> Builder {
        let mut b = Builder::response(req, remote.addr, code, reason, Some(&to_tag()));
        b.header("Server", crate::sip::message::build::PRODUCT);
        b
    }

    fn handle_request(&mut self, now: Instant, tx: TxId, req: Message, remote: Remote) {
        let Some(method) = req.method().cloned() else {
            return;
        };
        if req.version() != b"SIP/2.0" {
            return self.reply(now, tx, &req, remote, 505, "Version Not Supported");
        }
        if method == Method::Cancel {
            // RFC 3261 §9.2: 481 without a matching INVITE; else 200, and a call
            // still ringing ends with 487 (an answered one is not affected).
            if self.layer.find_invite(&req).is_none() {
                return self.reply(
                    now,
                    tx,
                    &req,
                    remote,
                    481,
                    "Call/Transaction Does Not Exist",
                );
            }
            self.reply(now, tx, &req, remote, 200, "OK");
            if let Some(a) = req
                .call_id()
                .map(|c| String::from_utf8_lossy(c).into_owned())
            {
                self.cancel_bridge(now, &a);
            }
            return;
        }
        match req.max_forwards() {
            Some(Err(())) => return self.reply(now, tx, &req, remote, 400, "Bad Max-Forwards"),
            Some(Ok(0)) => return self.reply(now, tx, &req, remote, 483, "Too Many Hops"),
            _ => {}
        }
        if req.request_uri().is_none() {
            let mut b = self.response(&req, remote, 416, "Unsupported URI Scheme");
            b.header("Allow", ALLOW);
            return self.send_final(now, tx, b.finish());
        }
        let unsupported: Vec<String> = req
            .require()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect();
        if !unsupported.is_empty() {
            let mut b = self.response(&req, remote, 420, "Bad Extension");
            b.header("Unsupported", unsupported.join(", "));
            return self.send_final(now, tx, b.finish());
        }
        let in_dialog = req.to_header().is_some_and(|t| t.tag().is_some());
        match method {
            Method::Register => self.register(now, tx, &req, remote),
            Method::Subscribe => self.subscribe(now, tx, &req, remote),
            Method::Invite | Method::Bye | Method::Info | Method::Update if in_dialog => {
                let leg = req
                    .call_id()
                    .filter(|_| !self.is_local_dialog(&req))
                    .and_then(|c| self.legs.get(&*String::from_utf8_lossy(c)).cloned());
                match leg {
                    Some((a, side)) if self.originations.contains_key(&a) => {
                        self.origin_in_dialog(now, tx, &req, remote, &a, side)
                    }
                    Some((a, side)) => self.bridge_in_dialog(now, tx, &req, remote, &a, side),
                    None => self.in_dialog(now, tx, &req, remote),
                }
            }
            Method::Invite => match self.test_number(&req) {
                Some(kind) => self.invite_test_number(now, tx, &req, remote, kind),
                None => self.invite(now, tx, &req, remote),
            },
            Method::Bye | Method::Info | Method::Update => self.reply(
                now,
                tx,
                &req,
                remote,
                481,
                "Call/Transaction Does Not Exist",
            ),
            Method::Options => {
                let mut b = self.response(&req, remote, 200, "OK");
                b.header("Allow", ALLOW)
                    .header("Allow-Events", crate::blf::ALLOW_EVENTS)
                    .header("Accept", "application/sdp")
                    .header("Supported", "");
                self.send_final(now, tx, b.finish());
            }
            Method::Extension(_) => self.reply(now, tx, &req, remote, 501, "Not Implemented"),
            _ => {
                let mut b = self.response(&req, remote, 405, "Method Not Allowed");
                b.header("Allow", ALLOW);
                self.send_final(now, tx, b.finish());
            }
        }
    }

    /// A new INVITE to anything but a test number: a queue (open to outside
    /// callers), a feature code or an extension (both need the caller's
    /// credentials), or 404.
    fn invite(&mut self, now: Instant, tx: TxId, req: &Message, remote: Remote) {
        let shared = Arc::clone(&self.shared);
        let Some(callee) = req
            .request_uri()
            .and_then(|u| u.user)
            .map(|u| String::from_utf8_lossy(u).into_owned())
        else {
            return self.reply(now, tx, req, remote, 404, "Not Found");
        };
        if let Some(queue) = shared.routing.queue_by_number(&callee) {
            let caller = crate::b2bua::caller_number(req);
            return self.invite_queue(now, tx, req, remote, queue, caller);
        }
        let feature = self.feature_code(&callee);
        if feature.is_none() && !shared.users.contains(&callee) {
            return self.reply(now, tx, req, remote, 404, "Not Found");
        }
        let caller = if shared.authenticate_calls {
            let verdict = shared.auth.verify(
                now,
                b"INVITE",
                req.authorizations(HeaderName::ProxyAuthorization),
                |u| shared.users.ha1(u),
            );
            match verdict {
                Verdict::Authenticated(user) => Some(user),
                Verdict::Challenge { stale } => {
                    let mut b = self.response(req, remote, 407, "Proxy Authentication Required");
                    for c in shared.auth.challenges(now, stale) {
                        b.header("Proxy-Authenticate", c);
                    }
                    return self.send_final(now, tx, b.finish());
                }
                Verdict::Forbidden => return self.reply(now, tx, req, remote, 403, "Forbidden"),
            }
        } else {
            None
        };
        let caller = crate::b2bua::caller_of(req, caller);
        if let Some(state) = feature {
            if let Err(e) = shared.presence.choose(&caller, state, self.wall(now)) {
                tracing::info!(%caller, "feature code refused: {e}");
                return self.reply(now, tx, req, remote, 403, "Forbidden");
            }
            tracing::info!(%caller, state = state.as_str(), "presence chosen from the phone");
            return self.invite_test_number(
                now,
                tx,
                req,
                remote,
                crate::b2bua::TestNumber::Confirmation,
            );
        }
        let bindings = shared.registrar.lookup(&callee, self.wall(now));
        let target = crate::b2bua::CallTarget {
            caller,
            callee,
            bindings,
        };
        self.invite_extension(now, tx, req, remote, target);
    }

    /// The presence state a dialled feature code chooses.
    fn feature_code(&self, number: &str) -> Option<crate::presence::State> {
        use crate::presence::State;
        let f = &self.shared.features;
        [
            (&f.available, State::Available),
            (&f.away, State::Away),
            (&f.busy, State::Busy),
        ]
        .into_iter()
        .find(|(code, _)| !code.is_empty() && code.as_str() == number)
        .map(|(_, s)| s)
    }

    fn register(&mut self, now: Instant, tx: TxId, req: &Message, remote: Remote) {
        let shared = Arc::clone(&self.shared);
        let verdict = shared.auth.verify(
            now,
            b"REGISTER",
            req.authorizations(HeaderName::Authorization),
            |u| shared.users.ha1(u),
        );
        let user = match verdict {
            Verdict::Authenticated(user) => user,
            Verdict::Challenge { stale } => {
                let mut b = self.response(req, remote, 401, "Unauthorized");
                for c in shared.auth.challenges(now, stale) {
                    b.header("WWW-Authenticate", c);
                }
                return self.send_final(now, tx, b.finish());
            }
            Verdict::Forbidden => {
                tracing::info!(%remote, "REGISTER refused: bad credentials");
                return self.reply(now, tx, req, remote, 403, "Forbidden");
            }
        };
        let wall = self.wall(now);
        match shared.registrar.register(wall, req, remote, &user) {
            Err(e) => {
                tracing::error!("registrar store: {e}");
                self.reply(now, tx, req, remote, 500, "Server Internal Error");
            }
            Ok(Outcome::Reject {
                code,
                reason,
                min_expires,
            }) => {
                let mut b = self.response(req, remote, code, reason);
                if let Some(m) = min_expires {
                    b.header("Min-Expires", m.to_string());
                }
                self.send_final(now, tx, b.finish());
            }
            Ok(Outcome::Ok { bindings, changed }) => {
                let _ = shared
                    .presence
                    .set_registered(&user, !bindings.is_empty(), wall);
                let bytes = self.register_ok(req, remote, &bindings, wall);
                if changed {
                    shared.stats.registrations.fetch_add(1, Ordering::Relaxed);
                    self.request_durability();
                    self.hold_until_durable(tx, bytes, remote);
                } else {
                    self.send_final(now, tx, bytes);
                }
            }
        }
    }

    /// Notes that the store was written: the runtime will be asked to flush.
    pub(crate) fn request_durability(&mut self) {
        self.write_seq += 1;
        self.flush_wanted = true;
    }

    /// Sends `answer` once every store write so far is durable.
    pub(crate) fn hold_until_durable(&mut self, tx: TxId, answer: Bytes, remote: Remote) {
        self.held.push_back(Held {
            seq: self.write_seq,
            tx,
            answer,
            remote,
        });
    }

    fn register_ok(
        &self,
        req: &Message,
        remote: Remote,
        bindings: &[Binding],
        wall: UnixMillis,
    ) -> Bytes {
        let mut b = self.response(req, remote, 200, "OK");
        for binding in bindings {
            let mut v = format!(
                "<{}>;expires={}",
                binding.contact,
                binding.remaining_secs(wall)
            );
            if let Some(q) = binding.q {
                v.push_str(&format!(";q={}.{:03}", q / 1000, q % 1000));
            }
            b.header("Contact", v);
        }
        b.finish()
    }
}

/// A random tag as a string (dialog tags, branch suffixes).
pub(crate) fn to_tag_string() -> String {
    String::from_utf8_lossy(&to_tag()).into_owned()
}

/// A random To-tag (the transaction layer resends the same bytes on retransmission).
fn to_tag() -> [u8; 16] {
    let mut out = [0u8; 16];
    let raw: [u8; 8] = rand::random();
    // hex::encode_to_slice only fails on a wrong output length, which is fixed here.
    let _ = hex::encode_to_slice(raw, &mut out);
    out
}

#[cfg(test)]
mod tests;

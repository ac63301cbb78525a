//! One shard of the PBX: the only owner of a [`TransactionLayer`] (the Call-IDs
//! hashed to this shard). It checks every request against RFC 3261 §8.2
//! (version, mandatory headers, Max-Forwards, Require, URI scheme, method), asks
//! the dialplan where a new INVITE goes, and dispatches to the transaction users
//! below it — the registrar, [`Calls`] and [`Blf`] — each of which returns its
//! work as effects (`tu::Effect`) that the shard executes: answers (held until
//! the store has flushed when they confirm a write), requests, transmissions,
//! timers under typed keys, store writes.
//!
//! Sans-IO like the core below it: inputs carry `now`; outputs are polled
//! (`poll_transmit`, `poll_timeout`, `poll_write`, `poll_flush`).
//!
//! Following one INVITE: [`Shard::handle_message`] → [`Shard::handle_request`]
//! (checks, dialplan) → `Calls::on_invite` → `Calls::invite_extension` →
//! `Calls::send_branches` → [`Shard::execute`] puts the B leg on the wire.

use crate::blf::{self, Blf};
use crate::calls::{self, Calls, OriginateError, ALLOW, SUPPORTED};
use crate::clock::WallClock;
use crate::media::MediaEvent;
use crate::presence::Change;
use crate::routing::dialplan::{Dialplan, Target};
use crate::sip::message::{Builder, Message, Method};
use crate::sip::transaction::{reply_remote, TransactionLayer, Transmit, TxError, TxEvent, TxId};
use crate::sip::{CallId, Remote, SipError, StatusCode};
use crate::store::Write;
use crate::trunk::{self, Trunks};
use crate::tu::{Counters, Cx, Effect, Env, ReqId};
use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A module's timer, as the shard keeps it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Calls(calls::Timer),
    Blf(blf::Timer),
    Trunk(trunk::Timer),
}

/// The transaction user a client transaction belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Calls,
    Blf,
    Trunk,
}

/// The store should flush every write up to `seq`, then tell the shard
/// (`handle_flushed`). `prompt`: an answer someone waits on (a phone's
/// REGISTER, a caller's final answer, the desk) is held for it; otherwise
/// only writes nobody waits on, or the 200 to a BYE (the call is over, and
/// its CDR only needs to be durable before that 200), and the writer may
/// gather more of them into one flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushAsk {
    pub seq: u64,
    pub prompt: bool,
}

/// An answer that confirms a store write, waiting for the flush.
#[derive(Debug)]
struct Held {
    /// The shard's write sequence number that must be durable first.
    seq: u64,
    tx: TxId,
    answer: Bytes,
    /// A registrar answer: the transaction ends with it (no Timer J).
    forget: bool,
}

/// Settings of a shard beyond the shared environment.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub index: usize,
    /// Beyond this many live transactions new requests get 503 (completed UDP
    /// transactions stay 32 s: a flood must not grow memory unbounded).
    pub max_transactions: usize,
    pub dialplan: Dialplan,
    /// Wall clock at the start (bindings need absolute time, the core only `now`).
    pub clock: WallClock,
    /// A new request that waited longer than this in the queue is refused
    /// with 503 (`[sip] shed_after_ms`).
    pub shed_after: Duration,
}

/// One shard's SIP state.
pub struct Shard {
    env: Arc<Env>,
    config: ShardConfig,
    layer: TransactionLayer,
    calls: Calls,
    blf: Blf,
    /// Trunk registrations (shard 0 only).
    trunks: Trunks,
    counters: Counters,
    /// The modules' client transactions, until they terminate.
    requests: HashMap<TxId, (Owner, ReqId)>,
    /// Requests that could not be sent: answered as timeouts after this input.
    unsent: Vec<(Owner, ReqId)>,
    timers: BinaryHeap<Reverse<(Instant, TimerKey)>>,
    /// Stateless answers and transmissions outside transactions.
    out: VecDeque<Transmit>,
    /// Store writes for the writer, in order.
    writes: Vec<Write>,
    /// Call-backs asked for, not yet handed to the desk.
    callbacks: Vec<crate::callbacks::Request>,
    attempts: Vec<crate::campaigns::Report>,
    recordings: Vec<crate::recordings::Report>,
    /// Messages for other shards' calls (transfers across shards).
    handoffs: Vec<(usize, crate::tu::Handoff)>,
    /// Extensions whose message lamps changed, for every shard.
    lamps: Vec<String>,
    /// Final answers waiting for the store write they confirm.
    held: VecDeque<Held>,
    /// Writes handed out so far, and the highest number known to be durable.
    write_seq: u64,
    flushed_seq: u64,
    /// A flush to ask for (`Some(prompt)`), since the last one asked.
    flush_wanted: Option<bool>,
    /// Malformed input is logged at most once a second; the rest is counted.
    last_warn: Option<Instant>,
    suppressed: u64,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("index", &self.config.index)
            .field("transactions", &self.layer.len())
            .field("calls", &self.calls.count())
            .field("held", &self.held.len())
            .finish()
    }
}

impl Shard {
    pub fn new(
        env: Arc<Env>,
        config: ShardConfig,
        layer: TransactionLayer,
        counters: Counters,
    ) -> Self {
        Shard {
            env,
            config,
            layer,
            calls: Calls::default(),
            blf: Blf::default(),
            trunks: Trunks::default(),
            counters,
            requests: HashMap::new(),
            unsent: Vec::new(),
            timers: BinaryHeap::new(),
            out: VecDeque::new(),
            writes: Vec::new(),
            callbacks: Vec::new(),
            attempts: Vec::new(),
            recordings: Vec::new(),
            handoffs: Vec::new(),
            lamps: Vec::new(),
            held: VecDeque::new(),
            write_seq: 0,
            flushed_seq: 0,
            flush_wanted: None,
            last_warn: None,
            suppressed: 0,
        }
    }

    /// Raw bytes from a datagram or a TCP frame.
    #[cfg(test)]
    pub fn handle_bytes(&mut self, now: Instant, bytes: Bytes, remote: Remote) {
        let parsed = crate::sip::message::parse(bytes, &Default::default());
        self.handle_message(now, parsed, remote, now);
    }

    /// A message parsed by the transport (which parses to pick the shard) and
    /// received at `received`: a new request that has
    /// waited longer than `shed_after` in the shard's queue is refused with
    /// 503 and Retry-After (RFC 3261 §21.5.4) before any work is done for it, so
    /// an overloaded PBX keeps finishing the calls it has instead of collapsing.
    pub fn handle_message(
        &mut self,
        now: Instant,
        parsed: Result<Message, SipError>,
        remote: Remote,
        received: Instant,
    ) {
        self.env.stats.received.fetch_add(1, Ordering::Relaxed);
        let msg = match parsed {
            Ok(m) => m,
            Err(e) => {
                self.env
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
            let late = now.saturating_duration_since(received) > self.config.shed_after;
            if let Some(reason) = stateless_problem(&msg) {
                self.answer_statelessly(now, &msg, remote, 400, reason);
            } else if self.layer.len() >= self.config.max_transactions
                || (late && is_sheddable(&msg))
            {
                self.env.stats.shed.fetch_add(1, Ordering::Relaxed);
                self.answer_statelessly(now, &msg, remote, 503, "Service Unavailable (Overloaded)");
            } else {
                self.layer.handle_request(now, msg, remote);
            }
        } else {
            self.layer.handle_response(now, msg, remote);
        }
        self.process_events(now);
    }

    fn answer_statelessly(
        &mut self,
        now: Instant,
        req: &Message,
        remote: Remote,
        code: u16,
        reason: &'static str,
    ) {
        self.env
            .stats
            .answered_statelessly
            .fetch_add(1, Ordering::Relaxed);
        self.warn(now, format_args!("{code} {reason} to {remote}"));
        if req.top_via().is_none() || req.method() == Some(&Method::Ack) {
            return; // nowhere to answer, or never answered
        }
        let mut b = Builder::reply(req, remote.addr, code, reason);
        if code == 503 {
            b.header("Retry-After", "5");
        }
        self.out.push_back(Transmit {
            remote: reply_remote(req, remote),
            payload: b.finish(),
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

    fn with_calls(&mut self, now: Instant, f: impl FnOnce(&mut Calls, &mut calls::Cx<'_>)) {
        let out = run_module(
            now,
            &self.env,
            &self.config,
            &mut self.counters,
            &mut self.calls,
            f,
        );
        self.execute(now, Owner::Calls, out, TimerKey::Calls);
    }

    fn with_trunks(&mut self, now: Instant, f: impl FnOnce(&mut Trunks, &mut trunk::Cx<'_>)) {
        let out = run_module(
            now,
            &self.env,
            &self.config,
            &mut self.counters,
            &mut self.trunks,
            f,
        );
        self.execute(now, Owner::Trunk, out, TimerKey::Trunk);
    }

    /// This shard registers these trunks (shard 0 does), reporting on `board`.
    pub fn registering(mut self, trunks: &[trunk::Spec], board: trunk::Board) -> Self {
        self.trunks = Trunks::new(trunks, board);
        self
    }

    /// The shard starts: its trunks register.
    pub fn start(&mut self, now: Instant) {
        if !self.trunks.is_empty() {
            self.with_trunks(now, |t, cx| t.on_start(cx));
        }
    }

    /// The PBX stops: the trunks remove their registrations.
    pub fn stop(&mut self, now: Instant) {
        if !self.trunks.is_empty() {
            self.with_trunks(now, |t, cx| t.on_stop(cx));
            self.process_events(now);
        }
    }

    /// A TCP connection we opened to `peer` closed: the trunks registered
    /// over it register again.
    pub fn connection_closed(&mut self, now: Instant, peer: std::net::SocketAddr) {
        if !self.trunks.is_empty() {
            self.with_trunks(now, |t, cx| t.on_closed(cx, peer));
            self.process_events(now);
        }
    }

    /// DNS gave trunk `t` new addresses: its registration follows.
    pub fn trunk_relocated(&mut self, now: Instant, t: crate::outside::TrunkId) {
        if !self.trunks.is_empty() {
            self.with_trunks(now, |trunks, cx| trunks.on_relocated(cx, t));
            self.process_events(now);
        }
    }

    fn with_blf(&mut self, now: Instant, f: impl FnOnce(&mut Blf, &mut blf::Cx<'_>)) {
        let out = run_module(
            now,
            &self.env,
            &self.config,
            &mut self.counters,
            &mut self.blf,
            f,
        );
        self.execute(now, Owner::Blf, out, TimerKey::Blf);
    }

    /// Carries out a module's effects, in order.
    fn execute<T>(
        &mut self,
        now: Instant,
        owner: Owner,
        effects: Vec<Effect<T>>,
        key: fn(T) -> TimerKey,
    ) {
        for effect in effects {
            match effect {
                Effect::Respond { tx, bytes, durable } => {
                    self.answer(now, tx, bytes, durable, false)
                }
                Effect::Send {
                    id,
                    request,
                    remote,
                } => {
                    let sent = request
                        .map_err(|e| TxError::BadRequest(e.to_string()))
                        .and_then(|r| self.layer.send_request(now, r, remote));
                    match sent {
                        Ok(tx) => {
                            self.requests.insert(tx, (owner, id));
                        }
                        Err(e) => {
                            tracing::warn!(%remote, "request not sent: {e}");
                            self.unsent.push((owner, id));
                        }
                    }
                }
                Effect::Transmit(t) => self.out.push_back(t),
                Effect::Timer { at, key: k } => self.timers.push(Reverse((at, key(k)))),
                Effect::Store(w) => {
                    self.writes.push(w);
                    self.write_seq += 1;
                    self.flush_wanted.get_or_insert(false);
                }
                Effect::Callback(r) => self.callbacks.push(r),
                Effect::Attempt(r) => self.attempts.push(r),
                Effect::Recording(r) => self.recordings.push(r),
                Effect::Handoff(to, h) => self.handoffs.push((to, h)),
                Effect::Lamp(extension) => self.lamps.push(extension),
                Effect::PassOn {
                    tx,
                    remote,
                    to,
                    message,
                } => match self.layer.give_up(tx) {
                    Some(request) => {
                        let passed = crate::tu::Passed {
                            request,
                            remote,
                            message,
                        };
                        self.handoffs.push((to, Box::new(passed)));
                    }
                    None => tracing::debug!(?tx, "a request already answered is not passed on"),
                },
            }
        }
    }

    /// A final answer: at once, or once every store write so far is durable
    /// when it confirms one. `forget` ends the transaction with it.
    fn answer(&mut self, now: Instant, tx: TxId, answer: Bytes, durable: bool, forget: bool) {
        if durable && self.write_seq > self.flushed_seq {
            let seq = self.write_seq;
            let bye = self
                .layer
                .request(tx)
                .is_some_and(|r| r.method() == Some(&Method::Bye));
            if !bye {
                self.flush_wanted = Some(true);
            }
            self.held.push_back(Held {
                seq,
                tx,
                answer,
                forget,
            });
        } else {
            self.send(now, tx, answer, forget);
        }
    }

    fn send(&mut self, now: Instant, tx: TxId, bytes: Bytes, forget: bool) {
        let sent = if forget {
            self.layer.respond_and_forget(now, tx, bytes)
        } else {
            self.layer.respond(now, tx, bytes)
        };
        if let Err(e) = sent {
            tracing::debug!(?tx, "answer not sent: {e}");
        }
    }

    fn send_final(&mut self, now: Instant, tx: TxId, bytes: Bytes) {
        self.send(now, tx, bytes, false);
    }

    /// An answer (or `None`: a timeout) for a module's request.
    fn deliver(&mut self, now: Instant, owner: Owner, id: ReqId, resp: Option<Message>) {
        match owner {
            Owner::Calls => self.with_calls(now, |c, cx| c.on_response(cx, id, resp)),
            Owner::Blf => self.with_blf(now, |b, cx| b.on_response(cx, id, resp.as_ref())),
            Owner::Trunk => self.with_trunks(now, |t, cx| t.on_response(cx, id, resp.as_ref())),
        }
    }

    fn process_events(&mut self, now: Instant) {
        loop {
            while let Some(ev) = self.layer.poll_event() {
                match ev {
                    TxEvent::Request {
                        tx,
                        request,
                        remote,
                    } => self.handle_request(now, tx, &request, remote),
                    TxEvent::Ack { request, .. } => {
                        self.with_calls(now, |c, cx| c.on_ack(cx, &request))
                    }
                    TxEvent::Response { tx, response } => {
                        if let Some((owner, id)) = self.requests.get(&tx).copied() {
                            self.deliver(now, owner, id, Some(response));
                        }
                    }
                    TxEvent::Timeout { tx } => {
                        if let Some((owner, id)) = self.requests.get(&tx).copied() {
                            self.deliver(now, owner, id, None);
                        }
                    }
                    TxEvent::Terminated { tx } => {
                        self.requests.remove(&tx);
                    }
                    TxEvent::StrayResponse { .. } => {
                        tracing::debug!("response matches nothing we sent; dropped");
                    }
                }
            }
            if self.unsent.is_empty() {
                break;
            }
            for (owner, id) in std::mem::take(&mut self.unsent) {
                self.deliver(now, owner, id, None);
            }
        }
    }

    fn handle_request(&mut self, now: Instant, tx: TxId, req: &Message, remote: Remote) {
        let Some(method) = req.method().cloned() else {
            return;
        };
        let reply = |this: &mut Self, status: StatusCode| {
            let b = Builder::reply(req, remote.addr, status.0, status.reason());
            this.send_final(now, tx, b.finish());
        };
        if req.version() != b"SIP/2.0" {
            return reply(self, StatusCode::VERSION_NOT_SUPPORTED);
        }
        if method == Method::Cancel {
            // RFC 3261 §9.2: 481 without a matching INVITE; else 200, and a call
            // still ringing ends with 487 (an answered one is not affected).
            if self.layer.find_invite(req).is_none() {
                return reply(self, StatusCode::CALL_DOES_NOT_EXIST);
            }
            reply(self, StatusCode::OK);
            if let Some(call_id) = req.call_id().map(CallId::from_bytes) {
                self.with_calls(now, |c, cx| c.on_cancel(cx, &call_id));
            }
            return;
        }
        match req.max_forwards() {
            Some(Err(())) => {
                let b = Builder::reply(req, remote.addr, 400, "Bad Max-Forwards");
                return self.send_final(now, tx, b.finish());
            }
            Some(Ok(0)) => return reply(self, StatusCode::TOO_MANY_HOPS),
            _ => {}
        }
        if req.request_uri().is_none() {
            let status = StatusCode::UNSUPPORTED_URI_SCHEME;
            let mut b = Builder::reply(req, remote.addr, status.0, status.reason());
            b.header("Allow", ALLOW);
            return self.send_final(now, tx, b.finish());
        }
        let unsupported: Vec<String> = req
            .require()
            .filter(|t| !(method == Method::Invite && t.eq_ignore_ascii_case(b"replaces")))
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect();
        if !unsupported.is_empty() {
            let status = StatusCode::BAD_EXTENSION;
            let mut b = Builder::reply(req, remote.addr, status.0, status.reason());
            b.header("Unsupported", unsupported.join(", "));
            return self.send_final(now, tx, b.finish());
        }
        let in_dialog = req.to_header().is_some_and(|t| t.tag().is_some());
        match method {
            Method::Register => self.register(now, tx, req, remote),
            Method::Subscribe => self.with_blf(now, |b, cx| b.on_subscribe(cx, tx, req, remote)),
            Method::Invite | Method::Bye | Method::Info | Method::Update | Method::Refer
                if in_dialog =>
            {
                self.with_calls(now, |c, cx| c.on_in_dialog(cx, tx, req, remote))
            }
            Method::Invite => {
                // No reference count is taken per INVITE: the trunk lookup
                // borrows the environment only until the call module runs.
                let outside = &self.env.outside;
                if let Some(trunk) = outside.trunk_of(remote.addr.ip(), req) {
                    let ip = remote.addr.ip();
                    // Known by its registration's token: the provider's edge,
                    // trusted from now on like its registrar.
                    if outside.trunk_from(ip).is_none() && self.env.guard.trust(ip) {
                        let name = &outside.line(trunk).name;
                        tracing::info!(trunk = %name, %ip, "trunk address learnt from its registration");
                    }
                    let inbound = outside.inbound(trunk, req);
                    let target = match inbound.target.as_deref() {
                        Some(t) => match t.strip_prefix("group:") {
                            Some(group) => Target::Group(group.to_string()),
                            None => self.target(t.as_bytes()),
                        },
                        None => Target::Unknown,
                    };
                    return self.with_calls(now, |c, cx| {
                        c.on_trunk_invite(cx, tx, req, remote, trunk, inbound, target)
                    });
                }
                let number = req.request_uri().and_then(|u| u.user).unwrap_or_default();
                let target = self.target(number);
                self.with_calls(now, |c, cx| c.on_invite(cx, tx, req, remote, target))
            }
            Method::Bye | Method::Info | Method::Update => {
                reply(self, StatusCode::CALL_DOES_NOT_EXIST)
            }
            // RFC 3515 lets a REFER make its own dialog; we transfer only
            // calls in progress, whose dialog the REFER is sent in.
            Method::Refer => {
                let b = Builder::reply(req, remote.addr, 403, "Forbidden (REFER Outside A Dialog)");
                self.send_final(now, tx, b.finish());
            }
            Method::Options => {
                let mut b = Builder::reply(req, remote.addr, 200, "OK");
                b.header("Allow", ALLOW)
                    .header("Allow-Events", blf::ALLOW_EVENTS)
                    .header("Accept", "application/sdp")
                    .header("Supported", SUPPORTED);
                self.send_final(now, tx, b.finish());
            }
            Method::Extension(_) => reply(self, StatusCode::NOT_IMPLEMENTED),
            _ => {
                let status = StatusCode::METHOD_NOT_ALLOWED;
                let mut b = Builder::reply(req, remote.addr, status.0, status.reason());
                b.header("Allow", ALLOW);
                self.send_final(now, tx, b.finish());
            }
        }
    }

    /// Where a dialled number goes: the dialplan's numbers first, then the
    /// outside routes.
    fn target(&self, number: &[u8]) -> Target {
        let env = &self.env;
        let target = self
            .config
            .dialplan
            .route(number, &env.routing, |n| env.users.contains(n));
        let outside = || {
            let number = std::str::from_utf8(number).ok()?;
            env.outside.route(number)
        };
        match target {
            Target::Unknown => outside().map_or(Target::Unknown, Target::Outside),
            t => t,
        }
    }

    fn register(&mut self, now: Instant, tx: TxId, req: &Message, remote: Remote) {
        let env = Arc::clone(&self.env);
        let wall = self.config.clock.at(now);
        let a = env.registrar.on_register(
            now,
            wall,
            req,
            remote,
            crate::registrar::Credentials {
                auth: &env.auth,
                users: &env.users,
                guard: &env.guard,
            },
        );
        if let Some((user, live)) = &a.registered {
            let _ = env.presence.set_registered(user, *live, wall);
        }
        if a.wrote {
            env.stats.registrations.fetch_add(1, Ordering::Relaxed);
            // The registrar queued its writes itself; one more sequence number
            // makes the flush cover them.
            self.write_seq += 1;
            self.flush_wanted.get_or_insert(false);
        }
        // The registrar answers retransmissions itself (stateless, RFC 3261
        // §8.2.7): its transactions end with the answer instead of holding it
        // for Timer J's 32 s.
        self.answer(now, tx, a.answer, a.durable, true);
        if let Some((user, true)) = &a.registered {
            // A phone that wants its lamp unsolicited learns it as it (re)registers.
            if env.mwi.unsolicited(user) {
                self.with_blf(now, |b, cx| b.on_registered(cx, user));
            }
        }
    }

    /// An extension's presence changed (any shard's doing): its BLF subscribers
    /// are notified, waiting queue calls look for an agent again.
    pub fn handle_presence(&mut self, now: Instant, change: &Change) {
        self.with_blf(now, |b, cx| b.on_presence_change(cx, change));
        self.retry_waiting(now);
        self.process_events(now);
    }

    /// Presence changes were missed (this shard fell behind the stream): look
    /// at everything again.
    pub fn handle_presence_lag(&mut self, now: Instant) {
        self.with_blf(now, |b, cx| b.on_presence_lag(cx));
        self.retry_waiting(now);
        self.process_events(now);
    }

    fn retry_waiting(&mut self, now: Instant) {
        if self.env.routing.has_waiting(self.config.index) {
            self.with_calls(now, |c, cx| c.on_presence(cx));
        }
    }

    /// `extension`'s message counts changed: its message-summary subscribers
    /// are notified, and shard 0 notifies its phones unsolicited if they want
    /// that (one shard, so each change is sent once).
    pub fn handle_messages(&mut self, now: Instant, extension: &str) {
        let unsolicited = self.config.index == 0 && self.env.mwi.unsolicited(extension);
        if !unsolicited && !self.blf.watches(extension) {
            return;
        }
        self.with_blf(now, |b, cx| {
            b.on_messages_change(cx, extension);
            if unsolicited {
                b.notify_unsolicited(cx, extension);
            }
        });
    }

    /// Whether this shard needs presence changes: it has BLF subscriptions or
    /// queue calls waiting for an agent.
    pub fn wants_presence(&self) -> bool {
        self.blf.count() > 0 || self.env.routing.has_waiting(self.config.index)
    }

    /// A media session of this Call-ID reports an event (inactivity, a digit,
    /// a saved recording).
    pub fn handle_media(&mut self, now: Instant, call_id: &CallId, event: MediaEvent) {
        self.with_calls(now, |c, cx| c.on_media(cx, call_id, event));
        self.process_events(now);
    }

    /// The desk stored (`saved`) the call-back a queue call asked for.
    pub fn handle_callback_saved(&mut self, now: Instant, call_id: &CallId, saved: bool) {
        self.with_calls(now, |c, cx| c.on_callback_saved(cx, call_id, saved));
        self.process_events(now);
    }

    /// Places a call (third-party call control): ring `from`, then connect `to`.
    pub fn originate(
        &mut self,
        now: Instant,
        from: &str,
        to: &str,
    ) -> Result<CallId, OriginateError> {
        let mut result = Err(OriginateError::Stopped);
        self.with_calls(now, |c, cx| result = c.originate(cx, from, to));
        self.process_events(now);
        result
    }

    /// Starts a campaign attempt: reserve and ring the agent.
    pub fn attempt(
        &mut self,
        now: Instant,
        call: calls::AttemptCall,
    ) -> Result<CallId, OriginateError> {
        let mut result = Err(OriginateError::Stopped);
        self.with_calls(now, |c, cx| result = c.attempt(cx, call));
        self.process_events(now);
        result
    }

    /// The agent of attempt `call` confirmed (`dial`) or skipped its
    /// customer; `false` when it is not waiting for that.
    pub fn confirm(&mut self, now: Instant, call: &CallId, dial: bool) -> bool {
        let mut result = false;
        self.with_calls(now, |c, cx| result = c.confirm(cx, call, dial));
        self.process_events(now);
        result
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.layer.handle_timeout(now);
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, key))) = self.timers.pop() else {
                break;
            };
            match key {
                TimerKey::Calls(k) => self.with_calls(now, |c, cx| c.on_timer(cx, &k, at)),
                TimerKey::Blf(k) => self.with_blf(now, |b, cx| b.on_timer(cx, &k, at)),
                TimerKey::Trunk(k) => self.with_trunks(now, |t, cx| t.on_timer(cx, &k, at)),
            }
        }
        self.process_events(now);
    }

    /// The store has flushed every write up to `seq`: release what they confirm.
    pub fn handle_flushed(&mut self, now: Instant, seq: u64) {
        self.flushed_seq = self.flushed_seq.max(seq);
        while self.held.front().is_some_and(|h| h.seq <= seq) {
            if let Some(h) = self.held.pop_front() {
                self.send(now, h.tx, h.answer, h.forget);
            }
        }
        self.process_events(now);
    }

    /// The store failed to flush: what was held cannot be confirmed.
    pub fn handle_flush_failed(&mut self, now: Instant) {
        for h in std::mem::take(&mut self.held) {
            let (Some(req), Some(remote)) = (self.layer.request(h.tx), self.layer.remote(h.tx))
            else {
                continue;
            };
            let b = Builder::reply(req, remote.addr, 500, "Server Internal Error (Storage)");
            self.send(now, h.tx, b.finish(), h.forget);
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front().or_else(|| self.layer.poll_transmit())
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let module = self.timers.peek().map(|Reverse((at, _))| *at);
        match (self.layer.poll_timeout(), module) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The store writes made since the last call, in order (for the writer).
    pub fn poll_writes(&mut self) -> Vec<Write> {
        std::mem::take(&mut self.writes)
    }

    /// The call-backs the calls asked for, for the desk.
    pub fn poll_callbacks(&mut self) -> Vec<crate::callbacks::Request> {
        std::mem::take(&mut self.callbacks)
    }

    /// Extensions whose message lamps changed here (every shard notifies).
    pub fn poll_lamps(&mut self) -> Vec<String> {
        std::mem::take(&mut self.lamps)
    }

    /// Messages for other shards' calls: (shard, message).
    pub fn poll_handoffs(&mut self) -> Vec<(usize, crate::tu::Handoff)> {
        std::mem::take(&mut self.handoffs)
    }

    /// The desk transfers `user`'s call with leg `leg`.
    pub fn transfer(
        &mut self,
        now: Instant,
        user: &str,
        leg: &CallId,
        to: calls::TransferTo,
    ) -> Result<(), calls::TransferError> {
        let mut result = Err(calls::TransferError::Stopped);
        self.with_calls(now, |c, cx| result = c.transfer(cx, user, leg, to));
        self.process_events(now);
        result
    }

    /// The desk starts (`on`) or stops recording `user`'s call with leg
    /// `leg`; the recording's id.
    pub fn record(
        &mut self,
        now: Instant,
        user: &str,
        leg: &CallId,
        on: bool,
    ) -> Result<u64, calls::RecordError> {
        let mut result = Err(calls::RecordError::Stopped);
        self.with_calls(now, |c, cx| result = c.record(cx, user, leg, on));
        self.process_events(now);
        result
    }

    /// Another shard's calls hand this one a message.
    /// A new request another shard passed on becomes a server transaction of
    /// this one (unless a copy of it already is).
    pub fn handle_handoff(&mut self, now: Instant, message: crate::tu::Handoff) {
        match message.downcast::<crate::tu::Passed>() {
            Ok(passed) => {
                let crate::tu::Passed {
                    request,
                    remote,
                    message,
                } = *passed;
                if let Some(tx) = self.layer.adopt(request.clone(), remote) {
                    self.with_calls(now, |c, cx| c.on_passed(cx, tx, &request, remote, message));
                }
            }
            Err(message) => self.with_calls(now, |c, cx| c.on_handoff(cx, message)),
        }
        self.process_events(now);
    }

    /// What campaign attempts' calls reported, for the desk.
    pub fn poll_attempts(&mut self) -> Vec<crate::campaigns::Report> {
        std::mem::take(&mut self.attempts)
    }

    /// What call recordings did, for the desk.
    pub fn poll_recordings(&mut self) -> Vec<crate::recordings::Report> {
        std::mem::take(&mut self.recordings)
    }

    /// A flush to ask for, once: the runtime should flush the store and then
    /// call `handle_flushed(seq)`.
    pub fn poll_flush(&mut self) -> Option<FlushAsk> {
        self.flush_wanted.take().map(|prompt| FlushAsk {
            seq: self.write_seq,
            prompt,
        })
    }

    /// Live transactions and held answers.
    #[cfg(test)]
    pub fn load(&self) -> (usize, usize) {
        (self.layer.len(), self.held.len())
    }

    /// Calls and subscriptions in progress.
    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize) {
        (self.calls.count(), self.blf.count())
    }
}

/// Runs one input of a module with a fresh context; returns what it asked for.
fn run_module<M, T>(
    now: Instant,
    env: &Arc<Env>,
    config: &ShardConfig,
    counters: &mut Counters,
    module: &mut M,
    f: impl FnOnce(&mut M, &mut Cx<'_, T>),
) -> Vec<Effect<T>> {
    let mut out = Vec::new();
    let wall = config.clock.at(now);
    let mut cx = Cx::new(now, wall, env, config.index, counters, &mut out);
    f(module, &mut cx);
    out
}

/// A request that starts something new (no To tag) and may be refused under
/// load; ACK and CANCEL finish what exists and are never shed.
fn is_sheddable(msg: &Message) -> bool {
    !matches!(msg.method(), Some(Method::Ack | Method::Cancel))
        && msg.to_header().is_some_and(|t| t.tag().is_none())
}

/// Problems that stop a request from forming a transaction; answered with a
/// stateless 400 (or dropped when there is no Via to answer to).
fn stateless_problem(msg: &Message) -> Option<&'static str> {
    if let Some(defect) = msg.defect() {
        return Some(defect);
    }
    if msg.top_via().is_none() || msg.vias().any(|v| v.is_none()) {
        return Some("Bad Via Header");
    }
    if msg.from_header().is_none() {
        return Some("Missing Or Bad From Header");
    }
    if msg.to_header().is_none() {
        return Some("Missing Or Bad To Header");
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

#[cfg(test)]
mod tests;

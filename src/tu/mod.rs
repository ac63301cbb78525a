//! What every transaction user shares: the modules above the transaction layer
//! (calls, BLF) are driven by the shard with a [`Cx`] — the time, a read-only
//! [`Env`] of hot-path state, and an outbox — and act only by adding
//! [`Effect`]s to it: answer a server transaction (optionally held until the
//! store has flushed), send a request, transmit bytes outside a transaction, arm
//! a timer under a typed key, write to the store. The shard executes the effects
//! in order after the module returns; a module never sees the transaction layer,
//! a socket or a clock.

mod addrs;

pub use addrs::LocalAddrs;

use crate::clock::UnixMillis;
use crate::config::TestNumbersConfig;
use crate::history::History;
use crate::media::prompt::Prompt;
use crate::media::MediaEngine;
use crate::presence::Presence;
use crate::registrar::Registrar;
use crate::routing::Directory;
use crate::sip::auth::DigestAuthority;
use crate::sip::message::{build::random_tag, Builder, Message};
use crate::sip::transaction::{TimerConfig, Transmit, TxId};
use crate::sip::SipError;
use crate::sip::{CallId, Remote, StatusCode};
use crate::store::{IdGen, Write};
use crate::users::Users;
use bytes::Bytes;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters shared by all shards.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub dropped_malformed: AtomicU64,
    /// Requests answered without a transaction (400 for bad ones, 503 when overloaded).
    pub answered_statelessly: AtomicU64,
    /// New requests refused with 503 because the shard was overloaded.
    pub shed: AtomicU64,
    pub registrations: AtomicU64,
    /// Calls in progress (local and bridged), over all shards.
    pub live_calls: AtomicI64,
    /// Calls started since the PBX started.
    pub calls_started: AtomicU64,
}

/// Call settings from the configuration.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// Unanswered calls give up after this long (480).
    pub ring_timeout: Duration,
    /// Whether INVITEs to extensions need digest credentials (407).
    pub authenticate: bool,
    /// The shortest session interval we accept (RFC 4028 Min-SE; below: 422).
    pub min_session_expires: Duration,
    /// What the first party of a placed call hears while the second one rings.
    pub ringback: Arc<Prompt>,
    /// What a campaign's agent hears until they confirm the customer.
    pub waiting: Arc<Prompt>,
    /// What a campaign's customer hears when the agent's leg ended first.
    pub farewell: Arc<Prompt>,
    pub test_numbers: TestNumbersConfig,
    /// The in-call code that starts and stops recording (empty: none).
    pub record_code: String,
}

/// The read-only context of every shard: hot-path state behind shared handles
/// (never held across an `.await`) and settings.
#[derive(Debug)]
pub struct Env {
    pub users: Users,
    pub registrar: Registrar,
    /// Every extension's live state (one source of truth).
    pub presence: Presence,
    /// What each extension has waiting (the message lamp).
    pub mwi: crate::mwi::Mwi,
    /// Each user's call forwarding.
    pub forwarding: crate::forwarding::Forwarding,
    /// The users' mailboxes.
    pub voicemail: crate::voicemail::Mailboxes,
    /// Who may talk to us: rate limits, bans, failed-authentication counts.
    pub guard: crate::guard::Guard,
    /// Trunks, DIDs, outbound routes and the toll-fraud guard.
    pub outside: crate::outside::Outside,
    pub auth: DigestAuthority,
    /// Groups and queues, and the queues' waiting lines (the ACD).
    pub routing: Directory,
    /// The caller index (sticky routing).
    pub history: History,
    /// Media sessions (test numbers, relays); `None` runs without media.
    pub media: Option<Arc<dyn MediaEngine>>,
    /// Played to a party the other one holds; `None`: no music on hold.
    pub hold_music: Option<Arc<Prompt>>,
    pub timers: TimerConfig,
    pub calls: CallSettings,
    /// Our SIP domain (From/To of the calls we place).
    pub domain: String,
    /// Our SIP port (Via and Contact of what we send).
    pub sip_port: u16,
    /// Our address toward each destination (SDP, Via, Contact).
    pub addrs: LocalAddrs,
    /// How many shards there are (dispatch is by Call-ID hash modulo this).
    pub shard_count: usize,
    /// Legs handed to another shard than their Call-ID's hash (transfers).
    pub moved: Arc<crate::sip::call_id::Moved>,
    pub stats: Stats,
}

impl Env {
    /// Where a forwarded call (or a ring group's last resort) to `number`
    /// goes: an extension, ring group, queue or outside number (test numbers
    /// and feature codes are for people dialling, not for forwards).
    pub fn forward_target(&self, number: &str) -> crate::routing::dialplan::Target {
        use crate::routing::dialplan::Target;
        let routing = &self.routing;
        if let Some(q) = routing.queue_by_number(number) {
            Target::Queue(q)
        } else if routing.ring_group(number).is_some() {
            Target::RingGroup(number.to_string())
        } else if self.users.contains(number) {
            Target::Extension(number.to_string())
        } else {
            self.outside
                .route(number)
                .map_or(Target::Unknown, Target::Outside)
        }
    }

    /// What `number` is, as a forwarding destination of `user`.
    pub fn reach(&self, user: &str, number: &str) -> crate::forwarding::Reach {
        use crate::forwarding::Reach;
        use crate::routing::dialplan::Target;
        match self.forward_target(number) {
            Target::Outside(r) => Reach::Outside {
                allowed: self.outside.may_dial(user, r, number),
            },
            Target::Unknown => Reach::Unknown,
            _ => Reach::Inside,
        }
    }
}

/// Identifies a request a module sent (its answer comes back under it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReqId(pub u64);

/// What a module asks the shard to do. `T` is the module's timer key.
#[derive(Debug)]
pub enum Effect<T> {
    /// Answer server transaction `tx`; `durable`: only once every store write
    /// made so far is on disk.
    Respond {
        tx: TxId,
        bytes: Bytes,
        durable: bool,
    },
    /// Send a request in a new client transaction: parsed once, by the
    /// module that built it (an unreadable one is answered as a timeout).
    Send {
        id: ReqId,
        request: Result<Message, SipError>,
        remote: Remote,
    },
    /// Bytes outside any transaction (ACK for a 2xx, 2xx retransmissions).
    Transmit(Transmit),
    /// Call the module's `on_timer(key)` at `at` (a key may fire stale: the
    /// module checks).
    Timer { at: Instant, key: T },
    /// A durable change (made durable by the next group commit).
    Store(Write),
    /// A call-back the PBX asks the desk to write.
    Callback(crate::callbacks::Request),
    /// A campaign attempt's call moved on (the desk pushes, erases, records).
    Attempt(crate::campaigns::Report),
    /// A call recording started, was saved or failed (the desk tells the
    /// agent who started it).
    Recording(crate::recordings::Report),
    /// `extension`'s message lamp changed: every shard's subscriptions to
    /// it are told.
    Lamp(String),
    /// A message for the same module of another shard (a transfer joining
    /// calls of two shards); opaque to the runtime, which delivers it.
    Handoff(usize, Handoff),
    /// Give server transaction `tx` (a new request from `remote`, not yet
    /// answered) up to shard `to`, whose same module takes it on with
    /// `message` (see [`Passed`]): a request about a call that lives there.
    PassOn {
        tx: TxId,
        remote: Remote,
        to: usize,
        message: Handoff,
    },
}

/// A new request one shard gave up to another ([`Effect::PassOn`]): the
/// receiving shard makes the request's server transaction its own and hands
/// it, with `message`, to the same module there.
pub struct Passed {
    pub request: Message,
    pub remote: Remote,
    pub message: Handoff,
}

/// What one shard's module hands to another's (see [`Effect::Handoff`]).
pub type Handoff = Box<dyn std::any::Any + Send>;

/// Per-shard counters the modules draw from.
#[derive(Debug)]
pub struct Counters {
    next_req: u64,
    /// CDR and response-record ids.
    pub ids: IdGen,
}

impl Counters {
    pub fn new(ids: IdGen) -> Counters {
        Counters { next_req: 0, ids }
    }
}

/// The context of one module call: the time, the environment, and the outbox.
#[derive(Debug)]
pub struct Cx<'a, T> {
    pub now: Instant,
    pub wall: UnixMillis,
    pub env: &'a Env,
    /// This shard's index (Call-IDs we choose hash here).
    pub shard: usize,
    counters: &'a mut Counters,
    out: &'a mut Vec<Effect<T>>,
}

impl<'a, T> Cx<'a, T> {
    pub fn new(
        now: Instant,
        wall: UnixMillis,
        env: &'a Env,
        shard: usize,
        counters: &'a mut Counters,
        out: &'a mut Vec<Effect<T>>,
    ) -> Self {
        Cx {
            now,
            wall,
            env,
            shard,
            counters,
            out,
        }
    }

    /// Answers server transaction `tx` now.
    pub fn respond(&mut self, tx: TxId, bytes: Bytes) {
        self.out.push(Effect::Respond {
            tx,
            bytes,
            durable: false,
        });
    }

    /// Answers `tx` once every store write so far is durable.
    pub fn respond_durable(&mut self, tx: TxId, bytes: Bytes) {
        self.out.push(Effect::Respond {
            tx,
            bytes,
            durable: true,
        });
    }

    /// A response to `req` with our Server header and a To tag (kept if the
    /// request's To already has one).
    pub fn response(&self, req: &Message, remote: Remote, status: StatusCode) -> Builder {
        Builder::reply(req, remote.addr, status.0, status.reason())
    }

    /// A response with a reason phrase of our own (one that names the problem).
    pub fn response_with(&self, req: &Message, remote: Remote, code: u16, reason: &str) -> Builder {
        Builder::reply(req, remote.addr, code, reason)
    }

    /// Answers `req` with `status` and its standard reason phrase.
    pub fn reply(&mut self, tx: TxId, req: &Message, remote: Remote, status: StatusCode) {
        self.reply_with(tx, req, remote, status.0, status.reason());
    }

    /// Answers `req` with a reason of our own.
    pub fn reply_with(&mut self, tx: TxId, req: &Message, remote: Remote, code: u16, reason: &str) {
        let bytes = Builder::reply(req, remote.addr, code, reason).finish();
        self.respond(tx, bytes);
    }

    /// Sends a request; its answers (or `None` for a timeout or a failed send)
    /// come back to the module under the returned id.
    pub fn send(&mut self, bytes: Bytes, remote: Remote) -> ReqId {
        let request = crate::sip::message::parse(bytes, &Default::default());
        self.push_send(request, remote)
    }

    /// [`send`](Self::send) for a request the module has parsed already (it
    /// keeps the `Message`: a B leg's INVITE, for its CANCEL and ACK).
    pub fn send_parsed(&mut self, request: Message, remote: Remote) -> ReqId {
        self.push_send(Ok(request), remote)
    }

    fn push_send(&mut self, request: Result<Message, SipError>, remote: Remote) -> ReqId {
        self.counters.next_req += 1;
        let id = ReqId(self.counters.next_req);
        self.out.push(Effect::Send {
            id,
            request,
            remote,
        });
        id
    }

    pub fn transmit(&mut self, remote: Remote, payload: Bytes) {
        self.out
            .push(Effect::Transmit(Transmit { remote, payload }));
    }

    pub fn timer(&mut self, at: Instant, key: T) {
        self.out.push(Effect::Timer { at, key });
    }

    pub fn store(&mut self, w: Write) {
        self.out.push(Effect::Store(w));
    }

    /// Asks the desk for a call-back.
    pub fn callback(&mut self, r: crate::callbacks::Request) {
        self.out.push(Effect::Callback(r));
    }

    /// Reports a campaign attempt's step to the desk.
    pub fn attempt(&mut self, r: crate::campaigns::Report) {
        self.out.push(Effect::Attempt(r));
    }

    /// Reports a call recording's progress to the desk.
    pub fn recording(&mut self, r: crate::recordings::Report) {
        self.out.push(Effect::Recording(r));
    }

    /// Tells every shard that `extension`'s message lamp changed.
    pub fn lamp(&mut self, extension: &str) {
        self.out.push(Effect::Lamp(extension.to_string()));
    }

    /// Hands `message` to this module on shard `shard`.
    pub fn hand_off(&mut self, shard: usize, message: Handoff) {
        self.out.push(Effect::Handoff(shard, message));
    }

    /// Gives new request `tx` up to this module on shard `shard` (see
    /// [`Effect::PassOn`]); messages of its Call-ID must be routed there too.
    pub fn pass_on(&mut self, tx: TxId, remote: Remote, shard: usize, message: Handoff) {
        self.out.push(Effect::PassOn {
            tx,
            remote,
            to: shard,
            message,
        });
    }

    /// A new unique id (CDRs, response records).
    pub fn next_id(&mut self) -> u64 {
        self.counters.ids.next_id(self.wall)
    }

    /// A new Call-ID that the dispatcher routes to this shard (B legs stay with A).
    pub fn new_call_id(&self) -> CallId {
        loop {
            let id = CallId::from(format!("{}@sipdesk", random_tag()));
            if id.shard(self.env.shard_count) == self.shard {
                return id;
            }
        }
    }

    /// Our media address toward `remote`.
    pub fn media_ip(&self, remote: Remote) -> std::net::IpAddr {
        self.env.addrs.toward(remote.addr)
    }

    /// A Via for a new request of ours toward `remote` (a fresh branch, and
    /// rport: answers come back to where we sent from).
    pub fn via(&self, remote: Remote) -> String {
        format!(
            "SIP/2.0/{} {};branch=z9hG4bK{};rport",
            remote.transport,
            self.hostport(remote),
            random_tag()
        )
    }

    /// Our `host:port` toward `remote`, for Via and Contact.
    pub fn hostport(&self, remote: Remote) -> String {
        match self.media_ip(remote) {
            std::net::IpAddr::V4(v4) => format!("{v4}:{}", self.env.sip_port),
            std::net::IpAddr::V6(v6) => format!("[{v6}]:{}", self.env.sip_port),
        }
    }
}

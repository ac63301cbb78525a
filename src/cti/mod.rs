//! The desk: the HTTP API under `/api/v1` (JSON, OpenAPI document at
//! `/api/v1/openapi.json`), its numbered event stream (`/api/v1/events`,
//! WebSocket), and the agent desktop and wallboard served from the binary.
//!
//! It reads the PBX's shared state (presence, users, groups) and sends
//! commands (originate) through [`Commands`], which the runtime implements: the
//! desk never reaches into a shard. Every endpoint but login authorises its
//! caller ([`api::Caller`]); an agent acts only as themself, a supervisor may
//! act for anyone.
//!
//! What it owns: the sessions ([`session`]), the login guard, and the event
//! log ([`events`]), which the presence pump fills.

pub mod api;
mod assets;
mod callbacks;
mod campaigns;
pub mod dialer;
pub mod events;
pub mod export;
mod forwarding;
pub mod metrics;
mod recordings;
pub mod session;
mod voicemail;

use crate::calls::OriginateError;
use crate::clock::{UnixMillis, WallClock};
use crate::history::History;
use crate::presence::{Change, Presence, State};
use crate::routing::stats::QueueStats;
use crate::store::Store;
use crate::users::Users;
use events::{Audience, BoardTracker, Body, CallPhase, CallTracker, EventLog, ScreenPop, Seq};
use session::{LoginGuard, Role, Sessions};
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

/// A command's answer, when it comes.
pub type Pending<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the desk asks of the PBX (the runtime implements it).
pub trait Commands: Send + Sync + std::fmt::Debug {
    /// Rings `from`'s phone; when it answers, calls `to` and connects them.
    fn originate(&self, from: &str, to: &str) -> Pending<Result<String, OriginateError>>;
    /// Whether the dialplan has somewhere to send `number`.
    fn routable(&self, number: &str) -> bool;
    /// Every queue's statistics as of `now`.
    fn queue_stats(&self, now: UnixMillis) -> Vec<QueueStats>;
    /// The PBX's own figures for `/metrics`.
    fn figures(&self, now: UnixMillis) -> metrics::PbxFigures;
    /// Calls started so far (the call rate's counter; cheap, read each second).
    fn calls_started(&self) -> u64;
    /// Sets how many call-backs wait for each extension (its phone's message
    /// lamp).
    fn messages_waiting(&self, callbacks: &[(String, u32)]);
    /// Sets `extension`'s voicemail counts (new, heard) for its lamp.
    fn voicemail_waiting(&self, extension: &str, counts: (u32, u32));
    /// Every trunk: how it connects, its registration, its channels.
    fn trunks(&self) -> Vec<TrunkLine>;
    /// Tells queue call `call` its call-back is stored (`saved`) or is not.
    fn callback_saved(&self, call: &crate::sip::CallId, saved: bool);
    /// Starts a campaign attempt (reserves and rings the agent); its call.
    fn attempt(
        &self,
        call: crate::calls::AttemptCall,
    ) -> Pending<Result<crate::sip::CallId, OriginateError>>;
    /// The agent of attempt `call` confirmed (`dial`) or skipped; `false`
    /// when the attempt was not waiting for that.
    fn confirm(&self, call: &crate::sip::CallId, dial: bool) -> Pending<bool>;
    /// The trunk named `name`.
    fn trunk(&self, name: &str) -> Option<crate::outside::TrunkId>;
    /// What `number` is, as a forwarding destination of `user`.
    fn reach(&self, user: &str, number: &str) -> crate::forwarding::Reach;
    /// Transfers `user`'s call with leg `leg` to `to`.
    fn transfer(
        &self,
        user: &str,
        leg: &crate::sip::CallId,
        to: crate::calls::TransferTo,
    ) -> Pending<Result<(), crate::calls::TransferError>>;
    /// Starts (`on`) or stops recording `user`'s call with leg `leg`; the
    /// recording's id.
    fn record(
        &self,
        user: &str,
        leg: &crate::sip::CallId,
        on: bool,
    ) -> Pending<Result<u64, crate::calls::RecordError>>;
}

/// A trunk as the desk shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct TrunkLine {
    pub name: String,
    /// `udp` or `tcp`.
    pub transport: String,
    /// Whether sipdesk registers with the provider (else: IP authentication).
    pub registers: bool,
    /// The registration: `registering`, `up` (with `expires_in_secs`) or
    /// `down` (with `reason`); absent for IP authentication.
    #[schema(value_type = Option<Object>)]
    pub registration: Option<crate::trunk::Status>,
    /// Calls in and out now, and the most at once (0: no limit).
    pub channels: u32,
    pub max_channels: u32,
}

/// What the desk is set up with.
#[derive(Debug)]
pub struct DeskConfig {
    /// The digest realm (passwords are checked against the stored HA1).
    pub realm: String,
    pub session_ttl: Duration,
    pub event_buffer: usize,
    pub supervisors: Vec<String>,
    /// The board's groups: name and members, in order. Their members are the
    /// agents: the desk follows their calls (screen pop).
    pub groups: Vec<(String, Vec<String>)>,
    /// The outcomes an agent may pick for a response record.
    pub dispositions: Vec<String>,
    /// A bearer token that may read `/metrics` besides supervisors' sessions.
    pub metrics_token: Option<String>,
    /// The desk's own lane of record ids (the shards have theirs).
    pub record_ids: crate::store::IdGen,
    /// The call-back box as stored.
    pub callbacks: crate::callbacks::CallbackBox,
    /// Where the desk's changes go: [`Writer::commit`](crate::store::Writer::commit)
    /// answers once they are durable.
    pub writer: crate::store::Writer,
    /// Where voice messages are kept (`<id>.wav`).
    pub voice_dir: std::path::PathBuf,
    /// The campaigns as stored.
    pub campaigns: crate::campaigns::Campaigns,
    /// Each trunk's name and numbering (campaign lists are read with it).
    pub trunks: Vec<(String, crate::outside::Numbering)>,
    /// Each queue's number and the groups that answer it (inbound callers
    /// waiting hold a group's campaigns back).
    pub queue_groups: Vec<(String, String)>,
    /// The queues whose call-backs the dialer serves.
    pub auto_callbacks: Vec<dialer::AutoCallbacks>,
    /// What new campaigns get for the settings left out.
    pub campaign_defaults: crate::campaigns::Defaults,
    /// Each user's call forwarding (shared with the calls).
    pub forwarding: crate::forwarding::Forwarding,
    /// The users' mailboxes (shared with the calls).
    pub voicemail: crate::voicemail::Mailboxes,
}

/// The desk's shared state (one per PBX; handlers get an `Arc`).
#[derive(Debug)]
pub struct Desk {
    config: DeskConfig,
    supervisors: HashSet<String>,
    agents: HashSet<String>,
    presence: Presence,
    users: Users,
    /// The customer list the search reads.
    history: History,
    /// Response records are read (screen pop, history) and saved here.
    store: Store,
    commands: Arc<dyn Commands>,
    clock: WallClock,
    sessions: Mutex<Sessions>,
    guard: Mutex<LoginGuard>,
    log: Mutex<EventLog>,
    /// The number of the last event logged: event streams wait on it.
    latest: watch::Sender<Seq>,
    /// Sampled by the tick for `/metrics`.
    call_rate: Mutex<metrics::CallRate>,
    /// Event stream clients connected now.
    stream_clients: AtomicU64,
    /// Ids of the records agents create; held while a create looks for an
    /// earlier record of the same call, so two creates make one record.
    record_ids: tokio::sync::Mutex<crate::store::IdGen>,
    /// The call-back box (one source of truth for open items; a std lock,
    /// never held across an `.await`).
    callbacks: Mutex<crate::callbacks::CallbackBox>,
    /// Each group's members, for call-back audiences and visibility.
    members: std::collections::HashMap<String, HashSet<String>>,
    /// Campaigns, their contacts and the do-not-call list (a std lock, never
    /// held across an `.await`).
    campaigns: Mutex<crate::campaigns::Campaigns>,
    /// The campaign attempts in progress (a std lock, never held across an
    /// `.await`).
    dialer: Mutex<dialer::Dialer>,
    /// Wakes the dialer (a group member's presence changed, an attempt ended).
    dial_now: tokio::sync::Notify,
}

/// A lock that a panicking holder poisoned is still usable: its data are
/// plain maps, consistent at every statement.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Desk {
    pub fn new(
        mut config: DeskConfig,
        presence: Presence,
        users: Users,
        history: History,
        store: Store,
        commands: Arc<dyn Commands>,
        clock: WallClock,
    ) -> Arc<Desk> {
        Arc::new(Desk {
            supervisors: config.supervisors.iter().cloned().collect(),
            agents: config
                .groups
                .iter()
                .flat_map(|(_, m)| m.iter().cloned())
                .collect(),
            store,
            sessions: Mutex::new(Sessions::new(config.session_ttl)),
            guard: Mutex::new(LoginGuard::default()),
            log: Mutex::new(EventLog::new(config.event_buffer)),
            latest: watch::channel(0).0,
            call_rate: Mutex::default(),
            stream_clients: AtomicU64::new(0),
            record_ids: tokio::sync::Mutex::new(config.record_ids.clone()),
            callbacks: Mutex::new(std::mem::take(&mut config.callbacks)),
            campaigns: Mutex::new(std::mem::take(&mut config.campaigns)),
            dialer: Mutex::default(),
            dial_now: tokio::sync::Notify::new(),
            members: config
                .groups
                .iter()
                .map(|(g, m)| (g.clone(), m.iter().cloned().collect()))
                .collect(),
            config,
            presence,
            users,
            history,
            commands,
            clock,
        })
    }

    pub fn role(&self, extension: &str) -> Role {
        if self.supervisors.contains(extension) {
            Role::Supervisor
        } else {
            Role::Agent
        }
    }

    /// The display name (from the user directory).
    pub fn name(&self, extension: &str) -> Option<String> {
        self.users.name(extension)
    }

    fn wall(&self, at: Instant) -> UnixMillis {
        self.clock.at(at)
    }

    /// Logs an event and wakes the streams.
    pub fn publish(&self, audience: Audience, body: Body) -> Seq {
        let seq = lock(&self.log).push(audience, body);
        self.latest.send_replace(seq);
        seq
    }

    pub fn latest(&self) -> Seq {
        lock(&self.log).latest()
    }

    /// The screen pop for call `call_id` from `caller`: the caller's history
    /// before this call (when the desk reads it late, this call may have
    /// been answered and opened its own record already).
    fn pop(&self, caller: &str, call_id: &str) -> Option<ScreenPop> {
        if crate::history::is_anonymous(caller) {
            return None;
        }
        let mut history = crate::history::responses(&self.store, caller)
            .inspect_err(|e| tracing::error!("reading {caller}'s history: {e}"))
            .unwrap_or_default();
        history.retain(|r| r.call_id != call_id);
        let name = history
            .iter()
            .rev()
            .find(|r| !r.name.is_empty())
            .map(|r| r.name.clone());
        Some(ScreenPop {
            caller: caller.to_string(),
            name,
            history,
        })
    }

    /// Feeds presence changes into the event log until the PBX stops: every
    /// state change for everyone, and each agent's call events for that agent
    /// (ringing with the screen pop, answered, ended). If the desk falls behind
    /// the presence stream, clients are told to resync. Changes come in
    /// bursts (several per call): what came meanwhile is taken in one turn,
    /// then the pump rests [`PUMP_REST`], so a busy PBX wakes it once per
    /// rest rather than once per change.
    pub async fn pump(self: Arc<Self>, mut changes: broadcast::Receiver<Change>) {
        let mut trackers = (CallTracker::default(), BoardTracker::default());
        loop {
            match changes.recv().await {
                Ok(c) => self.follow(&mut trackers, &c),
                Err(broadcast::error::RecvError::Lagged(n)) => self.fell_behind(&mut trackers, n),
                Err(broadcast::error::RecvError::Closed) => return,
            }
            loop {
                match changes.try_recv() {
                    Ok(c) => self.follow(&mut trackers, &c),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        self.fell_behind(&mut trackers, n)
                    }
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(broadcast::error::TryRecvError::Closed) => return,
                }
            }
            tokio::time::sleep(PUMP_REST).await;
        }
    }

    /// One presence change: the board's event, and the agent's call events.
    fn follow(&self, (calls, board): &mut (CallTracker, BoardTracker), c: &Change) {
        if self.agents.contains(&c.extension) {
            self.dial_now.notify_one();
            for e in calls.track(c) {
                let ringing_here = e.phase == CallPhase::Ringing
                    && e.fact.direction == crate::presence::Direction::Recipient;
                let pop = if ringing_here {
                    self.pop(&e.fact.peer, &e.fact.call_id)
                } else {
                    None
                };
                self.publish(
                    Audience::Agent(c.extension.clone()),
                    Body::Call {
                        extension: c.extension.clone(),
                        call_id: e.fact.call_id,
                        phase: e.phase,
                        direction: e.fact.direction,
                        peer: e.fact.peer,
                        pop,
                    },
                );
            }
        }
        if let Some(body) = board.track(c) {
            self.publish(Audience::Everyone, body);
        }
    }

    /// The desk missed `n` presence changes: clients resync.
    fn fell_behind(&self, trackers: &mut (CallTracker, BoardTracker), n: u64) {
        tracing::warn!("desk fell {n} presence changes behind; clients resync");
        *trackers = Default::default();
        self.publish(Audience::Everyone, Body::Resync);
    }
}

/// How long the desk's presence pump rests between turns (the most a board
/// or call event waits for the changes that come with it).
const PUMP_REST: Duration = Duration::from_millis(5);

impl Desk {
    /// Every queue's statistics now.
    pub fn queue_stats(&self) -> Vec<QueueStats> {
        self.commands.queue_stats(self.wall(Instant::now()))
    }

    /// What `/metrics` shows now.
    pub fn scrape(&self) -> metrics::Scrape {
        let now = self.wall(Instant::now());
        let mut agents: Vec<(State, u64)> = State::ALL.iter().map(|s| (*s, 0)).collect();
        for (_, state) in self.presence.snapshot() {
            if let Some(slot) = agents.iter_mut().find(|(s, _)| *s == state) {
                slot.1 += 1;
            }
        }
        metrics::Scrape {
            pbx: self.commands.figures(now),
            calls_per_second: lock(&self.call_rate).per_second(),
            queues: self.commands.queue_stats(now),
            agents,
            stream_clients: self.stream_clients.load(Ordering::Relaxed),
        }
    }

    /// Samples the call rate, and publishes the queues' statistics whenever
    /// they changed (looked at once a second: a waiting caller's wait grows by
    /// the second) until the PBX stops.
    pub async fn tick(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last = Vec::new();
        // The lamps as stored: the items that waited before a restart.
        self.light_lamps(&self.users.extensions());
        loop {
            tick.tick().await;
            let at = Instant::now();
            let started = self.commands.calls_started();
            lock(&self.call_rate).sample(at, started);
            self.escalate_callbacks().await;
            let now = self.queue_stats();
            if now != last && !now.is_empty() {
                self.publish(
                    Audience::Everyone,
                    Body::Queues {
                        queues: now.clone(),
                    },
                );
                last = now;
            }
        }
    }
}

/// Serves the desk on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, desk: Arc<Desk>) {
    let app = api::router(desk);
    let service = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    if let Err(e) = axum::serve(listener, service).await {
        tracing::error!("desk HTTP server stopped: {e}");
    }
}

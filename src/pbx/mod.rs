//! The runtime and the embedding API (`sipdesk::Pbx`): builds the environment
//! from a [`Config`], binds the transports, and runs the tasks that do I/O and
//! nothing else — one thread per [`Shard`] (fed by Call-ID; the first also
//! reads the UDP sockets), the store writer that group-commits before anything
//! is acknowledged, and the sweeper that expires bindings and wrap-up.

mod resolve;

use crate::calls::OriginateError;
use crate::clock::{UnixMillis, WallClock};
use crate::config::{Config, ConfigError};
use crate::media::{Media, MediaEngine, RtpEngine};
use crate::registrar::{Policy, Registrar};
use crate::routing::dialplan::Dialplan;
use crate::shard::{Shard, ShardConfig};
use crate::sip::auth::DigestAuthority;
use crate::sip::message::Limits;
use crate::sip::transaction::TransactionLayer;
use crate::sip::{call_id::shard_of, CallId};
use crate::store::{IdGen, Store, StoreError, Writer, WriterMsg};
use crate::transport::{Dispatcher, Inbound, Listeners, Outbound, TransportError, UdpReader};
use crate::tu::{CallSettings, Counters, Env, LocalAddrs, Stats};
use crate::users::{DemoUser, Users};
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// What a shard task is told besides SIP traffic. These come on a channel of
/// their own, read before the SIP queue: a durability acknowledgement must
/// never wait behind new requests (under overload that wait is what turns
/// held answers into retransmission storms).
#[derive(Debug)]
pub enum Control {
    /// Place a call (third-party call control): ring `from`, then connect `to`.
    Originate {
        from: String,
        to: String,
        reply: tokio::sync::oneshot::Sender<Result<String, OriginateError>>,
    },
    /// Start a campaign attempt: reserve and ring the agent.
    Attempt {
        call: crate::calls::AttemptCall,
        reply: tokio::sync::oneshot::Sender<Result<CallId, OriginateError>>,
    },
    /// The agent of attempt `call` confirmed (`dial`) or skipped.
    Confirm {
        call: CallId,
        dial: bool,
        reply: tokio::sync::oneshot::Sender<bool>,
    },
    /// A media session of this Call-ID reports something (inactivity, a
    /// digit, a saved recording).
    Media(CallId, crate::media::MediaEvent),
    /// Extensions whose message counts changed (their message lamps).
    Messages(Arc<[String]>),
    /// The desk stored (or failed to store) the call-back a queue call asked for.
    CallbackSaved(CallId, bool),
    /// The PBX stops: the trunks remove their registrations.
    Stop,
    /// Another shard's calls hand this one's a message (a transfer).
    Handoff(crate::tu::Handoff),
    /// The desk transfers `user`'s call with leg `leg`.
    Transfer {
        user: String,
        leg: CallId,
        to: crate::calls::TransferTo,
        reply: tokio::sync::oneshot::Sender<Result<(), crate::calls::TransferError>>,
    },
    /// The desk starts (`on`) or stops recording `user`'s call with leg `leg`.
    Record {
        user: String,
        leg: CallId,
        on: bool,
        reply: tokio::sync::oneshot::Sender<Result<u64, crate::calls::RecordError>>,
    },
    /// A TCP connection we opened (to a trunk's provider) closed.
    Closed(SocketAddr),
    /// DNS gave a trunk new addresses.
    Relocated(crate::outside::TrunkId),
    /// The store flushed everything this shard wrote up to this sequence number.
    Flushed(u64),
    FlushFailed,
}

/// Why the PBX could not start.
#[derive(Debug, thiserror::Error)]
pub enum PbxError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("data directory {dir}: {source}")]
    DataDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Routing(#[from] crate::routing::RoutingError),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("desk HTTP address {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How long the writer waits for the flush request that covers writes it has
/// (they come together, from one shard turn): a group commit, not one per write.
const GROUP_COMMIT_WINDOW: Duration = Duration::from_millis(1);

/// The shortest time between two group commits under load (at most ~100
/// flushes a second, each covering everything that came meanwhile: a flush
/// wakes all of sled's I/O threads, whatever it carries). An answer held
/// for durability waits up to this long more under load.
const FLUSH_PACE: Duration = Duration::from_millis(10);

/// The same while no answer anybody waits on is held (CDRs, whose calls
/// are over, and writes nobody waits for): at 1,000 calls/s about 35
/// flushes a second instead of 100, and the writer with sled's threads at
/// 2.0-2.3 % of a core instead of 2.8-3.8 %. A prompt request that comes
/// meanwhile is seen within FLUSH_PACE.
const RELAXED_FLUSH_PACE: Duration = Duration::from_millis(25);

/// Messages a shard may have queued before new ones are dropped (bounded memory
/// under a flood; SIP retransmits what was lost).
const SHARD_QUEUE: usize = 16_384;

/// Configures a PBX before it starts.
#[derive(Debug)]
pub struct PbxBuilder {
    config: Config,
    data_dir: Option<PathBuf>,
}

impl PbxBuilder {
    /// Overrides `data.dir`.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Opens the store, binds every listener and starts the tasks. Must be called
    /// inside a tokio runtime.
    pub async fn start(self) -> Result<Pbx, PbxError> {
        let config = self.config.with_demo_desk();
        let dir = self.data_dir.unwrap_or_else(|| config.data.dir.clone());
        std::fs::create_dir_all(&dir).map_err(|source| PbxError::DataDir {
            dir: dir.clone(),
            source,
        })?;
        let store = Store::open(&dir)?;
        let (users, demo_users) = Users::load(
            &store,
            &config.users(),
            &config.demo.extensions,
            config.domain(),
        )?;
        let policy = Policy {
            min_expires: *config.sip.min_expires.get_ref(),
            max_expires: *config.sip.max_expires.get_ref(),
            default_expires: *config.sip.default_expires.get_ref(),
            max_contacts: 16,
        };
        let (wall, mono) = (UnixMillis::now(), Instant::now());
        let (writer_tx, writer_rx) = std::sync::mpsc::channel();
        let registrar = Registrar::load(&store, Writer::Queued(writer_tx.clone()), policy, wall)?;
        let limits = Limits {
            max_message: *config.sip.max_message_bytes.get_ref(),
            max_headers: config.sip.max_headers,
        };
        // Each shard is a thread with its calls' signalling and media; half
        // the cores leave the rest to the kernel's network stack, the store
        // writer and whatever shares the machine. On two cores one shard
        // also means no hand-off between threads per datagram.
        let shards = match *config.sip.shards.get_ref() {
            0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            n => n,
        };
        let listeners = Listeners::bind(&config.sip.udp, &config.sip.tcp)?;
        let (udp_addrs, tcp_addrs) = listeners.local_addrs();
        let sip_port = udp_addrs
            .first()
            .or(tcp_addrs.first())
            .map_or(5060, |a| a.port());
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..shards).map(|_| mpsc::channel(SHARD_QUEUE)).unzip();
        let (controls, control_rx): (Vec<_>, Vec<_>) =
            (0..shards).map(|_| mpsc::unbounded_channel()).unzip();
        let events_to = controls.clone();
        let events: crate::media::MediaNotifier = Arc::new(move |call: CallId, event| {
            let shard = call.shard(events_to.len());
            let _ = events_to[shard].send(Control::Media(call, event));
        });
        let media = RtpEngine::new(
            Media::new(
                config.rtp.bind_ip,
                *config.rtp.port_min.get_ref(),
                *config.rtp.port_max.get_ref(),
            )
            .voice_dir(&dir.join(VOICE_DIR)),
            Duration::from_secs(*config.rtp.inactivity_secs.get_ref()),
            events,
        );
        let presence =
            crate::presence::Presence::new(users.extensions().iter().map(String::as_str), wall);
        for ext in users.extensions() {
            if !registrar.lookup(&ext, wall).is_empty() {
                let _ = presence.set_registered(&ext, true, wall);
            }
        }
        let places = resolve::trunk_places(&config).await;
        let outside = config.outside(&|host, port, t| places.get(host, port, t));
        let trunks = registering_trunks(&config, &outside);
        // The providers are never limited or banned: a busy carrier sends
        // many requests from one address. Their networks are allow-listed;
        // their addresses are trusted (and again as DNS finds them anew).
        let mut policy = config.security.policy();
        policy
            .allow
            .extend(outside.lines.iter().flat_map(|l| l.allow.iter().copied()));
        let guard = crate::guard::Guard::new(policy);
        for line in &outside.lines {
            for ip in &line.targets.get().from {
                guard.trust(*ip);
            }
        }
        let env = Arc::new(Env {
            presence,
            mwi: crate::mwi::Mwi::new(config.unsolicited_mwi()),
            voicemail: crate::voicemail::Mailboxes::new(
                config.mailboxes(),
                Duration::from_secs(*config.voicemail.max_message_secs.get_ref()),
                store.all::<crate::voicemail::VoiceMessage>()?,
            ),
            forwarding: crate::forwarding::Forwarding::new(
                config
                    .users
                    .iter()
                    .map(|u| (u.extension.get_ref().clone(), u.forwarding())),
                store.all::<crate::forwarding::StoredRules>()?,
            ),
            guard,
            outside,
            users,
            registrar,
            auth: DigestAuthority::new(
                config.domain(),
                config.sip.auth_algorithms.get_ref().clone(),
                Duration::from_secs(config.sip.nonce_ttl_secs),
                mono,
            ),
            routing: crate::routing::Directory::from_config(&config)?,
            history: crate::history::History::load(&store)?,
            media: Some(Arc::new(media) as Arc<dyn MediaEngine>),
            hold_music: config
                .calls
                .music_on_hold
                .then(|| Arc::new(crate::media::prompt::Prompt::hold_music())),
            timers: config.timers(),
            calls: CallSettings {
                ring_timeout: Duration::from_secs(config.calls.ring_timeout_secs),
                authenticate: config.calls.authenticate,
                min_session_expires: Duration::from_secs(
                    *config.calls.min_session_expires_secs.get_ref(),
                ),
                ringback: Arc::new(crate::media::prompt::Prompt::ringback(
                    config.calls.tone_zone,
                )),
                waiting: Arc::new(crate::media::prompt::Prompt::waiting()),
                farewell: Arc::new(match config.calls.campaign_farewell.get_ref().as_str() {
                    "" => crate::media::prompt::Prompt::sorry(),
                    path => crate::config::read_sound(path)
                        .unwrap_or_else(|_| crate::media::prompt::Prompt::sorry()),
                }),
                test_numbers: config.test_numbers.clone(),
                record_code: config.features.record.clone(),
            },
            domain: config.domain().to_string(),
            sip_port,
            addrs: LocalAddrs::new(config.advertise_ip()),
            shard_count: shards,
            moved: Default::default(),
            stats: Stats::default(),
        });
        for (mailbox, counts) in env.voicemail.all_counts() {
            env.mwi.set_voicemail(&mailbox, counts);
        }
        for g in store.all::<crate::voicemail::Greeting>()? {
            env.voicemail.set_greeting(g);
        }
        // Ids above every stored CDR, time-ordered across restarts; no disk access
        // on the hot path afterwards.
        let last_cdr = store
            .last_key::<crate::calls::cdr::Cdr>()?
            .and_then(|k| <[u8; 8]>::try_from(k.as_slice()).ok())
            .map(u64::from_be_bytes);
        let id_base = IdGen::base(wall.0, last_cdr);
        // One id lane per shard, and one for the records the desk creates.
        let id_lanes = shards + 1;

        let mut tasks = JoinSet::new();
        if let (Some(wait), Some(zero)) = (places.ask_again, controls.first().cloned()) {
            // Shard 0 registers the trunks.
            let moved = move |t| {
                let _ = zero.send(Control::Relocated(t));
            };
            let env = Arc::clone(&env);
            tasks.spawn(resolve::keep_located(config.clone(), env, wait, moved));
        }
        let (callbacks_tx, callbacks_rx) = mpsc::unbounded_channel();
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let (recordings_tx, recordings_rx) = mpsc::unbounded_channel();
        let latency: LatencyHistogram = Arc::new(std::sync::Mutex::new(new_histogram()));
        let shed_after = Duration::from_millis(*config.sip.shed_after_ms.get_ref());
        let dispatcher = Dispatcher::new(
            senders.clone(),
            limits,
            env.guard.clone(),
            Arc::clone(&env.moved),
            shed_after,
        );
        let dialplan = Dialplan::from_config(&config);
        let trunk_status = crate::trunk::Board::default();
        let (st, ctl) = (store.clone(), controls.clone());
        let writer = std::thread::Builder::new()
            .name("sipdesk-writer".into())
            .spawn(move || run_writer(st, writer_rx, ctl))
            .map_err(PbxError::Thread)?;
        tasks.spawn(run_sweeper(
            env.registrar.clone(),
            env.presence.clone(),
            env.guard.clone(),
        ));
        let record_ids = IdGen::new(id_base, shards, id_lanes);
        let commands = DeskCommands {
            controls: controls.clone(),
            trunks: trunk_status.clone(),
            dialplan: dialplan.clone(),
            env: Arc::clone(&env),
            latency: Arc::clone(&latency),
        };
        let http_addr = start_desk(
            &config,
            &env,
            &store,
            commands,
            DeskWrites {
                record_ids,
                writer: Writer::Queued(writer_tx.clone()),
                voice_dir: dir.join(VOICE_DIR),
                requests: callbacks_rx,
                reports: reports_rx,
                recordings: recordings_rx,
            },
            WallClock::new(wall, mono),
            &mut tasks,
        )
        .await?;
        // The desk listens before SIP is read: a PBX that answers SIP has
        // its desk ready too.
        let (outbound, mut readers) = listeners.start(dispatcher.clone(), &mut tasks)?;
        if let Some(zero) = controls.first().cloned() {
            // Shard 0 registers the trunks.
            outbound.when_closed(move |peer| {
                let _ = zero.send(Control::Closed(peer));
            });
        }
        let mut threads = SipThreads::default();
        for (i, (rx, ctl)) in receivers.into_iter().zip(control_rx).enumerate() {
            let mut shard = Shard::new(
                Arc::clone(&env),
                ShardConfig {
                    index: i,
                    max_transactions: config.sip.max_transactions.get_ref() / shards,
                    dialplan: dialplan.clone(),
                    clock: WallClock::new(wall, mono),
                    shed_after,
                },
                TransactionLayer::new(config.timers()),
                Counters::new(IdGen::new(id_base, i, id_lanes)),
            );
            if i == 0 {
                // Shard 0 registers the trunks (their Call-IDs hash there).
                shard = shard.registering(&trunks, trunk_status.clone());
            }
            let task = ShardTask {
                index: i,
                shard,
                rx,
                control: ctl,
                dispatcher: dispatcher.clone(),
                presence: env.presence.clone(),
                outbound: Arc::clone(&outbound),
                writer: writer_tx.clone(),
                latency: Arc::clone(&latency),
                callbacks: callbacks_tx.clone(),
                reports: reports_tx.clone(),
                recordings: recordings_tx.clone(),
                controls: controls.clone(),
            };
            // The first shard's thread also reads the UDP sockets.
            let udp = std::mem::take(&mut readers);
            threads.start(task, udp).map_err(PbxError::Thread)?;
        }
        Ok(Pbx {
            config,
            data_dir: dir,
            store,
            env,
            dispatcher,
            outbound,
            udp_addrs,
            tcp_addrs,
            http_addr,
            demo_users,
            tasks,
            threads,
            writer: Some(writer),
            writer_tx,
            latency,
            controls,
            trunks: trunk_status,
        })
    }
}

/// A running PBX. Dropping it stops its tasks; [`Pbx::shutdown`] also flushes.
#[derive(Debug)]
pub struct Pbx {
    config: Config,
    data_dir: PathBuf,
    store: Store,
    env: Arc<Env>,
    dispatcher: Dispatcher<Inbound>,
    outbound: Arc<Outbound>,
    udp_addrs: Vec<SocketAddr>,
    tcp_addrs: Vec<SocketAddr>,
    /// Where the desk (API, desktop) listens.
    http_addr: SocketAddr,
    demo_users: Vec<DemoUser>,
    tasks: JoinSet<()>,
    /// The shards' threads (the first also reads the UDP sockets).
    threads: SipThreads,
    /// The store writer's thread, and its queue (to stop it).
    writer: Option<std::thread::JoinHandle<()>>,
    writer_tx: std::sync::mpsc::Sender<WriterMsg>,
    latency: LatencyHistogram,
    /// Where API requests enter the shards.
    controls: Vec<mpsc::UnboundedSender<Control>>,
    /// The registering trunks' status.
    trunks: crate::trunk::Board,
}

impl Pbx {
    pub fn builder(config: Config) -> PbxBuilder {
        PbxBuilder {
            config,
            data_dir: None,
        }
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }
    /// The UDP addresses actually bound (port 0 in the config resolves here).
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp_addrs
    }
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp_addrs
    }
    /// The desk's address: the agent desktop at `/`, the API under `/api/v1`.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }
    /// Demo users created by this start (their passwords are shown only now).
    pub fn demo_users(&self) -> &[DemoUser] {
        &self.demo_users
    }
    pub fn users(&self) -> &Users {
        &self.env.users
    }
    /// Every extension's live state and its change stream.
    pub fn presence(&self) -> &crate::presence::Presence {
        &self.env.presence
    }
    /// The caller index (who answered whom) and response records.
    pub fn history(&self) -> &crate::history::History {
        &self.env.history
    }
    /// Groups, queues and the queues' waiting lines.
    pub fn routing(&self) -> &crate::routing::Directory {
        &self.env.routing
    }
    /// One caller's response records (the customer's history), oldest first.
    pub fn responses(
        &self,
        caller: &str,
    ) -> Result<Vec<crate::history::ResponseRecord>, StoreError> {
        crate::history::responses(&self.store, caller)
    }
    pub fn registrar(&self) -> &Registrar {
        &self.env.registrar
    }
    pub fn stats(&self) -> &Stats {
        &self.env.stats
    }
    /// Messages dropped because a shard was overloaded, and sends that failed.
    pub fn drops(&self) -> (u64, u64) {
        (
            self.dispatcher.dropped_overload(),
            self.outbound
                .send_failures
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// New requests refused with 503 because the PBX was overloaded: at the
    /// edge (their shard's queue was long) or in a shard (they waited too long).
    pub fn shed(&self) -> u64 {
        self.dispatcher.shed()
            + self
                .env
                .stats
                .shed
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Routing latency so far (INVITE received → B-leg INVITE or answer sent), µs:
    /// (count, p50, p99, max). Samples reach it within ~200 ms.
    pub fn routing_latency(&self) -> (u64, u64, u64, u64) {
        match self.latency.lock() {
            Ok(h) => (
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.max(),
            ),
            Err(_) => (0, 0, 0, 0),
        }
    }

    /// Places a call between extension `from` and `to` (an extension or a number
    /// the PBX answers): `from`'s phone rings first; when it answers, `to` is called
    /// and the two are connected. Returns the call's id (leg A's Call-ID).
    pub async fn originate(&self, from: &str, to: &str) -> Result<String, OriginateError> {
        originate(&self.controls, from, to).await
    }

    /// Media port pairs leased right now.
    /// Whether trunk `name` is registered with its provider now.
    pub fn trunk_registered(&self, name: &str) -> bool {
        self.trunks
            .all()
            .iter()
            .any(|(n, s)| n == name && matches!(s, crate::trunk::Status::Up { .. }))
    }

    pub fn media_ports_in_use(&self) -> usize {
        self.env.media.as_ref().map_or(0, |m| m.ports_in_use())
    }

    /// Stops every task and flushes the store.
    pub async fn shutdown(mut self) -> Result<(), StoreError> {
        let (n, p50, p99, max) = self.routing_latency();
        tracing::info!(
            "routing latency (INVITE received -> B-leg INVITE or answer sent): n={n} p50={p50}us p99={p99}us max={max}us"
        );
        tracing::info!("new requests shed under overload (503): {}", self.shed());
        tracing::info!(
            "stopping with {} live calls and {} media port pairs in use",
            self.stats()
                .live_calls
                .load(std::sync::atomic::Ordering::Relaxed),
            self.media_ports_in_use()
        );
        // The trunks unregister (their providers stop sending calls here);
        // their answers are waited for at most 2 s.
        if self.trunks.any_up() {
            if let Some(c) = self.controls.first() {
                let _ = c.send(Control::Stop);
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && self.trunks.any_up() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || threads.stop()).await;
        self.tasks.shutdown().await;
        // The writer applies what is queued before its stop, then ends.
        let _ = self.writer_tx.send(WriterMsg::Stop);
        if let Some(writer) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        self.store.flush().await
    }
}

/// Asks the shard of `from` to place a call (the shard answers on a oneshot).
fn originate(
    controls: &[mpsc::UnboundedSender<Control>],
    from: &str,
    to: &str,
) -> impl std::future::Future<Output = Result<String, OriginateError>> + Send + 'static {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let input = Control::Originate {
        from: from.to_string(),
        to: to.to_string(),
        reply,
    };
    let sent = controls
        .get(shard_of(from.as_bytes(), controls.len()))
        .ok_or(OriginateError::Stopped)
        .and_then(|c| c.send(input).map_err(|_| OriginateError::Stopped));
    async move {
        sent?;
        answer.await.map_err(|_| OriginateError::Stopped)?
    }
}

/// What the desk may ask of the PBX.
#[derive(Debug)]
struct DeskCommands {
    controls: Vec<mpsc::UnboundedSender<Control>>,
    /// Every registering trunk's status (shard 0 keeps it).
    trunks: crate::trunk::Board,
    dialplan: Dialplan,
    env: Arc<Env>,
    latency: LatencyHistogram,
}

impl DeskCommands {
    /// Every shard notifies the lamps of `changed`.
    fn lamps_changed(&self, changed: Arc<[String]>) {
        if !changed.is_empty() {
            for c in &self.controls {
                let _ = c.send(Control::Messages(Arc::clone(&changed)));
            }
        }
    }

    /// Asks the shard that holds call leg `leg` (`stopped`: the answer when
    /// it cannot be asked, or does not answer).
    fn ask_leg<T: Send + 'static>(
        &self,
        leg: &CallId,
        control: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> Control,
        stopped: T,
    ) -> crate::cti::Pending<T> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let shard = self.env.moved.shard(leg.as_bytes(), self.controls.len());
        let sent = self
            .controls
            .get(shard)
            .is_some_and(|c| c.send(control(reply)).is_ok());
        Box::pin(async move {
            match sent {
                true => answer.await.unwrap_or(stopped),
                false => stopped,
            }
        })
    }
}

impl crate::cti::Commands for DeskCommands {
    fn originate(
        &self,
        from: &str,
        to: &str,
    ) -> crate::cti::Pending<Result<String, OriginateError>> {
        Box::pin(originate(&self.controls, from, to))
    }
    fn routable(&self, number: &str) -> bool {
        let env = &self.env;
        let target = self
            .dialplan
            .route(number.as_bytes(), &env.routing, |n| env.users.contains(n));
        !matches!(target, crate::routing::dialplan::Target::Unknown)
    }
    fn queue_stats(&self, now: UnixMillis) -> Vec<crate::routing::stats::QueueStats> {
        self.env.routing.stats(now)
    }
    fn messages_waiting(&self, callbacks: &[(String, u32)]) {
        let changed: Arc<[String]> = callbacks
            .iter()
            .filter(|(ext, n)| self.env.mwi.set_callbacks(ext, *n))
            .map(|(ext, _)| ext.clone())
            .collect();
        self.lamps_changed(changed);
    }
    fn voicemail_waiting(&self, extension: &str, counts: (u32, u32)) {
        if self.env.mwi.set_voicemail(extension, counts) {
            self.lamps_changed(Arc::new([extension.to_string()]));
        }
    }
    fn attempt(
        &self,
        call: crate::calls::AttemptCall,
    ) -> crate::cti::Pending<Result<CallId, OriginateError>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let shard = shard_of(call.agent.as_bytes(), self.controls.len());
        let sent = self
            .controls
            .get(shard)
            .is_some_and(|c| c.send(Control::Attempt { call, reply }).is_ok());
        Box::pin(async move {
            match sent {
                true => answer.await.unwrap_or(Err(OriginateError::Stopped)),
                false => Err(OriginateError::Stopped),
            }
        })
    }
    fn confirm(&self, call: &CallId, dial: bool) -> crate::cti::Pending<bool> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let shard = call.shard(self.controls.len());
        let control = Control::Confirm {
            call: call.clone(),
            dial,
            reply,
        };
        let sent = self
            .controls
            .get(shard)
            .is_some_and(|c| c.send(control).is_ok());
        Box::pin(async move { sent && answer.await.unwrap_or(false) })
    }
    fn trunk(&self, name: &str) -> Option<crate::outside::TrunkId> {
        self.env.outside.trunk_named(name)
    }
    fn transfer(
        &self,
        user: &str,
        leg: &CallId,
        to: crate::calls::TransferTo,
    ) -> crate::cti::Pending<Result<(), crate::calls::TransferError>> {
        let user = user.to_string();
        let control = |reply| Control::Transfer {
            user,
            leg: leg.clone(),
            to,
            reply,
        };
        self.ask_leg(leg, control, Err(crate::calls::TransferError::Stopped))
    }
    fn record(
        &self,
        user: &str,
        leg: &CallId,
        on: bool,
    ) -> crate::cti::Pending<Result<u64, crate::calls::RecordError>> {
        let user = user.to_string();
        let control = |reply| Control::Record {
            user,
            leg: leg.clone(),
            on,
            reply,
        };
        self.ask_leg(leg, control, Err(crate::calls::RecordError::Stopped))
    }
    fn reach(&self, user: &str, number: &str) -> crate::forwarding::Reach {
        self.env.reach(user, number)
    }
    fn callback_saved(&self, call: &CallId, saved: bool) {
        let shard = call.shard(self.controls.len());
        if let Some(c) = self.controls.get(shard) {
            let _ = c.send(Control::CallbackSaved(call.clone(), saved));
        }
    }
    fn trunks(&self) -> Vec<crate::cti::TrunkLine> {
        let registrations = self.trunks.all();
        self.env
            .outside
            .lines
            .iter()
            .map(|l| {
                let registration = registrations
                    .iter()
                    .find(|(n, _)| *n == l.name)
                    .map(|(_, s)| s.clone());
                crate::cti::TrunkLine {
                    name: l.name.clone(),
                    transport: l.transport.as_str().to_ascii_lowercase(),
                    registers: registration.is_some(),
                    registration,
                    channels: l.channels(),
                    max_channels: l.max_channels,
                }
            })
            .collect()
    }
    fn calls_started(&self) -> u64 {
        self.env
            .stats
            .calls_started
            .load(std::sync::atomic::Ordering::Relaxed)
    }
    fn figures(&self, now: UnixMillis) -> crate::cti::metrics::PbxFigures {
        let stats = &self.env.stats;
        use std::sync::atomic::Ordering::Relaxed;
        let read = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
        crate::cti::metrics::PbxFigures {
            registrations: self.env.registrar.count(now) as u64,
            live_calls: stats.live_calls.load(Relaxed),
            calls_started: self.calls_started(),
            sip_received: read(&stats.received),
            sip_malformed: read(&stats.dropped_malformed),
            sip_shed: read(&stats.shed),
            guard_dropped: read(&self.env.guard.stats.dropped),
            guard_refused: read(&self.env.guard.stats.refused),
            guard_bans: read(&self.env.guard.stats.bans),
            auth_failures: read(&self.env.guard.stats.auth_failures),
            trunks_up: self
                .trunks
                .all()
                .into_iter()
                .map(|(name, s)| (name, matches!(s, crate::trunk::Status::Up { .. })))
                .collect(),
            trunk_channels: self
                .env
                .outside
                .lines
                .iter()
                .map(|l| (l.name.clone(), l.channels()))
                .collect(),
            outside_calls: u64::from(self.env.outside.fraud.live()),
            toll_denied: self.env.outside.fraud.denied(),
            routing_latency: self
                .latency
                .lock()
                .map(|h| latency_buckets(&h))
                .unwrap_or_default(),
        }
    }
}

/// The routing latency histogram (µs) in the `/metrics` buckets (seconds).
fn latency_buckets(h: &Histogram<u64>) -> crate::cti::metrics::Buckets {
    let mut below = 0;
    let mut buckets: Vec<(f64, u64)> = crate::cti::metrics::LATENCY_BUCKETS
        .iter()
        .map(|&secs| {
            let upto = h.count_between(0, (secs * 1e6) as u64);
            let n = upto.saturating_sub(below);
            below = upto;
            (secs, n)
        })
        .collect();
    buckets.push((f64::MAX, h.len().saturating_sub(below)));
    crate::cti::metrics::Buckets {
        buckets,
        count: h.len(),
        sum_secs: h.mean() * h.len() as f64 / 1e6,
    }
}

/// What the desk writes with: its lane of ids and the store writer; where
/// voice messages are, and the call-backs the calls ask for.
struct DeskWrites {
    record_ids: IdGen,
    writer: Writer,
    voice_dir: PathBuf,
    requests: mpsc::UnboundedReceiver<crate::callbacks::Request>,
    /// What campaign attempts' calls report.
    reports: mpsc::UnboundedReceiver<crate::campaigns::Report>,
    /// What call recordings did.
    recordings: mpsc::UnboundedReceiver<crate::recordings::Report>,
}

/// Voice messages live in this directory of the data directory.
const VOICE_DIR: &str = "voice";

/// Binds the desk's HTTP address and starts it: the server, and the pump that
/// turns presence changes into numbered events.
async fn start_desk(
    config: &Config,
    env: &Arc<Env>,
    store: &Store,
    commands: DeskCommands,
    writes: DeskWrites,
    clock: WallClock,
    tasks: &mut JoinSet<()>,
) -> Result<SocketAddr, PbxError> {
    let addr = config.http.listen;
    let failed = |source| PbxError::Http { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(failed)?;
    let http_addr = listener.local_addr().map_err(failed)?;
    let limits: Vec<_> = config
        .groups
        .iter()
        .map(|g| {
            let members = g.members.iter().map(|m| m.extension.get_ref().clone());
            let limits = crate::callbacks::Limits {
                escalate_after: Duration::from_secs(g.callback_escalate_secs),
                flag_after: Duration::from_secs(g.callback_flag_secs),
            };
            (g.name.get_ref().clone(), members.collect(), limits)
        })
        .collect();
    let desk_config = crate::cti::DeskConfig {
        realm: config.domain().to_string(),
        session_ttl: Duration::from_secs(config.http.session_ttl_secs),
        event_buffer: config.http.event_buffer,
        supervisors: config.supervisors(),
        groups: env
            .routing
            .groups
            .iter()
            .map(|g| {
                (
                    g.name.clone(),
                    g.members.iter().map(|(e, _)| e.clone()).collect(),
                )
            })
            .collect(),
        dispositions: config.http.dispositions.clone(),
        metrics_token: Some(config.http.metrics_token.get_ref().clone()).filter(|t| !t.is_empty()),
        record_ids: writes.record_ids,
        callbacks: crate::callbacks::CallbackBox::load(store, &limits)?,
        writer: writes.writer,
        voice_dir: writes.voice_dir,
        campaigns: load_campaigns(store, clock.at(std::time::Instant::now()))?,
        trunks: env
            .outside
            .lines
            .iter()
            .map(|l| (l.name.clone(), l.numbering.clone()))
            .collect(),
        queue_groups: config
            .queues
            .iter()
            .flat_map(|q| {
                let number = q.number.get_ref().clone();
                q.groups
                    .get_ref()
                    .iter()
                    .map(move |g| (number.clone(), g.clone()))
            })
            .collect(),
        campaign_defaults: config.campaigns.clone(),
        forwarding: env.forwarding.clone(),
        voicemail: env.voicemail.clone(),
        auto_callbacks: config
            .queues
            .iter()
            .filter(|q| q.callback_mode == crate::config::CallbackMode::Auto)
            .map(|q| crate::cti::dialer::AutoCallbacks {
                queue: q.number.get_ref().clone(),
                group: q.callback_group_name(),
                trunk: q.callback_trunk.get_ref().clone(),
            })
            .collect(),
    };
    let desk = crate::cti::Desk::new(
        desk_config,
        env.presence.clone(),
        env.users.clone(),
        env.history.clone(),
        store.clone(),
        Arc::new(commands),
        clock,
    );
    tasks.spawn(Arc::clone(&desk).pump(env.presence.subscribe()));
    tasks.spawn(Arc::clone(&desk).tick());
    tasks.spawn(Arc::clone(&desk).write_requested(writes.requests));
    tasks.spawn(Arc::clone(&desk).follow_attempts(writes.reports));
    tasks.spawn(Arc::clone(&desk).follow_recordings(writes.recordings));
    tasks.spawn(Arc::clone(&desk).dialer());
    tasks.spawn(crate::cti::serve(listener, desk));
    Ok(http_addr)
}

/// The campaigns as stored. Attempts the last run left open are closed as
/// interrupted, durably, before anything can dial again.
fn load_campaigns(
    store: &Store,
    now: crate::clock::UnixMillis,
) -> Result<crate::campaigns::Campaigns, PbxError> {
    let (campaigns, closed) = crate::campaigns::Campaigns::load(store, now)?;
    if !closed.is_empty() {
        store.apply(closed.into_iter().map(crate::store::Write::put).collect())?;
        store.flush_now()?;
    }
    Ok(campaigns)
}

/// The trunks that register (each toward its outbound proxy, or its provider).
fn registering_trunks(
    config: &Config,
    outside: &crate::outside::Outside,
) -> Vec<crate::trunk::Spec> {
    // One line per configured trunk, in order.
    config
        .trunks
        .iter()
        .zip(&outside.lines)
        .enumerate()
        .filter(|(_, (t, _))| t.register)
        .map(|(i, (t, line))| crate::trunk::Spec {
            name: line.name.clone(),
            trunk: crate::outside::TrunkId(i),
            domain: line.domain.clone(),
            username: line.username.clone(),
            auth_username: line.auth_username.clone(),
            password: line.password.clone(),
            expires: *t.expires.get_ref(),
            line: line.line_token.clone().unwrap_or_default(),
        })
        .collect()
}

/// Routing latency: a new INVITE received by the transport → what it caused (the
/// B-leg INVITE, or the answer of a test number) handed to the socket. Shards
/// record locally and merge here a few times a second.
pub type LatencyHistogram = Arc<std::sync::Mutex<Histogram<u64>>>;

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits; the bounds are valid constants.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

/// A new (out-of-dialog) INVITE: its handling is what the routing latency measures.
fn is_new_invite(input: &Inbound) -> Option<Instant> {
    match &input.parsed {
        Ok(m)
            if m.method() == Some(&crate::sip::message::Method::Invite)
                && m.to_header().is_some_and(|t| t.tag().is_none()) =>
        {
            Some(input.at)
        }
        _ => None,
    }
}

/// One shard's task: its queues in, the socket, the writer and the latency
/// histogram out.
struct ShardTask {
    index: usize,
    shard: Shard,
    rx: mpsc::Receiver<Inbound>,
    control: mpsc::UnboundedReceiver<Control>,
    /// Told how far behind this shard is (the edge sheds on it).
    dispatcher: Dispatcher<Inbound>,
    presence: crate::presence::Presence,
    outbound: Arc<Outbound>,
    writer: std::sync::mpsc::Sender<WriterMsg>,
    latency: LatencyHistogram,
    /// Call-backs the calls ask for go to the desk.
    callbacks: mpsc::UnboundedSender<crate::callbacks::Request>,
    /// So do campaign attempts' steps.
    reports: mpsc::UnboundedSender<crate::campaigns::Report>,
    /// And call recordings' progress.
    recordings: mpsc::UnboundedSender<crate::recordings::Report>,
    /// Every shard's control queue (a transfer across shards).
    controls: Vec<mpsc::UnboundedSender<Control>>,
}

impl ShardTask {
    async fn run(self) {
        let ShardTask {
            index,
            mut shard,
            mut rx,
            mut control,
            dispatcher,
            presence,
            outbound,
            writer,
            latency,
            callbacks,
            reports,
            recordings,
            controls,
        } = self;
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        // When `sleep` fires (None: not armed).
        let mut armed: Option<Instant> = None;
        let mut local = new_histogram();
        let mut merged_at = Instant::now();
        // Presence changes are only read while this shard has a BLF subscription or a
        // waiting queue call (most shards of a busy PBX have neither).
        let mut changes: Option<tokio::sync::broadcast::Receiver<crate::presence::Change>> = None;
        shard.start(Instant::now());
        // What starting sent (the trunks' first REGISTERs) goes out now, not
        // with the next input.
        while let Some(t) = shard.poll_transmit() {
            outbound.send(&t);
        }
        loop {
            match (shard.wants_presence(), changes.is_some()) {
                (true, false) => {
                    changes = Some(presence.subscribe());
                    // Whatever changed before listening: look at everything once.
                    shard.handle_presence_lag(Instant::now());
                }
                (false, true) => changes = None,
                _ => {}
            }
            let timeout = shard.poll_timeout();
            // Re-armed only when the deadline moves earlier: each reset of a
            // tokio timer wakes its driver (a write to its eventfd, and one
            // more pass of the event loop); a wake before a later deadline
            // costs one look at the timers, which re-arms.
            if let Some(at) = timeout.filter(|at| armed.is_none_or(|a| *at < a)) {
                sleep.as_mut().reset(tokio::time::Instant::from_std(at));
                armed = Some(at);
            }
            tokio::select! {
                // Control first: flush results release held answers at once.
                biased;
                c = control.recv() => {
                    let Some(c) = c else { break };
                    let now = Instant::now();
                    handle_control(&mut shard, now, c);
                    while let Ok(c) = control.try_recv() {
                        handle_control(&mut shard, now, c);
                    }
                }
                input = rx.recv() => {
                    let Some(input) = input else { break };
                    let waited = Instant::now().saturating_duration_since(input.at);
                    let mut next = Some(input);
                    // What else is queued is taken in the same turn (at most
                    // 64); each message's sends go out as soon as it is handled.
                    for _ in 0..64 {
                        let Some(input) = next.take().or_else(|| rx.try_recv().ok()) else {
                            break;
                        };
                        let invite = is_new_invite(&input);
                        shard.handle_message(Instant::now(), input.parsed, input.remote, input.at);
                        while let Some(t) = shard.poll_transmit() {
                            outbound.send(&t);
                        }
                        if let Some(at) = invite {
                            let micros = at.elapsed().as_micros() as u64;
                            let _ = local.record(micros.clamp(1, 60_000_000));
                        }
                    }
                    // How far behind this shard is (how long the head of its queue
                    // waited; nothing once it has caught up): the edge refuses new
                    // requests while it is too far.
                    let behind = !rx.is_empty();
                    dispatcher.report_lag(index, if behind { waited } else { Duration::ZERO });
                    // One batch per turn while a backlog is worked off: the UDP
                    // reader beside this shard must keep draining the socket
                    // (under overload it sheds, and the kernel drops nothing).
                    // Caught up, the queue's own wait lets the reader run (a
                    // yield would cost an extra poll of the event loop).
                    if behind {
                        tokio::task::yield_now().await;
                    }
                }
                () = &mut sleep, if armed.is_some() => {
                    armed = None;
                    shard.handle_timeout(Instant::now());
                }
                change = recv_change(&mut changes), if changes.is_some() => match change {
                    Ok(change) => shard.handle_presence(Instant::now(), &change),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(shard = index, "presence stream lagged by {n}");
                        shard.handle_presence_lag(Instant::now());
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
            }
            while let Some(t) = shard.poll_transmit() {
                outbound.send(&t);
            }
            if !local.is_empty() && merged_at.elapsed() >= Duration::from_millis(200) {
                if let Ok(mut h) = latency.lock() {
                    let _ = h.add(&local);
                }
                local.reset();
                merged_at = Instant::now();
            }
            for w in shard.poll_writes() {
                let _ = writer.send(WriterMsg::Write(w));
            }
            for r in shard.poll_callbacks() {
                let _ = callbacks.send(r);
            }
            for r in shard.poll_attempts() {
                let _ = reports.send(r);
            }
            for r in shard.poll_recordings() {
                let _ = recordings.send(r);
            }
            for (to, h) in shard.poll_handoffs() {
                if let Some(c) = controls.get(to) {
                    let _ = c.send(Control::Handoff(h));
                }
            }
            let lamps: Arc<[String]> = shard.poll_lamps().into();
            if !lamps.is_empty() {
                for c in controls.iter() {
                    let _ = c.send(Control::Messages(Arc::clone(&lamps)));
                }
            }
            if let Some(ask) = shard.poll_flush() {
                let _ = writer.send(WriterMsg::Flush {
                    shard: index,
                    seq: ask.seq,
                    prompt: ask.prompt,
                });
            }
        }
    }
}

/// The threads that run the shards, each on a single-threaded runtime of its
/// own: a shard's turn (its input, its sends) never waits for a worker of the
/// shared runtime, and what the UDP reader hands to the shard on its own
/// thread wakes nobody. Media, the desk and the sweeper stay on the shared
/// runtime. Dropping this stops them.
#[derive(Debug, Default)]
struct SipThreads {
    threads: Vec<(
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<()>,
    )>,
}

impl SipThreads {
    /// Runs `task` on a new thread, with these UDP loops beside it.
    fn start(&mut self, task: ShardTask, udp: Vec<UdpReader<Inbound>>) -> std::io::Result<()> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let thread = std::thread::Builder::new()
            .name(format!("sipdesk-sip-{}", task.index))
            .spawn(move || {
                rt.block_on(async move {
                    for reader in udp {
                        tokio::spawn(reader.run());
                    }
                    tokio::select! {
                        () = task.run() => {}
                        _ = stopped => {}
                    }
                });
            })?;
        self.threads.push((stop, thread));
        Ok(())
    }

    /// Stops the shards and readers, and waits until they have let go of
    /// their sockets.
    fn stop(self) {
        for (stop, thread) in self.threads {
            drop(stop);
            let _ = thread.join();
        }
    }
}

/// The next presence change (only polled while there is a receiver).
async fn recv_change(
    changes: &mut Option<tokio::sync::broadcast::Receiver<crate::presence::Change>>,
) -> Result<crate::presence::Change, tokio::sync::broadcast::error::RecvError> {
    match changes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn handle_control(shard: &mut Shard, now: Instant, control: Control) {
    match control {
        Control::Originate { from, to, reply } => {
            let placed = shard.originate(now, &from, &to).map(|c| c.to_string());
            let _ = reply.send(placed);
        }
        Control::Attempt { call, reply } => {
            let _ = reply.send(shard.attempt(now, call));
        }
        Control::Confirm { call, dial, reply } => {
            let _ = reply.send(shard.confirm(now, &call, dial));
        }
        Control::Media(call_id, event) => shard.handle_media(now, &call_id, event),
        Control::Messages(extensions) => {
            for ext in extensions.iter() {
                shard.handle_messages(now, ext);
            }
        }
        Control::CallbackSaved(call, saved) => shard.handle_callback_saved(now, &call, saved),
        Control::Flushed(seq) => shard.handle_flushed(now, seq),
        Control::FlushFailed => shard.handle_flush_failed(now),
        Control::Stop => shard.stop(now),
        Control::Handoff(h) => shard.handle_handoff(now, h),
        Control::Transfer {
            user,
            leg,
            to,
            reply,
        } => {
            let _ = reply.send(shard.transfer(now, &user, &leg, to));
        }
        Control::Record {
            user,
            leg,
            on,
            reply,
        } => {
            let _ = reply.send(shard.record(now, &user, &leg, on));
        }
        Control::Closed(peer) => shard.connection_closed(now, peer),
        Control::Relocated(t) => shard.trunk_relocated(now, t),
    }
}

/// The writer, on a thread of its own (durability must not wait for a turn on
/// a runtime busy with SIP): applies everything queued as one sled batch per
/// tree and group-commits, so one flush covers every change queued before the
/// flush requests it answers. Ends when every sender is gone.
fn run_writer(
    store: Store,
    rx: std::sync::mpsc::Receiver<WriterMsg>,
    shards: Vec<mpsc::UnboundedSender<Control>>,
) {
    let mut stopping = false;
    // When the last flush ended: under load, flushes are paced (see below).
    let mut flushed_at = Instant::now() - FLUSH_PACE;
    while let Ok(first) = rx.recv() {
        let mut writes = Vec::new();
        let mut upto: HashMap<usize, u64> = HashMap::new();
        let mut commits = Vec::new();
        // Whether anybody waits on this flush (else it is paced more loosely).
        let mut prompt = false;
        let mut next = Some(first);
        // Group commit: writes come just before the flush request that covers
        // them; wait for it a little rather than commit a batch of one.
        let window = Instant::now() + GROUP_COMMIT_WINDOW;
        while let Some(msg) = next.take() {
            match msg {
                WriterMsg::Write(w) => writes.push(w),
                WriterMsg::Flush {
                    shard,
                    seq,
                    prompt: p,
                } => {
                    let e = upto.entry(shard).or_default();
                    *e = (*e).max(seq);
                    prompt |= p;
                }
                WriterMsg::Commit { writes: w, done } => {
                    writes.extend(w);
                    commits.push(done);
                    prompt = true;
                }
                WriterMsg::Stop => {
                    stopping = true;
                    break;
                }
            }
            let flush_asked = !upto.is_empty() || !commits.is_empty();
            if writes.len() < 50_000 {
                // Under load (the last flush was moments ago) one flush per
                // FLUSH_PACE covers everything that came meanwhile; when idle,
                // a flush goes at once.
                let until = match (flush_asked, prompt) {
                    (false, _) => window,
                    (true, true) => flushed_at + FLUSH_PACE,
                    (true, false) => flushed_at + RELAXED_FLUSH_PACE,
                };
                next = match rx.try_recv() {
                    Ok(m) => Some(m),
                    // Pacing: asleep, not waiting on the queue. What comes
                    // meanwhile is taken at once afterwards, and its senders
                    // wake nobody (a wake-up per write cost more than the
                    // writes); a relaxed wait looks every FLUSH_PACE, so that
                    // a prompt request shortens it.
                    Err(_) if flush_asked => loop {
                        let left = until.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break None;
                        }
                        std::thread::sleep(left.min(FLUSH_PACE));
                        if let Ok(m) = rx.try_recv() {
                            break Some(m);
                        }
                    },
                    // The flush request that covers these writes ends the
                    // wait as soon as it comes.
                    Err(_) if !writes.is_empty() => {
                        let left = until.saturating_duration_since(Instant::now());
                        rx.recv_timeout(left).ok()
                    }
                    Err(_) => None,
                };
            }
        }
        let (count, started) = (writes.len(), Instant::now());
        let applied = store.apply(writes);
        tracing::trace!(count, elapsed = ?started.elapsed(), "store writes applied");
        if let Err(e) = &applied {
            tracing::error!("store write failed: {e}");
        }
        if upto.is_empty() && commits.is_empty() {
            if stopping {
                break;
            }
            continue;
        }
        let started = Instant::now();
        let result = applied.and_then(|()| store.flush_now());
        flushed_at = Instant::now();
        tracing::trace!(shards = upto.len(), elapsed = ?started.elapsed(), "store flushed");
        if let Err(e) = &result {
            tracing::error!("store flush failed: {e}");
        }
        for (shard, seq) in upto {
            let msg = match result {
                Ok(()) => Control::Flushed(seq),
                Err(_) => Control::FlushFailed,
            };
            // Never waits: the control channel is not the SIP queue.
            let _ = shards[shard].send(msg);
        }
        for done in commits {
            let _ = done.send(result.is_ok());
        }
        if stopping {
            break;
        }
    }
}

/// Returns the allocator's free pages to the system. glibc keeps what a burst
/// freed (32 s of completed transactions at thousands of calls a second) in
/// its per-thread arenas for good; trimming every 10 s lets the resident size
/// follow the load down.
#[allow(unsafe_code)]
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own
    // arenas; it touches no memory the program owns.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Once a second: wrap-up deadlines; every five: expired bindings, and the
/// extensions they leave without a registration go offline.
async fn run_sweeper(
    registrar: Registrar,
    presence: crate::presence::Presence,
    guard: crate::guard::Guard,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for n in 0u64.. {
        tick.tick().await;
        let now = UnixMillis::now();
        presence.tick(now);
        if n % 5 != 0 {
            continue;
        }
        guard.sweep(Instant::now());
        if n % 10 == 0 {
            give_back_freed_memory();
        }
        match registrar.purge_expired(now) {
            Ok(0) => {}
            Ok(n) => tracing::debug!("{n} expired bindings removed"),
            Err(e) => tracing::error!("purging expired bindings: {e}"),
        }
        for (ext, state) in presence.snapshot() {
            if state != crate::presence::State::Offline && registrar.lookup(&ext, now).is_empty() {
                let _ = presence.set_registered(&ext, false, now);
            }
        }
    }
}

/// The records of a stopped PBX's data directory, read-only (exports and tools;
/// the database is locked while the PBX runs).
#[derive(Debug)]
pub struct Archive {
    store: Store,
}

impl Archive {
    pub fn open(dir: &std::path::Path) -> Result<Archive, StoreError> {
        Ok(Archive {
            store: Store::open(dir)?,
        })
    }

    /// Every CDR in id order.
    pub fn cdrs(&self) -> Result<Vec<crate::calls::cdr::Cdr>, StoreError> {
        self.store.all()
    }

    /// One caller's response records, oldest first.
    pub fn responses(
        &self,
        caller: &str,
    ) -> Result<Vec<crate::history::ResponseRecord>, StoreError> {
        crate::history::responses(&self.store, caller)
    }

    /// Every response record, by caller then time.
    pub fn all_responses(&self) -> Result<Vec<crate::history::ResponseRecord>, StoreError> {
        self.store.all()
    }
}

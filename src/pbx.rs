//! The running PBX: builds the shared state from a [`Config`], binds the transports,
//! and runs the shard tasks (one [`Endpoint`] each, fed by Call-ID), the group-commit
//! flusher that makes store writes durable before they are acknowledged, and the
//! sweeper that expires bindings. This is the embedding API (`sipdesk::Pbx`).

use crate::config::{Config, ConfigError};
use crate::endpoint::{Endpoint, Shared, Stats};
use crate::media::Media;
use crate::registrar::{Policy, Registrar, UnixMillis};
use crate::sip::auth::DigestAuthority;
use crate::sip::message::{Limits, Message};
use crate::sip::transaction::TransactionLayer;
use crate::sip::{Remote, SipError};
use crate::store::{Store, StoreError, Writer, WriterMsg};
use crate::transport::{Dispatcher, Listeners, Outbound, TransportError};
use crate::users::{DemoUser, Users};
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Inputs of a shard task.
#[derive(Debug)]
pub enum ShardInput {
    /// A message from the wire, with the time the transport received it.
    Message(Result<Message, SipError>, Remote, Instant),
    /// Place a call (third-party call control): ring `from`, then connect `to`.
    Originate {
        from: String,
        to: String,
        reply: tokio::sync::oneshot::Sender<Result<String, crate::b2bua::OriginateError>>,
    },
    /// A media session of this Call-ID saw no packet for the inactivity period.
    MediaIdle(String),
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
}

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
        let config = self.config;
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
        let (writer_tx, writer_rx) = mpsc::unbounded_channel();
        let writer = Writer::Queued(writer_tx.clone());
        let registrar = Registrar::load(&store, writer.clone(), policy, wall)?;
        let limits = Limits {
            max_message: *config.sip.max_message_bytes.get_ref(),
            max_headers: config.sip.max_headers,
        };
        let shards = match *config.sip.shards.get_ref() {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let listeners = Listeners::bind(&config.sip.udp, &config.sip.tcp)?;
        let (udp_addrs, tcp_addrs) = listeners.local_addrs();
        let sip_port = udp_addrs
            .first()
            .or(tcp_addrs.first())
            .map_or(5060, |a| a.port());
        let media = Media::new(
            config.rtp.bind_ip,
            *config.rtp.port_min.get_ref(),
            *config.rtp.port_max.get_ref(),
        );
        let presence =
            crate::presence::Presence::new(users.extensions().iter().map(String::as_str), wall);
        for ext in users.extensions() {
            if !registrar.lookup(&ext, wall).is_empty() {
                let _ = presence.set_registered(&ext, true, wall);
            }
        }
        let shared = Arc::new(Shared {
            presence,
            users,
            registrar,
            auth: DigestAuthority::new(
                config.domain(),
                config.sip.auth_algorithms.get_ref().clone(),
                Duration::from_secs(config.sip.nonce_ttl_secs),
                mono,
            ),
            limits,
            store: store.clone(),
            writer,
            timers: config.timers(),
            media: Some(media),
            test_numbers: config.test_numbers.clone(),
            advertise_ip: config.advertise_ip(),
            sip_port,
            inactivity: Duration::from_secs(config.rtp.inactivity_secs),
            ring_timeout: Duration::from_secs(config.calls.ring_timeout_secs),
            authenticate_calls: config.calls.authenticate,
            domain: config.domain().to_string(),
            shard_count: shards,
            max_transactions_per_shard: config.sip.max_transactions.get_ref() / shards,
            stats: Stats::default(),
            routing: crate::routing::Directory::from_config(&config)?,
            history: crate::history::History::load(&store)?,
            features: config.features.clone(),
            hold_music: config
                .calls
                .music_on_hold
                .then(|| Arc::new(crate::media::prompt::Prompt::hold_music())),
        });

        let mut tasks = JoinSet::new();
        let latency: LatencyHistogram = Arc::new(std::sync::Mutex::new(new_histogram()));
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..shards).map(|_| mpsc::channel(SHARD_QUEUE)).unzip();
        let dispatcher = Dispatcher::new(senders.clone(), limits);
        let senders_for_api = senders.clone();
        let outbound = listeners.start(dispatcher.clone(), &mut tasks);
        for (i, rx) in receivers.into_iter().enumerate() {
            let layer = TransactionLayer::new(config.timers());
            let shard = senders[i].clone();
            let idle: crate::endpoint::IdleNotifier = Arc::new(move |call_id| {
                let _ = shard.try_send(ShardInput::MediaIdle(call_id));
            });
            let endpoint = Endpoint::new(Arc::clone(&shared), layer, wall, mono, idle, i);
            tasks.spawn(run_shard(
                i,
                endpoint,
                rx,
                shared.presence.clone(),
                Arc::clone(&outbound),
                writer_tx.clone(),
                Arc::clone(&latency),
            ));
        }
        tasks.spawn(run_writer(store.clone(), writer_rx, senders));
        tasks.spawn(run_sweeper(
            shared.registrar.clone(),
            shared.presence.clone(),
        ));
        Ok(Pbx {
            config,
            data_dir: dir,
            store,
            shared,
            dispatcher,
            outbound,
            udp_addrs,
            tcp_addrs,
            demo_users,
            tasks,
            latency,
            shard_inputs: senders_for_api,
        })
    }
}

/// A running PBX. Dropping it stops its tasks; [`Pbx::shutdown`] also flushes.
#[derive(Debug)]
pub struct Pbx {
    config: Config,
    data_dir: PathBuf,
    store: Store,
    shared: Arc<Shared>,
    dispatcher: Dispatcher,
    outbound: Arc<Outbound>,
    udp_addrs: Vec<SocketAddr>,
    tcp_addrs: Vec<SocketAddr>,
    demo_users: Vec<DemoUser>,
    tasks: JoinSet<()>,
    latency: LatencyHistogram,
    /// Where API requests enter the shards.
    shard_inputs: Vec<mpsc::Sender<ShardInput>>,
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
    /// Demo users created by this start (their passwords are shown only now).
    pub fn demo_users(&self) -> &[DemoUser] {
        &self.demo_users
    }
    pub fn users(&self) -> &Users {
        &self.shared.users
    }
    /// Every extension's live state and its change stream.
    pub fn presence(&self) -> &crate::presence::Presence {
        &self.shared.presence
    }
    /// The caller index (who answered whom) and response records.
    pub fn history(&self) -> &crate::history::History {
        &self.shared.history
    }
    /// Groups, queues and the queues' waiting lines.
    pub fn routing(&self) -> &crate::routing::Directory {
        &self.shared.routing
    }
    /// One caller's response records (the customer's history), oldest first.
    pub fn responses(
        &self,
        caller: &str,
    ) -> Result<Vec<crate::history::ResponseRecord>, StoreError> {
        self.store.responses(caller)
    }
    pub fn registrar(&self) -> &Registrar {
        &self.shared.registrar
    }
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
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
    pub async fn originate(
        &self,
        from: &str,
        to: &str,
    ) -> Result<String, crate::b2bua::OriginateError> {
        use crate::b2bua::OriginateError;
        let shard =
            crate::transport::fnv1a(from.as_bytes()) as usize % self.shard_inputs.len().max(1);
        let (reply, answer) = tokio::sync::oneshot::channel();
        let input = ShardInput::Originate {
            from: from.to_string(),
            to: to.to_string(),
            reply,
        };
        let sender = self
            .shard_inputs
            .get(shard)
            .ok_or(OriginateError::Stopped)?;
        sender
            .send(input)
            .await
            .map_err(|_| OriginateError::Stopped)?;
        answer.await.map_err(|_| OriginateError::Stopped)?
    }

    /// Media port pairs leased right now.
    pub fn media_ports_in_use(&self) -> usize {
        self.shared.media.as_ref().map_or(0, |m| m.ports_in_use())
    }

    /// Stops every task and flushes the store.
    pub async fn shutdown(mut self) -> Result<(), StoreError> {
        let (n, p50, p99, max) = self.routing_latency();
        tracing::info!(
            "routing latency (INVITE received -> B-leg INVITE or answer sent): n={n} p50={p50}us p99={p99}us max={max}us"
        );
        tracing::info!(
            "stopping with {} live calls and {} media port pairs in use",
            self.stats()
                .live_calls
                .load(std::sync::atomic::Ordering::Relaxed),
            self.media_ports_in_use()
        );
        self.tasks.shutdown().await;
        self.store.flush().await
    }
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
fn is_new_invite(input: &ShardInput) -> Option<Instant> {
    match input {
        ShardInput::Message(Ok(m), _, at)
            if m.method() == Some(&crate::sip::message::Method::Invite)
                && m.to_header().is_some_and(|t| t.tag().is_none()) =>
        {
            Some(*at)
        }
        _ => None,
    }
}

async fn run_shard(
    index: usize,
    mut endpoint: Endpoint,
    mut rx: mpsc::Receiver<ShardInput>,
    presence: crate::presence::Presence,
    outbound: Arc<Outbound>,
    writer: mpsc::UnboundedSender<WriterMsg>,
    latency: LatencyHistogram,
) {
    let sleep = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(sleep);
    let mut local = new_histogram();
    let mut invites: Vec<Instant> = Vec::new();
    let mut merged_at = Instant::now();
    // Presence changes are only read while this shard has a BLF subscription or a
    // waiting queue call (most shards of a busy PBX have neither).
    let mut changes: Option<tokio::sync::broadcast::Receiver<crate::presence::Change>> = None;
    loop {
        match (endpoint.wants_presence(), changes.is_some()) {
            (true, false) => {
                changes = Some(presence.subscribe());
                // Whatever changed before listening: look at everything once.
                endpoint.handle_presence_lag(Instant::now());
            }
            (false, true) => changes = None,
            _ => {}
        }
        if let Some(at) = endpoint.poll_timeout() {
            sleep.as_mut().reset(tokio::time::Instant::from_std(at));
        }
        let timer_armed = endpoint.poll_timeout().is_some();
        tokio::select! {
            input = rx.recv() => {
                let Some(input) = input else { break };
                let now = Instant::now();
                invites.extend(is_new_invite(&input));
                handle_input(&mut endpoint, now, input);
                // Drain what else is queued before sending, to batch the wake-up.
                for _ in 0..64 {
                    match rx.try_recv() {
                        Ok(input) => {
                            invites.extend(is_new_invite(&input));
                            handle_input(&mut endpoint, now, input)
                        }
                        Err(_) => break,
                    }
                }
            }
            () = &mut sleep, if timer_armed => endpoint.handle_timeout(Instant::now()),
            change = recv_change(&mut changes), if changes.is_some() => match change {
                Ok(change) => endpoint.handle_presence(Instant::now(), &change),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(shard = index, "presence stream lagged by {n}");
                    endpoint.handle_presence_lag(Instant::now());
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
        }
        while let Some(t) = endpoint.poll_transmit() {
            outbound.send(&t);
        }
        if !invites.is_empty() {
            let sent = Instant::now();
            for at in invites.drain(..) {
                let micros = sent.saturating_duration_since(at).as_micros() as u64;
                let _ = local.record(micros.clamp(1, 60_000_000));
            }
            if sent.saturating_duration_since(merged_at) >= Duration::from_millis(200) {
                if let Ok(mut h) = latency.lock() {
                    let _ = h.add(&local);
                }
                local.reset();
                merged_at = sent;
            }
        }
        if let Some(seq) = endpoint.poll_flush() {
            let _ = writer.send(WriterMsg::Flush { shard: index, seq });
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

fn handle_input(endpoint: &mut Endpoint, now: Instant, input: ShardInput) {
    match input {
        ShardInput::Message(parsed, remote, _) => endpoint.handle_parsed(now, parsed, remote),
        ShardInput::Originate { from, to, reply } => {
            let _ = reply.send(endpoint.originate(now, &from, &to));
        }
        ShardInput::MediaIdle(call_id) => endpoint.handle_media_idle(now, &call_id),
        ShardInput::Flushed(seq) => endpoint.handle_flushed(now, seq),
        ShardInput::FlushFailed => endpoint.handle_flush_failed(now),
    }
}

/// The writer: applies queued changes on a blocking thread (sled stays off the
/// hot path) and group-commits: one flush covers every change queued before the
/// flush requests it answers.
async fn run_writer(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<WriterMsg>,
    shards: Vec<mpsc::Sender<ShardInput>>,
) {
    while let Some(first) = rx.recv().await {
        let mut writes = Vec::new();
        let mut upto: HashMap<usize, u64> = HashMap::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                WriterMsg::Write(w) => writes.push(w),
                WriterMsg::Flush { shard, seq } => {
                    let e = upto.entry(shard).or_default();
                    *e = (*e).max(seq);
                }
            }
            if writes.len() < 50_000 {
                next = rx.try_recv().ok();
            }
        }
        let st = store.clone();
        let applied =
            tokio::task::spawn_blocking(move || writes.iter().try_for_each(|w| st.apply(w)))
                .await
                .unwrap_or(Err(StoreError::WriterGone));
        if let Err(e) = &applied {
            tracing::error!("store write failed: {e}");
        }
        if upto.is_empty() {
            continue;
        }
        let started = Instant::now();
        let result = match applied {
            Ok(()) => store.flush().await,
            Err(e) => Err(e),
        };
        tracing::trace!(shards = upto.len(), elapsed = ?started.elapsed(), "store flushed");
        if let Err(e) = &result {
            tracing::error!("store flush failed: {e}");
        }
        for (shard, seq) in upto {
            let msg = match result {
                Ok(()) => ShardInput::Flushed(seq),
                Err(_) => ShardInput::FlushFailed,
            };
            let _ = shards[shard].send(msg).await;
        }
    }
}

/// Once a second: wrap-up deadlines; every five: expired bindings, and the
/// extensions they leave without a registration go offline.
async fn run_sweeper(registrar: Registrar, presence: crate::presence::Presence) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for n in 0u64.. {
        tick.tick().await;
        let now = UnixMillis::now();
        presence.tick(now);
        if n % 5 != 0 {
            continue;
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

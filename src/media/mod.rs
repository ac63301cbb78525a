//! Media: the RTP port pool and the media sessions the PBX runs on it. An echo
//! session (the echo test number) sends every RTP and RTCP packet back to where it
//! came from. Each session is one tokio task over its own sockets with a fixed
//! receive buffer (no allocation per packet); its ports go back to the pool when
//! the task ends, and it reports RTP inactivity so dead calls get cleaned up.
//! A relay can also play a [`prompt::Prompt`] to one side (hold music, an
//! announcement), paced at 20 ms, and a player session plays one to a phone.
//! A relay also records one side (a voice message, [`recorder`]), records
//! both sides mixed (a call recording, [`call_recording`]) and reports the
//! DTMF digits a side sends as RFC 4733 telephone-events ([`dtmf`]).
//!
//! Calls use media only through [`MediaEngine`] (allocate a relay, an echo or a
//! player; play and stop on a relay), so they run in unit tests with a fake engine
//! and no sockets. [`RtpEngine`] is the real one.

pub mod call_recording;
pub mod dtmf;
pub mod prompt;
pub mod recorder;

use crate::sip::CallId;
use prompt::{Prompt, FRAME};

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A media failure (local).
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("no free RTP port pair")]
    NoPorts,
    #[error("media socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Even RTP ports of the configured range (RTCP is the next odd port).
#[derive(Debug)]
struct PortPool {
    free: Mutex<VecDeque<u16>>,
    /// Pairs bound ahead of need (see [`Media::keep_ready`]): a call takes its
    /// sockets without a bind on the signalling thread.
    ready: Mutex<VecDeque<(u16, StdUdpSocket, StdUdpSocket)>>,
    /// Wakes the binder when `ready` runs low.
    low: Condvar,
    /// Pairs a finished call gave back, still bound and registered: the next
    /// call reuses them without a system call (oldest first).
    idle: Mutex<VecDeque<Pair>>,
    in_use: AtomicUsize,
}

/// An RTP port and its bound RTP and RTCP sockets.
type Pair = (u16, Arc<UdpSocket>, Arc<UdpSocket>);

/// Idle pairs kept for reuse; beyond, a finished call's sockets are closed.
const MAX_IDLE_PAIRS: usize = 512;

/// A port pair taken from the pool; given back when dropped (its sockets with
/// it, for reuse).
#[derive(Debug)]
struct Lease {
    pool: Arc<PortPool>,
    rtp: u16,
    sockets: Option<(Arc<UdpSocket>, Arc<UdpSocket>)>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.in_use.fetch_sub(1, Ordering::Relaxed);
        if let Some((a, b)) = self.sockets.take() {
            if let Ok(mut idle) = self.pool.idle.lock() {
                if idle.len() < MAX_IDLE_PAIRS {
                    idle.push_back((self.rtp, a, b));
                    return;
                }
            }
        }
        if let Ok(mut free) = self.pool.free.lock() {
            free.push_back(self.rtp);
        }
    }
}

/// Binds a non-blocking RTP/RTCP socket pair at `rtp` and `rtp + 1`.
fn bind_std(ip: IpAddr, rtp: u16) -> std::io::Result<(StdUdpSocket, StdUdpSocket)> {
    let bind = |port: u16| -> std::io::Result<StdUdpSocket> {
        let s = StdUdpSocket::bind(SocketAddr::new(ip, port))?;
        s.set_nonblocking(true)?;
        Ok(s)
    };
    Ok((bind(rtp)?, bind(rtp + 1)?))
}

/// The media side of the PBX; cheap to clone.
#[derive(Debug, Clone)]
pub struct Media {
    pool: Arc<PortPool>,
    bind_ip: IpAddr,
    /// Where relays save voice messages (`None`: not kept).
    voice_dir: Option<Arc<std::path::Path>>,
    /// The thread that writes call recordings there, started on first use.
    disk: Arc<std::sync::OnceLock<Option<call_recording::Disk>>>,
}

/// A running media session; dropping it stops the task and frees its ports.
#[derive(Debug)]
pub struct Session {
    /// The RTP port (RTCP is `port + 1`).
    pub port: u16,
    task: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Media {
    /// `bind_ip` is where media sockets listen; ports come from `[min, max)`.
    pub fn new(bind_ip: IpAddr, min: u16, max: u16) -> Media {
        let first = min + (min % 2);
        let free = (first..max.saturating_sub(1)).step_by(2).collect();
        Media {
            pool: Arc::new(PortPool {
                free: Mutex::new(free),
                ready: Mutex::new(VecDeque::new()),
                low: Condvar::new(),
                idle: Mutex::new(VecDeque::new()),
                in_use: AtomicUsize::new(0),
            }),
            bind_ip,
            voice_dir: None,
            disk: Arc::default(),
        }
    }

    /// Relays save voice messages in `dir`.
    pub fn voice_dir(mut self, dir: &std::path::Path) -> Media {
        self.voice_dir = Some(Arc::from(dir));
        self
    }

    /// Uses at most `pairs` port pairs (each holds two sockets: with the
    /// process's open-file limit in mind, media runs out before the process
    /// runs out of descriptors for its database and connections).
    pub fn limit_pairs(&self, pairs: usize) {
        if let Ok(mut free) = self.pool.free.lock() {
            free.truncate(pairs);
        }
    }

    /// Keeps `n` port pairs bound ahead of need, from a thread of their own
    /// (it stops when the last handle to this pool is gone).
    pub fn keep_ready(&self, n: usize) {
        let pool = Arc::downgrade(&self.pool);
        let ip = self.bind_ip;
        let spawned = std::thread::Builder::new()
            .name("sipdesk-media-ports".into())
            .spawn(move || loop {
                let Some(pool) = pool.upgrade() else { return };
                // At most `n` attempts a round, and none after a failure: a
                // port range that other programs hold must not make this spin.
                for _ in 0..n {
                    if pool.ready.lock().map_or(n, |r| r.len()) >= n {
                        break;
                    }
                    let Some(rtp) = pool.free.lock().ok().and_then(|mut f| f.pop_front()) else {
                        break;
                    };
                    match bind_std(ip, rtp) {
                        Ok((a, b)) => {
                            if let Ok(mut r) = pool.ready.lock() {
                                r.push_back((rtp, a, b));
                            }
                        }
                        // Held by some other program: to the back of the queue.
                        Err(_) => {
                            if let Ok(mut f) = pool.free.lock() {
                                f.push_back(rtp);
                            }
                            break;
                        }
                    }
                }
                // Woken when a call takes a pair; rechecks now and then (shutdown).
                let Ok(ready) = pool.ready.lock() else { return };
                let waited = pool.low.wait_timeout(ready, Duration::from_millis(500));
                drop(waited);
            });
        if let Err(e) = spawned {
            tracing::warn!("media ports are bound on demand: {e}");
        }
    }

    /// Port pairs currently leased.
    pub fn ports_in_use(&self) -> usize {
        self.pool.in_use.load(Ordering::Relaxed)
    }

    /// A pair of RTP and RTCP sockets: one a finished call gave back (stale
    /// packets drained), else one bound ahead, else a free pair bound now. A port
    /// some other program holds is skipped (and put at the back of the queue).
    fn bind_pair(&self) -> Result<(Lease, Arc<UdpSocket>, Arc<UdpSocket>), MediaError> {
        let lease = |rtp, a: Arc<UdpSocket>, b: Arc<UdpSocket>| {
            self.pool.in_use.fetch_add(1, Ordering::Relaxed);
            let lease = Lease {
                pool: Arc::clone(&self.pool),
                rtp,
                sockets: Some((Arc::clone(&a), Arc::clone(&b))),
            };
            (lease, a, b)
        };
        let idle = self.pool.idle.lock().ok().and_then(|mut i| i.pop_front());
        if let Some((rtp, a, b)) = idle {
            let mut scratch = [0u8; 64];
            for s in [&a, &b] {
                for _ in 0..64 {
                    if s.try_recv_from(&mut scratch).is_err() {
                        break;
                    }
                }
            }
            return Ok(lease(rtp, a, b));
        }
        let ready = self.pool.ready.lock().ok().and_then(|mut r| r.pop_front());
        self.pool.low.notify_one();
        let registered = |(a, b): (StdUdpSocket, StdUdpSocket)| -> std::io::Result<_> {
            Ok((
                Arc::new(UdpSocket::from_std(a)?),
                Arc::new(UdpSocket::from_std(b)?),
            ))
        };
        if let Some((rtp, a, b)) = ready {
            let (a, b) = registered((a, b))?;
            return Ok(lease(rtp, a, b));
        }
        let attempts = self.pool.free.lock().map(|f| f.len()).unwrap_or(0).min(64);
        for _ in 0..attempts {
            let Some(rtp) = self.pool.free.lock().ok().and_then(|mut f| f.pop_front()) else {
                break;
            };
            match bind_std(self.bind_ip, rtp).and_then(registered) {
                Ok((a, b)) => return Ok(lease(rtp, a, b)),
                // Held by some other program: to the back of the queue.
                Err(_) => {
                    if let Ok(mut free) = self.pool.free.lock() {
                        free.push_back(rtp);
                    }
                }
            }
        }
        Err(MediaError::NoPorts)
    }

    /// Starts an echo session. `on_idle` runs each time no packet has arrived for
    /// `inactivity` (the call is probably dead; the call decides).
    pub fn echo(
        &self,
        inactivity: Duration,
        on_idle: impl Fn() + Send + 'static,
    ) -> Result<Session, MediaError> {
        let (lease, rtp, rtcp) = self.bind_pair()?;
        let port = lease.rtp;
        let task = tokio::spawn(async move {
            let _lease = lease;
            let (mut a, mut b) = ([0u8; 2048], [0u8; 2048]);
            // Checked a few times per inactivity period: packets only stamp a time.
            let mut check = idle_check(inactivity);
            let mut last = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    r = rtp.recv_from(&mut a) => if let Ok((n, from)) = r {
                        // Only well-formed RTP is echoed.
                        if rtp_header(&a[..n]).is_some() {
                            last = tokio::time::Instant::now();
                            let _ = rtp.try_send_to(&a[..n], from);
                        }
                    },
                    r = rtcp.recv_from(&mut b) => if let Ok((n, from)) = r {
                        let _ = rtcp.try_send_to(&b[..n], from);
                    },
                    _ = check.tick() => if last.elapsed() >= inactivity {
                        // Reported once per silent period; the call decides.
                        on_idle();
                        last = tokio::time::Instant::now();
                    }
                }
            }
        });
        Ok(Session { port, task })
    }
}

/// What a media session reports to the call it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// No RTP for the inactivity period (the call is probably dead).
    Idle,
    /// Side 0 (A) or 1 (B) of a relay, which listens to it, sent this DTMF digit.
    Digit(usize, char),
    /// A recording ended (stopped, full, or its relay gone): `saved` when it
    /// held audio and its WAV file is durable; `ms` is how long it is.
    Recorded { id: u64, saved: bool, ms: u64 },
}

/// Reports media events, by the Call-ID the session was allocated for.
pub type MediaNotifier = Arc<dyn Fn(CallId, MediaEvent) + Send + Sync>;

/// A session's own reporter.
type Events = Arc<dyn Fn(MediaEvent) + Send + Sync>;

/// What calls need from media. Dropping a returned handle stops the session and
/// gives its ports back.
pub trait MediaEngine: Send + Sync + std::fmt::Debug {
    /// A relay between two phones for call `call` (its inactivity is reported
    /// under that Call-ID).
    fn relay(&self, call: &CallId) -> Result<Box<dyn RelayControl>, MediaError>;
    /// An echo session (the echo test number).
    fn echo(&self, call: &CallId) -> Result<Box<dyn MediaSession>, MediaError>;
    /// A session that plays `prompt` once to `peer` with payload type `pt`.
    fn player(
        &self,
        call: &CallId,
        prompt: Arc<Prompt>,
        pt: u8,
        peer: Peer,
    ) -> Result<Box<dyn MediaSession>, MediaError>;
    /// Port pairs leased right now.
    fn ports_in_use(&self) -> usize;
    /// Voice recording `id` is no longer kept: its file is removed (off the
    /// caller's thread).
    fn discard_voice(&self, id: u64);
}

/// A running media session of one port pair.
pub trait MediaSession: Send + std::fmt::Debug {
    /// Its RTP port (RTCP is the next one).
    fn port(&self) -> u16;
}

/// A running relay, as signalling drives it.
pub trait RelayControl: Send + std::fmt::Debug {
    /// Our RTP port facing side A (the caller) and side B.
    fn ports(&self) -> [u16; 2];
    /// Signalling learnt something about a side (an offer, an answer, a hold).
    fn set_peer(&self, side: usize, peer: Peer);
    /// Plays `prompt` to `side` (payload type 0 or 8); the other side is muted.
    fn play(&self, side: usize, prompt: Arc<Prompt>, pt: u8, looping: bool);
    /// Plays `first` once to `side`, then `then` looping.
    fn play_then(&self, side: usize, first: Arc<Prompt>, then: Arc<Prompt>, pt: u8);
    /// Stops any prompt: the two sides hear each other again.
    fn stop_playing(&self);
    /// Records what `side` sends as voice message `id`, at most `max` long;
    /// [`MediaEvent::Recorded`] reports the end (also when the relay is dropped).
    fn record(&self, side: usize, id: u64, max: Duration);
    /// Ends the recording (if any): it is saved and reported.
    fn stop_recording(&self);
    /// Records both sides, mixed, as call recording `id`, until stopped or
    /// the relay is dropped; [`MediaEvent::Recorded`] reports the end, or
    /// the failure (the call goes on unrecorded).
    fn record_call(&self, id: u64);
    /// Ends the call recording (if any): it is saved and reported.
    fn stop_recording_call(&self);
    /// Reports the digits `side` sends as telephone-events of payload type `pt`.
    fn listen_digits(&self, side: usize, pt: u8);
    /// Plays voice message `id` (a recording in the voice directory) to
    /// `side`, once it is read; one that cannot be read plays nothing.
    fn play_voice(&self, side: usize, id: u64, pt: u8);
}

/// Open files kept for everything but media (SIP sockets and connections, the
/// database, logs).
const FD_RESERVE: usize = 2048;

/// The soft limit on open files (Linux `/proc/self/limits`), if known.
fn open_files_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Port pairs the engine keeps bound ahead of need (a burst of new calls takes
/// these; the binder thread tops them up).
const READY_PAIRS: usize = 64;

/// The real engine: sockets from a [`Media`] pool, a tokio task per session.
#[derive(Clone)]
pub struct RtpEngine {
    media: Media,
    /// A session without RTP for this long is reported idle.
    inactivity: Duration,
    events: MediaNotifier,
    /// The runtime sessions started outside any runtime run on: the one
    /// that made the engine. A session started on a runtime (a shard's
    /// thread) runs there, beside its call's signalling: no hand-off to
    /// another thread to start or stop it, or to report what it saw.
    runtime: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for RtpEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtpEngine")
            .field("media", &self.media)
            .field("inactivity", &self.inactivity)
            .finish()
    }
}

impl RtpEngine {
    /// Also starts keeping port pairs bound ahead of need, and keeps media
    /// within the open-file limit.
    pub fn new(media: Media, inactivity: Duration, events: MediaNotifier) -> RtpEngine {
        if let Some(limit) = open_files_limit() {
            let pairs = limit.saturating_sub(FD_RESERVE) / 2;
            media.limit_pairs(pairs);
            tracing::info!("media: at most {pairs} port pairs (open-file limit {limit})");
        }
        media.keep_ready(READY_PAIRS);
        RtpEngine {
            media,
            inactivity,
            events,
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Enters the engine's runtime for a session's start, unless the caller
    /// runs on one already (the session runs there).
    fn enter(&self) -> Option<tokio::runtime::EnterGuard<'_>> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return None;
        }
        self.runtime.as_ref().map(|r| r.enter())
    }

    /// The reporter of a session of `call`.
    fn events(&self, call: &CallId) -> Events {
        let (events, call) = (Arc::clone(&self.events), call.clone());
        Arc::new(move |e| events(call.clone(), e))
    }

    fn notifier(&self, call: &CallId) -> impl Fn() + Send + 'static {
        let events = self.events(call);
        move || events(MediaEvent::Idle)
    }
}

impl MediaEngine for RtpEngine {
    fn relay(&self, call: &CallId) -> Result<Box<dyn RelayControl>, MediaError> {
        let _runtime = self.enter();
        let events = self.events(call);
        let relay = self.media.relay(self.inactivity, move |e| events(e))?;
        Ok(Box::new(relay))
    }
    fn echo(&self, call: &CallId) -> Result<Box<dyn MediaSession>, MediaError> {
        let _runtime = self.enter();
        Ok(Box::new(
            self.media.echo(self.inactivity, self.notifier(call))?,
        ))
    }
    fn player(
        &self,
        call: &CallId,
        prompt: Arc<Prompt>,
        pt: u8,
        peer: Peer,
    ) -> Result<Box<dyn MediaSession>, MediaError> {
        let _runtime = self.enter();
        let s = self
            .media
            .player(prompt, pt, peer, self.inactivity, self.notifier(call))?;
        Ok(Box::new(s))
    }
    fn ports_in_use(&self) -> usize {
        self.media.ports_in_use()
    }
    fn discard_voice(&self, id: u64) {
        let Some(dir) = self.media.voice_dir.clone() else {
            return;
        };
        let remove = move || {
            let path = recorder::path(&dir, id);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!("voice recording {}: {e}", path.display());
            }
        };
        match self.runtime.as_ref() {
            Some(rt) => drop(rt.spawn_blocking(remove)),
            None => remove(),
        }
    }
}

impl MediaSession for Session {
    fn port(&self) -> u16 {
        self.port
    }
}

impl RelayControl for Relay {
    fn ports(&self) -> [u16; 2] {
        self.ports
    }
    fn set_peer(&self, side: usize, peer: Peer) {
        Relay::set_peer(self, side, peer)
    }
    fn play(&self, side: usize, prompt: Arc<Prompt>, pt: u8, looping: bool) {
        Relay::play(self, side, prompt, pt, looping)
    }
    fn play_then(&self, side: usize, first: Arc<Prompt>, then: Arc<Prompt>, pt: u8) {
        Relay::play_then(self, side, first, then, pt)
    }
    fn stop_playing(&self) {
        Relay::stop_playing(self)
    }
    fn record(&self, side: usize, id: u64, max: Duration) {
        Relay::record(self, side, id, max)
    }
    fn stop_recording(&self) {
        Relay::stop_recording(self)
    }
    fn record_call(&self, id: u64) {
        Relay::record_call(self, id)
    }
    fn stop_recording_call(&self) {
        Relay::stop_recording_call(self)
    }
    fn listen_digits(&self, side: usize, pt: u8) {
        Relay::listen_digits(self, side, pt)
    }
    fn play_voice(&self, side: usize, id: u64, pt: u8) {
        Relay::play_voice(self, side, id, pt)
    }
}

/// What signalling tells a relay about one side (from that side's SDP and SIP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Peer {
    /// Where the phone said it receives RTP (SDP `c=`/`m=`); RTCP is port + 1.
    pub rtp: Option<SocketAddr>,
    /// The phone's SIP source address: its media may come from here too (NAT).
    pub sip_ip: Option<IpAddr>,
    /// `false` while the phone holds the call (sendonly/inactive towards it).
    pub receives: bool,
}

/// Shared state between signalling and a relay task.
#[derive(Debug, Default)]
struct RelayState {
    /// Index 0 = side A (the caller), 1 = side B.
    peers: [Peer; 2],
    /// Addresses learnt from the packets themselves (symmetric RTP latching).
    latched: [Option<(SocketAddr, tokio::time::Instant)>; 2],
    /// A prompt being played to one side (the other side is not heard meanwhile).
    playing: Option<Playback>,
    /// After a prompt, the other side's RTP toward the side that heard it goes
    /// on as the prompt's stream (same SSRC, sequence and timestamps following
    /// on), so the phone sees one continuous stream, not a jump it may discard.
    continuation: [Continuation; 2],
    /// The RTP header (SSRC, sequence, timestamp) last sent toward each side: a
    /// prompt starts where that stream left off, so music on hold does not jump.
    last_sent: [Option<(u32, u16, u32)>; 2],
    /// A voice message being recorded, and the side it records.
    recording: Option<(usize, recorder::Recording)>,
    /// A call recording: both sides mixed, streamed to disk.
    mixing: Option<Mixing>,
    /// The telephone-event payload type of each side whose digits are reported.
    digits: [Option<(u8, dtmf::EventFilter)>; 2],
}

/// A call recording under way in a relay.
#[derive(Debug)]
struct Mixing {
    id: u64,
    mix: call_recording::Mix,
    started: tokio::time::Instant,
    disk: call_recording::Disk,
}

impl Mixing {
    /// Hands the rest to the disk and ends the recording.
    fn end(mut self) {
        let samples = self.mix.rest();
        self.disk.send(call_recording::Job::Samples {
            id: self.id,
            samples,
        });
        self.disk.send(call_recording::Job::End { id: self.id });
    }
}

/// How RTP toward one side is rewritten after a prompt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Continuation {
    #[default]
    None,
    /// The prompt ended here: the next packet fixes the offsets.
    From { ssrc: u32, seq: u16, ts: u32 },
    /// Offsets added to every packet (wrapping), and the SSRC written.
    Shift { ssrc: u32, seq: u16, ts: u32 },
}

/// The sequence number, timestamp and SSRC of a well-formed RTP packet: rtp-rs
/// checks the version (2) and that the CSRC list, the header extension and the
/// padding fit in the packet. `None` for anything else, which is not relayed.
fn rtp_header(pkt: &[u8]) -> Option<(u16, u32, u32)> {
    let r = rtp_rs::RtpReader::new(pkt).ok()?;
    Some((r.sequence_number().into(), r.timestamp(), r.ssrc()))
}

/// What a well-formed RTP packet carries: its payload type, timestamp and
/// payload.
fn rtp_payload(pkt: &[u8]) -> Option<(u8, u32, &[u8])> {
    let r = rtp_rs::RtpReader::new(pkt).ok()?;
    Some((r.payload_type(), r.timestamp(), r.payload()))
}

/// What the relay does to one packet arriving from a phone after a prompt:
/// validate it, then rewrite its header to continue the prompt's stream.
/// Returns whether it would be relayed (for the `rtp` fuzz target).
#[doc(hidden)]
pub fn relay_packet(pkt: &mut [u8], ssrc: u32, seq: u16, ts: u32) -> bool {
    let Some((pseq, pts, _)) = rtp_header(pkt) else {
        return false;
    };
    let mut c = Continuation::From { ssrc, seq, ts };
    c.apply(pkt, pseq, pts);
    c.apply(pkt, pseq.wrapping_add(1), pts);
    rtp_header(pkt).is_some()
}

impl Continuation {
    /// Rewrites a validated RTP packet's header in place (`seq` and `ts` are
    /// what it carries now).
    fn apply(&mut self, pkt: &mut [u8], seq: u16, ts: u32) {
        if let Continuation::From {
            ssrc,
            seq: next_seq,
            ts: next_ts,
        } = *self
        {
            *self = Continuation::Shift {
                ssrc,
                seq: next_seq.wrapping_sub(seq),
                ts: next_ts.wrapping_sub(ts),
            };
            pkt[1] |= 0x80; // marker: a new talk spurt
        }
        if let Continuation::Shift {
            ssrc,
            seq: dseq,
            ts: dts,
        } = *self
        {
            pkt[2..4].copy_from_slice(&seq.wrapping_add(dseq).to_be_bytes());
            pkt[4..8].copy_from_slice(&ts.wrapping_add(dts).to_be_bytes());
            pkt[8..12].copy_from_slice(&ssrc.to_be_bytes());
        }
    }
}

impl RelayState {
    /// Starts a prompt, continuing the stream its listener last received.
    fn start(&mut self, mut p: Playback) {
        if let Some((ssrc, seq, ts)) = self.last_sent[p.toward] {
            p.ssrc = ssrc;
            p.seq = seq.wrapping_add(1);
            p.ts = ts.wrapping_add(FRAME as u32);
        }
        self.continuation[p.toward] = Continuation::None;
        self.playing = Some(p);
    }

    /// Notes the header of a (validated) RTP packet sent toward `side`.
    fn sent(&mut self, side: usize, pkt: &[u8]) {
        if let Some((seq, ts, ssrc)) = rtp_header(pkt) {
            self.last_sent[side] = Some((ssrc, seq, ts));
        }
    }

    fn stop_playing(&mut self) {
        if let Some(p) = self.playing.take() {
            self.continuation[p.toward] = p.continuation();
        }
    }
}

/// A prompt being played: where in it, and the RTP stream it makes.
#[derive(Debug)]
struct Playback {
    prompt: Arc<Prompt>,
    /// Played (looping) once `prompt` is over: music after a greeting.
    then: Option<Arc<Prompt>>,
    /// RTP payload type: 0 (PCMU) or 8 (PCMA).
    pt: u8,
    looping: bool,
    /// The side that hears it.
    toward: usize,
    frame: usize,
    seq: u16,
    ts: u32,
    ssrc: u32,
}

impl Playback {
    /// Where the prompt's stream stopped: the continuation of its receiver.
    fn continuation(&self) -> Continuation {
        Continuation::From {
            ssrc: self.ssrc,
            seq: self.seq,
            ts: self.ts,
        }
    }

    fn new(prompt: Arc<Prompt>, pt: u8, looping: bool, toward: usize) -> Playback {
        Playback {
            prompt,
            then: None,
            pt,
            looping,
            toward,
            frame: 0,
            seq: rand::random(),
            ts: rand::random(),
            ssrc: rand::random(),
        }
    }

    /// Writes the next RTP packet into `buf` and returns its length; `None` once a
    /// non-looping prompt is over.
    fn next_packet(&mut self, buf: &mut [u8; 12 + FRAME]) -> Option<usize> {
        if self.frame >= self.prompt.frames() && !self.looping {
            self.prompt = self.then.take()?;
            self.frame = 0;
            self.looping = true;
        }
        let frames = self.prompt.frames();
        if frames == 0 {
            return None;
        }
        let at = (self.frame % frames) * FRAME;
        buf[0] = 0x80;
        buf[1] = self.pt | if self.frame == 0 { 0x80 } else { 0 }; // marker on the first
        buf[2..4].copy_from_slice(&self.seq.to_be_bytes());
        buf[4..8].copy_from_slice(&self.ts.to_be_bytes());
        buf[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        buf[12..].copy_from_slice(&self.prompt.payload(self.pt)[at..at + FRAME]);
        self.frame += 1;
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(FRAME as u32);
        Some(12 + FRAME)
    }
}

/// Checks inactivity a few times per period (at least every 10 ms: a zero
/// period must not make a zero interval, which panics).
fn idle_check(inactivity: Duration) -> tokio::time::Interval {
    tokio::time::interval((inactivity / 4).max(Duration::from_millis(10)))
}

/// 20 ms, the packet time of everything the PBX plays.
const PTIME: Duration = Duration::from_millis(20);

fn pacer() -> tokio::time::Interval {
    let mut i = tokio::time::interval(PTIME);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    i
}

/// How long after its first packet a side may still move its media source.
const LATCH_WINDOW: Duration = Duration::from_secs(3);

/// A running relay between two phones; dropping it frees its two port pairs
/// (and saves what it was recording).
pub struct Relay {
    /// Our RTP port facing side A (the caller) and side B.
    pub ports: [u16; 2],
    state: Arc<Mutex<RelayState>>,
    /// Wakes the task when a prompt starts (its pacer only runs while playing).
    wake: Arc<tokio::sync::Notify>,
    task: JoinHandle<()>,
    events: Events,
    /// Where voice messages are saved (`None`: recordings are not kept).
    voice_dir: Option<Arc<std::path::Path>>,
    /// The media engine's call recording writer.
    disk: Arc<std::sync::OnceLock<Option<call_recording::Disk>>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("ports", &self.ports).finish()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.stop_recording();
        self.stop_recording_call();
    }
}

/// Saves a finished recording off the runtime's threads (a sync per file),
/// then reports it.
fn finish_recording(rec: recorder::Recording, dir: Option<Arc<std::path::Path>>, events: Events) {
    let save = move || {
        let saved = match &dir {
            Some(dir) => rec.save(dir).unwrap_or_else(|e| {
                tracing::error!("saving voice message {}: {e}", rec.id);
                false
            }),
            None => false,
        };
        let ms = rec.duration().as_millis() as u64;
        events(MediaEvent::Recorded {
            id: rec.id,
            saved,
            ms,
        });
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn_blocking(save)),
        Err(_) => save(),
    }
}

impl Relay {
    /// Signalling learnt something about a side (an offer, an answer, a hold).
    pub fn set_peer(&self, side: usize, peer: Peer) {
        if let Ok(mut st) = self.state.lock() {
            if let Some(p) = st.peers.get_mut(side) {
                *p = peer;
            }
        }
    }

    /// Plays `prompt` to `side` with payload type `pt` (0 or 8), from its start;
    /// meanwhile nothing from the other side reaches it.
    pub fn play(&self, side: usize, prompt: Arc<Prompt>, pt: u8, looping: bool) {
        if let Ok(mut st) = self.state.lock() {
            st.start(Playback::new(prompt, pt, looping, side.min(1)));
        }
        self.wake.notify_one();
    }

    /// Plays `first` once to `side`, then `then` looping (a greeting, then music).
    pub fn play_then(&self, side: usize, first: Arc<Prompt>, then: Arc<Prompt>, pt: u8) {
        if let Ok(mut st) = self.state.lock() {
            let mut p = Playback::new(first, pt, false, side.min(1));
            p.then = Some(then);
            st.start(p);
        }
        self.wake.notify_one();
    }

    /// Stops any prompt: the two sides hear each other again.
    pub fn stop_playing(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.stop_playing();
        }
    }

    /// Records what `side` sends as voice message `id`, at most `max` long
    /// (then it is saved and reported by itself).
    pub fn record(&self, side: usize, id: u64, max: Duration) {
        let old = self.state.lock().ok().and_then(|mut st| {
            st.recording
                .replace((side.min(1), recorder::Recording::new(id, max)))
        });
        if let Some((_, rec)) = old {
            finish_recording(rec, self.voice_dir.clone(), Arc::clone(&self.events));
        }
    }

    /// Ends the recording, if any: it is saved and reported.
    pub fn stop_recording(&self) {
        let rec = self
            .state
            .lock()
            .ok()
            .and_then(|mut st| st.recording.take());
        if let Some((_, rec)) = rec {
            finish_recording(rec, self.voice_dir.clone(), Arc::clone(&self.events));
        }
    }

    /// Records both sides, mixed, as call recording `id` (a recording
    /// already under way is ended first). Without a voice directory, or
    /// when its writer cannot start, it is reported as not saved at once.
    pub fn record_call(&self, id: u64) {
        let disk = self
            .disk
            .get_or_init(|| {
                let dir = self.voice_dir.as_deref()?.to_path_buf();
                call_recording::Disk::start(dir)
                    .inspect_err(|e| tracing::error!("call recordings cannot be written: {e}"))
                    .ok()
            })
            .clone();
        let Some(disk) = disk else {
            (self.events)(MediaEvent::Recorded {
                id,
                saved: false,
                ms: 0,
            });
            return;
        };
        let report = Arc::clone(&self.events);
        disk.send(call_recording::Job::Start { id, report });
        let mixing = Mixing {
            id,
            mix: call_recording::Mix::default(),
            started: tokio::time::Instant::now(),
            disk,
        };
        let old = self
            .state
            .lock()
            .ok()
            .and_then(|mut st| st.mixing.replace(mixing));
        if let Some(old) = old {
            old.end();
        }
    }

    /// Ends the call recording, if any: it is saved and reported.
    pub fn stop_recording_call(&self) {
        let mixing = self.state.lock().ok().and_then(|mut st| st.mixing.take());
        if let Some(m) = mixing {
            m.end();
        }
    }

    /// Plays voice message `id` to `side`: its WAV is read off the
    /// runtime's threads, then played as a prompt.
    pub fn play_voice(&self, side: usize, id: u64, pt: u8) {
        let Some(dir) = self.voice_dir.clone() else {
            return;
        };
        let (state, wake) = (Arc::clone(&self.state), Arc::clone(&self.wake));
        let load = move || {
            let path = recorder::path(&dir, id);
            let read = std::fs::read(&path).map_err(|e| e.to_string());
            let prompt = read.and_then(|b| Prompt::from_wav(&b).map_err(|e| e.to_string()));
            match prompt {
                Ok(p) => {
                    if let Ok(mut st) = state.lock() {
                        st.start(Playback::new(Arc::new(p), pt, false, side.min(1)));
                    }
                    wake.notify_one();
                }
                Err(e) => tracing::warn!("voice message {}: {e}", path.display()),
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(load)),
            Err(_) => load(),
        }
    }

    /// Reports the digits `side` sends as telephone-events of type `pt`.
    pub fn listen_digits(&self, side: usize, pt: u8) {
        if let Ok(mut st) = self.state.lock() {
            st.digits[side.min(1)] = Some((pt, dtmf::EventFilter::default()));
        }
    }
}

impl RelayState {
    /// What a packet from `side` means to a recording or a digit listener: a
    /// digit to report, and a recording that is full (taken out: to be saved).
    fn listen(&mut self, side: usize, pkt: &[u8]) -> (Option<char>, Option<recorder::Recording>) {
        let recording = matches!(&self.recording, Some((s, _)) if *s == side);
        if !recording && self.digits[side].is_none() && self.mixing.is_none() {
            return (None, None);
        }
        let Some((pt, ts, payload)) = rtp_payload(pkt) else {
            return (None, None);
        };
        if let Some(m) = self.mixing.as_mut() {
            let at = m.started.elapsed().as_millis() as u64 * 8;
            m.mix.push(side, pt, payload, at);
            let ready = m.mix.ready(at);
            if ready >= call_recording::CHUNK {
                let samples = m.mix.take(ready);
                m.disk
                    .send(call_recording::Job::Samples { id: m.id, samples });
            }
        }
        let digit = match &mut self.digits[side] {
            Some((event_pt, filter)) if *event_pt == pt => filter.digit(ts, payload),
            _ => None,
        };
        let full = recording
            && self
                .recording
                .as_mut()
                .is_some_and(|(_, r)| !r.push(pt, payload));
        let full = full.then(|| self.recording.take()).flatten();
        (digit, full.map(|(_, r)| r))
    }
}

/// Symmetric RTP: a packet from `from` on side `side` may move that side's media
/// address, but only early (within [`LATCH_WINDOW`] of the first latch) and only
/// from a plausible source (the SDP address or the phone's SIP address), which
/// guards against RTP bleed from strangers.
fn latch(st: &mut RelayState, side: usize, from: SocketAddr, now: tokio::time::Instant) {
    let peer = st.peers[side];
    let plausible = peer.rtp.is_some_and(|a| a.ip() == from.ip()) || peer.sip_ip == Some(from.ip());
    match st.latched[side] {
        Some((addr, _)) if addr == from => {}
        Some((_, since)) if plausible && now.duration_since(since) < LATCH_WINDOW => {
            st.latched[side] = Some((from, since));
        }
        None if plausible => st.latched[side] = Some((from, now)),
        _ => {}
    }
}

/// Where to send toward `side` for RTP (`rtcp = false`) or RTCP.
fn destination(st: &RelayState, side: usize, rtcp: bool) -> Option<SocketAddr> {
    let peer = st.peers[side];
    if !peer.receives {
        return None;
    }
    let rtp = st.latched[side].map(|(a, _)| a).or(peer.rtp)?;
    Some(if rtcp {
        SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1))
    } else {
        rtp
    })
}

impl Media {
    /// Starts a relay: side A's phone sends to `ports[0]`, side B's to `ports[1]`;
    /// each packet goes out of the other side's socket to that side's phone.
    pub fn relay(
        &self,
        inactivity: Duration,
        events: impl Fn(MediaEvent) + Send + Sync + 'static,
    ) -> Result<Relay, MediaError> {
        let events: Events = Arc::new(events);
        let reporter = Arc::clone(&events);
        let voice_dir = self.voice_dir.clone();
        let (lease_a, a_rtp, a_rtcp) = self.bind_pair()?;
        let (lease_b, b_rtp, b_rtcp) = self.bind_pair()?;
        let ports = [lease_a.rtp, lease_b.rtp];
        let state = Arc::new(Mutex::new(RelayState::default()));
        let shared = Arc::clone(&state);
        let wake = Arc::new(tokio::sync::Notify::new());
        let woken = Arc::clone(&wake);
        let task = tokio::spawn(async move {
            let _leases = (lease_a, lease_b);
            let socks = [[a_rtp, a_rtcp], [b_rtp, b_rtcp]];
            let mut buf = [0u8; 2048];
            let mut check = idle_check(inactivity);
            let mut last = tokio::time::Instant::now();
            let mut pace = pacer();
            let mut frame = [0u8; 12 + FRAME];
            loop {
                let playing = shared
                    .lock()
                    .map(|st| st.playing.is_some())
                    .unwrap_or(false);
                // Which socket is readable: (side it came from, rtcp?).
                let (side, rtcp) = tokio::select! {
                    () = woken.notified() => { pace.reset_immediately(); continue }
                    _ = pace.tick(), if playing => {
                        if let Ok(mut st) = shared.lock() {
                            let sent = st.playing.as_mut().and_then(|p| {
                                let n = p.next_packet(&mut frame)?;
                                Some((p.toward, n))
                            });
                            match sent {
                                Some((toward, n)) => {
                                    st.sent(toward, &frame[..n]);
                                    if let Some(dest) = destination(&st, toward, false) {
                                        let _ = socks[toward][0].try_send_to(&frame[..n], dest);
                                    }
                                }
                                None => st.stop_playing(),
                            }
                        }
                        continue;
                    }
                    r = socks[0][0].readable() => { if r.is_err() { continue } (0, false) }
                    r = socks[0][1].readable() => { if r.is_err() { continue } (0, true) }
                    r = socks[1][0].readable() => { if r.is_err() { continue } (1, false) }
                    r = socks[1][1].readable() => { if r.is_err() { continue } (1, true) }
                    _ = check.tick() => {
                        if last.elapsed() >= inactivity {
                            // Reported once per silent period; the call decides.
                            reporter(MediaEvent::Idle);
                            last = tokio::time::Instant::now();
                        }
                        continue;
                    }
                };
                let other = 1 - side;
                // Drain what is queued on that socket, bounded to stay fair.
                for _ in 0..64 {
                    let Ok((n, from)) = socks[side][usize::from(rtcp)].try_recv_from(&mut buf)
                    else {
                        break;
                    };
                    let header = match rtcp {
                        true => None,
                        // A malformed RTP packet is not relayed (and latches nothing).
                        false => match rtp_header(&buf[..n]) {
                            Some(h) => Some(h),
                            None => continue,
                        },
                    };
                    let now = tokio::time::Instant::now();
                    let mut heard = (None, None);
                    let dest = match shared.lock() {
                        Ok(mut st) => {
                            if let Some((seq, ts, _)) = header {
                                last = now;
                                latch(&mut st, side, from, now);
                                heard = st.listen(side, &buf[..n]);
                                st.continuation[other].apply(&mut buf[..n], seq, ts);
                            }
                            let muted = st.playing.as_ref().is_some_and(|p| p.toward == other);
                            let dest = destination(&st, other, rtcp).filter(|_| !muted);
                            if dest.is_some() && !rtcp {
                                st.sent(other, &buf[..n]);
                            }
                            dest
                        }
                        Err(_) => None,
                    };
                    if let Some(dest) = dest {
                        let _ = socks[other][usize::from(rtcp)].try_send_to(&buf[..n], dest);
                    }
                    if let Some(d) = heard.0 {
                        reporter(MediaEvent::Digit(side, d));
                    }
                    if let Some(rec) = heard.1 {
                        finish_recording(rec, voice_dir.clone(), Arc::clone(&reporter));
                    }
                }
            }
        });
        Ok(Relay {
            ports,
            state,
            wake,
            task,
            events,
            voice_dir: self.voice_dir.clone(),
            disk: Arc::clone(&self.disk),
        })
    }

    /// Plays `prompt` once to a phone that receives at `peer` (payload type `pt`),
    /// answering symmetric RTP: once the phone sends, its source address is used.
    pub fn player(
        &self,
        prompt: Arc<Prompt>,
        pt: u8,
        peer: Peer,
        inactivity: Duration,
        on_idle: impl Fn() + Send + 'static,
    ) -> Result<Session, MediaError> {
        let (lease, rtp, _rtcp) = self.bind_pair()?;
        let port = lease.rtp;
        let task = tokio::spawn(async move {
            let _lease = (lease, _rtcp);
            let mut st = RelayState::default();
            st.peers[0] = peer;
            st.playing = Some(Playback::new(prompt, pt, false, 0));
            let (mut buf, mut frame) = ([0u8; 2048], [0u8; 12 + FRAME]);
            let mut pace = pacer();
            let mut check = idle_check(inactivity);
            let mut last = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    r = rtp.recv_from(&mut buf) => if let Ok((n, from)) = r {
                        if rtp_header(&buf[..n]).is_some() {
                            last = tokio::time::Instant::now();
                            latch(&mut st, 0, from, last);
                        }
                    },
                    _ = pace.tick(), if st.playing.is_some() => {
                        match st.playing.as_mut().and_then(|p| p.next_packet(&mut frame)) {
                            Some(n) => if let Some(dest) = destination(&st, 0, false) {
                                let _ = rtp.try_send_to(&frame[..n], dest);
                            },
                            None => st.playing = None,
                        }
                    }
                    _ = check.tick() => if last.elapsed() >= inactivity {
                        on_idle();
                        last = tokio::time::Instant::now();
                    }
                }
            }
        });
        Ok(Session { port, task })
    }
}

#[cfg(test)]
mod tests {
    use super::prompt::linear_to_ulaw;
    use super::*;

    /// A well-formed RTP packet (PCMU, SSRC 1) carrying `payload`.
    fn rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0x00];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
        p.extend_from_slice(payload);
        p
    }

    #[tokio::test]
    async fn echo_returns_packets_and_frees_its_ports() {
        let media = Media::new("127.0.0.1".parse().expect("ip"), 41000, 41010);
        let s = media.echo(Duration::from_secs(5), || {}).expect("session");
        assert_eq!(media.ports_in_use(), 1);
        assert_eq!(s.port % 2, 0);
        let peer = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let packet = rtp(1, b"hello");
        for port in [s.port, s.port + 1] {
            peer.send_to(&packet, ("127.0.0.1", port))
                .await
                .expect("send");
            let mut buf = [0u8; 64];
            let (n, from) = tokio::time::timeout(Duration::from_secs(2), peer.recv_from(&mut buf))
                .await
                .expect("echo in time")
                .expect("recv");
            assert_eq!((&buf[..n], from.port()), (&packet[..], port));
        }
        drop(s);
        for _ in 0..100 {
            if media.ports_in_use() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(media.ports_in_use(), 0);
    }

    #[tokio::test]
    async fn relay_forwards_both_ways_latches_and_respects_hold() {
        let media = Media::new("127.0.0.1".parse().expect("ip"), 41200, 41220);
        let relay = media.relay(Duration::from_secs(5), |_| {}).expect("relay");
        assert_eq!(media.ports_in_use(), 2);
        let a = UdpSocket::bind("127.0.0.1:0").await.expect("a");
        let b = UdpSocket::bind("127.0.0.1:0").await.expect("b");
        let ip = Some("127.0.0.1".parse().expect("ip"));
        // B's SDP says a port nobody listens on: latching must find B's real source.
        relay.set_peer(
            0,
            Peer {
                rtp: Some(a.local_addr().expect("a")),
                sip_ip: ip,
                receives: true,
            },
        );
        relay.set_peer(
            1,
            Peer {
                rtp: Some("127.0.0.1:9".parse().expect("addr")),
                sip_ip: ip,
                receives: true,
            },
        );
        async fn recv(s: &UdpSocket) -> Option<Vec<u8>> {
            let mut buf = [0u8; 64];
            tokio::time::timeout(Duration::from_millis(500), s.recv_from(&mut buf))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|(n, _)| buf[..n].to_vec())
        }
        b.send_to(&rtp(1, b"from-b"), ("127.0.0.1", relay.ports[1]))
            .await
            .expect("send");
        assert_eq!(recv(&a).await, Some(rtp(1, b"from-b")));
        a.send_to(&rtp(1, b"from-a"), ("127.0.0.1", relay.ports[0]))
            .await
            .expect("send");
        assert_eq!(
            recv(&b).await,
            Some(rtp(1, b"from-a")),
            "latched to B's source"
        );
        // Malformed RTP is not relayed: a wrong version, a CSRC list, header
        // extension or padding longer than the packet, a short header.
        let mut bad_version = rtp(2, b"x");
        bad_version[0] = 0x40;
        let mut csrc = rtp(3, b"");
        csrc[0] = 0x8f;
        let mut extension = rtp(4, b"ab");
        extension[0] = 0x90;
        let mut padding = rtp(5, b"\x09");
        padding[0] = 0xa0;
        for bad in [
            bad_version,
            csrc,
            extension,
            padding,
            b"\x80\x00short".to_vec(),
        ] {
            a.send_to(&bad, ("127.0.0.1", relay.ports[0]))
                .await
                .expect("send");
        }
        a.send_to(&rtp(6, b"fine"), ("127.0.0.1", relay.ports[0]))
            .await
            .expect("send");
        assert_eq!(
            recv(&b).await,
            Some(rtp(6, b"fine")),
            "only the good one passed"
        );
        // B puts the call on hold: nothing goes towards B.
        relay.set_peer(
            1,
            Peer {
                rtp: Some(b.local_addr().expect("b")),
                sip_ip: ip,
                receives: false,
            },
        );
        a.send_to(&rtp(7, b"held"), ("127.0.0.1", relay.ports[0]))
            .await
            .expect("send");
        assert_eq!(recv(&b).await, None);
        drop(relay);
        for _ in 0..100 {
            if media.ports_in_use() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(media.ports_in_use(), 0);
    }

    /// Receives RTP packets for `for_ms`: (payload type, marker, seq, payload
    /// length, SSRC).
    async fn rtp_for(s: &UdpSocket, for_ms: u64) -> Vec<(u8, bool, u16, usize, u32)> {
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        let end = tokio::time::Instant::now() + Duration::from_millis(for_ms);
        while let Ok(Ok((n, _))) = tokio::time::timeout_at(end, s.recv_from(&mut buf)).await {
            if n >= 12 {
                let seq = u16::from_be_bytes([buf[2], buf[3]]);
                let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
                got.push((buf[1] & 0x7F, buf[1] & 0x80 != 0, seq, n - 12, ssrc));
            }
        }
        got
    }

    #[tokio::test]
    async fn a_relay_plays_a_prompt_paced_and_mutes_the_other_side_meanwhile() {
        let media = Media::new("127.0.0.1".parse().expect("ip"), 41300, 41320);
        let relay = media.relay(Duration::from_secs(5), |_| {}).expect("relay");
        let a = UdpSocket::bind("127.0.0.1:0").await.expect("a");
        let b = UdpSocket::bind("127.0.0.1:0").await.expect("b");
        for (side, s) in [(0, &a), (1, &b)] {
            relay.set_peer(
                side,
                Peer {
                    rtp: Some(s.local_addr().expect("addr")),
                    sip_ip: None,
                    receives: true,
                },
            );
        }
        // A hears B (SSRC 1, sequence 7), then is put on hold.
        b.send_to(
            b"\x80\x08\0\x07\0\0\0\0\0\0\0\x01talk",
            ("127.0.0.1", relay.ports[1]),
        )
        .await
        .expect("send");
        assert_eq!(rtp_for(&a, 100).await.len(), 1);
        relay.play(0, Arc::new(Prompt::hold_music()), 8, true);
        b.send_to(
            b"\x80\x08\0\x01\0\0\0\0\0\0\0\x01from-b",
            ("127.0.0.1", relay.ports[1]),
        )
        .await
        .expect("send");
        let got = rtp_for(&a, 400).await;
        assert_eq!(
            (got[0].2, got[0].4),
            (8, 1),
            "the music goes on as B's stream: same SSRC, the next sequence number"
        );
        // About 20 packets in 400 ms: paced, not bursted.
        assert!((14..=24).contains(&got.len()), "{} packets", got.len());
        assert!(
            got.iter().all(|p| p.0 == 8 && p.3 == 160),
            "PCMA, 20 ms each"
        );
        assert!(got[0].1, "the first carries the marker");
        assert!(got.windows(2).all(|w| w[1].2 == w[0].2.wrapping_add(1)));
        relay.stop_playing();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (mut last_seq, ssrc) = (got[got.len() - 1].2, got[0].4);
        let mut buf = [0u8; 512];
        while a.try_recv(&mut buf).is_ok() {
            last_seq = u16::from_be_bytes([buf[2], buf[3]]);
        }
        b.send_to(
            b"\x80\x08\0\x01\0\0\0\0\0\0\0\x01from-b",
            ("127.0.0.1", relay.ports[1]),
        )
        .await
        .expect("send");
        let got = rtp_for(&a, 200).await;
        assert_eq!(got.len(), 1, "B is heard again, the music stopped");
        assert_eq!(
            (got[0].1, got[0].2, got[0].4),
            (true, last_seq.wrapping_add(1), ssrc),
            "B's stream goes on as the music's: same SSRC, the next sequence number"
        );
    }

    #[test]
    fn a_greeting_is_played_once_then_the_music_loops() {
        let greeting = Arc::new(Prompt::from_linear(&[1000; FRAME * 2]));
        let music = Arc::new(Prompt::from_linear(&[-1000; FRAME * 3]));
        let mut p = Playback::new(greeting, 0, false, 0);
        p.then = Some(Arc::clone(&music));
        let mut buf = [0u8; 12 + FRAME];
        let frames: Vec<u8> = (0..8)
            .map(|_| {
                p.next_packet(&mut buf).expect("a packet");
                buf[12]
            })
            .collect();
        let (g, m) = (linear_to_ulaw(1000), linear_to_ulaw(-1000));
        assert_eq!(frames, [g, g, m, m, m, m, m, m]);
    }

    #[tokio::test]
    async fn a_player_plays_its_prompt_once() {
        let media = Media::new("127.0.0.1".parse().expect("ip"), 41400, 41404);
        let phone = UdpSocket::bind("127.0.0.1:0").await.expect("phone");
        let peer = Peer {
            rtp: Some(phone.local_addr().expect("addr")),
            sip_ip: None,
            receives: true,
        };
        let prompt = Arc::new(Prompt::from_linear(&[0; FRAME * 5]));
        let _s = media
            .player(prompt, 0, peer, Duration::from_secs(5), || {})
            .expect("player");
        let got = rtp_for(&phone, 400).await;
        assert_eq!(got.len(), 5, "five frames, then silence");
        assert!(got.iter().all(|p| p.0 == 0));
    }

    #[test]
    fn latching_ignores_strangers_and_late_moves() {
        let t0 = tokio::time::Instant::now();
        let mut st = RelayState::default();
        let phone: SocketAddr = "192.0.2.1:4000".parse().expect("addr");
        st.peers[0] = Peer {
            rtp: Some(phone),
            sip_ip: None,
            receives: true,
        };
        latch(&mut st, 0, "203.0.113.9:5000".parse().expect("addr"), t0);
        assert_eq!(st.latched[0], None, "a stranger is not latched");
        latch(&mut st, 0, "192.0.2.1:4002".parse().expect("addr"), t0);
        assert_eq!(
            destination(&st, 0, false),
            Some("192.0.2.1:4002".parse().expect("addr"))
        );
        assert_eq!(
            destination(&st, 0, true),
            Some("192.0.2.1:4003".parse().expect("addr"))
        );
        latch(
            &mut st,
            0,
            "192.0.2.1:4004".parse().expect("addr"),
            t0 + Duration::from_secs(10),
        );
        assert_eq!(
            destination(&st, 0, false),
            Some("192.0.2.1:4002".parse().expect("addr")),
            "too late to move"
        );
    }

    #[tokio::test]
    async fn pairs_are_bound_ahead_and_a_relay_takes_them_without_binding() {
        let media = Media::new("127.0.0.1".parse().expect("ip"), 41500, 41520);
        media.keep_ready(4);
        let ready = || media.pool.ready.lock().map(|r| r.len()).unwrap_or(0);
        for _ in 0..100 {
            if ready() == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(ready(), 4, "bound ahead");
        let first: Vec<u16> = media
            .pool
            .ready
            .lock()
            .map(|r| r.iter().take(2).map(|(p, _, _)| *p).collect())
            .unwrap_or_default();
        let relay = media.relay(Duration::from_secs(5), |_| {}).expect("relay");
        assert_eq!(
            relay.ports.to_vec(),
            first,
            "the relay took the ready pairs"
        );
        for _ in 0..100 {
            if ready() == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(ready(), 4, "topped up again");
        assert_eq!(media.ports_in_use(), 2);
    }

    #[tokio::test]
    async fn a_relay_reports_digits_once_and_saves_a_recording_when_it_is_dropped() {
        let dir = tempfile::tempdir().expect("dir");
        let media =
            Media::new("127.0.0.1".parse().expect("ip"), 41700, 41720).voice_dir(dir.path());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let relay = media
            .relay(Duration::from_secs(5), move |e| {
                let _ = tx.send(e);
            })
            .expect("relay");
        let a = UdpSocket::bind("127.0.0.1:0").await.expect("a");
        relay.set_peer(
            0,
            Peer {
                rtp: Some(a.local_addr().expect("a")),
                sip_ip: None,
                receives: true,
            },
        );
        relay.listen_digits(0, 101);
        relay.record(0, 42, Duration::from_secs(60));
        // One second of a loud tone (PCMU), then "1" as three packets of one event.
        for i in 0..50u16 {
            let payload: Vec<u8> = (0..160)
                .map(|n| {
                    let t = f32::from(i * 160 + n) / 8000.0;
                    linear_to_ulaw(((t * 440.0 * std::f32::consts::TAU).sin() * 8000.0) as i16)
                })
                .collect();
            a.send_to(&rtp(i, &payload), ("127.0.0.1", relay.ports[0]))
                .await
                .expect("send");
        }
        for end in [0x0a, 0x8a, 0x8a] {
            let mut pkt = rtp(60, &[1, end, 0, 160]);
            pkt[1] = 101;
            a.send_to(&pkt, ("127.0.0.1", relay.ports[0]))
                .await
                .expect("send");
        }
        let first = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
        assert_eq!(first.ok().flatten(), Some(MediaEvent::Digit(0, '1')));
        drop(relay);
        let saved = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
        assert_eq!(
            saved.ok().flatten(),
            Some(MediaEvent::Recorded {
                id: 42,
                saved: true,
                ms: 1000
            }),
            "one report: the digit was not repeated"
        );
        let wav = std::fs::read(recorder::path(dir.path(), 42)).expect("the WAV");
        assert_eq!(
            Prompt::from_wav(&wav).expect("valid").duration(),
            Duration::from_secs(1)
        );
    }

    #[tokio::test]
    async fn a_call_recording_mixes_both_sides_while_they_still_hear_each_other() {
        let dir = tempfile::tempdir().expect("dir");
        let media =
            Media::new("127.0.0.1".parse().expect("ip"), 41740, 41760).voice_dir(dir.path());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let relay = media
            .relay(Duration::from_secs(5), move |e| {
                let _ = tx.send(e);
            })
            .expect("relay");
        let phones = [
            UdpSocket::bind("127.0.0.1:0").await.expect("a"),
            UdpSocket::bind("127.0.0.1:0").await.expect("b"),
        ];
        for (side, p) in phones.iter().enumerate() {
            let peer = Peer {
                rtp: Some(p.local_addr().expect("addr")),
                sip_ip: None,
                receives: true,
            };
            relay.set_peer(side, peer);
        }
        relay.record_call(77);
        // A speaks for 400 ms, then B for 400 ms, paced as phones do.
        let loud: Vec<u8> = (0..160u16)
            .map(|n| {
                let t = f32::from(n) / 8000.0;
                linear_to_ulaw(((t * 400.0 * std::f32::consts::TAU).sin() * 8000.0) as i16)
            })
            .collect();
        for (phone, port) in phones.iter().zip(relay.ports) {
            for i in 0..20u16 {
                phone
                    .send_to(&rtp(i, &loud), ("127.0.0.1", port))
                    .await
                    .expect("send");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let mut heard = 0;
        let mut buf = [0u8; 512];
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(50), phones[1].recv_from(&mut buf)).await
        {
            heard += 1;
        }
        assert!(heard >= 18, "B still hears A: {heard} packets");
        relay.stop_recording_call();
        let ended = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
        let Ok(Some(MediaEvent::Recorded {
            id: 77,
            saved: true,
            ms,
        })) = ended
        else {
            panic!("not saved: {ended:?}");
        };
        assert!((700..=1100).contains(&ms), "{ms} ms");
        let wav = std::fs::read(recorder::path(dir.path(), 77)).expect("the WAV");
        let p = Prompt::from_wav(&wav).expect("valid");
        assert!(
            (p.duration().as_millis() as u64).abs_diff(ms) <= 20,
            "whole frames"
        );
        let pcm = p.payload(0);
        let loud_at = |from: usize, to: usize| {
            pcm[from * 8..to * 8]
                .iter()
                .filter(|u| crate::media::prompt::ulaw_to_linear(**u).unsigned_abs() > 2000)
                .count()
        };
        assert!(loud_at(100, 300) > 400, "A is in the first half");
        assert!(loud_at(500, 700) > 400, "B is in the second half");
        drop(relay);
        let again = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await;
        assert!(!matches!(again, Ok(Some(_))), "reported once: {again:?}");
    }

    #[tokio::test]
    async fn a_finished_calls_sockets_are_reused_without_its_stale_packets() {
        let media = Media::new("127.0.0.1".parse().expect("ip"), 41600, 41620);
        let relay = media.relay(Duration::from_secs(5), |_| {}).expect("relay");
        let ports = relay.ports;
        drop(relay);
        for _ in 0..100 {
            if media.ports_in_use() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(media.pool.idle.lock().map(|i| i.len()).unwrap_or(0), 2);
        // Late media of the finished call, queued on the idle socket.
        let late = UdpSocket::bind("127.0.0.1:0").await.expect("late");
        late.send_to(&rtp(9, b"stale"), ("127.0.0.1", ports[0]))
            .await
            .expect("send");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let relay = media.relay(Duration::from_secs(5), |_| {}).expect("relay");
        assert_eq!(relay.ports, ports, "the same sockets, no new bind");
        let b = UdpSocket::bind("127.0.0.1:0").await.expect("b");
        relay.set_peer(
            1,
            Peer {
                rtp: Some(b.local_addr().expect("b")),
                sip_ip: None,
                receives: true,
            },
        );
        let mut buf = [0u8; 64];
        let got = tokio::time::timeout(Duration::from_millis(200), b.recv_from(&mut buf)).await;
        assert!(got.is_err(), "the stale packet was drained, not relayed");
    }

    #[tokio::test]
    async fn inactivity_is_reported_and_the_pool_can_run_dry() {
        let media = Media::new("127.0.0.1".parse().expect("ip"), 41100, 41104);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _a = media.echo(Duration::from_millis(50), move || {
            let _ = tx.send(());
        });
        let _b = media
            .echo(Duration::from_secs(5), || {})
            .expect("second pair");
        assert!(matches!(
            media.echo(Duration::from_secs(5), || {}),
            Err(MediaError::NoPorts)
        ));
        tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("idle reported")
            .expect("sent");
    }
}

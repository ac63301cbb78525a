//! Test support for the sans-IO layers: an environment over a temporary store,
//! a fake media engine (ports and commands recorded, no sockets), and a shard
//! driven with a fake clock.

use crate::clock::{UnixMillis, WallClock};
use crate::media::{prompt::Prompt, MediaEngine, MediaError, MediaSession, Peer, RelayControl};
use crate::registrar::{Policy, Registrar};
use crate::routing::dialplan::Dialplan;
use crate::shard::{Shard, ShardConfig};
use crate::sip::auth::{Algorithm, DigestAuthority, Ha1};
use crate::sip::transaction::{TimerConfig, TransactionLayer, Transmit};
use crate::sip::{CallId, Remote};
use crate::store::{IdGen, Store};
use crate::tu::{CallSettings, Counters, Env, LocalAddrs, Stats};
use crate::users::{StoredUser, Users};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const REALM: &str = "sipdesk.local";

/// What the fake media engine was asked to do, in order.
pub type MediaLog = Arc<Mutex<Vec<String>>>;

/// Media without sockets: hands out port numbers, counts leases, logs commands.
#[derive(Debug, Default)]
pub struct FakeMedia {
    next_port: AtomicU16,
    pub leased: Arc<AtomicUsize>,
    pub log: MediaLog,
}

#[derive(Debug)]
struct Lease {
    leased: Arc<AtomicUsize>,
    pairs: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.leased.fetch_sub(self.pairs, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct FakeRelay {
    call: CallId,
    ports: [u16; 2],
    log: MediaLog,
    _lease: Lease,
}

#[derive(Debug)]
struct FakeSession {
    port: u16,
    _lease: Lease,
}

impl FakeMedia {
    fn lease(&self, pairs: usize) -> Lease {
        self.leased.fetch_add(pairs, Ordering::Relaxed);
        Lease {
            leased: Arc::clone(&self.leased),
            pairs,
        }
    }
    fn port(&self) -> u16 {
        20_000 + 2 * self.next_port.fetch_add(1, Ordering::Relaxed)
    }
    fn note(&self, what: String) {
        if let Ok(mut l) = self.log.lock() {
            l.push(what);
        }
    }
}

impl FakeRelay {
    fn note(&self, what: String) {
        if let Ok(mut l) = self.log.lock() {
            l.push(format!("{} {what}", self.call));
        }
    }
}

impl MediaEngine for FakeMedia {
    fn relay(&self, call: &CallId) -> Result<Box<dyn RelayControl>, MediaError> {
        let ports = [self.port(), self.port()];
        self.note(format!("{call} relay {ports:?}"));
        Ok(Box::new(FakeRelay {
            call: call.clone(),
            ports,
            log: Arc::clone(&self.log),
            _lease: self.lease(2),
        }))
    }
    fn echo(&self, call: &CallId) -> Result<Box<dyn MediaSession>, MediaError> {
        self.note(format!("{call} echo"));
        Ok(Box::new(FakeSession {
            port: self.port(),
            _lease: self.lease(1),
        }))
    }
    fn player(
        &self,
        call: &CallId,
        _prompt: Arc<Prompt>,
        pt: u8,
        _peer: Peer,
    ) -> Result<Box<dyn MediaSession>, MediaError> {
        self.note(format!("{call} player pt={pt}"));
        Ok(Box::new(FakeSession {
            port: self.port(),
            _lease: self.lease(1),
        }))
    }
    fn ports_in_use(&self) -> usize {
        self.leased.load(Ordering::Relaxed)
    }
    fn discard_voice(&self, id: u64) {
        self.note(format!("discard voice={id}"));
    }
}

impl MediaSession for FakeSession {
    fn port(&self) -> u16 {
        self.port
    }
}

impl RelayControl for FakeRelay {
    fn ports(&self) -> [u16; 2] {
        self.ports
    }
    fn set_peer(&self, side: usize, peer: Peer) {
        self.note(format!(
            "peer {side} {:?} receives={}",
            peer.rtp, peer.receives
        ));
    }
    fn play(&self, side: usize, _prompt: Arc<Prompt>, pt: u8, looping: bool) {
        self.note(format!("play {side} pt={pt} looping={looping}"));
    }
    fn play_then(&self, side: usize, _first: Arc<Prompt>, _then: Arc<Prompt>, pt: u8) {
        self.note(format!("play_then {side} pt={pt}"));
    }
    fn stop_playing(&self) {
        self.note("stop".into());
    }
    fn record(&self, side: usize, id: u64, max: Duration) {
        self.note(format!("record {side} voice={id} max={}s", max.as_secs()));
    }
    fn stop_recording(&self) {
        self.note("stop_recording".into());
    }
    fn record_call(&self, id: u64) {
        self.note(format!("record_call {id}"));
    }
    fn stop_recording_call(&self) {
        self.note("stop_recording_call".into());
    }
    fn listen_digits(&self, side: usize, pt: u8) {
        self.note(format!("digits {side} pt={pt}"));
    }
    fn play_voice(&self, side: usize, id: u64, pt: u8) {
        self.note(format!("play_voice {side} voice={id} pt={pt}"));
    }
}

/// A shard over a temporary store, with fake media, at a fake time `t0`.
#[derive(Debug)]
pub struct Harness {
    /// Holds the temporary store.
    pub _dir: tempfile::TempDir,
    pub shard: Shard,
    pub env: Arc<Env>,
    pub media: Arc<FakeMedia>,
    pub t0: Instant,
    pub wall0: UnixMillis,
}

/// How the harness is built.
pub struct Setup {
    pub users: Vec<&'static str>,
    pub authenticate: bool,
    pub routing: crate::routing::Directory,
    pub ring_timeout: Duration,
    pub hold_music: bool,
    pub outside: crate::outside::Outside,
    /// The users with a mailbox.
    pub mailboxes: Vec<&'static str>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            users: vec!["201"],
            authenticate: true,
            routing: crate::routing::Directory::default(),
            ring_timeout: Duration::from_secs(30),
            hold_music: false,
            outside: crate::outside::Outside::default(),
            mailboxes: Vec::new(),
        }
    }
}

impl Harness {
    pub fn new(setup: Setup) -> Harness {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(dir.path()).expect("store");
        let t0 = Instant::now();
        let wall0 = UnixMillis(1_000_000);
        let users = Users::default();
        for ext in &setup.users {
            users.insert(StoredUser {
                extension: (*ext).into(),
                name: None,
                ha1: Ha1::from_password(ext, REALM, "secret"),
            });
        }
        let policy = Policy {
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
            max_contacts: 4,
        };
        let media = Arc::new(FakeMedia::default());
        let env = Arc::new(Env {
            presence: crate::presence::Presence::new(setup.users.iter().copied(), UnixMillis(0)),
            users,
            mwi: crate::mwi::Mwi::new(["201".to_string()]),
            forwarding: crate::forwarding::Forwarding::default(),
            voicemail: crate::voicemail::Mailboxes::new(
                setup
                    .mailboxes
                    .iter()
                    .map(|m| (m.to_string(), Some("1234".to_string()))),
                Duration::from_secs(60),
                [],
            ),
            guard: crate::guard::Guard::default(),
            outside: setup.outside,
            registrar: Registrar::direct(store, policy, wall0).expect("registrar"),
            auth: DigestAuthority::new(
                REALM,
                vec![Algorithm::Sha256, Algorithm::Md5],
                Duration::from_secs(300),
                t0,
            ),
            routing: setup.routing,
            history: crate::history::History::default(),
            media: Some(Arc::clone(&media) as Arc<dyn MediaEngine>),
            hold_music: setup.hold_music.then(|| Arc::new(Prompt::hold_music())),
            timers: TimerConfig::default(),
            calls: CallSettings {
                ring_timeout: setup.ring_timeout,
                authenticate: setup.authenticate,
                min_session_expires: Duration::from_secs(90),
                ringback: Arc::new(Prompt::ringback(Default::default())),
                waiting: Arc::new(Prompt::waiting()),
                farewell: Arc::new(Prompt::sorry()),
                test_numbers: crate::config::TestNumbersConfig::default(),
                record_code: "*1".into(),
            },
            domain: REALM.into(),
            sip_port: 5060,
            addrs: LocalAddrs::new(Some([192, 0, 2, 100].into())),
            shard_count: 1,
            moved: Default::default(),
            stats: Stats::default(),
        });
        let shard = Shard::new(
            Arc::clone(&env),
            ShardConfig {
                index: 0,
                max_transactions: 1000,
                dialplan: Dialplan::from_config(&crate::config::Config::default()),
                clock: WallClock::new(wall0, t0),
                shed_after: Duration::from_millis(50),
            },
            TransactionLayer::new(TimerConfig::default()),
            Counters::new(IdGen::new(1, 0, 1)),
        );
        Harness {
            _dir: dir,
            shard,
            env,
            media,
            t0,
            wall0,
        }
    }

    /// Everything the shard sends now.
    pub fn sent(&mut self) -> Vec<Transmit> {
        std::iter::from_fn(|| self.shard.poll_transmit()).collect()
    }

    /// Runs every timer up to `at`, in order.
    pub fn run_until(&mut self, at: Instant) {
        while let Some(due) = self.shard.poll_timeout().filter(|d| *d <= at) {
            self.shard.handle_timeout(due);
        }
    }

    /// Makes every store write durable (the writer's group commit); returns
    /// the writes.
    pub fn flush(&mut self, now: Instant) -> Vec<crate::store::Write> {
        let writes = self.shard.poll_writes();
        if let Some(ask) = self.shard.poll_flush() {
            self.shard.handle_flushed(now, ask.seq);
        }
        writes
    }

    /// A phone at `addr` registered as `ext` (written straight into the bindings).
    pub fn bind(&self, ext: &str, addr: &str) {
        let req = format!(
            "REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP {addr};branch=z9hG4bKreg{ext}{addr}\r\n\
             From: <sip:{ext}@pbx>;tag=r\r\nTo: <sip:{ext}@pbx>\r\nCall-ID: reg-{ext}-{addr}\r\nCSeq: 1 REGISTER\r\n\
             Contact: <sip:{ext}@{addr}>\r\nContent-Length: 0\r\n\r\n"
        );
        let msg = crate::sip::message::parse(req.into(), &Default::default()).expect("register");
        let remote = Remote::udp(addr.parse().expect("addr"));
        let outcome = self
            .env
            .registrar
            .register(self.wall0, &msg, remote, ext, false)
            .expect("bind");
        assert!(matches!(outcome, crate::registrar::Outcome::Ok { .. }));
        let _ = self.env.presence.set_registered(ext, true, self.wall0);
    }
}

//! The RFC 3261 §17 transaction layer, sans-IO, with the RFC 6026 "Accepted" states.
//!
//! Owns every client and server transaction of one shard: matching (§17.1.3,
//! §17.2.3 with the RFC 2543 fallback), retransmission and absorption, and timers
//! A–M computed from T1/T2/T4. Inputs carry `now`; outputs are polled:
//! [`TransactionLayer::poll_transmit`] (bytes to send), [`TransactionLayer::poll_event`]
//! (what the transaction user must act on) and [`TransactionLayer::poll_timeout`]
//! (when to call [`TransactionLayer::handle_timeout`] next).

mod absorb;
mod key;

use crate::sip::message::{Builder, HeaderName, Message, Method};
use crate::sip::Remote;
use absorb::Absorber;
use bytes::Bytes;
use key::{client_key, server_key, ClientKey, ServerKey};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// RFC 3261 timer base values (Table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate, default 500 ms.
    pub t1: Duration,
    /// Longest retransmit interval for non-INVITE requests and INVITE responses, 4 s.
    pub t2: Duration,
    /// Longest time a message stays in the network, 5 s.
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// The named timers of RFC 3261 Table 4 and RFC 6026.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// INVITE request retransmit (client, unreliable).
    A,
    /// INVITE transaction timeout (client).
    B,
    /// Wait for response retransmits after a non-2xx final (client INVITE).
    D,
    /// Non-INVITE request retransmit (client, unreliable).
    E,
    /// Non-INVITE transaction timeout (client).
    F,
    /// INVITE final response retransmit (server, unreliable).
    G,
    /// Wait for ACK (server INVITE).
    H,
    /// Wait for ACK retransmits (server INVITE, Confirmed).
    I,
    /// Wait for request retransmits (server non-INVITE, Completed).
    J,
    /// Wait for response retransmits (client non-INVITE, Completed).
    K,
    /// Wait for INVITE retransmits after a 2xx (server, Accepted; RFC 6026).
    L,
    /// Wait for 2xx retransmits (client, Accepted; RFC 6026).
    M,
}

/// Identifies one transaction inside a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(pub u64);

/// Transaction states (client and server share the names of RFC 3261 figures 5–8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Calling,
    Trying,
    Proceeding,
    Completed,
    Confirmed,
    Accepted,
    Terminated,
}

/// Bytes to put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub remote: Remote,
    pub payload: Bytes,
}

/// What the transaction user must handle.
#[derive(Debug, Clone)]
pub enum TxEvent {
    /// A new request created a server transaction (ACKs never do; see `Ack`).
    Request {
        tx: TxId,
        request: Message,
        remote: Remote,
    },
    /// An ACK that belongs to no transaction (ACK for a 2xx), or one received in a
    /// server INVITE transaction's Accepted state.
    Ack { request: Message, remote: Remote },
    /// A response for a client transaction the TU must see.
    Response { tx: TxId, response: Message },
    /// A response that matches no client transaction (e.g. a 2xx retransmission
    /// after the transaction ended); the TU may use it (RFC 6026 §8.4).
    StrayResponse { response: Message, remote: Remote },
    /// Timer B, F or H fired: the transaction failed.
    Timeout { tx: TxId },
    /// The transaction is gone; the TU may drop what it keeps for it.
    Terminated { tx: TxId },
}

/// Local misuse of the layer (never caused by the network).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("no such transaction")]
    NoSuchTransaction,
    #[error("a {code} response is not allowed in state {state:?}")]
    InvalidState { code: u16, state: State },
    #[error("the request to send is not a well-formed SIP request: {0}")]
    BadRequest(String),
    #[error("a transaction with the same branch already exists")]
    Duplicate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Invite,
    NonInvite,
}

#[derive(Debug)]
enum Key {
    Server(ServerKey),
    Client(ClientKey),
}

/// One transaction's state. `retransmit` and `deadline` are its (at most two)
/// running timers.
#[derive(Debug)]
struct Tx {
    key: Key,
    kind: Kind,
    state: State,
    remote: Remote,
    /// The request, until it is no longer needed: an INVITE transaction drops
    /// it in Accepted, a completed non-INVITE server transaction moves to the
    /// absorber with only its key and response.
    request: Option<Message>,
    /// The bytes retransmitted: the request (client) or the last response (server).
    last: Option<Bytes>,
    /// Client INVITE: the ACK for a non-2xx final response (resent on its retransmissions).
    ack: Option<Bytes>,
    retransmit: Option<(Instant, Duration, Timer)>,
    deadline: Option<(Instant, Timer)>,
}

impl Tx {
    /// Enters Accepted (RFC 6026): for Timer L or M (32 s) the transaction
    /// only matches retransmissions, which the TU answers, so it lets go of
    /// the request and the bytes it no longer retransmits — at thousands of
    /// calls a second, 32 s of those is most of the PBX's memory.
    fn accept(&mut self) {
        self.state = State::Accepted;
        self.request = None;
        self.last = None;
        self.ack = None;
    }
}

/// All transactions of one shard.
#[derive(Debug)]
pub struct TransactionLayer {
    timers: TimerConfig,
    next_id: u64,
    /// Boxed: completed UDP transactions live 32 s, so at load this map holds
    /// hundreds of thousands of entries and must stay cheap to grow.
    txs: HashMap<TxId, Box<Tx>>,
    server_index: HashMap<ServerKey, TxId>,
    client_index: HashMap<ClientKey, TxId>,
    /// Deadlines; stale entries (timer since changed) are skipped when popped.
    heap: BinaryHeap<Reverse<(Instant, TxId)>>,
    /// Completed non-INVITE server transactions over UDP, waiting out Timer J.
    completed: Absorber,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TxEvent>,
}

impl TransactionLayer {
    pub fn new(timers: TimerConfig) -> Self {
        TransactionLayer {
            timers,
            next_id: 1,
            txs: HashMap::new(),
            server_index: HashMap::new(),
            client_index: HashMap::new(),
            heap: BinaryHeap::new(),
            completed: Absorber::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Number of live transactions.
    pub fn len(&self) -> usize {
        self.txs.len() + self.completed.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The state of a transaction (`None` once it is gone).
    pub fn state(&self, tx: TxId) -> Option<State> {
        match self.txs.get(&tx) {
            Some(t) => Some(t.state),
            None => self.completed.contains_tx(tx).then_some(State::Completed),
        }
    }
    /// The request a transaction was created for.
    pub fn request(&self, tx: TxId) -> Option<&Message> {
        self.txs.get(&tx).and_then(|t| t.request.as_ref())
    }

    /// Where a transaction's messages come from and go to.
    pub fn remote(&self, tx: TxId) -> Option<Remote> {
        self.txs.get(&tx).map(|t| t.remote)
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }
    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.events.pop_front()
    }
    /// The earliest instant at which `handle_timeout` has work (may be early).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let heap = self.heap.peek().map(|Reverse((at, _))| *at);
        match (heap, self.completed.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn alloc_id(&mut self) -> TxId {
        let id = TxId(self.next_id);
        self.next_id += 1;
        id
    }

    fn reliable(tx: &Tx) -> bool {
        tx.remote.transport.is_reliable()
    }

    fn set_deadline(&mut self, id: TxId, now: Instant, after: Duration, timer: Timer) {
        if let Some(tx) = self.txs.get_mut(&id) {
            tx.deadline = Some((now + after, timer));
            self.heap.push(Reverse((now + after, id)));
        }
    }

    fn set_retransmit(&mut self, id: TxId, now: Instant, interval: Duration, timer: Timer) {
        if let Some(tx) = self.txs.get_mut(&id) {
            tx.retransmit = Some((now + interval, interval, timer));
            self.heap.push(Reverse((now + interval, id)));
        }
    }

    fn send(&mut self, remote: Remote, payload: Bytes) {
        self.transmits.push_back(Transmit { remote, payload });
    }

    fn terminate(&mut self, id: TxId) {
        if let Some(tx) = self.txs.remove(&id) {
            match tx.key {
                Key::Server(k) => {
                    self.server_index.remove(&k);
                }
                Key::Client(k) => {
                    self.client_index.remove(&k);
                }
            }
            self.events.push_back(TxEvent::Terminated { tx: id });
        }
    }

    /// Moves a non-INVITE server transaction that sent its final response over UDP
    /// to the absorber for Timer J.
    fn complete_non_invite(&mut self, now: Instant, id: TxId) {
        let Some(tx) = self.txs.remove(&id) else {
            return;
        };
        let Key::Server(key) = tx.key else { return };
        self.server_index.remove(&key);
        let Some(response) = tx.last else { return };
        let fingerprint = self.completed.fingerprint(&key);
        let entry = absorb::Entry {
            tx: id,
            // Its own allocation of its own size: the builder's buffer has room
            // to spare, and 32 s × thousands a second of spare room adds up.
            response: Bytes::copy_from_slice(&response),
            remote: tx.remote,
        };
        self.completed
            .insert(fingerprint, now + self.timers.t1 * 64, entry);
    }

    /// The INVITE server transaction a CANCEL refers to (RFC 3261 §9.2).
    pub fn find_invite(&self, cancel: &Message) -> Option<TxId> {
        let key = server_key(cancel)?.with_method(Method::Invite);
        self.server_index.get(&key).copied()
    }

    /// A request arrived (RFC 3261 §17.2.3 matching).
    pub fn handle_request(&mut self, now: Instant, request: Message, remote: Remote) {
        let Some(key) = server_key(&request) else {
            // Without Via/CSeq a request cannot be matched; the TU decides (400).
            let tx = self.alloc_id();
            self.events.push_back(TxEvent::Request {
                tx,
                request,
                remote,
            });
            return;
        };
        let is_ack = request.method() == Some(&Method::Ack);
        if let Some(&id) = self.server_index.get(&key) {
            self.server_retransmission(now, id, is_ack, request, remote);
            return;
        }
        if !is_ack {
            if let Some(done) = self.completed.get(self.completed.fingerprint(&key)) {
                let (remote, response) = (done.remote, done.response.clone());
                self.send(remote, response);
                return;
            }
        } else {
            self.events.push_back(TxEvent::Ack { request, remote });
            return;
        }
        let id = self.new_server(key, request.clone(), remote);
        self.events.push_back(TxEvent::Request {
            tx: id,
            request,
            remote,
        });
    }

    /// A new request another shard's layer received and gave up to this one
    /// ([`give_up`](Self::give_up)): its server transaction is made here, as
    /// if it had arrived here, but the TU is not told (the caller hands the
    /// request on itself). `None` when this layer already has it (a
    /// retransmission that was routed here first), or it cannot be matched.
    pub fn adopt(&mut self, request: Message, remote: Remote) -> Option<TxId> {
        let key = server_key(&request)?;
        if self.server_index.contains_key(&key) || request.method() == Some(&Method::Ack) {
            return None;
        }
        Some(self.new_server(key, request, remote))
    }

    /// Gives up INVITE server transaction `id`, not yet answered, without
    /// answering it: another shard's layer adopts its request, which is
    /// returned. Nothing is sent, and the TU hears nothing more of it.
    pub fn give_up(&mut self, id: TxId) -> Option<Message> {
        let tx = self.txs.get(&id)?;
        let unanswered = tx.kind == Kind::Invite && tx.state == State::Proceeding;
        if !matches!(tx.key, Key::Server(_)) || !unanswered {
            return None;
        }
        let tx = self.txs.remove(&id)?;
        if let Key::Server(k) = &tx.key {
            self.server_index.remove(k);
        }
        tx.request
    }

    /// A new server transaction for `request` (an INVITE is answered 100
    /// Trying at once: it stops the client's Timer A, §17.2.1).
    fn new_server(&mut self, key: ServerKey, request: Message, remote: Remote) -> TxId {
        let kind = if request.method() == Some(&Method::Invite) {
            Kind::Invite
        } else {
            Kind::NonInvite
        };
        let id = self.alloc_id();
        let reply_to = reply_remote(&request, remote);
        let trying = (kind == Kind::Invite)
            .then(|| Builder::response(&request, remote.addr, 100, "Trying", None).finish());
        if let Some(t) = &trying {
            self.send(reply_to, t.clone());
        }
        let tx = Tx {
            key: Key::Server(key.clone()),
            kind,
            state: if kind == Kind::Invite {
                State::Proceeding
            } else {
                State::Trying
            },
            remote: reply_to,
            request: Some(request),
            last: trying,
            ack: None,
            retransmit: None,
            deadline: None,
        };
        self.txs.insert(id, Box::new(tx));
        self.server_index.insert(key, id);
        id
    }

    fn server_retransmission(
        &mut self,
        now: Instant,
        id: TxId,
        is_ack: bool,
        request: Message,
        remote: Remote,
    ) {
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        match (tx.kind, tx.state, is_ack) {
            (Kind::Invite, State::Completed, true) => {
                tx.state = State::Confirmed;
                tx.retransmit = None;
                if Self::reliable(tx) {
                    self.terminate(id);
                } else {
                    let t4 = self.timers.t4;
                    self.set_deadline(id, now, t4, Timer::I);
                }
            }
            (Kind::Invite, State::Accepted, true) => {
                self.events.push_back(TxEvent::Ack { request, remote });
            }
            (_, _, true) => {} // ACK retransmission in Confirmed: absorbed
            (_, State::Proceeding | State::Completed, false) => {
                if let Some(last) = tx.last.clone() {
                    let remote = tx.remote;
                    self.send(remote, last);
                }
            }
            _ => {} // Trying (no response yet) or Accepted/Confirmed: absorbed
        }
    }

    /// The TU answers a server transaction.
    pub fn respond(&mut self, now: Instant, id: TxId, response: Bytes) -> Result<(), TxError> {
        self.answer(now, id, response, false)
    }

    /// The TU answers a non-INVITE server transaction with a final response and
    /// the transaction ends at once, without waiting out Timer J: for a TU that
    /// regenerates the same answer when the request is retransmitted (a stateless
    /// UAS, RFC 3261 §8.2.7, as a registrar may be). At thousands of REGISTERs a
    /// second this is what keeps memory flat: nothing stays for 32 s.
    pub fn respond_and_forget(
        &mut self,
        now: Instant,
        id: TxId,
        response: Bytes,
    ) -> Result<(), TxError> {
        self.answer(now, id, response, true)
    }

    fn answer(
        &mut self,
        now: Instant,
        id: TxId,
        response: Bytes,
        forget: bool,
    ) -> Result<(), TxError> {
        let code = status_of(&response);
        let tx = self.txs.get_mut(&id).ok_or(TxError::NoSuchTransaction)?;
        let invalid = TxError::InvalidState {
            code,
            state: tx.state,
        };
        let remote = tx.remote;
        let reliable = Self::reliable(tx);
        match (tx.kind, tx.state) {
            (Kind::NonInvite, State::Trying | State::Proceeding) => {
                tx.last = Some(response.clone());
                self.send(remote, response);
                let tx = self.txs.get_mut(&id).ok_or(TxError::NoSuchTransaction)?;
                if code < 200 {
                    tx.state = State::Proceeding;
                } else {
                    if reliable || forget {
                        self.terminate(id);
                    } else {
                        self.complete_non_invite(now, id);
                    }
                }
            }
            (Kind::Invite, State::Proceeding) => {
                tx.last = Some(response.clone());
                self.send(remote, response);
                if code >= 300 {
                    let tx = self.txs.get_mut(&id).ok_or(TxError::NoSuchTransaction)?;
                    tx.state = State::Completed;
                    if !reliable {
                        let t1 = self.timers.t1;
                        self.set_retransmit(id, now, t1, Timer::G);
                    }
                    let h = self.timers.t1 * 64;
                    self.set_deadline(id, now, h, Timer::H);
                } else if code >= 200 {
                    let tx = self.txs.get_mut(&id).ok_or(TxError::NoSuchTransaction)?;
                    tx.accept();
                    let l = self.timers.t1 * 64;
                    self.set_deadline(id, now, l, Timer::L);
                }
            }
            (Kind::Invite, State::Accepted) if (200..300).contains(&code) => {
                // 2xx retransmissions from the TU pass straight through (RFC 6026 §8.5).
                self.send(remote, response);
            }
            _ => return Err(invalid),
        }
        Ok(())
    }

    /// The TU sends a request through a new client transaction.
    pub fn send_request(
        &mut self,
        now: Instant,
        parsed: Message,
        remote: Remote,
    ) -> Result<TxId, TxError> {
        let request = parsed.buf().clone();
        let method = parsed
            .method()
            .cloned()
            .ok_or_else(|| TxError::BadRequest("not a request".into()))?;
        if method == Method::Ack {
            return Err(TxError::BadRequest(
                "ACK is sent without a transaction".into(),
            ));
        }
        let key = client_key(&parsed)
            .ok_or_else(|| TxError::BadRequest("no Via branch or CSeq".into()))?;
        if self.client_index.contains_key(&key) {
            return Err(TxError::Duplicate);
        }
        let kind = if method == Method::Invite {
            Kind::Invite
        } else {
            Kind::NonInvite
        };
        let id = self.alloc_id();
        self.txs.insert(
            id,
            Box::new(Tx {
                key: Key::Client(key.clone()),
                kind,
                state: if kind == Kind::Invite {
                    State::Calling
                } else {
                    State::Trying
                },
                remote,
                request: Some(parsed),
                last: Some(request.clone()),
                ack: None,
                retransmit: None,
                deadline: None,
            }),
        );
        self.client_index.insert(key, id);
        self.send(remote, request);
        let (t1, b) = (self.timers.t1, self.timers.t1 * 64);
        let (retransmit, timeout) = match kind {
            Kind::Invite => (Timer::A, Timer::B),
            Kind::NonInvite => (Timer::E, Timer::F),
        };
        if !remote.transport.is_reliable() {
            self.set_retransmit(id, now, t1, retransmit);
        }
        self.set_deadline(id, now, b, timeout);
        Ok(id)
    }

    /// A response arrived (RFC 3261 §17.1.3 matching).
    pub fn handle_response(&mut self, now: Instant, response: Message, remote: Remote) {
        let id = client_key(&response).and_then(|k| self.client_index.get(&k).copied());
        let Some(id) = id else {
            self.events
                .push_back(TxEvent::StrayResponse { response, remote });
            return;
        };
        let Some(code) = response.status() else {
            return;
        };
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        let reliable = Self::reliable(tx);
        match (tx.kind, tx.state) {
            (Kind::Invite, State::Calling | State::Proceeding) => {
                tx.retransmit = None;
                if code < 200 {
                    tx.state = State::Proceeding;
                } else if code < 300 {
                    tx.accept();
                    let m = self.timers.t1 * 64;
                    self.set_deadline(id, now, m, Timer::M);
                } else {
                    let ack = tx
                        .request
                        .as_ref()
                        .map(|r| build_ack(r, &response))
                        .unwrap_or_default();
                    tx.ack = Some(ack.clone());
                    tx.state = State::Completed;
                    let remote = tx.remote;
                    self.send(remote, ack);
                    if reliable {
                        self.events
                            .push_back(TxEvent::Response { tx: id, response });
                        self.terminate(id);
                        return;
                    }
                    self.set_deadline(id, now, Duration::from_secs(32), Timer::D);
                }
                self.events
                    .push_back(TxEvent::Response { tx: id, response });
            }
            (Kind::Invite, State::Completed) => {
                if let Some(ack) = tx.ack.clone() {
                    let remote = tx.remote;
                    self.send(remote, ack);
                }
            }
            (Kind::Invite, State::Accepted) if (200..300).contains(&code) => {
                self.events
                    .push_back(TxEvent::Response { tx: id, response });
            }
            (Kind::NonInvite, State::Trying | State::Proceeding) => {
                if code < 200 {
                    tx.state = State::Proceeding;
                } else {
                    tx.state = State::Completed;
                    tx.retransmit = None;
                    self.events
                        .push_back(TxEvent::Response { tx: id, response });
                    if reliable {
                        self.terminate(id);
                    } else {
                        let k = self.timers.t4;
                        self.set_deadline(id, now, k, Timer::K);
                    }
                    return;
                }
                self.events
                    .push_back(TxEvent::Response { tx: id, response });
            }
            _ => {} // absorbed
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        for tx in self.completed.expire(now) {
            self.events.push_back(TxEvent::Terminated { tx });
        }
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            let Some(tx) = self.txs.get_mut(&id) else {
                continue;
            };
            if let Some((rt_at, interval, timer)) = tx.retransmit {
                if rt_at <= now {
                    tx.retransmit = None;
                    self.fire_retransmit(now, id, interval, timer);
                }
            }
            let Some(tx) = self.txs.get_mut(&id) else {
                continue;
            };
            if let Some((dl_at, timer)) = tx.deadline {
                if dl_at <= now {
                    tx.deadline = None;
                    self.fire_deadline(id, timer);
                }
            }
        }
        self.shrink_after_burst();
    }

    /// Hash tables keep the room of their largest moment: after a burst (a
    /// quarter full or less) they give it back.
    fn shrink_after_burst(&mut self) {
        fn shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
            if map.capacity() > 4096 && map.len() < map.capacity() / 4 {
                map.shrink_to(map.len() * 2);
            }
        }
        shrink(&mut self.txs);
        shrink(&mut self.server_index);
        shrink(&mut self.client_index);
        if self.heap.capacity() > 4096 && self.heap.len() < self.heap.capacity() / 4 {
            self.heap.shrink_to(self.heap.len() * 2);
        }
    }

    fn fire_retransmit(&mut self, now: Instant, id: TxId, interval: Duration, timer: Timer) {
        let Some(tx) = self.txs.get(&id) else { return };
        let payload = tx.last.clone();
        let (remote, state) = (tx.remote, tx.state);
        let next = match (timer, state) {
            (Timer::A, State::Calling) => interval * 2,
            (Timer::E, State::Trying) => (interval * 2).min(self.timers.t2),
            (Timer::E, State::Proceeding) => self.timers.t2,
            (Timer::G, State::Completed) => (interval * 2).min(self.timers.t2),
            _ => return,
        };
        if let Some(p) = payload {
            self.send(remote, p);
        }
        self.set_retransmit(id, now, next, timer);
    }

    fn fire_deadline(&mut self, id: TxId, timer: Timer) {
        if matches!(timer, Timer::B | Timer::F | Timer::H) {
            self.events.push_back(TxEvent::Timeout { tx: id });
        }
        self.terminate(id);
    }
}

/// Where responses to a request go (RFC 3261 §18.2.2, RFC 3581 §4): over a stream,
/// back on its connection; over UDP, to the source IP, at the source port when the
/// top Via asked for `rport`, else at the Via's sent-by port.
pub fn reply_remote(request: &Message, source: Remote) -> Remote {
    if source.transport.is_reliable() {
        return source;
    }
    match request.top_via() {
        Some(via) if via.params.get(b"rport").is_none() => Remote {
            addr: std::net::SocketAddr::new(source.addr.ip(), via.sent_by.port.unwrap_or(5060)),
            ..source
        },
        _ => source,
    }
}

fn status_of(response: &[u8]) -> u16 {
    response
        .get(8..11)
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The ACK for a non-2xx final response (RFC 3261 §17.1.1.3).
fn build_ack(invite: &Message, response: &Message) -> Bytes {
    let uri = invite.request_uri_bytes().unwrap_or_default();
    let mut b = Builder::request(&Method::Ack, uri);
    if let Some(via) = invite.value(HeaderName::Via) {
        b.header("Via", via);
    }
    b.copy(invite, HeaderName::Route);
    if let Some(v) = invite.value(HeaderName::From) {
        b.header("From", v);
    }
    if let Some(v) = response.value(HeaderName::To) {
        b.header("To", v);
    }
    if let Some(v) = invite.call_id() {
        b.header("Call-ID", v);
    }
    let seq = invite.cseq().map(|c| c.seq).unwrap_or_default();
    b.header("CSeq", format!("{seq} ACK"));
    b.header("Max-Forwards", "70");
    b.finish()
}

#[cfg(test)]
mod tests;

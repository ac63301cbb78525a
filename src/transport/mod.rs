//! The thin tokio side of SIP: UDP sockets and TCP listeners that cut the wire into
//! messages, parse them, and hand each to the shard that owns its Call-ID; and the
//! [`Outbound`] handle through which shards send, without ever awaiting.

use crate::guard::Admit;
use crate::sip::call_id::shard_of;
use crate::sip::message::frame::{Frame, Framer};
use crate::sip::message::{parse, Limits};
use crate::sip::transaction::Transmit;
use crate::sip::{ConnId, Remote, Transport};
use bytes::Bytes;
use dashmap::DashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Socket receive/send buffer asked for: a vCPU stall must not overflow the socket
/// at thousands of messages per second.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;
/// Queued outgoing messages per TCP connection before it counts as stuck.
const TCP_QUEUE: usize = 1024;
/// Most TCP connections at once.
const MAX_TCP_CONNECTIONS: usize = 10_000;

/// A transport failure (local: binding or socket setup).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot start reading a socket: {source}")]
    Reader { source: std::io::Error },
    #[error("cannot listen on {transport} {addr}: {source}")]
    Bind {
        transport: Transport,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A message as the transport hands it to a shard.
#[derive(Debug)]
pub struct Inbound {
    pub parsed: Result<crate::sip::message::Message, crate::sip::SipError>,
    pub remote: Remote,
    /// When it was received (routing latency starts here).
    pub at: std::time::Instant,
}

/// Routes parsed input to shards by Call-ID (`T` is what a shard's queue holds).
#[derive(Debug)]
pub struct Dispatcher<T> {
    shards: Arc<Vec<mpsc::Sender<T>>>,
    /// How long each shard's last message waited in its queue (µs), as the
    /// shard reports it: the overload signal.
    lags: Arc<Vec<AtomicU64>>,
    limits: Limits,
    dropped_overload: Arc<AtomicU64>,
    shed: Arc<AtomicU64>,
    /// Asked about every datagram's source before it is parsed.
    guard: crate::guard::Guard,
    /// Legs a transfer handed to another shard than their hash.
    moved: Arc<crate::sip::call_id::Moved>,
    /// A shard whose messages wait longer than this (µs) is behind.
    shed_lag: u64,
}

impl<T> Clone for Dispatcher<T> {
    fn clone(&self) -> Self {
        Dispatcher {
            shards: Arc::clone(&self.shards),
            lags: Arc::clone(&self.lags),
            limits: self.limits,
            dropped_overload: Arc::clone(&self.dropped_overload),
            shed: Arc::clone(&self.shed),
            guard: self.guard.clone(),
            moved: Arc::clone(&self.moved),
            shed_lag: self.shed_lag,
        }
    }
}

impl<T: From<Inbound> + Send + 'static> Dispatcher<T> {
    pub fn new(
        shards: Vec<mpsc::Sender<T>>,
        limits: Limits,
        guard: crate::guard::Guard,
        moved: Arc<crate::sip::call_id::Moved>,
        shed_lag: std::time::Duration,
    ) -> Self {
        Dispatcher {
            shed_lag: shed_lag.as_micros() as u64,
            lags: Arc::new(shards.iter().map(|_| AtomicU64::new(0)).collect()),
            shards: Arc::new(shards),
            limits,
            dropped_overload: Arc::new(AtomicU64::new(0)),
            shed: Arc::new(AtomicU64::new(0)),
            guard,
            moved,
        }
    }

    /// Messages dropped because their shard's queue was full.
    pub fn dropped_overload(&self) -> u64 {
        self.dropped_overload.load(Ordering::Relaxed)
    }

    /// A shard reports how long the message it just took had waited.
    pub fn report_lag(&self, shard: usize, waited: std::time::Duration) {
        if let Some(l) = self.lags.get(shard) {
            l.store(waited.as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// Parses `bytes` and queues it on its shard; never waits. Returns an
    /// answer to send back at once: 503 with Retry-After (RFC 3261 §21.5.4) for
    /// a new request while its shard is behind (its messages wait longer than
    /// `[sip] shed_after_ms`, or more than [`SHED_BACKLOG`] are queued) — the cheapest
    /// refusal there is, and it keeps the shard for the calls it has taken.
    /// A banned source's datagrams are dropped unparsed (or, from a known
    /// phone's address, its requests refused with 503).
    pub fn dispatch(&self, bytes: Bytes, remote: Remote) -> Option<Transmit> {
        match self.screen(&bytes, remote) {
            Admit::Drop => None,
            admit => self.route(bytes, remote, admit),
        }
    }

    /// [`dispatch`](Self::dispatch) for a datagram still in the socket's
    /// buffer: copied only once the guard has let it in (a flood from a banned
    /// source costs a lookup, not an allocation).
    pub fn dispatch_datagram(&self, buf: &[u8], remote: Remote) -> Option<Transmit> {
        match self.screen(buf, remote) {
            Admit::Drop => None,
            admit => self.route(Bytes::copy_from_slice(buf), remote, admit),
        }
    }

    /// What the guard says of these bytes from `remote` (a keep-alive is
    /// dropped: there is nothing to answer).
    fn screen(&self, bytes: &[u8], remote: Remote) -> Admit {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Admit::Drop;
        }
        let request = !bytes.starts_with(b"SIP/");
        self.guard
            .admit(std::time::Instant::now(), remote.addr.ip(), request)
    }

    fn route(&self, bytes: Bytes, remote: Remote, admit: Admit) -> Option<Transmit> {
        let parsed = parse(bytes, &self.limits);
        if let (Admit::Refuse { retry_after }, Ok(m)) = (admit, &parsed) {
            // A banned phone's address: the ban's remaining seconds.
            return unavailable(m, remote, "Service Unavailable (Banned)", retry_after);
        }
        let n = self.shards.len();
        let shard = match &parsed {
            Ok(m) => m.call_id().map_or(0, |c| self.moved.shard(c, n)),
            Err(_) => shard_of(remote.addr.to_string().as_bytes(), n),
        };
        let queue = &self.shards[shard];
        let backlog = queue.max_capacity() - queue.capacity();
        let lag = self.lags[shard].load(Ordering::Relaxed);
        let behind = lag > self.shed_lag || backlog > SHED_BACKLOG;
        if let Ok(m) = &parsed {
            if behind && starts_something(m) {
                self.shed.fetch_add(1, Ordering::Relaxed);
                return unavailable(m, remote, "Service Unavailable (Overloaded)", 5);
            }
        }
        let input = Inbound {
            parsed,
            remote,
            at: std::time::Instant::now(),
        };
        if queue.try_send(T::from(input)).is_err() {
            self.dropped_overload.fetch_add(1, Ordering::Relaxed);
        }
        None
    }

    /// New requests refused at the edge because their shard was overloaded.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }
}

/// Messages queued for a shard beyond which new requests are refused at the
/// edge whatever the lag (a shard that has stalled reports none). The reader
/// takes up to 256 datagrams a turn from a socket the kernel filled while the
/// thread waited for a core, so a few turns' worth is normal queueing (about
/// 70 ms of work at 14,000 messages a second), not overload.
pub const SHED_BACKLOG: usize = 1024;

/// A request that starts something new (no To tag; not ACK or CANCEL, which
/// finish what exists).
fn starts_something(m: &crate::sip::message::Message) -> bool {
    m.is_request()
        && !matches!(
            m.method(),
            Some(crate::sip::message::Method::Ack | crate::sip::message::Method::Cancel)
        )
        && m.to_header().is_some_and(|t| t.tag().is_none())
}

/// A stateless 503 with Retry-After (seconds) for request `req`; none for an
/// ACK, a response, or without a Via to answer to.
fn unavailable(
    req: &crate::sip::message::Message,
    remote: Remote,
    reason: &str,
    retry_after: u64,
) -> Option<Transmit> {
    req.top_via()?;
    if !req.is_request() || req.method() == Some(&crate::sip::message::Method::Ack) {
        return None;
    }
    let mut b = crate::sip::message::Builder::reply(req, remote.addr, 503, reason);
    b.header("Retry-After", retry_after.to_string());
    Some(Transmit {
        remote: crate::sip::transaction::reply_remote(req, remote),
        payload: b.finish(),
    })
}

/// Sends what shards produce. UDP goes out on the socket the request came in on;
/// TCP on its connection's writer queue. A TCP message to a peer without a
/// connection (a trunk's provider over TCP) opens one: its queue exists at
/// once, so what follows waits in it while the connection is made. When such
/// a connection closes (or never opens), the closed hook hears of its peer.
#[derive(Debug, Default)]
pub struct Outbound {
    /// The UDP sockets, sent on without waiting (non-blocking) and watched
    /// by nobody here: a socket registered for writability with an event
    /// loop wakes that loop on every datagram sent.
    udp: Vec<std::net::UdpSocket>,
    tcp: DashMap<ConnId, mpsc::Sender<Bytes>>,
    /// The connections we opened, by peer.
    dialed: DashMap<SocketAddr, ConnId>,
    /// Connects to a peer and runs the connection (set at start).
    dialer: std::sync::OnceLock<Dialer>,
    /// Told the peer of each connection we opened that closed.
    closed_hook: std::sync::OnceLock<ClosedHook>,
    next_conn: AtomicU64,
    pub send_failures: AtomicU64,
}

/// Opens and runs an outgoing TCP connection: (peer, its id, its queue).
struct Dialer(Box<dyn Fn(SocketAddr, ConnId, mpsc::Receiver<Bytes>) + Send + Sync>);

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dialer")
    }
}

/// What is done when a connection we opened closed: (its peer).
struct ClosedHook(Box<dyn Fn(SocketAddr) + Send + Sync>);

impl std::fmt::Debug for ClosedHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClosedHook")
    }
}

impl Outbound {
    pub fn send(&self, t: &Transmit) {
        let ok = match t.remote.transport {
            Transport::Udp => {
                let idx = t.remote.conn.map_or(0, |c| c.0 as usize);
                self.udp
                    .get(idx)
                    .or_else(|| self.udp.first())
                    .is_some_and(|s| s.send_to(&t.payload, t.remote.addr).is_ok())
            }
            Transport::Tcp => t
                .remote
                .conn
                .or_else(|| self.dialed.get(&t.remote.addr).map(|c| *c))
                .or_else(|| self.dial(t.remote.addr))
                .and_then(|c| {
                    self.tcp
                        .get(&c)
                        .map(|tx| tx.try_send(t.payload.clone()).is_ok())
                })
                .unwrap_or(false),
        };
        if !ok {
            self.send_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(remote = %t.remote, "send failed");
        }
    }

    /// A new outgoing connection to `peer`: its queue at once, the connect in
    /// the background.
    fn dial(&self, peer: SocketAddr) -> Option<ConnId> {
        let dialer = self.dialer.get()?;
        if self.tcp.len() >= MAX_TCP_CONNECTIONS {
            return None;
        }
        let id = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(TCP_QUEUE);
        self.tcp.insert(id, tx);
        self.dialed.insert(peer, id);
        (dialer.0)(peer, id, rx);
        Some(id)
    }

    fn closed(&self, peer: SocketAddr, id: ConnId) {
        self.tcp.remove(&id);
        self.dialed.remove_if(&peer, |_, c| *c == id);
        if let Some(hook) = self.closed_hook.get() {
            (hook.0)(peer);
        }
    }

    /// From now on `hook` hears of each connection we opened that closed, or
    /// could not be opened (set once).
    pub fn when_closed(&self, hook: impl Fn(SocketAddr) + Send + Sync + 'static) {
        let _ = self.closed_hook.set(ClosedHook(Box::new(hook)));
    }
}

/// Bound sockets, before their loops start.
#[derive(Debug)]
pub struct Listeners {
    pub udp: Vec<std::net::UdpSocket>,
    pub tcp: Vec<TcpListener>,
}

/// A UDP socket's receive loop, not yet running. The runtime runs it on the
/// thread of the first shard, so a datagram for that shard crosses no thread
/// on its way in (a hand-off between threads is a wake-up: a system call and a
/// scheduling delay per batch).
#[derive(Debug)]
pub struct UdpReader<T> {
    sock: std::net::UdpSocket,
    local: ConnId,
    dispatcher: Dispatcher<T>,
}

impl<T: From<Inbound> + Send + 'static> UdpReader<T> {
    /// Reads until the runtime it runs on stops; registers the socket with
    /// that runtime for readability only (what other threads send on it
    /// wakes nobody).
    #[allow(unsafe_code)]
    pub async fn run(self) {
        let interest = tokio::io::Interest::READABLE;
        // SAFETY: the AsyncFd owns the std socket, whose descriptor stays open
        // and the same (`as_raw_fd` returns its own field) until it is dropped.
        let registered = unsafe { AsyncFd::register_with_interest(self.sock, interest) };
        match registered {
            Ok(sock) => udp_loop(sock, self.local, self.dispatcher).await,
            Err(e) => tracing::error!("udp reader socket: {e}"),
        }
    }
}

impl Listeners {
    pub fn bind(udp: &[SocketAddr], tcp: &[SocketAddr]) -> Result<Listeners, TransportError> {
        let mut out = Listeners {
            udp: Vec::new(),
            tcp: Vec::new(),
        };
        for addr in udp {
            let sock = bind_udp(*addr).map_err(|source| TransportError::Bind {
                transport: Transport::Udp,
                addr: *addr,
                source,
            })?;
            out.udp.push(sock);
        }
        for addr in tcp {
            let l = bind_tcp(*addr).map_err(|source| TransportError::Bind {
                transport: Transport::Tcp,
                addr: *addr,
                source,
            })?;
            out.tcp.push(l);
        }
        Ok(out)
    }

    pub fn local_addrs(&self) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        (
            self.udp
                .iter()
                .filter_map(|s| s.local_addr().ok())
                .collect(),
            self.tcp
                .iter()
                .filter_map(|s| s.local_addr().ok())
                .collect(),
        )
    }

    /// Starts the TCP accept loops on the runtime; returns the send handle and
    /// the UDP receive loops, for the caller to run where their datagrams are
    /// handled. Each UDP loop drains its socket in bounded turns between the
    /// shard's turns, so reading keeps pace with the kernel: overload shows as
    /// queueing in the shards, which shed it, instead of datagrams lost in the
    /// kernel.
    pub fn start<T: From<Inbound> + Send + 'static>(
        self,
        dispatcher: Dispatcher<T>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Result<(Arc<Outbound>, Vec<UdpReader<T>>), TransportError> {
        let mut senders = Vec::new();
        let mut readers = Vec::new();
        for (i, sock) in self.udp.into_iter().enumerate() {
            let failed = |source| TransportError::Reader { source };
            let reader = sock.try_clone().map_err(failed)?;
            senders.push(sock);
            readers.push(UdpReader {
                sock: reader,
                local: ConnId(i as u64),
                dispatcher: dispatcher.clone(),
            });
        }
        let outbound = Arc::new(Outbound {
            udp: senders,
            ..Outbound::default()
        });
        let _ = outbound.dialer.set(dialer(
            dispatcher.clone(),
            Arc::downgrade(&outbound),
            tokio::runtime::Handle::current(),
        ));
        for l in self.tcp {
            tasks.spawn(tcp_accept_loop(
                l,
                dispatcher.clone(),
                Arc::clone(&outbound),
            ));
        }
        Ok((outbound, readers))
    }
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

async fn udp_loop<T: From<Inbound> + Send + 'static>(
    sock: AsyncFd<std::net::UdpSocket>,
    local: ConnId,
    dispatcher: Dispatcher<T>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let mut ready = match sock.readable().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("udp socket: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        // Drain everything queued on the socket per wake-up (bounded, to stay
        // fair: a reader cut short yields before it reads on).
        let mut drained = false;
        for _ in 0..256 {
            match sock.get_ref().recv_from(&mut buf) {
                Ok((n, from)) => {
                    let remote = Remote {
                        transport: Transport::Udp,
                        addr: from,
                        conn: Some(local),
                    };
                    if let Some(t) = dispatcher.dispatch_datagram(&buf[..n], remote) {
                        let _ = sock.get_ref().send_to(&t.payload, t.remote.addr);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ready.clear_ready();
                    drained = true;
                    break;
                }
                // ICMP port unreachable and friends surface here on some systems.
                Err(e) => tracing::debug!("udp receive: {e}"),
            }
        }
        drop(ready);
        if !drained {
            tokio::task::yield_now().await;
        }
    }
}

/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens outgoing TCP connections on `runtime` and runs them like accepted ones.
fn dialer<T: From<Inbound> + Send + 'static>(
    dispatcher: Dispatcher<T>,
    outbound: std::sync::Weak<Outbound>,
    runtime: tokio::runtime::Handle,
) -> Dialer {
    Dialer(Box::new(move |peer, id, rx| {
        let (dispatcher, outbound) = (dispatcher.clone(), outbound.clone());
        runtime.spawn(async move {
            let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer)).await;
            let Some(out) = outbound.upgrade() else {
                return;
            };
            let pong = out.tcp.get(&id).map(|tx| tx.clone());
            match (connected, pong) {
                (Ok(Ok(stream)), Some(pong)) => {
                    drop(out);
                    tracing::debug!(%peer, "tcp connection opened");
                    let max = dispatcher.limits.max_message;
                    if let Err(e) =
                        tcp_connection(stream, peer, id, dispatcher, pong, rx, max).await
                    {
                        tracing::debug!(%peer, "tcp connection closed: {e}");
                    }
                    if let Some(out) = outbound.upgrade() {
                        out.closed(peer, id);
                    }
                }
                (Ok(Err(e)), _) => {
                    tracing::warn!(%peer, "tcp connect failed: {e}");
                    out.closed(peer, id);
                }
                (Err(_), _) => {
                    tracing::warn!(%peer, "tcp connect timed out");
                    out.closed(peer, id);
                }
                (Ok(Ok(_)), None) => out.closed(peer, id),
            }
        });
    }))
}

async fn tcp_accept_loop<T: From<Inbound> + Send + 'static>(
    l: TcpListener,
    dispatcher: Dispatcher<T>,
    outbound: Arc<Outbound>,
) {
    loop {
        let (stream, from) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("tcp accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if outbound.tcp.len() >= MAX_TCP_CONNECTIONS {
            tracing::warn!(%from, "too many TCP connections; refused");
            continue;
        }
        let id = ConnId(outbound.next_conn.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(TCP_QUEUE);
        outbound.tcp.insert(id, tx.clone());
        let (dispatcher, outbound) = (dispatcher.clone(), Arc::clone(&outbound));
        tokio::spawn(async move {
            let max = dispatcher.limits.max_message;
            if let Err(e) = tcp_connection(stream, from, id, dispatcher, tx, rx, max).await {
                tracing::debug!(%from, "tcp connection closed: {e}");
            }
            outbound.tcp.remove(&id);
        });
    }
}

async fn tcp_connection<T: From<Inbound> + Send + 'static>(
    stream: TcpStream,
    from: SocketAddr,
    id: ConnId,
    dispatcher: Dispatcher<T>,
    pong: mpsc::Sender<Bytes>,
    mut outgoing: mpsc::Receiver<Bytes>,
    max_message: usize,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        while let Some(b) = outgoing.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let remote = Remote {
        transport: Transport::Tcp,
        addr: from,
        conn: Some(id),
    };
    let mut framer = Framer::new(max_message);
    let result = loop {
        match rd.read_buf(framer.buffer()).await {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(e) => break Err(e),
        }
        let mut failed = None;
        loop {
            match framer.next_frame() {
                Ok(Some(Frame::Ping)) => {
                    let _ = pong.try_send(Bytes::from_static(b"\r\n"));
                }
                Ok(Some(Frame::Message(bytes))) => {
                    if let Some(t) = dispatcher.dispatch(bytes, remote) {
                        let _ = pong.try_send(t.payload);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            tracing::warn!(%from, "closing TCP connection: {e}");
            break Ok(());
        }
    };
    writer.abort();
    result
}

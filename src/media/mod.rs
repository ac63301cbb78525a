//! Media: the RTP port pool and the media sessions the PBX runs on it. An echo
//! session (the echo test number) sends every RTP and RTCP packet back to where it
//! came from. Each session is one tokio task over its own sockets with a fixed
//! receive buffer (no allocation per packet); its ports go back to the pool when
//! the task ends, and it reports RTP inactivity so dead calls get cleaned up.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    in_use: AtomicUsize,
}

/// A port pair taken from the pool; given back when dropped.
#[derive(Debug)]
struct Lease {
    pool: Arc<PortPool>,
    rtp: u16,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut free) = self.pool.free.lock() {
            free.push_back(self.rtp);
        }
        self.pool.in_use.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The media side of the PBX; cheap to clone.
#[derive(Debug, Clone)]
pub struct Media {
    pool: Arc<PortPool>,
    bind_ip: IpAddr,
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
                in_use: AtomicUsize::new(0),
            }),
            bind_ip,
        }
    }

    /// Port pairs currently leased.
    pub fn ports_in_use(&self) -> usize {
        self.pool.in_use.load(Ordering::Relaxed)
    }

    /// Takes a free pair and binds RTP and RTCP sockets on it. A port some other
    /// program holds is skipped (and put at the back of the queue).
    fn bind_pair(&self) -> Result<(Lease, UdpSocket, UdpSocket), MediaError> {
        let attempts = self.pool.free.lock().map(|f| f.len()).unwrap_or(0).min(64);
        for _ in 0..attempts {
            let Some(rtp) = self.pool.free.lock().ok().and_then(|mut f| f.pop_front()) else {
                break;
            };
            self.pool.in_use.fetch_add(1, Ordering::Relaxed);
            let lease = Lease {
                pool: Arc::clone(&self.pool),
                rtp,
            };
            let bind = |port: u16| -> std::io::Result<UdpSocket> {
                let s = StdUdpSocket::bind(SocketAddr::new(self.bind_ip, port))?;
                s.set_nonblocking(true)?;
                UdpSocket::from_std(s)
            };
            match (bind(rtp), bind(rtp + 1)) {
                (Ok(a), Ok(b)) => return Ok((lease, a, b)),
                _ => continue, // dropping the lease returns the port
            }
        }
        Err(MediaError::NoPorts)
    }

    /// Starts an echo session. `on_idle` runs once if no packet arrives for
    /// `inactivity` (the call is dead); the session then stops.
    pub fn echo(
        &self,
        inactivity: Duration,
        on_idle: impl FnOnce() + Send + 'static,
    ) -> Result<Session, MediaError> {
        let (lease, rtp, rtcp) = self.bind_pair()?;
        let port = lease.rtp;
        let task = tokio::spawn(async move {
            let _lease = lease;
            let (mut a, mut b) = ([0u8; 2048], [0u8; 2048]);
            // Checked a few times per inactivity period: packets only stamp a time.
            let mut check = tokio::time::interval(inactivity / 4);
            let mut last = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    r = rtp.recv_from(&mut a) => if let Ok((n, from)) = r {
                        last = tokio::time::Instant::now();
                        let _ = rtp.try_send_to(&a[..n], from);
                    },
                    r = rtcp.recv_from(&mut b) => if let Ok((n, from)) = r {
                        let _ = rtcp.try_send_to(&b[..n], from);
                    },
                    _ = check.tick() => if last.elapsed() >= inactivity {
                        on_idle();
                        break;
                    }
                }
            }
        });
        Ok(Session { port, task })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn echo_returns_packets_and_frees_its_ports() {
        let media = Media::new("127.0.0.1".parse().expect("ip"), 41000, 41010);
        let s = media.echo(Duration::from_secs(5), || {}).expect("session");
        assert_eq!(media.ports_in_use(), 1);
        assert_eq!(s.port % 2, 0);
        let peer = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        for port in [s.port, s.port + 1] {
            peer.send_to(b"\x80\x00hello", ("127.0.0.1", port))
                .await
                .expect("send");
            let mut buf = [0u8; 64];
            let (n, from) = tokio::time::timeout(Duration::from_secs(2), peer.recv_from(&mut buf))
                .await
                .expect("echo in time")
                .expect("recv");
            assert_eq!((&buf[..n], from.port()), (&b"\x80\x00hello"[..], port));
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
    async fn inactivity_is_reported_and_the_pool_can_run_dry() {
        let media = Media::new("127.0.0.1".parse().expect("ip"), 41100, 41104);
        let (tx, rx) = tokio::sync::oneshot::channel();
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
        tokio::time::timeout(Duration::from_secs(2), rx)
            .await
            .expect("idle reported")
            .expect("sent");
    }
}

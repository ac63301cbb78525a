//! RTP relay load: N concurrent relayed G.711 calls on loopback, each phone sending
//! 50 packets/s of 172 bytes (20 ms of PCMA) in both directions through the relay,
//! for a few seconds. Reports, per N: packets sent and received, loss, and the
//! resident memory the relays added per call. The generator runs in the same process
//! (2 vCPUs here), so the highest loss-free N is a floor, not a ceiling.
//!
//!     cargo bench --bench relay_load            env: CALLS="250 500 1000 2000" SECS=5

use sipdesk::media::{Media, Peer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn step(media: &Media, n: usize, secs: u64) -> (u64, u64, f64) {
    let before = rss_kb();
    let mut relays = Vec::with_capacity(n);
    for _ in 0..n {
        relays.push(
            media
                .relay(Duration::from_secs(60), |_| {})
                .expect("relay ports"),
        );
    }
    let per_call_kb = (rss_kb().saturating_sub(before)) as f64 / n as f64;
    let (sent, received) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut phones = Vec::new();
    for r in &relays {
        let a = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let ip = Some("127.0.0.1".parse().expect("ip"));
        r.set_peer(
            0,
            Peer {
                rtp: Some(a.local_addr().expect("a")),
                sip_ip: ip,
                receives: true,
            },
        );
        r.set_peer(
            1,
            Peer {
                rtp: Some(b.local_addr().expect("b")),
                sip_ip: ip,
                receives: true,
            },
        );
        let to_a: SocketAddr = ([127, 0, 0, 1], r.ports[0]).into();
        let to_b: SocketAddr = ([127, 0, 0, 1], r.ports[1]).into();
        phones.push((a, to_a));
        phones.push((b, to_b));
    }
    let mut readers = Vec::new();
    for (sock, _) in &phones {
        let (sock, received) = (Arc::clone(sock), Arc::clone(&received));
        readers.push(tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while sock.recv_from(&mut buf).await.is_ok() {
                received.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut pkt = [0xd5u8; 172];
    pkt[0] = 0x80;
    pkt[1] = 8;
    for seq in 0..(secs * 50) {
        tick.tick().await;
        pkt[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
        for (sock, to) in &phones {
            if sock.try_send_to(&pkt, *to).is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for r in readers {
        r.abort();
    }
    drop(relays);
    // Wait for the relay tasks to end and give their ports back.
    for _ in 0..500 {
        if media.ports_in_use() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (
        sent.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
        per_call_kb,
    )
}

fn main() {
    let calls: Vec<usize> = std::env::var("CALLS")
        .unwrap_or_else(|_| "250 500 1000 2000".into())
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let secs: u64 = std::env::var("SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    // `cargo test --benches` runs benches once in test mode: keep that instant.
    if !std::env::args().any(|a| a == "--bench") {
        println!("relay_load: run with `cargo bench --bench relay_load`");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "| calls | packets sent | received | loss % | pps through relay | relay RSS per call |"
    );
    println!("|---|---|---|---|---|---|");
    let media = Media::new("127.0.0.1".parse().expect("ip"), 20_000, 60_000);
    for n in calls {
        let (sent, received, kb) = rt.block_on(step(&media, n, secs));
        let loss = 100.0 * (sent.saturating_sub(received)) as f64 / sent.max(1) as f64;
        println!(
            "| {n} | {sent} | {received} | {loss:.3} | {:.0} | {kb:.1} KiB |",
            received as f64 / secs as f64
        );
    }
}

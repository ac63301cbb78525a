//! Presence throughput: one writer changing agents' states (each change derived,
//! stored and broadcast) while reader threads look states up, side by side for
//! 0, 1 and 3 readers over 10,000 extensions. Reports updates/s and reads/s.
//!
//!     cargo bench --bench presence          env: SECS=3

use sipdesk::presence::{Presence, State};
use sipdesk::UnixMillis;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("presence: run with `cargo bench --bench presence`");
        return;
    }
    let secs: u64 = std::env::var("SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let names: Vec<String> = (0..10_000).map(|i| format!("{}", 10_000 + i)).collect();
    println!("| readers | updates/s | reads/s (all readers) |");
    println!("|---|---|---|");
    for readers in [0usize, 1, 3] {
        let p = Presence::new(names.iter().map(String::as_str), UnixMillis(0));
        let _listener = p.subscribe(); // a board listening: every change is broadcast
        for n in &names {
            let _ = p.set_registered(n, true, UnixMillis(0));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..readers)
            .map(|r| {
                let (p, stop, reads, names) = (
                    p.clone(),
                    Arc::clone(&stop),
                    Arc::clone(&reads),
                    names.clone(),
                );
                std::thread::spawn(move || {
                    let mut i = r * 7919;
                    let mut local = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..1024 {
                            std::hint::black_box(p.state(&names[i % names.len()]));
                            i += 1;
                        }
                        local += 1024;
                    }
                    reads.fetch_add(local, Ordering::Relaxed);
                })
            })
            .collect();
        let started = Instant::now();
        let mut updates = 0u64;
        let states = [State::Away, State::Busy, State::Available];
        while started.elapsed() < Duration::from_secs(secs) {
            for k in 0..1024usize {
                let n = &names[(updates as usize + k * 13) % names.len()];
                let _ = p.choose(n, states[k % 3], UnixMillis(updates));
            }
            updates += 1024;
        }
        let elapsed = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            let _ = h.join();
        }
        println!(
            "| {readers} | {:.0} | {:.0} |",
            updates as f64 / elapsed,
            reads.load(Ordering::Relaxed) as f64 / elapsed
        );
    }
}

//! One ACD routing decision at scale: 10,000 agents in 100 groups (100 each),
//! a queue served by 2 groups, 1,000,000 known callers in the caller index, and
//! a third of the agents available. A decision is what the hot path does for a
//! new queue call: read the caller's recent agents, then `Directory::choose`
//! over the presence map. Three cases: the last agent is available (sticky),
//! it is busy (its colleagues by priority), and a new caller (longest idle).
//! Criterion reports the means; p50/p99 over 200,000 mixed decisions follow.
//!
//!     cargo bench --bench routing

use criterion::Criterion;
use sipdesk::history::History;
use sipdesk::presence::{Presence, State};
use sipdesk::routing::{Directory, Group, GroupId, Overflow, Queue, QueueId};
use sipdesk::UnixMillis;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct World {
    dir: Directory,
    queue: QueueId,
    presence: Presence,
    history: History,
}

fn agent(i: usize) -> String {
    format!("{}", 10_000 + i)
}

fn caller(i: usize) -> String {
    format!("+1555{i:07}")
}

fn world() -> World {
    let groups: Vec<Group> = (0..100)
        .map(|g| Group {
            name: format!("g{g}"),
            members: (0..100)
                .map(|m| (agent(g * 100 + m), 1 + (m % 3) as u32))
                .collect(),
        })
        .collect();
    let mut dir = Directory::new(groups);
    let prompt = Arc::new(sipdesk::media::prompt::Prompt::confirm());
    let queue = dir.add_queue(Queue {
        number: "500".into(),
        groups: vec![GroupId(0), GroupId(1)],
        ring: Duration::from_secs(15),
        max_wait: Duration::from_secs(300),
        wrap_up: Duration::from_secs(10),
        greeting: None,
        music: Arc::clone(&prompt),
        overflow: Overflow::Announce(Arc::clone(&prompt)),
        sorry: prompt,
        service_level: Duration::from_secs(20),
    });
    let names: Vec<String> = (0..10_000).map(agent).collect();
    let presence = Presence::new(names.iter().map(String::as_str), UnixMillis(0));
    for (i, n) in names.iter().enumerate() {
        let _ = presence.set_registered(n, true, UnixMillis(i as u64));
        if i % 3 != 0 {
            let _ = presence.choose(n, State::Away, UnixMillis(i as u64));
        }
    }
    let history = History::default();
    for c in 0..1_000_000 {
        // Callers of the queue's two groups (agents 0..200), a few agents each.
        let _ = history.answered(&caller(c), &agent((c * 7) % 200));
        if c % 2 == 0 {
            let _ = history.answered(&caller(c), &agent((c * 13) % 200));
        }
    }
    World {
        dir,
        queue,
        presence,
        history,
    }
}

fn decide(w: &World, caller: &str) -> Option<String> {
    let recent = w.history.recent_agents(caller);
    w.dir
        .choose(w.queue, &recent, |_| false, |e| w.presence.state(e))
        .map(|(a, _)| a.to_string())
}

/// A known caller whose last agent is available (`true`) or not.
fn known_caller(w: &World, available: bool) -> String {
    (0..1_000_000)
        .map(caller)
        .find(|c| {
            let last = w.history.recent_agents(c).first().cloned();
            last.and_then(|a| w.presence.state(&a))
                .is_some_and(|(s, _)| (s == State::Available) == available)
        })
        .unwrap_or_else(|| caller(0))
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("routing: run with `cargo bench --bench routing`");
        return;
    }
    let started = Instant::now();
    let w = world();
    println!(
        "built: 10,000 agents, 100 groups, {} callers in {:.1} s",
        w.history.callers(),
        started.elapsed().as_secs_f64()
    );
    let sticky = known_caller(&w, true);
    let colleague = known_caller(&w, false);
    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(3));
    let mut g = c.benchmark_group("routing_decision");
    g.bench_function("sticky", |b| b.iter(|| decide(&w, black_box(&sticky))));
    g.bench_function("colleague", |b| {
        b.iter(|| decide(&w, black_box(&colleague)))
    });
    g.bench_function("new_caller", |b| {
        b.iter(|| decide(&w, black_box("+19990000000")))
    });
    g.finish();

    let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    for i in 0..200_000usize {
        let who = caller((i * 7919) % 1_000_000);
        let who = if i % 5 == 0 {
            "anonymous".to_string()
        } else {
            who
        };
        let t = Instant::now();
        black_box(decide(&w, &who));
        let _ = h.record(t.elapsed().as_nanos() as u64);
    }
    println!(
        "mixed decisions (1M known callers, 1 in 5 new): p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

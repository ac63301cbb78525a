//! Desk load for `benches/desk-load.sh`: N agents log in to a running sipdesk
//! and hold its event stream open, reading every event.
//!
//!   desk_clients measure BASE_URL PBX_PID N CHANGES
//!     logs in user1000.. (password pw1000..), connects N streams, prints the
//!     PBX's RSS before and after; then one agent changes state CHANGES times
//!     (20 a second) and every stream times each presence event from the
//!     request that caused it (p50/p99 over all streams); then the board
//!     endpoint is fetched by 16 concurrent clients for 5 s (requests/s).
//!   desk_clients callbacks BASE_URL N ITEMS
//!     connects N streams (members of group `bench`), writes ITEMS call-backs
//!     to the group (20 a second) and times each one's event on every stream
//!     from its create request; then claims them all, 16 at a time (claims/s).
//!   desk_clients hold BASE_URL N SECS RATE
//!     connects N streams and reads events for SECS seconds (at most 600)
//!     while one agent changes state RATE times a second, printing each
//!     second how many events arrived so far.
//!
//!   desk_clients dialer BASE_URL N SECS CONTACTS
//!     connects N agents' streams (group `bench`), and as supervisor `boss`
//!     creates a campaign over the group and trunk `bench` with CONTACTS
//!     customers and starts it; every agent confirms each customer it is shown
//!     at once. After SECS seconds (at most 300) the campaign stops; it prints
//!     the attempts finished per second, how long an agent waited from the end
//!     of one attempt (idle again) to its next customer being dialled
//!     (p50/p99), from its phone being answered (the record shown) to the
//!     customer being dialled, and the campaign's abandon rate.
//!
//! Everything it talks to is the BASE_URL given (a loopback address in the
//! benchmark); every loop is bounded in count and time.

use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

type Failure = Box<dyn std::error::Error + Send + Sync>;

async fn login(http: &reqwest::Client, base: &str, i: usize) -> Result<String, Failure> {
    let (ext, password) = (format!("user{}", 1000 + i), format!("pw{}", 1000 + i));
    login_as(http, base, &ext, &password).await
}

async fn login_as(
    http: &reqwest::Client,
    base: &str,
    ext: &str,
    password: &str,
) -> Result<String, Failure> {
    let body = json!({ "extension": ext, "password": password });
    let r: Value = http
        .post(format!("{base}/api/v1/session"))
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(r["token"].as_str().ok_or("no token")?.to_string())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(base: &str, token: &str) -> Result<Ws, Failure> {
    let url = format!("{}/api/v1/events", base.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse()?);
    Ok(tokio_tungstenite::connect_async(req).await?.0)
}

/// Logs in `n` agents and opens their streams.
async fn streams(
    http: &reqwest::Client,
    base: &str,
    n: usize,
) -> Result<Vec<(String, Ws)>, Failure> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let token = login(http, base, i).await?;
        let ws = connect(base, &token).await?;
        out.push((token, ws));
    }
    Ok(out)
}

fn rss_kb(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One task per stream: the arrival times of the first `want` events that
/// `wanted` picks (within a minute).
fn readers(
    clients: Vec<(String, Ws)>,
    want: usize,
    wanted: fn(&Value) -> bool,
) -> Vec<tokio::task::JoinHandle<Vec<Instant>>> {
    clients
        .into_iter()
        .map(|(_, mut ws)| {
            tokio::spawn(async move {
                let mut mine = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(60);
                while mine.len() < want && Instant::now() < deadline {
                    let Ok(Some(Ok(msg))) =
                        tokio::time::timeout(Duration::from_secs(5), ws.next()).await
                    else {
                        break;
                    };
                    let at = Instant::now();
                    if let Message::Text(t) = msg {
                        let e: Value = serde_json::from_str(&t).unwrap_or_default();
                        if wanted(&e) {
                            mine.push(at);
                        }
                    }
                }
                mine
            })
        })
        .collect()
}

/// Prints p50/p99/max of (k-th arrival on each stream - k-th `sent`).
async fn report(
    from: &str,
    n: usize,
    readers: Vec<tokio::task::JoinHandle<Vec<Instant>>>,
    sent: &[Instant],
) -> Result<(), Failure> {
    let mut latencies: Vec<Duration> = Vec::new();
    let mut missing = 0;
    for r in readers {
        let mine = r.await?;
        missing += sent.len().saturating_sub(mine.len());
        latencies.extend(
            mine.iter()
                .zip(sent)
                .map(|(a, s)| a.saturating_duration_since(*s)),
        );
    }
    latencies.sort();
    println!(
        "event latency ({from} -> event received), {} events over {n} streams: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, missing {missing}",
        latencies.len(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    Ok(())
}

/// Call-backs to group `bench`: create → event on every stream, then claims/s
/// on distinct items.
async fn callbacks(base: &str, n: usize, items: usize) -> Result<(), Failure> {
    let http = reqwest::Client::new();
    let clients = streams(&http, base, n).await?;
    let writer = clients
        .first()
        .map(|(t, _)| t.clone())
        .ok_or("no clients")?;
    let readers = readers(clients, items, |e| {
        e["type"] == "callback" && e["callback"]["status"]["state"] == "open"
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sent = Vec::with_capacity(items);
    let mut ids = Vec::with_capacity(items);
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    for k in 0..items {
        pace.tick().await;
        let body = json!({ "customer": format!("555{k:04}"), "message": "please call back", "target": { "group": "bench" } });
        sent.push(Instant::now());
        let c: Value = http
            .post(format!("{base}/api/v1/callbacks"))
            .bearer_auth(&writer)
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        ids.push(c["id"].as_u64().ok_or("no id")?);
    }
    report("call-back create request sent", n, readers, &sent).await?;
    // Claims of distinct items, 16 at a time.
    let started = Instant::now();
    let ids = Arc::new(Mutex::new(ids));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (http, base, token, ids) = (
            http.clone(),
            base.to_string(),
            writer.clone(),
            Arc::clone(&ids),
        );
        workers.push(tokio::spawn(async move {
            let mut ok = 0u64;
            loop {
                let Some(id) = ids.lock().await.pop() else {
                    break;
                };
                let r = http
                    .post(format!("{base}/api/v1/callbacks/{id}/claim"))
                    .bearer_auth(&token)
                    .send()
                    .await;
                ok += u64::from(r.is_ok_and(|r| r.status().is_success()));
            }
            ok
        }));
    }
    let mut claimed = 0;
    for w in workers {
        claimed += w.await?;
    }
    println!(
        "claims: {claimed} of {items} distinct items in {:.2} s: {:.0} claims/s (16 concurrent clients)",
        started.elapsed().as_secs_f64(),
        claimed as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn measure(base: &str, pid: &str, n: usize, changes: usize) -> Result<(), Failure> {
    let http = reqwest::Client::new();
    let before = rss_kb(pid);
    let clients = streams(&http, base, n).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kb(pid);
    println!(
        "RSS: {before} kB with no stream, {after} kB with {n} streams ({:.1} kB per stream)",
        (after.saturating_sub(before)) as f64 / n.max(1) as f64
    );
    let driver = clients
        .first()
        .map(|(t, _)| t.clone())
        .ok_or("no clients")?;
    // Every stream notes when each presence event of user1000 arrives.
    let readers = readers(clients, changes, |e| {
        e["type"] == "presence" && e["extension"] == "user1000"
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sent = Vec::with_capacity(changes);
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    for k in 0..changes {
        pace.tick().await;
        let state = if k % 2 == 0 { "away" } else { "available" };
        sent.push(Instant::now());
        http.put(format!("{base}/api/v1/agents/user1000/state"))
            .bearer_auth(&driver)
            .json(&json!({ "state": state }))
            .send()
            .await?
            .error_for_status()?;
    }
    report("state change request sent", n, readers, &sent).await?;

    // The board, fetched by 16 clients at once for 5 s.
    let done = Instant::now() + Duration::from_secs(5);
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (http, base, token) = (http.clone(), base.to_string(), driver.clone());
        workers.push(tokio::spawn(async move {
            let mut ok = 0u64;
            while Instant::now() < done {
                let r = http
                    .get(format!("{base}/api/v1/board"))
                    .bearer_auth(&token)
                    .send()
                    .await;
                if let Ok(r) = r {
                    if r.status().is_success() && r.bytes().await.is_ok() {
                        ok += 1;
                    }
                }
            }
            ok
        }));
    }
    let mut total = 0;
    for w in workers {
        total += w.await?;
    }
    println!(
        "board: {:.0} requests/s (16 concurrent clients, 5 s)",
        total as f64 / 5.0
    );
    Ok(())
}

async fn hold(base: &str, n: usize, secs: u64, rate: u64) -> Result<(), Failure> {
    let http = reqwest::Client::new();
    let clients = streams(&http, base, n).await?;
    let driver = clients
        .first()
        .map(|(t, _)| t.clone())
        .ok_or("no clients")?;
    println!("CONNECTED {n}");
    let start = Instant::now();
    let until = start + Duration::from_secs(secs.min(600));
    let events = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut readers = Vec::new();
    for (_, mut ws) in clients {
        let events = Arc::clone(&events);
        readers.push(tokio::spawn(async move {
            while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until.into(), ws.next()).await {
                if matches!(msg, Message::Text(_)) {
                    events.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    // user1000 changes state `rate` times a second: every stream has events.
    if rate > 0 {
        let (http, base) = (http.clone(), base.to_string());
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            for k in 0u64.. {
                pace.tick().await;
                if Instant::now() >= until {
                    break;
                }
                let state = if k % 2 == 0 { "away" } else { "available" };
                let _ = http
                    .put(format!("{base}/api/v1/agents/user1000/state"))
                    .bearer_auth(&driver)
                    .json(&json!({ "state": state }))
                    .send()
                    .await;
            }
        });
    }
    // A running total each second: the benchmark may stop this early.
    while Instant::now() < until && readers.iter().any(|r| !r.is_finished()) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let total = events.load(std::sync::atomic::Ordering::Relaxed);
        let open = readers.iter().filter(|r| !r.is_finished()).count();
        println!(
            "{open} of {n} streams open after {:.0} s: {total} events received",
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// What one agent saw during the dialer run.
#[derive(Default)]
struct AgentRun {
    /// Idle (previous attempt erased, or the campaign's start) → dialling.
    idle_to_dialling: Vec<Duration>,
    /// Record shown → dialling (the confirmation's round trip).
    shown_to_dialling: Vec<Duration>,
    finished: usize,
}

/// One agent confirming every customer it is shown, until `limit` after `started`.
async fn agent_run(
    http: reqwest::Client,
    base: String,
    token: String,
    mut ws: Ws,
    started: Instant,
    limit: Duration,
) -> AgentRun {
    let mut run = AgentRun::default();
    let (mut idle, mut shown) = (Instant::now(), None);
    while started.elapsed() < limit {
        let left = limit.saturating_sub(started.elapsed());
        let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(left, ws.next()).await else {
            continue;
        };
        let Ok(e) = serde_json::from_str::<Value>(&t) else {
            continue;
        };
        match e["type"].as_str() {
            Some("attempt") => {
                shown = Some(Instant::now());
                let _ = http
                    .post(format!("{base}/api/v1/attempt/confirm"))
                    .bearer_auth(&token)
                    .send()
                    .await;
            }
            Some("attempt_progress") if e["phase"] == "dialling" => {
                run.idle_to_dialling.push(idle.elapsed());
                if let Some(s) = shown.take() {
                    run.shown_to_dialling.push(s.elapsed());
                }
            }
            Some("attempt_erased") => {
                run.finished += 1;
                idle = Instant::now();
            }
            _ => {}
        }
    }
    run
}

async fn dialer(base: &str, n: usize, secs: u64, contacts: usize) -> Result<(), Failure> {
    let http = reqwest::Client::new();
    let clients = streams(&http, base, n).await?;
    let boss = login_as(&http, base, "boss", "pwboss").await?;
    let settings = json!({ "name": "bench", "group": "bench", "trunk": "bench", "idle_ratio": 0.0,
        "max_attempts": n, "hours_from": "00:00", "hours_to": "24:00", "confirm_secs": 30, "ring_secs": 15 });
    let created: Value = http
        .post(format!("{base}/api/v1/campaigns"))
        .bearer_auth(&boss)
        .json(&settings)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = created["id"].as_u64().ok_or("no campaign id")?;
    let mut list = String::from("number,name\n");
    for i in 0..contacts {
        list.push_str(&format!("+8130{i:08},Customer {i}\n"));
    }
    http.post(format!("{base}/api/v1/campaigns/{id}/contacts"))
        .bearer_auth(&boss)
        .header("content-type", "text/csv")
        .body(list)
        .send()
        .await?
        .error_for_status()?;
    let limit = Duration::from_secs(secs.min(300));
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(token, ws)| {
            let run = agent_run(http.clone(), base.to_string(), token, ws, started, limit);
            tokio::spawn(run)
        })
        .collect();
    http.post(format!("{base}/api/v1/campaigns/{id}/start"))
        .bearer_auth(&boss)
        .send()
        .await?
        .error_for_status()?;
    let (mut idle, mut shown, mut finished) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        let run = t.await?;
        idle.extend(run.idle_to_dialling);
        shown.extend(run.shown_to_dialling);
        finished += run.finished;
    }
    http.post(format!("{base}/api/v1/campaigns/{id}/stop"))
        .bearer_auth(&boss)
        .send()
        .await?;
    let overview: Value = http
        .get(format!("{base}/api/v1/campaigns/{id}"))
        .bearer_auth(&boss)
        .send()
        .await?
        .json()
        .await?;
    idle.sort();
    shown.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "dialer: {n} agents, {} s: {finished} attempts finished ({:.1}/s)",
        limit.as_secs(),
        finished as f64 / limit.as_secs_f64()
    );
    println!(
        "idle agent -> customer dialled: p50 {:.1} ms, p99 {:.1} ms ({} samples)",
        ms(percentile(&idle, 0.5)),
        ms(percentile(&idle, 0.99)),
        idle.len()
    );
    println!(
        "record shown -> customer dialled (the confirmation): p50 {:.1} ms, p99 {:.1} ms",
        ms(percentile(&shown, 0.5)),
        ms(percentile(&shown, 0.99))
    );
    let p = &overview["progress"];
    println!(
        "campaign: outcomes {}, abandoned {}, abandon rate {}, connect rate {}",
        p["outcomes"], p["abandoned"], p["abandon_rate"], p["connect_rate"]
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).ok_or("missing argument");
    match arg(1)? {
        "measure" => measure(arg(2)?, arg(3)?, arg(4)?.parse()?, arg(5)?.parse()?).await,
        "hold" => {
            hold(
                arg(2)?,
                arg(3)?.parse()?,
                arg(4)?.parse()?,
                arg(5)?.parse()?,
            )
            .await
        }
        "callbacks" => callbacks(arg(2)?, arg(3)?.parse()?, arg(4)?.parse()?).await,
        "dialer" => {
            dialer(
                arg(2)?,
                arg(3)?.parse()?,
                arg(4)?.parse()?,
                arg(5)?.parse()?,
            )
            .await
        }
        _ => Err("usage: desk_clients measure BASE PID N CHANGES | hold BASE N SECS RATE | callbacks BASE N ITEMS | dialer BASE N SECS CONTACTS".into()),
    }
}

//! The ACD with real phones: agents are SIPp UAS instances that register with
//! digest auth and answer (or decline); customers are SIPp UACs calling queue
//! 500 with their own numbers. Who took which call is read back from the
//! embedded PBX (the caller index and the presence stream).

mod common;

use common::*;
use sipdesk::presence::State;
use sipdesk::Pbx;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;
use tokio::task::JoinHandle;

struct Lab {
    pbx: Pbx,
    target: SocketAddr,
    dir: tempfile::TempDir,
}

fn pw(ext: &str) -> String {
    format!("pw{ext}")
}

impl Lab {
    async fn start(agents: &[&str], extra: &str) -> Lab {
        let dir = tempfile::tempdir().expect("tmp");
        let users: Vec<(String, String)> = agents.iter().map(|a| (a.to_string(), pw(a))).collect();
        let (pbx, target) = embedded_pbx(dir.path(), &users, extra).await;
        Lab { pbx, target, dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Registers `ext` from `port` (its presence becomes available now).
    async fn register(&self, ext: &str, port: u16) {
        register_phone(self.target, self.path(), port, ext, &pw(ext)).await;
        // Idle times are compared in milliseconds: keep registrations apart.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    /// A phone at `port` running `scenario` for `calls` calls.
    fn phone(&self, port: u16, scenario_name: &str, calls: usize) -> JoinHandle<Output> {
        let calls = calls.to_string();
        sipp_scenario(
            self.target,
            self.path(),
            port,
            scenario_name,
            &["-m", &calls],
        )
    }

    /// Customers (numbers) calling queue `queue`, `rate` new calls a second, each
    /// talking `talk_ms` after the answer.
    fn customers(
        &self,
        queue: &str,
        numbers: &[String],
        scenario_name: &str,
        talk_ms: u64,
        rate: usize,
    ) -> JoinHandle<Output> {
        let inf = injection_file(self.path(), &format!("callers{}.csv", free_port()), numbers);
        let inf = inf.display().to_string();
        let (talk, rate) = (talk_ms.to_string(), rate.to_string());
        let count = numbers.len().to_string();
        let args = [
            "-inf", &inf, "-s", queue, "-d", &talk, "-r", &rate, "-l", &count, "-m", &count,
        ];
        sipp_scenario(self.target, self.path(), free_port(), scenario_name, &args)
    }

    /// One customer call, to its end.
    async fn call(&self, number: &str) {
        let out = self
            .customers("500", &[number.to_string()], "uac_queue.xml", 1500, 1)
            .await
            .expect("join");
        assert!(
            out.status.success(),
            "call from {number}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn last_agent(&self, caller: &str) -> Option<String> {
        self.pbx.history().recent_agents(caller).first().cloned()
    }

    /// Waits (up to 5 s) until no call is live and every media port is back.
    async fn settle(&self) {
        settled(&self.pbx).await;
    }
}

const QUEUE: &str = "[[queues]]\nnumber = \"500\"\ngroups = [\"support\", \"sales\"]\nring_secs = 3\nmax_wait_secs = 30\nwrap_up_secs = 0\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_reach_their_last_agent_then_its_colleagues_and_decliners_are_skipped() {
    let agents = ["3001", "3002", "3003", "3004", "3005"];
    let groups = "[[groups]]\nname = \"support\"\nmembers = [{ extension = \"3001\", priority = 1 }, { extension = \"3002\", priority = 2 }]\n\
                  [[groups]]\nname = \"sales\"\nmembers = [{ extension = \"3003\", priority = 1 }, { extension = \"3004\", priority = 2 }, { extension = \"3005\", priority = 1 }]\n";
    let lab = Lab::start(&agents, &format!("{groups}{QUEUE}")).await;
    // Registration order is idle order: 3004 has been idle longest, then 3002…
    let ports: HashMap<&str, u16> = agents.iter().map(|a| (*a, free_port())).collect();
    for a in ["3004", "3002", "3001", "3005", "3003"] {
        lab.register(a, ports[a]).await;
    }
    let p3004 = lab.phone(ports["3004"], "uas_answer.xml", 2);
    let p3005 = lab.phone(ports["3005"], "uas_answer.xml", 1);
    let p3002 = lab.phone(ports["3002"], "uas_busy.xml", 1);
    let p3001 = lab.phone(ports["3001"], "uas_answer.xml", 1);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A new customer: the longest-idle agent of the queue.
    lab.call("5551000").await;
    assert_eq!(
        lab.last_agent("5551000").as_deref(),
        Some("3004"),
        "longest idle"
    );
    lab.settle().await;

    // The same customer again: back to 3004, although 3002 idles longer now.
    lab.call("5551000").await;
    assert_eq!(lab.last_agent("5551000").as_deref(), Some("3004"), "sticky");
    assert!(
        p3004.await.expect("join").status.success(),
        "3004 took two calls"
    );
    lab.settle().await;

    // 3004 goes busy: its colleague in sales by priority (3005), not the
    // longest-idle agent of the queue (3002).
    let now = sipdesk::UnixMillis::now();
    lab.pbx
        .presence()
        .choose("3004", State::Busy, now)
        .expect("busy");
    lab.call("5551000").await;
    assert_eq!(
        lab.last_agent("5551000").as_deref(),
        Some("3005"),
        "colleague"
    );
    assert!(p3005.await.expect("join").status.success());
    lab.settle().await;

    // A new customer: 3002 idles longest but declines (486); 3001 takes it.
    lab.call("5552000").await;
    assert_eq!(
        lab.last_agent("5552000").as_deref(),
        Some("3001"),
        "decliner skipped"
    );
    assert!(
        p3002.await.expect("join").status.success(),
        "3002 declined once"
    );
    assert!(p3001.await.expect("join").status.success());
    lab.settle().await;
    assert_eq!(lab.pbx.media_ports_in_use(), 0);
    let records = lab.pbx.responses("5551000").expect("records");
    let agents_seen: Vec<&str> = records.iter().map(|r| r.agent.as_str()).collect();
    assert_eq!(
        agents_seen,
        ["3004", "3004", "3005"],
        "one response record per answer"
    );
    lab.pbx.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_callers_and_twenty_agents_never_double_offer_an_agent() {
    let agents: Vec<String> = (3101..3121).map(|i| i.to_string()).collect();
    let names: Vec<&str> = agents.iter().map(String::as_str).collect();
    let members: Vec<String> = agents
        .iter()
        .map(|a| format!("{{ extension = \"{a}\" }}"))
        .collect();
    let extra = format!(
        "[[groups]]\nname = \"support\"\nmembers = [{}]\n[[groups]]\nname = \"sales\"\nmembers = []\n{QUEUE}",
        members.join(", ")
    );
    let lab = Lab::start(&names, &extra).await;
    let mut phones = Vec::new();
    for a in &agents {
        let port = free_port();
        lab.register(a, port).await;
        phones.push(lab.phone(port, "uas_answer.xml", 1000));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut changes = lab.pbx.presence().subscribe();
    // One caller in ten withholds the number: a new customer each time.
    let numbers: Vec<String> = (0..100)
        .map(|i| {
            if i % 10 == 0 {
                "anonymous".to_string()
            } else {
                format!("555{i:04}")
            }
        })
        .collect();
    // Each caller hangs up 3 s after the queue answers (at once). At 10
    // callers a second 30 would need an agent at a time: the 20 agents stay
    // busy and callers queue (about 1 s each). A waiting caller is answered
    // by the agent the caller 20 places ahead frees, 20 / 10 s = 2 s before it
    // would hang up (at 25 a second with 1.5 s calls that margin was 0.8 s,
    // and a CI machine running the other tests beside it missed it twice).
    let out = lab
        .customers("500", &numbers, "uac_queue.xml", 3000, 10)
        .await
        .expect("join");
    assert!(
        out.status.success(),
        "all 100 callers were answered: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.settle().await;
    // Every change of every agent: never two calls at one agent at once.
    let mut offered = 0;
    while let Ok(c) = changes.try_recv() {
        assert!(
            c.dialogs.len() <= 1,
            "agent {} was in {} calls at once",
            c.extension,
            c.dialogs.len()
        );
        offered += usize::from(c.state == State::Ringing);
    }
    let answered = numbers
        .iter()
        .filter(|n| lab.last_agent(n).is_some())
        .count();
    assert_eq!(answered, 90, "every known caller is remembered");
    assert!(lab.pbx.history().recent_agents("anonymous").is_empty());
    assert!(offered >= 100, "every call was offered ({offered})");
    assert_eq!(lab.pbx.routing().waiting(sipdesk::routing::QueueId(0)), 0);
    for p in phones {
        p.abort();
    }
    lab.pbx.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_wait_then_overflow_to_another_queue_or_hear_the_announcement() {
    let extra = "[[groups]]\nname = \"support\"\nmembers = [{ extension = \"3201\" }]\n\
                 [[groups]]\nname = \"sales\"\nmembers = [{ extension = \"3202\" }]\n\
                 [[queues]]\nnumber = \"500\"\ngroups = [\"support\"]\nmax_wait_secs = 2\noverflow_to = \"501\"\n\
                 [[queues]]\nnumber = \"501\"\ngroups = [\"sales\"]\nmax_wait_secs = 2\nwrap_up_secs = 5\n";
    let lab = Lab::start(&["3201", "3202"], extra).await;
    // 3201 (support) is away; 3202 (sales) answers.
    let (p1, p2) = (free_port(), free_port());
    lab.register("3201", p1).await;
    lab.register("3202", p2).await;
    let now = sipdesk::UnixMillis::now();
    lab.pbx
        .presence()
        .choose("3201", State::Away, now)
        .expect("away");
    let phone = lab.phone(p2, "uas_answer.xml", 1);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Queue 500 has nobody: after 2 s the caller moves to 501, where 3202 answers.
    let started = std::time::Instant::now();
    let out = lab
        .customers("500", &["5553000".to_string()], "uac_queue.xml", 4000, 1)
        .await
        .expect("join");
    assert!(out.status.success(), "overflowed to 501");
    assert!(started.elapsed() >= Duration::from_secs(4));
    assert_eq!(lab.last_agent("5553000").as_deref(), Some("3202"));
    lab.settle().await;
    // After a queue call the agent wraps up (5 s here), then is available again.
    let state = || lab.pbx.presence().state("3202").map(|s| s.0);
    assert_eq!(state(), Some(State::WrapUp));
    assert!(phone.await.expect("join").status.success());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(state(), Some(State::Available));

    // Now 3202 is away too: 500 → 501 → announcement, then the PBX hangs up.
    lab.pbx
        .presence()
        .choose("3202", State::Away, sipdesk::UnixMillis::now())
        .expect("away");
    let started = std::time::Instant::now();
    let out = lab
        .customers(
            "500",
            &["5554000".to_string()],
            "uac_queue_overflow.xml",
            0,
            1,
        )
        .await
        .expect("join");
    assert!(
        out.status.success(),
        "hung up after the announcement: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "waited in both queues"
    );
    assert_eq!(lab.last_agent("5554000"), None);
    lab.settle().await;
    assert_eq!(lab.pbx.media_ports_in_use(), 0);
    lab.pbx.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_who_does_not_answer_in_time_is_cancelled_and_skipped() {
    let extra = "[[groups]]\nname = \"support\"\nmembers = [{ extension = \"3301\" }, { extension = \"3302\" }]\n\
                 [[groups]]\nname = \"sales\"\nmembers = []\n\
                 [[queues]]\nnumber = \"500\"\ngroups = [\"support\"]\nring_secs = 2\nwrap_up_secs = 0\n";
    let lab = Lab::start(&["3301", "3302"], extra).await;
    let (p1, p2) = (free_port(), free_port());
    // 3301 has been idle longest, but only rings.
    lab.register("3301", p1).await;
    lab.register("3302", p2).await;
    let ringer = lab.phone(p1, "uas_ring.xml", 1);
    let answerer = lab.phone(p2, "uas_answer.xml", 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let out = lab
        .customers("500", &["5556000".to_string()], "uac_queue.xml", 3500, 1)
        .await
        .expect("join");
    assert!(out.status.success(), "answered by the second agent");
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(lab.last_agent("5556000").as_deref(), Some("3302"));
    assert!(
        ringer.await.expect("join").status.success(),
        "3301 rang for 2 s and was cancelled"
    );
    assert!(answerer.await.expect("join").status.success());
    lab.settle().await;
    assert_eq!(
        lab.pbx.presence().state("3301").map(|s| s.0),
        Some(State::Available),
        "a missed call does not take the agent out"
    );
    lab.pbx.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_hangs_up_while_an_agent_rings_frees_the_agent() {
    let extra = "[[groups]]\nname = \"support\"\nmembers = [{ extension = \"3401\" }]\n\
                 [[groups]]\nname = \"sales\"\nmembers = []\n\
                 [[queues]]\nnumber = \"500\"\ngroups = [\"support\"]\nring_secs = 10\n";
    let lab = Lab::start(&["3401"], extra).await;
    let port = free_port();
    lab.register("3401", port).await;
    let ringer = lab.phone(port, "uas_ring.xml", 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The caller gives up after 1 s of music while 3401 rings.
    let out = lab
        .customers("500", &["5557000".to_string()], "uac_queue.xml", 1000, 1)
        .await
        .expect("join");
    assert!(out.status.success());
    assert!(
        ringer.await.expect("join").status.success(),
        "the agent's ringing was cancelled"
    );
    lab.settle().await;
    assert_eq!(
        lab.pbx.presence().state("3401").map(|s| s.0),
        Some(State::Available),
        "no wrap-up for a call never answered"
    );
    assert_eq!(lab.last_agent("5557000"), None);
    assert_eq!(lab.pbx.routing().waiting(sipdesk::routing::QueueId(0)), 0);
    assert_eq!(lab.pbx.media_ports_in_use(), 0);
    lab.pbx.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_callers_are_served_in_arrival_order() {
    let extra = "[[groups]]\nname = \"support\"\nmembers = [{ extension = \"3501\" }]\n\
                 [[groups]]\nname = \"sales\"\nmembers = []\n\
                 [[queues]]\nnumber = \"500\"\ngroups = [\"support\"]\nwrap_up_secs = 0\n";
    let lab = Lab::start(&["3501"], extra).await;
    let port = free_port();
    lab.register("3501", port).await;
    let phone = lab.phone(port, "uas_answer.xml", 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One agent, three callers 300 ms apart: each waits for the one before.
    let callers = ["5558001", "5558002", "5558003"];
    let mut runs = Vec::new();
    for c in callers {
        runs.push(lab.customers("500", &[c.to_string()], "uac_queue.xml", 1000, 1));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for r in runs {
        assert!(r.await.expect("join").status.success());
    }
    assert!(phone.await.expect("join").status.success());
    let answered: Vec<u64> = callers
        .iter()
        .map(|c| lab.pbx.responses(c).expect("records")[0].time_ms)
        .collect();
    assert!(
        answered.windows(2).all(|w| w[0] < w[1]),
        "answered in arrival order: {answered:?}"
    );
    lab.pbx.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_index_survives_a_crash() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let users: Vec<(String, String)> = ["3601", "3602"]
        .iter()
        .map(|a| (a.to_string(), pw(a)))
        .collect();
    let extra = "[[groups]]\nname = \"support\"\nmembers = [{ extension = \"3601\" }, { extension = \"3602\" }]\n\
                 [[groups]]\nname = \"sales\"\nmembers = []\n\
                 [[queues]]\nnumber = \"500\"\ngroups = [\"support\"]\nwrap_up_secs = 0\n";
    let mut server = Server::start(
        dir.path(),
        port,
        &config_with(port, "[\"MD5\"]", &users, extra),
    );
    let target = server.addr();
    let (p1, p2) = (free_port(), free_port());
    register_phone(target, dir.path(), p2, "3602", &pw("3602")).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    register_phone(target, dir.path(), p1, "3601", &pw("3601")).await;
    let a3601 = sipp_scenario(target, dir.path(), p1, "uas_answer.xml", &["-m", "1"]);
    let a3602 = sipp_scenario(target, dir.path(), p2, "uas_answer.xml", &["-m", "2"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let call = |number: &str| {
        let inf = injection_file(
            dir.path(),
            &format!("c{}.csv", free_port()),
            &[number.to_string()],
        );
        let inf = inf.display().to_string();
        sipp_scenario(
            target,
            dir.path(),
            free_port(),
            "uac_queue.xml",
            &["-inf", &inf, "-s", "500", "-d", "1000", "-m", "1"],
        )
    };
    // 3602 idles longest: it takes the customer's first call.
    assert!(call("5559000").await.expect("join").status.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A crash. On restart both agents are available since the same moment, and
    // 3601 would come first; the customer still gets 3602 back.
    server.restart();
    assert!(call("5559000").await.expect("join").status.success());
    assert!(call("5559999").await.expect("join").status.success());
    assert!(a3602.await.expect("join").status.success());
    assert!(a3601.await.expect("join").status.success());
    server.stop();
    let agents: Vec<(String, String)> = server
        .responses()
        .iter()
        .map(|r| {
            (
                r["caller"].as_str().unwrap_or_default().to_string(),
                r["agent"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let pair = |c: &str, a: &str| (c.to_string(), a.to_string());
    assert_eq!(
        agents,
        vec![
            pair("5559000", "3602"),
            pair("5559000", "3602"),
            pair("5559999", "3601")
        ]
    );
}

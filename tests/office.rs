//! Office call features with real phones: SIPp UAS phones that register with
//! digest auth, a SIPp caller, an embedded PBX. Forwarding is set from the
//! config, from the phone's feature code and over the desk API (and survives
//! a restart); do not disturb; ring groups in both orders; a forwarding loop
//! stopped.

mod common;

use common::*;
use sipdesk::presence::State;
use sipdesk::Pbx;
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

/// Calls need no digest (the SIPp caller does not do it); feature codes do.
const CALLS: &str = "[calls]\nauthenticate = false\nring_timeout_secs = 20\n";

impl Lab {
    async fn start(users: &[&str], extra: &str) -> Lab {
        let dir = tempfile::tempdir().expect("tmp");
        let users: Vec<(String, String)> = users.iter().map(|a| (a.to_string(), pw(a))).collect();
        let (pbx, target) = embedded_pbx(dir.path(), &users, &format!("{CALLS}{extra}")).await;
        Lab { pbx, target, dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Registers every `(extension, port)`.
    async fn register(&self, phones: &[(&str, u16)]) {
        for (ext, port) in phones {
            register_phone(self.target, self.path(), *port, ext, &pw(ext)).await;
        }
    }

    /// A phone at `port` running `scenario` for one call.
    fn phone(&self, port: u16, scenario_name: &str) -> JoinHandle<Output> {
        sipp_scenario(self.target, self.path(), port, scenario_name, &["-m", "1"])
    }

    /// One call to `to` with `scenario_name` (uac_call.xml: answered, 1 s of
    /// talk, BYE).
    async fn call(&self, to: &str, scenario_name: &str) -> Output {
        let args = ["-s", to, "-m", "1", "-d", "1000"];
        sipp_scenario(self.target, self.path(), free_port(), scenario_name, &args)
            .await
            .expect("join")
    }

    /// A call to `to` that gets final status `code`.
    async fn expect(&self, to: &str, code: u16) {
        let path = self.path().join(format!("uac_expect_{code}.xml"));
        let text = std::fs::read_to_string(scenario("uac_expect_final.xml")).expect("scenario");
        std::fs::write(&path, text.replace("[final]", &code.to_string())).expect("write");
        let args = vec![
            "-sf".to_string(),
            path.display().to_string(),
            "-s".into(),
            to.into(),
            "-m".into(),
            "1".into(),
        ];
        let out = sipp_embedded(self.target, self.path(), free_port(), args)
            .await
            .expect("join");
        ok(&out, &format!("a call to {to} gets {code}"));
    }

    /// A feature code dialled from `ext`'s phone (with its credentials).
    async fn code(&self, ext: &str, code: &str) -> Output {
        let inf = injection_file(
            self.path(),
            &format!("code{}.csv", free_port()),
            &[format!("{ext};{}", pw(ext))],
        );
        let inf = inf.display().to_string();
        let args = ["-inf", &inf, "-s", code, "-m", "1"];
        sipp_scenario(
            self.target,
            self.path(),
            free_port(),
            "uac_feature_code.xml",
            &args,
        )
        .await
        .expect("join")
    }

    fn desk(&self) -> String {
        format!("http://{}", self.pbx.http_addr())
    }

    /// Waits (up to 5 s) until no call is live and every media port is back.
    async fn settle(&self) {
        assert!(settled(&self.pbx).await, "calls or media ports left over");
    }
}

async fn joined(phone: JoinHandle<Output>, what: &str) {
    ok(&phone.await.expect("join"), what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_and_unanswered_calls_follow_the_forwarding_set_on_the_desk() {
    let lab = Lab::start(&["4001", "4002", "4003"], "").await;
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    lab.register(&[("4001", p1), ("4002", p2), ("4003", p3)])
        .await;
    let http = reqwest::Client::new();
    let token = session_token(&http, &lab.desk(), "4001", &pw("4001")).await;
    let url = format!("{}/api/v1/agents/4001/forwarding", lab.desk());
    let set = |body: serde_json::Value| http.put(&url).bearer_auth(&token).json(&body).send();
    // Bad input: a number that leads nowhere, the user's own, another agent's.
    let r = set(serde_json::json!({ "busy": "9999" }))
        .await
        .expect("put");
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("9999"),
        "{body}"
    );
    let r = set(serde_json::json!({ "always": "4001" }))
        .await
        .expect("put");
    assert_eq!(r.status(), 400);
    let r = http
        .put(format!("{}/api/v1/agents/4002/forwarding", lab.desk()))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "always": "4003" }))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 403, "an agent sets only their own");
    let r = set(serde_json::json!({ "busy": "4002", "no_answer": "4003", "no_answer_secs": 5 }))
        .await
        .expect("put");
    assert_eq!(r.status(), 200);

    // Busy: 4001 answers 486, 4002 takes the call.
    let busy = lab.phone(p1, "uas_busy.xml");
    let other = lab.phone(p2, "uas_answer.xml");
    tokio::time::sleep(Duration::from_millis(300)).await;
    ok(
        &lab.call("4001", "uac_call.xml").await,
        "call forwarded on busy",
    );
    joined(busy, "4001 busy").await;
    joined(other, "4002 answers").await;
    lab.settle().await;

    // No answer: 4001 rings 5 s and is cancelled, 4003 takes the call.
    let rings = lab.phone(p1, "uas_ring.xml");
    let third = lab.phone(p3, "uas_answer.xml");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    ok(
        &lab.call("4001", "uac_call.xml").await,
        "call forwarded on no answer",
    );
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "after the user's 5 s"
    );
    joined(rings, "4001 rings, cancelled").await;
    joined(third, "4003 answers").await;
    lab.settle().await;
    let log = lab.pbx.shutdown().await;
    assert!(log.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_not_disturb_answers_busy_and_an_always_forward_set_from_the_phone_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let users: Vec<(String, String)> = ["4101", "4102"]
        .iter()
        .map(|a| (a.to_string(), pw(a)))
        .collect();
    let (pbx, target) = embedded_pbx(dir.path(), &users, CALLS).await;
    let lab = Lab { pbx, target, dir };
    let (p1, p2) = (free_port(), free_port());
    lab.register(&[("4101", p1), ("4102", p2)]).await;

    // Do not disturb from the desk: callers hear busy, no phone rings.
    let http = reqwest::Client::new();
    let token = session_token(&http, &lab.desk(), "4101", &pw("4101")).await;
    let state = |s: &'static str| {
        http.put(format!("{}/api/v1/agents/4101/state", lab.desk()))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "state": s }))
            .send()
    };
    assert_eq!(state("busy").await.expect("put").status(), 204);
    assert_eq!(
        lab.pbx.presence().state("4101").map(|s| s.0),
        Some(State::Busy)
    );
    lab.expect("4101", 486).await;
    assert_eq!(state("available").await.expect("put").status(), 204);

    // *72 + number: every call to 4101 goes to 4102, confirmed by the tone.
    ok(&lab.code("4101", "*724102").await, "*724102");
    let answers = lab.phone(p2, "uas_answer.xml");
    tokio::time::sleep(Duration::from_millis(300)).await;
    ok(
        &lab.call("4101", "uac_call.xml").await,
        "call forwarded always",
    );
    joined(answers, "4102 answers").await;
    lab.settle().await;

    // A forward to a number that leads nowhere is refused, nothing changes.
    let out = lab.code("4101", "*729999").await;
    assert!(!out.status.success(), "*729999 is not confirmed");

    // What the phone set is on disk: it holds after a restart.
    let Lab { pbx, dir, .. } = lab;
    pbx.shutdown().await.expect("shutdown");
    let config = sipdesk::config::Config::parse(
        &config_with(target.port(), "[\"MD5\"]", &users, CALLS),
        "test",
    )
    .expect("config");
    let pbx = Pbx::builder(config)
        .data_dir(dir.path().join("data"))
        .start()
        .await
        .expect("restart");
    let base = format!("http://{}", pbx.http_addr());
    let token = session_token(&http, &base, "4101", &pw("4101")).await;
    let got: serde_json::Value = http
        .get(format!("{base}/api/v1/agents/4101/forwarding"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(got["always"], "4102", "{got}");
    pbx.shutdown().await.expect("shutdown");
}

const FRONT: &str = "[[groups]]\nname = \"front\"\nnumber = \"600\"\nring_secs = 4\n\
    members = [{ extension = \"4201\", priority = 1 }, { extension = \"4202\", priority = 2 }]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_group_rings_all_at_once_or_in_order_and_a_loop_is_stopped() {
    let order = FRONT.replace("ring_secs = 4", "ring_secs = 4\nring = \"order\"");
    let groups = format!(
        "{FRONT}{}",
        order
            .replace("\"front\"", "\"front2\"")
            .replace("\"600\"", "\"601\"")
    );
    let lab = Lab::start(&["4201", "4202", "4203"], &groups).await;
    let (p1, p2) = (free_port(), free_port());
    lab.register(&[("4201", p1), ("4202", p2)]).await;

    // All at once: 4202 answers at once, 4201 (ringing) is cancelled.
    let rings = lab.phone(p1, "uas_ring.xml");
    let answers = lab.phone(p2, "uas_answer.xml");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    ok(&lab.call("600", "uac_call.xml").await, "ring group, all");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "no waiting for the first member"
    );
    joined(rings, "4201 rang and was cancelled").await;
    joined(answers, "4202 answered").await;
    lab.settle().await;

    // In order: 4201 rings its 4 s, then 4202 answers.
    let rings = lab.phone(p1, "uas_ring.xml");
    let answers = lab.phone(p2, "uas_answer.xml");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    ok(
        &lab.call("601", "uac_call.xml").await,
        "ring group, in order",
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "the first member rang first"
    );
    joined(rings, "4201 rang first").await;
    joined(answers, "4202 answered next").await;
    lab.settle().await;

    // A loop: 4203 always → 4201, 4201 always → 4203. A call to 4203 rings
    // 4201 (whose forward would come back), once.
    let http = reqwest::Client::new();
    for (ext, to) in [("4203", "4201"), ("4201", "4203")] {
        let token = session_token(&http, &lab.desk(), ext, &pw(ext)).await;
        let r = http
            .put(format!("{}/api/v1/agents/{ext}/forwarding", lab.desk()))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "always": to }))
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), 200);
    }
    let answers = lab.phone(p1, "uas_answer.xml");
    tokio::time::sleep(Duration::from_millis(300)).await;
    ok(
        &lab.call("4203", "uac_call.xml").await,
        "the loop is stopped at 4201",
    );
    joined(answers, "4201 answered").await;
    lab.settle().await;
    lab.pbx.shutdown().await.expect("shutdown");
}

//! Campaigns over real HTTP, against the PBX binary: supervisors create
//! them, load customer lists (every bad row named by line and field, a
//! re-run adding nothing twice, do-not-call numbers left out), start and
//! stop them and see why they wait; agents get 403 on every campaign
//! endpoint; and everything acknowledged survives `kill -9`.

mod common;

use common::{config_with, free_port, users, Server};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// user1000 and user1001 in group sales, boss the supervisor, a trunk with
/// Japanese numbering (IP authentication: nothing registers), and queue 500.
const OFFICE: &str = "[[groups]]\nname = \"sales\"\nmembers = [{ extension = \"user1000\" }, { extension = \"user1001\" }]\n\
[[users]]\nextension = \"boss\"\npassword = \"pwboss\"\nrole = \"supervisor\"\n\
[[queues]]\nnumber = \"500\"\ngroups = [\"sales\"]\n\
[[trunks]]\nname = \"carrier\"\nhost = \"127.0.0.5\"\nport = 5099\nregister = false\n\
country_code = \"81\"\nnational_prefix = \"0\"\ninternational_prefix = \"010\"\n";

struct Desk {
    base: String,
    http: reqwest::Client,
}

impl Desk {
    async fn token(&self, ext: &str, password: &str) -> String {
        common::session_token(&self.http, &self.base, ext, password).await
    }

    async fn send(&self, r: reqwest::RequestBuilder, token: &str) -> (StatusCode, Value) {
        let resp = r.bearer_auth(token).send().await.expect("send");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        let r = self.http.get(format!("{}{path}", self.base));
        self.send(r, token).await
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self.http.post(format!("{}{path}", self.base)).json(&body);
        self.send(r, token).await
    }

    async fn upload(&self, token: &str, id: u64, csv: String) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}/api/v1/campaigns/{id}/contacts", self.base))
            .header("content-type", "text/csv")
            .body(csv);
        self.send(r, token).await
    }
}

fn start(dir: &std::path::Path) -> (Server, Desk) {
    let (sip, http) = (free_port(), free_port());
    let conf = config_with(sip, "[\"MD5\"]", &users(2), OFFICE).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{http}\""),
    );
    let server = Server::start(dir, sip, &conf);
    let desk = Desk {
        base: format!("http://127.0.0.1:{http}"),
        http: reqwest::Client::new(),
    };
    (server, desk)
}

fn winter() -> Value {
    json!({ "name": "winter offers", "group": "sales", "trunk": "carrier",
            "time_zone": "Asia/Tokyo", "hours_from": "00:00", "hours_to": "24:00" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_loads_a_list_with_bad_rows_named_and_everything_acknowledged_survives_kill_9()
{
    let dir = tempfile::tempdir().expect("tmp");
    let (mut server, d) = start(dir.path());
    let boss = d.token("boss", "pwboss").await;
    let (status, created) = d.post(&boss, "/api/v1/campaigns", winter()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["state"], "ready");
    let id = created["id"].as_u64().expect("id");

    // Refused settings name the problem.
    let mut bad = winter();
    bad["group"] = json!("nobody");
    let (status, body) = d.post(&boss, "/api/v1/campaigns", bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("nobody")),
        "{body}"
    );
    let mut bad = winter();
    bad["idle_ratio"] = json!(2);
    let (status, body) = d.post(&boss, "/api/v1/campaigns", bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("idle_ratio")),
        "{body}"
    );

    // The do-not-call list, then a list with two bad rows and one listed number.
    let (status, body) = d
        .post(
            &boss,
            "/api/v1/do-not-call",
            json!({"numbers": ["03-1111-0003"]}),
        )
        .await;
    assert_eq!((status, body["added"].as_u64()), (StatusCode::OK, Some(1)));
    let list = "number,name,time_zone,plan\n\
                0311110001,Keiko Sato,Asia/Tokyo,gold\n\
                +12125550100,Ann Lee,America/New_York,\n\
                0311110003,Listed,,\n\
                not-a-number,Nobody,,\n\
                0311110005,Ken,Mars/Olympus,\n"
        .to_string();
    let (status, loaded) = d.upload(&boss, id, list.clone()).await;
    assert_eq!(status, StatusCode::OK, "{loaded}");
    assert_eq!(loaded["imported"], 2);
    assert_eq!(loaded["do_not_call"], 1);
    let errors: Vec<(u64, &str)> = loaded["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().unwrap_or(0),
                e["field"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(errors, [(5, "number"), (6, "time_zone")]);
    // Re-running the same file adds nothing twice.
    let (_, again) = d.upload(&boss, id, list).await;
    assert_eq!(
        (again["imported"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(2))
    );
    // A list without the number column is refused as a whole.
    let (status, body) = d.upload(&boss, id, "phone\n0311110009\n".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("number")),
        "{body}"
    );
    // A large list: 20,000 customers in one upload.
    let big: String = std::iter::once("number,name\n".to_string())
        .chain((0..20_000).map(|i| format!("03{:08},Customer {i}\n", 20_000_000 + i)))
        .collect();
    let (status, body) = d.upload(&boss, id, big).await;
    assert_eq!(
        (status, body["imported"].as_u64()),
        (StatusCode::OK, Some(20_000)),
        "{body}"
    );

    // Started, it waits: the group's agents have no phones registered.
    let (status, running) = d
        .post(&boss, &format!("/api/v1/campaigns/{id}/start"), json!({}))
        .await;
    assert_eq!(
        (status, running["state"].as_str()),
        (StatusCode::OK, Some("running"))
    );
    let (_, overview) = d.get(&boss, &format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(overview["waiting"]["reason"], "no_agents", "{overview}");
    assert_eq!(overview["progress"]["contacts"], 20_002);
    assert_eq!(overview["progress"]["remaining"], 20_002);
    let (status, body) = d
        .post(&boss, &format!("/api/v1/campaigns/{id}/start"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = d
        .post(&boss, &format!("/api/v1/campaigns/{id}/launch"), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // kill -9: the campaign, its state, its 20,002 contacts and the
    // do-not-call list are all there after the restart.
    server.kill9();
    server.restart();
    let boss = d.token("boss", "pwboss").await;
    let (_, all) = d.get(&boss, "/api/v1/campaigns").await;
    assert_eq!(all[0]["state"], "running", "{all}");
    assert_eq!(all[0]["contacts"], 20_002);
    let (_, contacts) = d
        .get(&boss, &format!("/api/v1/campaigns/{id}/contacts"))
        .await;
    let first = &contacts[0];
    assert_eq!(
        (first["line"].as_u64(), first["number"].as_str()),
        (Some(2), Some("+81311110001"))
    );
    assert_eq!(first["status"]["state"], "waiting");
    let (_, page) = d
        .get(
            &boss,
            &format!("/api/v1/campaigns/{id}/contacts?offset=1&limit=2"),
        )
        .await;
    let lines: Vec<u64> = page
        .as_array()
        .expect("page")
        .iter()
        .filter_map(|c| c["line"].as_u64())
        .collect();
    assert_eq!(
        lines,
        [3, 2],
        "Ann (line 3), then the first of the big list (its line 2)"
    );
    let (_, again) = d
        .upload(&boss, id, "number\n0311110003\n0311110001\n".into())
        .await;
    assert_eq!(
        (again["do_not_call"].as_u64(), again["duplicates"].as_u64()),
        (Some(1), Some(1))
    );
    let (status, stopped) = d
        .post(&boss, &format!("/api/v1/campaigns/{id}/stop"), json!({}))
        .await;
    assert_eq!(
        (status, stopped["state"].as_str()),
        (StatusCode::OK, Some("stopped"))
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_is_refused_every_campaign_endpoint() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut server, d) = start(dir.path());
    let boss = d.token("boss", "pwboss").await;
    let (_, created) = d.post(&boss, "/api/v1/campaigns", winter()).await;
    let id = created["id"].as_u64().expect("id");
    let (_, loaded) = d
        .upload(&boss, id, "number,name\n0311110001,Keiko\n".into())
        .await;
    assert_eq!(loaded["imported"], 1);
    let agent = d.token("user1000", "pw1000").await;
    let b = &d.base;
    let http = &d.http;
    let requests = [
        http.get(format!("{b}/api/v1/campaigns")),
        http.post(format!("{b}/api/v1/campaigns")).json(&winter()),
        http.get(format!("{b}/api/v1/campaigns/{id}")),
        http.get(format!("{b}/api/v1/campaigns/{id}/contacts")),
        http.post(format!("{b}/api/v1/campaigns/{id}/contacts"))
            .body("number\n0311110002\n"),
        http.post(format!("{b}/api/v1/campaigns/{id}/start")),
        http.post(format!("{b}/api/v1/campaigns/{id}/pause")),
        http.post(format!("{b}/api/v1/campaigns/{id}/resume")),
        http.post(format!("{b}/api/v1/campaigns/{id}/stop")),
        http.post(format!("{b}/api/v1/do-not-call"))
            .json(&json!({"numbers": ["0311110001"]})),
        http.get(format!("{b}/api/v1/campaigns/{id}/audit")),
        http.get(format!("{b}/api/v1/campaigns/defaults")),
    ];
    for r in requests {
        let (status, body) = d.send(r, &agent).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"], "forbidden");
        assert!(
            !body.to_string().contains("Keiko"),
            "no record leaks: {body}"
        );
    }
    // Nothing an agent asked for happened.
    let (_, overview) = d.get(&boss, &format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(overview["campaign"]["state"], "ready");
    assert_eq!(overview["progress"]["contacts"], 1);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_a_supervisor_creates_loads_and_starts_a_campaign_and_the_wallboard_follows() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut server, d) = start(dir.path());
    let envs = [
        ("S_EXT", "boss"),
        ("S_PW", "pwboss"),
        ("A_EXT", "user1000"),
        ("A_PW", "pw1000"),
    ];
    let (child, artifacts) = common::browser_script("campaigns.mjs", &d.base, &envs);
    common::browser_passed(child, &artifacts).await;
    // What the page did is what the API holds.
    let boss = d.token("boss", "pwboss").await;
    let (_, all) = d.get(&boss, "/api/v1/campaigns").await;
    assert_eq!(
        (all[0]["name"].as_str(), all[0]["state"].as_str()),
        (Some("Winter offers"), Some("running"))
    );
    assert_eq!(all[0]["contacts"], 3000);
    server.stop();
}

/// Waits until `f` holds (checked every 100 ms), for up to `secs`.
async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `token`'s event stream at `http` (from `since`, when given).
async fn events(http: std::net::SocketAddr, token: &str, since: Option<u64>) -> Stream {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let query = since.map_or(String::new(), |s| format!("?since={s}"));
    let mut req = format!("ws://{http}/api/v1/events{query}")
        .into_client_request()
        .expect("request");
    let auth = format!("Bearer {token}").parse().expect("header");
    req.headers_mut().insert("Authorization", auth);
    tokio_tungstenite::connect_async(req).await.expect("ws").0
}

/// The next JSON event of `ws`, if one comes within `wait`.
async fn next_json(ws: &mut Stream, wait: std::time::Duration) -> Option<Value> {
    use futures_util::StreamExt;
    loop {
        let msg = tokio::time::timeout(wait, ws.next()).await.ok()??.ok()?;
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            return serde_json::from_str(&t).ok();
        }
    }
}

/// Agents 4001 and 4002 (group outbound) and supervisor boss, with a trunk
/// registered at Kamailio, whose calls go out to `world` (SIPp customers).
const DIALLING: &str = "[[groups]]\nname = \"outbound\"\nmembers = [{ extension = \"4001\" }, { extension = \"4002\" }]\n\
[[users]]\nextension = \"boss\"\npassword = \"pwboss\"\nrole = \"supervisor\"\n";

/// The carrier (Kamailio on 127.0.0.5) whose office calls go to the
/// customers' SIPp at 127.0.0.6:`world_port`.
struct Dialling {
    carrier: common::carrier::Carrier,
    world_port: u16,
    tmp: tempfile::TempDir,
}

impl Dialling {
    fn new() -> Dialling {
        let world_port = free_port();
        let outside = format!("127.0.0.6:{world_port}");
        Dialling {
            carrier: common::carrier::carrier_at("127.0.0.5", &outside, false),
            world_port,
            tmp: tempfile::tempdir().expect("tmp"),
        }
    }

    fn dir(&self) -> &std::path::Path {
        self.tmp.path()
    }

    /// The office's tables: [`DIALLING`], its trunk to the carrier (with
    /// `trunk_more` keys), then `more`.
    fn tables(&self, trunk_more: &str, more: &str) -> String {
        format!(
            "{DIALLING}[[trunks]]\nname = \"carrier\"\nhost = \"127.0.0.5\"\nport = {}\nusername = \"office\"\npassword = \"s3cret\"\n\
             expires = 60\ncountry_code = \"81\"\nnational_prefix = \"0\"\ninternational_prefix = \"010\"\n{trunk_more}{more}",
            self.carrier.addr.port()
        )
    }

    /// Agents 4001 and 4002, password pw<ext>.
    fn users() -> Vec<(String, String)> {
        ["4001", "4002"]
            .iter()
            .map(|u| (u.to_string(), format!("pw{u}")))
            .collect()
    }

    /// An embedded PBX with these tables, once its trunk is registered; its
    /// desk.
    async fn office(&self, tables: &str) -> (sipdesk::Pbx, std::net::SocketAddr, Desk) {
        let (pbx, target) = common::embedded_pbx(self.dir(), &Self::users(), tables).await;
        eventually(15, "the trunk registers", || {
            pbx.trunk_registered("carrier")
        })
        .await;
        let desk = Desk {
            base: format!("http://{}", pbx.http_addr()),
            http: reqwest::Client::new(),
        };
        (pbx, target, desk)
    }

    /// The customers (`uas_customers.xml`) with more SIPp arguments.
    fn world(&self, args: &[&str]) -> tokio::task::JoinHandle<std::process::Output> {
        let mut all = vec!["-sf".to_string(), common::scenario("uas_customers.xml")];
        all.extend(args.iter().map(|a| a.to_string()));
        let (carrier, port) = (self.carrier.addr, self.world_port);
        common::sipp_embedded_from("127.0.0.6", carrier, self.dir(), port, all)
    }
}

impl Desk {
    /// Uploads campaign `id`'s farewell as `token`.
    async fn farewell(&self, token: &str, id: u64, wav: Vec<u8>) -> (StatusCode, Value) {
        let r = self
            .http
            .put(format!("{}/api/v1/campaigns/{id}/farewell", self.base))
            .header("content-type", "audio/wav")
            .body(wav);
        self.send(r, token).await
    }

    /// Agent `ext` (as `token`) chooses `state`.
    async fn set_state(&self, token: &str, ext: &str, state: &str) {
        let r = self
            .http
            .put(format!("{}/api/v1/agents/{ext}/state", self.base))
            .json(&json!({ "state": state }));
        assert_eq!(self.send(r, token).await.0, StatusCode::NO_CONTENT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_start_one_per_idle_agent_above_the_threshold_and_each_customer_is_dialled_only_after_its_agent_confirmed(
) {
    use std::time::Duration;
    let lab = Dialling::new();
    let (dir, carrier) = (lab.dir(), &lab.carrier);
    let (pbx, target, d) = lab.office(&lab.tables("", "")).await;
    let (p1, p2) = (common::free_port(), common::free_port());
    common::register_phone(target, dir, p1, "4001", "pw4001").await;
    common::register_phone(target, dir, p2, "4002", "pw4002").await;
    let (boss, a1, a2) = (
        d.token("boss", "pwboss").await,
        d.token("4001", "pw4001").await,
        d.token("4002", "pw4002").await,
    );
    let retry = json!({ "after_secs": 3600, "max_tries": 2 });
    let settings = json!({ "name": "spring", "group": "outbound", "trunk": "carrier",
        "caller_id": "+81355550000", "idle_ratio": 0.6, "max_attempts": 2,
        "hours_from": "00:00", "hours_to": "24:00", "time_zone": "Asia/Tokyo",
        "confirm_secs": 10, "ring_secs": 15,
        "retry": { "busy": retry, "no_answer": retry, "failed": retry } });
    let (status, created) = d.post(&boss, "/api/v1/campaigns", settings).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_u64().expect("id");
    // Ending in 1 answers, in 2 is busy, in 3 never answers.
    let list = "number,name,plan\n+81300000001,Aiko,gold\n+81300000002,Ben,silver\n+81300000003,Chie,bronze\n";
    let (_, loaded) = d.upload(&boss, id, list.into()).await;
    assert_eq!(loaded["imported"], 3, "{loaded}");

    // One of two agents away: 0.5 is below the threshold, nothing starts.
    d.set_state(&a2, "4002", "away").await;
    let (status, _) = d
        .post(&boss, &format!("/api/v1/campaigns/{id}/start"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, overview) = d.get(&boss, &format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(
        overview["waiting"]["reason"], "below_threshold",
        "{overview}"
    );
    assert_eq!(overview["progress"]["in_attempt"], 0);
    assert_eq!(carrier.invites_for("+81300000001"), 0);

    // Agents and customers ready; both agents available: attempts start.
    let agents = [
        // Which agent gets the third customer is not known: each may take two,
        // and stops waiting after 30 s.
        common::sipp_scenario(
            target,
            dir,
            p1,
            "uas_answer.xml",
            &["-m", "2", "-timeout", "30s"],
        ),
        common::sipp_scenario(
            target,
            dir,
            p2,
            "uas_answer.xml",
            &["-m", "2", "-timeout", "30s"],
        ),
    ];
    let world = lab.world(&["-m", "3", "-d", "2000"]);
    let mut streams = [
        ("4001", a1.clone(), events(pbx.http_addr(), &a1, None).await),
        ("4002", a2.clone(), events(pbx.http_addr(), &a2, None).await),
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.set_state(&a2, "4002", "available").await;

    // Each agent's stream gets its own records; each customer is dialled
    // only after the agent confirmed, as the carrier sees it.
    let mut shown: Vec<(String, String, String)> = Vec::new(); // agent, call, number
    let mut erased: Vec<(String, String, String)> = Vec::new(); // agent, call, outcome
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    // (An erase may come twice: the event that carried the record is itself
    // replaced by the erase, for a stream that had not read it yet.)
    let done = |shown: &Vec<(String, String, String)>, erased: &Vec<(String, String, String)>| {
        shown.len() == 3
            && shown
                .iter()
                .all(|(_, c, _)| erased.iter().any(|(_, e, _)| e == c))
    };
    while !done(&shown, &erased) {
        assert!(
            std::time::Instant::now() < deadline,
            "shown {shown:?}, erased {erased:?}"
        );
        for (agent, token, ws) in streams.iter_mut() {
            let Some(e) = next_json(ws, Duration::from_millis(100)).await else {
                continue;
            };
            let call = e["call_id"].as_str().unwrap_or_default().to_string();
            match e["type"].as_str() {
                Some("attempt") => {
                    let number = e["customer"]["number"]
                        .as_str()
                        .expect("number")
                        .to_string();
                    assert_eq!(e["title"], "Campaign spring");
                    assert!(e["customer"]["fields"]["plan"].is_string(), "{e}");
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    assert_eq!(
                        carrier.invites_for(&number),
                        0,
                        "{number} was not dialled before {agent} confirmed"
                    );
                    let (status, body) = d.post(token, "/api/v1/attempt/confirm", json!({})).await;
                    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
                    shown.push((agent.to_string(), call, number));
                }
                Some("attempt_erased") => {
                    let outcome = e["outcome"].as_str().unwrap_or_default().to_string();
                    erased.push((agent.to_string(), call, outcome));
                }
                _ => {}
            }
        }
    }
    let mut numbers: Vec<&str> = shown.iter().map(|(_, _, n)| n.as_str()).collect();
    numbers.sort();
    assert_eq!(numbers, ["+81300000001", "+81300000002", "+81300000003"]);
    for (agent, call, _) in &shown {
        assert!(
            erased.iter().any(|(a, c, _)| a == agent && c == call),
            "{agent}'s record of {call} was erased on {agent}'s stream: {erased:?}"
        );
    }
    for n in numbers {
        assert_eq!(carrier.invites_for(n), 1, "{n} dialled once");
    }
    assert!(
        shown.iter().any(|(a, ..)| a == "4001") && shown.iter().any(|(a, ..)| a == "4002"),
        "one attempt per idle agent: {shown:?}"
    );

    // Outcomes and retries are recorded (just after the erase).
    let mut contacts = Value::Null;
    for _ in 0..50 {
        let path = format!("/api/v1/campaigns/{id}/contacts");
        contacts = d.get(&boss, &path).await.1;
        if !contacts.to_string().contains("in_attempt") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outcome_of = |n: &str| {
        contacts
            .as_array()
            .and_then(|l| l.iter().find(|c| c["number"] == n))
            .map(|c| (c["last"][0].clone(), c["status"]["state"].clone()))
    };
    assert_eq!(
        outcome_of("+81300000001"),
        Some((json!("connected"), json!("done"))),
        "{contacts}"
    );
    assert_eq!(
        outcome_of("+81300000002"),
        Some((json!("busy"), json!("waiting"))),
        "{contacts}"
    );
    assert_eq!(
        outcome_of("+81300000003"),
        Some((json!("no_answer"), json!("waiting"))),
        "{contacts}"
    );
    // Every push is in the audit log with its end, for supervisors only.
    let (_, audit) = d.get(&boss, &format!("/api/v1/campaigns/{id}/audit")).await;
    let audit = audit.as_array().cloned().unwrap_or_default();
    assert_eq!(audit.len(), 3, "{audit:?}");
    assert!(audit
        .iter()
        .all(|a| a["erased_ms"].as_u64() >= a["shown_ms"].as_u64()));
    let (status, _) = d.get(&a1, &format!("/api/v1/campaigns/{id}/audit")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = d.post(&a1, "/api/v1/attempt/confirm", json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing waits for 4001 now");
    // A stream replayed from the start carries no customer any more.
    let mut replay = events(pbx.http_addr(), &a1, Some(0)).await;
    while let Some(e) = next_json(&mut replay, Duration::from_millis(500)).await {
        assert_ne!(e["type"], "attempt", "{e}");
        assert!(!e.to_string().contains("Aiko"), "{e}");
    }
    let out = world.await.expect("join");
    assert!(
        out.status.success(),
        "customers: {}\n{}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n"),
        carrier.log()
    );
    for a in agents {
        a.abort();
    }
    pbx.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_an_agent_confirms_the_one_customer_shown_and_the_record_is_gone_at_hang_up() {
    let lab = Dialling::new();
    let (dir, carrier) = (lab.dir(), &lab.carrier);
    let (pbx, target, _) = lab.office(&lab.tables("", "")).await;
    let phone = common::free_port();
    common::register_phone(target, dir, phone, "4001", "pw4001").await;
    let agent = common::sipp_scenario(target, dir, phone, "uas_answer.xml", &["-m", "1"]);
    let world = lab.world(&["-m", "1", "-d", "3000"]);
    let base = format!("http://{}", pbx.http_addr());
    let envs = [
        ("A_EXT", "4001"),
        ("A_PW", "pw4001"),
        ("S_EXT", "boss"),
        ("S_PW", "pwboss"),
    ];
    let (child, artifacts) = common::browser_script("attempt.mjs", &base, &envs);
    common::browser_passed(child, &artifacts).await;
    assert!(
        world.await.expect("join").status.success(),
        "{}",
        carrier.log()
    );
    assert!(
        agent.await.expect("join").status.success(),
        "the agent's phone was called once"
    );
    assert_eq!(carrier.invites_for("+81300000001"), 1);
    pbx.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_during_an_attempt_the_contact_is_closed_as_interrupted_and_not_dialled_again()
{
    use std::time::Duration;
    let lab = Dialling::new();
    let (dir, carrier) = (lab.dir(), &lab.carrier);
    let (sip, http) = (free_port(), free_port());
    let conf = config_with(sip, "[\"MD5\"]", &Dialling::users(), &lab.tables("", "")).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{http}\""),
    );
    let mut server = Server::start(dir, sip, &conf);
    eventually(15, "the trunk registers", || {
        server.log().contains("trunk up")
    })
    .await;
    let phone = free_port();
    common::register_phone(server.addr(), dir, phone, "4001", "pw4001").await;
    let limit = ["-m", "1", "-timeout", "15s"];
    let agent = common::sipp_scenario(server.addr(), dir, phone, "uas_answer.xml", &limit);
    // The customer (ending in 3) rings and never answers.
    let world = lab.world(&limit);
    let d = Desk {
        base: format!("http://127.0.0.1:{http}"),
        http: reqwest::Client::new(),
    };
    let (boss, a1) = (
        d.token("boss", "pwboss").await,
        d.token("4001", "pw4001").await,
    );
    let retry = json!({ "after_secs": 3600, "max_tries": 3 });
    let settings = json!({ "name": "spring", "group": "outbound", "trunk": "carrier",
        "hours_from": "00:00", "hours_to": "24:00", "time_zone": "Asia/Tokyo", "ring_secs": 60,
        "retry": { "busy": retry, "no_answer": retry, "failed": retry } });
    let (_, created) = d.post(&boss, "/api/v1/campaigns", settings).await;
    let id = created["id"].as_u64().expect("id");
    d.upload(&boss, id, "number,name\n+81300000003,Chie\n".into())
        .await;
    // The campaign's own farewell: a WAV, on disk before the answer.
    let samples: Vec<i16> = (0..4000).map(|i| ((i % 40) as i16 - 20) * 500).collect();
    let wav = sipdesk::media::prompt::wav_pcm16(&samples);
    let (status, body) = d.farewell(&boss, id, b"RIFF....not a wav".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("farewell")),
        "{body}"
    );
    assert_eq!(
        d.farewell(&a1, id, wav.clone()).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        d.farewell(&boss, id, wav.clone()).await.0,
        StatusCode::NO_CONTENT
    );
    let mut stream = events(([127, 0, 0, 1], http).into(), &a1, None).await;
    d.post(&boss, &format!("/api/v1/campaigns/{id}/start"), json!({}))
        .await;
    loop {
        let e = next_json(&mut stream, Duration::from_secs(15))
            .await
            .expect("the record is pushed");
        if e["type"] == "attempt" {
            break;
        }
    }
    let (status, _) = d.post(&a1, "/api/v1/attempt/confirm", json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    eventually(10, "the carrier sees the customer's INVITE", || {
        carrier.invites_for("+81300000003") == 1
    })
    .await;

    // The PBX dies while the customer rings.
    server.kill9();
    server.restart();
    let boss = d.token("boss", "pwboss").await;
    let (_, contacts) = d
        .get(&boss, &format!("/api/v1/campaigns/{id}/contacts"))
        .await;
    let c = &contacts[0];
    assert_eq!(c["status"]["state"], "waiting", "{contacts}");
    assert_eq!(c["last"][0], "interrupted", "{contacts}");
    assert_eq!(c["tries"], 1, "the interrupted attempt counts as a try");
    let farewell = d
        .http
        .get(format!("{}/api/v1/campaigns/{id}/farewell", d.base))
        .bearer_auth(&boss)
        .send()
        .await
        .expect("get");
    assert_eq!(farewell.status(), StatusCode::OK);
    assert_eq!(
        farewell.bytes().await.expect("wav").as_ref(),
        wav.as_slice(),
        "kept"
    );
    let (_, audit) = d.get(&boss, &format!("/api/v1/campaigns/{id}/audit")).await;
    assert_eq!(audit.as_array().map(Vec::len), Some(1), "{audit}");
    assert_eq!(audit[0]["agent"], "4001");
    assert!(
        audit[0]["erased_ms"].is_null(),
        "the PBX stopped first: {audit}"
    );
    let (_, overview) = d.get(&boss, &format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(overview["campaign"]["state"], "running");
    assert_eq!(overview["waiting"]["reason"], "retry_later", "{overview}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        carrier.invites_for("+81300000003"),
        1,
        "not dialled again for the same attempt"
    );
    world.abort();
    agent.abort();
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_set_to_call_back_automatically_rings_a_free_agent_first_and_closes_the_call_back_once_reached(
) {
    use std::time::Duration;
    let lab = Dialling::new();
    let (dir, carrier) = (lab.dir(), &lab.carrier);
    let queue = "[[queues]]\nnumber = \"500\"\ngroups = [\"outbound\"]\nmax_wait_secs = 2\n\
                 overflow_callback = true\ncallback_mode = \"auto\"\ncallback_trunk = \"carrier\"\n";
    let did = "dids = { \"0311110000\" = \"500\" }\n";
    let (pbx, target, d) = lab.office(&lab.tables(did, queue)).await;
    let phone = free_port();
    common::register_phone(target, dir, phone, "4001", "pw4001").await;
    let agent = d.token("4001", "pw4001").await;
    d.set_state(&agent, "4001", "away").await;

    // A customer calls the queue through the carrier, nobody answers: they
    // press 1 to be called back.
    let inf = common::injection_file(dir, "caller.csv", &["0312345678".to_string()]);
    let inf = inf.display().to_string();
    let args = [
        "-sf",
        &common::scenario("uac_queue_callback.xml"),
        "-s",
        "0311110000",
        "-inf",
        &inf,
        "-d",
        "4500",
        "-m",
        "1",
    ];
    let caller = common::sipp_embedded_from(
        "127.0.0.6",
        carrier.addr,
        dir,
        free_port(),
        args.iter().map(|a| a.to_string()).collect(),
    );
    assert!(
        caller.await.expect("join").status.success(),
        "{}",
        carrier.log()
    );
    let mut open = Value::Null;
    for _ in 0..50 {
        open = d.get(&agent, "/api/v1/callbacks").await.1;
        if open.as_array().is_some_and(|l| !l.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = open[0]["id"].as_u64().expect("a call-back");
    assert_eq!(open[0]["customer"], "+81312345678", "{open}");
    assert_eq!(open[0]["queue"], "500");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        d.get(&agent, &format!("/api/v1/callbacks/{id}")).await.1["status"]["state"],
        "open",
        "nobody free: it waits"
    );

    // The agent comes back: their phone rings first, they confirm, the
    // customer is called through the carrier and answers.
    let phone_sipp = common::sipp_scenario(target, dir, phone, "uas_answer.xml", &["-m", "1"]);
    let world = lab.world(&["-m", "1", "-d", "2000"]);
    let mut stream = events(pbx.http_addr(), &agent, None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.set_state(&agent, "4001", "available").await;
    let shown = loop {
        let e = next_json(&mut stream, Duration::from_secs(15))
            .await
            .expect("the call-back is shown");
        if e["type"] == "attempt" {
            break e;
        }
    };
    assert_eq!(shown["title"], "Call-back from queue 500", "{shown}");
    assert_eq!(shown["customer"]["number"], "+81312345678");
    assert!(
        shown["customer"]["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("pressed 1")),
        "{shown}"
    );
    let held = d.get(&agent, &format!("/api/v1/callbacks/{id}")).await.1;
    assert_eq!(
        held["status"],
        json!({ "state": "in_progress", "by": "4001", "since_ms": held["status"]["since_ms"] })
    );
    assert_eq!(
        carrier.invites_for("+81312345678"),
        0,
        "not before the confirmation"
    );
    let (status, _) = d.post(&agent, "/api/v1/attempt/confirm", json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    loop {
        let e = next_json(&mut stream, Duration::from_secs(15))
            .await
            .expect("the attempt ends");
        if e["type"] == "attempt_erased" {
            assert_eq!(e["outcome"], "connected", "{e}");
            break;
        }
    }
    let mut done = Value::Null;
    for _ in 0..50 {
        done = d.get(&agent, &format!("/api/v1/callbacks/{id}")).await.1;
        if done["status"]["state"] == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(done["status"]["outcome"], "succeeded", "{done}");
    assert_eq!(done["status"]["by"], "4001");
    assert_eq!(carrier.invites_for("+81312345678"), 1);
    assert!(
        world.await.expect("join").status.success(),
        "{}",
        carrier.log()
    );
    assert!(phone_sipp.await.expect("join").status.success());
    pbx.shutdown().await.expect("shutdown");
}

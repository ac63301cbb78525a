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

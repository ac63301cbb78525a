//! The call-back box over real HTTP: one winner among concurrent claims,
//! creation order kept under concurrent writers and across a restart, retried
//! creates answered with the first item, who may see and do what, and every
//! acknowledged operation surviving `kill -9`.

mod common;

use common::{
    config_with, embedded_pbx, free_port, injection_file, register_phone, sipp_scenario, users,
    Server,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const GROUPS: &str = "[[groups]]\nname = \"support\"\nmembers = [{ extension = \"user1000\" }, { extension = \"user1001\" }, { extension = \"user1002\" }]\n\
[[groups]]\nname = \"sales\"\nmembers = [{ extension = \"user1003\" }]\n\
[[users]]\nextension = \"boss\"\npassword = \"pwboss\"\nrole = \"supervisor\"\n";

/// The desk's HTTP API at `base`.
#[derive(Clone)]
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(base: String) -> Api {
        Api {
            base,
            http: reqwest::Client::new(),
        }
    }
    async fn token(&self, ext: &str) -> String {
        let password = if ext == "boss" {
            "pwboss".to_string()
        } else {
            ext.replace("user", "pw")
        };
        common::session_token(&self.http, &self.base, ext, &password).await
    }
    async fn post(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("post");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }
    async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("get")
    }
    async fn list(&self, token: &str) -> Vec<Value> {
        let r = self.get(token, "/api/v1/callbacks").await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.expect("json")
    }
    async fn write(&self, token: &str, target: Value, key: Option<&str>) -> (StatusCode, Value) {
        let mut body = json!({ "customer": "+81312345678", "name": "Keiko Sato", "message": "call about the invoice", "target": target });
        if let Some(k) = key {
            body["request_key"] = json!(k);
        }
        self.post(token, "/api/v1/callbacks", body).await
    }
}

fn ids(list: &[Value]) -> Vec<u64> {
    list.iter().filter_map(|c| c["id"].as_u64()).collect()
}

async fn desk() -> (tempfile::TempDir, sipdesk::Pbx, Api) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pbx, _) = embedded_pbx(dir.path(), &users(5), GROUPS).await;
    let api = Api::new(format!("http://{}", pbx.http_addr()));
    (dir, pbx, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_a_hundred_concurrent_claims_exactly_one_wins_and_the_rest_hear_who_holds_it() {
    let (_dir, _pbx, api) = desk().await;
    let writer = api.token("user1003").await;
    let (status, item) = api
        .write(&writer, json!({ "group": "support" }), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{item}");
    let id = item["id"].as_u64().expect("id");
    let mut tokens = Vec::new();
    for ext in ["user1000", "user1001", "user1002"] {
        tokens.push((ext, api.token(ext).await));
    }
    let claims: Vec<_> = (0..100)
        .map(|i| {
            let (api, (ext, token)) = (api.clone(), tokens[i % 3].clone());
            tokio::spawn(async move {
                let path = format!("/api/v1/callbacks/{id}/claim");
                (ext, api.post(&token, &path, json!({})).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut refused = 0;
    for c in claims {
        let (ext, (status, body)) = c.await.expect("join");
        match status {
            StatusCode::OK => winners.push((ext, body)),
            StatusCode::CONFLICT => {
                refused += 1;
                assert!(
                    body["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("handled by user100")),
                    "{body}"
                );
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!((winners.len(), refused), (1, 99));
    let (winner, body) = &winners[0];
    assert_eq!(body["status"]["state"], "in_progress");
    assert_eq!(body["status"]["by"], *winner);
    // Everyone in the group sees who handles it.
    let seen = api
        .list(&tokens[(tokens.iter().position(|(e, _)| e == winner).unwrap_or(0) + 1) % 3].1)
        .await;
    assert_eq!(seen[0]["status"]["by"], *winner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_creates_list_in_creation_order_also_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pbx, _) = embedded_pbx(dir.path(), &users(5), GROUPS).await;
    let api = Api::new(format!("http://{}", pbx.http_addr()));
    let mut writers = Vec::new();
    for ext in ["user1000", "user1001", "user1002", "user1003"] {
        let (api, token) = (api.clone(), api.token(ext).await);
        writers.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for i in 0..250 {
                let key = format!("w{}", i);
                let (status, c) = api
                    .write(&token, json!({ "group": "support" }), Some(&key))
                    .await;
                assert_eq!(status, StatusCode::CREATED, "{c}");
                made.push((
                    c["id"].as_u64().expect("id"),
                    c["created_ms"].as_u64().expect("ms"),
                ));
            }
            made
        }));
    }
    let mut made = Vec::new();
    for w in writers {
        let mine = w.await.expect("join");
        assert!(
            mine.windows(2).all(|p| p[0].0 < p[1].0),
            "each writer's items in the order written"
        );
        made.extend(mine);
    }
    let boss = api.token("boss").await;
    let listed = api.list(&boss).await;
    let order = ids(&listed);
    assert_eq!(order.len(), 1000);
    assert!(
        order.windows(2).all(|p| p[0] < p[1]),
        "creation order, never reordered"
    );
    let times: Vec<u64> = listed
        .iter()
        .filter_map(|c| c["created_ms"].as_u64())
        .collect();
    assert!(times.windows(2).all(|p| p[0] <= p[1]));
    pbx.shutdown().await.expect("stop");

    let (pbx, _) = embedded_pbx(dir.path(), &users(5), GROUPS).await;
    let api = Api::new(format!("http://{}", pbx.http_addr()));
    let boss = api.token("boss").await;
    assert_eq!(
        ids(&api.list(&boss).await),
        order,
        "the same order after a restart"
    );
    pbx.shutdown().await.expect("stop");
}

/// SIPp's errors, when it failed.
fn sipp_errors(dir: &std::path::Path) -> String {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("errors.log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_message_lamps_light_for_a_group_call_back_and_go_out_when_it_is_done() {
    let dir = tempfile::tempdir().expect("tempdir");
    // user1000's phone subscribes to its message-summary; user1009's phone
    // expects it unsolicited.
    let groups = GROUPS.replace(
        "{ extension = \"user1002\" }]",
        "{ extension = \"user1002\" }, { extension = \"user1009\" }]",
    );
    let extra = format!("{groups}[[users]]\nextension = \"user1009\"\npassword = \"pw1009\"\nunsolicited_mwi = true\n");
    let (pbx, target) = embedded_pbx(dir.path(), &users(5), &extra).await;
    let api = Api::new(format!("http://{}", pbx.http_addr()));
    let rows = ["user1000;pw1000".to_string()];
    let inf = injection_file(dir.path(), "user1000.csv", &rows)
        .display()
        .to_string();
    let subscriber = sipp_scenario(
        target,
        dir.path(),
        free_port(),
        "subscribe_mwi.xml",
        &["-inf", &inf, "-m", "1"],
    );
    // user1009's phone registers, then takes NOTIFYs on the same port: its
    // lamp 2 s after registering, then every change.
    let port = free_port();
    register_phone(target, dir.path(), port, "user1009", "pw1009").await;
    let phone = sipp_scenario(
        target,
        dir.path(),
        port,
        "uas_mwi.xml",
        &["-m", "3", "-trace_logs"],
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let writer = api.token("user1003").await;
    let (status, item) = api
        .write(&writer, json!({ "group": "support" }), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{item}");
    let id = item["id"].as_u64().expect("id");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let member = api.token("user1000").await;
    let (status, _) = api
        .post(&member, &format!("/api/v1/callbacks/{id}/claim"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let close = json!({ "outcome": "succeeded" });
    let (status, _) = api
        .post(&member, &format!("/api/v1/callbacks/{id}/close"), close)
        .await;
    assert_eq!(status, StatusCode::OK);
    for (what, sipp) in [
        ("the subscriber", subscriber),
        ("the unsolicited phone", phone),
    ] {
        let out = sipp.await.expect("join");
        assert!(
            out.status.success(),
            "{what}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            sipp_errors(dir.path())
        );
    }
    let logged: String = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("uas_mwi_"))
        .filter(|e| e.file_name().to_string_lossy().ends_with("_logs.log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    let lamps: Vec<&str> = logged.lines().filter(|l| l.contains("lamp")).collect();
    assert_eq!(
        lamps,
        ["lamp no", "lamp yes", "lamp no"],
        "the unsolicited lamp: {logged}"
    );
    pbx.shutdown().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_create_with_the_same_request_key_returns_the_same_item() {
    let (_dir, _pbx, api) = desk().await;
    let token = api.token("user1000").await;
    let (status, first) = api
        .write(&token, json!({ "agent": "user1001" }), Some("form-7"))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, again) = api
        .write(&token, json!({ "agent": "user1001" }), Some("form-7"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["id"], first["id"]);
    // Ten retries at once still make one item.
    let retries: Vec<_> = (0..10)
        .map(|_| {
            let (api, token) = (api.clone(), token.clone());
            tokio::spawn(async move {
                api.write(&token, json!({ "agent": "user1001" }), Some("form-8"))
                    .await
            })
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut created = 0;
    for r in retries {
        let (status, c) = r.await.expect("join");
        created += usize::from(status == StatusCode::CREATED);
        seen.insert(c["id"].as_u64());
    }
    assert_eq!((created, seen.len()), (1, 1));
    let target = api.token("user1001").await;
    assert_eq!(api.list(&target).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_addressees_see_and_handle_an_item_and_bad_requests_name_the_problem() {
    let (_dir, _pbx, api) = desk().await;
    let (a, b, outsider, boss) = (
        api.token("user1000").await,
        api.token("user1001").await,
        api.token("user1003").await,
        api.token("boss").await,
    );
    let (_, item) = api
        .write(&outsider, json!({ "group": "support" }), None)
        .await;
    let id = item["id"].as_u64().expect("id");
    let (_, personal) = api.write(&a, json!({ "agent": "user1001" }), None).await;
    assert_eq!(
        ids(&api.list(&a).await),
        [id],
        "a does not see b's personal item"
    );
    assert_eq!(ids(&api.list(&b).await).len(), 2);
    assert!(
        api.list(&outsider).await.is_empty(),
        "the writer outside the group does not see it"
    );
    assert_eq!(ids(&api.list(&boss).await).len(), 2);
    let path = |what: &str| format!("/api/v1/callbacks/{id}/{what}");
    let (status, _) = api.post(&outsider, &path("claim"), json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "outside the group");
    let personal_claim = format!("/api/v1/callbacks/{}/claim", personal["id"]);
    assert_eq!(
        api.post(&a, &personal_claim, json!({})).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.post(&a, &path("close"), json!({"outcome": "succeeded"}))
            .await
            .0,
        StatusCode::CONFLICT,
        "not claimed"
    );
    assert_eq!(
        api.post(&a, &path("claim"), json!({})).await.0,
        StatusCode::OK
    );
    let (status, e) = api
        .post(&b, &path("close"), json!({"outcome": "succeeded"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{e}");
    assert_eq!(
        api.post(&b, &path("release"), json!({})).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, done) = api
        .post(
            &a,
            &path("close"),
            json!({"outcome": "failed", "note": "no answer"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            done["status"]["state"].as_str(),
            done["status"]["note"].as_str()
        ),
        (Some("done"), Some("no answer"))
    );
    assert!(
        !ids(&api.list(&b).await).contains(&id),
        "done items leave the list"
    );
    let history: Value = api
        .http
        .get(format!(
            "{}/api/v1/customers/+81312345678/history",
            api.base
        ))
        .bearer_auth(&b)
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    let joined = history
        .as_array()
        .and_then(|h| h.iter().find(|r| r["call_id"] == format!("callback-{id}")))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (joined["outcome"].as_str(), joined["agent"].as_str()),
        (Some("call-back failed"), Some("user1000")),
        "the closed call-back joins the customer's history: {history}"
    );
    assert!(joined["notes"]
        .as_str()
        .is_some_and(|n| n.contains("no answer")));
    let (status, e) = api.post(&b, &path("claim"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "a done item: {e}");
    let (status, again) = api.post(&b, &path("reopen"), json!({})).await;
    assert_eq!(
        (status, again["status"]["state"].as_str()),
        (StatusCode::OK, Some("open"))
    );
    assert_eq!(
        api.post(&b, &path("reopen"), json!({})).await.0,
        StatusCode::CONFLICT,
        "open already"
    );

    for (body, field, want) in [
        (
            json!({"customer": "", "message": "m", "target": {"group": "support"}}),
            "customer",
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"customer": "anonymous", "message": "m", "target": {"group": "support"}}),
            "customer",
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"customer": "5550100", "message": " ", "target": {"group": "support"}}),
            "message",
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"customer": "5550100", "message": "m", "target": {"team": "support"}}),
            "target",
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"customer": "5550100", "message": "m", "target": {"group": "nobody"}}),
            "target",
            StatusCode::NOT_FOUND,
        ),
        (
            json!({"customer": "5550100", "message": "m", "target": {"agent": "9999"}}),
            "target",
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (status, e) = api.post(&a, "/api/v1/callbacks", body.clone()).await;
        assert_eq!(status, want, "{body}: {e}");
        assert!(
            e["message"].as_str().is_some_and(|m| m.contains(field)),
            "{body}: {e}"
        );
    }
    assert_eq!(
        api.post(&a, &path("close"), json!({"outcome": "maybe"}))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    let (status, _) = api.post("forged", &path("claim"), json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// A POST that may find the server gone: `None` then.
async fn try_post(api: &Api, token: &str, path: &str, body: Value) -> Option<(StatusCode, Value)> {
    let r = api
        .http
        .post(format!("{}{path}", api.base))
        .bearer_auth(token)
        .json(&body)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = r.status();
    Some((status, r.json().await.ok()?))
}

#[test]
fn every_acknowledged_operation_survives_kill_9_and_no_refused_one_appears() {
    let dir = tempfile::tempdir().expect("tmp");
    let (port, http) = (free_port(), free_port());
    let conf = config_with(port, "[\"MD5\"]", &users(5), GROUPS).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{http}\""),
    );
    let mut server = Server::start(dir.path(), port, &conf);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let api = Api::new(format!("http://127.0.0.1:{http}"));
    // A stream of creates, claims, refused claims and closes; the PBX dies in
    // the middle of it.
    let (mine, other) =
        rt.block_on(async { (api.token("user1000").await, api.token("user1001").await) });
    let ops = rt.spawn({
        let api = api.clone();
        async move {
            let mut acked: Vec<(u64, &'static str)> = Vec::new();
            for i in 0..10_000 {
                let write = json!({ "customer": "5550100", "message": "m", "target": { "group": "support" }, "request_key": format!("k{i}") });
                let Some((StatusCode::CREATED, c)) = try_post(&api, &mine, "/api/v1/callbacks", write).await else { break };
                let id = c["id"].as_u64().unwrap_or(0);
                acked.push((id, "open"));
                let claim = format!("/api/v1/callbacks/{id}/claim");
                let Some((StatusCode::OK, _)) = try_post(&api, &mine, &claim, json!({})).await else { break };
                acked.push((id, "in_progress"));
                match try_post(&api, &other, &claim, json!({})).await {
                    Some((StatusCode::CONFLICT, _)) => acked.push((id, "refused")),
                    _ => break,
                }
                if i % 2 == 0 {
                    let close = format!("/api/v1/callbacks/{id}/close");
                    let Some((StatusCode::OK, _)) = try_post(&api, &mine, &close, json!({"outcome": "succeeded"})).await else { break };
                    acked.push((id, "done"));
                }
            }
            acked
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    server.kill9();
    let acked = rt.block_on(ops).expect("join");
    assert!(
        acked.len() > 20,
        "operations were acknowledged before the kill: {}",
        acked.len()
    );
    server.restart();
    rt.block_on(async {
        let boss = api.token("boss").await;
        let open: std::collections::HashMap<u64, Value> = api
            .list(&boss)
            .await
            .into_iter()
            .filter_map(|c| Some((c["id"].as_u64()?, c)))
            .collect();
        for (id, state) in &acked {
            let now = open.get(id);
            match *state {
                // Created: it is there (open, claimed, or closed later).
                "open" if now.is_none() => {
                    // Not open: then done (a claim is a conflict), never lost.
                    let claim = format!("/api/v1/callbacks/{id}/claim");
                    let done = try_post(&api, &boss, &claim, json!({})).await;
                    assert!(
                        matches!(done, Some((StatusCode::CONFLICT, _))),
                        "{id} lost: {done:?}"
                    );
                }
                "open" => {}
                // The refused claim never shows: the item is held by user1000 or done.
                "in_progress" | "refused" => {
                    if let Some(c) = now {
                        assert_eq!(c["status"]["by"], "user1000", "{id}: {c}");
                    }
                }
                _ => assert!(now.is_none(), "{id} was closed"),
            }
        }
        // The last acknowledged claim: still held by its claimer, or closed by a
        // close that reached the PBX but whose answer the kill cut off.
        if let Some((id, _)) = acked.iter().rev().find(|(_, s)| *s == "in_progress") {
            match open.get(id) {
                Some(c) => assert_eq!(c["status"]["by"], "user1000"),
                None => {
                    let claim = format!("/api/v1/callbacks/{id}/claim");
                    let done = try_post(&api, &boss, &claim, json!({})).await;
                    assert!(matches!(done, Some((StatusCode::CONFLICT, _))), "{id} lost");
                }
            }
        }
    });
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_a_group_call_back_lights_g_is_claimed_by_one_and_joins_the_history() {
    let (_dir, _pbx, api) = desk().await;
    let envs = [
        ("A_EXT", "user1003"),
        ("B_EXT", "user1001"),
        ("C_EXT", "user1002"),
        ("GROUP", "support"),
    ];
    let (child, artifacts) = common::browser_script("callbacks.mjs", &api.base, &envs);
    common::browser_passed(child, &artifacts).await;
}

/// The open call-backs `token` sees, polled until one appears (10 s).
async fn first_listed(api: &Api, token: &str) -> Value {
    for _ in 0..100 {
        if let Some(c) = api.list(token).await.into_iter().next() {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no call-back appeared");
}

/// A PBX whose queue 500 offers a call-back to group support (nobody of
/// which is registered: callers wait 2 s, then hear the offer); support's
/// items are flagged after 4 s, for the wallboard.
async fn callback_queue() -> (tempfile::TempDir, sipdesk::Pbx, std::net::SocketAddr, Api) {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = "[[queues]]\nnumber = \"500\"\ngroups = [\"support\"]\nmax_wait_secs = 2\noverflow_callback = true\ncallback_message_secs = 30\n";
    let groups = GROUPS.replace(
        "name = \"support\"\n",
        "name = \"support\"\ncallback_flag_secs = 4\n",
    );
    let (pbx, target) = embedded_pbx(dir.path(), &users(5), &format!("{groups}{queue}")).await;
    let api = Api::new(format!("http://{}", pbx.http_addr()));
    (dir, pbx, target, api)
}

/// Customer +81312345678 calls queue 500 and plays `scenario` (after 2 s of
/// waiting and the 2.2 s prompt it speaks into the recording).
async fn queue_caller(target: std::net::SocketAddr, dir: &std::path::Path, scenario: &str) {
    let rows = ["+81312345678".to_string()];
    let inf = injection_file(dir, "caller.csv", &rows)
        .display()
        .to_string();
    let args = ["-s", "500", "-inf", &inf, "-d", "4500", "-m", "1"];
    let out = sipp_scenario(target, dir, free_port(), scenario, &args)
        .await
        .expect("join");
    assert!(
        out.status.success(),
        "{scenario}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        sipp_errors(dir)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_hangs_up_mid_message_leaves_it_and_calling_again_adds_to_the_same_item() {
    let (dir, pbx, target, api) = callback_queue().await;
    queue_caller(target, dir.path(), "uac_queue_message_hangup.xml").await;
    let member = api.token("user1000").await;
    let c = first_listed(&api, &member).await;
    let message = c["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains("voice message") && !message.contains("pressed 1"),
        "{message}"
    );
    let ms = c["voice"][0]["ms"].as_u64().unwrap_or(0);
    assert!(
        (2_000..=6_000).contains(&ms),
        "the part before the hang-up: {ms} ms"
    );
    // The same customer again, this time pressing 1: the same item, two messages.
    queue_caller(target, dir.path(), "uac_queue_callback.xml").await;
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = api.list(&member).await;
        if listed
            .first()
            .is_some_and(|c| c["voice"].as_array().map_or(0, Vec::len) == 2)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed.len(), 1, "no second item: {listed:?}");
    assert_eq!(listed[0]["id"], c["id"]);
    let again = listed[0]["message"].as_str().unwrap_or_default();
    assert!(
        again.starts_with(&message) && again.contains("\nAgain: ") && again.contains("pressed 1"),
        "{again}"
    );
    pbx.shutdown().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_caller_who_speaks_and_presses_1_leaves_a_group_call_back_with_a_playable_wav() {
    let (dir, pbx, target, api) = callback_queue().await;
    queue_caller(target, dir.path(), "uac_queue_callback.xml").await;
    let member = api.token("user1001").await;
    let c = first_listed(&api, &member).await;
    assert_eq!(c["target"], json!({ "group": "support" }), "{c}");
    assert_eq!(c["written_by"], "pbx");
    assert_eq!(c["customer"], "+81312345678");
    let message = c["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("queue 500")
            && message.contains("voice message")
            && message.contains("pressed 1"),
        "{message}"
    );
    let (id, voice) = (
        c["id"].as_u64().expect("id"),
        c["voice"][0]["id"].as_u64().expect("a voice message"),
    );
    let ms = c["voice"][0]["ms"].as_u64().unwrap_or(0);
    assert!(
        (3_000..=9_000).contains(&ms),
        "about the 7 s the caller spoke, less the prompt: {ms} ms"
    );
    let path = format!("/api/v1/callbacks/{id}/voice/{voice}");
    let wav = api.get(&member, &path).await;
    assert_eq!(wav.status(), StatusCode::OK);
    assert_eq!(wav.headers()["content-type"], "audio/wav");
    let bytes = wav.bytes().await.expect("bytes");
    assert_eq!(&bytes[0..4], b"RIFF");
    assert_eq!(&bytes[8..12], b"WAVE");
    let data = u32::from_le_bytes([bytes[40], bytes[41], bytes[42], bytes[43]]) as u64;
    assert_eq!(data / 16, ms, "16-bit samples at 8 kHz: the length it says");
    // Somebody outside the group hears nothing of it.
    let outsider = api.token("user1003").await;
    assert_eq!(
        api.get(&outsider, &path).await.status(),
        StatusCode::NOT_FOUND
    );
    // In Chromium: the member plays it, the wallboard lists it once flagged,
    // and it plays from the customer's history once closed.
    let ms = ms.to_string();
    let envs = [
        ("MEMBER_EXT", "user1001"),
        ("BOSS_EXT", "boss"),
        ("CUSTOMER", "+81312345678"),
        ("VOICE_MS", ms.as_str()),
    ];
    let (child, artifacts) = common::browser_script("voice.mjs", &api.base, &envs);
    common::browser_passed(child, &artifacts).await;
    pbx.shutdown().await.expect("stop");
}

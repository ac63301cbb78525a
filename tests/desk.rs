//! The desk over real HTTP and WebSocket against an in-process PBX: login,
//! authorisation of every endpoint, the board and agent state, click-to-call's
//! refusals, the OpenAPI document and the numbered event stream with replay.

mod common;

use common::{browser_passed, browser_script, embedded_pbx, free_port, register_phone, users};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sipdesk::media::prompt::share_of;
use std::time::Duration;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

const DESK: &str = "[[groups]]\nname = \"support\"\nmembers = [{ extension = \"user1000\" }, { extension = \"user1001\" }]\n\
[[users]]\nextension = \"boss\"\npassword = \"pwboss\"\nrole = \"supervisor\"\n";

struct Desk {
    dir: tempfile::TempDir,
    sip: std::net::SocketAddr,
    pbx: sipdesk::Pbx,
    base: String,
    http: reqwest::Client,
}

async fn desk(extra: &str) -> Desk {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = format!("{DESK}{extra}");
    let (pbx, sip) = embedded_pbx(dir.path(), &users(3), &extra).await;
    let base = format!("http://{}", pbx.http_addr());
    Desk {
        dir,
        sip,
        pbx,
        base,
        http: reqwest::Client::new(),
    }
}

impl Desk {
    async fn login(&self, ext: &str, password: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/api/v1/session", self.base))
            .json(&json!({ "extension": ext, "password": password }))
            .send()
            .await
            .expect("login")
    }
    async fn token(&self, ext: &str, password: &str) -> String {
        let r = self.login(ext, password).await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.expect("json");
        body["token"].as_str().expect("token").to_string()
    }
    fn get(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
    }
    async fn set_state(&self, token: &str, ext: &str, body: Value) -> reqwest::Response {
        self.http
            .put(format!("{}/api/v1/agents/{ext}/state", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("put")
    }
    async fn board(&self, token: &str) -> Value {
        let r = self
            .get("/api/v1/board", token)
            .send()
            .await
            .expect("board");
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.expect("json")
    }
    /// A phone registers the extension (SIPp, digest): the agent is online.
    async fn register(&self, ext: &str) {
        let password = ext.replace("user", "pw");
        register_phone(self.sip, self.dir.path(), free_port(), ext, &password).await;
    }
    async fn stream(
        &self,
        token: &str,
        since: Option<u64>,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
    {
        let query = since.map_or(String::new(), |s| format!("?since={s}"));
        let url = format!("ws://{}/api/v1/events{query}", self.pbx.http_addr());
        let mut req = url.into_client_request().expect("request");
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(req).await.expect("ws");
        ws
    }
    /// GET `path` as `token`: the JSON body.
    async fn json(&self, path: &str, token: &str) -> Value {
        self.get(path, token)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json")
    }
    /// A customer's first record, once the PBX has written it (with the
    /// group commit after the call); `Null` if it never comes.
    async fn first_record(&self, token: &str, number: &str) -> Value {
        for _ in 0..100 {
            let list = self
                .json(&format!("/api/v1/customers/{number}/history"), token)
                .await;
            if let Some(r) = list.as_array().and_then(|l| l.first()) {
                return r.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Value::Null
    }
    /// Waits until the event log has reached `seq` (the pump is asynchronous).
    async fn until_seq(&self, token: &str, seq: u64) {
        for _ in 0..200 {
            if self.board(token).await["seq"].as_u64().unwrap_or(0) >= seq {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the event log never reached {seq}");
    }
}

async fn next_event<S>(ws: &mut S) -> Value
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("an event in time")
            .expect("open")
            .expect("ok");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).expect("json event");
        }
    }
}

async fn error_of(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    (status, r.json().await.expect("a JSON error body"))
}

#[tokio::test]
async fn login_gives_a_cookie_and_a_token_and_wrong_credentials_the_same_401() {
    let d = desk("").await;
    let ok = d.login("user1000", "pw1000").await;
    assert_eq!(ok.status(), StatusCode::OK);
    let cookie = ok
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("cookie")
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let body: Value = ok.json().await.expect("json");
    assert_eq!(body["extension"], "user1000");
    assert_eq!(body["role"], "agent");
    // The cookie alone authenticates a browser.
    let me = d
        .http
        .get(format!("{}/api/v1/me", d.base))
        .header("cookie", cookie.split(';').next().expect("pair"))
        .send()
        .await
        .expect("me");
    assert_eq!(me.status(), StatusCode::OK);

    let wrong = error_of(d.login("user1000", "nope").await).await;
    let unknown = error_of(d.login("nobody", "pw1000").await).await;
    assert_eq!(wrong.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        wrong, unknown,
        "an unknown extension looks like a wrong password"
    );
    assert_eq!(wrong.1["error"], "unauthorized");

    let boss: Value = d.login("boss", "pwboss").await.json().await.expect("json");
    assert_eq!(boss["role"], "supervisor");
}

#[tokio::test]
async fn every_endpoint_refuses_a_missing_forged_or_closed_session() {
    let d = desk("").await;
    let forged = "ab".repeat(32);
    let token = d.token("user1000", "pw1000").await;
    let closed = d
        .http
        .delete(format!("{}/api/v1/session", d.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("logout");
    assert_eq!(closed.status(), StatusCode::NO_CONTENT);
    for bad in [None, Some(forged.as_str()), Some(token.as_str())] {
        let auth = |r: reqwest::RequestBuilder| match bad {
            Some(t) => r.bearer_auth(t),
            None => r,
        };
        let b = &d.base;
        let requests = [
            d.http.get(format!("{b}/api/v1/me")),
            d.http.get(format!("{b}/api/v1/board")),
            d.http.get(format!("{b}/api/v1/events")),
            d.http.post(format!("{b}/api/v1/session/renew")),
            d.http.delete(format!("{b}/api/v1/session")),
            d.http
                .put(format!("{b}/api/v1/agents/user1000/state"))
                .json(&json!({"state": "away"})),
            d.http
                .post(format!("{b}/api/v1/calls"))
                .json(&json!({"to": "user1001"})),
            d.http.get(format!("{b}/api/v1/me/calls")),
            d.http.get(format!("{b}/api/v1/queues")),
            d.http.get(format!("{b}/api/v1/trunks")),
            d.http.get(format!("{b}/api/v1/dispositions")),
            d.http.get(format!("{b}/api/v1/customers?q=tanaka")),
            d.http.get(format!("{b}/api/v1/customers/5559001/history")),
            d.http.get(format!("{b}/api/v1/exports/cdrs")),
            d.http.get(format!("{b}/metrics")),
            d.http
                .post(format!("{b}/api/v1/customers/5559001/records"))
                .json(&json!({"notes": "", "outcome": "resolved"})),
            d.http
                .get(format!("{b}/api/v1/exports/records?format=json")),
            d.http
                .put(format!("{b}/api/v1/customers/5559001/records/1"))
                .json(&json!({"notes": "", "outcome": "answered"})),
            d.http.get(format!("{b}/api/v1/callbacks")),
            d.http.post(format!("{b}/api/v1/callbacks")).json(
                &json!({"customer": "5559001", "message": "x", "target": {"group": "support"}}),
            ),
            d.http.get(format!("{b}/api/v1/callbacks/1")),
            d.http.get(format!("{b}/api/v1/callbacks/1/voice/1")),
            d.http.post(format!("{b}/api/v1/callbacks/1/claim")),
            d.http.post(format!("{b}/api/v1/callbacks/1/release")),
            d.http
                .post(format!("{b}/api/v1/callbacks/1/close"))
                .json(&json!({"outcome": "succeeded"})),
            d.http.post(format!("{b}/api/v1/callbacks/1/reopen")),
            d.http.get(format!("{b}/api/v1/campaigns")),
            d.http
                .post(format!("{b}/api/v1/campaigns"))
                .json(&json!({"name": "x", "group": "support", "trunk": "t"})),
            d.http.get(format!("{b}/api/v1/campaigns/1")),
            d.http
                .post(format!("{b}/api/v1/campaigns/1/contacts"))
                .body("number\n0312345678\n"),
            d.http.get(format!("{b}/api/v1/campaigns/1/contacts")),
            d.http.post(format!("{b}/api/v1/campaigns/1/start")),
            d.http
                .post(format!("{b}/api/v1/do-not-call"))
                .json(&json!({"numbers": ["0312345678"]})),
        ];
        for r in requests {
            let (status, body) = error_of(auth(r).send().await.expect("send")).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad:?}: {body}");
            assert_eq!(body["error"], "unauthorized");
        }
    }
}

#[tokio::test]
async fn an_agent_sets_their_own_state_with_a_reason_and_nobody_elses() {
    let d = desk("").await;
    d.register("user1000").await;
    d.register("user1001").await;
    let agent = d.token("user1000", "pw1000").await;
    let boss = d.token("boss", "pwboss").await;

    let r = d
        .set_state(
            &agent,
            "user1000",
            json!({"state": "away", "reason": "break"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let board = d.board(&agent).await;
    assert_eq!(board["groups"][0]["name"], "support");
    let me = &board["groups"][0]["agents"][0];
    assert_eq!(
        (me["extension"].as_str(), me["state"].as_str()),
        (Some("user1000"), Some("away"))
    );
    assert_eq!(me["reason"], "break");
    assert!(me["since_ms"].as_u64().is_some_and(|t| t > 0));
    assert_eq!(board["groups"][0]["agents"][1]["state"], "available");
    let ungrouped: Vec<&str> = board["ungrouped"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|a| a["extension"].as_str())
        .collect();
    assert_eq!(ungrouped, ["boss", "user1002"]);

    let (status, body) = error_of(
        d.set_state(&agent, "user1001", json!({"state": "away"}))
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let r = d
        .set_state(&boss, "user1001", json!({"state": "busy"}))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "a supervisor may");

    let (status, body) = error_of(
        d.set_state(&agent, "user1000", json!({"state": "on_call"}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = error_of(
        d.set_state(&agent, "user1000", json!({"stat": "away"}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains("stat")),
        "{body}"
    );
    let (status, _) = error_of(d.set_state(&boss, "nobody", json!({"state": "away"})).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let huge = json!({"state": "away", "reason": "x".repeat(100_000)});
    let (status, body) = error_of(d.set_state(&agent, "user1000", huge).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
}

#[tokio::test]
async fn click_to_call_refuses_unknown_numbers_and_an_unregistered_phone() {
    let d = desk("").await;
    let agent = d.token("user1000", "pw1000").await;
    let call = |to: &str| {
        d.http
            .post(format!("{}/api/v1/calls", d.base))
            .bearer_auth(&agent)
            .json(&json!({ "to": to }))
            .send()
    };
    let (status, body) = error_of(call("77777").await.expect("send")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["message"]
        .as_str()
        .is_some_and(|m| m.contains("77777")));
    let (status, _) = error_of(call("bad number!").await.expect("send")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = error_of(call("user1001").await.expect("send")).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "my phone is not registered: {body}"
    );
}

#[tokio::test]
async fn repeated_failed_logins_are_slowed_then_blocked_with_429() {
    let d = desk("").await;
    let mut last = StatusCode::OK;
    for _ in 0..11 {
        last = d.login("user1000", "wrong").await.status();
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
    let r = d.login("user1000", "pw1000").await;
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password"
    );
    assert!(r.headers().get("retry-after").is_some());
}

#[tokio::test]
async fn a_client_that_reconnects_gets_exactly_what_it_missed_or_a_resync() {
    let d = desk("").await;
    d.register("user1000").await;
    let token = d.token("user1001", "pw1001").await;
    let presence = d.pbx.presence().clone();
    // Every flip changes the state: away, available, away…
    let flips = std::sync::atomic::AtomicUsize::new(0);
    let flip = |n: usize| {
        for _ in 0..n {
            let i = flips.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let state = if i % 2 == 0 {
                sipdesk::presence::State::Away
            } else {
                sipdesk::presence::State::Available
            };
            presence
                .choose("user1000", state, sipdesk::UnixMillis::now())
                .expect("choose");
        }
    };

    let mut ws = d.stream(&token, None).await;
    flip(1);
    let first = next_event(&mut ws).await;
    assert_eq!(
        (first["type"].as_str(), first["state"].as_str()),
        (Some("presence"), Some("away"))
    );
    let last_seen = first["seq"].as_u64().expect("seq");
    ws.close(None).await.expect("close");

    flip(50);
    d.until_seq(&token, last_seen + 50).await;
    let mut ws = d.stream(&token, Some(last_seen)).await;
    for i in 1..=50 {
        let e = next_event(&mut ws).await;
        assert_eq!(
            e["seq"].as_u64(),
            Some(last_seen + i),
            "in order, none missing"
        );
        assert_eq!(e["extension"], "user1000");
    }
    let quiet = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(quiet.is_err(), "exactly those 50: {quiet:?}");
    ws.close(None).await.expect("close");

    let before = last_seen + 50;
    for _ in 0..20 {
        flip(500); // in steps the pump keeps up with
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d.until_seq(&token, before + 10_000).await;
    let mut ws = d.stream(&token, Some(before)).await;
    let e = next_event(&mut ws).await;
    assert_eq!(e["type"], "resync", "{e}");
}

#[tokio::test]
async fn renewing_keeps_the_stream_and_logging_out_ends_it() {
    let d = desk("").await;
    d.register("user1000").await;
    let token = d.token("user1000", "pw1000").await;
    let mut ws = d.stream(&token, None).await;
    let renewed = d
        .http
        .post(format!("{}/api/v1/session/renew", d.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("renew");
    assert_eq!(renewed.status(), StatusCode::OK);
    let body: Value = renewed.json().await.expect("json");
    assert_eq!(body["token"].as_str(), Some(token.as_str()), "same token");
    let r = d
        .set_state(&token, "user1000", json!({"state": "busy"}))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let e = next_event(&mut ws).await;
    assert_eq!(
        (e["state"].as_str(), e["reason"].as_null()),
        (Some("busy"), Some(()))
    );

    d.http
        .delete(format!("{}/api/v1/session", d.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("logout");
    // The next event wakes the stream, which finds the session gone.
    let r = d
        .set_state(
            &d.token("boss", "pwboss").await,
            "user1000",
            json!({"state": "away"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("in time");
    match end {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 4001),
        other => panic!("expected a close with 4001, got {other:?}"),
    }
}

#[tokio::test]
async fn the_openapi_document_and_the_desktop_are_served_from_the_binary() {
    let d = desk("").await;
    let doc: Value = d
        .http
        .get(format!("{}/api/v1/openapi.json", d.base))
        .send()
        .await
        .expect("doc")
        .json()
        .await
        .expect("json");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    for path in [
        "/api/v1/session",
        "/api/v1/board",
        "/api/v1/events",
        "/api/v1/agents/{extension}/state",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
    for page in ["/", "/wallboard"] {
        let r = d
            .http
            .get(format!("{}{page}", d.base))
            .send()
            .await
            .expect("page");
        assert_eq!(r.status(), StatusCode::OK);
        let csp = r
            .headers()
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok());
        assert!(csp.is_some_and(|c| c.contains("default-src 'self'")));
        let html = r.text().await.expect("html");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "loads nothing from outside"
        );
    }
    let (status, body) = error_of(
        d.http
            .get(format!("{}/api/v1/nothing", d.base))
            .send()
            .await
            .expect("404"),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

/// Two agents in two pages; A sets "away" with a reason by keyboard, B's board
/// shows it as text; A forwards unanswered calls to B from the desktop.
#[tokio::test]
async fn two_agents_in_chromium_see_each_others_state_and_one_sets_forwarding() {
    let d = desk("").await;
    d.register("user1000").await;
    d.register("user1001").await;
    let envs = [
        ("A_EXT", "user1000"),
        ("A_PW", "pw1000"),
        ("B_EXT", "user1001"),
        ("B_PW", "pw1001"),
    ];
    let (child, artifacts) = browser_script("desk.mjs", &d.base, &envs);
    browser_passed(child, &artifacts).await;
    let token = d.token("user1000", "pw1000").await;
    let got: Value = d
        .http
        .get(format!("{}/api/v1/agents/user1000/forwarding", d.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (got["no_answer"].as_str(), got["no_answer_secs"].as_u64()),
        (Some("user1001"), Some(15)),
        "{got}"
    );
}

const QUEUE: &str = "[[queues]]\nnumber = \"500\"\ngroups = [\"support\"]\nring_secs = 5\nmax_wait_secs = 30\nwrap_up_secs = 0\n";

/// The next event of `kind` (others are skipped).
async fn next_of<S>(ws: &mut S, kind: &str) -> Value
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let e = next_event(ws).await;
        if e["type"] == kind {
            return e;
        }
    }
}

/// A customer (SIPp, From user `number`) calls queue 500 and talks 1.5 s.
async fn customer_call(d: &Desk, number: &str) {
    let inf = common::injection_file(
        d.dir.path(),
        &format!("c{}.csv", free_port()),
        &[number.to_string()],
    );
    let inf = inf.display().to_string();
    let args = ["-inf", inf.as_str(), "-s", "500", "-d", "1500", "-m", "1"];
    let out = common::sipp_scenario(d.sip, d.dir.path(), free_port(), "uac_queue.xml", &args)
        .await
        .expect("join");
    assert!(
        out.status.success(),
        "customer call: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_call_pops_up_with_the_callers_history_and_the_agent_saves_its_record() {
    let d = desk(QUEUE).await;
    let phone = agent_phone(&d, "2").await;
    let agent = d.token("user1000", "pw1000").await;
    let colleague = d.token("user1001", "pw1001").await;
    let mut ws = d.stream(&agent, None).await;
    let mut other = d.stream(&colleague, None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A first call: the pop knows the number but no history yet.
    customer_call(&d, "5559001").await;
    let ringing = next_of(&mut ws, "call").await;
    assert_eq!(
        (ringing["phase"].as_str(), ringing["peer"].as_str()),
        (Some("ringing"), Some("5559001")),
        "{ringing}"
    );
    assert_eq!(ringing["pop"]["caller"], "5559001");
    assert_eq!(ringing["pop"]["history"], json!([]));
    let call_id = ringing["call_id"].as_str().expect("call id").to_string();
    let answered = next_of(&mut ws, "call").await;
    assert_eq!(
        (answered["phase"].as_str(), answered["call_id"].as_str()),
        (Some("answered"), Some(call_id.as_str()))
    );
    let ended = next_of(&mut ws, "call").await;
    assert_eq!(ended["phase"], "ended");

    // The PBX opened the record of the answered call; the agent writes it.
    let record = d.first_record(&agent, "5559001").await;
    assert_eq!(
        (record["agent"].as_str(), record["outcome"].as_str()),
        (Some("user1000"), Some("answered")),
        "{record}"
    );
    let id = record["id"].as_u64().expect("id");
    let put = |token: &str, body: Value| {
        d.http
            .put(format!("{}/api/v1/customers/5559001/records/{id}", d.base))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let edit = json!({"notes": "wants a refund", "outcome": "call back", "name": "Ms Tanaka"});
    let (status, body) = error_of(put(&colleague, edit.clone()).await.expect("put")).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "another agent's record: {body}"
    );
    let (status, body) = error_of(
        put(&agent, json!({"notes": "", "outcome": "maybe"}))
            .await
            .expect("put"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("outcome")),
        "{body}"
    );
    let saved = put(&agent, edit).await.expect("put");
    assert_eq!(saved.status(), StatusCode::OK);
    let event = next_of(&mut ws, "record_saved").await;
    assert_eq!(event["record"]["notes"], "wants a refund");

    // The same customer again: the pop shows what was written.
    customer_call(&d, "5559001").await;
    let ringing = next_of(&mut ws, "call").await;
    assert_eq!(ringing["phase"], "ringing");
    assert_eq!(ringing["pop"]["name"], "Ms Tanaka");
    assert_eq!(ringing["pop"]["history"][0]["notes"], "wants a refund");
    assert_eq!(ringing["pop"]["history"][0]["outcome"], "call back");

    // The customer is found by part of the name or of the number.
    for q in ["tanaka", "MS TAN", "9001", "+5559001"] {
        let found: Value = d
            .get(
                &format!(
                    "/api/v1/customers?q={}",
                    q.replace('+', "%2B").replace(' ', "+")
                ),
                &colleague,
            )
            .send()
            .await
            .expect("search")
            .json()
            .await
            .expect("json");
        assert_eq!(found[0]["number"], "5559001", "{q}: {found}");
        assert_eq!(found[0]["name"], "Ms Tanaka", "{q}: {found}");
    }
    let none: Value = d.json("/api/v1/customers?q=suzuki", &agent).await;
    assert_eq!(none, json!([]));
    let (status, body) = error_of(
        d.get("/api/v1/customers?q=x", &agent)
            .send()
            .await
            .expect("search"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        phone.await.expect("join").status.success(),
        "the agent's phone took both calls"
    );

    // The colleague saw the board move, never the agent's calls or records.
    let mut seen = Vec::new();
    while let Ok(Some(Ok(Message::Text(t)))) =
        tokio::time::timeout(Duration::from_millis(300), other.next()).await
    {
        let e: Value = serde_json::from_str(&t).expect("json");
        seen.push(e["type"].as_str().unwrap_or_default().to_string());
    }
    assert!(seen.iter().any(|t| t == "presence"), "{seen:?}");
    assert!(
        seen.iter().all(|t| t != "call" && t != "record_saved"),
        "never the agent's calls or records: {seen:?}"
    );
}

#[tokio::test]
async fn my_calls_dispositions_and_unknown_records_are_answered() {
    let d = desk("").await;
    let agent = d.token("user1000", "pw1000").await;
    let calls: Value = d.json("/api/v1/me/calls", &agent).await;
    assert_eq!(calls, json!([]));
    let dispositions: Value = d.json("/api/v1/dispositions", &agent).await;
    assert!(dispositions
        .as_array()
        .is_some_and(|l| l.iter().any(|v| v == "resolved")));
    let r = d
        .http
        .put(format!("{}/api/v1/customers/5550000/records/42", d.base))
        .bearer_auth(&agent)
        .json(&json!({"notes": "x", "outcome": "resolved"}))
        .send()
        .await
        .expect("put");
    let (status, _) = error_of(r).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A customer who called before rings agent A (a SIPp phone answers for A);
/// A's page shows the pop with the earlier record, and A saves today's record
/// with a disposition from the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desktop_pops_up_the_callers_history_and_saves_todays_record() {
    use tokio::io::AsyncBufReadExt;
    let d = desk(QUEUE).await;
    let phone = agent_phone(&d, "2").await;
    let agent = d.token("user1000", "pw1000").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // An earlier call, and what the agent wrote about it (over the API).
    customer_call(&d, "5559002").await;
    let first = d.first_record(&agent, "5559002").await;
    let id = first["id"].as_u64().expect("the first call's record");
    let r = d
        .http
        .put(format!("{}/api/v1/customers/5559002/records/{id}", d.base))
        .bearer_auth(&agent)
        .json(&json!({"notes": "asked about a refund", "outcome": "call back"}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);

    let envs = [
        ("A_EXT", "user1000"),
        ("A_PW", "pw1000"),
        ("CALLER", "5559002"),
        ("EARLIER_NOTES", "asked about a refund"),
    ];
    let (mut child, artifacts) = browser_script("pop.mjs", &d.base, &envs);
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
    assert!(
        matches!(ready, Ok(Ok(Some(ref l))) if l == "READY"),
        "the page is ready: {ready:?}"
    );
    customer_call(&d, "5559002").await;
    let rest = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    browser_passed(child, &artifacts).await;
    let _ = rest.await;
    assert!(phone.await.expect("join").status.success());

    let list: Value = d.json("/api/v1/customers/5559002/history", &agent).await;
    let today = &list[1];
    assert_eq!(
        (today["notes"].as_str(), today["outcome"].as_str()),
        (Some("called back about the refund"), Some("resolved")),
        "{list}"
    );
}

/// A customer who called before (their record: "asked about a refund")
/// rings agent A from the queue; A transfers the call from the desktop to
/// B (away from the queue, but reachable); B's phone answers, B's page pops
/// up the customer with that history, A's phone is released, and the
/// customer is re-INVITEd toward B. Over the API: another agent's call, a
/// number that goes nowhere, and a body naming both or neither are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_transfers_a_customer_from_the_desktop_and_the_colleague_gets_their_history() {
    use tokio::io::AsyncBufReadExt;
    let d = desk(QUEUE).await;
    let (a, b) = (
        d.token("user1000", "pw1000").await,
        d.token("user1001", "pw1001").await,
    );
    let r = d
        .http
        .post(format!("{}/api/v1/customers/caller/records", d.base))
        .bearer_auth(&a)
        .json(&json!({"notes": "asked about a refund", "outcome": "call back"}))
        .send()
        .await
        .expect("record");
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let r = d
        .http
        .put(format!("{}/api/v1/agents/user1001/state", d.base))
        .bearer_auth(&b)
        .json(&json!({"state": "away"}))
        .send()
        .await
        .expect("away");
    assert!(r.status().is_success());
    let phone_a = agent_phone(&d, "1").await;
    let b_port = free_port();
    register_phone(d.sip, d.dir.path(), b_port, "user1001", "pw1001").await;
    let phone_b =
        common::sipp_scenario(d.sip, d.dir.path(), b_port, "uas_answer.xml", &["-m", "1"]);

    let envs = [
        ("A_EXT", "user1000"),
        ("A_PW", "pw1000"),
        ("B_EXT", "user1001"),
        ("B_PW", "pw1001"),
        ("CALLER", "caller"),
        ("EARLIER_NOTES", "asked about a refund"),
    ];
    let (mut child, artifacts) = browser_script("transfer.mjs", &d.base, &envs);
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    until_line(&mut lines, "READY").await;
    let customer = common::sipp_scenario(
        d.sip,
        d.dir.path(),
        free_port(),
        "uac_transferred.xml",
        &["-s", "500", "-m", "1", "-d", "3000"],
    );
    // While A talks: the API refuses what it should.
    let mut mine = Value::Null;
    for _ in 0..200 {
        let calls: Value = d.json("/api/v1/me/calls", &a).await;
        if calls[0]["state"] == "confirmed" {
            mine = calls[0].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let call_id = mine["call_id"].as_str().expect("A's call").to_string();
    let transfer = |token: &str, body: Value| {
        d.http
            .post(format!("{}/api/v1/me/calls/{call_id}/transfer", d.base))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let (status, _) = error_of(transfer(&b, json!({"to": "user1000"})).await.expect("post")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not B's call");
    let (status, message) =
        error_of(transfer(&a, json!({"to": "9999"})).await.expect("post")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{message}");
    let text = message["message"].as_str().unwrap_or_default();
    assert!(text.contains("9999"), "{message}");
    let (status, _) = error_of(transfer(&a, json!({})).await.expect("post")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let rest = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    browser_passed(child, &artifacts).await;
    let _ = rest.await;
    let out = customer.await.expect("join");
    assert!(
        out.status.success(),
        "the customer is re-INVITEd toward B: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        phone_a.await.expect("join").status.success(),
        "A's phone is released"
    );
    assert!(
        phone_b.await.expect("join").status.success(),
        "B's phone talks, then hangs up"
    );
}

/// Reads lines of a browser script until `want` (its own progress marks).
async fn until_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    want: &str,
) {
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
    assert!(
        matches!(line, Ok(Ok(Some(ref l))) if l == want),
        "expected {want} from the browser script: {line:?}"
    );
}

/// The queue statistics over the API while a caller waits for nobody and
/// hangs up (abandoned), then on the wallboard in Chromium: a caller waits,
/// an agent comes, the call is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_statistics_count_waiting_abandoned_and_answered_callers_live_on_the_wallboard() {
    use tokio::io::AsyncBufReadExt;
    let d = desk(QUEUE).await;
    let boss = d.token("boss", "pwboss").await;
    let stats = || async {
        let v: Value = d.json("/api/v1/queues", &boss).await;
        v[0].clone()
    };
    let fresh = stats().await;
    assert_eq!(
        (fresh["number"].as_str(), fresh["waiting"].as_u64()),
        (Some("500"), Some(0))
    );
    assert_eq!(fresh["service_level_pct"], 100);

    // Nobody is logged in to answer: the caller waits, then hangs up.
    let call = tokio::spawn({
        let (sip, dir) = (d.sip, d.dir.path().to_path_buf());
        async move {
            let inf = common::injection_file(&dir, "abandon.csv", &["5559100".to_string()]);
            let inf = inf.display().to_string();
            let args = ["-inf", inf.as_str(), "-s", "500", "-d", "1500", "-m", "1"];
            common::sipp_scenario(sip, &dir, free_port(), "uac_queue.xml", &args).await
        }
    });
    let mut waited = Value::Null;
    for _ in 0..100 {
        let s = stats().await;
        if s["waiting"] == 1 {
            waited = s;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(waited["waiting"], 1, "the caller waits");
    assert!(call.await.expect("join").expect("sipp").status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = stats().await;
    assert_eq!(
        (after["waiting"].as_u64(), after["abandoned_today"].as_u64()),
        (Some(0), Some(1)),
        "{after}"
    );
    assert_eq!(
        (
            after["answered_today"].as_u64(),
            after["service_level_pct"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert!(
        after["average_wait_ms"].as_u64().is_some_and(|w| w >= 1000),
        "{after}"
    );

    // The wallboard: a caller waits, an agent registers and answers.
    let envs = [("S_EXT", "boss"), ("S_PW", "pwboss")];
    let (mut child, artifacts) = browser_script("wallboard.mjs", &d.base, &envs);
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    until_line(&mut lines, "READY").await;
    let caller = tokio::spawn({
        let (sip, dir) = (d.sip, d.dir.path().to_path_buf());
        async move {
            let inf = common::injection_file(&dir, "waits.csv", &["5559101".to_string()]);
            let inf = inf.display().to_string();
            let args = ["-inf", inf.as_str(), "-s", "500", "-d", "8000", "-m", "1"];
            common::sipp_scenario(sip, &dir, free_port(), "uac_queue.xml", &args).await
        }
    });
    until_line(&mut lines, "WAITING").await;
    let phone = agent_phone(&d, "1").await;
    let rest = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    browser_passed(child, &artifacts).await;
    let _ = rest.await;
    assert!(caller.await.expect("join").expect("sipp").status.success());
    assert!(phone.await.expect("join").status.success());
    let end = stats().await;
    assert_eq!(
        (
            end["answered_today"].as_u64(),
            end["abandoned_today"].as_u64()
        ),
        (Some(1), Some(1)),
        "{end}"
    );
    assert!(
        end["average_talk_ms"].as_u64().is_some_and(|t| t > 0),
        "{end}"
    );
}

/// A PCMU RTP packet carrying 160 bytes of `fill`.
fn rtp_packet(seq: u16, fill: u8) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend(std::iter::repeat_n(fill, 160));
    p
}

/// The next RTP packet on `sock` (within `wait`): its source and payload.
async fn next_rtp(
    sock: &tokio::net::UdpSocket,
    wait: Duration,
) -> Option<(std::net::SocketAddr, Vec<u8>)> {
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(wait, sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    (n > 12).then(|| (from, buf[12..n].to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn click_to_call_rings_my_phone_plays_ringback_while_the_target_rings_then_connects() {
    let d = desk("").await;
    let (agent_port, target_port) = (free_port(), free_port());
    register_phone(d.sip, d.dir.path(), agent_port, "user1000", "pw1000").await;
    register_phone(d.sip, d.dir.path(), target_port, "user1001", "pw1001").await;
    let agent_media = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let target_media = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let key = |s: &tokio::net::UdpSocket| s.local_addr().expect("addr").port().to_string();
    let (agent_rtp, target_rtp) = (key(&agent_media), key(&target_media));
    let phone = |port: u16, name: &str, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::sipp_scenario(d.sip, d.dir.path(), port, name, &args)
    };
    let agent_phone = phone(
        agent_port,
        "uas_answer_media_at.xml",
        ["-key", "rtp_port", &agent_rtp, "-m", "1"]
            .map(String::from)
            .to_vec(),
    );
    // The target rings for 3 s, then talks for 3 s and hangs up.
    let target_phone = phone(
        target_port,
        "uas_ring_answer_hangup.xml",
        ["-key", "rtp_port", &target_rtp, "-d", "3000", "-m", "1"]
            .map(String::from)
            .to_vec(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let agent = d.token("user1000", "pw1000").await;
    let r = d
        .http
        .post(format!("{}/api/v1/calls", d.base))
        .bearer_auth(&agent)
        .json(&json!({ "to": "user1001" }))
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);

    // My phone answered; while the target rings I hear the ringback tone:
    // 440 + 480 Hz, 2 s on (the "us" zone), in the codec my phone chose.
    let mut tone = Vec::new();
    let mut relay = None;
    while tone.len() < 8000 {
        let (from, payload) = next_rtp(&agent_media, Duration::from_secs(5))
            .await
            .expect("ringback RTP toward my phone");
        relay = Some(from);
        tone.extend(
            payload
                .iter()
                .map(|u| sipdesk::media::prompt::ulaw_to_linear(*u)),
        );
    }
    let relay = relay.expect("the relay's address");
    assert!(
        share_of(&tone, 440.0) > 0.3 && share_of(&tone, 480.0) > 0.3,
        "ringback 440 + 480 Hz: {} {}",
        share_of(&tone, 440.0),
        share_of(&tone, 480.0)
    );

    // My phone talks all along; once the target answers it hears me...
    let talking = tokio::spawn({
        let sock = std::sync::Arc::new(agent_media);
        let send = std::sync::Arc::clone(&sock);
        let talk = tokio::spawn(async move {
            for seq in 0..300u16 {
                let _ = send.send_to(&rtp_packet(seq, 0x11), relay).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        async move {
            // ...and I hear the target instead of the tone.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
            let mut heard_target = false;
            while tokio::time::Instant::now() < deadline && !heard_target {
                if let Some((_, payload)) = next_rtp(&sock, Duration::from_millis(500)).await {
                    heard_target = payload.iter().all(|b| *b == 0x55);
                }
            }
            talk.abort();
            heard_target
        }
    });
    let (from, payload) = next_rtp(&target_media, Duration::from_secs(8))
        .await
        .expect("the target hears my phone once it answers");
    assert!(payload.iter().all(|b| *b == 0x11));
    for seq in 0..50u16 {
        let _ = target_media.send_to(&rtp_packet(seq, 0x55), from).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        talking.await.expect("join"),
        "my phone hears the target, not the tone"
    );

    // The target hangs up: my phone gets the BYE; both SIPp phones pass.
    for (who, out) in [("agent", agent_phone.await), ("target", target_phone.await)] {
        let out = out.expect("join");
        assert!(
            out.status.success(),
            "{who}'s phone: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(d.pbx.media_ports_in_use(), 0);
}

/// user1000's phone: registered now, then SIPp answering `calls` calls.
async fn agent_phone(d: &Desk, calls: &str) -> tokio::task::JoinHandle<std::process::Output> {
    let phone_port = free_port();
    register_phone(d.sip, d.dir.path(), phone_port, "user1000", "pw1000").await;
    common::sipp_scenario(
        d.sip,
        d.dir.path(),
        phone_port,
        "uas_answer.xml",
        &["-m", calls],
    )
}

/// `number` calls queue 500 and user1000's phone (SIPp, registered now) answers.
async fn answered_queue_call(d: &Desk, number: &str) {
    let phone = agent_phone(d, "1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    customer_call(d, number).await;
    assert!(phone.await.expect("join").status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_stream_everything_to_supervisors_and_their_own_to_agents_while_running() {
    let d = desk(QUEUE).await;
    answered_queue_call(&d, "5559003").await;
    let (boss, agent, colleague) = (
        d.token("boss", "pwboss").await,
        d.token("user1000", "pw1000").await,
        d.token("user1001", "pw1001").await,
    );
    let export = |path: &str, token: &str| d.get(path, token).send();
    let json_of = |r: reqwest::Response| async move {
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.expect("a JSON array")
    };
    // The record and the CDR are written as the call ends: wait for the record.
    let mut records = json!([]);
    for _ in 0..100 {
        records = json_of(
            export("/api/v1/exports/records?format=json", &agent)
                .await
                .expect("get"),
        )
        .await;
        if records.as_array().is_some_and(|r| !r.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(records.as_array().map(Vec::len), Some(1), "{records}");
    assert_eq!(
        (records[0]["caller"].as_str(), records[0]["agent"].as_str()),
        (Some("5559003"), Some("user1000"))
    );
    let theirs = json_of(
        export("/api/v1/exports/records?format=json", &colleague)
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(
        theirs,
        json!([]),
        "a colleague's export holds only their own records"
    );
    let all = json_of(
        export("/api/v1/exports/records?format=json", &boss)
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(all, records);

    // CDRs: CSV by default, as a download.
    let r = export("/api/v1/exports/cdrs", &boss).await.expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"sipdesk-cdrs.csv\""
    );
    let csv = r.text().await.expect("csv");
    let mut lines = csv.lines();
    assert!(lines
        .next()
        .is_some_and(|h| h.starts_with("id,call_id,caller,callee,")));
    assert!(
        lines.any(|l| l.contains(",5559003,user1000,") && l.contains(",answered,")),
        "{csv}"
    );
    let cdrs = json_of(
        export("/api/v1/exports/cdrs?format=json", &boss)
            .await
            .expect("get"),
    )
    .await;
    assert!(cdrs
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["caller"] == "5559003")));
    let later = json_of(
        export("/api/v1/exports/cdrs?format=json&from=4102444800000", &boss)
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(later, json!([]), "nothing started after 2100");
    let mine = json_of(
        export("/api/v1/exports/cdrs?format=json", &agent)
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(mine, cdrs, "the agent answered the only call");
    let theirs = json_of(
        export("/api/v1/exports/cdrs?format=json", &colleague)
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(theirs, json!([]));
    for bad in ["format=xml", "from=5&to=5", "from=soon"] {
        let path = format!("/api/v1/exports/records?{bad}");
        let (status, body) = error_of(export(&path, &boss).await.expect("get")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"], "bad_request");
    }
}

/// The value of the metric line `name` (with its labels) in a scrape.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_registrations_calls_latency_queues_and_agents_to_supervisors_and_the_token() {
    let token = "prometheus-scrape-token-1";
    let d = desk(&format!("{QUEUE}[http]\nmetrics_token = \"{token}\"\n")).await;
    answered_queue_call(&d, "5559004").await;
    let (boss, agent) = (
        d.token("boss", "pwboss").await,
        d.token("user1000", "pw1000").await,
    );
    let _ws = d.stream(&agent, None).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // one rate sample or more

    let scrape = |t: &str| d.get("/metrics", t).send();
    let r = scrape(token).await.expect("scrape");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .is_ok_and(|c| c.starts_with("application/openmetrics-text")));
    let text = r.text().await.expect("text");
    assert_eq!(metric(&text, "sipdesk_registrations"), Some(1.0), "{text}");
    assert_eq!(metric(&text, "sipdesk_live_calls"), Some(0.0));
    assert!(
        metric(&text, "sipdesk_calls_started_total") >= Some(1.0),
        "{text}"
    );
    assert!(metric(&text, "sipdesk_calls_per_second").is_some());
    assert!(
        metric(&text, "sipdesk_routing_latency_seconds_count") >= Some(1.0),
        "{text}"
    );
    assert!(metric(&text, "sipdesk_routing_latency_seconds_bucket{le=\"+Inf\"}") >= Some(1.0));
    assert_eq!(
        metric(&text, "sipdesk_queue_waiting{queue=\"500\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "sipdesk_queue_answered_today{queue=\"500\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "sipdesk_agents{state=\"available\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "sipdesk_agents{state=\"offline\"}"),
        Some(3.0),
        "user1001, user1002, boss"
    );
    assert_eq!(metric(&text, "sipdesk_event_stream_clients"), Some(1.0));
    assert!(text.trim_end().ends_with("# EOF"));

    // A supervisor's session reads them too; an agent's does not; a wrong token is 401.
    assert_eq!(
        scrape(&boss).await.expect("scrape").status(),
        StatusCode::OK
    );
    let (status, body) = error_of(scrape(&agent).await.expect("scrape")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = error_of(scrape("prometheus-scrape-token-2").await.expect("scrape")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_agent_opens_a_record_for_a_call_the_pbx_opened_none_for_once_per_call() {
    let d = desk("").await;
    let agent = d.token("user1000", "pw1000").await;
    let colleague = d.token("user1001", "pw1001").await;
    let create = |token: &str, number: &str, body: Value| {
        d.http
            .post(format!("{}/api/v1/customers/{number}/records", d.base))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let body = json!({"call_id": "direct-1@phone", "notes": "asked for the invoice", "outcome": "resolved", "name": "Jiro Ito"});
    let r = create(&agent, "+81455550100", body.clone())
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::CREATED);
    let first: Value = r.json().await.expect("json");
    assert_eq!(
        (
            first["agent"].as_str(),
            first["call_id"].as_str(),
            first["name"].as_str()
        ),
        (Some("user1000"), Some("direct-1@phone"), Some("Jiro Ito"))
    );
    // The same call again (a retry, or more notes): the same record, written.
    let again =
        json!({"call_id": "direct-1@phone", "notes": "invoice sent", "outcome": "resolved"});
    let r = create(&agent, "+81455550100", again).await.expect("post");
    assert_eq!(r.status(), StatusCode::OK);
    let second: Value = r.json().await.expect("json");
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["notes"], "invoice sent");
    // A colleague's record of the same call is theirs; a record without a call is new.
    let r = create(&colleague, "+81455550100", body.clone())
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = create(
        &agent,
        "+81455550100",
        json!({"notes": "", "outcome": "resolved"}),
    )
    .await
    .expect("post");
    assert_eq!(r.status(), StatusCode::CREATED);
    let history: Value = d
        .json("/api/v1/customers/+81455550100/history", &agent)
        .await;
    assert_eq!(history.as_array().map(Vec::len), Some(3), "{history}");
    let found: Value = d.json("/api/v1/customers?q=ito", &agent).await;
    assert_eq!(found[0]["records"], 3, "{found}");
    for (number, body, field) in [
        (
            "anonymous",
            json!({"notes": "", "outcome": "resolved"}),
            "number",
        ),
        (
            "bad%20number",
            json!({"notes": "", "outcome": "resolved"}),
            "number",
        ),
        (
            "5550101",
            json!({"notes": "", "outcome": "maybe"}),
            "outcome",
        ),
        (
            "5550101",
            json!({"notes": "", "outcome": "resolved", "agent": "user1001"}),
            "agent",
        ),
    ] {
        let (status, e) = error_of(create(&agent, number, body).await.expect("post")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{number}: {e}");
        assert!(
            e["message"].as_str().is_some_and(|m| m.contains(field)),
            "{e}"
        );
    }
}

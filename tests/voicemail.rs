//! Voicemail with real peers: a SIPp caller reaches 4002, who has a mailbox
//! and no phone, hears the greeting, speaks (G.711 from a pcap) and ends
//! with `#` (RFC 4733); 4002's SIPp desk phone, subscribed to its
//! message-summary, sees the lamp light with `Voice-Message: 1/0`; the desk
//! API lists the message, plays its WAV, marks it heard (the lamp goes out)
//! and deletes it. The phone's own menu (`*97`, PIN by RFC 4733 digits)
//! plays a message and deletes it with 7. A caller who hangs up while
//! speaking is answered only once the message is on disk: `kill -9` right
//! after keeps it.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// 4002 has a mailbox (password pw4002); calls need no digest.
const MAILBOX: &str = "[calls]\nauthenticate = false\n\
    [[users]]\nextension = \"4002\"\npassword = \"pw4002\"\nvoicemail = true\nvoicemail_pin = \"1234\"\n";

/// The caller, 5550123, speaks for 2.5 s after the greeting; `scenario`
/// ends with `#` (uac_voicemail.xml) or a hang-up (uac_voicemail_hangup.xml).
fn leave_message(
    target: std::net::SocketAddr,
    dir: &Path,
    scenario: &str,
) -> tokio::task::JoinHandle<std::process::Output> {
    let inf = injection_file(dir, "caller.csv", &["5550123".to_string()]);
    let inf = inf.display().to_string();
    let args = ["-s", "4002", "-inf", &inf, "-m", "1", "-d", "2500"];
    sipp_scenario(target, dir, free_port(), scenario, &args)
}

/// 4002's mailbox over the API.
async fn mailbox(http: &reqwest::Client, base: &str, token: &str) -> Value {
    http.get(format!("{base}/api/v1/me/voicemail"))
        .bearer_auth(token)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json")
}

/// Message `id`'s recording: its status and bytes.
async fn audio(http: &reqwest::Client, base: &str, token: &str, id: u64) -> (u16, Vec<u8>) {
    let r = http
        .get(format!("{base}/api/v1/me/voicemail/{id}/audio"))
        .bearer_auth(token)
        .send()
        .await
        .expect("audio");
    let status = r.status().as_u16();
    (status, r.bytes().await.expect("bytes").to_vec())
}

/// The one message in `mailbox`, checked: from the caller, some seconds
/// long, new.
fn the_message(mailbox: &Value) -> u64 {
    let messages = mailbox["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1, "{mailbox}");
    let m = &messages[0];
    assert_eq!(
        (m["caller"].as_str(), m["caller_name"].as_str()),
        (Some("5550123"), Some("customer")),
        "{m}"
    );
    let ms = m["ms"].as_u64().unwrap_or(0);
    assert!((1000..8000).contains(&ms), "what the caller said: {ms} ms");
    assert_eq!(m["heard"], false);
    m["id"].as_u64().expect("id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_leaves_a_message_the_lamp_lights_and_the_desk_plays_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let users = [("4001".to_string(), "pw4001".to_string())];
    let (pbx, target) = embedded_pbx(dir.path(), &users, MAILBOX).await;
    let base = format!("http://{}", pbx.http_addr());
    let lamp = injection_file(dir.path(), "lamp.csv", &["4002;pw4002".to_string()]);
    let text = std::fs::read_to_string(scenario("subscribe_mwi.xml")).expect("scenario");
    let lamp_scenario = dir.path().join("lamp.xml");
    std::fs::write(
        &lamp_scenario,
        text.replacen("Messages-Waiting: yes", "Voice-Message: 1/0", 1),
    )
    .expect("write");
    let args: Vec<String> = [
        "-sf",
        &lamp_scenario.display().to_string(),
        "-inf",
        &lamp.display().to_string(),
        "-m",
        "1",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let phone = sipp_embedded(target, dir.path(), free_port(), args);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let caller = leave_message(target, dir.path(), "uac_voicemail.xml");
    ok(
        &caller.await.expect("join"),
        "the caller leaves a message, presses # and is hung up",
    );
    let http = reqwest::Client::new();
    let token = session_token(&http, &base, "4002", "pw4002").await;
    let listed = mailbox(&http, &base, &token).await;
    let id = the_message(&listed);
    assert_eq!(
        (listed["new"].as_u64(), listed["heard"].as_u64()),
        (Some(1), Some(0))
    );
    let (status, wav) = audio(&http, &base, &token, id).await;
    assert_eq!(status, 200);
    assert!(
        wav.starts_with(b"RIFF") && wav.len() > 44 + 16_000,
        "a WAV of over a second: {} bytes",
        wav.len()
    );

    // Someone without a mailbox has none to read.
    let other = session_token(&http, &base, "4001", "pw4001").await;
    let r = http
        .get(format!("{base}/api/v1/me/voicemail"))
        .bearer_auth(&other)
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.expect("json");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no mailbox"),
        "{body}"
    );

    // Heard: the lamp goes out (the phone's last NOTIFY); then deleted.
    let r = http
        .post(format!("{base}/api/v1/me/voicemail/{id}/heard"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("heard");
    assert_eq!(r.status(), 200);
    ok(
        &phone.await.expect("join"),
        "the lamp: nothing, Voice-Message 1/0, nothing once heard",
    );
    let r = http
        .delete(format!("{base}/api/v1/me/voicemail/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    let listed = mailbox(&http, &base, &token).await;
    assert_eq!(listed["messages"], serde_json::json!([]));
    assert_eq!(audio(&http, &base, &token, id).await.0, 404);
    assert!(settled(&pbx).await, "calls or media ports left over");
    pbx.shutdown().await.expect("shutdown");
}

#[test]
fn a_message_whose_caller_hung_up_survives_kill_9() {
    require("sipp");
    let dir = tempfile::tempdir().expect("tmp");
    let (port, http_port) = (free_port(), free_port());
    let users = [("4001".to_string(), "pw4001".to_string())];
    let conf = config_with(port, "[\"MD5\"]", &users, MAILBOX).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{http_port}\""),
    );
    let mut server = Server::start(dir.path(), port, &conf);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let caller = rt.block_on(async {
        leave_message(server.addr(), dir.path(), "uac_voicemail_hangup.xml")
            .await
            .expect("join")
    });
    ok(
        &caller,
        "the caller hangs up while speaking; its BYE is answered",
    );
    server.kill9();
    server.restart();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{http_port}");
        let token = session_token(&http, &base, "4002", "pw4002").await;
        let listed = mailbox(&http, &base, &token).await;
        let id = the_message(&listed);
        let (status, wav) = audio(&http, &base, &token, id).await;
        assert_eq!((status, wav.starts_with(b"RIFF")), (200, true));
    });
}

/// An embedded PBX whose 4002 has one message: its data directory, the PBX,
/// its SIP address and its desk's base URL.
async fn with_a_message() -> (
    tempfile::TempDir,
    sipdesk::Pbx,
    std::net::SocketAddr,
    String,
) {
    let dir = tempfile::tempdir().expect("tmp");
    let users = [("4001".to_string(), "pw4001".to_string())];
    let (pbx, target) = embedded_pbx(dir.path(), &users, MAILBOX).await;
    let caller = leave_message(target, dir.path(), "uac_voicemail.xml");
    ok(&caller.await.expect("join"), "the caller leaves a message");
    let base = format!("http://{}", pbx.http_addr());
    (dir, pbx, target, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desktop_plays_marks_and_deletes_a_message() {
    let (_dir, pbx, _, base) = with_a_message().await;
    let envs = [
        ("EXT", "4002"),
        ("PW", "pw4002"),
        ("CALLER", "customer (5550123)"),
    ];
    let (child, artifacts) = browser_script("voicemail.mjs", &base, &envs);
    browser_passed(child, &artifacts).await;
    pbx.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phone_menu_asks_the_pin_plays_the_message_and_deletes_it() {
    let (dir, pbx, target, base) = with_a_message().await;
    let http = reqwest::Client::new();
    let token = session_token(&http, &base, "4002", "pw4002").await;
    the_message(&mailbox(&http, &base, &token).await);

    let inf = injection_file(dir.path(), "menu.csv", &["4002;pw4002".to_string()]);
    let inf = inf.display().to_string();
    let menu = sipp_scenario(
        target,
        dir.path(),
        free_port(),
        "uac_menu.xml",
        &["-s", "*97", "-inf", &inf, "-m", "1"],
    );
    ok(
        &menu.await.expect("join"),
        "PIN, the message, 7, and the menu hangs up",
    );
    let listed = mailbox(&http, &base, &token).await;
    assert_eq!(
        listed["messages"],
        serde_json::json!([]),
        "deleted: {listed}"
    );
    assert!(settled(&pbx).await, "calls or media ports left over");
    pbx.shutdown().await.expect("shutdown");
}

/// `secs` of a 440 Hz tone as a WAV (8 kHz mono 16-bit PCM).
fn tone_wav(secs: u32) -> Vec<u8> {
    let samples: Vec<i16> = (0..secs * 8000)
        .map(|i| ((i as f32 * std::f32::consts::TAU * 440.0 / 8000.0).sin() * 8000.0) as i16)
        .collect();
    let data = (samples.len() * 2) as u32;
    let mut w = Vec::with_capacity(44 + data as usize);
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes()); // PCM
    w.extend_from_slice(&1u16.to_le_bytes()); // mono
    w.extend_from_slice(&8000u32.to_le_bytes());
    w.extend_from_slice(&16000u32.to_le_bytes());
    w.extend_from_slice(&2u16.to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data.to_le_bytes());
    for s in samples {
        w.extend_from_slice(&s.to_le_bytes());
    }
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_uploads_plays_and_removes_their_greeting() {
    let dir = tempfile::tempdir().expect("tmp");
    let users = [("4001".to_string(), "pw4001".to_string())];
    let (pbx, _) = embedded_pbx(dir.path(), &users, MAILBOX).await;
    let base = format!("http://{}", pbx.http_addr());
    let http = reqwest::Client::new();
    let token = session_token(&http, &base, "4002", "pw4002").await;
    let url = format!("{base}/api/v1/me/voicemail/greeting");
    let get = || http.get(&url).bearer_auth(&token).send();
    assert_eq!(get().await.expect("get").status(), 404, "the built-in one");
    let r = http
        .put(&url)
        .bearer_auth(&token)
        .body("not a wav")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.expect("json");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("the greeting:"),
        "{body}"
    );
    let r = http
        .put(&url)
        .bearer_auth(&token)
        .body(tone_wav(2))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let g: Value = r.json().await.expect("json");
    assert_eq!(g["ms"], 2000, "{g}");
    let r = get().await.expect("get");
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.expect("bytes").starts_with(b"RIFF"));
    let r = http
        .delete(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    assert_eq!(get().await.expect("get").status(), 404);
    pbx.shutdown().await.expect("shutdown");
}

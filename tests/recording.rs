//! Call recording on demand with real peers: a SIPp customer (5550123)
//! calls agent 4001, whose SIPp phone answers; both speak (G.711 from
//! SIPp's pcap). The agent's phone keys `*1` (RFC 4733): recording starts,
//! so the desk's start answers 409. The desk stops it (saved, both sides
//! mixed in one WAV) and starts another, which the caller's hang-up saves.
//! Both are listed under the customer with the call's CDR id and play as
//! WAV for the agent; another agent sees none of them, may not play them
//! and may not record the call; only a supervisor deletes one. On a full disk a recording stops, the
//! error is logged once, and the call goes on to its normal end.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const OFFICE: &str = "[calls]\nauthenticate = false\n";

async fn json(http: &reqwest::Client, url: String, token: &str) -> (u16, Value) {
    let r = http.get(url).bearer_auth(token).send().await.expect("get");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// POST (`on`) or DELETE on my call's recording: status and body.
async fn record(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    call: &str,
    on: bool,
) -> (u16, Value) {
    let url = format!("{base}/api/v1/me/calls/{call}/recording");
    let req = match on {
        true => http.post(url),
        false => http.delete(url),
    };
    let r = req.bearer_auth(token).send().await.expect("record");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The customer, 5550123, calls 4001 offering telephone-events too, and
/// talks (G.711 from SIPp's pcap) for `ms` once answered.
fn customer(
    target: std::net::SocketAddr,
    dir: &std::path::Path,
    ms: u32,
) -> tokio::task::JoinHandle<std::process::Output> {
    let text = std::fs::read_to_string(scenario("uac_call_rtp.xml")).expect("scenario");
    let offer = text
        .replacen(
            "m=audio [media_port] RTP/AVP 0 8\n",
            "m=audio [media_port] RTP/AVP 0 8 101\n      a=rtpmap:101 telephone-event/8000\n",
            1,
        )
        .replace("sip:caller@", "sip:5550123@");
    assert!(offer.contains("telephone-event"), "the offer gained it");
    let caller_xml = dir.join(format!("customer-{}.xml", free_port()));
    std::fs::write(&caller_xml, offer).expect("write");
    let args = ["-s", "4001", "-m", "1", "-d", &ms.to_string()].map(String::from);
    let mut all = vec!["-sf".to_string(), caller_xml.display().to_string()];
    all.extend(args);
    sipp_embedded(target, dir, free_port(), all)
}

/// 4001's phone, registered: it answers, speaks, and keys `*1` a second
/// in (uas_record_code.xml).
async fn agent_keying_the_code(
    target: std::net::SocketAddr,
    dir: &std::path::Path,
) -> tokio::task::JoinHandle<std::process::Output> {
    let phone = free_port();
    register_phone(target, dir, phone, "4001", "pw4001").await;
    sipp_scenario(target, dir, phone, "uas_record_code.xml", &["-m", "1"])
}

/// The loud share of a WAV's 16-bit samples (after its 44-byte header).
fn loud_share(wav: &[u8]) -> f64 {
    let samples: Vec<i16> = wav[44..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let loud = samples.iter().filter(|s| s.unsigned_abs() > 500).count();
    loud as f64 / samples.len().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_records_a_call_from_the_phone_and_the_desk_and_plays_it_from_the_history() {
    let dir = tempfile::tempdir().expect("tmp");
    let users = [
        ("4001".to_string(), "pw4001".to_string()),
        ("4002".to_string(), "pw4002".to_string()),
    ];
    let boss = "[[users]]\nextension = \"4009\"\npassword = \"pw4009\"\nrole = \"supervisor\"\n";
    let (pbx, target) = embedded_pbx(dir.path(), &users, &format!("{OFFICE}{boss}")).await;
    let base = format!("http://{}", pbx.http_addr());
    let agent = agent_keying_the_code(target, dir.path()).await;

    let caller = customer(target, dir.path(), 7000);

    let http = reqwest::Client::new();
    let token = session_token(&http, &base, "4001", "pw4001").await;
    let other = session_token(&http, &base, "4002", "pw4002").await;
    let mut call = None;
    for _ in 0..100 {
        let (_, calls) = json(&http, format!("{base}/api/v1/me/calls"), &token).await;
        call = calls
            .as_array()
            .and_then(|c| c.first())
            .filter(|c| c["state"] == "confirmed")
            .and_then(|c| c["call_id"].as_str())
            .map(str::to_string);
        if call.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let call = call.expect("the agent's call is connected");
    let (status, _) = record(&http, &base, &other, &call, true).await;
    assert_eq!(status, 404, "not 4002's call");

    // The phone keyed *1 about 1.3 s after answering.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = record(&http, &base, &token, &call, true).await;
    assert_eq!(status, 409, "the phone started it: {body}");
    assert!(
        body.to_string().contains("already being recorded"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (status, body) = record(&http, &base, &token, &call, false).await;
    assert_eq!(status, 200, "{body}");
    let first = body["id"].as_u64().expect("id");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = record(&http, &base, &token, &call, true).await;
    assert_eq!(status, 201, "{body}");
    let second = body["id"].as_u64().expect("id");

    ok(&caller.await.expect("join"), "the customer's call");
    ok(&agent.await.expect("join"), "the agent's phone");
    let url = format!("{base}/api/v1/customers/5550123/recordings");
    let mut listed = Value::Null;
    for _ in 0..100 {
        listed = json(&http, url.clone(), &token).await.1;
        if listed.as_array().is_some_and(|l| l.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let list = listed.as_array().expect("a list");
    assert_eq!(list.len(), 2, "{listed}");
    let ids: Vec<u64> = list.iter().filter_map(|r| r["id"].as_u64()).collect();
    assert_eq!(ids, [first, second], "oldest first");
    for r in list {
        assert_eq!(r["agent"], "4001");
        assert_eq!(r["customer"], "5550123");
        assert_eq!(r["call_id"].as_str(), Some(call.as_str()));
        assert_eq!(r["cdr"], list[0]["cdr"], "one call, one CDR");
    }
    let ms = |i: usize| list[i]["ms"].as_u64().unwrap_or(0);
    assert!((1500..5000).contains(&ms(0)), "the phone's: {} ms", ms(0));
    assert!(
        (1500..6000).contains(&ms(1)),
        "until the hang-up: {} ms",
        ms(1)
    );

    for id in [first, second] {
        let r = http
            .get(format!("{url}/{id}/audio"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("audio");
        assert_eq!(r.status().as_u16(), 200);
        let wav = r.bytes().await.expect("bytes");
        assert!(wav.starts_with(b"RIFF") && wav.len() > 44 + 16_000, "a WAV");
        let loud = loud_share(&wav);
        assert!(loud > 0.3, "both sides' speech: {loud:.2} of it loud");
        let denied = http
            .get(format!("{url}/{id}/audio"))
            .bearer_auth(&other)
            .send()
            .await
            .expect("audio");
        assert_eq!(denied.status().as_u16(), 404, "not 4002's recording");
    }
    let (status, theirs) = json(&http, url.clone(), &other).await;
    assert_eq!((status, theirs), (200, Value::Array(Vec::new())));

    // Only a supervisor deletes a recording: its record, then its WAV.
    let delete = |token: String, id: u64| {
        let url = format!("{url}/{id}");
        let http = http.clone();
        async move {
            let r = http.delete(url).bearer_auth(token).send().await;
            r.expect("delete").status().as_u16()
        }
    };
    assert_eq!(delete(token.clone(), first).await, 403, "not an agent");
    let supervisor = session_token(&http, &base, "4009", "pw4009").await;
    let (_, all) = json(&http, url.clone(), &supervisor).await;
    assert_eq!(
        all.as_array().map(Vec::len),
        Some(2),
        "a supervisor sees all"
    );
    assert_eq!(delete(supervisor.clone(), first).await, 204);
    assert_eq!(delete(supervisor.clone(), first).await, 404, "gone");
    let (_, left) = json(&http, url.clone(), &token).await;
    let left: Vec<u64> = left
        .as_array()
        .map(|l| l.iter().filter_map(|r| r["id"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(left, [second]);
    let gone = http
        .get(format!("{url}/{first}/audio"))
        .bearer_auth(&supervisor)
        .send()
        .await
        .expect("audio");
    assert_eq!(gone.status().as_u16(), 404);
    let wav = |id: u64| pbx.data_dir().join("voice").join(format!("{id}.wav"));
    assert!(!wav(first).exists(), "its WAV is removed");
    assert!(wav(second).exists(), "the other one's is kept");
    assert!(settled(&pbx).await, "no call or media port left");
    pbx.shutdown().await.expect("shutdown");
    let archive = sipdesk::Archive::open(&dir.path().join("data")).expect("archive");
    let cdrs = archive.cdrs().expect("cdrs");
    assert_eq!(cdrs.len(), 1);
    assert_eq!(list[0]["cdr"].as_u64(), Some(cdrs[0].id), "the call's CDR");
}

/// The desktop in Chromium: 4001 (in a group, so the desk follows its
/// calls) takes a customer's call, records it with the pop's button, stops
/// it, and plays it from the pop's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desktops_record_button_records_the_call_and_the_history_plays_it() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().expect("tmp");
    let users = [("4001".to_string(), "pw4001".to_string())];
    let extra =
        format!("{OFFICE}[[groups]]\nname = \"support\"\nmembers = [{{ extension = \"4001\" }}]\n");
    let (pbx, target) = embedded_pbx(dir.path(), &users, &extra).await;
    let base = format!("http://{}", pbx.http_addr());
    let phone = free_port();
    register_phone(target, dir.path(), phone, "4001", "pw4001").await;
    let agent = sipp_scenario(target, dir.path(), phone, "uas_answer.xml", &["-m", "1"]);
    let envs = [("EXT", "4001"), ("PW", "pw4001"), ("CALLER", "5550123")];
    let (mut child, artifacts) = browser_script("recording.mjs", &base, &envs);
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
    assert!(
        matches!(ready, Ok(Ok(Some(ref l))) if l == "READY"),
        "{ready:?}"
    );
    let rest = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let caller = customer(target, dir.path(), 9000);
    browser_passed(child, &artifacts).await;
    let _ = rest.await;
    ok(&caller.await.expect("join"), "the customer's call");
    ok(&agent.await.expect("join"), "the agent's phone");
    assert!(settled(&pbx).await, "no call or media port left");
}

/// The voice directory is a 8 KiB disk of its own: the recording the phone
/// starts (`*1`) fills it within its first second of audio. The recording
/// stops there (logged once, reported as not saved), the call goes on until
/// the customer hangs up, its CDR is written, and the PBX still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_on_a_full_disk_stops_and_the_call_goes_on() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let users = [("4001".to_string(), "pw4001".to_string())];
    let conf = config_with(port, "[\"MD5\"]", &users, OFFICE);
    let mut server = Server::start_with_voice_disk(dir.path(), port, &conf, 8192);
    let target = server.addr();
    let agent = agent_keying_the_code(target, dir.path()).await;
    let caller = customer(target, dir.path(), 5000);
    ok(
        &caller.await.expect("join"),
        "the customer's call goes on to its end",
    );
    ok(&agent.await.expect("join"), "the agent's phone");
    let log = server.log();
    assert_eq!(
        log.matches("No space left on device").count(),
        1,
        "logged once: {log}"
    );
    assert!(log.contains("call recording not saved"), "{log}");
    assert!(
        options_ping(target, Duration::from_secs(2)).is_some(),
        "the PBX serves"
    );
    server.stop();
    let cdrs = server.cdrs();
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    assert_eq!(cdrs[0]["disposition"], "answered");
    let talked =
        cdrs[0]["end_ms"].as_u64().unwrap_or(0) - cdrs[0]["answer_ms"].as_u64().unwrap_or(0);
    assert!(talked >= 4000, "talked to the end: {cdrs:?}");
}

//! Real audio end to end: two baresip instances register with digest auth, alice
//! calls bob (authenticated INVITE, bob auto-answers), each plays a tone from a WAV
//! file and records what it receives; the recordings must carry the other side's
//! tone at the right frequency, so the media really crossed the PBX's relay. And a
//! queue caller hears the queue's greeting, the built-in music, then the agent.

mod common;

use common::baresip::*;
use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn two_baresip_phones_hear_each_other_through_the_pbx() {
    require("baresip");
    require("sox");
    let tmp = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let users = vec![
        ("3001".to_string(), "pw3001".to_string()),
        ("3002".to_string(), "pw3002".to_string()),
    ];
    // MD5 only: baresip 1.0 gives up when any SHA-256 challenge is offered.
    let mut server = Server::start(
        tmp.path(),
        port,
        &config_with(port, "[\"MD5\"]", &users, ""),
    );
    let rtp_base = 30_000 + (port % 20) * 100;
    let alice = baresip_dir(
        tmp.path(),
        "alice",
        free_port(),
        rtp_base,
        "3001",
        port,
        (440, 6),
    );
    let bob = baresip_dir(
        tmp.path(),
        "bob",
        free_port(),
        rtp_base + 40,
        "3002",
        port,
        (1000, 6),
    );

    let mut bob_ua = baresip(&bob, 25, &[]);
    wait_registered(&bob);
    let dial = format!("/dial sip:3002@127.0.0.1:{port}");
    let mut alice_ua = baresip(&alice, 15, &["-e", &dial]);
    let _ = alice_ua.wait();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(bob_ua.id().to_string())
        .status();
    let _ = bob_ua.wait();
    server.stop();

    let logs = || {
        format!(
            "--- alice ---\n{}\n--- bob ---\n{}\n--- sipdesk ---\n{}",
            std::fs::read_to_string(alice.join("log")).unwrap_or_default(),
            std::fs::read_to_string(bob.join("log")).unwrap_or_default(),
            server.log()
        )
    };
    for (who, dir, expect) in [("alice", &alice, 1000.0), ("bob", &bob, 440.0)] {
        let Some(wav) = received(dir) else {
            panic!("{who} recorded nothing\n{}", logs())
        };
        let (len, freq) = measure(&wav);
        assert!(
            len >= 4.0 && freq > 0.9 * expect && freq < 1.1 * expect,
            "{who} received {len} s at {freq} Hz, expected {expect} Hz\n{}",
            logs()
        );
    }
}

#[test]
fn a_queue_caller_hears_the_greeting_the_music_then_the_agent() {
    require("baresip");
    require("sox");
    let tmp = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let users = vec![
        ("3101".to_string(), "pw3101".to_string()),
        ("3102".to_string(), "pw3102".to_string()),
        ("3103".to_string(), "pw3103".to_string()),
    ];
    // The queue's greeting: 1.5 s of 800 Hz, as an admin's 16-bit 8 kHz WAV.
    let greeting = tmp.path().join("greeting.wav");
    let ok = Command::new("sox")
        .args(["-n", "-r", "8000", "-c", "1", "-b", "16"])
        .arg(&greeting)
        .args(["synth", "1.5", "sine", "800", "vol", "0.5"])
        .status()
        .expect("sox");
    assert!(ok.success());
    // Nobody who serves queue 500 is registered: after the greeting the caller
    // hears the built-in music until 4 s, then overflows to extension 3102, who
    // answers.
    let queue = format!(
        "[[groups]]\nname = \"support\"\nmembers = [{{ extension = \"3103\" }}]\n\
         [[queues]]\nnumber = \"500\"\ngroups = [\"support\"]\nmax_wait_secs = 4\n\
         overflow_to = \"3102\"\nannouncement = \"{}\"\n",
        greeting.display()
    );
    let mut server = Server::start(
        tmp.path(),
        port,
        &config_with(port, "[\"MD5\"]", &users, &queue),
    );
    let rtp_base = 30_000 + (port % 20) * 100;
    let caller = baresip_dir(
        tmp.path(),
        "caller",
        free_port(),
        rtp_base,
        "3101",
        port,
        (440, 20),
    );
    let agent = baresip_dir(
        tmp.path(),
        "agent",
        free_port(),
        rtp_base + 40,
        "3102",
        port,
        (1000, 20),
    );
    let mut agent_ua = baresip(&agent, 25, &[]);
    wait_registered(&agent);
    let dial = format!("/dial sip:500@127.0.0.1:{port}");
    let mut caller_ua = baresip(&caller, 13, &["-e", &dial]);
    let _ = caller_ua.wait();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(agent_ua.id().to_string())
        .status();
    let _ = agent_ua.wait();
    server.stop();
    let logs = || {
        format!(
            "--- caller ---\n{}\n--- agent ---\n{}\n--- sipdesk ---\n{}",
            std::fs::read_to_string(caller.join("log")).unwrap_or_default(),
            std::fs::read_to_string(agent.join("log")).unwrap_or_default(),
            server.log()
        )
    };
    let Some(heard) = received(&caller) else {
        panic!("the caller recorded nothing\n{}", logs())
    };
    // The greeting's 800 Hz; the music, an arpeggio between 175 and 525 Hz; then
    // the agent's 1 kHz.
    let (len, hello) = measure_part(&heard, 0.2, 1.0);
    assert!(
        len >= 0.9 && hello > 720.0 && hello < 880.0,
        "greeting: {len} s at {hello} Hz\n{}",
        logs()
    );
    let (len, music) = measure_part(&heard, 2.0, 1.5);
    assert!(
        len >= 1.4 && (150.0..600.0).contains(&music),
        "music: {len} s at {music} Hz\n{}",
        logs()
    );
    let (len, voice) = measure_part(&heard, 6.0, 3.0);
    assert!(
        len >= 2.9 && voice > 900.0 && voice < 1100.0,
        "agent: {len} s at {voice} Hz\n{}",
        logs()
    );
    let caller_log = std::fs::read_to_string(caller.join("log")).unwrap_or_default();
    assert!(
        !caller_log.contains("SSRC changed") && !caller_log.contains("discard old frame"),
        "the agent's audio continues the music's RTP stream\n{}",
        logs()
    );
    let Some(agent_heard) = received(&agent) else {
        panic!("the agent recorded nothing\n{}", logs())
    };
    let (len, freq) = measure(&agent_heard);
    assert!(
        len >= 3.0 && freq > 400.0 && freq < 480.0,
        "the agent heard {len} s at {freq} Hz\n{}",
        logs()
    );
}

#[test]
fn a_blind_transfer_from_baresip_connects_the_caller_to_the_target_with_audio() {
    require("baresip");
    require("sox");
    let tmp = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let users: Vec<(String, String)> = ["3201", "3202", "3203"]
        .iter()
        .map(|u| (u.to_string(), format!("pw{u}")))
        .collect();
    let mut server = Server::start(
        tmp.path(),
        port,
        &config_with(port, "[\"MD5\"]", &users, ""),
    );
    let rtp_base = 30_000 + (port % 20) * 100;
    // alice calls bob; bob transfers her to carol with /transfer (sent over
    // baresip's ctrl_tcp once the call is up); alice and carol hear each other.
    let alice = baresip_dir(
        tmp.path(),
        "alice",
        free_port(),
        rtp_base,
        "3201",
        port,
        (440, 20),
    );
    let bob = baresip_dir(
        tmp.path(),
        "bob",
        free_port(),
        rtp_base + 20,
        "3202",
        port,
        (700, 20),
    );
    let carol = baresip_dir(
        tmp.path(),
        "carol",
        free_port(),
        rtp_base + 40,
        "3203",
        port,
        (1000, 20),
    );
    let ctrl = free_port();
    let mut config = std::fs::read_to_string(bob.join("config")).expect("config");
    config.push_str(&format!(
        "module_app ctrl_tcp.so\nctrl_tcp_listen 127.0.0.1:{ctrl}\n"
    ));
    std::fs::write(bob.join("config"), config).expect("config");

    let mut bob_ua = baresip(&bob, 25, &[]);
    let mut carol_ua = baresip(&carol, 25, &[]);
    wait_registered(&bob);
    wait_registered(&carol);
    let dial = format!("/dial sip:3202@127.0.0.1:{port}");
    let mut alice_ua = baresip(&alice, 14, &["-e", &dial]);
    let established = wait_for(&bob, "Call established", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(800));
    let transfer = serde_json::json!({
        "command": "transfer",
        "params": format!("sip:3203@127.0.0.1:{port}"),
        "token": "t1",
    })
    .to_string();
    let sent = std::net::TcpStream::connect(("127.0.0.1", ctrl)).and_then(|mut s| {
        use std::io::Write;
        s.write_all(format!("{}:{},", transfer.len(), transfer).as_bytes())?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    });
    let _ = alice_ua.wait();
    for ua in [&mut bob_ua, &mut carol_ua] {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(ua.id().to_string())
            .status();
        let _ = ua.wait();
    }
    server.stop();
    let logs = || {
        format!(
            "--- alice ---\n{}\n--- bob ---\n{}\n--- carol ---\n{}\n--- sipdesk ---\n{}",
            std::fs::read_to_string(alice.join("log")).unwrap_or_default(),
            std::fs::read_to_string(bob.join("log")).unwrap_or_default(),
            std::fs::read_to_string(carol.join("log")).unwrap_or_default(),
            server.log()
        )
    };
    assert!(established, "bob never answered\n{}", logs());
    assert!(sent.is_ok(), "bob's ctrl_tcp: {sent:?}\n{}", logs());
    assert!(server.log().contains("transferred"), "{}", logs());
    let Some(carol_heard) = received(&carol) else {
        panic!("carol recorded nothing\n{}", logs())
    };
    let (len, freq) = measure(&carol_heard);
    assert!(
        len >= 6.0 && freq > 400.0 && freq < 480.0,
        "carol heard {len} s at {freq} Hz, expected alice's 440 Hz\n{}",
        logs()
    );
    let Some(alice_heard) = received(&alice) else {
        panic!("alice recorded nothing\n{}", logs())
    };
    let (len, freq) = measure_part(&alice_heard, 6.0, 4.0);
    assert!(
        len >= 3.9 && freq > 900.0 && freq < 1100.0,
        "after the transfer alice heard {len} s at {freq} Hz, expected carol's 1 kHz\n{}",
        logs()
    );
}

/// Waits (up to `limit`) until the baresip log in `dir` contains `text`.
fn wait_for(dir: &std::path::Path, text: &str, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        if log.contains(text) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

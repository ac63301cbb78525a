//! The registrar against real peers: SIPp over UDP and TCP, and an independent
//! digest client for SHA-256. Each test starts its own PBX on 127.0.0.1.

mod common;

use common::*;
use std::time::Duration;

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Runs `scenario_file` once per row (`extension;password`), `rate` per second,
/// and asserts that every run succeeded.
fn each_user(
    server: &Server,
    dir: &tempfile::TempDir,
    scenario_file: &str,
    rows: &[String],
    rate: &str,
    extra: &[&str],
    what: &str,
) {
    let inf = injection_file(
        dir.path(),
        &format!("{}.csv", scenario_file.trim_end_matches(".xml")),
        rows,
    );
    let (sf, count) = (scenario(scenario_file), rows.len().to_string());
    let mut args = vec![
        "-sf",
        sf.as_str(),
        "-inf",
        inf.to_str().unwrap_or_default(),
        "-r",
        rate,
        "-m",
        count.as_str(),
        "-trace_err",
    ];
    args.extend_from_slice(extra);
    let out = sipp(server, &args, Duration::from_secs(60));
    assert_sipp_ok(&out, what, server);
}

fn rows(users: &[(String, String)]) -> Vec<String> {
    users.iter().map(|(u, p)| format!("{u};{p}")).collect()
}

#[test]
fn two_hundred_users_register_with_md5_digest_over_udp_and_tcp_and_are_fetchable() {
    let dir = temp();
    let port = free_port();
    let users = users(200);
    let server = Server::start(dir.path(), port, &config(port, "[\"MD5\"]", &users));
    each_user(
        &server,
        &dir,
        "register_auth.xml",
        &rows(&users),
        "100",
        &[],
        "200 users over UDP",
    );

    // Every user now has a binding, listed by a fetching REGISTER (no Contact).
    each_user(
        &server,
        &dir,
        "register_fetch.xml",
        &rows(&users),
        "100",
        &[],
        "fetch 200 bindings",
    );

    // The same over TCP (RFC 3261 §18.3 framing), for 50 of them.
    each_user(
        &server,
        &dir,
        "register_auth.xml",
        &rows(&users[..50]),
        "50",
        &["-t", "t1"],
        "50 users over TCP",
    );
}

#[test]
fn two_hundred_users_register_with_sha256_and_with_md5_when_both_are_offered() {
    require("python3");
    let dir = temp();
    let port = free_port();
    let users = users(200);
    let server = Server::start(
        dir.path(),
        port,
        &config(port, "[\"SHA-256\", \"MD5\"]", &users),
    );
    let file = injection_file(dir.path(), "users.txt", &rows(&users));
    for alg in ["SHA-256", "MD5"] {
        let out = std::process::Command::new("timeout")
            .args([
                "120",
                "python3",
                &format!("{PEERS}/digest_register.py"),
                "127.0.0.1",
                &port.to_string(),
            ])
            .arg(&file)
            .arg(alg)
            .output()
            .expect("run digest client");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("registered=200 failed=0"),
            "{alg}: {text}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
    }
}

#[test]
fn a_wrong_password_is_refused_and_creates_no_binding() {
    let dir = temp();
    let port = free_port();
    let users = users(20);
    let server = Server::start(dir.path(), port, &config(port, "[\"MD5\"]", &users));
    let wrong: Vec<String> = users.iter().map(|(u, _)| format!("{u};not-{u}")).collect();
    each_user(
        &server,
        &dir,
        "register_wrong_password.xml",
        &wrong,
        "20",
        &[],
        "wrong passwords refused",
    );
    // An unknown user gets exactly the same treatment.
    let ghost = ["ghost;whatever".to_string()];
    each_user(
        &server,
        &dir,
        "register_wrong_password.xml",
        &ghost,
        "1",
        &[],
        "unknown user refused",
    );
    each_user(
        &server,
        &dir,
        "register_fetch_none.xml",
        &rows(&users),
        "20",
        &[],
        "no bindings after wrong passwords",
    );
}

#[test]
fn bindings_acknowledged_before_kill_9_survive_the_restart() {
    let dir = temp();
    let port = free_port();
    let users = users(100);
    let mut server = Server::start(dir.path(), port, &config(port, "[\"MD5\"]", &users));
    each_user(
        &server,
        &dir,
        "register_auth.xml",
        &rows(&users),
        "200",
        &[],
        "register before the crash",
    );
    // Every 200 OK seen by SIPp was sent after the flush: kill at once.
    server.restart();
    each_user(
        &server,
        &dir,
        "register_fetch.xml",
        &rows(&users),
        "100",
        &[],
        "bindings after kill -9 and restart",
    );
}

#[test]
fn after_a_burst_of_malformed_datagrams_options_is_still_answered() {
    let dir = temp();
    let port = free_port();
    let server = Server::start(dir.path(), port, &config(port, "[\"MD5\"]", &users(1)));
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let garbage: Vec<Vec<u8>> = vec![
        vec![0xff; 1500],
        b"INVITE sip:x SIP/2.0\r\nVia: broken\r\n\r\n".to_vec(),
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKnothing\r\nCSeq: 1 INVITE\r\n\r\n".to_vec(),
        b"REGISTER sip:x SIP/2.0\r\nContent-Length: 99999\r\n\r\n".to_vec(),
        b"\x00\x01\x02SIP/2.0".to_vec(),
        vec![b'A'; 65_000],
        b"OPTIONS sip:x SIP/2.0\r\n".repeat(50),
    ];
    // 20 000 datagrams, bounded in count; the server must neither crash nor stall.
    for i in 0..20_000usize {
        let _ = sock.send_to(&garbage[i % garbage.len()], server.addr());
    }
    let mut answered = false;
    for _ in 0..50 {
        if options_ping(server.addr(), Duration::from_millis(200)).as_deref()
            == Some("SIP/2.0 200 OK")
        {
            answered = true;
            break;
        }
    }
    assert!(
        answered,
        "no 200 to OPTIONS after the burst; log:\n{}",
        server.log()
    );
    let out = sipp(
        &server,
        &[
            "-sf",
            &scenario("options.xml"),
            "-m",
            "20",
            "-r",
            "20",
            "-trace_err",
        ],
        Duration::from_secs(30),
    );
    assert_sipp_ok(&out, "OPTIONS after the burst", &server);
    let log = server.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("dropped unreadable"))
        .count();
    assert!(
        lines < 100,
        "malformed input must not flood the log ({lines} lines)"
    );
}

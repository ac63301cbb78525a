//! Trunks against a real provider: Kamailio (Debian package; the peer lab's
//! registrar with digest) plays the carrier on 127.0.0.5. sipdesk registers
//! with it as a UAC, answering its digest challenge, and a call Kamailio routes
//! to the trunk's account reaches sipdesk through that registration; a wrong
//! password takes the trunk down once, without a tight loop.

mod common;

use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kamailio as the provider, with one account: office / s3cret.
struct Carrier {
    child: Child,
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Carrier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn carrier() -> Carrier {
    require("kamailio");
    let dir = tempfile::tempdir().expect("tempdir");
    let addr: std::net::SocketAddr = format!("127.0.0.5:{}", free_port()).parse().expect("addr");
    let db = dir.path().join("kamailio/db");
    std::fs::create_dir_all(&db).expect("db dir");
    let cfg = include_str!("peers/kamailio-carrier.cfg")
        .replace("LISTEN_ADDR", &addr.to_string())
        .replace("text://./kamailio/db", &format!("text://{}", db.display()));
    std::fs::write(dir.path().join("kamailio/kamailio.cfg"), cfg).expect("cfg");
    std::fs::write(
        db.join("version"),
        "id(int,auto) table_name(string) table_version(int)\n1:version:1\n2:subscriber:7\n",
    )
    .expect("version");
    std::fs::write(
        db.join("subscriber"),
        "id(int,auto) username(string) domain(string) password(string) ha1(string,null) ha1b(string,null)\n1:office:127.0.0.5:s3cret::\n",
    )
    .expect("subscriber");
    let log = std::fs::File::create(dir.path().join("kamailio.log")).expect("log");
    let child = Command::new("kamailio")
        .args([
            "-f",
            "kamailio/kamailio.cfg",
            "-DD",
            "-E",
            "-m",
            "64",
            "-M",
            "8",
            "-n",
            "1",
        ])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("kamailio");
    let c = Carrier { child, addr, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while options_ping(c.addr, Duration::from_millis(200)).is_none() {
        assert!(
            Instant::now() < deadline,
            "kamailio does not answer: {}",
            c.log()
        );
    }
    c
}

impl Carrier {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kamailio.log")).unwrap_or_default()
    }
}

/// The PBX with a trunk to `carrier` for the account office / `password`.
fn pbx_on_trunk(carrier: &Carrier, password: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let trunk = format!(
        "[[trunks]]\nname = \"carrier\"\nhost = \"127.0.0.5\"\nport = {}\nusername = \"office\"\npassword = \"{password}\"\nexpires = 60\n",
        carrier.addr.port()
    );
    let server = Server::start(
        dir.path(),
        port,
        &config_with(port, "[\"MD5\"]", &users(2), &trunk),
    );
    (dir, server)
}

/// Waits until the PBX's log has `line` (10 s).
fn wait_for_log(server: &Server, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains(line) {
        assert!(
            Instant::now() < deadline,
            "no \"{line}\" in:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_pbx_registers_with_the_providers_digest_and_calls_for_its_account_reach_it() {
    let carrier = carrier();
    let (dir, server) = pbx_on_trunk(&carrier, "s3cret");
    wait_for_log(&server, "trunk up: registered");
    // Kamailio routes a call for the account to sipdesk's contact; sipdesk
    // answers it (an unauthenticated INVITE to no extension of ours: 407), and
    // the answer comes back through the carrier.
    let path = dir.path().join("uac_expect_407.xml");
    let text = std::fs::read_to_string(scenario("uac_expect_final.xml")).expect("scenario");
    std::fs::write(&path, text.replace("[final]", "407")).expect("write");
    let out = Command::new("timeout")
        .args([
            "30",
            "sipp",
            &carrier.addr.to_string(),
            "-i",
            "127.0.0.1",
            "-p",
        ])
        .arg(free_port().to_string())
        .args([
            "-sf",
            path.to_str().unwrap_or_default(),
            "-s",
            "office",
            "-m",
            "1",
            "-nostdin",
        ])
        .args(["-timeout", "20s", "-timeout_error", "-trace_err"])
        .current_dir(dir.path())
        .output()
        .expect("sipp");
    assert!(
        out.status.success(),
        "the call through the carrier reached sipdesk: {}\n--- kamailio ---\n{}\n--- sipdesk ---\n{}",
        String::from_utf8_lossy(&out.stdout).lines().rev().take(30).collect::<Vec<_>>().join("\n"),
        carrier.log(),
        server.log()
    );
}

#[test]
fn a_wrong_password_takes_the_trunk_down_once_and_it_retries_with_a_backoff() {
    let carrier = carrier();
    let (_dir, server) = pbx_on_trunk(&carrier, "wrong");
    wait_for_log(&server, "trunk down");
    std::thread::sleep(Duration::from_secs(3));
    let log = server.log();
    assert!(log.contains("credentials refused"), "{log}");
    assert_eq!(
        log.matches("trunk down").count(),
        1,
        "one line per state change: {log}"
    );
    assert!(!log.contains("trunk up"), "{log}");
}

//! Trunks against a real provider: Kamailio (Debian package; the peer lab's
//! registrar with digest, plus routing to an "outside world") plays the
//! carrier on 127.0.0.5 (and a second one on 127.0.0.7), and SIPp on
//! 127.0.0.6 plays the outside world behind it. sipdesk registers with the
//! carrier as a UAC; customers calling the office's number reach the queue's
//! agent, by their E.164 number whatever format the carrier sends; extensions
//! dial national numbers out through the carrier, which challenges the
//! INVITE; a dead carrier is failed over; and calls nobody may make never
//! reach the carrier at all.

mod common;

use common::baresip::*;
use common::carrier::*;
use common::*;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the outside world (SIPp behind the carrier) lives.
const WORLD: &str = "127.0.0.6";

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

/// A `[[trunks]]` table for the office's account at `carrier` (Japanese
/// numbering), with more keys.
fn trunk(name: &str, carrier: &Carrier, more: &str) -> String {
    format!(
        "[[trunks]]\nname = \"{name}\"\nhost = \"{}\"\nport = {}\nusername = \"office\"\npassword = \"s3cret\"\n\
         expires = 60\ncountry_code = \"81\"\nnational_prefix = \"0\"\ninternational_prefix = \"010\"\n{more}",
        carrier.addr.ip(),
        carrier.addr.port()
    )
}

/// The national and international routes over `trunks`.
fn routes(trunks: &str) -> String {
    format!(
        "[[routes]]\nname = \"national\"\npattern = \"0[1-9][0-9]{{8,9}}\"\nclass = \"national\"\ntrunks = {trunks}\n\
         [[routes]]\nname = \"international\"\npattern = \"010[1-9][0-9]{{6,14}}\"\nclass = \"international\"\ntrunks = {trunks}\n"
    )
}

/// An embedded PBX with these users (password pw<ext>) and tables; waits
/// until each of `trunks` is registered.
async fn office(
    dir: &std::path::Path,
    users: &[&str],
    extra: &str,
    trunks: &[&str],
) -> (sipdesk::Pbx, SocketAddr) {
    // The PBX's log lines go with the test's output (shown when it fails).
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
    let users: Vec<(String, String)> = users
        .iter()
        .map(|u| (u.to_string(), format!("pw{u}")))
        .collect();
    let (pbx, target) = embedded_pbx(dir, &users, extra).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    for t in trunks {
        while !pbx.trunk_registered(t) {
            assert!(Instant::now() < deadline, "trunk {t} does not register");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    (pbx, target)
}

/// The outside world: a SIPp UAS on 127.0.0.6 running `scenario_name` once.
fn world(
    dir: &std::path::Path,
    port: u16,
    scenario_name: &str,
    extra: &[&str],
) -> tokio::task::JoinHandle<std::process::Output> {
    let mut args = vec![
        "-sf".to_string(),
        scenario(scenario_name),
        "-m".into(),
        "1".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let to: SocketAddr = "127.0.0.5:5060".parse().expect("addr");
    sipp_embedded_from(WORLD, to, dir, port, args)
}

/// SIPp from `ip` calling `number` at `to` once with the scenario at `path`
/// (and more arguments).
async fn call_from(
    ip: &str,
    to: SocketAddr,
    dir: &std::path::Path,
    path: &str,
    number: &str,
    more: &[String],
) -> std::process::Output {
    let mut args: Vec<String> = ["-sf", path, "-s", number, "-m", "1"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.extend(more.iter().cloned());
    sipp_embedded_from(ip, to, dir, free_port(), args)
        .await
        .expect("join")
}

/// A customer (on 127.0.0.6) calling the office's number `did` through
/// `carrier` as `caller`, talking `talk_ms` once answered.
async fn customer(
    dir: &std::path::Path,
    carrier: &Carrier,
    caller: &str,
    did: &str,
    talk_ms: u64,
) -> std::process::Output {
    let inf = injection_file(
        dir,
        &format!("customer{}.csv", free_port()),
        &[caller.to_string()],
    );
    let more = [
        "-inf".to_string(),
        inf.display().to_string(),
        "-d".into(),
        talk_ms.to_string(),
    ];
    call_from(
        WORLD,
        carrier.addr,
        dir,
        &scenario("uac_queue.xml"),
        did,
        &more,
    )
    .await
}

/// A phone's authenticated call (SIPp, `ext` / pw<ext>) to `number` with a
/// scenario of `uac_call_auth.xml`'s kind.
async fn dial(
    target: SocketAddr,
    dir: &std::path::Path,
    ext: &str,
    number: &str,
    scenario_path: &str,
) -> std::process::Output {
    let inf = injection_file(
        dir,
        &format!("dial{}.csv", free_port()),
        &[format!("{ext};pw{ext}")],
    );
    let more = [
        "-inf".to_string(),
        inf.display().to_string(),
        "-d".into(),
        "1000".into(),
    ];
    call_from("127.0.0.1", target, dir, scenario_path, number, &more).await
}

/// Scenario `name` (with a `[final]` placeholder) expecting `code`, written into `dir`.
fn expecting(dir: &std::path::Path, name: &str, code: u16) -> String {
    rewritten(
        dir,
        name,
        &format!("{code}-"),
        &[("[final]", &code.to_string())],
    )
}

/// Scenario `name` with each (from, to) replaced, written into `dir` under
/// `prefix` + `name`.
fn rewritten(dir: &std::path::Path, name: &str, prefix: &str, edits: &[(&str, &str)]) -> String {
    let path = dir.join(format!("{prefix}{name}"));
    let mut text = std::fs::read_to_string(scenario(name)).expect("scenario");
    for (from, to) in edits {
        assert!(text.contains(from), "{name} has no {from}");
        text = text.replace(from, to);
    }
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

fn ok(out: &std::process::Output, what: &str, carrier: &Carrier) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}\n--- kamailio ---\n{}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .take(25)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr),
        carrier.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_calling_the_did_reaches_queue_500s_agent_and_again_in_another_number_format() {
    let carrier = carrier();
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let extra = format!(
        "{}[[groups]]\nname = \"support\"\nmembers = [{{ extension = \"3701\" }}, {{ extension = \"3702\" }}]\n\
         [[queues]]\nnumber = \"500\"\ngroups = [\"support\"]\nwrap_up_secs = 0\n",
        trunk("carrier", &carrier, "dids = { \"0311110000\" = \"500\" }\n")
    );
    let (pbx, target) = office(dir, &["3701", "3702"], &extra, &["carrier"]).await;
    // 3701 registers first: the longest idle, so the first call's agent.
    let (p1, p2) = (free_port(), free_port());
    register_phone(target, dir, p1, "3701", "pw3701").await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    register_phone(target, dir, p2, "3702", "pw3702").await;
    let agent = sipp_scenario(target, dir, p1, "uas_answer.xml", &["-m", "2"]);
    // 3702 should get no call: its SIPp gives up after 20 s.
    let other = sipp_scenario(
        target,
        dir,
        p2,
        "uas_answer.xml",
        &["-m", "1", "-timeout", "20s"],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, number) in ["0399998888", "+81399998888"].into_iter().enumerate() {
        let out = customer(dir, &carrier, number, "0311110000", 3000).await;
        ok(&out, &format!("the customer calling as {number}"), &carrier);
        assert_eq!(
            pbx.history()
                .recent_agents("+81399998888")
                .first()
                .map(String::as_str),
            Some("3701"),
            "call {i} (caller {number}) reached the agent who took the first one"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        agent.await.expect("join").status.success(),
        "3701 took both calls"
    );
    other.abort();
    assert!(
        pbx.history().recent_agents("0399998888").is_empty(),
        "one key: E.164"
    );
    pbx.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_dials_a_national_number_the_carrier_challenges_and_the_audio_flows() {
    require("baresip");
    require("sox");
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let world_port = free_port();
    let carrier = carrier_at("127.0.0.5", &format!("{WORLD}:{world_port}"), true);
    // The outside world answers and echoes every RTP packet.
    let callee = world(dir, world_port, "uas_answer.xml", &["-rtp_echo"]);
    let extra = format!(
        "{}{}",
        trunk("carrier", &carrier, ""),
        routes("[\"carrier\"]")
    );
    let (pbx, target) = office(dir, &["3801"], &extra, &["carrier"]).await;
    let alice = baresip_dir(
        dir,
        "alice",
        free_port(),
        36_000 + (target.port() % 50) * 40,
        "3801",
        target.port(),
        (440, 6),
    );
    let dial = format!("/dial sip:0312345678@127.0.0.1:{}", target.port());
    let mut alice_ua = baresip(&alice, 12, &["-e", &dial]);
    let _ = tokio::task::spawn_blocking(move || alice_ua.wait()).await;
    let world_out = callee.await.expect("join");
    let log = || {
        format!(
            "--- alice ---\n{}\n--- kamailio ---\n{}",
            std::fs::read_to_string(alice.join("log")).unwrap_or_default(),
            carrier.log()
        )
    };
    assert!(
        world_out.status.success(),
        "the outside world answered: {}",
        log()
    );
    assert_eq!(
        carrier.invites_for("0312345678"),
        2,
        "challenged, then answered: {}",
        log()
    );
    let Some(wav) = received(&alice) else {
        panic!("alice recorded nothing\n{}", log())
    };
    let (len, freq) = measure(&wav);
    assert!(
        len >= 4.0 && (396.0..484.0).contains(&freq),
        "alice heard {len} s at {freq} Hz back through the carrier, expected 440 Hz\n{}",
        log()
    );
    pbx.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_first_carrier_killed_the_call_fails_over_to_the_second() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let world_port = free_port();
    let outside = format!("{WORLD}:{world_port}");
    let first = carrier_at("127.0.0.5", &outside, true);
    let second = carrier_at("127.0.0.7", &outside, true);
    let callee = world(dir, world_port, "uas_answer.xml", &[]);
    let extra = format!(
        "{}{}{}",
        trunk("first", &first, "trying_timeout_ms = 1000\n"),
        trunk("second", &second, ""),
        routes("[\"first\", \"second\"]")
    );
    let (pbx, target) = office(dir, &["3802"], &extra, &["first", "second"]).await;
    drop(first);
    let started = Instant::now();
    let out = dial(
        target,
        dir,
        "3802",
        "0312345678",
        &scenario("uac_call_auth.xml"),
    )
    .await;
    ok(&out, "the call through the second carrier", &second);
    assert!(
        callee.await.expect("join").status.success(),
        "the outside world answered"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "after the first one's trying timeout"
    );
    assert_eq!(
        second.invites_for("0312345678"),
        2,
        "challenged, then answered"
    );
    pbx.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_calls_nobody_may_make_never_reach_the_carrier() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let world_port = free_port();
    let carrier = carrier_at("127.0.0.5", &format!("{WORLD}:{world_port}"), false);
    let busy = world(dir, world_port, "uas_busy.xml", &[]);
    let extra = format!(
        "{}{}[outbound]\nmax_calls_per_user_per_hour = 1\n",
        trunk("carrier", &carrier, ""),
        routes("[\"carrier\"]")
    );
    let (pbx, target) = office(dir, &["3901"], &extra, &["carrier"]).await;
    // A stranger without credentials, from another address: challenged, never placed.
    let stranger = expecting(dir, "uac_expect_final.xml", 407);
    let out = call_from("127.0.0.2", target, dir, &stranger, "0312345678", &[]).await;
    ok(&out, "a stranger is challenged", &carrier);
    // A user without the international class: 403.
    let out = dial(
        target,
        dir,
        "3901",
        "0104420794601",
        &expecting(dir, "uac_auth_expect_final.xml", 403),
    )
    .await;
    ok(&out, "international without the class", &carrier);
    // The user's one call this hour goes out (the callee is busy)…
    let out = dial(
        target,
        dir,
        "3901",
        "0312345678",
        &expecting(dir, "uac_auth_expect_final.xml", 486),
    )
    .await;
    ok(&out, "the first national call", &carrier);
    assert!(busy.await.expect("join").status.success());
    // …and the next one is over the hourly cap: 403.
    let out = dial(
        target,
        dir,
        "3901",
        "0312345679",
        &expecting(dir, "uac_auth_expect_final.xml", 403),
    )
    .await;
    ok(&out, "over the hourly cap", &carrier);
    assert_eq!(carrier.invites_for("0104420794601"), 0, "{}", carrier.log());
    assert_eq!(carrier.invites_for("0312345679"), 0, "{}", carrier.log());
    assert_eq!(
        carrier.invites_for("0312345678"),
        1,
        "only the allowed call"
    );
    pbx.shutdown().await.expect("shutdown");
}

/// dnsmasq on 127.0.0.8 serving `_sip._udp.carrier.test` → each of
/// `targets` (priority, address), named sip<i>.carrier.test; the names'
/// addresses are in a hosts file it reads again on SIGHUP. Every answer has
/// TTL 0.
struct Dns {
    child: Child,
    addr: SocketAddr,
    hosts: tempfile::NamedTempFile,
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dns {
    /// sip<i>.carrier.test is at `ip` from now on.
    fn move_target(&self, i: usize, ip: &str) {
        let text = std::fs::read_to_string(self.hosts.path()).expect("hosts");
        let name = format!("sip{i}.carrier.test");
        let moved: Vec<String> = text
            .lines()
            .map(|l| match l.ends_with(&format!(" {name}")) {
                true => format!("{ip} {name}"),
                false => l.to_string(),
            })
            .collect();
        std::fs::write(self.hosts.path(), moved.join("\n") + "\n").expect("hosts");
        let _ = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status();
    }
}

fn dns_for(targets: &[(u16, SocketAddr)]) -> Dns {
    let dnsmasq = ["/usr/sbin/dnsmasq", "dnsmasq"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok())
        .unwrap_or_else(|| panic!("dnsmasq is not installed (Debian: dnsmasq-base)"));
    let hosts = tempfile::NamedTempFile::new().expect("hosts file");
    let lines: String = targets
        .iter()
        .enumerate()
        .map(|(i, (_, addr))| format!("{} sip{i}.carrier.test\n", addr.ip()))
        .collect();
    std::fs::write(hosts.path(), lines).expect("hosts");
    let srv = targets.iter().enumerate().map(|(i, (priority, addr))| {
        let port = addr.port();
        format!("--srv-host=_sip._udp.carrier.test,sip{i}.carrier.test,{port},{priority},10")
    });
    let port = free_port();
    let child = Command::new(dnsmasq)
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--listen-address=127.0.0.8",
        ])
        .args([
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--pid-file=",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--addn-hosts={}", hosts.path().display()))
        .args(srv)
        .args(if running_as_root() {
            &["--user=root"][..]
        } else {
            &[][..]
        })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq");
    std::thread::sleep(Duration::from_millis(300));
    Dns {
        child,
        addr: format!("127.0.0.8:{port}").parse().expect("addr"),
        hosts,
    }
}

/// Whether the tests run as root (dnsmasq then keeps root instead of
/// switching to a user that may not exist).
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// An embedded PBX whose trunk names its provider `carrier.test` without a
/// port (RFC 3263: SRV first), asking `dns`.
async fn pbx_asking(dns: &Dns, dir: &std::path::Path) -> sipdesk::Pbx {
    let trunk = "[[trunks]]\nname = \"carrier\"\nhost = \"carrier.test\"\nusername = \"office\"\npassword = \"s3cret\"\nexpires = 60\n";
    let users: Vec<(String, String)> = vec![("3601".into(), "pw3601".into())];
    let port = free_port();
    let text = config_with(port, "[\"MD5\"]", &users, trunk).replacen(
        "shards = 2\n",
        &format!("shards = 2\ndns_servers = [\"{}\"]\n", dns.addr),
        1,
    );
    let config = sipdesk::config::Config::parse(&text, "test").expect("config");
    sipdesk::Pbx::builder(config)
        .data_dir(dir.join("data"))
        .start()
        .await
        .expect("start")
}

/// Waits (15 s) until the PBX's trunk is registered with `carrier`.
async fn registered(pbx: &sipdesk::Pbx, carrier: &Carrier) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !pbx.trunk_registered("carrier") {
        assert!(
            Instant::now() < deadline,
            "the trunk found by SRV does not register\n--- kamailio ---\n{}",
            carrier.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_named_by_host_name_is_found_through_dns_srv_past_a_target_out_of_service_and_left_at_shutdown(
) {
    let carrier = carrier_at("127.0.0.9", "127.0.0.6:9", false);
    let tmp = tempfile::tempdir().expect("tmp");
    // The best SRV target is out of service (it answers 503): RFC 3263 has
    // the PBX go on to the next one at once.
    let (out_ip, out_port) = ("127.0.0.11", free_port());
    let out_of_service = sipp_embedded_from(
        out_ip,
        carrier.addr,
        tmp.path(),
        out_port,
        vec![
            "-sf".into(),
            scenario("uas_register_503.xml"),
            "-m".into(),
            "1".into(),
        ],
    );
    let first: SocketAddr = format!("{out_ip}:{out_port}").parse().expect("addr");
    let dns = dns_for(&[(10, first), (20, carrier.addr)]);
    let pbx = pbx_asking(&dns, tmp.path()).await;
    registered(&pbx, &carrier).await;
    let first_asked = out_of_service.await.expect("join");
    assert!(
        first_asked.status.success(),
        "the best target was asked first: {}",
        String::from_utf8_lossy(&first_asked.stderr)
    );
    pbx.shutdown().await.expect("shutdown");
    // The PBX unregistered as it stopped: the carrier has nowhere to send a
    // call for the office's number now.
    let refused = expecting(tmp.path(), "uac_expect_final.xml", 404);
    let out = call_from(WORLD, carrier.addr, tmp.path(), &refused, "0311110000", &[]).await;
    ok(
        &out,
        "no registration left at the carrier after the shutdown",
        &carrier,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_over_tcp_registers_takes_the_carriers_call_and_reconnects_when_the_carrier_restarts(
) {
    let carrier = carrier_with("127.0.0.10", "127.0.0.6:9", false, true);
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let extra = format!(
        "{}[[users]]\nextension = \"3599\"\npassword = \"pw3599\"\nrole = \"supervisor\"\n",
        trunk(
            "carrier",
            &carrier,
            "transport = \"tcp\"\ndids = { \"0311110000\" = \"3501\" }\n",
        )
    );
    let (pbx, target) = office(dir, &["3501"], &extra, &["carrier"]).await;
    // The supervisor's API shows the trunk, its transport and registration.
    let http = reqwest::Client::new();
    let base = format!("http://{}", pbx.http_addr());
    let token = &session_token(&http, &base, "3599", "pw3599").await;
    let trunks: serde_json::Value = http
        .get(format!("{base}/api/v1/trunks"))
        .bearer_auth(token)
        .send()
        .await
        .expect("trunks")
        .json()
        .await
        .expect("json");
    assert_eq!(trunks[0]["name"], "carrier", "{trunks}");
    assert_eq!(trunks[0]["transport"], "tcp", "{trunks}");
    assert_eq!(trunks[0]["registration"]["state"], "up", "{trunks}");
    assert_eq!(trunks[0]["channels"], 0, "{trunks}");
    let phone = free_port();
    register_phone(target, dir, phone, "3501", "pw3501").await;
    let callee = sipp_scenario(target, dir, phone, "uas_answer.xml", &["-m", "1"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = customer(dir, &carrier, "0399997777", "0311110000", 1000).await;
    ok(&out, "the call over the TCP trunk", &carrier);
    assert!(
        callee.await.expect("join").status.success(),
        "3501 answered"
    );
    // The provider restarts: its connection to the PBX closes and its
    // registrations are gone. The PBX registers again over a new connection
    // (in seconds, not at the refresh), and the office takes calls again.
    let addr = carrier.addr;
    drop(carrier);
    let carrier = carrier_on(addr, "127.0.0.6:9", false, true);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !carrier.log().contains("carrier: REGISTER office") {
        assert!(
            Instant::now() < deadline,
            "no new registration at the restarted carrier:\n{}",
            carrier.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let callee = sipp_scenario(target, dir, phone, "uas_answer.xml", &["-m", "1"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = customer(dir, &carrier, "0399997777", "0311110000", 1000).await;
    ok(&out, "a call after the carrier restarted", &carrier);
    assert!(
        callee.await.expect("join").status.success(),
        "3501 answered again"
    );
    pbx.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_wants_prack_gets_it_and_its_early_media_reaches_the_phone() {
    // An IP-authenticated trunk straight to a SIPp provider that sends its
    // 183 with SDP reliably (100rel) and answers only once it has the PRACK.
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let port = free_port();
    let provider = world(dir, port, "uas_100rel.xml", &[]);
    let extra = format!(
        "[[trunks]]\nname = \"direct\"\nhost = \"{WORLD}\"\nport = {port}\nregister = false\n{}",
        routes("[\"direct\"]")
    );
    let (pbx, target) = office(dir, &["3502"], &extra, &[]).await;
    // The phone must see the 183 with the provider's early media.
    let early = dir.join("uac_call_auth_183.xml");
    let text = std::fs::read_to_string(scenario("uac_call_auth.xml")).expect("scenario");
    let text = text.replace(
        r#"<recv response="183" optional="true" response_txn="invite"/>"#,
        r#"<recv response="183" response_txn="invite"/>"#,
    );
    assert!(!text.contains(r#"response="183" optional"#));
    std::fs::write(&early, text).expect("write");
    let out = dial(
        target,
        dir,
        "3502",
        "0312345678",
        &early.display().to_string(),
    )
    .await;
    assert!(
        out.status.success(),
        "the call: {}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let p = provider.await.expect("join");
    assert!(
        p.status.success(),
        "the provider got its PRACK: {}",
        String::from_utf8_lossy(&p.stderr)
    );
    pbx.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registration_is_refreshed_before_it_expires() {
    // Expires 60: the refresh is due after 45 s, well before the binding ends.
    let carrier = carrier();
    let tmp = tempfile::tempdir().expect("tmp");
    let (pbx, _) = office(
        tmp.path(),
        &[],
        &trunk("carrier", &carrier, ""),
        &["carrier"],
    )
    .await;
    let registers = || carrier.log().matches("carrier: REGISTER office").count();
    let first = registers();
    assert!(first >= 2, "challenged, then registered: {}", carrier.log());
    let deadline = Instant::now() + Duration::from_secs(55);
    while registers() < first + 1 {
        assert!(
            Instant::now() < deadline,
            "no refresh within 55 s: {}",
            carrier.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        pbx.trunk_registered("carrier"),
        "still up after the refresh"
    );
    pbx.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_behind_an_outbound_proxy_is_reached_only_through_it_and_offered_only_its_codecs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let world_port = free_port();
    // The provider's edge proxy is the carrier on 127.0.0.12; its own host
    // (127.0.0.13) has nothing listening: whatever went there would be lost.
    let proxy = carrier_at("127.0.0.12", &format!("{WORLD}:{world_port}"), false);
    let extra = format!(
        "[[trunks]]\nname = \"carrier\"\nhost = \"127.0.0.13\"\noutbound_proxy = \"{}\"\n\
         username = \"office\"\npassword = \"s3cret\"\nexpires = 60\ncountry_code = \"81\"\n\
         national_prefix = \"0\"\ninternational_prefix = \"010\"\ncodecs = [\"PCMA\"]\n\
         dids = {{ \"0311110000\" = \"3701\" }}\n{}",
        proxy.addr,
        routes("[\"carrier\"]")
    );
    let (pbx, target) = office(dir, &["3701", "3702"], &extra, &["carrier"]).await;
    assert!(
        proxy.log().contains("carrier: REGISTER office"),
        "registered through the proxy: {}",
        proxy.log()
    );
    // The phone offers PCMU, PCMA and telephone-event; the trunk takes PCMA
    // only: the outside world fails the call unless it sees exactly 8 and 101.
    let offer = "RTP/AVP 0 8 101\n      a=rtpmap:0 PCMU/8000\n      a=rtpmap:8 PCMA/8000\n      \
                 a=rtpmap:101 telephone-event/8000\n      a=fmtp:101 0-16";
    let phone = rewritten(
        dir,
        "uac_call_auth.xml",
        "codecs-",
        &[("RTP/AVP 0\n      a=rtpmap:0 PCMU/8000", offer)],
    );
    let checked = "<recv request=\"INVITE\" crlf=\"true\">\n    <action>\n      \
                   <ereg regexp=\"m=audio [0-9]+ RTP/AVP 8 101[^0-9 ]\" search_in=\"body\" check_it=\"true\" assign_to=\"offer\"/>\n    \
                   </action>\n  </recv>\n  <Reference variables=\"offer\"/>";
    let world_scenario = rewritten(
        dir,
        "uas_answer.xml",
        "pcma-",
        &[
            ("<recv request=\"INVITE\" crlf=\"true\"/>", checked),
            (
                "RTP/AVP 0\n      a=rtpmap:0 PCMU/8000",
                "RTP/AVP 8\n      a=rtpmap:8 PCMA/8000",
            ),
        ],
    );
    let to: SocketAddr = "127.0.0.13:5060".parse().expect("addr");
    let world_args = vec!["-sf".to_string(), world_scenario, "-m".into(), "1".into()];
    let callee = sipp_embedded_from(WORLD, to, dir, world_port, world_args);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = dial(target, dir, "3702", "0312345678", &phone).await;
    ok(&out, "the call out through the proxy", &proxy);
    let world_out = callee.await.expect("join");
    assert!(
        world_out.status.success(),
        "the outside world saw only PCMA and telephone-event: {}",
        String::from_utf8_lossy(&world_out.stderr)
    );
    assert_eq!(proxy.invites_for("0312345678"), 1, "{}", proxy.log());
    // A customer's call comes in from the proxy's address: it is the trunk's.
    let answer_port = free_port();
    register_phone(target, dir, answer_port, "3701", "pw3701").await;
    let agent = sipp_scenario(target, dir, answer_port, "uas_answer.xml", &["-m", "1"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = customer(dir, &proxy, "0399996666", "0311110000", 500).await;
    ok(&out, "the customer's call in through the proxy", &proxy);
    assert!(agent.await.expect("join").status.success(), "3701 answered");
    pbx.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_moves_in_dns_is_followed_once_the_answer_expires() {
    // The provider moves from 127.0.0.14 to 127.0.0.15 (same port).
    let port = free_port();
    let old = carrier_on(
        format!("127.0.0.14:{port}").parse().expect("addr"),
        "127.0.0.6:9",
        false,
        false,
    );
    let new = carrier_on(
        format!("127.0.0.15:{port}").parse().expect("addr"),
        "127.0.0.6:9",
        false,
        false,
    );
    let dns = dns_for(&[(10, old.addr)]);
    let tmp = tempfile::tempdir().expect("tmp");
    let pbx = pbx_asking(&dns, tmp.path()).await;
    registered(&pbx, &old).await;
    dns.move_target(0, "127.0.0.15");
    // The answers had TTL 0: the PBX asks again after its floor of 30 s, and
    // registers at once where the provider is now.
    let deadline = Instant::now() + Duration::from_secs(45);
    while !new.log().contains("carrier: REGISTER office") {
        assert!(
            Instant::now() < deadline,
            "no registration at the provider's new address\n--- old ---\n{}\n--- new ---\n{}",
            old.log(),
            new.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(pbx.trunk_registered("carrier"));
    pbx.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_from_an_address_of_the_provider_other_than_its_registrar_is_known_by_the_registration(
) {
    let port = free_port();
    let registrar: SocketAddr = format!("127.0.0.16:{port}").parse().expect("addr");
    let edge: SocketAddr = format!("127.0.0.17:{port}").parse().expect("addr");
    let carrier = carrier_with_edge(registrar, edge);
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let extra = trunk(
        "carrier",
        &carrier,
        "dids = { \"0311110000\" = \"3511\" }\n",
    );
    let (pbx, target) = office(dir, &["3511"], &extra, &["carrier"]).await;
    let phone = free_port();
    register_phone(target, dir, phone, "3511", "pw3511").await;
    let callee = sipp_scenario(target, dir, phone, "uas_answer.xml", &["-m", "1"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The call reaches the PBX from 127.0.0.17, an address it never
    // registered with: the line token of its Contact names the trunk.
    let out = customer(dir, &carrier, "0399995555", "0311110000", 500).await;
    ok(&out, "the call from the carrier's edge address", &carrier);
    assert!(
        callee.await.expect("join").status.success(),
        "3511 answered"
    );
    pbx.shutdown().await.expect("shutdown");
}

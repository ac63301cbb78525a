//! Test harness: starts the real `sipdesk` binary on 127.0.0.1 with a temporary data
//! directory and drives it with real peers (SIPp, an independent digest client) over
//! real sockets. Everything is bounded in count and time.
#![allow(dead_code)]

pub mod baresip;
pub mod carrier;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const SCENARIOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scenarios");
pub const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");

/// A port free for both UDP and TCP on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let Ok(u) = UdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = u.local_addr() else { continue };
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr.port();
        }
    }
    panic!("no free port on 127.0.0.1");
}

/// A config for the given users (`(extension, password)`), on `port`.
pub fn config(port: u16, algorithms: &str, users: &[(String, String)]) -> String {
    config_with(port, algorithms, users, "")
}

/// Like [`config`], with more TOML tables appended (not `[sip]` or `[rtp]`; an
/// `[http]` table's keys join the one written here). Media listens on
/// 127.0.0.1, on a port window of its own.
pub fn config_with(port: u16, algorithms: &str, users: &[(String, String)], extra: &str) -> String {
    config_with_rtp(port, algorithms, users, "", extra)
}

/// Like [`config_with`], with more `[rtp]` keys.
pub fn config_with_rtp(
    port: u16,
    algorithms: &str,
    users: &[(String, String)],
    rtp_extra: &str,
    extra: &str,
) -> String {
    // Functional tests share two cores with each other's PBXs, SIPps and
    // browsers in debug builds: a shard may wait for a core longer than the
    // default 50 ms of overload protection, which would shed a test's request
    // with 503. Overload is measured by the benches, not here.
    // A media port window of its own per server of this test binary (tests of one
    // binary run in parallel; binaries run one after another), below the kernel's
    // ephemeral range so that `free_port` never hands out a media port.
    static WINDOW: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let rtp = 10_000 + (WINDOW.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 20) * 1000;
    // TOML allows a table once: the keys of an `[http]` table in `extra` go into ours.
    let (http_extra, extra) = match extra.split_once("[http]\n") {
        Some((before, rest)) => {
            let end = rest.find("\n[").map_or(rest.len(), |i| i + 1);
            (&rest[..end], format!("{before}{}", &rest[end..]))
        }
        None => ("", extra.to_string()),
    };
    let mut s = format!(
        "[sip]\nudp = [\"127.0.0.1:{port}\"]\ntcp = [\"127.0.0.1:{port}\"]\nauth_algorithms = {algorithms}\nshards = 2\nshed_after_ms = 1000\n\
         [rtp]\nbind_ip = \"127.0.0.1\"\nport_min = {rtp}\nport_max = {}\n{rtp_extra}\
         [http]\nlisten = \"127.0.0.1:0\"\n{http_extra}[log]\nlevel = \"info\"\n[demo]\nextensions = []\n{extra}\n",
        rtp + 1000
    );
    for (ext, pw) in users {
        s.push_str(&format!(
            "[[users]]\nextension = \"{ext}\"\npassword = \"{pw}\"\n"
        ));
    }
    s
}

/// `n` users named `user1000…` with passwords `pw1000…`.
pub fn users(n: usize) -> Vec<(String, String)> {
    (1000..1000 + n)
        .map(|i| (format!("user{i}"), format!("pw{i}")))
        .collect()
}

/// Writes a SIPp injection file.
pub fn injection_file(dir: &Path, name: &str, rows: &[String]) -> PathBuf {
    let path = dir.join(name);
    let mut text = String::from("SEQUENTIAL\n");
    for r in rows {
        text.push_str(r);
        text.push('\n');
    }
    std::fs::write(&path, text).expect("write injection file");
    path
}

/// The PBX as a child process.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    config: PathBuf,
    /// The voice directory is a file system of this many bytes of its own
    /// (a disk that fills up), seen only by the server.
    voice_disk: Option<u64>,
}

impl Server {
    /// Starts `sipdesk run` with `config_text` and the data directory `dir/data`,
    /// and waits until it answers OPTIONS.
    pub fn start(dir: &Path, port: u16, config_text: &str) -> Server {
        let config = dir.join("sipdesk.toml");
        std::fs::write(&config, config_text).expect("write config");
        let mut s = Server {
            child: None,
            port,
            dir: dir.to_path_buf(),
            config,
            voice_disk: None,
        };
        s.spawn();
        s
    }

    /// [`Server::start`] with a voice directory (recordings, voice messages)
    /// on a tmpfs of `bytes` in a mount namespace of the server's own (made
    /// with `unshare`): a full disk, for real.
    pub fn start_with_voice_disk(dir: &Path, port: u16, config_text: &str, bytes: u64) -> Server {
        require("unshare");
        let config = dir.join("sipdesk.toml");
        std::fs::write(&config, config_text).expect("write config");
        std::fs::create_dir_all(dir.join("data/voice")).expect("voice dir");
        let mut s = Server {
            child: None,
            port,
            dir: dir.to_path_buf(),
            config,
            voice_disk: Some(bytes),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("sipdesk.log"))
            .expect("log file");
        let mut cmd = match self.voice_disk {
            None => Command::new(env!("CARGO_BIN_EXE_sipdesk")),
            Some(bytes) => {
                let mut c = Command::new("unshare");
                c.args(["--user", "--map-root-user", "--mount", "sh", "-c"])
                    .arg(format!(
                        "mount -t tmpfs -o size={bytes} tmpfs \"$0\" && exec \"$@\""
                    ))
                    .arg(self.dir.join("data/voice"))
                    .arg(env!("CARGO_BIN_EXE_sipdesk"));
                c
            }
        };
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start sipdesk");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if options_ping(self.addr(), Duration::from_millis(200)).is_some() {
                return;
            }
        }
        panic!(
            "sipdesk did not answer OPTIONS within 20 s; log:\n{}",
            self.log()
        );
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sipdesk.log")).unwrap_or_default()
    }

    /// SIGKILL, no chance to flush anything.
    /// Stops with SIGTERM (a clean shutdown) and waits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `sipdesk export cdr --format json` on this server's data directory (the
    /// server must be stopped).
    pub fn cdrs(&self) -> Vec<serde_json::Value> {
        self.export(&["cdr", "--format", "json"])
    }

    /// Every response record (the caller histories), by caller then time.
    pub fn responses(&self) -> Vec<serde_json::Value> {
        self.export(&["responses"])
    }

    /// `sipdesk export WHAT…` as JSON (the server must be stopped).
    fn export(&self, what: &[&str]) -> Vec<serde_json::Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_sipdesk"))
            .arg("export")
            .args(what)
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .output()
            .expect("run export");
        assert!(
            out.status.success(),
            "export: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("export JSON")
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends one OPTIONS and returns the status line of the answer.
pub fn options_ping(to: SocketAddr, wait: Duration) -> Option<String> {
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    let local = sock.local_addr().ok()?;
    let req = format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKping{}\r\n\
         From: <sip:probe@{local}>;tag=p\r\nTo: <sip:{to}>\r\nCall-ID: ping-{}\r\nCSeq: 1 OPTIONS\r\n\
         Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        local.port(),
        local.port()
    );
    sock.set_read_timeout(Some(wait)).ok()?;
    sock.send_to(req.as_bytes(), to).ok()?;
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .map(str::to_string)
}

/// Sends raw bytes and returns the first final answer (1xx skipped) that arrives
/// within `wait`.
pub fn exchange(to: SocketAddr, bytes: &[u8], wait: Duration) -> Option<String> {
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.set_read_timeout(Some(wait)).ok()?;
    sock.send_to(bytes, to).ok()?;
    let mut buf = [0u8; 65535];
    loop {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !text.starts_with("SIP/2.0 1") {
            return Some(text);
        }
    }
}

/// Fails the test with a clear message if a peer program is missing.
pub fn require(program: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{program}` is not installed: run the test command from README.md, which installs it"
    );
}

/// Runs SIPp against the server, bounded by `timeout`; returns its output.
/// `extra` are scenario-specific arguments (-sf, -inf, -m, -r…).
pub fn sipp(server: &Server, extra: &[&str], limit: Duration) -> Output {
    sipp_at(server, free_port(), extra, limit)
}

/// Like [`sipp`], with SIPp's own SIP port given (a UAS registered from it).
pub fn sipp_at(server: &Server, lport: u16, extra: &[&str], limit: Duration) -> Output {
    sipp_command(server, "127.0.0.1", lport, extra, limit)
        .output()
        .expect("run sipp")
}

/// Like [`sipp`], in the background, from another loopback address (`ip`,
/// e.g. 127.0.0.2: a distinct host to the PBX).
pub fn sipp_from(
    server: &Server,
    ip: &str,
    extra: &[&str],
    limit: Duration,
) -> std::thread::JoinHandle<Output> {
    let mut cmd = sipp_command(server, ip, free_port(), extra, limit);
    std::thread::spawn(move || cmd.output().expect("run sipp"))
}

/// A SIPp UAS in the background on `lport` (returns when it exits).
pub fn sipp_uas(
    server: &Server,
    lport: u16,
    extra: &[&str],
    limit: Duration,
) -> std::thread::JoinHandle<Output> {
    let mut cmd = sipp_command(server, "127.0.0.1", lport, extra, limit);
    std::thread::spawn(move || cmd.output().expect("run sipp uas"))
}

fn sipp_command(server: &Server, ip: &str, lport: u16, extra: &[&str], limit: Duration) -> Command {
    require("sipp");
    let mport = free_port();
    let target = server.addr().to_string();
    let mut cmd = Command::new("timeout");
    cmd.arg("--kill-after=5")
        .arg(limit.as_secs().to_string())
        .arg("sipp")
        .arg(&target)
        .args([
            "-i",
            ip,
            "-p",
            &lport.to_string(),
            "-mp",
            &mport.to_string(),
        ])
        .args([
            "-nostdin",
            "-timeout",
            &format!("{}s", limit.as_secs().saturating_sub(5).max(5)),
        ])
        .args([
            "-timeout_error",
            "-recv_timeout",
            "10000",
            "-buff_size",
            "4194304",
        ])
        .args(extra)
        .current_dir(&server.dir)
        .stdin(Stdio::null());
    cmd
}

/// SIPp against a PBX embedded in the test process (no [`Server`]): runs on a
/// blocking thread so the PBX's runtime keeps serving. Bounded to 40 s.
pub fn sipp_embedded(
    target: SocketAddr,
    dir: &Path,
    lport: u16,
    args: Vec<String>,
) -> tokio::task::JoinHandle<Output> {
    sipp_embedded_from("127.0.0.1", target, dir, lport, args)
}

/// Like [`sipp_embedded`], from another loopback address (`ip`: a distinct host).
pub fn sipp_embedded_from(
    ip: &str,
    target: SocketAddr,
    dir: &Path,
    lport: u16,
    args: Vec<String>,
) -> tokio::task::JoinHandle<Output> {
    let (dir, ip) = (dir.to_path_buf(), ip.to_string());
    tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args([
                "40",
                "sipp",
                &target.to_string(),
                "-i",
                &ip,
                "-p",
                &lport.to_string(),
            ])
            .args(["-mp", &free_port().to_string(), "-nostdin", "-trace_err"])
            .args(args)
            .current_dir(dir)
            .output()
            .expect("sipp")
    })
}

/// Asserts SIPp exited 0 (every call succeeded), showing its errors otherwise.
pub fn assert_sipp_ok(out: &Output, what: &str, server: &Server) {
    if !out.status.success() {
        let errors: String = std::fs::read_dir(&server.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with("errors.log"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let tail: String = stdout
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        panic!(
            "{what}: sipp exited {:?}\n--- sipp errors ---\n{}\n--- sipp screen ---\n{tail}\n--- sipdesk log ---\n{}",
            out.status.code(),
            errors.chars().take(4000).collect::<String>(),
            server.log().chars().rev().take(3000).collect::<String>().chars().rev().collect::<String>()
        );
    }
}

pub fn scenario(name: &str) -> String {
    format!("{SCENARIOS}/{name}")
}

/// SIPp running scenario `name` against an in-process PBX at `target`, with
/// more arguments.
pub fn sipp_scenario(
    target: SocketAddr,
    dir: &Path,
    lport: u16,
    name: &str,
    args: &[&str],
) -> tokio::task::JoinHandle<Output> {
    let mut all = vec!["-sf".to_string(), scenario(name)];
    all.extend(args.iter().map(|a| a.to_string()));
    sipp_embedded(target, dir, lport, all)
}

/// An in-process PBX on 127.0.0.1 (MD5 digest) with these users and more TOML
/// tables; its data lives in `dir`.
pub async fn embedded_pbx(
    dir: &Path,
    users: &[(String, String)],
    extra: &str,
) -> (sipdesk::Pbx, SocketAddr) {
    require("sipp");
    let port = free_port();
    let text = config_with(port, "[\"MD5\"]", users, extra);
    let config = sipdesk::config::Config::parse(&text, "test").expect("config");
    let pbx = sipdesk::Pbx::builder(config)
        .data_dir(dir.join("data"))
        .start()
        .await
        .expect("start");
    (pbx, ([127, 0, 0, 1], port).into())
}

/// Waits (up to 5 s) until the embedded PBX has no live call and every media
/// port is back; whether it came to that.
pub async fn settled(pbx: &sipdesk::Pbx) -> bool {
    for _ in 0..100 {
        let live = pbx
            .stats()
            .live_calls
            .load(std::sync::atomic::Ordering::Relaxed);
        if live == 0 && pbx.media_ports_in_use() == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Registers `ext` with `password` from `lport` (SIPp, digest auth). Retried
/// once: a parallel test's SIPp may hold the port for a moment.
pub async fn register_phone(target: SocketAddr, dir: &Path, lport: u16, ext: &str, password: &str) {
    let inf = injection_file(
        dir,
        &format!("reg-{ext}.csv"),
        &[format!("{ext};{password}")],
    );
    let inf = inf.display().to_string();
    let mut failed = None;
    for _ in 0..2 {
        let out = sipp_scenario(
            target,
            dir,
            lport,
            "register_auth.xml",
            &["-inf", &inf, "-m", "1"],
        )
        .await
        .expect("join");
        if out.status.success() {
            return;
        }
        failed = Some(out);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stderr = failed.map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
    panic!("{ext} does not register: {}", stderr.unwrap_or_default());
}

/// A desktop test script in headless Chromium (Playwright), started with its
/// environment; screenshots go to the artifacts directory.
pub fn browser_script(
    script: &str,
    base: &str,
    envs: &[(&str, &str)],
) -> (tokio::process::Child, std::path::PathBuf) {
    require("chromium");
    require("node");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core missing: run ./scripts/test.sh (it installs it)"
    );
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-artifacts");
    let child = tokio::process::Command::new("node")
        .arg(dir.join(script))
        .arg(base)
        .envs(envs.iter().copied())
        .env("ARTIFACTS", &artifacts)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    (child, artifacts)
}

/// Waits for a browser script's end and fails with its output if it failed.
pub async fn browser_passed(child: tokio::process::Child, artifacts: &std::path::Path) {
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("the browser test ends in time")
        .expect("node runs");
    assert!(
        out.status.success(),
        "browser test failed (screenshots in {}):\n{}\n{}",
        artifacts.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Logs in to the desk at `base` as `ext` and returns the session's token.
pub async fn session_token(
    http: &reqwest::Client,
    base: &str,
    ext: &str,
    password: &str,
) -> String {
    let r: serde_json::Value = http
        .post(format!("{base}/api/v1/session"))
        .json(&serde_json::json!({ "extension": ext, "password": password }))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    r["token"].as_str().expect("token").to_string()
}

/// Asserts a SIPp run passed; else shows its last screen lines and errors.
pub fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: sipp exited {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A socket for a phone's media at 127.0.0.1, its port, and the count of RTP
/// packets that reach it within 12 s (stops at 200).
pub fn rtp_counter() -> (String, std::thread::JoinHandle<usize>) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = socket.local_addr().expect("addr").port().to_string();
    let counter = std::thread::spawn(move || {
        let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
        let (mut packets, mut buf) = (0, [0u8; 2048]);
        let end = std::time::Instant::now() + Duration::from_secs(12);
        while std::time::Instant::now() < end && packets < 200 {
            if let Ok(n) = socket.recv(&mut buf) {
                packets += usize::from(n > 12 && buf[0] >> 6 == 2);
            }
        }
        packets
    });
    (port, counter)
}

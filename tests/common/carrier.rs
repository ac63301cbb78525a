//! Kamailio (Debian package) as a SIP provider: the peer lab's registrar
//! with digest (account office / s3cret) that routes the office's calls to
//! an "outside world" (a SIPp UAS) and the world's calls to the office.

use super::{free_port, options_ping, require};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kamailio as the provider, with one account: office / s3cret.
pub struct Carrier {
    child: Child,
    pub addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Carrier {
    /// Kills Kamailio and its worker processes (its own process group).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A carrier on `ip` that sends the office's calls out to `outside` (and
/// challenges them when `challenge`); the office's numbers start with 031111.
pub fn carrier_at(ip: &str, outside: &str, challenge: bool) -> Carrier {
    carrier_with(ip, outside, challenge, false)
}

/// Like [`carrier_at`], also listening on TCP (`tcp`), its TCP connections
/// to the PBX made from its own address.
pub fn carrier_with(ip: &str, outside: &str, challenge: bool, tcp: bool) -> Carrier {
    let addr: SocketAddr = format!("{ip}:{}", free_port()).parse().expect("addr");
    carrier_on(addr, outside, challenge, tcp)
}

/// Like [`carrier_with`], on `addr`.
pub fn carrier_on(addr: SocketAddr, outside: &str, challenge: bool, tcp: bool) -> Carrier {
    start_carrier(addr, outside, challenge, tcp, None)
}

/// A carrier on `addr` whose calls to the office come from `edge` (another
/// address of its own).
pub fn carrier_with_edge(addr: SocketAddr, edge: SocketAddr) -> Carrier {
    start_carrier(addr, "127.0.0.6:9", false, false, Some(edge))
}

pub fn start_carrier(
    addr: SocketAddr,
    outside: &str,
    challenge: bool,
    tcp: bool,
    edge: Option<SocketAddr>,
) -> Carrier {
    require("kamailio");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("kamailio/db");
    std::fs::create_dir_all(&db).expect("db dir");
    let cfg = include_str!("../peers/kamailio-carrier.cfg")
        .replace("LISTEN_ADDR", &addr.to_string())
        .replace("PBX_IP", "127.0.0.1")
        .replace("OUTSIDE_ADDR", outside)
        .replace("DID_PREFIX", "031111")
        .replace(
            "disable_tcp=yes",
            if tcp {
                "disable_tcp=no\nlisten=tcp:TCP_ADDR\ntcp_source_ipv4=TCP_IP"
            } else {
                "disable_tcp=yes"
            },
        )
        .replace("TCP_ADDR", &addr.to_string())
        .replace("TCP_IP", &addr.ip().to_string())
        .replace("EDGE_ADDR", &edge.unwrap_or(addr).to_string())
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
    let mut args = vec![
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
    ];
    if challenge {
        args.extend(["-A", "WITH_CALL_AUTH"]);
    }
    if edge.is_some() {
        args.extend(["-A", "WITH_EDGE"]);
    }
    let child = Command::new("kamailio")
        .args(args)
        .process_group(0)
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

pub fn carrier() -> Carrier {
    carrier_at("127.0.0.5", "127.0.0.6:9", false)
}

impl Carrier {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kamailio.log")).unwrap_or_default()
    }

    /// The INVITEs the carrier received for `number`.
    pub fn invites_for(&self, number: &str) -> usize {
        self.log()
            .matches(&format!("carrier: INVITE sip:{number} "))
            .count()
    }
}

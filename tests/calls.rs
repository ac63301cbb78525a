//! Calls to the test numbers with SIPp (stock `uac` included), RTP through the echo
//! number, and CDRs: exactly one per call, durable across `kill -9`.

mod common;

use common::*;
use std::collections::HashMap;
use std::net::UdpSocket;
use std::time::Duration;

fn numbers(extra: &str) -> String {
    format!("[test_numbers]\necho = \"9000\"\nhangup = \"9001\"\nbusy = \"9002\"\nhangup_after_secs = 1\n{extra}")
}

fn start(dir: &std::path::Path) -> Server {
    let port = free_port();
    Server::start(
        dir,
        port,
        &config_with(port, "[\"MD5\"]", &users(1), &numbers("")),
    )
}

#[test]
fn stock_sipp_uac_completes_every_call_to_the_echo_number_with_one_cdr_each() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut server = start(dir.path());
    let out = sipp(
        &server,
        &[
            "-sn",
            "uac",
            "-s",
            "9000",
            "-m",
            "300",
            "-r",
            "100",
            "-trace_err",
        ],
        Duration::from_secs(60),
    );
    assert_sipp_ok(&out, "stock uac against 9000", &server);
    server.stop();
    let cdrs = server.cdrs();
    assert_eq!(cdrs.len(), 300);
    let mut seen = HashMap::new();
    for c in &cdrs {
        assert_eq!(c["disposition"], "answered");
        assert_eq!(c["hangup_by"], "caller");
        assert_eq!(c["callee"], "9000");
        *seen.entry(c["call_id"].to_string()).or_insert(0) += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "one CDR per call");
}

#[test]
fn the_busy_number_answers_486_and_the_hangup_number_sends_bye() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut server = start(dir.path());
    let out = sipp(
        &server,
        &[
            "-sf",
            &scenario("uac_busy.xml"),
            "-s",
            "9002",
            "-m",
            "10",
            "-r",
            "10",
            "-trace_err",
        ],
        Duration::from_secs(30),
    );
    assert_sipp_ok(&out, "busy number", &server);
    let out = sipp(
        &server,
        &[
            "-sf",
            &scenario("uac_callee_hangs_up.xml"),
            "-s",
            "9001",
            "-m",
            "10",
            "-r",
            "10",
            "-trace_err",
        ],
        Duration::from_secs(30),
    );
    assert_sipp_ok(&out, "hang-up number", &server);
    server.stop();
    let cdrs = server.cdrs();
    let busy = cdrs.iter().filter(|c| c["disposition"] == "busy").count();
    let hung = cdrs
        .iter()
        .filter(|c| {
            c["callee"] == "9001" && c["hangup_by"] == "callee" && c["disposition"] == "answered"
        })
        .count();
    assert_eq!((busy, hung, cdrs.len()), (10, 10, 20), "{cdrs:?}");
}

/// INVITE over a raw socket, then RTP to the port in the answer.
#[test]
fn rtp_sent_to_the_echo_number_comes_back_and_ports_are_freed() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = start(dir.path());
    let sip = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sip.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let rtp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    rtp.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let (local, media) = (
        sip.local_addr().expect("addr"),
        rtp.local_addr().expect("addr"),
    );
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 8 0\r\n",
        media.port()
    );
    let invite = format!(
        "INVITE sip:9000@{0} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKrtp1;rport\r\nFrom: <sip:tester@{local}>;tag=t1\r\n\
         To: <sip:9000@{0}>\r\nCall-ID: rtp-echo-1\r\nCSeq: 1 INVITE\r\nContact: <sip:tester@{local}>\r\nMax-Forwards: 70\r\n\
         Content-Type: application/sdp\r\nContent-Length: {1}\r\n\r\n{sdp}",
        server.addr(),
        sdp.len()
    );
    sip.send_to(invite.as_bytes(), server.addr()).expect("send");
    let mut buf = [0u8; 4096];
    let ok = loop {
        let (n, _) = sip.recv_from(&mut buf).expect("answer");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with("SIP/2.0 200") {
            break text;
        }
    };
    assert!(
        ok.contains("a=rtpmap:8 PCMA/8000"),
        "first offered codec chosen:\n{ok}"
    );
    let port: u16 = ok
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("m= port");
    let to = ok
        .lines()
        .find(|l| l.starts_with("To:"))
        .expect("To")
        .to_string();
    let ack = format!(
        "ACK sip:9000@{0} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKrtp2;rport\r\nFrom: <sip:tester@{local}>;tag=t1\r\n\
         {to}\r\nCall-ID: rtp-echo-1\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        server.addr()
    );
    sip.send_to(ack.as_bytes(), server.addr()).expect("ack");
    for seq in 0u16..20 {
        let mut pkt = vec![0x80, 8];
        pkt.extend_from_slice(&seq.to_be_bytes());
        pkt.extend_from_slice(&[0u8; 8]);
        pkt.extend_from_slice(&[0xd5; 160]);
        rtp.send_to(&pkt, ("127.0.0.1", port)).expect("rtp");
        let (n, from) = rtp.recv_from(&mut buf).expect("echoed packet");
        assert_eq!((&buf[..n], from.port()), (&pkt[..], port));
    }
    let bye = format!(
        "BYE sip:9000@{0} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKrtp3;rport\r\nFrom: <sip:tester@{local}>;tag=t1\r\n\
         {to}\r\nCall-ID: rtp-echo-1\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        server.addr()
    );
    sip.send_to(bye.as_bytes(), server.addr()).expect("bye");
    let (n, _) = sip.recv_from(&mut buf).expect("200 to BYE");
    assert!(buf[..n].starts_with(b"SIP/2.0 200"));
    // The media ports are closed with the call.
    std::thread::sleep(Duration::from_millis(200));
    rtp.send_to(b"late", ("127.0.0.1", port)).expect("send");
    assert!(
        rtp.recv_from(&mut buf).is_err(),
        "nothing echoes after the call"
    );
}

#[test]
fn every_call_sipp_saw_complete_before_kill_9_has_exactly_one_cdr() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut server = start(dir.path());
    let srv_dir = server.dir.clone();
    let target = server.addr().to_string();
    // Calls of 1 s at 50/s, for up to 400 calls; the PBX is killed ~3 s in.
    let runner = std::thread::spawn(move || {
        let port = free_port();
        std::process::Command::new("timeout")
            .args([
                "40", "sipp", &target, "-sn", "uac", "-s", "9000", "-d", "1000", "-r", "50", "-m",
                "400",
            ])
            .args([
                "-i",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-mp",
                &free_port().to_string(),
                "-nostdin",
            ])
            .args([
                "-trace_msg",
                "-message_file",
                "msgs.log",
                "-timeout",
                "20s",
                "-recv_timeout",
                "3000",
            ])
            .current_dir(&srv_dir)
            .output()
            .expect("sipp")
    });
    std::thread::sleep(Duration::from_secs(3));
    server.kill9();
    let _ = runner.join();
    let log = std::fs::read_to_string(server.dir.join("msgs.log")).unwrap_or_default();
    // Call-IDs whose BYE got its 200 OK: the calls SIPp completed. Each logged
    // message starts with a "message received" / "message sent" marker line.
    let completed: Vec<String> = log
        .split("message ")
        .filter_map(|m| m.strip_prefix("received"))
        .filter(|m| m.contains("SIP/2.0 200 OK") && m.contains("CSeq: 2 BYE"))
        .filter_map(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Call-ID: "))
                .map(|c| c.trim().to_string())
        })
        .collect();
    assert!(
        completed.len() >= 20,
        "too few calls completed before the kill: {}",
        completed.len()
    );
    let cdrs = server.cdrs();
    let mut count: HashMap<String, usize> = HashMap::new();
    for c in &cdrs {
        *count
            .entry(c["call_id"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    for id in &completed {
        assert_eq!(
            count.get(id),
            Some(&1),
            "call {id} completed but has {:?} CDRs",
            count.get(id)
        );
    }
    assert!(
        count.values().all(|n| *n == 1),
        "never two CDRs for one call"
    );
}

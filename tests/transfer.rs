//! Transfer with real phones: SIPp phones that register with digest auth, a
//! SIPp caller, an embedded PBX. A blind transfer from the callee's phone
//! (REFER): the NOTIFY sipfrag sequence it hears, the caller re-INVITEd
//! toward the target, the caller's RTP reaching the target through the
//! relay, nothing left over.

mod common;

use common::*;
use std::time::Duration;

fn pw(ext: &str) -> String {
    format!("pw{ext}")
}

/// RTP packets arriving at `socket` within `limit` (stops at 200).
fn count_rtp(socket: std::net::UdpSocket, limit: Duration) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
        let (mut packets, mut buf) = (0, [0u8; 2048]);
        let end = std::time::Instant::now() + limit;
        while std::time::Instant::now() < end && packets < 200 {
            if let Ok(n) = socket.recv(&mut buf) {
                packets += usize::from(n > 12 && buf[0] >> 6 == 2);
            }
        }
        packets
    })
}

fn ok(out: &std::process::Output, what: &str) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blind_transfer_from_the_phone_connects_the_caller_to_the_target() {
    let dir = tempfile::tempdir().expect("tmp");
    let users: Vec<(String, String)> = ["4001", "4003"]
        .iter()
        .map(|u| (u.to_string(), pw(u)))
        .collect();
    let extra = "[calls]\nauthenticate = false\nring_timeout_secs = 20\n";
    let (pbx, target) = embedded_pbx(dir.path(), &users, extra).await;
    let (p1, p3) = (free_port(), free_port());
    register_phone(target, dir.path(), p1, "4001", &pw("4001")).await;
    register_phone(target, dir.path(), p3, "4003", &pw("4003")).await;

    let media = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let rtp_port = media.local_addr().expect("addr").port().to_string();
    let packets = count_rtp(media, Duration::from_secs(12));
    let transferor = sipp_scenario(
        target,
        dir.path(),
        p1,
        "uas_transfer.xml",
        &["-m", "1", "-key", "me", "4001", "-key", "to", "4003"],
    );
    let new_party = sipp_scenario(
        target,
        dir.path(),
        p3,
        "uas_transfer_target.xml",
        &["-m", "1", "-key", "rtp_port", &rtp_port],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let caller = sipp_scenario(
        target,
        dir.path(),
        free_port(),
        "uac_transferred.xml",
        &["-s", "4001", "-m", "1", "-d", "2000"],
    );
    ok(
        &caller.await.expect("join"),
        "the caller is transferred and talks",
    );
    ok(
        &transferor.await.expect("join"),
        "the transferor hears 100, 180, 200 and is released",
    );
    ok(
        &new_party.await.expect("join"),
        "the target answers and is hung up",
    );
    let packets = packets.join().expect("counter");
    assert!(
        packets >= 50,
        "the caller's RTP reaches the target (got {packets} packets)"
    );
    assert!(settled(&pbx).await, "calls or media ports left over");
    pbx.shutdown().await.expect("shutdown");
}

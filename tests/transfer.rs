//! Transfer with real phones: SIPp phones that register with digest auth, a
//! SIPp caller, an embedded PBX. A blind transfer from the callee's phone
//! (REFER): the NOTIFY sipfrag sequence it hears, the caller re-INVITEd
//! toward the target, the caller's RTP reaching the target through the
//! relay, nothing left over. An attended transfer: the callee consults the
//! target on its other line, then transfers the caller to that call (a call
//! of the other shard: the consulted party's leg is handed over).

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;

fn pw(ext: &str) -> String {
    format!("pw{ext}")
}

/// An embedded PBX with extensions 4001 (the transferor) and 4003 (the
/// target), both registered; callers need no digest.
async fn office() -> (tempfile::TempDir, sipdesk::Pbx, SocketAddr, u16, u16) {
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
    (dir, pbx, target, p1, p3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blind_transfer_from_the_phone_connects_the_caller_to_the_target() {
    let (dir, pbx, target, p1, p3) = office().await;
    let (rtp_port, packets) = rtp_counter();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attended_transfer_from_the_phone_joins_the_caller_with_the_consulted_party() {
    let (dir, pbx, target, p1, p3) = office().await;
    let (rtp_port, packets) = rtp_counter();
    // 4001 answers the caller, consults 4003 on its other line, then
    // transfers the caller to that call.
    let transferor = sipp_scenario(
        target,
        dir.path(),
        p1,
        "uas_attended_transfer.xml",
        &["-m", "1", "-key", "me", "4001", "-key", "to", "4003"],
    );
    let consulted = sipp_scenario(
        target,
        dir.path(),
        p3,
        "uas_consulted.xml",
        &["-m", "1", "-key", "rtp_port", &rtp_port],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The caller's call and the consultation on different shards: the
    // consulted party's leg is handed from one to the other.
    let shard = |c: &str| sipdesk::sip::call_id::shard_of(c.replace("%u", "1").as_bytes(), 2);
    let cid = (0..)
        .map(|n| format!("xfer%u-{n}@sipp"))
        .find(|c| shard(c) != shard("consult%u@sipp"))
        .expect("a Call-ID of the other shard");
    let caller = sipp_scenario(
        target,
        dir.path(),
        free_port(),
        "uac_transferred.xml",
        &["-s", "4001", "-m", "1", "-d", "2000", "-cid_str", &cid],
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let line2 = sipp_scenario(
        target,
        dir.path(),
        free_port(),
        "uac_consult.xml",
        &[
            "-s",
            "4003",
            "-m",
            "1",
            "-key",
            "me",
            "4001",
            "-cid_str",
            "consult%u@sipp",
        ],
    );
    let l2 = line2.await.expect("join");
    let caller = caller.await.expect("join");
    let t = transferor.await.expect("join");
    ok(&caller, "the caller is transferred and talks");
    ok(&t, "the transferor hears 100, 200 and is released");
    ok(&l2, "the consultation ends for the transferor");
    ok(
        &consulted.await.expect("join"),
        "the consulted party is moved to the caller and hung up",
    );
    let packets = packets.join().expect("counter");
    assert!(
        packets >= 50,
        "the caller's RTP reaches the consulted party (got {packets} packets)"
    );
    assert!(settled(&pbx).await, "calls or media ports left over");
    pbx.shutdown().await.expect("shutdown");
}

//! Presence driven by real SIP: an extension is offline until its phone (SIPp)
//! registers, rings while a call is offered to it, and is available again when the
//! caller cancels; an agent chooses away, busy and available with feature codes.
//! Observed through the embedding API's change stream.

mod common;

use common::*;
use sipdesk::presence::{DialogState, State};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_calls_drive_the_presence_of_an_extension() {
    let dir = tempfile::tempdir().expect("tmp");
    let users = vec![("2000".to_string(), "pw2000".to_string())];
    let (pbx, target) = embedded_pbx(dir.path(), &users, "[calls]\nauthenticate = false\n").await;
    let mut changes = pbx.presence().subscribe();
    let state = || pbx.presence().state("2000").map(|s| s.0);
    assert_eq!(state(), Some(State::Offline));

    let phone = free_port();
    register_phone(target, dir.path(), phone, "2000", "pw2000").await;
    assert_eq!(state(), Some(State::Available));

    let uas = sipp_scenario(target, dir.path(), phone, "uas_ring.xml", &["-m", "1"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let uac = sipp_scenario(
        target,
        dir.path(),
        free_port(),
        "uac_cancel.xml",
        &["-s", "2000", "-m", "1"],
    );
    assert!(uac.await.expect("join").status.success(), "caller cancels");
    assert!(uas.await.expect("join").status.success(), "callee rang");

    let seen: Vec<(State, Option<DialogState>)> = std::iter::from_fn(|| changes.try_recv().ok())
        .filter(|c| c.extension == "2000")
        .map(|c| (c.state, c.dialogs.first().map(|d| d.state)))
        .collect();
    assert_eq!(
        seen,
        vec![
            (State::Available, None),
            (State::Ringing, Some(DialogState::Trying)),
            (State::Ringing, Some(DialogState::Early)),
            (State::Available, None)
        ],
        "offline → available → ringing (trying, early) → available"
    );
    pbx.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_sets_away_and_available_by_dialing_feature_codes() {
    let dir = tempfile::tempdir().expect("tmp");
    let users = vec![("2100".to_string(), "pw2100".to_string())];
    let (pbx, target) = embedded_pbx(dir.path(), &users, "").await;
    let phone = free_port();
    register_phone(target, dir.path(), phone, "2100", "pw2100").await;
    let state = || pbx.presence().state("2100").map(|s| s.0);
    assert_eq!(state(), Some(State::Available));
    let inf = injection_file(dir.path(), "agent.csv", &["2100;pw2100".to_string()]);
    let inf = inf.display().to_string();
    for (code, want) in [
        ("*41", State::Away),
        ("*42", State::Busy),
        ("*40", State::Available),
    ] {
        let out = sipp_scenario(
            target,
            dir.path(),
            phone,
            "uac_feature_code.xml",
            &["-inf", &inf, "-s", code, "-m", "1"],
        )
        .await
        .expect("join");
        assert!(
            out.status.success(),
            "{code}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(state(), Some(want), "after {code}");
    }
    assert_eq!(pbx.media_ports_in_use(), 0);
    pbx.shutdown().await.expect("shutdown");
}

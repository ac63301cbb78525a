//! Originate through the embedding API: the PBX rings extension 2000 (a SIPp UAS),
//! and when it answers, calls the hang-up test number and bridges the two; when the
//! test number hangs up, the PBX ends leg A with a BYE.

mod common;

use common::*;
use sipdesk::presence::State;
use sipdesk::OriginateError;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn originate_rings_a_then_connects_b_and_tears_both_down() {
    let dir = tempfile::tempdir().expect("tmp");
    let users = vec![
        ("2000".to_string(), "pw2000".to_string()),
        ("2001".to_string(), "pw2001".to_string()),
    ];
    let extra = "[test_numbers]\nhangup = \"9001\"\nhangup_after_secs = 1\n";
    let (pbx, target) = embedded_pbx(dir.path(), &users, extra).await;
    let uas_port = free_port();
    register_phone(target, dir.path(), uas_port, "2000", "pw2000").await;

    // Errors first: nothing is started for them.
    assert_eq!(
        pbx.originate("7777", "9001").await,
        Err(OriginateError::UnknownExtension("7777".into()))
    );
    assert_eq!(
        pbx.originate("2001", "9001").await,
        Err(OriginateError::NotRegistered("2001".into()))
    );

    let uas = sipp_scenario(target, dir.path(), uas_port, "uas_answer.xml", &["-m", "1"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut changes = pbx.presence().subscribe();
    let call = pbx.originate("2000", "9001").await.expect("originate");
    assert!(!call.is_empty());
    let out = uas.await.expect("join");
    assert!(
        out.status.success(),
        "leg A: {}",
        std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with("errors.log"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect::<String>()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        pbx.stats()
            .live_calls
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(pbx.media_ports_in_use(), 0);
    // 2000 rang, talked, and is free again: a placed call counts like any other.
    let mut states: Vec<State> = std::iter::from_fn(|| changes.try_recv().ok())
        .filter(|c| c.extension == "2000")
        .map(|c| c.state)
        .collect();
    states.dedup();
    assert_eq!(states, [State::Ringing, State::OnCall, State::Available]);
    pbx.shutdown().await.expect("shutdown");
}

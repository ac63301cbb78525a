//! Presence driven by real SIP: an extension is offline until its phone (SIPp)
//! registers, rings while a call is offered to it, and is available again when the
//! caller cancels. Observed through the embedding API's change stream.

mod common;

use common::*;
use sipdesk::config::Config;
use sipdesk::presence::{DialogState, State};
use sipdesk::Pbx;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_calls_drive_the_presence_of_an_extension() {
    require("sipp");
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let users = vec![("2000".to_string(), "pw2000".to_string())];
    let text = config_with(port, "[\"MD5\"]", &users, "[calls]\nauthenticate = false\n");
    let config = Config::parse(&text, "test").expect("config");
    let pbx = Pbx::builder(config)
        .data_dir(dir.path().join("data"))
        .start()
        .await
        .expect("start");
    let mut changes = pbx.presence().subscribe();
    assert_eq!(
        pbx.presence().state("2000").map(|s| s.0),
        Some(State::Offline)
    );

    let target: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let uas_port = free_port();
    let inf = injection_file(dir.path(), "uas.csv", &["2000;pw2000".to_string()]);
    let reg = sipp_embedded(
        target,
        dir.path(),
        uas_port,
        vec![
            "-sf".into(),
            scenario("register_auth.xml"),
            "-inf".into(),
            inf.display().to_string(),
            "-m".into(),
            "1".into(),
        ],
    );
    assert!(reg.await.expect("join").status.success(), "registration");
    assert_eq!(
        pbx.presence().state("2000").map(|s| s.0),
        Some(State::Available)
    );

    let uas = sipp_embedded(
        target,
        dir.path(),
        uas_port,
        vec![
            "-sf".into(),
            scenario("uas_ring.xml"),
            "-m".into(),
            "1".into(),
        ],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let uac = sipp_embedded(
        target,
        dir.path(),
        free_port(),
        vec![
            "-sf".into(),
            scenario("uac_cancel.xml"),
            "-s".into(),
            "2000".into(),
            "-m".into(),
            "1".into(),
        ],
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
    require("sipp");
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let users = vec![("2100".to_string(), "pw2100".to_string())];
    let text = config_with(port, "[\"MD5\"]", &users, "");
    let pbx = Pbx::builder(Config::parse(&text, "test").expect("config"))
        .data_dir(dir.path().join("data"))
        .start()
        .await
        .expect("start");
    let target: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let inf = injection_file(dir.path(), "agent.csv", &["2100;pw2100".to_string()]);
    let phone = free_port();
    let run = |scenario_name: &str, service: &str| {
        sipp_embedded(
            target,
            dir.path(),
            phone,
            vec![
                "-sf".into(),
                scenario(scenario_name),
                "-inf".into(),
                inf.display().to_string(),
                "-s".into(),
                service.into(),
                "-m".into(),
                "1".into(),
            ],
        )
    };
    assert!(run("register_auth.xml", "x")
        .await
        .expect("join")
        .status
        .success());
    let state = || pbx.presence().state("2100").map(|s| s.0);
    assert_eq!(state(), Some(State::Available));
    for (code, want) in [
        ("*41", State::Away),
        ("*42", State::Busy),
        ("*40", State::Available),
    ] {
        let out = run("uac_feature_code.xml", code).await.expect("join");
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

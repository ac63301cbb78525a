//! BLF with real phones: a SIPp "BLF key" subscribes (digest auth) to the dialog
//! state of extension 2000 and must see, in order, no call, then trying → early →
//! confirmed → terminated while a SIPp caller calls 2000 (a SIPp phone that rings
//! and answers slowly); then it unsubscribes and gets the final NOTIFY.

mod common;

use common::*;
use sipdesk::config::Config;
use sipdesk::Pbx;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blf_subscriber_sees_each_dialog_state_of_a_call_in_order() {
    require("sipp");
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let users = vec![
        ("2000".to_string(), "pw2000".to_string()),
        ("2001".to_string(), "pw2001".to_string()),
    ];
    let text = config_with(port, "[\"MD5\"]", &users, "[calls]\nauthenticate = false\n");
    let pbx = Pbx::builder(Config::parse(&text, "test").expect("config"))
        .data_dir(dir.path().join("data"))
        .start()
        .await
        .expect("start");
    let target: std::net::SocketAddr = ([127, 0, 0, 1], port).into();

    let phone_port = free_port();
    let inf = injection_file(dir.path(), "phone.csv", &["2000;pw2000".to_string()]);
    let reg = sipp_embedded(
        target,
        dir.path(),
        phone_port,
        vec![
            "-sf".into(),
            scenario("register_auth.xml"),
            "-inf".into(),
            inf.display().to_string(),
            "-m".into(),
            "1".into(),
        ],
    );
    assert!(reg.await.expect("join").status.success(), "2000 registers");

    let inf = injection_file(dir.path(), "blf.csv", &["2001;pw2001".to_string()]);
    let blf = sipp_embedded(
        target,
        dir.path(),
        free_port(),
        vec![
            "-sf".into(),
            scenario("subscribe_dialog.xml"),
            "-inf".into(),
            inf.display().to_string(),
            "-s".into(),
            "2000".into(),
            "-m".into(),
            "1".into(),
        ],
    );
    let phone = sipp_embedded(
        target,
        dir.path(),
        phone_port,
        vec![
            "-sf".into(),
            scenario("uas_answer_slowly.xml"),
            "-m".into(),
            "1".into(),
        ],
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let caller = sipp_embedded(
        target,
        dir.path(),
        free_port(),
        vec![
            "-sf".into(),
            scenario("uac_call.xml"),
            "-s".into(),
            "2000".into(),
            "-d".into(),
            "500".into(),
            "-m".into(),
            "1".into(),
        ],
    );
    assert!(caller.await.expect("join").status.success(), "the call");
    assert!(phone.await.expect("join").status.success(), "2000 answered");
    let out = blf.await.expect("join");
    if !out.status.success() {
        for e in std::fs::read_dir(dir.path()).expect("dir").flatten() {
            if e.file_name().to_string_lossy().ends_with("errors.log") {
                eprintln!("{}", std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    assert!(
        out.status.success(),
        "the subscriber saw every state in order: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pbx.shutdown().await.expect("shutdown");
}

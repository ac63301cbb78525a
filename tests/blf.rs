//! BLF with real phones: a SIPp "BLF key" subscribes (digest auth) to the dialog
//! state of extension 2000 and must see, in order, no call, then trying → early →
//! confirmed → terminated while a SIPp caller calls 2000 (a SIPp phone that rings
//! and answers slowly); then it unsubscribes and gets the final NOTIFY.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blf_subscriber_sees_each_dialog_state_of_a_call_in_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let users = vec![
        ("2000".to_string(), "pw2000".to_string()),
        ("2001".to_string(), "pw2001".to_string()),
    ];
    let (pbx, target) = embedded_pbx(dir.path(), &users, "[calls]\nauthenticate = false\n").await;
    let phone_port = free_port();
    register_phone(target, dir.path(), phone_port, "2000", "pw2000").await;

    let inf = injection_file(dir.path(), "blf.csv", &["2001;pw2001".to_string()]);
    let inf = inf.display().to_string();
    let blf = sipp_scenario(
        target,
        dir.path(),
        free_port(),
        "subscribe_dialog.xml",
        &["-inf", &inf, "-s", "2000", "-m", "1"],
    );
    let phone = sipp_scenario(
        target,
        dir.path(),
        phone_port,
        "uas_answer_slowly.xml",
        &["-m", "1"],
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let caller = sipp_scenario(
        target,
        dir.path(),
        free_port(),
        "uac_call.xml",
        &["-s", "2000", "-d", "500", "-m", "1"],
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

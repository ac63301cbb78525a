//! The command line: `check-config` errors, a refused config starting nothing, and
//! demo extensions printed once with random passwords, and the log formats.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

fn sipdesk() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sipdesk"))
}

fn check_config(file: impl AsRef<std::ffi::OsStr>) -> std::process::Output {
    sipdesk()
        .arg("check-config")
        .arg(file)
        .output()
        .expect("run")
}

#[test]
fn check_config_accepts_the_shipped_file_and_names_key_and_line_of_errors() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/sipdesk.toml");
    let ok = check_config(shipped);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[sip]\nmin_expires = 60\ndefault_expires = 30\n").expect("write");
    let out = check_config(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("line 2") && err.contains("sip.min_expires"),
        "{err}"
    );

    std::fs::write(&bad, "[rtp]\nport_mn = 1\n").expect("write");
    let out = check_config(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("line 2") && err.contains("port_mn"),
        "{err}"
    );
}

#[test]
fn a_refused_config_starts_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!("[sip]\nudp = [\"127.0.0.1:{port}\"]\nt1_ms = 9000\n"),
    )
    .expect("write");
    let out = sipdesk()
        .args(["run", "--config"])
        .arg(&bad)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sip.t1_ms"));
    assert!(!dir.path().join("data").exists(), "nothing created");
    assert_eq!(
        options_ping(([127, 0, 0, 1], port).into(), Duration::from_millis(300)),
        None
    );
}

#[test]
fn demo_extensions_get_random_passwords_printed_only_on_the_first_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let conf = format!(
        "[sip]\nudp = [\"127.0.0.1:{port}\"]\ntcp = [\"127.0.0.1:{port}\"]\n[http]\nlisten = \"127.0.0.1:0\"\n"
    );
    let mut server = Server::start(dir.path(), port, &conf);
    let first = server.log();
    let passwords: Vec<String> = first
        .lines()
        .filter(|l| l.trim_start().starts_with("extension "))
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect();
    assert_eq!(passwords.len(), 4, "{first}");
    assert!(passwords.iter().all(|p| p.len() >= 16));
    assert_ne!(passwords[0], passwords[1]);
    let stored = std::fs::read_dir(dir.path().join("data"))
        .expect("data dir")
        .count();
    assert!(stored > 0);
    server.restart();
    let again = server.log();
    assert_eq!(
        again.matches("Demo extensions were created").count(),
        1,
        "printed once only:\n{again}"
    );
}

#[test]
fn logs_off_a_terminal_are_plain_text_and_json_lines_when_asked() {
    // Text: the server's output goes to a file, so no colour codes.
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let mut server = Server::start(dir.path(), port, &config(port, "[\"MD5\"]", &users(1)));
    server.stop();
    let text = server.log();
    assert!(
        text.contains(" INFO ") && text.contains("started"),
        "{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "no ANSI escapes off a terminal:\n{text}"
    );

    // JSON: every line of standard output is one JSON object with level and
    // message; the demo passwords go to standard error.
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let conf = format!(
        "[sip]\nudp = [\"127.0.0.1:{port}\"]\ntcp = [\"127.0.0.1:{port}\"]\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [log]\nformat = \"json\"\n"
    );
    let file = dir.path().join("sipdesk.toml");
    std::fs::write(&file, conf).expect("config");
    let child = sipdesk()
        .args(["run", "--config"])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    let up = (0..100)
        .any(|_| options_ping(([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_some());
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let out = child.wait_with_output().expect("wait");
    assert!(up, "the PBX answered OPTIONS");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.len() >= 2, "{stdout}");
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["timestamp"].is_string()));
    assert!(lines
        .iter()
        .any(|l| l["message"].as_str().is_some_and(|m| m.contains("started"))));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Demo extensions were created"), "{stderr}");
}

#[test]
fn exported_sounds_are_accepted_back_as_queue_music() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = sipdesk()
        .args(["export", "sounds"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let music = dir.path().join("hold-music.wav");
    let conf = dir.path().join("q.toml");
    std::fs::write(
        &conf,
        format!(
            "[[users]]\nextension = \"201\"\npassword = \"x\"\n[[groups]]\nname = \"s\"\nmembers = [{{ extension = \"201\" }}]\n\
             [[queues]]\nnumber = \"500\"\ngroups = [\"s\"]\nmusic = \"{}\"\noverflow_announcement = \"{}\"\n",
            music.display(),
            dir.path().join("overflow.wav").display()
        ),
    )
    .expect("write");
    let ok = check_config(&conf);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    std::fs::write(&music, b"RIFF junk").expect("write");
    let bad = check_config(&conf);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        bad.status.code() == Some(2)
            && err.contains("queues.music")
            && err.contains("not a RIFF/WAVE file"),
        "{err}"
    );
}

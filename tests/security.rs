//! A PBX on a public address, against real attackers' traffic: a password
//! guesser (SIPp sending wrong passwords at ten times the phones' rate from
//! its own loopback address) is banned within the configured number of
//! failures while 200 real phones on another address keep registering and
//! calling; the security log has a line per event, and the shipped fail2ban
//! filter reads them.

mod common;

use common::*;
use std::time::Duration;

/// Nothing allow-listed: loopback addresses stand for hosts on the internet.
const SECURITY: &str =
    "[security]\nallow = []\nmax_auth_failures = 10\nwindow_secs = 60\nban_secs = 600\n";

const ATTACKER: &str = "127.0.0.2";
const PHONES: &str = "127.0.0.3";

/// SIPp in the background from `ip`, running `scenario_file` once per row of
/// `inf` at `rate`/s, `count` times, with more arguments.
fn run(
    server: &Server,
    ip: &str,
    scenario_file: &str,
    inf: &std::path::Path,
    rate: &str,
    count: usize,
    extra: &[&str],
) -> std::thread::JoinHandle<std::process::Output> {
    let sf = scenario(scenario_file);
    let count = count.to_string();
    let mut args = vec![
        "-sf",
        sf.as_str(),
        "-inf",
        inf.to_str().unwrap_or_default(),
        "-r",
        rate,
        "-m",
        count.as_str(),
        "-trace_err",
    ];
    args.extend(extra);
    sipp_from(server, ip, &args, Duration::from_secs(40))
}

#[test]
fn a_password_guesser_is_banned_while_real_phones_keep_registering_and_calling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let users = users(200);
    let server = Server::start(
        dir.path(),
        port,
        &config_with(port, "[\"MD5\"]", &users, SECURITY),
    );
    let rows: Vec<String> = users.iter().map(|(u, p)| format!("{u};{p}")).collect();
    let phones = injection_file(dir.path(), "phones.csv", &rows);
    let wrong: Vec<String> = users
        .iter()
        .map(|(u, _)| format!("{u};guess-{u}"))
        .collect();
    let guesses = injection_file(dir.path(), "guesses.csv", &wrong);

    // The guesser: 500 wrong-password REGISTERs a second (the phones send 50).
    let attack = run(
        &server,
        ATTACKER,
        "register_wrong_password.xml",
        &guesses,
        "500",
        2000,
        &[],
    );
    std::thread::sleep(Duration::from_millis(300));
    let registered = run(
        &server,
        PHONES,
        "register_auth.xml",
        &phones,
        "50",
        rows.len(),
        &[],
    );
    let out = registered.join().expect("join");
    assert_sipp_ok(&out, "200 phones register during the attack", &server);
    let calls = run(
        &server,
        PHONES,
        "uac_call.xml",
        &phones,
        "20",
        100,
        &["-s", "9000", "-d", "200"],
    );
    let out = calls.join().expect("join");
    assert_sipp_ok(&out, "the phones' calls during the attack", &server);
    let _ = attack.join();

    let log = server.log();
    let security: Vec<&str> = log.lines().filter(|l| l.contains("SECURITY ")).collect();
    let ban = security
        .iter()
        .position(|l| {
            l.contains(&format!(
                "SECURITY ban source={ATTACKER} reason=auth-failures"
            ))
        })
        .unwrap_or_else(|| panic!("the guesser is banned: {security:#?}"));
    let before = security[..ban]
        .iter()
        .filter(|l| l.contains(&format!("auth-failed source={ATTACKER}")))
        .count();
    assert_eq!(before, 10, "banned at the 10th failure");
    assert!(
        !security
            .iter()
            .any(|l| l.contains(&format!("source={PHONES}"))),
        "the phones' address is never counted: {security:#?}"
    );
    // Once banned, the guesser's datagrams are dropped unread: few failures after.
    let after = security.len() - ban;
    assert!(after < 50, "{after} security lines after the ban");

    // The shipped fail2ban filter reads the same lines.
    if std::process::Command::new("fail2ban-regex")
        .arg("--version")
        .output()
        .is_ok()
    {
        let filter = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/conf/fail2ban/filter.d/sipdesk.conf"
        );
        let out = std::process::Command::new("fail2ban-regex")
            .arg(dir.path().join("sipdesk.log"))
            .arg(filter)
            .output()
            .expect("fail2ban-regex");
        let text = String::from_utf8_lossy(&out.stdout);
        let matched = text
            .lines()
            .find_map(|l| {
                l.split(" matched,")
                    .next()
                    .filter(|_| l.starts_with("Lines:"))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        let ours = security
            .iter()
            .filter(|l| !l.contains("SECURITY lift"))
            .count();
        assert_eq!(
            matched, ours,
            "fail2ban matches every auth-failed/ban line:\n{text}"
        );
    } else {
        panic!("fail2ban-regex is not installed: run the test command from README.md");
    }
}

/// SIPVicious (PyPI `sipvicious`), installed by the test command into
/// `target/peers/sipvicious`.
fn svwar() -> std::path::PathBuf {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/peers/sipvicious/bin/sipvicious_svwar");
    assert!(
        bin.exists(),
        "{} is missing: run the test command from README.md",
        bin.display()
    );
    bin
}

#[test]
fn an_extension_scan_by_register_invite_and_options_cannot_tell_real_extensions_from_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // user1000..user1004 exist; the scan covers user995..user1009.
    let server = Server::start(
        dir.path(),
        port,
        &config_with(port, "[\"MD5\"]", &users(5), SECURITY),
    );
    for method in ["REGISTER", "INVITE", "OPTIONS"] {
        let out = std::process::Command::new("timeout")
            .arg("60")
            .arg(svwar())
            .args([
                "-m",
                method,
                "-e",
                "995-1009",
                "--template",
                "user%d",
                "-b",
                ATTACKER,
            ])
            .args(["-P", &free_port().to_string()])
            .args(["-p", &port.to_string(), "127.0.0.1", "--force"])
            .output()
            .expect("svwar");
        let text = String::from_utf8_lossy(&out.stdout);
        // svwar's table rows: "| user1001 | reqauth |".
        let found: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix('|'))
            .filter_map(|l| l.split('|').next())
            .map(str::trim)
            .filter(|e| e.starts_with("user"))
            .collect();
        let real = found
            .iter()
            .filter(|e| ("user1000".."user1005").contains(*e))
            .count();
        assert!(
            found.is_empty() || found.len() == 15,
            "{method}: the scan told {real} real extensions apart: {found:?}\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
}

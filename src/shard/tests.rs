//! The shard driven with a fake clock: challenge, authenticated REGISTER held
//! until the store flush, retransmissions, and cleanup by Timer J.

use super::*;
use crate::clock::UnixMillis;
use crate::sip::auth::Algorithm;
use crate::testkit::{Harness, Setup, REALM};

/// The default `[sip] shed_after_ms`.
const SHED_AFTER: Duration = Duration::from_millis(50);

struct Fixture {
    h: Harness,
    ep: Shard,
    t0: Instant,
}

/// A shard with user 201 (password "secret") and the test's clock at `t0`.
fn fixture() -> Fixture {
    let h = Harness::new(Setup::default());
    let t0 = h.t0;
    // The tests drive the shard directly; the harness keeps the environment.
    let ep = Shard::new(
        Arc::clone(&h.env),
        ShardConfig {
            index: 0,
            max_transactions: 1000,
            dialplan: Dialplan::from_config(&crate::config::Config::default()),
            clock: crate::clock::WallClock::new(UnixMillis(1_000_000), t0),
            shed_after: SHED_AFTER,
        },
        TransactionLayer::new(crate::sip::transaction::TimerConfig::default()),
        Counters::new(crate::store::IdGen::new(1, 0, 1)),
    );
    Fixture { h, ep, t0 }
}

fn phone() -> Remote {
    Remote::udp("192.0.2.5:5062".parse().expect("addr"))
}

fn register(cseq: u32, branch: &str, auth: Option<&str>) -> Bytes {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    Bytes::from(format!(
        "REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.1:5062;branch={branch};rport\r\n\
         From: <sip:201@pbx>;tag=a\r\nTo: <sip:201@pbx>\r\nCall-ID: reg@phone\r\nCSeq: {cseq} REGISTER\r\n\
         Contact: <sip:201@10.1.1.1:5062>\r\n{auth}Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ))
}

fn sent(ep: &mut Shard) -> Vec<String> {
    std::iter::from_fn(|| ep.poll_transmit())
        .map(|t| {
            assert_eq!(
                t.remote.addr,
                phone().addr,
                "answers follow rport to the source"
            );
            String::from_utf8_lossy(&t.payload).into_owned()
        })
        .collect()
}

/// What a phone computes from the first challenge (RFC 7616 §3.4.1).
fn credentials(challenge: &str, password: &str) -> String {
    credentials_for(challenge, password, "REGISTER", "sip:pbx")
}

fn credentials_for(challenge: &str, password: &str, method: &str, uri: &str) -> String {
    let line = challenge
        .lines()
        .find(|l| l.starts_with("WWW-Authenticate:"))
        .expect("a challenge");
    let nonce = line
        .split("nonce=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("nonce");
    let alg = Algorithm::Sha256;
    let ha1 = alg.hex(&[b"201", REALM.as_bytes(), password.as_bytes()]);
    let ha2 = alg.hex(&[method.as_bytes(), uri.as_bytes()]);
    let resp = alg.hex(&[
        ha1.as_bytes(),
        nonce.as_bytes(),
        b"00000001",
        b"c0ffee",
        b"auth",
        ha2.as_bytes(),
    ]);
    format!(
        "Digest username=\"201\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", \
         algorithm=SHA-256, qop=auth, nc=00000001, cnonce=\"c0ffee\""
    )
}

#[test]
fn register_is_challenged_then_answered_only_after_the_store_flush() {
    let Fixture { h: _h, mut ep, t0 } = fixture();
    ep.handle_bytes(t0, register(1, "z9hG4bK1", None), phone());
    let out = sent(&mut ep);
    assert!(out[0].starts_with("SIP/2.0 401 Unauthorized"), "{out:?}");
    assert!(
        out[0].contains("rport=5062;") || out[0].contains("rport=5062\r\n"),
        "{}",
        out[0]
    );

    let auth = credentials(&out[0], "secret");
    let t1 = t0 + Duration::from_millis(20);
    ep.handle_bytes(t1, register(2, "z9hG4bK2", Some(&auth)), phone());
    assert!(
        sent(&mut ep).is_empty(),
        "nothing confirmed before the flush"
    );
    let ask = ep.poll_flush().expect("a flush is requested");
    assert!(ask.prompt, "the phone waits for its answer");
    let seq = ask.seq;
    assert_eq!(ep.poll_flush(), None, "once");
    // A retransmission while the flush runs is absorbed.
    ep.handle_bytes(
        t1 + Duration::from_millis(500),
        register(2, "z9hG4bK2", Some(&auth)),
        phone(),
    );
    assert!(sent(&mut ep).is_empty());

    ep.handle_flushed(t1 + Duration::from_millis(501), seq);
    let out = sent(&mut ep);
    assert!(out[0].starts_with("SIP/2.0 200 OK"), "{out:?}");
    assert!(
        out[0].contains("Contact: <sip:201@10.1.1.1:5062>;expires=3600"),
        "{}",
        out[0]
    );
    // The registrar is stateless (RFC 3261 §8.2.7): nothing waits out Timer J...
    assert_eq!(ep.load(), (0, 0));
    // ...and a retransmission after the answer gets the same answer again,
    // regenerated (same To tag, same bindings), without a second write.
    ep.handle_bytes(
        t1 + Duration::from_millis(600),
        register(2, "z9hG4bK2", Some(&auth)),
        phone(),
    );
    assert_eq!(sent(&mut ep), out);
    assert_eq!(ep.poll_flush(), None, "nothing new to write");
    assert_eq!(ep.load(), (0, 0));
}

#[test]
fn a_wrong_password_is_forbidden_and_binds_nothing() {
    let Fixture { h, mut ep, t0 } = fixture();
    ep.handle_bytes(t0, register(1, "z9hG4bK1", None), phone());
    let challenge = sent(&mut ep).remove(0);
    ep.handle_bytes(
        t0,
        register(2, "z9hG4bK2", Some(&credentials(&challenge, "guess"))),
        phone(),
    );
    let out = sent(&mut ep);
    assert!(out[0].starts_with("SIP/2.0 403 Forbidden"), "{out:?}");
    assert_eq!(ep.poll_flush(), None);
    assert_eq!(h.env.registrar.count(UnixMillis(1_000_000)), 0);
}

#[test]
fn a_failed_flush_turns_the_held_answer_into_500() {
    let Fixture { h: _h, mut ep, t0 } = fixture();
    ep.handle_bytes(t0, register(1, "z9hG4bK1", None), phone());
    let challenge = sent(&mut ep).remove(0);
    ep.handle_bytes(
        t0,
        register(2, "z9hG4bK2", Some(&credentials(&challenge, "secret"))),
        phone(),
    );
    assert!(ep.poll_flush().is_some());
    ep.handle_flush_failed(t0);
    let out = sent(&mut ep);
    assert!(out[0].starts_with("SIP/2.0 500 "), "{out:?}");
}

#[test]
fn bad_requests_are_answered_statelessly_and_unanswerable_ones_dropped() {
    let Fixture { h, mut ep, t0 } = fixture();
    ep.handle_bytes(t0, Bytes::from_static(b"OPTIONS sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.1:5062;rport;branch=z9hG4bKx\r\nTo: <sip:pbx>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n"), phone());
    let out = sent(&mut ep);
    assert!(
        out[0].starts_with("SIP/2.0 400 Missing Or Bad From Header"),
        "{out:?}"
    );
    ep.handle_bytes(t0, Bytes::from_static(b"\x16\x03\x01 not sip"), phone());
    ep.handle_bytes(
        t0,
        Bytes::from_static(b"OPTIONS sip:pbx SIP/2.0\r\nCall-ID: x\r\n\r\n"),
        phone(),
    );
    assert!(sent(&mut ep).is_empty());
    assert_eq!(ep.load(), (0, 0), "nothing kept for bad input");
    assert_eq!(h.env.stats.dropped_malformed.load(Ordering::Relaxed), 1);
}

#[test]
fn requests_that_break_the_grammar_are_answered_400_naming_the_problem() {
    let Fixture { h: _h, mut ep, t0 } = fixture();
    let base = "OPTIONS sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.1:5062;rport;branch=z9hG4bK";
    for (i, (line, extra, want)) in [
        ("OPTIONS sip:pbx", "To: <sip:pbx>\r\n", "Repeated To Header"),
        (
            "OPTIONS sip:pbx",
            "Subject: a\x00b\r\n",
            "Control Character In Header Value",
        ),
        ("OPTIONS <sip:pbx>", "", "Bad Request-URI"),
        (
            "OPTIONS sip:pbx",
            "Bad Line\r\n",
            "header line has no colon",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let text = base.replacen("OPTIONS sip:pbx", line, 1);
        let msg = format!(
            "{text}{i}\r\nFrom: <sip:201@pbx>;tag=a\r\nTo: <sip:pbx>\r\nCall-ID: g{i}\r\nCSeq: 1 OPTIONS\r\n{extra}\r\n"
        );
        ep.handle_bytes(t0, Bytes::from(msg), phone());
        let out = sent(&mut ep);
        assert!(
            out[0].starts_with(&format!("SIP/2.0 400 {want}")),
            "{out:?}"
        );
    }
}

#[test]
fn a_new_request_that_waited_too_long_is_shed_with_503_and_in_dialog_work_is_not() {
    let Fixture { h, mut ep, t0 } = fixture();
    let now = t0 + Duration::from_secs(1);
    let queued = now - SHED_AFTER - Duration::from_millis(1);
    let parse = |b: Bytes| crate::sip::message::parse(b, &Default::default());
    ep.handle_message(
        now,
        parse(register(1, "z9hG4bKlate", None)),
        phone(),
        queued,
    );
    let out = sent(&mut ep);
    assert!(
        out[0].starts_with("SIP/2.0 503 Service Unavailable"),
        "{out:?}"
    );
    assert!(out[0].contains("Retry-After: "), "{}", out[0]);
    assert_eq!(ep.load(), (0, 0), "no transaction was made for it");
    assert_eq!(h.env.stats.shed.load(Ordering::Relaxed), 1);
    // A request inside a dialog finishes existing work: never shed.
    let bye = String::from_utf8_lossy(&register(2, "z9hG4bKbye", None))
        .replace("REGISTER sip:pbx", "BYE sip:pbx")
        .replace("2 REGISTER", "2 BYE")
        .replace("To: <sip:201@pbx>", "To: <sip:201@pbx>;tag=x");
    ep.handle_message(now, parse(Bytes::from(bye)), phone(), queued);
    assert!(sent(&mut ep)[0].starts_with("SIP/2.0 481"));
    // In time, the same REGISTER is served.
    ep.handle_message(now, parse(register(3, "z9hG4bKok", None)), phone(), now);
    assert!(sent(&mut ep)[0].starts_with("SIP/2.0 401"));
}

fn subscribe(cseq: u32, event: &str, expires: u32, to_tag: &str, auth: Option<&str>) -> Bytes {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    Bytes::from(format!(
        "SUBSCRIBE sip:201@pbx SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.1:5062;branch=z9hG4bKs{cseq};rport\r\n\
         From: <sip:202@pbx>;tag=blf\r\nTo: <sip:201@pbx>{to_tag}\r\nCall-ID: blf@phone\r\nCSeq: {cseq} SUBSCRIBE\r\n\
         Contact: <sip:202@10.1.1.1:5062>\r\nEvent: {event}\r\nExpires: {expires}\r\n{auth}Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ))
}

/// The phone's answer to one of our NOTIFYs.
fn answer(notify: &str, code: u16) -> Bytes {
    let header = |name: &str| {
        notify
            .lines()
            .find(|l| l.starts_with(name))
            .expect("header")
            .to_string()
    };
    Bytes::from(format!(
        "SIP/2.0 {code} X\r\n{}\r\n{}\r\n{};tag=blf\r\n{}\r\n{}\r\nContent-Length: 0\r\n\r\n",
        header("Via:"),
        header("From:"),
        header("To:").split(";tag").next().unwrap_or_default(),
        header("Call-ID:"),
        header("CSeq:"),
    ))
}

fn state_of(notify: &str) -> Vec<&str> {
    notify
        .split("<state>")
        .skip(1)
        .filter_map(|s| s.split('<').next())
        .collect()
}

#[test]
fn a_subscription_is_notified_of_each_change_coalesced_and_ends_at_expiry() {
    let Fixture { h, mut ep, t0 } = fixture();
    ep.handle_bytes(t0, subscribe(1, "dialog", 120, "", None), phone());
    let challenge = sent(&mut ep).remove(0);
    assert!(challenge.starts_with("SIP/2.0 401"), "{challenge}");
    let auth = credentials_for(&challenge, "secret", "SUBSCRIBE", "sip:201@pbx");
    ep.handle_bytes(t0, subscribe(2, "dialog", 120, "", Some(&auth)), phone());
    let out = sent(&mut ep);
    assert!(
        out[0].starts_with("SIP/2.0 200 OK") && out[0].contains("Expires: 120"),
        "{out:?}"
    );
    let first = &out[1];
    assert!(
        first.starts_with("NOTIFY sip:202@10.1.1.1:5062 SIP/2.0"),
        "{first}"
    );
    assert!(
        first.contains("Subscription-State: active;expires=120"),
        "{first}"
    );
    assert!(first.contains("Event: dialog") && first.contains("state=\"full\""));
    assert!(state_of(first).is_empty(), "no calls yet");

    let presence = h.env.presence.clone();
    let mut changes = presence.subscribe();
    let wall = UnixMillis(1_000_000);
    let id = presence
        .dialog_started(
            "201",
            ("c1", None),
            crate::presence::Direction::Recipient,
            "300",
            wall,
        )
        .expect("trying");
    let t1 = t0 + Duration::from_secs(1);
    // The first NOTIFY is still unanswered: the change waits.
    ep.handle_presence(t1, &changes.try_recv().expect("change"));
    assert!(sent(&mut ep).is_empty(), "one NOTIFY in flight at a time");
    ep.handle_bytes(t1, answer(first, 200), phone());
    let trying = sent(&mut ep).remove(0);
    assert_eq!(state_of(&trying), ["trying"]);
    // Two changes while that one is in flight: only the latest is sent.
    for s in [
        crate::presence::DialogState::Early,
        crate::presence::DialogState::Confirmed,
    ] {
        presence.dialog_state("201", id, s, wall).expect("step");
        ep.handle_presence(t1, &changes.try_recv().expect("change"));
    }
    assert!(sent(&mut ep).is_empty());
    ep.handle_bytes(t1, answer(&trying, 200), phone());
    let confirmed = sent(&mut ep).remove(0);
    assert_eq!(state_of(&confirmed), ["confirmed"]);
    presence.dialog_ended("201", id, None, wall).expect("end");
    ep.handle_bytes(t1, answer(&confirmed, 200), phone());
    ep.handle_presence(t1, &changes.try_recv().expect("change"));
    let ended = sent(&mut ep).remove(0);
    assert_eq!(
        state_of(&ended),
        ["terminated"],
        "the ended call is reported once"
    );
    ep.handle_bytes(t1, answer(&ended, 200), phone());

    // No refresh: at expiry a last NOTIFY, then the subscription is gone.
    ep.handle_timeout(t0 + Duration::from_secs(121));
    let last = sent(&mut ep).remove(0);
    assert!(
        last.contains("Subscription-State: terminated;reason=timeout"),
        "{last}"
    );
    assert_eq!(ep.blf.count(), 1);
    ep.handle_bytes(t0 + Duration::from_secs(121), answer(&last, 200), phone());
    assert_eq!(ep.blf.count(), 0);
}

#[test]
fn a_subscriber_that_refuses_a_notify_is_dropped() {
    let Fixture { h: _h, mut ep, t0 } = fixture();
    ep.handle_bytes(t0, subscribe(1, "presence", 600, "", None), phone());
    let challenge = sent(&mut ep).remove(0);
    let auth = credentials_for(&challenge, "secret", "SUBSCRIBE", "sip:201@pbx");
    ep.handle_bytes(t0, subscribe(2, "presence", 600, "", Some(&auth)), phone());
    let out = sent(&mut ep);
    assert!(out[1].contains("application/pidf+xml") && out[1].contains("<basic>closed</basic>"));
    ep.handle_bytes(t0, answer(&out[1], 481), phone());
    assert_eq!(ep.blf.count(), 0);
    // Its refresh now finds nothing.
    ep.handle_bytes(
        t0,
        subscribe(3, "presence", 600, ";tag=gone", None),
        phone(),
    );
    assert!(sent(&mut ep)[0].starts_with("SIP/2.0 481"));
}

#[test]
fn unknown_events_users_and_short_intervals_are_refused() {
    let Fixture { h: _h, mut ep, t0 } = fixture();
    ep.handle_bytes(t0, subscribe(1, "conference", 600, "", None), phone());
    let out = sent(&mut ep);
    assert!(out[0].starts_with("SIP/2.0 489 Bad Event"), "{out:?}");
    assert!(out[0].contains("Allow-Events: dialog, presence, message-summary"));
    ep.handle_bytes(t0, subscribe(2, "dialog", 10, "", None), phone());
    let out = sent(&mut ep);
    assert!(
        out[0].starts_with("SIP/2.0 423") && out[0].contains("Min-Expires: 60"),
        "{out:?}"
    );
    // An unknown extension is challenged like a known one (no enumeration);
    // only an authenticated subscriber learns it does not exist.
    let to_999 = |cseq, auth: Option<&str>| {
        let text = String::from_utf8_lossy(&subscribe(cseq, "dialog", 600, "", auth))
            .replace("SUBSCRIBE sip:201@pbx", "SUBSCRIBE sip:999@pbx");
        Bytes::from(text)
    };
    ep.handle_bytes(t0, to_999(3, None), phone());
    let challenge = sent(&mut ep).remove(0);
    assert!(challenge.starts_with("SIP/2.0 401"), "{challenge}");
    let auth = credentials_for(&challenge, "secret", "SUBSCRIBE", "sip:999@pbx");
    ep.handle_bytes(t0, to_999(4, Some(&auth)), phone());
    assert!(sent(&mut ep)[0].starts_with("SIP/2.0 404"));
}

#[test]
fn a_phone_that_wants_its_lamp_unsolicited_gets_it_after_registering_and_on_each_change() {
    let Fixture { h, mut ep, t0 } = fixture();
    h.env.mwi.set_callbacks("201", 2);
    ep.handle_bytes(t0, register(1, "z9hG4bK1", None), phone());
    let auth = credentials(&sent(&mut ep)[0], "secret");
    ep.handle_bytes(t0, register(2, "z9hG4bK2", Some(&auth)), phone());
    let seq = ep.poll_flush().expect("flush").seq;
    ep.handle_flushed(t0, seq);
    assert!(sent(&mut ep)[0].starts_with("SIP/2.0 200 OK"));
    ep.handle_timeout(t0 + Duration::from_millis(1999));
    assert!(sent(&mut ep).is_empty(), "not before 2 s");
    ep.handle_timeout(t0 + Duration::from_secs(2));
    let out = sent(&mut ep);
    assert_eq!(out.len(), 1, "{out:?}");
    let notify = &out[0];
    assert!(
        notify.starts_with("NOTIFY sip:201@10.1.1.1:5062 SIP/2.0"),
        "{notify}"
    );
    assert!(notify.contains("Event: message-summary\r\n"), "{notify}");
    assert!(notify.contains("Content-Type: application/simple-message-summary\r\n"));
    assert!(notify.contains("Messages-Waiting: yes\r\nMessage-Account: sip:201@"));
    assert!(notify.contains("Text-Message: 2/0\r\n"), "{notify}");
    // A change: the lamp goes out.
    h.env.mwi.set_callbacks("201", 0);
    ep.handle_messages(t0 + Duration::from_secs(3), "201");
    let out = sent(&mut ep);
    assert!(out[0].contains("Messages-Waiting: no\r\n"), "{out:?}");
}

#[test]
fn my_message_summary_subscription_is_notified_with_my_counts_and_their_changes() {
    let Fixture { h, mut ep, t0 } = fixture();
    h.env.mwi.set_callbacks("201", 1);
    ep.handle_bytes(t0, subscribe(1, "message-summary", 600, "", None), phone());
    let challenge = sent(&mut ep).remove(0);
    let auth = credentials_for(&challenge, "secret", "SUBSCRIBE", "sip:201@pbx");
    ep.handle_bytes(
        t0,
        subscribe(2, "message-summary", 600, "", Some(&auth)),
        phone(),
    );
    let out = sent(&mut ep);
    assert!(out[0].starts_with("SIP/2.0 200 OK"), "{out:?}");
    assert!(out[1].starts_with("NOTIFY ") && out[1].contains("Event: message-summary\r\n"));
    assert!(out[1].contains("Messages-Waiting: yes\r\n"), "{}", out[1]);
    ep.handle_bytes(t0, answer(&out[1], 200), phone());
    // Presence changes do not concern it; message changes do.
    h.env.mwi.set_callbacks("201", 0);
    ep.handle_messages(t0 + Duration::from_secs(1), "201");
    let out = sent(&mut ep);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(out[0].contains("Messages-Waiting: no\r\n"), "{}", out[0]);
}

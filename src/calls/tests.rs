//! Calls driven through the shard with a fake clock and fake media: SIP text in,
//! SIP text out, no sockets. Each test plays the phones' side by hand.

use crate::media::prompt::Prompt;
use crate::routing::{Directory, Group, GroupId, Overflow, Queue};
use crate::sip::{CallId, Remote, StatusCode};
use crate::testkit::{Harness, Setup};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CALLER: &str = "10.0.0.1:5062";
const PHONE_A: &str = "10.0.0.2:5060";
const PHONE_B: &str = "10.0.0.3:5060";
const SDP: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8\r\na=sendrecv\r\n";

fn remote(addr: &str) -> Remote {
    Remote::udp(addr.parse().expect("addr"))
}

/// One header's value in a message's text.
fn header<'a>(msg: &'a str, name: &str) -> &'a str {
    msg.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
        .unwrap_or_else(|| panic!("no {name} in {msg}"))
}

fn with_body(head: String, body: &str) -> Bytes {
    let ct = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/sdp\r\n".into()
    };
    Bytes::from(format!(
        "{head}{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

/// The caller's INVITE for `to` (extra headers in `extra`).
fn invite(call_id: &str, to: &str, extra: &str) -> Bytes {
    with_body(
        format!(
            "INVITE sip:{to}@pbx SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK-{call_id};rport\r\n\
             From: \"Alice\" <sip:201@pbx>;tag=caller\r\nTo: <sip:{to}@pbx>\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\nContact: <sip:201@{CALLER}>\r\nMax-Forwards: 70\r\n{extra}"
        ),
        SDP,
    )
}

/// A phone's response to a request we sent it (its To tag `tag`).
fn response(req: &str, code: u16, tag: &str, body: &str, extra: &str) -> Bytes {
    let to = header(req, "To");
    let to = if to.contains(";tag=") {
        to.to_string()
    } else {
        format!("{to};tag={tag}")
    };
    with_body(
        format!(
            "SIP/2.0 {code} {}\r\nVia: {}\r\nFrom: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n\
             Contact: <sip:phone@{PHONE_A}>\r\n{extra}",
            StatusCode(code).reason(),
            header(req, "Via"),
            header(req, "From"),
            header(req, "Call-ID"),
            header(req, "CSeq"),
        ),
        body,
    )
}

/// A request inside the caller's dialog with the PBX (`ok` is our 200).
fn caller_request(ok: &str, method: &str, cseq: u32, body: &str, extra: &str) -> Bytes {
    with_body(
        format!(
            "{method} sip:202@192.0.2.100:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK-{method}{cseq};rport\r\n\
             From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n{extra}",
            header(ok, "From"),
            header(ok, "To"),
            header(ok, "Call-ID"),
        ),
        body,
    )
}

/// The CANCEL of the caller's INVITE.
fn caller_cancel(call_id: &str) -> Bytes {
    with_body(
        format!(
            "CANCEL sip:202@pbx SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK-{call_id};rport\r\n\
             From: \"Alice\" <sip:201@pbx>;tag=caller\r\nTo: <sip:202@pbx>\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 CANCEL\r\nMax-Forwards: 70\r\n"
        ),
        "",
    )
}

struct Lab {
    h: Harness,
    now: Instant,
    /// CDRs written so far (what the writer was handed).
    cdrs: usize,
    /// Every store write so far, as text.
    writes: Vec<String>,
    /// What the last input sent, with where it went.
    last: Vec<(String, String)>,
}

impl Lab {
    fn new(setup: Setup) -> Lab {
        let h = Harness::new(setup);
        let now = h.t0;
        Lab {
            h,
            now,
            cdrs: 0,
            writes: Vec::new(),
            last: Vec::new(),
        }
    }

    /// 201 calls 202, which has phones at `phones`; calls need no digest.
    fn two_phones(phones: &[&str]) -> Lab {
        let lab = Lab::new(Setup {
            users: vec!["201", "202"],
            authenticate: false,
            ..Setup::default()
        });
        for p in phones {
            lab.h.bind("202", p);
        }
        lab
    }

    fn input(&mut self, bytes: Bytes, from: &str) -> Vec<String> {
        self.h.shard.handle_bytes(self.now, bytes, remote(from));
        self.out()
    }

    /// What the shard sends now, after making store writes durable (the
    /// writer's group commit releases held answers).
    fn out(&mut self) -> Vec<String> {
        let mut out = self.h.sent();
        for w in self.h.flush(self.now) {
            let w = format!("{w:?}");
            self.cdrs += usize::from(w.contains("Cdr {"));
            self.writes.push(w);
        }
        out.extend(self.h.sent());
        self.last = out
            .iter()
            .map(|t| {
                let text = String::from_utf8_lossy(&t.payload).into_owned();
                (t.remote.addr.to_string(), text)
            })
            .collect();
        self.last.iter().map(|(_, m)| m.clone()).collect()
    }

    /// Where the last input's messages starting with `start` went.
    fn sent_to(&self, start: &str) -> Vec<&str> {
        let to = self.last.iter().filter(|(_, m)| m.starts_with(start));
        to.map(|(a, _)| a.as_str()).collect()
    }

    fn advance(&mut self, by: Duration) -> Vec<String> {
        self.now += by;
        self.h.run_until(self.now);
        self.out()
    }

    fn idle(&self) -> bool {
        self.h.shard.counts().0 == 0
            && self
                .h
                .media
                .leased
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0
    }

    fn media_log(&self) -> Vec<String> {
        self.h
            .media
            .log
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }
}

/// The messages starting with `prefix`, retransmissions left out.
fn starting<'a>(out: &'a [String], prefix: &str) -> Vec<&'a String> {
    let mut seen = std::collections::HashSet::new();
    out.iter()
        .filter(|m| m.starts_with(prefix))
        .filter(|m| seen.insert(m.as_str()))
        .collect()
}

fn one<'a>(out: &'a [String], prefix: &str) -> &'a String {
    let found = starting(out, prefix);
    assert_eq!(found.len(), 1, "one {prefix} in {out:#?}");
    found[0]
}

/// The B-leg INVITE toward `phone` among what was sent.
fn toward<'a>(out: &'a [String], phone: &str) -> &'a String {
    out.iter()
        .find(|m| m.starts_with(&format!("INVITE sip:202@{phone}")))
        .unwrap_or_else(|| panic!("no INVITE to {phone} in {out:#?}"))
}

/// A connected call 201 → 202 on one phone: (our 200 to the caller, B's INVITE).
fn connected(lab: &mut Lab, call_id: &str, extra: &str) -> (String, String) {
    let out = lab.input(invite(call_id, "202", extra), CALLER);
    let b = toward(&out, PHONE_A).clone();
    let sdp_b = SDP.replace("10.0.0.1", "10.0.0.2");
    let out = lab.input(response(&b, 200, "b", &sdp_b, extra), PHONE_A);
    one(&out, "ACK sip:phone@");
    let ok = one(&out, "SIP/2.0 200 OK").clone();
    lab.input(caller_request(&ok, "ACK", 1, "", ""), CALLER);
    (ok, b)
}

#[test]
fn a_call_forks_to_every_phone_and_the_first_2xx_wins() {
    let mut lab = Lab::two_phones(&[PHONE_A, PHONE_B]);
    let out = lab.input(invite("fork@a", "202", ""), CALLER);
    let (b1, b2) = (toward(&out, PHONE_A).clone(), toward(&out, PHONE_B).clone());
    assert_ne!(
        header(&b1, "Call-ID"),
        header(&b2, "Call-ID"),
        "each leg its own Call-ID"
    );
    assert_ne!(
        header(&b1, "Call-ID"),
        "fork@a",
        "the callee never sees A's Call-ID"
    );
    assert!(b1.contains("c=IN IP4 192.0.2.100"), "media anchored: {b1}");

    let out = lab.input(response(&b1, 180, "b1", "", ""), PHONE_A);
    one(&out, "SIP/2.0 180 Ringing");
    let sdp_b = SDP.replace("10.0.0.1", "10.0.0.3");
    let out = lab.input(response(&b2, 200, "b2", &sdp_b, ""), PHONE_B);
    one(&out, "ACK ");
    let cancel = one(&out, "CANCEL sip:202@10.0.0.2");
    assert_eq!(
        header(cancel, "Call-ID"),
        header(&b1, "Call-ID"),
        "the loser is cancelled"
    );
    let ok = one(&out, "SIP/2.0 200 OK");
    assert!(
        ok.contains("c=IN IP4 192.0.2.100\r\n") && !ok.contains("c=IN IP4 10.0.0.3"),
        "the caller's media goes to the relay: {ok}"
    );
    lab.input(response(&b1, 487, "b1", "", ""), PHONE_A);

    let ok = ok.clone();
    lab.input(caller_request(&ok, "ACK", 1, "", ""), CALLER);
    let out = lab.input(caller_request(&ok, "BYE", 2, "", ""), CALLER);
    one(&out, "BYE sip:phone@");
    one(&out, "SIP/2.0 200 OK");
    assert_eq!(lab.cdrs, 1, "exactly one CDR");
    assert!(lab.idle(), "no call or media left");
}

#[test]
fn a_byes_answer_waits_for_a_relaxed_flush_and_a_callers_refusal_for_a_prompt_one() {
    let mut lab = Lab::two_phones(&[PHONE_A]);
    let (ok, _) = connected(&mut lab, "relaxed@a", "");
    let bye = caller_request(&ok, "BYE", 2, "", "");
    lab.h.shard.handle_bytes(lab.now, bye, remote(CALLER));
    let ask = lab.h.shard.poll_flush().expect("the CDR is flushed");
    assert!(!ask.prompt, "nobody waits on the 200 to a BYE");
    lab.h.shard.handle_flushed(lab.now, ask.seq);
    assert_eq!(starting(&lab.out(), "SIP/2.0 200 OK").len(), 1);

    let out = lab.input(invite("busy@a", "202", ""), CALLER);
    let b = toward(&out, PHONE_A).clone();
    let busy = response(&b, 486, "b", "", "");
    lab.h.shard.handle_bytes(lab.now, busy, remote(PHONE_A));
    let ask = lab.h.shard.poll_flush().expect("the CDR is flushed");
    assert!(ask.prompt, "the caller waits to hear busy");
}

#[test]
fn a_cancelled_call_cancels_its_branches_and_answers_487() {
    let mut lab = Lab::two_phones(&[PHONE_A]);
    let out = lab.input(invite("cancel@a", "202", ""), CALLER);
    let b = toward(&out, PHONE_A).clone();
    let out = lab.input(caller_cancel("cancel@a"), CALLER);
    one(&out, "SIP/2.0 200 OK");
    one(&out, "CANCEL sip:202@10.0.0.2");
    one(&out, "SIP/2.0 487 Request Terminated");
    lab.input(response(&b, 487, "b", "", ""), PHONE_A);
    assert_eq!(lab.cdrs, 1);
    assert!(lab.idle());
}

#[test]
fn busy_decline_and_no_answer_reach_the_caller() {
    for (code, want) in [(486, "SIP/2.0 486 Busy Here"), (603, "SIP/2.0 603 Decline")] {
        let mut lab = Lab::two_phones(&[PHONE_A]);
        let out = lab.input(invite("busy@a", "202", ""), CALLER);
        let b = toward(&out, PHONE_A).clone();
        let out = lab.input(response(&b, code, "b", "", ""), PHONE_A);
        one(&out, want);
        assert!(lab.idle());
    }
    let mut lab = Lab::new(Setup {
        users: vec!["201", "202"],
        authenticate: false,
        ring_timeout: Duration::from_secs(10),
        ..Setup::default()
    });
    lab.h.bind("202", PHONE_A);
    lab.input(invite("late@a", "202", ""), CALLER);
    let out = lab.advance(Duration::from_secs(10));
    one(&out, "CANCEL sip:202@10.0.0.2");
    one(&out, "SIP/2.0 480 Temporarily Unavailable");
    assert!(lab.idle());
}

#[test]
fn a_2xx_that_crosses_a_cancel_is_acked_and_ended() {
    let mut lab = Lab::two_phones(&[PHONE_A]);
    let out = lab.input(invite("race@a", "202", ""), CALLER);
    let b = toward(&out, PHONE_A).clone();
    lab.input(caller_cancel("race@a"), CALLER);
    // The phone answered before it saw our CANCEL.
    let out = lab.input(response(&b, 200, "b", SDP, ""), PHONE_A);
    one(&out, "ACK sip:phone@");
    let bye = one(&out, "BYE sip:phone@");
    assert_eq!(header(bye, "Call-ID"), header(&b, "Call-ID"));
    assert!(lab.idle());
}

#[test]
fn a_re_invite_is_relayed_to_the_other_leg_with_its_own_cseq() {
    let mut lab = Lab::two_phones(&[PHONE_A]);
    let (ok, b) = connected(&mut lab, "hold@a", "");
    let hold = SDP.replace("sendrecv", "sendonly");
    let out = lab.input(caller_request(&ok, "INVITE", 2, &hold, ""), CALLER);
    let relayed = one(&out, "INVITE sip:phone@");
    assert_eq!(header(relayed, "Call-ID"), header(&b, "Call-ID"));
    assert_eq!(header(relayed, "CSeq"), "2 INVITE");
    assert!(relayed.contains("a=sendonly") && relayed.contains("c=IN IP4 192.0.2.100"));
    let answer = SDP.replace("sendrecv", "recvonly");
    let out = lab.input(response(relayed, 200, "b", &answer, ""), PHONE_A);
    let ack = one(&out, "ACK sip:phone@");
    assert_eq!(header(ack, "CSeq"), "2 ACK");
    let ok2 = one(&out, "SIP/2.0 200 OK");
    assert_eq!(header(ok2, "CSeq"), "2 INVITE");
    assert!(ok2.contains("a=recvonly") && ok2.contains("c=IN IP4 192.0.2.100"));
    assert!(
        lab.media_log()
            .iter()
            .any(|l| l.ends_with("receives=false")),
        "the relay knows the caller holds: {:?}",
        lab.media_log()
    );
}

#[test]
fn a_session_nobody_refreshes_ends_when_its_timer_expires() {
    let mut lab = Lab::two_phones(&[PHONE_A]);
    connected(
        &mut lab,
        "timer@a",
        "Session-Expires: 120;refresher=uac\r\nSupported: timer\r\n",
    );
    assert!(lab
        .advance(Duration::from_secs(119))
        .iter()
        .all(|m| !m.starts_with("BYE")));
    let out = lab.advance(Duration::from_secs(2));
    assert_eq!(starting(&out, "BYE ").len(), 2, "both legs: {out:#?}");
    assert_eq!(lab.cdrs, 1);
    assert!(lab.idle());
}

#[test]
fn a_session_interval_below_min_se_is_refused_with_422() {
    let mut lab = Lab::two_phones(&[PHONE_A]);
    let out = lab.input(invite("short@a", "202", "Session-Expires: 30\r\n"), CALLER);
    let refused = one(&out, "SIP/2.0 422 Session Interval Too Small");
    assert_eq!(header(refused, "Min-SE"), "90");
    assert!(starting(&out, "INVITE ").is_empty(), "nobody is rung");
    let out = lab.input(invite("bad@a", "202", "Session-Expires: soon\r\n"), CALLER);
    one(&out, "SIP/2.0 400");
    assert!(lab.idle());
}

#[test]
fn a_re_invite_to_a_test_number_keeps_the_sdp_session_and_steps_its_version() {
    let mut lab = Lab::two_phones(&[]);
    let out = lab.input(invite("echo@a", "9000", ""), CALLER);
    let ok = one(&out, "SIP/2.0 200 OK").clone();
    lab.input(caller_request(&ok, "ACK", 1, "", ""), CALLER);
    let out = lab.input(caller_request(&ok, "INVITE", 2, SDP, ""), CALLER);
    let again = one(&out, "SIP/2.0 200 OK");
    assert_next_version(&ok, again);
}

/// `again` answers in the SDP session of `first`, with the next version
/// (RFC 3264 §8).
fn assert_next_version(first: &str, again: &str) {
    let o = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("o="))
            .map(|l| l.split(' ').map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let (first, second) = (o(first), o(again));
    assert_eq!(first[1], second[1], "the same session id");
    let version = |v: &[String]| v[2].parse::<u64>().expect("version");
    assert_eq!(version(&second), version(&first) + 1, "the next version");
}

#[test]
fn call_ids_that_differ_only_in_non_utf8_bytes_are_separate_calls() {
    let mut lab = Lab::two_phones(&[]);
    for (i, id) in [&b"dup\xff@a"[..], b"dup\xfe@a"].into_iter().enumerate() {
        let text = invite(&format!("X{i}"), "9000", "");
        let needle = format!("Call-ID: X{i}\r\n");
        let at = text
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .expect("call-id");
        let mut bytes = text[..at + 9].to_vec();
        bytes.extend_from_slice(id);
        bytes.extend_from_slice(&text[at + needle.len() - 2..]);
        lab.input(Bytes::from(bytes), CALLER);
    }
    assert_eq!(lab.h.shard.counts().0, 2, "two calls, not one");
}

#[test]
fn every_cdr_gets_its_own_id_without_touching_the_disk() {
    let mut lab = Lab::two_phones(&[]);
    for i in 0..5 {
        lab.input(invite(&format!("busy{i}@a"), "9002", ""), CALLER);
    }
    let ids: std::collections::HashSet<&str> = lab
        .writes
        .iter()
        .filter_map(|w| w.split("Cdr { id: ").nth(1)?.split(',').next())
        .collect();
    assert_eq!(ids.len(), 5, "{:?}", lab.writes);
    assert!(!ids.contains("0"));
}

/// A queue 500 served by agents 301 and 302 (ringing 5 s each).
/// Queue 500 of group support (`members`), ringing agents 5 s, overflowing
/// after 60 s to `overflow`; its sounds are 0.8 s beeps.
fn queue_lab_with(members: &[&'static str], overflow: impl FnOnce(Arc<Prompt>) -> Overflow) -> Lab {
    let mut routing = Directory::new(vec![Group {
        name: "support".into(),
        members: members.iter().map(|m| (m.to_string(), 1)).collect(),
    }]);
    routing.add_queue(queue_500(overflow));
    Lab::new(Setup {
        users: members.to_vec(),
        routing,
        ..Setup::default()
    })
}

/// Queue 500 of the first group, ringing agents 5 s, overflowing after 60 s
/// to `overflow`; its sounds are 0.8 s beeps.
fn queue_500(overflow: impl FnOnce(Arc<Prompt>) -> Overflow) -> Queue {
    let beep = Arc::new(Prompt::confirm());
    Queue {
        number: "500".into(),
        groups: vec![GroupId(0)],
        ring: Duration::from_secs(5),
        max_wait: Duration::from_secs(60),
        wrap_up: Duration::ZERO,
        greeting: None,
        music: Arc::clone(&beep),
        overflow: overflow(Arc::clone(&beep)),
        sorry: beep,
        service_level: Duration::from_secs(20),
    }
}

fn queue_lab() -> Lab {
    let lab = queue_lab_with(&["301", "302"], Overflow::Announce);
    lab.h.bind("301", PHONE_A);
    lab.h.bind("302", PHONE_B);
    lab
}

#[test]
fn a_queue_offer_that_is_not_answered_in_time_moves_to_the_next_agent() {
    let mut lab = queue_lab();
    let out = lab.input(invite("q@a", "500", ""), CALLER);
    let ok = one(&out, "SIP/2.0 200 OK").clone();
    assert!(ok.contains("m=audio"), "answered at once, with music");
    let first = one(&out, "INVITE sip:301@").clone();
    lab.input(caller_request(&ok, "ACK", 1, "", ""), CALLER);
    let ringing = |lab: &Lab, e: &str| lab.h.env.presence.state(e).map(|s| s.0);
    assert_eq!(ringing(&lab, "301"), Some(crate::presence::State::Ringing));

    let out = lab.advance(Duration::from_secs(5));
    one(&out, "CANCEL sip:301@");
    let second = one(&out, "INVITE sip:302@").clone();
    lab.input(response(&first, 487, "a1", "", ""), PHONE_A);
    assert_eq!(
        ringing(&lab, "301"),
        Some(crate::presence::State::Available)
    );

    let out = lab.input(response(&second, 200, "a2", SDP, ""), PHONE_B);
    one(&out, "ACK ");
    assert!(
        lab.media_log().iter().any(|l| l.ends_with("stop")),
        "the music stops"
    );
    assert_eq!(ringing(&lab, "302"), Some(crate::presence::State::OnCall));
    // 301 is never rung again for this call, however long it lasts.
    let later = lab.advance(Duration::from_secs(30));
    assert!(starting(&later, "INVITE sip:301@").is_empty());
    assert_eq!(lab.h.env.history.recent_agents("201"), ["302"]);
    let out = lab.input(caller_request(&ok, "BYE", 2, "", ""), CALLER);
    one(&out, "BYE ");
    assert_eq!(lab.cdrs, 1);
    assert!(lab.idle());
}

/// 201 places a call to 202 (both registered): the lab, the call's key and
/// what was sent first.
fn originated() -> (Lab, CallId, Vec<String>) {
    let mut lab = Lab::two_phones(&[PHONE_B]);
    lab.h.bind("201", PHONE_A);
    let key = lab
        .h
        .shard
        .originate(lab.now, "201", "202")
        .expect("placed");
    let out = lab.out();
    (lab, key, out)
}

#[test]
fn an_originated_call_rings_a_first_then_connects_b() {
    let (mut lab, key, out) = originated();
    let a = one(&out, "INVITE sip:201@").clone();
    assert_eq!(header(&a, "Call-ID"), key.to_string());
    assert!(
        starting(&out, "INVITE sip:202@").is_empty(),
        "B waits for A"
    );
    let out = lab.input(response(&a, 200, "a", SDP, ""), PHONE_A);
    one(&out, "ACK ");
    let b = one(&out, "INVITE sip:202@").clone();
    assert!(
        b.contains("m=audio") && b.contains("RTP/AVP 0 101"),
        "A's codec only: {b}"
    );
    // B rings: A hears the ringback tone (once, however often B says so), in
    // A's codec, until B answers.
    let before = lab.media_log().len();
    lab.input(response(&b, 180, "b", "", ""), PHONE_B);
    lab.input(response(&b, 180, "b", "", ""), PHONE_B);
    assert_eq!(
        lab.media_log()[before..],
        [format!("{key} play 0 pt=0 looping=true")]
    );
    let out = lab.input(response(&b, 200, "b", SDP, ""), PHONE_B);
    one(&out, "ACK ");
    let log = lab.media_log();
    assert!(log.ends_with(&[format!("{key} stop")]), "{log:?}");
    // A hangs up: B gets a BYE, one CDR.
    let bye = with_body(
        format!(
            "BYE sip:sipdesk@192.0.2.100 SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE_A};branch=z9hG4bKbye;rport\r\n\
             From: {};tag=a\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 BYE\r\nMax-Forwards: 70\r\n",
            header(&a, "To"),
            header(&a, "From"),
            header(&a, "Call-ID")
        ),
        "",
    );
    let out = lab.input(bye, PHONE_A);
    one(&out, "BYE sip:phone@");
    one(&out, "SIP/2.0 200 OK");
    assert_eq!(lab.cdrs, 1);
    assert!(lab.idle());
}

#[test]
fn an_originated_call_passes_bs_early_media_to_a_instead_of_the_ringback() {
    let (mut lab, key, out) = originated();
    let a = one(&out, "INVITE sip:201@").clone();
    let out = lab.input(response(&a, 200, "a", SDP, ""), PHONE_A);
    let b = one(&out, "INVITE sip:202@").clone();
    let before = lab.media_log().len();
    lab.input(response(&b, 183, "b", SDP, ""), PHONE_B);
    lab.input(response(&b, 180, "b", "", ""), PHONE_B);
    let log = lab.media_log();
    assert!(
        log[before].starts_with(&format!("{key} peer 1 Some(")),
        "{log:?}"
    );
    assert_eq!(
        log[before + 1..],
        [format!("{key} stop")],
        "no ringback over early media"
    );
}

/// A queue whose agent is offline, offering a call-back at overflow (after
/// 60 s): the prompt and thanks last 0.8 s each.
fn callback_lab() -> Lab {
    queue_lab_with(&["301"], |beep| {
        Overflow::Callback(Arc::new(crate::routing::CallbackOffer {
            group: "support".into(),
            prompt: Arc::clone(&beep),
            thanks: beep,
            max_message: Duration::from_secs(30),
        }))
    })
}

/// The caller's SDP with RFC 4733 events as payload type 101.
const SDP_DTMF: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";

/// A queue caller who waited until the call-back offer: (our 200, the voice
/// message's id once the prompt is over).
fn offered_callback(lab: &mut Lab) -> (String, u64) {
    let head = String::from_utf8_lossy(&invite("cb@a", "500", "")).replace(SDP, SDP_DTMF);
    let head = head.replace(
        &format!("Content-Length: {}", SDP.len()),
        &format!("Content-Length: {}", SDP_DTMF.len()),
    );
    let out = lab.input(Bytes::from(head), CALLER);
    let ok = one(&out, "SIP/2.0 200 OK").clone();
    assert!(ok.contains("telephone-event/8000"), "{ok}");
    lab.input(caller_request(&ok, "ACK", 1, "", ""), CALLER);
    lab.advance(Duration::from_secs(60));
    let log = lab.media_log();
    assert!(
        log.iter().any(|l| l.ends_with("play 0 pt=0 looping=false")),
        "{log:?}"
    );
    assert!(
        log.iter().any(|l| l.ends_with("digits 0 pt=101")),
        "{log:?}"
    );
    lab.advance(Duration::from_millis(900));
    let log = lab.media_log();
    let voice = log
        .iter()
        .find_map(|l| l.split("record 0 voice=").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("recording after the prompt: {log:?}"));
    assert!(log.iter().any(|l| l.ends_with("max=30s")));
    (ok, voice)
}

fn dtmf_info(ok: &str, cseq: u32, digit: char) -> Bytes {
    let body = format!("Signal={digit}\r\nDuration=160\r\n");
    Bytes::from(format!(
        "INFO sip:500@192.0.2.100:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK-info{cseq};rport\r\n\
         From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} INFO\r\nMax-Forwards: 70\r\n\
         Content-Type: application/dtmf-relay\r\nContent-Length: {}\r\n\r\n{body}",
        header(ok, "From"),
        header(ok, "To"),
        header(ok, "Call-ID"),
        body.len()
    ))
}

#[test]
fn a_queue_caller_who_leaves_a_message_and_presses_1_gets_one_call_back_with_it() {
    let mut lab = callback_lab();
    let (ok, voice) = offered_callback(&mut lab);
    // Digits other than 1 change nothing; "1" by SIP INFO ends the recording.
    let out = lab.input(dtmf_info(&ok, 2, '5'), CALLER);
    one(&out, "SIP/2.0 200 OK");
    assert!(!lab
        .media_log()
        .iter()
        .any(|l| l.ends_with("stop_recording")));
    let out = lab.input(dtmf_info(&ok, 3, '1'), CALLER);
    one(&out, "SIP/2.0 200 OK");
    assert!(lab
        .media_log()
        .iter()
        .any(|l| l.ends_with("stop_recording")));
    assert!(
        lab.h.shard.poll_callbacks().is_empty(),
        "not before the message is saved"
    );
    let saved = crate::media::MediaEvent::Recorded {
        id: voice,
        saved: true,
        ms: 4200,
    };
    lab.h
        .shard
        .handle_media(lab.now, &CallId::from("cb@a"), saved);
    assert_eq!(
        lab.h.shard.poll_callbacks(),
        [crate::callbacks::Request {
            call: CallId::from("cb@a"),
            customer: "201".into(),
            queue: "500".into(),
            group: "support".into(),
            voice: Some(crate::callbacks::Voice {
                id: voice,
                ms: 4200
            }),
            asked: true,
        }]
    );
    // The thanks only once the desk has stored it; then the PBX hangs up.
    let out = lab.advance(Duration::from_secs(2));
    assert!(starting(&out, "BYE ").is_empty(), "waiting for the store");
    let call = CallId::from("cb@a");
    lab.h.shard.handle_callback_saved(lab.now, &call, true);
    let out = lab.advance(Duration::from_secs(1));
    one(&out, "BYE sip:201@");
    assert!(lab.idle());
}

#[test]
fn pressing_1_during_the_prompt_asks_at_once_and_a_caller_who_hangs_up_silent_asks_nothing() {
    let mut lab = callback_lab();
    let head = invite("p@a", "500", "");
    let out = lab.input(head, CALLER);
    let ok = one(&out, "SIP/2.0 200 OK").clone();
    lab.input(caller_request(&ok, "ACK", 1, "", ""), CALLER);
    lab.advance(Duration::from_secs(60));
    lab.input(dtmf_info(&ok, 2, '1'), CALLER);
    let asked = lab.h.shard.poll_callbacks();
    assert_eq!(asked.len(), 1);
    assert_eq!((asked[0].voice, asked[0].asked), (None, true));
    assert!(
        !lab.media_log().iter().any(|l| l.contains("record 0")),
        "nothing recorded"
    );

    // A second caller stays silent and hangs up mid-recording: the relay's
    // report says nothing was saved, and no call-back is asked for.
    let (ok, voice) = offered_callback(&mut lab);
    lab.input(caller_request(&ok, "BYE", 2, "", ""), CALLER);
    let empty = crate::media::MediaEvent::Recorded {
        id: voice,
        saved: false,
        ms: 3000,
    };
    lab.h
        .shard
        .handle_media(lab.now, &CallId::from("cb@a"), empty);
    assert!(lab.h.shard.poll_callbacks().is_empty());
    assert!(lab.idle());
}

#[test]
fn a_message_cut_at_its_limit_is_kept_and_the_caller_hears_the_thanks_then_is_hung_up() {
    let mut lab = callback_lab();
    let (_ok, voice) = offered_callback(&mut lab);
    // The relay stopped at the limit by itself and saved what it had.
    let full = crate::media::MediaEvent::Recorded {
        id: voice,
        saved: true,
        ms: 30_000,
    };
    lab.h
        .shard
        .handle_media(lab.now, &CallId::from("cb@a"), full);
    let asked = lab.h.shard.poll_callbacks();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        (asked[0].voice.map(|v| v.ms), asked[0].asked),
        (Some(30_000), false)
    );
    let call = CallId::from("cb@a");
    lab.h.shard.handle_callback_saved(lab.now, &call, true);
    assert!(
        lab.media_log()
            .last()
            .is_some_and(|l| l.ends_with("play 0 pt=0 looping=false")),
        "the thanks"
    );
    let out = lab.advance(Duration::from_secs(1));
    one(&out, "BYE sip:201@");
    assert!(lab.idle());
}

#[test]
fn a_caller_whose_call_back_is_not_stored_hears_the_sorry_announcement_not_the_thanks() {
    let mut lab = callback_lab();
    let call = CallId::from("cb@a");
    let (ok, _voice) = offered_callback(&mut lab);
    lab.input(dtmf_info(&ok, 2, '1'), CALLER);
    // The desk refuses (its store failed): sorry, then hang up.
    lab.h.shard.handle_callback_saved(lab.now, &call, false);
    let out = lab.advance(Duration::from_secs(3));
    one(&out, "BYE sip:201@");
    // A desk that never answers: sorry after 10 s.
    let (ok, voice) = offered_callback(&mut lab);
    lab.input(dtmf_info(&ok, 2, '1'), CALLER);
    let saved = crate::media::MediaEvent::Recorded {
        id: voice,
        saved: true,
        ms: 1000,
    };
    lab.h.shard.handle_media(lab.now, &call, saved);
    assert!(starting(&lab.advance(Duration::from_secs(9)), "BYE ").is_empty());
    let out = lab.advance(Duration::from_secs(4));
    one(&out, "BYE sip:201@");
    assert!(lab.idle());
}

// Outside calls and trunks: two providers, a national route over both.

const FIRST: &str = "192.0.2.10:5060";
const SECOND: &str = "192.0.2.20:5060";
const NATIONAL: &str = "0312345678";

fn outside() -> crate::outside::Outside {
    outside_at(&[FIRST])
}

/// The two providers, the first at these addresses (in the order to try them).
fn outside_at(first: &[&str]) -> crate::outside::Outside {
    use crate::outside::{
        Caps, Class, DidFrom, Failover, Line, Located, Numbering, Outside, Route, TrunkId,
    };
    let numbering = Numbering {
        country_code: "81".into(),
        national_prefix: "0".into(),
        international_prefix: "010".into(),
    };
    let mut lines = Vec::new();
    for (name, addrs) in [("first", first), ("second", &[SECOND][..])] {
        let send_to: Vec<Remote> = addrs.iter().map(|a| remote(a)).collect();
        let from = send_to.iter().map(|r| r.addr.ip()).collect();
        let located = Located { send_to, from };
        let transport = crate::sip::Transport::Udp;
        let mut line = Line::located(name.into(), transport, located, format!("{name}.example"));
        line.username = "office".into();
        line.auth_username = "office".into();
        line.password = "pw".into();
        line.numbering = numbering.clone();
        line.did_from = DidFrom::To;
        line.dids.insert("+81311110000".into(), "202".into());
        line.max_channels = 1;
        lines.push(line);
    }
    let route = |name: &str, pattern: &str, class| Route {
        name: name.into(),
        pattern: crate::outside::pattern(pattern).expect("pattern"),
        class,
        trunks: vec![TrunkId(0), TrunkId(1)],
        strip: 0,
        prepend: String::new(),
        e164: false,
        failover: ["408", "5xx", "6xx"]
            .iter()
            .filter_map(|f| Failover::parse(f))
            .collect(),
        caller_id: "+81312340000".into(),
    };
    let routes = vec![
        route("national", "0[1-9][0-9]{8,9}", Class::National),
        route("international", "010[1-9][0-9]{6,14}", Class::International),
    ];
    let caps = Caps {
        max_calls: 10,
        max_calls_per_user: 5,
        max_calls_per_user_per_hour: 3,
        blocked_prefixes: vec!["0990".into()],
    };
    Outside::new(lines, routes, caps).with_classes(
        vec![Class::Internal, Class::National],
        Default::default(),
        Default::default(),
    )
}

fn outside_lab() -> Lab {
    outside_lab_with(outside())
}

fn outside_lab_with(outside: crate::outside::Outside) -> Lab {
    let lab = Lab::new(Setup {
        users: vec!["201", "202"],
        authenticate: false,
        outside,
        ..Setup::default()
    });
    lab.h.bind("202", PHONE_A);
    lab
}

/// 201's INVITE to `to`, answered with its credentials after our 407:
/// what the PBX sent then.
fn authorized(lab: &mut Lab, call_id: &str, to: &str) -> Vec<String> {
    let out = lab.input(invite(call_id, to, ""), CALLER);
    let challenge = one(&out, "SIP/2.0 407").clone();
    let parsed =
        crate::sip::message::parse(Bytes::from(challenge), &Default::default()).expect("407");
    let uri = format!("sip:{to}@pbx");
    let (name, value) =
        crate::sip::auth::authorization(&parsed, "INVITE", &uri, ("201", "secret"), "c0ffee")
            .expect("an answer");
    let again = String::from_utf8_lossy(&invite(call_id, to, &format!("{name}: {value}\r\n")))
        .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE")
        .replace(
            &format!("z9hG4bK-{call_id}"),
            &format!("z9hG4bK-{call_id}-2"),
        );
    lab.input(Bytes::from(again), CALLER)
}

/// The INVITE sent to a provider (`domain`) among what was sent.
fn to_provider<'a>(out: &'a [String], domain: &str) -> &'a String {
    let start = format!("INVITE sip:{NATIONAL}@{domain}");
    out.iter()
        .find(|m| m.starts_with(&start))
        .unwrap_or_else(|| panic!("no {start} in {out:#?}"))
}

fn no_provider_invite(out: &[String]) -> bool {
    !out.iter().any(|m| m.starts_with("INVITE sip:0"))
}

#[test]
fn an_outside_call_fails_over_on_503_and_connects_through_the_second_trunk() {
    let mut lab = outside_lab();
    let out = authorized(&mut lab, "out@a", NATIONAL);
    let first = to_provider(&out, "first.example").clone();
    assert!(
        header(&first, "From").starts_with("<sip:+81312340000@first.example>"),
        "the route's caller ID: {first}"
    );
    assert_eq!(
        header(&first, "P-Asserted-Identity"),
        "<sip:+81312340000@first.example>"
    );
    assert!(
        first.contains("c=IN IP4 192.0.2.100"),
        "media anchored: {first}"
    );
    let trying = response(&first, 100, "p1", "", "");
    assert!(
        no_provider_invite(&lab.input(trying, FIRST)),
        "100 Trying changes nothing"
    );
    let out = lab.input(response(&first, 503, "p1", "", ""), FIRST);
    let second = to_provider(&out, "second.example").clone();
    let sdp = SDP.replace("10.0.0.1", "192.0.2.21");
    let out = lab.input(response(&second, 200, "p2", &sdp, ""), SECOND);
    one(&out, "ACK ");
    let ok = one(&out, "SIP/2.0 200 OK").clone();
    lab.input(caller_request(&ok, "ACK", 2, "", ""), CALLER);
    let out = lab.input(caller_request(&ok, "BYE", 3, "", ""), CALLER);
    one(&out, "BYE sip:phone@");
    assert!(lab.idle());
    assert_eq!(
        lab.h.env.outside.fraud.live(),
        0,
        "the permit is given back"
    );
    assert!(
        lab.h.env.outside.line(crate::outside::TrunkId(1)).seize(),
        "the channel is given back"
    );
}

const FIRST_B: &str = "192.0.2.11:5060";
const FIRST_C: &str = "192.0.2.12:5060";

#[test]
fn a_trunks_next_address_is_tried_on_503_and_other_failures_move_on_to_the_next_trunk() {
    let mut lab = outside_lab_with(outside_at(&[FIRST, FIRST_B, FIRST_C]));
    let out = authorized(&mut lab, "srv@a", NATIONAL);
    let first = to_provider(&out, "first.example").clone();
    assert_eq!(lab.sent_to("INVITE sip:0"), [FIRST]);
    let out = lab.input(response(&first, 503, "p1", "", ""), FIRST);
    let again = to_provider(&out, "first.example").clone();
    assert_eq!(
        lab.sent_to("INVITE sip:0"),
        [FIRST_B],
        "RFC 3263: the next address"
    );
    assert_ne!(
        header(&again, "Call-ID"),
        header(&first, "Call-ID"),
        "a new try"
    );
    // A 500 from the provider would come from its other address too: the
    // next trunk, not the third address.
    let out = lab.input(response(&again, 500, "p2", "", ""), FIRST_B);
    to_provider(&out, "second.example");
    assert_eq!(lab.sent_to("INVITE sip:0"), [SECOND]);
    let out = lab.advance(Duration::from_secs(3));
    one(&out, "SIP/2.0 503");
    assert!(lab.idle());
    let line = lab.h.env.outside.line(crate::outside::TrunkId(0));
    assert_eq!(
        line.targets.in_order()[0].addr.to_string(),
        FIRST_B,
        "the next call starts past the address that failed"
    );
}

#[test]
fn a_silent_address_is_left_for_the_next_one_of_the_same_trunk() {
    let mut lab = outside_lab_with(outside_at(&[FIRST, FIRST_B]));
    let out = authorized(&mut lab, "srvsilent@a", NATIONAL);
    to_provider(&out, "first.example");
    let out = lab.advance(Duration::from_millis(2100));
    let next = out
        .iter()
        .rfind(|m| m.starts_with("INVITE sip:0"))
        .expect("a new try")
        .clone();
    let sent = lab.sent_to("INVITE sip:0");
    assert_eq!(
        sent.last(),
        Some(&FIRST_B),
        "{sent:?} (the first's retransmissions before)"
    );
    let sdp = SDP.replace("10.0.0.1", "192.0.2.11");
    let out = lab.input(response(&next, 200, "p1", &sdp, ""), FIRST_B);
    one(&out, "SIP/2.0 200 OK");
    let line = lab.h.env.outside.line(crate::outside::TrunkId(0));
    assert_eq!(line.targets.in_order()[0].addr.to_string(), FIRST_B);
}

#[test]
fn a_providers_challenge_is_answered_with_the_trunks_credentials_once() {
    let mut lab = outside_lab();
    let out = authorized(&mut lab, "auth@a", NATIONAL);
    let first = to_provider(&out, "first.example").clone();
    let challenge = "Proxy-Authenticate: Digest realm=\"first.example\", nonce=\"n1\", qop=\"auth\", algorithm=MD5\r\n";
    let out = lab.input(response(&first, 407, "p1", "", challenge), FIRST);
    let again = to_provider(&out, "first.example").clone();
    assert_eq!(header(&again, "Call-ID"), header(&first, "Call-ID"));
    assert_eq!(header(&again, "CSeq"), "2 INVITE");
    assert!(
        header(&again, "Proxy-Authorization").contains("username=\"office\""),
        "{again}"
    );
    // Refused again: the credentials are wrong there; the next trunk is tried.
    let out = lab.input(response(&again, 407, "p1", "", challenge), FIRST);
    to_provider(&out, "second.example");
}

#[test]
fn once_the_callee_rang_a_failure_is_passed_on_and_no_other_trunk_is_tried() {
    let mut lab = outside_lab();
    let out = authorized(&mut lab, "rang@a", NATIONAL);
    let first = to_provider(&out, "first.example").clone();
    let out = lab.input(response(&first, 180, "p1", "", ""), FIRST);
    one(&out, "SIP/2.0 180 Ringing");
    let out = lab.input(response(&first, 503, "p1", "", ""), FIRST);
    one(&out, "SIP/2.0 503");
    assert!(no_provider_invite(&out));
    assert!(lab.idle());
}

#[test]
fn a_silent_provider_is_skipped_after_its_trying_timeout() {
    let mut lab = outside_lab();
    let out = authorized(&mut lab, "silent@a", NATIONAL);
    to_provider(&out, "first.example");
    let retransmitted = lab.advance(Duration::from_millis(1900));
    assert!(!retransmitted
        .iter()
        .any(|m| m.contains("@second.example SIP")));
    let out = lab.advance(Duration::from_millis(200));
    to_provider(&out, "second.example");
    // Both silent: the caller hears 503.
    let out = lab.advance(Duration::from_secs(3));
    one(&out, "SIP/2.0 503");
    assert!(lab.idle());
}

#[test]
fn a_reliable_183_is_acknowledged_with_prack_and_its_early_media_reaches_the_caller() {
    let mut lab = outside_lab();
    let out = authorized(&mut lab, "prack@a", NATIONAL);
    let first = to_provider(&out, "first.example").clone();
    assert!(header(&first, "Supported").contains("100rel"));
    let sdp = SDP.replace("10.0.0.1", "192.0.2.11");
    let reliable = "Require: 100rel\r\nRSeq: 7\r\n";
    let out = lab.input(response(&first, 183, "p1", &sdp, reliable), FIRST);
    let prack = one(&out, "PRACK sip:phone@");
    assert_eq!(header(prack, "RAck"), "7 1 INVITE");
    assert_eq!(header(prack, "CSeq"), "2 PRACK");
    let early = one(&out, "SIP/2.0 183");
    assert!(
        early.contains("c=IN IP4 192.0.2.100"),
        "early media via the relay: {early}"
    );
    // A retransmission is not acknowledged twice.
    let out = lab.input(response(&first, 183, "p1", &sdp, reliable), FIRST);
    assert!(starting(&out, "PRACK").is_empty());
    let out = lab.input(response(&first, 200, "p1", &sdp, ""), FIRST);
    let ok = one(&out, "SIP/2.0 200 OK").clone();
    lab.input(caller_request(&ok, "ACK", 2, "", ""), CALLER);
    let out = lab.input(caller_request(&ok, "BYE", 3, "", ""), CALLER);
    let bye = one(&out, "BYE sip:phone@");
    assert_eq!(header(bye, "CSeq"), "3 BYE", "above the PRACK's CSeq");
}

#[test]
fn outside_calls_need_credentials_the_class_and_room_under_the_caps() {
    let mut lab = outside_lab();
    // No credentials (even with `[calls] authenticate = false`): 407, nothing sent.
    let out = lab.input(invite("anon@a", NATIONAL, ""), CALLER);
    one(&out, "SIP/2.0 407");
    assert!(no_provider_invite(&out));
    // No international class: 403.
    let out = authorized(&mut lab, "intl@a", "0104420794601");
    one(&out, "SIP/2.0 403");
    assert!(out.iter().all(|m| !m.starts_with("INVITE sip:010")));
    // A blocked prefix: 403.
    let out = authorized(&mut lab, "premium@a", "0990123456");
    one(&out, "SIP/2.0 403");
    // Three calls an hour, then 403.
    for i in 0..3 {
        let out = authorized(&mut lab, &format!("hour{i}@a"), NATIONAL);
        let first = to_provider(&out, "first.example").clone();
        lab.input(response(&first, 486, "p", "", ""), FIRST);
    }
    let out = authorized(&mut lab, "hour3@a", NATIONAL);
    one(&out, "SIP/2.0 403");
    assert!(no_provider_invite(&out));
    assert!(lab.idle());
}

/// An INVITE from a provider for DID `did` from `caller`.
fn from_provider(call_id: &str, did: &str, caller: &str) -> Bytes {
    with_body(
        format!(
            "INVITE sip:office@192.0.2.100 SIP/2.0\r\nVia: SIP/2.0/UDP {FIRST};branch=z9hG4bK-{call_id}\r\n\
             From: <sip:{caller}@first.example>;tag=p\r\nTo: <sip:{did}@first.example>\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\nContact: <sip:gw@{FIRST}>\r\nMax-Forwards: 70\r\n"
        ),
        SDP,
    )
}

#[test]
fn a_call_from_a_trunk_reaches_its_dids_extension_with_the_caller_in_e164() {
    let mut lab = outside_lab();
    let out = lab.input(from_provider("in@p", "0311110000", "0399998888"), FIRST);
    let b = toward(&out, PHONE_A);
    assert!(
        header(b, "From").starts_with("<sip:+81399998888@"),
        "the caller's E.164 number: {b}"
    );
    // The trunk's one channel is taken: a second call gets 503.
    let out = lab.input(from_provider("in2@p", "0311110000", "0399998888"), FIRST);
    one(&out, "SIP/2.0 503");
    // A DID that goes nowhere: 404, without a challenge.
    let mut lab = outside_lab();
    let out = lab.input(
        from_provider("nowhere@p", "0311119999", "0399998888"),
        FIRST,
    );
    one(&out, "SIP/2.0 404");
}

/// An outside call 201 → NATIONAL connected through the first trunk:
/// (our 200 to the caller, the provider's INVITE, the provider's 200).
fn outside_connected(lab: &mut Lab, call_id: &str) -> (String, String) {
    let out = authorized(lab, call_id, NATIONAL);
    let first = to_provider(&out, "first.example").clone();
    let sdp = SDP.replace("10.0.0.1", "192.0.2.11");
    let out = lab.input(response(&first, 200, "p1", &sdp, ""), FIRST);
    let ok = one(&out, "SIP/2.0 200 OK").clone();
    lab.input(caller_request(&ok, "ACK", 2, "", ""), CALLER);
    (ok, first)
}

const CHALLENGE: &str = "Proxy-Authenticate: Digest realm=\"first.example\", nonce=\"n2\", qop=\"auth\", algorithm=MD5\r\n";

#[test]
fn a_providers_challenge_to_our_bye_or_relayed_re_invite_is_answered_with_the_trunks_credentials() {
    let mut lab = outside_lab();
    let (ok, _) = outside_connected(&mut lab, "indialog@a");
    // Hold: the re-INVITE goes to the provider, which challenges it.
    let hold = SDP.replace("a=sendrecv", "a=sendonly");
    let out = lab.input(caller_request(&ok, "INVITE", 3, &hold, ""), CALLER);
    let reinvite = one(&out, "INVITE sip:phone@").clone();
    let out = lab.input(response(&reinvite, 407, "p1", "", CHALLENGE), FIRST);
    assert!(
        starting(&out, "SIP/2.0 407").is_empty(),
        "the phone never sees the provider's challenge"
    );
    let again = one(&out, "INVITE sip:phone@").clone();
    assert!(header(&again, "Proxy-Authorization").contains("username=\"office\""));
    let cseq = |m: &str| {
        header(m, "CSeq")
            .split(' ')
            .next()
            .and_then(|n| n.parse::<u32>().ok())
    };
    assert!(cseq(&again) > cseq(&reinvite));
    let out = lab.input(
        response(
            &again,
            200,
            "p1",
            &SDP.replace("10.0.0.1", "192.0.2.11"),
            "",
        ),
        FIRST,
    );
    one(&out, "SIP/2.0 200 OK");
    // Hang-up: our BYE is challenged too, and sent again with credentials.
    let out = lab.input(caller_request(&ok, "BYE", 4, "", ""), CALLER);
    let bye = one(&out, "BYE sip:phone@").clone();
    let out = lab.input(response(&bye, 407, "p1", "", CHALLENGE), FIRST);
    let again = one(&out, "BYE sip:phone@");
    assert!(
        header(again, "Proxy-Authorization").contains("BYE")
            || header(again, "Proxy-Authorization").contains("response=")
    );
    assert!(cseq(again) > cseq(&bye));
    assert!(lab.idle());
}

#[test]
fn a_trunk_whose_registration_is_down_is_skipped_at_once() {
    let mut lab = outside_lab();
    lab.h.env.outside.set_up(crate::outside::TrunkId(0), false);
    let out = authorized(&mut lab, "down@a", NATIONAL);
    assert!(!out.iter().any(|m| m.contains("@first.example SIP")));
    to_provider(&out, "second.example");
}

#[test]
fn a_withheld_caller_id_goes_out_anonymous_with_privacy_and_the_identity_only_asserted() {
    let mut lab = outside_lab();
    let out = lab.input(invite("priv@a", NATIONAL, "Privacy: id\r\n"), CALLER);
    let challenge = one(&out, "SIP/2.0 407").clone();
    let parsed =
        crate::sip::message::parse(Bytes::from(challenge), &Default::default()).expect("407");
    let uri = format!("sip:{NATIONAL}@pbx");
    let (name, value) =
        crate::sip::auth::authorization(&parsed, "INVITE", &uri, ("201", "secret"), "c0ffee")
            .expect("an answer");
    let again = String::from_utf8_lossy(&invite(
        "priv@a",
        NATIONAL,
        &format!("Privacy: id\r\n{name}: {value}\r\n"),
    ))
    .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE")
    .replace("z9hG4bK-priv@a", "z9hG4bK-priv@a-2");
    let out = lab.input(Bytes::from(again), CALLER);
    let first = to_provider(&out, "first.example");
    assert!(
        header(first, "From").starts_with("\"Anonymous\" <sip:anonymous@anonymous.invalid>"),
        "{first}"
    );
    assert_eq!(header(first, "Privacy"), "id");
    assert_eq!(
        header(first, "P-Asserted-Identity"),
        "<sip:+81312340000@first.example>"
    );
}

const CUSTOMER: &str = "+81312345678";

/// Agent 202 (at PHONE_A) of campaign 7, whose customers are dialled
/// through trunk "first".
fn attempt_call(contact: u64, dial_on_timeout: bool) -> super::AttemptCall {
    use crate::campaigns::{AttemptKey, CampaignId, ContactId};
    super::AttemptCall {
        key: AttemptKey::Contact {
            campaign: CampaignId(7),
            contact: ContactId(contact),
        },
        agent: "202".into(),
        shown: "Spring".into(),
        number: CUSTOMER.into(),
        trunk: crate::outside::TrunkId(0),
        caller_id: "+81399990000".into(),
        confirm: Duration::from_secs(15),
        dial_on_timeout,
        ring: Duration::from_secs(20),
        farewell: None,
    }
}

/// Addresses with retransmissions left out.
fn once(mut to: Vec<&str>) -> Vec<&str> {
    to.dedup();
    to
}

/// The steps the attempts reported since last asked.
fn steps(lab: &mut Lab) -> Vec<crate::campaigns::Step> {
    lab.h
        .shard
        .poll_attempts()
        .into_iter()
        .map(|r| r.step)
        .collect()
}

/// A campaign lab whose agent 202 is available; the attempt placed, and our
/// INVITE to the agent's phone.
fn attempt_placed(dial_on_timeout: bool) -> (Lab, CallId, String) {
    attempt_placed_as(attempt_call(1, dial_on_timeout))
}

fn attempt_placed_as(call: super::AttemptCall) -> (Lab, CallId, String) {
    let mut lab = outside_lab();
    let presence = &lab.h.env.presence;
    presence
        .set_registered("202", true, lab.h.wall0)
        .expect("registered");
    let key = lab.h.shard.attempt(lab.now, call).expect("placed");
    let out = lab.out();
    let agent = one(&out, "INVITE sip:202@").clone();
    (lab, key, agent)
}

/// The provider's INVITE for the customer among what was sent.
fn to_customer(out: &[String]) -> &String {
    let start = format!("INVITE sip:{CUSTOMER}@first.example");
    out.iter()
        .find(|m| m.starts_with(&start))
        .unwrap_or_else(|| panic!("no {start} in {out:#?}"))
}

fn customer_dialled(out: &[String]) -> bool {
    out.iter().any(|m| m.starts_with("INVITE sip:+"))
}

/// The BYE of whoever answered our `invite` (with To tag `tag`).
fn bye_for(invite: &str, tag: &str, from: &str) -> Bytes {
    with_body(
        format!(
            "BYE sip:sipdesk@192.0.2.100 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKbye{tag};rport\r\n\
             From: {};tag={tag}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 BYE\r\nMax-Forwards: 70\r\n",
            header(invite, "To"),
            header(invite, "From"),
            header(invite, "Call-ID")
        ),
        "",
    )
}

#[test]
fn a_campaign_attempt_reserves_and_rings_the_agent_and_dials_the_customer_only_once_confirmed() {
    use crate::campaigns::{Outcome, Step};
    use crate::presence::State;
    let (mut lab, key, agent) = attempt_placed(false);
    assert!(
        header(&agent, "From").starts_with("<sip:Spring@"),
        "the agent's phone shows the campaign, not the customer: {agent}"
    );
    let presence = lab.h.env.presence.clone();
    assert_eq!(presence.state("202").map(|s| s.0), Some(State::Ringing));
    assert_eq!(
        lab.h.shard.attempt(lab.now, attempt_call(2, false)),
        Err(super::OriginateError::NotAvailable("202".into())),
        "a reserved agent is not taken twice"
    );
    let out = lab.input(response(&agent, 200, "ag", SDP, ""), PHONE_A);
    one(&out, "ACK ");
    assert!(
        !customer_dialled(&out),
        "nobody is dialled before the agent confirms"
    );
    assert_eq!(steps(&mut lab), [Step::AgentAnswered]);
    let log = lab.media_log();
    assert!(
        log.ends_with(&[format!("{key} play 0 pt=0 looping=true")]),
        "the agent hears the waiting tone: {log:?}"
    );
    assert!(!customer_dialled(&lab.advance(Duration::from_secs(10))));

    assert!(lab.h.shard.confirm(lab.now, &key, true));
    assert!(!lab.h.shard.confirm(lab.now, &key, true), "confirmed once");
    let out = lab.out();
    let customer = to_customer(&out).clone();
    assert_eq!(lab.sent_to("INVITE sip:+"), [FIRST]);
    assert!(
        header(&customer, "From").starts_with("<sip:+81399990000@first.example>"),
        "the campaign's caller ID: {customer}"
    );
    assert!(
        customer.contains("RTP/AVP 0 101"),
        "the agent's codec: {customer}"
    );
    assert_eq!(steps(&mut lab), [Step::CustomerDialled]);
    lab.input(response(&customer, 180, "cu", "", ""), FIRST);
    let sdp = SDP.replace("10.0.0.1", "192.0.2.21");
    let out = lab.input(response(&customer, 200, "cu", &sdp, ""), FIRST);
    one(&out, "ACK ");
    assert_eq!(steps(&mut lab), [Step::CustomerAnswered]);

    // The agent hangs up first: the customer hears the farewell, then our BYE.
    let out = lab.input(bye_for(&agent, "ag", PHONE_A), PHONE_A);
    one(&out, "SIP/2.0 200 OK");
    assert!(starting(&out, "BYE ").is_empty(), "not cut off: {out:#?}");
    assert!(
        lab.media_log()
            .ends_with(&[format!("{key} play 1 pt=0 looping=false")]),
        "{:?}",
        lab.media_log()
    );
    assert_eq!(presence.state("202").map(|s| s.0), Some(State::Available));
    let out = lab.advance(Duration::from_secs(5));
    assert_eq!(once(lab.sent_to("BYE ")), [FIRST], "{out:#?}");
    assert_eq!(steps(&mut lab), [Step::Ended(Outcome::AgentDropped)]);
    assert_eq!(lab.cdrs, 1);
    assert!(lab.idle());
}

#[test]
fn an_agent_who_does_not_confirm_in_time_is_hung_up_or_the_customer_dialled_as_the_campaign_says() {
    use crate::campaigns::{Outcome, Step};
    let (mut lab, _, agent) = attempt_placed(false);
    lab.input(response(&agent, 200, "ag", SDP, ""), PHONE_A);
    assert!(!customer_dialled(&lab.advance(Duration::from_secs(14))));
    let out = lab.advance(Duration::from_secs(2));
    assert!(!customer_dialled(&out));
    assert_eq!(once(lab.sent_to("BYE ")), [PHONE_A]);
    assert_eq!(
        steps(&mut lab),
        [Step::AgentAnswered, Step::Ended(Outcome::AgentTimeout)]
    );
    assert!(lab.idle());

    let (mut lab, _, agent) = attempt_placed(true);
    lab.input(response(&agent, 200, "ag", SDP, ""), PHONE_A);
    lab.advance(Duration::from_secs(14));
    to_customer(&lab.advance(Duration::from_secs(2)));
}

#[test]
fn a_skipped_or_busy_customer_ends_the_attempt_and_an_agent_who_misses_it_is_set_away() {
    use crate::campaigns::{Outcome, Step};
    use crate::presence::State;
    let (mut lab, key, agent) = attempt_placed(false);
    lab.input(response(&agent, 200, "ag", SDP, ""), PHONE_A);
    assert!(lab.h.shard.confirm(lab.now, &key, false));
    let out = lab.out();
    assert!(!customer_dialled(&out));
    assert_eq!(once(lab.sent_to("BYE ")), [PHONE_A]);
    assert_eq!(
        steps(&mut lab),
        [Step::AgentAnswered, Step::Ended(Outcome::Skipped)]
    );

    let (mut lab, key, agent) = attempt_placed(false);
    lab.input(response(&agent, 200, "ag", SDP, ""), PHONE_A);
    lab.h.shard.confirm(lab.now, &key, true);
    let customer = to_customer(&lab.out()).clone();
    lab.input(response(&customer, 486, "cu", "", ""), FIRST);
    assert_eq!(once(lab.sent_to("BYE ")), [PHONE_A]);
    let ended = steps(&mut lab).pop();
    assert_eq!(ended, Some(Step::Ended(Outcome::Busy)));
    assert!(lab.idle());
    assert!(
        lab.h.env.outside.line(crate::outside::TrunkId(0)).seize(),
        "the trunk's channel is given back"
    );

    let (mut lab, _, _) = attempt_placed(false);
    lab.advance(Duration::from_secs(31));
    assert_eq!(once(lab.sent_to("CANCEL ")), [PHONE_A]);
    assert_eq!(steps(&mut lab), [Step::Ended(Outcome::AgentTimeout)]);
    let presence = lab.h.env.presence.clone();
    assert_eq!(presence.state("202").map(|s| s.0), Some(State::Away));
}

#[test]
fn a_customer_who_answers_after_the_agent_hung_up_is_hung_up_and_counted_as_abandoned() {
    use crate::campaigns::{Outcome, Step};
    let (mut lab, key, agent) = attempt_placed(false);
    lab.input(response(&agent, 200, "ag", SDP, ""), PHONE_A);
    lab.h.shard.confirm(lab.now, &key, true);
    let customer = to_customer(&lab.out()).clone();
    lab.input(response(&customer, 180, "cu", "", ""), FIRST);
    // The agent hangs up while the customer rings: the customer is cancelled…
    let out = lab.input(bye_for(&agent, "ag", PHONE_A), PHONE_A);
    assert_eq!(once(lab.sent_to("CANCEL ")), [FIRST], "{out:#?}");
    let ended = steps(&mut lab).pop();
    assert_eq!(ended, Some(Step::Ended(Outcome::Failed)));
    // …but answers before the CANCEL arrives: acknowledged, hung up, counted.
    let sdp = SDP.replace("10.0.0.1", "192.0.2.21");
    let out = lab.input(response(&customer, 200, "cu", &sdp, ""), FIRST);
    one(&out, "ACK ");
    one(&out, "BYE ");
    assert_eq!(steps(&mut lab), [Step::Abandoned]);
    assert!(lab.idle());
}

#[test]
fn a_campaign_customer_whose_number_is_blocked_is_never_dialled_nor_the_agent_rung() {
    let mut lab = outside_lab();
    lab.h
        .env
        .presence
        .set_registered("202", true, lab.h.wall0)
        .expect("registered");
    let call = super::AttemptCall {
        number: "09901234567".into(),
        ..attempt_call(1, false)
    };
    assert_eq!(
        lab.h.shard.attempt(lab.now, call),
        Err(super::OriginateError::Blocked("09901234567".into()))
    );
    assert!(lab.out().is_empty(), "nothing sent");
    assert_eq!(lab.h.env.outside.fraud.denied(), 1, "counted as a denial");
}

#[test]
fn a_campaigns_own_farewell_is_what_the_customer_hears_before_the_bye() {
    let one_second = Arc::new(Prompt::from_linear(&[0; 8000]));
    let call = super::AttemptCall {
        farewell: Some(one_second),
        ..attempt_call(1, false)
    };
    let (mut lab, key, agent) = attempt_placed_as(call);
    lab.input(response(&agent, 200, "ag", SDP, ""), PHONE_A);
    lab.h.shard.confirm(lab.now, &key, true);
    let customer = to_customer(&lab.out()).clone();
    let sdp = SDP.replace("10.0.0.1", "192.0.2.21");
    lab.input(response(&customer, 200, "cu", &sdp, ""), FIRST);
    lab.input(bye_for(&agent, "ag", PHONE_A), PHONE_A);
    assert!(starting(&lab.advance(Duration::from_millis(900)), "BYE ").is_empty());
    let out = lab.advance(Duration::from_millis(200));
    assert_eq!(
        once(lab.sent_to("BYE ")),
        [FIRST],
        "after the 1 s farewell: {out:#?}"
    );
}

mod hunt;
mod pickup;
mod recording;
mod transfer;
mod voicemail;

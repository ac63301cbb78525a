//! Leaving voicemail with a fake clock: a call nobody takes reaches the
//! mailbox (no answer, do not disturb, no phone), the greeting then the
//! recording, `#` ends it, the message is stored and the lamp lit; a caller
//! who hangs up while speaking gets the 200 to their BYE only once the
//! message is durable; a forwarding rule wins over the mailbox.

use super::*;
use crate::media::MediaEvent;
use crate::presence::State;

/// 201 calls 202 (phone A), who has a mailbox.
fn office() -> Lab {
    let lab = Lab::new(Setup {
        users: vec!["201", "202", "203"],
        authenticate: false,
        ring_timeout: Duration::from_secs(10),
        mailboxes: vec!["202"],
        ..Setup::default()
    });
    lab.h.bind("202", PHONE_A);
    lab
}

/// The id of the message the relay records, once it records.
fn recording(lab: &Lab) -> u64 {
    recorded(lab, "60s")
}

/// The id of what the relay records for at most `max` (a message: the
/// mailbox's limit; a greeting: 30s).
fn recorded(lab: &Lab, max: &str) -> u64 {
    let suffix = format!(" max={max}");
    lab.media_log()
        .iter()
        .find_map(|l| {
            l.strip_suffix(&suffix)?
                .split("record 0 voice=")
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("nothing recorded for {max}: {:?}", lab.media_log()))
}

/// The caller of `call` (our 200 `ok`) presses `#` (SIP INFO, CSeq `cseq`):
/// the recording stops, and the relay reports message `voice` saved (3 s).
fn hash_ends_the_message(lab: &mut Lab, ok: &str, cseq: u32, call: &str, voice: u64) {
    lab.input(dtmf_info(ok, cseq, '#'), CALLER);
    assert!(lab
        .media_log()
        .iter()
        .any(|l| l.ends_with("stop_recording")));
    let saved = MediaEvent::Recorded {
        id: voice,
        saved: true,
        ms: 3000,
    };
    lab.h
        .shard
        .handle_media(lab.now, &CallId::from(call), saved);
    lab.out();
}

/// Call `call_id` rings at 202 until the ring timeout and reaches the
/// mailbox: our 200 to the caller, ACKed; the greeting is over.
fn at_the_beep(lab: &mut Lab, call_id: &str) -> String {
    let out = lab.input(invite(call_id, "202", ""), CALLER);
    let b = toward(&out, PHONE_A).clone();
    lab.input(response(&b, 180, "b", "", ""), PHONE_A);
    let out = lab.advance(Duration::from_secs(10));
    one(&out, "CANCEL sip:202@10.0.0.2");
    let ok = one(&out, "SIP/2.0 200 OK").clone();
    assert!(
        ok.contains("c=IN IP4 192.0.2.100"),
        "the relay answers: {ok}"
    );
    lab.input(response(&b, 487, "b", "", ""), PHONE_A);
    lab.input(caller_request(&ok, "ACK", 1, "", ""), CALLER);
    assert!(
        lab.media_log().iter().any(|l| l.contains("play 0")),
        "the greeting plays: {:?}",
        lab.media_log()
    );
    lab.advance(Duration::from_secs(4));
    ok
}

#[test]
fn an_unanswered_call_leaves_a_message_that_lights_the_lamp() {
    let mut lab = office();
    let ok = at_the_beep(&mut lab, "vm@a");
    let voice = recording(&lab);
    assert!(lab
        .media_log()
        .iter()
        .any(|l| l.ends_with(&format!("record 0 voice={voice} max=60s"))));
    hash_ends_the_message(&mut lab, &ok, 2, "vm@a", voice);
    let stored = lab.writes.last().cloned().unwrap_or_default();
    assert!(
        stored.contains("VoiceMessage") && stored.contains("mailbox: \"202\""),
        "{stored}"
    );
    assert_eq!(lab.h.env.voicemail.counts("202"), (1, 0));
    assert!(lab.h.env.mwi.summary("202").waiting(), "the lamp is lit");
    assert_eq!(lab.h.shard.poll_lamps(), ["202"], "every shard is told");
    let out = lab.advance(Duration::from_secs(2));
    one(&out, "BYE sip:201@");
    assert_eq!(lab.cdrs, 1);
    assert!(lab.idle());
}

#[test]
fn a_caller_who_hangs_up_while_speaking_is_answered_once_the_message_is_durable() {
    let mut lab = office();
    let ok = at_the_beep(&mut lab, "hang@a");
    let voice = recording(&lab);
    let out = lab.input(caller_request(&ok, "BYE", 2, "", ""), CALLER);
    assert!(
        starting(&out, "SIP/2.0 200").is_empty(),
        "not before the message is saved: {out:#?}"
    );
    let saved = MediaEvent::Recorded {
        id: voice,
        saved: true,
        ms: 2500,
    };
    lab.h
        .shard
        .handle_media(lab.now, &CallId::from("hang@a"), saved);
    let out = lab.out();
    one(&out, "SIP/2.0 200 OK");
    let message = lab.writes.iter().position(|w| w.contains("VoiceMessage"));
    assert!(message.is_some(), "stored before the 200: {:?}", lab.writes);
    assert_eq!(lab.h.env.voicemail.list("202")[0].ms, 2500);
    assert!(lab.idle());
}

#[test]
fn nothing_said_leaves_no_message_and_dnd_or_no_phone_reach_the_mailbox_at_once() {
    let mut lab = office();
    let ok = at_the_beep(&mut lab, "quiet@a");
    let voice = recording(&lab);
    lab.input(dtmf_info(&ok, 2, '#'), CALLER);
    let empty = MediaEvent::Recorded {
        id: voice,
        saved: false,
        ms: 0,
    };
    lab.h
        .shard
        .handle_media(lab.now, &CallId::from("quiet@a"), empty);
    let out = lab.out();
    one(&out, "BYE sip:201@");
    assert_eq!(lab.h.env.voicemail.counts("202"), (0, 0));
    assert!(!lab.h.env.mwi.summary("202").waiting());

    // Do not disturb: no phone rings, the caller is answered by the mailbox.
    let wall = lab.h.wall0;
    lab.h
        .env
        .presence
        .choose("202", State::Busy, wall)
        .expect("dnd");
    let out = lab.input(invite("dnd@a", "202", ""), CALLER);
    assert!(starting(&out, "INVITE ").is_empty(), "{out:#?}");
    one(&out, "SIP/2.0 200 OK");

    // No phone registered: the same.
    let mut lab = Lab::new(Setup {
        users: vec!["201", "202"],
        authenticate: false,
        mailboxes: vec!["202"],
        ..Setup::default()
    });
    let out = lab.input(invite("nophone@a", "202", ""), CALLER);
    one(&out, "SIP/2.0 200 OK");
}

#[test]
fn a_caller_who_hangs_up_during_the_greeting_leaves_nothing_behind() {
    let mut lab = office();
    let out = lab.input(invite("early@a", "202", ""), CALLER);
    let b = toward(&out, PHONE_A).clone();
    lab.input(response(&b, 180, "b", "", ""), PHONE_A);
    let out = lab.advance(Duration::from_secs(10));
    let ok = one(&out, "SIP/2.0 200 OK").clone();
    lab.input(response(&b, 487, "b", "", ""), PHONE_A);
    lab.input(caller_request(&ok, "ACK", 1, "", ""), CALLER);
    let out = lab.input(caller_request(&ok, "BYE", 2, "", ""), CALLER);
    one(&out, "SIP/2.0 200 OK");
    lab.advance(Duration::from_secs(5));
    assert!(
        !lab.media_log().iter().any(|l| l.contains("record 0")),
        "nothing was recorded"
    );
    assert!(lab.idle(), "no message waits to be saved");
}

#[test]
fn a_forwarding_rule_wins_over_the_mailbox() {
    let mut lab = office();
    lab.h
        .env
        .forwarding
        .set("202", crate::forwarding::When::NoAnswer, Some("203".into()));
    lab.h.bind("203", PHONE_B);
    let out = lab.input(invite("fwd@a", "202", ""), CALLER);
    let b = toward(&out, PHONE_A).clone();
    lab.input(response(&b, 180, "b", "", ""), PHONE_A);
    let out = lab.advance(Duration::from_secs(20));
    assert!(
        out.iter().any(|m| m.starts_with("INVITE sip:203@10.0.0.3")),
        "forwarded, not to voicemail: {out:#?}"
    );
    assert!(starting(&out, "SIP/2.0 200").is_empty());
}

/// 202's mailbox (PIN 1234) holds a heard message (12) and a new one (11).
fn mailbox_with_messages() -> Lab {
    let lab = office();
    let vm = &lab.h.env.voicemail;
    let mut heard = crate::voicemail::message(12, "202", ("5550002", None), lab.h.wall0, 1000);
    heard.heard = true;
    for m in [
        heard,
        crate::voicemail::message(11, "202", ("5550001", None), lab.h.wall0, 2000),
    ] {
        vm.left(m).expect("a mailbox");
    }
    lab
}

/// 202 dials the menu code: our 200, and what played.
fn in_the_menu(lab: &mut Lab, call_id: &str) -> String {
    let out = super::pickup::picker_invite(lab, "202", call_id, "*97", "");
    one(&out, "SIP/2.0 200 OK").clone()
}

fn typed(lab: &mut Lab, ok: &str, first_cseq: u32, digits: &str) {
    for (i, d) in digits.chars().enumerate() {
        lab.input(dtmf_info(ok, first_cseq + i as u32, d), CALLER);
    }
}

fn played(lab: &Lab) -> Vec<String> {
    lab.media_log()
        .into_iter()
        .filter(|l| l.contains("play_voice 0 "))
        .collect()
}

#[test]
fn the_menu_asks_the_pin_then_plays_new_messages_first_and_deletes_one() {
    let mut lab = mailbox_with_messages();
    let ok = in_the_menu(&mut lab, "menu@phone");
    assert!(played(&lab).is_empty(), "nothing before the PIN");
    typed(&mut lab, &ok, 2, "1235#");
    assert!(played(&lab).is_empty(), "a wrong PIN plays nothing");
    typed(&mut lab, &ok, 7, "1234#");
    assert_eq!(played(&lab).len(), 1);
    assert!(played(&lab)[0].contains("voice=11"), "the new one first");
    // Played to its end: heard, and the lamp knows.
    lab.advance(Duration::from_millis(2400));
    assert_eq!(lab.h.env.voicemail.counts("202"), (0, 2));
    assert!(lab.writes.iter().any(|w| w.contains("heard: true")));
    // 7 deletes it, and the next one plays.
    typed(&mut lab, &ok, 12, "7");
    assert_eq!(lab.h.env.voicemail.list("202").len(), 1);
    assert!(lab.writes.iter().any(|w| w.starts_with("Remove")));
    assert!(
        lab.media_log().iter().any(|l| l == "discard voice=11"),
        "its recording goes too"
    );
    assert!(played(&lab).last().is_some_and(|l| l.contains("voice=12")));
    // # goes on: nothing left; 0 records the user's own greeting until #.
    typed(&mut lab, &ok, 13, "#0");
    let greeting = recorded(&lab, "30s");
    typed(&mut lab, &ok, 15, "#");
    let saved = MediaEvent::Recorded {
        id: greeting,
        saved: true,
        ms: 3000,
    };
    lab.h
        .shard
        .handle_media(lab.now, &CallId::from("menu@phone"), saved);
    let out = lab.advance(Duration::from_secs(2));
    one(&out, "BYE sip:202@");
    assert!(lab.writes.iter().any(|w| w.contains("Greeting")));
    assert!(lab.idle());

    // Callers now hear it, then a beep, then they speak.
    let out = lab.input(invite("after@a", "202", ""), CALLER);
    let b = toward(&out, PHONE_A).clone();
    lab.input(response(&b, 486, "b", "", ""), PHONE_A);
    assert!(
        lab.media_log()
            .iter()
            .any(|l| l.ends_with(&format!("play_voice 0 voice={greeting} pt=0"))),
        "{:?}",
        lab.media_log()
    );
    let before = lab.media_log().len();
    lab.advance(Duration::from_millis(2900));
    assert_eq!(
        lab.media_log().len(),
        before,
        "not before the greeting ends"
    );
    lab.advance(Duration::from_millis(200));
    assert!(lab.media_log()[before..]
        .iter()
        .any(|l| l.contains("record 0 voice=")));
}

#[test]
fn three_wrong_pins_hang_up_and_no_mailbox_is_404() {
    let mut lab = mailbox_with_messages();
    let ok = in_the_menu(&mut lab, "guess@phone");
    typed(&mut lab, &ok, 2, "0000#1111#2222#");
    let out = lab.advance(Duration::from_secs(2));
    one(&out, "BYE sip:202@");
    assert!(played(&lab).is_empty(), "no message was played");
    assert!(lab.idle());

    let out = super::pickup::picker_invite(&mut lab, "203", "none@phone", "*97", "");
    one(&out, "SIP/2.0 404 Not Found (No Mailbox)");
}

#[test]
fn a_greeting_whose_caller_hangs_up_while_recording_is_not_kept() {
    let mut lab = office();
    let ok = in_the_menu(&mut lab, "gone@phone");
    typed(&mut lab, &ok, 2, "1234#0");
    let greeting = recorded(&lab, "30s");
    let bye = super::pickup::picker_request(&ok, "BYE", 9);
    let out = lab.input(bye, "10.0.0.5:5064");
    one(&out, "SIP/2.0 200 OK");
    let saved = MediaEvent::Recorded {
        id: greeting,
        saved: true,
        ms: 1500,
    };
    lab.h
        .shard
        .handle_media(lab.now, &CallId::from("gone@phone"), saved);
    lab.out();
    assert!(lab.h.env.voicemail.greeting("202").is_none());
    assert!(lab
        .media_log()
        .iter()
        .any(|l| l == &format!("discard voice={greeting}")));
    assert!(lab.idle());
}

#[test]
fn a_caller_who_holds_or_refreshes_while_leaving_a_message_is_answered_by_the_pbx() {
    let mut lab = office();
    let ok = at_the_beep(&mut lab, "hold@a");
    let voice = recording(&lab);
    let held = SDP.replace("a=sendrecv", "a=sendonly");
    assert_ne!(held, SDP, "the offer holds");
    let out = lab.input(caller_request(&ok, "INVITE", 2, &held, ""), CALLER);
    let again = one(&out, "SIP/2.0 200 OK");
    assert!(again.contains("a=recvonly"), "held: {again}");
    assert_next_version(&ok, again);
    assert!(
        lab.media_log()
            .iter()
            .any(|l| l.ends_with("peer 0 Some(10.0.0.1:4000) receives=false")),
        "{:?}",
        lab.media_log()
    );
    // Still recording: `#` ends the message as before.
    hash_ends_the_message(&mut lab, &ok, 3, "hold@a", voice);
    assert_eq!(lab.h.env.voicemail.counts("202"), (1, 0));
}

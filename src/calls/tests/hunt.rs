//! Hunting with a fake clock: forwarding (always, busy, no answer), do not
//! disturb, ring groups in both orders, loops, forwarding codes.

use super::*;
use crate::forwarding::When;
use crate::presence::State;
use crate::routing::RingGroup;

const PHONE_C: &str = "10.0.0.4:5060";

/// 201 calls; 202 (phone A), 203 (phone B) and 204 (phone C) have phones
/// and answer queue 500; ring group 600 of 202, 203, 204 (priorities in that order) rings them
/// `in_order` or all at once, 5 s each, then goes to `then`.
fn office(in_order: bool, then: Option<&str>) -> Lab {
    let mut routing = Directory::new(vec![Group {
        name: "front".into(),
        members: vec![("202".into(), 1), ("203".into(), 2), ("204".into(), 3)],
    }]);
    routing.add_queue(queue_500(Overflow::Announce));
    routing.add_ring_group(RingGroup {
        number: "600".into(),
        group: GroupId(0),
        in_order,
        ring: Duration::from_secs(5),
        then: then.map(String::from),
    });
    let lab = Lab::new(Setup {
        users: vec!["201", "202", "203", "204"],
        authenticate: false,
        routing,
        ring_timeout: Duration::from_secs(30),
        ..Setup::default()
    });
    lab.h.bind("202", PHONE_A);
    lab.h.bind("203", PHONE_B);
    lab.h.bind("204", PHONE_C);
    lab
}

/// `ext` chooses do not disturb.
fn dnd(lab: &Lab, ext: &str) {
    let wall = lab.h.wall0;
    lab.h
        .env
        .presence
        .choose(ext, State::Busy, wall)
        .expect("dnd");
}

fn forward(lab: &Lab, ext: &str, when: When, to: &str) {
    lab.h.env.forwarding.set(ext, when, Some(to.into()));
}

/// The INVITE to extension `ext` at `phone` among what was sent.
fn ringing<'a>(out: &'a [String], ext: &str, phone: &str) -> &'a String {
    out.iter()
        .find(|m| m.starts_with(&format!("INVITE sip:{ext}@{phone}")))
        .unwrap_or_else(|| panic!("no INVITE to {ext} at {phone} in {out:#?}"))
}

/// The INVITE to `ext` at `phone`, answered 180 by the phone (so that it is
/// not retransmitted).
fn rings(lab: &mut Lab, out: &[String], ext: &str, phone: &str) -> String {
    let b = ringing(out, ext, phone).clone();
    lab.input(response(&b, 180, "r", "", ""), phone);
    b
}

fn invites(out: &[String]) -> usize {
    starting(out, "INVITE ").len()
}

/// The phone answers `b` and the caller ACKs: the call is connected.
fn answer(lab: &mut Lab, b: &str, phone: &str) {
    let sdp = SDP.replace("10.0.0.1", phone.split(':').next().unwrap_or_default());
    let out = lab.input(response(b, 200, "b", &sdp, ""), phone);
    let ok = one(&out, "SIP/2.0 200 OK").clone();
    lab.input(caller_request(&ok, "ACK", 1, "", ""), CALLER);
    let out = lab.input(caller_request(&ok, "BYE", 2, "", ""), CALLER);
    one(&out, "BYE sip:phone@");
}

#[test]
fn an_always_forward_rings_the_destination_and_never_the_user() {
    let mut lab = office(false, None);
    forward(&lab, "202", When::Always, "203");
    let out = lab.input(invite("fwd@a", "202", ""), CALLER);
    assert_eq!(invites(&out), 1, "{out:#?}");
    let b = ringing(&out, "203", PHONE_B).clone();
    answer(&mut lab, &b, PHONE_B);
    assert_eq!(lab.cdrs, 1);
    assert!(lab.idle());
}

#[test]
fn a_busy_phone_forwards_on_busy_and_without_a_rule_the_caller_hears_busy() {
    let mut lab = office(false, None);
    forward(&lab, "202", When::Busy, "203");
    let out = lab.input(invite("busy@a", "202", ""), CALLER);
    let b = ringing(&out, "202", PHONE_A).clone();
    let out = lab.input(response(&b, 486, "b", "", ""), PHONE_A);
    let b2 = ringing(&out, "203", PHONE_B).clone();
    assert!(starting(&out, "SIP/2.0 486").is_empty(), "not busy yet");
    let out = lab.input(response(&b2, 486, "c", "", ""), PHONE_B);
    one(&out, "SIP/2.0 486 Busy Here");
    assert!(lab.idle());
}

#[test]
fn an_unanswered_call_forwards_after_the_users_wait() {
    let mut lab = office(false, None);
    lab.h.env.forwarding.replace(
        "202",
        crate::forwarding::Rules {
            no_answer: Some("204".into()),
            no_answer_secs: 8,
            ..Default::default()
        },
    );
    let out = lab.input(invite("na@a", "202", ""), CALLER);
    let b = rings(&mut lab, &out, "202", PHONE_A);
    let out = lab.advance(Duration::from_secs(7));
    assert!(out.is_empty(), "still ringing: {out:#?}");
    let out = lab.advance(Duration::from_secs(1));
    one(&out, "CANCEL sip:202@10.0.0.2");
    let c = ringing(&out, "204", PHONE_C).clone();
    // The first phone's late 200 (it crossed our CANCEL) is ended, not connected.
    lab.input(response(&b, 487, "b", "", ""), PHONE_A);
    answer(&mut lab, &c, PHONE_C);
    assert!(lab.idle());
}

#[test]
fn a_user_without_a_phone_is_forwarded_on_no_answer_at_once() {
    let mut lab = office(false, None);
    forward(&lab, "201", When::NoAnswer, "203");
    let out = lab.input(invite("off@a", "201", ""), CALLER);
    ringing(&out, "203", PHONE_B);
}

#[test]
fn do_not_disturb_answers_busy_or_takes_the_busy_forward() {
    let mut lab = office(false, None);
    dnd(&lab, "202");
    let out = lab.input(invite("dnd@a", "202", ""), CALLER);
    assert_eq!(invites(&out), 0, "no phone rings: {out:#?}");
    one(&out, "SIP/2.0 486 Busy Here (Do Not Disturb)");
    forward(&lab, "202", When::Busy, "203");
    let out = lab.input(invite("dnd2@a", "202", ""), CALLER);
    ringing(&out, "203", PHONE_B);
}

#[test]
fn a_ring_group_rings_everyone_at_once_then_its_destination() {
    let mut lab = office(false, Some("201"));
    dnd(&lab, "203");
    lab.h.bind("201", "10.0.0.9:5060");
    let out = lab.input(invite("all@a", "600", ""), CALLER);
    assert_eq!(invites(&out), 2, "202 and 204; 203 is in do not disturb");
    rings(&mut lab, &out, "202", PHONE_A);
    rings(&mut lab, &out, "204", PHONE_C);
    let out = lab.advance(Duration::from_secs(5));
    assert_eq!(starting(&out, "CANCEL ").len(), 2);
    ringing(&out, "201", "10.0.0.9:5060");
}

/// The states of `ext`'s presence dialogs.
fn shown(lab: &Lab, ext: &str) -> Vec<crate::presence::DialogState> {
    let dialogs = lab.h.env.presence.dialogs(ext);
    dialogs.iter().map(|d| d.state).collect()
}

#[test]
fn a_ring_group_ringing_all_shows_the_call_at_each_member_and_the_one_who_answers_keeps_it() {
    use crate::presence::DialogState::{Confirmed, Early};
    let mut lab = office(false, None);
    let out = lab.input(invite("show@a", "600", ""), CALLER);
    rings(&mut lab, &out, "202", PHONE_A);
    let b203 = rings(&mut lab, &out, "203", PHONE_B);
    rings(&mut lab, &out, "204", PHONE_C);
    for ext in ["202", "203", "204"] {
        assert_eq!(shown(&lab, ext), [Early], "{ext}'s BLF lamp blinks");
        let d = lab.h.env.presence.dialogs(ext)[0].clone();
        assert_eq!(d.call_id, "show@a", "named by the caller's leg");
        assert!(d.tags.is_some(), "with the tags a BLF key picks up with");
    }
    let sdp = SDP.replace("10.0.0.1", "10.0.0.3");
    let out = lab.input(response(&b203, 200, "b", &sdp, ""), PHONE_B);
    assert_eq!(
        starting(&out, "CANCEL ").len(),
        2,
        "the others stop ringing"
    );
    let ok = one(&out, "SIP/2.0 200 OK").clone();
    lab.input(caller_request(&ok, "ACK", 1, "", ""), CALLER);
    assert_eq!(shown(&lab, "203"), [Confirmed], "203 talks");
    assert!(shown(&lab, "202").is_empty() && shown(&lab, "204").is_empty());
    let out = lab.input(caller_request(&ok, "BYE", 2, "", ""), CALLER);
    one(&out, "BYE sip:phone@");
    assert!(shown(&lab, "203").is_empty());
}

#[test]
fn a_colleague_picks_up_a_ring_group_call_with_the_code_and_every_member_stops_ringing() {
    let mut lab = office(false, None);
    // 203 is in do not disturb: the group rings 202 and 204, 203 picks up.
    dnd(&lab, "203");
    let out = lab.input(invite("front@a", "600", ""), CALLER);
    rings(&mut lab, &out, "202", PHONE_A);
    rings(&mut lab, &out, "204", PHONE_C);
    let out = super::pickup::picker_invite(&mut lab, "203", "p@phone", "*8", "");
    assert_eq!(starting(&out, "CANCEL ").len(), 2, "{out:#?}");
    let mut to = lab.sent_to("SIP/2.0 200 OK");
    to.sort_unstable();
    assert_eq!(to, [CALLER, "10.0.0.5:5064"], "caller and picker answered");
    assert!(shown(&lab, "202").is_empty() && shown(&lab, "204").is_empty());
    assert_eq!(
        shown(&lab, "203"),
        [crate::presence::DialogState::Confirmed]
    );
}

#[test]
fn a_ring_group_in_order_rings_one_member_after_another_then_fails() {
    let mut lab = office(true, None);
    let out = lab.input(invite("ord@a", "600", ""), CALLER);
    let b = ringing(&out, "202", PHONE_A).clone();
    assert_eq!(invites(&out), 1);
    // A decline moves on at once; a timeout after 5 s.
    let out = lab.input(response(&b, 603, "b", "", ""), PHONE_A);
    rings(&mut lab, &out, "203", PHONE_B);
    let out = lab.advance(Duration::from_secs(5));
    one(&out, "CANCEL sip:203@10.0.0.3");
    rings(&mut lab, &out, "204", PHONE_C);
    let out = lab.advance(Duration::from_secs(5));
    one(&out, "CANCEL sip:204@10.0.0.4");
    one(&out, "SIP/2.0 480 Temporarily Unavailable");
}

#[test]
fn a_forwarding_loop_is_stopped() {
    // Always 202 → 203 → 202: 203's forward would come back, so 203 rings.
    let mut lab = office(false, None);
    forward(&lab, "202", When::Always, "203");
    forward(&lab, "203", When::Always, "202");
    let out = lab.input(invite("loop@a", "202", ""), CALLER);
    assert_eq!(invites(&out), 1);
    ringing(&out, "203", PHONE_B);
    // No answer 202 → 204 → 202: each rings once, then the caller hears 480.
    let mut lab = office(false, None);
    forward(&lab, "202", When::NoAnswer, "204");
    forward(&lab, "204", When::NoAnswer, "202");
    let out = lab.input(invite("loop2@a", "202", ""), CALLER);
    rings(&mut lab, &out, "202", PHONE_A);
    let out = lab.advance(Duration::from_secs(20));
    rings(&mut lab, &out, "204", PHONE_C);
    let out = lab.advance(Duration::from_secs(20));
    assert_eq!(invites(&out), 0, "{out:#?}");
    one(&out, "SIP/2.0 480 Temporarily Unavailable");
}

#[test]
fn a_forward_to_a_queue_hands_the_call_to_it() {
    let mut lab = office(false, None);
    forward(&lab, "202", When::Always, "500");
    let out = lab.input(invite("toq@a", "202", ""), CALLER);
    let ok = one(&out, "SIP/2.0 200 OK");
    assert!(ok.contains("m=audio"), "the queue answers with music");
    assert_eq!(invites(&out), 1, "one agent is offered the call: {out:#?}");
}

#[test]
fn a_forward_outside_goes_out_as_the_forwarding_user() {
    let mut lab = outside_lab();
    forward(&lab, "202", When::Always, NATIONAL);
    let out = lab.input(invite("out@a", "202", ""), CALLER);
    let to = to_provider(&out, "first.example");
    assert!(to.contains("+81312340000"), "the route's caller ID: {to}");
    // A number the user's class does not allow is refused.
    let mut lab = outside_lab();
    forward(&lab, "202", When::Always, "0101234567890");
    let out = lab.input(invite("intl@a", "202", ""), CALLER);
    one(&out, "SIP/2.0 403 Forbidden (Outside Call Not Allowed)");
}

#[test]
fn forwarding_codes_set_and_clear_a_rule_durably() {
    let mut lab = Lab::new(Setup {
        users: vec!["201", "202"],
        ..Setup::default()
    });
    let out = authorized(&mut lab, "code@a", "*72202");
    one(&out, "SIP/2.0 200 OK");
    assert_eq!(
        lab.h.env.forwarding.rules("201").always.as_deref(),
        Some("202")
    );
    assert!(
        lab.writes
            .iter()
            .any(|w| w.contains("StoredRules") && w.contains("\"202\"")),
        "stored: {:#?}",
        lab.writes
    );
    let out = authorized(&mut lab, "nowhere@a", "*72999");
    one(&out, "SIP/2.0 404 Not Found");
    let out = authorized(&mut lab, "self@a", "*72201");
    one(&out, "SIP/2.0 403 Forbidden");
    let out = authorized(&mut lab, "bare@a", "*72");
    one(&out, "SIP/2.0 484 Address Incomplete");
    let out = authorized(&mut lab, "off@a", "*73");
    one(&out, "SIP/2.0 200 OK");
    assert_eq!(lab.h.env.forwarding.rules("201").always, None);
}

#[test]
fn a_forwarding_code_needs_credentials_even_when_calls_do_not() {
    let mut lab = Lab::two_phones(&[PHONE_A]);
    let out = lab.input(invite("anon@a", "*72202", ""), CALLER);
    one(&out, "SIP/2.0 407");
    assert_eq!(lab.h.env.forwarding.rules("201"), Default::default());
}

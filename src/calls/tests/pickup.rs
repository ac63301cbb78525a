//! Pickup with a fake clock: a BLF key's INVITE with Replaces (tags in
//! either order), the group and directed codes, who may pick up, and the
//! refusals (481, 486 early-only, 403, 488).

use super::*;
use crate::presence::DialogFact;

const PICKER: &str = "10.0.0.5:5064";

/// 201 calls 202 (phone A); 203 and 202 are in group "front", 204 is not.
fn office() -> Lab {
    let routing = Directory::new(vec![
        Group {
            name: "front".into(),
            members: vec![("202".into(), 1), ("203".into(), 1)],
        },
        Group {
            name: "back".into(),
            members: vec![("204".into(), 1)],
        },
    ]);
    let lab = Lab::new(Setup {
        users: vec!["201", "202", "203", "204"],
        authenticate: false,
        routing,
        ..Setup::default()
    });
    lab.h.bind("202", PHONE_A);
    lab
}

/// 201's call rings at 202's phone (answered 180): B's INVITE.
fn ringing(lab: &mut Lab, call_id: &str) -> String {
    let out = lab.input(invite(call_id, "202", ""), CALLER);
    let b = toward(&out, PHONE_A).clone();
    let out = lab.input(response(&b, 180, "b", "", ""), PHONE_A);
    one(&out, "SIP/2.0 180 Ringing");
    b
}

/// The call ringing at `ext` as its BLF key's dialog-info shows it.
fn shown(lab: &Lab, ext: &str) -> DialogFact {
    lab.h
        .env
        .presence
        .dialogs(ext)
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("{ext} has no dialog"))
}

/// `user`'s phone sends an INVITE to `to` (extra headers `extra`), answered
/// with the user's credentials after our 407: what the PBX sent then.
pub(super) fn picker_invite(
    lab: &mut Lab,
    user: &str,
    call_id: &str,
    to: &str,
    extra: &str,
) -> Vec<String> {
    let sdp = SDP.replace("10.0.0.1", "10.0.0.5").replace("0 8", "8 0 9");
    picker_offers(lab, user, call_id, to, extra, &sdp)
}

/// [`picker_invite`] with SDP offer `sdp`.
fn picker_offers(
    lab: &mut Lab,
    user: &str,
    call_id: &str,
    to: &str,
    extra: &str,
    sdp: &str,
) -> Vec<String> {
    let request = |cseq: u32, auth: &str| {
        with_body(
            format!(
                "INVITE sip:{to}@pbx SIP/2.0\r\nVia: SIP/2.0/UDP {PICKER};branch=z9hG4bK-{call_id}-{cseq};rport\r\n\
                 From: <sip:{user}@pbx>;tag=picker\r\nTo: <sip:{to}@pbx>\r\nCall-ID: {call_id}\r\n\
                 CSeq: {cseq} INVITE\r\nContact: <sip:{user}@{PICKER}>\r\nMax-Forwards: 70\r\n{extra}{auth}"
            ),
            sdp,
        )
    };
    let out = lab.input(request(1, ""), PICKER);
    let challenge = one(&out, "SIP/2.0 407").clone();
    let parsed =
        crate::sip::message::parse(Bytes::from(challenge), &Default::default()).expect("407");
    let uri = format!("sip:{to}@pbx");
    let (name, value) =
        crate::sip::auth::authorization(&parsed, "INVITE", &uri, (user, "secret"), "c0ffee")
            .expect("an answer");
    lab.input(request(2, &format!("{name}: {value}\r\n")), PICKER)
}

fn replaces(d: &DialogFact, swapped: bool, extra: &str) -> String {
    let t = d.tags.as_ref().expect("a ringing call carries its tags");
    let (to, from) = match swapped {
        false => (&t.local, &t.remote),
        true => (&t.remote, &t.local),
    };
    format!(
        "Replaces: {};to-tag={to};from-tag={from}{extra}\r\nRequire: replaces\r\n",
        d.call_id
    )
}

/// The picker's 200 and our 200 to the caller are both out, the ringing
/// phone is cancelled, and the relay's B side is the picker.
fn assert_picked_up(lab: &Lab, out: &[String], b: &str) {
    let answers = starting(out, "SIP/2.0 200 OK");
    let mut to = lab.sent_to("SIP/2.0 200 OK");
    to.sort_unstable();
    assert_eq!(to, [CALLER, PICKER], "{out:#?}");
    for ok in &answers {
        assert!(ok.contains("c=IN IP4 192.0.2.100"), "media anchored: {ok}");
        assert!(
            ok.contains("m=audio ") && ok.contains(" RTP/AVP 8 0\r\n"),
            "only the codecs both offers share: {ok}"
        );
    }
    let cancel = one(out, "CANCEL sip:202@10.0.0.2");
    assert_eq!(header(cancel, "Call-ID"), header(b, "Call-ID"));
    assert!(
        lab.media_log()
            .iter()
            .any(|l| l.ends_with("peer 1 Some(10.0.0.5:4000) receives=true")),
        "the relay sends the caller's audio to the picker: {:?}",
        lab.media_log()
    );
}

#[test]
fn a_blf_key_picks_up_a_colleagues_ringing_call_with_replaces() {
    let mut lab = office();
    let b = ringing(&mut lab, "pick@a");
    let d = shown(&lab, "202");
    assert_eq!(d.call_id, "pick@a", "the caller's leg is named");
    let out = picker_invite(&mut lab, "203", "p1@phone", "202", &replaces(&d, false, ""));
    assert_picked_up(&lab, &out, &b);
    assert!(
        lab.h.env.presence.dialogs("202").is_empty(),
        "202 no longer rings"
    );
    let talking = shown(&lab, "203");
    assert_eq!(
        (talking.state, talking.peer.as_str()),
        (crate::presence::DialogState::Confirmed, "201")
    );

    // The late 487 of the cancelled phone changes nothing; the ACKs stop
    // the 200s; the picker's BYE ends the call toward the caller.
    let (caller_ok, picker_ok) = (ok_for(&out, "pick@a"), ok_for(&out, "p1@phone"));
    let cancelled = response(&b, 487, "b", "", "");
    lab.input(cancelled, PHONE_A);
    lab.input(caller_request(&caller_ok, "ACK", 1, "", ""), CALLER);
    lab.input(picker_request(&picker_ok, "ACK", 2), PICKER);
    let out = lab.advance(Duration::from_secs(5));
    assert!(
        starting(&out, "SIP/2.0 200").is_empty(),
        "no 200 after the ACKs: {out:#?}"
    );
    let out = lab.input(picker_request(&picker_ok, "BYE", 3), PICKER);
    one(&out, "SIP/2.0 200 OK");
    assert_eq!(lab.sent_to("BYE "), [CALLER]);
    assert_eq!(lab.cdrs, 1);
    assert!(lab.idle());
}

#[test]
fn a_phone_that_names_the_tags_the_other_way_round_and_the_group_code_pick_up_too() {
    let mut lab = office();
    let b = ringing(&mut lab, "swap@a");
    let d = shown(&lab, "202");
    let out = picker_invite(
        &mut lab,
        "203",
        "p2@phone",
        "202",
        &replaces(&d, true, ";early-only"),
    );
    assert_picked_up(&lab, &out, &b);

    let mut lab = office();
    let b = ringing(&mut lab, "code@a");
    let out = picker_invite(&mut lab, "203", "p3@phone", "*8", "");
    assert_picked_up(&lab, &out, &b);

    let mut lab = office();
    let b = ringing(&mut lab, "direct@a");
    let out = picker_invite(&mut lab, "203", "p4@phone", "**202", "");
    assert_picked_up(&lab, &out, &b);
}

#[test]
fn the_200_to_a_picker_that_never_acks_is_sent_again_then_the_call_ends() {
    let mut lab = office();
    ringing(&mut lab, "noack@a");
    let d = shown(&lab, "202");
    let out = picker_invite(&mut lab, "203", "p5@phone", "202", &replaces(&d, false, ""));
    let caller_ok = ok_for(&out, "noack@a");
    lab.input(caller_request(&caller_ok, "ACK", 1, "", ""), CALLER);
    let out = lab.advance(Duration::from_millis(500));
    assert_eq!(lab.sent_to("SIP/2.0 200 OK"), [PICKER], "{out:#?}");
    lab.advance(Duration::from_secs(32));
    let mut byes = lab.sent_to("BYE ");
    byes.sort_unstable();
    byes.dedup();
    assert_eq!(
        byes,
        [CALLER, PICKER],
        "both ends hung up (RFC 3261 §13.3.1.4)"
    );
    assert!(lab.idle());
}

#[test]
fn pickups_that_may_not_happen_are_refused_with_the_reason() {
    let mut lab = office();
    ringing(&mut lab, "deny@a");
    let d = shown(&lab, "202");
    let pick = |lab: &mut Lab, user: &str, id: &str, to: &str, extra: &str| {
        let out = picker_invite(lab, user, id, to, extra);
        let last = out.iter().rev().find(|m| m.starts_with("SIP/2.0 "));
        last.map(|s| s.lines().next().unwrap_or_default().to_string())
    };
    let outsider = pick(&mut lab, "204", "x1@phone", "202", &replaces(&d, false, ""));
    assert_eq!(
        outsider.as_deref(),
        Some("SIP/2.0 403 Forbidden (Not In The Same Pickup Group)")
    );
    let own = pick(&mut lab, "202", "x2@phone", "202", &replaces(&d, false, ""));
    assert_eq!(
        own.as_deref(),
        Some("SIP/2.0 403 Forbidden (The Call Rings At Your Own Phone)")
    );
    let other = replaces(&d, false, "").replace("deny@a", "nothing@a");
    let none = pick(&mut lab, "203", "x3@phone", "202", &other);
    assert_eq!(
        none.as_deref(),
        Some("SIP/2.0 481 Call/Transaction Does Not Exist")
    );
    let wrong_tag = replaces(&d, false, "").replace("from-tag=caller", "from-tag=other");
    let wrong = pick(&mut lab, "203", "x4@phone", "202", &wrong_tag);
    assert_eq!(
        wrong.as_deref(),
        Some("SIP/2.0 481 Call/Transaction Does Not Exist")
    );
    let code = pick(&mut lab, "204", "x5@phone", "**202", "");
    assert_eq!(
        code.as_deref(),
        Some("SIP/2.0 403 Forbidden (Not In The Same Pickup Group)")
    );
    let nothing = pick(&mut lab, "204", "x6@phone", "*8", "");
    assert_eq!(
        nothing.as_deref(),
        Some("SIP/2.0 404 Not Found (No Call To Pick Up)")
    );
    let out = lab.input(
        with_body(
            format!(
                "INVITE sip:202@pbx SIP/2.0\r\nVia: SIP/2.0/UDP {PICKER};branch=z9hG4bK-bad;rport\r\n\
                 From: <sip:203@pbx>;tag=p\r\nTo: <sip:202@pbx>\r\nCall-ID: bad@phone\r\nCSeq: 1 INVITE\r\n\
                 Max-Forwards: 70\r\nReplaces: deny@a;to-tag=x\r\n"
            ),
            SDP,
        ),
        PICKER,
    );
    one(&out, "SIP/2.0 400 Bad Request (Malformed Replaces)");
    assert_eq!(
        lab.h.env.presence.dialogs("202").len(),
        1,
        "still ringing at 202"
    );

    // Once answered: early-only gets 486, without it 403.
    let mut lab = office();
    let (ok, _) = connected(&mut lab, "talking@a", "");
    let ours = header(&ok, "To").split(";tag=").nth(1).unwrap_or_default();
    let named = format!("Replaces: talking@a;to-tag={ours};from-tag=caller");
    let early = pick(
        &mut lab,
        "203",
        "y1@phone",
        "202",
        &format!("{named};early-only\r\n"),
    );
    assert_eq!(
        early.as_deref(),
        Some("SIP/2.0 486 Busy Here (Already Answered)")
    );
    let late = pick(&mut lab, "203", "y2@phone", "202", &format!("{named}\r\n"));
    assert_eq!(
        late.as_deref(),
        Some("SIP/2.0 403 Forbidden (Only A Ringing Call Can Be Picked Up)")
    );
}

#[test]
fn a_picker_without_a_codec_in_common_gets_488_and_the_call_rings_on() {
    let mut lab = office();
    ringing(&mut lab, "codec@a");
    let d = shown(&lab, "202");
    let g722 = SDP.replace("RTP/AVP 0 8", "RTP/AVP 9");
    let out = picker_offers(
        &mut lab,
        "203",
        "g722@phone",
        "202",
        &replaces(&d, false, ""),
        &g722,
    );
    one(
        &out,
        "SIP/2.0 488 Not Acceptable Here (No Codec In Common With The Caller)",
    );
    assert!(starting(&out, "CANCEL ").is_empty(), "202 still rings");
    assert_eq!(lab.h.env.presence.dialogs("202").len(), 1);
}

/// Our 200 OK on Call-ID `call_id` among `out`.
fn ok_for(out: &[String], call_id: &str) -> String {
    starting(out, "SIP/2.0 200 OK")
        .into_iter()
        .find(|m| header(m, "Call-ID") == call_id)
        .unwrap_or_else(|| panic!("no 200 on {call_id} in {out:#?}"))
        .clone()
}

/// A request from the picker in its dialog (`ok` is our 200 to it).
pub(super) fn picker_request(ok: &str, method: &str, cseq: u32) -> Bytes {
    with_body(
        format!(
            "{method} sip:201@192.0.2.100:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {PICKER};branch=z9hG4bK-p{method}{cseq};rport\r\n\
             From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n",
            header(ok, "From"),
            header(ok, "To"),
            header(ok, "Call-ID"),
        ),
        "",
    )
}

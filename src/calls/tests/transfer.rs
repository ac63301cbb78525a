//! Transfer with a fake clock: REFER from either party, the NOTIFY sipfrag
//! sequence, the target taking the transferor's place in the relay, the
//! transferee's re-INVITE, a transferor that hangs up first, failures and
//! the REFERs that are refused.

use super::*;

/// 201 (the caller) calls 202 (phone A); 203 has phone B.
fn three() -> Lab {
    let lab = Lab::new(Setup {
        users: vec!["201", "202", "203"],
        authenticate: false,
        ..Setup::default()
    });
    lab.h.bind("202", PHONE_A);
    lab.h.bind("203", PHONE_B);
    lab
}

/// A request from the phone that answered our `invite` (its To tag `tag`),
/// in that dialog.
fn callee_request(
    invite: &str,
    tag: &str,
    from: &str,
    method: &str,
    cseq: u32,
    extra: &str,
) -> Bytes {
    with_body(
        format!(
            "{method} sip:sipdesk@192.0.2.100 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{method}{tag}{cseq};rport\r\n\
             From: {};tag={tag}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n{extra}",
            header(invite, "To"),
            header(invite, "From"),
            header(invite, "Call-ID")
        ),
        "",
    )
}

const TO_203: &str = "Refer-To: <sip:203@pbx>\r\nReferred-By: <sip:202@pbx>\r\n";

/// The sipfrag status lines of the NOTIFYs among `out`.
fn sipfrags(out: &[String]) -> Vec<String> {
    starting(out, "NOTIFY ")
        .iter()
        .map(|n| {
            let body = n.split("\r\n\r\n").nth(1).unwrap_or_default();
            body.lines().next().unwrap_or_default().to_string()
        })
        .collect()
}

fn sdp_of(phone: &str) -> String {
    SDP.replace("10.0.0.1", phone.split(':').next().unwrap_or_default())
}

#[test]
fn a_callee_transfers_the_caller_and_the_target_takes_its_place() {
    let mut lab = three();
    let (ok, b) = connected(&mut lab, "xfer@a", "");
    let out = lab.input(
        callee_request(&b, "b", PHONE_A, "REFER", 2, TO_203),
        PHONE_A,
    );
    one(&out, "SIP/2.0 202 Accepted");
    assert_eq!(sipfrags(&out), ["SIP/2.0 100 Trying"]);
    let notify = one(&out, "NOTIFY ");
    assert_eq!(header(notify, "Event"), "refer;id=2");
    assert_eq!(header(notify, "Call-ID"), header(&b, "Call-ID"));
    let c = one(&out, "INVITE sip:203@10.0.0.3").clone();
    assert!(
        header(&c, "From").contains("sip:201@"),
        "from the transferee: {c}"
    );
    assert_eq!(header(&c, "Referred-By"), "<sip:202@pbx>");
    assert!(
        c.contains("c=IN IP4 192.0.2.100"),
        "the target's media goes to the relay: {c}"
    );

    let out = lab.input(response(&c, 180, "c", "", ""), PHONE_B);
    assert_eq!(sipfrags(&out), ["SIP/2.0 180 Ringing"]);
    assert!(
        starting(&out, "SIP/2.0 180").is_empty(),
        "the caller's INVITE is long answered"
    );

    let log = lab.media_log().len();
    let out = lab.input(response(&c, 200, "c", &sdp_of(PHONE_B), ""), PHONE_B);
    one(&out, "ACK sip:phone@");
    assert_eq!(sipfrags(&out), ["SIP/2.0 200 OK"]);
    assert!(header(one(&out, "NOTIFY "), "Subscription-State").starts_with("terminated"));
    let bye = one(&out, "BYE sip:phone@");
    assert_eq!(
        header(bye, "Call-ID"),
        header(&b, "Call-ID"),
        "the transferor is released"
    );
    let reinvite = one(&out, "INVITE sip:201@");
    assert_eq!(header(reinvite, "Call-ID"), "xfer@a");
    assert!(reinvite.contains("c=IN IP4 192.0.2.100") && reinvite.contains("a=sendrecv"));
    assert!(
        lab.media_log()[log..]
            .iter()
            .any(|l| l.ends_with("peer 1 Some(10.0.0.3:4000) receives=true")),
        "the relay sends the caller's audio to the target: {:?}",
        lab.media_log()
    );
    assert_eq!(lab.cdrs, 1, "the call so far has its CDR");

    let reinvite = reinvite.clone();
    let out = lab.input(response(&reinvite, 200, "caller", SDP, ""), CALLER);
    one(&out, "ACK sip:201@");
    // The transferor's own BYE crossed ours: its dialog is gone.
    let out = lab.input(callee_request(&b, "b", PHONE_A, "BYE", 3, ""), PHONE_A);
    one(&out, "SIP/2.0 481");
    let out = lab.input(caller_request(&ok, "BYE", 2, "", ""), CALLER);
    let bye = one(&out, "BYE sip:phone@");
    assert_eq!(
        header(bye, "Call-ID"),
        header(&c, "Call-ID"),
        "the target is hung up"
    );
    assert_eq!(lab.cdrs, 2);
    let last = lab.writes.last().cloned().unwrap_or_default();
    assert!(last.contains("caller: \"201\", callee: \"203\""), "{last}");
    assert!(lab.idle());
}

#[test]
fn a_caller_transfers_the_callee_and_the_target_takes_the_callers_side() {
    let mut lab = three();
    let (ok, b) = connected(&mut lab, "xfer2@a", "");
    let refer = caller_request(&ok, "REFER", 2, "", "Refer-To: <sip:203@pbx>\r\n");
    let out = lab.input(refer, CALLER);
    one(&out, "SIP/2.0 202 Accepted");
    assert_eq!(lab.sent_to("NOTIFY "), [CALLER]);
    let c = one(&out, "INVITE sip:203@10.0.0.3").clone();
    assert!(
        header(&c, "From").contains("sip:202@"),
        "from the transferee: {c}"
    );
    assert!(header(&c, "Referred-By").contains("sip:201@"), "{c}");

    let out = lab.input(response(&c, 200, "c", &sdp_of(PHONE_B), ""), PHONE_B);
    assert_eq!(sipfrags(&out), ["SIP/2.0 200 OK"]);
    assert_eq!(lab.sent_to("BYE "), [CALLER]);
    let reinvite = one(&out, "INVITE sip:phone@");
    assert_eq!(header(reinvite, "Call-ID"), header(&b, "Call-ID"));
    let log = lab.media_log();
    assert!(
        log.iter()
            .any(|l| l.ends_with("peer 0 Some(10.0.0.3:4000) receives=true")),
        "{log:?}"
    );
    let reinvite = reinvite.clone();
    lab.input(response(&reinvite, 200, "b", &sdp_of(PHONE_A), ""), PHONE_A);

    // The target now is side A: its BYE ends the call.
    let out = lab.input(callee_request(&c, "c", PHONE_B, "BYE", 1, ""), PHONE_B);
    one(&out, "SIP/2.0 200 OK");
    let bye = one(&out, "BYE sip:phone@");
    assert_eq!(header(bye, "Call-ID"), header(&b, "Call-ID"));
    assert_eq!(lab.cdrs, 2);
    assert!(lab.idle());
}

#[test]
fn a_transfer_goes_on_after_the_transferor_hangs_up() {
    let mut lab = three();
    let (ok, b) = connected(&mut lab, "blind@a", "");
    let out = lab.input(
        callee_request(&b, "b", PHONE_A, "REFER", 2, TO_203),
        PHONE_A,
    );
    let c = one(&out, "INVITE sip:203@").clone();
    let out = lab.input(callee_request(&b, "b", PHONE_A, "BYE", 3, ""), PHONE_A);
    one(&out, "SIP/2.0 200 OK");
    assert!(
        starting(&out, "BYE ").is_empty(),
        "the caller stays: {out:#?}"
    );
    assert_eq!(lab.cdrs, 1);

    let out = lab.input(response(&c, 200, "c", &sdp_of(PHONE_B), ""), PHONE_B);
    assert!(sipfrags(&out).is_empty(), "nobody to tell");
    one(&out, "INVITE sip:201@");
    let out = lab.input(caller_request(&ok, "BYE", 2, "", ""), CALLER);
    one(&out, "BYE sip:phone@");
    assert_eq!(lab.cdrs, 2);
    assert!(lab.idle());
}

#[test]
fn a_target_that_fails_after_the_transferor_left_hangs_up_the_transferee() {
    let mut lab = three();
    let (_, b) = connected(&mut lab, "gone@a", "");
    let out = lab.input(
        callee_request(&b, "b", PHONE_A, "REFER", 2, TO_203),
        PHONE_A,
    );
    let c = one(&out, "INVITE sip:203@").clone();
    lab.input(callee_request(&b, "b", PHONE_A, "BYE", 3, ""), PHONE_A);
    let out = lab.input(response(&c, 486, "c", "", ""), PHONE_B);
    assert_eq!(lab.sent_to("BYE "), [CALLER], "{out:#?}");
    assert_eq!(lab.cdrs, 2);
    let last = lab.writes.last().cloned().unwrap_or_default();
    assert!(last.contains("NoAnswer"), "{last}");
    assert!(lab.idle());
}

#[test]
fn a_failed_transfer_gives_the_call_back_to_the_transferor() {
    let mut lab = three();
    let (ok, b) = connected(&mut lab, "back@a", "");
    let out = lab.input(
        callee_request(&b, "b", PHONE_A, "REFER", 2, TO_203),
        PHONE_A,
    );
    let c = one(&out, "INVITE sip:203@").clone();
    let out = lab.input(response(&c, 486, "c", "", ""), PHONE_B);
    assert_eq!(sipfrags(&out), ["SIP/2.0 486 Busy Here"]);
    assert!(starting(&out, "BYE ").is_empty(), "{out:#?}");
    // The call goes on between the two: a re-INVITE still reaches phone A.
    let out = lab.input(caller_request(&ok, "INVITE", 2, SDP, ""), CALLER);
    one(&out, "INVITE sip:phone@");
    let out = lab.input(caller_request(&ok, "BYE", 3, "", ""), CALLER);
    one(&out, "BYE sip:phone@");
    assert_eq!(lab.cdrs, 1, "one call, one CDR");
    assert!(lab.idle());
}

#[test]
fn the_call_ending_while_the_target_rings_cancels_the_target() {
    let mut lab = three();
    let (ok, b) = connected(&mut lab, "end@a", "");
    let out = lab.input(
        callee_request(&b, "b", PHONE_A, "REFER", 2, TO_203),
        PHONE_A,
    );
    let c = one(&out, "INVITE sip:203@").clone();
    lab.input(response(&c, 180, "c", "", ""), PHONE_B);
    let out = lab.input(caller_request(&ok, "BYE", 2, "", ""), CALLER);
    one(&out, "CANCEL sip:203@");
    assert_eq!(
        lab.sent_to("BYE "),
        [PHONE_A],
        "the transferor is hung up too"
    );
    lab.input(response(&c, 487, "c", "", ""), PHONE_B);
    assert_eq!(lab.cdrs, 1);
    assert!(lab.idle());
}

#[test]
fn refers_that_cannot_be_followed_are_refused_with_the_rfc_status() {
    let mut lab = three();
    let (_, b) = connected(&mut lab, "bad@a", "");
    let refer = |to: &str, cseq| callee_request(&b, "b", PHONE_A, "REFER", cseq, to);
    let out = lab.input(refer("", 2), PHONE_A);
    one(&out, "SIP/2.0 400");
    let out = lab.input(refer("Refer-To: <sip:999@pbx>\r\n", 3), PHONE_A);
    one(&out, "SIP/2.0 404");
    let twice = "Refer-To: <sip:203@pbx>\r\nRefer-To: <sip:202@pbx>\r\n";
    let out = lab.input(refer(twice, 4), PHONE_A);
    one(&out, "SIP/2.0 400");
    assert_eq!(invites(&out), 0);

    let out = lab.input(refer(TO_203, 5), PHONE_A);
    one(&out, "SIP/2.0 202");
    let out = lab.input(refer(TO_203, 6), PHONE_A);
    one(&out, "SIP/2.0 491");

    // Outside any dialog; in a dialog that does not exist.
    let stray = String::from_utf8_lossy(&invite("stray@a", "203", TO_203))
        .replacen("INVITE sip:", "REFER sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 REFER");
    let out = lab.input(Bytes::from(stray.clone()), CALLER);
    one(&out, "SIP/2.0 403 Forbidden (REFER Outside A Dialog)");
    let in_none = stray
        .replace("To: <sip:203@pbx>", "To: <sip:203@pbx>;tag=x")
        .replace("z9hG4bK-stray@a", "z9hG4bK-stray2@a");
    let out = lab.input(Bytes::from(in_none), CALLER);
    one(&out, "SIP/2.0 481");
}

#[test]
fn a_transfer_outside_follows_the_transferors_dialing_class() {
    let mut lab = outside_lab();
    let (_, b) = connected(&mut lab, "out@a", "");
    let refer = |to: &str, cseq| {
        let h = format!("Refer-To: <sip:{to}@pbx>\r\n");
        callee_request(&b, "b", PHONE_A, "REFER", cseq, &h)
    };
    let out = lab.input(refer("0104412345678", 2), PHONE_A);
    one(&out, "SIP/2.0 403 Forbidden (Outside Call Not Allowed)");
    let out = lab.input(refer(NATIONAL, 3), PHONE_A);
    one(&out, "SIP/2.0 202");
    let to = to_provider(&out, "first.example");
    assert!(to.contains("c=IN IP4 192.0.2.100"), "{to}");
}

/// INVITEs among what was sent.
fn invites(out: &[String]) -> usize {
    starting(out, "INVITE ").len()
}

/// 202's consultation call to 203 from phone A, answered by phone B: (our
/// 200 to phone A, our INVITE to phone B).
fn consultation(lab: &mut Lab) -> (String, String) {
    let from_a = |b: Bytes| {
        let text = String::from_utf8_lossy(&b)
            .replace(CALLER, PHONE_A)
            .replace("sip:201@", "sip:202@")
            .replace("tag=caller", "tag=consult");
        Bytes::from(text)
    };
    let out = lab.input(from_a(invite("consult@a", "203", "")), PHONE_A);
    let c = one(&out, "INVITE sip:203@10.0.0.3").clone();
    let out = lab.input(response(&c, 200, "c", &sdp_of(PHONE_B), ""), PHONE_B);
    let ok = one(&out, "SIP/2.0 200 OK").clone();
    lab.input(from_a(caller_request(&ok, "ACK", 1, "", "")), PHONE_A);
    (ok, c)
}

/// A Refer-To naming 203 in the consultation's dialog (`ok`: our 200 there).
fn replacing(ok: &str) -> String {
    let ours = header(ok, "To").rsplit("tag=").next().unwrap_or_default();
    format!(
        "Refer-To: <sip:203@pbx?Replaces=consult%40a%3Bto-tag%3D{ours}%3Bfrom-tag%3Dconsult>\r\n"
    )
}

#[test]
fn an_attended_transfer_joins_the_caller_with_the_consulted_party() {
    let mut lab = three();
    let (ok, b) = connected(&mut lab, "att@a", "");
    let (consult_ok, c) = consultation(&mut lab);
    let refer = callee_request(&b, "b", PHONE_A, "REFER", 2, &replacing(&consult_ok));
    let out = lab.input(refer, PHONE_A);
    one(&out, "SIP/2.0 202 Accepted");
    assert_eq!(sipfrags(&out), ["SIP/2.0 100 Trying", "SIP/2.0 200 OK"]);
    let byes: Vec<&str> = starting(&out, "BYE ")
        .iter()
        .map(|m| header(m, "Call-ID"))
        .collect();
    assert_eq!(
        byes,
        ["consult@a", header(&b, "Call-ID")],
        "the transferor leaves both calls"
    );
    // The consulted party's media moves to the caller's relay, then the caller's.
    let to_c = one(&out, "INVITE sip:phone@").clone();
    assert_eq!(header(&to_c, "Call-ID"), header(&c, "Call-ID"));
    assert!(
        to_c.contains("m=audio 20002 "),
        "side B of the caller's relay: {to_c}"
    );
    assert_eq!(lab.cdrs, 2, "the consultation and the call so far");

    let out = lab.input(response(&to_c, 200, "c", &sdp_of(PHONE_B), ""), PHONE_B);
    one(&out, "ACK sip:phone@");
    let to_caller = one(&out, "INVITE sip:201@").clone();
    assert_eq!(header(&to_caller, "Call-ID"), "att@a");
    lab.input(response(&to_caller, 200, "caller", SDP, ""), CALLER);
    let out = lab.input(caller_request(&ok, "BYE", 2, "", ""), CALLER);
    let bye = one(&out, "BYE sip:phone@");
    assert_eq!(
        header(bye, "Call-ID"),
        header(&c, "Call-ID"),
        "the caller talked to 203"
    );
    assert_eq!(lab.cdrs, 3);
    assert!(lab.idle());
}

#[test]
fn a_replaces_naming_no_call_or_someone_elses_is_refused() {
    let mut lab = three();
    let (_, b) = connected(&mut lab, "rep@a", "");
    let nothing = "Refer-To: <sip:203@pbx?Replaces=nope%3Bto-tag%3D1%3Bfrom-tag%3D2>\r\n";
    let out = lab.input(
        callee_request(&b, "b", PHONE_A, "REFER", 2, nothing),
        PHONE_A,
    );
    one(&out, "SIP/2.0 481");
    // The caller's own call is not 202's consultation.
    let (ok2, _) = connected(&mut lab, "other@a", "");
    let out = lab.input(
        callee_request(
            &b,
            "b",
            PHONE_A,
            "REFER",
            3,
            &replacing(&ok2)
                .replace("consult%40a", "other%40a")
                .replace("from-tag%3Dconsult", "from-tag%3Dcaller"),
        ),
        PHONE_A,
    );
    one(&out, "SIP/2.0 403 Forbidden (Not Your Call)");
}

#[test]
fn a_transfer_to_a_consultation_still_ringing_transfers_to_what_it_rings() {
    let mut lab = three();
    let (_, b) = connected(&mut lab, "semi@a", "");
    let from_a = String::from_utf8_lossy(&invite("consult@a", "203", ""))
        .replace(CALLER, PHONE_A)
        .replace("sip:201@", "sip:202@")
        .replace("tag=caller", "tag=consult");
    let out = lab.input(Bytes::from(from_a), PHONE_A);
    let c = one(&out, "INVITE sip:203@10.0.0.3").clone();
    let out = lab.input(response(&c, 180, "c", "", ""), PHONE_B);
    let ringing = one(&out, "SIP/2.0 180").clone();
    let refer = callee_request(&b, "b", PHONE_A, "REFER", 2, &replacing(&ringing));
    let out = lab.input(refer, PHONE_A);
    one(&out, "SIP/2.0 202 Accepted");
    one(&out, "CANCEL sip:203@");
    one(&out, "SIP/2.0 487");
    let again = one(&out, "INVITE sip:203@10.0.0.3");
    assert!(
        header(again, "From").contains("sip:201@"),
        "now for the caller: {again}"
    );
}

#[test]
fn a_caller_transferred_to_a_queue_waits_there_and_the_agent_gets_them_off_hold() {
    let mut routing = Directory::new(vec![Group {
        name: "support".into(),
        members: vec![("203".into(), 1)],
    }]);
    routing.add_queue(queue_500(Overflow::Announce));
    let mut lab = Lab::new(Setup {
        users: vec!["201", "202", "203"],
        authenticate: false,
        routing,
        ..Setup::default()
    });
    lab.h.bind("202", PHONE_A);
    lab.h.bind("203", PHONE_B);
    let (ok, b) = connected(&mut lab, "toq@a", "");
    let refer = callee_request(&b, "b", PHONE_A, "REFER", 2, "Refer-To: <sip:500@pbx>\r\n");
    let out = lab.input(refer, PHONE_A);
    one(&out, "SIP/2.0 202 Accepted");
    assert_eq!(sipfrags(&out), ["SIP/2.0 100 Trying", "SIP/2.0 200 OK"]);
    assert_eq!(
        lab.sent_to("BYE "),
        [PHONE_A],
        "the transferor is released at once"
    );
    assert!(
        lab.media_log()
            .iter()
            .any(|l| l.ends_with("play 0 pt=0 looping=true")),
        "queue music: {:?}",
        lab.media_log()
    );
    assert_eq!(lab.cdrs, 1);
    let offer = one(&out, "INVITE sip:203@10.0.0.3").clone();
    assert!(
        header(&offer, "From").contains("sip:201@"),
        "the agent sees the caller: {offer}"
    );
    let out = lab.input(response(&offer, 200, "q", &sdp_of(PHONE_B), ""), PHONE_B);
    let reinvite = one(&out, "INVITE sip:201@").clone();
    assert_eq!(header(&reinvite, "Call-ID"), "toq@a");
    lab.input(response(&reinvite, 200, "caller", SDP, ""), CALLER);
    let out = lab.input(caller_request(&ok, "BYE", 2, "", ""), CALLER);
    let bye = one(&out, "BYE sip:phone@");
    assert_eq!(header(bye, "Call-ID"), header(&offer, "Call-ID"));
    assert_eq!(lab.cdrs, 2);
    let last = lab
        .writes
        .iter()
        .rev()
        .find(|w| w.contains("Cdr {"))
        .cloned()
        .unwrap_or_default();
    assert!(last.contains("callee: \"203\""), "{last}");
    assert!(lab.idle());
}

//! Fake-clock tests: every state and timer of the four transaction machines.

use super::*;
use crate::sip::message::{parse, Limits};
use crate::sip::Transport;
use std::net::SocketAddr;

fn addr() -> SocketAddr {
    "127.0.0.1:5062".parse().expect("addr")
}
fn udp() -> Remote {
    Remote::udp(addr())
}
fn tcp() -> Remote {
    Remote {
        transport: Transport::Tcp,
        addr: addr(),
        conn: Some(crate::sip::ConnId(1)),
    }
}
fn msg(s: &str) -> Message {
    parse(Bytes::copy_from_slice(s.as_bytes()), &Limits::default()).expect("parse")
}
fn request(method: &str, branch: &str) -> String {
    let cseq_method = if method == "ACK" { "INVITE" } else { method };
    let _ = cseq_method;
    format!(
        "{method} sip:201@pbx SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch={branch}\r\n\
From: <sip:100@pbx>;tag=f1\r\nTo: <sip:201@pbx>\r\nCall-ID: call-1\r\nCSeq: 1 {method}\r\n\
Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}
fn response_to(req: &Message, code: u16) -> Bytes {
    Builder::response(req, addr(), code, "Reason", Some(b"tt")).finish()
}
fn response_msg(req: &Message, code: u16) -> Message {
    parse(response_to(req, code), &Limits::default()).expect("parse")
}
fn drain_tx(l: &mut TransactionLayer) -> Vec<Transmit> {
    std::iter::from_fn(|| l.poll_transmit()).collect()
}
fn drain_ev(l: &mut TransactionLayer) -> Vec<TxEvent> {
    std::iter::from_fn(|| l.poll_event()).collect()
}
fn new_server(l: &mut TransactionLayer, now: Instant, method: &str, remote: Remote) -> TxId {
    l.handle_request(now, msg(&request(method, "z9hG4bKs1")), remote);
    match drain_ev(l).as_slice() {
        [TxEvent::Request { tx, .. }] => *tx,
        other => panic!("expected one Request event, got {other:?}"),
    }
}
fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
fn first_line(t: &Transmit) -> String {
    String::from_utf8_lossy(&t.payload)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

// ---- server non-INVITE (figure 8) ---------------------------------------

#[test]
fn server_non_invite_trying_absorbs_retransmissions() {
    let (mut l, t0) = (
        TransactionLayer::new(TimerConfig::default()),
        Instant::now(),
    );
    let tx = new_server(&mut l, t0, "REGISTER", udp());
    assert_eq!(l.state(tx), Some(State::Trying));
    l.handle_request(t0 + ms(500), msg(&request("REGISTER", "z9hG4bKs1")), udp());
    assert!(drain_tx(&mut l).is_empty() && drain_ev(&mut l).is_empty());
}

#[test]
fn server_non_invite_proceeding_resends_the_provisional() {
    let (mut l, t0) = (
        TransactionLayer::new(TimerConfig::default()),
        Instant::now(),
    );
    let tx = new_server(&mut l, t0, "OPTIONS", udp());
    let req = l.request(tx).expect("req").clone();
    l.respond(t0, tx, response_to(&req, 180)).expect("1xx");
    assert_eq!(l.state(tx), Some(State::Proceeding));
    assert_eq!(drain_tx(&mut l).len(), 1);
    l.handle_request(t0 + ms(10), msg(&request("OPTIONS", "z9hG4bKs1")), udp());
    assert_eq!(first_line(&drain_tx(&mut l)[0]), "SIP/2.0 180 Reason");
}

#[test]
fn server_non_invite_completed_resends_final_and_timer_j_terminates() {
    let (mut l, t0) = (
        TransactionLayer::new(TimerConfig::default()),
        Instant::now(),
    );
    let tx = new_server(&mut l, t0, "REGISTER", udp());
    let req = l.request(tx).expect("req").clone();
    l.respond(t0, tx, response_to(&req, 200)).expect("final");
    assert_eq!(l.state(tx), Some(State::Completed));
    drain_tx(&mut l);
    l.handle_request(t0 + ms(100), msg(&request("REGISTER", "z9hG4bKs1")), udp());
    assert_eq!(first_line(&drain_tx(&mut l)[0]), "SIP/2.0 200 Reason");
    assert!(l.respond(t0, tx, response_to(&req, 200)).is_err());
    assert_eq!(l.poll_timeout(), Some(t0 + ms(32_000)));
    l.handle_timeout(t0 + ms(31_999));
    assert_eq!(l.state(tx), Some(State::Completed));
    l.handle_timeout(t0 + ms(32_000));
    assert_eq!(l.state(tx), None);
    assert!(matches!(
        drain_ev(&mut l).as_slice(),
        [TxEvent::Terminated { .. }]
    ));
    assert!(l.is_empty());
}

#[test]
fn server_non_invite_answered_and_forgotten_keeps_nothing_and_hands_a_retransmission_to_the_tu() {
    let (mut l, t0) = (
        TransactionLayer::new(TimerConfig::default()),
        Instant::now(),
    );
    let tx = new_server(&mut l, t0, "REGISTER", udp());
    let req = l.request(tx).expect("req").clone();
    l.respond_and_forget(t0, tx, response_to(&req, 200))
        .expect("final");
    assert_eq!(first_line(&drain_tx(&mut l)[0]), "SIP/2.0 200 Reason");
    assert_eq!(l.state(tx), None);
    assert!(l.is_empty() && l.poll_timeout().is_none());
    // The retransmission is a new request for the TU, which answers it again.
    l.handle_request(t0 + ms(500), msg(&request("REGISTER", "z9hG4bKs1")), udp());
    assert!(drain_tx(&mut l).is_empty());
    assert!(matches!(
        drain_ev(&mut l).as_slice(),
        [TxEvent::Terminated { .. }, TxEvent::Request { .. }]
    ));
}

#[test]
fn server_non_invite_over_tcp_terminates_on_final_response() {
    let (mut l, t0) = (
        TransactionLayer::new(TimerConfig::default()),
        Instant::now(),
    );
    let tx = new_server(&mut l, t0, "REGISTER", tcp());
    let req = l.request(tx).expect("req").clone();
    l.respond(t0, tx, response_to(&req, 200)).expect("final");
    assert_eq!(l.state(tx), None);
    assert_eq!(drain_tx(&mut l)[0].remote, tcp());
}

// ---- server INVITE (figure 7, RFC 6026) ---------------------------------

#[test]
fn server_invite_sends_100_trying_and_resends_it_on_retransmission() {
    let (mut l, t0) = (
        TransactionLayer::new(TimerConfig::default()),
        Instant::now(),
    );
    let tx = new_server(&mut l, t0, "INVITE", udp());
    assert_eq!(l.state(tx), Some(State::Proceeding));
    assert_eq!(first_line(&drain_tx(&mut l)[0]), "SIP/2.0 100 Trying");
    l.handle_request(t0 + ms(500), msg(&request("INVITE", "z9hG4bKs1")), udp());
    assert_eq!(first_line(&drain_tx(&mut l)[0]), "SIP/2.0 100 Trying");
    assert!(drain_ev(&mut l).is_empty());
}

#[test]
fn server_invite_completed_retransmits_with_timer_g_until_timer_h() {
    let (mut l, t0) = (
        TransactionLayer::new(TimerConfig::default()),
        Instant::now(),
    );
    let tx = new_server(&mut l, t0, "INVITE", udp());
    let req = l.request(tx).expect("req").clone();
    drain_tx(&mut l);
    l.respond(t0, tx, response_to(&req, 486)).expect("486");
    assert_eq!(l.state(tx), Some(State::Completed));
    assert_eq!(drain_tx(&mut l).len(), 1);
    // G: 500 ms, then 1 s, 2 s, 4 s, capped at T2 = 4 s.
    let mut at = t0;
    for gap in [500, 1000, 2000, 4000, 4000, 4000] {
        at += ms(gap);
        l.handle_timeout(at - ms(1));
        assert!(
            drain_tx(&mut l).is_empty(),
            "early retransmission before {gap}"
        );
        l.handle_timeout(at);
        assert_eq!(first_line(&drain_tx(&mut l)[0]), "SIP/2.0 486 Reason");
    }
    l.handle_timeout(t0 + ms(32_000));
    let ev = drain_ev(&mut l);
    assert!(
        matches!(
            ev.as_slice(),
            [TxEvent::Timeout { .. }, TxEvent::Terminated { .. }]
        ),
        "{ev:?}"
    );
    assert_eq!(l.state(tx), None);
}

#[test]
fn server_invite_ack_confirms_and_timer_i_terminates() {
    let (mut l, t0) = (
        TransactionLayer::new(TimerConfig::default()),
        Instant::now(),
    );
    let tx = new_server(&mut l, t0, "INVITE", udp());
    let req = l.request(tx).expect("req").clone();
    l.respond(t0, tx, response_to(&req, 404)).expect("404");
    drain_tx(&mut l);
    l.handle_request(t0 + ms(100), msg(&request("ACK", "z9hG4bKs1")), udp());
    assert_eq!(l.state(tx), Some(State::Confirmed));
    assert!(
        drain_ev(&mut l).is_empty(),
        "the ACK of a non-2xx is absorbed"
    );
    l.handle_timeout(t0 + ms(600));
    assert!(drain_tx(&mut l).is_empty(), "Timer G stops in Confirmed");
    l.handle_request(t0 + ms(700), msg(&request("ACK", "z9hG4bKs1")), udp());
    assert!(drain_ev(&mut l).is_empty());
    l.handle_timeout(t0 + ms(100) + ms(5000));
    assert_eq!(l.state(tx), None);
}

#[test]
fn server_invite_accepted_passes_ack_absorbs_invite_and_timer_l_terminates() {
    let (mut l, t0) = (
        TransactionLayer::new(TimerConfig::default()),
        Instant::now(),
    );
    let tx = new_server(&mut l, t0, "INVITE", udp());
    let req = l.request(tx).expect("req").clone();
    drain_tx(&mut l);
    l.respond(t0, tx, response_to(&req, 200)).expect("200");
    assert_eq!(l.state(tx), Some(State::Accepted));
    assert!(l.request(tx).is_none(), "Accepted keeps only what matches");
    l.respond(t0 + ms(500), tx, response_to(&req, 200))
        .expect("2xx retransmission by TU");
    assert_eq!(drain_tx(&mut l).len(), 2);
    l.handle_request(t0 + ms(600), msg(&request("INVITE", "z9hG4bKs1")), udp());
    assert!(drain_tx(&mut l).is_empty() && drain_ev(&mut l).is_empty());
    l.handle_request(t0 + ms(700), msg(&request("ACK", "z9hG4bKs1")), udp());
    assert!(matches!(drain_ev(&mut l).as_slice(), [TxEvent::Ack { .. }]));
    assert!(l.respond(t0, tx, response_to(&req, 486)).is_err());
    l.handle_timeout(t0 + ms(32_000));
    assert_eq!(l.state(tx), None);
}

#[test]
fn server_invite_over_tcp_has_no_timer_g_and_ack_terminates() {
    let (mut l, t0) = (
        TransactionLayer::new(TimerConfig::default()),
        Instant::now(),
    );
    let tx = new_server(&mut l, t0, "INVITE", tcp());
    let req = l.request(tx).expect("req").clone();
    l.respond(t0, tx, response_to(&req, 480)).expect("480");
    drain_tx(&mut l);
    l.handle_timeout(t0 + ms(4000));
    assert!(drain_tx(&mut l).is_empty());
    l.handle_request(t0 + ms(4100), msg(&request("ACK", "z9hG4bKs1")), tcp());
    assert_eq!(l.state(tx), None);
}

#[test]
fn ack_without_transaction_goes_to_the_tu_and_cancel_is_its_own_transaction() {
    let (mut l, t0) = (
        TransactionLayer::new(TimerConfig::default()),
        Instant::now(),
    );
    l.handle_request(t0, msg(&request("ACK", "z9hG4bKother")), udp());
    assert!(matches!(drain_ev(&mut l).as_slice(), [TxEvent::Ack { .. }]));
    let invite = new_server(&mut l, t0, "INVITE", udp());
    let cancel = new_server(&mut l, t0, "CANCEL", udp());
    assert_ne!(invite, cancel);
    assert_eq!(l.len(), 2);
}

#[test]
fn rfc2543_requests_without_magic_cookie_still_match() {
    let (mut l, t0) = (
        TransactionLayer::new(TimerConfig::default()),
        Instant::now(),
    );
    l.handle_request(t0, msg(&request("INVITE", "old1")), udp());
    let tx = match drain_ev(&mut l).as_slice() {
        [TxEvent::Request { tx, .. }] => *tx,
        other => panic!("{other:?}"),
    };
    let req = l.request(tx).expect("req").clone();
    l.respond(t0, tx, response_to(&req, 603)).expect("603");
    drain_tx(&mut l);
    l.handle_request(t0 + ms(5), msg(&request("INVITE", "old1")), udp());
    assert_eq!(first_line(&drain_tx(&mut l)[0]), "SIP/2.0 603 Reason");
    l.handle_request(t0 + ms(10), msg(&request("ACK", "old1")), udp());
    assert_eq!(l.state(tx), Some(State::Confirmed));
}

// ---- client INVITE (figure 5, RFC 6026) ---------------------------------

fn new_client(
    l: &mut TransactionLayer,
    now: Instant,
    method: &str,
    remote: Remote,
) -> (TxId, Message) {
    let req = msg(&request(method, "z9hG4bKc1"));
    let tx = l.send_request(now, req.clone(), remote).expect("send");
    assert_eq!(drain_tx(l).len(), 1, "sent at once");
    (tx, req)
}

#[test]
fn client_invite_calling_retransmits_with_timer_a_until_timer_b() {
    let (mut l, t0) = (
        TransactionLayer::new(TimerConfig::default()),
        Instant::now(),
    );
    let (tx, _) = new_client(&mut l, t0, "INVITE", udp());
    assert_eq!(l.state(tx), Some(State::Calling));
    let mut at = t0;
    let mut sent = 0;
    for gap in [500, 1000, 2000, 4000, 8000, 16000] {
        at += ms(gap);
        l.handle_timeout(at);
        sent += drain_tx(&mut l).len();
    }
    assert_eq!(sent, 6, "Timer A doubles without a cap");
    l.handle_timeout(t0 + ms(32_000));
    let ev = drain_ev(&mut l);
    assert!(
        matches!(
            ev.as_slice(),
            [TxEvent::Timeout { .. }, TxEvent::Terminated { .. }]
        ),
        "{ev:?}"
    );
}

#[test]
fn client_invite_provisional_stops_retransmissions() {
    let (mut l, t0) = (
        TransactionLayer::new(TimerConfig::default()),
        Instant::now(),
    );
    let (tx, req) = new_client(&mut l, t0, "INVITE", udp());
    l.handle_response(t0 + ms(100), response_msg(&req, 100), udp());
    assert_eq!(l.state(tx), Some(State::Proceeding));
    l.handle_timeout(t0 + ms(10_000));
    assert!(drain_tx(&mut l).is_empty());
    assert!(matches!(
        drain_ev(&mut l).as_slice(),
        [TxEvent::Response { .. }]
    ));
}

#[test]
fn client_invite_non_2xx_is_acked_and_timer_d_terminates() {
    let (mut l, t0) = (
        TransactionLayer::new(TimerConfig::default()),
        Instant::now(),
    );
    let (tx, req) = new_client(&mut l, t0, "INVITE", udp());
    l.handle_response(t0 + ms(100), response_msg(&req, 486), udp());
    assert_eq!(l.state(tx), Some(State::Completed));
    let ack = drain_tx(&mut l);
    assert_eq!(first_line(&ack[0]), "ACK sip:201@pbx SIP/2.0");
    let ack_text = String::from_utf8_lossy(&ack[0].payload).to_string();
    assert!(
        ack_text.contains("CSeq: 1 ACK") && ack_text.contains("tag=tt"),
        "{ack_text}"
    );
    assert_eq!(drain_ev(&mut l).len(), 1);
    l.handle_response(t0 + ms(600), response_msg(&req, 486), udp());
    assert_eq!(first_line(&drain_tx(&mut l)[0]), "ACK sip:201@pbx SIP/2.0");
    assert!(
        drain_ev(&mut l).is_empty(),
        "retransmitted final is absorbed"
    );
    l.handle_timeout(t0 + ms(100) + ms(32_000));
    assert_eq!(l.state(tx), None);
}

#[test]
fn client_invite_2xx_enters_accepted_and_timer_m_terminates() {
    let (mut l, t0) = (
        TransactionLayer::new(TimerConfig::default()),
        Instant::now(),
    );
    let (tx, req) = new_client(&mut l, t0, "INVITE", udp());
    l.handle_response(t0 + ms(100), response_msg(&req, 200), udp());
    assert_eq!(l.state(tx), Some(State::Accepted));
    assert!(l.request(tx).is_none(), "Accepted keeps only what matches");
    assert!(drain_tx(&mut l).is_empty(), "the TU acknowledges a 2xx");
    l.handle_response(t0 + ms(600), response_msg(&req, 200), udp());
    assert_eq!(
        drain_ev(&mut l).len(),
        2,
        "2xx retransmissions reach the TU"
    );
    l.handle_timeout(t0 + ms(100) + ms(32_000));
    assert_eq!(l.state(tx), None);
    l.handle_response(t0 + ms(40_000), response_msg(&req, 200), udp());
    assert!(matches!(
        drain_ev(&mut l).as_slice(),
        [_, TxEvent::StrayResponse { .. }]
    ));
}

#[test]
fn client_invite_over_tcp_never_retransmits_and_terminates_after_ack() {
    let (mut l, t0) = (
        TransactionLayer::new(TimerConfig::default()),
        Instant::now(),
    );
    let (tx, req) = new_client(&mut l, t0, "INVITE", tcp());
    l.handle_timeout(t0 + ms(10_000));
    assert!(drain_tx(&mut l).is_empty());
    l.handle_response(t0 + ms(11_000), response_msg(&req, 503), tcp());
    assert_eq!(drain_tx(&mut l).len(), 1, "the ACK");
    assert_eq!(l.state(tx), None);
}

// ---- client non-INVITE (figure 6) ---------------------------------------

#[test]
fn client_non_invite_timer_e_doubles_to_t2_and_timer_f_times_out() {
    let (mut l, t0) = (
        TransactionLayer::new(TimerConfig::default()),
        Instant::now(),
    );
    let (tx, _) = new_client(&mut l, t0, "OPTIONS", udp());
    assert_eq!(l.state(tx), Some(State::Trying));
    let mut at = t0;
    for gap in [500, 1000, 2000, 4000, 4000, 4000, 4000] {
        at += ms(gap);
        l.handle_timeout(at - ms(1));
        assert!(drain_tx(&mut l).is_empty());
        l.handle_timeout(at);
        assert_eq!(drain_tx(&mut l).len(), 1, "retransmission after {gap} ms");
    }
    l.handle_timeout(t0 + ms(32_000));
    let ev = drain_ev(&mut l);
    assert!(
        matches!(
            ev.as_slice(),
            [TxEvent::Timeout { .. }, TxEvent::Terminated { .. }]
        ),
        "{ev:?}"
    );
}

#[test]
fn client_non_invite_proceeding_retransmits_every_t2() {
    let (mut l, t0) = (
        TransactionLayer::new(TimerConfig::default()),
        Instant::now(),
    );
    let (tx, req) = new_client(&mut l, t0, "REGISTER", udp());
    l.handle_response(t0 + ms(100), response_msg(&req, 100), udp());
    assert_eq!(l.state(tx), Some(State::Proceeding));
    l.handle_timeout(t0 + ms(500)); // the pending Timer E fires once more
    assert_eq!(drain_tx(&mut l).len(), 1);
    l.handle_timeout(t0 + ms(4499));
    assert!(drain_tx(&mut l).is_empty());
    l.handle_timeout(t0 + ms(4500));
    assert_eq!(drain_tx(&mut l).len(), 1, "then every T2");
}

#[test]
fn client_non_invite_completed_absorbs_and_timer_k_terminates() {
    let (mut l, t0) = (
        TransactionLayer::new(TimerConfig::default()),
        Instant::now(),
    );
    let (tx, req) = new_client(&mut l, t0, "REGISTER", udp());
    l.handle_response(t0 + ms(100), response_msg(&req, 401), udp());
    assert_eq!(l.state(tx), Some(State::Completed));
    assert_eq!(drain_ev(&mut l).len(), 1);
    l.handle_response(t0 + ms(200), response_msg(&req, 401), udp());
    assert!(drain_ev(&mut l).is_empty());
    l.handle_timeout(t0 + ms(1000));
    assert!(
        drain_tx(&mut l).is_empty(),
        "no retransmission in Completed"
    );
    l.handle_timeout(t0 + ms(100) + ms(5000));
    assert_eq!(l.state(tx), None);
}

#[test]
fn client_rejects_duplicate_branches_and_acks() {
    let (mut l, t0) = (
        TransactionLayer::new(TimerConfig::default()),
        Instant::now(),
    );
    new_client(&mut l, t0, "OPTIONS", udp());
    let again = l.send_request(t0, msg(&request("OPTIONS", "z9hG4bKc1")), udp());
    assert_eq!(again, Err(TxError::Duplicate));
    let ack = l.send_request(t0, msg(&request("ACK", "z9hG4bKc2")), udp());
    assert!(matches!(ack, Err(TxError::BadRequest(_))));
}

#[test]
fn custom_t1_scales_every_timer() {
    let timers = TimerConfig {
        t1: ms(100),
        t2: ms(400),
        t4: ms(1000),
    };
    let (mut l, t0) = (TransactionLayer::new(timers), Instant::now());
    let tx = new_server(&mut l, t0, "OPTIONS", udp());
    let req = l.request(tx).expect("req").clone();
    l.respond(t0, tx, response_to(&req, 200)).expect("final");
    l.handle_timeout(t0 + ms(6400));
    assert_eq!(l.state(tx), None, "Timer J = 64*T1");
}

#[test]
fn server_invite_given_up_by_one_layer_is_adopted_by_another_without_a_tu_event() {
    let now = Instant::now();
    let mut first = TransactionLayer::new(TimerConfig::default());
    let tx = new_server(&mut first, now, "INVITE", udp());
    drain_tx(&mut first);
    let request = first.give_up(tx).expect("an unanswered INVITE");
    assert_eq!(first.len(), 0, "nothing stays behind");
    assert!(first.respond(now, tx, response_to(&request, 200)).is_err());

    let mut second = TransactionLayer::new(TimerConfig::default());
    let adopted = second.adopt(request.clone(), udp()).expect("adopted");
    assert!(drain_ev(&mut second).is_empty(), "the TU is not told");
    assert_eq!(
        drain_tx(&mut second)
            .iter()
            .map(first_line)
            .collect::<Vec<_>>(),
        ["SIP/2.0 100 Trying"]
    );
    assert!(
        second.adopt(request.clone(), udp()).is_none(),
        "a copy already here"
    );
    // The caller's retransmission is absorbed by the adopted transaction.
    second.handle_request(now + ms(500), request.clone(), udp());
    assert!(drain_ev(&mut second).is_empty());
    assert_eq!(drain_tx(&mut second).len(), 1, "100 Trying again");
    second
        .respond(now, adopted, response_to(&request, 486))
        .expect("answered where it was adopted");
    assert!(
        second.give_up(adopted).is_none(),
        "an answered transaction is not given up"
    );
}

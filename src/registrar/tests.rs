//! Registrar rules against a real (temporary) store.

use super::*;
use crate::sip::message::{parse, Limits};
use bytes::Bytes;

const POLICY: Policy = Policy {
    min_expires: 60,
    max_expires: 7200,
    default_expires: 3600,
    max_contacts: 4,
};

fn source() -> Remote {
    Remote::udp("192.0.2.7:40000".parse().expect("addr"))
}

fn register(cseq: u32, extra: &str) -> Message {
    let text = format!(
        "REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{cseq}\r\n\
From: <sip:201@pbx>;tag=a\r\nTo: <sip:201@pbx>\r\nCall-ID: reg-1\r\nCSeq: {cseq} REGISTER\r\n{extra}Content-Length: 0\r\n\r\n"
    );
    parse(Bytes::from(text), &Limits::default()).expect("parse")
}

fn fixture() -> (tempfile::TempDir, Registrar) {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path()).expect("store");
    let r = Registrar::direct(store, POLICY, UnixMillis(0)).expect("load");
    (dir, r)
}

/// A REGISTER from 201's phone (CSeq `cseq`, more header lines `extra`) at T;
/// `repeated`: its credentials repeated a nonce count.
fn outcome(r: &Registrar, cseq: u32, extra: &str, repeated: bool) -> Outcome {
    r.register(T, &register(cseq, extra), source(), "201", repeated)
        .expect("register")
}

/// [`outcome`] of a REGISTER that must be accepted: the bindings and whether
/// they changed.
fn accept(r: &Registrar, cseq: u32, extra: &str) -> (Vec<Binding>, bool) {
    ok(outcome(r, cseq, extra, false))
}

fn ok(o: Outcome) -> (Vec<Binding>, bool) {
    match o {
        Outcome::Ok { bindings, changed } => (bindings, changed),
        other => panic!("expected 200, got {other:?}"),
    }
}

const T: UnixMillis = UnixMillis(1_000_000);

#[test]
fn several_contacts_are_bound_with_q_and_expiry_and_fetched() {
    let (_d, r) = fixture();
    let req = register(1, "Contact: <sip:201@10.0.0.1:5060>;q=0.5, <sip:201@10.0.0.2>;expires=120\r\nExpires: 600\r\n");
    let (b, changed) = ok(r.register(T, &req, source(), "201", false).expect("reg"));
    assert!(changed);
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].contact, "sip:201@10.0.0.2", "no q means 1.0, first");
    assert_eq!(b[0].remaining_secs(T), 120);
    assert_eq!(b[1].q, Some(500));
    assert_eq!(b[1].remaining_secs(T), 600);
    assert_eq!(b[1].source, source().addr);
    let (fetched, changed) = accept(&r, 2, "");
    assert!(!changed);
    assert_eq!(fetched.len(), 2);
}

#[test]
fn too_brief_expiry_is_423_and_long_expiry_is_clamped() {
    let (_d, r) = fixture();
    let brief = r.register(
        T,
        &register(1, "Contact: <sip:201@h>;expires=10\r\n"),
        source(),
        "201",
        false,
    );
    assert_eq!(
        brief.expect("reg"),
        Outcome::Reject {
            code: 423,
            reason: "Interval Too Brief",
            min_expires: Some(60)
        }
    );
    let (b, _) = accept(&r, 2, "Contact: <sip:201@h>\r\nExpires: 999999\r\n");
    assert_eq!(b[0].remaining_secs(T), 7200);
}

#[test]
fn star_removes_everything_and_needs_expires_zero() {
    let (_d, r) = fixture();
    accept(&r, 1, "Contact: <sip:201@a>, <sip:201@b>\r\n");
    let bad = r
        .register(T, &register(2, "Contact: *\r\n"), source(), "201", false)
        .expect("reg");
    assert!(matches!(bad, Outcome::Reject { code: 400, .. }));
    let (b, changed) = accept(&r, 3, "Contact: *\r\nExpires: 0\r\n");
    assert!(b.is_empty() && changed);
    assert_eq!(r.count(T), 0);
}

#[test]
fn expires_zero_removes_one_contact() {
    let (_d, r) = fixture();
    accept(&r, 1, "Contact: <sip:201@a>, <sip:201@b>\r\n");
    let (b, _) = accept(&r, 2, "Contact: <SIP:201@A>;expires=0\r\n");
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].contact, "sip:201@b");
}

#[test]
fn a_retransmitted_register_is_answered_again_and_changes_nothing() {
    let (_d, r) = fixture();
    let req = register(5, "Contact: <sip:201@a>\r\n");
    let (first, changed) = ok(r.register(T, &req, source(), "201", false).expect("reg"));
    assert!(changed);
    let moved = Remote::udp("10.9.9.9:5060".parse().expect("addr"));
    let later = UnixMillis(T.0 + 1_000);
    for repeated in [false, true] {
        let (again, changed) = ok(r
            .register(later, &req, moved, "201", repeated)
            .expect("reg"));
        assert!(!changed, "a retransmission writes nothing");
        assert_eq!(again, first, "same bindings, same source, same expiry");
    }
}

#[test]
fn repeated_credentials_without_the_binding_they_wrote_are_a_replay() {
    let (_d, r) = fixture();
    accept(&r, 5, "Contact: <sip:201@a>\r\n");
    accept(&r, 6, "Contact: <sip:201@a>;expires=0\r\n");
    // The first REGISTER replayed after the phone unregistered must not bind again.
    let replay = outcome(&r, 5, "Contact: <sip:201@a>\r\n", true);
    assert_eq!(replay, Outcome::Replayed);
    assert!(r.lookup("201", T).is_empty());
}

#[test]
fn out_of_order_register_is_refused() {
    let (_d, r) = fixture();
    accept(&r, 5, "Contact: <sip:201@a>\r\n");
    let late = outcome(&r, 4, "Contact: <sip:201@a>\r\n", false);
    assert!(matches!(late, Outcome::Reject { code: 500, .. }));
}

#[test]
fn registering_someone_else_is_forbidden() {
    let (_d, r) = fixture();
    let o = r
        .register(
            T,
            &register(1, "Contact: <sip:201@a>\r\n"),
            source(),
            "202",
            false,
        )
        .expect("reg");
    assert!(matches!(o, Outcome::Reject { code: 403, .. }));
    assert_eq!(r.count(T), 0);
}

#[test]
fn bad_contacts_change_nothing() {
    let (_d, r) = fixture();
    for extra in [
        "Contact: <sip:201@a>, <mailto:x>\r\n",
        "Contact: <sip:201@a>;q=2\r\n",
        "Contact: <sip:201@a>;expires=x\r\n",
        "Contact: <sip:201@a>\r\nExpires: soon\r\n",
    ] {
        let o = r
            .register(T, &register(1, extra), source(), "201", false)
            .expect("reg");
        assert!(
            matches!(o, Outcome::Reject { code: 400, .. }),
            "{extra}: {o:?}"
        );
    }
    assert_eq!(r.count(T), 0);
}

#[test]
fn bindings_expire_and_are_purged_from_memory_and_store() {
    let (dir, r) = fixture();
    accept(&r, 1, "Contact: <sip:201@a>;expires=60\r\n");
    let later = UnixMillis(T.0 + 60_000);
    assert!(r.lookup("201", later).is_empty());
    assert_eq!(r.purge_expired(later).expect("purge"), 1);
    drop(r);
    let again = Registrar::direct(Store::reopen(dir.path()), POLICY, T).expect("load");
    assert_eq!(again.count(T), 0);
}

#[test]
fn bindings_are_reloaded_with_absolute_expiry() {
    let dir = tempfile::tempdir().expect("tmp");
    {
        let store = Store::open(dir.path()).expect("store");
        let r = Registrar::direct(store.clone(), POLICY, T).expect("load");
        accept(
            &r,
            1,
            "Contact: <sip:201@a>;expires=100, <sip:201@b>;expires=3000\r\n",
        );
        store.flush_now().expect("flush");
    }
    let later = UnixMillis(T.0 + 200_000);
    let r = Registrar::direct(Store::reopen(dir.path()), POLICY, later).expect("reload");
    let b = r.lookup("201", later);
    assert_eq!(b.len(), 1, "the expired one is dropped");
    assert_eq!(b[0].contact, "sip:201@b");
    assert_eq!(b[0].remaining_secs(later), 2800);
}

#[test]
fn q_values_parse_strictly() {
    assert_eq!(parse_q(b"0.5"), Some(500));
    assert_eq!(parse_q(b"1"), Some(1000));
    assert_eq!(parse_q(b"0.125"), Some(125));
    assert_eq!(parse_q(b"1.5"), None);
    assert_eq!(parse_q(b"0.1234"), None);
}

//! Any bytes as what a provider says about a call: a number to turn into
//! E.164, and the From, P-Asserted-Identity, Privacy and To of an INVITE from
//! a trunk. Nothing may panic; a caller is always `+` and 7 to 15 digits, or
//! "anonymous".
#![no_main]
use libfuzzer_sys::fuzz_target;
use sipdesk::outside::{DidFrom, Line, Numbering, Outside, TrunkId};
use sipdesk::sip::Remote;

fn numbering() -> Numbering {
    Numbering {
        country_code: "81".into(),
        national_prefix: "0".into(),
        international_prefix: "010".into(),
    }
}

fn is_e164(n: &str) -> bool {
    n.strip_prefix('+')
        .is_some_and(|d| (7..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(n) = numbering().to_e164(&text) {
        assert!(is_e164(&n), "{n}");
        assert_eq!(numbering().to_e164(&n).as_deref(), Some(n.as_str()), "stable");
    }
    let mut line = Line::new(
        "carrier".into(),
        Remote::udp(([192, 0, 2, 1], 5060).into()),
        "carrier.example".into(),
    );
    line.numbering = numbering();
    line.did_from = DidFrom::To;
    let outside = Outside::new(vec![line], Vec::new(), Default::default());
    let parts: Vec<&[u8]> = data.splitn(4, |b| *b == b'\n').collect();
    let part = |i: usize| parts.get(i).copied().unwrap_or_default();
    let mut msg = Vec::new();
    msg.extend_from_slice(b"INVITE sip:office@192.0.2.9 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKf\r\nFrom: ");
    msg.extend_from_slice(part(0));
    msg.extend_from_slice(b"\r\nP-Asserted-Identity: ");
    msg.extend_from_slice(part(1));
    msg.extend_from_slice(b"\r\nPrivacy: ");
    msg.extend_from_slice(part(2));
    msg.extend_from_slice(b"\r\nTo: ");
    msg.extend_from_slice(part(3));
    msg.extend_from_slice(b"\r\nCall-ID: f\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n");
    if let Ok(m) = sipdesk::sip::message::parse(msg.into(), &Default::default()) {
        let inbound = outside.inbound(TrunkId(0), &m);
        assert!(inbound.caller == "anonymous" || is_e164(&inbound.caller), "{}", inbound.caller);
    }
});

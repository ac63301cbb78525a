//! Any bytes as a datagram: parsing and every typed accessor must never panic, and
//! building a response from whatever parsed must not either.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sipdesk::sip::message::{parse, Builder, HeaderName, Limits, Uri};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = parse(bytes::Bytes::copy_from_slice(data), &Limits::default()) else { return };
    let _ = (m.call_id(), m.cseq(), m.max_forwards(), m.expires(), m.request_uri(), m.defect());
    for v in m.vias() {
        let _ = v.map(|v| (v.branch(), v.params.value(b"received")));
    }
    let _ = (m.from_header().map(|f| f.tag()), m.to_header().and_then(|t| Uri::parse(t.uri)));
    let contacts = m.contacts();
    let _ = contacts.is_star();
    for c in contacts.entries().flatten() {
        let _ = (Uri::parse(c.uri), c.params.iter().count());
    }
    for a in m.authorizations(HeaderName::Authorization) {
        let _ = a.param("response");
    }
    let _ = m.require().count();
    if m.is_request() {
        let _ = Builder::response(&m, "127.0.0.1:5060".parse().expect("addr"), 400, "Bad", Some(b"t")).finish();
    }
});

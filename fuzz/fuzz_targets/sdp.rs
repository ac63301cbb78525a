//! Any bytes as an SDP body: parsing, rewriting for the relay and building a local
//! answer must never panic, and a rewrite keeps the number of lines.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sipdesk::sip::sdp;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = sdp::parse(data) else { return };
    let ip = "192.0.2.1".parse().expect("ip");
    let ports: Vec<u16> = (0..s.media.len()).map(|i| 20000 + 2 * i as u16).collect();
    if let Ok(out) = sdp::rewrite(data, ip, &ports) {
        let count = |b: &[u8]| b.iter().filter(|c| **c == b'\n').count();
        assert_eq!(count(&out), count(data));
    }
    let _ = sdp::local_answer(&s, ip, 30000, sdp::Origin::new(1));
});

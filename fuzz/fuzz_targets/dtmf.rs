//! Any bytes as a DTMF carrier: an INFO body under any Content-Type, and an
//! RTP telephone-event payload. Neither may panic; what they accept is a digit
//! (0-9, *, #, A-D), and a recording fed the same bytes as audio never grows
//! past its limit.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sipdesk::media::dtmf::{info_digit, telephone_event, EventFilter};
use sipdesk::media::recorder::Recording;
use std::time::Duration;

fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || "*#ABCD".contains(c)
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (ct, body) = data.split_at(split);
    if let Some(d) = info_digit(ct, body) {
        assert!(is_digit(d));
    }
    for ct in [&b"application/dtmf-relay"[..], b"application/dtmf"] {
        if let Some(d) = info_digit(ct, data) {
            assert!(is_digit(d));
        }
    }
    if let Some(d) = telephone_event(data) {
        assert!(is_digit(d));
    }
    let mut f = EventFilter::default();
    let first = f.digit(7, data);
    assert_eq!(f.digit(7, data), None, "one event, one digit");
    assert_eq!(first, telephone_event(data));
    let mut r = Recording::new(1, Duration::from_millis(100));
    for chunk in data.chunks(160) {
        r.push(chunk.first().map_or(0, |b| b & 8), chunk);
    }
    assert!(r.duration() <= Duration::from_millis(100));
});

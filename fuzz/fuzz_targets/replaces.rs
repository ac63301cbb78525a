//! Any bytes as a Replaces header value, and as a Refer-To URI carrying one
//! (percent-encoded): reading must never panic, and what it keeps has a
//! Call-ID and both tags, none with controls or spaces.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sipdesk::sip::message::Replaces;

fuzz_target!(|data: &[u8]| {
    for r in [Replaces::parse(data), Replaces::in_uri(data)].into_iter().flatten() {
        for part in [&r.call_id, &r.to_tag, &r.from_tag] {
            assert!(!part.is_empty() && part.len() <= 256, "{r:?}");
            assert!(!part.chars().any(|c| c.is_control() || c == ' '), "{r:?}");
        }
    }
});

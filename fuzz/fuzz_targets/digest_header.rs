//! Any bytes as an Authorization header value checked by the digest authority.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sipdesk::sip::auth::{Algorithm, DigestAuthority, Ha1};
use sipdesk::sip::message::Auth;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let a = DigestAuthority::new("r", vec![Algorithm::Sha256, Algorithm::Md5], Duration::from_secs(300), now);
    let parsed = Auth::parse(data);
    let _ = a.verify(now, b"REGISTER", parsed.into_iter(), |u| {
        (u == "201").then(|| Ha1::from_password("201", "r", "pw"))
    });
});

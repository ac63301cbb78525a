//! Any bytes as a WAV file (an admin's music or announcement): reading it must
//! never panic, and what it accepts is whole 20 ms frames in both laws.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sipdesk::media::prompt::{Prompt, FRAME};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Prompt::from_wav(data) {
        assert!(p.frames() > 0);
        assert_eq!(p.payload(0).len(), p.frames() * FRAME);
        assert_eq!(p.payload(8).len(), p.frames() * FRAME);
    }
});

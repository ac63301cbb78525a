//! Any bytes as a TCP stream, fed in two pieces: framing must never panic and never
//! yield more than it was given.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sipdesk::sip::message::frame::{Frame, Framer};

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut f = Framer::new(4096);
    let mut total = 0;
    for piece in [&data[..cut], &data[cut..]] {
        f.buffer().extend_from_slice(piece);
        while let Ok(Some(frame)) = f.next_frame() {
            if let Frame::Message(m) = frame {
                total += m.len();
                let _ = sipdesk::sip::message::parse(m, &Default::default());
            }
        }
    }
    assert!(total <= data.len());
});

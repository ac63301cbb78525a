//! Any bytes as an RTP packet arriving at the relay: validation and the header
//! rewrite after a prompt must never panic, and a packet that passed validation
//! is still valid RTP after the rewrite.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head, pkt) = data.split_at(data.len().min(10));
    let mut h = [0u8; 10];
    h[..head.len()].copy_from_slice(head);
    let ssrc = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let seq = u16::from_be_bytes([h[4], h[5]]);
    let ts = u32::from_be_bytes([h[6], h[7], h[8], h[9]]);
    let mut pkt = pkt.to_vec();
    let valid_before = rtp_rs::RtpReader::new(&pkt).is_ok();
    let relayed = sipdesk::media::relay_packet(&mut pkt, ssrc, seq, ts);
    assert_eq!(relayed, valid_before);
});

//! Parser throughput: a typical INVITE (with SDP) and REGISTER (with digest
//! credentials), parsed and then read the way the receive path reads them
//! (Call-ID for sharding, top Via and CSeq for transaction matching), side by side
//! with rsip 0.4 parsing the same bytes (compare the ratio, not absolute times).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sipdesk::sip::message::{parse, Limits};
use std::hint::black_box;

const INVITE: &[u8] = b"INVITE sip:201@192.0.2.10 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bK74bf9;rport\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:200@192.0.2.10>;tag=9fxced76sl\r\n\
To: <sip:201@192.0.2.10>\r\n\
Call-ID: 3848276298220188511@192.0.2.20\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:200@192.0.2.20:5060;transport=udp>\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER, NOTIFY\r\n\
Supported: replaces, timer\r\n\
User-Agent: Yealink SIP-T46S 66.86.0.15\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 220\r\n\r\n\
v=0\r\no=- 20518 0 IN IP4 192.0.2.20\r\ns=SDP\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n\
m=audio 11800 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n";

const REGISTER: &[u8] = b"REGISTER sip:192.0.2.10 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bK1701109339;rport\r\n\
From: \"201\" <sip:201@192.0.2.10>;tag=1938580186\r\n\
To: \"201\" <sip:201@192.0.2.10>\r\n\
Call-ID: 1316290473@192.0.2.20\r\n\
CSeq: 2 REGISTER\r\n\
Contact: <sip:201@192.0.2.20:5060>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-001565a1b2c3>\"\r\n\
Authorization: Digest username=\"201\", realm=\"sipdesk.local\", nonce=\"00000000000000150123456789abcdef0123456789abcdef0123456789abcdef\", uri=\"sip:192.0.2.10\", response=\"6629fae49393a05397450978507c4ef1\", algorithm=MD5, cnonce=\"0a4f113b\", qop=auth, nc=00000001\r\n\
Max-Forwards: 70\r\n\
User-Agent: Grandstream GXP2170 1.0.11.3\r\n\
Expires: 3600\r\n\
Allow: INVITE, ACK, OPTIONS, CANCEL, BYE, SUBSCRIBE, NOTIFY, INFO, REFER, UPDATE\r\n\
Content-Length: 0\r\n\r\n";

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    for (name, raw) in [("invite", INVITE), ("register", REGISTER)] {
        let bytes = Bytes::from_static(raw);
        g.bench_function(format!("{name}/sipdesk"), |b| {
            b.iter(|| {
                let m = parse(black_box(bytes.clone()), &limits).expect("valid");
                black_box((
                    m.call_id().map(<[u8]>::len),
                    m.top_via().map(|v| v.branch()),
                    m.cseq(),
                ));
            })
        });
        g.bench_function(format!("{name}/rsip"), |b| {
            b.iter(|| black_box(rsip::SipMessage::try_from(black_box(raw)).is_ok()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

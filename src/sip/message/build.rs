//! The serializer for what we send: responses derived from a request (RFC 3261
//! §8.2.6: Via, From, To, Call-ID and CSeq copied; To-tag added; `received`/`rport`
//! set on the top Via per RFC 3261 §18.2.1 and RFC 3581) and requests built from
//! scratch. Output is written straight into one buffer; Content-Length is always set.

use super::{headers::split_list, HeaderName, Message, Method, Via};
use bytes::{BufMut, Bytes, BytesMut};
use std::net::SocketAddr;

/// The `Server` / `User-Agent` value we send.
pub const PRODUCT: &str = concat!("sipdesk/", env!("CARGO_PKG_VERSION"));

/// A random token of 16 hex digits: dialog tags, branch suffixes, Call-IDs.
pub fn random_tag() -> String {
    let raw: [u8; 8] = rand::random();
    hex::encode(raw)
}

/// Builds a message line by line.
#[derive(Debug)]
pub struct Builder {
    buf: BytesMut,
}

impl Builder {
    /// Starts a request: `METHOD uri SIP/2.0`.
    pub fn request(method: &Method, uri: &[u8]) -> Builder {
        let mut buf = BytesMut::with_capacity(512);
        buf.put_slice(method.as_bytes());
        buf.put_u8(b' ');
        buf.put_slice(uri);
        buf.put_slice(b" SIP/2.0\r\n");
        Builder { buf }
    }

    /// A response of ours to `req`: a fresh To tag (kept if the request's To has
    /// one already) and our Server header.
    pub fn reply(req: &Message, source: SocketAddr, code: u16, reason: &str) -> Builder {
        let tag = random_tag();
        let mut b = Builder::response(req, source, code, reason, Some(tag.as_bytes()));
        b.header("Server", PRODUCT);
        b
    }

    /// [`reply`](Self::reply) with a To tag derived from the request (its
    /// Call-ID, From, CSeq and top Via), so a retransmitted request gets the same
    /// tag again: how a stateless UAS tags its answers (RFC 3261 §8.2.7).
    pub fn stateless_reply(req: &Message, source: SocketAddr, code: u16, reason: &str) -> Builder {
        let parts = [
            HeaderName::CallId,
            HeaderName::From,
            HeaderName::CSeq,
            HeaderName::Via,
        ]
        .map(|name| req.value(name).unwrap_or_default());
        let tag = format!("{:016x}", crate::sip::call_id::fnv1a_parts(parts));
        let mut b = Builder::response(req, source, code, reason, Some(tag.as_bytes()));
        b.header("Server", PRODUCT);
        b
    }

    /// Starts a response to `req`, copying the headers RFC 3261 §8.2.6.2 requires
    /// (and Record-Route in a provisional or success answer, §12.1.1).
    /// `source` is where the request came from (for `received`/`rport`); `to_tag` is
    /// added to To when the request's To has no tag.
    pub fn response(
        req: &Message,
        source: SocketAddr,
        code: u16,
        reason: &str,
        to_tag: Option<&[u8]>,
    ) -> Builder {
        let mut buf = BytesMut::with_capacity(512);
        buf.put_slice(b"SIP/2.0 ");
        buf.put_slice(code.to_string().as_bytes());
        buf.put_u8(b' ');
        buf.put_slice(reason.as_bytes());
        buf.put_slice(b"\r\n");
        let mut b = Builder { buf };
        for (i, via) in req.values(HeaderName::Via).enumerate() {
            if i == 0 {
                b.put_top_via(via, source);
            } else {
                b.header("Via", via);
            }
        }
        for name in [
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
            HeaderName::CSeq,
        ] {
            let Some(value) = req.value(name) else {
                continue;
            };
            b.buf.put_slice(header_label(name));
            b.buf.put_slice(b": ");
            b.buf.put_slice(value);
            if name == HeaderName::To {
                if let (Some(tag), false) = (to_tag, has_tag(value)) {
                    b.buf.put_slice(b";tag=");
                    b.buf.put_slice(tag);
                }
            }
            b.buf.put_slice(b"\r\n");
        }
        // RFC 3261 §12.1.1: an answer that makes a dialog carries the
        // request's Record-Route, so the peer routes through its proxies.
        if (101..300).contains(&code) {
            b.copy(req, HeaderName::RecordRoute);
        }
        b
    }

    /// The top Via with `received` (source IP, when it differs from sent-by or rport
    /// was asked for) and `rport` filled (RFC 3581 §4).
    fn put_top_via(&mut self, via: &[u8], source: SocketAddr) {
        let Some(parsed) = Via::parse(via) else {
            self.header("Via", via);
            return;
        };
        let wants_rport = parsed.params.get(b"rport") == Some(None);
        let ip = source.ip().to_string();
        let host_differs = parsed.sent_by.host != ip.as_bytes()
            && parsed.sent_by.host != format!("[{ip}]").as_bytes();
        if !wants_rport && !host_differs {
            self.header("Via", via);
            return;
        }
        self.buf.put_slice(b"Via: ");
        let head_end = via.len() - parsed.params.raw.len();
        let head = via[..head_end]
            .strip_suffix(b";")
            .unwrap_or(&via[..head_end]);
        self.buf.put_slice(super::headers::trim(head));
        for (name, value) in parsed.params.iter() {
            if name.eq_ignore_ascii_case(b"received") || name.eq_ignore_ascii_case(b"rport") {
                continue;
            }
            self.buf.put_u8(b';');
            self.buf.put_slice(name);
            if let Some(v) = value {
                self.buf.put_u8(b'=');
                self.buf.put_slice(v);
            }
        }
        self.buf.put_slice(b";received=");
        self.buf.put_slice(ip.as_bytes());
        if wants_rport {
            self.buf.put_slice(b";rport=");
            self.buf.put_slice(source.port().to_string().as_bytes());
        }
        self.buf.put_slice(b"\r\n");
    }

    /// Appends `Name: value`.
    pub fn header(&mut self, name: &str, value: impl AsRef<[u8]>) -> &mut Builder {
        self.buf.put_slice(name.as_bytes());
        self.buf.put_slice(b": ");
        self.buf.put_slice(value.as_ref());
        self.buf.put_slice(b"\r\n");
        self
    }

    /// Copies every value of a header from another message, one line per value.
    pub fn copy(&mut self, from: &Message, name: HeaderName) -> &mut Builder {
        for v in from.values(name) {
            self.buf.put_slice(header_label(name));
            self.buf.put_slice(b": ");
            self.buf.put_slice(v);
            self.buf.put_slice(b"\r\n");
        }
        self
    }

    /// Ends the headers with Content-Length 0.
    pub fn finish(self) -> Bytes {
        self.finish_with_body(None, &[])
    }

    /// Ends the headers, adding Content-Type (if given) and Content-Length, then the body.
    pub fn finish_with_body(mut self, content_type: Option<&str>, body: &[u8]) -> Bytes {
        if let Some(ct) = content_type {
            self.header("Content-Type", ct);
        }
        self.buf.put_slice(b"Content-Length: ");
        self.buf.put_slice(body.len().to_string().as_bytes());
        self.buf.put_slice(b"\r\n\r\n");
        self.buf.put_slice(body);
        self.buf.freeze()
    }
}

fn has_tag(to: &[u8]) -> bool {
    super::NameAddr::parse(to).is_some_and(|n| n.tag().is_some())
}

/// The long form we write for a header.
fn header_label(name: HeaderName) -> &'static [u8] {
    match name {
        HeaderName::Via => b"Via",
        HeaderName::From => b"From",
        HeaderName::To => b"To",
        HeaderName::CallId => b"Call-ID",
        HeaderName::CSeq => b"CSeq",
        HeaderName::Contact => b"Contact",
        HeaderName::Route => b"Route",
        HeaderName::RecordRoute => b"Record-Route",
        HeaderName::Supported => b"Supported",
        HeaderName::Require => b"Require",
        _ => b"X-Unknown",
    }
}

/// Splits a comma list (exposed for builders of list headers).
pub fn list_items(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    split_list(v, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, Limits};

    fn req(s: &[u8]) -> Message {
        parse(Bytes::copy_from_slice(s), &Limits::default()).expect("parse")
    }

    #[test]
    fn a_response_copies_dialog_headers_and_fills_received_and_rport() {
        let r = req(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5062;rport;branch=z9hG4bKa, SIP/2.0/UDP p;branch=z9hG4bKb\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:x>\r\nCall-ID: c1\r\nCSeq: 7 OPTIONS\r\n\r\n");
        let src: SocketAddr = "192.0.2.9:40000".parse().expect("addr");
        let out = Builder::response(&r, src, 200, "OK", Some(b"t9")).finish();
        let text = String::from_utf8(out.to_vec()).expect("utf8");
        assert!(text.starts_with("SIP/2.0 200 OK\r\n"));
        assert!(text.contains(
            "Via: SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bKa;received=192.0.2.9;rport=40000\r\n"
        ));
        assert!(text.contains("Via: SIP/2.0/UDP p;branch=z9hG4bKb\r\n"));
        assert!(text.contains("To: <sip:x>;tag=t9\r\n"));
        assert!(text.ends_with("CSeq: 7 OPTIONS\r\nContent-Length: 0\r\n\r\n"));
        let back = req(&out);
        assert_eq!(back.status(), Some(200));
    }

    #[test]
    fn answers_that_make_a_dialog_carry_the_record_route_and_failures_do_not() {
        let r = req(b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5;branch=z9hG4bKa\r\nRecord-Route: <sip:p2;lr>\r\nRecord-Route: <sip:p1;lr>\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:x>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\r\n");
        let src: SocketAddr = "10.0.0.5:5060".parse().expect("addr");
        let text = |code| {
            let out = Builder::response(&r, src, code, "-", Some(b"t")).finish();
            String::from_utf8(out.to_vec()).expect("utf8")
        };
        for code in [180, 200] {
            assert!(
                text(code).contains("Record-Route: <sip:p2;lr>\r\nRecord-Route: <sip:p1;lr>\r\n"),
                "{code}"
            );
        }
        for code in [100, 486] {
            assert!(!text(code).contains("Record-Route"), "{code}");
        }
    }

    #[test]
    fn no_received_when_sent_by_matches_and_no_second_tag() {
        let r = req(b"BYE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKa\r\nTo: <sip:x>;tag=have\r\n\r\n");
        let src: SocketAddr = "127.0.0.1:5062".parse().expect("addr");
        let out = Builder::response(&r, src, 481, "Call/Transaction Does Not Exist", Some(b"t9"))
            .finish();
        let text = String::from_utf8(out.to_vec()).expect("utf8");
        assert!(text.contains("Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKa\r\n"));
        assert!(text.contains("To: <sip:x>;tag=have\r\n"));
    }
}

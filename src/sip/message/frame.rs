//! Stream framing for SIP over TCP (RFC 3261 §18.3): cuts a byte stream into
//! messages by their Content-Length, and recognises the CRLF keep-alives of
//! RFC 5626 §3.5.1 (a double CRLF "ping" is answered with a single CRLF "pong").

use super::headers::{parse_u32, HeaderName};
use crate::sip::SipError;
use bytes::{Buf, Bytes, BytesMut};

/// One unit cut from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A CRLFCRLF ping: answer with a single CRLF.
    Ping,
    /// A complete message's bytes (headers and exactly Content-Length body bytes).
    Message(Bytes),
}

/// Accumulates stream bytes and yields frames. Memory is bounded by `max_message`:
/// a header section or body larger than that is an error and the connection should
/// be closed.
#[derive(Debug)]
pub struct Framer {
    buf: BytesMut,
    max_message: usize,
}

impl Framer {
    pub fn new(max_message: usize) -> Self {
        Framer {
            buf: BytesMut::with_capacity(4096),
            max_message,
        }
    }

    /// The buffer to read into (callers `read_buf` into it directly).
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SipError> {
        loop {
            if self.buf.starts_with(b"\r\n\r\n") {
                self.buf.advance(4);
                return Ok(Some(Frame::Ping));
            }
            // A lone CRLF (a pong, or padding between messages) is skipped, but only
            // once we know it is not the start of a ping.
            if self.buf.starts_with(b"\r\n") && self.buf.len() >= 4 {
                self.buf.advance(2);
                continue;
            }
            if self.buf.first() == Some(&b'\n') {
                self.buf.advance(1);
                continue;
            }
            break;
        }
        if self.buf.starts_with(b"\r") || self.buf.is_empty() {
            return Ok(None);
        }
        let Some(head_end) = end_of_headers(&self.buf) else {
            if self.buf.len() > self.max_message {
                return Err(SipError::TooLarge(self.buf.len()));
            }
            return Ok(None);
        };
        let body_len = content_length(&self.buf[..head_end])?;
        let total = head_end + body_len;
        if total > self.max_message {
            return Err(SipError::TooLarge(total));
        }
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        Ok(Some(Frame::Message(self.buf.split_to(total).freeze())))
    }
}

/// Index just past the empty line that ends the header section (CRLF or LF lines).
fn end_of_headers(b: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(rel) = memchr::memchr(b'\n', &b[from..]) {
        let lf = from + rel;
        match b.get(lf + 1..lf + 3) {
            _ if b.get(lf + 1) == Some(&b'\n') => return Some(lf + 2),
            Some([b'\r', b'\n']) => return Some(lf + 3),
            _ => from = lf + 1,
        }
    }
    None
}

/// The Content-Length of a header section; absent means 0.
fn content_length(head: &[u8]) -> Result<usize, SipError> {
    let mut found = 0;
    for line in head.split(|c| *c == b'\n') {
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = super::headers::trim(&line[..colon]);
        if HeaderName::from_bytes(name) == HeaderName::ContentLength {
            found = parse_u32(&line[colon + 1..])
                .ok_or(SipError::Malformed("Content-Length is not a number"))?
                as usize;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_cut_by_content_length_with_keepalives_between() {
        let mut f = Framer::new(65_535);
        f.buffer().extend_from_slice(
            b"\r\n\r\nOPTIONS sip:a SIP/2.0\r\nl: 3\r\n\r\nabcREGISTER sip:b SIP/2.0\r\nContent-Length: 0\r\n\r\nBYE sip:c SIP/2.0\r\nContent-Length: 5\r\n\r\nab",
        );
        assert_eq!(f.next_frame().expect("ok"), Some(Frame::Ping));
        let Some(Frame::Message(m1)) = f.next_frame().expect("ok") else {
            panic!("m1")
        };
        assert!(m1.ends_with(b"\r\n\r\nabc"));
        let Some(Frame::Message(m2)) = f.next_frame().expect("ok") else {
            panic!("m2")
        };
        assert!(m2.starts_with(b"REGISTER"));
        assert_eq!(f.next_frame().expect("ok"), None);
        f.buffer().extend_from_slice(b"cde");
        let Some(Frame::Message(m3)) = f.next_frame().expect("ok") else {
            panic!("m3")
        };
        assert!(m3.ends_with(b"abcde"));
        assert_eq!(f.next_frame().expect("ok"), None);
    }

    #[test]
    fn oversized_or_unframeable_streams_are_errors() {
        let mut f = Framer::new(100);
        f.buffer().extend_from_slice(&[b'x'; 200]);
        assert!(f.next_frame().is_err());
        let mut f = Framer::new(100);
        f.buffer()
            .extend_from_slice(b"INVITE sip:a SIP/2.0\r\nContent-Length: 1000\r\n\r\n");
        assert!(f.next_frame().is_err());
        let mut f = Framer::new(100);
        f.buffer()
            .extend_from_slice(b"INVITE sip:a SIP/2.0\r\nContent-Length: zz\r\n\r\n");
        assert!(f.next_frame().is_err());
    }
}

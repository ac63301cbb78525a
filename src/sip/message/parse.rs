//! The receive-path parser: splits a buffer into start line, header lines and body
//! (RFC 3261 §7), recording byte ranges only. Accepts what real phones send: CRLF or
//! bare LF line ends, folded header lines, whitespace before the colon, compact names,
//! any byte in values. Anything it cannot frame is a [`ParseError`] naming the problem.

use super::{headers::HeaderName, HeaderLine, Message, Method, Span, StartLine};
use crate::sip::SipError;
use bytes::Bytes;

/// Size and count limits applied to every message (bounded memory per datagram).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted message, headers and body together.
    pub max_message: usize,
    /// Most header lines in one message.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 65_535,
            max_headers: 128,
        }
    }
}

/// Parses one complete message (a datagram, or one frame cut by [`super::frame`]).
///
/// When `Content-Length` is present the body is cut to it; a body shorter than it
/// is an error (RFC 3261 §18.3).
pub fn parse(buf: Bytes, limits: &Limits) -> Result<Message, SipError> {
    if buf.len() > limits.max_message {
        return Err(SipError::TooLarge(buf.len()));
    }
    let b = &buf[..];
    // Empty lines before the start line are ignored (RFC 3261 §7.5).
    let mut pos = 0;
    while pos < b.len() && (b[pos] == b'\r' || b[pos] == b'\n') {
        pos += 1;
    }
    if pos == b.len() {
        return Err(SipError::Empty);
    }
    let (line_end, next) = line_at(b, pos).ok_or(SipError::Truncated("start line"))?;
    let start = start_line(b, pos, line_end)?;
    // A defect leaves the request answerable: the receiver answers 400 naming it.
    let mut defect = match &start {
        StartLine::Request { uri, .. } if !is_bare_uri(uri.of(b)) => Some("Bad Request-URI"),
        _ => None,
    };
    pos = next;

    let mut headers: Vec<HeaderLine> = Vec::with_capacity(16);
    loop {
        let (end, next) = line_at(b, pos).ok_or(SipError::Truncated("header section"))?;
        if end == pos {
            pos = next; // the empty line ending the headers
            break;
        }
        if b[pos] == b' ' || b[pos] == b'\t' {
            // A folded continuation: extend the previous header's value.
            let last = headers
                .last_mut()
                .ok_or(SipError::Malformed("continuation line before any header"))?;
            let trimmed = trim_end(b, pos, end);
            if trimmed > pos {
                last.value.end = trimmed as u32;
                if last.value.is_empty() {
                    last.value.start = skip_ws(b, pos, end) as u32;
                }
            }
            pos = next;
            continue;
        }
        if headers.len() >= limits.max_headers {
            return Err(SipError::TooManyHeaders);
        }
        match header_line(b, pos, end) {
            Ok(h) => headers.push(h),
            // The rest may still carry a Via to answer to: skip the line.
            Err(SipError::Malformed(what)) => {
                defect = defect.or(Some(what));
            }
            Err(e) => return Err(e),
        }
        pos = next;
    }
    defect = defect
        .or_else(|| control_character(b, &headers))
        .or_else(|| repeated_header(&headers));

    // A bad Content-Length still leaves an answerable request: keep the message
    // and record the defect so the caller can answer 400 naming it.
    let mut body_end = b.len();
    let mut lengths = headers
        .iter()
        .filter(|h| h.name == HeaderName::ContentLength)
        .map(|h| h.value.of(b));
    let cl = lengths.next();
    if lengths.any(|other| Some(other) != cl) {
        defect = Some("Conflicting Content-Length Headers");
    } else if let Some(v) = cl {
        match super::headers::parse_u32(v) {
            None => defect = Some("Bad Content-Length"),
            Some(n) if n as usize > b.len() - pos => {
                defect = Some("Body Shorter Than Content-Length")
            }
            Some(n) => body_end = pos + n as usize,
        }
    }
    Ok(Message {
        start,
        headers,
        body: Span::new(pos, body_end),
        defect,
        buf,
    })
}

/// Finds the line starting at `pos`: returns (end of content, start of next line).
/// CRLF and bare LF both end a line. `None` if there is no line end.
fn line_at(b: &[u8], pos: usize) -> Option<(usize, usize)> {
    let rel = memchr::memchr(b'\n', b.get(pos..)?)?;
    let lf = pos + rel;
    let end = if lf > pos && b[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    };
    Some((end, lf + 1))
}

fn skip_ws(b: &[u8], mut i: usize, end: usize) -> usize {
    while i < end && (b[i] == b' ' || b[i] == b'\t') {
        i += 1;
    }
    i
}

fn trim_end(b: &[u8], start: usize, mut end: usize) -> usize {
    while end > start && matches!(b[end - 1], b' ' | b'\t' | b'\r' | b'\n') {
        end -= 1;
    }
    end
}

fn start_line(b: &[u8], pos: usize, end: usize) -> Result<StartLine, SipError> {
    let line = &b[pos..end];
    let sp1 = memchr::memchr(b' ', line).ok_or(SipError::Malformed("start line has no space"))?;
    if line.starts_with(b"SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let rest = &line[sp1 + 1..];
        let code_end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
        let code = &rest[..code_end];
        if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
            return Err(SipError::Malformed("status code is not three digits"));
        }
        let code = code
            .iter()
            .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
        if !(100..=699).contains(&code) {
            return Err(SipError::Malformed("status code out of range"));
        }
        let reason_start = (pos + sp1 + 1 + code_end + 1).min(end);
        Ok(StartLine::Response {
            version: Span::new(pos, pos + sp1),
            code,
            reason: Span::new(reason_start, end),
        })
    } else {
        // Request-Line = Method SP Request-URI SP SIP-Version
        let method = &line[..sp1];
        if method.is_empty() || !method.iter().all(|c| is_token(*c)) {
            return Err(SipError::Malformed("method is not a token"));
        }
        let sp2 = memchr::memrchr(b' ', line).ok_or(SipError::Malformed("request line"))?;
        if sp2 <= sp1 + 1 {
            return Err(SipError::Malformed("request line has no Request-URI"));
        }
        let version = &line[sp2 + 1..];
        if version.is_empty() || version.iter().any(|c| !c.is_ascii_graphic()) {
            return Err(SipError::Malformed("request line has no SIP version"));
        }
        Ok(StartLine::Request {
            method: Method::from_bytes(method),
            uri: Span::new(pos + sp1 + 1, pos + sp2),
            version: Span::new(pos + sp2 + 1, end),
        })
    }
}

fn header_line(b: &[u8], pos: usize, end: usize) -> Result<HeaderLine, SipError> {
    let mut i = pos;
    while i < end && is_token(b[i]) {
        i += 1;
    }
    if i == pos {
        return Err(SipError::Malformed("header name is not a token"));
    }
    let name_end = i;
    if i < end && !matches!(b[i], b' ' | b'\t' | b':') {
        return Err(SipError::Malformed("header name is not a token"));
    }
    i = skip_ws(b, i, end);
    if i >= end || b[i] != b':' {
        return Err(SipError::Malformed("header line has no colon"));
    }
    let vstart = skip_ws(b, i + 1, end);
    let vend = trim_end(b, vstart, end);
    let raw_name = Span::new(pos, name_end);
    Ok(HeaderLine {
        name: HeaderName::from_bytes(&b[pos..name_end]),
        raw_name,
        value: Span::new(vstart, vend.max(vstart)),
    })
}

/// A Request-URI is a bare URI (RFC 3261 §25.1): no name-addr brackets,
/// quotes, whitespace or control characters.
fn is_bare_uri(uri: &[u8]) -> bool {
    !uri.is_empty()
        && !uri
            .iter()
            .any(|c| matches!(c, b'<' | b'>' | b'"' | b' ' | b'\t') || *c < 0x20 || *c == 0x7f)
}

/// The first header value with a control character (RFC 3261 §25: only HTAB,
/// and CRLF as part of a fold, are allowed).
fn control_character(b: &[u8], headers: &[HeaderLine]) -> Option<&'static str> {
    for h in headers {
        let v = h.value.of(b);
        let bad = v.iter().enumerate().any(|(i, c)| match c {
            b'\t' | b'\n' => false,
            b'\r' => v.get(i + 1) != Some(&b'\n'),
            c => *c < 0x20 || *c == 0x7f,
        });
        if bad {
            return Some(match h.name {
                HeaderName::Via => "Control Character In Via Header",
                HeaderName::From => "Control Character In From Header",
                HeaderName::To => "Control Character In To Header",
                HeaderName::CallId => "Control Character In Call-ID Header",
                HeaderName::CSeq => "Control Character In CSeq Header",
                HeaderName::Contact => "Control Character In Contact Header",
                _ => "Control Character In Header Value",
            });
        }
    }
    None
}

/// A header that may appear once (RFC 3261 §20) but appears again.
fn repeated_header(headers: &[HeaderLine]) -> Option<&'static str> {
    const SINGLE: [(HeaderName, &str); 6] = [
        (HeaderName::To, "Repeated To Header"),
        (HeaderName::From, "Repeated From Header"),
        (HeaderName::CallId, "Repeated Call-ID Header"),
        (HeaderName::CSeq, "Repeated CSeq Header"),
        (HeaderName::MaxForwards, "Repeated Max-Forwards Header"),
        (HeaderName::ContentType, "Repeated Content-Type Header"),
    ];
    let mut seen = [false; SINGLE.len()];
    for h in headers {
        if let Some(i) = SINGLE.iter().position(|(n, _)| *n == h.name) {
            if std::mem::replace(&mut seen[i], true) {
                return Some(SINGLE[i].1);
            }
        }
    }
    None
}

/// RFC 3261 `token` characters.
pub(crate) fn is_token(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::HeaderName as H;

    fn p(s: &[u8]) -> Result<Message, SipError> {
        parse(Bytes::copy_from_slice(s), &Limits::default())
    }

    const REGISTER: &[u8] = b"REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:201@example.com>\r\n\
From: \"Alice \\\"A\\\"\" <sip:201@example.com>;tag=456248\r\n\
Call-ID: 843817637684230@998sdasdh09\r\n\
CSeq: 1826 REGISTER\r\n\
Contact: <sip:201@10.0.0.1:5060;transport=udp>;expires=3600, <sip:201@[2001:db8::1]:5062>;q=0.5\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn parses_a_typical_register() {
        let m = p(REGISTER).expect("parse");
        assert_eq!(m.method(), Some(&Method::Register));
        assert_eq!(m.call_id(), Some(&b"843817637684230@998sdasdh09"[..]));
        let cseq = m.cseq().expect("cseq");
        assert_eq!((cseq.seq, cseq.method), (1826, Method::Register));
        let via = m.top_via().expect("via");
        assert_eq!(via.branch(), Some(&b"z9hG4bK776"[..]));
        assert_eq!(via.sent_by.host, b"10.0.0.1");
        assert_eq!(via.sent_by.port, Some(5060));
        assert!(via.params.has(b"rport"));
        let from = m.from_header().expect("from");
        assert_eq!(from.tag(), Some(&b"456248"[..]));
        assert_eq!(from.display, Some(&b"\"Alice \\\"A\\\"\""[..]));
        let contacts: Vec<_> = m.contacts().entries().collect();
        assert_eq!(contacts.len(), 2);
        let c1 = contacts[1].expect("second contact");
        let uri = Uri::parse(c1.uri).expect("uri");
        assert_eq!(uri.host, b"[2001:db8::1]");
        assert_eq!(uri.port, Some(5062));
        assert_eq!(c1.params.get(b"q"), Some(Some(&b"0.5"[..])));
        assert!(m.body().is_empty());
    }

    use crate::sip::message::Uri;

    #[test]
    fn folded_headers_spaces_before_colon_and_compact_forms_are_understood() {
        let m = p(b"OPTIONS sip:[2001:db8::10]:5060 SIP/2.0\r\n\
v : SIP/2.0/TCP [2001:db8::1];branch=z9hG4bK1\r\n\
f: <sip:a@b>;tag=1\r\nt: <sip:c@d>\r\ni: abc\r\n\
Subject: a long\r\n  folded subject\r\n\
CSeq: 1\r\n OPTIONS\r\nl: 0\r\n\r\n")
        .expect("parse");
        assert_eq!(m.top_via().expect("via").sent_by.host, b"[2001:db8::1]");
        assert_eq!(m.call_id(), Some(&b"abc"[..]));
        assert_eq!(m.cseq().expect("cseq").method, Method::Options);
        let uri = m.request_uri().expect("uri");
        assert_eq!(uri.host, b"[2001:db8::10]");
        assert_eq!(
            m.value(H::Subject),
            Some(&b"a long\r\n  folded subject"[..])
        );
    }

    #[test]
    fn lf_only_lines_extension_methods_and_non_utf8_bytes_parse() {
        let m = p(b"FOO tel:+15551234 SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\nX-Name: caf\xe9\nCall-ID: 1\n\nbody\xff")
            .expect("parse");
        assert_eq!(m.method(), Some(&Method::Extension(b"FOO"[..].into())));
        assert_eq!(m.other_values("x-name").next(), Some(&b"caf\xe9"[..]));
        assert_eq!(m.body(), b"body\xff");
        assert_eq!(m.request_uri().expect("tel").scheme, UriScheme::Tel);
    }

    use crate::sip::message::UriScheme;

    #[test]
    fn several_vias_in_one_header_are_all_kept() {
        let m = p(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b:5070;branch=z9hG4bK2\r\nVia: SIP/2.0/TCP c\r\n\r\n")
            .expect("parse");
        let hosts: Vec<Vec<u8>> = m
            .vias()
            .map(|v| v.expect("via").sent_by.host.to_vec())
            .collect();
        assert_eq!(hosts, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(m.status(), Some(200));
    }

    #[test]
    fn content_length_cuts_the_body_and_a_short_body_is_an_error() {
        let m = p(b"MESSAGE sip:a SIP/2.0\r\nContent-Length: 3\r\n\r\nabcdef").expect("parse");
        assert_eq!((m.body(), m.defect()), (&b"abc"[..], None));
        let short = p(b"MESSAGE sip:a SIP/2.0\r\nContent-Length: 30\r\n\r\nabc").expect("parse");
        assert_eq!(short.defect(), Some("Body Shorter Than Content-Length"));
        let bad = p(b"MESSAGE sip:a SIP/2.0\r\nContent-Length: x\r\n\r\n").expect("parse");
        assert_eq!(bad.defect(), Some("Bad Content-Length"));
        let two =
            p(b"MESSAGE sip:a SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\nab").expect("parse");
        assert_eq!(two.defect(), Some("Conflicting Content-Length Headers"));
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        for bad in [
            &b""[..],
            b"\r\n\r\n",
            b"hello",
            b"SIP/2.0 99 Low\r\n\r\n",
            b"SIP/2.0 2000 OK\r\n\r\n",
            b"INVITE  SIP/2.0\r\n\r\n",
            b"INVITE sip:a SIP/2.0\r\n folded-first\r\n\r\n",
            b"INVITE sip:a SIP/2.0\r\nVia: y",
        ] {
            assert!(p(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn malformed_header_lines_and_bad_request_uris_leave_an_answerable_defect() {
        let via = "Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\n";
        for (text, want) in [
            (
                format!("INVITE sip:a SIP/2.0\r\n{via}: novalue\r\n\r\n"),
                "header name is not a token",
            ),
            (
                format!("INVITE sip:a SIP/2.0\r\n{via}Via x\r\n\r\n"),
                "header line has no colon",
            ),
            (
                format!("INVITE <sip:a@b> SIP/2.0\r\n{via}\r\n"),
                "Bad Request-URI",
            ),
            (
                format!("INVITE sip:a b SIP/2.0\r\n{via}\r\n"),
                "Bad Request-URI",
            ),
            (
                format!("INVITE sip:a SIP/2.0\r\n{via}X-A\x01b: 1\r\n\r\n"),
                "header name is not a token",
            ),
        ] {
            let m = p(text.as_bytes()).expect("still readable");
            assert_eq!(m.defect(), Some(want), "{text:?}");
            assert!(m.top_via().is_some(), "the Via to answer to is kept");
        }
    }

    #[test]
    fn control_characters_and_repeated_single_headers_are_defects() {
        let base = "OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n";
        for (extra, want) in [
            (
                "From: <sip:x@y>\0;tag=1\r\n",
                "Control Character In From Header",
            ),
            ("Call-ID: a\x7fb\r\n", "Control Character In Call-ID Header"),
            ("Subject: bell\x07\r\n", "Control Character In Header Value"),
            ("Subject: lone\rcr\r\n", "Control Character In Header Value"),
            ("To: <sip:a@b>\r\nt: <sip:c@d>\r\n", "Repeated To Header"),
            (
                "CSeq: 1 OPTIONS\r\nCSeq: 2 OPTIONS\r\n",
                "Repeated CSeq Header",
            ),
            (
                "Max-Forwards: 70\r\nMax-Forwards: 69\r\n",
                "Repeated Max-Forwards Header",
            ),
            ("i: a\r\nCall-ID: a\r\n", "Repeated Call-ID Header"),
        ] {
            let m = p(format!("{base}{extra}\r\n").as_bytes()).expect("parse");
            assert_eq!(m.defect(), Some(want), "{extra:?}");
        }
        let fine =
            p(format!("{base}Subject: a\r\n\tfolded\ttab\r\n\r\n").as_bytes()).expect("parse");
        assert_eq!(fine.defect(), None, "a fold and a tab are allowed");
    }

    #[test]
    fn limits_bound_size_and_header_count() {
        let mut many = b"OPTIONS sip:a SIP/2.0\r\n".to_vec();
        for _ in 0..200 {
            many.extend_from_slice(b"X: y\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(p(&many), Err(SipError::TooManyHeaders)));
        assert!(matches!(p(&vec![b'a'; 70_000]), Err(SipError::TooLarge(_))));
    }
}

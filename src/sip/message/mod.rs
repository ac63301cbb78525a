//! SIP messages: the zero-copy parser of the receive path ([`Message`]), typed lazy
//! accessors over its header byte ranges ([`headers`]), stream framing for TCP
//! ([`frame`]) and the serializer for what we send ([`build`]).
//!
//! A [`Message`] owns the received bytes (a cheap [`Bytes`] clone of the datagram or
//! TCP frame) and only records byte ranges: the start line, every header line and the
//! body. Nothing is decoded until a typed accessor is asked for it, and every accessor
//! works on bytes, so non-UTF-8 header bytes never make a message unreadable.

pub mod build;
pub mod frame;
pub mod headers;
mod parse;

use bytes::Bytes;
use std::fmt;

pub use build::Builder;
pub use headers::{
    Auth, CSeq, ContactList, HeaderName, NameAddr, Params, Replaces, SentBy, Uri, UriScheme, Via,
};
pub use parse::{parse, Limits};

/// A half-open byte range into a message buffer. `u32` keeps headers small; a SIP
/// message is never larger than [`Limits::max_message`] anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub(crate) fn new(start: usize, end: usize) -> Self {
        // Limits::max_message keeps both far below u32::MAX.
        Span {
            start: start as u32,
            end: end as u32,
        }
    }
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
    pub fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }
}

/// A SIP method. Extension methods keep their bytes (they are rare).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Subscribe,
    Notify,
    Refer,
    Message,
    Info,
    Prack,
    Update,
    Publish,
    Extension(Box<[u8]>),
}

impl Method {
    /// Methods are case-sensitive (RFC 3261 §7.1).
    pub fn from_bytes(b: &[u8]) -> Method {
        match b {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"OPTIONS" => Method::Options,
            b"REGISTER" => Method::Register,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"REFER" => Method::Refer,
            b"MESSAGE" => Method::Message,
            b"INFO" => Method::Info,
            b"PRACK" => Method::Prack,
            b"UPDATE" => Method::Update,
            b"PUBLISH" => Method::Publish,
            other => Method::Extension(other.into()),
        }
    }
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Method::Invite => b"INVITE",
            Method::Ack => b"ACK",
            Method::Bye => b"BYE",
            Method::Cancel => b"CANCEL",
            Method::Options => b"OPTIONS",
            Method::Register => b"REGISTER",
            Method::Subscribe => b"SUBSCRIBE",
            Method::Notify => b"NOTIFY",
            Method::Refer => b"REFER",
            Method::Message => b"MESSAGE",
            Method::Info => b"INFO",
            Method::Prack => b"PRACK",
            Method::Update => b"UPDATE",
            Method::Publish => b"PUBLISH",
            Method::Extension(b) => b,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

/// The first line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request {
        method: Method,
        uri: Span,
        version: Span,
    },
    Response {
        version: Span,
        code: u16,
        reason: Span,
    },
}

/// One header line (possibly folded over several physical lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLine {
    /// The canonical name (compact forms resolved), or `Other`.
    pub name: HeaderName,
    /// The name as written.
    pub raw_name: Span,
    /// The value with leading and trailing whitespace removed; may contain folds.
    pub value: Span,
}

/// A parsed SIP request or response over its own bytes.
#[derive(Clone)]
pub struct Message {
    buf: Bytes,
    start: StartLine,
    headers: Vec<HeaderLine>,
    body: Span,
    /// A framing problem that still leaves the message answerable (e.g. a bad
    /// Content-Length): the receiver answers 400 with this reason.
    defect: Option<&'static str>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("start", &self.start)
            .field("headers", &self.headers.len())
            .field("body", &self.body.len())
            .finish()
    }
}

impl Message {
    pub fn buf(&self) -> &Bytes {
        &self.buf
    }
    pub fn start_line(&self) -> &StartLine {
        &self.start
    }
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }
    /// The request method, or `None` for a response.
    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }
    /// The status code, or `None` for a request.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }
    pub fn version(&self) -> &[u8] {
        match &self.start {
            StartLine::Request { version, .. } | StartLine::Response { version, .. } => {
                version.of(&self.buf)
            }
        }
    }
    /// The Request-URI bytes of a request.
    pub fn request_uri_bytes(&self) -> Option<&[u8]> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri.of(&self.buf)),
            StartLine::Response { .. } => None,
        }
    }
    pub fn request_uri(&self) -> Option<Uri<'_>> {
        self.request_uri_bytes().and_then(Uri::parse)
    }
    pub fn reason(&self) -> Option<&[u8]> {
        match &self.start {
            StartLine::Response { reason, .. } => Some(reason.of(&self.buf)),
            StartLine::Request { .. } => None,
        }
    }
    pub fn defect(&self) -> Option<&'static str> {
        self.defect
    }
    pub fn body(&self) -> &[u8] {
        self.body.of(&self.buf)
    }
    pub fn header_lines(&self) -> &[HeaderLine] {
        &self.headers
    }
    pub fn bytes_of(&self, span: Span) -> &[u8] {
        span.of(&self.buf)
    }
    /// Every value of a header in order: list headers (`Via`, `Contact`, `Route`,
    /// `Allow`…) written as several comma-separated values in one line are split.
    pub fn values(&self, name: HeaderName) -> impl Iterator<Item = &[u8]> + '_ {
        self.headers
            .iter()
            .filter(move |h| h.name == name)
            .flat_map(move |h| {
                let v = h.value.of(&self.buf);
                headers::split_list(v, name.is_list())
            })
    }
    /// The first value of a header.
    pub fn value(&self, name: HeaderName) -> Option<&[u8]> {
        self.values(name).next()
    }
    /// Values of an extension header by (case-insensitive) name.
    pub fn other_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |h| {
                h.name == HeaderName::Other
                    && h.raw_name
                        .of(&self.buf)
                        .eq_ignore_ascii_case(name.as_bytes())
            })
            .map(move |h| h.value.of(&self.buf))
    }
    pub fn has(&self, name: HeaderName) -> bool {
        self.headers.iter().any(|h| h.name == name)
    }
    pub fn count(&self, name: HeaderName) -> usize {
        self.values(name).count()
    }

    // ---- typed accessors ---------------------------------------------------
    pub fn call_id(&self) -> Option<&[u8]> {
        self.value(HeaderName::CallId)
    }
    pub fn cseq(&self) -> Option<CSeq> {
        self.value(HeaderName::CSeq).and_then(CSeq::parse)
    }
    pub fn top_via(&self) -> Option<Via<'_>> {
        self.value(HeaderName::Via).and_then(Via::parse)
    }
    pub fn vias(&self) -> impl Iterator<Item = Option<Via<'_>>> + '_ {
        self.values(HeaderName::Via).map(Via::parse)
    }
    pub fn from_header(&self) -> Option<NameAddr<'_>> {
        self.value(HeaderName::From).and_then(NameAddr::parse)
    }
    pub fn to_header(&self) -> Option<NameAddr<'_>> {
        self.value(HeaderName::To).and_then(NameAddr::parse)
    }
    pub fn max_forwards(&self) -> Option<Result<u32, ()>> {
        self.value(HeaderName::MaxForwards)
            .map(|v| headers::parse_u32(v).ok_or(()))
    }
    pub fn expires(&self) -> Option<Result<u32, ()>> {
        self.value(HeaderName::Expires)
            .map(|v| headers::parse_u32(v).ok_or(()))
    }
    pub fn contacts(&self) -> ContactList<'_> {
        ContactList::from_message(self)
    }
    /// Option tags of every `Require` header.
    pub fn require(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.values(HeaderName::Require)
    }
    /// Digest credentials in `Authorization` (or `Proxy-Authorization`) headers.
    pub fn authorizations(&self, name: HeaderName) -> impl Iterator<Item = Auth<'_>> + '_ {
        self.values(name).filter_map(Auth::parse)
    }
}

//! Header names (with the compact forms of RFC 3261 §7.3.3) and typed, borrowing
//! views of header values: URIs (sip, sips, tel; IPv6 references), name-addr,
//! Via, CSeq, Contact lists and Digest credentials. Every view borrows the message
//! bytes; parsing a view never allocates except to unescape a quoted string.

use super::{parse::is_token, Message, Method};
use std::borrow::Cow;

/// Header names we act on; everything else is `Other` (its raw name is kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    Contact,
    MaxForwards,
    Expires,
    MinExpires,
    ContentLength,
    ContentType,
    Route,
    RecordRoute,
    Require,
    ProxyRequire,
    Supported,
    Unsupported,
    Allow,
    Accept,
    Authorization,
    ProxyAuthorization,
    WwwAuthenticate,
    ProxyAuthenticate,
    UserAgent,
    Server,
    Subject,
    Event,
    Date,
    Other,
}

impl HeaderName {
    /// Case-insensitive, compact forms included (`v`, `f`, `t`, `i`, `m`, `l`, `c`,
    /// `k`, `s`, `o`).
    pub fn from_bytes(name: &[u8]) -> HeaderName {
        use HeaderName::*;
        if name.len() == 1 {
            return match name[0].to_ascii_lowercase() {
                b'v' => Via,
                b'f' => From,
                b't' => To,
                b'i' => CallId,
                b'm' => Contact,
                b'l' => ContentLength,
                b'c' => ContentType,
                b'k' => Supported,
                b's' => Subject,
                b'o' => Event,
                _ => Other,
            };
        }
        let mut lower = [0u8; 24];
        if name.len() > lower.len() {
            return Other;
        }
        for (d, s) in lower.iter_mut().zip(name) {
            *d = s.to_ascii_lowercase();
        }
        match &lower[..name.len()] {
            b"via" => Via,
            b"from" => From,
            b"to" => To,
            b"call-id" => CallId,
            b"cseq" => CSeq,
            b"contact" => Contact,
            b"max-forwards" => MaxForwards,
            b"expires" => Expires,
            b"min-expires" => MinExpires,
            b"content-length" => ContentLength,
            b"content-type" => ContentType,
            b"route" => Route,
            b"record-route" => RecordRoute,
            b"require" => Require,
            b"proxy-require" => ProxyRequire,
            b"supported" => Supported,
            b"unsupported" => Unsupported,
            b"allow" => Allow,
            b"accept" => Accept,
            b"authorization" => Authorization,
            b"proxy-authorization" => ProxyAuthorization,
            b"www-authenticate" => WwwAuthenticate,
            b"proxy-authenticate" => ProxyAuthenticate,
            b"user-agent" => UserAgent,
            b"server" => Server,
            b"subject" => Subject,
            b"event" => Event,
            b"date" => Date,
            _ => Other,
        }
    }

    /// Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1).
    pub fn is_list(self) -> bool {
        use HeaderName::*;
        matches!(
            self,
            Via | Contact
                | Route
                | RecordRoute
                | Require
                | ProxyRequire
                | Supported
                | Unsupported
                | Allow
                | Accept
        )
    }
}

/// Splits a header value at commas outside quotes and angle brackets (when `list`),
/// trimming whitespace (folds included) around each element.
pub(crate) fn split_list(v: &[u8], list: bool) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(v);
    std::iter::from_fn(move || loop {
        let cur = rest?;
        let cut = if list {
            find_top_level(cur, b',')
        } else {
            None
        };
        let (item, next) = match cut {
            Some(i) => (&cur[..i], Some(&cur[i + 1..])),
            None => (cur, None),
        };
        rest = next;
        let item = trim(item);
        if !item.is_empty() || (rest.is_none() && !list) {
            return Some(item);
        }
        rest?;
    })
}

/// Position of `sep` outside "quoted strings" and `<angle brackets>`.
fn find_top_level(v: &[u8], sep: u8) -> Option<usize> {
    let (mut quoted, mut angle, mut i) = (false, false, 0);
    while i < v.len() {
        let c = v[i];
        if quoted {
            if c == b'\\' {
                i += 1;
            } else if c == b'"' {
                quoted = false;
            }
        } else if c == sep && !angle {
            return Some(i);
        } else if c == b'"' {
            quoted = true;
        } else if c == b'<' {
            angle = true;
        } else if c == b'>' {
            angle = false;
        }
        i += 1;
    }
    None
}

fn is_lws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

pub(crate) fn trim(mut v: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = v {
        if !is_lws(*first) {
            break;
        }
        v = rest;
    }
    while let [rest @ .., last] = v {
        if !is_lws(*last) {
            break;
        }
        v = rest;
    }
    v
}

/// A decimal number that fits in u32 (whitespace around it allowed).
pub fn parse_u32(v: &[u8]) -> Option<u32> {
    let v = trim(v);
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter()
        .try_fold(0u64, |acc, d| Some(acc * 10 + u64::from(d - b'0')))
        .and_then(|n| u32::try_from(n).ok())
}

/// The contents of a quoted string with backslash escapes removed.
pub fn unquote(v: &[u8]) -> Cow<'_, [u8]> {
    let v = trim(v);
    let inner = match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => return Cow::Borrowed(v),
    };
    if !inner.contains(&b'\\') {
        return Cow::Borrowed(inner);
    }
    let mut out = Vec::with_capacity(inner.len());
    let mut it = inner.iter();
    while let Some(&c) = it.next() {
        if c == b'\\' {
            if let Some(&n) = it.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `;name=value` parameters, read lazily from their raw bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Params<'a> {
    /// The bytes after the first `;` (empty when there are none).
    pub raw: &'a [u8],
}

impl<'a> Params<'a> {
    /// Iterates (name, value) with values unquoted lazily by the caller.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> {
        let mut rest = Some(self.raw);
        std::iter::from_fn(move || loop {
            let cur = rest?;
            let (item, next) = match find_top_level(cur, b';') {
                Some(i) => (&cur[..i], Some(&cur[i + 1..])),
                None => (cur, None),
            };
            rest = next;
            let item = trim(item);
            if item.is_empty() {
                rest?;
                continue;
            }
            return Some(match memchr::memchr(b'=', item) {
                Some(eq) => (trim(&item[..eq]), Some(trim(&item[eq + 1..]))),
                None => (item, None),
            });
        })
    }
    /// `Some(None)` for a flag parameter like `;lr`, `Some(Some(v))` for `;n=v`.
    pub fn get(&self, name: &[u8]) -> Option<Option<&'a [u8]>> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
    pub fn has(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }
    /// The value of `name`, if present with a value.
    pub fn value(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.get(name).flatten()
    }
}

/// Splits `v` at the first top-level `;`: (before, params).
fn split_params(v: &[u8]) -> (&[u8], Params<'_>) {
    match find_top_level(v, b';') {
        Some(i) => (trim(&v[..i]), Params { raw: &v[i + 1..] }),
        None => (trim(v), Params::default()),
    }
}

/// URI schemes we route on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriScheme {
    Sip,
    Sips,
    Tel,
}

/// A sip:, sips: or tel: URI. For `tel:` the number is in `user` and `host` is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uri<'a> {
    pub scheme: UriScheme,
    pub user: Option<&'a [u8]>,
    /// A hostname, an IPv4 address or a bracketed IPv6 reference (`[2001:db8::1]`).
    pub host: &'a [u8],
    pub port: Option<u16>,
    pub params: Params<'a>,
}

impl<'a> Uri<'a> {
    pub fn parse(v: &'a [u8]) -> Option<Uri<'a>> {
        let v = trim(v);
        let colon = memchr::memchr(b':', v)?;
        let scheme = match &v[..colon] {
            s if s.eq_ignore_ascii_case(b"sip") => UriScheme::Sip,
            s if s.eq_ignore_ascii_case(b"sips") => UriScheme::Sips,
            s if s.eq_ignore_ascii_case(b"tel") => UriScheme::Tel,
            _ => return None,
        };
        let rest = &v[colon + 1..];
        // URI headers (`?a=b`) are not used for routing; cut them off.
        let rest = match memchr::memchr(b'?', rest) {
            Some(q) => &rest[..q],
            None => rest,
        };
        if scheme == UriScheme::Tel {
            let (number, params) = split_params(rest);
            if number.is_empty() {
                return None;
            }
            return Some(Uri {
                scheme,
                user: Some(number),
                host: &[],
                port: None,
                params,
            });
        }
        let (user, hostport) = match memchr::memrchr(b'@', rest) {
            Some(at) => {
                let userinfo = &rest[..at];
                let user = match memchr::memchr(b':', userinfo) {
                    Some(c) => &userinfo[..c],
                    None => userinfo,
                };
                (Some(user), &rest[at + 1..])
            }
            None => (None, rest),
        };
        let (hostport, params) = split_params(hostport);
        let (host, port) = split_host_port(hostport)?;
        Some(Uri {
            scheme,
            user,
            host,
            port,
            params,
        })
    }
}

/// `host[:port]` with bracketed IPv6 references.
fn split_host_port(v: &[u8]) -> Option<(&[u8], Option<u16>)> {
    let v = trim(v);
    let (host, port) = if v.first() == Some(&b'[') {
        let close = memchr::memchr(b']', v)?;
        let after = &v[close + 1..];
        let port = match after {
            [] => None,
            [b':', p @ ..] => Some(p),
            _ => return None,
        };
        (&v[..=close], port)
    } else {
        match memchr::memchr(b':', v) {
            Some(c) => (&v[..c], Some(&v[c + 1..])),
            None => (v, None),
        }
    };
    if host.is_empty()
        || !host.iter().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'[' | b']' | b':' | b'_')
        })
    {
        return None;
    }
    let port = match port {
        Some(p) => Some(u16::try_from(parse_u32(p)?).ok()?),
        None => None,
    };
    Some((host, port))
}

/// `host[:port]` of a Via.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentBy<'a> {
    pub host: &'a [u8],
    pub port: Option<u16>,
}

/// One Via value: `SIP/2.0/UDP host:port;branch=…;rport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    /// `UDP`, `TCP`, `TLS`, `WS`…, as written.
    pub transport: &'a [u8],
    pub sent_by: SentBy<'a>,
    pub params: Params<'a>,
}

impl<'a> Via<'a> {
    pub fn parse(v: &'a [u8]) -> Option<Via<'a>> {
        // sent-protocol = name SLASH version SLASH transport (LWS allowed around SLASH)
        let mut rest = trim(v);
        let mut parts = [&b""[..]; 3];
        for (i, part) in parts.iter_mut().enumerate() {
            let end = if i < 2 {
                memchr::memchr(b'/', rest)?
            } else {
                rest.iter().position(|c| is_lws(*c))?
            };
            *part = trim(&rest[..end]);
            rest = trim(&rest[end + usize::from(i < 2)..]);
        }
        if !parts[0].eq_ignore_ascii_case(b"SIP") || parts[2].is_empty() {
            return None;
        }
        if !parts[2].iter().all(|c| is_token(*c)) {
            return None;
        }
        let (hostport, params) = split_params(rest);
        let (host, port) = split_host_port(hostport)?;
        Some(Via {
            transport: parts[2],
            sent_by: SentBy { host, port },
            params,
        })
    }
    pub fn branch(&self) -> Option<&'a [u8]> {
        self.params.value(b"branch")
    }
}

/// CSeq: sequence number and method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    pub fn parse(v: &[u8]) -> Option<CSeq> {
        let v = trim(v);
        let sp = v.iter().position(|c| is_lws(*c))?;
        let seq = parse_u32(&v[..sp])?;
        let method = trim(&v[sp..]);
        if method.is_empty() || !method.iter().all(|c| is_token(*c)) {
            return None;
        }
        Some(CSeq {
            seq,
            method: Method::from_bytes(method),
        })
    }
}

/// `[display-name] <uri>;params` or `uri;params` (From, To, Contact, Route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    pub display: Option<&'a [u8]>,
    /// The URI bytes, without angle brackets.
    pub uri: &'a [u8],
    /// Header parameters (after the URI).
    pub params: Params<'a>,
}

impl<'a> NameAddr<'a> {
    pub fn parse(v: &'a [u8]) -> Option<NameAddr<'a>> {
        let v = trim(v);
        if let Some(lt) = find_top_level(v, b'<') {
            let close = lt + memchr::memchr(b'>', &v[lt..])?;
            let display = trim(&v[..lt]);
            let after = trim(&v[close + 1..]);
            let params = match after {
                [] => Params::default(),
                [b';', rest @ ..] => Params { raw: rest },
                _ => return None,
            };
            let uri = trim(&v[lt + 1..close]);
            if uri.is_empty() {
                return None;
            }
            return Some(NameAddr {
                display: (!display.is_empty()).then_some(display),
                uri,
                params,
            });
        }
        let (uri, params) = split_params(v);
        if uri.is_empty() || uri.iter().any(|c| is_lws(*c)) {
            return None;
        }
        Some(NameAddr {
            display: None,
            uri,
            params,
        })
    }
    pub fn tag(&self) -> Option<&'a [u8]> {
        self.params.value(b"tag")
    }
}

/// The Contact headers of a message: `*`, or a list of name-addr entries.
#[derive(Debug, Clone, Copy)]
pub struct ContactList<'a> {
    msg: &'a Message,
}

impl<'a> ContactList<'a> {
    pub(crate) fn from_message(msg: &'a Message) -> Self {
        ContactList { msg }
    }
    /// `Contact: *` (the only valid use is a REGISTER removing all bindings).
    pub fn is_star(&self) -> bool {
        self.msg.values(HeaderName::Contact).any(|v| v == b"*")
    }
    pub fn is_empty(&self) -> bool {
        self.msg.values(HeaderName::Contact).next().is_none()
    }
    /// Every entry; `None` for one that does not parse.
    pub fn entries(&self) -> impl Iterator<Item = Option<NameAddr<'a>>> + 'a {
        self.msg
            .values(HeaderName::Contact)
            .filter(|v| *v != b"*")
            .map(NameAddr::parse)
    }
}

/// Credentials or a challenge: `Digest name=value, …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth<'a> {
    pub scheme: &'a [u8],
    /// Raw parameter values (quoted ones still quoted; see [`Auth::param`]).
    pub params: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> Auth<'a> {
    pub fn parse(v: &'a [u8]) -> Option<Auth<'a>> {
        let v = trim(v);
        let sp = v.iter().position(|c| is_lws(*c)).unwrap_or(v.len());
        let scheme = &v[..sp];
        if scheme.is_empty() || !scheme.iter().all(|c| is_token(*c)) {
            return None;
        }
        let mut rest = &v[sp..];
        let mut params = Vec::with_capacity(10);
        while !trim(rest).is_empty() {
            if params.len() >= 32 {
                return None;
            }
            let cut = find_top_level(rest, b',').unwrap_or(rest.len());
            let item = trim(&rest[..cut]);
            rest = rest.get(cut + 1..).unwrap_or_default();
            if item.is_empty() {
                continue;
            }
            let eq = memchr::memchr(b'=', item)?;
            params.push((trim(&item[..eq]), trim(&item[eq + 1..])));
        }
        Some(Auth { scheme, params })
    }
    /// A parameter's value, unquoted; names are case-insensitive.
    pub fn param(&self, name: &str) -> Option<Cow<'a, [u8]>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| unquote(v))
    }
}

/// A Replaces header (RFC 3891): the dialog a new INVITE takes the place of,
/// also carried percent-encoded in a Refer-To URI's `?Replaces=` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaces {
    pub call_id: String,
    pub to_tag: String,
    pub from_tag: String,
    /// `early-only`: only a dialog that is not yet confirmed may be replaced.
    pub early_only: bool,
}

impl Replaces {
    /// `callid;to-tag=a;from-tag=b[;early-only]`: both tags are required.
    pub fn parse(v: &[u8]) -> Option<Replaces> {
        let v = trim(v);
        let (id, params) = match memchr::memchr(b';', v) {
            Some(i) => (trim(&v[..i]), Params { raw: &v[i + 1..] }),
            None => return None,
        };
        let text = |b: &[u8]| {
            let s = std::str::from_utf8(b).ok()?;
            let ok =
                !s.is_empty() && s.len() <= 256 && !s.chars().any(|c| c.is_control() || c == ' ');
            ok.then(|| s.to_string())
        };
        Some(Replaces {
            call_id: text(id)?,
            to_tag: text(params.get(b"to-tag")??)?,
            from_tag: text(params.get(b"from-tag")??)?,
            early_only: params.has(b"early-only"),
        })
    }

    /// The Replaces of a URI's headers (`sip:x@h?Replaces=id%3Bto-tag%3D…`).
    pub fn in_uri(uri: &[u8]) -> Option<Replaces> {
        let q = memchr::memchr(b'?', uri)?;
        uri[q + 1..].split(|b| *b == b'&').find_map(|h| {
            let eq = memchr::memchr(b'=', h)?;
            if !h[..eq].eq_ignore_ascii_case(b"Replaces") {
                return None;
            }
            let decoded: Vec<u8> = percent_encoding::percent_decode(&h[eq + 1..]).collect();
            Replaces::parse(&decoded)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_parse_from_a_header_and_from_a_refer_to_uri() {
        let r =
            Replaces::parse(b"98732@sip.example.com;from-tag=r33th4x0r ;to-tag=ff87ff;early-only")
                .expect("replaces");
        assert_eq!(r.call_id, "98732@sip.example.com");
        assert_eq!(
            (r.to_tag.as_str(), r.from_tag.as_str()),
            ("ff87ff", "r33th4x0r")
        );
        assert!(r.early_only);
        let uri = b"sip:203@pbx?Subject=x&Replaces=abc%40h%3Bto-tag%3D1%3Bfrom-tag%3D2";
        let r = Replaces::in_uri(uri).expect("in uri");
        assert_eq!(
            (
                r.call_id.as_str(),
                r.to_tag.as_str(),
                r.from_tag.as_str(),
                r.early_only
            ),
            ("abc@h", "1", "2", false)
        );
        assert!(Replaces::parse(b"abc;to-tag=1").is_none(), "both tags");
        assert!(Replaces::parse(b"abc").is_none());
        assert!(Replaces::parse(b";to-tag=1;from-tag=2").is_none());
        assert!(Replaces::in_uri(b"sip:203@pbx").is_none());
        assert!(Replaces::in_uri(b"sip:203@pbx?Replaces=%ZZ").is_none());
    }

    #[test]
    fn uri_forms_parse() {
        let u = Uri::parse(b"sip:201:secret@pbx.example.com:5070;transport=tcp;lr?subject=x")
            .expect("uri");
        assert_eq!(u.user, Some(&b"201"[..]));
        assert_eq!(u.host, b"pbx.example.com");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.params.value(b"transport"), Some(&b"tcp"[..]));
        assert!(u.params.has(b"lr"));
        let u = Uri::parse(b"sips:[::1]").expect("v6");
        assert_eq!(
            (u.scheme, u.host, u.port),
            (UriScheme::Sips, &b"[::1]"[..], None)
        );
        assert!(Uri::parse(b"http://x").is_none());
        assert!(Uri::parse(b"sip:a@h:99999").is_none());
        assert!(Uri::parse(b"sip:a@[::1").is_none());
    }

    #[test]
    fn name_addr_with_quoted_display_and_comma_in_uri() {
        let n = NameAddr::parse(b"\"Doe, John\" <sip:j@h;x=a,b>;tag=9").expect("na");
        assert_eq!(n.uri, b"sip:j@h;x=a,b");
        assert_eq!(n.tag(), Some(&b"9"[..]));
        assert_eq!(
            unquote(n.display.expect("display")),
            Cow::Borrowed(&b"Doe, John"[..])
        );
        let n = NameAddr::parse(b"sip:j@h;tag=1").expect("addr-spec");
        assert_eq!((n.uri, n.tag()), (&b"sip:j@h"[..], Some(&b"1"[..])));
    }

    #[test]
    fn list_split_respects_quotes_and_brackets() {
        let v: Vec<&[u8]> = split_list(b"\"a,b\" <sip:x,y>, <sip:z> ,", true).collect();
        assert_eq!(v, vec![&b"\"a,b\" <sip:x,y>"[..], b"<sip:z>"]);
    }

    #[test]
    fn digest_credentials_parse_with_escapes() {
        let a = Auth::parse(b"Digest username=\"a\\\"b\", realm=\"r\", nc=00000001, algorithm=SHA-256, uri=\"sip:x,y\"")
            .expect("auth");
        assert_eq!(a.scheme, b"Digest");
        assert_eq!(a.param("username").as_deref(), Some(&b"a\"b"[..]));
        assert_eq!(a.param("ALGORITHM").as_deref(), Some(&b"SHA-256"[..]));
        assert_eq!(a.param("uri").as_deref(), Some(&b"sip:x,y"[..]));
    }

    #[test]
    fn via_with_spaces_around_slashes() {
        let v = Via::parse(b"SIP / 2.0 / UDP 1.2.3.4:5060 ; branch=z9hG4bKa ; received=5.6.7.8")
            .expect("via");
        assert_eq!(v.transport, b"UDP");
        assert_eq!(v.params.value(b"received"), Some(&b"5.6.7.8"[..]));
        assert_eq!(v.branch(), Some(&b"z9hG4bKa"[..]));
        assert!(Via::parse(b"SIP/2.0/UDP").is_none());
    }

    #[test]
    fn numbers_are_bounded() {
        assert_eq!(parse_u32(b" 70 "), Some(70));
        assert_eq!(parse_u32(b"4294967296"), None);
        assert_eq!(parse_u32(b"-1"), None);
        assert_eq!(CSeq::parse(b"12"), None);
    }
}

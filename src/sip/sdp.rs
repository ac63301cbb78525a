//! SDP (RFC 4566) as the relay needs it: read the connection address, media lines,
//! payload types and direction of an offer; rewrite only the `c=` and `m=` lines so
//! media flows through our ports (every other byte kept, as DESIGN asks); and build
//! the answer of a local endpoint (test numbers) by RFC 3264 rules.

use bytes::{BufMut, Bytes, BytesMut};
use std::net::IpAddr;

/// Why an SDP body was refused (the peer's fault: answer 488 or 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP is not text")]
    NotText,
    #[error("SDP has no `v=0` line")]
    NoVersion,
    #[error("bad `{0}` line")]
    BadLine(&'static str),
    #[error("no media line")]
    NoMedia,
    #[error("more media lines than rewrite ports")]
    PortCount,
}

/// Media direction attributes (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn from_attr(a: &str) -> Option<Direction> {
        match a {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }
    /// What the answerer says to an offer with this direction.
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub kind: String,
    pub port: u16,
    pub proto: String,
    pub formats: Vec<String>,
    /// The media-level `c=` address, else the session-level one.
    pub addr: Option<IpAddr>,
    pub direction: Direction,
    /// `a=rtpmap` lines of this section: (payload type, "PCMU/8000").
    pub rtpmaps: Vec<(String, String)>,
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub addr: Option<IpAddr>,
    pub media: Vec<Media>,
}

/// Codecs a local endpoint (test numbers, announcements) can answer with: G.711
/// µ-law and A-law, plus RFC 4733 telephone events.
pub const LOCAL_CODECS: &[(&str, &str)] = &[("0", "PCMU/8000"), ("8", "PCMA/8000")];

fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l))
}

fn parse_c(v: &str) -> Result<IpAddr, SdpError> {
    // c=IN IP4 192.0.2.1  (a multicast TTL suffix `/127` is cut)
    let mut it = v.split_whitespace();
    let (Some("IN"), Some(_), Some(addr)) = (it.next(), it.next(), it.next()) else {
        return Err(SdpError::BadLine("c="));
    };
    let addr = addr.split('/').next().unwrap_or(addr);
    addr.parse().map_err(|_| SdpError::BadLine("c="))
}

/// Parses what the relay needs from an SDP body.
pub fn parse(body: &[u8]) -> Result<Session, SdpError> {
    let text = std::str::from_utf8(body).map_err(|_| SdpError::NotText)?;
    let mut session = Session {
        addr: None,
        media: Vec::new(),
    };
    let mut session_dir = Direction::SendRecv;
    let mut seen_version = false;
    for line in lines(text) {
        let Some((kind, value)) = line.split_once('=') else {
            continue;
        };
        match kind {
            "v" => seen_version = value.trim() == "0",
            "c" => {
                let addr = parse_c(value)?;
                match session.media.last_mut() {
                    Some(m) => m.addr = Some(addr),
                    None => session.addr = Some(addr),
                }
            }
            "m" => {
                let mut it = value.split_whitespace();
                let (Some(kind), Some(port), Some(proto)) = (it.next(), it.next(), it.next())
                else {
                    return Err(SdpError::BadLine("m="));
                };
                let port = port.split('/').next().unwrap_or(port);
                let port: u16 = port.parse().map_err(|_| SdpError::BadLine("m="))?;
                session.media.push(Media {
                    kind: kind.to_string(),
                    port,
                    proto: proto.to_string(),
                    formats: it.map(str::to_string).collect(),
                    addr: session.addr,
                    direction: session_dir,
                    rtpmaps: Vec::new(),
                });
            }
            "a" => {
                let value = value.trim();
                if let Some(d) = Direction::from_attr(value) {
                    match session.media.last_mut() {
                        Some(m) => m.direction = d,
                        None => session_dir = d,
                    }
                } else if let Some(map) = value.strip_prefix("rtpmap:") {
                    if let (Some(m), Some((pt, enc))) =
                        (session.media.last_mut(), map.split_once(' '))
                    {
                        m.rtpmaps.push((pt.to_string(), enc.trim().to_string()));
                    }
                }
            }
            _ => {}
        }
    }
    if !seen_version {
        return Err(SdpError::NoVersion);
    }
    if session.media.is_empty() {
        return Err(SdpError::NoMedia);
    }
    Ok(session)
}

/// The session id and version of the SDP we write (`o=` line, RFC 4566 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub id: u64,
    pub version: u64,
}

impl Origin {
    /// A new session's first description.
    pub fn new(id: u64) -> Origin {
        Origin { id, version: 1 }
    }

    /// The same session's next description.
    pub fn next(self) -> Origin {
        Origin {
            id: self.id,
            version: self.version + 1,
        }
    }
}

/// Rewrites every `c=` line to `addr` and the port of the n-th `m=` line to
/// `ports[n]` (a port of 0, a rejected stream, stays 0). Every other byte is kept.
pub fn rewrite(body: &[u8], addr: IpAddr, ports: &[u16]) -> Result<Bytes, SdpError> {
    let text = std::str::from_utf8(body).map_err(|_| SdpError::NotText)?;
    let family = if addr.is_ipv4() { "IP4" } else { "IP6" };
    let mut out = BytesMut::with_capacity(body.len() + 32);
    let mut m_index = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let (line, next) = match rest.find('\n') {
            Some(i) => (&rest[..=i], &rest[i + 1..]),
            None => (rest, ""),
        };
        rest = next;
        let ending = &line[line.trim_end_matches(['\r', '\n']).len()..];
        let content = &line[..line.len() - ending.len()];
        if content.starts_with("c=") {
            out.put_slice(format!("c=IN {family} {addr}").as_bytes());
        } else if let Some(m) = content.strip_prefix("m=") {
            let mut parts = m.splitn(3, ' ');
            let (Some(kind), Some(port), Some(tail)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(SdpError::BadLine("m="));
            };
            let new_port = *ports.get(m_index).ok_or(SdpError::PortCount)?;
            let keep_zero = port == "0";
            m_index += 1;
            out.put_slice(
                format!("m={kind} {} {tail}", if keep_zero { 0 } else { new_port }).as_bytes(),
            );
        } else {
            out.put_slice(content.as_bytes());
        }
        out.put_slice(ending.as_bytes());
    }
    Ok(out.freeze())
}

/// `body` offering only the codecs named in `keep` (in that order of
/// preference, by encoding name, case-insensitive) on its audio lines;
/// telephone-event stays. The attribute lines of dropped payload types go too.
/// `None` when an audio line would be left without a codec.
pub fn keep_codecs(body: &[u8], keep: &[String]) -> Option<Bytes> {
    let text = std::str::from_utf8(body).ok()?;
    // Payload type → encoding name, from rtpmap lines and the static table.
    let mut names: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
    for line in lines(text) {
        if let Some(map) = line.strip_prefix("a=rtpmap:") {
            if let Some((pt, enc)) = map.split_once(' ') {
                let name = enc.split('/').next().unwrap_or_default();
                names.insert(pt, name.to_ascii_lowercase());
            }
        }
    }
    let name_of = |pt: &str| -> Option<String> {
        names
            .get(pt)
            .cloned()
            .or_else(|| static_name(pt).map(str::to_string))
    };
    let rank = |pt: &str| -> Option<usize> {
        let name = name_of(pt)?;
        if name == "telephone-event" {
            return Some(usize::MAX);
        }
        keep.iter().position(|k| k.eq_ignore_ascii_case(&name))
    };
    let mut dropped: Vec<String> = Vec::new();
    let mut out = String::with_capacity(text.len());
    let mut audio = false;
    for line in text.split_inclusive('\n') {
        let content = line.trim_end_matches(['\r', '\n']);
        let ending = &line[content.len()..];
        if let Some(m) = content.strip_prefix("m=") {
            let parts: Vec<&str> = m.split(' ').collect();
            audio = parts.first() == Some(&"audio") && parts.get(1) != Some(&"0");
            if audio && parts.len() > 3 {
                let mut kept: Vec<(usize, &str)> = Vec::new();
                for pt in &parts[3..] {
                    match rank(pt) {
                        Some(r) => kept.push((r, pt)),
                        None => dropped.push(pt.to_string()),
                    }
                }
                kept.sort_by_key(|(r, _)| *r);
                if kept.iter().all(|(r, _)| *r == usize::MAX) {
                    return None;
                }
                let formats: Vec<&str> = kept.into_iter().map(|(_, pt)| pt).collect();
                out.push_str(&format!("m={} {}", parts[..3].join(" "), formats.join(" ")));
                out.push_str(ending);
                continue;
            }
        }
        let attribute_of_dropped = audio
            && ["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"].iter().any(|a| {
                content
                    .strip_prefix(a)
                    .and_then(|rest| rest.split([' ', ':']).next())
                    .is_some_and(|pt| dropped.iter().any(|d| d == pt))
            });
        if !attribute_of_dropped {
            out.push_str(line);
        }
    }
    Some(Bytes::from(out))
}

/// The encoding name of a static payload type (RFC 3551) we may meet.
fn static_name(pt: &str) -> Option<&'static str> {
    Some(match pt {
        "0" => "pcmu",
        "3" => "gsm",
        "8" => "pcma",
        "9" => "g722",
        "18" => "g729",
        _ => return None,
    })
}

impl Media {
    /// The lower-case encoding name of payload type `pt` on this line.
    fn encoding(&self, pt: &str) -> Option<String> {
        let mapped = self.rtpmaps.iter().find(|(p, _)| p == pt).map(|(_, e)| {
            let name = e.split('/').next().unwrap_or_default();
            name.to_ascii_lowercase()
        });
        mapped.or_else(|| static_name(pt).map(str::to_string))
    }
}

/// The codecs two offers' first audio lines share under the same payload
/// type (a relay passes RTP unchanged, so both ends must number a codec
/// alike), in `b`'s order, by encoding name; telephone-event left out.
pub fn shared_codecs(a: &Session, b: &Session) -> Vec<String> {
    let audio = |s: &Session| {
        s.media
            .iter()
            .find(|m| m.kind == "audio" && m.port != 0)
            .cloned()
    };
    let (Some(a), Some(b)) = (audio(a), audio(b)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for pt in &b.formats {
        let Some(name) = b.encoding(pt) else { continue };
        let same = a.formats.contains(pt) && a.encoding(pt).as_ref() == Some(&name);
        if same && name != "telephone-event" && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// The answer of a local endpoint at `addr`:`port` to `offer` (RFC 3264 §6): the
/// first audio stream with a G.711 codec is accepted (telephone-event kept when
/// offered), every other stream is refused with port 0. `None` when nothing can be
/// accepted (answer 488). `origin` is the `o=` line's session id and version: a
/// later answer in the same session keeps the id and increments the version
/// (RFC 3264 §8).
pub fn local_answer(offer: &Session, addr: IpAddr, port: u16, origin: Origin) -> Option<Bytes> {
    let family = if addr.is_ipv4() { "IP4" } else { "IP6" };
    let Origin { id, version } = origin;
    let mut body = format!(
        "v=0\r\no=sipdesk {id} {version} IN {family} {addr}\r\ns=sipdesk\r\nc=IN {family} {addr}\r\nt=0 0\r\n"
    );
    let mut accepted = false;
    for m in &offer.media {
        let codec = (m.kind == "audio" && m.proto == "RTP/AVP" && !accepted)
            .then(|| {
                m.formats.iter().find_map(|pt| {
                    LOCAL_CODECS
                        .iter()
                        .find(|(lpt, enc)| {
                            pt == lpt
                                || m.rtpmaps
                                    .iter()
                                    .any(|(p, e)| p == pt && e.eq_ignore_ascii_case(enc))
                        })
                        .map(|(_, enc)| (pt.clone(), *enc))
                })
            })
            .flatten();
        match codec {
            Some((pt, enc)) => {
                accepted = true;
                let dtmf = m
                    .rtpmaps
                    .iter()
                    .find(|(_, e)| e.to_ascii_lowercase().starts_with("telephone-event/8000"));
                let mut fmts = pt.clone();
                if let Some((dpt, _)) = dtmf {
                    fmts.push(' ');
                    fmts.push_str(dpt);
                }
                body.push_str(&format!(
                    "m=audio {port} RTP/AVP {fmts}\r\na=rtpmap:{pt} {enc}\r\n"
                ));
                if let Some((dpt, _)) = dtmf {
                    body.push_str(&format!(
                        "a=rtpmap:{dpt} telephone-event/8000\r\na=fmtp:{dpt} 0-16\r\n"
                    ));
                }
                body.push_str(&format!(
                    "a=ptime:20\r\na={}\r\n",
                    m.direction.answer().as_str()
                ));
            }
            None => {
                let fmt = m.formats.first().map_or("0", String::as_str);
                body.push_str(&format!("m={} 0 {} {fmt}\r\n", m.kind, m.proto));
            }
        }
    }
    accepted.then(|| Bytes::from(body))
}

#[cfg(test)]
mod tests {
    #[test]
    fn shared_codecs_are_those_both_offers_number_alike() {
        use super::{parse, shared_codecs};
        let a = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
                 m=audio 4000 RTP/AVP 0 8 96 101\r\na=rtpmap:96 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\n";
        let b = "v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n\
                 m=audio 5000 RTP/AVP 111 8 9 0 101\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\n";
        let (a, b) = (
            parse(a.as_bytes()).expect("a"),
            parse(b.as_bytes()).expect("b"),
        );
        assert_eq!(
            shared_codecs(&a, &b),
            ["pcma", "pcmu"],
            "opus is numbered differently, G.722 only on one side"
        );
        let video = "v=0\r\no=- 1 1 IN IP4 10.0.0.3\r\ns=-\r\nc=IN IP4 10.0.0.3\r\nt=0 0\r\nm=video 6000 RTP/AVP 96\r\n";
        let video = parse(video.as_bytes()).expect("video");
        assert!(shared_codecs(&a, &video).is_empty());
    }

    #[test]
    fn only_the_trunks_codecs_are_offered_in_its_order_with_telephone_event() {
        let offer = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
                     m=audio 4000 RTP/AVP 9 0 8 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\n\
                     a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n";
        let keep = vec!["PCMA".to_string(), "pcmu".to_string()];
        let out = keep_codecs(offer.as_bytes(), &keep).expect("codecs left");
        let out = std::str::from_utf8(&out).expect("text");
        assert!(out.contains("m=audio 4000 RTP/AVP 8 0 101\r\n"), "{out}");
        assert!(!out.contains("G722"), "{out}");
        assert!(
            out.contains("a=fmtp:101 0-16\r\n") && out.contains("a=sendrecv"),
            "{out}"
        );
        assert!(keep_codecs(offer.as_bytes(), &["G729".to_string()]).is_none());
    }

    use super::*;

    const OFFER: &[u8] = b"v=0\r\no=- 20518 0 IN IP4 192.0.2.20\r\ns=SDP\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n\
m=audio 11800 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x\r\n\
m=video 0 RTP/AVP 96\r\nm=video 11802 RTP/AVP 96\r\nc=IN IP4 192.0.2.21\r\na=sendonly\r\n";

    #[test]
    fn an_offer_is_read() {
        let s = parse(OFFER).expect("parse");
        assert_eq!(s.media.len(), 3);
        let a = &s.media[0];
        assert_eq!(
            (a.kind.as_str(), a.port, a.formats.len()),
            ("audio", 11800, 3)
        );
        assert_eq!(a.addr, Some("192.0.2.20".parse().expect("ip")));
        assert_eq!(s.media[2].addr, Some("192.0.2.21".parse().expect("ip")));
        assert_eq!(s.media[2].direction, Direction::SendOnly);
        assert_eq!(a.direction, Direction::SendRecv);
    }

    #[test]
    fn rewrite_touches_only_c_and_m_lines() {
        let out = rewrite(
            OFFER,
            "198.51.100.1".parse().expect("ip"),
            &[30000, 30002, 30004],
        )
        .expect("rewrite");
        let text = std::str::from_utf8(&out).expect("utf8");
        assert!(text.contains("c=IN IP4 198.51.100.1\r\nt=0 0"));
        assert!(text.contains("m=audio 30000 RTP/AVP 0 8 101\r\n"));
        assert!(
            text.contains("m=video 0 RTP/AVP 96\r\n"),
            "a refused stream stays refused"
        );
        assert!(text.contains("m=video 30004 RTP/AVP 96\r\nc=IN IP4 198.51.100.1\r\na=sendonly"));
        assert!(text.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x\r\n"));
        assert_eq!(
            out.len(),
            OFFER.len() + 2 * ("198.51.100.1".len() - "192.0.2.20".len()),
            "same bytes otherwise"
        );
        assert_eq!(
            rewrite(OFFER, "::1".parse().expect("ip"), &[1]),
            Err(SdpError::PortCount)
        );
    }

    #[test]
    fn local_answer_picks_g711_keeps_dtmf_and_refuses_the_rest() {
        let s = parse(OFFER).expect("parse");
        let ans = local_answer(&s, "127.0.0.1".parse().expect("ip"), 20000, Origin::new(7))
            .expect("answer");
        let text = std::str::from_utf8(&ans).expect("utf8");
        assert!(
            text.contains("m=audio 20000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"),
            "{text}"
        );
        assert!(text.contains("m=video 0 RTP/AVP 96\r\n"));
        assert_eq!(
            parse(&ans).expect("reparse").media.len(),
            3,
            "one answer line per offer line"
        );
        let hold = parse(b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 8\r\na=sendonly\r\n")
            .expect("parse");
        let ans = local_answer(&hold, "127.0.0.1".parse().expect("ip"), 1, Origin::new(1))
            .expect("answer");
        assert!(std::str::from_utf8(&ans)
            .expect("utf8")
            .contains("a=recvonly"));
    }

    #[test]
    fn no_common_codec_means_no_answer() {
        let s = parse(b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 9 18\r\n").expect("parse");
        assert_eq!(
            local_answer(&s, "127.0.0.1".parse().expect("ip"), 1, Origin::new(1)),
            None
        );
    }

    #[test]
    fn broken_sdp_is_an_error() {
        assert_eq!(parse(b"\xff\xfe"), Err(SdpError::NotText));
        assert_eq!(parse(b"c=IN IP4 1.2.3.4\r\n"), Err(SdpError::NoVersion));
        assert_eq!(
            parse(b"v=0\r\nc=IN IP4 nonsense\r\n"),
            Err(SdpError::BadLine("c="))
        );
        assert_eq!(
            parse(b"v=0\r\nm=audio x RTP/AVP 0\r\n"),
            Err(SdpError::BadLine("m="))
        );
        assert_eq!(parse(b"v=0\r\n"), Err(SdpError::NoMedia));
    }
}

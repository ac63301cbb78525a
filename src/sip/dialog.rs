//! One SIP dialog as seen from our side (RFC 3261 §12): what our in-dialog
//! requests carry and where they go. Built from the INVITE (or SUBSCRIBE) and the
//! 2xx that created it, whichever side we were.

use super::call_id::CallId;
use super::message::{build::random_tag, Builder, HeaderName, Message, Method, NameAddr};
use super::Remote;
use bytes::Bytes;

#[derive(Debug, Clone)]
pub struct Dialog {
    pub call_id: CallId,
    /// Our party with our tag (From of our requests).
    pub local: Bytes,
    /// The peer's party with its tag (To of our requests).
    pub remote_party: Bytes,
    /// The peer's Contact URI: the Request-URI of our requests.
    pub target: Bytes,
    /// Route set (Record-Route, in the order our requests need it).
    pub route: Vec<Bytes>,
    /// Where the peer's messages come from; our requests go there (NAT-safe).
    pub remote: Remote,
    /// Our last CSeq number.
    pub cseq: u32,
}

impl Dialog {
    /// The dialog our INVITE and the peer's 2xx made (we are the UAC).
    pub fn from_uac(invite: &Message, ok: &Message, remote: Remote) -> Option<Dialog> {
        let target = ok
            .contacts()
            .entries()
            .flatten()
            .next()
            .map(|c| Bytes::copy_from_slice(c.uri))?;
        let mut route: Vec<Bytes> = ok
            .values(HeaderName::RecordRoute)
            .map(Bytes::copy_from_slice)
            .collect();
        route.reverse();
        Some(Dialog {
            call_id: invite.call_id().map(CallId::from_bytes)?,
            local: Bytes::copy_from_slice(invite.value(HeaderName::From)?),
            remote_party: Bytes::copy_from_slice(ok.value(HeaderName::To)?),
            target,
            route,
            remote,
            cseq: invite.cseq().map_or(1, |c| c.seq),
        })
    }

    /// The dialog the peer's request and our 2xx made (we are the UAS).
    pub fn from_uas(request: &Message, ok: &Message, remote: Remote) -> Option<Dialog> {
        let target = request
            .contacts()
            .entries()
            .flatten()
            .next()
            .map(|c| Bytes::copy_from_slice(c.uri))
            .or_else(|| request.from_header().map(|f| Bytes::copy_from_slice(f.uri)))?;
        Some(Dialog {
            call_id: request.call_id().map(CallId::from_bytes)?,
            local: Bytes::copy_from_slice(ok.value(HeaderName::To)?),
            remote_party: Bytes::copy_from_slice(request.value(HeaderName::From)?),
            target,
            route: request
                .values(HeaderName::RecordRoute)
                .map(Bytes::copy_from_slice)
                .collect(),
            remote,
            cseq: 0,
        })
    }

    /// A request in this dialog with CSeq `seq` (ACK reuses the INVITE's number).
    pub fn request(&self, method: &Method, seq: u32, hostport: &str, sdp: Option<&[u8]>) -> Bytes {
        let body = sdp.map(|b| ("application/sdp", b));
        self.request_with(method, seq, hostport, &[], body)
    }

    /// A request in this dialog with more headers and a body of any type.
    pub fn request_with(
        &self,
        method: &Method,
        seq: u32,
        hostport: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
    ) -> Bytes {
        let mut b = Builder::request(method, &self.target);
        b.header(
            "Via",
            format!(
                "SIP/2.0/{} {hostport};branch=z9hG4bK{};rport",
                self.remote.transport,
                random_tag()
            ),
        );
        for r in &self.route {
            b.header("Route", r);
        }
        b.header("Max-Forwards", "70")
            .header("From", &self.local)
            .header("To", &self.remote_party)
            .header("Call-ID", &self.call_id)
            .header("CSeq", format!("{seq} {method}"))
            .header("User-Agent", super::message::build::PRODUCT);
        if matches!(method, Method::Invite | Method::Update | Method::Notify) {
            b.header("Contact", format!("<sip:{hostport}>"));
        }
        for (name, value) in headers {
            b.header(name, value);
        }
        match body {
            Some((content_type, body)) => b.finish_with_body(Some(content_type), body),
            None => b.finish(),
        }
    }

    /// Our tag (in `local`).
    pub fn local_tag(&self) -> Option<&[u8]> {
        NameAddr::parse(&self.local).and_then(|n| n.tag())
    }

    /// The next request (CSeq + 1).
    pub fn next_request(&mut self, method: &Method, hostport: &str, sdp: Option<&[u8]>) -> Bytes {
        self.cseq += 1;
        self.request(method, self.cseq, hostport, sdp)
    }
}

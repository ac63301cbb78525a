//! Transaction keys: how a message finds its transaction (RFC 3261 §17.1.3 for
//! responses, §17.2.3 for requests, with the RFC 2543 fallback for branches without
//! the `z9hG4bK` magic cookie).

use crate::sip::message::{Message, Method};

const MAGIC: &[u8] = b"z9hG4bK";

/// Server transaction key. An ACK maps to the INVITE it acknowledges; a CANCEL is
/// its own transaction (same branch, different method).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerKey {
    Rfc3261 {
        branch: Box<[u8]>,
        sent_by: Box<[u8]>,
        method: Method,
    },
    /// RFC 2543 peers: Request-URI, From tag, Call-ID, CSeq number, top Via and
    /// method. (The To tag is left out so that the ACK of a non-2xx, which carries
    /// our To tag, matches its INVITE.)
    Rfc2543 {
        request_uri: Box<[u8]>,
        from_tag: Box<[u8]>,
        call_id: Box<[u8]>,
        seq: u32,
        via: Box<[u8]>,
        method: Method,
    },
}

impl ServerKey {
    /// The same key for another method (a CANCEL looks up its INVITE).
    pub fn with_method(mut self, m: Method) -> ServerKey {
        match &mut self {
            ServerKey::Rfc3261 { method, .. } | ServerKey::Rfc2543 { method, .. } => *method = m,
        }
        self
    }
}

/// Client transaction key: our own branch plus the CSeq method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    branch: Box<[u8]>,
    method: Method,
}

fn tx_method(m: &Method) -> Method {
    if *m == Method::Ack {
        Method::Invite
    } else {
        m.clone()
    }
}

pub fn server_key(req: &Message) -> Option<ServerKey> {
    let method = tx_method(req.method()?);
    let via = req.top_via()?;
    match via.branch() {
        Some(branch) if branch.starts_with(MAGIC) => {
            let mut sent_by = via.sent_by.host.to_ascii_lowercase();
            sent_by.extend_from_slice(format!(":{}", via.sent_by.port.unwrap_or(5060)).as_bytes());
            Some(ServerKey::Rfc3261 {
                branch: branch.into(),
                sent_by: sent_by.into(),
                method,
            })
        }
        _ => Some(ServerKey::Rfc2543 {
            request_uri: req.request_uri_bytes()?.into(),
            from_tag: req.from_header()?.tag().unwrap_or_default().into(),
            call_id: req.call_id()?.into(),
            seq: req.cseq()?.seq,
            via: req.value(crate::sip::message::HeaderName::Via)?.into(),
            method,
        }),
    }
}

pub fn client_key(msg: &Message) -> Option<ClientKey> {
    let branch = msg.top_via()?.branch()?;
    Some(ClientKey {
        branch: branch.into(),
        method: tx_method(&msg.cseq()?.method),
    })
}

//! The sans-IO SIP core: message parsing and building ([`message`]), the RFC 3261
//! §17 transaction layer ([`transaction`]), digest authentication ([`auth`]), SDP,
//! and the shared kinds of the layers above: [`CallId`], [`Dialog`], [`StatusCode`].
//! Nothing here touches a socket, a runtime, the disk or the clock: every input
//! carries `now`, every output is returned.

pub mod auth;
pub mod call_id;
pub mod dialog;
pub mod message;
pub mod sdp;
pub mod status;
pub mod transaction;

pub use call_id::CallId;
pub use dialog::Dialog;
pub use status::StatusCode;

use std::fmt;
use std::net::SocketAddr;

/// Why a message could not be read. Every variant is "the peer misbehaved".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SipError {
    #[error("empty message")]
    Empty,
    #[error("message of {0} bytes exceeds the size limit")]
    TooLarge(usize),
    #[error("too many header lines")]
    TooManyHeaders,
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("{0}")]
    Malformed(&'static str),
}

/// The transport a message travelled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// Reliable transports need no retransmissions (RFC 3261 §17.1.1.2).
    pub fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }
    pub fn from_via(t: &[u8]) -> Option<Transport> {
        if t.eq_ignore_ascii_case(b"UDP") {
            Some(Transport::Udp)
        } else if t.eq_ignore_ascii_case(b"TCP") {
            Some(Transport::Tcp)
        } else {
            None
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one TCP connection of the transport layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Where a message came from or goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Remote {
    pub transport: Transport,
    pub addr: SocketAddr,
    /// The local socket (UDP: its index) or connection (TCP) the message used;
    /// replies go out through the same one.
    pub conn: Option<ConnId>,
}

impl Remote {
    pub fn udp(addr: SocketAddr) -> Remote {
        Remote {
            transport: Transport::Udp,
            addr,
            conn: None,
        }
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport, self.addr)
    }
}

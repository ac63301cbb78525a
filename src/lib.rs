//! sipdesk — an embedded SIP PBX.
pub mod sip;

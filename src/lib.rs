//! sipdesk — an embedded SIP PBX.
pub mod config;
pub mod registrar;
pub mod sip;
pub mod store;
pub mod users;

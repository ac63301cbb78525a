//! sipdesk — an embedded SIP PBX in one process: registrar, B2BUA, RTP relay, ACD,
//! CTI, call-back box and campaign dialer over an embedded database.
//!
//! ```text
//!   phones ── SIP (UDP/TCP) ──► transport/ ──► sip/ (sans-IO: messages,
//!                                  │            transactions, digest auth, SDP)
//!                                  ▼
//!                             endpoint/ (one per shard, by Call-ID)
//!              ┌──────────┬────────┼──────────┬─────────────┐
//!              ▼          ▼        ▼          ▼             ▼
//!         registrar/   b2bua/ ──► routing/   blf/        users
//!              │          │  (ACD: pure       │ NOTIFY on every change
//!              │          │   decisions)      │
//!              │          ▼        │ reads    ▼
//!              │       media/      └──► presence/ (one map, change stream)
//!              │   (relay, prompts)     history/ (caller index)
//!              ▼                             │
//!           store/ (sled, group-committed before acknowledging) ◄──┘
//! ```
//!
//! Embedding:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = sipdesk::config::Config::embedded()?;
//! let pbx = sipdesk::Pbx::builder(config).data_dir("/var/lib/sipdesk").start().await?;
//! println!("SIP on {:?}", pbx.udp_addrs());
//! pbx.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod b2bua;
pub mod blf;
pub mod config;
pub mod endpoint;
pub mod history;
pub mod media;
pub mod pbx;
pub mod presence;
pub mod registrar;
pub mod routing;
pub mod sip;
pub mod store;
pub mod transport;
pub mod users;

pub use pbx::{Pbx, PbxBuilder, PbxError};

//! sipdesk — an embedded SIP PBX in one process: registrar, B2BUA, RTP relay, ACD,
//! CTI, call-back box and campaign dialer over an embedded database.
//!
//! The layers, arrows pointing down only (a test keeps it so):
//!
//! ```text
//!  face      lib.rs, main.rs, pbx/ (the runtime: tasks that do I/O, and `Pbx`)
//!  desk      cti/ (HTTP API, sessions, numbered event log, desktop assets):
//!            started by the runtime, reads shared state, sends commands
//!            through `cti::Commands`; never reaches into a shard
//!              │  inputs with `now`                    ▲ effects executed
//!              ▼                                       │
//!  shard/    owns the TransactionLayer of its Call-IDs; checks requests (§8.2);
//!            asks the dialplan where a request goes; runs the modules' effects
//!              │  on_request / on_response / on_timer (Cx: now, Env, outbox)
//!              ▼
//!  modules   calls/ (bridges, queue calls, originate, CDRs, hunting and
//!            forwarding, transfer, pickup, voicemail and its menu, call
//!            recording) · blf/ ·
//!            registrar/
//!              │  read
//!              ▼
//!  kinds     tu/ (Env, Cx, Effect, typed timer keys) · clock (UnixMillis)
//!  state     presence/ (one map, change stream) · mwi/ (message lamps) ·
//!            voicemail/ (mailboxes, messages, greetings) · recordings/
//!            (call recordings, by customer) · forwarding/ ·
//!            callbacks/ (the call-back box, sans-IO) · campaigns/ (lists,
//!            calling hours, retries, do-not-call; sans-IO) · routing/ (dialplan + ACD,
//!            pure) · history/ (caller index) · users · media/ (behind
//!            MediaEngine) · store/ (generic sled trees) · transport/
//!  core      sip/ (sans-IO: parser, builder, transactions, digest, SDP, CallId,
//!            Dialog, StatusCode)
//! ```
//!
//! Embedding:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = sipdesk::config::Config::embedded()?;
//! let pbx = sipdesk::Pbx::builder(config).data_dir("/var/lib/sipdesk").start().await?;
//! println!("SIP on {:?}, desk at http://{}/", pbx.udp_addrs(), pbx.http_addr());
//! pbx.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! The public surface is [`Pbx`] and its builder, [`config`], and the read-only
//! views a running PBX hands out: [`presence`] (every extension's state and the
//! change stream), [`routing`] (groups, queues, waiting lines), [`history`] (the
//! caller index and response records), registrations ([`Registrations`]) and
//! CDRs ([`Cdr`]); and the pure rules embedders and the fuzz targets use:
//! [`outside`] (trunks, numbering) and [`campaigns`] (lists, calling hours).

mod blf;
mod callbacks;
mod calls;
pub mod campaigns;
mod clock;
pub mod config;
mod cti;
pub mod forwarding;
mod guard;
pub mod history;
#[doc(hidden)]
pub mod media;
mod mwi;
pub mod outside;
mod pbx;
pub mod presence;
mod recordings;
mod registrar;
pub mod routing;
mod shard;
#[doc(hidden)]
pub mod sip;
mod store;
#[cfg(test)]
mod testkit;
mod transport;
mod trunk;
mod tu;
mod users;
mod voicemail;

pub use calls::cdr::{Cdr, Disposition, HangupBy};
pub use calls::OriginateError;
pub use clock::UnixMillis;
pub use pbx::{Archive, Pbx, PbxBuilder, PbxError};
pub use registrar::{Binding, Registrar as Registrations};
pub use store::StoreError;
pub use tu::Stats;
pub use users::{DemoUser, Users};

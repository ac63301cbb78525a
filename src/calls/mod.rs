//! Calls: the transaction user for INVITE dialogs. It owns every call of its
//! shard, by Call-ID:
//!
//! - local calls the PBX answers itself (test numbers, feature codes: `local`);
//! - bridges between a caller and an extension, forked to every contact of the
//!   callee, with media anchored in a relay (`bridge`);
//! - queue calls, whose B legs are the ACD's offers to agents (`queue`);
//! - calls the PBX places (originate, third-party call control: `originate`);
//!
//! and writes one CDR per call (`cdr`). Sans-IO like the core below it: every
//! input comes with a [`Cx`] (the time, the environment, the outbox) and the
//! module acts only by adding effects to it. Its timers are typed keys
//! ([`Timer`]); a key that fires after its call moved on is recognised as stale
//! by the deadline it carries.

/// A built-in prompt, synthesised once and shared: `built_in!(Prompt::confirm)`.
macro_rules! built_in {
    ($make:path) => {{
        static PROMPT: std::sync::OnceLock<std::sync::Arc<crate::media::prompt::Prompt>> =
            std::sync::OnceLock::new();
        std::sync::Arc::clone(PROMPT.get_or_init(|| std::sync::Arc::new($make())))
    }};
}

mod bridge;
pub mod cdr;
mod hunt;
mod local;
mod menu;
mod originate;
mod outbound;
mod pickup;
mod queue;
mod recording;
#[cfg(test)]
mod tests;
mod transfer;
mod voicemail;

pub use originate::{AttemptCall, OriginateError};
pub use recording::RecordError;
pub use transfer::{TransferError, TransferTo};

use crate::clock::UnixMillis;
use crate::media::MediaEvent;
use crate::presence::{DialogId, DialogTags, Direction, Presence};
use crate::routing::dialplan::Target;
use crate::sip::message::{Builder, HeaderName, Message, NameAddr, Uri};
use crate::sip::transaction::TxId;
use crate::sip::{sdp, CallId, Remote, StatusCode};
use crate::store::Write;
use crate::tu::ReqId;
use cdr::{Cdr, Disposition, HangupBy};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The context of a call-module input.
pub(crate) type Cx<'a> = crate::tu::Cx<'a, Timer>;

/// Methods a dialog of ours accepts.
pub const ALLOW: &str =
    "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, SUBSCRIBE, REFER, NOTIFY";

/// Extensions we support (RFC 3261 §20.37): an INVITE may require them.
pub const SUPPORTED: &str = "replaces";

/// The timers of calls, by the call they belong to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// A local call: 2xx retransmission, or its hang-up.
    Local(CallId),
    /// A bridge: ring timeout, 2xx retransmission, session expiry.
    Bridge(CallId),
    /// A queue call: offer deadline, retry, overflow, hang-up after the announcement.
    Queue(CallId),
    /// An origination's ring timeout.
    Origin(CallId),
    /// A picker's Call-ID routed to this shard for a pickup that did not
    /// happen goes back to its hash (see `pickup`).
    Moved(CallId),
    /// A caller leaving a voicemail message: the greeting's end, the hang-up.
    Voicemail(CallId),
}

/// Which side of a bridge or origination a dialog is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    A,
    B(usize),
}

impl Side {
    /// Its side in the call's relay (0: A, 1: B).
    fn relay_index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B(_) => 1,
        }
    }
}

/// What one of our client transactions belongs to (requests whose answer
/// changes nothing, such as a BYE, have no entry).
#[derive(Debug, Clone)]
enum Pending {
    /// A forked INVITE: (A's Call-ID, branch index).
    Branch(CallId, usize),
    /// A request relayed inside a bridge: its answer goes to server
    /// transaction `tx` of the requester's leg.
    Relayed {
        owner: CallId,
        tx: TxId,
        request: Message,
        from: Side,
        /// The trunk the other leg faces, while a challenge may still be
        /// answered with its credentials.
        trunk: Option<crate::outside::TrunkId>,
    },
    /// Our BYE to a provider: answered once more with the trunk's
    /// credentials if challenged.
    TrunkBye {
        trunk: crate::outside::TrunkId,
        dialog: crate::sip::Dialog,
    },
    /// An INVITE of an origination: (its key, which leg).
    Origin(CallId, Side),
    /// Our re-INVITE moving a transferee's media to its new party (see
    /// `transfer`): the SDP it carried, and whether it answered a challenge.
    Reanchor {
        owner: CallId,
        side: Side,
        sdp: bytes::Bytes,
        /// The side re-INVITEd next, with this one's answer.
        then: Option<Side>,
        retried: bool,
    },
}

/// Our 2xx to an INVITE, sent again (RFC 3261 §13.3.1.4: T1, doubling up
/// to T2) until its ACK comes, or given up on at 64*T1.
#[derive(Debug)]
pub(super) struct Answering {
    ok: bytes::Bytes,
    to: Remote,
    interval: std::time::Duration,
    next: Instant,
    give_up: Instant,
}

impl Answering {
    /// `ok` was just sent to `to`.
    fn new(cx: &Cx<'_>, ok: bytes::Bytes, to: Remote) -> Answering {
        let t1 = cx.env.timers.t1;
        Answering {
            ok,
            to,
            interval: t1,
            next: cx.now + t1,
            give_up: cx.now + t1 * 64,
        }
    }

    fn due(&self) -> Instant {
        self.next.min(self.give_up)
    }

    /// Its deadline came: the 2xx goes out again (`true`), or the ACK is
    /// overdue and the dialog must end (`false`).
    fn again(&mut self, cx: &mut Cx<'_>) -> bool {
        if cx.now >= self.give_up {
            return false;
        }
        cx.transmit(self.to, self.ok.clone());
        self.interval = (self.interval * 2).min(cx.env.timers.t2);
        self.next = cx.now + self.interval;
        true
    }
}

/// How a call that never connected is refused.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refusal {
    pub code: u16,
    pub reason: &'static str,
    pub disposition: Disposition,
    pub by: HangupBy,
}

impl Refusal {
    /// A call the PBX could not set up (CDR: failed, ended by the system).
    pub(crate) const fn failed(status: StatusCode) -> Refusal {
        Refusal {
            code: status.0,
            reason: status.reason(),
            disposition: Disposition::Failed,
            by: HangupBy::System,
        }
    }

    const NO_MEDIA: Refusal = Refusal {
        code: 503,
        reason: "Service Unavailable (No Media Ports)",
        disposition: Disposition::Failed,
        by: HangupBy::System,
    };
}

/// An extension in a call: its dialog in the presence map.
pub(crate) type Party = (String, DialogId);

/// Every call of one shard.
#[derive(Debug, Default)]
pub struct Calls {
    /// Calls answered by the PBX itself, by Call-ID.
    local: HashMap<CallId, local::LocalCall>,
    /// Bridged calls (and queue calls) by the Call-ID of leg A.
    bridges: HashMap<CallId, bridge::Bridge>,
    /// Calls the PBX placed, by the Call-ID of leg A.
    originations: HashMap<CallId, originate::Origination>,
    /// Every leg's Call-ID → (the call's key, which leg).
    legs: HashMap<CallId, (CallId, Side)>,
    /// Our client transactions, by the id their answers come back under.
    pending: HashMap<ReqId, Pending>,
    /// Branches of ended calls that may still answer (CANCEL/2xx races).
    orphans: HashMap<ReqId, (Message, Remote)>,
    /// Of those, the customers of ended campaign attempts: one that answers
    /// now finds no agent (an abandoned call, reported).
    abandoned: HashMap<ReqId, (crate::campaigns::AttemptKey, CallId)>,
    /// Call-backs queue callers are asking for, by their voice message's id,
    /// until the message is saved.
    messages: HashMap<u64, queue::LeftMessage>,
    /// Voicemail messages being recorded or saved, by their id.
    deposits: HashMap<u64, voicemail::Leaving>,
    /// Call recordings from their start until their record is stored.
    recordings: recording::Recordings,
}

impl Calls {
    /// A new INVITE (no To tag), with the dialplan's target for its Request-URI.
    pub fn on_invite(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        remote: Remote,
        target: Target,
    ) {
        let Some(call_id) = req.call_id().map(CallId::from_bytes) else {
            return;
        };
        if let Err(r) = check_session_timer(cx, req) {
            return self.refuse_new(cx, tx, req, remote, &call_id, r);
        }
        if let Some(replaces) = req.other_values("Replaces").next() {
            return self.invite_replaces(cx, tx, req, remote, replaces);
        }
        match target {
            Target::Pickup(of) => self.invite_pickup(cx, tx, req, remote, of),
            Target::Voicemail => {
                let Some(Some(user)) = self.authenticate(cx, tx, req, remote, true) else {
                    return;
                };
                self.invite_menu(cx, tx, req, remote, call_id, user)
            }
            Target::Test(kind) => {
                self.invite_local(cx, tx, req, remote, call_id, local::Kind::Test(kind))
            }
            Target::Queue(queue) => {
                let entry = queue::Entry {
                    queue,
                    caller: caller_number(req),
                    trunk: None,
                };
                self.invite_queue(cx, tx, req, remote, call_id, entry)
            }
            Target::Feature(state) => {
                let Some(caller) = self.authenticate(cx, tx, req, remote, false) else {
                    return;
                };
                let caller = caller_of(req, caller);
                if let Err(e) = cx.env.presence.choose(&caller, state, cx.wall) {
                    tracing::info!(%caller, "feature code refused: {e}");
                    return cx.reply(tx, req, remote, StatusCode::FORBIDDEN);
                }
                tracing::info!(%caller, state = state.as_str(), "presence chosen from the phone");
                self.invite_local(cx, tx, req, remote, call_id, local::Kind::Confirmation)
            }
            Target::Forward(when, to) => {
                let Some(Some(user)) = self.authenticate(cx, tx, req, remote, true) else {
                    return;
                };
                self.forward_code(cx, tx, req, remote, call_id, user, (when, to))
            }
            Target::Extension(dialled) | Target::RingGroup(dialled) => {
                let Some(caller) = self.authenticate(cx, tx, req, remote, false) else {
                    return;
                };
                let target = bridge::CallTarget {
                    caller: caller_of(req, caller),
                    display: None,
                    start: hunt::Next::Number(dialled.clone()),
                    dialled,
                    trunk: None,
                };
                self.invite_extension(cx, tx, req, remote, call_id, target)
            }
            // Never without credentials, whatever `[calls] authenticate` says:
            // an outside call costs money.
            Target::Outside(route) => {
                let Some(Some(user)) = self.authenticate(cx, tx, req, remote, true) else {
                    return;
                };
                let number = req
                    .request_uri()
                    .and_then(|u| u.user)
                    .map(lossy)
                    .unwrap_or_default();
                let checked =
                    cx.env
                        .outside
                        .check(cx.now, remote.addr.ip(), Some(&user), route, &number);
                match checked {
                    Ok(permit) => {
                        let call = outbound::OutsideCall {
                            user,
                            number,
                            route,
                            permit,
                        };
                        self.invite_outside(cx, tx, req, remote, call_id, call)
                    }
                    Err(_) => {
                        let r = Refusal {
                            reason: "Forbidden (Outside Call Not Allowed)",
                            ..Refusal::failed(StatusCode::FORBIDDEN)
                        };
                        self.refuse_new(cx, tx, req, remote, &call_id, r)
                    }
                }
            }
            // Challenged like an extension first: an unauthenticated caller
            // cannot tell the numbers that exist from those that do not.
            Target::Unknown | Target::Group(_) => {
                if self.authenticate(cx, tx, req, remote, false).is_some() {
                    cx.reply(tx, req, remote, StatusCode::NOT_FOUND)
                }
            }
            Target::Incomplete => {
                if self.authenticate(cx, tx, req, remote, false).is_some() {
                    cx.reply(tx, req, remote, StatusCode::ADDRESS_INCOMPLETE)
                }
            }
        }
    }

    /// A forwarding code dialled by authenticated `user`: the rule is set (to
    /// a number they may reach) or cleared, stored, and confirmed by a tone
    /// once durable.
    #[allow(clippy::too_many_arguments)]
    fn forward_code(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        remote: Remote,
        call_id: CallId,
        user: String,
        (when, to): (crate::forwarding::When, Option<String>),
    ) {
        use crate::forwarding::ForwardingError as E;
        let env = cx.env;
        let rules = env.forwarding.rules(&user).with(when, to.clone());
        if let Err(e) = crate::forwarding::check(&user, &rules, |n| env.reach(&user, n)) {
            tracing::info!(%user, rule = when.as_str(), "forwarding refused: {e}");
            let status = match e {
                E::Unknown(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::FORBIDDEN,
            };
            return cx.reply(tx, req, remote, status);
        }
        let record = env.forwarding.replace(&user, rules);
        tracing::info!(%user, rule = when.as_str(), to = to.as_deref().unwrap_or("-"), "forwarding set from the phone");
        cx.store(Write::put(record));
        self.invite_local(cx, tx, req, remote, call_id, local::Kind::Confirmation)
    }

    /// A new INVITE from trunk `trunk`'s provider (trusted by its address),
    /// read by the trunk's rules (`inbound`) and going to `target` (where its
    /// DID leads). The caller is known by their E.164 number from here on.
    #[allow(clippy::too_many_arguments)]
    pub fn on_trunk_invite(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        remote: Remote,
        trunk: crate::outside::TrunkId,
        inbound: crate::outside::Inbound,
        target: Target,
    ) {
        let Some(call_id) = req.call_id().map(CallId::from_bytes) else {
            return;
        };
        let line = cx.env.outside.line(trunk);
        tracing::info!(
            %call_id, trunk = %line.name, did = %inbound.did, caller = %inbound.caller,
            to = inbound.target.as_deref().unwrap_or("-"), "inbound call"
        );
        if let Err(r) = check_session_timer(cx, req) {
            return self.refuse_new(cx, tx, req, remote, &call_id, r);
        }
        let refusal = match &target {
            Target::Unknown
            | Target::Feature(_)
            | Target::Forward(..)
            | Target::Pickup(_)
            | Target::Voicemail
            | Target::Incomplete => Some(Refusal::failed(StatusCode::NOT_FOUND)),
            Target::Outside(_) => {
                // Calls from one provider are never sent out again (transit).
                tracing::warn!(
                    target: crate::guard::SECURITY,
                    "SECURITY toll-denied source={} user=- number={} reason=\"a call from a trunk to an outside number\"",
                    remote.addr.ip(),
                    crate::guard::sanitize(&inbound.did)
                );
                Some(Refusal::failed(StatusCode::FORBIDDEN))
            }
            Target::Test(_) => None,
            _ if !line.seize() => Some(Refusal {
                reason: "Service Unavailable (Trunk Channels In Use)",
                ..Refusal::failed(StatusCode::SERVICE_UNAVAILABLE)
            }),
            _ => None,
        };
        if let Some(r) = refusal {
            return self.refuse_new(cx, tx, req, remote, &call_id, r);
        }
        let caller = inbound.caller;
        let env = cx.env;
        let (dialled, start) = match target {
            Target::Test(kind) => {
                return self.invite_local(cx, tx, req, remote, call_id, local::Kind::Test(kind))
            }
            Target::Queue(q) => {
                let entry = queue::Entry {
                    queue: q,
                    caller,
                    trunk: Some(trunk),
                };
                return self.invite_queue(cx, tx, req, remote, call_id, entry);
            }
            Target::Extension(n) | Target::RingGroup(n) => (n.clone(), hunt::Next::Number(n)),
            Target::Group(group) => {
                let Ok(id) = env.routing.group_id(&group) else {
                    let r = Refusal::failed(StatusCode::NOT_FOUND);
                    release_trunk(cx, Some(trunk));
                    return self.refuse_new(cx, tx, req, remote, &call_id, r);
                };
                let ring = env.calls.ring_timeout;
                let all = hunt::Next::All {
                    group: id,
                    ring,
                    then: None,
                };
                (group, all)
            }
            Target::Unknown
            | Target::Feature(_)
            | Target::Forward(..)
            | Target::Pickup(_)
            | Target::Voicemail
            | Target::Incomplete
            | Target::Outside(_) => return,
        };
        let target = bridge::CallTarget {
            caller,
            display: inbound.display,
            dialled,
            start,
            trunk: Some(trunk),
        };
        self.invite_extension(cx, tx, req, remote, call_id, target)
    }

    /// The caller's credentials for a call that needs them (`[calls]
    /// authenticate`): `Some(Some(user))` when they verify, `Some(None)` when
    /// none are needed; `None` when the request was answered (407, 403).
    fn authenticate(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        remote: Remote,
        always: bool,
    ) -> Option<Option<String>> {
        use crate::sip::auth::Verdict;
        if !cx.env.calls.authenticate && !always {
            return Some(None);
        }
        let env = cx.env;
        let verdict = env.auth.verify(
            cx.now,
            b"INVITE",
            req.authorizations(HeaderName::ProxyAuthorization),
            |u| env.users.ha1(u),
        );
        let verdict = env
            .guard
            .verdict(cx.now, remote.addr.ip(), "INVITE", verdict);
        match verdict {
            Verdict::Authenticated(user) => Some(Some(user)),
            Verdict::Challenge { stale } => {
                let status = StatusCode::PROXY_AUTHENTICATION_REQUIRED;
                let mut b = cx.response(req, remote, status);
                for c in env.auth.challenges(cx.now, stale) {
                    b.header("Proxy-Authenticate", c);
                }
                cx.respond(tx, b.finish());
                None
            }
            Verdict::Forbidden { .. } => {
                cx.reply(tx, req, remote, StatusCode::FORBIDDEN);
                None
            }
        }
    }

    /// A request inside a dialog (its To has a tag): BYE, re-INVITE, UPDATE, INFO.
    pub fn on_in_dialog(&mut self, cx: &mut Cx<'_>, tx: TxId, req: &Message, remote: Remote) {
        let Some(call_id) = req.call_id().map(CallId::from_bytes) else {
            return;
        };
        // A dialog we answered ourselves comes first: the PBX may be both ends of
        // one Call-ID (an origination calling a test number).
        // Only a bridge's party transfers (a call the PBX places or answers
        // itself has nobody to hand over).
        let refer = req.method() == Some(&crate::sip::message::Method::Refer);
        let local = self.is_local_dialog(&call_id, req);
        let leg = self.legs.get(&call_id).cloned();
        if refer
            && (local
                || leg
                    .as_ref()
                    .is_some_and(|(k, _)| !self.bridges.contains_key(k)))
        {
            return cx.reply_with(
                tx,
                req,
                remote,
                403,
                "Forbidden (Transfer Not Possible Here)",
            );
        }
        if local {
            return self.local_in_dialog(cx, tx, req, remote, &call_id);
        }
        match leg {
            Some((key, side)) if self.originations.contains_key(&key) => {
                self.origin_in_dialog(cx, tx, req, remote, &key, side)
            }
            Some((key, side)) => self.bridge_in_dialog(cx, tx, req, remote, &key, side),
            None => cx.reply(tx, req, remote, StatusCode::CALL_DOES_NOT_EXIST),
        }
    }

    /// An ACK outside any transaction: for one of our 2xx answers.
    pub fn on_ack(&mut self, cx: &mut Cx<'_>, req: &Message) {
        let Some(call_id) = req.call_id().map(CallId::from_bytes) else {
            return;
        };
        if self.is_local_dialog(&call_id, req) {
            return self.local_ack(cx, &call_id);
        }
        match self.legs.get(&call_id).cloned() {
            Some((a, Side::A)) => self.bridge_ack(cx, &a, req),
            Some((a, Side::B(idx))) => self.picker_ack(cx, &a, idx, req),
            None => {}
        }
    }

    /// The caller CANCELled its INVITE (the shard answered the CANCEL): a call
    /// still ringing ends with 487.
    pub fn on_cancel(&mut self, cx: &mut Cx<'_>, call_id: &CallId) {
        self.cancel_bridge(cx, call_id);
    }

    /// An answer to one of our requests (`None`: it timed out, or could not be sent).
    pub fn on_response(&mut self, cx: &mut Cx<'_>, id: ReqId, resp: Option<Message>) {
        let code = resp.as_ref().and_then(Message::status).unwrap_or(408);
        let pending = if code >= 200 {
            self.pending.remove(&id)
        } else {
            self.pending.get(&id).cloned()
        };
        match pending {
            Some(Pending::Branch(a, idx)) => self.branch_response(cx, &a, idx, code, resp),
            Some(Pending::Relayed {
                owner,
                tx,
                request,
                from,
                trunk,
            }) => {
                let challenged = matches!(code, 401 | 407) && trunk.is_some();
                match (challenged, trunk, &resp) {
                    (true, Some(t), Some(r)) => {
                        self.relay_again(cx, &owner, tx, &request, from, (t, r))
                    }
                    _ => self.relayed_response(cx, &owner, tx, &request, from, code, resp),
                }
            }
            Some(Pending::TrunkBye { trunk, mut dialog }) => {
                if let (401 | 407, Some(r)) = (code, &resp) {
                    outbound::bye_again(cx, trunk, &mut dialog, r);
                }
            }
            Some(Pending::Origin(key, side)) => self.origin_response(cx, &key, side, code, resp),
            Some(Pending::Reanchor {
                owner,
                side,
                sdp,
                then,
                retried,
            }) => self.reanchored(cx, (owner, side, sdp, then, retried), code, resp),
            None => {
                if code >= 200 {
                    if let (Some((invite, remote)), Some(r)) = (self.orphans.remove(&id), &resp) {
                        self.orphan_answered(cx, &invite, r, remote);
                    }
                    let attempt = self.abandoned.remove(&id);
                    if let (Some((key, call)), 200..=299) = (attempt, code) {
                        tracing::info!(%call, "a campaign's customer answered after the attempt ended");
                        let step = crate::campaigns::Step::Abandoned;
                        cx.attempt(crate::campaigns::Report { key, call, step });
                    }
                }
            }
        }
    }

    /// A timer armed under `key` for `at` fired.
    pub fn on_timer(&mut self, cx: &mut Cx<'_>, key: &Timer, at: Instant) {
        match key {
            Timer::Local(c) => self.local_timer(cx, c, at),
            Timer::Bridge(a) => self.bridge_timer(cx, a, at),
            Timer::Queue(a) => self.queue_timer(cx, a, at),
            Timer::Origin(k) => self.origin_timer(cx, k),
            Timer::Moved(c) => self.moved_timer(cx, c),
            Timer::Voicemail(a) => self.voicemail_timer(cx, a, at),
        }
    }

    /// A media session of call `call_id` reports something.
    pub fn on_media(&mut self, cx: &mut Cx<'_>, call_id: &CallId, event: MediaEvent) {
        match event {
            MediaEvent::Idle => self.on_media_idle(cx, call_id),
            MediaEvent::Digit(side, d) => self.digit(cx, call_id, side, d),
            MediaEvent::Recorded { id, saved, ms } => {
                if self.call_recorded(cx, id, saved, ms) {
                    return;
                }
                let saved_ms = saved.then_some(ms);
                if self.deposit_recorded(cx, id, saved_ms)
                    || self.menu_recorded(cx, call_id, id, saved_ms)
                {
                    return;
                }
                if !self.messages.contains_key(&id) {
                    // Nobody keeps it: a greeting whose caller hung up while
                    // recording it.
                    if let (true, Some(media)) = (saved, &cx.env.media) {
                        media.discard_voice(id);
                    }
                    return;
                }
                let voice = saved.then_some(crate::callbacks::Voice { id, ms });
                self.message_recorded(cx, call_id, id, voice)
            }
        }
    }

    /// Another shard's calls hand this one a message (a transfer joining
    /// calls of two shards).
    pub fn on_handoff(&mut self, cx: &mut Cx<'_>, message: crate::tu::Handoff) {
        self.transfer_handoff(cx, message);
    }

    /// The desk stored (`saved`) the call-back queue call `call_id` asked for.
    pub fn on_callback_saved(&mut self, cx: &mut Cx<'_>, call_id: &CallId, saved: bool) {
        self.callback_saved(cx, call_id, saved);
    }

    /// A DTMF digit from `side` (0: the caller) of call `a`: for a
    /// voicemail message being left, the voicemail menu, a queue's
    /// call-back offer, or a connected call's record code.
    fn digit(&mut self, cx: &mut Cx<'_>, a: &CallId, side: usize, d: char) {
        if side == 0 && (self.deposit_digit(a, d) || self.menu_digit(cx, a, d)) {
            return;
        }
        if side == 0 && !self.is_connected(a) {
            return self.queue_digit(cx, a, d);
        }
        self.record_digit(cx, a, side, d)
    }

    /// A media session of call `call_id` saw no packet for the inactivity period.
    fn on_media_idle(&mut self, cx: &mut Cx<'_>, call_id: &CallId) {
        if self.bridges.contains_key(call_id) {
            return self.bridge_idle(cx, call_id);
        }
        if self.originations.contains_key(call_id) {
            return self.end_origination(
                cx,
                call_id,
                None,
                Disposition::Answered,
                HangupBy::System,
            );
        }
        if self.local.contains_key(call_id) {
            tracing::info!(%call_id, "no RTP: hanging up a dead call");
            self.hang_up_local(cx, call_id, HangupBy::System);
        }
    }

    /// Presence changed (or changes were missed): this shard's waiting queue
    /// callers look for an agent again.
    pub fn on_presence(&mut self, cx: &mut Cx<'_>) {
        for a in cx.env.routing.waiting_on(cx.shard) {
            self.route_queue_call(cx, &a);
        }
    }

    /// Calls in progress on this shard (local, bridged, originated), and
    /// voicemail messages of ended calls still being saved.
    pub fn count(&self) -> usize {
        self.local.len()
            + self.bridges.len()
            + self.originations.len()
            + self.deposits.len()
            + self.recordings_pending()
    }

    /// A new call is live: counted, its CDR started.
    fn started(cx: &Cx<'_>) {
        cx.env.stats.live_calls.fetch_add(1, Ordering::Relaxed);
        cx.env.stats.calls_started.fetch_add(1, Ordering::Relaxed);
    }

    fn ended(cx: &Cx<'_>) {
        cx.env.stats.live_calls.fetch_sub(1, Ordering::Relaxed);
    }

    /// Refuses a new call before anything was set up for it.
    fn refuse_new(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        remote: Remote,
        call_id: &CallId,
        r: Refusal,
    ) {
        let callee = req
            .request_uri()
            .and_then(|u| u.user)
            .map(lossy)
            .unwrap_or_default();
        let cdr = new_cdr(cx, call_id, &party_number(req.from_header()), &callee);
        refuse(cx, tx, req, remote, None, cdr, r);
    }
}

/// Gives back the channel an inbound call held on its trunk.
fn release_trunk(cx: &Cx<'_>, trunk: Option<crate::outside::TrunkId>) {
    if let Some(t) = trunk {
        cx.env.outside.line(t).release();
    }
}

/// Refuses a call that never connected (with our To tag `tag`, or a fresh
/// one): the final answer waits until its CDR is durable; a 422 states our
/// Min-SE (RFC 4028).
fn refuse(
    cx: &mut Cx<'_>,
    tx: TxId,
    req: &Message,
    remote: Remote,
    tag: Option<&str>,
    cdr: Cdr,
    r: Refusal,
) {
    let tag = tag.map_or_else(crate::sip::message::build::random_tag, str::to_string);
    let mut b = Builder::response(req, remote.addr, r.code, r.reason, Some(tag.as_bytes()));
    b.header("Server", crate::sip::message::build::PRODUCT);
    if r.code == StatusCode::SESSION_INTERVAL_TOO_SMALL.0 {
        b.header(
            "Min-SE",
            cx.env.calls.min_session_expires.as_secs().to_string(),
        );
    }
    write_cdr(cx, cdr, r.disposition, r.by);
    cx.respond_durable(tx, b.finish());
}

/// A CDR for a call starting now (finished by [`write_cdr`]).
fn new_cdr(cx: &mut Cx<'_>, call_id: &CallId, caller: &str, callee: &str) -> Cdr {
    Cdr {
        id: cx.next_id(),
        call_id: call_id.to_string(),
        caller: caller.to_string(),
        callee: callee.to_string(),
        start_ms: cx.wall.0,
        answer_ms: None,
        end_ms: 0,
        disposition: Disposition::Failed,
        hangup_by: HangupBy::System,
    }
}

/// Stores a finished call's CDR; its final answer is sent with
/// `respond_durable` so that it waits for the flush.
fn write_cdr(cx: &mut Cx<'_>, mut cdr: Cdr, disposition: Disposition, by: HangupBy) {
    cdr.end_ms = cx.wall.0;
    cdr.disposition = disposition;
    cdr.hangup_by = by;
    cx.store(Write::put(cdr));
}

/// RFC 4028: a Session-Expires below our Min-SE (or below the request's own
/// Min-SE) is refused with 422; an unreadable one with 400.
fn check_session_timer(cx: &Cx<'_>, req: &Message) -> Result<(), Refusal> {
    let Some(v) = session_expires_value(req) else {
        return Ok(());
    };
    let Some(secs) = leading_u32(v) else {
        return Err(Refusal::failed(StatusCode::BAD_REQUEST));
    };
    let floor = cx.env.calls.min_session_expires.as_secs();
    if u64::from(secs) < floor {
        return Err(Refusal::failed(StatusCode::SESSION_INTERVAL_TOO_SMALL));
    }
    Ok(())
}

/// Answers a SIP INFO (200) and returns the DTMF digit it carries, if any
/// (`application/dtmf-relay` or `application/dtmf`).
fn info_digit(cx: &mut Cx<'_>, tx: TxId, req: &Message, remote: Remote) -> Option<char> {
    cx.reply(tx, req, remote, StatusCode::OK);
    dtmf_info(req)
}

/// The DTMF digit a SIP INFO carries, if any.
fn dtmf_info(req: &Message) -> Option<char> {
    if req.method() != Some(&crate::sip::message::Method::Info) {
        return None;
    }
    let ct = req.value(HeaderName::ContentType).unwrap_or_default();
    crate::media::dtmf::info_digit(ct, req.body())
}

/// The Session-Expires header (or its compact form `x`) of a message.
fn session_expires_value(m: &Message) -> Option<&[u8]> {
    m.other_values("Session-Expires")
        .next()
        .or_else(|| m.other_values("x").next())
}

/// The number before any `;params` of a header value.
fn leading_u32(v: &[u8]) -> Option<u32> {
    crate::sip::message::headers::parse_u32(v.split(|c| *c == b';').next()?)
}

/// The payload type of an SDP answer of ours (its first format; PCMU if unreadable).
fn answered_pt(answer: &[u8]) -> u8 {
    sdp::parse(answer)
        .ok()
        .and_then(|s| s.media.first().and_then(|m| m.formats.first().cloned()))
        .and_then(|f| f.parse().ok())
        .unwrap_or(0)
}

/// The telephone-event payload type of our SDP answer, if it kept one.
fn answered_event_pt(answer: &[u8]) -> Option<u8> {
    let s = sdp::parse(answer).ok()?;
    let m = s.media.first()?;
    m.rtpmaps
        .iter()
        .find(|(_, e)| e.to_ascii_lowercase().starts_with("telephone-event/"))
        .and_then(|(pt, _)| pt.parse().ok())
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The user part of a name-addr header's URI (the number), or "anonymous".
fn party_number(v: Option<NameAddr<'_>>) -> String {
    v.and_then(|n| Uri::parse(n.uri))
        .and_then(|u| u.user)
        .map_or_else(|| "anonymous".to_string(), lossy)
}

/// A queue caller's number (the caller index key): From's user part, or
/// "anonymous" when withheld (no number, or `Privacy: id`).
pub(super) fn caller_number(req: &Message) -> String {
    if crate::outside::privacy_asked(req) {
        return "anonymous".into();
    }
    party_number(req.from_header())
}

/// For CDRs of bridged calls: the caller's number from an authenticated user or From.
fn caller_of(req: &Message, authenticated: Option<String>) -> String {
    authenticated.unwrap_or_else(|| party_number(req.from_header()))
}

/// Whether an in-dialog request's To tag is `tag`.
fn to_tag_is(req: &Message, tag: &str) -> bool {
    req.to_header()
        .and_then(|t| t.tag())
        .is_some_and(|t| t == tag.as_bytes())
}

/// `ext`'s new dialog (trying) in the presence map, if `ext` is an extension
/// (callers from outside are not).
fn start_party(
    presence: &Presence,
    ext: &str,
    call_id: &CallId,
    direction: Direction,
    peer: &str,
    at: UnixMillis,
) -> Option<Party> {
    start_party_tagged(presence, ext, (call_id, None), direction, peer, at)
}

/// [`start_party`] for a dialog phones may name in a Replaces header: the
/// caller's leg with its `tags` (a call ringing at an extension, which a
/// colleague may pick up).
fn start_party_tagged(
    presence: &Presence,
    ext: &str,
    (call_id, tags): (&CallId, Option<&std::sync::Arc<DialogTags>>),
    direction: Direction,
    peer: &str,
    at: UnixMillis,
) -> Option<Party> {
    if !presence.contains(ext) {
        return None;
    }
    let id = presence
        .dialog_started(ext, (&call_id.to_string(), tags), direction, peer, at)
        .ok()?;
    Some((ext.to_string(), id))
}

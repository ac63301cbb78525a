//! Calls between extensions: a back-to-back user agent. The caller's dialog (leg A)
//! and one dialog per contact of the callee (legs B, forked in parallel, each with
//! its own Call-ID, tags, CSeq and Via) are separate; media is anchored in a relay.
//! The first 2xx wins and the other branches are cancelled; provisional answers
//! (with early-media SDP) are relayed; final failures are mapped (404, 480, 486,
//! 487, 603); BYE from either side ends both; re-INVITE, UPDATE and INFO are relayed
//! to the other leg with its own CSeq and tags. A call to a queue is a bridge too,
//! whose B legs are the ACD's offers to agents (see `queue`).

use super::cdr::{Cdr, Disposition, HangupBy};
use super::{
    lossy, new_cdr, to_tag_is, write_cdr, Calls, Cx, Party, Pending, Refusal, Side, Timer, ALLOW,
};
use crate::media::{Peer, RelayControl};
use crate::presence::{DialogState, Direction as Role, Presence};
use crate::registrar::Binding;
use crate::sip::message::{build::random_tag, parse, Builder, HeaderName, Message, Method};
use crate::sip::sdp::{self, Direction, Origin};
use crate::sip::transaction::{reply_remote, TxId};
use crate::sip::{CallId, Dialog, Remote, StatusCode};
use crate::tu::ReqId;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One forked branch toward a contact of the callee.
#[derive(Debug)]
pub(super) struct Branch {
    pub id: ReqId,
    /// This leg's own Call-ID.
    pub call_id: CallId,
    /// Our INVITE (a CANCEL copies its Via, From, To, Call-ID and CSeq number).
    pub invite: Message,
    pub remote: Remote,
    /// The final status, once there is one (a timeout counts as 408).
    pub final_code: Option<u16>,
    /// Set when this branch answered with 2xx.
    pub dialog: Option<Dialog>,
    /// The extension whose phone this leg rings (`None`: a provider, or a
    /// phone that called in).
    pub ext: Option<String>,
}

impl Branch {
    /// A leg that called us and that we answered (its INVITE is the phone's):
    /// a consultation's caller joined by a transfer, a phone that picked the
    /// call up. Not a request of ours: nothing is pending under its id.
    pub fn called_in(invite: Message, dialog: Dialog) -> Branch {
        Branch {
            id: ReqId(u64::MAX),
            call_id: dialog.call_id.clone(),
            invite,
            remote: dialog.remote,
            final_code: Some(200),
            dialog: Some(dialog),
            ext: None,
        }
    }
}

/// The caller's side of a call, as it arrived.
#[derive(Debug)]
pub(super) struct ALeg {
    pub tx: TxId,
    /// A's INVITE (responses to it copy its headers).
    pub invite: Message,
    pub remote: Remote,
    /// Our To tag toward A.
    pub tag: String,
}

impl ALeg {
    /// The caller's side of a new call, with a fresh To tag.
    pub fn new(tx: TxId, invite: &Message, remote: Remote) -> ALeg {
        ALeg {
            tx,
            invite: invite.clone(),
            remote,
            tag: random_tag(),
        }
    }

    /// This dialog's tags: ours (the To tag we answer with) and the caller's.
    pub fn tags(&self) -> Arc<crate::presence::DialogTags> {
        let from = self.invite.from_header().and_then(|f| f.tag());
        Arc::new(crate::presence::DialogTags {
            local: self.tag.clone(),
            remote: from.map(super::lossy).unwrap_or_default(),
        })
    }
}

/// Where leg A stands; each phase holds its own deadlines.
#[derive(Debug)]
pub(super) enum APhase {
    /// Ringing the callee's contacts until `ring_deadline`.
    Calling { ring_deadline: Instant },
    /// Our 200 is sent, until A's ACK.
    Answered(super::Answering),
    /// A's ACK came.
    Confirmed,
}

/// A call between two extensions (or a caller and a queue).
#[derive(Debug)]
pub(super) struct Bridge {
    pub phase: APhase,
    pub a: ALeg,
    /// Leg A's dialog (from our side), built when we answer.
    pub a_dialog: Option<Dialog>,
    pub branches: Vec<Branch>,
    pub answered: Option<usize>,
    pub relay: Box<dyn RelayControl>,
    pub cdr: Cdr,
    /// The negotiated session interval (RFC 4028), and when the session expires
    /// unless a re-INVITE or UPDATE refreshes it.
    pub session: Option<(Duration, Instant)>,
    /// The caller's and the callee's dialogs in the presence map (extensions only;
    /// for a queue call the callee is the agent being offered or talking).
    pub caller_party: Option<Party>,
    pub callee_party: Option<Party>,
    /// A ring group's other members whose phones ring at once, each showing
    /// the call (BLF, pickup); the one who answers becomes `callee_party`.
    pub also_ringing: Vec<Party>,
    /// Set for a call to a queue (the ACD state of the call).
    pub queue: Option<super::queue::Queued>,
    /// The trunk an inbound call came in on (holding one of its channels).
    pub trunk: Option<crate::outside::TrunkId>,
    /// Set for an outside call (its trunks, permit and tries).
    pub outbound: Option<super::outbound::Outbound>,
    /// What rings, and where the call goes when it does not answer.
    pub hunt: super::hunt::Hunt,
    /// The SDP of the B leg that answered (offered to a transfer's target
    /// when that party is transferred).
    pub b_sdp: Bytes,
    /// A transfer under way (see `transfer`).
    pub transfer: Option<super::transfer::Transfer>,
    /// Legs a transfer handed here from another shard (their messages are
    /// routed here until the call ends).
    pub moved_in: Vec<CallId>,
    /// Our 200 to the phone that picked the call up (see `pickup`), until
    /// its ACK.
    pub picker: Option<super::Answering>,
    /// The caller is leaving a voicemail message (see `voicemail`).
    pub deposit: Option<super::voicemail::Deposit>,
    /// The caller is in their voicemail menu (see `menu`).
    pub menu: Option<super::menu::Menu>,
    /// Recording on demand (see `recording`).
    pub on_demand: super::recording::OnDemand,
}

impl Bridge {
    /// The extensions whose phones show this call ringing (one, or a ring
    /// group's members).
    pub fn ringing_parties(&self) -> impl Iterator<Item = &Party> {
        self.callee_party.iter().chain(&self.also_ringing)
    }

    /// The ringing parties' presence dialogs end, except `member`'s (who
    /// answered, or picked the call up), which is the callee's from now on.
    pub fn stop_ringing_except(
        &mut self,
        presence: &Presence,
        member: Option<&str>,
        at: crate::clock::UnixMillis,
    ) {
        if self.also_ringing.is_empty() {
            return;
        }
        let ringing: Vec<Party> = self
            .callee_party
            .take()
            .into_iter()
            .chain(self.also_ringing.drain(..))
            .collect();
        for (ext, id) in ringing {
            if member == Some(ext.as_str()) && self.callee_party.is_none() {
                self.callee_party = Some((ext, id));
            } else {
                let _ = presence.dialog_ended(&ext, id, None, at);
            }
        }
    }

    /// A new call from `a`, ringing until the ring timeout; nothing else yet.
    pub fn new(cx: &Cx<'_>, a: ALeg, relay: Box<dyn RelayControl>, cdr: Cdr) -> Bridge {
        Bridge {
            phase: APhase::Calling {
                ring_deadline: cx.now + cx.env.calls.ring_timeout,
            },
            a,
            a_dialog: None,
            branches: Vec::new(),
            answered: None,
            relay,
            cdr,
            session: None,
            caller_party: None,
            callee_party: None,
            also_ringing: Vec::new(),
            queue: None,
            trunk: None,
            outbound: None,
            hunt: super::hunt::Hunt::default(),
            b_sdp: Bytes::new(),
            transfer: None,
            moved_in: Vec::new(),
            picker: None,
            deposit: None,
            menu: None,
            on_demand: Default::default(),
        }
    }

    /// When the bridge's timer is due: its phase's deadline, or the next 2xx
    /// to a phone that picked the call up.
    fn due(&self) -> Option<Instant> {
        let picker = self.picker.as_ref().map(super::Answering::due);
        match (self.phase_due(), picker) {
            (Some(a), Some(p)) => Some(a.min(p)),
            (a, p) => a.or(p),
        }
    }

    /// The deadline of leg A's phase.
    fn phase_due(&self) -> Option<Instant> {
        match &self.phase {
            APhase::Calling { ring_deadline } => {
                let silent = self.outbound.as_ref().and_then(|o| o.silent_until);
                Some(silent.map_or(*ring_deadline, |s| s.min(*ring_deadline)))
            }
            APhase::Answered(ok) => Some(ok.due()),
            APhase::Confirmed => self.session.map(|(_, at)| at),
        }
    }

    /// The dialog toward the other side of `side`.
    fn other_dialog(&mut self, side: Side) -> Option<&mut Dialog> {
        match side {
            Side::A => self.answered.and_then(|i| self.branches[i].dialog.as_mut()),
            Side::B(_) => self.a_dialog.as_mut(),
        }
    }

    /// The trunk whose provider is on `side` of the call, if any.
    pub(super) fn trunk_facing(&self, side: Side) -> Option<crate::outside::TrunkId> {
        match side {
            Side::A => self.trunk,
            Side::B(_) => self
                .outbound
                .as_ref()
                .and_then(|o| o.current.map(|(t, _)| t)),
        }
    }

    /// See [`next_leg`].
    pub(super) fn next_leg(&self) -> (&[u8], usize) {
        next_leg(self.transfer.as_ref(), &self.a)
    }

    /// Where `side`'s signalling comes from.
    pub(super) fn remote_of(&self, side: Side) -> Remote {
        match side {
            Side::A => self.a_dialog.as_ref().map_or(self.a.remote, |d| d.remote),
            Side::B(i) => self.branches.get(i).map_or(self.a.remote, |b| b.remote),
        }
    }
}

/// The SDP offered to what rings next, and the relay side it takes: the
/// caller's offer for side B; in a transfer, the transferee's offer for the
/// transferor's side.
pub(super) fn next_leg<'a>(
    transfer: Option<&'a super::transfer::Transfer>,
    a: &'a ALeg,
) -> (&'a [u8], usize) {
    match transfer {
        Some(t) => (&t.offer, t.by.relay_index()),
        None => (a.invite.body(), 1),
    }
}

/// Who a branch INVITE is from and to.
pub(super) struct BranchSpec<'a> {
    pub caller: &'a str,
    pub display: Option<&'a str>,
    pub callee: &'a str,
    pub max_forwards: u32,
    /// The caller's INVITE, whose session-timer headers are copied (RFC 4028).
    pub timers_from: Option<&'a Message>,
    /// Who referred the caller here (a transfer, RFC 3892).
    pub referred_by: Option<&'a str>,
}

/// Who calls whom, and where the hunt starts.
#[derive(Debug)]
pub(super) struct CallTarget {
    pub caller: String,
    /// The caller's name, if known (else From's display name).
    pub display: Option<String>,
    /// What the caller dialled (the CDR's callee).
    pub dialled: String,
    pub start: super::hunt::Next,
    /// The trunk an inbound call came in on (its channel is held).
    pub trunk: Option<crate::outside::TrunkId>,
}

/// The SDP direction of the first media line, as "does this phone receive".
fn receives(s: &sdp::Session) -> bool {
    s.media
        .first()
        .map(|m| matches!(m.direction, Direction::SendRecv | Direction::RecvOnly))
        .unwrap_or(true)
        && !s
            .media
            .first()
            .and_then(|m| m.addr)
            .is_some_and(|a| a.is_unspecified())
}

/// The G.711 payload type (0 or 8) an SDP lists first on its audio line, if any:
/// what the PBX can play to that phone.
fn g711_pt(s: &sdp::Session) -> Option<u8> {
    let m = s.media.iter().find(|m| m.kind == "audio" && m.port != 0)?;
    m.formats
        .iter()
        .filter_map(|f| f.parse::<u8>().ok())
        .find(|pt| *pt == 0 || *pt == 8)
}

/// Media peer for the relay from a phone's SDP and SIP address.
pub(super) fn peer_of(s: &sdp::Session, sip: SocketAddr) -> Peer {
    let first = s.media.iter().find(|m| m.port != 0);
    Peer {
        rtp: first.and_then(|m| m.addr.map(|a| SocketAddr::new(a, m.port))),
        sip_ip: Some(sip.ip()),
        receives: receives(s),
    }
}

/// Ports for rewriting: the relay port for the first audio line, 0 (refused) for
/// any other stream (the relay carries one audio stream).
pub(super) fn relay_ports(s: &sdp::Session, port: u16) -> Vec<u16> {
    let mut given = false;
    s.media
        .iter()
        .map(|m| {
            if !given && m.kind == "audio" && m.port != 0 {
                given = true;
                port
            } else {
                0
            }
        })
        .collect()
}

/// `body` with its media pointed at our relay `port`, as seen from `toward`.
pub(super) fn rewrite_for(cx: &Cx<'_>, body: &[u8], toward: Remote, port: u16) -> Option<Bytes> {
    let parsed = sdp::parse(body).ok()?;
    sdp::rewrite(body, cx.media_ip(toward), &relay_ports(&parsed, port)).ok()
}

/// A CANCEL for one of our INVITEs (RFC 3261 §9.1: its Via, From, To, Call-ID
/// and CSeq number).
pub(super) fn cancel(cx: &mut Cx<'_>, invite: &Message, remote: Remote) {
    let uri = invite.request_uri_bytes().unwrap_or_default();
    let mut b = Builder::request(&Method::Cancel, uri);
    for (name, text) in [
        (HeaderName::Via, "Via"),
        (HeaderName::From, "From"),
        (HeaderName::To, "To"),
        (HeaderName::CallId, "Call-ID"),
    ] {
        if let Some(v) = invite.value(name) {
            b.header(text, v);
        }
    }
    let seq = invite.cseq().map_or(1, |c| c.seq);
    b.header("CSeq", format!("{seq} CANCEL"))
        .header("Max-Forwards", "70");
    cx.send(b.finish(), remote);
}

/// The ACK for a 2xx of `dialog` (its CSeq number `seq`), outside any transaction.
pub(super) fn ack(cx: &mut Cx<'_>, dialog: &Dialog, seq: u32) {
    let bytes = dialog.request(&Method::Ack, seq, &cx.hostport(dialog.remote), None);
    cx.transmit(dialog.remote, bytes);
}

/// A BYE on `dialog`.
pub(super) fn bye(cx: &mut Cx<'_>, dialog: &mut Dialog) {
    let bytes = dialog.next_request(&Method::Bye, &cx.hostport(dialog.remote), None);
    cx.send(bytes, dialog.remote);
}

impl Calls {
    /// What a bridge (or a queue call) needs before its B legs go out: the
    /// caller's offer and a relay; or why the call is refused.
    pub(super) fn prepare_bridge(
        cx: &Cx<'_>,
        req: &Message,
        remote: Remote,
        a: &CallId,
    ) -> Result<(sdp::Session, Box<dyn RelayControl>), Refusal> {
        let offer = sdp::parse(req.body()).map_err(|e| {
            tracing::info!(%remote, "INVITE refused, SDP: {e}");
            Refusal::failed(StatusCode::NOT_ACCEPTABLE_HERE)
        })?;
        let media = cx.env.media.as_ref().ok_or(Refusal::NO_MEDIA)?;
        let relay = media.relay(a).map_err(|_| Refusal::NO_MEDIA)?;
        relay.set_peer(0, peer_of(&offer, remote.addr));
        Ok((offer, relay))
    }

    /// A new INVITE from `caller` to an extension or a group: the hunt
    /// starts at `target.start` (see `hunt`).
    pub(super) fn invite_extension(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        remote: Remote,
        a: CallId,
        target: CallTarget,
    ) {
        let CallTarget {
            caller,
            display,
            dialled,
            start,
            trunk,
        } = target;
        let a_leg = ALeg::new(tx, req, remote);
        let cdr = new_cdr(cx, &a, &caller, &dialled);
        let relay = match Self::prepare_bridge(cx, req, remote, &a) {
            Ok((_, relay)) => relay,
            Err(refusal) => {
                super::release_trunk(cx, trunk);
                return refuse(cx, &a_leg, cdr, refusal);
            }
        };
        let display = display.or_else(|| req.from_header().and_then(|f| f.display).map(lossy));
        let caller_party = super::start_party(
            &cx.env.presence,
            &caller,
            &a,
            Role::Initiator,
            &dialled,
            cx.wall,
        );
        let mut bridge = Bridge {
            caller_party,
            trunk,
            ..Bridge::new(cx, a_leg, relay, cdr)
        };
        bridge.hunt.display = display;
        self.add_bridge(cx, a.clone(), bridge);
        self.hunt(cx, &a, Some(start), super::hunt::unavailable());
    }

    /// Sends one INVITE per binding (the fork), numbering the branches from
    /// `first`; `body` gives the SDP offer toward each contact (none: skipped).
    pub(super) fn send_branches(
        &mut self,
        cx: &mut Cx<'_>,
        a: &CallId,
        spec: &BranchSpec<'_>,
        bindings: Vec<Binding>,
        first: usize,
        body: impl Fn(&Cx<'_>, Remote) -> Option<Bytes>,
    ) -> Vec<Branch> {
        let domain = cx.env.domain.as_str();
        let caller = spec.caller;
        let mut branches = Vec::new();
        for binding in bindings {
            let target = binding.remote();
            let Some(body) = body(cx, target) else {
                continue;
            };
            let b_call_id = cx.new_call_id();
            let from = match spec.display {
                Some(d) => format!("{d} <sip:{caller}@{domain}>;tag={}", random_tag()),
                None => format!("<sip:{caller}@{domain}>;tag={}", random_tag()),
            };
            let hostport = cx.hostport(target);
            let mut b = Builder::request(&Method::Invite, binding.contact.as_bytes());
            b.header("Via", cx.via(target))
                .header("Max-Forwards", spec.max_forwards.to_string())
                .header("From", from)
                .header("To", format!("<sip:{}@{domain}>", spec.callee))
                .header("Call-ID", &b_call_id)
                .header("CSeq", "1 INVITE")
                .header(
                    "Contact",
                    format!(
                        "<sip:{caller}@{hostport};transport={}>",
                        target.transport.as_str().to_ascii_lowercase()
                    ),
                )
                .header("Allow", ALLOW)
                .header("User-Agent", crate::sip::message::build::PRODUCT);
            if let Some(req) = spec.timers_from {
                copy_session_timer(&mut b, req);
            }
            if let Some(by) = spec.referred_by {
                b.header("Referred-By", by);
            }
            let bytes = b.finish_with_body(Some("application/sdp"), &body);
            let Ok(invite) = parse(bytes, &Default::default()) else {
                continue;
            };
            let id = cx.send_parsed(invite.clone(), target);
            let idx = first + branches.len();
            self.pending.insert(id, Pending::Branch(a.clone(), idx));
            self.legs
                .insert(b_call_id.clone(), (a.clone(), Side::B(idx)));
            branches.push(Branch {
                id,
                call_id: b_call_id,
                invite,
                remote: target,
                final_code: None,
                dialog: None,
                ext: Some(binding.aor),
            });
        }
        branches
    }

    /// An answer on branch `idx` of call `a` (`code` 408 for a timeout).
    pub(super) fn branch_response(
        &mut self,
        cx: &mut Cx<'_>,
        a: &CallId,
        idx: usize,
        code: u16,
        resp: Option<Message>,
    ) {
        let current = |b: &Bridge| idx >= b.hunt.first;
        if self
            .bridges
            .get(a)
            .is_some_and(|b| b.outbound.is_some() && current(b))
            && self.outbound_response(cx, a, idx, code, resp.as_ref())
        {
            return;
        }
        let Some(bridge) = self.bridges.get_mut(a) else {
            return; // the call is gone (its branches were cancelled)
        };
        match code {
            100 => {}
            101..=199 if !current(bridge) => {} // a step already over
            101..=199 => {
                let presence = &cx.env.presence;
                for (ext, id) in bridge.ringing_parties() {
                    let _ = presence.dialog_state(ext, *id, DialogState::Early, cx.wall);
                }
                if bridge.transfer.is_some() {
                    return self.transfer_ringing(cx, a);
                }
                if bridge.queue.is_some() {
                    return; // the caller hears music, not the agent's phone
                }
                if let Some((ext, id)) = &bridge.caller_party {
                    let _ = presence.dialog_state(ext, *id, DialogState::Early, cx.wall);
                }
                if !matches!(bridge.phase, APhase::Calling { .. }) {
                    return;
                }
                let early = resp.as_ref().filter(|r| !r.body().is_empty());
                if let Some(s) = early.and_then(|r| sdp::parse(r.body()).ok()) {
                    bridge
                        .relay
                        .set_peer(1, peer_of(&s, bridge.branches[idx].remote.addr));
                }
                let reason = if code == 180 {
                    StatusCode::RINGING.reason()
                } else {
                    StatusCode::SESSION_PROGRESS.reason()
                };
                let a_leg = &bridge.a;
                let mut b = Builder::response(
                    &a_leg.invite,
                    a_leg.remote.addr,
                    code,
                    reason,
                    Some(a_leg.tag.as_bytes()),
                );
                b.header("Contact", format!("<sip:{}>", cx.hostport(a_leg.remote)));
                let body = early
                    .and_then(|r| rewrite_for(cx, r.body(), a_leg.remote, bridge.relay.ports()[0]));
                let bytes = match body {
                    Some(body) => b.finish_with_body(Some("application/sdp"), &body),
                    None => b.finish(),
                };
                cx.respond(a_leg.tx, bytes);
            }
            200..=299 => {
                let Some(r) = resp else { return };
                self.branch_answered(cx, a, idx, &r);
                self.outbound_answered(a, idx);
            }
            _ => {
                bridge.branches[idx].final_code = Some(code);
                if let Some(q) = &bridge.queue {
                    // An agent who declines or fails is skipped for this call.
                    if q.offer_over(&bridge.branches, idx) {
                        self.offer_failed(cx, a);
                    }
                    return;
                }
                let calling = matches!(bridge.phase, APhase::Calling { .. });
                let step = &bridge.branches[bridge.hunt.first.min(idx)..];
                if calling && current(bridge) && step.iter().all(|b| b.final_code.is_some()) {
                    let codes: Vec<u16> = step.iter().filter_map(|b| b.final_code).collect();
                    self.step_failed(cx, a, &codes);
                }
            }
        }
    }

    fn branch_answered(&mut self, cx: &mut Cx<'_>, a: &CallId, idx: usize, r: &Message) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let branch = &mut bridge.branches[idx];
        let dialog = Dialog::from_uac(&branch.invite, r, branch.remote);
        // ACK every 2xx (retransmissions too) on its own dialog.
        if let Some(d) = &dialog {
            ack(cx, d, 1);
        }
        if bridge.answered == Some(idx) || branch.dialog.is_some() {
            return; // a retransmitted 2xx: acknowledged again above
        }
        let stale_offer = bridge.queue.as_ref().is_some_and(|q| !q.is_offered(idx));
        let over = bridge.queue.is_none()
            && (!matches!(bridge.phase, APhase::Calling { .. }) || idx < bridge.hunt.first);
        let taken = bridge.answered.is_some() && bridge.transfer.is_none();
        if taken || stale_offer || over {
            // Another branch won: end this one (its ACK went out above).
            branch.final_code = Some(200);
            if let Some(mut d) = dialog {
                bye(cx, &mut d);
            }
            return;
        }
        if bridge.transfer.is_some() {
            return self.transfer_answered(cx, a, idx, r, dialog);
        }
        bridge.b_sdp = Bytes::copy_from_slice(r.body());
        if bridge.queue.is_some() {
            return self.queue_answered(cx, a, idx, r, dialog);
        }
        bridge.answered = Some(idx);
        branch.dialog = dialog;
        branch.final_code = Some(200);
        if let Ok(s) = sdp::parse(r.body()) {
            bridge.relay.set_peer(1, peer_of(&s, branch.remote.addr));
        }
        let member = branch.ext.clone();
        bridge.stop_ringing_except(&cx.env.presence, member.as_deref(), cx.wall);
        cancel_ringing(cx, bridge, 0, Some(idx));
        // Answer A with B's SDP pointed at the relay.
        let body = rewrite_for(cx, r.body(), bridge.a.remote, bridge.relay.ports()[0]);
        let callee = bridge.cdr.callee.clone();
        answer_caller(cx, bridge, &callee, body.as_deref(), Some(r));
        parties_step(&cx.env.presence, bridge, DialogState::Confirmed, cx.wall);
        bridge.session = session_interval(r).map(|d| (d, cx.now + d));
        super::recording::listen_for_code(cx, bridge);
        self.arm_bridge(cx, a);
    }

    /// A final answer on a branch whose call is gone: a 2xx is acknowledged and
    /// its dialog ended at once.
    pub(super) fn orphan_answered(
        &mut self,
        cx: &mut Cx<'_>,
        invite: &Message,
        r: &Message,
        remote: Remote,
    ) {
        if !r.status().is_some_and(|c| (200..300).contains(&c)) {
            return;
        }
        let Some(mut d) = Dialog::from_uac(invite, r, remote) else {
            return;
        };
        ack(cx, &d, d.cseq);
        bye(cx, &mut d);
    }

    /// Ends a call that never connected: final answer to A, branches cancelled.
    pub(super) fn fail_call(&mut self, cx: &mut Cx<'_>, a: &CallId, r: Refusal) {
        if self.bridges.get(a).is_some_and(|b| b.transfer.is_some()) {
            return self.transfer_failed(cx, a, r);
        }
        let Some(bridge) = self.remove_bridge(cx, a) else {
            return;
        };
        parties_end(&cx.env.presence, &bridge, cx.wall);
        cancel_ringing(cx, &bridge, 0, None);
        refuse(cx, &bridge.a, bridge.cdr, r);
    }

    /// A new call: counted live, reachable by leg A's Call-ID, its timer armed.
    pub(super) fn add_bridge(&mut self, cx: &mut Cx<'_>, a: CallId, bridge: Bridge) {
        Self::started(cx);
        self.legs.insert(a.clone(), (a.clone(), Side::A));
        self.bridges.insert(a.clone(), bridge);
        self.arm_bridge(cx, &a);
    }

    /// Arms call `a`'s timer at its phase's next deadline.
    pub(super) fn arm_bridge(&self, cx: &mut Cx<'_>, a: &CallId) {
        if let Some(at) = self.bridges.get(a).and_then(Bridge::due) {
            cx.timer(at, Timer::Bridge(a.clone()));
        }
    }

    pub(super) fn remove_bridge(&mut self, cx: &mut Cx<'_>, a: &CallId) -> Option<Bridge> {
        let mut bridge = self.bridges.remove(a)?;
        if let Some(q) = &bridge.queue {
            q.leave_line(cx);
        }
        if let Some(out) = bridge.outbound.as_mut() {
            out.release(cx);
        }
        if let Some(t) = bridge.trunk {
            cx.env.outside.line(t).release();
        }
        for c in &bridge.moved_in {
            cx.env.moved.remove(c);
        }
        Self::ended(cx);
        // Only this call's own entries are removed (no scan of the shard's calls).
        // Branches still ringing may answer anyway (a CANCEL/2xx race): keep what
        // is needed to ACK and end them. A relayed request still in flight finds
        // no call when its answer comes, and its entry goes then.
        self.legs.remove(a);
        for b in &bridge.branches {
            self.legs.remove(&b.call_id);
            self.pending.remove(&b.id);
            if b.final_code.is_none() {
                self.orphans.insert(b.id, (b.invite.clone(), b.remote));
            }
        }
        Some(bridge)
    }

    /// A's CANCEL: 487 to A's INVITE, CANCEL to every branch.
    pub(super) fn cancel_bridge(&mut self, cx: &mut Cx<'_>, a: &CallId) {
        if let Some(APhase::Calling { .. }) = self.bridges.get(a).map(|b| &b.phase) {
            let r = Refusal {
                disposition: Disposition::Cancelled,
                by: HangupBy::Caller,
                ..Refusal::failed(StatusCode::REQUEST_TERMINATED)
            };
            self.fail_call(cx, a, r);
        }
    }

    /// The bridge timer: ring timeout while calling, 2xx retransmission after,
    /// then session expiry.
    pub(super) fn bridge_timer(&mut self, cx: &mut Cx<'_>, a: &CallId, at: Instant) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        if bridge.due() != Some(at) {
            return; // re-armed since
        }
        if let Some(p) = bridge.picker.as_mut().filter(|p| p.due() <= cx.now) {
            if !p.again(cx) {
                tracing::info!(call_id = %a, "no ACK from the phone that picked the call up; ending the call");
                return self.end_bridge(cx, a, None, HangupBy::System);
            }
            if bridge.phase_due().is_none_or(|d| d > cx.now) {
                return self.arm_bridge(cx, a);
            }
        }
        let silent = bridge.outbound.as_ref().and_then(|o| o.silent_until);
        match &mut bridge.phase {
            APhase::Calling { .. } if silent.is_some_and(|s| s <= cx.now) => {
                self.outbound_silent(cx, a)
            }
            APhase::Calling { .. } => self.step_timed_out(cx, a),
            APhase::Answered(ok) => {
                if ok.again(cx) {
                    return self.arm_bridge(cx, a);
                }
                tracing::info!(call_id = %a, "no ACK from the caller; ending the call");
                self.end_bridge(cx, a, None, HangupBy::System);
            }
            APhase::Confirmed => {
                tracing::info!(call_id = %a, "session not refreshed in time (RFC 4028); ending the call");
                self.end_bridge(cx, a, None, HangupBy::System);
            }
        }
    }

    /// A's ACK for our 2xx.
    pub(super) fn bridge_ack(&mut self, cx: &mut Cx<'_>, a: &CallId, req: &Message) {
        let Some(b) = self.bridges.get_mut(a) else {
            return;
        };
        if matches!(b.phase, APhase::Answered { .. }) && to_tag_is(req, &b.a.tag) {
            b.phase = APhase::Confirmed;
            self.arm_bridge(cx, a);
        }
    }

    /// Ends a connected call: BYE to every leg except `from` (which sent BYE), CDR.
    pub(super) fn end_bridge(
        &mut self,
        cx: &mut Cx<'_>,
        a: &CallId,
        from: Option<Side>,
        by: HangupBy,
    ) {
        let Some(mut bridge) = self.remove_bridge(cx, a) else {
            return;
        };
        Self::abandon_transfer(cx, &mut bridge);
        parties_end(&cx.env.presence, &bridge, cx.wall);
        self.forget_message(&bridge);
        if bridge.queue.is_some() && bridge.answered.is_none() {
            // The caller left the queue while an agent was being rung.
            cancel_ringing(cx, &bridge, 0, None);
        }
        if from != Some(Side::A) {
            let trunk = bridge.trunk_facing(Side::A);
            if let Some(d) = bridge.a_dialog.as_mut() {
                self.bye_toward(cx, d, trunk);
            }
        }
        if let Some(idx) = bridge.answered {
            if from != Some(Side::B(idx)) {
                let trunk = bridge.trunk_facing(Side::B(idx));
                if let Some(d) = bridge.branches[idx].dialog.as_mut() {
                    self.bye_toward(cx, d, trunk);
                }
            }
        }
        super::queue::count_end(cx, bridge.queue.as_ref(), by);
        let disposition = super::queue::disposition(&bridge);
        write_cdr(cx, bridge.cdr, disposition, by);
    }

    /// A BYE on `dialog`; toward a provider (`trunk`) it may be challenged,
    /// and is then sent again with the trunk's credentials.
    pub(super) fn bye_toward(
        &mut self,
        cx: &mut Cx<'_>,
        dialog: &mut Dialog,
        trunk: Option<crate::outside::TrunkId>,
    ) {
        let bytes = dialog.next_request(&Method::Bye, &cx.hostport(dialog.remote), None);
        let id = cx.send(bytes, dialog.remote);
        if let Some(trunk) = trunk {
            let dialog = dialog.clone();
            self.pending.insert(id, Pending::TrunkBye { trunk, dialog });
        }
    }

    /// Media saw nothing for the inactivity period.
    pub(super) fn bridge_idle(&mut self, cx: &mut Cx<'_>, a: &CallId) {
        match self.bridges.get(a).map(|b| &b.phase) {
            Some(APhase::Calling { .. }) | None => {}
            Some(_) => self.end_bridge(cx, a, None, HangupBy::System),
        }
    }

    /// A request inside one of the bridge's dialogs.
    pub(super) fn bridge_in_dialog(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        remote: Remote,
        a: &CallId,
        side: Side,
    ) {
        let valid = self.bridges.get(a).is_some_and(|bridge| match side {
            Side::A => bridge.a_dialog.as_ref().is_some_and(|d| ours(req, d)),
            Side::B(i) => {
                let transferor = bridge.transfer.as_ref().is_some_and(|t| t.by == side);
                (Some(i) == bridge.answered || transferor) && bridge.branches[i].dialog.is_some()
            }
        });
        if !valid {
            return cx.reply(tx, req, remote, StatusCode::CALL_DOES_NOT_EXIST);
        }
        let waiting = self
            .bridges
            .get(a)
            .is_some_and(|b| b.queue.is_some() && b.answered.is_none());
        let transferor = self
            .bridges
            .get(a)
            .and_then(|b| b.transfer.as_ref())
            .is_some_and(|t| t.by == side);
        let answered_here = self
            .bridges
            .get(a)
            .is_some_and(|b| b.deposit.is_some() || b.menu.is_some());
        match req.method() {
            Some(Method::Bye) if transferor => {
                let answer = cx.response(req, remote, StatusCode::OK).finish();
                self.transferor_left(cx, a, side);
                cx.respond_durable(tx, answer);
            }
            Some(Method::Refer) if !waiting => self.bridge_refer(cx, tx, req, remote, a, side),
            Some(Method::Refer) => cx.reply(tx, req, remote, StatusCode::REQUEST_PENDING),
            Some(Method::Bye) if side == Side::A && self.deposit_bye(cx, tx, req, remote, a) => {}
            Some(Method::Bye) => {
                let by = if side == Side::A {
                    HangupBy::Caller
                } else {
                    HangupBy::Callee
                };
                let answer = cx.response(req, remote, StatusCode::OK).finish();
                self.end_bridge(cx, a, Some(side), by);
                cx.respond_durable(tx, answer);
            }
            Some(Method::Info) if answered_here => {
                if let Some(d) = super::info_digit(cx, tx, req, remote) {
                    self.digit(cx, a, 0, d);
                }
            }
            Some(Method::Invite | Method::Update) if answered_here => {
                self.answer_here(cx, (tx, req, remote), a)
            }
            Some(Method::Invite | Method::Update | Method::Info) if waiting => {
                self.queue_in_dialog(cx, tx, req, remote, a)
            }
            Some(Method::Invite | Method::Update | Method::Info) => {
                if let Some(d) = super::dtmf_info(req) {
                    // Relayed too: the other party may be listening for digits.
                    self.record_digit(cx, a, usize::from(side != Side::A), d);
                }
                self.relay_request(cx, (tx, req, remote), a, side)
            }
            _ => cx.reply(tx, req, remote, StatusCode::OK),
        }
    }

    /// A re-INVITE or UPDATE from the caller of call `a`, which the PBX
    /// answered itself (voicemail: a message being left, the menu).
    fn answer_here(&mut self, cx: &mut Cx<'_>, request: (TxId, &Message, Remote), a: &CallId) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let origin = match (&mut bridge.deposit, &mut bridge.menu) {
            (Some(d), _) => &mut d.origin,
            (None, Some(m)) => &mut m.origin,
            (None, None) => return,
        };
        answer_again(cx, request, &*bridge.relay, origin);
    }

    /// Sends `req`'s equivalent on the other leg; its answer comes back to `tx`.
    fn relay_request(
        &mut self,
        cx: &mut Cx<'_>,
        (tx, req, remote): (TxId, &Message, Remote),
        a: &CallId,
        side: Side,
    ) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        // The requester's side of the relay (0: A) and the other side's.
        let (from, to) = if side == Side::A { (0, 1) } else { (1, 0) };
        if let Ok(s) = sdp::parse(req.body()) {
            // The requester's new media state (hold, resume, new address).
            bridge
                .relay
                .set_peer(from, peer_of(&s, bridge.remote_of(side).addr));
            // Music on hold: the requester stops listening, the other side hears
            // music until it resumes (and then hears it, as one RTP stream).
            if let Some(music) = &cx.env.hold_music {
                if receives(&s) {
                    bridge.relay.stop_playing();
                } else if let Some(pt) = g711_pt(&s) {
                    bridge.relay.play(to, Arc::clone(music), pt, true);
                }
            }
        }
        let trunk = bridge.trunk_facing(other(side, bridge.answered));
        if bridge.other_dialog(side).is_none() {
            // The other party left (a transferor that hung up): try later.
            return cx.reply(tx, req, remote, StatusCode::REQUEST_PENDING);
        }
        self.send_relayed(cx, tx, req, a, side, None, trunk);
    }

    /// Sends `req`'s equivalent on the other leg of `side` (with
    /// `authorization`, answering its provider's challenge).
    #[allow(clippy::too_many_arguments)]
    fn send_relayed(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        a: &CallId,
        side: Side,
        authorization: Option<(&str, &str)>,
        trunk: Option<crate::outside::TrunkId>,
    ) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let Some(method) = req.method().cloned() else {
            return;
        };
        let port = bridge.relay.ports()[if side == Side::A { 1 } else { 0 }];
        let Some(d) = bridge.other_dialog(side) else {
            return;
        };
        let target = d.remote;
        let body = rewrite_for(cx, req.body(), target, port);
        d.cseq += 1;
        let headers: Vec<(&str, &str)> = authorization.into_iter().collect();
        let body = body.as_deref().map(|b| ("application/sdp", b));
        let bytes = d.request_with(&method, d.cseq, &cx.hostport(target), &headers, body);
        let id = cx.send(bytes, target);
        self.pending.insert(
            id,
            Pending::Relayed {
                owner: a.clone(),
                tx,
                request: req.clone(),
                from: side,
                trunk,
            },
        );
    }

    /// A provider challenged a request relayed to it: sent again with the
    /// trunk's credentials (once; the next answer goes back to the requester).
    pub(super) fn relay_again(
        &mut self,
        cx: &mut Cx<'_>,
        a: &CallId,
        tx: TxId,
        req: &Message,
        side: Side,
        (trunk, challenge): (crate::outside::TrunkId, &Message),
    ) {
        let Some(d) = self.bridges.get_mut(a).and_then(|b| b.other_dialog(side)) else {
            return;
        };
        let method = req.method().map(|m| m.to_string()).unwrap_or_default();
        let Some((name, value)) =
            super::outbound::credentials(cx, trunk, challenge, &method, &d.target)
        else {
            return self.relayed_response(cx, a, tx, req, side, 403, None);
        };
        self.send_relayed(cx, tx, req, a, side, Some((name, &value)), None);
    }

    /// The other leg answered a relayed request: the answer goes back to the
    /// requester (a 2xx to a re-INVITE is ACKed toward the responder at once).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn relayed_response(
        &mut self,
        cx: &mut Cx<'_>,
        a: &CallId,
        server_tx: TxId,
        req: &Message,
        requester: Side,
        code: u16,
        resp: Option<Message>,
    ) {
        if code < 200 {
            return;
        }
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let remote = bridge.remote_of(requester);
        let (requester_port, responder_side) = if requester == Side::A {
            (bridge.relay.ports()[0], 1)
        } else {
            (bridge.relay.ports()[1], 0)
        };
        let success = (200..300).contains(&code);
        if let (Some(r), true) = (&resp, success && req.method() == Some(&Method::Invite)) {
            let responder = match requester {
                Side::A => bridge.answered.map(Side::B).unwrap_or(Side::A),
                Side::B(_) => Side::A,
            };
            let sip = bridge.remote_of(responder).addr;
            if let Some(d) = bridge.other_dialog(requester) {
                ack(cx, d, r.cseq().map_or(1, |c| c.seq));
            }
            if let Ok(s) = sdp::parse(r.body()) {
                bridge.relay.set_peer(responder_side, peer_of(&s, sip));
            }
        }
        if success && matches!(req.method(), Some(Method::Invite | Method::Update)) {
            // A successful re-INVITE/UPDATE refreshed the session (RFC 4028 §10).
            if let Some((interval, _)) = bridge.session {
                let interval = resp.as_ref().and_then(session_interval).unwrap_or(interval);
                bridge.session = Some((interval, cx.now + interval));
                if matches!(bridge.phase, APhase::Confirmed) {
                    self.arm_bridge(cx, a);
                }
            }
        }
        let Some(bridge) = self.bridges.get(a) else {
            return;
        };
        let reason = resp
            .as_ref()
            .and_then(|r| r.reason())
            .map(lossy)
            .unwrap_or_else(|| StatusCode::REQUEST_TIMEOUT.reason().into());
        let tag = (requester == Side::A).then_some(bridge.a.tag.as_bytes());
        let mut b = Builder::response(req, remote.addr, code, &reason, tag);
        b.header("Contact", format!("<sip:{}>", cx.hostport(remote)));
        let body = resp
            .as_ref()
            .filter(|r| !r.body().is_empty())
            .and_then(|r| rewrite_for(cx, r.body(), remote, requester_port));
        let bytes = match body {
            Some(body) => b.finish_with_body(Some("application/sdp"), &body),
            None => b.finish(),
        };
        cx.respond(server_tx, bytes);
    }
}

/// Whether an in-dialog request belongs to dialog `d` (its To tag is ours there).
fn ours(req: &Message, d: &Dialog) -> bool {
    let tag = req.to_header().and_then(|t| t.tag());
    d.local_tag().is_some_and(|ours| tag == Some(ours))
}

/// The other side of a bridge from `side` (B: the branch that answered).
fn other(side: Side, answered: Option<usize>) -> Side {
    match side {
        Side::A => Side::B(answered.unwrap_or(0)),
        Side::B(_) => Side::A,
    }
}

/// The answer to the caller when every branch failed.
pub(super) fn fork_result(codes: &[u16]) -> Refusal {
    let (status, disposition) = if let Some(c) = codes.iter().find(|c| **c >= 600) {
        // A global failure is passed on as it came.
        (StatusCode(*c), Disposition::Busy)
    } else if codes.contains(&486) {
        (StatusCode::BUSY_HERE, Disposition::Busy)
    } else if codes.iter().all(|c| *c == 488) {
        (StatusCode::NOT_ACCEPTABLE_HERE, Disposition::Failed)
    } else if codes.contains(&487) {
        (StatusCode::REQUEST_TERMINATED, Disposition::Cancelled)
    } else {
        (StatusCode::TEMPORARILY_UNAVAILABLE, Disposition::NoAnswer)
    };
    Refusal {
        code: status.0,
        reason: status.reason(),
        disposition,
        by: HangupBy::Callee,
    }
}

/// Refuses a call that never connected, answering A with our tag.
pub(super) fn refuse(cx: &mut Cx<'_>, a: &ALeg, cdr: Cdr, r: Refusal) {
    super::refuse(cx, a.tx, &a.invite, a.remote, Some(&a.tag), cdr, r);
}

/// Sends our 200 to A (as `user`, with `body`; retransmitted until A's ACK)
/// and records leg A's dialog.
pub(super) fn answer_caller(
    cx: &mut Cx<'_>,
    bridge: &mut Bridge,
    user: &str,
    body: Option<&[u8]>,
    timers_from: Option<&Message>,
) {
    let a = &bridge.a;
    let mut b = Builder::response(&a.invite, a.remote.addr, 200, "OK", Some(a.tag.as_bytes()));
    b.header(
        "Contact",
        format!(
            "<sip:{user}@{};transport={}>",
            cx.hostport(a.remote),
            a.remote.transport.as_str().to_ascii_lowercase()
        ),
    )
    .header("Allow", ALLOW)
    .header("Server", crate::sip::message::build::PRODUCT);
    if let Some(r) = timers_from {
        copy_session_timer(&mut b, r);
    }
    let ok = match body {
        Some(body) => b.finish_with_body(Some("application/sdp"), body),
        None => b.finish(),
    };
    cx.respond(a.tx, ok.clone());
    bridge.a_dialog = parse(ok.clone(), &Default::default())
        .ok()
        .and_then(|m| Dialog::from_uas(&a.invite, &m, a.remote));
    let to = reply_remote(&a.invite, a.remote);
    bridge.phase = APhase::Answered(super::Answering::new(cx, ok, to));
    bridge.cdr.answer_ms = Some(cx.wall.0);
}

/// Cancels the bridge's branches from `first` on that are still ringing, all
/// but `except` (the one that answered).
pub(super) fn cancel_ringing(
    cx: &mut Cx<'_>,
    bridge: &Bridge,
    first: usize,
    except: Option<usize>,
) {
    for (i, b) in bridge.branches.iter().enumerate().skip(first) {
        if Some(i) != except && b.final_code.is_none() {
            cancel(cx, &b.invite, b.remote);
        }
    }
}

/// Moves both parties' presence dialogs to `state`.
pub(super) fn parties_step(
    presence: &Presence,
    bridge: &Bridge,
    state: DialogState,
    at: crate::clock::UnixMillis,
) {
    for (ext, id) in [&bridge.caller_party, &bridge.callee_party]
        .into_iter()
        .flatten()
    {
        let _ = presence.dialog_state(ext, *id, state, at);
    }
}

/// Ends both parties' presence dialogs; the agent of an answered queue call
/// goes into wrap-up.
pub(super) fn parties_end(presence: &Presence, bridge: &Bridge, at: crate::clock::UnixMillis) {
    for (ext, id) in bridge.caller_party.iter().chain(&bridge.also_ringing) {
        let _ = presence.dialog_ended(ext, *id, None, at);
    }
    if let Some((ext, id)) = &bridge.callee_party {
        let wrap_up = bridge
            .queue
            .as_ref()
            .filter(|_| bridge.answered.is_some())
            .map(|q| q.wrap_up);
        let _ = presence.dialog_ended(ext, *id, wrap_up, at);
    }
}

/// Copies the session-timer headers (RFC 4028) from one leg's message to the
/// other's: the endpoints negotiate and refresh, the B2BUA relays and polices.
fn copy_session_timer(b: &mut Builder, from: &Message) {
    for name in ["Session-Expires", "x", "Min-SE"] {
        for v in from.other_values(name) {
            b.header(name, v);
        }
    }
    if from
        .values(HeaderName::Supported)
        .any(|v| v.eq_ignore_ascii_case(b"timer"))
    {
        b.header("Supported", "timer");
    }
    if from
        .values(HeaderName::Require)
        .any(|v| v.eq_ignore_ascii_case(b"timer"))
    {
        b.header("Require", "timer");
    }
}

/// The session interval a message sets (`Session-Expires: N;refresher=…`).
fn session_interval(m: &Message) -> Option<Duration> {
    let secs = super::leading_u32(super::session_expires_value(m)?)?;
    (secs > 0).then(|| Duration::from_secs(u64::from(secs)))
}

/// Answers a re-INVITE or UPDATE (hold, resume, a session refresh) from the
/// caller of a call the PBX answered itself — a queue caller waiting, a
/// voicemail caller: our media again, in the same SDP session with the next
/// version (RFC 3264 §8); the caller's new media state goes to the relay.
/// Without an offer (an UPDATE refreshing the session) it is answered
/// without a body.
pub(super) fn answer_again(
    cx: &mut Cx<'_>,
    (tx, req, remote): (TxId, &Message, Remote),
    relay: &dyn RelayControl,
    origin: &mut Origin,
) {
    let offer = sdp::parse(req.body()).ok();
    let next = origin.next();
    let port = relay.ports()[0];
    let answer = offer
        .as_ref()
        .and_then(|o| sdp::local_answer(o, cx.media_ip(remote), port, next));
    if let Some(o) = &offer {
        relay.set_peer(0, peer_of(o, remote.addr));
    }
    let mut b = cx.response(req, remote, StatusCode::OK);
    b.header("Contact", format!("<sip:{}>", cx.hostport(remote)));
    let bytes = match answer {
        Some(body) => {
            *origin = next;
            b.finish_with_body(Some("application/sdp"), &body)
        }
        None if offer.is_some() => {
            return cx.reply(tx, req, remote, StatusCode::NOT_ACCEPTABLE_HERE)
        }
        None => b.finish(),
    };
    cx.respond(tx, bytes);
}

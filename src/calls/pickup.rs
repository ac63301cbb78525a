//! Pickup: a colleague answers a call that rings at someone else's phone.
//!
//! - From a BLF key: the phone sends an INVITE whose Replaces header (RFC
//!   3891) names the ringing call as the key's dialog-info showed it (RFC
//!   4235 `call-id`, `local-tag`, `remote-tag`: the caller's leg with the
//!   PBX). The tags are accepted in either order, as phones differ; with
//!   `early-only` an answered call gets 486, and a call that is gone 481.
//! - With a code: `*8` takes the call that has rung longest at any
//!   colleague's phone, `**202` the one ringing at 202's.
//!
//! Only a user who shares a group with the extension that rings may take its
//! call (403 otherwise), and the picker is always authenticated, whatever
//! `[calls] authenticate` says. The phones that rang are cancelled, the
//! caller is answered, and the picker's INVITE is answered as the call's new
//! B side in the same relay; both answers keep only the codecs the two offers
//! number alike (488 when there is none). A ring group ringing all its
//! members at once shows the call at each of them, and a colleague of any
//! of them may pick it up. Queue offers (the ACD's) and calls to outside
//! numbers are not picked up.
//!
//! A call lives on the shard its caller's Call-ID hashes to. The shard that
//! receives the picker's INVITE authenticates it and, when the call lives
//! elsewhere, passes the request on ([`crate::tu::Effect::PassOn`]) and
//! routes the picker's Call-ID there from then on.

use super::bridge::{answer_caller, cancel_ringing, peer_of, rewrite_for, APhase, Branch};
use super::{start_party, Answering, Calls, Cx, Side, Timer, ALLOW};
use crate::presence::{DialogState, Direction};
use crate::sip::message::headers::Replaces;
use crate::sip::message::{build::random_tag, parse, Builder, Message};
use crate::sip::transaction::{reply_remote, TxId};
use crate::sip::{sdp, CallId, Dialog, Remote, StatusCode};

/// A pickup asked for, on its way to the shard of the call it picks.
#[derive(Debug)]
pub(super) struct Pick {
    /// The picker (authenticated).
    user: String,
    /// The call, by its caller's leg.
    call: CallId,
    /// The dialog a BLF key named; `None` for a code (the call was found by
    /// its ringing extension's presence dialog).
    replaces: Option<Replaces>,
}

/// Why a pickup is refused: a status and a reason naming the problem.
type Refused = (u16, &'static str);

const NO_CALL: Refused = (481, "Call/Transaction Does Not Exist");
const NOT_RINGING: Refused = (403, "Forbidden (Only A Ringing Call Can Be Picked Up)");
const NOT_PICKABLE: Refused = (403, "Forbidden (This Call Cannot Be Picked Up)");
const NOT_COLLEAGUE: Refused = (403, "Forbidden (Not In The Same Pickup Group)");
const OWN_CALL: Refused = (403, "Forbidden (The Call Rings At Your Own Phone)");
const NO_CODEC: Refused = (
    488,
    "Not Acceptable Here (No Codec In Common With The Caller)",
);

impl Calls {
    /// A new INVITE with a Replaces header: a BLF key picks a ringing call up.
    pub(super) fn invite_replaces(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        remote: Remote,
        value: &[u8],
    ) {
        let Some(replaces) = Replaces::parse(value) else {
            return cx.reply_with(tx, req, remote, 400, "Bad Request (Malformed Replaces)");
        };
        let Some(Some(user)) = self.authenticate(cx, tx, req, remote, true) else {
            return;
        };
        let pick = Pick {
            user,
            call: CallId::from(replaces.call_id.as_str()),
            replaces: Some(replaces),
        };
        self.route_pick(cx, tx, req, remote, pick);
    }

    /// A pickup code: the longest-ringing call of a colleague (`of` none) or
    /// of extension `of`.
    pub(super) fn invite_pickup(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        remote: Remote,
        of: Option<String>,
    ) {
        let Some(Some(user)) = self.authenticate(cx, tx, req, remote, true) else {
            return;
        };
        let env = cx.env;
        let colleagues = env.routing.colleagues(&user);
        if of.as_ref().is_some_and(|ext| !colleagues.contains(ext)) {
            let (code, reason) = if of.as_deref() == Some(user.as_str()) {
                OWN_CALL
            } else {
                NOT_COLLEAGUE
            };
            tracing::info!(%user, of = of.as_deref().unwrap_or("-"), "pickup refused: {reason}");
            return cx.reply_with(tx, req, remote, code, reason);
        }
        let ringing = colleagues
            .iter()
            .filter(|c| of.as_ref().is_none_or(|ext| ext == *c))
            .flat_map(|c| env.presence.dialogs(c).iter().cloned().collect::<Vec<_>>())
            .filter(|d| {
                d.direction == Direction::Recipient
                    && d.tags.is_some()
                    && matches!(d.state, DialogState::Trying | DialogState::Early)
            })
            .min_by_key(|d| d.id);
        let Some(ringing) = ringing else {
            tracing::info!(%user, "pickup: no call rings at a colleague's phone");
            return cx.reply_with(tx, req, remote, 404, "Not Found (No Call To Pick Up)");
        };
        let pick = Pick {
            user,
            call: CallId::from(ringing.call_id),
            replaces: None,
        };
        self.route_pick(cx, tx, req, remote, pick);
    }

    /// Picks the call up here, or passes the request on to the shard of the
    /// call (and routes the picker's Call-ID there).
    fn route_pick(&mut self, cx: &mut Cx<'_>, tx: TxId, req: &Message, remote: Remote, pick: Pick) {
        let env = cx.env;
        let home = env.moved.shard(pick.call.as_bytes(), env.shard_count);
        if home == cx.shard {
            return self.pick(cx, tx, req, remote, pick);
        }
        let Some(picker) = req.call_id().map(CallId::from_bytes) else {
            return;
        };
        env.moved.insert(picker, home);
        cx.pass_on(tx, remote, home, Box::new(pick));
    }

    /// Another shard passed on a request about a call of this one.
    pub fn on_passed(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        remote: Remote,
        message: crate::tu::Handoff,
    ) {
        match message.downcast::<Pick>() {
            Ok(pick) => self.pick(cx, tx, req, remote, *pick),
            Err(_) => cx.reply(tx, req, remote, StatusCode::SERVER_INTERNAL_ERROR),
        }
    }

    /// The picker's INVITE takes the ringing call, or is refused. A picker's
    /// Call-ID routed here for nothing is routed by its hash again once the
    /// refusal's ACK has had its time.
    fn pick(&mut self, cx: &mut Cx<'_>, tx: TxId, req: &Message, remote: Remote, pick: Pick) {
        let Some(picker) = req.call_id().map(CallId::from_bytes) else {
            return;
        };
        let moved = picker.shard(cx.env.shard_count) != cx.shard;
        match self.take_call(cx, tx, req, remote, &pick, &picker) {
            Ok(()) => {
                tracing::info!(call_id = %pick.call, user = %pick.user, "call picked up");
                if let Some(b) = self.bridges.get_mut(&pick.call).filter(|_| moved) {
                    b.moved_in.push(picker);
                }
            }
            Err((code, reason)) => {
                tracing::info!(call_id = %pick.call, user = %pick.user, "pickup refused: {reason}");
                cx.reply_with(tx, req, remote, code, reason);
                if moved {
                    cx.timer(cx.now + cx.env.timers.t1 * 64, Timer::Moved(picker));
                }
            }
        }
    }

    /// A picker's Call-ID routed here whose pickup did not happen.
    pub(super) fn moved_timer(&mut self, cx: &mut Cx<'_>, picker: &CallId) {
        if !self.legs.contains_key(picker) {
            cx.env.moved.remove(picker);
        }
    }

    fn take_call(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        remote: Remote,
        pick: &Pick,
        picker: &CallId,
    ) -> Result<(), Refused> {
        let Some((a, Side::A)) = self.legs.get(&pick.call).cloned() else {
            return Err(NO_CALL);
        };
        let bridge = self.bridges.get_mut(&a).ok_or(NO_CALL)?;
        let ours = bridge.a.tags();
        if let Some(r) = &pick.replaces {
            let named = |to: &str, from: &str| to == ours.local && from == ours.remote;
            if !named(&r.to_tag, &r.from_tag) && !named(&r.from_tag, &r.to_tag) {
                return Err(NO_CALL);
            }
        }
        let ringing = matches!(bridge.phase, APhase::Calling { .. }) && bridge.answered.is_none();
        if !ringing {
            let early_only = pick.replaces.as_ref().is_some_and(|r| r.early_only);
            return Err(match early_only {
                true => (486, "Busy Here (Already Answered)"),
                false => NOT_RINGING,
            });
        }
        if bridge.queue.is_some() || bridge.outbound.is_some() || bridge.transfer.is_some() {
            return Err(NOT_PICKABLE);
        }
        // The extensions it rings at (a ring group's members ring at once).
        let rung: Vec<&String> = bridge.ringing_parties().map(|(ext, _)| ext).collect();
        if rung.is_empty() {
            return Err(NOT_PICKABLE);
        }
        if rung.contains(&&pick.user) {
            return Err(OWN_CALL);
        }
        let colleagues = cx.env.routing.colleagues(&pick.user);
        if !rung.iter().any(|r| colleagues.contains(*r)) {
            return Err(NOT_COLLEAGUE);
        }
        let offers = (sdp::parse(bridge.a.invite.body()), sdp::parse(req.body()));
        let (Ok(caller_offer), Ok(picker_offer)) = offers else {
            return Err(NO_CODEC);
        };
        let codecs = sdp::shared_codecs(&caller_offer, &picker_offer);
        let ports = bridge.relay.ports();
        let to_picker = sdp::keep_codecs(bridge.a.invite.body(), &codecs)
            .and_then(|b| rewrite_for(cx, &b, remote, ports[1]));
        let to_caller = sdp::keep_codecs(req.body(), &codecs)
            .and_then(|b| rewrite_for(cx, &b, bridge.a.remote, ports[0]));
        let (Some(to_picker), Some(to_caller), false) = (to_picker, to_caller, codecs.is_empty())
        else {
            return Err(NO_CODEC);
        };

        // The phones that rang stop; the picker's phone is the call's B side.
        cancel_ringing(cx, bridge, 0, None);
        let presence = &cx.env.presence;
        bridge.stop_ringing_except(presence, None, cx.wall);
        if let Some((ext, id)) = bridge.callee_party.take() {
            let _ = presence.dialog_ended(&ext, id, None, cx.wall);
        }
        let caller = bridge.cdr.caller.clone();
        bridge.callee_party = start_party(
            presence,
            &pick.user,
            &a,
            Direction::Recipient,
            &caller,
            cx.wall,
        );
        let mut b = Builder::response(req, remote.addr, 200, "OK", Some(random_tag().as_bytes()));
        b.header(
            "Contact",
            format!(
                "<sip:{caller}@{};transport={}>",
                cx.hostport(remote),
                remote.transport.as_str().to_ascii_lowercase()
            ),
        )
        .header("Allow", ALLOW)
        .header("Server", crate::sip::message::build::PRODUCT);
        let ok = b.finish_with_body(Some("application/sdp"), &to_picker);
        let dialog = parse(ok.clone(), &Default::default())
            .ok()
            .and_then(|m| Dialog::from_uas(req, &m, remote))
            .ok_or(NO_CALL)?;
        cx.respond(tx, ok.clone());
        bridge.picker = Some(Answering::new(cx, ok, reply_remote(req, remote)));
        bridge
            .relay
            .set_peer(1, peer_of(&picker_offer, remote.addr));
        bridge.b_sdp = bytes::Bytes::copy_from_slice(req.body());
        let idx = bridge.branches.len();
        bridge.branches.push(Branch::called_in(req.clone(), dialog));
        bridge.answered = Some(idx);
        let user = pick.user.clone();
        answer_caller(cx, bridge, &user, Some(&to_caller), None);
        super::bridge::parties_step(presence, bridge, DialogState::Confirmed, cx.wall);
        super::recording::listen_for_code(cx, bridge);
        self.legs.insert(picker.clone(), (a.clone(), Side::B(idx)));
        self.arm_bridge(cx, &a);
        Ok(())
    }

    /// The picker's ACK for our 200.
    pub(super) fn picker_ack(&mut self, cx: &mut Cx<'_>, a: &CallId, idx: usize, req: &Message) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let ours = bridge.branches.get(idx).and_then(|b| b.dialog.as_ref());
        let tag = ours.and_then(|d| d.local_tag());
        let to = req.to_header().and_then(|t| t.tag());
        if bridge.picker.is_some() && tag.is_some() && tag == to {
            bridge.picker = None;
            self.arm_bridge(cx, a);
        }
    }
}

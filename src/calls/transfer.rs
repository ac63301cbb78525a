//! Transfer (RFC 3515 REFER, RFC 3892 Referred-By, the flows of RFC 5589):
//! a party of a connected bridge (the transferor) refers the other party
//! (the transferee) to a number.
//!
//! The REFER is accepted (202) when the transferor may reach the number. The
//! number is then hunted like a new call from the transferee (forwarding, do
//! not disturb, ring groups; an outside number under the transferor's dialing
//! class and the toll-fraud guard) while the transferee stays in the call,
//! hearing what the transferor left it with (music on hold). The transferor
//! hears how it goes in NOTIFYs with a sipfrag body: 100, 180, the final
//! status. When the target answers it takes the transferor's side of the
//! bridge: the relay sends the transferee's audio to it at once, the
//! transferee is re-INVITEd toward the relay (off hold, with the target's
//! codecs), and the transferor is released (NOTIFY 200, BYE). The call so far
//! gets its CDR; what follows is a call from the transferee to the target.
//!
//! A transferor may hang up as soon as the REFER is accepted (a blind
//! transfer): the transfer goes on. When the target fails, the call goes
//! back to how it was (the transferor may resume it), or, the transferor
//! gone, the transferee is hung up. A number that leads to a queue puts the
//! transferee in it at once (the transferor is released; the agent who
//! answers has the transferee re-INVITEd toward them).
//!
//! An attended transfer names the transferor's consultation (`Replaces` in
//! the Refer-To, or the desk's other call): its other party's leg leaves the
//! consultation (which ends for the transferor) and takes the transferor's
//! place, re-INVITEd toward this call's relay, then the transferee toward
//! it. A consultation of another shard is asked for there ([`Ask`]); its
//! leg comes back ([`Answer`]) and its messages are routed to this shard
//! from then on (`Moved`). The desk transfers the same way, without NOTIFYs.

use super::bridge::{
    ack, bye, cancel_ringing, parties_end, peer_of, rewrite_for, APhase, Branch, Bridge,
};
use super::cdr::{Cdr, Disposition, HangupBy};
use super::hunt::{unavailable, Hunt, Next};
use super::queue::Queued;
use super::{lossy, new_cdr, write_cdr, Calls, Cx, Party, Pending, Refusal, Side};
use crate::forwarding::Reach;
use crate::presence::DialogState;
use crate::routing::dialplan::Target;
use crate::sip::message::{Message, Method, NameAddr, Replaces, Uri};
use crate::sip::sdp;
use crate::sip::transaction::TxId;
use crate::sip::{CallId, Dialog, Remote, StatusCode};
use bytes::Bytes;
use std::net::IpAddr;

/// The longest number a Refer-To may name.
const MAX_NUMBER: usize = 64;

/// A transfer under way in a bridge, until its target answers or fails.
#[derive(Debug)]
pub(super) struct Transfer {
    /// The transferor's side (its dialog carries the NOTIFYs while it is there).
    pub by: Side,
    /// `Event: refer;id=N`: the REFER's CSeq number (none when the desk
    /// transfers: nobody subscribed).
    event_id: Option<u32>,
    /// The call's CDR until the transfer; written when the transferor leaves.
    previous: Option<Cdr>,
    /// The transferor's dialog in the presence map (ends when it leaves).
    transferor: Option<Party>,
    /// The transferee's, when it is on side B (out of the hunt's way).
    transferee: Option<Party>,
    /// A queue call's ACD state while its agent transfers it.
    queue: Option<Queued>,
    /// Where the transferor's signalling comes from (the toll-fraud source).
    pub source: IpAddr,
    /// The transferee's SDP, offered to the target.
    pub offer: Bytes,
    /// Who referred: the target's INVITEs carry it (RFC 3892).
    pub referred_by: String,
    /// A NOTIFY 180 went out.
    rang: bool,
}

/// Where the desk transfers an agent's call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferTo {
    /// A number: an extension, a ring group, a queue, an outside number.
    Number(String),
    /// The other party of the agent's call with this leg (attended).
    Consultation(CallId),
}

/// Why the desk could not transfer a call (the API's error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("no call {0} is in progress")]
    NoCall(String),
    #[error("call {0} is not yours")]
    NotYours(String),
    #[error("call {0} is not connected, or is being transferred")]
    NotNow(String),
    #[error("{0}")]
    Refused(&'static str),
    #[error("{0} is not a number this PBX can call")]
    Unknown(String),
    #[error("the PBX is shutting down")]
    Stopped,
}

/// A transferor's call asks for its consultation (an attended transfer),
/// on the shard that owns it.
#[derive(Debug)]
struct Ask {
    /// The transferor's call and its shard.
    x: CallId,
    from: usize,
    /// Where the consulted party will be in it.
    x_side: Side,
    user: String,
    /// The consultation's leg of the transferor.
    consult: CallId,
    /// The tags a REFER's Replaces names (none from the desk, which knows
    /// the call is the user's).
    tags: Option<(String, String)>,
}

/// The consultation's answer to call `x`.
#[derive(Debug)]
struct Answer {
    x: CallId,
    reply: Reply,
}

#[derive(Debug)]
enum Reply {
    /// Its other party's leg.
    Leg(Box<Leg>),
    /// It still rang this number (and was cancelled).
    Ringing(String),
    /// It cannot be joined: the status and why.
    Refused(u16, &'static str),
}

/// A consulted party's leg, handed from its consultation to the call it joins.
#[derive(Debug)]
struct Leg {
    /// Its dialog (in `dialog`), as a branch of the call it joins.
    branch: Branch,
    sdp: Bytes,
    party: Option<Party>,
    trunk: Option<crate::outside::TrunkId>,
    outbound: Option<super::outbound::Outbound>,
    /// The number the consultation dialled (the joined call's callee).
    number: String,
}

/// The transferor's dialog `old` (if it is still up) hears that transfer
/// `t` succeeded and is ended (no longer one of the shard's `legs`).
pub(super) fn release(
    cx: &mut Cx<'_>,
    legs: &mut std::collections::HashMap<CallId, (CallId, Side)>,
    old: Option<Dialog>,
    t: &Transfer,
) {
    if let Some(mut d) = old {
        legs.remove(&d.call_id);
        if let Some(id) = t.event_id {
            notify(cx, &mut d, id, 200, "OK");
        }
        bye(cx, &mut d);
    }
}

/// What a REFER's Refer-To names: a number, and for an attended transfer the
/// dialog the target is in (`?Replaces=`, whose URI need not name a user);
/// or why it is refused.
fn refer_to(req: &Message) -> Result<(Option<String>, Option<Replaces>), StatusCode> {
    let mut values = req.other_values("Refer-To").chain(req.other_values("r"));
    let (Some(v), None) = (values.next(), values.next()) else {
        return Err(StatusCode::BAD_REQUEST);
    };
    let uri = NameAddr::parse(v)
        .map(|n| n.uri)
        .ok_or(StatusCode::BAD_REQUEST)?;
    let number = Uri::parse(uri)
        .ok_or(StatusCode::BAD_REQUEST)?
        .user
        .map(lossy);
    let replaces = Replaces::in_uri(uri);
    let valid =
        |n: &String| !n.is_empty() && n.len() <= MAX_NUMBER && !n.chars().any(char::is_control);
    match number {
        Some(n) if valid(&n) => Ok((Some(n), replaces)),
        None if replaces.is_some() => Ok((None, replaces)),
        _ => Err(StatusCode::BAD_REQUEST),
    }
}

/// The tag `side`'s phone put on its dialog with us.
fn party_tag(bridge: &Bridge, side: Side) -> Option<String> {
    let tag = match side {
        Side::A => bridge.a.invite.from_header()?.tag().map(lossy),
        Side::B(i) => {
            let d = bridge.branches.get(i)?.dialog.as_ref()?;
            NameAddr::parse(&d.remote_party)?.tag().map(lossy)
        }
    };
    tag
}

/// Why a desk's command names no call of the user's.
pub(super) enum Whose {
    NoCall,
    NotYours,
}

impl Calls {
    /// The bridge that call leg `leg` belongs to, and `user`'s side of it
    /// (a presence dialog may name either leg).
    pub(super) fn users_side(
        &self,
        cx: &Cx<'_>,
        user: &str,
        leg: &CallId,
    ) -> Result<(CallId, Side), Whose> {
        let (a, _) = self.legs.get(leg).ok_or(Whose::NoCall)?;
        let bridge = self.bridges.get(a).ok_or(Whose::NotYours)?;
        [Some(Side::A), bridge.answered.map(Side::B)]
            .into_iter()
            .flatten()
            .find(|s| transferor_user(cx, bridge, *s).as_deref() == Some(user))
            .map(|s| (a.clone(), s))
            .ok_or(Whose::NotYours)
    }
}

/// The user on `side` of a bridge who may transfer its other party: an
/// extension (never a provider).
pub(super) fn transferor_user(cx: &Cx<'_>, bridge: &Bridge, side: Side) -> Option<String> {
    if bridge.trunk_facing(side).is_some() {
        return None;
    }
    let (party, number) = match side {
        Side::A => (&bridge.caller_party, Some(bridge.cdr.caller.clone())),
        Side::B(i) => (&bridge.callee_party, branch_user(bridge, i)),
    };
    if let Some((ext, _)) = party {
        return Some(ext.clone());
    }
    number.filter(|n| cx.env.users.contains(n))
}

/// The user a branch INVITE went to (its To).
fn branch_user(bridge: &Bridge, i: usize) -> Option<String> {
    let to = bridge.branches.get(i)?.invite.to_header()?;
    Uri::parse(to.uri)?.user.map(lossy)
}

/// A NOTIFY of the refer subscription on `dialog` with the sipfrag of
/// `code` (final statuses end the subscription).
fn notify(cx: &mut Cx<'_>, dialog: &mut Dialog, event_id: u32, code: u16, reason: &str) {
    let frag = format!("SIP/2.0 {code} {reason}\r\n");
    let state = if code >= 200 {
        "terminated;reason=noresource"
    } else {
        "active;expires=60"
    };
    let event = format!("refer;id={event_id}");
    dialog.cseq += 1;
    let headers = [("Event", event.as_str()), ("Subscription-State", state)];
    let body = Some(("message/sipfrag;version=2.0", frag.as_bytes()));
    let bytes = dialog.request_with(
        &Method::Notify,
        dialog.cseq,
        &cx.hostport(dialog.remote),
        &headers,
        body,
    );
    cx.send(bytes, dialog.remote);
}

/// The dialog toward `side` of a bridge, if it is up.
pub(super) fn dialog_of(bridge: &mut Bridge, side: Side) -> Option<&mut Dialog> {
    match side {
        Side::A => bridge.a_dialog.as_mut(),
        Side::B(i) => bridge.branches.get_mut(i)?.dialog.as_mut(),
    }
}

/// Tells the transferor (if it is still there) how the transfer goes.
fn notify_transferor(cx: &mut Cx<'_>, bridge: &mut Bridge, code: u16, reason: &str) {
    let Some((by, Some(id))) = bridge.transfer.as_ref().map(|t| (t.by, t.event_id)) else {
        return;
    };
    if let Some(d) = dialog_of(bridge, by) {
        notify(cx, d, id, code, reason);
    }
}

/// The transferor is out of the call (hung up, or released): its presence
/// dialog ends (an agent goes into wrap-up), a queue call's talk time is
/// counted, the call so far gets its CDR.
pub(super) fn end_transferor(cx: &mut Cx<'_>, t: &mut Transfer, by: HangupBy) {
    let wrap_up = t.queue.as_ref().map(|q| q.wrap_up);
    if let Some((ext, id)) = t.transferor.take() {
        let _ = cx.env.presence.dialog_ended(&ext, id, wrap_up, cx.wall);
    }
    if let Some(q) = t.queue.take() {
        super::queue::count_end(cx, Some(&q), by);
    }
    if let Some(cdr) = t.previous.take() {
        write_cdr(cx, cdr, Disposition::Answered, by);
    }
}

/// Who ended the call so far when `side` leaves it.
pub(super) fn hangup_by(side: Side) -> HangupBy {
    match side {
        Side::A => HangupBy::Caller,
        Side::B(_) => HangupBy::Callee,
    }
}

/// The other side of a connected bridge from `side`.
fn across(bridge: &Bridge, side: Side) -> Side {
    match side {
        Side::A => Side::B(bridge.answered.unwrap_or(0)),
        Side::B(_) => Side::A,
    }
}

/// Puts a bridge back as it was before transfer `t` (its parties, queue
/// state and CDR); false when the transferor is gone (nothing to go back to).
fn put_back(cx: &Cx<'_>, bridge: &mut Bridge, t: Transfer) -> bool {
    if let Some((ext, id)) = bridge.callee_party.take() {
        let _ = cx.env.presence.dialog_ended(&ext, id, None, cx.wall);
    }
    match t.by {
        Side::A => {
            bridge.caller_party = t.transferor;
            bridge.callee_party = t.transferee;
        }
        Side::B(_) => bridge.callee_party = t.transferor,
    }
    if t.queue.is_some() {
        bridge.queue = t.queue;
    }
    match t.previous {
        Some(cdr) => {
            bridge.cdr = cdr;
            true
        }
        None => false,
    }
}

/// Why `user` on `side` of `bridge` may not transfer its other party to
/// `number`: the status and reason.
fn number_refusal(
    cx: &Cx<'_>,
    bridge: &Bridge,
    side: Side,
    user: &str,
    number: &str,
) -> Option<(u16, &'static str)> {
    let env = cx.env;
    match env.reach(user, number) {
        Reach::Unknown => Some((404, "Not Found")),
        Reach::Outside { allowed: false } => Some((403, "Forbidden (Outside Call Not Allowed)")),
        // An outside leg lives on side B, beside one provider at most.
        Reach::Outside { .. } if side == Side::A || bridge.outbound.is_some() => Some((
            403,
            "Forbidden (Transfer To An Outside Number Not Possible Here)",
        )),
        // A queue's callers are on side A.
        _ if side == Side::A && matches!(env.forward_target(number), Target::Queue(_)) => {
            Some((403, "Forbidden (Transfer To A Queue Not Possible Here)"))
        }
        _ => None,
    }
}

/// Accepts a REFER from `user` (202): the NOTIFYs' event id, who referred,
/// where the transferor is.
fn accept(
    cx: &mut Cx<'_>,
    (tx, req, remote): (TxId, &Message, Remote),
    user: &str,
) -> (Option<u32>, String, Remote) {
    let mut ok = cx.response(req, remote, StatusCode::ACCEPTED);
    ok.header("Contact", format!("<sip:{}>", cx.hostport(remote)));
    cx.respond(tx, ok.finish());
    let referred_by = req
        .other_values("Referred-By")
        .chain(req.other_values("b"))
        .next()
        .map(lossy)
        .unwrap_or_else(|| format!("<sip:{user}@{}>", cx.env.domain));
    (req.cseq().map(|c| c.seq), referred_by, remote)
}

impl Calls {
    /// A REFER inside a connected bridge, from `side`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn bridge_refer(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        remote: Remote,
        a: &CallId,
        side: Side,
    ) {
        let Some(bridge) = self.bridges.get(a) else {
            return;
        };
        let connected = matches!(bridge.phase, APhase::Confirmed) && bridge.answered.is_some();
        if !connected || bridge.transfer.is_some() {
            return cx.reply(tx, req, remote, StatusCode::REQUEST_PENDING);
        }
        let Some(user) = transferor_user(cx, bridge, side) else {
            tracing::info!(call_id = %a, "REFER refused: only an extension transfers");
            return cx.reply_with(tx, req, remote, 403, "Forbidden (Transfer Not Allowed)");
        };
        let (number, replaces) = match refer_to(req) {
            Ok(r) => r,
            Err(status) => return cx.reply(tx, req, remote, status),
        };
        if let Some(r) = replaces {
            return self.refer_replacing(cx, (tx, req, remote), a, side, user, r);
        }
        let Some(number) = number else {
            return cx.reply(tx, req, remote, StatusCode::BAD_REQUEST);
        };
        let refused = number_refusal(cx, bridge, side, &user, &number);
        if let Some((code, reason)) = refused {
            tracing::info!(call_id = %a, %user, %number, "REFER refused: {reason}");
            return cx.reply_with(tx, req, remote, code, reason);
        }
        tracing::info!(call_id = %a, %user, %number, "transfer");
        let refer = accept(cx, (tx, req, remote), &user);
        self.begin(cx, a, side, user, number.clone(), refer);
        self.hunt(cx, a, Some(Next::Number(number)), unavailable());
    }

    /// The desk transfers `user`'s call with leg `leg` (blind to a number,
    /// or attended to the party of another of their calls); the phone is
    /// released when the target answers (no NOTIFYs: nobody subscribed).
    pub fn transfer(
        &mut self,
        cx: &mut Cx<'_>,
        user: &str,
        leg: &CallId,
        to: TransferTo,
    ) -> Result<(), TransferError> {
        let call = || leg.to_string();
        let (a, side) = self.users_side(cx, user, leg).map_err(|e| match e {
            Whose::NoCall => TransferError::NoCall(call()),
            Whose::NotYours => TransferError::NotYours(call()),
        })?;
        let Some(bridge) = self.bridges.get(&a) else {
            return Err(TransferError::NotYours(call()));
        };
        let connected = matches!(bridge.phase, APhase::Confirmed) && bridge.answered.is_some();
        if !connected || bridge.transfer.is_some() {
            return Err(TransferError::NotNow(call()));
        }
        let remote = bridge.remote_of(side);
        let refer = (None, format!("<sip:{user}@{}>", cx.env.domain), remote);
        let user = user.to_string();
        match to {
            TransferTo::Number(number) => match number_refusal(cx, bridge, side, &user, &number) {
                Some((404, _)) => Err(TransferError::Unknown(number)),
                Some((_, reason)) => Err(TransferError::Refused(reason)),
                None => {
                    tracing::info!(call_id = %a, %user, %number, "transfer (from the desk)");
                    self.begin(cx, &a, side, user, number.clone(), refer);
                    self.hunt(cx, &a, Some(Next::Number(number)), unavailable());
                    Ok(())
                }
            },
            TransferTo::Consultation(consult) => {
                let ask = Ask {
                    x: a.clone(),
                    from: cx.shard,
                    x_side: side,
                    user,
                    consult,
                    tags: None,
                };
                self.attend(cx, ask, |_| refer)
                    .map_err(|(code, reason)| match code {
                        481 => TransferError::NoCall(call()),
                        _ => TransferError::Refused(reason),
                    })
            }
        }
    }

    /// A REFER from `side` (`user`) of call `a` whose target is in dialog
    /// `r` (an attended transfer): that dialog must be one of the
    /// transferor's own calls, the consultation, on whichever shard owns it.
    /// Answered, its other party is joined with call `a`'s; still ringing,
    /// call `a`'s party is transferred to the number it rings (and the
    /// consultation ends).
    #[allow(clippy::too_many_arguments)]
    fn refer_replacing(
        &mut self,
        cx: &mut Cx<'_>,
        (tx, req, remote): (TxId, &Message, Remote),
        a: &CallId,
        side: Side,
        user: String,
        replaces: Replaces,
    ) {
        let ask = Ask {
            x: a.clone(),
            from: cx.shard,
            x_side: side,
            user: user.clone(),
            consult: CallId::from_bytes(replaces.call_id.as_bytes()),
            tags: Some((replaces.to_tag, replaces.from_tag)),
        };
        let accepted = self.attend(cx, ask, |cx| accept(cx, (tx, req, remote), &user));
        if let Err((code, reason)) = accepted {
            cx.reply_with(tx, req, remote, code, reason);
        }
    }

    /// Starts attended transfer `ask`, accepted (`accept`: the transferor is
    /// told) unless its consultation, on this shard, cannot be joined: why
    /// not. A consultation of another shard is asked there, and a refusal
    /// comes back as the transfer's failure.
    fn attend(
        &mut self,
        cx: &mut Cx<'_>,
        ask: Ask,
        accept: impl FnOnce(&mut Cx<'_>) -> (Option<u32>, String, Remote),
    ) -> Result<(), (u16, &'static str)> {
        let home = cx
            .env
            .moved
            .shard(ask.consult.as_bytes(), cx.env.shard_count);
        let (a, side, user) = (ask.x.clone(), ask.x_side, ask.user.clone());
        tracing::info!(call_id = %a, %user, consultation = %ask.consult, "attended transfer");
        if home != cx.shard {
            let refer = accept(cx);
            self.begin(cx, &a, side, user, String::new(), refer);
            cx.hand_off(home, Box::new(ask));
            return Ok(());
        }
        match self.consulted(cx, ask) {
            Reply::Refused(code, reason) => Err((code, reason)),
            reply => {
                let refer = accept(cx);
                self.begin(cx, &a, side, user, String::new(), refer);
                self.joined(cx, &a, reply);
                Ok(())
            }
        }
    }

    /// Another shard's calls ask for a consultation of ours, or answer us.
    pub(super) fn transfer_handoff(&mut self, cx: &mut Cx<'_>, message: crate::tu::Handoff) {
        let message = match message.downcast::<Ask>() {
            Ok(ask) => {
                let (x, from) = (ask.x.clone(), ask.from);
                let reply = self.consulted(cx, *ask);
                return cx.hand_off(from, Box::new(Answer { x, reply }));
            }
            Err(other) => other,
        };
        if let Ok(answer) = message.downcast::<Answer>() {
            let Answer { x, reply } = *answer;
            self.joined(cx, &x, reply);
        }
    }

    /// The consultation `ask` names, for the transferor's call: its other
    /// party's leg (the consultation ends for the transferor), the number it
    /// still rings (it is cancelled), or why it cannot be joined.
    fn consulted(&mut self, cx: &mut Cx<'_>, ask: Ask) -> Reply {
        const GONE: Reply = Reply::Refused(481, "Call/Transaction Does Not Exist");
        let Some((y, y_side)) = self.legs.get(&ask.consult).cloned() else {
            return GONE;
        };
        let Some(consult) = self.bridges.get(&y).filter(|_| y != ask.x) else {
            return GONE;
        };
        if let Some((to, from)) = &ask.tags {
            let tag = party_tag(consult, y_side);
            if !tag.is_some_and(|t| t == *to || t == *from) {
                return GONE;
            }
        }
        if transferor_user(cx, consult, y_side).as_deref() != Some(ask.user.as_str()) {
            tracing::warn!(call_id = %ask.x, user = %ask.user, "REFER refused: Replaces names another user's call");
            return Reply::Refused(403, "Forbidden (Not Your Call)");
        }
        if matches!(consult.phase, APhase::Calling { .. }) && y_side == Side::A {
            let number = consult.cdr.callee.clone();
            let cancelled = Refusal {
                disposition: Disposition::Cancelled,
                by: HangupBy::Caller,
                ..Refusal::failed(StatusCode::REQUEST_TERMINATED)
            };
            self.fail_call(cx, &y, cancelled);
            return Reply::Ringing(number);
        }
        let target = across(consult, y_side);
        // A provider's leg keeps its trunk: an inbound caller stays on side
        // A, an outside call on side B.
        let movable = consult.queue.is_none()
            && match (target, ask.x_side) {
                (Side::A, Side::A) => true,
                (Side::A, _) => consult.trunk.is_none(),
                (Side::B(_), Side::B(_)) => true,
                (Side::B(_), Side::A) => consult.outbound.is_none(),
            };
        let connected = matches!(consult.phase, APhase::Confirmed) && consult.answered.is_some();
        if !connected || !movable {
            tracing::info!(call_id = %ask.x, user = %ask.user, "REFER refused: the consultation cannot be joined");
            return Reply::Refused(403, "Forbidden (Transfer Not Possible Here)");
        }
        match self.take_leg(cx, &y, y_side, target) {
            Some(leg) => {
                // Its messages follow it to the call it joins.
                if leg.branch.call_id.shard(cx.env.shard_count) != ask.from {
                    cx.env.moved.insert(leg.branch.call_id.clone(), ask.from);
                }
                Reply::Leg(Box::new(leg))
            }
            None => GONE,
        }
    }

    /// Consultation `y` ends for the transferor (`y_side`, BYE, CDR) and
    /// gives up its other party's leg (`target`), with what goes along: its
    /// trunk, its outside call.
    fn take_leg(&mut self, cx: &mut Cx<'_>, y: &CallId, y_side: Side, target: Side) -> Option<Leg> {
        let consult = self.bridges.get_mut(y)?;
        let (trunk, outbound) = match target {
            Side::A => (consult.trunk.take(), None),
            Side::B(_) => (None, consult.outbound.take()),
        };
        let mut consult = self.remove_bridge(cx, y)?;
        let (sdp, party, branch) = match target {
            Side::A => {
                let invite = consult.a.invite.clone();
                let branch = consult
                    .a_dialog
                    .take()
                    .map(|d| Branch::called_in(invite, d));
                let sdp = Bytes::copy_from_slice(consult.a.invite.body());
                (sdp, consult.caller_party.take(), branch)
            }
            Side::B(j) => {
                let branch = (j < consult.branches.len()).then(|| consult.branches.swap_remove(j));
                (consult.b_sdp.clone(), consult.callee_party.take(), branch)
            }
        };
        if let Some(d) = dialog_of(&mut consult, y_side) {
            bye(cx, d);
        }
        parties_end(&cx.env.presence, &consult, cx.wall);
        let number = consult.cdr.callee.clone();
        write_cdr(cx, consult.cdr, Disposition::Answered, hangup_by(y_side));
        Some(Leg {
            branch: branch.filter(|b| b.dialog.is_some())?,
            sdp,
            party,
            trunk,
            outbound,
            number,
        })
    }

    /// What the consultation answered transfer `x`: its party joins, or the
    /// number it rang is hunted, or the transfer fails.
    fn joined(&mut self, cx: &mut Cx<'_>, x: &CallId, reply: Reply) {
        let waiting = self.bridges.get(x).is_some_and(|b| b.transfer.is_some());
        match reply {
            Reply::Leg(leg) if !waiting => {
                // The transferor's call ended meanwhile: so does the leg.
                let mut leg = *leg;
                cx.env.moved.remove(&leg.branch.call_id);
                if let Some(d) = leg.branch.dialog.as_mut() {
                    bye(cx, d);
                }
                if let Some((ext, id)) = leg.party {
                    let _ = cx.env.presence.dialog_ended(&ext, id, None, cx.wall);
                }
                if let Some(mut out) = leg.outbound {
                    out.release(cx);
                }
                super::release_trunk(cx, leg.trunk);
            }
            Reply::Leg(leg) => self.join_leg(cx, x, *leg),
            Reply::Ringing(number) => {
                if let Some(b) = self.bridges.get_mut(x).filter(|_| waiting) {
                    b.cdr.callee = number.clone();
                    self.hunt(cx, x, Some(Next::Number(number)), unavailable());
                }
            }
            Reply::Refused(code, reason) => {
                let r = Refusal {
                    code,
                    reason,
                    ..Refusal::failed(StatusCode::CALL_DOES_NOT_EXIST)
                };
                if waiting {
                    self.transfer_failed(cx, x, r);
                }
            }
        }
    }

    /// The consulted party's `leg` takes the transferor's place in call `a`.
    fn join_leg(&mut self, cx: &mut Cx<'_>, a: &CallId, leg: Leg) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let Leg {
            mut branch,
            sdp,
            party,
            trunk,
            outbound,
            number,
        } = leg;
        let Some(dialog) = branch.dialog.take() else {
            return;
        };
        if trunk.is_some() {
            bridge.trunk = trunk;
        }
        if outbound.is_some() {
            bridge.outbound = outbound;
        }
        if branch.call_id.shard(cx.env.shard_count) != cx.shard {
            bridge.moved_in.push(branch.call_id.clone());
        }
        bridge.cdr.callee = number;
        let idx = bridge.branches.len();
        self.legs
            .insert(branch.call_id.clone(), (a.clone(), Side::B(idx)));
        bridge.branches.push(branch);
        bridge.callee_party = party;
        self.connect(cx, a, idx, dialog, &sdp, true);
    }

    /// Sets a transfer up in call `a` (by `side`, `user`, to `number`): the
    /// call so far is kept aside until the target answers.
    fn begin(
        &mut self,
        cx: &mut Cx<'_>,
        a: &CallId,
        side: Side,
        user: String,
        number: String,
        (event_id, referred_by, remote): (Option<u32>, String, Remote),
    ) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let (transferor, transferee) = match side {
            Side::A => (bridge.caller_party.take(), bridge.callee_party.take()),
            Side::B(_) => (bridge.callee_party.take(), None),
        };
        let (offer, call_id, caller, party, display) = match side {
            Side::A => {
                let i = bridge.answered.unwrap_or(0);
                let ext = transferee.as_ref().map(|(e, _)| e.clone());
                let number = ext.clone().unwrap_or_else(|| bridge.cdr.callee.clone());
                let call_id = bridge.branches[i].call_id.clone();
                (bridge.b_sdp.clone(), call_id, number, ext, None)
            }
            Side::B(_) => {
                let ext = bridge.caller_party.as_ref().map(|(e, _)| e.clone());
                let offer = Bytes::copy_from_slice(bridge.a.invite.body());
                let display = bridge.hunt.display.clone();
                (offer, a.clone(), bridge.cdr.caller.clone(), ext, display)
            }
        };
        let cdr = new_cdr(cx, &call_id, &caller, &number);
        let previous = std::mem::replace(&mut bridge.cdr, cdr);
        bridge.hunt = Hunt::transfer(user, party, display);
        bridge.session = None;
        bridge.transfer = Some(Transfer {
            by: side,
            event_id,
            previous: Some(previous),
            transferor,
            transferee,
            queue: bridge.queue.take(),
            source: remote.addr.ip(),
            offer,
            referred_by,
            rang: false,
        });
        notify_transferor(cx, bridge, 100, "Trying");
    }

    /// The transfer target of call `a` rings.
    pub(super) fn transfer_ringing(&mut self, cx: &mut Cx<'_>, a: &CallId) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        if bridge.transfer.as_ref().is_some_and(|t| !t.rang) {
            notify_transferor(cx, bridge, 180, "Ringing");
            if let Some(t) = bridge.transfer.as_mut() {
                t.rang = true;
            }
        }
    }

    /// The transferor of call `a` hung up while the target rings: the
    /// transfer goes on without it.
    pub(super) fn transferor_left(&mut self, cx: &mut Cx<'_>, a: &CallId, side: Side) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        if let Some(d) = dialog_of(bridge, side) {
            self.legs.remove(&d.call_id);
        }
        match side {
            Side::A => bridge.a_dialog = None,
            Side::B(i) => bridge.branches[i].dialog = None,
        }
        if let Some(t) = bridge.transfer.as_mut() {
            tracing::info!(call_id = %a, "the transferor hung up; the transfer goes on");
            end_transferor(cx, t, hangup_by(side));
        }
    }

    /// The transfer target of call `a` answered on branch `idx`.
    pub(super) fn transfer_answered(
        &mut self,
        cx: &mut Cx<'_>,
        a: &CallId,
        idx: usize,
        r: &Message,
        dialog: Option<Dialog>,
    ) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        bridge.branches[idx].final_code = Some(200);
        match dialog {
            Some(d) => self.connect(cx, a, idx, d, r.body(), false),
            None => self.transfer_failed(cx, a, Refusal::failed(StatusCode::BAD_REQUEST)),
        }
    }

    /// The transfer target of call `a` (branch `idx`, `dialog`, its media
    /// in `sdp`) takes the transferor's place; `moved`: it comes from
    /// another call, and is re-INVITEd toward this call's relay first.
    fn connect(
        &mut self,
        cx: &mut Cx<'_>,
        a: &CallId,
        idx: usize,
        dialog: Dialog,
        sdp: &[u8],
        moved: bool,
    ) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let Some(mut t) = bridge.transfer.take() else {
            return;
        };
        cancel_ringing(cx, bridge, bridge.hunt.first, Some(idx));
        let transferee = across(bridge, t.by);
        if let Ok(s) = sdp::parse(sdp) {
            let peer = peer_of(&s, bridge.branches[idx].remote.addr);
            bridge.relay.set_peer(t.by.relay_index(), peer);
        }
        bridge.relay.stop_playing();
        // The target's dialog takes the transferor's place.
        let old = match t.by {
            Side::A => {
                self.legs
                    .insert(dialog.call_id.clone(), (a.clone(), Side::A));
                bridge.caller_party = bridge.callee_party.take();
                bridge.callee_party = t.transferee.take();
                bridge.a_dialog.replace(dialog)
            }
            Side::B(i) => {
                bridge.answered = Some(idx);
                bridge.branches[idx].dialog = Some(dialog);
                bridge.branches[i].dialog.take()
            }
        };
        let (target_side, target) = match t.by {
            Side::A => (Side::A, &bridge.caller_party),
            Side::B(_) => (Side::B(idx), &bridge.callee_party),
        };
        if let Some((ext, id)) = target {
            let _ = cx
                .env
                .presence
                .dialog_state(ext, *id, DialogState::Confirmed, cx.wall);
        }
        release(cx, &mut self.legs, old, &t);
        if t.queue.is_some() {
            if let Some((agent, _)) = target {
                let agent = agent.clone();
                super::queue::record_answered(cx, &bridge.cdr.caller.clone(), agent, a);
            }
        }
        let by = hangup_by(t.by);
        end_transferor(cx, &mut t, by);
        bridge.cdr.answer_ms = Some(cx.wall.0);
        bridge.phase = APhase::Confirmed;
        tracing::info!(call_id = %a, to = %bridge.cdr.callee, "transferred");
        self.arm_bridge(cx, a);
        match moved {
            // The target first (its media to this relay), then the transferee.
            true => self.reanchor(
                cx,
                a,
                target_side,
                &t.offer,
                Some(transferee),
                (None, false),
            ),
            false => self.reanchor(cx, a, transferee, sdp, None, (None, false)),
        }
    }

    /// The transfer of call `a` failed with `r`: the transferor hears it and
    /// has the call back, or, gone, the transferee is hung up.
    pub(super) fn transfer_failed(&mut self, cx: &mut Cx<'_>, a: &CallId, r: Refusal) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        notify_transferor(cx, bridge, r.code, r.reason);
        let Some(t) = bridge.transfer.take() else {
            return;
        };
        cancel_ringing(cx, bridge, bridge.hunt.first, None);
        bridge.phase = APhase::Confirmed;
        if put_back(cx, bridge, t) {
            tracing::info!(call_id = %a, code = r.code, "transfer failed; the call goes on");
            return self.arm_bridge(cx, a);
        }
        tracing::info!(call_id = %a, code = r.code, "transfer failed; the transferee is hung up");
        self.end_bridge(cx, a, None, HangupBy::System);
    }

    /// The call ends while its transfer rings: what rings is cancelled and
    /// the bridge is put back, to be ended as it was.
    pub(super) fn abandon_transfer(cx: &mut Cx<'_>, bridge: &mut Bridge) {
        if let Some(t) = bridge.transfer.take() {
            cancel_ringing(cx, bridge, bridge.hunt.first, None);
            put_back(cx, bridge, t);
        }
    }

    /// Re-INVITEs `side` of call `a` with `sdp` (the new party's, pointed at
    /// the relay): its media goes to the relay in the new party's codecs, and
    /// off hold. `authorization` answers a provider's challenge (`retried`).
    pub(super) fn reanchor(
        &mut self,
        cx: &mut Cx<'_>,
        a: &CallId,
        side: Side,
        sdp: &[u8],
        then: Option<Side>,
        (authorization, retried): (Option<(&str, &str)>, bool),
    ) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let port = bridge.relay.ports()[side.relay_index()];
        let Some(d) = dialog_of(bridge, side) else {
            return;
        };
        let Some(body) = rewrite_for(cx, sdp, d.remote, port) else {
            return;
        };
        d.cseq += 1;
        let headers: Vec<(&str, &str)> = authorization.into_iter().collect();
        let bytes = d.request_with(
            &Method::Invite,
            d.cseq,
            &cx.hostport(d.remote),
            &headers,
            Some(("application/sdp", &body)),
        );
        let id = cx.send(bytes, d.remote);
        let pending = Pending::Reanchor {
            owner: a.clone(),
            side,
            sdp: Bytes::copy_from_slice(sdp),
            then,
            retried,
        };
        self.pending.insert(id, pending);
    }

    /// The answer to a re-anchoring re-INVITE: a 2xx is acknowledged and its
    /// SDP gives the relay the party's media; a provider's challenge is
    /// answered once with the trunk's credentials.
    pub(super) fn reanchored(
        &mut self,
        cx: &mut Cx<'_>,
        (a, side, sdp, then, retried): (CallId, Side, Bytes, Option<Side>, bool),
        code: u16,
        resp: Option<Message>,
    ) {
        let Some(bridge) = self.bridges.get_mut(&a) else {
            return;
        };
        let trunk = bridge.trunk_facing(side);
        match (code, resp, trunk) {
            (200..=299, Some(r), _) => {
                let Some(d) = dialog_of(bridge, side) else {
                    return;
                };
                ack(cx, d, r.cseq().map_or(d.cseq, |c| c.seq));
                let sip = d.remote.addr;
                if let Ok(s) = sdp::parse(r.body()) {
                    bridge.relay.set_peer(side.relay_index(), peer_of(&s, sip));
                }
                if let Some(next) = then {
                    self.reanchor(cx, &a, next, r.body(), None, (None, false));
                }
            }
            (401 | 407, Some(r), Some(t)) if !retried => {
                let Some(d) = dialog_of(bridge, side) else {
                    return;
                };
                let target = d.target.clone();
                let Some((name, value)) =
                    super::outbound::credentials(cx, t, &r, "INVITE", &target)
                else {
                    return;
                };
                let auth = (Some((name, value.as_str())), true);
                self.reanchor(cx, &a, side, &sdp, then, auth);
            }
            _ => {
                tracing::info!(call_id = %a, code, "the transferee's re-INVITE failed; media as it was")
            }
        }
    }
}

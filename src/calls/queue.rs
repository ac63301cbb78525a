//! Queue calls: the ACD at work on a bridge. The caller is answered at once and
//! hears the queue's music from the relay; the routing decision
//! ([`crate::routing::Directory::choose`]) names an agent, who is reserved in the
//! presence map and rung on every contact; the first agent to answer is bridged
//! (the music stops) and remembered in the caller index. An agent who declines
//! or does not answer within the queue's ring time is skipped for this call; the
//! caller goes back to its place in the line. After the queue's longest wait the
//! caller overflows: another queue, an extension, an announcement and hang-up,
//! or a call-back offer: the caller hears a prompt, may leave a voice message
//! (recorded by the relay, saved before anyone hears of it) and/or press 1
//! (RFC 4733 telephone-event, or SIP INFO), and the desk gets a
//! [`crate::callbacks::Request`] once the message is on disk.
//!
//! Who waits, in which order, is kept in one place: the queue's waiting line in
//! [`crate::routing::Directory`]; a call's [`Phase`] holds its own deadlines.

use super::bridge::{
    answer_caller, cancel_ringing, peer_of, refuse, ALeg, APhase, Branch, BranchSpec, Bridge,
};
use super::cdr::{Disposition, HangupBy};
use super::{answered_pt, lossy, new_cdr, Calls, Cx, Party, Refusal, Side, Timer};
use crate::callbacks::{Request, Voice};
use crate::clock::UnixMillis;
use crate::history::ResponseRecord;
use crate::media::prompt::Prompt;
use crate::presence::{DialogState, Direction};
use crate::routing::{CallbackOffer, Overflow, QueueId};
use crate::sip::message::{Message, Method};
use crate::sip::sdp::{self, Origin};
use crate::sip::transaction::TxId;
use crate::sip::{CallId, Dialog, Remote, StatusCode};
use crate::store::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a waiting caller looks for an agent even without presence news.
const RETRY: Duration = Duration::from_secs(1);

/// After this many overflows from queue to queue the caller hears the
/// announcement (a loop in the configuration must not keep a call forever).
const MAX_HOPS: u8 = 4;

/// Where a queue call stands; each phase holds its own deadlines.
#[derive(Debug)]
pub(super) enum Phase {
    /// In the queue's waiting line until `give_up_at` (then it overflows); it
    /// looks for an agent again at `retry_at` even without presence news.
    Waiting {
        give_up_at: Instant,
        retry_at: Instant,
    },
    /// An agent (or the overflow extension) is being rung.
    Offered(Offer),
    /// An agent answered.
    Connected,
    /// Hearing the overflow announcement; hung up at `hang_up_at`.
    Announcing { hang_up_at: Instant },
    /// Offered a call-back: hearing the prompt until `record_at` (then the
    /// relay records voice message `voice`; `None` while it does).
    Message {
        record_at: Option<Instant>,
        voice: u64,
        offer: Arc<CallbackOffer>,
    },
    /// Asked for a call-back: waiting until the desk has it on disk (at most
    /// until `until`), then the thanks.
    Saving {
        until: Instant,
        offer: Arc<CallbackOffer>,
    },
}

/// The longest a caller waits for their call-back to be stored before hearing
/// the sorry announcement instead of the thanks.
const SAVING: Duration = Duration::from_secs(10);

/// A call-back a queue caller is asking for, until their voice message is
/// saved (or they pressed 1 before it began).
#[derive(Debug)]
pub(super) struct LeftMessage {
    pub customer: String,
    pub queue: String,
    pub group: String,
    /// They pressed 1.
    pub asked: bool,
}

/// The agent (or overflow extension) being rung.
#[derive(Debug)]
pub(super) struct Offer {
    pub agent: String,
    /// The offer's branches are `branches[first_branch..]`.
    pub first_branch: usize,
    pub deadline: Instant,
    /// An overflow extension: if it fails too, the caller hears the announcement.
    pub last_resort: bool,
    /// When the caller overflows if it goes back to waiting.
    pub give_up_at: Instant,
}

/// The ACD state of one queue call.
#[derive(Debug)]
pub(super) struct Queued {
    pub id: QueueId,
    /// The caller's number (the caller index key).
    pub caller: String,
    /// Place in the queue's waiting line (kept when an offer fails).
    pub ticket: u64,
    /// Agents already offered this call: never rung again for it.
    pub tried: Vec<String>,
    pub phase: Phase,
    pub wrap_up: Duration,
    /// RTP payload type agreed with the caller (0 or 8).
    pub pt: u8,
    /// The caller's telephone-event payload type, if they offered one.
    pub event_pt: Option<u8>,
    pub hops: u8,
    /// The `o=` of our last SDP to the caller.
    pub origin: Origin,
    /// When the caller entered this queue, and when an agent answered
    /// (the queue's statistics).
    pub entered: UnixMillis,
    pub taken_at: Option<UnixMillis>,
    /// The caller came by a transfer (maybe held): the agent who answers
    /// has the caller re-INVITEd toward them.
    pub transferred: bool,
}

impl Queued {
    /// A caller (`caller`, talking payload types `pt` and `event_pt`) entering
    /// queue `id` now.
    fn new(
        cx: &Cx<'_>,
        id: QueueId,
        caller: String,
        (pt, event_pt): (u8, Option<u8>),
        origin: Origin,
    ) -> Queued {
        let env = cx.env;
        let queue = env.routing.queue(id);
        Queued {
            id,
            caller,
            ticket: env.routing.new_ticket(),
            tried: Vec::new(),
            phase: Phase::Connected,
            wrap_up: queue.wrap_up,
            pt,
            event_pt,
            hops: 0,
            origin,
            entered: cx.wall,
            taken_at: None,
            transferred: false,
        }
    }

    fn due(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Waiting {
                give_up_at,
                retry_at,
            } => Some((*give_up_at).min(*retry_at)),
            Phase::Offered(o) => Some(o.deadline),
            Phase::Connected => None,
            Phase::Announcing { hang_up_at } => Some(*hang_up_at),
            Phase::Message { record_at, .. } => *record_at,
            Phase::Saving { until, .. } => Some(*until),
        }
    }

    /// Whether branch `idx` belongs to the current offer.
    pub(super) fn is_offered(&self, idx: usize) -> bool {
        matches!(&self.phase, Phase::Offered(o) if idx >= o.first_branch)
    }

    /// Whether every branch of the current offer has failed (`idx` just did).
    pub(super) fn offer_over(&self, branches: &[Branch], idx: usize) -> bool {
        match &self.phase {
            Phase::Offered(o) => {
                idx >= o.first_branch
                    && branches[o.first_branch..]
                        .iter()
                        .all(|b| b.final_code.is_some())
            }
            _ => false,
        }
    }

    /// Takes the call out of the waiting line (if it is there).
    pub(super) fn leave_line(&self, cx: &Cx<'_>) {
        if matches!(self.phase, Phase::Waiting { .. }) {
            cx.env.routing.leave(self.id, self.ticket);
        }
    }

    /// Puts the call (back) in the waiting line, keeping its place.
    fn wait(&mut self, cx: &Cx<'_>, a: &CallId, give_up_at: Instant) {
        cx.env.routing.wait(
            self.id,
            self.ticket,
            (&self.tried, cx.shard, a, self.entered),
        );
        self.phase = Phase::Waiting {
            give_up_at,
            retry_at: cx.now,
        };
    }
}

/// Who enters which queue.
#[derive(Debug)]
pub(super) struct Entry {
    pub queue: QueueId,
    /// The caller's number (the caller index key).
    pub caller: String,
    /// The trunk the call came in on (its channel is held).
    pub trunk: Option<crate::outside::TrunkId>,
}

impl Calls {
    /// A new INVITE entering a queue.
    pub(super) fn invite_queue(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        remote: Remote,
        a: CallId,
        entry: Entry,
    ) {
        let Entry {
            queue: id,
            caller,
            trunk,
        } = entry;
        let env = cx.env;
        let queue = env.routing.queue(id);
        let a_leg = ALeg::new(tx, req, remote);
        let cdr = new_cdr(cx, &a, &caller, &queue.number);
        let origin = Origin::new(cdr.id);
        let prepared = Self::prepare_bridge(cx, req, remote, &a).and_then(|(offer, relay)| {
            let answer = sdp::local_answer(&offer, cx.media_ip(remote), relay.ports()[0], origin)
                .ok_or(Refusal::failed(StatusCode::NOT_ACCEPTABLE_HERE))?;
            Ok((relay, answer))
        });
        let (relay, answer) = match prepared {
            Ok(p) => p,
            Err(refusal) => {
                super::release_trunk(cx, trunk);
                return refuse(cx, &a_leg, cdr, refusal);
            }
        };
        let pt = answered_pt(&answer);
        let event_pt = super::answered_event_pt(&answer);
        welcome(relay.as_ref(), queue, pt);
        let caller_party = super::start_party(
            &env.presence,
            &caller,
            &a,
            Direction::Initiator,
            &queue.number,
            cx.wall,
        );
        let mut queued = Queued::new(cx, id, caller, (pt, event_pt), origin);
        queued.wait(cx, &a, cx.now + queue.max_wait);
        let mut bridge = Bridge {
            phase: APhase::Confirmed,
            caller_party,
            queue: Some(queued),
            trunk,
            ..Bridge::new(cx, a_leg, relay, cdr)
        };
        answer_caller(cx, &mut bridge, &queue.number, Some(&answer), None);
        self.add_bridge(cx, a.clone(), bridge);
        self.route_queue_call(cx, &a);
    }

    /// Arms the queue timer of call `a` at its phase's next deadline.
    /// The transferee (side A) of call `a` is transferred into queue `id`:
    /// the transferor is released at once and the caller waits there like
    /// one who dialled it. False when a transferee on side B cannot queue.
    pub(super) fn transfer_to_queue(&mut self, cx: &mut Cx<'_>, a: &CallId, id: QueueId) -> bool {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return false;
        };
        let Some(mut t) = bridge.transfer.take_if(|t| matches!(t.by, Side::B(_))) else {
            return false;
        };
        cancel_ringing(cx, bridge, bridge.hunt.first, None);
        if let Some((ext, party)) = bridge.callee_party.take() {
            let _ = cx.env.presence.dialog_ended(&ext, party, None, cx.wall);
        }
        let old = match t.by {
            Side::B(i) => bridge.branches[i].dialog.take(),
            Side::A => None,
        };
        bridge.answered = None;
        bridge.phase = APhase::Confirmed;
        let queue = cx.env.routing.queue(id);
        bridge.cdr.callee = queue.number.clone();
        bridge.cdr.answer_ms = Some(cx.wall.0);
        let pts = (
            answered_pt(&bridge.b_sdp),
            super::answered_event_pt(&bridge.b_sdp),
        );
        let origin = Origin::new(bridge.cdr.id);
        welcome(bridge.relay.as_ref(), queue, pts.0);
        let mut queued = Queued::new(cx, id, bridge.cdr.caller.clone(), pts, origin);
        queued.transferred = true;
        queued.wait(cx, a, cx.now + queue.max_wait);
        bridge.queue = Some(queued);
        tracing::info!(call_id = %a, queue = %queue.number, "transferred to a queue");
        super::transfer::release(cx, &mut self.legs, old, &t);
        let by = super::transfer::hangup_by(t.by);
        super::transfer::end_transferor(cx, &mut t, by);
        self.route_queue_call(cx, a);
        true
    }

    fn arm_queue(&self, cx: &mut Cx<'_>, a: &CallId) {
        let due = self
            .bridges
            .get(a)
            .and_then(|b| b.queue.as_ref())
            .and_then(Queued::due);
        if let Some(at) = due {
            cx.timer(at, Timer::Queue(a.clone()));
        }
    }

    /// Offers waiting call `a` to the next agent, if it may take one now.
    pub(super) fn route_queue_call(&mut self, cx: &mut Cx<'_>, a: &CallId) {
        let env = cx.env;
        let Some(q) = self.bridges.get_mut(a).and_then(|b| b.queue.as_mut()) else {
            return;
        };
        let Phase::Waiting { retry_at, .. } = &mut q.phase else {
            return;
        };
        *retry_at = cx.now + RETRY;
        let (id, ticket) = (q.id, q.ticket);
        let recent = if crate::history::is_anonymous(&q.caller) {
            Vec::new()
        } else {
            env.history.recent_agents(&q.caller)
        };
        let mut raced: Vec<String> = Vec::new();
        // A few candidates at most: each failed reservation was a race just lost.
        for _ in 0..8 {
            let Some(passable) = env.routing.passable(id, ticket) else {
                break; // someone ahead has first pick of every agent
            };
            let Some(q) = self.bridges.get(a).and_then(|b| b.queue.as_ref()) else {
                return;
            };
            let skip = |e: &str| {
                q.tried.iter().any(|t| t == e)
                    || raced.iter().any(|t| t == e)
                    || (!passable.is_empty() && !passable.iter().any(|t| t == e))
            };
            let Some((agent, reason)) = env
                .routing
                .choose(id, &recent, skip, |e| env.presence.state(e))
            else {
                break;
            };
            let agent = agent.to_string();
            let Some(dialog) =
                env.presence
                    .reserve(&agent, (&a.to_string(), None), &q.caller, cx.wall)
            else {
                raced.push(agent);
                continue;
            };
            tracing::debug!(call_id = %a, %agent, ?reason, "queue call offered");
            if self.offer(cx, a, &agent, (agent.clone(), dialog), false) {
                return;
            }
            raced.push(agent);
        }
        self.arm_queue(cx, a);
    }

    /// Rings `agent` on every contact for call `a`; `false` if it has none (its
    /// presence dialog is ended and it counts as tried).
    fn offer(
        &mut self,
        cx: &mut Cx<'_>,
        a: &CallId,
        agent: &str,
        party: Party,
        last_resort: bool,
    ) -> bool {
        let env = cx.env;
        let bindings = env.registrar.lookup(agent, cx.wall);
        let Some(bridge) = self.bridges.get(a) else {
            return false;
        };
        let Some(q) = bridge.queue.as_ref() else {
            return false;
        };
        let queue = env.routing.queue(q.id);
        let a_offer = sdp::parse(bridge.a.invite.body()).ok();
        let port = bridge.relay.ports()[1];
        let origin = Origin::new(bridge.cdr.id);
        let caller = q.caller.clone();
        let display = bridge
            .a
            .invite
            .from_header()
            .and_then(|f| f.display)
            .map(lossy);
        let spec = BranchSpec {
            caller: &caller,
            display: display.as_deref(),
            callee: agent,
            max_forwards: 69,
            timers_from: None,
            referred_by: None,
        };
        let first = bridge.branches.len();
        // The agent is offered the one codec the caller already has.
        let branches = self.send_branches(cx, a, &spec, bindings, first, |cx, target| {
            a_offer
                .as_ref()
                .and_then(|o| sdp::local_answer(o, cx.media_ip(target), port, origin))
        });
        let ring = if last_resort {
            env.calls.ring_timeout
        } else {
            queue.ring
        };
        let Some(bridge) = self.bridges.get_mut(a) else {
            return false;
        };
        let Some(q) = bridge.queue.as_mut() else {
            return false;
        };
        q.tried.push(agent.to_string());
        if branches.is_empty() {
            let _ = env.presence.dialog_ended(&party.0, party.1, None, cx.wall);
            return false;
        }
        let give_up_at = match q.phase {
            Phase::Waiting { give_up_at, .. } => give_up_at,
            _ => cx.now,
        };
        q.leave_line(cx);
        q.phase = Phase::Offered(Offer {
            agent: agent.to_string(),
            first_branch: first,
            deadline: cx.now + ring,
            last_resort,
            give_up_at,
        });
        bridge.branches.extend(branches);
        bridge.callee_party = Some(party);
        self.arm_queue(cx, a);
        true
    }

    /// Call `a`'s current offer, taken out of its phase (the offer is over:
    /// answered, declined or timed out); the phase becomes `next`.
    fn take_offer(&mut self, a: &CallId, next: Phase) -> Option<Offer> {
        let q = self.bridges.get_mut(a)?.queue.as_mut()?;
        match std::mem::replace(&mut q.phase, next) {
            Phase::Offered(o) => Some(o),
            other => {
                q.phase = other;
                None
            }
        }
    }

    /// The offered agent declined, failed or did not answer in time: the caller
    /// goes back to its place in the line (or, after an overflow extension, hears
    /// the announcement).
    pub(super) fn offer_failed(&mut self, cx: &mut Cx<'_>, a: &CallId) {
        let Some(offer) = self.take_offer(a, Phase::Connected) else {
            return;
        };
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        if let Some((ext, id)) = bridge.callee_party.take() {
            let _ = cx.env.presence.dialog_ended(&ext, id, None, cx.wall);
        }
        tracing::debug!(call_id = %a, agent = %offer.agent, "queue call not taken; skipping the agent");
        cancel_ringing(cx, bridge, offer.first_branch, None);
        if offer.last_resort {
            return self.announce_and_hang_up(cx, a);
        }
        let Some(q) = bridge.queue.as_mut() else {
            return;
        };
        q.wait(cx, a, offer.give_up_at);
        self.route_queue_call(cx, a);
    }

    /// An agent answered call `a` on branch `idx`: bridge, stop the music,
    /// remember the agent for this caller.
    pub(super) fn queue_answered(
        &mut self,
        cx: &mut Cx<'_>,
        a: &CallId,
        idx: usize,
        r: &Message,
        dialog: Option<Dialog>,
    ) {
        let Some(offer) = self.take_offer(a, Phase::Connected) else {
            return;
        };
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        bridge.answered = Some(idx);
        bridge.branches[idx].dialog = dialog;
        bridge.branches[idx].final_code = Some(200);
        if let Ok(s) = sdp::parse(r.body()) {
            bridge
                .relay
                .set_peer(1, peer_of(&s, bridge.branches[idx].remote.addr));
        }
        bridge.relay.stop_playing();
        bridge.cdr.callee = offer.agent.clone();
        super::recording::listen_for_code(cx, bridge);
        if let Some((ext, id)) = &bridge.callee_party {
            let _ = cx
                .env
                .presence
                .dialog_state(ext, *id, DialogState::Confirmed, cx.wall);
        }
        let caller = match bridge.queue.as_mut() {
            Some(q) => {
                q.taken_at = Some(cx.wall);
                let waited = Duration::from_millis(cx.wall.0.saturating_sub(q.entered.0));
                cx.env.routing.answered(q.id, cx.wall, waited);
                q.caller.clone()
            }
            None => String::new(),
        };
        cancel_ringing(cx, bridge, offer.first_branch, Some(idx));
        tracing::debug!(call_id = %a, agent = %offer.agent, "queue call answered");
        record_answered(cx, &caller, offer.agent, a);
        if bridge.queue.as_ref().is_some_and(|q| q.transferred) {
            self.reanchor(cx, a, Side::A, r.body(), None, (None, false));
        }
    }

    /// The queue timer of call `a` fired (`at` is the deadline it was armed for).
    pub(super) fn queue_timer(&mut self, cx: &mut Cx<'_>, a: &CallId, at: Instant) {
        let Some(q) = self.bridges.get(a).and_then(|b| b.queue.as_ref()) else {
            return;
        };
        if q.due() != Some(at) {
            return; // re-armed since
        }
        match q.phase {
            Phase::Message { .. } => self.start_message(a),
            Phase::Saving { .. } => {
                tracing::error!(call_id = %a, "the call-back was not stored in time");
                self.end_offer(cx, a, false)
            }
            Phase::Announcing { .. } => self.end_bridge(cx, a, None, HangupBy::System),
            Phase::Offered(_) => self.offer_failed(cx, a),
            Phase::Waiting { give_up_at, .. } if cx.now >= give_up_at => self.overflow(cx, a),
            Phase::Waiting { .. } => self.route_queue_call(cx, a),
            Phase::Connected => {}
        }
    }

    /// The caller waited the queue's longest wait.
    fn overflow(&mut self, cx: &mut Cx<'_>, a: &CallId) {
        let env = cx.env;
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let Some(q) = bridge.queue.as_mut() else {
            return;
        };
        q.leave_line(cx);
        q.phase = Phase::Connected;
        let overflow = env.routing.queue(q.id).overflow.clone();
        tracing::info!(call_id = %a, "queue wait over; overflow: {overflow:?}");
        match overflow {
            Overflow::Queue(next) if q.hops < MAX_HOPS => {
                let queue = env.routing.queue(next);
                q.hops += 1;
                q.id = next;
                q.ticket = env.routing.new_ticket();
                q.tried.clear();
                q.wrap_up = queue.wrap_up;
                q.entered = cx.wall;
                q.wait(cx, a, cx.now + queue.max_wait);
                bridge.relay.play(0, Arc::clone(&queue.music), q.pt, true);
                self.route_queue_call(cx, a);
            }
            Overflow::Extension(ext) => {
                let caller = q.caller.clone();
                let party = super::start_party(
                    &env.presence,
                    &ext,
                    a,
                    Direction::Recipient,
                    &caller,
                    cx.wall,
                );
                let rung = match party {
                    Some(p) => self.offer(cx, a, &ext, p, true),
                    None => false,
                };
                if !rung {
                    self.announce_and_hang_up(cx, a);
                }
            }
            Overflow::Callback(offer) if !crate::history::is_anonymous(&q.caller) => {
                self.offer_callback(cx, a, offer)
            }
            _ => self.announce_and_hang_up(cx, a),
        }
    }

    /// Offers waiting call `a` a call-back: the prompt, then the recording.
    fn offer_callback(&mut self, cx: &mut Cx<'_>, a: &CallId, offer: Arc<CallbackOffer>) {
        let voice = cx.next_id();
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let Some(q) = bridge.queue.as_mut() else {
            return;
        };
        bridge.relay.play(0, Arc::clone(&offer.prompt), q.pt, false);
        if let Some(pt) = q.event_pt {
            bridge.relay.listen_digits(0, pt);
        }
        self.messages.insert(
            voice,
            LeftMessage {
                customer: q.caller.clone(),
                queue: cx.env.routing.queue(q.id).number.clone(),
                group: offer.group.clone(),
                asked: false,
            },
        );
        q.phase = Phase::Message {
            record_at: Some(cx.now + offer.prompt.duration()),
            voice,
            offer,
        };
        self.arm_queue(cx, a);
    }

    /// The prompt is over: the caller's voice message is recorded.
    fn start_message(&mut self, a: &CallId) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        if let Some(Queued {
            phase:
                Phase::Message {
                    record_at,
                    voice,
                    offer,
                    ..
                },
            ..
        }) = bridge.queue.as_mut()
        {
            *record_at = None;
            bridge.relay.record(0, *voice, offer.max_message);
            tracing::debug!(call_id = %a, voice = *voice, "recording a voice message");
        }
    }

    /// Queue caller `a` sent a DTMF digit: "1" while offered a call-back asks
    /// for one (the message so far is kept). They hear the thanks once the
    /// call-back is on disk.
    pub(super) fn queue_digit(&mut self, cx: &mut Cx<'_>, a: &CallId, digit: char) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let Some(Queued {
            phase: Phase::Message {
                record_at, voice, ..
            },
            ..
        }) = &bridge.queue
        else {
            return;
        };
        if digit != '1' {
            return;
        }
        let (recording, voice) = (record_at.is_none(), *voice);
        tracing::info!(call_id = %a, "queue caller pressed 1 for a call-back");
        bridge.relay.stop_playing();
        match recording {
            true => {
                if let Some(m) = self.messages.get_mut(&voice) {
                    m.asked = true;
                }
                // Saved and reported: the request goes with the message.
                bridge.relay.stop_recording();
            }
            false => {
                if let Some(m) = self.messages.remove(&voice) {
                    cx.callback(request(a, m, true, None));
                }
            }
        }
        self.await_saving(cx, a);
    }

    /// Voice message `id` was recorded (`saved`: it held audio and is on
    /// disk): the call-back is asked for if there is a message or the caller
    /// pressed 1. A caller still recording (the message hit its limit) waits
    /// for it to be saved, or hears the sorry announcement if there is none.
    pub(super) fn message_recorded(
        &mut self,
        cx: &mut Cx<'_>,
        a: &CallId,
        id: u64,
        saved: Option<Voice>,
    ) {
        let Some(m) = self.messages.remove(&id) else {
            return;
        };
        let asks = saved.is_some() || m.asked;
        if asks {
            cx.callback(request(a, m, false, saved));
        } else {
            tracing::info!(call_id = %a, "no call-back: an empty message");
        }
        let at_limit = self
            .bridges
            .get(a)
            .and_then(|b| b.queue.as_ref())
            .is_some_and(
                |q| matches!(q.phase, Phase::Message { record_at: None, voice, .. } if voice == id),
            );
        match (at_limit, asks) {
            (true, true) => self.await_saving(cx, a),
            (true, false) => self.end_offer(cx, a, false),
            (false, _) => {}
        }
    }

    /// The caller asked: they wait (in silence, briefly) until the desk has
    /// the call-back on disk.
    fn await_saving(&mut self, cx: &mut Cx<'_>, a: &CallId) {
        let Some(q) = self.bridges.get_mut(a).and_then(|b| b.queue.as_mut()) else {
            return;
        };
        let Phase::Message { offer, .. } = &q.phase else {
            return;
        };
        q.phase = Phase::Saving {
            until: cx.now + SAVING,
            offer: Arc::clone(offer),
        };
        self.arm_queue(cx, a);
    }

    /// The desk stored (or failed to store) the call-back of queue caller `a`:
    /// they hear the thanks (or the sorry announcement) and are hung up.
    pub(super) fn callback_saved(&mut self, cx: &mut Cx<'_>, a: &CallId, saved: bool) {
        let saving = self
            .bridges
            .get(a)
            .and_then(|b| b.queue.as_ref())
            .is_some_and(|q| matches!(q.phase, Phase::Saving { .. }));
        if saving {
            self.end_offer(cx, a, saved);
        }
    }

    /// A call-back offer is over: the thanks (`saved`) or the sorry
    /// announcement, then the PBX hangs up.
    fn end_offer(&mut self, cx: &mut Cx<'_>, a: &CallId, saved: bool) {
        let Some(q) = self.bridges.get(a).and_then(|b| b.queue.as_ref()) else {
            return;
        };
        let prompt = match (&q.phase, saved) {
            (Phase::Message { offer, .. } | Phase::Saving { offer, .. }, true) => {
                Arc::clone(&offer.thanks)
            }
            _ => Arc::clone(&cx.env.routing.queue(q.id).sorry),
        };
        self.play_and_hang_up(cx, a, prompt);
    }

    /// Plays `prompt` to caller `a`, then hangs up.
    fn play_and_hang_up(&mut self, cx: &mut Cx<'_>, a: &CallId, prompt: Arc<Prompt>) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let Some(q) = bridge.queue.as_mut() else {
            return;
        };
        q.leave_line(cx);
        q.phase = Phase::Announcing {
            hang_up_at: cx.now + prompt.duration() + Duration::from_millis(200),
        };
        bridge.relay.play(0, prompt, q.pt, false);
        self.arm_queue(cx, a);
    }

    /// A queue call ended: a call-back offer whose recording never began
    /// asks for nothing (one that began reports when its message is saved).
    pub(super) fn forget_message(&mut self, bridge: &Bridge) {
        if let Some(Queued {
            phase:
                Phase::Message {
                    record_at: Some(_),
                    voice,
                    ..
                },
            ..
        }) = &bridge.queue
        {
            self.messages.remove(voice);
        }
    }

    /// Plays the overflow announcement, then hangs up.
    fn announce_and_hang_up(&mut self, cx: &mut Cx<'_>, a: &CallId) {
        let Some(q) = self.bridges.get(a).and_then(|b| b.queue.as_ref()) else {
            return;
        };
        let queue = cx.env.routing.queue(q.id);
        let prompt: Arc<Prompt> = match &queue.overflow {
            Overflow::Announce(p) => Arc::clone(p),
            _ => Arc::clone(&queue.sorry),
        };
        self.play_and_hang_up(cx, a, prompt);
    }

    /// A re-INVITE, UPDATE or INFO from a caller who is still waiting: answered
    /// here (the relay keeps its port; the new SDP only moves the caller's media).
    pub(super) fn queue_in_dialog(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        remote: Remote,
        a: &CallId,
    ) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let Some(q) = bridge.queue.as_mut() else {
            return;
        };
        if req.method() == Some(&Method::Info) {
            if let Some(d) = super::info_digit(cx, tx, req, remote) {
                self.queue_digit(cx, a, d);
            }
            return;
        }
        super::bridge::answer_again(cx, (tx, req, remote), &*bridge.relay, &mut q.origin);
    }
}

/// What a caller entering `queue` hears first: its greeting, then its music.
fn welcome(relay: &dyn crate::media::RelayControl, queue: &crate::routing::Queue, pt: u8) {
    match &queue.greeting {
        Some(g) => relay.play_then(0, Arc::clone(g), Arc::clone(&queue.music), pt),
        None => relay.play(0, Arc::clone(&queue.music), pt, true),
    }
}

/// Agent `agent` took `caller`'s call `a` (from the queue, or transferred
/// to them): the caller's history remembers who helped, and the agent's
/// response record opens.
pub(super) fn record_answered(cx: &mut Cx<'_>, caller: &str, agent: String, a: &CallId) {
    let Some(w) = cx.env.history.answered(caller, &agent) else {
        return;
    };
    let record = ResponseRecord {
        id: cx.next_id(),
        caller: caller.to_string(),
        time_ms: cx.wall.0,
        agent,
        call_id: a.to_string(),
        notes: String::new(),
        outcome: "answered".into(),
        name: String::new(),
    };
    cx.env.history.opened(&record);
    // Made durable with the next group commit (nothing waits for it).
    cx.store(w);
    cx.store(Write::put(record));
}

/// A queue call ended: its talk time, or an abandoned caller, for the queue's
/// statistics (a caller sent away by the overflow did not abandon).
pub(super) fn count_end(cx: &Cx<'_>, queue: Option<&Queued>, by: HangupBy) {
    let Some(q) = queue else { return };
    let since = |t: UnixMillis| Duration::from_millis(cx.wall.0.saturating_sub(t.0));
    match q.taken_at {
        Some(t) => cx.env.routing.talked(q.id, cx.wall, since(t)),
        None if by == HangupBy::Caller => cx.env.routing.abandoned(q.id, cx.wall, since(q.entered)),
        None => {}
    }
}

/// The CDR disposition of a call that was connected (or, for a queue call,
/// answered by the queue): a queue call no agent took counts as not answered.
pub(super) fn disposition(bridge: &Bridge) -> Disposition {
    match bridge.queue {
        Some(_) if bridge.answered.is_none() => Disposition::NoAnswer,
        // A transferee whose new party never answered.
        _ if bridge.cdr.answer_ms.is_none() => Disposition::NoAnswer,
        _ => Disposition::Answered,
    }
}

/// The call-back of queue call `a` to ask the desk for.
fn request(a: &CallId, m: LeftMessage, asked: bool, voice: Option<Voice>) -> Request {
    Request {
        call: a.clone(),
        customer: m.customer,
        queue: m.queue,
        group: m.group,
        voice,
        asked: m.asked || asked,
    }
}

//! Queue calls: the ACD at work on a bridge. The caller is answered at once and
//! hears the queue's music from the relay; the routing decision
//! ([`crate::routing::Directory::choose`]) names an agent, who is reserved in the
//! presence map and rung on every contact; the first agent to answer is bridged
//! (the music stops) and remembered in the caller index. An agent who declines
//! or does not answer within the queue's ring time is skipped for this call; the
//! caller goes back to its place in the line. After the queue's longest wait the
//! caller overflows: another queue, an extension, or an announcement and hang-up.

use super::{peer_of, BranchSpec, Bridge};
use crate::b2bua::cdr::{Disposition, HangupBy};
use crate::b2bua::{answered_pt, lossy, Dialog, Refusal};
use crate::endpoint::{to_tag_string, Endpoint};
use crate::media::prompt::Prompt;
use crate::presence::{DialogState, Direction};
use crate::routing::{Overflow, QueueId};
use crate::sip::message::Message;
use crate::sip::sdp;
use crate::sip::transaction::TxId;
use crate::sip::Remote;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Timer keys of queue calls: this prefix and leg A's Call-ID.
pub(crate) const QUEUE_TIMER: &str = "queue\0";

/// How often a waiting caller looks for an agent even without presence news.
const RETRY: Duration = Duration::from_secs(1);

/// After this many overflows from queue to queue the caller hears the
/// announcement (a loop in the configuration must not keep a call forever).
const MAX_HOPS: u8 = 4;

/// The ACD state of one queue call.
#[derive(Debug)]
pub(crate) struct Queued {
    pub id: QueueId,
    /// The caller's number (the caller index key).
    pub caller: String,
    /// Place in the queue's waiting line (kept when an offer fails).
    pub ticket: u64,
    /// In the waiting line (not being offered, connected or overflowing).
    pub waiting: bool,
    /// Agents already offered this call: never rung again for it.
    pub tried: Vec<String>,
    pub offer: Option<Offer>,
    pub give_up_at: Instant,
    pub retry_at: Option<Instant>,
    /// After the overflow announcement.
    pub hang_up_at: Option<Instant>,
    pub wrap_up: Duration,
    /// RTP payload type agreed with the caller (0 or 8).
    pub pt: u8,
    pub hops: u8,
    /// The one live entry of this call's queue timer.
    pub timer_at: Option<Instant>,
}

/// The agent (or overflow extension) being rung.
#[derive(Debug)]
pub(crate) struct Offer {
    pub agent: String,
    /// The offer's branches are `branches[first_branch..]`.
    pub first_branch: usize,
    pub deadline: Instant,
    /// An overflow extension: if it fails too, the caller hears the announcement.
    pub last_resort: bool,
}

impl Queued {
    fn next_due(&self) -> Option<Instant> {
        [
            self.offer.as_ref().map(|o| o.deadline),
            self.waiting.then_some(self.give_up_at),
            self.retry_at.filter(|_| self.waiting),
            self.hang_up_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Call `a`'s bridge, with its current offer taken out (the offer is over:
/// answered, declined or timed out).
fn take_offer<'a>(
    bridges: &'a mut std::collections::HashMap<String, Bridge>,
    a: &str,
) -> Option<(&'a mut Bridge, Offer)> {
    let bridge = bridges.get_mut(a)?;
    let offer = bridge.queue.as_mut()?.offer.take()?;
    Some((bridge, offer))
}

impl Endpoint {
    /// A new INVITE to queue `id` from `caller`.
    pub(crate) fn invite_queue(
        &mut self,
        now: Instant,
        tx: TxId,
        req: &Message,
        remote: Remote,
        id: QueueId,
        caller: String,
    ) {
        let Some(a_call_id) = req.call_id().map(lossy) else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        let queue = shared.routing.queue(id);
        let mut cdr = self.new_cdr(now, req, &queue.number);
        cdr.caller = caller.clone();
        let prepared = self
            .prepare_bridge(req, remote, &a_call_id)
            .and_then(|(offer, relay)| {
                let answer =
                    sdp::local_answer(&offer, self.media_ip(remote), relay.ports[0], cdr.id)
                        .ok_or(Refusal::failed(488, "Not Acceptable Here"))?;
                relay.set_peer(0, peer_of(&offer, remote.addr));
                Ok((relay, answer))
            });
        let (relay, answer) = match prepared {
            Ok(p) => p,
            Err(refusal) => return self.refuse_call(now, tx, req, remote, cdr, refusal),
        };
        let pt = answered_pt(&answer);
        match &queue.greeting {
            Some(g) => relay.play_then(0, Arc::clone(g), Arc::clone(&queue.music), pt),
            None => relay.play(0, Arc::clone(&queue.music), pt, true),
        }
        let wall = self.wall(now);
        let caller_party = super::start_party(
            &shared.presence,
            &caller,
            &a_call_id,
            Direction::Initiator,
            &queue.number,
            wall,
        );
        let ticket = shared.routing.wait(id, None, &[]);
        self.add_bridge(
            &a_call_id,
            Bridge {
                phase: super::APhase::Calling,
                a_tx: tx,
                a_invite: req.clone(),
                a_remote: remote,
                a_tag: to_tag_string(),
                a_dialog: None,
                branches: Vec::new(),
                answered: None,
                relay,
                cdr,
                ok: None,
                retransmit: shared.timers.t1,
                ack_deadline: now,
                ring_deadline: now,
                timer_at: None,
                session: None,
                caller_party,
                callee_party: None,
                queue: Some(Queued {
                    id,
                    caller,
                    ticket,
                    waiting: true,
                    tried: Vec::new(),
                    offer: None,
                    give_up_at: now + queue.max_wait,
                    retry_at: None,
                    hang_up_at: None,
                    wrap_up: queue.wrap_up,
                    pt,
                    hops: 0,
                    timer_at: None,
                }),
            },
        );
        self.answer_caller(now, &a_call_id, &queue.number, Some(&answer), None);
        self.waiting_calls.insert(a_call_id.clone());
        self.route_queue_call(now, &a_call_id);
    }

    /// Arms the queue timer of call `a` at its next due time.
    fn arm_queue_timer(&mut self, a: &str) {
        let Some(q) = self.bridges.get_mut(a).and_then(|b| b.queue.as_mut()) else {
            return;
        };
        q.timer_at = q.next_due();
        if let Some(at) = q.timer_at {
            self.call_timers
                .push(std::cmp::Reverse((at, format!("{QUEUE_TIMER}{a}"))));
        }
    }

    /// Offers waiting call `a` to the next agent, if it may take one now.
    pub(crate) fn route_queue_call(&mut self, now: Instant, a: &str) {
        let shared = Arc::clone(&self.shared);
        let Some(q) = self.bridges.get_mut(a).and_then(|b| b.queue.as_mut()) else {
            return;
        };
        if !q.waiting {
            return;
        }
        q.retry_at = Some(now + RETRY);
        let (id, ticket) = (q.id, q.ticket);
        let recent = if crate::history::is_anonymous(&q.caller) {
            Vec::new()
        } else {
            shared.history.recent_agents(&q.caller)
        };
        let wall = self.wall(now);
        let mut raced: Vec<String> = Vec::new();
        // A few candidates at most: each failed reservation was a race just lost.
        for _ in 0..8 {
            let Some(passable) = shared.routing.passable(id, ticket) else {
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
            let Some((agent, reason)) = shared
                .routing
                .choose(id, &recent, skip, |e| shared.presence.state(e))
            else {
                break;
            };
            let agent = agent.to_string();
            let Some(dialog) = shared.presence.reserve(&agent, a, &q.caller, wall) else {
                raced.push(agent);
                continue;
            };
            tracing::debug!(call_id = %a, %agent, ?reason, "queue call offered");
            if self.offer(now, a, &agent, (agent.clone(), dialog), false) {
                return;
            }
            raced.push(agent);
        }
        self.arm_queue_timer(a);
    }

    /// Rings `agent` on every contact for call `a`; `false` if it has none (its
    /// presence dialog is ended and it counts as tried).
    fn offer(
        &mut self,
        now: Instant,
        a: &str,
        agent: &str,
        party: super::Party,
        last_resort: bool,
    ) -> bool {
        let shared = Arc::clone(&self.shared);
        let wall = self.wall(now);
        let bindings = shared.registrar.lookup(agent, wall);
        let Some(bridge) = self.bridges.get(a) else {
            return false;
        };
        let Some(q) = bridge.queue.as_ref() else {
            return false;
        };
        let queue = shared.routing.queue(q.id);
        let a_offer = sdp::parse(bridge.a_invite.body()).ok();
        let port = bridge.relay.ports[1];
        let session_id = bridge.cdr.id;
        let caller = q.caller.clone();
        let display = bridge
            .a_invite
            .from_header()
            .and_then(|f| f.display)
            .map(lossy);
        let spec = BranchSpec {
            caller: &caller,
            display: display.as_deref(),
            callee: agent,
            max_forwards: 69,
            timers_from: None,
        };
        let first = bridge.branches.len();
        // The agent is offered the one codec the caller already has.
        let branches = self.send_branches(now, a, &spec, bindings, first, |ep, target| {
            a_offer
                .as_ref()
                .and_then(|o| sdp::local_answer(o, ep.media_ip(target), port, session_id))
        });
        let ring = if last_resort {
            shared.ring_timeout
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
            let _ = shared.presence.dialog_ended(&party.0, party.1, None, wall);
            return false;
        }
        shared.routing.leave(q.id, q.ticket);
        q.waiting = false;
        q.offer = Some(Offer {
            agent: agent.to_string(),
            first_branch: first,
            deadline: now + ring,
            last_resort,
        });
        bridge.branches.extend(branches);
        bridge.callee_party = Some(party);
        self.waiting_calls.remove(a);
        self.arm_queue_timer(a);
        true
    }

    /// The offered agent declined, failed or did not answer in time: the caller
    /// goes back to its place in the line (or, after an overflow extension, hears
    /// the announcement).
    pub(super) fn offer_failed(&mut self, now: Instant, a: &str) {
        let wall = self.wall(now);
        let Some((bridge, offer)) = take_offer(&mut self.bridges, a) else {
            return;
        };
        if let Some((ext, id)) = bridge.callee_party.take() {
            let _ = self.shared.presence.dialog_ended(&ext, id, None, wall);
        }
        tracing::debug!(call_id = %a, agent = %offer.agent, "queue call not taken; skipping the agent");
        self.cancel_ringing(now, a, offer.first_branch, None);
        if offer.last_resort {
            return self.announce_and_hang_up(now, a);
        }
        let Some(q) = self.bridges.get_mut(a).and_then(|b| b.queue.as_mut()) else {
            return;
        };
        q.waiting = true;
        self.shared.routing.wait(q.id, Some(q.ticket), &q.tried);
        self.waiting_calls.insert(a.to_string());
        self.route_queue_call(now, a);
    }

    /// An agent answered call `a` on branch `idx`: bridge, stop the music,
    /// remember the agent for this caller.
    pub(super) fn queue_answered(
        &mut self,
        now: Instant,
        a: &str,
        idx: usize,
        r: &Message,
        dialog: Option<Dialog>,
    ) {
        let wall = self.wall(now);
        let shared = Arc::clone(&self.shared);
        let Some((bridge, offer)) = take_offer(&mut self.bridges, a) else {
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
        if let Some((ext, id)) = &bridge.callee_party {
            let _ = shared
                .presence
                .dialog_state(ext, *id, DialogState::Confirmed, wall);
        }
        let caller = bridge
            .queue
            .as_ref()
            .map(|q| q.caller.clone())
            .unwrap_or_default();
        self.cancel_ringing(now, a, offer.first_branch, Some(idx));
        tracing::debug!(call_id = %a, agent = %offer.agent, "queue call answered");
        if let Some(w) = shared.history.answered(&caller, &offer.agent) {
            let record = crate::history::ResponseRecord {
                id: shared.store.next_id().unwrap_or_default(),
                caller,
                time_ms: wall.0,
                agent: offer.agent,
                call_id: a.to_string(),
                notes: String::new(),
                outcome: "answered".into(),
            };
            for w in [w, crate::store::Write::PutResponse(record)] {
                if let Err(e) = shared.writer.write(w) {
                    tracing::error!(call_id = %a, "caller history not stored: {e}");
                }
            }
            // Made durable with the next group commit (nothing waits for it).
            self.request_durability();
        }
        self.arm_queue_timer(a);
    }

    /// The queue timer of call `a` fired (`at` is the entry that fired).
    pub(crate) fn queue_timer(&mut self, now: Instant, a: &str, at: Instant) {
        let Some(q) = self.bridges.get(a).and_then(|b| b.queue.as_ref()) else {
            return;
        };
        if q.timer_at != Some(at) {
            return; // re-armed since
        }
        if q.hang_up_at.is_some_and(|t| now >= t) {
            return self.end_bridge(now, a, None, HangupBy::System);
        }
        if q.offer.as_ref().is_some_and(|o| now >= o.deadline) {
            self.offer_failed(now, a);
        } else if q.waiting && now >= q.give_up_at {
            self.overflow(now, a);
        } else if q.waiting {
            self.route_queue_call(now, a);
        }
        self.arm_queue_timer(a);
    }

    /// Presence changed somewhere: waiting callers of this shard look again.
    pub(crate) fn retry_waiting_calls(&mut self, now: Instant) {
        let waiting: Vec<String> = self.waiting_calls.iter().cloned().collect();
        for a in waiting {
            self.route_queue_call(now, &a);
        }
    }

    /// The caller waited the queue's longest wait.
    fn overflow(&mut self, now: Instant, a: &str) {
        let shared = Arc::clone(&self.shared);
        let wall = self.wall(now);
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let Some(q) = bridge.queue.as_mut() else {
            return;
        };
        shared.routing.leave(q.id, q.ticket);
        q.waiting = false;
        self.waiting_calls.remove(a);
        let overflow = shared.routing.queue(q.id).overflow.clone();
        tracing::info!(call_id = %a, "queue wait over; overflow: {overflow:?}");
        match overflow {
            Overflow::Queue(next) if q.hops < MAX_HOPS => {
                let queue = shared.routing.queue(next);
                q.hops += 1;
                q.id = next;
                q.ticket = shared.routing.wait(next, None, &[]);
                q.tried.clear();
                q.waiting = true;
                q.give_up_at = now + queue.max_wait;
                q.wrap_up = queue.wrap_up;
                bridge.relay.play(0, Arc::clone(&queue.music), q.pt, true);
                self.waiting_calls.insert(a.to_string());
                self.route_queue_call(now, a);
            }
            Overflow::Extension(ext) => {
                let caller = q.caller.clone();
                let party = super::start_party(
                    &shared.presence,
                    &ext,
                    a,
                    Direction::Recipient,
                    &caller,
                    wall,
                );
                let rung = match party {
                    Some(p) => self.offer(now, a, &ext, p, true),
                    None => false,
                };
                if !rung {
                    self.announce_and_hang_up(now, a);
                }
            }
            _ => self.announce_and_hang_up(now, a),
        }
    }

    /// Plays the overflow announcement, then hangs up.
    fn announce_and_hang_up(&mut self, now: Instant, a: &str) {
        let shared = Arc::clone(&self.shared);
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let Some(q) = bridge.queue.as_mut() else {
            return;
        };
        let queue = shared.routing.queue(q.id);
        let prompt: Arc<Prompt> = match &queue.overflow {
            Overflow::Announce(p) => Arc::clone(p),
            _ => Arc::clone(&queue.sorry),
        };
        q.hang_up_at = Some(now + prompt.duration() + Duration::from_millis(200));
        bridge.relay.play(0, prompt, q.pt, false);
        self.arm_queue_timer(a);
    }

    /// A re-INVITE, UPDATE or INFO from a caller who is still waiting: answered
    /// here (the relay keeps its port; the new SDP only moves the caller's media).
    pub(super) fn queue_in_dialog(
        &mut self,
        now: Instant,
        tx: TxId,
        req: &Message,
        remote: Remote,
        a: &str,
    ) {
        let Some(bridge) = self.bridges.get(a) else {
            return;
        };
        let port = bridge.relay.ports[0];
        let offer = sdp::parse(req.body()).ok();
        let answer = offer
            .as_ref()
            .and_then(|o| sdp::local_answer(o, self.media_ip(remote), port, bridge.cdr.id));
        if let Some(o) = &offer {
            bridge.relay.set_peer(0, peer_of(o, remote.addr));
        }
        let mut b = self.response(req, remote, 200, "OK");
        b.header("Contact", format!("<sip:{}>", self.via_hostport(remote)));
        let bytes = match answer {
            Some(body) => b.finish_with_body(Some("application/sdp"), &body),
            None if offer.is_some() => {
                return self.reply(now, tx, req, remote, 488, "Not Acceptable Here")
            }
            None => b.finish(),
        };
        self.send_final(now, tx, bytes);
    }
}

/// The CDR disposition of a call that was connected (or, for a queue call,
/// answered by the queue): a queue call no agent took counts as not answered.
pub(super) fn disposition(bridge: &Bridge) -> Disposition {
    match bridge.queue {
        Some(_) if bridge.answered.is_none() => Disposition::NoAnswer,
        _ => Disposition::Answered,
    }
}

//! Hunting: what rings for a call to an extension or a ring group, one step
//! at a time. A step rings some phones until its deadline; when they all
//! fail, or the deadline passes, the call moves on to the step's busy or
//! no-answer destination. Moving on follows
//!
//! - the users' forwarding ([`crate::forwarding`]): always (before anything
//!   rings), on busy or decline, on no answer (after the user's wait) and
//!   when the user has no phone registered;
//! - do not disturb (presence `busy`): the busy destination, else 486;
//! - ring groups: every member at once, or one after another by priority
//!   (members in do not disturb or without a phone are skipped; their own
//!   forwarding is not followed), then the group's final destination;
//! - a queue as a destination: the call is handed to it;
//! - an outside number: dialled as the user whose forward led there, under
//!   their dialing class and the toll-fraud guard.
//!
//! Loops are stopped: a call reaches each extension and ring group once. An
//! always-forward to a number the call already reached is ignored (that
//! user's phones ring), a busy or no-answer forward to one ends the hunt, and
//! a call follows at most [`MAX_HOPS`] numbers.

use super::bridge::{cancel_ringing, rewrite_for, APhase, BranchSpec};
use super::cdr::{Disposition, HangupBy};
use super::outbound::Outbound;
use super::{Calls, Cx, Refusal};
use crate::presence::Direction as Role;
use crate::registrar::Binding;
use crate::routing::dialplan::Target;
use crate::routing::GroupId;
use crate::sip::{CallId, StatusCode};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The most numbers one call follows (forwards, ring groups, destinations).
pub const MAX_HOPS: u32 = 10;

/// Where a call goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Next {
    /// An extension (with its forwarding), ring group, queue or outside number.
    Number(String),
    /// Every member of a group at once for `ring`, then `then`.
    All {
        group: GroupId,
        ring: Duration,
        then: Option<String>,
    },
    /// These members one after another, `ring` each, then `then`.
    InOrder {
        members: VecDeque<String>,
        ring: Duration,
        then: Option<String>,
    },
    /// The user's mailbox: the caller leaves a message.
    Voicemail(String),
}

impl Next {
    fn number(n: Option<String>) -> Option<Next> {
        n.map(Next::Number)
    }
}

/// A call's hunt: what it reached, and where its current step goes next.
#[derive(Debug, Default)]
pub(super) struct Hunt {
    /// Extensions and ring groups the call reached (loops).
    visited: Vec<String>,
    /// The first branch of the current step (those before are over).
    pub first: usize,
    /// Where the step goes when its phones answer busy or decline.
    busy: Option<Next>,
    /// Where it goes when nobody answers in time.
    no_answer: Option<Next>,
    /// How many numbers the call followed.
    hops: u32,
    /// Whose forward leads the call on (an outside forward is dialled as them).
    owner: Option<String>,
    /// The caller's name on the B legs.
    pub display: Option<String>,
}

/// What one step of a hunt came to.
pub(super) enum Outcome {
    /// Something rings (or the call was handed on): the hunt waits.
    Ringing,
    /// Nothing rings here: go on to this, or end with this refusal.
    Skip(Option<Next>, Option<Refusal>),
}

/// A busy or declining answer (the busy destination applies).
fn is_busy(code: u16) -> bool {
    code == 486 || code >= 600
}

/// Nothing could ring (no phone registered).
pub(super) const fn unavailable() -> Refusal {
    Refusal::failed(StatusCode::TEMPORARILY_UNAVAILABLE)
}

impl Hunt {
    /// The hunt of a transfer by `owner` for the transferee (an extension,
    /// which is not rung back).
    pub(super) fn transfer(
        owner: String,
        transferee: Option<String>,
        display: Option<String>,
    ) -> Hunt {
        Hunt {
            visited: transferee.into_iter().collect(),
            owner: Some(owner),
            display,
            ..Hunt::default()
        }
    }
}

impl Calls {
    /// Ends call `a`'s current step (what still rings is cancelled) and moves
    /// on to `next` until something rings; with nothing left the caller gets
    /// `refusal` (how the step ended) or the last step's own.
    pub(super) fn hunt(
        &mut self,
        cx: &mut Cx<'_>,
        a: &CallId,
        next: Option<Next>,
        refusal: Refusal,
    ) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        cancel_ringing(cx, bridge, bridge.hunt.first, None);
        bridge.hunt.first = bridge.branches.len();
        (bridge.hunt.busy, bridge.hunt.no_answer) = (None, None);
        let ringing = bridge.callee_party.take().into_iter();
        for (ext, id) in ringing.chain(bridge.also_ringing.drain(..)) {
            let _ = cx.env.presence.dialog_ended(&ext, id, None, cx.wall);
        }
        let (mut next, mut refusal) = (next, refusal);
        loop {
            let Some(step) = next.take() else {
                return self.fail_call(cx, a, refusal);
            };
            match self.step(cx, a, step) {
                Outcome::Ringing => return,
                Outcome::Skip(n, r) => {
                    next = n;
                    refusal = r.unwrap_or(refusal);
                }
            }
        }
    }

    /// Every phone of the current step failed with `codes`: the busy or the
    /// no-answer destination, else the caller hears the phones' answer.
    pub(super) fn step_failed(&mut self, cx: &mut Cx<'_>, a: &CallId, codes: &[u16]) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let h = &mut bridge.hunt;
        let next = match codes.iter().any(|c| is_busy(*c)) {
            true => h.busy.take(),
            false => h.no_answer.take(),
        };
        self.hunt(cx, a, next, super::bridge::fork_result(codes));
    }

    /// Nobody answered the current step in time.
    pub(super) fn step_timed_out(&mut self, cx: &mut Cx<'_>, a: &CallId) {
        let next = self
            .bridges
            .get_mut(a)
            .and_then(|b| b.hunt.no_answer.take());
        let r = Refusal {
            disposition: Disposition::NoAnswer,
            ..unavailable()
        };
        self.hunt(cx, a, next, r);
    }

    fn step(&mut self, cx: &mut Cx<'_>, a: &CallId, step: Next) -> Outcome {
        let env = cx.env;
        let Some(bridge) = self.bridges.get_mut(a) else {
            return Outcome::Ringing;
        };
        let h = &mut bridge.hunt;
        match step {
            Next::Number(n) => {
                h.hops += 1;
                if h.hops > MAX_HOPS {
                    tracing::warn!(call_id = %a, number = %n, "the call followed {MAX_HOPS} numbers; stopped");
                    return Outcome::Skip(None, None);
                }
                match env.forward_target(&n) {
                    Target::Extension(ext) => self.reach_extension(cx, a, ext),
                    Target::RingGroup(number) => {
                        if h.visited.contains(&number) {
                            tracing::info!(call_id = %a, group = %number, "forwarding loop stopped (the call was at this ring group)");
                            return Outcome::Skip(None, None);
                        }
                        h.visited.push(number.clone());
                        let Some(g) = env.routing.ring_group(&number) else {
                            return Outcome::Skip(None, None);
                        };
                        let (ring, then) = (g.ring, g.then.clone());
                        let next = match g.in_order {
                            true => Next::InOrder {
                                members: env.routing.members(g.group).into(),
                                ring,
                                then,
                            },
                            false => Next::All {
                                group: g.group,
                                ring,
                                then,
                            },
                        };
                        Outcome::Skip(Some(next), None)
                    }
                    Target::Queue(q) if bridge.transfer.is_some() => {
                        match self.transfer_to_queue(cx, a, q) {
                            true => Outcome::Ringing,
                            false => Outcome::Skip(None, None),
                        }
                    }
                    Target::Queue(q) => {
                        self.hand_to_queue(cx, a, q);
                        Outcome::Ringing
                    }
                    Target::Outside(route) => self.forward_outside(cx, a, route, n),
                    _ => {
                        tracing::info!(call_id = %a, number = %n, "forwarded to a number that leads nowhere");
                        Outcome::Skip(None, None)
                    }
                }
            }
            Next::All { group, ring, then } => {
                let mut ringing = Vec::new();
                let mut bindings: Vec<Binding> = Vec::new();
                for m in env.routing.members(group).iter() {
                    let b = ringable(cx, m);
                    if !b.is_empty() {
                        ringing.push(m.clone());
                        bindings.extend(b);
                    }
                }
                let then = Next::number(then);
                if bindings.is_empty() {
                    return Outcome::Skip(then, None);
                }
                h.busy = then.clone();
                h.no_answer = then;
                let label = bridge.cdr.callee.clone();
                // A transfer's target shows no ringing dialogs (it has its own).
                let shown = match bridge.transfer {
                    None => ringing,
                    Some(_) => Vec::new(),
                };
                self.ring(cx, a, &label, bindings, ring, &shown)
            }
            Next::Voicemail(user) => self.reach_mailbox(cx, a, user),
            Next::InOrder {
                mut members,
                ring,
                then,
            } => {
                while let Some(m) = members.pop_front() {
                    let bindings = ringable(cx, &m);
                    if bindings.is_empty() {
                        continue;
                    }
                    let rest = Next::InOrder {
                        members,
                        ring,
                        then,
                    };
                    h.busy = Some(rest.clone());
                    h.no_answer = Some(rest);
                    return self.ring(cx, a, &m, bindings, ring, std::slice::from_ref(&m));
                }
                Outcome::Skip(Next::number(then), None)
            }
        }
    }

    /// The call reaches extension `ext`: its forwarding, do not disturb, its
    /// phones.
    fn reach_extension(&mut self, cx: &mut Cx<'_>, a: &CallId, ext: String) -> Outcome {
        let env = cx.env;
        let Some(bridge) = self.bridges.get_mut(a) else {
            return Outcome::Ringing;
        };
        let h = &mut bridge.hunt;
        if h.visited.contains(&ext) {
            tracing::info!(call_id = %a, %ext, "forwarding loop stopped (the call was at this extension)");
            return Outcome::Skip(None, None);
        }
        h.visited.push(ext.clone());
        h.owner = Some(ext.clone());
        let rules = env.forwarding.rules(&ext);
        // Where the user's own rules leave a call that is not taken.
        let mailbox = (env.voicemail.has(&ext) && bridge.transfer.is_none())
            .then(|| Next::Voicemail(ext.clone()));
        let otherwise = |rule: Option<String>| Next::number(rule).or_else(|| mailbox.clone());
        if let Some(to) = rules.always.clone() {
            let back = match env.forward_target(&to) {
                Target::Extension(n) | Target::RingGroup(n) => h.visited.contains(&n),
                _ => false,
            };
            if !back {
                tracing::info!(call_id = %a, %ext, %to, "forwarded (always)");
                return Outcome::Skip(Some(Next::Number(to)), None);
            }
            tracing::info!(call_id = %a, %ext, %to, "forwarding loop stopped: {ext}'s phones ring");
        }
        if env.presence.do_not_disturb(&ext) {
            tracing::info!(call_id = %a, %ext, "do not disturb");
            let dnd = Refusal {
                reason: "Busy Here (Do Not Disturb)",
                disposition: Disposition::Busy,
                by: HangupBy::Callee,
                ..Refusal::failed(StatusCode::BUSY_HERE)
            };
            return Outcome::Skip(otherwise(rules.busy), Some(dnd));
        }
        let bindings = env.registrar.lookup(&ext, cx.wall);
        if bindings.is_empty() {
            return Outcome::Skip(otherwise(rules.no_answer), Some(unavailable()));
        }
        let wait = match rules.no_answer {
            Some(_) => rules.no_answer_after(),
            None => env.calls.ring_timeout,
        };
        h.busy = otherwise(rules.busy);
        h.no_answer = otherwise(rules.no_answer);
        self.ring(cx, a, &ext, bindings, wait, std::slice::from_ref(&ext))
    }

    /// Rings `bindings` (as `callee`) for `wait`; the phones of `shown`
    /// (extensions: the callee, or a ring group's members) show the call
    /// ringing, named by the caller's leg, which a colleague may pick up.
    fn ring(
        &mut self,
        cx: &mut Cx<'_>,
        a: &CallId,
        callee: &str,
        bindings: Vec<Binding>,
        wait: Duration,
        shown: &[String],
    ) -> Outcome {
        let Some(bridge) = self.bridges.get(a) else {
            return Outcome::Ringing;
        };
        let invite = bridge.a.invite.clone();
        let caller = bridge.cdr.caller.clone();
        let display = bridge.hunt.display.clone();
        let (offer, side) = bridge.next_leg();
        let offer = bytes::Bytes::copy_from_slice(offer);
        let port = bridge.relay.ports()[side];
        let referred_by = bridge.transfer.as_ref().map(|t| t.referred_by.clone());
        let first = bridge.branches.len();
        let spec = BranchSpec {
            caller: &caller,
            display: display.as_deref(),
            callee,
            max_forwards: invite
                .max_forwards()
                .and_then(Result::ok)
                .unwrap_or(70)
                .saturating_sub(1),
            // The session timer is the caller's to negotiate, not a transfer's.
            timers_from: referred_by.is_none().then_some(&invite),
            referred_by: referred_by.as_deref(),
        };
        let branches = self.send_branches(cx, a, &spec, bindings, first, |cx, target| {
            rewrite_for(cx, &offer, target, port)
        });
        let Some(bridge) = self.bridges.get_mut(a) else {
            return Outcome::Ringing;
        };
        if branches.is_empty() {
            let next = bridge.hunt.no_answer.take();
            return Outcome::Skip(next, Some(unavailable()));
        }
        if !shown.is_empty() {
            let tags = bridge.a.tags();
            let mut parties = shown.iter().filter_map(|ext| {
                let call = (a, Some(&tags));
                let presence = &cx.env.presence;
                super::start_party_tagged(presence, ext, call, Role::Recipient, &caller, cx.wall)
            });
            bridge.callee_party = parties.next();
            bridge.also_ringing = parties.collect();
        }
        bridge.branches.extend(branches);
        bridge.phase = APhase::Calling {
            ring_deadline: cx.now + wait,
        };
        self.arm_bridge(cx, a);
        Outcome::Ringing
    }

    /// The call is handed to queue `q`: the ringing call ends quietly and the
    /// caller's INVITE enters the queue as if they had dialled it.
    fn hand_to_queue(&mut self, cx: &mut Cx<'_>, a: &CallId, q: crate::routing::QueueId) {
        let Some(trunk) = self.bridges.get_mut(a).map(|b| b.trunk.take()) else {
            return;
        };
        let Some(bridge) = self.remove_bridge(cx, a) else {
            return;
        };
        super::bridge::parties_end(&cx.env.presence, &bridge, cx.wall);
        let queue = &cx.env.routing.queue(q).number;
        tracing::info!(call_id = %a, %queue, "forwarded to a queue");
        let entry = super::queue::Entry {
            queue: q,
            caller: bridge.cdr.caller.clone(),
            trunk,
        };
        let leg = bridge.a;
        self.invite_queue(cx, leg.tx, &leg.invite, leg.remote, a.clone(), entry);
        // One call, though it started again in the queue.
        cx.env.stats.calls_started.fetch_sub(1, Ordering::Relaxed);
    }

    /// The call goes out to `number` (route `route`), dialled as the user
    /// whose forward led there.
    fn forward_outside(
        &mut self,
        cx: &mut Cx<'_>,
        a: &CallId,
        route: crate::outside::RouteId,
        number: String,
    ) -> Outcome {
        let env = cx.env;
        let Some(bridge) = self.bridges.get_mut(a) else {
            return Outcome::Ringing;
        };
        let Some(owner) = bridge.hunt.owner.clone() else {
            tracing::warn!(call_id = %a, %number, "an outside destination no user's forward leads to; not dialled");
            return Outcome::Skip(None, None);
        };
        let source = match &bridge.transfer {
            Some(t) => t.source,
            None => bridge.a.remote.addr.ip(),
        };
        let permit = match env
            .outside
            .check(cx.now, source, Some(&owner), route, &number)
        {
            Ok(p) => p,
            Err(_) => {
                let r = Refusal {
                    reason: "Forbidden (Outside Call Not Allowed)",
                    ..Refusal::failed(StatusCode::FORBIDDEN)
                };
                return Outcome::Skip(None, Some(r));
            }
        };
        tracing::info!(call_id = %a, user = %owner, %number, "forwarded outside");
        let attempts = env.outside.attempts(route, &number);
        bridge.outbound = Some(Outbound {
            permit: Some(permit),
            ..Outbound::new(owner, Some(route), attempts)
        });
        bridge.phase = APhase::Calling {
            ring_deadline: cx.now + env.calls.ring_timeout,
        };
        if !self.try_next_trunk(cx, a) {
            return Outcome::Skip(None, Some(Refusal::failed(StatusCode::SERVICE_UNAVAILABLE)));
        }
        Outcome::Ringing
    }
}

/// The phones of ring-group member `m`, unless they are in do not disturb.
fn ringable(cx: &Cx<'_>, m: &str) -> Vec<Binding> {
    if cx.env.presence.do_not_disturb(m) {
        return Vec::new();
    }
    cx.env.registrar.lookup(m, cx.wall)
}

//! Leaving a voicemail message: a call the user's phones did not take (no
//! answer, busy, do not disturb, no phone; see `hunt`) reaches the user's
//! mailbox ([`crate::voicemail`]) unless a forwarding rule sends it on. The
//! PBX answers the caller, plays the greeting (a chime, then the long beep),
//! and records what the caller says until `#`, the mailbox's limit, or the
//! caller's hang-up. The recorder writes the WAV durably and reports it; the
//! message's record is then stored, the mailbox and the message lamp
//! updated (every shard's subscriptions hear it), and the caller hears the
//! confirmation and is hung up. A caller who hangs up while speaking gets
//! the 200 to their BYE only once the message is on disk, so a message whose
//! caller was told the call ended survives a crash.

use super::bridge::{answer_caller, parties_step, APhase};
use super::cdr::HangupBy;
use super::hunt::Outcome;
use super::{answered_event_pt, answered_pt, Calls, Cx, Refusal, Side, Timer};
use crate::media::prompt::Prompt;
use crate::presence::DialogState;
use crate::sip::message::Message;
use crate::sip::sdp::{self, Origin};
use crate::sip::transaction::TxId;
use crate::sip::{CallId, Remote, StatusCode};
use crate::store::Write;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;

/// A caller leaving a message, while connected.
#[derive(Debug)]
pub(super) struct Deposit {
    /// The message's id (its WAV's).
    voice: u64,
    /// The payload type the caller's prompts are played in.
    pt: u8,
    /// The mailbox's own greeting plays (a beep follows it).
    own_greeting: bool,
    /// Our SDP session toward the caller (a re-INVITE steps its version).
    pub(super) origin: Origin,
    phase: Phase,
    /// What the message will be, until its recording starts (then it is
    /// kept in `Calls::deposits`, where it outlives the call).
    leaving: Option<Leaving>,
}

/// Where a deposit stands; each phase holds its own deadline.
#[derive(Debug)]
enum Phase {
    /// The greeting plays; recording starts at `record_at`.
    Greeting { record_at: Instant },
    /// Recording until `#`, the limit, or the caller's BYE.
    Recording,
    /// The recording is over and being saved.
    Saving,
    /// Saved (or nothing said): the PBX hangs up at `hang_up_at`.
    Goodbye { hang_up_at: Instant },
}

/// A message being recorded or saved, until it is stored: it outlives its
/// call when the caller hangs up while speaking.
#[derive(Debug)]
pub(super) struct Leaving {
    call: CallId,
    mailbox: String,
    caller: String,
    caller_name: Option<String>,
    /// The caller hung up: the 200 to their BYE, sent once the message is
    /// durable.
    bye: Option<(TxId, Bytes)>,
}

/// The built-in greeting: a chime, then the long beep after which the
/// caller speaks.
fn greeting() -> Arc<Prompt> {
    built_in!(Prompt::leave_message)
}

/// What a caller hears once the message is saved: two short beeps.
pub(super) fn saved() -> Arc<Prompt> {
    built_in!(Prompt::confirm)
}

/// The beep after a user's own greeting (the built-in one ends with its own).
pub(super) fn beep() -> Arc<Prompt> {
    built_in!(Prompt::beep)
}

impl Deposit {
    fn due(&self) -> Option<Instant> {
        match self.phase {
            Phase::Greeting { record_at } => Some(record_at),
            Phase::Goodbye { hang_up_at } => Some(hang_up_at),
            Phase::Recording | Phase::Saving => None,
        }
    }
}

impl Calls {
    /// Call `a` reaches `mailbox`: the caller is answered and hears the
    /// greeting.
    pub(super) fn reach_mailbox(
        &mut self,
        cx: &mut Cx<'_>,
        a: &CallId,
        mailbox: String,
    ) -> Outcome {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return Outcome::Ringing;
        };
        let calling = matches!(bridge.phase, APhase::Calling { .. });
        if !calling || bridge.transfer.is_some() || bridge.queue.is_some() {
            return Outcome::Skip(None, None);
        }
        let origin = Origin::new(bridge.cdr.id);
        let answer = sdp::parse(bridge.a.invite.body()).ok().and_then(|offer| {
            let port = bridge.relay.ports()[0];
            let ip = cx.media_ip(bridge.a.remote);
            sdp::local_answer(&offer, ip, port, origin)
        });
        let Some(answer) = answer else {
            let r = Refusal::failed(StatusCode::NOT_ACCEPTABLE_HERE);
            return Outcome::Skip(None, Some(r));
        };
        tracing::info!(call_id = %a, %mailbox, "to voicemail");
        let pt = answered_pt(&answer);
        let own = cx.env.voicemail.greeting(&mailbox);
        let greeting_ends = match &own {
            Some(g) => {
                bridge.relay.play_voice(0, g.id, pt);
                cx.now + std::time::Duration::from_millis(g.ms)
            }
            None => {
                bridge.relay.play(0, greeting(), pt, false);
                cx.now + greeting().duration()
            }
        };
        if let Some(event) = answered_event_pt(&answer) {
            bridge.relay.listen_digits(0, event);
        }
        answer_caller(cx, bridge, &mailbox, Some(&answer), None);
        parties_step(&cx.env.presence, bridge, DialogState::Confirmed, cx.wall);
        // The From display name as sent ("Ann Lee" in quotes, or a token).
        let caller_name = bridge
            .hunt
            .display
            .as_deref()
            .map(|d| d.trim().trim_matches('"').trim().to_string())
            .filter(|d| !d.is_empty());
        let leaving = Leaving {
            call: a.clone(),
            mailbox,
            caller: bridge.cdr.caller.clone(),
            caller_name,
            bye: None,
        };
        bridge.deposit = Some(Deposit {
            voice: cx.next_id(),
            pt,
            own_greeting: own.is_some(),
            origin,
            phase: Phase::Greeting {
                record_at: greeting_ends,
            },
            leaving: Some(leaving),
        });
        self.arm_voicemail(cx, a);
        Outcome::Ringing
    }

    /// Arms call `a`'s voicemail timer: of the message being left, or of
    /// the menu.
    pub(super) fn arm_voicemail(&self, cx: &mut Cx<'_>, a: &CallId) {
        let due = self
            .bridges
            .get(a)
            .and_then(|b| match (&b.deposit, &b.menu) {
                (Some(d), _) => d.due(),
                (None, Some(m)) => m.due(),
                (None, None) => None,
            });
        if let Some(at) = due {
            cx.timer(at, Timer::Voicemail(a.clone()));
        }
    }

    /// Call `a`'s voicemail timer fired (at `at`).
    pub(super) fn voicemail_timer(&mut self, cx: &mut Cx<'_>, a: &CallId, at: Instant) {
        if self.bridges.get(a).is_some_and(|b| b.menu.is_some()) {
            self.menu_timer(cx, a, at)
        } else {
            self.deposit_timer(cx, a, at)
        }
    }

    /// The greeting is over (recording starts), or the goodbye (hang up).
    fn deposit_timer(&mut self, cx: &mut Cx<'_>, a: &CallId, at: Instant) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let Some(d) = bridge.deposit.as_mut().filter(|d| d.due() == Some(at)) else {
            return; // moved on since
        };
        match d.phase {
            Phase::Greeting { .. } => {
                d.phase = Phase::Recording;
                if let Some(leaving) = d.leaving.take() {
                    self.deposits.insert(d.voice, leaving);
                }
                if d.own_greeting {
                    bridge.relay.play(0, beep(), d.pt, false);
                }
                let max = cx.env.voicemail.max_message;
                bridge.relay.record(0, d.voice, max);
            }
            Phase::Goodbye { .. } => self.end_bridge(cx, a, None, HangupBy::System),
            Phase::Recording | Phase::Saving => {}
        }
    }

    /// A digit from a caller leaving a message: `#` ends the message.
    pub(super) fn deposit_digit(&mut self, a: &CallId, digit: char) -> bool {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return false;
        };
        let Some(d) = bridge.deposit.as_mut() else {
            return false;
        };
        if digit == '#' && matches!(d.phase, Phase::Recording) {
            d.phase = Phase::Saving;
            bridge.relay.stop_recording();
        }
        true
    }

    /// The caller hung up while leaving a message: the call ends, and the
    /// 200 to their BYE waits for the message to be saved. False when there
    /// is nothing being recorded (an ordinary hang-up).
    pub(super) fn deposit_bye(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        remote: Remote,
        a: &CallId,
    ) -> bool {
        let Some(voice) = self.bridges.get(a).and_then(|b| {
            let d = b.deposit.as_ref()?;
            matches!(d.phase, Phase::Recording | Phase::Saving).then_some(d.voice)
        }) else {
            return false;
        };
        let Some(leaving) = self.deposits.get_mut(&voice) else {
            return false;
        };
        leaving.bye = Some((tx, cx.response(req, remote, StatusCode::OK).finish()));
        // The relay goes with the call: its recorder saves what it has.
        self.end_bridge(cx, a, Some(Side::A), HangupBy::Caller);
        true
    }

    /// Message `id` was recorded (`ms` long; `saved`: it held audio and is on
    /// disk): its record is stored and the lamp lit. False when `id` is not a
    /// voicemail message.
    pub(super) fn deposit_recorded(
        &mut self,
        cx: &mut Cx<'_>,
        id: u64,
        saved_ms: Option<u64>,
    ) -> bool {
        let Some(leaving) = self.deposits.remove(&id) else {
            return false;
        };
        let Leaving {
            call,
            mailbox,
            caller,
            caller_name,
            bye,
        } = leaving;
        if let Some(ms) = saved_ms {
            let caller = (caller.as_str(), caller_name.as_deref());
            let message = crate::voicemail::message(id, &mailbox, caller, cx.wall, ms);
            let env = cx.env;
            match env.voicemail.left(message.clone()) {
                Ok(counts) => {
                    tracing::info!(call_id = %call, %mailbox, id, ms, "voicemail left");
                    cx.store(Write::put(message));
                    if env.mwi.set_voicemail(&mailbox, counts) {
                        cx.lamp(&mailbox);
                    }
                }
                Err(e) => tracing::warn!(%mailbox, "voicemail not kept: {e}"),
            }
        } else {
            tracing::info!(call_id = %call, %mailbox, "no voicemail: nothing was said");
        }
        if let Some((tx, ok)) = bye {
            cx.respond_durable(tx, ok);
        }
        let Some(bridge) = self.bridges.get_mut(&call) else {
            return true; // the caller is gone
        };
        let Some(d) = bridge.deposit.as_mut() else {
            return true;
        };
        if saved_ms.is_none() {
            self.end_bridge(cx, &call, None, HangupBy::System);
            return true;
        }
        bridge.relay.play(0, saved(), d.pt, false);
        d.phase = Phase::Goodbye {
            hang_up_at: cx.now + saved().duration(),
        };
        self.arm_voicemail(cx, &call);
        true
    }
}

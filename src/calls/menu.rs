//! The voicemail menu on the phone: a user dials the menu code (`*97`) with
//! their own credentials and reaches their own mailbox. With a PIN set, the
//! menu asks for it first (digits, then `#`); a wrong PIN is counted by the
//! failed-authentication guard, and the third hangs up. Then each message
//! plays, new ones first; one played to its end is heard (the lamp follows).
//! While a message plays, or in the 10 s after it: `5` plays it again, `7`
//! deletes it, `9` keeps it (heard), `6` or `#` goes on to the next. After
//! the last, a falling tone; then `0` records the user's own greeting (after
//! the beep, until `#`; callers hear it instead of the built-in one), else
//! the PBX hangs up. Digits come as RFC 4733 telephone-events or SIP INFO.
//! Every change is stored as the desk's are.

use super::bridge::{answer_caller, ALeg, Bridge};
use super::cdr::HangupBy;
use super::{answered_event_pt, answered_pt, new_cdr, Calls, Cx, Refusal};
use crate::media::prompt::Prompt;
use crate::sip::message::Message;
use crate::sip::sdp::{self, Origin};
use crate::sip::transaction::TxId;
use crate::sip::{CallId, Remote, StatusCode};
use crate::store::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the menu waits for the PIN, or for a key after a message.
const WAIT: Duration = Duration::from_secs(10);
/// Wrong PINs before the menu hangs up.
const TRIES: u32 = 3;
/// The longest PIN typed (more digits are ignored).
const MAX_DIGITS: usize = 12;

/// A user in their voicemail menu.
#[derive(Debug)]
pub(super) struct Menu {
    user: String,
    /// The payload type prompts and messages are played in.
    pt: u8,
    /// Our SDP session toward the caller (a re-INVITE steps its version).
    pub(super) origin: Origin,
    phase: Phase,
    /// The messages to go through (id, length), new first; the current one.
    messages: Vec<(u64, u64)>,
    at: usize,
}

/// Where the menu stands; each phase holds its own deadline.
#[derive(Debug)]
enum Phase {
    /// Typing the PIN (`typed` so far), wrong `tries` times so far.
    Pin {
        typed: String,
        tries: u32,
        give_up: Instant,
    },
    /// Message `at` plays until `ends`.
    Playing { ends: Instant },
    /// After message `at`: a key, or the next one at `next_at`.
    Choosing { next_at: Instant },
    /// No more messages: `0` records a greeting, else the PBX hangs up at
    /// `hang_up_at`.
    End { hang_up_at: Instant },
    /// Recording greeting `voice` until `#` (or its limit).
    Greeting { voice: u64 },
    /// The greeting is being saved.
    Saving { voice: u64 },
    /// The PBX hangs up at `hang_up_at`.
    Goodbye { hang_up_at: Instant },
}

/// The longest greeting.
const MAX_GREETING: Duration = Duration::from_secs(30);

impl Menu {
    pub(super) fn due(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Pin { give_up, .. } => Some(*give_up),
            Phase::Playing { ends } => Some(*ends),
            Phase::Choosing { next_at } => Some(*next_at),
            Phase::End { hang_up_at } | Phase::Goodbye { hang_up_at } => Some(*hang_up_at),
            Phase::Greeting { .. } | Phase::Saving { .. } => None,
        }
    }

    fn current(&self) -> Option<(u64, u64)> {
        self.messages.get(self.at).copied()
    }
}

fn enter_pin() -> Arc<Prompt> {
    built_in!(Prompt::enter_pin)
}

fn wrong() -> Arc<Prompt> {
    built_in!(Prompt::wrong)
}

fn no_more() -> Arc<Prompt> {
    built_in!(Prompt::no_more)
}

impl Calls {
    /// `user` dialled the menu code: their mailbox answers.
    pub(super) fn invite_menu(
        &mut self,
        cx: &mut Cx<'_>,
        tx: TxId,
        req: &Message,
        remote: Remote,
        a: CallId,
        user: String,
    ) {
        let a_leg = ALeg::new(tx, req, remote);
        let cdr = new_cdr(cx, &a, &user, "voicemail");
        if !cx.env.voicemail.has(&user) {
            let r = Refusal {
                reason: "Not Found (No Mailbox)",
                ..Refusal::failed(StatusCode::NOT_FOUND)
            };
            return super::bridge::refuse(cx, &a_leg, cdr, r);
        }
        let origin = Origin::new(cdr.id);
        let prepared = Self::prepare_bridge(cx, req, remote, &a).and_then(|(offer, relay)| {
            let ip = cx.media_ip(remote);
            sdp::local_answer(&offer, ip, relay.ports()[0], origin)
                .map(|answer| (relay, answer))
                .ok_or(Refusal::failed(StatusCode::NOT_ACCEPTABLE_HERE))
        });
        let (relay, answer) = match prepared {
            Ok(p) => p,
            Err(r) => return super::bridge::refuse(cx, &a_leg, cdr, r),
        };
        let pt = answered_pt(&answer);
        if let Some(event) = answered_event_pt(&answer) {
            relay.listen_digits(0, event);
        }
        let mut bridge = Bridge::new(cx, a_leg, relay, cdr);
        answer_caller(cx, &mut bridge, &user, Some(&answer), None);
        let mut messages = cx.env.voicemail.list(&user);
        messages.sort_by_key(|m| m.heard); // new first, each in order
        let messages: Vec<(u64, u64)> = messages.iter().map(|m| (m.id, m.ms)).collect();
        let phase = match cx.env.voicemail.has_pin(&user) {
            true => {
                bridge.relay.play(0, enter_pin(), pt, false);
                Phase::Pin {
                    typed: String::new(),
                    tries: 0,
                    give_up: cx.now + WAIT + enter_pin().duration(),
                }
            }
            false => play(cx, &bridge, pt, messages.first().copied()),
        };
        let menu = Menu {
            user,
            pt,
            origin,
            phase,
            messages,
            at: 0,
        };
        tracing::info!(call_id = %a, user = %menu.user, "voicemail menu");
        bridge.menu = Some(menu);
        self.add_bridge(cx, a.clone(), bridge);
        self.arm_voicemail(cx, &a);
    }

    /// The menu's deadline: no PIN in time (hang up), a message played to
    /// its end (heard; a key is awaited), no key (the next), the hang-up.
    pub(super) fn menu_timer(&mut self, cx: &mut Cx<'_>, a: &CallId, at: Instant) {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let Some(mut menu) = bridge.menu.take() else {
            return;
        };
        if menu.due() != Some(at) {
            bridge.menu = Some(menu);
            return; // moved on since
        }
        match menu.phase {
            Phase::Pin { .. } | Phase::End { .. } | Phase::Goodbye { .. } => {
                return self.end_bridge(cx, a, None, HangupBy::System);
            }
            Phase::Greeting { .. } | Phase::Saving { .. } => {}
            Phase::Playing { .. } => {
                if let Some((id, _)) = menu.current() {
                    mark_heard(cx, &menu.user, id);
                }
                menu.phase = Phase::Choosing {
                    next_at: cx.now + WAIT,
                };
            }
            Phase::Choosing { .. } => {
                menu.at += 1;
                play_current(cx, bridge, &mut menu);
            }
        }
        bridge.menu = Some(menu);
        self.arm_voicemail(cx, a);
    }

    /// A digit in the menu. False when call `a` is not in one.
    pub(super) fn menu_digit(&mut self, cx: &mut Cx<'_>, a: &CallId, digit: char) -> bool {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return false;
        };
        let Some(mut menu) = bridge.menu.take() else {
            return false;
        };
        let ip = bridge.a.remote.addr.ip();
        match &mut menu.phase {
            Phase::Pin { typed, tries, .. } if digit == '#' => {
                let typed = std::mem::take(typed);
                if cx.env.voicemail.pin_ok(&menu.user, &typed) {
                    play_current(cx, bridge, &mut menu);
                } else {
                    *tries += 1;
                    tracing::info!(user = %menu.user, "voicemail PIN wrong ({tries} of {TRIES})");
                    cx.env
                        .guard
                        .auth_failed(cx.now, ip, Some(&menu.user), "VOICEMAIL");
                    bridge.relay.play(0, wrong(), menu.pt, false);
                    menu.phase = match *tries >= TRIES {
                        true => Phase::Goodbye {
                            hang_up_at: cx.now + wrong().duration(),
                        },
                        false => Phase::Pin {
                            typed: String::new(),
                            tries: *tries,
                            give_up: cx.now + WAIT,
                        },
                    };
                }
            }
            Phase::Pin { typed, .. } => {
                if digit.is_ascii_digit() && typed.len() < MAX_DIGITS {
                    typed.push(digit);
                }
            }
            Phase::Playing { .. } | Phase::Choosing { .. } => {
                menu_key(cx, bridge, &mut menu, digit);
            }
            Phase::End { .. } if digit == '0' => {
                let voice = cx.next_id();
                bridge
                    .relay
                    .play(0, super::voicemail::beep(), menu.pt, false);
                bridge.relay.record(0, voice, MAX_GREETING);
                menu.phase = Phase::Greeting { voice };
            }
            Phase::Greeting { voice } if digit == '#' => {
                menu.phase = Phase::Saving { voice: *voice };
                bridge.relay.stop_recording();
            }
            Phase::End { .. }
            | Phase::Greeting { .. }
            | Phase::Saving { .. }
            | Phase::Goodbye { .. } => {}
        }
        bridge.menu = Some(menu);
        self.arm_voicemail(cx, a);
        true
    }
}

impl Calls {
    /// Recording `id` of call `a` ended (`saved_ms`: it holds audio, on
    /// disk): as the menu's greeting, it becomes the user's. False when it is
    /// not a greeting.
    pub(super) fn menu_recorded(
        &mut self,
        cx: &mut Cx<'_>,
        a: &CallId,
        id: u64,
        saved_ms: Option<u64>,
    ) -> bool {
        let Some(bridge) = self.bridges.get_mut(a) else {
            return false;
        };
        let Some(menu) = bridge.menu.as_mut() else {
            return false;
        };
        let (Phase::Greeting { voice } | Phase::Saving { voice }) = menu.phase else {
            return false;
        };
        if voice != id {
            return false;
        }
        if let Some(ms) = saved_ms {
            let greeting = crate::voicemail::Greeting {
                mailbox: menu.user.clone(),
                id,
                ms,
            };
            cx.store(Write::put(greeting.clone()));
            let old = cx.env.voicemail.set_greeting(greeting);
            if let (Some(old), Some(media)) = (old, &cx.env.media) {
                media.discard_voice(old.id);
            }
            tracing::info!(user = %menu.user, ms, "voicemail greeting recorded on the phone");
            bridge
                .relay
                .play(0, super::voicemail::saved(), menu.pt, false);
        }
        menu.phase = Phase::Goodbye {
            hang_up_at: cx.now + super::voicemail::saved().duration(),
        };
        self.arm_voicemail(cx, a);
        true
    }
}

/// A key while a message plays or after it.
fn menu_key(cx: &mut Cx<'_>, bridge: &mut Bridge, menu: &mut Menu, digit: char) {
    let Some((id, _)) = menu.current() else {
        return;
    };
    match digit {
        '5' => return play_current(cx, bridge, menu),
        '7' => {
            let env = cx.env;
            if let Ok(message) = env.voicemail.get(&menu.user, id) {
                cx.store(Write::remove(&message));
                if let Some(media) = &env.media {
                    media.discard_voice(id);
                }
                let counts = env.voicemail.removed(&menu.user, id);
                lamp(cx, &menu.user, counts);
                tracing::info!(user = %menu.user, id, "voicemail deleted from the phone");
            }
        }
        '9' => mark_heard(cx, &menu.user, id),
        '6' | '#' => {}
        _ => return,
    }
    bridge.relay.stop_playing();
    menu.at += 1;
    play_current(cx, bridge, menu);
}

/// Plays message `menu.at`, or the end of the list (then the PBX hangs up).
fn play_current(cx: &mut Cx<'_>, bridge: &mut Bridge, menu: &mut Menu) {
    menu.phase = play(cx, bridge, menu.pt, menu.current());
}

/// Plays `message` (id, length), or with none the end of the list: the
/// phase that follows.
fn play(cx: &Cx<'_>, bridge: &Bridge, pt: u8, message: Option<(u64, u64)>) -> Phase {
    match message {
        Some((id, ms)) => {
            bridge.relay.play_voice(0, id, pt);
            Phase::Playing {
                ends: cx.now + Duration::from_millis(ms) + Duration::from_millis(300),
            }
        }
        None => {
            bridge.relay.play(0, no_more(), pt, false);
            Phase::End {
                hang_up_at: cx.now + no_more().duration() + WAIT,
            }
        }
    }
}

/// Message `id` of `user` is heard: stored, and the lamp follows.
fn mark_heard(cx: &mut Cx<'_>, user: &str, id: u64) {
    let env = cx.env;
    let Ok(message) = env.voicemail.heard(user, id) else {
        return;
    };
    cx.store(Write::put(message.clone()));
    let counts = env.voicemail.changed(message);
    lamp(cx, user, counts);
}

fn lamp(cx: &mut Cx<'_>, user: &str, counts: crate::voicemail::Counts) {
    if cx.env.mwi.set_voicemail(user, counts) {
        cx.lamp(user);
    }
}

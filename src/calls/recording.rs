//! Call recording on demand: a user on a connected call starts and stops
//! recording it from the desk (`record`: a bridged call, or one the PBX
//! placed — click-to-call, a campaign's) or, on a bridged call, by keying
//! the feature code (`[features] record`, `*1` by default, as RFC 4733
//! telephone-events or SIP INFO) on the phone, which confirms with a beep
//! (started) or two (stopped). The relay mixes both sides into one WAV streamed to disk
//! (see `media::call_recording`); once it is durable its record
//! ([`crate::recordings::CallRecording`], under the customer — the user's
//! other party — and with the call's CDR id) is stored. A recording ends
//! when it is stopped or the call does; one that cannot be written (a full
//! disk) ends there, the call goes on, and the desk tells the user.

use super::bridge::Bridge;
use super::transfer::{transferor_user, Whose};
use super::{answered_event_pt, Calls, Cx, Side};
use crate::media::RelayControl;
use crate::recordings::{CallRecording, Progress, Report};
use crate::sip::CallId;
use crate::store::Write;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A code's digits must follow each other within this.
const KEY_GAP: Duration = Duration::from_secs(3);

/// A desk's recording command that cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("no call {0} is in progress")]
    NoCall(String),
    #[error("call {0} is not yours")]
    NotYours(String),
    #[error("call {0} is not connected")]
    NotConnected(String),
    #[error("call {0} is already being recorded")]
    Already(String),
    #[error("call {0} is not being recorded")]
    NotRecording(String),
    #[error("the PBX is shutting down")]
    Stopped,
}

/// A bridge's recording on demand.
#[derive(Debug, Default)]
pub(super) struct OnDemand {
    /// The recording under way.
    active: Option<u64>,
    /// What each side keyed lately, and when (the code is looked for at its end).
    typed: [(String, Option<Instant>); 2],
}

/// A recording from its start until its record is stored (it outlives its
/// call: the relay saves it when the call ends).
#[derive(Debug)]
pub(super) struct Taking {
    /// The call's key (leg A's Call-ID).
    a: CallId,
    agent: String,
    /// The call as the agent's desk names it.
    call_id: String,
    customer: String,
    cdr: u64,
    start_ms: u64,
}

/// Whether both parties of `bridge` are connected (and it is not being
/// transferred).
fn connected(bridge: &Bridge) -> bool {
    matches!(bridge.phase, super::bridge::APhase::Confirmed)
        && bridge.answered.is_some()
        && bridge.transfer.is_none()
}

/// A connected bridge listens for its users' feature code (the relay reports
/// their telephone-events); call this once a bridge is connected.
pub(super) fn listen_for_code(cx: &Cx<'_>, bridge: &Bridge) {
    if cx.env.calls.record_code.is_empty() {
        return;
    }
    let Some(idx) = bridge.answered else { return };
    let sdps = [bridge.a.invite.body(), &bridge.b_sdp[..]];
    for (side, sdp) in [Side::A, Side::B(idx)].into_iter().zip(sdps) {
        if transferor_user(cx, bridge, side).is_none() {
            continue;
        }
        if let Some(pt) = answered_event_pt(sdp) {
            bridge.relay.listen_digits(side.relay_index(), pt);
        }
    }
}

/// A connected call as recording sees it: its relay and recording state,
/// and the recording user's other party (the customer) and the CDR.
pub(super) struct Recordable<'a> {
    pub relay: &'a dyn RelayControl,
    pub on_demand: &'a mut OnDemand,
    pub customer: String,
    pub cdr: u64,
}

/// Why a call cannot be recorded by a user now.
pub(super) enum Unrecordable {
    NotYours,
    NotConnected,
}

/// Bridge `bridge` as the user on `side` records it, if it is connected.
fn bridge_recordable(bridge: &mut Bridge, side: Side) -> Result<Recordable<'_>, Unrecordable> {
    if !connected(bridge) {
        return Err(Unrecordable::NotConnected);
    }
    let customer = match side {
        Side::A => bridge.cdr.callee.clone(),
        Side::B(_) => bridge.cdr.caller.clone(),
    };
    Ok(Recordable {
        relay: &*bridge.relay,
        on_demand: &mut bridge.on_demand,
        customer,
        cdr: bridge.cdr.id,
    })
}

impl OnDemand {
    /// Recording `id` ended (stopped, failed, or the call is over).
    pub(super) fn ended(&mut self, id: u64) {
        if self.active == Some(id) {
            self.active = None;
        }
    }
}

/// Starts recording `rec` for `agent` (call `a`, which the agent's desk
/// shows as `call_id`): the relay records, the desk is told.
fn start(
    cx: &mut Cx<'_>,
    rec: Recordable<'_>,
    a: &CallId,
    agent: String,
    call_id: String,
) -> (u64, Taking) {
    let id = cx.next_id();
    rec.relay.record_call(id);
    rec.on_demand.active = Some(id);
    tracing::info!(call_id = %a, %agent, customer = %rec.customer, id, "recording");
    cx.recording(Report {
        agent: agent.clone(),
        call_id: call_id.clone(),
        id,
        progress: Progress::Started,
    });
    let taking = Taking {
        a: a.clone(),
        agent,
        call_id,
        customer: rec.customer,
        cdr: rec.cdr,
        start_ms: cx.wall.0,
    };
    (id, taking)
}

/// Stops recording `rec` (the relay saves and reports it); its id.
fn stop(rec: Recordable<'_>) -> Option<u64> {
    let id = rec.on_demand.active.take()?;
    rec.relay.stop_recording_call();
    Some(id)
}

impl Calls {
    /// The desk starts (`on`) or stops recording `user`'s call with leg
    /// `leg` (the Call-ID the desk shows): a bridged call, or one the PBX
    /// placed (click-to-call, a campaign's); the recording's id.
    pub fn record(
        &mut self,
        cx: &mut Cx<'_>,
        user: &str,
        leg: &CallId,
        on: bool,
    ) -> Result<u64, RecordError> {
        let call = || leg.to_string();
        let (a, _) = self
            .legs
            .get(leg)
            .cloned()
            .ok_or_else(|| RecordError::NoCall(call()))?;
        let side = match self.originations.contains_key(&a) {
            true => None,
            false => Some(self.users_side(cx, user, leg).map_err(|e| match e {
                Whose::NoCall => RecordError::NoCall(call()),
                Whose::NotYours => RecordError::NotYours(call()),
            })?),
        };
        let rec = match (self.originations.get_mut(&a), side) {
            (Some(o), _) => o.recordable(user),
            (None, Some((_, side))) => match self.bridges.get_mut(&a) {
                Some(b) => bridge_recordable(b, side),
                None => Err(Unrecordable::NotConnected),
            },
            (None, None) => Err(Unrecordable::NotConnected),
        };
        let rec = rec.map_err(|e| match e {
            Unrecordable::NotYours => RecordError::NotYours(call()),
            Unrecordable::NotConnected => RecordError::NotConnected(call()),
        })?;
        match (on, rec.on_demand.active) {
            (true, Some(_)) => Err(RecordError::Already(call())),
            (false, None) => Err(RecordError::NotRecording(call())),
            (true, None) => {
                let (id, taking) = start(cx, rec, &a, user.to_string(), call());
                self.recordings.insert(id, taking);
                Ok(id)
            }
            (false, Some(_)) => {
                let id = stop(rec).ok_or_else(|| RecordError::NotRecording(call()))?;
                tracing::info!(call_id = %a, %user, id, "recording stopped (from the desk)");
                Ok(id)
            }
        }
    }

    /// A DTMF digit from `side` (0 or 1 in the relay) of connected call
    /// `a`: the user there keyed the record code, which starts or stops a
    /// recording.
    pub(super) fn record_digit(&mut self, cx: &mut Cx<'_>, a: &CallId, side: usize, d: char) {
        let code = &cx.env.calls.record_code;
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let Some(idx) = bridge.answered else { return };
        let (typed, at) = &mut bridge.on_demand.typed[side.min(1)];
        if at.is_none_or(|t| cx.now.duration_since(t) > KEY_GAP) {
            typed.clear();
        }
        typed.push(d);
        *at = Some(cx.now);
        if code.is_empty() || !typed.ends_with(code.as_str()) {
            if typed.len() > 16 {
                typed.drain(..typed.len() - 16);
            }
            return;
        }
        typed.clear();
        let side = if side == 0 { Side::A } else { Side::B(idx) };
        let Some(user) = transferor_user(cx, bridge, side) else {
            return;
        };
        let pt = super::answered_pt(match side {
            Side::A => bridge.a.invite.body(),
            Side::B(_) => &bridge.b_sdp,
        });
        let leg = self.party_call_id(cx, a, side);
        let Some(bridge) = self.bridges.get_mut(a) else {
            return;
        };
        let toward = side.relay_index();
        let Ok(rec) = bridge_recordable(bridge, side) else {
            return;
        };
        let relay = rec.relay;
        if rec.on_demand.active.is_some() {
            if let Some(id) = stop(rec) {
                tracing::info!(call_id = %a, %user, id, "recording stopped (feature code)");
            }
            return relay.play(toward, super::voicemail::saved(), pt, false);
        }
        let (id, taking) = start(cx, rec, a, user, leg);
        relay.play(toward, super::voicemail::beep(), pt, false);
        self.recordings.insert(id, taking);
    }

    /// The Call-ID the desk shows `side`'s user for call `a`.
    fn party_call_id(&self, cx: &Cx<'_>, a: &CallId, side: Side) -> String {
        let party = self.bridges.get(a).and_then(|b| match side {
            Side::A => b.caller_party.clone(),
            Side::B(_) => b.callee_party.clone(),
        });
        party
            .and_then(|(ext, id)| {
                let dialogs = cx.env.presence.dialogs(&ext);
                dialogs
                    .iter()
                    .find(|d| d.id == id)
                    .map(|d| d.call_id.clone())
            })
            .unwrap_or_else(|| a.to_string())
    }

    /// Call recording `id` ended: saved (`ms` long) — its record is stored
    /// — or failed. `false`: not a call recording.
    pub(super) fn call_recorded(&mut self, cx: &mut Cx<'_>, id: u64, saved: bool, ms: u64) -> bool {
        let Some(t) = self.recordings.remove(&id) else {
            return false;
        };
        // It may have failed while the call goes on.
        if let Some(b) = self.bridges.get_mut(&t.a) {
            b.on_demand.ended(id);
        }
        if let Some(o) = self.originations.get_mut(&t.a) {
            o.on_demand.ended(id);
        }
        let progress = if saved {
            let recording = CallRecording {
                id,
                customer: t.customer,
                agent: t.agent.clone(),
                call_id: t.call_id.clone(),
                cdr: t.cdr,
                start_ms: t.start_ms,
                ms,
            };
            cx.store(Write::put(recording.clone()));
            tracing::info!(id, agent = %t.agent, ms, "call recording saved");
            Progress::Saved { recording }
        } else {
            tracing::warn!(id, agent = %t.agent, "call recording not saved");
            let reason = "the recording could not be written (see the PBX log)".to_string();
            Progress::Failed { reason }
        };
        cx.recording(Report {
            agent: t.agent,
            call_id: t.call_id,
            id,
            progress,
        });
        true
    }

    /// Whether call `a` is a bridge whose parties are connected.
    pub(super) fn is_connected(&self, a: &CallId) -> bool {
        self.bridges.get(a).is_some_and(|b| b.answered.is_some())
    }

    /// Recordings not yet stored.
    pub(super) fn recordings_pending(&self) -> usize {
        self.recordings.len()
    }
}

/// Recordings by id, from start to stored.
pub(super) type Recordings = HashMap<u64, Taking>;

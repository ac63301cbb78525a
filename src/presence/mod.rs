//! Presence: the one source of truth for every extension's live state, and the
//! stream of its changes (the presence board, BLF NOTIFYs, ACD and campaign pacing
//! all read it). The state is derived from facts, never stored twice: whether the
//! phone has a live registration, the calls it is in, a wrap-up deadline, and what
//! the agent chose (available, away, busy).

use crate::clock::UnixMillis;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::broadcast;

/// What the board shows for an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Available,
    /// Not at the desk.
    Away,
    /// Do not disturb.
    Busy,
    Ringing,
    OnCall,
    WrapUp,
    /// No live registration: never offered calls.
    Offline,
}

impl State {
    /// Every state, in the board's order.
    pub const ALL: [State; 7] = [
        State::Available,
        State::Away,
        State::Busy,
        State::Ringing,
        State::OnCall,
        State::WrapUp,
        State::Offline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Available => "available",
            State::Away => "away",
            State::Busy => "busy",
            State::Ringing => "ringing",
            State::OnCall => "on_call",
            State::WrapUp => "wrap_up",
            State::Offline => "offline",
        }
    }
}

/// Refused presence changes (the caller's mistake).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    #[error("no such extension: {0}")]
    Unknown(String),
    #[error("`{0}` cannot be chosen; only available, away and busy can")]
    NotChoosable(&'static str),
}

/// Where a dialog stands (RFC 4235 §4.1.1; `proceeding` is folded into `early`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DialogState {
    /// INVITE sent to (or by) the phone, no ringing yet.
    Trying,
    /// Ringing.
    Early,
    /// Answered.
    Confirmed,
}

impl DialogState {
    pub fn as_str(self) -> &'static str {
        match self {
            DialogState::Trying => "trying",
            DialogState::Early => "early",
            DialogState::Confirmed => "confirmed",
        }
    }
}

/// Whether the extension placed the call or is being called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Initiator,
    Recipient,
}

/// Identifies one dialog of one extension in the presence map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DialogId(pub u64);

/// One call an extension is in, as BLF (RFC 4235) shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DialogFact {
    pub id: DialogId,
    /// The Call-ID of the call: the extension's own leg (for a queue call offered
    /// to an agent, the caller's leg).
    pub call_id: String,
    pub direction: Direction,
    pub state: DialogState,
    /// The number on the other end.
    pub peer: String,
    /// The tags of the caller's dialog with the PBX, which `call_id` names:
    /// what a phone's BLF key puts in the Replaces header of its INVITE to
    /// pick a ringing call up (RFC 4235, RFC 3891). Not shown on the desk.
    /// Shared: the fact is copied whenever the shown window changes.
    #[serde(skip)]
    pub tags: Option<Arc<DialogTags>>,
}

/// A dialog's tags: the PBX's own (`local`, its To tag toward the caller)
/// and the caller's (`remote`, its From tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialogTags {
    pub local: String,
    pub remote: String,
}

/// How many of an extension's calls are shown (BLF, the change stream); the
/// state is derived from all of them.
pub const SHOWN_DIALOGS: usize = 8;

/// A state or dialog change, as broadcast to every listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub extension: String,
    pub state: State,
    /// Since when the state shown has held (Unix ms).
    pub since_ms: u64,
    /// Why the agent chose the state shown (away or busy), if they said.
    pub reason: Option<Arc<str>>,
    /// The extension's dialogs after the change (a vanished one has terminated).
    pub dialogs: Arc<[DialogFact]>,
}

/// The facts behind one extension's state.
#[derive(Debug, Clone)]
struct Facts {
    registered: bool,
    /// The calls the extension is in, by id (oldest first: ids are given out
    /// under this entry's lock). A load tester's phone may be in thousands, so
    /// nothing here scans them all.
    dialogs: BTreeMap<DialogId, DialogFact>,
    /// Of those, how many are talking (answered, or placed by the extension) and
    /// how many ringing here.
    talking: u32,
    ringing: u32,
    /// What is shown of them (BLF, the change stream): the oldest
    /// [`SHOWN_DIALOGS`], shared so announcing a change never copies them. A dialog
    /// leaves this window only when it ends.
    shown_dialogs: Arc<[DialogFact]>,
    /// Wrap-up after a queue call lasts until then.
    wrap_up_until: Option<UnixMillis>,
    /// What the agent chose: Available, Away or Busy, and why (a break, a
    /// meeting: free text from the desktop).
    chosen: State,
    reason: Option<Arc<str>>,
    /// The derived state last announced, and since when.
    shown: State,
    since: UnixMillis,
    /// The reason last announced (a new reason for the same state is a change).
    announced_reason: Option<Arc<str>>,
}

/// What a dialog adds to the (talking, ringing) counts.
fn weight(d: &DialogFact) -> (u32, u32) {
    if d.state == DialogState::Confirmed || d.direction == Direction::Initiator {
        (1, 0)
    } else {
        (0, 1)
    }
}

impl Facts {
    fn count(&mut self, d: &DialogFact, add: bool) {
        let (t, r) = weight(d);
        if add {
            self.talking += t;
            self.ringing += r;
        } else {
            self.talking = self.talking.saturating_sub(t);
            self.ringing = self.ringing.saturating_sub(r);
        }
    }

    /// Adds a dialog (trying) with the next id; returns it.
    fn add_dialog(
        &mut self,
        next: &AtomicU64,
        (call_id, tags): (&str, Option<&Arc<DialogTags>>),
        direction: Direction,
        peer: &str,
    ) -> DialogId {
        let id = DialogId(next.fetch_add(1, Ordering::Relaxed));
        let d = DialogFact {
            id,
            call_id: call_id.to_string(),
            direction,
            state: DialogState::Trying,
            peer: peer.to_string(),
            tags: tags.cloned(),
        };
        self.count(&d, true);
        self.dialogs.insert(id, d);
        id
    }

    fn derive(&self, now: UnixMillis) -> State {
        if !self.registered {
            State::Offline
        } else if self.talking > 0 {
            State::OnCall
        } else if self.ringing > 0 {
            State::Ringing
        } else if self.wrap_up_until.is_some_and(|t| t > now) {
            State::WrapUp
        } else {
            self.chosen
        }
    }
}

/// The presence map and its change stream; cheap to clone.
#[derive(Debug, Clone)]
pub struct Presence {
    map: Arc<DashMap<String, Facts>>,
    changes: broadcast::Sender<Change>,
    next_dialog: Arc<AtomicU64>,
}

impl Presence {
    /// Every extension starts offline (and available once it registers).
    pub fn new<'a>(extensions: impl IntoIterator<Item = &'a str>, now: UnixMillis) -> Presence {
        let map = DashMap::new();
        for ext in extensions {
            map.insert(
                ext.to_string(),
                Facts {
                    registered: false,
                    dialogs: BTreeMap::new(),
                    talking: 0,
                    ringing: 0,
                    shown_dialogs: Arc::from([]),
                    wrap_up_until: None,
                    chosen: State::Available,
                    reason: None,
                    announced_reason: None,
                    shown: State::Offline,
                    since: now,
                },
            );
        }
        Presence {
            map: Arc::new(map),
            changes: broadcast::channel(4096).0,
            next_dialog: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The current state and since when.
    pub fn state(&self, extension: &str) -> Option<(State, UnixMillis)> {
        self.map.get(extension).map(|f| (f.shown, f.since))
    }

    /// The current state, since when, and the reason given for it.
    pub fn shown(&self, extension: &str) -> Option<(State, UnixMillis, Option<Arc<str>>)> {
        self.map
            .get(extension)
            .map(|f| (f.shown, f.since, f.announced_reason.clone()))
    }

    /// Whether the user chose do not disturb (`busy`), whatever they are doing.
    pub fn do_not_disturb(&self, extension: &str) -> bool {
        self.map
            .get(extension)
            .is_some_and(|f| f.chosen == State::Busy)
    }

    /// Whether the extension is known here.
    pub fn contains(&self, extension: &str) -> bool {
        self.map.contains_key(extension)
    }

    /// The calls the extension is in now.
    pub fn dialogs(&self, extension: &str) -> Arc<[DialogFact]> {
        self.map
            .get(extension)
            .map(|f| Arc::clone(&f.shown_dialogs))
            .unwrap_or_default()
    }

    /// Every extension's state (for a board's first paint).
    pub fn snapshot(&self) -> Vec<(String, State)> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .map(|e| (e.key().clone(), e.shown))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Changes from now on. A slow listener that falls behind is told it lagged and
    /// should re-read the snapshot.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Applies `f` to the facts of `extension` and announces what changed. `f`
    /// returns the dialog it changed, if any: a change inside the shown window is
    /// always announced, anything else only when the derived state changes.
    fn update(
        &self,
        extension: &str,
        now: UnixMillis,
        f: impl FnOnce(&mut Facts) -> Option<DialogId>,
    ) -> Result<(), PresenceError> {
        let change = {
            let mut facts = self
                .map
                .get_mut(extension)
                .ok_or_else(|| PresenceError::Unknown(extension.to_string()))?;
            let changed = f(&mut facts);
            let shown = &facts.shown_dialogs;
            let dialogs_changed = changed.is_some_and(|id| {
                shown.len() < SHOWN_DIALOGS || shown.last().is_some_and(|last| id <= last.id)
            });
            if dialogs_changed {
                facts.shown_dialogs = facts
                    .dialogs
                    .values()
                    .take(SHOWN_DIALOGS)
                    .cloned()
                    .collect();
            }
            let state = facts.derive(now);
            // The reason shows while the state it was given for does.
            let reason = (state == facts.chosen)
                .then(|| facts.reason.clone())
                .flatten();
            if state == facts.shown && !dialogs_changed && reason == facts.announced_reason {
                return Ok(());
            }
            facts.announced_reason = reason.clone();
            if state != facts.shown {
                facts.shown = state;
                facts.since = now;
            }
            if self.changes.receiver_count() == 0 {
                return Ok(()); // nobody listens: the map is the truth
            }
            Change {
                extension: extension.to_string(),
                state,
                since_ms: facts.since.0,
                reason,
                dialogs: Arc::clone(&facts.shown_dialogs),
            }
        };
        // No listener is fine: the map is the truth, the stream only a notice.
        let _ = self.changes.send(change);
        Ok(())
    }

    /// Whether the extension has at least one live registration.
    pub fn set_registered(
        &self,
        extension: &str,
        registered: bool,
        now: UnixMillis,
    ) -> Result<(), PresenceError> {
        self.update(extension, now, |f| {
            f.registered = registered;
            None
        })
    }

    /// The agent's own choice (phone feature code).
    pub fn choose(
        &self,
        extension: &str,
        state: State,
        now: UnixMillis,
    ) -> Result<(), PresenceError> {
        self.choose_for(extension, state, None, now)
    }

    /// The agent's own choice with a reason (the desktop: "break", "meeting").
    pub fn choose_for(
        &self,
        extension: &str,
        state: State,
        reason: Option<&str>,
        now: UnixMillis,
    ) -> Result<(), PresenceError> {
        if !matches!(state, State::Available | State::Away | State::Busy) {
            return Err(PresenceError::NotChoosable(state.as_str()));
        }
        self.update(extension, now, |f| {
            f.chosen = state;
            f.reason = reason.filter(|r| !r.is_empty()).map(Arc::from);
            None
        })
    }

    /// A call starts at the extension (`trying`); its id for later updates.
    pub fn dialog_started(
        &self,
        extension: &str,
        call: (&str, Option<&Arc<DialogTags>>),
        direction: Direction,
        peer: &str,
        now: UnixMillis,
    ) -> Result<DialogId, PresenceError> {
        let mut id = None;
        self.update(extension, now, |f| {
            id = Some(f.add_dialog(&self.next_dialog, call, direction, peer));
            id
        })?;
        id.ok_or_else(|| PresenceError::Unknown(extension.to_string()))
    }

    /// Offers a call to an agent only if the agent is `available`, and makes it
    /// ringing in the same step: two calls can never both reserve one agent.
    pub fn reserve(
        &self,
        extension: &str,
        call: (&str, Option<&Arc<DialogTags>>),
        peer: &str,
        now: UnixMillis,
    ) -> Option<DialogId> {
        let mut id = None;
        self.update(extension, now, |f| {
            if f.derive(now) == State::Available {
                id = Some(f.add_dialog(&self.next_dialog, call, Direction::Recipient, peer));
            }
            id
        })
        .ok()?;
        id
    }

    /// A dialog moves on (early, confirmed).
    pub fn dialog_state(
        &self,
        extension: &str,
        id: DialogId,
        state: DialogState,
        now: UnixMillis,
    ) -> Result<(), PresenceError> {
        self.update(extension, now, |f| {
            let d = f.dialogs.get_mut(&id).filter(|d| d.state != state)?;
            let before = weight(d);
            d.state = state;
            let after = weight(d);
            f.talking = (f.talking + after.0).saturating_sub(before.0);
            f.ringing = (f.ringing + after.1).saturating_sub(before.1);
            Some(id)
        })
    }

    /// A dialog ended; `wrap_up` after an answered queue call.
    pub fn dialog_ended(
        &self,
        extension: &str,
        id: DialogId,
        wrap_up: Option<std::time::Duration>,
        now: UnixMillis,
    ) -> Result<(), PresenceError> {
        self.update(extension, now, |f| {
            if let Some(w) = wrap_up {
                f.wrap_up_until = Some(UnixMillis(now.0 + w.as_millis() as u64));
            }
            let d = f.dialogs.remove(&id)?;
            f.count(&d, false);
            Some(id)
        })
    }

    /// Re-derives states whose wrap-up has run out (call it every second or so).
    pub fn tick(&self, now: UnixMillis) {
        let due: Vec<String> = self
            .map
            .iter()
            .filter(|e| e.shown == State::WrapUp && e.wrap_up_until.is_some_and(|t| t <= now))
            .map(|e| e.key().clone())
            .collect();
        for ext in due {
            let _ = self.update(&ext, now, |f| {
                f.wrap_up_until = None;
                None
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn presence() -> Presence {
        Presence::new(["201", "202"], UnixMillis(0))
    }

    #[test]
    fn an_unregistered_agent_is_offline_whatever_it_chose() {
        let p = presence();
        assert_eq!(p.state("201").map(|s| s.0), Some(State::Offline));
        p.choose("201", State::Available, UnixMillis(1))
            .expect("choose");
        assert_eq!(p.state("201").map(|s| s.0), Some(State::Offline));
        p.set_registered("201", true, UnixMillis(2)).expect("reg");
        assert_eq!(p.state("201"), Some((State::Available, UnixMillis(2))));
        p.choose("201", State::Away, UnixMillis(3)).expect("away");
        p.set_registered("201", false, UnixMillis(4))
            .expect("unreg");
        p.set_registered("201", true, UnixMillis(5)).expect("reg");
        assert_eq!(
            p.state("201").map(|s| s.0),
            Some(State::Away),
            "the choice survives re-registration"
        );
    }

    #[test]
    fn calls_drive_ringing_on_call_and_wrap_up_then_back_to_the_choice() {
        let p = presence();
        p.set_registered("202", true, UnixMillis(0)).expect("reg");
        let id = p
            .dialog_started(
                "202",
                ("c1", None),
                Direction::Recipient,
                "201",
                UnixMillis(1),
            )
            .expect("ring");
        assert_eq!(p.state("202").map(|s| s.0), Some(State::Ringing));
        p.dialog_state("202", id, DialogState::Confirmed, UnixMillis(2))
            .expect("answer");
        assert_eq!(p.state("202").map(|s| s.0), Some(State::OnCall));
        p.dialog_ended("202", id, Some(Duration::from_secs(30)), UnixMillis(3))
            .expect("end");
        assert_eq!(p.state("202").map(|s| s.0), Some(State::WrapUp));
        p.tick(UnixMillis(30_002));
        assert_eq!(p.state("202").map(|s| s.0), Some(State::WrapUp));
        p.tick(UnixMillis(30_003));
        assert_eq!(p.state("202").map(|s| s.0), Some(State::Available));
    }

    #[test]
    fn every_change_is_broadcast_once_and_non_changes_are_not() {
        let p = presence();
        let mut rx = p.subscribe();
        p.set_registered("201", true, UnixMillis(1)).expect("reg");
        p.set_registered("201", true, UnixMillis(2)).expect("again");
        p.choose("201", State::Busy, UnixMillis(3)).expect("busy");
        let got: Vec<State> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|c| c.state)
            .collect();
        assert_eq!(got, vec![State::Available, State::Busy]);
    }

    #[test]
    fn only_the_agent_states_can_be_chosen_and_unknown_extensions_are_refused() {
        let p = presence();
        assert_eq!(
            p.choose("201", State::OnCall, UnixMillis(0)),
            Err(PresenceError::NotChoosable("on_call"))
        );
        assert_eq!(
            p.set_registered("999", true, UnixMillis(0)),
            Err(PresenceError::Unknown("999".into()))
        );
        assert_eq!(p.snapshot().len(), 2);
    }

    #[test]
    fn an_agent_is_reserved_only_while_available_and_only_once() {
        let p = presence();
        assert_eq!(
            p.reserve("201", ("c1", None), "x", UnixMillis(0)),
            None,
            "offline"
        );
        p.set_registered("201", true, UnixMillis(1)).expect("reg");
        let first = p.reserve("201", ("c1", None), "x", UnixMillis(2));
        assert!(first.is_some());
        assert_eq!(p.state("201").map(|s| s.0), Some(State::Ringing));
        assert_eq!(
            p.reserve("201", ("c2", None), "y", UnixMillis(3)),
            None,
            "already ringing"
        );
        p.choose("202", State::Away, UnixMillis(3)).expect("away");
        p.set_registered("202", true, UnixMillis(3)).expect("reg");
        assert_eq!(
            p.reserve("202", ("c3", None), "y", UnixMillis(4)),
            None,
            "away"
        );
    }

    #[test]
    fn dialog_steps_are_broadcast_even_when_the_state_stays() {
        let p = presence();
        p.set_registered("201", true, UnixMillis(0)).expect("reg");
        let mut rx = p.subscribe();
        let id = p
            .dialog_started(
                "201",
                ("c1", None),
                Direction::Recipient,
                "300",
                UnixMillis(1),
            )
            .expect("trying");
        p.dialog_state("201", id, DialogState::Early, UnixMillis(2))
            .expect("early");
        p.dialog_state("201", id, DialogState::Early, UnixMillis(3))
            .expect("same");
        p.dialog_state("201", id, DialogState::Confirmed, UnixMillis(4))
            .expect("confirmed");
        p.dialog_ended("201", id, None, UnixMillis(5)).expect("end");
        let got: Vec<(State, Option<DialogState>)> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|c| (c.state, c.dialogs.first().map(|d| d.state)))
            .collect();
        assert_eq!(
            got,
            vec![
                (State::Ringing, Some(DialogState::Trying)),
                (State::Ringing, Some(DialogState::Early)),
                (State::OnCall, Some(DialogState::Confirmed)),
                (State::Available, None),
            ]
        );
    }

    #[test]
    fn placing_a_call_makes_the_caller_on_call_at_once() {
        let p = presence();
        p.set_registered("201", true, UnixMillis(0)).expect("reg");
        let id = p
            .dialog_started(
                "201",
                ("c1", None),
                Direction::Initiator,
                "202",
                UnixMillis(1),
            )
            .expect("dial");
        assert_eq!(p.state("201").map(|s| s.0), Some(State::OnCall));
        p.dialog_ended("201", id, None, UnixMillis(2)).expect("end");
        assert_eq!(p.state("201").map(|s| s.0), Some(State::Available));
    }
}

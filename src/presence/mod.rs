//! Presence: the one source of truth for every extension's live state, and the
//! stream of its changes (the presence board, BLF NOTIFYs, ACD and campaign pacing
//! all read it). The state is derived from facts, never stored twice: whether the
//! phone has a live registration, the calls it is in, a wrap-up deadline, and what
//! the agent chose (available, away, busy).

use crate::registrar::UnixMillis;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::broadcast;

/// What the board shows for an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// A state change, as broadcast to every listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub extension: String,
    pub state: State,
    pub at_ms: u64,
}

/// The facts behind one extension's state.
#[derive(Debug, Clone, Copy)]
struct Facts {
    registered: bool,
    /// Calls ringing at this extension, and calls it is talking in.
    ringing: u32,
    talking: u32,
    /// Wrap-up after a queue call lasts until then.
    wrap_up_until: Option<UnixMillis>,
    /// What the agent chose: Available, Away or Busy.
    chosen: State,
    /// The derived state last announced, and since when.
    shown: State,
    since: UnixMillis,
}

impl Facts {
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
                    ringing: 0,
                    talking: 0,
                    wrap_up_until: None,
                    chosen: State::Available,
                    shown: State::Offline,
                    since: now,
                },
            );
        }
        Presence {
            map: Arc::new(map),
            changes: broadcast::channel(4096).0,
        }
    }

    /// The current state and since when.
    pub fn state(&self, extension: &str) -> Option<(State, UnixMillis)> {
        self.map.get(extension).map(|f| (f.shown, f.since))
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

    /// Applies `f` to the facts of `extension` and announces a new derived state.
    fn update(
        &self,
        extension: &str,
        now: UnixMillis,
        f: impl FnOnce(&mut Facts),
    ) -> Result<(), PresenceError> {
        let change = {
            let mut facts = self
                .map
                .get_mut(extension)
                .ok_or_else(|| PresenceError::Unknown(extension.to_string()))?;
            f(&mut facts);
            let state = facts.derive(now);
            if state == facts.shown {
                return Ok(());
            }
            facts.shown = state;
            facts.since = now;
            Change {
                extension: extension.to_string(),
                state,
                at_ms: now.0,
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
        self.update(extension, now, |f| f.registered = registered)
    }

    /// The agent's own choice (desktop or phone feature code).
    pub fn choose(
        &self,
        extension: &str,
        state: State,
        now: UnixMillis,
    ) -> Result<(), PresenceError> {
        if !matches!(state, State::Available | State::Away | State::Busy) {
            return Err(PresenceError::NotChoosable(state.as_str()));
        }
        self.update(extension, now, |f| f.chosen = state)
    }

    /// A call starts ringing at the extension.
    pub fn ringing(&self, extension: &str, now: UnixMillis) -> Result<(), PresenceError> {
        self.update(extension, now, |f| f.ringing += 1)
    }

    /// A ringing call was answered here (`answered`) or stopped ringing.
    pub fn ring_ended(
        &self,
        extension: &str,
        answered: bool,
        now: UnixMillis,
    ) -> Result<(), PresenceError> {
        self.update(extension, now, |f| {
            f.ringing = f.ringing.saturating_sub(1);
            if answered {
                f.talking += 1;
            }
        })
    }

    /// The extension is now talking in a call it placed (or was connected to).
    pub fn call_started(&self, extension: &str, now: UnixMillis) -> Result<(), PresenceError> {
        self.update(extension, now, |f| f.talking += 1)
    }

    /// A call the extension talked in ended; `wrap_up` after a queue call.
    pub fn call_ended(
        &self,
        extension: &str,
        wrap_up: Option<std::time::Duration>,
        now: UnixMillis,
    ) -> Result<(), PresenceError> {
        self.update(extension, now, |f| {
            f.talking = f.talking.saturating_sub(1);
            if let Some(w) = wrap_up {
                f.wrap_up_until = Some(UnixMillis(now.0 + w.as_millis() as u64));
            }
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
            let _ = self.update(&ext, now, |f| f.wrap_up_until = None);
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
        p.ringing("202", UnixMillis(1)).expect("ring");
        assert_eq!(p.state("202").map(|s| s.0), Some(State::Ringing));
        p.ring_ended("202", true, UnixMillis(2)).expect("answer");
        assert_eq!(p.state("202").map(|s| s.0), Some(State::OnCall));
        p.call_ended("202", Some(Duration::from_secs(30)), UnixMillis(3))
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
}

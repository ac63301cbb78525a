//! The desk's event log: every event the desk shows, numbered in order, in a
//! bounded ring. A client that reconnects with the last number it saw gets
//! exactly what it missed, or — when that has left the ring — one `resync`
//! telling it to fetch the snapshot again: never a silent gap.
//!
//! Clients do not get their own queues: each reads the shared ring from its
//! own position, so a slow client costs nothing but its socket (and is dropped
//! when that stops draining).

use crate::cti::session::{Role, Session};
use crate::presence::{Change, DialogFact, DialogState, Direction, State};
use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Arc;

/// An event's place in the log (starts at 1; 0 means "nothing seen yet").
pub type Seq = u64;

/// Who may see an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// Every logged-in user (the board).
    Everyone,
    /// One agent (and the supervisors): their calls, their records.
    Agent(String),
    /// These extensions (and the supervisors): a call-back's addressees.
    Extensions(Arc<[String]>),
    /// Supervisors only: campaigns.
    Supervisors,
}

impl Audience {
    pub fn admits(&self, session: &Session) -> bool {
        match self {
            Audience::Everyone => true,
            Audience::Agent(ext) => session.role == Role::Supervisor || *ext == session.extension,
            Audience::Extensions(list) => {
                session.role == Role::Supervisor || list.contains(&session.extension)
            }
            Audience::Supervisors => session.role == Role::Supervisor,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    /// An agent's state on the board changed.
    Presence {
        extension: String,
        state: crate::presence::State,
        since_ms: u64,
        reason: Option<String>,
    },
    /// A call of an agent's: ringing (with the screen pop), answered, ended.
    Call {
        extension: String,
        call_id: String,
        phase: CallPhase,
        direction: Direction,
        /// The other party: the caller's number when the agent is called.
        peer: String,
        /// Only when a call rings at the agent: what the desk knows of the caller.
        #[serde(skip_serializing_if = "Option::is_none")]
        pop: Option<ScreenPop>,
    },
    /// The queues' statistics changed (the wallboard).
    Queues {
        queues: Vec<crate::routing::stats::QueueStats>,
    },
    /// A response record was saved (durably).
    RecordSaved {
        record: crate::history::ResponseRecord,
    },
    /// A call-back was written, claimed, released, closed, re-opened,
    /// escalated or flagged (durably); to its addressees and supervisors.
    Callback {
        callback: crate::callbacks::Callback,
    },
    /// A campaign was created, loaded, started, paused, resumed or stopped
    /// (durably): its progress, to supervisors.
    Campaign {
        progress: crate::campaigns::Progress,
    },
    /// One customer of a campaign, to the one agent whose attempt it is
    /// (their own stream only): confirm or skip within `confirm_secs`.
    Attempt {
        call_id: String,
        /// What it is: "Campaign spring", "Call-back from queue 500".
        title: String,
        customer: super::dialer::Customer,
        confirm_secs: u32,
    },
    /// The attempt moved on: the customer is being dialled, or answered.
    AttemptProgress {
        call_id: String,
        phase: super::dialer::AttemptPhase,
    },
    /// The attempt is over: the record leaves the page and memory (and the
    /// event that carried it is erased from the log).
    AttemptErased {
        call_id: String,
        outcome: crate::campaigns::Outcome,
    },
    /// A recording of one of the agent's calls started, was saved (durably)
    /// or failed; to the agent who started it.
    Recording {
        call_id: String,
        id: u64,
        progress: crate::recordings::Progress,
    },
    /// Events were lost (the client asked for more than the ring holds, or the
    /// desk itself fell behind the PBX): fetch the board again.
    Resync,
}

/// Where a call of an agent's stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallPhase {
    Ringing,
    Answered,
    Ended,
}

/// The screen pop: who is calling, and everything the desk wrote about them.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ScreenPop {
    pub caller: String,
    /// The name the agents last wrote down for this caller.
    pub name: Option<String>,
    /// Every response record of this caller, oldest first.
    pub history: Vec<crate::history::ResponseRecord>,
}

/// What the board was last told of each extension: a presence change that
/// only moves calls (a load tester's phone in a thousand) is no board event.
#[derive(Debug, Default)]
pub struct BoardTracker {
    told: std::collections::HashMap<String, (State, u64, Option<Arc<str>>)>,
}

impl BoardTracker {
    /// The board's event for `change`, if what it shows (state, since, reason)
    /// is new.
    pub fn track(&mut self, change: &Change) -> Option<Body> {
        let shown = (change.state, change.since_ms, change.reason.clone());
        if self.told.get(&change.extension) == Some(&shown) {
            return None;
        }
        self.told.insert(change.extension.clone(), shown);
        Some(Body::Presence {
            extension: change.extension.clone(),
            state: change.state,
            since_ms: change.since_ms,
            reason: change.reason.as_deref().map(str::to_string),
        })
    }
}

/// What the desk last saw of the agents' calls, to tell ringing, answered and
/// ended apart in the presence stream (which carries each extension's dialogs).
#[derive(Debug, Default)]
pub struct CallTracker {
    /// By extension: each dialog as last seen, and whether it was talking.
    seen: std::collections::HashMap<String, Vec<(DialogFact, bool)>>,
}

/// A call event found in a presence change (the pop is added by the caller).
#[derive(Debug, Clone, PartialEq)]
pub struct CallChange {
    pub fact: DialogFact,
    pub phase: CallPhase,
}

/// Answered (or placed by the extension itself): the call is talking.
fn talking(d: &DialogFact) -> bool {
    d.state == DialogState::Confirmed || d.direction == Direction::Initiator
}

impl CallTracker {
    /// The call events in `change`: new dialogs (ringing, or answered when they
    /// start talking), dialogs that started talking, dialogs that vanished.
    pub fn track(&mut self, change: &Change) -> Vec<CallChange> {
        let before = self.seen.remove(&change.extension).unwrap_or_default();
        let mut out = Vec::new();
        for d in change.dialogs.iter() {
            let was = before.iter().find(|(b, _)| b.id == d.id).map(|(_, t)| *t);
            let phase = match (was, talking(d)) {
                (None, false) => CallPhase::Ringing,
                (None | Some(false), true) => CallPhase::Answered,
                _ => continue,
            };
            out.push(CallChange {
                fact: d.clone(),
                phase,
            });
        }
        for (b, _) in &before {
            if !change.dialogs.iter().any(|d| d.id == b.id) {
                out.push(CallChange {
                    fact: b.clone(),
                    phase: CallPhase::Ended,
                });
            }
        }
        let now: Vec<_> = change
            .dialogs
            .iter()
            .map(|d| (d.clone(), talking(d)))
            .collect();
        if !now.is_empty() {
            self.seen.insert(change.extension.clone(), now);
        }
        out
    }
}

/// One numbered event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub seq: Seq,
    #[serde(flatten)]
    pub body: Body,
    #[serde(skip)]
    pub audience: Audience,
    /// The event as sent (JSON text), written once for every stream.
    #[serde(skip)]
    pub wire: Utf8Bytes,
}

/// An event's JSON text: its `seq` and its body's fields.
pub fn wire(seq: Seq, body: &Body) -> Utf8Bytes {
    #[derive(Serialize)]
    struct Wire<'a> {
        seq: Seq,
        #[serde(flatten)]
        body: &'a Body,
    }
    // Bodies are plain data: serialising one cannot fail.
    serde_json::to_string(&Wire { seq, body })
        .unwrap_or_default()
        .into()
}

/// What a client that last saw `seq` gets now.
#[derive(Debug, PartialEq)]
pub enum Replay {
    /// These, in order (possibly none).
    Events(Vec<Arc<Event>>),
    /// Some of what followed is gone: start again from the snapshot, then from
    /// this number.
    Resync { latest: Seq },
}

/// The ring.
#[derive(Debug)]
pub struct EventLog {
    cap: usize,
    ring: VecDeque<Arc<Event>>,
    /// The number of the last event pushed.
    latest: Seq,
}

impl EventLog {
    pub fn new(cap: usize) -> EventLog {
        EventLog {
            cap: cap.max(1),
            ring: VecDeque::new(),
            latest: 0,
        }
    }

    pub fn latest(&self) -> Seq {
        self.latest
    }

    pub fn push(&mut self, audience: Audience, body: Body) -> Seq {
        self.latest += 1;
        if self.ring.len() == self.cap {
            self.ring.pop_front();
        }
        self.ring.push_back(Arc::new(Event {
            seq: self.latest,
            wire: wire(self.latest, &body),
            body,
            audience,
        }));
        self.latest
    }

    /// Replaces event `seq`'s body (if the ring still holds it) with `body`:
    /// what it carried is no longer replayed to anyone.
    pub fn redact(&mut self, seq: Seq, body: Body) {
        let oldest = self.latest + 1 - self.ring.len() as u64;
        let Some(slot) = seq
            .checked_sub(oldest)
            .and_then(|i| self.ring.get_mut(i as usize))
        else {
            return;
        };
        let audience = slot.audience.clone();
        *slot = Arc::new(Event {
            seq,
            wire: wire(seq, &body),
            body,
            audience,
        });
    }

    /// Everything after `seq`, at most `limit` of them.
    pub fn after(&self, seq: Seq, limit: usize) -> Replay {
        if seq > self.latest {
            // A number we never gave out (an earlier run's): start over.
            return Replay::Resync {
                latest: self.latest,
            };
        }
        let oldest = self.latest + 1 - self.ring.len() as u64;
        if seq + 1 < oldest {
            return Replay::Resync {
                latest: self.latest,
            };
        }
        let skip = (seq + 1 - oldest) as usize;
        Replay::Events(self.ring.iter().skip(skip).take(limit).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(n: u64) -> Body {
        Body::Presence {
            extension: "201".into(),
            state: crate::presence::State::Away,
            since_ms: n,
            reason: None,
        }
    }

    fn seqs(r: Replay) -> Vec<Seq> {
        match r {
            Replay::Events(v) => v.iter().map(|e| e.seq).collect(),
            Replay::Resync { .. } => panic!("unexpected resync"),
        }
    }

    #[test]
    fn the_board_hears_of_state_since_and_reason_changes_but_not_of_calls_alone() {
        let mut board = BoardTracker::default();
        let mut c = dialogs("2000", &[(1, DialogState::Early)]);
        assert!(board.track(&c).is_some(), "first sight");
        c.dialogs = dialogs("2000", &[(1, DialogState::Early), (2, DialogState::Early)]).dialogs;
        assert_eq!(board.track(&c), None, "another call, still ringing");
        c.state = State::OnCall;
        c.since_ms = 5;
        assert!(matches!(
            board.track(&c),
            Some(Body::Presence {
                state: State::OnCall,
                since_ms: 5,
                ..
            })
        ));
        c.reason = Some(Arc::from("meeting"));
        assert!(board.track(&c).is_some(), "a new reason is shown");
        assert!(
            board.track(&dialogs("2001", &[])).is_some(),
            "per extension"
        );
    }

    #[test]
    fn a_client_gets_exactly_what_followed_its_last_number_in_order() {
        let mut log = EventLog::new(100);
        for n in 0..60 {
            log.push(Audience::Everyone, change(n));
        }
        assert_eq!(
            seqs(log.after(10, usize::MAX)),
            (11..=60).collect::<Vec<_>>()
        );
        assert_eq!(seqs(log.after(0, usize::MAX)).len(), 60);
        assert_eq!(seqs(log.after(60, usize::MAX)), Vec::<Seq>::new());
        assert_eq!(seqs(log.after(10, 5)), vec![11, 12, 13, 14, 15]);
    }

    #[test]
    fn a_number_older_than_the_ring_or_never_given_is_a_resync() {
        let mut log = EventLog::new(100);
        for n in 0..250 {
            log.push(Audience::Everyone, change(n));
        }
        assert_eq!(
            seqs(log.after(150, usize::MAX)).len(),
            100,
            "oldest kept is 151"
        );
        assert_eq!(log.after(149, usize::MAX), Replay::Resync { latest: 250 });
        assert_eq!(log.after(999, usize::MAX), Replay::Resync { latest: 250 });
    }

    fn dialogs(ext: &str, list: &[(u64, DialogState)]) -> Change {
        Change {
            extension: ext.into(),
            state: crate::presence::State::Ringing,
            since_ms: 0,
            reason: None,
            dialogs: list
                .iter()
                .map(|(id, state)| DialogFact {
                    id: crate::presence::DialogId(*id),
                    call_id: format!("call-{id}"),
                    direction: Direction::Recipient,
                    state: *state,
                    peer: "5550001".into(),
                    tags: None,
                })
                .collect(),
        }
    }

    fn phases(t: &mut CallTracker, c: &Change) -> Vec<(String, CallPhase)> {
        t.track(c)
            .into_iter()
            .map(|e| (e.fact.call_id, e.phase))
            .collect()
    }

    #[test]
    fn a_call_rings_is_answered_and_ends_once_each() {
        let mut t = CallTracker::default();
        let ring = |p| ("call-1".to_string(), p);
        assert_eq!(
            phases(&mut t, &dialogs("201", &[(1, DialogState::Trying)])),
            [ring(CallPhase::Ringing)]
        );
        assert_eq!(
            phases(&mut t, &dialogs("201", &[(1, DialogState::Early)])),
            [],
            "still ringing"
        );
        assert_eq!(
            phases(&mut t, &dialogs("201", &[(1, DialogState::Confirmed)])),
            [ring(CallPhase::Answered)]
        );
        assert_eq!(
            phases(&mut t, &dialogs("201", &[(1, DialogState::Confirmed)])),
            []
        );
        let ended = phases(&mut t, &dialogs("201", &[]));
        assert_eq!(ended, [ring(CallPhase::Ended)], "with the call's own id");
        assert!(t.seen.is_empty(), "nothing kept for an agent without calls");
    }

    #[test]
    fn an_agent_sees_their_own_events_and_supervisors_see_all() {
        let agent = |ext: &str, role| Session {
            extension: ext.into(),
            role,
            expires: std::time::Instant::now(),
        };
        let mine = Audience::Agent("201".into());
        assert!(mine.admits(&agent("201", Role::Agent)));
        assert!(!mine.admits(&agent("202", Role::Agent)));
        assert!(mine.admits(&agent("202", Role::Supervisor)));
        assert!(Audience::Everyone.admits(&agent("202", Role::Agent)));
    }
}

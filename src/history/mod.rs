//! History: the caller index (caller number → the agents who answered that
//! caller, most recent first) that makes routing sticky, and the response records
//! (what an agent noted about one conversation) that make up a customer's
//! history for the screen pop. The index lives in memory (the ACD reads it on the
//! hot path) and is persisted through the store writer; records live in the store.

use crate::store::{Record, Store, StoreError, Write};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How many agents the index remembers per caller.
const REMEMBERED: usize = 8;

/// Callers without a usable number: never looked up, never remembered.
pub fn is_anonymous(number: &str) -> bool {
    number.is_empty()
        || number.eq_ignore_ascii_case("anonymous")
        || number.eq_ignore_ascii_case("unknown")
        || number.eq_ignore_ascii_case("restricted")
}

/// One caller's entry in the index (as stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerAgents {
    pub caller: String,
    /// Most recent first.
    pub agents: Vec<String>,
}

/// What an agent wrote about one conversation with a customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResponseRecord {
    /// Unique, time-ordered.
    pub id: u64,
    pub caller: String,
    pub time_ms: u64,
    pub agent: String,
    /// The Call-ID of the conversation.
    pub call_id: String,
    #[serde(default)]
    pub notes: String,
    /// "answered" when the PBX opens the record; the agent sets the real outcome.
    #[serde(default)]
    pub outcome: String,
    /// The customer's name, as the agent wrote it (the screen pop shows the
    /// latest one).
    #[serde(default)]
    pub name: String,
}

impl Record for CallerAgents {
    const TREE: &'static str = "callers.v1";
    fn key(&self) -> Vec<u8> {
        self.caller.as_bytes().to_vec()
    }
}

impl Record for ResponseRecord {
    const TREE: &'static str = "responses.v1";
    /// By caller, then id: one caller's records are adjacent, oldest first.
    fn key(&self) -> Vec<u8> {
        let mut k = caller_prefix(&self.caller);
        k.extend_from_slice(&self.id.to_be_bytes());
        k
    }
}

fn caller_prefix(caller: &str) -> Vec<u8> {
    let mut k = caller.as_bytes().to_vec();
    k.push(0);
    k
}

/// One caller's response records (the customer's history), oldest first.
pub fn responses(store: &Store, caller: &str) -> Result<Vec<ResponseRecord>, StoreError> {
    store.with_prefix(&caller_prefix(caller))
}

/// The caller index; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct History {
    index: Arc<DashMap<String, Vec<String>>>,
}

impl History {
    /// The index as stored.
    pub fn load(store: &Store) -> Result<History, StoreError> {
        let index = DashMap::new();
        for entry in store.all::<CallerAgents>()? {
            index.insert(entry.caller, entry.agents);
        }
        Ok(History {
            index: Arc::new(index),
        })
    }

    /// The agents who answered `caller`, most recent first.
    pub fn recent_agents(&self, caller: &str) -> Vec<String> {
        self.index
            .get(caller)
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// Callers in the index.
    pub fn callers(&self) -> usize {
        self.index.len()
    }

    /// `agent` answered `caller`: the index moves the agent to the front. Returns
    /// the store write that persists it (`None` for an anonymous caller).
    pub fn answered(&self, caller: &str, agent: &str) -> Option<Write> {
        if is_anonymous(caller) {
            return None;
        }
        let mut agents = self.index.entry(caller.to_string()).or_default();
        agents.retain(|a| a != agent);
        agents.insert(0, agent.to_string());
        agents.truncate(REMEMBERED);
        Some(Write::put(CallerAgents {
            caller: caller.to_string(),
            agents: agents.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_keeps_the_most_recent_agent_first_without_repeats() {
        let h = History::default();
        for agent in ["201", "202", "201", "203"] {
            assert!(h.answered("+15551234", agent).is_some());
        }
        assert_eq!(h.recent_agents("+15551234"), ["203", "201", "202"]);
        for i in 0..20 {
            h.answered("+15551234", &format!("{}", 300 + i));
        }
        assert_eq!(h.recent_agents("+15551234").len(), REMEMBERED);
    }

    #[test]
    fn anonymous_callers_are_never_remembered() {
        let h = History::default();
        assert!(h.answered("anonymous", "201").is_none());
        assert!(h.answered("", "201").is_none());
        assert!(h.recent_agents("anonymous").is_empty());
        assert_eq!(h.callers(), 0);
    }

    #[test]
    fn the_index_and_records_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("open");
        let h = History::load(&store).expect("load");
        let w = h.answered("5550001", "202").expect("write");
        store.apply(vec![w]).expect("apply");
        let rec = ResponseRecord {
            id: 7,
            caller: "5550001".into(),
            time_ms: 1,
            agent: "202".into(),
            call_id: "c1".into(),
            notes: "wants a refund".into(),
            outcome: "answered".into(),
            name: String::new(),
        };
        store.put(rec.clone()).expect("record");
        store.flush_now().expect("flush");
        drop(store);
        let store = Store::reopen(dir.path());
        let h = History::load(&store).expect("load");
        assert_eq!(h.recent_agents("5550001"), ["202"]);
        assert_eq!(responses(&store, "5550001").expect("read"), vec![rec]);
        assert!(responses(&store, "5550002").expect("read").is_empty());
    }
}

//! History: the caller index (caller number → the agents who answered that
//! caller, most recent first) that makes routing sticky, and the response records
//! (what an agent noted about one conversation) that make up a customer's
//! history for the screen pop. The index lives in memory (the ACD reads it on the
//! hot path) and is persisted through the store writer; records live in the store.
//! The customer list (number → latest name, how many records, the last one) is
//! derived from the records at load and kept up to date as records are written,
//! for the desk's search by name or number.

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
        crate::store::owned_key(&self.caller, self.id)
    }
}

/// One caller's response records (the customer's history), oldest first.
pub fn responses(store: &Store, caller: &str) -> Result<Vec<ResponseRecord>, StoreError> {
    store.owned_by(caller)
}

/// One customer as the desk's search shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Customer {
    pub number: String,
    /// The latest name an agent wrote ("" when none did).
    pub name: String,
    /// Response records so far.
    pub records: u32,
    /// When the latest record was opened (Unix ms).
    pub last_ms: u64,
}

/// The most customers a search returns.
pub const SEARCH_LIMIT: usize = 50;

/// The caller index and the customer list; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct History {
    index: Arc<DashMap<String, Vec<String>>>,
    customers: Arc<DashMap<String, Customer>>,
}

impl History {
    /// The index as stored.
    pub fn load(store: &Store) -> Result<History, StoreError> {
        let index = DashMap::new();
        for entry in store.all::<CallerAgents>()? {
            index.insert(entry.caller, entry.agents);
        }
        let history = History {
            index: Arc::new(index),
            customers: Arc::default(),
        };
        store.each(|r: ResponseRecord| {
            history.opened(&r);
            true
        })?;
        Ok(history)
    }

    /// A response record was written for the first time (the PBX opens one
    /// when an agent answers a caller).
    pub fn opened(&self, record: &ResponseRecord) {
        let mut c = self
            .customers
            .entry(record.caller.clone())
            .or_insert_with(|| Customer {
                number: record.caller.clone(),
                name: String::new(),
                records: 0,
                last_ms: 0,
            });
        c.records += 1;
        if record.time_ms >= c.last_ms {
            c.last_ms = record.time_ms;
            if !record.name.is_empty() {
                c.name.clone_from(&record.name);
            }
        }
    }

    /// The customer's latest name ("" when none is known).
    pub fn name(&self, caller: &str) -> String {
        self.customers
            .get(caller)
            .map(|c| c.name.clone())
            .unwrap_or_default()
    }

    /// An agent wrote `name` on one of `caller`'s records: the latest name.
    pub fn named(&self, caller: &str, name: &str) {
        if let Some(mut c) = self.customers.get_mut(caller) {
            if !name.is_empty() {
                c.name = name.to_string();
            }
        }
    }

    /// Customers whose number contains `query`'s digits (when it is a number:
    /// digits, `+`, spaces, dashes) or whose name contains every word of it
    /// (case-insensitive); most recent first, at most [`SEARCH_LIMIT`].
    pub fn search(&self, query: &str) -> Vec<Customer> {
        let is_number = query
            .chars()
            .all(|c| c.is_ascii_digit() || "+ -().".contains(c));
        let digits: String = query.chars().filter(char::is_ascii_digit).collect();
        let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
        let matches = |c: &Customer| match is_number {
            true => !digits.is_empty() && c.number.contains(&digits),
            false => {
                let name = c.name.to_lowercase();
                !words.is_empty() && words.iter().all(|w| name.contains(w.as_str()))
            }
        };
        let mut found: Vec<Customer> = self
            .customers
            .iter()
            .filter(|c| matches(c.value()))
            .map(|c| c.value().clone())
            .collect();
        found.sort_by(|a, b| b.last_ms.cmp(&a.last_ms).then(a.number.cmp(&b.number)));
        found.truncate(SEARCH_LIMIT);
        found
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

    fn record(id: u64, caller: &str, name: &str) -> ResponseRecord {
        ResponseRecord {
            id,
            caller: caller.into(),
            time_ms: id,
            agent: "202".into(),
            call_id: format!("c{id}"),
            notes: String::new(),
            outcome: "answered".into(),
            name: name.into(),
        }
    }

    #[test]
    fn customers_are_found_by_name_words_or_number_digits_latest_first() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("open");
        for r in [
            record(1, "+81312345678", "Hanako Tanaka"),
            record(2, "+81312345678", ""),
            record(3, "0455551234", "Taro Tanaka"),
            record(4, "0455559999", "Yamada"),
        ] {
            store.put(r).expect("put");
        }
        let h = History::load(&store).expect("load");
        let numbers =
            |q: &str| -> Vec<String> { h.search(q).into_iter().map(|c| c.number).collect() };
        assert_eq!(numbers("tanaka"), ["0455551234", "+81312345678"]);
        assert_eq!(numbers("TANAKA hanako"), ["+81312345678"]);
        assert_eq!(numbers("555"), ["0455559999", "0455551234"]);
        assert_eq!(numbers("+81 3-1234"), ["+81312345678"]);
        assert!(numbers("suzuki").is_empty() && numbers("  ").is_empty());
        let hanako = &h.search("hanako")[0];
        assert_eq!(
            (hanako.records, hanako.last_ms),
            (2, 2),
            "a later record without a name keeps it"
        );
        // A new call, then the agent writes a new name on it.
        h.opened(&record(5, "0455559999", ""));
        h.named("0455559999", "Ichiro Yamada");
        assert_eq!(h.search("ichiro")[0].records, 2);
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

//! Call recordings an agent asked for: what each one is (its record here,
//! its WAV in the voice directory), stored under the customer it was a
//! conversation with, so the customer's history lists them beside the
//! response records of the same calls. The calls module starts and stops
//! them and stores the record once the WAV is durable; the desk lists them
//! and plays them to whoever may hear them, and tells the agent what
//! happened to a recording they started.

use crate::store::{Record, Store, StoreError};
use serde::{Deserialize, Serialize};

/// One recording of a call, once its WAV is on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallRecording {
    /// Also its WAV's id in the voice directory.
    pub id: u64,
    /// The other party of `agent`: the customer's number (an extension
    /// for a call between colleagues).
    pub customer: String,
    /// The user who recorded it.
    pub agent: String,
    /// The call's Call-ID (as the customer's response records name it).
    pub call_id: String,
    /// The call's CDR.
    pub cdr: u64,
    /// When recording started (Unix ms).
    pub start_ms: u64,
    /// Its length.
    pub ms: u64,
}

impl Record for CallRecording {
    const TREE: &'static str = "recordings.v1";
    /// By customer, then id: one customer's recordings are adjacent, oldest first.
    fn key(&self) -> Vec<u8> {
        crate::store::owned_key(&self.customer, self.id)
    }
}

/// A customer's recordings, oldest first.
pub fn of_customer(store: &Store, customer: &str) -> Result<Vec<CallRecording>, StoreError> {
    store.owned_by(customer)
}

/// What became of a recording an agent started, for the agent's desktop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Progress {
    /// Recording now.
    Started,
    /// Stopped and saved (durably).
    Saved { recording: CallRecording },
    /// It could not be written (a full disk, say): the call went on
    /// unrecorded.
    Failed { reason: String },
}

/// A recording's progress, reported to the agent who started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub agent: String,
    /// The call as the agent's desktop names it.
    pub call_id: String,
    pub id: u64,
    pub progress: Progress,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_customers_recordings_are_listed_oldest_first_and_no_one_elses() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("store");
        let rec = |id, customer: &str| CallRecording {
            id,
            customer: customer.into(),
            agent: "2001".into(),
            call_id: format!("c{id}"),
            cdr: id,
            start_ms: id * 10,
            ms: 1000,
        };
        for r in [rec(3, "+4930"), rec(1, "+4930"), rec(2, "+49301")] {
            store.put(r).expect("put");
        }
        let ids: Vec<u64> = of_customer(&store, "+4930")
            .expect("list")
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, [1, 3]);
    }
}

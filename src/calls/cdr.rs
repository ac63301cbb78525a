//! Call detail records: exactly one per call, written when the call ends and
//! flushed before the response that ends it is sent. Exported as CSV or JSON.

use serde::{Deserialize, Serialize};

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    Answered,
    Busy,
    NoAnswer,
    Cancelled,
    Failed,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Answered => "answered",
            Disposition::Busy => "busy",
            Disposition::NoAnswer => "no_answer",
            Disposition::Cancelled => "cancelled",
            Disposition::Failed => "failed",
        }
    }
}

/// Who ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HangupBy {
    Caller,
    Callee,
    /// The PBX itself (timeouts, dead media, errors).
    System,
}

impl HangupBy {
    pub fn as_str(self) -> &'static str {
        match self {
            HangupBy::Caller => "caller",
            HangupBy::Callee => "callee",
            HangupBy::System => "system",
        }
    }
}

/// One call's record. Times are UNIX milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cdr {
    /// Increasing within a data directory (the store key).
    pub id: u64,
    pub call_id: String,
    pub caller: String,
    pub callee: String,
    pub start_ms: u64,
    pub answer_ms: Option<u64>,
    pub end_ms: u64,
    pub disposition: Disposition,
    pub hangup_by: HangupBy,
}

impl crate::store::Record for Cdr {
    const TREE: &'static str = "cdrs.v1";
    fn key(&self) -> Vec<u8> {
        self.id.to_be_bytes().to_vec()
    }
}

/// A CDR as one CSV row: its fields and the billable seconds.
#[derive(Debug, Serialize)]
pub struct CsvRow<'a> {
    pub id: u64,
    pub call_id: &'a str,
    pub caller: &'a str,
    pub callee: &'a str,
    pub start_ms: u64,
    pub answer_ms: Option<u64>,
    pub end_ms: u64,
    pub duration_s: u64,
    pub disposition: Disposition,
    pub hangup_by: HangupBy,
}

impl Cdr {
    /// Billable seconds (answer to end).
    pub fn duration_secs(&self) -> u64 {
        self.answer_ms
            .map_or(0, |a| self.end_ms.saturating_sub(a) / 1000)
    }

    /// The row a CSV export writes (with a `csv::Writer`, which quotes per RFC 4180).
    pub fn csv_row(&self) -> CsvRow<'_> {
        CsvRow {
            id: self.id,
            call_id: &self.call_id,
            caller: &self.caller,
            callee: &self.callee,
            start_ms: self.start_ms,
            answer_ms: self.answer_ms,
            end_ms: self.end_ms,
            duration_s: self.duration_secs(),
            disposition: self.disposition,
            hangup_by: self.hangup_by,
        }
    }
}

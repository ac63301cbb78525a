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

impl Cdr {
    pub const CSV_HEADER: &'static str =
        "id,call_id,caller,callee,start_ms,answer_ms,end_ms,duration_s,disposition,hangup_by";

    /// Billable seconds (answer to end).
    pub fn duration_secs(&self) -> u64 {
        self.answer_ms
            .map_or(0, |a| self.end_ms.saturating_sub(a) / 1000)
    }

    /// One CSV line (RFC 4180 quoting where needed).
    pub fn csv_line(&self) -> String {
        fn q(s: &str) -> String {
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        }
        format!(
            "{},{},{},{},{},{},{},{},{},{}",
            self.id,
            q(&self.call_id),
            q(&self.caller),
            q(&self.callee),
            self.start_ms,
            self.answer_ms.map(|a| a.to_string()).unwrap_or_default(),
            self.end_ms,
            self.duration_secs(),
            self.disposition.as_str(),
            self.hangup_by.as_str(),
        )
    }
}

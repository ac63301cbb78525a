//! Live exports: the CDRs and the response records as CSV or JSON over HTTP,
//! read from the store while the PBX runs and streamed in chunks (memory does
//! not grow with the data; a client that goes away stops the read). A
//! supervisor exports everything; an agent's export holds only their own rows.

use crate::calls::cdr::Cdr;
use crate::history::ResponseRecord;
use crate::store::{Record, Store};
use axum::body::Body;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::io::Write;
use tokio::sync::mpsc;

/// How an export is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// RFC 4180, with a header line.
    #[default]
    Csv,
    /// One JSON array.
    Json,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Json => "application/json",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Json => "json",
        }
    }
}

/// Which rows: those of `[from_ms, to_ms)`, and only `owner`'s when set.
#[derive(Debug, Clone)]
pub struct Filter {
    pub from_ms: u64,
    pub to_ms: u64,
    pub owner: Option<String>,
}

/// A kind of record that can be exported.
pub trait Exported: Record + Serialize {
    /// When it happened (Unix ms), for the time filter.
    fn time_ms(&self) -> u64;
    /// Whether it is `extension`'s own (an agent's export holds only those).
    fn belongs_to(&self, extension: &str) -> bool;
    /// The CSV header: the names of the row's fields.
    const CSV_HEADER: &'static [&'static str];
    /// One CSV row (a serde record with the header's fields, in order).
    fn write_csv<W: Write>(&self, csv: &mut csv::Writer<W>) -> csv::Result<()>;
}

impl Exported for Cdr {
    const CSV_HEADER: &'static [&'static str] = &[
        "id",
        "call_id",
        "caller",
        "callee",
        "start_ms",
        "answer_ms",
        "end_ms",
        "duration_s",
        "disposition",
        "hangup_by",
    ];
    fn time_ms(&self) -> u64 {
        self.start_ms
    }
    fn belongs_to(&self, extension: &str) -> bool {
        self.caller == extension || self.callee == extension
    }
    fn write_csv<W: Write>(&self, csv: &mut csv::Writer<W>) -> csv::Result<()> {
        csv.serialize(self.csv_row())
    }
}

impl Exported for ResponseRecord {
    const CSV_HEADER: &'static [&'static str] = &[
        "id", "caller", "time_ms", "agent", "call_id", "notes", "outcome", "name",
    ];
    fn time_ms(&self) -> u64 {
        self.time_ms
    }
    fn belongs_to(&self, extension: &str) -> bool {
        self.agent == extension
    }
    fn write_csv<W: Write>(&self, csv: &mut csv::Writer<W>) -> csv::Result<()> {
        csv.serialize(self)
    }
}

/// Bytes handed to the HTTP body in chunks of about this size.
const CHUNK: usize = 64 * 1024;

/// Collects output and hands it on in chunks; writing fails once the client
/// is gone, which ends the read.
struct Chunks {
    buf: Vec<u8>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl Chunks {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

impl Write for Chunks {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Streams every `R` that passes `filter`, in store order, as `format`.
pub fn stream<R: Exported + 'static>(store: Store, format: Format, filter: Filter) -> Body {
    let (tx, rx) = mpsc::channel(4);
    let failed = tx.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = Chunks {
            buf: Vec::with_capacity(CHUNK),
            tx,
        };
        if let Err(e) = write_all::<R, _>(&store, format, &filter, &mut out) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                tracing::error!("export of {}: {e}", R::TREE);
                // The body ends with an error: the client sees a cut transfer,
                // never a short file that looks complete.
                let _ = failed.blocking_send(Err(e));
            }
        }
    });
    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Writes every `R` that passes `filter`, in store order, as `format`.
pub fn write_all<R: Exported, W: Write>(
    store: &Store,
    format: Format,
    filter: &Filter,
    out: &mut W,
) -> std::io::Result<()> {
    let wanted = |r: &R| {
        (filter.from_ms..filter.to_ms).contains(&r.time_ms())
            && filter.owner.as_deref().is_none_or(|o| r.belongs_to(o))
    };
    let mut failure = None;
    match format {
        Format::Csv => {
            let mut csv = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(&mut *out);
            csv.write_record(R::CSV_HEADER).map_err(csv_io)?;
            store
                .each(|r: R| {
                    if wanted(&r) {
                        failure = r.write_csv(&mut csv).err().map(csv_io);
                    }
                    failure.is_none()
                })
                .map_err(std::io::Error::other)?;
            csv.flush()?;
        }
        Format::Json => {
            let mut first = true;
            out.write_all(b"[")?;
            store
                .each(|r: R| {
                    if wanted(&r) {
                        let sep: &[u8] = if first { b"\n" } else { b",\n" };
                        first = false;
                        failure = out
                            .write_all(sep)
                            .and_then(|()| Ok(serde_json::to_writer(&mut *out, &r)?))
                            .err();
                    }
                    failure.is_none()
                })
                .map_err(std::io::Error::other)?;
            out.write_all(b"\n]\n")?;
        }
    }
    match failure {
        Some(e) => Err(e),
        None => out.flush(),
    }
}

fn csv_io(e: csv::Error) -> std::io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(io) => io,
        other => std::io::Error::other(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::cdr::{Disposition, HangupBy};

    fn cdr(id: u64, caller: &str, callee: &str, start_ms: u64) -> Cdr {
        Cdr {
            id,
            call_id: format!("c{id}, \"quoted\""),
            caller: caller.into(),
            callee: callee.into(),
            start_ms,
            answer_ms: (id % 2 == 0).then_some(start_ms + 1000),
            end_ms: start_ms + 61_000,
            disposition: Disposition::Answered,
            hangup_by: HangupBy::Caller,
        }
    }

    fn export<R: Exported>(store: &Store, format: Format, filter: Filter) -> String {
        let mut out = Vec::new();
        write_all::<R, _>(store, format, &filter, &mut out).expect("export");
        String::from_utf8(out).expect("utf-8")
    }

    fn all() -> Filter {
        Filter {
            from_ms: 0,
            to_ms: u64::MAX,
            owner: None,
        }
    }

    #[test]
    fn csv_exports_quote_fields_and_keep_the_header_when_nothing_matches() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("open");
        for c in [
            cdr(1, "201", "202", 10),
            cdr(2, "203", "201", 20),
            cdr(3, "203", "204", 30),
        ] {
            store.put(c).expect("put");
        }
        let csv = export::<Cdr>(&store, Format::Csv, all());
        let mut lines = csv.lines();
        assert_eq!(
            lines.next(),
            Some("id,call_id,caller,callee,start_ms,answer_ms,end_ms,duration_s,disposition,hangup_by")
        );
        assert_eq!(
            lines.next(),
            Some("1,\"c1, \"\"quoted\"\"\",201,202,10,,61010,0,answered,caller")
        );
        assert_eq!(
            lines
                .next()
                .map(|l| l.ends_with(",1020,61020,60,answered,caller")),
            Some(true)
        );
        let mine = Filter {
            from_ms: 15,
            to_ms: 30,
            owner: Some("201".into()),
        };
        let csv = export::<Cdr>(&store, Format::Csv, mine);
        assert_eq!(
            csv.lines().count(),
            2,
            "the header and 201's call at 20: {csv}"
        );
        let none = Filter {
            owner: Some("999".into()),
            ..all()
        };
        assert_eq!(export::<Cdr>(&store, Format::Csv, none).lines().count(), 1);
    }

    #[test]
    fn json_exports_are_one_array_of_the_records() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("open");
        let record = |id: u64, agent: &str| ResponseRecord {
            id,
            caller: "+81312345678".into(),
            time_ms: id,
            agent: agent.into(),
            call_id: format!("c{id}"),
            notes: "line one\nline two, with a comma".into(),
            outcome: "resolved".into(),
            name: "Keiko Sato".into(),
        };
        store.put(record(1, "201")).expect("put");
        store.put(record(2, "202")).expect("put");
        let json = export::<ResponseRecord>(&store, Format::Json, all());
        let back: Vec<ResponseRecord> = serde_json::from_str(&json).expect("a JSON array");
        assert_eq!(back, [record(1, "201"), record(2, "202")]);
        let empty = Filter {
            owner: Some("203".into()),
            ..all()
        };
        let json = export::<ResponseRecord>(&store, Format::Json, empty);
        let back: Vec<ResponseRecord> = serde_json::from_str(&json).expect("a JSON array");
        assert!(back.is_empty());
        let csv = export::<ResponseRecord>(&store, Format::Csv, all());
        let mut rows = csv::Reader::from_reader(csv.as_bytes());
        let first = rows.records().next().expect("a row").expect("csv");
        assert_eq!(&first[5], "line one\nline two, with a comma");
    }
}

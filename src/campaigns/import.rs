//! Customer lists in CSV: a header row naming the columns, then one customer
//! per row. `number` is required; `name` and `time_zone` (an IANA name) are
//! read when present; every other column is kept as a free field of the
//! record. Numbers are turned into E.164 with the campaign trunk's numbering.
//!
//! A row with a problem is reported (its line and field) and left out; the
//! others are imported. Re-running the same file is safe: numbers the
//! campaign already has are skipped and counted, never duplicated.

use super::hours::zone;
use crate::outside::Numbering;
use serde::Serialize;
use std::collections::BTreeMap;

/// A row of the list, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Its line in the file (the header is line 1).
    pub line: u64,
    pub number: String,
    pub name: String,
    pub time_zone: Option<String>,
    pub fields: BTreeMap<String, String>,
}

/// A row left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RowError {
    pub line: u64,
    /// The column at fault ("" when the row as a whole is).
    pub field: String,
    pub problem: String,
}

/// Most rows one list may have.
pub const MAX_ROWS: usize = 200_000;
/// Most free fields one record may have.
const MAX_FIELDS: usize = 32;
/// The longest value kept in a field.
const MAX_VALUE: usize = 512;

/// Reads `text`: the good rows, and the problems of the others. `Err` when
/// the file as a whole cannot be read (no header, no `number` column, too
/// many rows).
pub fn read(text: &str, numbering: &Numbering) -> Result<(Vec<Row>, Vec<RowError>), String> {
    // Lines end in LF, CRLF or a lone CR (old spreadsheets): all become LF,
    // so every row's line number is the one an editor shows.
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| format!("the header row: {e}"))?
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let column = |name: &str| header.iter().position(|h| h == name);
    let number_at = column("number").ok_or("the header has no \"number\" column")?;
    let name_at = column("name");
    let zone_at = column("time_zone");
    if header.len() > MAX_FIELDS + 3 {
        return Err(format!(
            "{} columns; at most {}",
            header.len(),
            MAX_FIELDS + 3
        ));
    }
    let (mut rows, mut errors) = (Vec::new(), Vec::new());
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                errors.push(RowError {
                    line,
                    field: String::new(),
                    problem: format!("unreadable: {e}"),
                });
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        if rows.len() + errors.len() >= MAX_ROWS {
            return Err(format!("more than {MAX_ROWS} rows"));
        }
        let fault = |field: &str, problem: String| RowError {
            line,
            field: field.to_string(),
            problem,
        };
        if record.len() != header.len() {
            let problem = format!("{} values for {} columns", record.len(), header.len());
            errors.push(fault("", problem));
            continue;
        }
        let raw = record.get(number_at).unwrap_or_default();
        let Some(number) = numbering.to_e164(raw) else {
            errors.push(fault("number", format!("{raw:?} is no phone number")));
            continue;
        };
        let time_zone = zone_at
            .and_then(|i| record.get(i))
            .filter(|z| !z.is_empty())
            .map(str::to_string);
        if let Some(z) = &time_zone {
            if let Err(problem) = zone(z) {
                errors.push(fault("time_zone", problem));
                continue;
            }
        }
        if let Some((i, _)) = record.iter().enumerate().find(|(_, v)| v.len() > MAX_VALUE) {
            let problem = format!("longer than {MAX_VALUE} bytes");
            errors.push(fault(&header[i], problem));
            continue;
        }
        let fields = header
            .iter()
            .zip(record.iter())
            .enumerate()
            .filter(|(i, _)| ![Some(number_at), name_at, zone_at].contains(&Some(*i)))
            .map(|(_, (h, v))| (h.clone(), v.to_string()))
            .collect();
        rows.push(Row {
            line,
            number,
            name: name_at
                .and_then(|i| record.get(i))
                .unwrap_or_default()
                .to_string(),
            time_zone,
            fields,
        });
    }
    Ok((rows, errors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outside::numbers::tests::japan;

    #[test]
    fn good_rows_are_read_in_e164_and_bad_ones_name_their_line_and_field() {
        let text = "number,name,time_zone,plan\n\
                    03-1234-5678,Keiko Sato,Asia/Tokyo,gold\n\
                    +12125550100,Ann Lee,America/New_York,\n\
                    hello,Nobody,,\n\
                    0312345679,Ken,Mars/Olympus,\n\
                    0312345680,Short\n\
                    \"0312345681\",\"Mori, Jun\",,silver\n";
        let (rows, errors) = read(text, &japan()).expect("readable");
        let numbers: Vec<&str> = rows.iter().map(|r| r.number.as_str()).collect();
        assert_eq!(numbers, ["+81312345678", "+12125550100", "+81312345681"]);
        assert_eq!(rows[0].line, 2);
        assert_eq!(rows[0].time_zone.as_deref(), Some("Asia/Tokyo"));
        assert_eq!(rows[0].fields.get("plan").map(String::as_str), Some("gold"));
        assert_eq!(rows[2].name, "Mori, Jun");
        assert_eq!(rows[2].time_zone, None, "the campaign's default then");
        let faults: Vec<(u64, &str)> = errors.iter().map(|e| (e.line, e.field.as_str())).collect();
        assert_eq!(faults, [(4, "number"), (5, "time_zone"), (6, "")]);
        assert!(errors[0].problem.contains("hello"), "{errors:?}");
    }

    #[test]
    fn rows_ending_in_cr_or_crlf_keep_their_line_numbers() {
        for end in ["\r", "\r\n"] {
            let text = ["number,name", "0312345678,A", "x,B", "0312345679,C"].join(end);
            let (rows, errors) = read(&text, &japan()).expect("readable");
            let lines: Vec<u64> = rows.iter().map(|r| r.line).collect();
            assert_eq!(lines, [2, 4], "{end:?}");
            assert_eq!(errors[0].line, 3, "{end:?}");
        }
    }

    #[test]
    fn a_list_without_a_number_column_is_refused_as_a_whole() {
        let e = read("phone,name\n0312345678,x\n", &japan()).expect_err("refused");
        assert!(e.contains("number"), "{e}");
        assert!(read("", &japan()).is_err() || read("", &japan()).is_ok_and(|(r, _)| r.is_empty()));
    }
}

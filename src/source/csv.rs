//! CSV exports: a header row, a configurable delimiter, RFC 4180 quoting (commas and newlines inside
//! quotes), UTF-8 (with or without BOM), windows-1252 or ISO-8859-1.

use super::{Export, Quarantined, RawRow, SourceError};
use crate::config::{Encoding, SourceConfig};

/// windows-1252 code points for 0x80..=0x9F; `None` for the five undefined bytes.
const CP1252_HIGH: [Option<char>; 32] = [
    Some('€'),
    None,
    Some('‚'),
    Some('ƒ'),
    Some('„'),
    Some('…'),
    Some('†'),
    Some('‡'),
    Some('ˆ'),
    Some('‰'),
    Some('Š'),
    Some('‹'),
    Some('Œ'),
    None,
    Some('Ž'),
    None,
    None,
    Some('‘'),
    Some('’'),
    Some('“'),
    Some('”'),
    Some('•'),
    Some('–'),
    Some('—'),
    Some('˜'),
    Some('™'),
    Some('š'),
    Some('›'),
    Some('œ'),
    None,
    Some('ž'),
    Some('Ÿ'),
];

/// Decode one field; `Err` carries a description of the first bad byte.
pub(crate) fn decode(enc: Encoding, b: &[u8]) -> Result<String, String> {
    match enc {
        Encoding::Utf8 => String::from_utf8(b.to_vec()).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            format!(
                "byte 0x{:02X} at offset {at} is not valid UTF-8",
                b.get(at).copied().unwrap_or(0)
            )
        }),
        Encoding::Latin1 => Ok(b.iter().map(|&c| c as char).collect()),
        Encoding::Windows1252 => {
            let mut s = String::with_capacity(b.len());
            for (i, &c) in b.iter().enumerate() {
                if (0x80..=0x9F).contains(&c) {
                    match CP1252_HIGH[(c - 0x80) as usize] {
                        Some(ch) => s.push(ch),
                        None => {
                            return Err(format!(
                                "byte 0x{c:02X} at offset {i} is undefined in windows-1252"
                            ))
                        }
                    }
                } else {
                    s.push(c as char);
                }
            }
            Ok(s)
        }
    }
}

fn strip_bom(enc: Encoding, bytes: &[u8]) -> &[u8] {
    if enc == Encoding::Utf8 {
        bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
    } else {
        bytes
    }
}

/// A reader over the bytes in memory (not a copy of them: an export may be tens of MB).
fn reader<'a>(cfg: &SourceConfig, bytes: &'a [u8]) -> ::csv::Reader<&'a [u8]> {
    builder(cfg).from_reader(strip_bom(cfg.encoding, bytes))
}

/// How every reader of the export reads it: the configured delimiter, rows of any length (the
/// header is a row like the others).
fn builder(cfg: &SourceConfig) -> ::csv::ReaderBuilder {
    let mut b = ::csv::ReaderBuilder::new();
    b.delimiter(cfg.delimiter as u8)
        .has_headers(false)
        .flexible(true);
    b
}

/// The header row, from the start of `input`: what follows it is not read (the configuration's
/// check of the columns read the whole export, 10 MB at 100,000 people, in every run).
pub(crate) fn header(
    cfg: &SourceConfig,
    mut input: impl std::io::Read,
) -> Result<Vec<String>, SourceError> {
    use std::io::Read;
    let io = |err| SourceError::Io {
        path: cfg.path.clone(),
        err,
    };
    let mut start = Vec::with_capacity(3);
    input.by_ref().take(3).read_to_end(&mut start).map_err(io)?;
    let start = strip_bom(cfg.encoding, &start);
    let mut rdr = builder(cfg).from_reader(start.chain(input));
    let mut rec = ::csv::ByteRecord::new();
    match rdr.read_byte_record(&mut rec) {
        Ok(true) => {}
        Ok(false) => {
            return Err(SourceError::Invalid {
                path: cfg.path.clone(),
                msg: "the file is empty: a CSV export needs a header row".into(),
            })
        }
        Err(e) => return Err(syntax(cfg, &e)),
    }
    let mut cols = Vec::with_capacity(rec.len());
    for (i, f) in rec.iter().enumerate() {
        let name = decode(cfg.encoding, f).map_err(|m| SourceError::Syntax {
            path: cfg.path.clone(),
            line: 1,
            col: i + 1,
            msg: format!("header column {}: {m}; set source.encoding", i + 1),
        })?;
        let name = name.trim().to_string();
        if name.is_empty() {
            return Err(SourceError::Syntax {
                path: cfg.path.clone(),
                line: 1,
                col: i + 1,
                msg: format!("header column {} has no name", i + 1),
            });
        }
        if cols.contains(&name) {
            return Err(SourceError::Syntax {
                path: cfg.path.clone(),
                line: 1,
                col: i + 1,
                msg: format!("header column {name:?} appears twice"),
            });
        }
        cols.push(name);
    }
    Ok(cols)
}

fn syntax(cfg: &SourceConfig, e: &::csv::Error) -> SourceError {
    let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
    SourceError::Syntax {
        path: cfg.path.clone(),
        line,
        col: 1,
        msg: e.to_string(),
    }
}

pub(crate) fn parse(
    cfg: &SourceConfig,
    bytes: &[u8],
    export: &mut Export,
) -> Result<Vec<RawRow>, SourceError> {
    let cols = header(cfg, bytes)?;
    export.header = cols.clone();
    let names: Vec<crate::names::Name> = cols.iter().map(crate::names::Name::from).collect();
    // The columns in name order, once for the file (a repeated name: the last column wins, as in
    // a map): each row's fields are then built in order, not sorted row by row.
    let mut by_name: Vec<usize> = (0..names.len()).collect();
    by_name.sort_by(|&a, &b| names[a].as_str().cmp(names[b].as_str()).then(b.cmp(&a)));
    by_name.dedup_by(|a, b| names[*a] == names[*b]);
    let key_idx = cols.iter().position(|c| c == &cfg.key);
    let mut rdr = reader(cfg, bytes);
    let mut rec = ::csv::ByteRecord::new();
    let mut rows = Vec::new();
    let mut first = true;
    let mut last_was_row = false;
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                // The parser lost its place: everything after is unknown, so nothing may be deleted.
                export.keys_uncertain = true;
                export.quarantined.push(Quarantined {
                    key: None,
                    file: cfg.path.clone(),
                    line: e.position().map(|p| p.line() as usize).unwrap_or(0),
                    reason: format!("unreadable CSV: {e}; the rest of the file was skipped"),
                });
                break;
            }
        }
        if first {
            first = false;
            continue;
        }
        last_was_row = false;
        let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
        if rec.len() == 1 && rec.get(0).map(|f| f.is_empty()).unwrap_or(true) {
            continue; // blank line
        }
        let key_guess = key_idx
            .and_then(|i| rec.get(i))
            .and_then(|b| decode(cfg.encoding, b).ok());
        if rec.len() != cols.len() {
            // Columns may be shifted: the key read from this row cannot be trusted.
            export.keys_uncertain = true;
            export.quarantined.push(Quarantined {
                key: None,
                file: cfg.path.clone(),
                line,
                reason: format!(
                    "has {} fields, the header has {} (an unquoted delimiter or a missing quote?){}",
                    rec.len(),
                    cols.len(),
                    key_guess.map(|k| format!("; its key may be {:?}", k.trim())).unwrap_or_default()
                ),
            });
            continue;
        }
        let mut fields = Vec::with_capacity(by_name.len());
        let mut bad = None;
        // UTF-8: the record's bytes are checked once and each field is a slice of them (checked
        // and copied field by field, the 1,000,000-record planner's export took 0.62-0.64 s, now
        // 0.57-0.59 s). A field that is not a whole slice of valid text is decoded on its own
        // below, which names what is wrong with it.
        let whole = match cfg.encoding {
            Encoding::Utf8 => std::str::from_utf8(rec.as_slice()).ok(),
            _ => None,
        };
        for &i in &by_name {
            if let Some(v) = whole.and_then(|w| w.get(rec.range(i)?)) {
                fields.push((names[i], Box::from(v)));
                continue;
            }
            match decode(cfg.encoding, rec.get(i).unwrap_or_default()) {
                Ok(v) => fields.push((names[i], v.into_boxed_str())),
                Err(_) => {
                    // (named by the first undecodable column in the file's order)
                    bad = rec.iter().enumerate().find_map(|(j, f)| {
                        decode(cfg.encoding, f)
                            .err()
                            .map(|m| format!("column {:?}: {m}; check source.encoding", cols[j]))
                    });
                    break;
                }
            }
        }
        if let Some(reason) = bad {
            let key = key_guess
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty());
            if key.is_none() {
                export.keys_uncertain = true;
            }
            export.quarantined.push(Quarantined {
                key,
                file: cfg.path.clone(),
                line,
                reason: format!("undecodable bytes in {reason}"),
            });
            continue;
        }
        rows.push(RawRow {
            line,
            fields: crate::names::NameMap::from_sorted(fields),
        });
        last_was_row = true;
    }
    // An odd number of quote characters means a quoted field was never closed: the parser read
    // from there to the end of the file as one field. That record is unusable and the keys after it
    // are unknown.
    let quotes = strip_bom(cfg.encoding, bytes)
        .iter()
        .filter(|&&b| b == b'"')
        .count();
    if quotes % 2 == 1 {
        export.keys_uncertain = true;
        if last_was_row {
            if let Some(r) = rows.pop() {
                export.quarantined.push(Quarantined {
                    key: None,
                    file: cfg.path.clone(),
                    line: r.line,
                    reason: "a quoted field is never closed: this record runs to the end of the file; fix the quote".into(),
                });
            }
        }
    }
    Ok(rows)
}

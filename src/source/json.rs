//! JSON exports: an array of objects, or JSON Lines (one object per line).

use std::path::Path;

use serde_json::value::RawValue;
use serde_json::Value;

use super::{Export, Quarantined, RawRow, SourceError};

fn line_of(src: &str, offset: usize) -> usize {
    src.as_bytes()[..offset.min(src.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn to_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

fn object_row(
    path: &Path,
    line: usize,
    v: Value,
    header: &mut Vec<String>,
    export_q: &mut Vec<Quarantined>,
    uncertain: &mut bool,
) -> Option<RawRow> {
    match v {
        Value::Object(map) => {
            let mut fields = crate::names::NameMap::new();
            for (k, v) in map {
                if !header.contains(&k) {
                    header.push(k.clone());
                }
                if let Some(t) = to_text(&v) {
                    fields.insert(k, t.into_boxed_str());
                }
            }
            Some(RawRow { line, fields })
        }
        other => {
            *uncertain = true;
            export_q.push(Quarantined {
                key: None,
                file: path.to_path_buf(),
                line,
                reason: format!("expected a JSON object, found {}", kind(&other)),
            });
            None
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn utf8<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str, SourceError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|e| {
        let at = e.valid_up_to();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        SourceError::Syntax {
            path: path.to_path_buf(),
            line,
            col: 1,
            msg: "not valid UTF-8 (JSON exports must be UTF-8)".into(),
        }
    })
}

pub(crate) fn parse_array(
    path: &Path,
    bytes: &[u8],
    export: &mut Export,
) -> Result<Vec<RawRow>, SourceError> {
    let src = utf8(path, bytes)?;
    let items: Vec<&RawValue> = serde_json::from_str(src).map_err(|e| SourceError::Syntax {
        path: path.to_path_buf(),
        line: e.line(),
        col: e.column(),
        msg: format!("{e}; a JSON export is one array of objects"),
    })?;
    let base = src.as_ptr() as usize;
    let mut rows = Vec::with_capacity(items.len());
    for raw in items {
        let off = raw.get().as_ptr() as usize - base;
        let line = line_of(src, off);
        let v: Value = match serde_json::from_str(raw.get()) {
            Ok(v) => v,
            Err(e) => {
                export.keys_uncertain = true;
                export.quarantined.push(Quarantined {
                    key: None,
                    file: path.to_path_buf(),
                    line,
                    reason: format!("unreadable JSON value: {e}"),
                });
                continue;
            }
        };
        if let Some(r) = object_row(
            path,
            line,
            v,
            &mut export.header,
            &mut export.quarantined,
            &mut export.keys_uncertain,
        ) {
            rows.push(r);
        }
    }
    Ok(rows)
}

pub(crate) fn parse_lines(
    path: &Path,
    bytes: &[u8],
    export: &mut Export,
) -> Result<Vec<RawRow>, SourceError> {
    let mut rows = Vec::new();
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    for (i, line_bytes) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let text = match std::str::from_utf8(line_bytes) {
            Ok(t) => t.trim(),
            Err(_) => {
                export.keys_uncertain = true;
                export.quarantined.push(Quarantined {
                    key: None,
                    file: path.to_path_buf(),
                    line,
                    reason: "not valid UTF-8 (JSON Lines exports must be UTF-8)".into(),
                });
                continue;
            }
        };
        if text.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(text) {
            Ok(v) => {
                if let Some(r) = object_row(
                    path,
                    line,
                    v,
                    &mut export.header,
                    &mut export.quarantined,
                    &mut export.keys_uncertain,
                ) {
                    rows.push(r);
                }
            }
            Err(e) => {
                export.keys_uncertain = true;
                export.quarantined.push(Quarantined {
                    key: None,
                    file: path.to_path_buf(),
                    line,
                    reason: format!("unreadable JSON: {e}"),
                });
            }
        }
    }
    Ok(rows)
}

//! Source readers: the HR export parsed into records keyed by the HR key. Records that fail
//! validation are quarantined with file, line and reason; they are neither created nor taken as gone.

mod csv;
mod json;

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::config::{SourceConfig, SourceKind};

/// A record's columns (shared, not copied, by the desired entry made from it).
/// A record's fields: column → value. Values are boxed strings (16 bytes, not `String`'s 24: an
/// export of 100,000 records holds a million of them).
pub type FieldMap = crate::names::NameMap<Box<str>>;

pub type Fields = std::sync::Arc<FieldMap>;

/// One person as the HR export describes them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Record {
    pub key: String,
    /// 1-based line where the record starts.
    pub line: usize,
    #[serde(serialize_with = "shared_fields")]
    pub fields: Fields,
}

fn shared_fields<S: serde::Serializer>(f: &Fields, s: S) -> Result<S::Ok, S::Error> {
    f.as_ref().serialize(s)
}

/// A record that could not be used, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Quarantined {
    /// The HR key when it could be read.
    pub key: Option<String>,
    pub file: PathBuf,
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for Quarantined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if let Some(k) = &self.key {
            write!(f, "record {k}: ")?;
        }
        f.write_str(&self.reason)
    }
}

/// The parsed export.
#[derive(Clone, Debug, Default)]
pub struct Export {
    pub header: Vec<String>,
    pub records: Vec<Record>,
    pub quarantined: Vec<Quarantined>,
    /// Some record's key could not be read (or the parser lost its place): this run makes no deletes.
    pub keys_uncertain: bool,
}

impl Export {
    /// Keys of quarantined records that could be read: these people are left as they are.
    pub fn quarantined_keys(&self) -> std::collections::BTreeSet<String> {
        self.quarantined
            .iter()
            .filter_map(|q| q.key.clone())
            .collect()
    }
}

/// The export could not be read at all: the run stops and writes nothing.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{}:{line}:{col}: {msg}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        col: usize,
        msg: String,
    },
    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },
}

/// A row as read, before key validation.
pub(crate) struct RawRow {
    pub line: usize,
    pub fields: FieldMap,
}

/// Read and validate the whole export.
pub fn read(cfg: &SourceConfig) -> Result<Export, SourceError> {
    parse(cfg, &read_bytes(cfg)?)
}

/// The export file's bytes, as [`parse`] takes them.
pub fn read_bytes(cfg: &SourceConfig) -> Result<Vec<u8>, SourceError> {
    std::fs::read(&cfg.path).map_err(|err| SourceError::Io {
        path: cfg.path.clone(),
        err,
    })
}

/// Parse an export already in memory (used by tests and [`read`]).
pub fn parse(cfg: &SourceConfig, bytes: &[u8]) -> Result<Export, SourceError> {
    let mut export = Export::default();
    let rows = match cfg.kind {
        SourceKind::Csv => csv::parse(cfg, bytes, &mut export)?,
        SourceKind::Json => json::parse_array(&cfg.path, bytes, &mut export)?,
        SourceKind::Jsonl => json::parse_lines(&cfg.path, bytes, &mut export)?,
    };
    validate(cfg, rows, &mut export);
    Ok(export)
}

/// The export's columns (CSV header; for JSON the union of the records' keys).
pub fn read_header(cfg: &SourceConfig) -> Result<Vec<String>, SourceError> {
    match cfg.kind {
        SourceKind::Csv => csv::header(
            cfg,
            std::fs::File::open(&cfg.path).map_err(|err| SourceError::Io {
                path: cfg.path.clone(),
                err,
            })?,
        ),
        _ => Ok(read(cfg)?.header),
    }
}

fn validate(cfg: &SourceConfig, rows: Vec<RawRow>, export: &mut Export) {
    let mut ok: Vec<Record> = Vec::with_capacity(rows.len());
    for row in rows {
        let key = row
            .fields
            .get(&cfg.key)
            .map(|k| k.trim().to_string())
            .unwrap_or_default();
        if key.is_empty() {
            export.keys_uncertain = true;
            export.quarantined.push(Quarantined {
                key: None,
                file: cfg.path.clone(),
                line: row.line,
                reason: format!(
                    "the key column {:?} is missing or empty; fix the export",
                    cfg.key
                ),
            });
            continue;
        }
        ok.push(Record {
            key,
            line: row.line,
            fields: Fields::new(row.fields),
        });
    }
    // (keys borrowed from the records: 100,000 copies of them were 10 MB)
    let mut seen: foldhash::HashSet<&str> =
        foldhash::HashSet::with_capacity_and_hasher(ok.len(), Default::default());
    let dup: std::collections::HashSet<String> = ok
        .iter()
        .filter(|r| !seen.insert(r.key.as_str()))
        .map(|r| r.key.clone())
        .collect();
    drop(seen);
    let mut lines_of: HashMap<&str, Vec<usize>> = HashMap::new();
    for r in &ok {
        if dup.contains(&r.key) {
            lines_of.entry(&r.key).or_default().push(r.line);
        }
    }
    let mut dup_q = Vec::new();
    for r in &ok {
        if let Some(lines) = lines_of.get(r.key.as_str()) {
            let others: Vec<String> = lines
                .iter()
                .filter(|l| **l != r.line)
                .map(|l| l.to_string())
                .collect();
            dup_q.push(Quarantined {
                key: Some(r.key.clone()),
                file: cfg.path.clone(),
                line: r.line,
                reason: format!(
                    "duplicate key {:?} (also on line {}); every record with this key is left alone until the export is fixed",
                    r.key,
                    others.join(", ")
                ),
            });
        }
    }
    export.quarantined.extend(dup_q);
    let quarantined_keys: std::collections::HashSet<String> = export
        .quarantined
        .iter()
        .filter_map(|q| q.key.clone())
        .collect();
    export.records = ok
        .into_iter()
        .filter(|r| !quarantined_keys.contains(&r.key))
        .collect();
    export.quarantined.sort_by_key(|q| q.line);
}

#[cfg(test)]
mod tests;

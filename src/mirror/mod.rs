//! The SQLite mirror: last good HR snapshot, directory snapshot, links, run journal and audit.
//! WAL, versioned migrations (each in its own transaction), created private to the user.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::model::{digest, DirSnapshot, Entry};
use crate::plan::gates::LastGood;
use crate::plan::Change;
use crate::source::Export;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The run stops; nothing was written to the directory.
    #[error("mirror {}: {err}", path.display())]
    Sqlite { path: PathBuf, err: rusqlite::Error },
    #[error("mirror {}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    #[error("mirror {}: its schema version {found} is newer than this dirbridge knows ({known}); refusing to downgrade it", path.display())]
    Downgrade {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    /// Another run holds the lock: this one exits 75.
    #[error("another dirbridge run holds the lock on {} (pid {pid}); try again when it has finished (when it is the daemon: `dirbridge trigger --wait`)", path.display())]
    Locked { path: PathBuf, pid: String },
}

impl MirrorError {
    /// Whether another connection held the database's write lock (and the wait was not taken).
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            MirrorError::Sqlite {
                err: rusqlite::Error::SqliteFailure(e, _),
                ..
            } if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }
}

/// How long a connection waits for another's write lock (SQLite's busy handler: sleeps of 1, 2,
/// 5, … up to 100 ms between tries).
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A write-ahead log file larger than this is copied into the database and emptied at the end of
/// a run and when a run opens the mirror (see [`Mirror::leave_log_copies`]), and cut back to
/// it after any other copy. A 100,000-person churn leaves about 40 MB; a load of as many people
/// 350 MB, whose copy takes 0.5 s.
pub const WAL_KEEP: u64 = 64 << 20;

const MIGRATIONS: &[&str] = &[
    // 1: the first schema
    r#"
    CREATE TABLE hr_records (
        key TEXT PRIMARY KEY,
        hash TEXT NOT NULL,
        fields TEXT NOT NULL
    );
    CREATE TABLE dir_entries (
        uuid TEXT PRIMARY KEY,
        dn TEXT NOT NULL,
        attrs TEXT NOT NULL
    );
    CREATE TABLE links (
        hr_key TEXT PRIMARY KEY,
        entry_uuid TEXT NOT NULL UNIQUE,
        linked_at TEXT NOT NULL
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        records INTEGER,
        header TEXT,
        summary TEXT
    );
    CREATE TABLE journal (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        op TEXT NOT NULL,
        dn TEXT NOT NULL,
        hr_key TEXT NOT NULL,
        change TEXT NOT NULL,
        reason TEXT NOT NULL,
        state TEXT NOT NULL,
        result TEXT,
        at TEXT NOT NULL
    );
    CREATE INDEX journal_run ON journal(run_id);
    CREATE INDEX journal_key ON journal(hr_key);
    CREATE TABLE quarantine (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        hr_key TEXT,
        line INTEGER NOT NULL,
        reason TEXT NOT NULL
    );
    "#,
    // 2: groups dirbridge created (only those may be deleted when empty)
    r#"
    CREATE TABLE created_groups (
        dn_norm TEXT PRIMARY KEY,
        dn TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    "#,
    // 3: the day each departed person was first seen gone (vanished or terminated)
    r#"
    CREATE TABLE departures (
        hr_key TEXT PRIMARY KEY,
        since TEXT NOT NULL
    );
    "#,
    // 4: every uidNumber ever given (never deleted, so never reused)
    r#"
    CREATE TABLE posix_ids (
        hr_key TEXT PRIMARY KEY,
        uid_number INTEGER NOT NULL UNIQUE,
        assigned_at TEXT NOT NULL
    );
    "#,
    // 5: application accounts (`[[apps]]`): the remote id, the state last sent, the retention clock
    r#"
    CREATE TABLE app_accounts (
        app TEXT NOT NULL,
        hr_key TEXT NOT NULL,
        remote_id TEXT NOT NULL,
        active INTEGER NOT NULL,
        attrs TEXT NOT NULL,
        deactivated_on TEXT,
        failures INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        PRIMARY KEY (app, hr_key)
    );
    "#,
    // 6: what incremental directory reads need between runs (AD: uSN cursor and state)
    r#"
    CREATE TABLE dir_state (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
    // 7: the rest of the directory as last read, a row per entry (it was one JSON value in
    // dir_state: 50 MB at 100,000 people, rewritten whole after every change). The old value and
    // its cursor go, so the first run after the upgrade reads the directory in full.
    r#"
    ALTER TABLE dir_entries ADD COLUMN digest TEXT NOT NULL DEFAULT '';
    CREATE TABLE dir_groups (
        uuid TEXT PRIMARY KEY,
        dn TEXT NOT NULL,
        attrs TEXT NOT NULL,
        digest TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE dir_uniques (
        uuid TEXT PRIMARY KEY,
        dn TEXT NOT NULL,
        attrs TEXT NOT NULL,
        digest TEXT NOT NULL DEFAULT ''
    );
    DELETE FROM dir_state WHERE name IN ('read-snapshot', 'read-cursor');
    "#,
    // 8: people the last run found settled (nothing to change): a digest of their record and
    // entry; a later run with the same configuration maps them again only when it differs
    r#"
    CREATE TABLE settled (
        hr_key TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        entry_uuid TEXT NOT NULL
    );
    "#,
    // 9: audit retention finds the rows to forget by time, every run: without an index that was
    // a scan of the whole journal (every change ever kept, with its attributes)
    r#"
    CREATE INDEX journal_at ON journal(at);
    "#,
];

/// The tables that hold the directory as last read: people, groups, holders of unique values.
const SNAPSHOT_TABLES: [&str; 3] = ["dir_entries", "dir_groups", "dir_uniques"];
/// The tables a run writes on a second connection beside its directory writes: the people as
/// read, the settled people, the export's records.
pub const BESIDE_TABLES: [&str; 3] = ["dir_entries", "settled", "hr_records"];

/// The directory as the last read left it, from the mirror's rows.
#[derive(Debug, Default)]
pub struct SnapshotRows {
    pub entries: Vec<Entry>,
    pub groups: Vec<Entry>,
    pub uniques: Vec<Entry>,
}

/// Entries from their stored rows (uuid, DN, attributes as JSON). Decoding the attributes is most
/// of the time of loading a large snapshot; it runs on two threads (at 100,000 entries: the
/// snapshot step of a cold churn run went from 0.27-0.30 to 0.21-0.24 s, three runs each).
///
/// The rows come in the table's order (SQLite's scan of the table, not of its uuid index: that
/// took 0.083 against 0.050 s at 100,000 rows, every lookup a seek in the table); each half is
/// sorted by uuid as it is decoded and the two are merged.
fn decode_entries(rows: Rows) -> Vec<Entry> {
    let Rows { text, rows } = rows;
    let text = text.as_str();
    let mut entries = crate::in_two_halves(rows, |half| {
        let mut half: Vec<Entry> = half
            .into_iter()
            .map(|(uuid, dn, attrs, known)| {
                let attrs = serde_json::from_str(&text[attrs]).unwrap_or_default();
                match known {
                    // (the row's digest is of the DN and attributes it holds: see save_entries)
                    Some(d) => Entry {
                        uuid,
                        dn,
                        attrs,
                        digest: crate::model::Digest::known(d),
                    },
                    None => Entry::new(uuid, dn, attrs),
                }
            })
            .collect();
        half.sort_unstable_by(|a, b| a.uuid.cmp(&b.uuid));
        half
    });
    // (a stable sort finds the two sorted runs and merges them)
    entries.sort_by(|a, b| a.uuid.cmp(&b.uuid));
    entries
}

/// Snapshot rows as read, before their attributes are decoded: every row's attributes (JSON) in
/// one buffer, each row holding its range. One string per row was 100,000 allocations freed a
/// moment later at 100,000 people, and the holes they left among the decoded entries stayed in
/// the memory of the thread that read them (65 MB more at the peak when that thread was not the
/// run's own).
struct Rows {
    text: String,
    rows: Vec<(String, String, std::ops::Range<usize>, Option<u64>)>,
}

/// A stored digest (16 hex digits); anything else (an older format) matches no digest.
fn parse_digest(v: &str) -> u64 {
    if v.len() == 16 {
        u64::from_str_radix(v, 16).unwrap_or(u64::MAX)
    } else {
        u64::MAX
    }
}

/// One audit row: a change dirbridge sent, with its reason and outcome.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AuditRow {
    pub at: String,
    pub run: i64,
    pub op: String,
    pub dn: String,
    pub key: String,
    pub change: serde_json::Value,
    pub reason: String,
    pub state: String,
    pub result: String,
}

pub struct Mirror {
    conn: Connection,
    path: PathBuf,
    /// What a long-lived connection (the daemon's) keeps between runs; see [`RowCache`].
    cache: std::cell::RefCell<RowCache>,
}

/// What the rows of the snapshot tables hold, kept in memory by a connection that stays open
/// between runs (the daemon's), so that a run neither reads them back nor parses them again.
/// Valid only while no other connection has written the database (SQLite's `data_version`).
#[derive(Default)]
struct RowCache {
    enabled: bool,
    /// `PRAGMA data_version` when the cache was last known good.
    version: Option<i64>,
    /// The snapshot tables' rows (taken by the run that reads them, given back when it ends).
    snapshot: Option<SnapshotRows>,
    /// The links table (HR key → entry uuid).
    links: Option<BTreeMap<String, String>>,
    /// Table → key → digest, as the rows are (see [`Mirror::replace_rows`]).
    digests: HashMap<String, foldhash::HashMap<Box<str>, u64>>,
    /// Valid whatever other connections write: the connection beside a run's own (see
    /// [`Mirror::beside`]), whose lender writes other tables meanwhile.
    pinned: bool,
}

/// Digests a run's connection lends to a second one that writes some tables for it on another
/// thread while the run writes the directory (see [`Mirror::lend`], [`Mirror::beside`]).
pub struct Lent {
    path: PathBuf,
    /// The lender's cache version when lent (None: it was not caching, or not valid).
    version: Option<i64>,
    digests: HashMap<String, foldhash::HashMap<Box<str>, u64>>,
}

fn sq(path: &Path) -> impl Fn(rusqlite::Error) -> MirrorError + '_ {
    move |err| MirrorError::Sqlite {
        path: path.to_path_buf(),
        err,
    }
}

/// Exclusive lock of one run on the mirror (`<mirror>.lock`, holding the pid).
pub struct RunLock {
    _file: File,
}

impl RunLock {
    pub fn acquire(mirror: &Path) -> Result<RunLock, MirrorError> {
        let path = lock_path(mirror);
        ensure_dir(&path)?;
        let io = |err| MirrorError::Io {
            path: path.clone(),
            err,
        };
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = f.read_to_string(&mut pid);
                let pid = pid.trim().to_string();
                // Name the holder: its command line, when /proc shows it.
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                    .ok()
                    .map(|c| {
                        c.split(|&b| b == 0)
                            .filter(|a| !a.is_empty())
                            .map(|a| String::from_utf8_lossy(a).into_owned())
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .filter(|c| !c.is_empty());
                let pid = match (pid.is_empty(), cmd) {
                    (true, _) => "unknown".to_string(),
                    (false, Some(c)) => format!("{pid}: {c}"),
                    (false, None) => pid,
                };
                return Err(MirrorError::Locked { path, pid });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        f.set_len(0).map_err(io)?;
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        write!(f, "{}", std::process::id()).map_err(io)?;
        f.flush().map_err(io)?;
        Ok(RunLock { _file: f })
    }
}

fn lock_path(mirror: &Path) -> PathBuf {
    let mut p = mirror.as_os_str().to_os_string();
    p.push(".lock");
    PathBuf::from(p)
}

fn ensure_dir(file: &Path) -> Result<(), MirrorError> {
    if let Some(dir) = file.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(|err| MirrorError::Io {
                    path: dir.to_path_buf(),
                    err,
                })?;
        }
    }
    Ok(())
}

impl Mirror {
    pub fn open(path: &Path) -> Result<Mirror, MirrorError> {
        ensure_dir(path)?;
        if !path.exists() {
            // Create the file private to the user before SQLite opens it (the WAL inherits its mode).
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|err| MirrorError::Io {
                    path: path.to_path_buf(),
                    err,
                })?;
        }
        let conn = Connection::open(path).map_err(sq(path))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sq(path))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sq(path))?;
        // (after a copy into the database, a log file larger than this is cut back to it)
        conn.pragma_update(None, "journal_size_limit", WAL_KEEP as i64)
            .map_err(sq(path))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sq(path))?;
        let mut m = Mirror {
            conn,
            path: path.to_path_buf(),
            cache: Default::default(),
        };
        m.migrate()?;
        Ok(m)
    }

    /// Let this connection read the database's pages where the system keeps them (SQLite's
    /// memory-mapped I/O, up to 1 GiB) instead of copying each into its own cache: for a
    /// connection that only reads, and not for long (the snapshot read ahead). The 10,000
    /// people's rows were read in 8–10 instead of 11–14 ms. Pages read this way count in the
    /// process's resident memory while the connection is open; a read error on them would stop
    /// the process, where a copied read would fail the run, so the run's own connection, open
    /// for the daemon's whole life, does not use it.
    pub fn map_pages(&self) -> Result<(), MirrorError> {
        self.conn
            .pragma_update(None, "mmap_size", 1i64 << 30)
            .map_err(sq(&self.path))
    }

    fn migrate(&mut self) -> Result<(), MirrorError> {
        let path = self.path.clone();
        let v: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sq(&path))?;
        let known = MIGRATIONS.len() as i64;
        if v > known {
            return Err(MirrorError::Downgrade {
                path,
                found: v,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(v as usize) {
            let tx = self.conn.transaction().map_err(sq(&path))?;
            tx.execute_batch(sql).map_err(sq(&path))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(sq(&path))?;
            tx.commit().map_err(sq(&path))?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// [`Self::links`] read on another thread, on a connection of its own (None where this
    /// connection keeps them in memory between runs: it hands those over at once).
    pub fn links_on_another_thread(
        &self,
    ) -> Option<std::thread::JoinHandle<Result<BTreeMap<String, String>, MirrorError>>> {
        if self.cache.borrow().enabled {
            return None;
        }
        let path = self.path.clone();
        Some(std::thread::spawn(move || Mirror::open(&path)?.links()))
    }

    pub fn links(&self) -> Result<BTreeMap<String, String>, MirrorError> {
        if self.cache_valid() {
            // (taken, not copied: [`Self::save_link_edits`] puts the run's links back)
            if let Some(l) = self.cache.borrow_mut().links.take() {
                return Ok(l);
            }
        }
        let p = self.path.clone();
        let mut st = self
            .conn
            .prepare("SELECT hr_key, entry_uuid FROM links")
            .map_err(sq(&p))?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(sq(&p))?;
        rows.collect::<Result<_, _>>().map_err(sq(&p))
    }

    /// Replace the links with `links` (HR key → uuid): the difference from `before` (what the
    /// table held), or from the table itself, written by [`Self::save_link_edits`]. For tests: a
    /// run keeps its edits and writes them.
    #[cfg(test)]
    pub fn save_links(
        &mut self,
        before: Option<&BTreeMap<String, String>>,
        links: BTreeMap<String, String>,
        now: &str,
    ) -> Result<(), MirrorError> {
        let mut old = match before {
            Some(b) => b.clone(),
            None => {
                self.cache.borrow_mut().links = None;
                self.links()?
            }
        };
        let (gone, changed) = crate::mapping::link::links_diff(&old, &links);
        let edits: Vec<(String, Option<String>)> = gone
            .into_iter()
            .map(|k| (k, None))
            .chain(
                changed
                    .into_iter()
                    .map(|(k, u)| (k.clone(), Some(u.clone()))),
            )
            .collect();
        self.save_link_edits(&mut old, edits, now)
    }

    /// Write what changed in the links since the run read them: `edits` in the order they were
    /// made (HR key → Some(entry uuid): linked; None: unlinked; a later edit of a key wins), and
    /// apply them to `links` (what the table held when the run read it: the mirror is locked).
    /// Only the keys edited are compared and written: a run used to copy its 100,000 links
    /// and apply its edits to the copy (25 ms of a churn run before its first write), then walk
    /// both maps to find the difference.
    pub fn save_link_edits(
        &mut self,
        links: &mut BTreeMap<String, String>,
        edits: Vec<(String, Option<String>)>,
        now: &str,
    ) -> Result<(), MirrorError> {
        let p = self.path.clone();
        let mut last: BTreeMap<String, Option<String>> = BTreeMap::new();
        for (k, u) in edits {
            last.insert(k, u);
        }
        let tx = self.conn.transaction().map_err(sq(&p))?;
        {
            let mut del = tx
                .prepare("DELETE FROM links WHERE hr_key = ?1")
                .map_err(sq(&p))?;
            let mut del_uuid = tx
                .prepare("DELETE FROM links WHERE entry_uuid = ?1 AND hr_key <> ?2")
                .map_err(sq(&p))?;
            let mut ins = tx
                .prepare("INSERT INTO links (hr_key, entry_uuid, linked_at) VALUES (?1, ?2, ?3) ON CONFLICT(hr_key) DO UPDATE SET entry_uuid = excluded.entry_uuid, linked_at = excluded.linked_at")
                .map_err(sq(&p))?;
            for (k, u) in &last {
                match u {
                    None if links.contains_key(k) => {
                        del.execute(params![k]).map_err(sq(&p))?;
                    }
                    Some(u) if links.get(k) != Some(u) => {
                        del_uuid.execute(params![u, k]).map_err(sq(&p))?;
                        ins.execute(params![k, u, now]).map_err(sq(&p))?;
                    }
                    _ => {}
                }
            }
        }
        tx.commit().map_err(sq(&p))?;
        for (k, u) in last {
            match u {
                Some(u) => {
                    links.insert(k, u);
                }
                None => {
                    links.remove(&k);
                }
            }
        }
        // The table is `links` unless two keys named one entry (the later one stayed).
        if self.cache_valid() {
            let mut uuids: foldhash::HashSet<&str> = Default::default();
            let one_each = links.values().all(|u| uuids.insert(u));
            drop(uuids);
            if one_each {
                self.cache.borrow_mut().links = Some(std::mem::take(links));
            }
        }
        Ok(())
    }

    pub fn departures(&self) -> Result<BTreeMap<String, jiff::civil::Date>, MirrorError> {
        let p = self.path.clone();
        let mut st = self
            .conn
            .prepare("SELECT hr_key, since FROM departures")
            .map_err(sq(&p))?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(sq(&p))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (k, s) = row.map_err(sq(&p))?;
            if let Ok(d) = s.parse() {
                out.insert(k, d);
            }
        }
        Ok(out)
    }

    /// Replace the departures with these (people who came back are dropped).
    pub fn save_departures(
        &mut self,
        d: &BTreeMap<String, jiff::civil::Date>,
    ) -> Result<(), MirrorError> {
        let p = self.path.clone();
        let tx = self.conn.transaction().map_err(sq(&p))?;
        tx.execute("DELETE FROM departures", []).map_err(sq(&p))?;
        for (k, since) in d {
            tx.execute(
                "INSERT INTO departures (hr_key, since) VALUES (?1, ?2)",
                params![k, since.to_string()],
            )
            .map_err(sq(&p))?;
        }
        tx.commit().map_err(sq(&p))
    }

    pub fn posix_ids(&self) -> Result<BTreeMap<String, u32>, MirrorError> {
        let p = self.path.clone();
        let mut st = self
            .conn
            .prepare("SELECT hr_key, uid_number FROM posix_ids")
            .map_err(sq(&p))?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(sq(&p))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (k, n) = row.map_err(sq(&p))?;
            out.insert(k, n as u32);
        }
        Ok(out)
    }

    pub fn save_posix_ids(
        &mut self,
        new: &BTreeMap<String, u32>,
        now: &str,
    ) -> Result<(), MirrorError> {
        let p = self.path.clone();
        let tx = self.conn.transaction().map_err(sq(&p))?;
        for (k, n) in new {
            tx.execute(
                "INSERT INTO posix_ids (hr_key, uid_number, assigned_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(hr_key) DO UPDATE SET uid_number = excluded.uid_number",
                params![k, *n as i64, now],
            )
            .map_err(sq(&p))?;
        }
        tx.commit().map_err(sq(&p))
    }

    /// Normalised DNs of the groups dirbridge created.
    pub fn created_groups(&self) -> Result<std::collections::BTreeSet<String>, MirrorError> {
        let p = self.path.clone();
        let mut st = self
            .conn
            .prepare("SELECT dn_norm FROM created_groups")
            .map_err(sq(&p))?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(sq(&p))?;
        rows.collect::<Result<_, _>>().map_err(sq(&p))
    }

    pub fn note_groups(
        &mut self,
        created: &[String],
        deleted: &[String],
        now: &str,
    ) -> Result<(), MirrorError> {
        let p = self.path.clone();
        let tx = self.conn.transaction().map_err(sq(&p))?;
        for dn in created {
            tx.execute(
                "INSERT OR REPLACE INTO created_groups (dn_norm, dn, created_at) VALUES (?1, ?2, ?3)",
                params![crate::dn::normalize(dn), dn, now],
            )
            .map_err(sq(&p))?;
        }
        for dn in deleted {
            tx.execute(
                "DELETE FROM created_groups WHERE dn_norm = ?1",
                params![crate::dn::normalize(dn)],
            )
            .map_err(sq(&p))?;
        }
        tx.commit().map_err(sq(&p))
    }

    /// Keep the directory snapshot, writing only the entries that changed (and removing those
    /// that are gone). Returns how many rows were written or removed.
    pub fn save_snapshot(&mut self, dir: &DirSnapshot) -> Result<usize, MirrorError> {
        self.save_entries("dir_entries", &dir.entries)
    }

    /// Keep the groups and the holders of unique values as read (with [`Self::save_snapshot`],
    /// what [`Self::read_snapshot`] returns), writing only the rows that changed.
    pub fn save_read_rest<'a>(
        &mut self,
        groups: &[Entry],
        uniques: impl IntoIterator<Item = &'a Entry>,
    ) -> Result<usize, MirrorError> {
        Ok(self.save_entries("dir_groups", groups)? + self.save_entries("dir_uniques", uniques)?)
    }

    fn save_entries<'a>(
        &mut self,
        table: &str,
        entries: impl IntoIterator<Item = &'a Entry>,
    ) -> Result<usize, MirrorError> {
        let rows = entries.into_iter().map(|e| (e.uuid.clone(), e.digest(), e));
        self.replace_rows(table, &["uuid", "digest", "dn", "attrs"], rows, None, |e| {
            vec![
                e.dn.clone(),
                serde_json::to_string(&e.attrs).unwrap_or_default(),
            ]
        })
    }

    /// People settled by the last run: HR key → digest of their record and entry, every row of
    /// the table (one of an older format has a digest no person has).
    pub fn settled(&self) -> Result<foldhash::HashMap<String, u64>, MirrorError> {
        let p = self.path.clone();
        let mut st = self
            .conn
            .prepare("SELECT hr_key, digest FROM settled")
            .map_err(sq(&p))?;
        let rows = st
            .query_map([], |r| {
                let d = r.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
                Ok((r.get::<_, String>(0)?, parse_digest(d)))
            })
            .map_err(sq(&p))?;
        rows.collect::<Result<_, _>>().map_err(sq(&p))
    }

    /// Add settled people (HR key, digest, entry uuid) to those [`Self::save_settled`] wrote: the
    /// people a run added, once their entryUUIDs are known.
    pub fn add_settled(&mut self, rows: &[(String, u64, String)]) -> Result<(), MirrorError> {
        let p = self.path.clone();
        let tx = self.conn.transaction().map_err(sq(&p))?;
        {
            let mut up = tx
                .prepare(
                    "INSERT OR REPLACE INTO settled (hr_key, digest, entry_uuid) VALUES (?1, ?2, ?3)",
                )
                .map_err(sq(&p))?;
            for (key, digest, uuid) in rows {
                up.execute(params![key, format!("{digest:016x}"), uuid])
                    .map_err(sq(&p))?;
            }
        }
        tx.commit().map_err(sq(&p))?;
        // (a caching connection compares the next save against these too)
        if self.cache_valid() {
            if let Some(d) = self.cache.borrow_mut().digests.get_mut("settled") {
                d.extend(rows.iter().map(|(k, v, _)| (k.as_str().into(), *v)));
            }
        }
        Ok(())
    }

    /// Replace the settled people (HR key, digest, entry uuid), writing only what changed.
    /// `found`: the table as [`Self::settled`] read it in this run, if it did (else it is read).
    pub fn save_settled(
        &mut self,
        rows: impl Iterator<Item = (String, u64, String)>,
        found: Option<&foldhash::HashMap<String, u64>>,
    ) -> Result<usize, MirrorError> {
        // (a caching connection compares against the digests it keeps)
        let found = found
            .filter(|_| !self.cache.borrow().enabled)
            .map(|m| m.iter().map(|(k, d)| (k.as_str().into(), *d)).collect());
        self.replace_rows(
            "settled",
            &["hr_key", "digest", "entry_uuid"],
            rows,
            found,
            |u| vec![u.clone()],
        )
    }

    /// The directory as the last read saved it (people, groups, unique-value holders), each list
    /// in uuid order.
    pub fn read_snapshot(&self) -> Result<SnapshotRows, MirrorError> {
        if self.cache_valid() {
            if let Some(rows) = self.cache.borrow_mut().snapshot.take() {
                return Ok(rows);
            }
        }
        let [e, g, u] = SNAPSHOT_TABLES;
        Ok(SnapshotRows {
            entries: self.entries_of(e)?,
            groups: self.entries_of(g)?,
            uniques: self.entries_of(u)?,
        })
    }

    /// Keep this connection's snapshot rows and row digests in memory between runs (the daemon,
    /// which holds the mirror's lock for its whole life): the next run takes them from memory as
    /// long as no other connection wrote the database.
    pub fn cache_between_runs(&self) {
        self.cache.borrow_mut().enabled = true;
    }

    /// Lend what this connection caches of `tables` (their rows' digests) to a connection that
    /// will write them beside this one ([`Self::beside`]); [`Self::take_back`] adopts what it
    /// wrote. A connection that does not cache lends nothing: the other reads the digests.
    pub fn lend(&self, tables: &[&str]) -> Lent {
        let valid = self.cache_valid();
        let mut c = self.cache.borrow_mut();
        let digests = tables
            .iter()
            .filter(|_| valid)
            .filter_map(|t| c.digests.remove(*t).map(|d| (t.to_string(), d)))
            .collect();
        Lent {
            path: self.path.clone(),
            version: if valid { c.version } else { None },
            digests,
        }
    }

    /// A second connection to the lender's mirror, for another thread to write the lent tables
    /// with (the export's records, the settled people, the directory as read) while the lender
    /// writes the journal. It keeps the lent digests, and the new ones, when the lender caches.
    pub fn beside(lent: Lent) -> Result<(Mirror, Option<i64>), MirrorError> {
        let m = Mirror::open(&lent.path)?;
        {
            let mut c = m.cache.borrow_mut();
            c.enabled = lent.version.is_some();
            c.pinned = true;
            c.digests = lent.digests;
        }
        Ok((m, lent.version))
    }

    /// How long this connection waits for another's write lock before a write fails as busy
    /// ([`MirrorError::is_busy`]); [`BUSY_TIMEOUT`] unless set.
    pub fn wait_when_busy(&self, wait: std::time::Duration) -> Result<(), MirrorError> {
        self.conn.busy_timeout(wait).map_err(sq(&self.path))
    }

    /// Make this connection leave the copies of the write-ahead log into the database file to
    /// others: SQLite's connections make one on a commit once the log passes 1,000 pages, and
    /// when they close as the last connection. A run turns both off for its connection:
    /// such a copy runs on the thread that commits or closes and syncs both files (two fsyncs
    /// and the pages between: 35-110 ms on a commit, 0.13 s on closing, measured after a
    /// 100,000-person churn), and the run's commits are the journal's beside its directory
    /// writes, which wait for them. The log is copied instead by the connection beside the
    /// writes, after its rows ([`Self::checkpoint`]), and by the run's end when its file is
    /// over [`WAL_KEEP`] ([`Self::copy_log_over`]); a smaller tail stays in it (a valid part of
    /// the database: SQLite reads it back on the next open, 15-20 ms for 40 MB) until the next
    /// run's copy. A log file found over [`WAL_KEEP`] here (left by a process that stopped) is
    /// copied at once.
    pub fn leave_log_copies(&self) -> Result<(), MirrorError> {
        self.conn
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(sq(&self.path))?;
        self.conn
            .set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            )
            .map_err(sq(&self.path))?;
        self.copy_log_over(WAL_KEEP);
        Ok(())
    }

    /// The write-ahead log file's path.
    fn wal_path(&self) -> std::path::PathBuf {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        wal.into()
    }

    /// Copy the write-ahead log into the database, and empty its file, when the file is larger
    /// than `limit` bytes (best effort).
    pub fn copy_log_over(&self, limit: u64) {
        let size = std::fs::metadata(self.wal_path())
            .map(|m| m.len())
            .unwrap_or(0);
        if size > limit {
            tracing::debug!(target: "dirbridge::mirror", bytes = size, "the write-ahead log is large: copied into the database");
            // (best effort, as the copy beside the writes: one that cannot finish now, another
            // process reading, is finished by a later one)
            if let Err(e) = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            {
                tracing::debug!(target: "dirbridge::mirror", "copying the write-ahead log: {e}");
            }
        }
    }

    /// Copy what the write-ahead log holds into the database file (PASSIVE: no writer or reader
    /// waits for it). The connection beside a run's directory writes does it after its rows, so
    /// that the run's last connection, when it closes, has only the run's tail left to copy.
    /// Best effort: a checkpoint that cannot finish now is finished by a later one.
    pub fn checkpoint(&self) {
        let r = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        if let Err(e) = r {
            tracing::debug!(target: "dirbridge::mirror", "checkpoint beside the writes: {e}");
        }
    }

    /// Adopt what the connection `beside` wrote (its tables' digests), and take its commits as
    /// known: the cache stays valid, unless it changed since it was lent (`version`).
    pub fn take_back(&self, version: Option<i64>, beside: Mirror) {
        let digests = std::mem::take(&mut beside.cache.borrow_mut().digests);
        drop(beside);
        let Some(lent_at) = version else {
            return;
        };
        let now: Option<i64> = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .ok();
        let mut c = self.cache.borrow_mut();
        if c.enabled && c.version == Some(lent_at) {
            c.version = now;
            c.digests.extend(digests);
        }
    }

    /// Hand back the snapshot the run read (with [`Self::read_snapshot`]) or saved: what the
    /// snapshot tables hold now, in uuid order. Kept only by a connection that caches.
    pub fn keep_snapshot(&self, rows: SnapshotRows) {
        if self.cache_valid() {
            self.cache.borrow_mut().snapshot = Some(rows);
        }
    }

    /// Whether the cache holds what the rows hold: caching is on and no other connection has
    /// written the database since the cache was filled. When not, the cache is emptied.
    fn cache_valid(&self) -> bool {
        if !self.cache.borrow().enabled {
            return false;
        }
        if self.cache.borrow().pinned {
            return true;
        }
        let version: Option<i64> = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .ok();
        let mut c = self.cache.borrow_mut();
        if version.is_some() && c.version == version {
            return true;
        }
        *c = RowCache {
            enabled: true,
            version,
            ..Default::default()
        };
        false
    }

    /// Make `table` hold exactly `rows` (key, digest, item), writing only rows whose digest
    /// differs from the stored one and removing keys that are gone, in one transaction. Only the
    /// rows written are serialised (`rest` gives the remaining columns). Table and column names
    /// are constants of this file: key, digest, then the rest.
    fn replace_rows<T>(
        &mut self,
        table: &str,
        cols: &[&str],
        rows: impl Iterator<Item = (String, u64, T)>,
        found: Option<foldhash::HashMap<Box<str>, u64>>,
        rest: impl Fn(&T) -> Vec<String>,
    ) -> Result<usize, MirrorError> {
        let p = self.path.clone();
        let (k, d) = (cols[0], cols[1]);
        let cached = if self.cache_valid() {
            self.cache.borrow_mut().digests.remove(table)
        } else {
            None
        };
        let cached = cached.or(found);
        let mut old: foldhash::HashMap<Box<str>, u64> = match cached {
            Some(old) => old,
            None => {
                let mut st = self
                    .conn
                    .prepare(&format!("SELECT {k}, {d} FROM {table}"))
                    .map_err(sq(&p))?;
                let found = st
                    .query_map([], |r| {
                        let d = r.get_ref(1)?.as_str().map(parse_digest).unwrap_or(u64::MAX);
                        Ok((r.get::<_, String>(0)?.into_boxed_str(), d))
                    })
                    .map_err(sq(&p))?;
                found.collect::<Result<_, _>>().map_err(sq(&p))?
            }
        };
        let caching = self.cache.borrow().enabled;
        // key → digest as the rows are after this (kept by a caching connection only)
        let mut now: foldhash::HashMap<Box<str>, u64> = if caching {
            foldhash::HashMap::with_capacity_and_hasher(old.len(), Default::default())
        } else {
            Default::default()
        };
        // The rows that changed are found before the transaction: SQLite's write lock is held
        // from a transaction's first write to its commit, and a walk of 100,000 rows (digesting
        // each) inside it kept the run's journal, on the other connection, waiting behind it
        // while the directory writes it holds back waited too.
        let mut changed: Vec<(String, u64, T)> = Vec::new();
        for (key, digest, item) in rows {
            // (what is left in `old` afterwards is gone)
            if old.remove(key.as_str()) == Some(digest) {
                if caching {
                    now.insert(key.into_boxed_str(), digest);
                }
            } else {
                if caching {
                    now.insert(key.as_str().into(), digest);
                }
                changed.push((key, digest, item));
            }
        }
        let mut written = 0;
        if !changed.is_empty() || !old.is_empty() {
            let tx = self.conn.transaction().map_err(sq(&p))?;
            {
                let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
                let mut up = tx
                    .prepare(&format!(
                        "INSERT OR REPLACE INTO {table} ({}) VALUES ({})",
                        cols.join(", "),
                        marks.join(", ")
                    ))
                    .map_err(sq(&p))?;
                for (key, digest, item) in changed {
                    let mut values = vec![key, format!("{digest:016x}")];
                    values.extend(rest(&item));
                    up.execute(rusqlite::params_from_iter(values.iter()))
                        .map_err(sq(&p))?;
                    written += 1;
                }
                let mut del = tx
                    .prepare(&format!("DELETE FROM {table} WHERE {k} = ?1"))
                    .map_err(sq(&p))?;
                for key in old.keys() {
                    del.execute(params![key.as_ref()]).map_err(sq(&p))?;
                    written += 1;
                }
            }
            tx.commit().map_err(sq(&p))?;
        }
        if self.cache_valid() {
            self.cache
                .borrow_mut()
                .digests
                .insert(table.to_string(), now);
        }
        Ok(written)
    }

    pub fn snapshot_entries(&self) -> Result<Vec<Entry>, MirrorError> {
        self.entries_of("dir_entries")
    }

    fn entries_of(&self, table: &str) -> Result<Vec<Entry>, MirrorError> {
        let p = self.path.clone();
        let mut st = self
            .conn
            .prepare(&format!("SELECT uuid, dn, attrs, digest FROM {table}"))
            .map_err(sq(&p))?;
        let t0 = std::time::Instant::now();
        // The attributes' text cannot be longer than the database: reserved at that size, the
        // buffer is never moved as it grows (moved, it was copied into fresh pages each time it
        // doubled, 9 MB faulted in for the 2.6 MB of 10,000 people's); what is never written
        // is never given memory by the system. (The database holds the journal too, and may be
        // large: a system that will not promise that much address space, e.g. with strict
        // overcommit, refuses the reservation, and the buffer grows as it needs instead.)
        let bound = self
            .conn
            .query_row(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(sq(&p))?;
        let mut read = Rows {
            text: String::new(),
            rows: Vec::new(),
        };
        let _ = read
            .text
            .try_reserve_exact(usize::try_from(bound).unwrap_or(0));
        let mut rows = st.query([]).map_err(sq(&p))?;
        while let Some(r) = rows.next().map_err(sq(&p))? {
            // (a digest of an older format, or none, is computed again when needed)
            let d = r
                .get_ref(3)
                .map_err(sq(&p))?
                .as_str()
                .map(parse_digest)
                .unwrap_or(u64::MAX);
            let from = read.text.len();
            let attrs = r.get_ref(2).and_then(|v| {
                v.as_str().map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(2, v.data_type(), Box::new(e))
                })
            });
            read.text.push_str(attrs.map_err(sq(&p))?);
            read.rows.push((
                r.get(0).map_err(sq(&p))?,
                r.get(1).map_err(sq(&p))?,
                from..read.text.len(),
                (d != u64::MAX).then_some(d),
            ));
        }
        drop(rows);
        let t1 = std::time::Instant::now();
        let rows = read;
        let out = decode_entries(rows);
        tracing::debug!(target: "dirbridge::mirror", table, rows = out.len(), "rows read in {:.3} s, decoded in {:.3} s", (t1 - t0).as_secs_f64(), t1.elapsed().as_secs_f64());
        Ok(out)
    }

    /// Keep the export as the last good HR snapshot, writing only the records whose content hash
    /// changed (and removing those that are gone).
    pub fn save_hr(&mut self, export: &Export) -> Result<usize, MirrorError> {
        let rows = export
            .records
            .iter()
            .map(|r| (r.key.clone(), digest(r.fields.as_ref()), r));
        self.replace_rows("hr_records", &["key", "hash", "fields"], rows, None, |r| {
            vec![serde_json::to_string(r.fields.as_ref()).unwrap_or_default()]
        })
    }

    pub fn hr_count(&self) -> Result<usize, MirrorError> {
        let p = self.path.clone();
        self.conn
            .query_row("SELECT count(*) FROM hr_records", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as usize)
            .map_err(sq(&p))
    }

    pub fn last_good(&self) -> Result<Option<LastGood>, MirrorError> {
        let p = self.path.clone();
        let row: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT records, header FROM runs WHERE status IN ('ok', 'quarantined') AND kind = 'sync' ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sq(&p))?;
        Ok(row.map(|(records, header)| LastGood {
            records: records as usize,
            header: serde_json::from_str(&header).unwrap_or_default(),
        }))
    }

    /// The last sync: (status, started at, the refusals it recorded).
    pub fn last_sync(&self) -> Result<Option<(String, String, serde_json::Value)>, MirrorError> {
        let p = self.path.clone();
        let row: Option<(String, String, Option<String>)> = self
            .conn
            .query_row(
                // only the refusals, not the whole stored plan
                "SELECT status, started_at, json_extract(summary, '$.refusals') FROM runs WHERE kind = 'sync' AND status <> 'running' ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(sq(&p))?;
        Ok(row.map(|(s, t, sum)| {
            let v: serde_json::Value = sum
                .and_then(|x| serde_json::from_str(&x).ok())
                .unwrap_or_default();
            (s, t, v)
        }))
    }

    pub fn begin_run(&self, kind: &str, now: &str) -> Result<i64, MirrorError> {
        let p = self.path.clone();
        self.conn
            .execute(
                "INSERT INTO runs (started_at, kind, status) VALUES (?1, ?2, 'running')",
                params![now, kind],
            )
            .map_err(sq(&p))?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn finish_run(
        &self,
        run: i64,
        now: &str,
        status: &str,
        records: usize,
        header: &[String],
        summary: &serde_json::Value,
    ) -> Result<(), MirrorError> {
        let p = self.path.clone();
        self.conn
            .execute(
                "UPDATE runs SET finished_at = ?2, status = ?3, records = ?4, header = ?5, summary = ?6 WHERE id = ?1",
                params![
                    run,
                    now,
                    status,
                    records as i64,
                    serde_json::to_string(header).unwrap_or_default(),
                    summary.to_string()
                ],
            )
            .map_err(sq(&p))?;
        Ok(())
    }

    pub fn record_quarantine(
        &mut self,
        run: i64,
        items: &[(Option<String>, usize, String)],
    ) -> Result<(), MirrorError> {
        let p = self.path.clone();
        let tx = self.conn.transaction().map_err(sq(&p))?;
        {
            let mut ins = tx
                .prepare(
                    "INSERT INTO quarantine (run_id, hr_key, line, reason) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(sq(&p))?;
            for (k, l, r) in items {
                ins.execute(params![run, k, *l as i64, r]).map_err(sq(&p))?;
            }
        }
        tx.commit().map_err(sq(&p))
    }

    /// An audit row that is not a directory change (an operator's override, say).
    pub fn audit_note(
        &mut self,
        run: i64,
        op: &str,
        reason: &str,
        now: &str,
    ) -> Result<(), MirrorError> {
        let p = self.path.clone();
        self.conn
            .execute(
                "INSERT INTO journal (run_id, op, dn, hr_key, change, reason, state, at) VALUES (?1, ?2, '', '', 'null', ?3, 'done', ?4)",
                params![run, op, reason, now],
            )
            .map_err(sq(&p))?;
        Ok(())
    }

    /// A named piece of read state (e.g. the AD uSN cursor), as JSON.
    pub fn get_state(&self, name: &str) -> Result<Option<String>, MirrorError> {
        let p = self.path.clone();
        match self.conn.query_row(
            "SELECT value FROM dir_state WHERE name = ?1",
            params![name],
            |r| r.get::<_, String>(0),
        ) {
            Ok(v) => Ok(Some(v)),
            Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
            Err(e) => Err(sq(&p)(e)),
        }
    }

    pub fn put_state(&mut self, name: &str, value: &str) -> Result<(), MirrorError> {
        let p = self.path.clone();
        self.conn
            .execute(
                "INSERT INTO dir_state (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                params![name, value],
            )
            .map_err(sq(&p))?;
        Ok(())
    }

    /// What the mirror knows of one app's accounts: HR key → link.
    pub fn app_links(
        &self,
        app: &str,
    ) -> Result<BTreeMap<String, crate::apps::AppLink>, MirrorError> {
        let p = self.path.clone();
        let mut st = self
            .conn
            .prepare("SELECT hr_key, remote_id, active, attrs, deactivated_on, failures, last_error FROM app_accounts WHERE app = ?1")
            .map_err(sq(&p))?;
        let rows = st
            .query_map(params![app], |r| {
                let attrs: String = r.get(3)?;
                let since: Option<String> = r.get(4)?;
                Ok((
                    r.get::<_, String>(0)?,
                    crate::apps::AppLink {
                        remote_id: r.get(1)?,
                        active: r.get::<_, i64>(2)? != 0,
                        attrs: serde_json::from_str(&attrs).unwrap_or_default(),
                        deactivated_on: since.and_then(|d| d.parse().ok()),
                        failures: r.get::<_, i64>(5)? as u32,
                        last_error: r.get(6)?,
                    },
                ))
            })
            .map_err(sq(&p))?;
        rows.collect::<Result<_, _>>().map_err(sq(&p))
    }

    /// Replace what the mirror knows of one app's accounts.
    pub fn save_app_links(
        &mut self,
        app: &str,
        links: &BTreeMap<String, crate::apps::AppLink>,
    ) -> Result<(), MirrorError> {
        let p = self.path.clone();
        let tx = self.conn.transaction().map_err(sq(&p))?;
        tx.execute("DELETE FROM app_accounts WHERE app = ?1", params![app])
            .map_err(sq(&p))?;
        {
            let mut ins = tx
                .prepare("INSERT INTO app_accounts (app, hr_key, remote_id, active, attrs, deactivated_on, failures, last_error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")
                .map_err(sq(&p))?;
            for (k, l) in links {
                ins.execute(params![
                    app,
                    k,
                    l.remote_id,
                    l.active as i64,
                    serde_json::to_string(&l.attrs).unwrap_or_else(|_| "{}".into()),
                    l.deactivated_on.map(|d| d.to_string()),
                    l.failures as i64,
                    l.last_error
                ])
                .map_err(sq(&p))?;
            }
        }
        tx.commit().map_err(sq(&p))
    }

    /// Journal application changes as pending (dn: `app NAME: account`).
    pub fn journal_pending_app(
        &mut self,
        run: i64,
        changes: &[&crate::apps::AppChange],
        now: &str,
    ) -> Result<Vec<i64>, MirrorError> {
        let rows = changes.iter().map(|c| {
            (
                c.op.as_str(),
                format!("app {}: {}", c.app, c.account),
                c.key.as_str(),
                serde_json::to_string(&c.attributes).unwrap_or_default(),
                c.reason.as_str(),
            )
        });
        self.journal_rows(run, rows, now)
    }

    /// Journal changes as pending, before they are sent. Returns their journal ids.
    pub fn journal_pending(
        &mut self,
        run: i64,
        changes: &[&Change],
        now: &str,
    ) -> Result<Vec<i64>, MirrorError> {
        let rows = changes.iter().map(|c| {
            (
                c.op.as_str(),
                c.dn.clone(),
                c.key.as_str(),
                serde_json::to_string(&c.attributes).unwrap_or_default(),
                c.reason.as_str(),
            )
        });
        self.journal_rows(run, rows, now)
    }

    /// Pending journal rows `(op, dn, key, change, reason)` in one transaction; their ids.
    fn journal_rows<'a>(
        &mut self,
        run: i64,
        rows: impl Iterator<Item = (&'a str, String, &'a str, String, &'a str)>,
        now: &str,
    ) -> Result<Vec<i64>, MirrorError> {
        let p = self.path.clone();
        let tx = self.conn.transaction().map_err(sq(&p))?;
        let mut ids = Vec::new();
        {
            let mut ins = tx
                .prepare("INSERT INTO journal (run_id, op, dn, hr_key, change, reason, state, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7)")
                .map_err(sq(&p))?;
            for (op, dn, key, body, reason) in rows {
                ins.execute(params![run, op, dn, key, body, reason, now])
                    .map_err(sq(&p))?;
                ids.push(tx.last_insert_rowid());
            }
        }
        tx.commit().map_err(sq(&p))?;
        Ok(ids)
    }

    /// Record the outcome of journaled changes: `(id, ok, result text)`.
    pub fn journal_done(
        &mut self,
        outcomes: &[(i64, bool, String)],
        now: &str,
    ) -> Result<(), MirrorError> {
        let p = self.path.clone();
        let tx = self.conn.transaction().map_err(sq(&p))?;
        {
            let mut up = tx
                .prepare("UPDATE journal SET state = ?2, result = ?3, at = ?4 WHERE id = ?1")
                .map_err(sq(&p))?;
            for (id, ok, res) in outcomes {
                up.execute(params![id, if *ok { "done" } else { "failed" }, res, now])
                    .map_err(sq(&p))?;
            }
        }
        tx.commit().map_err(sq(&p))
    }

    /// Audit rows (the journal), newest first: `since` an RFC 3339 time or date prefix, `who` an
    /// HR key or a DN fragment.
    pub fn history(
        &self,
        since: Option<&str>,
        who: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRow>, MirrorError> {
        let p = self.path.clone();
        let mut st = self
            .conn
            .prepare(
                "SELECT at, run_id, op, dn, hr_key, change, reason, state, COALESCE(result, '') FROM journal \
                 WHERE (?1 IS NULL OR at >= ?1) AND (?2 IS NULL OR hr_key = ?2 OR lower(dn) LIKE '%' || lower(?2) || '%' \
                 OR (instr(change, ?2) > 0 AND op IN ('add-member', 'remove-member'))) \
                 ORDER BY id DESC LIMIT ?3",
            )
            .map_err(sq(&p))?;
        let rows = st
            .query_map(params![since, who, limit as i64], |r| {
                Ok(AuditRow {
                    at: r.get(0)?,
                    run: r.get(1)?,
                    op: r.get(2)?,
                    dn: r.get(3)?,
                    key: r.get(4)?,
                    change: serde_json::from_str(&r.get::<_, String>(5)?)
                        .unwrap_or(serde_json::Value::Null),
                    reason: r.get(6)?,
                    state: r.get(7)?,
                    result: r.get(8)?,
                })
            })
            .map_err(sq(&p))?;
        rows.collect::<Result<_, _>>().map_err(sq(&p))
    }

    /// The first time a member value was added to a group (for `report access`).
    pub fn member_since(
        &self,
        group_dn: &str,
        member: &str,
    ) -> Result<Option<String>, MirrorError> {
        let p = self.path.clone();
        self.conn
            .query_row(
                "SELECT min(at) FROM journal WHERE state = 'done' AND op IN ('add', 'add-member') AND lower(dn) = lower(?1) AND instr(lower(change), lower(?2)) > 0",
                params![group_dn, member],
                |r| r.get::<_, Option<String>>(0),
            )
            .map_err(sq(&p))
    }

    /// Forget audit rows older than `before` (RFC 3339), and compact the file when much went.
    pub fn expire(&mut self, before: &str) -> Result<usize, MirrorError> {
        let p = self.path.clone();
        let tx = self.conn.transaction().map_err(sq(&p))?;
        let n = tx
            .execute("DELETE FROM journal WHERE at < ?1", params![before])
            .map_err(sq(&p))?;
        tx.execute(
            "DELETE FROM quarantine WHERE run_id IN (SELECT id FROM runs WHERE started_at < ?1)",
            params![before],
        )
        .map_err(sq(&p))?;
        tx.execute(
            "DELETE FROM runs WHERE started_at < ?1 AND id NOT IN (SELECT DISTINCT run_id FROM journal) \
             AND id <> (SELECT max(id) FROM runs WHERE status IN ('ok', 'quarantined'))",
            params![before],
        )
        .map_err(sq(&p))?;
        tx.commit().map_err(sq(&p))?;
        if n > 10_000 {
            self.conn.execute_batch("VACUUM").map_err(sq(&p))?;
        }
        Ok(n)
    }

    /// Journal rows of a state (for tests and `history`).
    pub fn journal_count(&self, state: &str) -> Result<usize, MirrorError> {
        let p = self.path.clone();
        self.conn
            .query_row(
                "SELECT count(*) FROM journal WHERE state = ?1",
                params![state],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as usize)
            .map_err(sq(&p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_snapshot_is_kept_a_row_per_entry_and_only_changed_rows_are_written() {
        let dir = scratch("snaprows");
        let mut m = Mirror::open(&dir.join("mirror.db")).unwrap();
        let e = |u: &str, title: &str| Entry {
            digest: Default::default(),
            uuid: u.into(),
            dn: format!("uid={u},ou=people,dc=example,dc=com"),
            attrs: [
                ("uid", vec![u.to_string()]),
                ("title", vec![title.to_string()]),
            ]
            .into(),
        };
        let mut snap = DirSnapshot {
            entries: vec![e("b", "Staff"), e("a", "Lead")],
            ..Default::default()
        };
        let groups = vec![e("g", "x")];
        assert_eq!(m.save_snapshot(&snap).unwrap(), 2);
        assert_eq!(m.save_read_rest(&groups, &snap.entries).unwrap(), 3);
        // nothing changed: nothing written
        assert_eq!(m.save_snapshot(&snap).unwrap(), 0);
        assert_eq!(m.save_read_rest(&groups, &snap.entries).unwrap(), 0);
        // one title changed, one entry gone, one new
        snap.entries = vec![e("a", "Boss"), e("c", "Staff")];
        assert_eq!(m.save_snapshot(&snap).unwrap(), 3);
        let back = m.read_snapshot().unwrap();
        assert_eq!(back.entries, snap.entries);
        assert_eq!(back.groups, groups);
        assert_eq!(
            back.uniques
                .iter()
                .map(|e| e.uuid.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"],
            "saved apart from the people"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_large_snapshot_decoded_on_two_threads_comes_back_whole_and_in_order() {
        let n = crate::TWO_THREADS_FROM * 2 + 3;
        let entries: Vec<Entry> = (0..n)
            .map(|i| Entry {
                digest: Default::default(),
                uuid: format!("{i:08}"),
                dn: format!("uid=u{i},ou=people,dc=example,dc=com"),
                attrs: [
                    ("uid", vec![format!("u{i}")]),
                    ("title", vec![format!("T{}", i % 7), "second".to_string()]),
                ]
                .into(),
            })
            .collect();
        // (the rows in reverse order: decoding puts them in uuid order)
        let mut rows = Rows {
            text: String::new(),
            rows: Vec::new(),
        };
        for e in entries.iter().rev() {
            let from = rows.text.len();
            rows.text
                .push_str(&serde_json::to_string(&e.attrs).unwrap());
            rows.rows
                .push((e.uuid.clone(), e.dn.clone(), from..rows.text.len(), None));
        }
        assert_eq!(decode_entries(rows), entries);
        // and through the table, as a run reads it
        let dir = scratch("snapbig");
        let mut m = Mirror::open(&dir.join("mirror.db")).unwrap();
        let snap = DirSnapshot {
            entries: entries.clone(),
            ..Default::default()
        };
        assert_eq!(m.save_snapshot(&snap).unwrap(), n);
        let read = m.read_snapshot().unwrap().entries;
        assert_eq!(read, entries);
        // Each entry read back knows its row's digest, which is the digest of what it holds.
        for (back, made) in read.iter().zip(&entries) {
            assert_eq!(back.digest.get(), Some(made.digest()));
        }
        // A row whose digest is of an older format (or none) is digested again when asked.
        m.conn
            .execute(
                "UPDATE dir_entries SET digest = '' WHERE uuid = '00000007'",
                [],
            )
            .unwrap();
        let read = m.read_snapshot().unwrap().entries;
        assert_eq!(read[7].digest.get(), None);
        assert_eq!(read[7].digest(), entries[7].digest());
        assert_eq!(read[8].digest.get(), Some(entries[8].digest()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn settled_rows_are_rewritten_against_the_table_as_the_run_read_it() {
        let dir = scratch("settled");
        let mut m = Mirror::open(&dir.join("mirror.db")).unwrap();
        let row = |k: &str, d: u64| (k.to_string(), d, format!("uuid-{k}"));
        let first = [row("1", 10), row("2", 20), row("3", 30)];
        // (nothing read: the table is read to compare)
        assert_eq!(m.save_settled(first.clone().into_iter(), None).unwrap(), 3);
        let read = m.settled().unwrap();
        assert_eq!(read.len(), 3);
        assert_eq!(read.get("2"), Some(&20));
        // compared against what the run read: 2 changed, 3 gone (touched), 4 new, 1 as it was
        let second = [row("1", 10), row("2", 21), row("4", 40)];
        assert_eq!(m.save_settled(second.into_iter(), Some(&read)).unwrap(), 3);
        let now = m.settled().unwrap();
        let mut keys: Vec<(&str, u64)> = now.iter().map(|(k, d)| (k.as_str(), *d)).collect();
        keys.sort();
        assert_eq!(keys, [("1", 10), ("2", 21), ("4", 40)]);
        // the same again, from what was just read: nothing to write
        let third = [row("1", 10), row("2", 21), row("4", 40)];
        assert_eq!(m.save_settled(third.into_iter(), Some(&now)).unwrap(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_connection_beside_writes_the_lent_tables_and_the_lenders_cache_stays_valid() {
        let dir = scratch("beside");
        let db = dir.join("mirror.db");
        let e = |u: &str| Entry {
            digest: Default::default(),
            uuid: u.into(),
            dn: format!("uid={u},ou=people,dc=x"),
            attrs: [("title", vec!["t".to_string()])].into(),
        };
        let row = |k: &str, d: u64| (k.to_string(), d, format!("uuid-{k}"));
        let mut m = Mirror::open(&db).unwrap();
        m.cache_between_runs();
        let snap = DirSnapshot {
            entries: vec![e("a"), e("b")],
            ..Default::default()
        };
        m.save_snapshot(&snap).unwrap();
        assert_eq!(
            m.save_settled([row("1", 10), row("2", 20)].into_iter(), None)
                .unwrap(),
            2
        );
        // (what is kept in memory differs from the rows: the test can tell which it gets)
        let mut handed = snap.entries.clone();
        handed[0].attrs = [("title", vec!["kept in memory".to_string()])].into();
        handed[0].changed();
        m.keep_snapshot(SnapshotRows {
            entries: handed.clone(),
            ..Default::default()
        });
        // lent, written on another thread while this connection writes a table of its own
        let lent = m.lend(&BESIDE_TABLES);
        let beside = std::thread::spawn(move || {
            let (mut b, version) = Mirror::beside(lent).unwrap();
            // (the lent digests: only the changed row is written)
            let written = b
                .save_settled([row("1", 10), row("2", 21)].into_iter(), None)
                .unwrap();
            (b, version, written)
        });
        m.put_state("marker", "lender's own write").unwrap();
        let (b, version, written) = beside.join().unwrap();
        assert_eq!(written, 1);
        assert!(version.is_some());
        m.take_back(version, b);
        // the lender's cache is still valid (the snapshot comes from memory) and knows the new
        // digests (saving the same rows again writes nothing)
        assert_eq!(m.read_snapshot().unwrap().entries, handed);
        assert_eq!(
            m.save_settled([row("1", 10), row("2", 21)].into_iter(), None)
                .unwrap(),
            0
        );
        assert_eq!(m.settled().unwrap().get("2"), Some(&21));
        // a connection that does not cache lends nothing: the other one reads the table
        let plain = Mirror::open(&db).unwrap();
        let lent = plain.lend(&BESIDE_TABLES);
        let (mut b, version) = Mirror::beside(lent).unwrap();
        assert_eq!(version, None);
        assert_eq!(
            b.save_settled([row("1", 10), row("2", 22)].into_iter(), None)
                .unwrap(),
            1
        );
        plain.take_back(version, b);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_caching_connection_keeps_the_snapshot_until_another_connection_writes() {
        let dir = scratch("cache");
        let db = dir.join("mirror.db");
        let e = |u: &str, title: &str| Entry {
            digest: Default::default(),
            uuid: u.into(),
            dn: format!("uid={u},ou=people,dc=x"),
            attrs: [("title", vec![title.to_string()])].into(),
        };
        let snap = |entries: Vec<Entry>| DirSnapshot {
            entries,
            ..Default::default()
        };
        let mut m = Mirror::open(&db).unwrap();
        m.cache_between_runs();
        let d = snap(vec![e("a", "one"), e("b", "two")]);
        assert_eq!(m.save_snapshot(&d).unwrap(), 2);
        // what the run hands back is what the next run gets, without reading the rows
        let mut handed = d.entries.clone();
        handed[0].attrs = [("title", vec!["as handed back".to_string()])].into();
        handed[0].changed();
        m.keep_snapshot(SnapshotRows {
            entries: handed.clone(),
            ..Default::default()
        });
        assert_eq!(m.read_snapshot().unwrap().entries, handed, "from memory");
        // (taken: the next read is from the rows)
        assert_eq!(
            m.read_snapshot().unwrap().entries,
            d.entries,
            "from the rows"
        );
        // the digests are remembered too: an unchanged save writes nothing
        assert_eq!(m.save_snapshot(&d).unwrap(), 0);
        let d2 = snap(vec![e("a", "one"), e("c", "three")]);
        assert_eq!(m.save_snapshot(&d2).unwrap(), 2, "c written, b deleted");
        m.keep_snapshot(SnapshotRows {
            entries: d2.entries.clone(),
            ..Default::default()
        });
        // another connection writes the database: the cache is dropped, the rows are read
        {
            let other = Connection::open(&db).unwrap();
            other
                .execute(
                    "UPDATE dir_entries SET attrs = '{\"title\":[\"by hand\"]}', digest = 'x' WHERE uuid = 'a'",
                    [],
                )
                .unwrap();
        }
        let back = m.read_snapshot().unwrap().entries;
        assert_eq!(back[0].get("title"), ["by hand"]);
        // the links too: kept as saved, read again after another connection wrote
        let links: BTreeMap<String, String> = [("1".into(), "a".into()), ("2".into(), "c".into())]
            .into_iter()
            .collect();
        m.save_links(None, links.clone(), "t").unwrap();
        assert_eq!(m.links().unwrap(), links);
        Connection::open(&db)
            .unwrap()
            .execute("DELETE FROM links WHERE hr_key = '2'", [])
            .unwrap();
        assert_eq!(m.links().unwrap().len(), 1);
        // two keys naming one entry: the table keeps the later one, and so does what is read
        let two: BTreeMap<String, String> = [("1".into(), "a".into()), ("3".into(), "a".into())]
            .into_iter()
            .collect();
        m.save_links(None, two.clone(), "t").unwrap();
        assert_eq!(m.links().unwrap().keys().collect::<Vec<_>>(), ["3"]);
        // and the digests are read again too: the edited row is written back
        assert_eq!(m.save_snapshot(&d2).unwrap(), 1);
        // a connection that does not cache never keeps anything
        let plain = Mirror::open(&db).unwrap();
        plain.keep_snapshot(SnapshotRows {
            entries: handed,
            ..Default::default()
        });
        assert_eq!(plain.read_snapshot().unwrap().entries, d2.entries);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rows_are_compared_before_the_write_lock_is_taken() {
        let dir = scratch("rowslock");
        let path = dir.join("mirror.db");
        let mut m = Mirror::open(&path).unwrap();
        let mut other = Mirror::open(&path).unwrap();
        other.wait_when_busy(std::time::Duration::ZERO).unwrap();
        let other_wrote = std::cell::Cell::new(None);
        // Two new rows: while the second is made, the other connection writes without waiting.
        // Were the first one inserted already, the lock would be this transaction's, and the
        // other connection's write would fail as busy.
        let rows = (0..2).map(|i| {
            if i == 1 {
                other_wrote.set(Some(other.put_state("probe", "x").is_ok()));
            }
            (format!("k{i}"), i as u64, format!("u{i}"))
        });
        assert_eq!(m.save_settled(rows, None).unwrap(), 2);
        assert_eq!(other_wrote.get(), Some(true));
        assert_eq!(m.settled().unwrap().len(), 2);
        assert_eq!(m.get_state("probe").unwrap().as_deref(), Some("x"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_run_connection_leaves_its_log_to_the_next_copy_and_nothing_is_lost() {
        let dir = scratch("walkeep");
        let path = dir.join("mirror.db");
        let m = Mirror::open(&path).unwrap();
        let wal = m.wal_path();
        m.leave_log_copies().unwrap();
        let mut m = m;
        let rows = (0..5000).map(|i| (format!("key-{i:05}"), i as u64, format!("uuid-{i}")));
        assert_eq!(m.save_settled(rows, None).unwrap(), 5000);
        drop(m);
        // closed without copying the log into the database: the rows are in the log
        let logged = std::fs::metadata(&wal).map(|x| x.len()).unwrap_or(0);
        assert!(logged > 100_000, "log of {logged} bytes");
        let m = Mirror::open(&path).unwrap();
        let settled = m.settled().unwrap();
        assert_eq!(settled.len(), 5000);
        assert_eq!(settled.get("key-04999"), Some(&4999));
        // a log over the limit is copied and its file emptied
        m.copy_log_over(1);
        assert_eq!(std::fs::metadata(&wal).map(|x| x.len()).unwrap_or(0), 0);
        drop(m);
        let m = Mirror::open(&path).unwrap();
        assert_eq!(m.settled().unwrap().len(), 5000);
        // a connection left as SQLite makes it copies the log when it closes last
        let mut m = m;
        m.put_state("after", "1").unwrap();
        drop(m);
        assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An empty directory of this test process's own under the system's temporary one.
    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("dirbridge-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn links_are_saved_as_what_changed_since_the_run_read_them() {
        let map = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
            v.iter()
                .map(|(k, u)| (k.to_string(), u.to_string()))
                .collect()
        };
        // "0" and "3" gone (before the first key and between), "2" relinked, "4" and "5" new
        let before = map(&[
            ("0", "u0"),
            ("1", "u1"),
            ("2", "u2"),
            ("3", "u3"),
            ("6", "u6"),
        ]);
        let after = map(&[
            ("1", "u1"),
            ("2", "u9"),
            ("4", "u4"),
            ("5", "u5"),
            ("6", "u6"),
        ]);
        let (gone, changed) = crate::mapping::link::links_diff(&before, &after);
        assert_eq!(gone, ["0", "3"]);
        let changed: Vec<(&str, &str)> = changed
            .into_iter()
            .map(|(k, u)| (k.as_str(), u.as_str()))
            .collect();
        assert_eq!(changed, [("2", "u9"), ("4", "u4"), ("5", "u5")]);
        // and every key gone after the last one of the new map
        assert_eq!(
            crate::mapping::link::links_diff(&before, &map(&[])).0,
            ["0", "1", "2", "3", "6"]
        );

        let dir = scratch("links");
        let mut m = Mirror::open(&dir.join("mirror.db")).unwrap();
        m.save_links(None, before.clone(), "t").unwrap();
        assert_eq!(m.links().unwrap(), before);
        m.save_links(Some(&before), after.clone(), "t").unwrap();
        assert_eq!(m.links().unwrap(), after);
        // a key that takes another's entry: the table keeps the later one, as without `before`
        let taken = map(&[
            ("1", "u1"),
            ("2", "u9"),
            ("4", "u4"),
            ("5", "u5"),
            ("7", "u6"),
        ]);
        m.save_links(Some(&after), taken, "t").unwrap();
        assert_eq!(m.links().unwrap().get("7").map(String::as_str), Some("u6"));
        assert!(!m.links().unwrap().contains_key("6"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn link_edits_are_written_in_order_and_applied_to_the_links_read() {
        let dir = scratch("edits");
        let mut m = Mirror::open(&dir.join("mirror.db")).unwrap();
        let map = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        m.save_links(None, map(&[("1", "u1"), ("2", "u2"), ("3", "u3")]), "t")
            .unwrap();
        let mut links = m.links().unwrap();
        let edit = |k: &str, u: Option<&str>| (k.to_string(), u.map(String::from));
        let edits = vec![
            edit("2", None),       // dangling ...
            edit("2", Some("u7")), // ... and relinked: the later edit wins
            edit("3", None),       // deleted
            edit("4", Some("u4")), // added
            edit("5", None),       // never linked: nothing to remove
            edit("6", Some("u1")), // takes 1's entry: the table keeps the later key (6)
            edit("1", Some("u1")), // as it was: nothing written
        ];
        m.save_link_edits(&mut links, edits, "t").unwrap();
        let want = map(&[("1", "u1"), ("2", "u7"), ("4", "u4"), ("6", "u1")]);
        assert_eq!(links, want, "the edits are applied to the links read");
        let table = m.links().unwrap();
        assert_eq!(table, map(&[("2", "u7"), ("4", "u4"), ("6", "u1")]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_checkpoint_copies_the_log_into_the_database_file() {
        let dir = scratch("ckpt");
        let db = dir.join("mirror.db");
        let mut m = Mirror::open(&db).unwrap();
        let links: BTreeMap<String, String> =
            (0..50).map(|i| (i.to_string(), format!("u{i}"))).collect();
        m.save_links(None, links, "t").unwrap();
        // the database file alone, as a reader that ignores the write-ahead log sees it
        let in_file = || -> i64 {
            let uri = format!("file:{}?immutable=1", db.display());
            let c = Connection::open_with_flags(
                uri,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
            )
            .unwrap();
            c.query_row("SELECT count(*) FROM links", [], |r| r.get(0))
                .unwrap_or(0)
        };
        assert_eq!(in_file(), 0, "the links are still only in the log");
        m.checkpoint();
        assert_eq!(in_file(), 50);
        drop(m);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn migrations_links_and_lock() {
        let dir = scratch("mirror");
        let db = dir.join("sub/mirror.db");
        let mut m = Mirror::open(&db).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&db).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut links = BTreeMap::new();
        links.insert("1".to_string(), "u1".to_string());
        links.insert("2".to_string(), "u2".to_string());
        m.save_links(None, links.clone(), "t").unwrap();
        links.remove("1");
        links.insert("3".to_string(), "u1".to_string());
        m.save_links(None, links.clone(), "t").unwrap();
        assert_eq!(m.links().unwrap(), links);
        drop(m);
        // reopen: migrations are not run twice
        let m = Mirror::open(&db).unwrap();
        assert_eq!(m.links().unwrap().len(), 2);
        // the HR snapshot is written only where the content changed
        let mut m = Mirror::open(&db).unwrap();
        let rec = |k: &str, v: &str| crate::source::Record {
            key: k.into(),
            line: 1,
            fields: crate::source::Fields::new(
                [("name".to_string(), Box::<str>::from(v))]
                    .into_iter()
                    .collect(),
            ),
        };
        let mut e = Export {
            records: vec![rec("1", "a"), rec("2", "b")],
            ..Default::default()
        };
        assert_eq!(m.save_hr(&e).unwrap(), 2);
        assert_eq!(m.save_hr(&e).unwrap(), 0);
        e.records = vec![rec("1", "a"), rec("2", "c"), rec("3", "d")];
        assert_eq!(m.save_hr(&e).unwrap(), 2);
        e.records = vec![rec("1", "a")];
        assert_eq!(m.save_hr(&e).unwrap(), 2);
        assert_eq!(m.hr_count().unwrap(), 1);
        // so is the directory snapshot
        let entry = |u: &str, dn: &str| Entry {
            digest: Default::default(),
            uuid: u.into(),
            dn: dn.into(),
            attrs: [("cn".to_string(), vec!["x".to_string()])]
                .into_iter()
                .collect(),
        };
        let mut d = DirSnapshot {
            entries: vec![entry("u1", "cn=a,dc=x"), entry("u2", "cn=b,dc=x")],
            ..Default::default()
        };
        assert_eq!(m.save_snapshot(&d).unwrap(), 2);
        assert_eq!(m.save_snapshot(&d).unwrap(), 0);
        d.entries[1].dn = "cn=c,dc=x".into();
        d.entries[1].changed();
        d.entries.remove(0);
        assert_eq!(m.save_snapshot(&d).unwrap(), 2);
        assert_eq!(m.snapshot_entries().unwrap(), d.entries);
        // a connection that maps the pages (the read ahead's) reads the same rows
        let mapped = Mirror::open(&db).unwrap();
        mapped.map_pages().unwrap();
        let size: i64 = mapped
            .conn
            .query_row("PRAGMA mmap_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(size, 1 << 30, "this SQLite does not map the pages");
        assert_eq!(mapped.snapshot_entries().unwrap(), d.entries);
        drop((m, mapped));
        let lock = RunLock::acquire(&db).unwrap();
        match RunLock::acquire(&db) {
            Err(MirrorError::Locked { pid, .. }) => {
                assert!(
                    pid.starts_with(&format!("{}: ", std::process::id())),
                    "{pid}"
                )
            }
            other => panic!("expected Locked, got {:?}", other.map(|_| ())),
        }
        drop(lock);
        assert!(RunLock::acquire(&db).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

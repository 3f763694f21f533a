//! One run, end to end: sources → mirror → mapping → plan → safety gates → applier → journal.
//! This is the only place that sequences the I/O edges around the pure core.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::clock::Clock;
use crate::config::Config;
use crate::exit;
use crate::mapping::{link, Mapper};
use crate::mirror::{Mirror, MirrorError, RunLock};
use crate::model::DirSnapshot;
use crate::plan::gates::{self, GateInput};
use crate::plan::{self, Change, Op, Plan, PlanInput, QuarantineNote, Subject};
use crate::source::{self, SourceError};
use crate::target::ldap::{LdapTarget, OpFailure};
use crate::target::TargetError;

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Compute and show the plan; write nothing (plan, sync --dry-run).
    pub dry_run: bool,
    /// Limit the run to one person (a canary).
    pub only: Option<String>,
    /// Evaluate the lifecycle as of this day (YYYY-MM-DD) instead of today.
    pub as_of: Option<String>,
    /// Keep what the run computed (for `explain` and `report`).
    pub details: bool,
    /// Gates the operator accepts for this run (`--accept-gate NAME`).
    pub accept: Vec<String>,
    /// The daemon holds the mirror's lock for its whole life: its runs do not take it again.
    pub daemon_holds_lock: bool,
    /// Read the whole directory even when an incremental read is possible.
    pub full_read: bool,
    /// Set to true to stop after the operations in flight (SIGTERM in the daemon).
    pub cancel: Option<tokio::sync::watch::Receiver<bool>>,
    /// Where a long-lived caller (the daemon) keeps the mirror's connection between runs, with
    /// the snapshot it caches (see [`Mirror::cache_between_runs`]).
    pub mirror_slot: Option<MirrorSlot>,
    /// The caller shows only the run's summary: once written and journaled, the changes' values
    /// are let go before the mirror is saved (100,000 adds hold 60 MB of them). Without it the
    /// outcome keeps the whole plan (`sync --format ldif` prints it).
    pub summary_only: bool,
}

/// The daemon's mirror connection between runs: a run takes it (or opens one) and gives it back
/// when it ends well; a run that fails drops it, and the next one opens the mirror afresh.
#[derive(Clone, Default)]
pub struct MirrorSlot(std::sync::Arc<std::sync::Mutex<Option<Mirror>>>);

impl std::fmt::Debug for MirrorSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MirrorSlot")
    }
}

impl MirrorSlot {
    /// The kept connection, if it is to this mirror file.
    fn take(&self, path: &std::path::Path) -> Option<Mirror> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.take().filter(|m| m.path() == path)
    }

    fn put(&self, m: Mirror) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(m);
    }
}

/// What a run computed, for `explain` and `report`.
#[derive(Debug)]
pub struct Details {
    pub users: crate::config::UsersConfig,
    pub records: Vec<crate::source::Record>,
    pub desired: Vec<crate::mapping::Desired>,
    pub groups: BTreeMap<String, crate::mapping::groups::GroupDesired>,
    pub states: BTreeMap<String, crate::lifecycle::State>,
    pub entries: Vec<crate::model::Entry>,
    pub group_entries: Vec<crate::model::Entry>,
    pub today: Option<jiff::civil::Date>,
    /// Per application: its accounts, its links in the mirror, and what it was read as.
    pub apps: BTreeMap<String, AppDetails>,
}

/// One application, for `explain`.
#[derive(Debug, Default)]
pub struct AppDetails {
    pub accounts: Vec<crate::apps::Account>,
    pub links: BTreeMap<String, crate::apps::AppLink>,
    pub remote: Vec<crate::apps::RemoteAccount>,
    pub error: Option<String>,
}

/// Who runs this process, for the audit: the user name and uid.
fn operator() -> String {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid().to_string())
        .unwrap_or_else(|_| "?".into());
    let name = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_default();
    format!("the operator {name} (uid {uid})")
}

/// Today, in the lifecycle's time zone (or the system's), or the `--as-of` day.
pub fn today(
    cfg: &Config,
    as_of: Option<&str>,
    clock: &dyn Clock,
) -> Result<jiff::civil::Date, RunError> {
    if let Some(d) = as_of {
        return d
            .parse::<jiff::civil::Date>()
            .map_err(|e| RunError::Config(format!("--as-of {d}: {e}")));
    }
    let tz = match cfg.lifecycle.as_ref().and_then(|l| l.timezone.as_deref()) {
        Some(name) => jiff::tz::TimeZone::get(name)
            .map_err(|e| RunError::Config(format!("lifecycle.timezone: {e}")))?,
        None => jiff::tz::TimeZone::system(),
    };
    let ts = jiff::Timestamp::try_from(clock.now())
        .map_err(|e| RunError::Config(format!("the clock: {e}")))?;
    Ok(ts.to_zoned(tz).date())
}

/// A change the server refused.
#[derive(Clone, Debug)]
pub struct Failed {
    pub change: Change,
    pub failure: OpFailure,
}

#[derive(Debug)]
pub struct RunOutcome {
    pub plan: Plan,
    pub applied: BTreeMap<&'static str, usize>,
    pub failed: Vec<Failed>,
    pub duration: Duration,
    pub dry_run: bool,
    pub details: Option<Details>,
    /// The run stopped early (the daemon is stopping): changes not sent stay pending in the journal.
    pub interrupted: bool,
    /// Application changes that failed after their retries (retried on the next run).
    pub app_failed: Vec<AppFailed>,
    /// Application changes applied, per op.
    pub app_applied: BTreeMap<&'static str, usize>,
    /// Each application's health in this run.
    pub apps: BTreeMap<String, AppHealth>,
    /// LDAP transactions committed (RFC 5805; 0 where writes went one operation at a time).
    pub transactions: u64,
}

/// An application change that failed.
#[derive(Clone, Debug)]
pub struct AppFailed {
    pub change: crate::apps::AppChange,
    pub error: String,
}

/// How one application fared in a run (`status` shows it).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AppHealth {
    /// The application answered (its state could be read).
    pub reachable: bool,
    pub error: Option<String>,
    pub planned: usize,
    pub applied: usize,
    pub failed: usize,
    /// Accounts whose changes have failed on consecutive runs.
    pub failing_accounts: usize,
    pub requests: u64,
    pub retries: u64,
}

impl RunOutcome {
    /// A run that decided `plan` and has applied nothing yet.
    pub fn new(plan: Plan, dry_run: bool) -> RunOutcome {
        RunOutcome {
            plan,
            applied: BTreeMap::new(),
            failed: Vec::new(),
            duration: Duration::ZERO,
            dry_run,
            details: None,
            interrupted: false,
            app_failed: Vec::new(),
            app_applied: BTreeMap::new(),
            transactions: 0,
            apps: BTreeMap::new(),
        }
    }

    pub fn exit_code(&self) -> i32 {
        if !self.plan.refusals.is_empty() {
            exit::REFUSED
        } else if !self.plan.apps_unreachable.is_empty() {
            exit::UNAVAILABLE
        } else if !self.failed.is_empty()
            || !self.app_failed.is_empty()
            || !self.plan.quarantined.is_empty()
        {
            exit::QUARANTINED
        } else {
            exit::OK
        }
    }

    /// The one-line summary `sync` ends with.
    pub fn summary_line(&self) -> String {
        let p = &self.plan;
        let verb = if self.dry_run || !p.refusals.is_empty() {
            "planned"
        } else {
            "applied"
        };
        let planned = self.dry_run || !p.refusals.is_empty();
        let ops: Vec<String> = plan::Op::ALL
            .iter()
            .map(|op| {
                let n = if planned {
                    p.count(*op)
                } else {
                    self.applied.get(op.as_str()).copied().unwrap_or(0)
                };
                (op, n)
            })
            .filter(|(op, n)| {
                *n > 0 || matches!(op, Op::Add | Op::Modify | Op::Rename | Op::Delete)
            })
            .map(|(op, n)| format!("{n} {}", op.as_str()))
            .chain(crate::apps::AppOp::ALL.iter().filter_map(|op| {
                let n = if planned {
                    p.app_changes.iter().filter(|c| c.op == *op).count()
                } else {
                    self.app_applied.get(op.as_str()).copied().unwrap_or(0)
                };
                let label = if op.as_str().starts_with("app-") {
                    ""
                } else {
                    "app "
                };
                (n > 0).then(|| format!("{n} {label}{}", op.as_str()))
            }))
            .chain(
                (!self.app_failed.is_empty())
                    .then(|| format!("{} app change(s) failed", self.app_failed.len())),
            )
            .chain(
                p.apps_unreachable
                    .keys()
                    .map(|a| format!("app {a} unreachable (its changes wait)")),
            )
            .collect();
        format!(
            "{}: {} {verb}{}; {} failed; {} quarantined; {} records, {} entries read ({} read, {} fetched{}); {:.2} s{}",
            if self.dry_run { "sync --dry-run" } else { "sync" },
            ops.join(", "),
            match self.transactions {
                0 => String::new(),
                1 => " in 1 LDAP transaction".to_string(),
                n => format!(" in {n} LDAP transactions"),
            },
            self.failed.len(),
            p.quarantined.len(),
            p.records,
            p.entries_read,
            if p.read_mode.is_empty() { "full" } else { p.read_mode.as_str() },
            p.fetched,
            if p.ranged_reads > 0 { format!(", {} ranged requests", p.ranged_reads) } else { String::new() },
            self.duration.as_secs_f64(),
            if p.refusals.is_empty() { "" } else { "; REFUSED by a safety gate, nothing written" }
        )
    }

    pub fn summary_json(&self) -> serde_json::Value {
        let mut v = plan::output::json_value(&self.plan);
        if let serde_json::Value::Object(m) = &mut v {
            m.insert("applied".into(), json!(self.applied));
            m.insert(
                "failed".into(),
                json!(self
                    .failed
                    .iter()
                    .map(|f| json!({"op": f.change.op.as_str(), "dn": f.change.dn, "key": f.change.key, "rc": f.failure.rc, "error": f.failure.to_string()}))
                    .collect::<Vec<_>>()),
            );
            m.insert(
                "duration-seconds".into(),
                json!(self.duration.as_secs_f64()),
            );
            m.insert("dry-run".into(), json!(self.dry_run));
            m.insert("transactions".into(), json!(self.transactions));
            m.insert(
                "read-mode".into(),
                json!(if self.plan.read_mode.is_empty() {
                    "full"
                } else {
                    self.plan.read_mode.as_str()
                }),
            );
            m.insert("apps".into(), json!(self.apps));
            m.insert("app-applied".into(), json!(self.app_applied));
            m.insert(
                "app-failed".into(),
                json!(self
                    .app_failed
                    .iter()
                    .map(|f| json!({"app": f.change.app, "op": f.change.op.as_str(), "account": f.change.account, "key": f.change.key, "error": f.error}))
                    .collect::<Vec<_>>()),
            );
        }
        v
    }
}

/// Why a run stopped before writing anything. Each variant has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("{0}")]
    Target(#[from] TargetError),
    #[error("{0}")]
    Mirror(#[from] MirrorError),
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Config(_) => exit::CONFIG,
            RunError::Source(_) => exit::NO_INPUT,
            RunError::Target(t) => t.exit_code(),
            RunError::Mirror(MirrorError::Locked { .. }) => exit::LOCKED,
            RunError::Mirror(_) => exit::SOFTWARE,
        }
    }
}

/// Check that the server's schema knows every attribute and object class the configuration uses.
pub fn check_schema(cfg: &Config, schema: &crate::target::schema::Schema) -> Result<(), String> {
    if schema.is_empty() {
        return Ok(()); // the server does not publish its schema to this identity
    }
    let mut problems = Vec::new();
    let u = &cfg.users;
    for a in u.attributes.keys().chain(std::iter::once(&u.anchor)) {
        if !schema.has_attr(a) {
            problems.push(format!("attribute {a} (users.attributes / users.anchor)"));
        }
    }
    if let Some(lc) = &cfg.lifecycle {
        for a in lc.disabled_attrs().keys() {
            if !schema.has_attr(a) {
                problems.push(if lc.disable_method == crate::config::DisableMethod::Ppolicy {
                    format!("attribute {a} (lifecycle.disable-method = \"ppolicy\" needs slapd's ppolicy overlay; load it, or use disable-method = \"attributes\")")
                } else {
                    format!("attribute {a} (lifecycle.disable-attributes)")
                });
            }
        }
    }
    for c in &u.object_classes {
        if !schema.has_class(c) {
            problems.push(format!("object class {c} (users.object-classes)"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: the server's schema does not define: {}",
            cfg.file.display(),
            problems.join(", ")
        ))
    }
}

/// Connect and bind, then check the schema: `check-config --online`.
pub async fn check_online(cfg: &Config) -> Result<String, RunError> {
    let mut t = LdapTarget::connect(&cfg.directory).await?;
    let schema = t.read_schema().await?;
    check_schema(cfg, &schema).map_err(|m| RunError::Target(TargetError::Schema(m)))?;
    let url = t.url.clone();
    t.unbind().await;
    Ok(url)
}

/// The users section with every attribute named as the server names it.
fn canonical_users(
    u: &crate::config::UsersConfig,
    schema: &crate::target::schema::Schema,
) -> crate::config::UsersConfig {
    if schema.is_empty() {
        return u.clone();
    }
    let c = |a: &String| schema.canonical(a);
    crate::config::UsersConfig {
        base: u.base.clone(),
        rdn: c(&u.rdn),
        object_classes: u.object_classes.clone(),
        anchor: c(&u.anchor),
        attributes: u
            .attributes
            .iter()
            .map(|(k, v)| (c(k), v.clone()))
            .collect(),
        unique: u.unique.iter().map(c).collect(),
        policy: u.policy.iter().map(|(k, v)| (c(k), *v)).collect(),
        placement: u.placement.clone(),
        correlate: u.correlate.iter().map(c).collect(),
        posix: u.posix.clone(),
    }
}

/// How a run read the directory: `full` (every managed subtree, paged) or `incremental` (only
/// what changed since the last run: Active Directory's uSNChanged, with deleted objects).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReadInfo {
    pub mode: &'static str,
    /// Entries fetched from the server (for a full read: every entry of the managed subtrees).
    pub fetched: usize,
    /// Why a full read was made when an incremental one was possible.
    pub why_full: Option<String>,
    /// Extra requests to read ranged attributes (large groups).
    pub ranged_reads: u64,
    /// The snapshot differs from the one the mirror kept (entries fetched, deleted or dropped
    /// by a present phase; always after a full read): it is saved again.
    #[serde(skip)]
    pub snapshot_changed: bool,
}

/// Where the last read stopped (small; read every run): the content-sync cookies per search,
/// or Active Directory's invocationId and USN.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ReadCursor {
    /// What was read (bases, groups, unique attributes): another configuration means a full read.
    pub fingerprint: String,
    /// Active Directory: the DC's invocationId and its highestCommittedUSN before the last read.
    pub invocation: String,
    pub usn: u64,
    /// OpenLDAP: RFC 4533 cookies by search (`entries:<base>`, `groups:<parent>`, `uniques:<base>`),
    /// base64.
    #[serde(default)]
    pub cookies: BTreeMap<String, String>,
    /// Active Directory: read the managed groups in full (the last run wrote).
    #[serde(default)]
    pub refresh_groups: bool,
    /// OpenLDAP: the highest contextCSN of the database when it was last read.
    #[serde(default)]
    pub csn: String,
    /// entryUUIDs dirbridge wrote in the last run: read again directly, because slapd's contextCSN
    /// can lag behind the last of several concurrent writes (the content sync would omit them).
    #[serde(default)]
    pub recent: Vec<String>,
    /// Unix time of the last full read (modifyTimestamp polling reads everything again after
    /// `directory.full-read-every`).
    #[serde(default)]
    pub full_at: i64,
}

impl ReadCursor {
    /// Whether the next read goes on from this cursor as far as the last run's writes go: what
    /// it wrote is read back one by one, up to [`RECENT_READ_LIMIT`] entries (more: one full read).
    fn recent_read_back(&self) -> bool {
        self.recent.len() <= RECENT_READ_LIMIT
    }
}

/// The directory as the last read left it, to which an incremental read applies the changes.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ReadSnapshot {
    pub entries: Vec<crate::model::Entry>,
    pub groups: Vec<crate::model::Entry>,
    /// Entries anywhere under base-dn that hold a unique attribute (for uniqueness).
    pub uniques: Vec<crate::model::Entry>,
}

impl ReadSnapshot {
    /// The run's view of the directory, made by moving the entries and groups (not copying:
    /// at 100,000 people each copy is about 150 MB); what is kept aside are the uniques.
    fn into_dir(
        self,
        names: &[String],
        missing_bases: &BTreeSet<String>,
    ) -> (DirSnapshot, ReadSnapshot) {
        self.into_dir_beside(names, missing_bases, || ()).0
    }

    /// [`Self::into_dir`], with `beside` run on this thread while the holders of unique values
    /// are indexed on another (at 100,000 people, 40 ms with the second core idle).
    fn into_dir_beside<R>(
        mut self,
        names: &[String],
        missing_bases: &BTreeSet<String>,
        beside: impl FnOnce() -> R,
    ) -> ((DirSnapshot, ReadSnapshot), R) {
        // One order whether the entries came from the server or from the mirror (uuid order).
        for list in [&mut self.entries, &mut self.groups, &mut self.uniques] {
            list.sort_unstable_by(|a, b| a.uuid.cmp(&b.uuid));
        }
        // A holder whose unique values are its own entry's is indexed from the entry
        // ([`taken_from`]): after a full read, the search of unique values returned a second copy
        // of every person's (at 100,000 people with uid and mail unique, ~25 MB), not kept.
        if !self.uniques.is_empty() && !self.entries.is_empty() {
            let lower: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
            let entries = &self.entries;
            self.uniques.retain(|u| {
                entries
                    .binary_search_by(|e| e.uuid.as_str().cmp(&u.uuid))
                    .map_or(true, |i| !said_by_entry(u, &entries[i], &lower))
            });
        }
        let (uniques, entries) = (&self.uniques, &self.entries);
        let (taken, r) = if entries.len() >= crate::TWO_THREADS_FROM {
            std::thread::scope(|s| {
                let indexing = s.spawn(|| taken_from(uniques, entries, names));
                let r = beside();
                let taken = indexing
                    .join()
                    .unwrap_or_else(|_| taken_from(uniques, entries, names));
                (taken, r)
            })
        } else {
            (taken_from(uniques, entries, names), beside())
        };
        (
            (
                DirSnapshot {
                    entries: self.entries,
                    taken,
                    groups: self.groups,
                    missing_bases: missing_bases.clone(),
                },
                ReadSnapshot {
                    uniques: self.uniques,
                    ..Default::default()
                },
            ),
            r,
        )
    }
}

pub const READ_CURSOR: &str = "read-cursor";
/// The configuration and day under which the mirror's settled people were found.
pub const SETTLED: &str = "settled";

/// When the settled people were found: a run skips them only with the same configuration on the
/// same day (a new day can change lifecycle states).
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct SettledMarker {
    config: String,
    today: String,
}

/// A digest of what mapping and planning a person depend on: their record's fields and their
/// entry as read (its uuid, and the digest of its DN and attributes, which an entry read back from
/// the mirror's rows knows without digesting them again).
pub fn person_digest(fields: &crate::source::FieldMap, e: &crate::model::Entry) -> u64 {
    person_digest_of(fields, &e.uuid, e.digest())
}

/// [`person_digest`] from the entry's uuid and the digest of its DN and attributes.
fn person_digest_of(fields: &crate::source::FieldMap, uuid: &String, entry: u64) -> u64 {
    crate::model::digest(&(fields, uuid, entry))
}

/// The digest ([`crate::model::Entry::digest`]) of the entry an add will make, as a read of it
/// returns it (attribute names lower-cased, values as sent): after a run that added people, the
/// next one finds them settled (not mapped again) when their entries are read back as written.
/// None where the read cannot be foretold: an attribute of several values (the add sends them in
/// no fixed order), or none.
fn added_entry_digest(c: &plan::Change) -> Option<u64> {
    if c.op != Op::Add || c.attributes.iter().any(|a| a.new.len() != 1) {
        return None;
    }
    let attrs: crate::names::NameMap<crate::names::Values> = c
        .attributes
        .iter()
        .map(|a| (a.attr.to_ascii_lowercase(), a.new.clone()))
        .collect();
    (attrs.len() == c.attributes.len()).then(|| crate::model::digest(&(&c.dn, &attrs)))
}

/// The people this run need not map again: the last run planned nothing for them, and since then
/// their record and their entry are unchanged (same digest), and none of their fields names a
/// person who changed, appeared or left (a reference such as `manager_id | person_dn` would
/// render differently). Pure: `prior` is what the mirror kept, `links` HR key → entry uuid.
/// Each settled person's key → the index in `dir.entries` of their entry (decide takes it from
/// there: no second index of 100,000 uuids).
pub fn settled_people(
    prior: &foldhash::HashMap<String, u64>,
    export: &crate::source::Export,
    dir: &DirSnapshot,
    by_uuid: &crate::model::UuidIndex<'_>,
    links: &BTreeMap<String, String>,
) -> foldhash::HashMap<String, usize> {
    if prior.is_empty() {
        return Default::default();
    }
    let mut calm: Vec<(&crate::source::Record, usize)> = Vec::new();
    let mut dirty: foldhash::HashSet<&str> = Default::default();
    let mut present: foldhash::HashSet<&str> =
        foldhash::HashSet::with_capacity_and_hasher(export.records.len(), Default::default());
    // (the entry the record is linked to, when the digest of both is as the last run left it)
    let same_as_before = |r: &crate::source::Record| {
        links
            .get(&r.key)
            .and_then(|u| by_uuid.get(u.as_str()))
            .filter(|&i| prior.get(&r.key) == Some(&person_digest(&r.fields, &dir.entries[i])))
    };
    // (each record's digest: on two threads for a large export, in record order)
    let same: Vec<Option<usize>> = crate::in_two_halves(export.records.iter().collect(), |half| {
        half.into_iter().map(same_as_before).collect()
    });
    for (r, same) in export.records.iter().zip(same) {
        present.insert(&r.key);
        match same {
            Some(i) => calm.push((r, i)),
            None => {
                dirty.insert(&r.key);
            }
        }
    }
    for k in prior.keys() {
        if !present.contains(k.as_str()) {
            dirty.insert(k);
        }
    }
    for q in &export.quarantined {
        if let Some(k) = &q.key {
            dirty.insert(k);
        }
    }
    // (most field values cannot be a changed key by their length alone: no lookup for them)
    let lengths: u128 = dirty
        .iter()
        .fold(0, |m, k| m | 1u128.checked_shl(k.len() as u32).unwrap_or(0));
    let may_name = |v: &str| {
        let v = v.trim();
        (v.len() >= 128 || lengths & (1u128 << v.len()) != 0) && dirty.contains(v)
    };
    calm.into_iter()
        .filter(|(r, _)| !r.fields.values().any(|v| may_name(v)))
        .map(|(r, i)| (r.key.clone(), i))
        .collect()
}
pub const QUIET: &str = "quiet";

/// What the last run that planned nothing saw: the next run with the same export and
/// configuration, no change in the directory and no lifecycle date reached plans nothing too.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct QuietMarker {
    pub export: String,
    pub config: String,
    /// YYYY-MM-DD: the day that run evaluated, and the next day on which the lifecycle changes.
    pub today: String,
    pub next_change: Option<String>,
    pub entries: usize,
    /// The export's records and header (a quiet run does not parse the export again).
    #[serde(default)]
    pub records: Option<usize>,
    #[serde(default)]
    pub header: Vec<String>,
}

/// SHA-256 of a file's bytes, hex.
fn file_hash(p: &std::path::Path) -> Option<String> {
    Some(bytes_hash(&std::fs::read(p).ok()?))
}

fn bytes_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The export's hash (as [`file_hash`]), sent on `hash` as soon as it is known with whether a
/// parse follows, then the export parsed from the same bytes, unless they are those the last
/// quiet run saw (`quiet`: its hash; such a run may be quiet again and need no parse: None). A
/// file that cannot be read has no hash, and its error is the parse's.
type Parsed = Result<(source::Export, String), SourceError>;

fn early_export(
    cfg: &crate::config::SourceConfig,
    quiet: Option<String>,
    since: Instant,
    hash: tokio::sync::oneshot::Sender<(Option<String>, bool)>,
    parsing: impl FnOnce(),
) -> Option<Parsed> {
    let bytes = match source::read_bytes(cfg) {
        Ok(b) => b,
        Err(e) => {
            let _ = hash.send((None, true));
            return Some(Err(e));
        }
    };
    let hashed = bytes_hash(&bytes);
    let parse = quiet.as_deref() != Some(hashed.as_str());
    let _ = hash.send((Some(hashed.clone()), parse));
    if !parse {
        return None;
    }
    parsing();
    let t0 = Instant::now();
    let parsed = source::parse(cfg, &bytes).map(|e| (e, hashed));
    tracing::debug!(target: "dirbridge::run", "export: parsed beside the directory read in {:.3} s, from {:.3} to {:.3} s of the run", t0.elapsed().as_secs_f64(), (t0 - since).as_secs_f64(), since.elapsed().as_secs_f64());
    Some(parsed)
}

/// Read and parse the export, and hash the very bytes parsed (SHA-256, as [`file_hash`]).
fn read_export(cfg: &crate::config::SourceConfig) -> Result<(source::Export, String), SourceError> {
    let bytes = source::read_bytes(cfg)?;
    Ok((source::parse(cfg, &bytes)?, bytes_hash(&bytes)))
}

pub const READ_SNAPSHOT: &str = "read-snapshot";

struct ReadScope {
    subtrees: Vec<String>,
    configured: BTreeSet<String>,
    parents: Vec<String>,
    missing_bases: BTreeSet<String>,
    names: Vec<String>,
}

impl ReadScope {
    /// What the reads ask for: the people's attributes, and the filter and attributes of the
    /// unique values under base-dn.
    fn searches(&self) -> ([&'static str; 3], String, Vec<&str>) {
        let filter = format!(
            "(|{})",
            self.names
                .iter()
                .map(|a| format!("({a}=*)"))
                .collect::<String>()
        );
        let mut attrs: Vec<&str> = self.names.iter().map(String::as_str).collect();
        attrs.push("entryUUID");
        (
            ["*", "entryUUID", crate::config::PPOLICY_LOCK_ATTR],
            filter,
            attrs,
        )
    }

    fn fingerprint(&self, base_dn: &str) -> String {
        format!(
            "{}|{}|{}|{}",
            base_dn.to_lowercase(),
            self.subtrees.join(";").to_lowercase(),
            self.parents.join(";").to_lowercase(),
            self.names.join(";").to_lowercase()
        )
    }
    fn in_subtree(&self, dn: &str) -> bool {
        let Ok(d) = crate::dn::Dn::parse(dn) else {
            return false;
        };
        !self.configured.contains(&crate::dn::normalize(dn))
            && self
                .subtrees
                .iter()
                .filter_map(|s| crate::dn::Dn::parse(s).ok())
                .any(|s| d.is_within(&s))
    }
    fn in_group_parent(&self, dn: &str) -> bool {
        let Ok(d) = crate::dn::Dn::parse(dn) else {
            return false;
        };
        self.parents
            .iter()
            .filter_map(|s| crate::dn::Dn::parse(s).ok())
            .any(|s| d.is_within(&s) && d.normalized() != s.normalized())
    }
}

async fn read_scope(
    cfg: &Config,
    users: &crate::config::UsersConfig,
    t: &mut LdapTarget,
) -> Result<ReadScope, RunError> {
    use crate::dn::{normalize, Dn};
    // Every managed subtree: users.base and the placement bases outside it.
    let mut missing_bases = BTreeSet::new();
    let mut subtrees: Vec<String> = vec![users.base.clone()];
    let mut configured: BTreeSet<String> = [normalize(&users.base)].into_iter().collect();
    let mut bases: Vec<String> = users.placement.iter().map(|p| p.base.clone()).collect();
    if let Some(b) = cfg.lifecycle.as_ref().and_then(|l| l.disabled_base.clone()) {
        bases.push(b);
    }
    for base in &bases {
        configured.insert(normalize(base));
        if !t.exists(base).await? {
            missing_bases.insert(normalize(base));
            continue;
        }
        let pd = Dn::parse(base).map_err(|e| RunError::Config(e.to_string()))?;
        let covered = subtrees
            .iter()
            .filter_map(|s| Dn::parse(s).ok())
            .any(|s| pd.is_within(&s));
        if !covered {
            subtrees.push(base.clone());
        }
    }
    let mut parents = Vec::new();
    let wanted: BTreeSet<String> = cfg.groups.iter().map(|g| g.parent.clone()).collect();
    for parent in wanted {
        if !t.exists(&parent).await? {
            missing_bases.insert(normalize(&parent));
            continue;
        }
        parents.push(parent);
    }
    let mut names: Vec<String> = users.unique.iter().cloned().collect();
    if users.posix.is_some() {
        names.push("uidNumber".into());
    }
    Ok(ReadScope {
        subtrees,
        configured,
        parents,
        missing_bases,
        names,
    })
}

const GROUP_FILTER: &str = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup)(objectClass=group))";
const GROUP_ATTRS: &[&str] = &[
    "objectClass",
    "cn",
    "member",
    "uniqueMember",
    "memberUid",
    "gidNumber",
    "sAMAccountName",
    "groupType",
    "entryUUID",
];

/// The holders of each unique attribute's values: the unique-value rows (`uniques`, what the
/// search under base-dn returned, or the rows the mirror kept of it), and each person whose entry
/// has no row there, with their entry's values (the mirror keeps no second row for a person whose
/// unique values are their entry's: see [`uniques_to_keep`]).
fn taken_from(
    uniques: &[crate::model::Entry],
    people: &[crate::model::Entry],
    names: &[String],
) -> std::collections::HashMap<String, crate::model::Holders> {
    let rules_default = crate::model::MatchRules::default();
    let rows: foldhash::HashSet<&str> = uniques.iter().map(|e| e.uuid.as_str()).collect();
    let holders = || {
        uniques
            .iter()
            .chain(people.iter().filter(|e| !rows.contains(e.uuid.as_str())))
    };
    // (a value held once, as nearly all are, costs no list: `Values` holds one inline)
    names
        .iter()
        .map(|a| {
            let held = holders().flat_map(|e| {
                e.get(a)
                    .iter()
                    .map(|v| (rules_default.fold(a, v), e.uuid.clone().into()))
            });
            (
                a.to_ascii_lowercase(),
                held.collect::<crate::model::Holders>(),
            )
        })
        .filter(|(_, held)| !held.is_empty())
        .collect()
}

fn b64(v: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(v)
}

fn unb64(v: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(v).ok()
}

/// Apply a content-sync result to the entries the last read left for this search.
fn merge_sync(
    prior: Vec<crate::model::Entry>,
    r: crate::target::ldap::SyncResult,
) -> Vec<crate::model::Entry> {
    if r.full {
        return r.changed;
    }
    let changed: BTreeSet<&str> = r.changed.iter().map(|e| e.uuid.as_str()).collect();
    let mut out: Vec<crate::model::Entry> = prior
        .into_iter()
        .filter(|e| {
            !r.deleted.contains(&e.uuid)
                && !changed.contains(e.uuid.as_str())
                && (!r.present_phase || r.present.contains(&e.uuid))
        })
        .collect();
    out.extend(r.changed);
    out
}

/// What a directory read found.
pub struct DirRead {
    pub snapshot: DirSnapshot,
    pub info: ReadInfo,
    /// What to keep for the next incremental read (None: the server offers none).
    pub keep: Option<(ReadCursor, ReadSnapshot)>,
    /// Nothing changed since the last read: `snapshot` is empty and the mirror's is the directory
    /// (see [`materialize`]).
    pub unchanged: bool,
    pub names: Vec<String>,
    pub missing_bases: BTreeSet<String>,
}

/// The directory as the mirror kept it (after a read that found nothing changed), and what
/// `beside` returns, run on this thread while the snapshot is indexed on another (None, and
/// `beside` not run, where the mirror keeps no snapshot).
fn materialize<R>(
    mirror: Option<&Mirror>,
    ahead: &SnapshotAhead,
    names: &[String],
    missing_bases: &BTreeSet<String>,
    beside: impl FnOnce() -> R,
) -> Option<(DirSnapshot, ReadSnapshot, R)> {
    let t0 = Instant::now();
    let kept = ahead.take_or_read(mirror?)?;
    let read = t0.elapsed();
    let ((dir, kept), r) = kept.into_dir_beside(names, missing_bases, beside);
    tracing::debug!(target: "dirbridge::run", entries = dir.entries.len(), uniques = kept.uniques.len(), "snapshot: rows read and decoded in {:.3} s, indexed in {:.3} s", read.as_secs_f64(), (t0.elapsed() - read).as_secs_f64());
    Some((dir, kept, r))
}

/// The mirror's snapshot rows, read and decoded on a thread of their own from early in the run
/// (with its own connection) while the run connects and asks the directory what changed: a run
/// whose export changed reads the directory incrementally and merges the changes into them. At
/// 10,000 people the rows took 19 ms after the content sync's searches, one after the other.
#[derive(Default)]
struct SnapshotAhead(std::sync::Mutex<Ahead>);

#[derive(Default)]
enum Ahead {
    #[default]
    NotStarted,
    Reading(std::thread::JoinHandle<Option<ReadSnapshot>>),
    /// Taken, or read by the run itself because it needed the rows before the read ahead began
    /// (a read begun then would be a second copy: at 100,000 people, 60 MB and 0.1 s of CPU).
    Done,
}

impl SnapshotAhead {
    /// Start reading the snapshot of the mirror at `path` (unless the run has read it already).
    fn start(&self, path: std::path::PathBuf) {
        let Ok(mut state) = self.0.lock() else {
            return;
        };
        if !matches!(*state, Ahead::NotStarted) {
            return;
        }
        // (a thread that cannot be made leaves the rows to the run's own read)
        let reading = std::thread::Builder::new()
            .name("snapshot-ahead".into())
            .spawn(move || {
                let t0 = Instant::now();
                let mirror = Mirror::open(&path).ok()?;
                // (a connection that cannot map the pages reads them as any other does)
                let _ = mirror.map_pages();
                let snap = load_read_snapshot(&mirror);
                tracing::debug!(target: "dirbridge::run", "snapshot: rows read ahead and decoded in {:.3} s", t0.elapsed().as_secs_f64());
                snap
            });
        if let Ok(reading) = reading {
            *state = Ahead::Reading(reading);
        }
    }

    /// The read will be full: the snapshot read ahead is not needed. Its thread is left to end on
    /// its own (it cannot be stopped), and what it read is freed then, not held to the end of the
    /// run beside the full read's entries.
    fn discard(&self) {
        if let Ok(mut state) = self.0.lock() {
            *state = Ahead::Done;
        }
    }

    /// The snapshot read ahead, waited for; else (none was started, or it failed) read now.
    fn take_or_read(&self, mirror: &Mirror) -> Option<ReadSnapshot> {
        let state = self
            .0
            .lock()
            .map(|mut state| std::mem::replace(&mut *state, Ahead::Done));
        match state {
            Ok(Ahead::Reading(r)) => match r.join() {
                Ok(Some(snap)) => Some(snap),
                _ => load_read_snapshot(mirror),
            },
            _ => load_read_snapshot(mirror),
        }
    }
}

/// The directory as the last read saved it in the mirror's rows (None: no usable snapshot, e.g.
/// before the first read, or from a version that kept it otherwise). The unique-value rows are
/// those the people's entries do not already say ([`uniques_to_keep`]); [`taken_from`] counts
/// the people's own values with them.
fn load_read_snapshot(mirror: &Mirror) -> Option<ReadSnapshot> {
    if mirror.get_state(READ_SNAPSHOT).ok().flatten().as_deref() != Some(SNAPSHOT_IN_ROWS) {
        return None;
    }
    let rows = mirror.read_snapshot().ok()?;
    Some(ReadSnapshot {
        entries: rows.entries,
        groups: rows.groups,
        uniques: rows.uniques,
    })
}

/// Whether the unique-value holder `u` (as the search of unique values under base-dn returned
/// it) is what the entry `e` says: the same DN and the same values of the unique attributes
/// `lower`, at least one of them.
fn said_by_entry(u: &crate::model::Entry, e: &crate::model::Entry, lower: &[String]) -> bool {
    u.dn == e.dn
        && lower.iter().any(|n| !e.get(n).is_empty())
        && lower.iter().all(|n| u.get(n) == e.get(n))
}

/// The unique-value holders that the mirror keeps in rows of their own: those the people's
/// entries do not already say. Every person's entry is under base-dn (users.base and the
/// placement bases must be), so the search of unique values returns each one holding a unique
/// value, with those values; a holder whose unique values are the entry's is made again from the
/// entry when the holders are indexed ([`taken_from`]), not read from a second row (at
/// 100,000 people, 100,000 rows and ~60 ms of a churn run before its first write). Any other
/// (outside the people's subtrees, or whose values differ from the entry's) keeps its row.
fn uniques_to_keep<'a>(
    uniques: &'a [crate::model::Entry],
    entries: &[crate::model::Entry],
    names: &[String],
) -> Vec<&'a crate::model::Entry> {
    let lower: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
    let by_uuid: foldhash::HashMap<&str, &crate::model::Entry> =
        entries.iter().map(|e| (e.uuid.as_str(), e)).collect();
    uniques
        .iter()
        .filter(|u| {
            // (a holder read back with the rest of its entry, after the run that wrote it, is the
            // same holder: only its unique values count)
            !by_uuid
                .get(u.uuid.as_str())
                .is_some_and(|e| said_by_entry(u, e, &lower))
        })
        .collect()
}

/// The value of [`READ_SNAPSHOT`] when the mirror's dir_entries, dir_groups and dir_uniques hold
/// the directory as last read.
const SNAPSHOT_IN_ROWS: &str = "rows";

/// Above this many entries written by the last run, the next run reads the directory in full
/// instead of reading them back by entryUUID (200 per search).
const RECENT_READ_LIMIT: usize = 2000;

/// Read the directory: in full the first time, then incrementally where the server allows it —
/// OpenLDAP by RFC 4533 content synchronization (refreshOnly, cookies kept in the mirror), Active
/// Directory by uSNChanged with deleted objects. A refused or unusable state means one full read,
/// logged and noted in the plan. `beside` runs on this thread while a content sync's snapshot is
/// indexed on another (not on the other paths).
#[allow(clippy::too_many_arguments)]
async fn read_directory(
    cfg: &Config,
    users: &crate::config::UsersConfig,
    t: &mut LdapTarget,
    mirror: Option<&Mirror>,
    full_read: bool,
    now_unix: i64,
    links: &std::cell::OnceCell<BTreeMap<String, String>>,
    ahead: &SnapshotAhead,
    beside: &dyn Fn(),
) -> Result<DirRead, RunError> {
    let scope = read_scope(cfg, users, t).await?;
    let fingerprint = scope.fingerprint(&cfg.directory.base_dn);
    let mut info = ReadInfo {
        mode: "full",
        ..Default::default()
    };
    let load =
        |name: &str| -> Option<String> { mirror.and_then(|m| m.get_state(name).ok().flatten()) };
    let prior_cursor: Option<ReadCursor> = if full_read {
        None
    } else {
        load(READ_CURSOR).and_then(|v| serde_json::from_str(&v).ok())
    };
    let prior_cursor = match prior_cursor {
        // (the method of reading is compared below, once it is known)
        Some(c) if c.fingerprint.trim_end_matches(POLLED) != fingerprint => {
            info.why_full =
                Some("the configuration reads other bases or attributes than the last run".into());
            None
        }
        // What the last run wrote is read again (slapd's contextCSN lag, below); after a large
        // load one paged read is far faster than thousands of reads by entryUUID.
        Some(c) if !c.recent_read_back() => {
            tracing::info!(target: "dirbridge::read", "full read: the last run wrote {} entries; one paged read is faster than reading them back one by one", c.recent.len());
            None
        }
        other => other,
    };
    let prior_snapshot = || -> Option<ReadSnapshot> { ahead.take_or_read(mirror?) };
    let (entry_attrs, uniques_filter, unique_attrs) = scope.searches();

    if cfg.directory.is_ad() {
        let pos = t.ad_position().await?;
        let usable = match &prior_cursor {
            None => None,
            Some(c) if c.invocation != pos.invocation => {
                info.why_full = Some(format!(
                    "the domain controller's invocationId changed ({} → {}): another or a restored DC",
                    c.invocation, pos.invocation
                ));
                None
            }
            Some(c) if c.usn > pos.highest_usn => {
                info.why_full = Some(format!(
                    "the DC's highestCommittedUSN ({}) is below the last run's ({}): a restored DC",
                    pos.highest_usn, c.usn
                ));
                None
            }
            Some(c) => prior_snapshot().map(|s| (c.clone(), s)),
        };
        if usable.is_none() {
            ahead.discard();
        }
        if let Some((cursor, mut snap)) = usable {
            let mut regroup = 0;
            if cursor.refresh_groups {
                let mut groups = Vec::new();
                for parent in &scope.parents {
                    groups.extend(t.search(parent, GROUP_FILTER, GROUP_ATTRS).await?);
                }
                regroup = groups.len();
                snap.groups = groups;
            }
            let (snapshot, kept, fetched) =
                read_ad_incremental(cfg, &scope, t, snap, cursor.usn, &pos).await?;
            let fetched = fetched + regroup;
            info.mode = "incremental";
            info.fetched = fetched;
            info.snapshot_changed = fetched > 0;
            info.ranged_reads = t.ranged_reads.load(std::sync::atomic::Ordering::Relaxed);
            let cursor = ReadCursor {
                fingerprint,
                invocation: pos.invocation.clone(),
                usn: pos.highest_usn,
                cookies: BTreeMap::new(),
                csn: String::new(),
                refresh_groups: false,
                recent: Vec::new(),
                full_at: now_unix,
            };
            return Ok(DirRead {
                snapshot,
                info,
                keep: Some((cursor, kept)),
                unchanged: false,
                names: scope.names.clone(),
                missing_bases: BTreeSet::new(),
            });
        }
        let (snapshot, kept) = read_full(cfg, &scope, t, &mut info).await?;
        let cursor = ReadCursor {
            fingerprint,
            invocation: pos.invocation,
            usn: pos.highest_usn,
            cookies: BTreeMap::new(),
            csn: String::new(),
            refresh_groups: false,
            recent: Vec::new(),
            full_at: now_unix,
        };
        if let Some(w) = &info.why_full {
            tracing::warn!(target: "dirbridge::read", "full read: {w}");
        }
        return Ok(DirRead {
            snapshot,
            info,
            keep: Some((cursor, kept)),
            unchanged: false,
            names: scope.names.clone(),
            missing_bases: BTreeSet::new(),
        });
    }

    // Without RFC 4533 (another server, or `content-sync = false`): modifyTimestamp polling, with
    // a full read at least every `full-read-every`.
    let polling = !cfg.directory.content_sync || !t.supports_content_sync().await?;
    // Poll marks are not content-sync cookies: a change of method is a change of fingerprint.
    let fingerprint = if polling {
        format!("{fingerprint}{POLLED}")
    } else {
        fingerprint
    };
    let prior_cursor = match prior_cursor {
        Some(c) if c.fingerprint != fingerprint => {
            info.why_full = Some("the directory is read by another method than the last run (content sync or modifyTimestamp polling)".into());
            None
        }
        Some(c)
            if polling
                && now_unix - c.full_at >= cfg.directory.full_read_every.as_secs() as i64 =>
        {
            tracing::info!(target: "dirbridge::read", "full read: the last one is older than directory.full-read-every ({})", humantime::format_duration(cfg.directory.full_read_every));
            None
        }
        other => other,
    };
    // OpenLDAP: one content-sync refresh per search, each with its own cookie — unless the
    // database is not the one the cookies come from (a fresh one under the same suffix: another
    // entryUUID; a restore from an older backup: an older contextCSN). Then one full read.
    let (db_id, db_csn) = t.database_position(&cfg.directory.base_dn).await?;
    let prior_cursor = match prior_cursor {
        Some(c) if !c.invocation.is_empty() && c.invocation != db_id => {
            let w = format!(
                "the directory's database is not the one the last run read (its entryUUID changed: {} → {db_id}); a new or rebuilt database",
                c.invocation
            );
            tracing::warn!(target: "dirbridge::read", "full read: {w}");
            info.why_full = Some(w);
            None
        }
        Some(c) if !c.csn.is_empty() && db_csn < c.csn => {
            let w = format!(
                "the directory's contextCSN went back ({} → {db_csn}): restored from an older backup",
                c.csn
            );
            tracing::warn!(target: "dirbridge::read", "full read: {w}");
            info.why_full = Some(w);
            None
        }
        other => other,
    };
    let have_snapshot = prior_cursor.is_some();
    if !have_snapshot {
        ahead.discard();
    }
    let mut cookies: BTreeMap<String, String> = BTreeMap::new();
    let mut incremental = have_snapshot;
    let mut fetched = 0usize;
    let mut searches: Vec<(String, String, String, Vec<&str>)> = Vec::new();
    for base in &scope.subtrees {
        searches.push((
            format!("entries:{base}"),
            base.clone(),
            "(objectClass=*)".into(),
            entry_attrs.to_vec(),
        ));
    }
    for parent in &scope.parents {
        searches.push((
            format!("groups:{parent}"),
            parent.clone(),
            GROUP_FILTER.into(),
            GROUP_ATTRS.to_vec(),
        ));
    }
    if !scope.names.is_empty() {
        searches.push((
            format!("uniques:{}", cfg.directory.base_dn),
            cfg.directory.base_dn.clone(),
            uniques_filter.clone(),
            unique_attrs.clone(),
        ));
    }
    let mut new_entries: Vec<crate::model::Entry> = Vec::new();
    let mut new_groups: Vec<crate::model::Entry> = Vec::new();
    let mut new_uniques: Vec<crate::model::Entry> = Vec::new();
    let mut results: Vec<(String, String, crate::target::ldap::SyncResult)> = Vec::new();
    // What the last run wrote is read again by entryUUID (slapd's contextCSN lag, below): known
    // from the cursor, so read while the content sync runs, not after it (a round trip of 2-3
    // ms before a 10,000-person churn's first write). Used only if the read stays incremental.
    let t: &LdapTarget = t;
    let recent_wanted: Vec<String> = match &prior_cursor {
        Some(c) if have_snapshot => c.recent.clone(),
        _ => Vec::new(),
    };
    let recent_read = read_by_uuid(t, &scope, &recent_wanted, &entry_attrs);
    let sync_read = async {
        for (key, base, filter, attrs) in &searches {
            let cookie = if have_snapshot {
                prior_cursor
                    .as_ref()
                    .and_then(|c| c.cookies.get(key))
                    .and_then(|c| unb64(c))
            } else {
                None
            };
            let had = cookie.is_some();
            if !had {
                incremental = false;
            }
            let mut r = if polling {
                poll_search(t, base, filter, attrs, cookie.as_deref()).await?
            } else if had {
                t.sync_search(base, filter, attrs, cookie).await?
            } else {
                full_with_cookie(t, base, filter, attrs).await?
            };
            if r.refresh_required {
                let w = format!(
                    "the server refused the content-sync cookie of {base} (e-syncRefreshRequired)"
                );
                tracing::warn!(target: "dirbridge::read", "full read: {w}");
                info.why_full = Some(w);
                incremental = false;
                r = full_with_cookie(t, base, filter, attrs).await?;
            }
            // Entries transferred; deleted entryUUIDs are only IDs (and may be anyone's in the
            // database: syncprov's session log is not limited to the search base).
            fetched += r.changed.len();
            match (
                &r.cookie,
                prior_cursor.as_ref().and_then(|c| c.cookies.get(key)),
            ) {
                (Some(c), _) => {
                    cookies.insert(key.clone(), b64(c));
                }
                // Nothing changed and no new cookie: the old one still holds.
                (None, Some(old)) if !r.full => {
                    cookies.insert(key.clone(), old.clone());
                }
                _ => {}
            }
            results.push((key.clone(), base.clone(), r));
        }
        Ok::<(), RunError>(())
    };
    let (synced, recent_found) = futures_util::future::join(sync_read, recent_read).await;
    synced?;
    // Nothing changed anywhere since the last run (and the last run wrote nothing): the snapshot
    // the mirror keeps is the directory. The caller may not even need it (a quiet run).
    let recent_empty = prior_cursor.as_ref().is_none_or(|c| c.recent.is_empty());
    let mut unchanged = incremental
        && recent_empty
        && results
            .iter()
            .all(|(_, _, r)| !r.full && !r.present_phase && r.changed.is_empty());
    let deleted: BTreeSet<String> = results
        .iter()
        .flat_map(|(_, _, r)| r.deleted.iter().cloned())
        .collect();
    let reshaped = results.iter().any(|(_, _, r)| r.present_phase || r.full);
    // (loaded at most once: a caching mirror hands its snapshot over)
    let mut prior_loaded: Option<ReadSnapshot> = None;
    if unchanged && !deleted.is_empty() {
        // Deletes elsewhere in the database do not change what dirbridge manages.
        let known = prior_snapshot().unwrap_or_default();
        unchanged = !known
            .entries
            .iter()
            .chain(known.groups.iter())
            .chain(known.uniques.iter())
            .any(|e| deleted.contains(&e.uuid));
        prior_loaded = Some(known);
    }
    info.mode = if incremental { "incremental" } else { "full" };
    if unchanged {
        info.fetched = 0;
        if let (Some(m), Some(k)) = (mirror, prior_loaded) {
            m.keep_snapshot(crate::mirror::SnapshotRows {
                entries: k.entries,
                groups: k.groups,
                uniques: k.uniques,
            });
        }
        return Ok(DirRead {
            snapshot: DirSnapshot::default(),
            info,
            keep: Some((
                ReadCursor {
                    fingerprint,
                    cookies,
                    invocation: db_id,
                    csn: db_csn,
                    full_at: prior_cursor.as_ref().map(|c| c.full_at).unwrap_or(now_unix),
                    ..Default::default()
                },
                ReadSnapshot::default(),
            )),
            unchanged: true,
            names: scope.names.clone(),
            missing_bases: scope.missing_bases.clone(),
        });
    }
    let mut snap = match &prior_cursor {
        Some(_) => prior_loaded.or_else(prior_snapshot).unwrap_or_default(),
        None => ReadSnapshot::default(),
    };
    // (the mirror's links, needed below: read on another thread while the read is merged into
    // the snapshot, 25 ms at 100,000 people)
    let links_read = match (mirror, links.get()) {
        (Some(m), None) => m.links_on_another_thread(),
        _ => None,
    };
    // Where each entry was, to see deletes and renames made by others (below).
    // Only entries the read reports (changed, deleted, or anything after a present phase) can have
    // moved: the merge keeps every other prior entry as it was.
    let any_present_phase = results.iter().any(|(_, _, r)| r.present_phase || r.full);
    let reported: foldhash::HashSet<&str> = results
        .iter()
        .flat_map(|(_, _, r)| {
            r.changed
                .iter()
                .map(|e| e.uuid.as_str())
                .chain(r.deleted.iter().map(String::as_str))
        })
        .collect();
    let before: Vec<(String, String)> = snap
        .entries
        .iter()
        .filter(|e| any_present_phase || reported.contains(e.uuid.as_str()))
        .map(|e| (e.uuid.clone(), e.dn.clone()))
        .collect();
    drop(reported);
    // With one people subtree every prior entry is in it (the last read put it there).
    let one_subtree = results
        .iter()
        .filter(|(k, _, _)| k.starts_with("entries:"))
        .count()
        == 1;
    let mut fetched_entries = 0usize;
    for (key, base, r) in results {
        let base_dn = crate::dn::Dn::parse(&base).ok();
        let within = |e: &crate::model::Entry| {
            crate::dn::Dn::parse(&e.dn)
                .ok()
                .zip(base_dn.as_ref())
                .is_some_and(|(d, b)| d.is_within(b))
        };
        if key.starts_with("entries:") {
            // entries of other subtrees stay for their own search
            let (prior, rest): (Vec<crate::model::Entry>, Vec<crate::model::Entry>) =
                std::mem::take(&mut snap.entries)
                    .into_iter()
                    .partition(|e| one_subtree || within(e));
            snap.entries = rest;
            fetched_entries += r.changed.len();
            let merged = merge_sync(prior, r);
            if new_entries.is_empty() {
                new_entries = merged; // (moved: a full read returns 100,000 entries)
            } else {
                new_entries.extend(merged);
            }
        } else if key.starts_with("groups:") {
            let prior: Vec<crate::model::Entry> =
                snap.groups.iter().filter(|e| within(e)).cloned().collect();
            new_groups.extend(merge_sync(prior, r));
        } else {
            let prior = std::mem::take(&mut snap.uniques);
            let merged = merge_sync(prior, r);
            if new_uniques.is_empty() {
                new_uniques = merged;
            } else {
                new_uniques.extend(merged);
            }
        }
    }
    // Entries: the configured bases themselves are not people; one entry per uuid. (With one
    // people subtree the merge leaves one entry per uuid, and the prior entries passed this
    // before: only those the read returned are looked at.)
    let split = if one_subtree && !any_present_phase {
        // (merge_sync puts what the read returned last)
        new_entries.len().saturating_sub(fetched_entries)
    } else {
        0
    };
    let fresh = new_entries.split_off(split);
    let mut seen = BTreeSet::new();
    new_entries.extend(fresh.into_iter().filter(|e| {
        !scope.configured.contains(&crate::dn::normalize(&e.dn)) && seen.insert(e.uuid.clone())
    }));
    let mut seen = BTreeSet::new();
    new_groups.retain(|e| seen.insert(e.uuid.clone()));
    // An entry deleted or renamed by someone else: slapd's refint overlay rewrites the DN-valued
    // attributes pointing at it (manager, member) without a new entryCSN or modifyTimestamp, so
    // neither content sync nor polling sees those entries change. Read the people again in full.
    if incremental && !before.is_empty() {
        let recent: BTreeSet<&str> = prior_cursor
            .as_ref()
            .map(|c| c.recent.iter().map(String::as_str).collect())
            .unwrap_or_default();
        // (of the entries that may have moved: those the read reported, unless it said what is
        // present; not a map of all 100,000)
        let maybe: foldhash::HashSet<&str> = before.iter().map(|(u, _)| u.as_str()).collect();
        let now: foldhash::HashMap<&str, &str> = new_entries
            .iter()
            .filter(|e| maybe.contains(e.uuid.as_str()))
            .map(|e| (e.uuid.as_str(), e.dn.as_str()))
            .collect();
        let moved = before.iter().find(|(u, dn)| {
            !recent.contains(u.as_str())
                && now
                    .get(u.as_str())
                    .is_none_or(|d| d != dn && crate::dn::normalize(d) != crate::dn::normalize(dn))
        });
        if let Some((u, dn)) = moved {
            let w = format!(
                "{dn} (entryUUID {u}) was deleted or renamed outside dirbridge: entries that referred to it may have changed without a trace"
            );
            tracing::info!(target: "dirbridge::read", "reading the people again in full: {w}");
            let mut all = Vec::new();
            let mut seen = BTreeSet::new();
            for base in &scope.subtrees {
                for e in t.search(base, "(objectClass=*)", &entry_attrs).await? {
                    if !scope.configured.contains(&crate::dn::normalize(&e.dn))
                        && seen.insert(e.uuid.clone())
                    {
                        all.push(e);
                    }
                }
            }
            fetched += all.len();
            new_entries = all;
        }
    }
    // slapd's syncprov can leave contextCSN behind the last of several concurrent writes; a
    // refresh then omits entries written after it until the next write moves it on. What the last
    // run wrote, and entries the mirror links that the refresh did not return, are read directly
    // (by entryUUID).
    if let Some(m) = mirror {
        let have: foldhash::HashSet<&str> = new_entries.iter().map(|e| e.uuid.as_str()).collect();
        let recent: BTreeSet<&str> = if incremental {
            prior_cursor
                .as_ref()
                .map(|c| c.recent.iter().map(String::as_str).collect())
                .unwrap_or_default()
        } else {
            BTreeSet::new()
        };
        let links = match links.get() {
            Some(l) => l,
            None => {
                let l = match links_read.map(|h| h.join()) {
                    Some(Ok(Ok(l))) => l,
                    _ => m.links()?,
                };
                links.get_or_init(|| l)
            }
        };
        let missing: Vec<String> = links
            .values()
            .filter(|u| !have.contains(u.as_str()) && !recent.contains(u.as_str()))
            .cloned()
            .collect();
        // (what the last run wrote was read beside the content sync, above)
        let mut read_again = if recent.is_empty() {
            Vec::new()
        } else {
            recent_found?
        };
        let refetch: BTreeSet<&str> = missing
            .iter()
            .map(String::as_str)
            .chain(recent.iter().copied())
            .collect();
        new_entries.retain(|e| !refetch.contains(e.uuid.as_str()));
        new_uniques.retain(|e| !refetch.contains(e.uuid.as_str()));
        if !missing.is_empty() || !recent.is_empty() {
            tracing::info!(target: "dirbridge::read", missing = missing.len() + recent.len(), "reading linked entries the content sync did not return");
        }
        read_again.extend(read_by_uuid(t, &scope, &missing, &entry_attrs).await?);
        fetched += read_again.len();
        // (the entries read again were taken out of the uniques above)
        let mut unique_uuids: BTreeSet<String> = BTreeSet::new();
        for e in read_again {
            if scope.names.iter().any(|a| !e.get(a).is_empty())
                && unique_uuids.insert(e.uuid.clone())
            {
                new_uniques.push(e.clone());
            }
            new_entries.push(e);
        }
    }
    info.mode = if incremental { "incremental" } else { "full" };
    info.fetched = fetched;
    info.snapshot_changed = !incremental || fetched > 0 || !deleted.is_empty() || reshaped;
    // (`beside` runs while the holders of unique values are indexed)
    let ((snapshot, kept), ()) = ReadSnapshot {
        entries: new_entries,
        groups: new_groups,
        uniques: new_uniques,
    }
    .into_dir_beside(&scope.names, &scope.missing_bases, beside);
    let full_at = match &prior_cursor {
        Some(c) if incremental => c.full_at,
        _ => now_unix,
    };
    Ok(DirRead {
        snapshot,
        info,
        keep: Some((
            ReadCursor {
                fingerprint,
                cookies,
                invocation: db_id,
                csn: db_csn,
                full_at,
                ..Default::default()
            },
            kept,
        )),
        unchanged: false,
        names: scope.names.clone(),
        missing_bases: BTreeSet::new(),
    })
}

/// The entries of `uuids` under the people's subtrees (by entryUUID, 200 to a search), without
/// the configured bases themselves.
async fn read_by_uuid(
    t: &LdapTarget,
    scope: &ReadScope,
    uuids: &[String],
    attrs: &[&str],
) -> Result<Vec<crate::model::Entry>, RunError> {
    let mut out = Vec::new();
    for chunk in uuids.chunks(200) {
        let filter = format!(
            "(|{})",
            chunk
                .iter()
                .map(|u| format!("(entryUUID={})", crate::dn::escape_filter(u)))
                .collect::<String>()
        );
        for base in &scope.subtrees {
            out.extend(
                t.search(base, &filter, attrs)
                    .await?
                    .into_iter()
                    .filter(|e| !scope.configured.contains(&crate::dn::normalize(&e.dn))),
            );
        }
    }
    Ok(out)
}

/// A full read of one search: the content-sync cookie first (a refresh that matches nothing),
/// then every entry by a paged search — authoritative even when slapd's contextCSN lags behind a
/// concurrent write. Changes between the two are read again next time.
async fn full_with_cookie(
    t: &LdapTarget,
    base: &str,
    filter: &str,
    attrs: &[&str],
) -> Result<crate::target::ldap::SyncResult, RunError> {
    let mark = t
        .sync_search(base, "(&(objectClass=*)(!(objectClass=*)))", &["1.1"], None)
        .await?;
    let changed = t.search(base, filter, attrs).await?;
    Ok(crate::target::ldap::SyncResult {
        changed,
        cookie: mark.cookie,
        full: true,
        ..Default::default()
    })
}

/// Changes journaled as pending in one transaction, beside the writes (see the phases in
/// [`run`]): about 4 ms of the run's thread each at 15 µs a row, while the changes already
/// in flight keep the server busy.
const JOURNAL_CHUNK: usize = 256;

/// A phase's journal, written on the run's thread beside its directory writes (joined with
/// them): the pending rows of `batch` in transactions of `chunk`, each counted on `journaled`
/// once committed (a change is sent only then), then the answers from `answered`, recorded
/// `JOURNAL_CHUNK` at a time (a transaction per answer cost the writes a sixth of their time)
/// until the writes end and drop its sender. Returns the rows' ids, the time the pending rows
/// took, and which answers were recorded. On an error `journaled` is dropped: what is not
/// journaled is not sent.
async fn journal_beside(
    mirror: &mut Mirror,
    clock: &dyn Clock,
    run_id: i64,
    batch: &[&Change],
    chunk: usize,
    journaled: tokio::sync::watch::Sender<usize>,
    mut answered: tokio::sync::mpsc::UnboundedReceiver<(usize, bool, String)>,
) -> Result<(Vec<i64>, Duration, Vec<bool>), MirrorError> {
    let t0 = Instant::now();
    let now = clock.rfc3339();
    let mut ids: Vec<i64> = Vec::with_capacity(batch.len());
    let mut recorded = vec![false; batch.len()];
    let mut pending_took = None;
    let mut parts = batch.chunks(chunk.max(1));
    let mut answers = Vec::new();
    loop {
        let more = match parts.next() {
            Some(part) => {
                let part_ids =
                    beside_writes(mirror, |m| m.journal_pending(run_id, part, &now)).await?;
                ids.extend(part_ids);
                journaled.send_replace(ids.len());
                tokio::task::yield_now().await;
                true
            }
            None => {
                pending_took.get_or_insert(t0.elapsed());
                match answered.recv().await {
                    Some(a) => {
                        answers.push(a);
                        true
                    }
                    None => false,
                }
            }
        };
        answers.extend(std::iter::from_fn(|| answered.try_recv().ok()));
        if answers.len() >= JOURNAL_CHUNK || (!more && !answers.is_empty()) {
            let rows: Vec<(i64, bool, String)> = answers
                .drain(..)
                .filter_map(|(i, ok, text)| {
                    let id = *ids.get(i)?;
                    recorded[i] = true;
                    Some((id, ok, text))
                })
                .collect();
            beside_writes(mirror, |m| m.journal_done(&rows, &clock.rfc3339())).await?;
        }
        if !more {
            return Ok((ids, pending_took.unwrap_or_default(), recorded));
        }
    }
}

/// A mirror write of the run's connection while its directory writes are in flight, on the same
/// thread: where the connection beside them (`Aside`) holds the database's one write lock, the
/// run goes on polling the directory writes and tries again a millisecond later, up to
/// `mirror::BUSY_TIMEOUT` (the connection's own busy wait must be off: SQLite's busy handler
/// sleeps, 100 ms a try after the first 180 ms, and the whole thread with it, so the writes
/// stalled while the rows beside them were written).
async fn beside_writes<T>(
    mirror: &mut Mirror,
    mut write: impl FnMut(&mut Mirror) -> Result<T, MirrorError>,
) -> Result<T, MirrorError> {
    let started = Instant::now();
    loop {
        match write(mirror) {
            Err(e) if e.is_busy() && started.elapsed() < crate::mirror::BUSY_TIMEOUT => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            other => return other,
        }
    }
}

/// Appended to the read fingerprint when the directory is polled by modifyTimestamp.
const POLLED: &str = "|modifyTimestamp";

/// Seconds since 1970 by the run's clock.
fn unix_secs(clock: &dyn Clock) -> i64 {
    clock
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A short, stable digest (hex) of some text.
fn digest(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The state a modifyTimestamp poll leaves for the next one (kept where a content-sync cookie
/// would be).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct PollMark {
    /// The newest modifyTimestamp seen (generalized time); the next poll asks for entries
    /// modified at or after it.
    stamp: String,
    /// Digest of the sorted entryUUIDs the search returned: the same digest means nothing left.
    present: String,
    /// Entries whose modifyTimestamp is `stamp`, with a digest of their content: fetched again
    /// by the next poll (same second), they count as changed only if the content differs.
    edge: BTreeMap<String, String>,
}

fn entry_digest(e: &crate::model::Entry) -> String {
    digest(&format!(
        "{}\n{}",
        e.dn,
        serde_json::to_string(&e.attrs).unwrap_or_default()
    ))
}

/// Servers without content synchronization (or `directory.content-sync = false`): the entries
/// modified since the last poll (`modifyTimestamp` at or after the newest one seen), and, to find
/// deletions, the entryUUIDs still there (a search returning nothing else). Without a mark: every
/// entry. Returned in the shape of a content-sync result, so both share the rest of the read.
async fn poll_search(
    t: &LdapTarget,
    base: &str,
    filter: &str,
    attrs: &[&str],
    mark: Option<&[u8]>,
) -> Result<crate::target::ldap::SyncResult, RunError> {
    let mark: Option<PollMark> = mark.and_then(|m| serde_json::from_slice(m).ok());
    let asked = attrs
        .iter()
        .any(|a| a.eq_ignore_ascii_case("modifyTimestamp"));
    let mut with_ts = attrs.to_vec();
    if !asked {
        with_ts.push("modifyTimestamp");
    }
    let full = mark.is_none();
    let mut changed = match &mark {
        Some(m) if !m.stamp.is_empty() => {
            let f = format!(
                "(&{filter}(modifyTimestamp>={}))",
                crate::dn::escape_filter(&m.stamp)
            );
            t.search(base, &f, &with_ts).await?
        }
        _ => t.search(base, filter, &with_ts).await?,
    };
    let old_stamp = mark.as_ref().map(|m| m.stamp.clone()).unwrap_or_default();
    let mut newest = old_stamp.clone();
    let mut stamps = Vec::with_capacity(changed.len());
    for e in changed.iter_mut() {
        e.changed();
        let ts = if asked {
            e.get("modifyTimestamp").first().cloned()
        } else {
            e.attrs
                .remove("modifytimestamp")
                .and_then(|v| v.into_iter().next())
        }
        .unwrap_or_default();
        if ts > newest {
            newest = ts.clone();
        }
        stamps.push(ts);
    }
    // The edge second: entries at the old stamp that are as they were are not changes.
    let mut edge = BTreeMap::new();
    let mut kept = Vec::with_capacity(changed.len());
    for (e, ts) in changed.into_iter().zip(stamps) {
        let d = entry_digest(&e);
        let same_as_before = ts == old_stamp
            && mark
                .as_ref()
                .and_then(|m| m.edge.get(&e.uuid))
                .is_some_and(|old| *old == d);
        if ts == newest {
            edge.insert(e.uuid.clone(), d);
        }
        if !same_as_before {
            kept.push(e);
        }
    }
    if newest == old_stamp {
        // nothing newer: the entries of the old edge second that were not fetched again stay in it
        if let Some(m) = &mark {
            for (u, d) in &m.edge {
                edge.entry(u.clone()).or_insert_with(|| d.clone());
            }
        }
    }
    let present: std::collections::HashSet<String> = if full {
        kept.iter().map(|e| e.uuid.clone()).collect()
    } else {
        t.search(base, filter, &["entryUUID"])
            .await?
            .into_iter()
            .map(|e| e.uuid)
            .collect()
    };
    let mut ids: Vec<&str> = present.iter().map(String::as_str).collect();
    ids.sort_unstable();
    let present_digest = digest(&ids.join("\n"));
    let present_phase = !full && mark.as_ref().is_none_or(|m| m.present != present_digest);
    let next = PollMark {
        stamp: newest,
        present: present_digest,
        edge,
    };
    Ok(crate::target::ldap::SyncResult {
        changed: kept,
        present: if present_phase {
            present
        } else {
            Default::default()
        },
        present_phase,
        cookie: serde_json::to_vec(&next).ok(),
        full,
        ..Default::default()
    })
}

/// Everything, paged.
async fn read_full(
    cfg: &Config,
    scope: &ReadScope,
    t: &mut LdapTarget,
    info: &mut ReadInfo,
) -> Result<(DirSnapshot, ReadSnapshot), RunError> {
    let (entry_attrs, uniques_filter, unique_attrs) = scope.searches();
    let mut seen = BTreeSet::new();
    let mut entries = Vec::new();
    for base in &scope.subtrees {
        for e in t.search(base, "(objectClass=*)", &entry_attrs).await? {
            if scope.configured.contains(&crate::dn::normalize(&e.dn))
                || !seen.insert(e.uuid.clone())
            {
                continue;
            }
            entries.push(e);
        }
    }
    // Managed groups: everything group-like under the rules' parents.
    let mut groups = Vec::new();
    let mut seen_groups = BTreeSet::new();
    for parent in &scope.parents {
        for e in t.search(parent, GROUP_FILTER, GROUP_ATTRS).await? {
            if seen_groups.insert(e.uuid.clone()) {
                groups.push(e);
            }
        }
    }
    let mut uniques = Vec::new();
    if !scope.names.is_empty() {
        uniques = t
            .search(&cfg.directory.base_dn, &uniques_filter, &unique_attrs)
            .await?;
    }
    info.fetched = entries.len() + groups.len() + uniques.len();
    info.ranged_reads = t.ranged_reads.load(std::sync::atomic::Ordering::Relaxed);
    Ok(ReadSnapshot {
        entries,
        groups,
        uniques,
    }
    .into_dir(&scope.names, &scope.missing_bases))
}

/// Active Directory, incrementally: the objects whose uSNChanged is above the last run's
/// highestCommittedUSN, and the objects deleted since (isDeleted, with the show-deleted control),
/// applied to the state the mirror kept.
async fn read_ad_incremental(
    cfg: &Config,
    scope: &ReadScope,
    t: &mut LdapTarget,
    mut st: ReadSnapshot,
    usn: u64,
    pos: &crate::target::ldap::AdPosition,
) -> Result<(DirSnapshot, ReadSnapshot, usize), RunError> {
    let from = usn + 1;
    let mut changed = t
        .search(
            &cfg.directory.base_dn,
            &format!("(&(uSNChanged>={from})(objectClass=user))"),
            &["*", "entryUUID", "uSNChanged"],
        )
        .await?;
    let mut group_attrs = GROUP_ATTRS.to_vec();
    group_attrs.push("uSNChanged");
    changed.extend(
        t.search(
            &cfg.directory.base_dn,
            &format!("(&(uSNChanged>={from})(objectClass=group))"),
            &group_attrs,
        )
        .await?,
    );
    let deleted = t
        .search_deleted(
            &pos.naming_context,
            &format!("(&(isDeleted=TRUE)(uSNChanged>={from}))"),
        )
        .await?;
    let fetched = changed.len() + deleted.len();
    tracing::info!(target: "dirbridge::read", changed = changed.len(), deleted = deleted.len(), "incremental read from uSN {from}");
    let gone: BTreeSet<String> = changed
        .iter()
        .map(|e| e.uuid.clone())
        .chain(deleted.iter().cloned())
        .collect();
    st.entries.retain(|e| !gone.contains(&e.uuid));
    st.groups.retain(|e| !gone.contains(&e.uuid));
    st.uniques.retain(|e| !gone.contains(&e.uuid));
    let base = crate::dn::Dn::parse(&cfg.directory.base_dn).ok();
    for e in changed {
        let is_group = e
            .get("objectClass")
            .iter()
            .any(|c| c.eq_ignore_ascii_case("group"));
        if is_group && scope.in_group_parent(&e.dn) {
            st.groups.push(e.clone());
        } else if !is_group && scope.in_subtree(&e.dn) {
            st.entries.push(e.clone());
        }
        let under_base = match (&base, crate::dn::Dn::parse(&e.dn)) {
            (Some(b), Ok(d)) => d.is_within(b),
            _ => false,
        };
        if under_base && scope.names.iter().any(|a| !e.get(a).is_empty()) {
            st.uniques.push(e);
        }
    }
    let (snap, st) = st.into_dir(&scope.names, &scope.missing_bases);
    Ok((snap, st, fetched))
}

/// Where a run's time went, logged at info level (`-v`) when it ends.
struct Laps {
    last: Instant,
    laps: Vec<(&'static str, Duration, u64, u64)>,
}

/// A memory figure of this process from /proc/self/status, in MB: `VmRSS` (resident now) or
/// `VmHWM` (peak resident). 0 where /proc is not there.
pub fn memory_mb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .map(|kb: u64| kb / 1024)
        .unwrap_or(0)
}

impl Laps {
    fn new(started: Instant) -> Self {
        Laps {
            last: started,
            laps: Vec::new(),
        }
    }
    fn lap(&mut self, what: &'static str) {
        let now = Instant::now();
        self.laps.push((
            what,
            now - self.last,
            memory_mb("VmRSS"),
            memory_mb("VmHWM"),
        ));
        self.last = now;
    }
    fn log(&self) {
        let parts: Vec<String> = self
            .laps
            .iter()
            .filter(|(_, d, _, _)| d.as_millis() > 0)
            .map(|(w, d, m, hwm)| format!("{w} {:.2} s ({m}/{hwm} MB)", d.as_secs_f64()))
            .collect();
        tracing::info!(target: "dirbridge::run", "time (and resident memory after it / peak so far): {}", parts.join(", "));
    }
}

/// Everything a run decides, from what it read (pure: no I/O, `today` is given).
pub struct DecideInput<'a> {
    pub cfg: &'a Config,
    /// `[users]` with the server's attribute names.
    pub users: &'a crate::config::UsersConfig,
    pub mapper: &'a Mapper,
    pub export: &'a crate::source::Export,
    pub dir: &'a DirSnapshot,
    pub rules: &'a crate::model::MatchRules,
    pub links: &'a BTreeMap<String, String>,
    pub departures: &'a BTreeMap<String, jiff::civil::Date>,
    pub created: &'a BTreeSet<String>,
    /// Every uidNumber the mirror ever gave (HR key → number).
    pub posix_ids: &'a BTreeMap<String, u32>,
    pub today: jiff::civil::Date,
    pub only: Option<&'a str>,
    /// Each application's state as read (or why it could not be), and its links in the mirror.
    pub apps: &'a BTreeMap<String, AppInput>,
    /// People settled since the last run (see [`settled_people`]): not mapped again. HR key →
    /// the index in `dir.entries` of the entry they were settled with, which `links` links
    /// them to.
    pub settled: &'a foldhash::HashMap<String, usize>,
    /// Keep every desired entry whole in the decision (explain and report show them); otherwise
    /// a new person's values move into their add change, and their desired entry keeps its key,
    /// DN and record only.
    pub keep_desired: bool,
    /// `dir`'s [`crate::model::UuidIndex`], when the run made it already (else decide makes it).
    pub uuid_index: Option<&'a crate::model::UuidIndex<'a>>,
}

/// One application as a run found it.
#[derive(Clone, Debug)]
pub struct AppInput {
    pub state: Result<crate::apps::AppState, String>,
    pub links: BTreeMap<String, crate::apps::AppLink>,
}

/// One application's accounts and plan.
#[derive(Clone, Debug, Default)]
pub struct AppDecision {
    pub accounts: Vec<crate::apps::Account>,
    pub plan: crate::apps::AppPlan,
}

/// What [`decide`] found: the plan, and the pieces `explain` and the applier need.
pub struct Decision {
    pub plan: Plan,
    pub linking: link::Linking,
    pub mapped: crate::mapping::MapOutput,
    pub groups_out: crate::mapping::groups::GroupsOut,
    pub overlay: crate::lifecycle::Overlay,
    /// uidNumbers given in this run, to keep in the mirror.
    pub posix_new: BTreeMap<String, u32>,
    /// Per application: its accounts and what the plan does to them.
    pub apps: BTreeMap<String, AppDecision>,
}

/// Link, evaluate the lifecycle, map, plan people and groups, and order the changes.
pub fn decide(i: &DecideInput<'_>) -> Decision {
    decide_linked(i, None)
}

/// The keys the linker looks for: the export's records and its quarantined keys.
fn present_keys(export: &crate::source::Export) -> BTreeSet<&str> {
    export
        .records
        .iter()
        .map(|r| r.key.as_str())
        .chain(export.quarantined.iter().filter_map(|q| q.key.as_deref()))
        .collect()
}

/// [`decide`], with the linking already made (`link::link` of [`present_keys`], as decide would
/// make it: a run makes it beside [`settled_people`]).
pub fn decide_linked(i: &DecideInput<'_>, linked: Option<link::Linking>) -> Decision {
    let DecideInput {
        cfg,
        users,
        mapper,
        export,
        dir,
        rules,
        links,
        departures,
        created,
        posix_ids,
        today,
        only,
        apps: app_inputs,
        settled,
        keep_desired,
        uuid_index,
    } = *i;
    let made_here;
    let by_uuid = match uuid_index {
        Some(x) => x,
        None => {
            made_here = dir.uuid_index();
            &made_here
        }
    };
    let quarantined_keys = export.quarantined_keys();
    // (built when something asks: a run that made the linking beside `settled_people` needs it
    // only for --only and applications; 100,000 keys sorted into a set take 10-15 ms)
    let present_set = std::cell::OnceCell::new();
    let present = || present_set.get_or_init(|| present_keys(export));
    let mut linking = linked.unwrap_or_else(|| {
        link::link_indexed(present(), dir, by_uuid, links, &users.anchor, rules)
    });
    if !users.correlate.is_empty() {
        let unlinked: Vec<&crate::source::Record> = export
            .records
            .iter()
            .filter(|r| !linking.by_key.contains_key(&r.key))
            .collect();
        let values = mapper.plain_values(&unlinked, &users.correlate);
        link::correlate(
            &mut linking,
            dir,
            &users.anchor,
            &users.correlate,
            &values,
            rules,
        );
    }
    // When some keys could not be read, people missing from the export may only be unreadable:
    // references to them (person_dn) keep pointing at their entries.
    let mut keep = quarantined_keys.clone();
    if export.keys_uncertain {
        keep.extend(linking.gone.values().cloned());
    }
    // The lifecycle: states from the records and today, before mapping.
    let overlay = match &cfg.lifecycle {
        Some(lc) => crate::lifecycle::evaluate(&crate::lifecycle::Input {
            cfg: lc,
            today,
            records: &export.records,
            gone: &linking.gone,
            linked: &linking.by_key,
            departures,
            uncertain: export.keys_uncertain,
        }),
        None => Default::default(),
    };
    let mut overlay = overlay;
    for (k, why) in &linking.ambiguous {
        let line = export
            .records
            .iter()
            .find(|r| &r.key == k)
            .map(|r| r.line)
            .unwrap_or(0);
        overlay.errors.push(crate::mapping::MapError {
            key: k.clone(),
            line,
            reason: why.clone(),
        });
    }
    let lifecycle_errors: BTreeSet<String> = overlay.errors.iter().map(|e| e.key.clone()).collect();
    let to_map: Vec<&crate::source::Record> = export
        .records
        .iter()
        .filter(|r| {
            !overlay.skip.contains(&r.key)
                && !overlay.purged.contains(&r.key)
                && !lifecycle_errors.contains(&r.key)
        })
        .collect();
    keep.extend(lifecycle_errors.iter().cloned());
    // Settled people keep the entry they have (their record, their entry and the people they refer
    // to are as the last run left them); the others are mapped.
    let mut calm: Vec<(&crate::source::Record, &crate::model::Entry)> = Vec::new();
    let to_map = if settled.is_empty() || only.is_some() {
        to_map
    } else {
        let mut rest = Vec::with_capacity(to_map.len());
        // The keys this run's linking links otherwise than the mirror did (one walk of both
        // maps in key order; usually none): a settled person is linked as the mirror had it,
        // to the entry the digest that settled them was of, unless theirs is one of these
        // (a lookup in `linking` per person took 26 ms at 100,000).
        let (unlinked, relinked) = link::links_diff(links, &linking.by_key);
        let moved: foldhash::HashSet<&str> = unlinked
            .iter()
            .map(String::as_str)
            .chain(relinked.iter().map(|(k, _)| k.as_str()))
            .collect();
        for r in to_map {
            let entry = settled
                .get(&r.key)
                .and_then(|&i| dir.entries.get(i))
                .filter(|_| !moved.contains(r.key.as_str()));
            match entry {
                Some(e)
                    if !keep.contains(&r.key)
                        && !overlay.parents.contains_key(&r.key)
                        && !linking.conflicts.contains_key(&r.key) =>
                {
                    calm.push((r, e))
                }
                _ => rest.push(r),
            }
        }
        rest
    };
    if !calm.is_empty() {
        tracing::info!(target: "dirbridge::plan", settled = calm.len(), mapped = to_map.len(), "people whose record and entry are as the last run left them are not mapped again");
    }
    let mut mapped = mapper.map_with(
        &to_map,
        &keep,
        &linking,
        dir,
        by_uuid,
        rules,
        &overlay.parents,
        &calm,
    );
    mapped.errors.extend(overlay.errors.iter().cloned());
    if let Some(lc) = &cfg.lifecycle {
        crate::lifecycle::finish(&mut mapped.desired, &overlay, lc, users, dir);
    }
    if cfg.directory.is_ad() {
        crate::ad::accounts(&mut mapped.desired, dir, cfg.lifecycle.as_ref());
    }
    // POSIX: uidNumber from the range (stable, never reused), gidNumber, home, shell.
    let mut posix_new = BTreeMap::new();
    if let Some(px) = &users.posix {
        let by_uuid: foldhash::HashMap<&str, &crate::model::Entry> =
            dir.entries.iter().map(|e| (e.uuid.as_str(), e)).collect();
        let used: BTreeSet<u32> = dir
            .taken
            .get("uidnumber")
            .map(|m| m.keys().filter_map(|v| v.trim().parse().ok()).collect())
            .unwrap_or_default();
        let mut people: Vec<(String, Option<u32>)> = mapped
            .desired
            .iter()
            .filter(|d| !d.fields.is_empty())
            .map(|d| {
                let cur = d
                    .uuid
                    .as_deref()
                    .and_then(|u| by_uuid.get(u))
                    .and_then(|e| e.get("uidNumber").first())
                    .and_then(|v| v.trim().parse().ok());
                (d.key.clone().into(), cur)
            })
            .collect();
        people.sort_by(|a, b| crate::mapping::key_order(&a.0, &b.0));
        let alloc = crate::posix::allocate(px, &people, posix_ids, &used);
        for d in mapped.desired.iter_mut().filter(|d| !d.fields.is_empty()) {
            let Some(n) = alloc.numbers.get(&*d.key) else {
                continue;
            };
            d.attrs.insert("uidNumber", n.to_string().into());
            d.attrs
                .insert("gidNumber", crate::posix::gid(px, *n).to_string().into());
            let uid = d
                .attrs
                .get("uid")
                .and_then(|v| v.first())
                .cloned()
                .unwrap_or_default();
            match mapper.render_posix(&d.fields, &uid) {
                Ok((home, shell)) => {
                    if let Some(h) = home {
                        d.attrs.insert("homeDirectory", h.into());
                    }
                    if let Some(s) = shell {
                        d.attrs.insert("loginShell", s.into());
                    }
                }
                Err(reason) => mapped.errors.push(crate::mapping::MapError {
                    key: d.key.clone().into(),
                    line: d.line as usize,
                    reason,
                }),
            }
        }
        let failed: BTreeSet<String> = mapped.errors.iter().map(|e| e.key.clone()).collect();
        for k in &alloc.exhausted {
            mapped.errors.push(crate::mapping::MapError {
                key: k.clone(),
                line: 0,
                reason: format!(
                    "users.posix.uid-number: the range {}–{} has no free number left; widen it",
                    px.uid_first, px.uid_last
                ),
            });
        }
        mapped
            .desired
            .retain(|d| !alloc.exhausted.iter().any(|k| *k == *d.key) && !failed.contains(&*d.key));
        posix_new = alloc.new;
    }

    let mut plan = Plan {
        records: export.records.len() + export.quarantined.len(),
        entries_read: dir.entries.len(),
        managed: linking.managed,
        deletes_suppressed: export.keys_uncertain,
        relinked: linking.relinked.clone(),
        today: cfg.lifecycle.as_ref().map(|_| today.to_string()),
        next_change: overlay.next_change.map(|d| d.to_string()),
        not_yet: overlay
            .skip
            .iter()
            .filter(|k| {
                matches!(
                    overlay.states.get(*k),
                    Some(crate::lifecycle::State::NotYet { .. })
                )
            })
            .count(),
        ..Default::default()
    };
    for q in &export.quarantined {
        plan.quarantined.push(QuarantineNote {
            key: q.key.clone(),
            line: q.line,
            reason: format!("{}:{}: {}", q.file.display(), q.line, q.reason),
        });
    }
    for e in &mapped.errors {
        plan.quarantined.push(QuarantineNote {
            key: Some(e.key.clone()),
            line: e.line,
            reason: e.reason.clone(),
        });
    }
    if let Some(only) = only {
        if !present().contains(only) && !linking.gone.values().any(|k| k == only) {
            plan.warnings.push(format!(
                "--only {only}: no record and no managed entry has this key"
            ));
        }
        plan.quarantined.retain(|q| q.key.as_deref() == Some(only));
    }
    // Everything that reads the desired entries' values comes first: the plan then moves a new
    // person's values into their add instead of copying them (explain and report, and --only,
    // keep them).
    let containers = plan::containers(users, &mapped.desired, dir);
    // Groups: what the rules grant, against what the groups hold.
    let groups_out = mapper.groups(&cfg.groups, &mapped.desired, &overlay.drop_groups);
    for e in &groups_out.errors {
        plan.quarantined.push(QuarantineNote {
            key: Some(e.key.clone()),
            line: e.line,
            reason: e.reason.clone(),
        });
    }
    // (only rules that keep members dirbridge does not manage need to know who it manages)
    let mut managed_members: BTreeSet<String> = BTreeSet::new();
    let need_managed = cfg.groups.iter().any(|g| {
        g.members == crate::config::MemberPolicy::Merge
            || g.kind == crate::config::GroupKind::AdGroup
    });
    for e in dir
        .entries
        .iter()
        .filter(|_| need_managed)
        .filter(|e| !e.get(&users.anchor).is_empty())
    {
        managed_members.insert(rules.fold("member", &e.dn));
        for u in e.get("uid") {
            managed_members.insert(rules.fold("memberUid", u));
        }
    }
    for d in mapped.desired.iter().filter(|_| need_managed) {
        managed_members.insert(rules.fold("member", &d.dn));
        for u in d.attrs.get("uid").into_iter().flatten() {
            managed_members.insert(rules.fold("memberUid", u));
        }
    }
    // Applications: who gets an account, and what each app needs.
    let mut apps = BTreeMap::new();
    let mut app_changes = Vec::new();
    let mut keep_apps: BTreeSet<String> = keep.clone();
    keep_apps.extend(mapped.errors.iter().map(|e| e.key.clone()));
    for app in &cfg.apps {
        let Some(input) = app_inputs.get(&app.name) else {
            continue;
        };
        let state = match &input.state {
            Ok(s) => s,
            Err(why) => {
                plan.warnings.push(format!(
                    "apps.{}: {why}; its changes wait for a later run (the directory's go ahead)",
                    app.name
                ));
                plan.apps_unreachable.insert(app.name.clone(), why.clone());
                continue;
            }
        };
        let (accounts, errors) =
            crate::apps::accounts(app, &mapped.desired, cfg.lifecycle.as_ref());
        let mut keep_app = keep_apps.clone();
        for e in &errors {
            keep_app.insert(e.key.clone());
            if only.is_none_or(|o| o == e.key) {
                plan.quarantined.push(QuarantineNote {
                    key: (!e.key.is_empty()).then(|| e.key.clone()),
                    line: e.line,
                    reason: e.reason.clone(),
                });
            }
        }
        let pushed = crate::apps::pushed_groups(app, &groups_out.groups);
        let ap = crate::apps::plan(&crate::apps::AppPlanInput {
            app,
            accounts: &accounts,
            state,
            links: &input.links,
            keep: &keep_app,
            present: present(),
            no_deactivations: export.keys_uncertain,
            groups: &pushed,
            today,
            only,
        });
        app_changes.extend(ap.changes.iter().cloned());
        apps.insert(app.name.clone(), AppDecision { accounts, plan: ap });
    }
    plan.app_changes = crate::apps::order(app_changes);
    // (no template is rendered after this point: applications render with their own)
    mapper.forget_people();
    // A record that failed mapping is left alone: its entry is neither changed nor deleted.
    let mut changes = plan::plan(PlanInput {
        users,
        desired: &mut mapped.desired,
        keep_values: keep_desired || only.is_some(),
        dir,
        by_uuid,
        linking: &linking,
        rules,
        no_deletes: export.keys_uncertain,
        only,
        lifecycle: cfg.lifecycle.is_some(),
        purge: &overlay.purge,
    });
    if cfg.directory.is_ad() {
        changes = plan::linked_after_add(changes, rules);
    }
    changes.extend(containers);
    let renamed: std::collections::HashMap<String, String> = changes
        .iter()
        .filter(|c| matches!(c.op, Op::Rename | Op::Move))
        .filter_map(|c| c.new_dn.clone().map(|n| (crate::dn::normalize(&c.dn), n)))
        .collect();
    let mut group_changes = plan::groups::plan_groups(&plan::groups::GroupPlanInput {
        renamed: &renamed,
        rules: &cfg.groups,
        desired: &groups_out.groups,
        existing: &dir.groups,
        created,
        managed_members: &managed_members,
        rules_match: rules,
    });
    if let Some(only) = only {
        group_changes =
            plan::groups::only_person(group_changes, only, &mapped.desired, dir, &linking, rules);
    }
    changes.extend(group_changes);
    plan.changes = plan::order(changes, rules);

    Decision {
        apps,
        posix_new,
        plan,
        linking,
        mapped,
        groups_out,
        overlay,
    }
}

/// `check-config --online` for applications: each SCIM service answers and takes its token;
/// each command's program exists and is executable.
pub async fn check_apps_online(cfg: &Config) -> Vec<(String, Result<String, String>)> {
    let mut out = Vec::new();
    for app in &cfg.apps {
        let r = match app.kind {
            crate::config::apps::AppKind::Scim => match crate::apps::scim::ScimClient::new(app) {
                Ok(c) => c.probe().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            crate::config::apps::AppKind::Command => {
                use std::os::unix::fs::PermissionsExt;
                let prog = app.command.first().cloned().unwrap_or_default();
                match std::fs::metadata(&prog) {
                    Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {
                        Ok(format!("{prog} is an executable file"))
                    }
                    Ok(_) => Err(format!("{prog} is not an executable file")),
                    Err(e) => Err(format!("{prog}: {e}")),
                }
            }
        };
        out.push((app.name.clone(), r));
    }
    out
}

/// Apply each application's changes, phase by phase, after the directory's; journal them and keep
/// the accounts' links in the mirror. An application that fails never stops the others.
#[allow(clippy::too_many_arguments)]
async fn apply_apps(
    cfg: &Config,
    inputs: &BTreeMap<String, AppInput>,
    decisions: &BTreeMap<String, AppDecision>,
    clients: &BTreeMap<String, crate::apps::scim::ScimClient>,
    mirror: &mut Mirror,
    run_id: i64,
    clock: &dyn Clock,
    today: jiff::civil::Date,
    outcome: &mut RunOutcome,
) -> Result<(), RunError> {
    use crate::apps::{AppChange, AppLink, AppOp};
    use crate::config::apps::AppKind;
    use futures_util::StreamExt;
    for app in &cfg.apps {
        let (Some(input), Some(dec)) = (inputs.get(&app.name), decisions.get(&app.name)) else {
            continue;
        };
        let Ok(state) = &input.state else { continue };
        let mut links = input.links.clone();
        let mut ids: BTreeMap<String, String> = links
            .iter()
            .map(|(k, l)| (k.clone(), l.remote_id.clone()))
            .collect();
        let changes: Vec<&AppChange> = outcome
            .plan
            .app_changes
            .iter()
            .filter(|c| c.app == app.name)
            .collect();
        for c in &changes {
            if let (AppOp::AppLink, Some(id)) = (c.op, &c.remote_id) {
                ids.insert(c.key.clone(), id.clone());
            }
        }
        let mut phases: BTreeMap<u32, Vec<&AppChange>> = BTreeMap::new();
        for c in changes {
            phases.entry(c.phase).or_default().push(c);
        }
        let mut failed_keys: BTreeSet<String> = BTreeSet::new();
        for (_, batch) in phases {
            let journal = mirror.journal_pending_app(run_id, &batch, &clock.rfc3339())?;
            let results: Vec<Result<Option<String>, String>> = match app.kind {
                AppKind::Scim => match clients.get(&app.name) {
                    Some(client) => {
                        let snapshot = ids.clone();
                        futures_util::stream::iter(batch.iter().map(|c| {
                            let snapshot = &snapshot;
                            async move {
                                client
                                    .apply(c, snapshot, state)
                                    .await
                                    .map_err(|e| e.to_string())
                            }
                        }))
                        .buffered(app.concurrency)
                        .collect()
                        .await
                    }
                    None => batch.iter().map(|_| Err("no client".to_string())).collect(),
                },
                AppKind::Command => {
                    let argv = app.command.clone();
                    let timeout = app.timeout;
                    let payloads: Vec<serde_json::Value> = batch
                        .iter()
                        .map(|c| crate::apps::command::payload(c))
                        .collect();
                    let batch_mode = app.batch;
                    let keys: Vec<String> = batch.iter().map(|c| c.key.clone()).collect();
                    tokio::task::spawn_blocking(move || {
                        if batch_mode {
                            let r = crate::apps::command::run(
                                &argv,
                                &serde_json::Value::Array(payloads.clone()),
                                timeout,
                            );
                            keys.iter()
                                .map(|k| r.clone().map(|_| Some(k.clone())))
                                .collect::<Vec<_>>()
                        } else {
                            payloads
                                .iter()
                                .zip(&keys)
                                .map(|(p, k)| {
                                    crate::apps::command::run(&argv, p, timeout)
                                        .map(|_| Some(k.clone()))
                                })
                                .collect()
                        }
                    })
                    .await
                    .unwrap_or_else(|e| vec![Err(format!("internal: {e}"))])
                }
            };
            let mut done = Vec::with_capacity(batch.len());
            for ((c, id), r) in batch.iter().zip(journal).zip(results) {
                let health = outcome.apps.entry(app.name.clone()).or_default();
                match r {
                    Ok(remote) => {
                        health.applied += 1;
                        *outcome.app_applied.entry(c.op.as_str()).or_default() += 1;
                        tracing::info!(target: "dirbridge::apps", app = %app.name, op = c.op.as_str(), account = %c.account, key = %c.key, "{}", c.reason);
                        done.push((id, true, "success".to_string()));
                        if c.subject != Subject::Person {
                            continue;
                        }
                        match c.op {
                            AppOp::AppDelete => {
                                links.remove(&c.key);
                                ids.remove(&c.key);
                            }
                            _ => {
                                let l = links.entry(c.key.clone()).or_insert_with(|| AppLink {
                                    active: true,
                                    ..Default::default()
                                });
                                if let Some(r) = remote.or_else(|| c.remote_id.clone()) {
                                    ids.insert(c.key.clone(), r.clone());
                                    l.remote_id = r;
                                }
                                if c.op == AppOp::AppLink {
                                    if let Some(ra) = state
                                        .accounts
                                        .iter()
                                        .find(|a| Some(&a.id) == c.remote_id.as_ref())
                                    {
                                        l.active = ra.active;
                                        l.attrs = ra.attrs.clone();
                                    }
                                }
                                for d in &c.attributes {
                                    if d.attr == "active" {
                                        l.active = d.new.first().is_some_and(|v| v == "true");
                                        l.deactivated_on =
                                            if l.active { None } else { Some(today) };
                                    } else if d.attr != "externalId" {
                                        match d.new.first() {
                                            Some(v) => {
                                                l.attrs.insert(d.attr.to_string(), v.clone());
                                            }
                                            None => {
                                                l.attrs.remove(d.attr.as_str());
                                            }
                                        }
                                    }
                                }
                                if c.op == AppOp::AppCreate {
                                    l.active = true;
                                    l.deactivated_on = None;
                                }
                                if !failed_keys.contains(&c.key) {
                                    l.failures = 0;
                                    l.last_error = None;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        health.failed += 1;
                        tracing::error!(target: "dirbridge::apps", app = %app.name, op = c.op.as_str(), account = %c.account, key = %c.key, "quarantined for this run: {e}");
                        done.push((id, false, e.clone()));
                        if c.subject == Subject::Person && failed_keys.insert(c.key.clone()) {
                            if let Some(l) = links.get_mut(&c.key) {
                                l.failures += 1;
                                l.last_error = Some(e.clone());
                            }
                        }
                        outcome.app_failed.push(AppFailed {
                            change: (*c).clone(),
                            error: e,
                        });
                    }
                }
            }
            mirror.journal_done(&done, &clock.rfc3339())?;
        }
        for k in &dec.plan.forget {
            links.remove(k);
        }
        for k in &dec.plan.inactive_since {
            if let Some(l) = links.get_mut(k) {
                l.active = false;
                l.deactivated_on.get_or_insert(today);
            }
        }
        if let Some(h) = outcome.apps.get_mut(&app.name) {
            h.failing_accounts = links.values().filter(|l| l.failures > 0).count();
            if let Some(c) = clients.get(&app.name) {
                h.requests = c
                    .counters
                    .requests
                    .load(std::sync::atomic::Ordering::Relaxed);
                h.retries = c
                    .counters
                    .retries
                    .load(std::sync::atomic::Ordering::Relaxed);
            }
        }
        mirror.save_app_links(&app.name, &links)?;
    }
    Ok(())
}

/// What a run keeps in the mirror whatever its writes do: the export's records, the people it
/// planned nothing for (settled), and the directory as read. Written on a second connection, on
/// another thread, while the directory writes run: the server is then the one working, and the
/// mirror step after the writes is shorter by as much (0.32-0.43 -> 0.08-0.10 s in a
/// 100,000-person churn).
struct Aside {
    hr: Option<std::sync::Arc<crate::source::Export>>,
    snapshot: Option<std::sync::Arc<DirSnapshot>>,
    settled: Option<SettledRows>,
}

/// What the settled table is made of (see [`settled_people`]).
struct SettledRows {
    desired: Vec<crate::mapping::Desired>,
    /// HR keys the plan changes something for.
    touched: foldhash::HashSet<String>,
    dir: std::sync::Arc<DirSnapshot>,
    /// The people this run did not map again, and the settled table as it read it.
    settled: foldhash::HashMap<String, usize>,
    known: Option<foldhash::HashMap<String, u64>>,
}

/// What the aside connection wrote: it (for its digests), the lender's cache version, whether
/// the settled people were saved, and how long it took.
struct AsideDone {
    mirror: Mirror,
    version: Option<i64>,
    settled: bool,
    took: Duration,
}

/// The thread writing an [`Aside`]. A run that stops early (an error while writing) still waits
/// for it: no second connection outlives the run that opened it.
struct AsideThread(Option<std::thread::JoinHandle<Result<AsideDone, MirrorError>>>);

impl AsideThread {
    fn start(aside: Aside, lent: crate::mirror::Lent) -> Result<AsideThread, MirrorError> {
        let handle = std::thread::Builder::new()
            .name("mirror-aside".into())
            .spawn(move || {
                crate::background_thread();
                aside.write(lent)
            })
            .map_err(|err| MirrorError::Io {
                path: "(a thread for the mirror)".into(),
                err,
            })?;
        Ok(AsideThread(Some(handle)))
    }

    fn join(mut self) -> Result<AsideDone, RunError> {
        match self.0.take().map(|h| h.join()) {
            Some(Ok(Ok(done))) => Ok(done),
            Some(Ok(Err(e))) => Err(e.into()),
            _ => Err(RunError::Config(
                "internal: the thread writing the mirror beside the directory stopped".into(),
            )),
        }
    }
}

impl Drop for AsideThread {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

impl Aside {
    fn write(self, lent: crate::mirror::Lent) -> Result<AsideDone, MirrorError> {
        let t0 = Instant::now();
        // Of what mapping made, only each person's key, record and uuid are wanted here: the rest
        // (their values: ~40 MB at 100,000 people mapped) is freed first, not held while the
        // rows are written.
        let settled = self.settled.map(|s| {
            let people: Vec<(String, crate::source::Fields, Option<String>)> = s
                .desired
                .into_iter()
                .map(|d| (d.key.into(), d.fields, d.uuid.map(String::from)))
                .collect();
            (people, s.touched, s.dir, s.settled, s.known)
        });
        let (mut m, version) = Mirror::beside(lent)?;
        if let Some(dir) = &self.snapshot {
            m.save_snapshot(dir)?;
        }
        let settled = match settled {
            Some((people, touched, dir, settled, known)) => {
                let by_uuid = dir.uuid_index();
                let known = known.as_ref();
                // (the entry's uuid is the desired entry's: it was found by it; the rows are
                // written as they are made, not collected first)
                let rows = people.iter().filter_map(|(key, fields, uuid)| {
                    if fields.is_empty() || touched.contains(key.as_str()) {
                        return None;
                    }
                    let uuid = uuid.as_ref()?;
                    let e = &dir.entries[by_uuid.get(uuid.as_str())?];
                    let digest = match known.and_then(|m| m.get(key)) {
                        // (linked to the entry the digest was of: the one it was settled with)
                        Some(&known)
                            if settled
                                .get(key)
                                .is_some_and(|&i| &dir.entries[i].uuid == uuid) =>
                        {
                            known
                        }
                        _ => person_digest(fields, e),
                    };
                    Some((key.clone(), digest, uuid.clone()))
                });
                m.save_settled(rows, known)?;
                true
            }
            None => false,
        };
        if let Some(export) = &self.hr {
            m.save_hr(export)?;
        }
        m.checkpoint();
        Ok(AsideDone {
            mirror: m,
            version,
            settled,
            took: t0.elapsed(),
        })
    }
}

/// Perform one run. `plan` and `sync --dry-run` pass `dry_run`; nothing is written then.
pub async fn run(
    cfg: &Config,
    opts: &RunOptions,
    clock: &dyn Clock,
) -> Result<RunOutcome, RunError> {
    let started = Instant::now();
    let mut laps = Laps::new(started);
    let lock = if opts.dry_run || opts.daemon_holds_lock {
        None
    } else {
        Some(RunLock::acquire(&cfg.state)?)
    };
    // A preview works without a writable mirror (say, run by a user who cannot write the state
    // directory): it then plans as if the mirror were new, and says so.
    let kept = opts.mirror_slot.as_ref().and_then(|s| s.take(&cfg.state));
    let (mirror, mirror_warning) = match kept.map(Ok).unwrap_or_else(|| Mirror::open(&cfg.state)) {
        Ok(m) => {
            if opts.mirror_slot.is_some() {
                m.cache_between_runs();
            }
            m.leave_log_copies()?;
            (Some(m), None)
        }
        Err(e) if opts.dry_run => (
            None,
            Some(format!(
                "{e}; planning as if the mirror were empty (links are remade from the anchor)"
            )),
        ),
        Err(e) => return Err(e.into()),
    };
    // The export's bytes, hashed before anything is read (on another thread, while this one
    // connects and reads the directory): a quiet run (below) does not parse it. Bytes that are
    // not those the last quiet run saw cannot make this run quiet, so they are parsed at once, on
    // that thread (a churn after a change in the directory read the snapshot, then parsed the
    // export: 0.09 s at 100,000 people one after the other).
    let marker: Option<QuietMarker> = mirror
        .as_ref()
        .and_then(|m| m.get_state(QUIET).ok().flatten())
        .and_then(|v| serde_json::from_str(&v).ok());
    let quiet_export = marker.as_ref().map(|m| m.export.clone());
    let source_cfg = cfg.source.clone();
    let since = started;
    let (hash_tx, hash_rx) = tokio::sync::oneshot::channel();
    // The mirror's snapshot is read ahead ([`SnapshotAhead`]) where the read will likely be
    // incremental (the snapshot is kept in rows, a cursor goes on from the last read, and no
    // cache holds them in memory: the daemon's) and the run cannot be quiet: at once after a run
    // that planned changes (no quiet marker to match), else once the export's hash differs from
    // the marker's. Only by a run that holds the lock: no other run writes the mirror between
    // this read and the cursor's (a preview reads the cursor first, then the snapshot).
    let ahead = std::sync::Arc::new(SnapshotAhead::default());
    let ahead_from = mirror
        .as_ref()
        .filter(|m| {
            lock.is_some()
                && opts.mirror_slot.is_none()
                && !opts.full_read
                && m.get_state(READ_SNAPSHOT).ok().flatten().as_deref() == Some(SNAPSHOT_IN_ROWS)
                && m.get_state(READ_CURSOR)
                    .ok()
                    .flatten()
                    .and_then(|v| serde_json::from_str::<ReadCursor>(&v).ok())
                    .is_some_and(|c| c.recent_read_back())
        })
        .map(|m| m.path().to_path_buf());
    let ahead_from = match ahead_from {
        Some(p) if marker.is_none() => {
            ahead.start(p);
            None
        }
        other => other,
    };
    let ahead_early = ahead.clone();
    let early = tokio::task::spawn_blocking(move || {
        early_export(&source_cfg, quiet_export, since, hash_tx, || {
            if let Some(p) = ahead_from {
                ahead_early.start(p);
            }
        })
    });
    let mut target = LdapTarget::connect(&cfg.directory).await?;
    tracing::info!(url = %target.url, "bound");
    laps.lap("connect");
    let schema = target.read_schema().await?;
    laps.lap("schema");
    check_schema(cfg, &schema).map_err(|m| RunError::Target(TargetError::Schema(m)))?;
    let rules = if schema.is_empty() {
        Default::default()
    } else {
        schema.match_rules()
    };
    // Entries come back with the server's names for attributes (`sn`, not `surname`).
    let users = canonical_users(&cfg.users, &schema);
    // The mirror's links, read once (by the directory read if it needs them, else below).
    let links_read = std::cell::OnceCell::new();
    let today_early = today(cfg, opts.as_of.as_deref(), clock)?;
    let config_hash = file_hash(&cfg.file).map(|h| format!("{h}:{}", env!("CARGO_PKG_VERSION")));
    // The settled people's table, when this run will look at it (see below): read while the
    // snapshot's holders of unique values are indexed on the second core (27 ms at 100,000
    // people, one after the other before).
    let settled_wanted = match (&mirror, &config_hash) {
        (Some(m), Some(c)) if cfg.apps.is_empty() && opts.only.is_none() && !opts.details => {
            m.get_state(SETTLED)
                .ok()
                .flatten()
                .and_then(|v| serde_json::from_str::<SettledMarker>(&v).ok())
                == Some(SettledMarker {
                    config: c.clone(),
                    today: today_early.to_string(),
                })
        }
        _ => false,
    };
    let mut settled_read = std::cell::OnceCell::new();
    let read_settled = || {
        if let (true, Some(m)) = (settled_wanted, &mirror) {
            let _ = settled_read.set(m.settled());
        }
    };
    let DirRead {
        snapshot: mut dir,
        info: mut read_info,
        keep: mut read_keep,
        unchanged,
        names,
        missing_bases,
    } = read_directory(
        cfg,
        &users,
        &mut target,
        mirror.as_ref(),
        opts.full_read,
        unix_secs(clock),
        &links_read,
        &ahead,
        &read_settled,
    )
    .await?;
    laps.lap("directory read");
    // A quiet run: the directory did not change since the last run, the export and the
    // configuration are byte for byte those of the last run, whose plan was empty, and no
    // lifecycle date has come: the plan is empty without mapping anything.
    let (export_hash_early, parsing_early) = hash_rx
        .await
        .map_err(|e| RunError::Config(format!("internal: the export's hashing stopped: {e}")))?;
    let mut reading = None;
    if unchanged {
        let quiet = marker.as_ref().is_some_and(|m| {
            cfg.apps.is_empty()
                && opts.only.is_none()
                && opts.accept.is_empty()
                && m.records.is_some()
                && export_hash_early.as_deref() == Some(m.export.as_str())
                && config_hash.as_deref() == Some(m.config.as_str())
                && m.today
                    .parse::<jiff::civil::Date>()
                    .is_ok_and(|d| d <= today_early)
                && m.next_change.as_deref().is_none_or(|d| {
                    d.parse::<jiff::civil::Date>()
                        .is_ok_and(|d| today_early < d)
                })
        });
        if let (true, Some(m)) = (quiet, marker) {
            tracing::info!(target: "dirbridge::read", "quiet run: the directory, the export and the configuration are as the last run left them, and it planned nothing");
            laps.log();
            target.unbind().await;
            let plan = Plan {
                records: m.records.unwrap_or_default(),
                entries_read: m.entries,
                managed: m.entries,
                read_mode: "incremental".into(),
                today: cfg.lifecycle.as_ref().map(|_| today_early.to_string()),
                next_change: m.next_change.clone(),
                ..Default::default()
            };
            let mut outcome = RunOutcome::new(plan, opts.dry_run);
            if !opts.dry_run {
                if let Some(mut mirror) = mirror {
                    let run_id = mirror.begin_run("sync", &clock.rfc3339())?;
                    if let Some((cursor, _)) = &read_keep {
                        mirror.put_state(
                            READ_CURSOR,
                            &serde_json::to_string(cursor)
                                .map_err(|e| RunError::Config(format!("internal: {e}")))?,
                        )?;
                    }
                    outcome.duration = started.elapsed();
                    mirror.finish_run(
                        run_id,
                        &clock.rfc3339(),
                        "ok",
                        outcome.plan.records,
                        &m.header,
                        &json!({"summary": plan::summary(&outcome.plan), "quiet": true}),
                    )?;
                    if let Some(slot) = &opts.mirror_slot {
                        slot.put(mirror);
                    }
                }
            }
            outcome.duration = started.elapsed();
            return Ok(outcome);
        }
        // Not quiet after all: the mirror's snapshot is the directory. The export is parsed on
        // another thread meanwhile (at 100,000 people each takes a while; neither needs the other).
        if !parsing_early {
            let source_cfg = cfg.source.clone();
            reading = Some(tokio::task::spawn_blocking(move || {
                read_export(&source_cfg)
            }));
        }
        // (the links, read while the snapshot is indexed)
        let links_beside = || {
            let links = match (links_read.get(), &mirror) {
                (None, Some(m)) => Some(m.links()),
                _ => None,
            };
            read_settled();
            links
        };
        match materialize(
            mirror.as_ref(),
            &ahead,
            &names,
            &missing_bases,
            links_beside,
        ) {
            Some((snap, kept, links)) => {
                if let Some(links) = links {
                    let _ = links_read.set(links?);
                }
                dir = snap;
                if let Some((_, k)) = read_keep.as_mut() {
                    *k = kept;
                }
            }
            None => {
                // The snapshot is gone: read everything.
                let again = read_directory(
                    cfg,
                    &users,
                    &mut target,
                    mirror.as_ref(),
                    true,
                    unix_secs(clock),
                    &links_read,
                    &ahead,
                    &read_settled,
                )
                .await?;
                dir = again.snapshot;
                read_info = again.info;
                read_keep = again.keep;
            }
        }
    }
    laps.lap("snapshot");
    let stopped = |e: tokio::task::JoinError| {
        RunError::Config(format!("internal: the export's reader stopped: {e}"))
    };
    let (export, parsed_hash) = match (early.await.map_err(stopped)?, reading) {
        (Some(parsed), _) => parsed?,
        (None, Some(r)) => r.await.map_err(stopped)??,
        (None, None) => read_export(&cfg.source)?,
    };
    laps.lap("export");
    for q in &export.quarantined {
        tracing::warn!(target: "dirbridge::source", "quarantined {q}");
    }
    // The templates were checked against the header check-config saw; check them against this one.
    let mut problems = Vec::new();
    for (name, src) in &cfg.users.attributes {
        if let Err(m) = crate::mapping::check_template(src, &export.header, true) {
            problems.push(format!(
                "{}: users.attributes.{name}: {m}",
                cfg.file.display()
            ));
        }
    }
    if !problems.is_empty() {
        return Err(RunError::Config(problems.join("\n")));
    }
    // The bytes parsed are the bytes hashed (else the export changed meanwhile: no quiet marker).
    let export_hash = export_hash_early.filter(|h| *h == parsed_hash);
    let mapper = Mapper::new(&users, &export.header)
        .and_then(|m| m.with_groups(&cfg.groups))
        .map(|m| m.with_disabled_base(cfg.lifecycle.as_ref().and_then(|l| l.disabled_base.clone())))
        .map(|m| m.with_ad(cfg.directory.is_ad()))
        .and_then(|m| m.with_posix(users.posix.as_ref()))
        .map_err(RunError::Config)?;
    // Re-fold the unique values with the server's rules (where they differ from the defaults
    // the read folded with: folding is idempotent).
    let default_rules = crate::model::MatchRules::default();
    for (attr, vals) in dir.taken.iter_mut() {
        if rules.rule(attr) == default_rules.rule(attr) {
            continue;
        }
        *vals = std::mem::take(vals)
            .into_iter()
            .map(|(k, v)| (rules.fold(attr, &k), v))
            .collect();
    }

    let links = match (links_read.into_inner(), &mirror) {
        (Some(l), _) => l,
        (None, Some(m)) => m.links()?,
        (None, None) => Default::default(),
    };
    let today = today(cfg, opts.as_of.as_deref(), clock)?;
    let departures = match &mirror {
        Some(m) => m.departures()?,
        None => BTreeMap::new(),
    };
    let created = match &mirror {
        Some(m) => m.created_groups()?,
        None => BTreeSet::new(),
    };
    let posix_ids = match &mirror {
        Some(m) => m.posix_ids()?,
        None => BTreeMap::new(),
    };
    laps.lap("mirror read");
    // Applications: read each one's state (concurrently); one that cannot be read waits.
    let mut app_inputs: BTreeMap<String, AppInput> = BTreeMap::new();
    let mut clients: BTreeMap<String, crate::apps::scim::ScimClient> = BTreeMap::new();
    {
        let mut reads = Vec::new();
        for app in &cfg.apps {
            let links = match &mirror {
                Some(m) => m.app_links(&app.name)?,
                None => BTreeMap::new(),
            };
            match app.kind {
                crate::config::apps::AppKind::Command => {
                    app_inputs.insert(
                        app.name.clone(),
                        AppInput {
                            state: Ok(crate::apps::command::state(&links)),
                            links,
                        },
                    );
                }
                crate::config::apps::AppKind::Scim => {
                    match crate::apps::scim::ScimClient::new(app) {
                        Ok(c) => {
                            clients.insert(app.name.clone(), c);
                            app_inputs.insert(
                                app.name.clone(),
                                AppInput {
                                    state: Err(String::new()),
                                    links,
                                },
                            );
                            reads.push(app.name.clone());
                        }
                        Err(e) => {
                            app_inputs.insert(
                                app.name.clone(),
                                AppInput {
                                    state: Err(e.to_string()),
                                    links,
                                },
                            );
                        }
                    }
                }
            }
        }
        let futs = reads.iter().filter_map(|name| {
            let c = clients.get(name)?;
            let groups = cfg
                .apps
                .iter()
                .any(|a| &a.name == name && !a.groups.is_empty());
            Some(async move { (name.clone(), c.read(groups).await) })
        });
        for (name, r) in futures_util::future::join_all(futs).await {
            if let Some(i) = app_inputs.get_mut(&name) {
                i.state = r.map_err(|e| e.to_string());
                match &i.state {
                    Ok(st) => {
                        tracing::info!(target: "dirbridge::apps", app = %name, accounts = st.accounts.len(), groups = st.groups.len(), "read")
                    }
                    Err(e) => tracing::warn!(target: "dirbridge::apps", app = %name, "{e}"),
                }
            }
        }
    }
    laps.lap("applications read");
    // People settled since the last run (same configuration, same day; no applications, whose
    // templates may read any entry value; not for explain and report, which show everyone's
    // desired entry).
    let mut linked = None;
    // (made once, by whichever of the linking and the settled people asks first; decide lends
    // it to the mapping and the plan)
    let uuid_index = std::sync::OnceLock::new();
    let settled = match &mirror {
        // (the marker was read before the directory read: `settled_wanted`)
        Some(m) if settled_wanted && today == today_early && !export.keys_uncertain => {
            // (the linking decide starts with, made on the second core meanwhile, from
            // before the settled table is read)
            let (read, made) = std::thread::scope(|s| {
                let linking = s.spawn(|| {
                    let by_uuid = uuid_index.get_or_init(|| dir.uuid_index());
                    link::link_indexed(
                        &present_keys(&export),
                        &dir,
                        by_uuid,
                        &links,
                        &users.anchor,
                        &rules,
                    )
                });
                let read = match settled_read.take() {
                    Some(r) => r,
                    None => m.settled(),
                }
                .map(|prior| {
                    let by_uuid = uuid_index.get_or_init(|| dir.uuid_index());
                    (
                        settled_people(&prior, &export, &dir, by_uuid, &links),
                        prior,
                    )
                });
                (read, linking.join().ok())
            });
            let (people, prior) = read?;
            linked = made;
            (people, Some(prior))
        }
        _ => Default::default(),
    };
    // (the settled table as this run found it, when it was read: the settled people's digests
    // are saved again as they are, and the table is not read a second time to be rewritten)
    let (settled, settled_digests) = settled;
    let Decision {
        mut plan,
        linking,
        mut mapped,
        groups_out,
        overlay,
        posix_new,
        apps: app_decisions,
    } = decide_linked(
        &DecideInput {
            apps: &app_inputs,
            posix_ids: &posix_ids,
            cfg,
            users: &users,
            mapper: &mapper,
            export: &export,
            dir: &dir,
            rules: &rules,
            links: &links,
            departures: &departures,
            created: &created,
            today,
            only: opts.only.as_deref(),
            settled: &settled,
            keep_desired: opts.details,
            uuid_index: uuid_index.get(),
        },
        linked,
    );
    drop(uuid_index);
    laps.lap("decide");
    plan.read_mode = read_info.mode.to_string();
    plan.fetched = read_info.fetched;
    plan.ranged_reads = read_info.ranged_reads;
    if let Some(w) = &read_info.why_full {
        plan.warnings
            .push(format!("full read of the directory: {w}"));
    }
    for r in &linking.relinked {
        tracing::warn!(target: "dirbridge::link", key = %r.key, dn = %r.dn, "{}", r.why);
    }
    for q in &plan.quarantined {
        tracing::warn!(target: "dirbridge::mapping", key = ?q.key, line = q.line, "quarantined: {}", q.reason);
    }
    let last_good = match &mirror {
        Some(m) => m.last_good()?,
        None => None,
    };
    if opts.dry_run {
        if let Some((status, at, refusals)) =
            mirror.as_ref().and_then(|m| m.last_sync().ok().flatten())
        {
            if status == "refused" {
                let gates: Vec<String> = refusals
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["gate"].as_str().map(String::from))
                    .collect();
                plan.warnings.push(format!(
                    "the last sync ({at}) was refused by safety gate(s) {}; its plan is kept in the mirror (dirbridge history, runs)",
                    gates.join(", ")
                ));
            }
        }
    }
    if let Some(w) = mirror_warning {
        tracing::warn!("{w}");
        plan.warnings.push(w);
    }
    plan.refusals = gates::check(&GateInput {
        entries: &dir.entries,
        rules: &rules,
        safety: &cfg.safety,
        changes: &plan.changes,
        managed: linking.managed,
        source_records: plan.records,
        header: &export.header,
        last_good: last_good.as_ref(),
        dir_empty: linking.managed == 0,
        links: links.len(),
    });
    let linked: BTreeMap<String, usize> = app_inputs
        .iter()
        .map(|(k, i)| (k.clone(), i.links.len()))
        .collect();
    plan.refusals
        .extend(gates::check_apps(&cfg.safety, &plan.app_changes, &linked));
    let (accepted, refused): (Vec<_>, Vec<_>) = std::mem::take(&mut plan.refusals)
        .into_iter()
        .partition(|r| opts.accept.iter().any(|a| a == r.gate));
    plan.refusals = refused;
    plan.accepted = accepted;
    for r in &plan.refusals {
        tracing::warn!(target: "dirbridge::safety", gate = r.gate, "refused: {}", r.message);
    }
    for r in &plan.accepted {
        tracing::warn!(target: "dirbridge::safety", gate = r.gate, "accepted by the operator: {}", r.message);
    }

    let mut outcome = RunOutcome::new(plan, opts.dry_run);
    for app in &cfg.apps {
        let planned = outcome
            .plan
            .app_changes
            .iter()
            .filter(|c| c.app == app.name)
            .count();
        outcome.apps.insert(
            app.name.clone(),
            AppHealth {
                reachable: !outcome.plan.apps_unreachable.contains_key(&app.name),
                error: outcome.plan.apps_unreachable.get(&app.name).cloned(),
                planned,
                ..Default::default()
            },
        );
    }
    if opts.details {
        outcome.details = Some(Details {
            users: users.clone(),
            records: export.records.clone(),
            desired: mapped.desired.clone(),
            groups: groups_out.groups.clone(),
            states: overlay.states.clone(),
            entries: dir.entries.clone(),
            group_entries: dir.groups.clone(),
            today: cfg.lifecycle.as_ref().map(|_| today),
            apps: app_inputs
                .iter()
                .map(|(name, i)| {
                    (
                        name.clone(),
                        AppDetails {
                            accounts: app_decisions
                                .get(name)
                                .map(|d| d.accounts.clone())
                                .unwrap_or_default(),
                            links: i.links.clone(),
                            remote: i
                                .state
                                .as_ref()
                                .map(|s| s.accounts.clone())
                                .unwrap_or_default(),
                            error: i.state.as_ref().err().cloned(),
                        },
                    )
                })
                .collect(),
        });
    }
    if opts.dry_run {
        target.unbind().await;
        laps.log();
        outcome.duration = started.elapsed();
        // (freed after the preview returns, as after a sync: see the end of this function)
        crate::drop_beside((export, links, linking, mapped, dir));
        return Ok(outcome);
    }

    let Some(mut mirror) = mirror else {
        return Err(RunError::Config(
            "internal: no mirror for a writing run".into(),
        ));
    };
    let now = clock.rfc3339();
    let run_id = mirror.begin_run("sync", &now)?;
    let q: Vec<(Option<String>, usize, String)> = outcome
        .plan
        .quarantined
        .iter()
        .map(|q| (q.key.clone(), q.line, q.reason.clone()))
        .collect();
    mirror.record_quarantine(run_id, &q)?;
    if outcome.plan.refusals.is_empty() {
        for r in &outcome.plan.accepted {
            mirror.audit_note(
                run_id,
                "accept-gate",
                &format!("{} accepted safety.{}: {}", operator(), r.gate, r.message),
                &clock.rfc3339(),
            )?;
        }
    }
    if !outcome.plan.refusals.is_empty() {
        target.unbind().await;
        outcome.duration = started.elapsed();
        mirror.finish_run(
            run_id,
            &clock.rfc3339(),
            "refused",
            outcome.plan.records,
            &export.header,
            &outcome.summary_json(),
        )?;
        return Ok(outcome);
    }

    // Apply, phase by phase; journal before and after.
    // The links as this run leaves them, as edits of the links it read (in order; saved after
    // the writes): the dangling ones go, the linking's new ones come, then the adds' and deletes'.
    let mut link_edits: Vec<(String, Option<String>)> =
        linking.dangling.iter().map(|k| (k.clone(), None)).collect();
    link_edits.extend(
        link::links_diff(&links, &linking.by_key)
            .1
            .into_iter()
            .map(|(k, u)| (k.clone(), Some(u.clone()))),
    );
    // What the mirror keeps whatever the writes do is written beside them (see `Aside`).
    let export = std::sync::Arc::new(export);
    let dir = std::sync::Arc::new(dir);
    let settle = config_hash.is_some()
        && cfg.apps.is_empty()
        && opts.only.is_none()
        && !export.keys_uncertain;
    let aside = Aside {
        hr: (!export.keys_uncertain && opts.only.is_none()).then(|| export.clone()),
        snapshot: (read_info.snapshot_changed || read_info.mode == "full").then(|| dir.clone()),
        settled: settle.then(|| SettledRows {
            desired: std::mem::take(&mut mapped.desired),
            touched: outcome.plan.changes.iter().map(|c| c.key.clone()).collect(),
            dir: dir.clone(),
            settled,
            known: settled_digests,
        }),
    };
    let lent = mirror.lend(&crate::mirror::BESIDE_TABLES);
    let aside = AsideThread::start(aside, lent)?;
    let mut groups_created = Vec::new();
    let mut groups_deleted = Vec::new();
    // (taken out while the phases borrow it, put back after: a copy is 130 MB at 100,000 adds)
    let mut changes = std::mem::take(&mut outcome.plan.changes);
    let mut phases: BTreeMap<u32, Vec<&Change>> = BTreeMap::new();
    for c in &changes {
        phases.entry(c.phase).or_default().push(c);
    }
    // The people's adds, phase after phase (a manager's entry before the adds that name it), go
    // as one batch in which each add waits for the adds it names only (`plan::add_waits`).
    // Not with transactions, which keep their phases.
    let is_add = |c: &&Change| c.subject == Subject::Person && c.op == Op::Add;
    let mut adds_batch: Option<u32> = None;
    if cfg.directory.transaction_size <= 1 {
        let runs: Vec<u32> = phases
            .iter()
            .skip_while(|(_, b)| !b.iter().all(is_add))
            .take_while(|(_, b)| b.iter().all(is_add))
            .map(|(p, _)| *p)
            .collect();
        if let [first, .., _] = runs[..] {
            let mut merged = Vec::new();
            for p in &runs {
                merged.extend(phases.remove(p).unwrap_or_default());
            }
            phases.insert(first, merged);
            adds_batch = Some(first);
        }
    }
    let cancelled = || opts.cancel.as_ref().is_some_and(|c| *c.borrow());
    // Entries whose add failed: their later changes (manager, memberships) are not sent.
    let mut failed_adds: BTreeSet<String> = BTreeSet::new();
    // Entries written in this run (read again next run: see ReadCursor::recent).
    let mut written: BTreeSet<String> = BTreeSet::new();
    // HR key → the digest of the entry its add writes; then the settled rows of those added
    let mut added_digests: foldhash::HashMap<String, u64> = Default::default();
    let mut added_settled: Vec<(String, u64, String)> = Vec::new();
    // People added without their entryUUID known yet (OpenLDAP: read back beside a phase after
    // the adds, or after the writes).
    let mut unread: Vec<(String, String)> = Vec::new();
    let last_add_phase = changes.iter().filter(is_add).map(|c| c.phase).max();
    // (beside the largest phase after the adds: the searches take the server's other threads
    // while its writer works)
    let read_back_beside = last_add_phase.and_then(|last| {
        phases
            .iter()
            .filter(|(p, _)| **p > last)
            .max_by_key(|(p, b)| (b.len(), std::cmp::Reverse(**p)))
            .map(|(p, _)| *p)
    });
    let mut read_back: Option<Vec<Option<String>>> = None;
    for (phase, batch) in phases {
        if cancelled() {
            outcome.interrupted = true;
            break;
        }
        let phase_started = Instant::now();
        let (batch, skipped): (Vec<&Change>, Vec<&Change>) = batch
            .into_iter()
            .partition(|c| !failed_adds.contains(&crate::dn::normalize(&c.dn)));
        for c in skipped {
            outcome.failed.push(Failed {
                change: c.clone(),
                failure: OpFailure {
                    rc: 80,
                    text: "not sent: the entry's add failed earlier in this run".into(),
                },
            });
        }
        if batch.is_empty() {
            continue;
        }
        // Joiners' initial passwords: made now, sent in the add, handed to the delivery program.
        let password_cmd = cfg
            .lifecycle
            .as_ref()
            .and_then(|l| l.password_command.clone());
        let password_dir = cfg
            .lifecycle
            .as_ref()
            .and_then(|l| l.password_directory.clone());
        let make_passwords = password_cmd.is_some() || password_dir.is_some();
        let mut passwords: Vec<Option<crate::secret::Secret>> = Vec::with_capacity(batch.len());
        for c in &batch {
            let pw = match (make_passwords, c.subject, c.op) {
                (true, Subject::Person, Op::Add) => {
                    let len = cfg
                        .lifecycle
                        .as_ref()
                        .map(|l| l.password_length)
                        .unwrap_or(20);
                    Some(
                        crate::target::password::generate(len).map_err(|err| MirrorError::Io {
                            path: "/dev/urandom".into(),
                            err,
                        })?,
                    )
                }
                _ => None,
            };
            passwords.push(pw);
        }
        if settle && !cfg.directory.is_ad() {
            for (c, pw) in batch.iter().zip(&passwords) {
                if let (None, Some(d)) = (pw, added_entry_digest(c)) {
                    added_digests.insert(c.key.clone(), d);
                }
            }
        }
        let waits = if adds_batch == Some(phase) {
            plan::add_waits(&batch, &rules)
        } else {
            Vec::new()
        };
        // Every change is journaled as pending before it is sent: in chunks beside the writes,
        // each change held until its chunk is written (a large batch is not kept waiting for all
        // of its rows: 100,000 adds took 0.9 s to journal); all first where transactions send a
        // batch at once.
        let (journaled_tx, journaled) = tokio::sync::watch::channel(0usize);
        let chunk = if cfg.directory.transaction_size > 1 {
            batch.len()
        } else {
            JOURNAL_CHUNK
        };
        // The answers are recorded as they come, beside the writes too; not where a generated
        // password may be refused and the add sent again (its first answer is not its last).
        let (answered_tx, answered) = tokio::sync::mpsc::unbounded_channel();
        let answered_tx = (!make_passwords).then_some(answered_tx);
        // (the connection beside may hold the write lock: see `beside_writes`)
        mirror.wait_when_busy(Duration::ZERO)?;
        let journal = journal_beside(
            &mut mirror,
            clock,
            run_id,
            &batch,
            chunk,
            journaled_tx,
            answered,
        );
        let writes = target.apply_with(
            &batch,
            &passwords,
            cfg.directory.max_in_flight,
            opts.cancel.clone(),
            &waits,
            Some(crate::target::ldap::JournalLink {
                journaled,
                answered: answered_tx,
            }),
        );
        let beside = read_back_beside == Some(phase) && !unread.is_empty();
        let dns: Vec<&str> = if beside {
            unread.iter().map(|(_, dn)| dn.as_str()).collect()
        } else {
            Vec::new()
        };
        let read = async {
            if beside {
                let t0 = Instant::now();
                let uuids = target
                    .read_back_uuids(&dns, cfg.directory.max_in_flight, dir.entries.len())
                    .await;
                tracing::debug!(target: "dirbridge::run", added = dns.len(), read = uuids.iter().flatten().count(), phase, "new entries' entryUUIDs read back beside the phase in {:.2} s", t0.elapsed().as_secs_f64());
                Some(uuids)
            } else {
                None
            }
        };
        let (journal, mut results, uuids) = tokio::join!(journal, writes, read);
        mirror.wait_when_busy(crate::mirror::BUSY_TIMEOUT)?;
        let (ids, pending_took, recorded) = journal?;
        drop(dns);
        if uuids.is_some() {
            read_back = uuids;
        }
        // Active Directory refused a generated password (0000052D: length, complexity, history):
        // make a new one and try the add again, twice at most.
        for _ in 0..2 {
            let retry: Vec<usize> = results
                .iter()
                .enumerate()
                .filter(|(i, r)| {
                    passwords[*i].is_some() && matches!(r, Err(f) if f.text.starts_with("0000052D"))
                })
                .map(|(i, _)| i)
                .collect();
            if retry.is_empty() {
                break;
            }
            let len = cfg
                .lifecycle
                .as_ref()
                .map(|l| l.password_length)
                .unwrap_or(20);
            for i in &retry {
                tracing::warn!(target: "dirbridge::password", key = %batch[*i].key, "the domain's password policy refused the generated password; trying a new one");
                passwords[*i] = Some(crate::target::password::generate(len).map_err(|err| {
                    MirrorError::Io {
                        path: "/dev/urandom".into(),
                        err,
                    }
                })?);
            }
            let sub: Vec<&Change> = retry.iter().map(|i| batch[*i]).collect();
            let sub_pw: Vec<Option<crate::secret::Secret>> =
                retry.iter().map(|i| passwords[*i].clone()).collect();
            let again = target
                .apply_with(
                    &sub,
                    &sub_pw,
                    cfg.directory.max_in_flight,
                    opts.cancel.clone(),
                    &[],
                    None,
                )
                .await;
            for (i, r) in retry.into_iter().zip(again) {
                results[i] = r;
            }
        }
        // (what the journal has not recorded yet: answers after password retries)
        let mut outcomes = Vec::new();
        for ((((c, id), r), pw), recorded) in batch
            .iter()
            .zip(ids)
            .zip(results)
            .zip(passwords)
            .zip(recorded)
        {
            if let (Ok(_), Some(pw)) = (&r, &pw) {
                let first = |a: &str| {
                    c.attributes
                        .iter()
                        .find(|x| x.attr.eq_ignore_ascii_case(a))
                        .and_then(|x| x.new.first().cloned())
                };
                let payload = json!({"key": c.key, "dn": c.dn, "uid": first("uid"), "mail": first("mail"), "cn": first("cn"), "sAMAccountName": first("sAMAccountName"), "userPrincipalName": first("userPrincipalName")});
                let delivered = match (&password_cmd, &password_dir) {
                    (Some(cmd), _) => {
                        crate::target::password::deliver(cmd, &payload, pw, Duration::from_secs(30))
                            .map(|()| cmd[0].clone())
                    }
                    (None, Some(dir)) => {
                        crate::target::password::write_file(dir, &c.key, &payload, pw)
                    }
                    (None, None) => Err("no delivery configured".into()),
                };
                let note = match delivered {
                    Ok(to) => format!("initial password for record {} handed to {to}", c.key),
                    Err(e) => {
                        tracing::error!(target: "dirbridge::password", key = %c.key, dn = %c.dn, "password delivery failed: {e}");
                        outcome.plan.warnings.push(format!("record {}: password delivery failed: {e}; the account exists, its password is unknown: reset it", c.key));
                        format!("password delivery for record {} failed: {e}", c.key)
                    }
                };
                mirror.audit_note(run_id, "password", &note, &clock.rfc3339())?;
            }
            drop(pw);
            if !recorded {
                if let Some((ok, text)) = crate::target::ldap::journal_outcome(&r) {
                    outcomes.push((id, ok, text));
                }
            }
            match r {
                Ok(uuid) => {
                    if c.subject == Subject::Person {
                        if let Some(u) = uuid.as_ref().or(c.uuid.as_ref()) {
                            written.insert(u.clone());
                        }
                    }
                    *outcome.applied.entry(c.op.as_str()).or_default() += 1;
                    tracing::info!(target: "dirbridge::apply", op = c.op.as_str(), dn = %c.dn, key = %c.key, "{}", c.reason);
                    match (c.subject, c.op) {
                        (Subject::Person, Op::Add) => match uuid {
                            Some(u) => link_edits.push((c.key.clone(), Some(u))),
                            None => unread.push((c.key.clone(), c.dn.clone())),
                        },
                        (Subject::Person, Op::Delete) => link_edits.push((c.key.clone(), None)),
                        (Subject::Group, Op::Add) => groups_created.push(c.dn.clone()),
                        (Subject::Group, Op::Delete) => groups_deleted.push(c.dn.clone()),
                        _ => {}
                    }
                }
                Err(f) if f.rc == crate::target::ldap::NOT_SENT => {
                    // Left pending in the journal: the next run plans it again.
                    outcome.interrupted = true;
                }
                Err(f) => {
                    if c.op == Op::Add {
                        failed_adds.insert(crate::dn::normalize(&c.dn));
                    }
                    tracing::error!(target: "dirbridge::apply", op = c.op.as_str(), dn = %c.dn, key = %c.key, rc = f.rc, "quarantined: {f}");
                    outcome.failed.push(Failed {
                        change: (*c).clone(),
                        failure: f,
                    });
                }
            }
        }
        let done_started = Instant::now();
        if !outcomes.is_empty() {
            mirror.journal_done(&outcomes, &clock.rfc3339())?;
        }
        tracing::debug!(target: "dirbridge::run", phase, changes = batch.len(), "phase written and journaled in {:.3} s (pending rows beside the writes in {:.3} s; answers recorded after them in {:.3} s)", phase_started.elapsed().as_secs_f64(), pending_took.as_secs_f64(), done_started.elapsed().as_secs_f64());
    }
    if !unread.is_empty() {
        let uuids = match read_back {
            Some(uuids) => uuids,
            None => {
                let t0 = Instant::now();
                let dns: Vec<&str> = unread.iter().map(|(_, dn)| dn.as_str()).collect();
                let uuids = target
                    .read_back_uuids(&dns, cfg.directory.max_in_flight, dir.entries.len())
                    .await;
                tracing::debug!(target: "dirbridge::run", added = dns.len(), read = uuids.iter().flatten().count(), "new entries' entryUUIDs read back in {:.2} s", t0.elapsed().as_secs_f64());
                uuids
            }
        };
        let fields: foldhash::HashMap<&str, &crate::source::FieldMap> = export
            .records
            .iter()
            .filter(|r| added_digests.contains_key(&r.key))
            .map(|r| (r.key.as_str(), &*r.fields))
            .collect();
        for ((key, _), u) in unread.into_iter().zip(uuids) {
            if let Some(u) = u {
                let entry = added_digests.get(&key);
                if let (Some(&entry), Some(fields)) = (entry, fields.get(key.as_str())) {
                    added_settled.push((
                        key.clone(),
                        person_digest_of(fields, &u, entry),
                        u.clone(),
                    ));
                }
                written.insert(u.clone());
                link_edits.push((key, Some(u)));
            }
        }
    }
    if opts.summary_only {
        // (what a change was is in the journal now; the outcome counts them)
        for c in &mut changes {
            c.attributes = Vec::new();
        }
    }
    outcome.plan.changes = changes;
    outcome.transactions = target
        .transactions
        .load(std::sync::atomic::Ordering::Relaxed);
    target.unbind().await;
    laps.lap("directory writes");
    // (done long before the writes, unless they were few; taken back before this connection
    // looks at its cache again)
    let aside = aside.join().map(|done| {
        tracing::debug!(target: "dirbridge::run", "mirror rows beside the writes: {:.2} s", done.took.as_secs_f64());
        mirror.take_back(done.version, done.mirror);
        done.settled
    });
    if !outcome.interrupted {
        apply_apps(
            cfg,
            &app_inputs,
            &app_decisions,
            &clients,
            &mut mirror,
            run_id,
            clock,
            today,
            &mut outcome,
        )
        .await?;
    }
    laps.lap("applications");
    let mut links = links;
    mirror.save_link_edits(&mut links, link_edits, &now)?;
    mirror.note_groups(&groups_created, &groups_deleted, &now)?;
    mirror.save_posix_ids(&posix_new, &now)?;
    if cfg.lifecycle.is_some() && opts.only.is_none() && !export.keys_uncertain {
        mirror.save_departures(&overlay.departures)?;
    }
    let cutoff = cfg
        .audit_retention
        .and_then(|keep| clock.now().checked_sub(keep))
        .filter(|t| *t > std::time::UNIX_EPOCH);
    if let Some(cutoff) = cutoff {
        let before = humantime::format_rfc3339_seconds(cutoff).to_string();
        let n = mirror.expire(&before)?;
        if n > 0 {
            tracing::info!(target: "dirbridge::audit", rows = n, "forgot audit rows older than {before}");
        }
    }
    // The directory as read, the settled people and the export's records: saved beside the
    // writes (see `Aside`).
    let settled_saved = aside?;
    // The people this run added, as the adds wrote their entries (see `added_entry_digest`).
    if settled_saved && !outcome.interrupted && !added_settled.is_empty() {
        mirror.add_settled(&added_settled)?;
    }
    let quiet_next = outcome.plan.changes.is_empty()
        && outcome.plan.app_changes.is_empty()
        && outcome.failed.is_empty()
        && outcome.plan.quarantined.is_empty()
        && outcome.plan.refusals.is_empty()
        && !export.keys_uncertain
        && opts.only.is_none()
        && cfg.apps.is_empty();
    let marker = match (quiet_next, &export_hash, &config_hash) {
        (true, Some(e), Some(c)) => serde_json::to_string(&QuietMarker {
            export: e.clone(),
            config: c.clone(),
            records: Some(outcome.plan.records),
            header: export.header.clone(),
            today: today.to_string(),
            next_change: outcome.plan.next_change.clone(),
            entries: outcome.plan.entries_read,
        })
        .unwrap_or_default(),
        _ => "{}".to_string(),
    };
    mirror.put_state(QUIET, &marker)?;
    // The people this run planned nothing for, for the next run to skip while they stay so
    // (saved beside the writes; valid once the writes all went out).
    let settled_marker = match &config_hash {
        Some(c) if settled_saved && !outcome.interrupted => serde_json::to_string(&SettledMarker {
            config: c.clone(),
            today: today.to_string(),
        })
        .unwrap_or_default(),
        _ => "{}".to_string(),
    };
    mirror.put_state(SETTLED, &settled_marker)?;
    let mut kept_uniques = None;
    if let Some((mut cursor, snap)) = read_keep {
        cursor.recent = written.iter().cloned().collect();
        // slapd's refint rewrites group members without a change the content sync reports: after
        // a run that wrote, groups are read in full next time.
        if !outcome.applied.is_empty() {
            cursor.cookies.retain(|k, _| !k.starts_with("groups:"));
            // AD rewrites group members (linked values) when a person moves, without a new
            // uSNChanged on the group: read the groups in full next time.
            cursor.refresh_groups = true;
        }
        let internal = |e: serde_json::Error| RunError::Config(format!("internal: {e}"));
        if read_info.snapshot_changed || read_info.mode == "full" {
            // (the people were saved above, with the snapshot)
            mirror.save_read_rest(
                &dir.groups,
                uniques_to_keep(&snap.uniques, &dir.entries, &names),
            )?;
            mirror.put_state(READ_SNAPSHOT, SNAPSHOT_IN_ROWS)?;
        }
        mirror.put_state(
            READ_CURSOR,
            &serde_json::to_string(&cursor).map_err(internal)?,
        )?;
        kept_uniques = Some(snap.uniques);
    }
    // (the log the run's connection does not copy on its commits, when it grew large: after a
    // load, not after a churn)
    mirror.copy_log_over(crate::mirror::WAL_KEEP);
    laps.lap("mirror");
    laps.log();
    outcome.duration = started.elapsed();
    let status = if outcome.failed.is_empty() && outcome.plan.quarantined.is_empty() {
        "ok"
    } else {
        "quarantined"
    };
    // A run whose export was partly unreadable is not a "last good" reference for the shrink gate.
    let status = if export.keys_uncertain || opts.only.is_some() {
        "partial"
    } else {
        status
    };
    mirror.finish_run(
        run_id,
        &clock.rfc3339(),
        status,
        outcome.plan.records,
        &export.header,
        // The applied changes are in the journal: the run keeps only its counts (a refused run,
        // above, keeps its whole plan).
        &json!({
            "summary": plan::summary(&outcome.plan),
            "applied": outcome.applied,
            "failed": outcome.failed.len(),
            "interrupted": outcome.interrupted,
            "duration-seconds": outcome.duration.as_secs_f64(),
        }),
    )?;
    // (the export, the links and what mapping made, with the directory as read where no daemon
    // keeps it: freed after the run returns, not inside it; 0.07-0.1 s at 100,000 people)
    let leftovers = (export, links, linking, mapped);
    if let Some(slot) = &opts.mirror_slot {
        crate::drop_beside(leftovers);
        // What the snapshot tables hold now (saved above, or read from them unchanged).
        if let Some(uniques) = kept_uniques {
            // (the aside thread is done: this is the one reference left)
            let dir = std::sync::Arc::try_unwrap(dir).unwrap_or_else(|d| (*d).clone());
            mirror.keep_snapshot(crate::mirror::SnapshotRows {
                entries: dir.entries,
                groups: dir.groups,
                uniques,
            });
        }
        // (a daemon's connection stays open: what this run left in the log is copied now, not
        // on a commit of the next run's)
        mirror.checkpoint();
        slot.put(mirror);
    } else {
        crate::drop_beside((leftovers, dir, kept_uniques));
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Entry;
    use crate::source::{Export, Record};

    #[test]
    fn the_snapshot_read_ahead_is_the_mirrors_and_is_never_read_twice() {
        let dir = std::env::temp_dir().join(format!("dirbridge-ahead-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mirror.db");
        let mut m = Mirror::open(&path).unwrap();
        let entries: Vec<Entry> = (0..3)
            .map(|i| {
                Entry::new(
                    format!("uuid-{i}"),
                    format!("uid=u{i},ou=people,dc=example,dc=com"),
                    [("uid", vec![format!("u{i}")])].into(),
                )
            })
            .collect();
        let snap = DirSnapshot {
            entries: entries.clone(),
            ..Default::default()
        };
        m.save_snapshot(&snap).unwrap();
        // (no snapshot in rows said: none is read, ahead or not)
        let ahead = SnapshotAhead::default();
        ahead.start(path.clone());
        assert!(ahead.take_or_read(&m).is_none());
        m.put_state(READ_SNAPSHOT, SNAPSHOT_IN_ROWS).unwrap();
        // read ahead on its own connection: the rows the run's own read gives
        let ahead = SnapshotAhead::default();
        ahead.start(path.clone());
        assert!(matches!(*ahead.0.lock().unwrap(), Ahead::Reading(_)));
        assert_eq!(ahead.take_or_read(&m).unwrap().entries, entries);
        // needed before the read ahead began: read by the run, and not begun afterwards
        let ahead = SnapshotAhead::default();
        assert_eq!(ahead.take_or_read(&m).unwrap().entries, entries);
        ahead.start(path.clone());
        assert!(matches!(*ahead.0.lock().unwrap(), Ahead::Done));
        // a full read: what was read ahead is let go, and the run reads its own if it asks
        let ahead = SnapshotAhead::default();
        ahead.start(path.clone());
        ahead.discard();
        assert!(matches!(*ahead.0.lock().unwrap(), Ahead::Done));
        ahead.start(path);
        assert!(matches!(*ahead.0.lock().unwrap(), Ahead::Done));
        assert_eq!(ahead.take_or_read(&m).unwrap().entries, entries);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_export_is_parsed_early_unless_its_bytes_are_the_last_quiet_runs() {
        let dir = std::env::temp_dir().join(format!("dirbridge-early-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = crate::config::SourceConfig {
            kind: crate::config::SourceKind::Csv,
            path: dir.join("export.csv"),
            key: "id".into(),
            delimiter: ',',
            encoding: crate::config::Encoding::Utf8,
        };
        let t0 = Instant::now();
        let early = |quiet: Option<String>| {
            let (tx, mut rx) = tokio::sync::oneshot::channel();
            let told = std::cell::Cell::new(false);
            let parsed = early_export(&cfg, quiet, t0, tx, || told.set(true));
            let (hash, parsing) = rx.try_recv().unwrap();
            assert_eq!(parsing, parsed.is_some(), "it says whether it parses");
            // (the snapshot is read ahead when the export is parsed from bytes that were read)
            assert_eq!(
                told.get(),
                parsed.as_ref().is_some_and(|p| p.is_ok()),
                "the hook runs before a parse"
            );
            (hash, parsed)
        };
        // unreadable: no hash (never quiet), and the read's error is the parse's
        let (hash, parsed) = early(None);
        assert!(hash.is_none());
        let err = parsed.unwrap().unwrap_err().to_string();
        assert!(err.contains("export.csv"), "{err}");
        std::fs::write(&cfg.path, "id,name\n1,Ann\n2,Bob\n").unwrap();
        // bytes the last quiet run did not see: parsed, with the hash of the bytes parsed
        let (hash, parsed) = early(Some("another".into()));
        let (export, parsed_hash) = parsed.unwrap().unwrap();
        assert_eq!(export.records.len(), 2);
        assert_eq!(hash.as_deref(), Some(parsed_hash.as_str()));
        assert_eq!(hash, file_hash(&cfg.path));
        // the same bytes as the last quiet run: hashed, not parsed (the run may be quiet again)
        let (again, parsed) = early(hash.clone());
        assert_eq!(again, hash);
        assert!(parsed.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_write_beside_the_directory_writes_waits_for_the_other_lock_and_keeps_the_thread_running() {
        let dir = std::env::temp_dir().join(format!("dirbridge-beside-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut m = Mirror::open(&dir.join("mirror.db")).unwrap();
        // another connection (the aside thread's, in a run) holds the one write lock
        let other = rusqlite::Connection::open(dir.join("mirror.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        m.wait_when_busy(Duration::ZERO).unwrap();
        let row = || vec![("k1".to_string(), 7u64, "uuid-1".to_string())];
        let busy = m.add_settled(&row()).unwrap_err();
        assert!(busy.is_busy(), "{busy}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        // The lock is let go by a task of the same thread: a write that slept in SQLite's busy
        // handler would keep it from running (and fail as busy after the wait).
        let started = Instant::now();
        let written = rt.block_on(async {
            let release = async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                other.execute_batch("COMMIT").unwrap();
            };
            let (written, ()) =
                tokio::join!(beside_writes(&mut m, |m| m.add_settled(&row())), release);
            written
        });
        written.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        m.wait_when_busy(crate::mirror::BUSY_TIMEOUT).unwrap();
        assert_eq!(m.settled().unwrap().get("k1"), Some(&7));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn rec(key: &str, title: &str, manager: &str) -> Record {
        Record {
            key: key.into(),
            line: 1,
            fields: std::sync::Arc::new(
                [
                    ("employee_id", Box::<str>::from(key)),
                    ("title", title.into()),
                    ("manager_id", manager.into()),
                ]
                .into(),
            ),
        }
    }

    fn entry(key: &str, title: &str) -> Entry {
        Entry {
            digest: Default::default(),
            uuid: format!("u{key}"),
            dn: format!("uid=p{key},ou=people,dc=example,dc=com"),
            attrs: [("title", vec![title.to_string()])].into(),
        }
    }

    #[test]
    fn an_added_entry_has_the_digest_of_its_entry_as_read_back() {
        let delta = |attr: &str, v: &[&str]| plan::AttrDelta {
            attr: attr.into(),
            kind: plan::DeltaKind::Add,
            old: Default::default(),
            new: v.iter().map(|v| v.to_string()).collect::<Vec<_>>().into(),
        };
        let mut add = plan::Change {
            op: Op::Add,
            dn: "uid=jdoe,ou=people,dc=example,dc=com".into(),
            new_dn: None,
            key: "7".into(),
            uuid: None,
            attributes: vec![
                delta("objectClass", &["inetOrgPerson"]),
                delta("uid", &["jdoe"]),
                delta("givenName", &["John"]),
                delta("sn", &["Doe"]),
            ],
            reason: String::new(),
            phase: 1,
            subject: plan::Subject::Person,
        };
        // what the reader makes of the entry (names lower-cased), with any uuid
        let read = Entry::new(
            "1f0c-uuid".into(),
            add.dn.clone(),
            [
                ("givenname", vec!["John".to_string()]),
                ("objectclass", vec!["inetOrgPerson".to_string()]),
                ("sn", vec!["Doe".to_string()]),
                ("uid", vec!["jdoe".to_string()]),
            ]
            .into_iter()
            .collect(),
        );
        assert_eq!(added_entry_digest(&add), Some(read.digest()));
        // values in no fixed order on the wire, or a modify: not foretold
        add.attributes.push(delta("mail", &["a@x", "b@x"]));
        assert_eq!(added_entry_digest(&add), None);
        add.attributes.pop();
        add.op = Op::Modify;
        assert_eq!(added_entry_digest(&add), None);
    }

    #[test]
    fn the_peoples_unique_values_are_kept_once_and_read_back_as_the_search_returned_them() {
        let person = |u: &str, uid: Option<&str>, mail: Option<&str>| {
            let mut attrs: Vec<(&str, Vec<String>)> = vec![("cn", vec![format!("P {u}")])];
            if let Some(v) = uid {
                attrs.push(("uid", vec![v.to_string()]));
            }
            if let Some(v) = mail {
                attrs.push(("mail", vec![v.to_string()]));
            }
            Entry::new(
                u.into(),
                format!("uid={u},ou=people,dc=example,dc=com"),
                attrs.into_iter().collect(),
            )
        };
        let holder = |u: &str, dn: &str, vals: &[(&str, &str)]| {
            Entry::new(
                u.into(),
                dn.into(),
                vals.iter()
                    .map(|(a, v)| (*a, vec![v.to_string()]))
                    .collect(),
            )
        };
        let people = vec![
            person("u1", Some("ann"), Some("ann@x")),
            person("u2", Some("bob"), None),
            person("u3", None, None),
            person("u5", Some("eve"), None),
        ];
        let dn = |u: &str| format!("uid={u},ou=people,dc=example,dc=com");
        // as the search of unique values under base-dn returned them, in uuid order: u0 and u9
        // are not people (a service account, a group); u5's uid changed between the two searches
        let searched = vec![
            holder(
                "u0",
                "uid=svc,ou=system,dc=example,dc=com",
                &[("uid", "svc")],
            ),
            holder("u1", &dn("u1"), &[("mail", "ann@x"), ("uid", "ann")]),
            holder("u2", &dn("u2"), &[("uid", "bob")]),
            holder("u5", &dn("u5"), &[("uid", "eve2")]),
            holder("u9", "cn=x,ou=groups,dc=example,dc=com", &[("mail", "x@x")]),
        ];
        let names = vec!["uid".to_string(), "mail".to_string()];
        let kept: Vec<&str> = uniques_to_keep(&searched, &people, &names)
            .iter()
            .map(|e| e.uuid.as_str())
            .collect();
        assert_eq!(kept, ["u0", "u5", "u9"]);
        let rows: Vec<Entry> = searched
            .iter()
            .filter(|e| kept.contains(&e.uuid.as_str()))
            .cloned()
            .collect();
        // the holders indexed from the rows kept and the people are those the search returned
        let as_searched = taken_from(&searched, &people, &names);
        assert_eq!(taken_from(&rows, &people, &names), as_searched);
        assert_eq!(
            as_searched["uid"].get("eve2").map(|u| u.to_vec()),
            Some(vec!["u5".to_string()])
        );
        assert_eq!(as_searched["uid"].get("eve"), None);
        assert_eq!(
            as_searched["uid"].get("bob").map(|u| u.to_vec()),
            Some(vec!["u2".to_string()])
        );
        // a holder read back whole (after the run that wrote it) is the person's holder too
        let mut whole = searched.clone();
        whole[2] = people[1].clone();
        let kept: Vec<&str> = uniques_to_keep(&whole, &people, &names)
            .iter()
            .map(|e| e.uuid.as_str())
            .collect();
        assert_eq!(kept, ["u0", "u5", "u9"]);
        // rows of an older version (every holder has one) give the same holders
        assert_eq!(taken_from(&searched, &[], &names), as_searched);
        // a full read keeps the holders its people do not say, and indexes the same holders
        let (dir, kept) = ReadSnapshot {
            entries: people.clone(),
            groups: Vec::new(),
            uniques: searched.clone(),
        }
        .into_dir(&names, &BTreeSet::new());
        let kept: Vec<&str> = kept.uniques.iter().map(|e| e.uuid.as_str()).collect();
        assert_eq!(kept, ["u0", "u5", "u9"]);
        assert_eq!(dir.taken, as_searched);
    }

    #[test]
    fn a_large_export_is_settled_on_two_threads_with_the_same_answer() {
        // past crate::TWO_THREADS_FROM: a changed record in each half, one of them a manager
        let n = crate::TWO_THREADS_FROM + 905;
        let key = |i: usize| format!("{}", 100_000 + i);
        let records: Vec<Record> = (0..n)
            .map(|i| rec(&key(i), "t", if i == 7 { "100003" } else { "" }))
            .collect();
        let dir = DirSnapshot {
            entries: (0..n).map(|i| entry(&key(i), "x")).collect(),
            ..Default::default()
        };
        let links: BTreeMap<String, String> =
            (0..n).map(|i| (key(i), format!("u{}", key(i)))).collect();
        let prior: foldhash::HashMap<String, u64> = records
            .iter()
            .zip(&dir.entries)
            .map(|(r, e)| (r.key.clone(), person_digest(&r.fields, e)))
            .collect();
        let mut changed = records.clone();
        changed[3] = rec(&key(3), "new title", "");
        changed[n - 2] = rec(&key(n - 2), "new title", "");
        let export = Export {
            records: changed,
            ..Default::default()
        };
        let settled = settled_people(&prior, &export, &dir, &dir.uuid_index(), &links);
        // everyone but the two changed and the one who names a changed person (7 names 3)
        assert_eq!(settled.len(), n - 3);
        for i in [3, 7, n - 2] {
            assert!(!settled.contains_key(&key(i)), "{i}");
        }
        for i in [0, 2, 4, n / 2 - 1, n / 2, n - 3, n - 1] {
            assert_eq!(settled.get(&key(i)), Some(&i), "{i}");
        }
    }

    #[test]
    fn settled_people_are_those_unchanged_who_name_no_one_changed() {
        // 1 is the boss of 2 and 3; 4 reports to 3.
        let records = vec![
            rec("1", "Boss", ""),
            rec("2", "A", "1"),
            rec("3", "B", "1"),
            rec("4", "C", "3"),
        ];
        let dir = DirSnapshot {
            entries: ["1", "2", "3", "4"].iter().map(|k| entry(k, "x")).collect(),
            ..Default::default()
        };
        let links: BTreeMap<String, String> = ["1", "2", "3", "4"]
            .iter()
            .map(|k| (k.to_string(), format!("u{k}")))
            .collect();
        let digest = |r: &Record, d: &DirSnapshot| {
            let e = d
                .entries
                .iter()
                .find(|e| e.uuid == format!("u{}", r.key))
                .unwrap();
            person_digest(&r.fields, e)
        };
        let prior: foldhash::HashMap<String, u64> = records
            .iter()
            .map(|r| (r.key.clone(), digest(r, &dir)))
            .collect();
        let export = |records: Vec<Record>| Export {
            records,
            ..Default::default()
        };
        let settled = |records: Vec<Record>, dir: &DirSnapshot| {
            let mut v: Vec<String> =
                settled_people(&prior, &export(records), dir, &dir.uuid_index(), &links)
                    .into_keys()
                    .collect();
            v.sort();
            v
        };
        // nothing changed: everyone
        assert_eq!(settled(records.clone(), &dir), ["1", "2", "3", "4"]);
        // 3's record changed: 3, and 4 who names 3, are mapped again
        let mut changed = records.clone();
        changed[2] = rec("3", "B2", "1");
        assert_eq!(settled(changed, &dir), ["1", "2"]);
        // the boss's entry was edited: the boss and the two who name the boss
        let mut edited = dir.clone();
        edited.entries[0] = entry("1", "by hand");
        assert_eq!(settled(records.clone(), &edited), ["4"]);
        // 4 left the export; a newcomer 5 names 4: neither is settled
        let mut moved = records.clone();
        moved[3] = rec("5", "D", "4");
        assert_eq!(settled(moved, &dir), ["1", "2", "3"]);
        // no prior: no one
        assert!(settled_people(
            &Default::default(),
            &export(records),
            &dir,
            &dir.uuid_index(),
            &links
        )
        .is_empty());
    }
}

//! Lifecycle (pure): a person's state from their record and *today*, and the next date at which
//! anything changes. Today is a parameter; nothing here reads the clock.

use std::collections::BTreeMap;

use jiff::civil::Date;
use jiff::ToSpan;
use serde::Serialize;

use crate::config::{LeavePolicy, LifecycleConfig, PreHirePolicy};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum State {
    /// Before the start date and outside the pre-hire window: no entry yet.
    NotYet {
        start: String,
        create_from: Option<String>,
    },
    /// Before the start date, inside the window: the entry exists, disabled.
    PreHire {
        start: String,
    },
    Active,
    /// On leave (status); disabled or kept as configured.
    Leave,
    /// Gone (end date reached, terminated, or vanished from the export) since `since`: disabled,
    /// moved to `disabled-base`, deleted once `delete_on` is reached.
    Leaver {
        since: String,
        why: String,
        delete_on: Option<String>,
    },
}

impl State {
    /// Whether the entry should be disabled.
    pub fn disabled(&self, cfg: &LifecycleConfig) -> bool {
        match self {
            State::NotYet { .. } => true,
            State::PreHire { .. } => true,
            State::Active => false,
            State::Leave => cfg.leave == LeavePolicy::Disable,
            State::Leaver { .. } => true,
        }
    }

    pub fn is_leaver(&self) -> bool {
        matches!(self, State::Leaver { .. })
    }

    /// The entry should be deleted now (retention is over).
    pub fn purge(&self, today: Date) -> bool {
        match self {
            State::Leaver {
                delete_on: Some(d), ..
            } => parse_iso(d).map(|d| today >= d).unwrap_or(false),
            _ => false,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            State::NotYet { .. } => "not-yet",
            State::PreHire { .. } => "pre-hire",
            State::Active => "active",
            State::Leave => "leave",
            State::Leaver { .. } => "leaver",
        }
    }
}

fn parse_iso(s: &str) -> Option<Date> {
    s.parse::<Date>().ok()
}

/// Parse a date as HR exports write them: `2026-03-01`, `2026-03-01T00:00:00…`, `01.03.2026`,
/// `2026/03/01`. Empty is `None`.
pub fn parse_date(s: &str) -> Result<Option<Date>, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let head = t.get(..10).unwrap_or(t);
    if let Ok(d) = head.replace('/', "-").parse::<Date>() {
        return Ok(Some(d));
    }
    let parts: Vec<&str> = t.split('.').collect();
    if parts.len() == 3 {
        if let (Ok(d), Ok(m), Ok(y)) = (
            parts[0].parse::<i8>(),
            parts[1].parse::<i8>(),
            parts[2].parse::<i16>(),
        ) {
            if let Ok(date) = Date::new(y, m, d) {
                return Ok(Some(date));
            }
        }
    }
    Err(format!("{t:?} is not a date (use YYYY-MM-DD)"))
}

/// A person's state. `vanished_since`: the first day the record was missing from the export (for
/// people who have no record any more); `terminated_since`: the day a terminated status was first
/// seen.
pub fn state(
    fields: Option<&crate::source::FieldMap>,
    cfg: &LifecycleConfig,
    today: Date,
    first_seen_gone: Option<Date>,
) -> Result<State, String> {
    let retention = |since: Date| -> Option<String> {
        cfg.delete_after_days
            .and_then(|d| since.checked_add((d as i64).days()).ok())
            .map(|d| d.to_string())
    };
    let Some(f) = fields else {
        let since = first_seen_gone.unwrap_or(today);
        return Ok(State::Leaver {
            since: since.to_string(),
            why: "the record is no longer in the export".into(),
            delete_on: retention(since),
        });
    };
    let col = |c: &Option<String>| -> Result<Option<Date>, String> {
        match c {
            None => Ok(None),
            Some(name) => parse_date(f.get(name).map(|v| &**v).unwrap_or(""))
                .map_err(|e| format!("lifecycle: column {name}: {e}")),
        }
    };
    let start = col(&cfg.start_date)?;
    let end = col(&cfg.end_date)?;
    let status = cfg
        .status
        .as_ref()
        .and_then(|c| f.get(c))
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_default();
    if let Some(e) = end {
        if today >= e {
            return Ok(State::Leaver {
                since: e.to_string(),
                why: format!("end date {e} reached"),
                delete_on: retention(e),
            });
        }
    }
    if !status.is_empty() && cfg.terminated.iter().any(|t| t.to_lowercase() == status) {
        let since = first_seen_gone.unwrap_or(today);
        return Ok(State::Leaver {
            since: since.to_string(),
            why: format!("status {status:?}"),
            delete_on: retention(since),
        });
    }
    if let Some(s) = start {
        if today < s {
            let create_from = match cfg.pre_hire {
                PreHirePolicy::Skip => None,
                PreHirePolicy::Disabled => s.checked_sub((cfg.pre_hire_days as i64).days()).ok(),
            };
            return Ok(match create_from {
                Some(c) if today >= c => State::PreHire {
                    start: s.to_string(),
                },
                _ => State::NotYet {
                    start: s.to_string(),
                    create_from: create_from.map(|c| c.to_string()),
                },
            });
        }
    }
    if !status.is_empty() && cfg.on_leave.iter().any(|t| t.to_lowercase() == status) {
        return Ok(State::Leave);
    }
    Ok(State::Active)
}

/// The next day after `today` on which this person's state changes, if any is known.
pub fn next_change(
    state: &State,
    fields: Option<&crate::source::FieldMap>,
    cfg: &LifecycleConfig,
    today: Date,
) -> Option<Date> {
    let mut cands: Vec<Date> = Vec::new();
    match state {
        State::NotYet { start, create_from } => {
            if let Some(c) = create_from.as_deref().and_then(parse_iso) {
                cands.push(c);
            }
            if let Some(s) = parse_iso(start) {
                cands.push(s);
            }
        }
        State::PreHire { start } => {
            if let Some(s) = parse_iso(start) {
                cands.push(s);
            }
        }
        State::Leaver { delete_on, .. } => {
            if let Some(d) = delete_on.as_deref().and_then(parse_iso) {
                cands.push(d);
            }
        }
        State::Active | State::Leave => {}
    }
    if !state.is_leaver() {
        if let (Some(f), Some(c)) = (fields, &cfg.end_date) {
            if let Ok(Some(e)) = parse_date(f.get(c).map(|v| &**v).unwrap_or("")) {
                cands.push(e);
            }
        }
    }
    cands.into_iter().filter(|d| *d > today).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LifecycleConfig;

    fn cfg() -> LifecycleConfig {
        LifecycleConfig {
            start_date: Some("start".into()),
            end_date: Some("end".into()),
            status: Some("status".into()),
            terminated: vec!["terminated".into()],
            on_leave: vec!["leave".into()],
            leave: LeavePolicy::Disable,
            pre_hire: PreHirePolicy::Disabled,
            pre_hire_days: 7,
            ..LifecycleConfig::default()
        }
    }

    fn rec(start: &str, end: &str, status: &str) -> crate::source::FieldMap {
        [("start", start), ("end", end), ("status", status)]
            .iter()
            .map(|(k, v)| (k.to_string(), Box::<str>::from(*v)))
            .collect()
    }

    fn d(s: &str) -> Date {
        s.parse().unwrap()
    }

    #[test]
    fn states_over_time() {
        let c = cfg();
        let r = rec("2026-03-01", "2026-06-30", "");
        let at = |t: &str| state(Some(&r), &c, d(t), None).unwrap().name();
        assert_eq!(at("2026-02-01"), "not-yet");
        assert_eq!(at("2026-02-22"), "pre-hire", "7 days ahead");
        assert_eq!(at("2026-03-01"), "active");
        assert_eq!(at("2026-06-29"), "active");
        assert_eq!(
            at("2026-06-30"),
            "leaver",
            "a leaver from the day as-of >= end-date"
        );
        let s = state(Some(&r), &c, d("2026-07-01"), None).unwrap();
        assert!(!s.purge(d("2026-09-27")));
        assert!(s.purge(d("2026-09-28")), "90 days after 2026-06-30");
        assert_eq!(
            next_change(
                &state(Some(&r), &c, d("2026-02-01"), None).unwrap(),
                Some(&r),
                &c,
                d("2026-02-01")
            ),
            Some(d("2026-02-22"))
        );
        assert_eq!(
            next_change(
                &state(Some(&r), &c, d("2026-04-01"), None).unwrap(),
                Some(&r),
                &c,
                d("2026-04-01")
            ),
            Some(d("2026-06-30"))
        );
    }

    #[test]
    fn status_and_vanished() {
        let c = cfg();
        assert_eq!(
            state(Some(&rec("", "", "Leave")), &c, d("2026-01-01"), None).unwrap(),
            State::Leave
        );
        let s = state(
            Some(&rec("", "", "terminated")),
            &c,
            d("2026-01-05"),
            Some(d("2026-01-02")),
        )
        .unwrap();
        assert_eq!(
            s,
            State::Leaver {
                since: "2026-01-02".into(),
                why: "status \"terminated\"".into(),
                delete_on: Some("2026-04-02".into())
            }
        );
        let s = state(None, &c, d("2026-01-05"), None).unwrap();
        assert!(matches!(s, State::Leaver { ref since, .. } if since == "2026-01-05"));
        assert!(state(Some(&rec("01/02/2026x", "", "")), &c, d("2026-01-01"), None).is_err());
        assert_eq!(parse_date("01.03.2026").unwrap(), Some(d("2026-03-01")));
        assert_eq!(
            parse_date("2026-03-01T08:00:00Z").unwrap(),
            Some(d("2026-03-01"))
        );
    }
}

// ------------------------------------------------------------------ the run's lifecycle overlay

use std::collections::BTreeSet;

use crate::config::UsersConfig;
use crate::dn;
use crate::mapping::{Desired, MapError};
use crate::model::DirSnapshot;
use crate::source::Record;

/// An entry to delete because its retention is over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Purge {
    pub uuid: String,
    pub key: String,
    pub reason: String,
}

pub struct Input<'a> {
    pub cfg: &'a LifecycleConfig,
    pub today: Date,
    pub records: &'a [Record],
    /// Anchored entries whose key is not in the export: uuid → key.
    pub gone: &'a BTreeMap<String, String>,
    /// HR key → uuid of linked entries.
    pub linked: &'a BTreeMap<String, String>,
    /// HR key → the first day the person was seen gone (vanished or terminated), from the mirror.
    pub departures: &'a BTreeMap<String, Date>,
    /// Some keys could not be read: nobody is taken as having vanished.
    pub uncertain: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Overlay {
    pub states: BTreeMap<String, State>,
    /// Records that get no entry yet (before their pre-hire window).
    pub skip: BTreeSet<String>,
    /// Records whose entry is deleted in this run (retention over): left out of mapping.
    pub purged: BTreeSet<String>,
    pub purge: Vec<Purge>,
    /// HR key → forced parent (disabled-base) for leavers.
    pub parents: BTreeMap<String, String>,
    /// Leavers whose group memberships are dropped.
    pub drop_groups: BTreeSet<String>,
    /// Vanished people (no record) who are leavers now: uuid → key.
    pub vanished: BTreeMap<String, String>,
    pub errors: Vec<MapError>,
    /// The next day anything changes for anyone.
    pub next_change: Option<Date>,
    /// key → first day seen gone, to keep in the mirror (vanished or terminated people).
    pub departures: BTreeMap<String, Date>,
}

/// States for every record and every vanished person, before mapping.
pub fn evaluate(i: &Input<'_>) -> Overlay {
    let mut o = Overlay::default();
    let consider =
        |key: &str, fields: Option<&crate::source::FieldMap>, line: usize, o: &mut Overlay| {
            let first_gone = i.departures.get(key).copied();
            let st = match state(fields, i.cfg, i.today, first_gone) {
                Ok(s) => s,
                Err(reason) => {
                    o.errors.push(MapError {
                        key: key.to_string(),
                        line,
                        reason,
                    });
                    return;
                }
            };
            if let Some(n) = next_change(&st, fields, i.cfg, i.today) {
                o.next_change = Some(o.next_change.map_or(n, |c| c.min(n)));
            }
            let has_entry = i.linked.contains_key(key) || i.gone.values().any(|k| k == key);
            match &st {
                State::NotYet { .. } if !has_entry => {
                    o.skip.insert(key.to_string());
                }
                State::Leaver { .. } if !has_entry => {
                    // Gone before dirbridge ever made an account: nothing to create.
                    o.skip.insert(key.to_string());
                }
                State::Leaver { since, why, .. } => {
                    if !why.starts_with("end date") {
                        if let Ok(d) = since.parse::<Date>() {
                            o.departures.insert(key.to_string(), d);
                        }
                    }
                    if st.purge(i.today) {
                        o.purged.insert(key.to_string());
                    } else {
                        if let Some(b) = &i.cfg.disabled_base {
                            o.parents.insert(key.to_string(), b.clone());
                        }
                        if i.cfg.drop_groups {
                            o.drop_groups.insert(key.to_string());
                        }
                    }
                }
                _ => {}
            }
            o.states.insert(key.to_string(), st);
        };
    for r in i.records {
        consider(&r.key, Some(r.fields.as_ref()), r.line, &mut o);
    }
    if !i.uncertain {
        for (uuid, key) in i.gone {
            consider(key, None, 0, &mut o);
            if !o.purged.contains(key) {
                o.vanished.insert(uuid.clone(), key.clone());
            }
        }
    }
    // Purges: only people whose entry exists.
    let gone_by_key: BTreeMap<&String, &String> = i.gone.iter().map(|(u, k)| (k, u)).collect();
    for key in &o.purged {
        let uuid = i.linked.get(key).or_else(|| gone_by_key.get(key).copied());
        if let (Some(u), Some(State::Leaver { since, why, .. })) = (uuid, o.states.get(key)) {
            o.purge.push(Purge {
                uuid: u.clone(),
                key: key.clone(),
                reason: format!(
                    "record {key}: leaver since {since} ({why}); delete-after {} days is over",
                    i.cfg.delete_after_days.unwrap_or(0)
                ),
            });
        }
    }
    o
}

/// After mapping: lock attributes for every desired entry, and desired entries for vanished
/// leavers (their current attributes, under disabled-base).
pub fn finish(
    desired: &mut Vec<Desired>,
    o: &Overlay,
    cfg: &LifecycleConfig,
    users: &UsersConfig,
    dir: &DirSnapshot,
) {
    let lock = cfg.disabled_attrs();
    let set_lock = |d: &mut Desired, st: &State| {
        let disabled = st.disabled(cfg);
        for (a, v) in &lock {
            let templated = d.attrs.remove(a);
            let want = if disabled {
                v.clone().into()
            } else {
                match cfg.disable_method {
                    crate::config::DisableMethod::Ppolicy => Default::default(),
                    crate::config::DisableMethod::Attributes => templated.unwrap_or_default(),
                    // userAccountControl is set by crate::ad::accounts (other bits kept).
                    crate::config::DisableMethod::UserAccountControl => Default::default(),
                }
            };
            d.lifecycle_attrs.insert(a.clone(), want);
        }
        d.state = Some(Box::new(st.clone()));
    };
    for d in desired.iter_mut() {
        let st = o.states.get(&*d.key).cloned().unwrap_or(State::Active);
        set_lock(d, &st);
    }
    for (uuid, key) in &o.vanished {
        let Some(e) = dir.entries.iter().find(|e| &e.uuid == uuid) else {
            continue;
        };
        let Some(st) = o.states.get(key) else {
            continue;
        };
        let mut attrs = crate::names::NameMap::new();
        for a in users.attributes.keys() {
            let v = e.get(a);
            if !v.is_empty() {
                attrs.insert(a.clone(), v.to_vec().into());
            }
        }
        let dn = match (
            &cfg.disabled_base,
            dn::Dn::parse(&e.dn).ok().and_then(|d| d.first().cloned()),
        ) {
            (Some(b), Some(first)) => dn::child(&first.attr, &first.value, b),
            _ => e.dn.clone(),
        };
        let mut d = Desired {
            key: key.as_str().into(),
            line: 0,
            uuid: Some(uuid.as_str().into()),
            dn: dn.into(),
            attrs,
            placement: None,
            fields: Default::default(),
            lifecycle_attrs: Default::default(),
            state: None,
            settled: false,
        };
        set_lock(&mut d, st);
        desired.push(d);
    }
}

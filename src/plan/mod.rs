//! Planning (pure): desired state vs the directory's state gives an ordered list of changes, each
//! with the reason that caused it.

pub mod gates;
pub mod groups;
pub mod output;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::config::{Policy, UsersConfig};
use crate::dn;
use crate::mapping::link::{Linking, Relink};
use crate::mapping::{key_order, Desired};
use crate::model::{DirSnapshot, Entry, MatchRules, Rule};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    Add,
    Rename,
    Move,
    Modify,
    Link,
    Disable,
    Enable,
    AddMember,
    RemoveMember,
    Delete,
}

impl Op {
    pub const ALL: [Op; 10] = [
        Op::Add,
        Op::Modify,
        Op::Link,
        Op::Rename,
        Op::Move,
        Op::Disable,
        Op::Enable,
        Op::AddMember,
        Op::RemoveMember,
        Op::Delete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Rename => "rename",
            Op::Move => "move",
            Op::Modify => "modify",
            Op::Link => "link",
            Op::Disable => "disable",
            Op::Enable => "enable",
            Op::AddMember => "add-member",
            Op::RemoveMember => "remove-member",
            Op::Delete => "delete",
        }
    }
}

/// What a change is about: it decides the order of application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Subject {
    #[default]
    Person,
    Group,
    /// An OU created for placement.
    Container,
}

/// How one attribute changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeltaKind {
    /// Add `new` (the attribute had no values, or these values are added to it).
    Add,
    /// Remove the attribute (all of `old`).
    Delete,
    /// Replace all values with `new`.
    Replace,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttrDelta {
    /// The attribute's name (as configured; interned: a run holds a million of these).
    pub attr: crate::names::Name,
    pub kind: DeltaKind,
    pub old: crate::names::Values,
    pub new: crate::names::Values,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub op: Op,
    pub dn: String,
    /// For renames: the new DN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_dn: Option<String>,
    /// The HR key of the person the change is for.
    pub key: String,
    /// The entry's immutable id, when it exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    pub attributes: Vec<AttrDelta>,
    pub reason: String,
    /// Changes of a lower phase are applied before changes of a higher one; within a phase they may
    /// run concurrently.
    #[serde(skip)]
    pub phase: u32,
    #[serde(skip)]
    pub subject: Subject,
}

/// A record left alone in this run, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QuarantineNote {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub line: usize,
    pub reason: String,
}

/// Everything a run decided, before any write.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// Changes to applications (`[[apps]]`), applied after the directory's.
    pub app_changes: Vec<crate::apps::AppChange>,
    /// Applications that could not be read: their changes wait for a later run.
    pub apps_unreachable: BTreeMap<String, String>,
    pub quarantined: Vec<QuarantineNote>,
    pub relinked: Vec<Relink>,
    pub refusals: Vec<gates::Refusal>,
    /// Refusals an operator accepted for this run (`--accept-gate`); audited.
    pub accepted: Vec<gates::Refusal>,
    pub warnings: Vec<String>,
    /// The export could not be read well enough to know every key: no deletes in this run.
    pub deletes_suppressed: bool,
    pub records: usize,
    pub entries_read: usize,
    /// How the directory was read: "full" or "incremental", and how many entries were fetched.
    pub read_mode: String,
    pub fetched: usize,
    /// Extra requests that read the rest of ranged attributes (large AD groups).
    pub ranged_reads: u64,
    pub managed: usize,
    /// The day the lifecycle was evaluated for (with `[lifecycle]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub today: Option<String>,
    /// The next day on which the lifecycle changes anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_change: Option<String>,
    /// Records before their pre-hire window: no entry yet.
    pub not_yet: usize,
}

impl Plan {
    pub fn count(&self, op: Op) -> usize {
        self.changes.iter().filter(|c| c.op == op).count()
    }
}

pub struct PlanInput<'a> {
    pub users: &'a UsersConfig,
    /// A new person's values move from here into their add change, unless `keep_values`.
    pub desired: &'a mut [Desired],
    pub keep_values: bool,
    pub dir: &'a DirSnapshot,
    /// `dir`'s [`crate::model::UuidIndex`].
    pub by_uuid: &'a crate::model::UuidIndex<'a>,
    pub linking: &'a Linking,
    pub rules: &'a MatchRules,
    pub no_deletes: bool,
    pub only: Option<&'a str>,
    /// With `[lifecycle]`, people who vanish are leavers (disabled, then purged): entries are
    /// deleted only through `purge`.
    pub lifecycle: bool,
    pub purge: &'a [crate::lifecycle::Purge],
}

fn deltas_for(
    users: &UsersConfig,
    d: &Desired,
    e: &Entry,
    renamed: bool,
    rules: &MatchRules,
) -> Vec<AttrDelta> {
    let mut out = Vec::new();
    // object classes the entry lacks
    let have: BTreeSet<String> = e
        .get("objectClass")
        .iter()
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let missing: Vec<String> = users
        .object_classes
        .iter()
        .filter(|c| !have.contains(&c.to_ascii_lowercase()))
        .cloned()
        .collect();
    if !missing.is_empty() {
        out.push(AttrDelta {
            attr: "objectClass".into(),
            kind: DeltaKind::Add,
            old: e.get("objectClass").to_vec().into(),
            new: missing.into(),
        });
    }
    let anchor_now = e.get(&users.anchor);
    if !rules.same_values(&users.anchor, anchor_now, &[String::from(&*d.key)]) {
        out.push(AttrDelta {
            attr: users.anchor.as_str().into(),
            kind: if anchor_now.is_empty() {
                DeltaKind::Add
            } else {
                DeltaKind::Replace
            },
            old: anchor_now.to_vec().into(),
            new: String::from(&*d.key).into(),
        });
    }
    // Configured attributes (absent ones are removed), and computed ones (POSIX).
    let extra: Vec<&str> = d
        .attrs
        .keys()
        .filter(|a| !users.attributes.contains_key(a.as_str()))
        .map(|a| a.as_str())
        .collect();
    for attr in users.attributes.keys().map(String::as_str).chain(extra) {
        if users.policy_of(attr) == Policy::Initial {
            continue;
        }
        if d.lifecycle_attrs
            .keys()
            .any(|a| a.eq_ignore_ascii_case(attr))
        {
            continue; // the lifecycle owns it (a disable attribute)
        }
        if renamed && attr.eq_ignore_ascii_case(&users.rdn) {
            continue; // the rename sets it
        }
        let want: &[String] = d.attrs.get(attr).map(|v| &**v).unwrap_or(&[]);
        let have = e.get(attr);
        if rules.same_values(attr, have, want) {
            continue;
        }
        let kind = if have.is_empty() {
            DeltaKind::Add
        } else if want.is_empty() {
            DeltaKind::Delete
        } else {
            DeltaKind::Replace
        };
        out.push(AttrDelta {
            attr: attr.into(),
            kind,
            old: have.to_vec().into(),
            new: want.to_vec().into(),
        });
    }
    out
}

fn move_reason(d: &Desired, moved: bool, rdn: &str) -> String {
    use crate::lifecycle::State;
    match (d.state.as_deref(), d.placement, moved) {
        (Some(State::Leaver { since, why, .. }), _, true) => {
            format!("record {}: leaver since {since} ({why}); moved to lifecycle.disabled-base", d.key)
        }
        (_, Some(p), true) => format!(
            "record {} (line {}): users.placement[{p}] places it under {}",
            d.key,
            d.line,
            dn::Dn::parse(&d.dn).map(|x| x.parent().to_string()).unwrap_or_default()
        ),
        (_, None, true) => format!(
            "record {} (line {}): back under users.base (no placement rule matches, or no longer a leaver)",
            d.key, d.line
        ),
        (_, _, false) => format!("record {} (line {}): {rdn} changes", d.key, d.line),
    }
}

/// Disable / enable: the lifecycle's own attributes, as a change of its own.
fn lock_change(d: &Desired, e: &Entry, rules: &MatchRules) -> Option<Change> {
    use crate::lifecycle::State;
    let mut lock = Vec::new();
    for (attr, want) in &d.lifecycle_attrs {
        let have = e.get(attr);
        if rules.same_values(attr, have, want) {
            continue;
        }
        lock.push(AttrDelta {
            attr: *attr,
            kind: if have.is_empty() {
                DeltaKind::Add
            } else if want.is_empty() {
                DeltaKind::Delete
            } else {
                DeltaKind::Replace
            },
            old: have.to_vec().into(),
            new: want.clone(),
        });
    }
    if lock.is_empty() {
        return None;
    }
    let st = d.state.as_deref()?;
    let disabled =
        !matches!(st, State::Active) && d.lifecycle_attrs.values().any(|v| !v.is_empty());
    let why = match st {
        State::Leaver { since, why, .. } => format!("leaver since {since} ({why})"),
        other => format!("lifecycle state {}", other.name()),
    };
    Some(Change {
        op: if disabled { Op::Disable } else { Op::Enable },
        dn: d.dn.clone().into(),
        new_dn: None,
        key: d.key.clone().into(),
        uuid: Some(e.uuid.clone()),
        reason: format!("record {}: {why}", d.key),
        attributes: lock,
        phase: 0,
        subject: Subject::Person,
    })
}

/// Compute the ordered list of changes.
pub fn plan(input: PlanInput<'_>) -> Vec<Change> {
    let PlanInput {
        users,
        desired,
        keep_values,
        dir,
        by_uuid,
        linking,
        rules,
        no_deletes,
        only,
        lifecycle,
        purge,
    } = input;
    let entry = |u: &str| by_uuid.get(u).and_then(|i| dir.entries.get(i));
    // The people's adds, renames and modifies: on two threads for a large run, each half in
    // order, the halves one after the other (45 ms on one thread at 100,000 people).
    let people = |part: &mut [Desired]| -> [Vec<Change>; 3] {
        let mut adds = Vec::new();
        let mut renames = Vec::new();
        let mut modifies = Vec::new();
        for d in part.iter_mut() {
            if let Some(only) = only {
                if &*d.key != only {
                    continue;
                }
            }
            // (a settled person's entry is the one they were settled with: no lookup for 100,000 of
            // them, 12 ms)
            if d.settled && d.uuid.is_some() {
                continue;
            }
            let existing = d.uuid.as_deref().and_then(entry);
            match existing {
                None => {
                    // (exactly as many as it holds: a run may hold 100,000 of these)
                    let mut attributes =
                        Vec::with_capacity(2 + d.attrs.len() + d.lifecycle_attrs.len());
                    attributes.push(AttrDelta {
                        attr: "objectClass".into(),
                        kind: DeltaKind::Add,
                        old: Default::default(),
                        new: users.object_classes.clone().into(),
                    });
                    attributes.push(AttrDelta {
                        attr: users.anchor.as_str().into(),
                        kind: DeltaKind::Add,
                        old: Default::default(),
                        new: String::from(&*d.key).into(),
                    });
                    let (attrs, lifecycle_attrs) = if keep_values {
                        (d.attrs.clone(), d.lifecycle_attrs.clone())
                    } else {
                        (
                            std::mem::take(&mut d.attrs),
                            std::mem::take(&mut d.lifecycle_attrs),
                        )
                    };
                    for (attr, vals) in attrs.into_iter().chain(lifecycle_attrs) {
                        if vals.is_empty() {
                            continue;
                        }
                        attributes.push(AttrDelta {
                            attr,
                            kind: DeltaKind::Add,
                            old: Default::default(),
                            new: vals,
                        });
                    }
                    adds.push(Change {
                        op: Op::Add,
                        dn: d.dn.clone().into(),
                        new_dn: None,
                        key: d.key.clone().into(),
                        uuid: None,
                        attributes,
                        reason: format!("new in the export (record {}, line {})", d.key, d.line),
                        phase: 0,
                        subject: Subject::Person,
                    });
                }
                // (their entry is as the last run left it, and it planned nothing for them)
                Some(_) if d.settled => {}
                Some(e) => {
                    let renamed = *e.dn != *d.dn && dn::normalize(&e.dn) != dn::normalize(&d.dn);
                    if renamed {
                        let old_rdn = dn::Dn::parse(&e.dn)
                            .ok()
                            .and_then(|x| x.first().map(|a| a.value.clone()));
                        let new_rdn = d
                            .attrs
                            .get(&users.rdn)
                            .and_then(|v| v.first())
                            .cloned()
                            .unwrap_or_default();
                        let moved = dn::Dn::parse(&e.dn).map(|x| x.parent().normalized()).ok()
                            != dn::Dn::parse(&d.dn).map(|x| x.parent().normalized()).ok();
                        renames.push(Change {
                            op: if moved { Op::Move } else { Op::Rename },
                            dn: e.dn.clone(),
                            new_dn: Some(d.dn.clone().into()),
                            key: d.key.clone().into(),
                            uuid: Some(e.uuid.clone()),
                            attributes: vec![AttrDelta {
                                attr: users.rdn.as_str().into(),
                                kind: DeltaKind::Replace,
                                old: old_rdn.into_iter().collect(),
                                new: new_rdn.into(),
                            }],
                            reason: move_reason(d, moved, &users.rdn),
                            phase: 0,
                            subject: Subject::Person,
                        });
                    }
                    if let Some(c) = lock_change(d, e, rules) {
                        modifies.push(c);
                    }
                    let attributes = deltas_for(users, d, e, renamed, rules);
                    if !attributes.is_empty() {
                        let names: Vec<&str> = attributes.iter().map(|a| a.attr.as_str()).collect();
                        let correlated = linking.correlated.contains_key(&*d.key);
                        modifies.push(Change {
                            op: if correlated { Op::Link } else { Op::Modify },
                            dn: d.dn.clone().into(),
                            new_dn: None,
                            key: d.key.clone().into(),
                            uuid: Some(e.uuid.clone()),
                            reason: if correlated {
                                format!(
                                    "record {} (line {}): users.correlate found this entry without the anchor; linked (the anchor is written), differs in {}",
                                    d.key,
                                    d.line,
                                    names.join(", ")
                                )
                            } else {
                                format!("record {} (line {}) differs in {}", d.key, d.line, names.join(", "))
                            },
                            attributes,
                            phase: 0,
                            subject: Subject::Person,
                        });
                    }
                }
            }
        }
        [adds, renames, modifies]
    };
    let [adds, renames, modifies] = if desired.len() >= crate::TWO_THREADS_FROM {
        let (first, second) = desired.split_at_mut(desired.len() / 2);
        std::thread::scope(|s| {
            let other = s.spawn(|| people(second));
            let mut out = people(first);
            match other.join() {
                Ok(rest) => {
                    for (o, r) in out.iter_mut().zip(rest) {
                        o.extend(r);
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
            out
        })
    } else {
        people(desired)
    };
    let mut deletes = Vec::new();
    if !no_deletes {
        for p in purge {
            if only.is_some_and(|o| o != p.key) {
                continue;
            }
            if let Some(e) = entry(&p.uuid) {
                deletes.push(Change {
                    op: Op::Delete,
                    dn: e.dn.clone(),
                    new_dn: None,
                    key: p.key.clone(),
                    uuid: Some(p.uuid.clone()),
                    attributes: vec![],
                    reason: p.reason.clone(),
                    phase: 0,
                    subject: Subject::Person,
                });
            }
        }
    }
    if !no_deletes && !lifecycle {
        for (uuid, key) in &linking.gone {
            if let Some(only) = only {
                if key != only {
                    continue;
                }
            }
            if let Some(e) = entry(uuid) {
                deletes.push(Change {
                    op: Op::Delete,
                    dn: e.dn.clone(),
                    new_dn: None,
                    key: key.clone(),
                    uuid: Some(uuid.clone()),
                    attributes: vec![],
                    reason: format!("record {key} is no longer in the export"),
                    phase: 0,
                    subject: Subject::Person,
                });
            }
        }
    }
    let mut out = adds;
    out.extend(renames);
    out.extend(modifies);
    out.extend(deletes);
    out
}

/// OUs to create: placement bases that do not exist, for rules that say `create = true`, when
/// someone is placed there.
pub fn containers(users: &UsersConfig, desired: &[Desired], dir: &DirSnapshot) -> Vec<Change> {
    let mut out: BTreeMap<String, Change> = BTreeMap::new();
    for d in desired {
        let Some(rule) = d.placement.and_then(|p| users.placement.get(p as usize)) else {
            continue;
        };
        let norm = dn::normalize(&rule.base);
        if !rule.create || !dir.missing_bases.contains(&norm) || out.contains_key(&norm) {
            continue;
        }
        let Some(first) = dn::Dn::parse(&rule.base)
            .ok()
            .and_then(|x| x.first().cloned())
        else {
            continue;
        };
        let class = if first.attr.eq_ignore_ascii_case("ou") {
            "organizationalUnit"
        } else {
            "extensibleObject"
        };
        out.insert(
            norm,
            Change {
                op: Op::Add,
                dn: rule.base.clone(),
                new_dn: None,
                key: format!("users.placement[{}]", rule.index),
                uuid: None,
                attributes: vec![
                    AttrDelta {
                        attr: "objectClass".into(),
                        kind: DeltaKind::Add,
                        old: Default::default(),
                        new: vec![class.into()].into(),
                    },
                    AttrDelta {
                        attr: first.attr.as_str().into(),
                        kind: DeltaKind::Add,
                        old: Default::default(),
                        new: first.value.clone().into(),
                    },
                ],
                reason: format!(
                    "users.placement[{}] places people under it and says create = true",
                    rule.index
                ),
                phase: 0,
                subject: Subject::Container,
            },
        );
    }
    out.into_values().collect()
}

/// The people a plan renames or moves: by entryUUID, each one's DN before and the attribute
/// types of its RDN then; and their DNs before and after (normalized).
struct Moved {
    before: std::collections::HashMap<String, (String, Vec<String>)>,
    dns: std::collections::HashSet<String>,
}

impl Moved {
    fn of(changes: &[Change]) -> Moved {
        let mut m = Moved {
            before: Default::default(),
            dns: Default::default(),
        };
        for c in changes
            .iter()
            .filter(|c| c.subject == Subject::Person && matches!(c.op, Op::Rename | Op::Move))
        {
            if let Some(u) = &c.uuid {
                let rdn: Vec<String> = dn::Dn::parse(&c.dn)
                    .ok()
                    .and_then(|d| d.rdns.first().cloned())
                    .map(|r| r.iter().map(|a| a.attr.to_ascii_lowercase()).collect())
                    .unwrap_or_default();
                m.before.insert(u.clone(), (c.dn.clone(), rdn));
            }
            m.dns.insert(dn::normalize(&c.dn));
            m.dns.extend(c.new_dn.as_deref().map(dn::normalize));
        }
        m
    }

    /// Where a person's change (not an add, rename, move or delete) can go before the renames:
    /// `Some(None)` as it is; `Some(Some(dn))` addressed to the entry's DN before its own rename
    /// (a surname's new `cn` and `sn` beside its new `uid`); `None` when it must wait for them:
    /// it names a renamed or moved entry (or one under it) in a value, old or new, whatever the
    /// attribute's syntax, changes an attribute of its own entry's RDN before the rename, or
    /// enables a moved entry (a leaver disabled before the move, a returner enabled after it).
    fn before_renames(&self, c: &Change) -> Option<Option<String>> {
        if self.dns.is_empty() {
            return Some(None);
        }
        let names_one = c
            .attributes
            .iter()
            .flat_map(|a| a.old.iter().chain(a.new.iter()))
            .filter(|v| v.contains('='))
            .any(|v| self.names(&dn::normalize(v)));
        if names_one {
            return None;
        }
        match c.uuid.as_ref().and_then(|u| self.before.get(u)) {
            // (an account is enabled once it is back where it belongs, never in the leavers' OU)
            Some(_) if c.op == Op::Enable => None,
            Some((old_dn, rdn)) => {
                let in_rdn = c
                    .attributes
                    .iter()
                    .any(|a| rdn.iter().any(|r| a.attr.as_str().eq_ignore_ascii_case(r)));
                (!in_rdn).then(|| Some(old_dn.clone()))
            }
            None if self.dns.contains(&dn::normalize(&c.dn)) => None,
            None => Some(None),
        }
    }

    /// Whether the normalized DN `v` is a moved entry's or under one.
    fn names(&self, v: &str) -> bool {
        self.dns.contains(v) || dn::normalized_ancestors(v).any(|a| self.dns.contains(a))
    }
}

/// Put changes in the order they are applied and number their phases: new OUs; people's adds (a
/// manager's entry before the references to it); people's modifies that name no renamed or moved
/// entry (a renamed entry's own by its DN before the rename); renames and moves; the other
/// modifies; new groups; member adds; member removals; group deletes; people's deletes last.
///
/// The modifies go before the renames where they can because each rename and each delete sets
/// OpenLDAP's refint overlay (2.5) scanning the whole database in the background, about 2 s of
/// CPU per operation at 100,000 people: a core taken from the writes that follow for many
/// minutes. The 100,000-person churn's 4,091 modifies, sent by four `ldapmodify` at once, took
/// 1.28 s after its 840 renames and 0.44-0.51 s before them; the churn's sync went from
/// 2.99-3.09 to 2.73-2.85 s (docs/performance.md).
pub fn order(mut out: Vec<Change>, rules: &MatchRules) -> Vec<Change> {
    // (in place: at 100,000 joiners a second vector of changes is 16 MB more at the peak)
    let person_add = |c: &Change| c.op == Op::Add && c.subject == Subject::Person;
    out.sort_by_key(|c| !person_add(c));
    let n_adds = out.iter().take_while(|c| person_add(c)).count();
    let (adds, rest) = out.split_at_mut(n_adds);
    adds.sort_by(|a, b| key_order(&a.key, &b.key));
    let waves = add_waves(adds, rules);
    let max_wave = waves.iter().copied().max().unwrap_or(0);
    for (c, w) in adds.iter_mut().zip(waves) {
        c.phase = 1 + w;
    }
    let w = max_wave + 1;
    let moved = Moved::of(rest);
    for c in rest {
        c.phase = match (c.subject, c.op) {
            (Subject::Container, _) => 0,
            (Subject::Person, Op::Rename | Op::Move) => w + 2,
            (Subject::Person, Op::Delete) => w + 8,
            (Subject::Person, _) => match moved.before_renames(c) {
                Some(dn) => {
                    if let Some(dn) = dn {
                        c.dn = dn;
                    }
                    w + 1
                }
                None => w + 3,
            },
            (Subject::Group, Op::Add) => w + 4,
            (Subject::Group, Op::AddMember | Op::Modify) => w + 5,
            (Subject::Group, Op::RemoveMember) => w + 6,
            (Subject::Group, _) => w + 7,
        };
    }
    out.sort_by(|a, b| {
        a.phase
            .cmp(&b.phase)
            .then_with(|| key_order(&a.key, &b.key))
    });
    out
}

/// Active Directory: DN-valued attributes of new entries (`manager`, a linked attribute) are set
/// in a modify after every add, so that the order of creation never matters and cycles in the HR
/// data (A manages B manages A) do not fail. A self-reference is dropped.
pub fn linked_after_add(changes: Vec<Change>, rules: &MatchRules) -> Vec<Change> {
    let mut out = Vec::with_capacity(changes.len());
    let mut later = Vec::new();
    for mut c in changes {
        if c.op == Op::Add && c.subject == Subject::Person {
            let own = dn::normalize(&c.dn);
            let (links, rest): (Vec<AttrDelta>, Vec<AttrDelta>) = c
                .attributes
                .into_iter()
                .partition(|a| rules.rule(&a.attr) == Rule::Dn);
            c.attributes = rest;
            let links: Vec<AttrDelta> = links
                .into_iter()
                .map(|mut a| {
                    a.new.retain(|v| dn::normalize(v) != own);
                    a
                })
                .filter(|a| !a.new.is_empty())
                .collect();
            if !links.is_empty() {
                let names: Vec<&str> = links.iter().map(|a| a.attr.as_str()).collect();
                later.push(Change {
                    op: Op::Modify,
                    dn: c.dn.clone(),
                    new_dn: None,
                    key: c.key.clone(),
                    uuid: None,
                    reason: format!(
                        "record {}: {} set once the entry exists (a linked attribute in Active Directory)",
                        c.key,
                        names.join(", ")
                    ),
                    attributes: links,
                    phase: 0,
                    subject: Subject::Person,
                });
            }
        }
        out.push(c);
    }
    out.extend(later);
    out
}

/// For adds of consecutive phases written as one batch: each add's waits, the adds of an earlier
/// phase it names in a DN-valued attribute (its manager's new entry, say), indices into `batch`.
/// An add is then sent once those have been answered, not once its whole phase before has: the
/// same order, without the pipeline emptying between phases (39 of them for the bench's 10,000
/// people).
pub fn add_waits(batch: &[&Change], rules: &MatchRules) -> Vec<Vec<usize>> {
    named_adds(batch, rules)
        .into_iter()
        .zip(batch)
        .map(|(named, c)| {
            named
                .into_iter()
                .filter(|&j| batch[j].phase < c.phase)
                .collect()
        })
        .collect()
}

/// For each add, the other adds it names in a DN-valued attribute (indices; sorted, each once).
fn named_adds(adds: &[&Change], rules: &MatchRules) -> Vec<Vec<usize>> {
    let idx: foldhash::HashMap<String, usize> = adds
        .iter()
        .enumerate()
        .map(|(i, c)| (dn::normalize(&c.dn), i))
        .collect();
    // (most have one dependency or none: a vector, not a set, for each)
    adds.iter()
        .enumerate()
        .map(|(i, c)| {
            let mut d: Vec<usize> = c
                .attributes
                .iter()
                .filter(|a| rules.rule(&a.attr) == Rule::Dn)
                .flat_map(|a| a.new.iter())
                .filter_map(|v| idx.get(&dn::normalize(v)).copied())
                .filter(|&j| j != i)
                .collect();
            d.sort_unstable();
            d.dedup();
            d
        })
        .collect()
}

/// Order adds so that an entry another new entry refers to (say, as its `manager`) is added first.
/// Cycles (and self-references) are broken by putting the rest in the last wave.
fn add_waves(adds: &[Change], rules: &MatchRules) -> Vec<u32> {
    let deps = named_adds(&adds.iter().collect::<Vec<_>>(), rules);
    let mut wave = vec![u32::MAX; adds.len()];
    let mut done = 0;
    let mut w = 0u32;
    while done < adds.len() {
        let ready: Vec<usize> = (0..adds.len())
            .filter(|&i| {
                wave[i] == u32::MAX && deps[i].iter().all(|&j| wave[j] != u32::MAX && wave[j] < w)
            })
            .collect();
        if ready.is_empty() {
            for x in wave.iter_mut().filter(|x| **x == u32::MAX) {
                *x = w;
            }
            break;
        }
        for i in ready {
            wave[i] = w;
            done += 1;
        }
        w += 1;
    }
    wave
}

/// Summary counts for output.
pub fn summary(plan: &Plan) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for op in Op::ALL {
        m.insert(op.as_str(), plan.count(op));
    }
    for op in crate::apps::AppOp::ALL {
        let n = plan.app_changes.iter().filter(|c| c.op == op).count();
        if op.as_str().starts_with("app-") {
            m.insert(op.as_str(), n);
        } else if n > 0 {
            // add-member/remove-member to apps count under the same names as the directory's.
            *m.entry(op.as_str()).or_default() += n;
        }
    }
    m.insert("quarantined", plan.quarantined.len());
    m.insert("relinked", plan.relinked.len());
    m.insert("records", plan.records);
    m.insert("entries-read", plan.entries_read);
    m.insert("entries-fetched", plan.fetched);
    m.insert("ranged-reads", plan.ranged_reads as usize);
    m
}

#[cfg(test)]
mod tests;

//! Group planning (pure): membership deltas (never a whole-list replace), group creation, empty
//! groups handled explicitly.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{AttrDelta, Change, DeltaKind, Op, Subject};
use crate::config::{EmptyPolicy, GroupKind, GroupRule, MemberPolicy};
use crate::dn::{self, Dn};
use crate::mapping::groups::GroupDesired;
use crate::model::{Entry, MatchRules};

pub struct GroupPlanInput<'a> {
    pub rules: &'a [GroupRule],
    /// normalised DN → desired group
    pub desired: &'a BTreeMap<String, GroupDesired>,
    /// Group entries read from the directory.
    pub existing: &'a [Entry],
    /// Normalised DNs of groups dirbridge created (from the mirror).
    pub created: &'a BTreeSet<String>,
    /// Member values that belong to people dirbridge manages (normalised DNs, and uids, folded):
    /// under `members = "merge"` only these are ever removed.
    pub managed_members: &'a BTreeSet<String>,
    pub rules_match: &'a MatchRules,
    /// People renamed or moved in this run: normalised old DN → new DN. The server's referential
    /// integrity may rename their member values before the group changes are applied.
    pub renamed: &'a HashMap<String, String>,
}

fn fold(kind: GroupKind, rules: &MatchRules, v: &str) -> String {
    rules.fold(kind.member_attr(), v)
}

/// The rule a group belongs to: by its desired entry, else (a group dirbridge created whose
/// value is gone) by its parent.
fn rule_for<'a>(
    rules: &'a [GroupRule],
    dn_norm: &str,
    desired: Option<&GroupDesired>,
) -> Option<&'a GroupRule> {
    if let Some(d) = desired {
        return rules.get(d.rule);
    }
    let parent = Dn::parse(dn_norm).ok()?.parent().normalized();
    rules
        .iter()
        .find(|r| r.for_each.is_some() && dn::normalize(&r.parent) == parent)
}

pub fn plan_groups(i: &GroupPlanInput<'_>) -> Vec<Change> {
    let mut out = Vec::new();
    let existing: HashMap<String, &Entry> = i
        .existing
        .iter()
        .map(|e| (dn::normalize(&e.dn), e))
        .collect();
    let mut all: BTreeSet<String> = i.desired.keys().cloned().collect();
    all.extend(
        i.created
            .iter()
            .filter(|c| existing.contains_key(*c))
            .cloned(),
    );
    for norm in all {
        let want = i.desired.get(&norm);
        let Some(rule) = rule_for(i.rules, &norm, want) else {
            continue;
        };
        let kind = rule.kind;
        let attr = kind.member_attr();
        let name = format!("groups[{}]", rule.index);
        let when = rule
            .when
            .as_deref()
            .map(|w| format!(" (when {w})"))
            .unwrap_or_default();
        let desired: BTreeMap<String, (String, String)> = want
            .map(|w| {
                w.members
                    .iter()
                    .map(|(m, k)| (fold(kind, i.rules_match, m), (m.clone(), k.clone())))
                    .collect()
            })
            .unwrap_or_default();
        match existing.get(&norm) {
            None => {
                let Some(w) = want else { continue };
                if desired.is_empty() || !rule.create {
                    continue;
                }
                let parsed = Dn::parse(&w.dn).ok();
                let Some(first) = parsed.as_ref().and_then(|d| d.first().cloned()) else {
                    continue;
                };
                let mut attributes = vec![
                    AttrDelta {
                        attr: "objectClass".into(),
                        kind: DeltaKind::Add,
                        old: Default::default(),
                        new: vec![kind.object_class().to_string()].into(),
                    },
                    AttrDelta {
                        attr: first.attr.as_str().into(),
                        kind: DeltaKind::Add,
                        old: Default::default(),
                        new: first.value.clone().into(),
                    },
                ];
                if let Some(t) = rule.group_type {
                    attributes.push(AttrDelta {
                        attr: "sAMAccountName".into(),
                        kind: DeltaKind::Add,
                        old: Default::default(),
                        new: vec![crate::ad::fit_sam(&first.value, "")].into(),
                    });
                    attributes.push(AttrDelta {
                        attr: "groupType".into(),
                        kind: DeltaKind::Add,
                        old: Default::default(),
                        new: t.to_string().into(),
                    });
                }
                if let Some(g) = rule.gid_number {
                    attributes.push(AttrDelta {
                        attr: "gidNumber".into(),
                        kind: DeltaKind::Add,
                        old: Default::default(),
                        new: g.to_string().into(),
                    });
                }
                attributes.push(AttrDelta {
                    attr: attr.into(),
                    kind: DeltaKind::Add,
                    old: Default::default(),
                    new: desired.values().map(|(m, _)| m.clone()).collect(),
                });
                out.push(Change {
                    op: Op::Add,
                    dn: w.dn.clone(),
                    new_dn: None,
                    key: name.clone(),
                    uuid: None,
                    attributes,
                    reason: format!(
                        "{name}{when} grants it to {} people; the group does not exist yet",
                        desired.len()
                    ),
                    phase: 0,
                    subject: Subject::Group,
                });
            }
            Some(e) => {
                let current: BTreeMap<String, String> = e
                    .get(attr)
                    .iter()
                    .map(|v| (fold(kind, i.rules_match, v), v.clone()))
                    .collect();
                let placeholder = fold(kind, i.rules_match, &rule.placeholder);
                // What stays: what the rules grant, plus (merge) members dirbridge does not manage.
                let mut keep: BTreeMap<String, String> = desired
                    .iter()
                    .map(|(f, (m, _))| (f.clone(), m.clone()))
                    .collect();
                // Active Directory groups: members that are not people dirbridge manages (nested
                // groups, contacts, computers) are left alone under both policies.
                if rule.members == MemberPolicy::Merge || kind == crate::config::GroupKind::AdGroup
                {
                    for (f, v) in &current {
                        if !i.managed_members.contains(f) && *f != placeholder {
                            keep.insert(f.clone(), v.clone());
                        }
                    }
                }
                if keep.is_empty() && kind.member_required() {
                    if rule.empty == EmptyPolicy::Delete && i.created.contains(&norm) {
                        out.push(Change {
                            op: Op::Delete,
                            dn: e.dn.clone(),
                            new_dn: None,
                            key: name.clone(),
                            uuid: Some(e.uuid.clone()),
                            attributes: vec![],
                            reason: format!(
                                "{name}{when} grants it to nobody now; empty = \"delete\""
                            ),
                            phase: 0,
                            subject: Subject::Group,
                        });
                        continue;
                    }
                    keep.insert(placeholder.clone(), rule.placeholder.clone());
                }
                let adds: Vec<String> = keep
                    .iter()
                    .filter(|(f, _)| !current.contains_key(*f))
                    .map(|(_, v)| v.clone())
                    .collect();
                let mut removes: Vec<String> = current
                    .iter()
                    .filter(|(f, _)| !keep.contains_key(*f))
                    .map(|(_, v)| v.clone())
                    .collect();
                if kind != GroupKind::PosixGroup {
                    let extra: Vec<String> = removes
                        .iter()
                        .filter_map(|v| i.renamed.get(&dn::normalize(v)))
                        .filter(|new| !keep.contains_key(&fold(kind, i.rules_match, new)))
                        .cloned()
                        .collect();
                    removes.extend(extra);
                }
                if !adds.is_empty() {
                    let who: Vec<&str> = keep
                        .keys()
                        .filter(|f| !current.contains_key(*f))
                        .filter_map(|f| desired.get(f).map(|(_, k)| k.as_str()))
                        .collect();
                    out.push(Change {
                        op: Op::AddMember,
                        dn: e.dn.clone(),
                        new_dn: None,
                        key: name.clone(),
                        uuid: Some(e.uuid.clone()),
                        attributes: vec![AttrDelta {
                            attr: attr.into(),
                            kind: DeltaKind::Add,
                            old: Default::default(),
                            new: adds.into(),
                        }],
                        reason: if who.is_empty() {
                            format!(
                                "{name}: the group would be empty; placeholder {}",
                                rule.placeholder
                            )
                        } else {
                            format!("{name}{when} now grants it to record(s) {}", who.join(", "))
                        },
                        phase: 0,
                        subject: Subject::Group,
                    });
                }
                if !removes.is_empty() {
                    out.push(Change {
                        op: Op::RemoveMember,
                        dn: e.dn.clone(),
                        new_dn: None,
                        key: name.clone(),
                        uuid: Some(e.uuid.clone()),
                        attributes: vec![AttrDelta {
                            attr: attr.into(),
                            kind: DeltaKind::Delete,
                            old: removes.into(),
                            new: Default::default(),
                        }],
                        reason: format!(
                            "{name}{when} no longer grants it to these members{}",
                            if rule.members == MemberPolicy::Exact {
                                " (members = \"exact\")"
                            } else {
                                ""
                            }
                        ),
                        phase: 0,
                        subject: Subject::Group,
                    });
                }
            }
        }
    }
    out
}

/// Limit group changes to one person (`--only KEY`): only that person's member values are added
/// or removed; no group is deleted; a new group is created with that person alone.
pub fn only_person(
    changes: Vec<Change>,
    key: &str,
    desired: &[crate::mapping::Desired],
    dir: &crate::model::DirSnapshot,
    linking: &crate::mapping::link::Linking,
    rules: &MatchRules,
) -> Vec<Change> {
    let mut mine: BTreeSet<String> = BTreeSet::new();
    for d in desired.iter().filter(|d| &*d.key == key) {
        mine.insert(rules.fold("member", &d.dn));
        for u in d.attrs.get("uid").into_iter().flatten() {
            mine.insert(rules.fold("memberUid", u));
        }
    }
    let uuid = linking.by_key.get(key).cloned().or_else(|| {
        linking
            .gone
            .iter()
            .find(|(_, k)| k.as_str() == key)
            .map(|(u, _)| u.clone())
    });
    if let Some(e) = uuid.and_then(|u| dir.entries.iter().find(|e| e.uuid == u)) {
        mine.insert(rules.fold("member", &e.dn));
        for u in e.get("uid") {
            mine.insert(rules.fold("memberUid", u));
        }
    }
    let is_mine = |a: &str, v: &str| mine.contains(&rules.fold(a, v));
    changes
        .into_iter()
        .filter(|c| c.op != Op::Delete)
        .filter_map(|mut c| {
            for a in c.attributes.iter_mut() {
                if a.attr == "objectClass" {
                    continue;
                }
                let attr = a.attr;
                if matches!(c.op, Op::AddMember | Op::Add)
                    && ["member", "uniqueMember", "memberUid"].contains(&attr.as_str())
                {
                    a.new.retain(|v| is_mine(&attr, v));
                }
                if c.op == Op::RemoveMember {
                    a.old.retain(|v| is_mine(&attr, v));
                }
            }
            let empty = c.attributes.iter().any(|a| {
                ["member", "uniqueMember", "memberUid"].contains(&a.attr.as_str())
                    && a.new.is_empty()
                    && a.old.is_empty()
            });
            if empty {
                None
            } else {
                Some(c)
            }
        })
        .collect()
}

//! Group rules (pure): which managed groups each person belongs to, and why.

use std::collections::{BTreeMap, BTreeSet};

use minijinja::Value;
use serde::Serialize;

use super::{describe, truthy, Desired, MapError, Mapper};
use crate::config::{GroupKind, GroupRule};
use crate::dn;

/// One managed group as the rules want it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupDesired {
    pub dn: String,
    /// Index of the `[[groups]]` rule.
    pub rule: usize,
    /// Member values (DNs, or uids for posixGroup) → the HR key that brings each.
    pub members: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default)]
pub struct GroupsOut {
    /// normalised group DN → the group.
    pub groups: BTreeMap<String, GroupDesired>,
    pub errors: Vec<MapError>,
}

pub(crate) fn template_name(rule: usize) -> String {
    format!("groups[{rule}].dn")
}

impl Mapper {
    /// The groups every desired person belongs to. `exclude`: keys whose memberships are dropped
    /// (leavers, when the lifecycle says so).
    pub fn groups(
        &self,
        rules: &[GroupRule],
        desired: &[Desired],
        exclude: &BTreeSet<String>,
    ) -> GroupsOut {
        let mut out = GroupsOut::default();
        if rules.is_empty() {
            return out;
        }
        let exprs: Vec<Option<Result<minijinja::Expression<'_, '_>, String>>> = rules
            .iter()
            .map(|r| {
                r.when.as_ref().map(|w| {
                    self.env
                        .compile_expression(w)
                        .map_err(|e| format!("groups[{}].when: {}", r.index, describe(&e)))
                })
            })
            .collect();
        // Static groups exist in the plan even with no member (so that they are emptied).
        for r in rules.iter().filter(|r| r.for_each.is_none()) {
            out.groups
                .entry(dn::normalize(&r.dn))
                .or_insert_with(|| GroupDesired {
                    dn: r.dn.clone(),
                    rule: r.index,
                    members: BTreeMap::new(),
                });
        }
        for d in desired {
            if exclude.contains(&*d.key) {
                continue;
            }
            let mut ctx: BTreeMap<String, Value> = self
                .header
                .iter()
                .map(|h| (h.clone(), Value::from("")))
                .collect();
            for (k, v) in d.fields.iter() {
                ctx.insert(k.to_string(), Value::from(&**v));
            }
            ctx.insert("n".into(), Value::from(""));
            let ctx = Value::from_object(ctx);
            for (r, expr) in rules.iter().zip(&exprs) {
                let granted = match expr {
                    None => Ok(true),
                    Some(Err(m)) => Err(m.clone()),
                    Some(Ok(e)) => {
                        truthy(e, &ctx).map_err(|m| format!("groups[{}].when: {m}", r.index))
                    }
                };
                let granted = match granted {
                    Ok(g) => g,
                    Err(reason) => {
                        out.errors.push(MapError {
                            key: d.key.clone().into(),
                            line: d.line as usize,
                            reason,
                        });
                        continue;
                    }
                };
                if !granted {
                    continue;
                }
                let dn = match &r.for_each {
                    None => r.dn.clone(),
                    Some(field) => {
                        if d.fields
                            .get(field)
                            .map(|v| v.trim().is_empty())
                            .unwrap_or(true)
                        {
                            continue; // no value, no group
                        }
                        let rendered = self
                            .env
                            .get_template(&template_name(r.index))
                            .and_then(|t| t.render(ctx.clone()));
                        match rendered {
                            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
                            Ok(_) => continue,
                            Err(e) => {
                                out.errors.push(MapError {
                                    key: d.key.clone().into(),
                                    line: d.line as usize,
                                    reason: format!("groups[{}].dn: {}", r.index, describe(&e)),
                                });
                                continue;
                            }
                        }
                    }
                };
                let member = match r.kind {
                    GroupKind::PosixGroup => match d.attrs.get("uid").and_then(|v| v.first()) {
                        Some(u) => u.clone(),
                        None => continue,
                    },
                    _ => d.dn.clone().into(),
                };
                out.groups
                    .entry(dn::normalize(&dn))
                    .or_insert_with(|| GroupDesired {
                        dn: dn.clone(),
                        rule: r.index,
                        members: BTreeMap::new(),
                    })
                    .members
                    .insert(member, d.key.clone().into());
            }
        }
        out
    }
}

//! Safety gates (pure): refuse the whole plan, before any write, when it looks like an accident.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Change, DeltaKind, Op};
use crate::config::SafetyConfig;
use crate::dn::Dn;

/// Every gate's name, as `--accept-gate` takes it.
pub const GATES: &[&str] = &[
    "max-deletes",
    "max-delete-percent",
    "max-disables",
    "max-disable-percent",
    "max-moves",
    "max-move-percent",
    "max-attribute-removal-percent",
    "min-source-percent",
    "columns",
    "empty-directory",
    "protected",
];

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Refusal {
    pub gate: &'static str,
    pub message: String,
}

/// What the last successful run saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LastGood {
    pub records: usize,
    pub header: Vec<String>,
}

pub struct GateInput<'a> {
    pub safety: &'a SafetyConfig,
    pub changes: &'a [Change],
    /// Anchored entries in the directory.
    pub managed: usize,
    /// Records in this export (valid and quarantined).
    pub source_records: usize,
    pub header: &'a [String],
    pub last_good: Option<&'a LastGood>,
    /// The directory read returned no entry under `users.base`.
    pub dir_empty: bool,
    /// Links the mirror holds.
    pub links: usize,
    /// The entries changes may touch (for `protected` filters), and how to compare values.
    pub entries: &'a [crate::model::Entry],
    pub rules: &'a crate::model::MatchRules,
}

fn pct(n: usize, of: usize) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 * 100.0 / of as f64
    }
}

fn gate_name(op: &str, percent: bool) -> &'static str {
    match (op, percent) {
        ("delete", false) => "max-deletes",
        ("delete", true) => "max-delete-percent",
        ("disable", false) => "max-disables",
        ("disable", true) => "max-disable-percent",
        ("move", false) => "max-moves",
        _ => "max-move-percent",
    }
}

pub fn check(g: &GateInput<'_>) -> Vec<Refusal> {
    let s = g.safety;
    let mut out = Vec::new();
    // Per-operation limits: a count and a share of the managed entries.
    let limits: [(Op, &str, &str, u64, f64, &str); 3] = [
        (
            Op::Delete,
            "deleted",
            "delete",
            s.max_deletes,
            s.max_delete_percent,
            "; is the export truncated?",
        ),
        (
            Op::Disable,
            "disabled",
            "disable",
            s.max_disables,
            s.max_disable_percent,
            "; check the export's dates and statuses",
        ),
        (
            Op::Move,
            "moved",
            "move",
            s.max_moves,
            s.max_move_percent,
            "",
        ),
    ];
    for (op, verb, name, max, max_pct, hint) in limits {
        let n = g.changes.iter().filter(|c| c.op == op).count();
        if n as u64 > max {
            out.push(Refusal {
                gate: gate_name(name, false),
                message: format!(
                    "{n} entries would be {verb}, more than safety.max-{name}s = {max}{hint}"
                ),
            });
        }
        if n > 0 && pct(n, g.managed) > max_pct {
            out.push(Refusal {
                gate: gate_name(name, true),
                message: format!(
                    "{n} of {} managed entries ({:.1}%) would be {verb}, more than safety.max-{name}-percent = {max_pct}%{hint}",
                    g.managed,
                    pct(n, g.managed)
                ),
            });
        }
    }
    let mut removed: BTreeMap<String, usize> = BTreeMap::new();
    for c in g.changes.iter().filter(|c| c.op == Op::Modify) {
        for a in &c.attributes {
            if a.kind == DeltaKind::Delete {
                *removed.entry(a.attr.to_string()).or_default() += 1;
            }
        }
    }
    for (attr, n) in removed {
        if pct(n, g.managed) > s.max_attribute_removal_percent {
            out.push(Refusal {
                gate: "max-attribute-removal-percent",
                message: format!(
                    "{attr} would be removed from {n} of {} managed entries ({:.1}%), more than safety.max-attribute-removal-percent = {}%; a template or a column may be wrong",
                    g.managed,
                    pct(n, g.managed),
                    s.max_attribute_removal_percent
                ),
            });
        }
    }
    for c in g.changes.iter().filter(|c| c.op == Op::RemoveMember) {
        let n: usize = c.attributes.iter().map(|a| a.old.len()).sum();
        if pct(n, g.managed) > s.max_attribute_removal_percent {
            out.push(Refusal {
                gate: "max-attribute-removal-percent",
                message: format!(
                    "{n} members would be removed from {} ({:.1}% of {} managed entries), more than safety.max-attribute-removal-percent = {}%; a group rule may be wrong",
                    c.dn,
                    pct(n, g.managed),
                    g.managed,
                    s.max_attribute_removal_percent
                ),
            });
        }
    }
    if let Some(last) = g.last_good {
        if last.records > 0 && pct(g.source_records, last.records) < s.min_source_percent {
            out.push(Refusal {
                gate: "min-source-percent",
                message: format!(
                    "the export has {} records, {:.1}% of the {} of the last good run, below safety.min-source-percent = {}%; is the export truncated?",
                    g.source_records,
                    pct(g.source_records, last.records),
                    last.records,
                    s.min_source_percent
                ),
            });
        }
        let gone: Vec<&str> = last
            .header
            .iter()
            .filter(|c| !g.header.contains(c))
            .map(String::as_str)
            .collect();
        if !last.header.is_empty() && !gone.is_empty() {
            out.push(Refusal {
                gate: "columns",
                message: format!(
                    "the export lost the column(s) {} since the last good run; check the HR export's format",
                    gone.join(", ")
                ),
            });
        }
    }
    if g.dir_empty && g.links > 0 {
        out.push(Refusal {
            gate: "empty-directory",
            message: format!(
                "the directory returned no entries under users.base while the mirror holds {} links; check the bind identity's read access and size limits",
                g.links
            ),
        });
    }
    if !s.protected.is_empty() {
        let prot: Vec<Dn> = s
            .protected
            .iter()
            .filter(|p| !p.trim_start().starts_with('('))
            .filter_map(|p| Dn::parse(p).ok())
            .collect();
        let filters: Vec<(&String, crate::filter::Filter)> = s
            .protected
            .iter()
            .filter(|p| p.trim_start().starts_with('('))
            .filter_map(|p| crate::filter::Filter::parse(p).ok().map(|f| (p, f)))
            .collect();
        let by_uuid: foldhash::HashMap<&str, &crate::model::Entry> =
            g.entries.iter().map(|e| (e.uuid.as_str(), e)).collect();
        for c in g.changes {
            if c.op == Op::Add {
                continue;
            }
            if let Some(e) = c.uuid.as_deref().and_then(|u| by_uuid.get(u)) {
                if let Some((src, _)) = filters.iter().find(|(_, f)| f.matches(e, g.rules)) {
                    out.push(Refusal {
                        gate: "protected",
                        message: format!(
                            "{} {} would touch an entry that matches safety.protected {src}",
                            c.op.as_str(),
                            c.dn
                        ),
                    });
                    continue;
                }
            }
            if let Ok(d) = Dn::parse(&c.dn) {
                if let Some(p) = prot.iter().find(|p| d.is_within(p)) {
                    out.push(Refusal {
                        gate: "protected",
                        message: format!(
                            "{} {} would touch a protected entry (safety.protected {p})",
                            c.op.as_str(),
                            c.dn
                        ),
                    });
                }
            }
        }
    }
    out
}

/// The same count and share limits for each application: deactivations count as disables, app
/// deletes as deletes, against the accounts the mirror links in that app. A `when` typo that puts
/// everyone out of scope is refused like a truncated export.
pub fn check_apps(
    s: &SafetyConfig,
    changes: &[crate::apps::AppChange],
    linked: &BTreeMap<String, usize>,
) -> Vec<Refusal> {
    use crate::apps::AppOp;
    let mut out = Vec::new();
    for (app, of) in linked {
        for (op, verb, name, max, max_pct) in [
            (
                AppOp::AppDeactivate,
                "deactivated",
                "disable",
                s.max_disables,
                s.max_disable_percent,
            ),
            (
                AppOp::AppDelete,
                "deleted",
                "delete",
                s.max_deletes,
                s.max_delete_percent,
            ),
        ] {
            let n = changes
                .iter()
                .filter(|c| &c.app == app && c.op == op)
                .count();
            if n as u64 > max {
                out.push(Refusal {
                    gate: gate_name(name, false),
                    message: format!(
                        "{n} accounts in app {app} would be {verb}, more than safety.max-{name}s = {max}; check the export and apps.{app}.when"
                    ),
                });
            }
            if n > 0 && pct(n, *of) > max_pct {
                out.push(Refusal {
                    gate: gate_name(name, true),
                    message: format!(
                        "{n} of {of} accounts in app {app} ({:.1}%) would be {verb}, more than safety.max-{name}-percent = {max_pct}%; check the export and apps.{app}.when",
                        pct(n, *of)
                    ),
                });
            }
        }
    }
    out
}

//! Plan output: a per-entry diff to review, JSON for scripts, LDIF replayable with ldapmodify.

use std::fmt::Write as _;

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::{summary, Change, DeltaKind, Op, Plan};

fn quote(v: &str) -> String {
    format!("{v:?}")
}

/// Human-readable diff.
pub fn text(plan: &Plan) -> String {
    let mut s = String::new();
    for c in &plan.changes {
        match c.op {
            Op::Add => {
                let _ = writeln!(s, "+ add {}", c.dn);
            }
            Op::Modify | Op::Link | Op::Disable | Op::Enable => {
                let _ = writeln!(s, "~ {} {}", c.op.as_str(), c.dn);
            }
            Op::Rename | Op::Move => {
                let _ = writeln!(
                    s,
                    "> {} {} → {}",
                    c.op.as_str(),
                    c.dn,
                    c.new_dn.as_deref().unwrap_or("")
                );
            }
            Op::AddMember | Op::RemoveMember => {
                let _ = writeln!(s, "~ {} {}", c.op.as_str(), c.dn);
            }
            Op::Delete => {
                let _ = writeln!(s, "- delete {}", c.dn);
            }
        }
        let _ = writeln!(s, "    why: {}", c.reason);
        if matches!(c.op, Op::Rename | Op::Move) {
            continue;
        }
        for a in &c.attributes {
            let old = a
                .old
                .iter()
                .map(|v| quote(v))
                .collect::<Vec<_>>()
                .join(", ");
            let new = a
                .new
                .iter()
                .map(|v| quote(v))
                .collect::<Vec<_>>()
                .join(", ");
            match (c.op, a.kind) {
                (Op::Add, _) => {
                    let _ = writeln!(s, "    + {}: {new}", a.attr);
                }
                (_, DeltaKind::Add) if !a.old.is_empty() => {
                    let _ = writeln!(s, "    + {}: {new} (kept: {old})", a.attr);
                }
                (_, DeltaKind::Add) => {
                    let _ = writeln!(s, "    + {}: {new}", a.attr);
                }
                (_, DeltaKind::Delete) => {
                    let _ = writeln!(s, "    - {}: {old}", a.attr);
                }
                (_, DeltaKind::Replace) => {
                    let _ = writeln!(s, "    ~ {}: {old} → {new}", a.attr);
                }
            }
        }
    }
    for c in &plan.app_changes {
        let sign = match c.op {
            crate::apps::AppOp::AppCreate => "+",
            crate::apps::AppOp::AppDelete => "-",
            _ => "~",
        };
        let what = if c.subject == super::Subject::Group {
            format!("group {:?}", c.account)
        } else {
            format!("{} (record {})", c.account, c.key)
        };
        let _ = writeln!(s, "{sign} {} {}: {what}", c.op.as_str(), c.app);
        let _ = writeln!(s, "    why: {}", c.reason);
        for a in &c.attributes {
            let j = |v: &[String]| v.iter().map(|x| quote(x)).collect::<Vec<_>>().join(", ");
            match (c.op, a.kind) {
                (crate::apps::AppOp::AppCreate, _) | (_, DeltaKind::Add) => {
                    let _ = writeln!(s, "    + {}: {}", a.attr, j(&a.new));
                }
                (_, DeltaKind::Delete) => {
                    let _ = writeln!(s, "    - {}: {}", a.attr, j(&a.old));
                }
                (_, DeltaKind::Replace) => {
                    let _ = writeln!(s, "    ~ {}: {} → {}", a.attr, j(&a.old), j(&a.new));
                }
            }
        }
    }
    for (app, why) in &plan.apps_unreachable {
        let _ = writeln!(s, "! app {app} unreachable: {why}");
    }
    for q in &plan.quarantined {
        let who = q
            .key
            .as_deref()
            .map(|k| format!("record {k}"))
            .unwrap_or_else(|| "a record".into());
        let _ = writeln!(s, "! quarantined {who} (line {}): {}", q.line, q.reason);
    }
    for r in &plan.relinked {
        let _ = writeln!(s, "= linked record {} to {} ({})", r.key, r.dn, r.why);
    }
    for w in &plan.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    if let Some(t) = &plan.today {
        let _ = writeln!(
            s,
            "lifecycle as of {t}: {} record(s) before their pre-hire window; next change on {}",
            plan.not_yet,
            plan.next_change.as_deref().unwrap_or("(none known)")
        );
    }
    if plan.deletes_suppressed {
        let _ = writeln!(s, "note: some records could not be read well enough to know their key: this run deletes nothing");
    }
    for r in &plan.refusals {
        let _ = writeln!(
            s,
            "REFUSED by safety.{}: {} (to go ahead anyway: --accept-gate {})",
            r.gate, r.message, r.gate
        );
    }
    for r in &plan.accepted {
        let _ = writeln!(s, "accepted (--accept-gate {}): {}", r.gate, r.message);
    }
    let _ = writeln!(s, "{}", one_line(plan));
    s
}

/// `Plan: 3 add, 1 modify, 0 rename, 1 delete; 2 quarantined; 58 records, 60 entries read`
pub fn one_line(plan: &Plan) -> String {
    let extra: String = [
        Op::Move,
        Op::Link,
        Op::Disable,
        Op::Enable,
        Op::AddMember,
        Op::RemoveMember,
    ]
    .iter()
    .filter(|op| plan.count(**op) > 0)
    .map(|op| format!(", {} {}", plan.count(*op), op.as_str()))
    .collect();
    let apps: String = crate::apps::AppOp::ALL
        .iter()
        .map(|op| (op, plan.app_changes.iter().filter(|c| c.op == *op).count()))
        .filter(|(_, n)| *n > 0)
        .map(|(op, n)| {
            format!(
                ", {n} {}{}",
                if op.as_str().starts_with("app-") {
                    ""
                } else {
                    "app "
                },
                op.as_str()
            )
        })
        .collect();
    let extra = format!("{extra}{apps}");
    format!(
        "{} add, {} modify, {} rename, {} delete{extra}; {} quarantined; {} records, {} entries read{}{}",
        plan.count(Op::Add),
        plan.count(Op::Modify),
        plan.count(Op::Rename),
        plan.count(Op::Delete),
        plan.quarantined.len(),
        plan.records,
        plan.entries_read,
        if plan.read_mode == "incremental" {
            format!(" (incremental read, {} fetched)", plan.fetched)
        } else {
            String::new()
        },
        if plan.refusals.is_empty() {
            ""
        } else {
            "; REFUSED by a safety gate, nothing written"
        }
    )
}

fn change_json(c: &Change) -> Value {
    let mut attrs = Map::new();
    for a in &c.attributes {
        attrs.insert(
            a.attr.to_string(),
            json!({"kind": a.kind, "old": a.old, "new": a.new}),
        );
    }
    let mut o = Map::new();
    o.insert("op".into(), json!(c.op.as_str()));
    o.insert("target".into(), json!("directory"));
    o.insert("dn".into(), json!(c.dn));
    if let Some(n) = &c.new_dn {
        o.insert("new-dn".into(), json!(n));
    }
    o.insert("key".into(), json!(c.key));
    if let Some(u) = &c.uuid {
        o.insert("uuid".into(), json!(u));
    }
    o.insert("attributes".into(), Value::Object(attrs));
    o.insert("reason".into(), json!(c.reason));
    Value::Object(o)
}

fn app_change_json(c: &crate::apps::AppChange) -> Value {
    let mut attrs = Map::new();
    for a in &c.attributes {
        attrs.insert(
            a.attr.to_string(),
            json!({"kind": a.kind, "old": a.old, "new": a.new}),
        );
    }
    let mut o = Map::new();
    o.insert("op".into(), json!(c.op.as_str()));
    o.insert("target".into(), json!(c.app));
    o.insert("dn".into(), json!(c.account));
    o.insert("key".into(), json!(c.key));
    o.insert(
        "subject".into(),
        json!(if c.subject == super::Subject::Group {
            "group"
        } else {
            "account"
        }),
    );
    if let Some(u) = &c.remote_id {
        o.insert("remote-id".into(), json!(u));
    }
    o.insert("attributes".into(), Value::Object(attrs));
    o.insert("reason".into(), json!(c.reason));
    Value::Object(o)
}

pub fn json_value(plan: &Plan) -> Value {
    let mut summary_v = serde_json::to_value(summary(plan)).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut summary_v {
        m.insert("refused".into(), json!(!plan.refusals.is_empty()));
        m.insert("deletes-suppressed".into(), json!(plan.deletes_suppressed));
        if let Some(t) = &plan.today {
            m.insert("today".into(), json!(t));
            m.insert("next-change".into(), json!(plan.next_change));
            m.insert("not-yet".into(), json!(plan.not_yet));
        }
    }
    json!({
        "summary": summary_v,
        "changes": plan.changes.iter().map(change_json).chain(plan.app_changes.iter().map(app_change_json)).collect::<Vec<_>>(),
        "apps-unreachable": plan.apps_unreachable,
        "quarantined": plan.quarantined,
        "relinked": plan.relinked,
        "refusals": plan.refusals,
        "warnings": plan.warnings,
    })
}

pub fn json(plan: &Plan) -> String {
    let mut s = serde_json::to_string_pretty(&json_value(plan)).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

/// RFC 2849: a SAFE-STRING starts with neither space, ':' nor '<', has no NUL, CR, LF or
/// non-ASCII byte, and (by convention) does not end with a space.
fn safe(v: &str) -> bool {
    let b = v.as_bytes();
    if b.is_empty() {
        return true;
    }
    if matches!(b[0], b' ' | b':' | b'<') || b[b.len() - 1] == b' ' {
        return false;
    }
    b.iter()
        .all(|&c| c != 0 && c != b'\n' && c != b'\r' && c.is_ascii())
}

fn line(out: &mut String, attr: &str, v: &str) {
    let l = if safe(v) {
        format!("{attr}: {v}")
    } else {
        format!(
            "{attr}:: {}",
            base64::engine::general_purpose::STANDARD.encode(v.as_bytes())
        )
    };
    // fold at 76 columns
    let mut first = true;
    let mut rest = l.as_str();
    while !rest.is_empty() {
        let width = if first { 76 } else { 75 };
        let mut cut = rest.len().min(width);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if !first {
            out.push(' ');
        }
        out.push_str(&rest[..cut]);
        out.push('\n');
        rest = &rest[cut..];
        first = false;
    }
}

/// The LDIF that would be sent, replayable with `ldapmodify -f`.
pub fn ldif(plan: &Plan) -> String {
    let mut s = String::from("version: 1\n\n");
    for c in &plan.changes {
        let _ = writeln!(s, "# {}", c.reason.replace('\n', " "));
        line(&mut s, "dn", &c.dn);
        match c.op {
            Op::Add => {
                s.push_str("changetype: add\n");
                for a in &c.attributes {
                    for v in &a.new {
                        line(&mut s, &a.attr, v);
                    }
                }
            }
            Op::Delete => s.push_str("changetype: delete\n"),
            Op::Rename | Op::Move => {
                s.push_str("changetype: modrdn\n");
                let new = c.new_dn.as_deref().unwrap_or("");
                let parsed = crate::dn::Dn::parse(new).ok();
                let rdn = parsed
                    .as_ref()
                    .and_then(|d| d.first())
                    .map(|a| crate::dn::rdn(&a.attr, &a.value))
                    .unwrap_or_default();
                line(&mut s, "newrdn", &rdn);
                s.push_str("deleteoldrdn: 1\n");
                let new_parent = parsed
                    .as_ref()
                    .map(|d| d.parent().normalized())
                    .unwrap_or_default();
                let old_parent = crate::dn::Dn::parse(&c.dn)
                    .map(|d| d.parent().normalized())
                    .unwrap_or_default();
                if new_parent != old_parent {
                    if let Some(p) = parsed.map(|d| d.parent().to_string()) {
                        line(&mut s, "newsuperior", &p);
                    }
                }
            }
            Op::Modify | Op::Link | Op::Disable | Op::Enable | Op::AddMember | Op::RemoveMember => {
                s.push_str("changetype: modify\n");
                for a in &c.attributes {
                    match a.kind {
                        DeltaKind::Add => {
                            let _ = writeln!(s, "add: {}", a.attr);
                            for v in &a.new {
                                line(&mut s, &a.attr, v);
                            }
                        }
                        DeltaKind::Delete => {
                            let _ = writeln!(s, "delete: {}", a.attr);
                            if c.op == Op::RemoveMember {
                                for v in &a.old {
                                    line(&mut s, &a.attr, v);
                                }
                            }
                        }
                        DeltaKind::Replace => {
                            let _ = writeln!(s, "replace: {}", a.attr);
                            for v in &a.new {
                                line(&mut s, &a.attr, v);
                            }
                        }
                    }
                    s.push_str("-\n");
                }
            }
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn ldif_encodes_unsafe_values_and_folds() {
        let mut s = String::new();
        line(&mut s, "cn", "Zoë");
        assert_eq!(s, "cn:: Wm/Dqw==\n");
        let mut s = String::new();
        line(&mut s, "description", &"x".repeat(100));
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), 76);
        assert!(lines[1].starts_with(' '));
        assert_eq!(
            lines[0].len() + lines[1].len() - 1,
            "description: ".len() + 100
        );
    }
}

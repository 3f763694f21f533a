//! `explain` and `report access`: why a person has each value and group, from what a run computed.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::config::Config;
use crate::dn;
use crate::mirror::AuditRow;
use crate::run::Details;

/// Find a person by HR key, uid or DN; returns the HR key.
pub fn resolve(d: &Details, who: &str) -> Option<String> {
    if d.records.iter().any(|r| r.key == who) || d.desired.iter().any(|x| &*x.key == who) {
        return Some(who.to_string());
    }
    let norm = dn::normalize(who);
    let low = who.to_lowercase();
    for x in &d.desired {
        if dn::normalize(&x.dn) == norm
            || x.attrs
                .get("uid")
                .is_some_and(|v| v.iter().any(|u| u.to_lowercase() == low))
        {
            return Some(x.key.clone().into());
        }
    }
    for e in &d.entries {
        if dn::normalize(&e.dn) == norm || e.get("uid").iter().any(|u| u.to_lowercase() == low) {
            if let Some(k) = e.get(&d.users.anchor).first() {
                return Some(k.clone());
            }
        }
    }
    None
}

/// Everything known about one person, as JSON.
pub fn explain(cfg: &Config, d: &Details, key: &str, history: &[AuditRow]) -> Value {
    let record = d.records.iter().find(|r| r.key == key);
    let desired = d.desired.iter().find(|x| &*x.key == key);
    let entry = desired
        .and_then(|x| x.uuid.as_ref())
        .and_then(|u| d.entries.iter().find(|e| *e.uuid == **u))
        .or_else(|| {
            d.entries
                .iter()
                .find(|e| e.get(&d.users.anchor).first().map(String::as_str) == Some(key))
        });
    let fields = record.map(|r| r.fields.clone()).unwrap_or_default();
    let sources = |vars: &[String]| -> BTreeMap<String, String> {
        vars.iter()
            .filter(|v| v.as_str() != "n")
            .map(|v| {
                (
                    v.clone(),
                    fields.get(v).map(|x| x.to_string()).unwrap_or_default(),
                )
            })
            .collect()
    };
    let mut attrs = Vec::new();
    for (name, tpl) in &d.users.attributes {
        let header: Vec<String> = fields.keys().map(|k| k.to_string()).collect();
        let vars = crate::mapping::template_variables(tpl, &header);
        let want: Vec<String> = desired
            .map(|x| {
                x.attrs
                    .get(name)
                    .or_else(|| x.lifecycle_attrs.get(name))
                    .map(|v| v.to_vec())
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        attrs.push(json!({
            "attribute": name,
            "template": tpl,
            "sources": sources(&vars),
            "value": want,
            "current": entry.map(|e| e.get(name).to_vec()).unwrap_or_default(),
            "policy": d.users.policy_of(name),
            "unique": d.users.unique.contains(name),
        }));
    }
    if let Some(x) = desired {
        for (name, want) in &x.lifecycle_attrs {
            attrs.push(json!({
                "attribute": name,
                "template": null,
                "sources": {},
                "value": want,
                "current": entry.map(|e| e.get(name).to_vec()).unwrap_or_default(),
                "policy": "lifecycle",
                "unique": false,
            }));
        }
    }
    // Groups: granted by a rule, or found holding the person.
    let member_values: Vec<String> = desired
        .map(|x| {
            let mut v = vec![dn::normalize(&x.dn)];
            v.extend(
                x.attrs
                    .get("uid")
                    .into_iter()
                    .flatten()
                    .map(|u| u.to_lowercase()),
            );
            v
        })
        .unwrap_or_default();
    let mut groups = Vec::new();
    for g in d.groups.values() {
        if !g.members.values().any(|k| k == key) {
            continue;
        }
        let Some(rule) = cfg.groups.get(g.rule) else {
            continue;
        };
        let mut vars = rule
            .when
            .as_deref()
            .map(crate::mapping::expression_variables)
            .unwrap_or_default();
        if let Some(f) = &rule.for_each {
            vars.push(f.clone());
        }
        groups.push(json!({
            "dn": g.dn,
            "granted": true,
            "rule": {"index": rule.index, "dn": rule.dn, "when": rule.when, "for-each": rule.for_each, "members": rule.members},
            "sources": sources(&vars),
        }));
    }
    for ge in &d.group_entries {
        let held = ["member", "uniqueMember", "memberUid"].iter().any(|a| {
            ge.get(a).iter().any(|v| {
                let f = if *a == "memberUid" {
                    v.to_lowercase()
                } else {
                    dn::normalize(v)
                };
                member_values.contains(&f)
            })
        });
        let granted = d
            .groups
            .get(&dn::normalize(&ge.dn))
            .is_some_and(|g| g.members.values().any(|k| k == key));
        if held && !granted {
            let merge = cfg.groups.iter().any(|r| {
                dn::normalize(&r.parent)
                    == ge
                        .dn
                        .split_once(',')
                        .map(|(_, p)| dn::normalize(p))
                        .unwrap_or_default()
                    && r.members == crate::config::MemberPolicy::Merge
            });
            groups.push(json!({
                "dn": ge.dn,
                "granted": false,
                "rule": null,
                "note": if merge { "no rule grants it; kept (members = \"merge\")" } else { "no rule grants it; the next sync removes it" },
            }));
        }
    }
    let state = d.states.get(key);
    let next = match (state, d.today, &cfg.lifecycle) {
        (Some(st), Some(today), Some(lc)) => {
            crate::lifecycle::next_change(st, record.map(|r| r.fields.as_ref()), lc, today)
                .map(|x| x.to_string())
        }
        _ => None,
    };
    json!({
        "key": key,
        "line": record.map(|r| r.line),
        "dn": desired.map(|x| x.dn.to_string()).or_else(|| entry.map(|e| e.dn.clone())),
        "entry": entry.map(|e| json!({"dn": e.dn, "uuid": e.uuid})),
        "placement": desired.and_then(|x| x.placement).map(|i| i as usize).map(|i| json!({"index": i, "base": d.users.placement.get(i).map(|p| p.base.clone()), "when": d.users.placement.get(i).and_then(|p| p.when.clone())})),
        "lifecycle": state.map(|s| json!({"state": s, "today": d.today.map(|t| t.to_string()), "next-change": next})),
        "attributes": attrs,
        "groups": groups,
        "apps": apps_of(cfg, d, key),
        "history": history,
    })
}

/// The person's account in each application: in scope or not, active, attributes, remote id.
fn apps_of(cfg: &Config, d: &Details, key: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for app in &cfg.apps {
        let Some(a) = d.apps.get(&app.name) else {
            continue;
        };
        let account = a.accounts.iter().find(|x| x.key == key);
        let link = a.links.get(key);
        let remote = link
            .and_then(|l| a.remote.iter().find(|r| r.id == l.remote_id))
            .or_else(|| {
                a.remote
                    .iter()
                    .find(|r| r.external_id.as_deref() == Some(key))
            });
        out.push(json!({
            "app": app.name,
            "kind": app.kind,
            "in-scope": account.is_some(),
            "when": app.when,
            "active": account.map(|x| x.active),
            "inactive-because": account.and_then(|x| x.inactive_why.clone()),
            "attributes": account.map(|x| x.attrs.clone()),
            "remote-id": link.map(|l| l.remote_id.clone()).or_else(|| remote.map(|r| r.id.clone())),
            "remote": remote.map(|r| json!({"userName": r.user_name, "active": r.active, "attributes": r.attrs})),
            "inactive-since": link.and_then(|l| l.deactivated_on).map(|d| d.to_string()),
            "failures": link.map(|l| l.failures),
            "last-error": link.and_then(|l| l.last_error.clone()),
            "unreachable": a.error,
        }));
    }
    out
}

/// Explain as text for a person at a terminal.
pub fn explain_text(v: &Value) -> String {
    let mut s = String::new();
    let str_of = |x: &Value| match x {
        Value::String(t) => t.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    s.push_str(&format!(
        "record {} (line {})\n",
        str_of(&v["key"]),
        str_of(&v["line"])
    ));
    s.push_str(&format!("  entry: {}\n", str_of(&v["dn"])));
    if let Some(p) = v["placement"].as_object() {
        s.push_str(&format!(
            "  placement: users.placement[{}] when {} → {}\n",
            str_of(&p["index"]),
            str_of(&p["when"]),
            str_of(&p["base"])
        ));
    }
    if let Some(l) = v["lifecycle"].as_object() {
        s.push_str(&format!(
            "  lifecycle: {} as of {}; next change: {}\n",
            l["state"]["state"].as_str().unwrap_or("?"),
            str_of(&l["today"]),
            str_of(&l["next-change"])
        ));
        if let Some(why) = l["state"]["why"].as_str() {
            s.push_str(&format!("    because: {why}\n"));
        }
    }
    s.push_str("  attributes:\n");
    for a in v["attributes"].as_array().into_iter().flatten() {
        let src: Vec<String> = a["sources"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, x)| format!("{k}={}", str_of(x)))
                    .collect()
            })
            .unwrap_or_default();
        s.push_str(&format!(
            "    {}: {} ← {} [{}] (directory: {})\n",
            str_of(&a["attribute"]),
            a["value"],
            str_of(&a["template"]),
            src.join(", "),
            a["current"]
        ));
    }
    s.push_str("  groups:\n");
    for g in v["groups"].as_array().into_iter().flatten() {
        if g["granted"] == Value::Bool(true) {
            let mut why = Vec::new();
            if let Some(w) = g["rule"]["when"].as_str() {
                why.push(format!("when {w}"));
            }
            if let Some(f) = g["rule"]["for-each"].as_str() {
                why.push(format!("for-each {f}"));
            }
            if why.is_empty() {
                why.push("(everyone)".into());
            }
            s.push_str(&format!(
                "    {} ← groups[{}] {} {}\n",
                str_of(&g["dn"]),
                str_of(&g["rule"]["index"]),
                why.join(", "),
                g["sources"]
            ));
        } else {
            s.push_str(&format!(
                "    {} — {}\n",
                str_of(&g["dn"]),
                str_of(&g["note"])
            ));
        }
    }
    for a in v["apps"].as_array().cloned().unwrap_or_default() {
        let status = if let Some(e) = a["unreachable"].as_str() {
            format!("unreachable ({e})")
        } else if a["in-scope"] != Value::Bool(true) {
            format!("not in scope (when {})", str_of(&a["when"]))
        } else if a["active"] == Value::Bool(false) {
            format!("inactive: {}", str_of(&a["inactive-because"]))
        } else {
            "active".to_string()
        };
        s.push_str(&format!(
            "  app {}: {status}; account {}\n",
            str_of(&a["app"]),
            str_of(&a["remote-id"])
        ));
        if let Some(m) = a["attributes"].as_object() {
            for (k, val) in m {
                s.push_str(&format!("    {k} = {}\n", str_of(val)));
            }
        }
        if let Some(e) = a["last-error"].as_str() {
            s.push_str(&format!(
                "    last error ({} failure(s)): {e}\n",
                str_of(&a["failures"])
            ));
        }
    }
    let hist = v["history"].as_array().cloned().unwrap_or_default();
    if !hist.is_empty() {
        s.push_str("  history:\n");
        for h in hist {
            s.push_str(&format!(
                "    {} {} {} — {} ({})\n",
                str_of(&h["at"]),
                str_of(&h["op"]),
                str_of(&h["dn"]),
                str_of(&h["reason"]),
                str_of(&h["state"])
            ));
        }
    }
    s
}

/// One row of `report access`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AccessRow {
    pub group: String,
    pub member: String,
    pub key: Option<String>,
    pub rule: Option<String>,
    pub since: Option<String>,
}

/// Who is in which managed group and why (the rule), from the groups as the directory holds them.
pub fn access(cfg: &Config, d: &Details) -> Vec<(AccessRow, String)> {
    let mut by_value: BTreeMap<String, String> = BTreeMap::new();
    for e in &d.entries {
        if let Some(k) = e.get(&d.users.anchor).first() {
            by_value.insert(dn::normalize(&e.dn), k.clone());
            for u in e.get("uid") {
                by_value.insert(u.to_lowercase(), k.clone());
            }
        }
    }
    let mut out = Vec::new();
    for ge in &d.group_entries {
        let Some(desired) = d.groups.get(&dn::normalize(&ge.dn)).map(Some) else {
            continue; // not a managed group
        };
        let kind = cfg
            .groups
            .iter()
            .find(|r| desired.is_some_and(|g| g.rule == r.index))
            .map(|r| r.kind);
        let attrs: Vec<&str> = match kind {
            Some(k) => vec![k.member_attr()],
            None => vec!["member", "uniqueMember", "memberUid"],
        };
        for a in attrs {
            for v in ge.get(a) {
                let f = if a == "memberUid" {
                    v.to_lowercase()
                } else {
                    dn::normalize(v)
                };
                let key = by_value.get(&f).cloned();
                let rule = desired.and_then(|g| {
                    key.as_ref()
                        .filter(|k| g.members.values().any(|x| x == *k))
                        .and_then(|_| cfg.groups.get(g.rule))
                        .map(|r| {
                            format!(
                                "groups[{}]{}",
                                r.index,
                                r.when
                                    .as_deref()
                                    .map(|w| format!(" when {w}"))
                                    .unwrap_or_default()
                            )
                        })
                });
                out.push((
                    AccessRow {
                        group: ge.dn.clone(),
                        member: v.clone(),
                        key,
                        rule,
                        since: None,
                    },
                    a.to_string(),
                ));
            }
        }
    }
    out
}

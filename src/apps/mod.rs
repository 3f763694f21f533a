//! Applications (pure part): which people get an account in each `[[apps]]` entry, with which
//! attributes, and the changes that bring the application there. The I/O lives in
//! [`scim`] (a SCIM 2.0 client) and [`command`] (a program run per change).

pub mod command;
pub mod scim;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use minijinja::Value;
use serde::{Deserialize, Serialize};

use crate::config::apps::{AppConfig, AppKind};
use crate::config::LifecycleConfig;
use crate::mapping::Desired;
use crate::plan::{AttrDelta, DeltaKind, Subject};

// ---------------------------------------------------------------- templates

fn sample(header: &[String], entry_attrs: &[String]) -> Value {
    let mut ctx: BTreeMap<String, Value> = header
        .iter()
        .map(|h| (h.clone(), Value::from("Sample")))
        .collect();
    let entry: BTreeMap<String, Value> = entry_attrs
        .iter()
        .map(|a| (a.clone(), Value::from("Sample")))
        .collect();
    ctx.insert("entry".into(), Value::from(entry));
    Value::from(ctx)
}

fn known(header: &[String]) -> Vec<String> {
    let mut k = header.to_vec();
    k.extend(
        crate::config::apps::APP_VARIABLES
            .iter()
            .map(|s| s.to_string()),
    );
    k
}

fn entry_hint(m: String, entry_attrs: &[String]) -> String {
    if m.contains("entry.") {
        format!(
            "{m}; entry holds the attributes of [users.attributes]: {}",
            entry_attrs.join(", ")
        )
    } else {
        m
    }
}

/// Check an app attribute template: it may read the export's columns and `entry.<attribute>` (the
/// person's directory attributes as `[users.attributes]` renders them).
pub fn check_template(src: &str, header: &[String], entry_attrs: &[String]) -> Result<(), String> {
    let env = crate::mapping::new_env(Default::default());
    let t = env
        .template_from_str(src)
        .map_err(|e| crate::mapping::describe(&e))?;
    if !header.is_empty() {
        crate::mapping::unknown_variables(t.undeclared_variables(false), &known(header))?;
        crate::mapping::trial(t.render(sample(header, entry_attrs)).map(|_| ()))
            .map_err(|m| entry_hint(m, entry_attrs))?;
    }
    Ok(())
}

/// Check an app's `when` condition (same variables as [`check_template`]).
pub fn check_expression(
    src: &str,
    header: &[String],
    entry_attrs: &[String],
) -> Result<(), String> {
    let env = crate::mapping::new_env(Default::default());
    let e = env
        .compile_expression(src)
        .map_err(|e| crate::mapping::describe(&e))?;
    if !header.is_empty() {
        crate::mapping::unknown_variables(e.undeclared_variables(false), &known(header))?;
        crate::mapping::trial(e.eval(sample(header, entry_attrs)).map(|_| ()))
            .map_err(|m| entry_hint(m, entry_attrs))?;
    }
    Ok(())
}

// ---------------------------------------------------------------- desired accounts

/// The account one person should have in one application.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Account {
    pub key: String,
    pub line: usize,
    pub active: bool,
    /// Why the account is inactive (lifecycle), when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inactive_why: Option<String>,
    /// Mapped attribute → value (`manager` holds the manager's HR key).
    pub attrs: BTreeMap<String, String>,
}

/// A record an app could not map: quarantined for that app only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppMapError {
    pub key: String,
    pub line: usize,
    pub reason: String,
}

/// Compute each app's accounts from the people's desired entries.
pub fn accounts(
    app: &AppConfig,
    desired: &[Desired],
    lifecycle: Option<&LifecycleConfig>,
) -> (Vec<Account>, Vec<AppMapError>) {
    let mut env = crate::mapping::new_env(Default::default());
    let mut errors = Vec::new();
    for (k, src) in &app.attributes {
        if let Err(e) = env.add_template_owned(k.clone(), src.clone()) {
            // Checked at load; a failure here is still reported, never panicked on.
            errors.push(AppMapError {
                key: String::new(),
                line: 0,
                reason: format!(
                    "apps.{}.attributes.{k}: {}",
                    app.name,
                    crate::mapping::describe(&e)
                ),
            });
            return (Vec::new(), errors);
        }
    }
    let when = match app.when.as_deref().map(|w| env.compile_expression(w)) {
        None => None,
        Some(Ok(e)) => Some(e),
        Some(Err(e)) => {
            errors.push(AppMapError {
                key: String::new(),
                line: 0,
                reason: format!("apps.{}.when: {}", app.name, crate::mapping::describe(&e)),
            });
            return (Vec::new(), errors);
        }
    };
    let mut out = Vec::new();
    for d in desired {
        if d.fields.is_empty() {
            continue;
        }
        let mut ctx: BTreeMap<String, Value> = d
            .fields
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(&**v)))
            .collect();
        let entry: BTreeMap<String, Value> = d
            .attrs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value::from(v.first().cloned().unwrap_or_default()),
                )
            })
            .collect();
        ctx.insert("entry".into(), Value::from(entry));
        let ctx = Value::from(ctx);
        if let Some(w) = &when {
            match crate::mapping::truthy(w, &ctx) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(m) => {
                    errors.push(AppMapError {
                        key: d.key.clone().into(),
                        line: d.line as usize,
                        reason: format!("apps.{}.when: {m}", app.name),
                    });
                    continue;
                }
            }
        }
        let mut attrs = BTreeMap::new();
        let mut failed = false;
        for k in app.attributes.keys() {
            let rendered = env.get_template(k).and_then(|t| t.render(ctx.clone()));
            match rendered {
                Ok(v) if v.trim().is_empty() => {}
                Ok(v) => {
                    attrs.insert(k.clone(), v);
                }
                Err(e) => {
                    errors.push(AppMapError {
                        key: d.key.clone().into(),
                        line: d.line as usize,
                        reason: format!(
                            "apps.{}.attributes.{k}: {}",
                            app.name,
                            crate::mapping::describe(&e)
                        ),
                    });
                    failed = true;
                }
            }
        }
        if failed {
            continue;
        }
        if app.kind == AppKind::Scim && !attrs.contains_key("userName") {
            errors.push(AppMapError {
                key: d.key.clone().into(),
                line: d.line as usize,
                reason: format!("apps.{}.attributes.userName rendered empty", app.name),
            });
            continue;
        }
        let (active, inactive_why) = match (&d.state, lifecycle) {
            (Some(s), Some(lc)) if s.disabled(lc) => (false, Some(describe_state(s))),
            _ => (true, None),
        };
        out.push(Account {
            key: d.key.clone().into(),
            line: d.line as usize,
            active,
            inactive_why,
            attrs,
        });
    }
    (out, errors)
}

fn describe_state(s: &crate::lifecycle::State) -> String {
    use crate::lifecycle::State;
    match s {
        State::NotYet { start, .. } | State::PreHire { start } => {
            format!("starts on {start}")
        }
        State::Active => "active".into(),
        State::Leave => "on leave".into(),
        State::Leaver { since, why, .. } => format!("leaver since {since} ({why})"),
    }
}

// ---------------------------------------------------------------- what the app holds

/// One account as the application holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteAccount {
    pub id: String,
    pub user_name: String,
    pub external_id: Option<String>,
    pub active: bool,
    /// Mapped attribute → value; `manager` holds the manager's remote id.
    pub attrs: BTreeMap<String, String>,
    pub etag: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteGroup {
    pub id: String,
    pub display_name: String,
    pub members: BTreeSet<String>,
    pub etag: Option<String>,
}

/// What a run read from one application.
#[derive(Clone, Debug, Default)]
pub struct AppState {
    pub accounts: Vec<RemoteAccount>,
    pub groups: Vec<RemoteGroup>,
    /// The service offers PATCH (SCIM ServiceProviderConfig); PUT otherwise.
    pub patch: bool,
}

/// What the mirror remembers of one person's account in one app.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppLink {
    pub remote_id: String,
    pub active: bool,
    /// The attributes last sent (command apps: their whole state).
    pub attrs: BTreeMap<String, String>,
    /// The day dirbridge found or made the account inactive (the retention clock).
    pub deactivated_on: Option<jiff::civil::Date>,
    /// Consecutive failed runs for this account, and the last error.
    pub failures: u32,
    pub last_error: Option<String>,
}

// ---------------------------------------------------------------- changes

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AppOp {
    AppCreate,
    AppLink,
    AppUpdate,
    AppDeactivate,
    AppDelete,
    AddMember,
    RemoveMember,
}

impl AppOp {
    pub const ALL: [AppOp; 7] = [
        AppOp::AppCreate,
        AppOp::AppLink,
        AppOp::AppUpdate,
        AppOp::AppDeactivate,
        AppOp::AppDelete,
        AppOp::AddMember,
        AppOp::RemoveMember,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            AppOp::AppCreate => "app-create",
            AppOp::AppLink => "app-link",
            AppOp::AppUpdate => "app-update",
            AppOp::AppDeactivate => "app-deactivate",
            AppOp::AppDelete => "app-delete",
            AppOp::AddMember => "add-member",
            AppOp::RemoveMember => "remove-member",
        }
    }
}

/// One change to one application.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AppChange {
    pub app: String,
    pub op: AppOp,
    #[serde(skip)]
    pub subject: Subject,
    /// The account (userName) or the group (displayName).
    pub account: String,
    /// The HR key (for a group: the group's DN).
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_id: Option<String>,
    /// For create: every attribute (kind add). For members: `member`, values are HR keys.
    pub attributes: Vec<AttrDelta>,
    pub reason: String,
    /// Lower phases go first: accounts, then managers set after creation, then groups, then deletes.
    #[serde(skip)]
    pub phase: u32,
}

pub const PHASE_ACCOUNTS: u32 = 0;
pub const PHASE_MANAGERS: u32 = 1;
pub const PHASE_GROUPS: u32 = 2;
pub const PHASE_DELETES: u32 = 3;

/// What the planner found for one app, besides its changes.
#[derive(Clone, Debug, Default)]
pub struct AppPlan {
    pub changes: Vec<AppChange>,
    /// Linked accounts that no longer exist in the app and are not wanted: forget the link.
    pub forget: Vec<String>,
    /// Inactive accounts whose retention clock starts today.
    pub inactive_since: Vec<String>,
    pub errors: Vec<AppMapError>,
}

/// A managed group pushed to an app: its name there and the HR keys of its members.
#[derive(Clone, Debug)]
pub struct PushedGroup {
    pub dn: String,
    pub name: String,
    pub members: BTreeSet<String>,
}

/// The managed groups an app receives: those whose DN or first RDN value matches `groups`.
pub fn pushed_groups(
    app: &AppConfig,
    groups: &BTreeMap<String, crate::mapping::groups::GroupDesired>,
) -> Vec<PushedGroup> {
    let mut out = Vec::new();
    for g in groups.values() {
        let name = crate::dn::Dn::parse(&g.dn)
            .ok()
            .and_then(|d| {
                d.rdns
                    .first()
                    .and_then(|r| r.first().map(|a| a.value.clone()))
            })
            .unwrap_or_else(|| g.dn.clone());
        let wanted = app.groups.iter().any(|p| {
            glob(&p.to_lowercase(), &name.to_lowercase())
                || crate::dn::normalize(p) == crate::dn::normalize(&g.dn)
        });
        if !wanted {
            continue;
        }
        // Members are DNs (or uids); the rule recorded the HR key that brought each.
        let members: BTreeSet<String> = g.members.values().cloned().collect();
        out.push(PushedGroup {
            dn: g.dn.clone(),
            name,
            members,
        });
    }
    out
}

fn glob(pat: &str, s: &str) -> bool {
    match pat.split_once('*') {
        None => pat == s,
        Some((head, tail)) => {
            s.len() >= head.len()
                && s.starts_with(head)
                && (0..=s.len() - head.len())
                    .filter(|i| s.is_char_boundary(head.len() + i))
                    .any(|i| glob(tail, &s[head.len() + i..]))
        }
    }
}

pub struct AppPlanInput<'a> {
    pub app: &'a AppConfig,
    pub accounts: &'a [Account],
    pub state: &'a AppState,
    pub links: &'a BTreeMap<String, AppLink>,
    /// Keys whose accounts are left alone (quarantined or unreadable records).
    pub keep: &'a BTreeSet<String>,
    /// Every key the export holds (absent people are the only ones deactivated as leavers).
    pub present: &'a BTreeSet<&'a str>,
    /// The export could not be read well enough to know every key: deactivate nothing.
    pub no_deactivations: bool,
    pub groups: &'a [PushedGroup],
    pub today: jiff::civil::Date,
    pub only: Option<&'a str>,
}

/// Attributes whose values compare case-insensitively (RFC 7643: userName and email values are
/// not case-exact), so the app's own spelling never makes a change.
const CASE_INSENSITIVE: &[&str] = &["userName", "emails"];

fn delta(attr: &str, old: Option<&String>, new: Option<&String>) -> Option<AttrDelta> {
    let same = match (old, new) {
        (Some(a), Some(b)) if CASE_INSENSITIVE.contains(&attr) => {
            a.to_lowercase() == b.to_lowercase()
        }
        (a, b) => a == b,
    };
    if same {
        return None;
    }
    let v = |x: Option<&String>| x.map(|s| vec![s.clone()]).unwrap_or_default();
    Some(AttrDelta {
        attr: attr.into(),
        kind: match (old, new) {
            (None, Some(_)) => DeltaKind::Add,
            (Some(_), None) => DeltaKind::Delete,
            _ => DeltaKind::Replace,
        },
        old: v(old).into(),
        new: v(new).into(),
    })
}

/// Plan one application (pure).
pub fn plan(i: &AppPlanInput<'_>) -> AppPlan {
    let app = i.app;
    let mut out = AppPlan::default();
    let by_id: HashMap<&str, &RemoteAccount> = i
        .state
        .accounts
        .iter()
        .map(|a| (a.id.as_str(), a))
        .collect();
    let by_ext: HashMap<&str, &RemoteAccount> = i
        .state
        .accounts
        .iter()
        .filter_map(|a| a.external_id.as_deref().map(|e| (e, a)))
        .collect();
    let by_name: HashMap<String, &RemoteAccount> = i
        .state
        .accounts
        .iter()
        .map(|a| (a.user_name.to_lowercase(), a))
        .collect();
    // Which remote account each wanted person has, and how it was found.
    let mut found: BTreeMap<String, (&RemoteAccount, &'static str)> = BTreeMap::new();
    let mut taken: BTreeSet<&str> = BTreeSet::new();
    for a in i.accounts {
        let hit = i
            .links
            .get(&a.key)
            .and_then(|l| by_id.get(l.remote_id.as_str()).map(|r| (*r, "link")))
            .or_else(|| by_ext.get(a.key.as_str()).map(|r| (*r, "externalId")))
            .or_else(|| {
                a.attrs
                    .get("userName")
                    .and_then(|u| by_name.get(&u.to_lowercase()))
                    .filter(|r| r.external_id.is_none())
                    .map(|r| (*r, "userName"))
            });
        if let Some((r, how)) = hit {
            if taken.insert(r.id.as_str()) {
                found.insert(a.key.clone(), (r, how));
            }
        }
    }
    // The manager's HR key of every remote account we know (remote id → key).
    let mut key_of: HashMap<&str, &str> = HashMap::new();
    for (k, l) in i.links {
        key_of.insert(l.remote_id.as_str(), k.as_str());
    }
    for (k, (r, _)) in &found {
        key_of.insert(r.id.as_str(), k.as_str());
    }
    let will_exist: BTreeSet<&str> = i
        .accounts
        .iter()
        .filter(|a| a.active || found.contains_key(&a.key))
        .map(|a| a.key.as_str())
        .collect();
    let exists_now: BTreeSet<&str> = found.keys().map(String::as_str).collect();
    let only = |k: &str| i.only.is_none_or(|o| o == k);
    let wanted: BTreeSet<&str> = i.accounts.iter().map(|a| a.key.as_str()).collect();

    for a in i.accounts {
        if !only(&a.key) || i.keep.contains(&a.key) {
            continue;
        }
        let mut attrs = a.attrs.clone();
        // A manager without an account here is left out.
        if let Some(m) = attrs.get("manager").cloned() {
            if !will_exist.contains(m.as_str()) || m == a.key {
                attrs.remove("manager");
            }
        }
        let user_name = attrs
            .get("userName")
            .or_else(|| attrs.get("uid"))
            .cloned()
            .unwrap_or_else(|| a.key.clone());
        match found.get(&a.key) {
            None => {
                if !a.active {
                    continue;
                }
                // A manager created in the same run gets its id only then: set it afterwards.
                let deferred = attrs
                    .get("manager")
                    .filter(|m| !exists_now.contains(m.as_str()))
                    .cloned();
                if deferred.is_some() {
                    attrs.remove("manager");
                }
                let mut deltas: Vec<AttrDelta> = attrs
                    .iter()
                    .filter_map(|(k, v)| delta(k, None, Some(v)))
                    .collect();
                deltas.push(AttrDelta {
                    attr: "externalId".into(),
                    kind: DeltaKind::Add,
                    old: Default::default(),
                    new: a.key.clone().into(),
                });
                let linked_gone = i.links.contains_key(&a.key);
                out.changes.push(AppChange {
                    app: app.name.clone(),
                    op: AppOp::AppCreate,
                    subject: Subject::Person,
                    account: user_name.clone(),
                    key: a.key.clone(),
                    remote_id: None,
                    attributes: deltas,
                    reason: if linked_gone {
                        format!("record {} is in scope of apps.{} and its linked account no longer exists there", a.key, app.name)
                    } else {
                        format!("joiner: record {} is in scope of apps.{}", a.key, app.name)
                    },
                    phase: PHASE_ACCOUNTS,
                });
                if let Some(m) = deferred {
                    out.changes.push(AppChange {
                        app: app.name.clone(),
                        op: AppOp::AppUpdate,
                        subject: Subject::Person,
                        account: user_name,
                        key: a.key.clone(),
                        remote_id: None,
                        attributes: vec![AttrDelta {
                            attr: "manager".into(),
                            kind: DeltaKind::Add,
                            old: Default::default(),
                            new: m.into(),
                        }],
                        reason: format!(
                            "the manager of record {} gets an account in this run: set once it exists",
                            a.key
                        ),
                        phase: PHASE_MANAGERS,
                    });
                }
            }
            Some((r, how)) => {
                if *how != "link" {
                    out.changes.push(AppChange {
                        app: app.name.clone(),
                        op: AppOp::AppLink,
                        subject: Subject::Person,
                        account: r.user_name.clone(),
                        key: a.key.clone(),
                        remote_id: Some(r.id.clone()),
                        attributes: vec![],
                        reason: format!(
                            "an account with this {how} already exists in {}: linked to record {}, not created again",
                            app.name, a.key
                        ),
                        phase: PHASE_ACCOUNTS,
                    });
                }
                let mut deltas = Vec::new();
                for (k, v) in &attrs {
                    let cur = if k == "manager" {
                        r.attrs.get("manager").map(|id| {
                            key_of
                                .get(id.as_str())
                                .map(|s| s.to_string())
                                .unwrap_or_else(|| id.clone())
                        })
                    } else {
                        r.attrs.get(k).cloned()
                    };
                    if let Some(d) = delta(k, cur.as_ref(), Some(v)) {
                        deltas.push(d);
                    }
                }
                for (k, old) in &r.attrs {
                    if app.attributes.contains_key(k) && !attrs.contains_key(k) {
                        let old = if k == "manager" {
                            key_of
                                .get(old.as_str())
                                .map(|s| s.to_string())
                                .unwrap_or_else(|| old.clone())
                        } else {
                            old.clone()
                        };
                        deltas.extend(delta(k, Some(&old), None));
                    }
                }
                if r.external_id.as_deref() != Some(a.key.as_str()) {
                    deltas.extend(delta("externalId", r.external_id.as_ref(), Some(&a.key)));
                }
                // A manager who gets an account in this run has an id only afterwards.
                if let Some(pos) = deltas.iter().position(|d| {
                    d.attr == "manager"
                        && d.new
                            .first()
                            .is_some_and(|m| !exists_now.contains(m.as_str()))
                }) {
                    let d = deltas.remove(pos);
                    out.changes.push(AppChange {
                        app: app.name.clone(),
                        op: AppOp::AppUpdate,
                        subject: Subject::Person,
                        account: r.user_name.clone(),
                        key: a.key.clone(),
                        remote_id: Some(r.id.clone()),
                        attributes: vec![d],
                        reason: format!(
                            "the manager of record {} gets an account in this run: set once it exists",
                            a.key
                        ),
                        phase: PHASE_MANAGERS,
                    });
                }
                let reactivate = a.active && !r.active;
                let deactivate = !a.active && r.active;
                if reactivate || deactivate {
                    deltas.push(AttrDelta {
                        attr: "active".into(),
                        kind: DeltaKind::Replace,
                        old: r.active.to_string().into(),
                        new: a.active.to_string().into(),
                    });
                }
                if deltas.is_empty() {
                    if !a.active
                        && i.links
                            .get(&a.key)
                            .is_some_and(|l| l.deactivated_on.is_none())
                    {
                        out.inactive_since.push(a.key.clone());
                    }
                    if !a.active {
                        plan_delete(
                            i,
                            &mut out,
                            &a.key,
                            r,
                            a.inactive_why.as_deref().unwrap_or("inactive"),
                        );
                    }
                    continue;
                }
                let changed: Vec<&str> = deltas.iter().map(|d| d.attr.as_str()).collect();
                let (op, reason) = if deactivate {
                    (
                        AppOp::AppDeactivate,
                        format!(
                            "record {}: {}",
                            a.key,
                            a.inactive_why.as_deref().unwrap_or("inactive")
                        ),
                    )
                } else if reactivate {
                    (
                        AppOp::AppUpdate,
                        format!(
                            "record {} is active again: the same account is re-activated",
                            a.key
                        ),
                    )
                } else {
                    (
                        AppOp::AppUpdate,
                        format!("record {}: {} changed", a.key, changed.join(", ")),
                    )
                };
                out.changes.push(AppChange {
                    app: app.name.clone(),
                    op,
                    subject: Subject::Person,
                    account: r.user_name.clone(),
                    key: a.key.clone(),
                    remote_id: Some(r.id.clone()),
                    attributes: deltas,
                    reason,
                    phase: PHASE_ACCOUNTS,
                });
            }
        }
    }

    // Linked accounts of people who are no longer in scope: deactivate, then delete after retention.
    for (k, l) in i.links {
        if wanted.contains(k.as_str()) || !only(k) || i.keep.contains(k) {
            continue;
        }
        let Some(r) = by_id.get(l.remote_id.as_str()) else {
            out.forget.push(k.clone());
            continue;
        };
        let why = if i.present.contains(k.as_str()) {
            format!("record {k} is no longer in scope of apps.{}", app.name)
        } else {
            format!("record {k} is no longer in the export")
        };
        if r.active {
            if i.no_deactivations {
                continue;
            }
            out.changes.push(AppChange {
                app: app.name.clone(),
                op: AppOp::AppDeactivate,
                subject: Subject::Person,
                account: r.user_name.clone(),
                key: k.clone(),
                remote_id: Some(r.id.clone()),
                attributes: vec![AttrDelta {
                    attr: "active".into(),
                    kind: DeltaKind::Replace,
                    old: vec!["true".into()].into(),
                    new: vec!["false".into()].into(),
                }],
                reason: why,
                phase: PHASE_ACCOUNTS,
            });
        } else {
            if l.deactivated_on.is_none() {
                out.inactive_since.push(k.clone());
            }
            plan_delete(i, &mut out, k, r, &why);
        }
    }

    // Groups: create missing ones, then member deltas restricted to the accounts dirbridge manages.
    let managed_ids: BTreeSet<&str> = key_of.keys().copied().collect();
    let groups_by_name: HashMap<String, &RemoteGroup> = i
        .state
        .groups
        .iter()
        .map(|g| (g.display_name.to_lowercase(), g))
        .collect();
    for g in i.groups {
        let want: BTreeSet<&str> = g
            .members
            .iter()
            .map(String::as_str)
            .filter(|k| {
                will_exist.contains(k) && i.accounts.iter().any(|a| a.key == *k && a.active)
            })
            .collect();
        match groups_by_name.get(&g.name.to_lowercase()) {
            None => {
                if i.only.is_some() {
                    continue;
                }
                out.changes.push(AppChange {
                    app: app.name.clone(),
                    op: AppOp::AppCreate,
                    subject: Subject::Group,
                    account: g.name.clone(),
                    key: g.dn.clone(),
                    remote_id: None,
                    attributes: vec![AttrDelta {
                        attr: "members".into(),
                        kind: DeltaKind::Add,
                        old: Default::default(),
                        new: want.iter().map(|s| s.to_string()).collect(),
                    }],
                    reason: format!(
                        "group {} is pushed to apps.{} (apps.{}.groups)",
                        g.dn, app.name, app.name
                    ),
                    phase: PHASE_GROUPS,
                });
            }
            Some(rg) => {
                let have: BTreeSet<&str> = rg
                    .members
                    .iter()
                    .filter(|id| managed_ids.contains(id.as_str()))
                    .filter_map(|id| key_of.get(id.as_str()).copied())
                    .collect();
                let add: Vec<String> = want
                    .difference(&have)
                    .filter(|k| only(k))
                    .map(|s| s.to_string())
                    .collect();
                let remove: Vec<String> = have
                    .difference(&want)
                    .filter(|k| only(k) && !i.keep.contains(**k))
                    .map(|s| s.to_string())
                    .collect();
                if !add.is_empty() {
                    out.changes.push(AppChange {
                        app: app.name.clone(),
                        op: AppOp::AddMember,
                        subject: Subject::Group,
                        account: rg.display_name.clone(),
                        key: g.dn.clone(),
                        remote_id: Some(rg.id.clone()),
                        attributes: vec![AttrDelta {
                            attr: "members".into(),
                            kind: DeltaKind::Add,
                            old: Default::default(),
                            new: add.into(),
                        }],
                        reason: format!("group rule for {} grants these records", g.dn),
                        phase: PHASE_GROUPS,
                    });
                }
                if !remove.is_empty() {
                    out.changes.push(AppChange {
                        app: app.name.clone(),
                        op: AppOp::RemoveMember,
                        subject: Subject::Group,
                        account: rg.display_name.clone(),
                        key: g.dn.clone(),
                        remote_id: Some(rg.id.clone()),
                        attributes: vec![AttrDelta {
                            attr: "members".into(),
                            kind: DeltaKind::Delete,
                            old: remove.into(),
                            new: Default::default(),
                        }],
                        reason: format!(
                            "no group rule for {} grants these records (or their account is inactive)",
                            g.dn
                        ),
                        phase: PHASE_GROUPS,
                    });
                }
            }
        }
    }
    out
}

/// An inactive account whose retention is over is deleted.
fn plan_delete(i: &AppPlanInput<'_>, out: &mut AppPlan, key: &str, r: &RemoteAccount, why: &str) {
    let Some(keep_for) = i.app.delete_after else {
        return;
    };
    if i.no_deactivations {
        return;
    }
    let since = i
        .links
        .get(key)
        .and_then(|l| l.deactivated_on)
        .unwrap_or(i.today);
    let days = (keep_for.as_secs() / 86_400) as i64;
    let due = since
        .checked_add(jiff::Span::new().days(days))
        .unwrap_or(since);
    if i.today < due {
        return;
    }
    out.changes.push(AppChange {
        app: i.app.name.clone(),
        op: AppOp::AppDelete,
        subject: Subject::Person,
        account: r.user_name.clone(),
        key: key.to_string(),
        remote_id: Some(r.id.clone()),
        attributes: vec![],
        reason: format!(
            "{why}; inactive since {since}, apps.{}.delete-after ({}) is over",
            i.app.name,
            humantime::format_duration(keep_for)
        ),
        phase: PHASE_DELETES,
    });
}

/// Order: phase, then key order within a phase.
pub fn order(mut changes: Vec<AppChange>) -> Vec<AppChange> {
    changes.sort_by(|a, b| {
        (a.app.as_str(), a.phase)
            .cmp(&(b.app.as_str(), b.phase))
            .then_with(|| crate::mapping::key_order(&a.key, &b.key))
            .then_with(|| a.op.cmp(&b.op))
    });
    changes
}

#[cfg(test)]
mod tests;

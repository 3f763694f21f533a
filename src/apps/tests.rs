use super::*;
use crate::config::apps::{AppConfig, AppKind};

fn app(delete_after_days: Option<u64>) -> AppConfig {
    AppConfig {
        name: "wiki".into(),
        kind: AppKind::Scim,
        url: Some("http://127.0.0.1:1/v2".into()),
        token: None,
        token_source: None,
        ca_file: None,
        allow_insecure: false,
        when: None,
        attributes: [("userName", ""), ("title", ""), ("manager", "")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        groups: vec!["eng*".into()],
        delete_after: delete_after_days.map(|d| std::time::Duration::from_secs(d * 86_400)),
        max_requests_per_second: 0.0,
        concurrency: 1,
        timeout: std::time::Duration::from_secs(1),
        retries: 0,
        command: vec![],
        batch: false,
    }
}

fn account(key: &str, user: &str, title: &str, manager: Option<&str>, active: bool) -> Account {
    let mut attrs: BTreeMap<String, String> = [("userName", user), ("title", title)]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Some(m) = manager {
        attrs.insert("manager".into(), m.into());
    }
    Account {
        key: key.into(),
        line: 1,
        active,
        inactive_why: (!active).then(|| "leaver since 2026-01-31 (end date)".into()),
        attrs,
    }
}

fn remote(id: &str, user: &str, ext: Option<&str>, title: &str, active: bool) -> RemoteAccount {
    RemoteAccount {
        id: id.into(),
        user_name: user.into(),
        external_id: ext.map(String::from),
        active,
        attrs: [("userName", user), ("title", title)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        etag: None,
    }
}

fn link(id: &str, active: bool, since: Option<&str>) -> AppLink {
    AppLink {
        remote_id: id.into(),
        active,
        deactivated_on: since.map(|d| d.parse().unwrap()),
        ..Default::default()
    }
}

struct Case {
    app: AppConfig,
    accounts: Vec<Account>,
    state: AppState,
    links: BTreeMap<String, AppLink>,
    present: BTreeSet<String>,
    uncertain: bool,
    groups: Vec<PushedGroup>,
    today: &'static str,
}

impl Case {
    fn new() -> Case {
        Case {
            app: app(Some(30)),
            accounts: vec![],
            state: AppState::default(),
            links: BTreeMap::new(),
            present: BTreeSet::new(),
            uncertain: false,
            groups: vec![],
            today: "2026-03-01",
        }
    }
    fn run(&self) -> AppPlan {
        let mut present: BTreeSet<&str> = self.present.iter().map(String::as_str).collect();
        present.extend(self.accounts.iter().map(|a| a.key.as_str()));
        plan(&AppPlanInput {
            app: &self.app,
            accounts: &self.accounts,
            state: &self.state,
            links: &self.links,
            keep: &BTreeSet::new(),
            present: &present,
            no_deactivations: self.uncertain,
            groups: &self.groups,
            today: self.today.parse().unwrap(),
            only: None,
        })
    }
}

fn lines(p: &AppPlan) -> Vec<String> {
    order(p.changes.clone())
        .iter()
        .map(|c| {
            let attrs: Vec<String> = c
                .attributes
                .iter()
                .map(|a| format!("{}:{:?}->{:?}", a.attr, a.old, a.new))
                .collect();
            format!(
                "{} {} {} [{}]",
                c.op.as_str(),
                c.key,
                c.remote_id.as_deref().unwrap_or("-"),
                attrs.join(" ")
            )
        })
        .collect()
}

#[test]
fn joiners_are_created_and_a_manager_made_in_the_same_run_is_set_afterwards() {
    let mut c = Case::new();
    c.accounts = vec![
        account("1", "ann", "CEO", None, true),
        account("2", "bob", "Eng", Some("1"), true),
    ];
    assert_eq!(
        lines(&c.run()),
        vec![
            r#"app-create 1 - [title:[]->["CEO"] userName:[]->["ann"] externalId:[]->["1"]]"#,
            r#"app-create 2 - [title:[]->["Eng"] userName:[]->["bob"] externalId:[]->["2"]]"#,
            r#"app-update 2 - [manager:[]->["1"]]"#,
        ]
    );
    // An inactive person (pre-hire, leaver) gets no account.
    c.accounts = vec![account("3", "cyd", "Eng", None, false)];
    assert!(c.run().changes.is_empty());
}

#[test]
fn an_account_with_the_same_username_and_no_external_id_is_linked_then_updated() {
    let mut c = Case::new();
    c.accounts = vec![account("2", "bob", "Eng", None, true)];
    c.state.accounts = vec![remote("r2", "BOB", None, "by hand", true)];
    assert_eq!(
        lines(&c.run()),
        vec![
            "app-link 2 r2 []",
            r#"app-update 2 r2 [title:["by hand"]->["Eng"] externalId:[]->["2"]]"#,
        ]
    );
    // One with another person's externalId is not taken: a new account is made.
    c.state.accounts = vec![remote("r9", "bob", Some("9"), "x", true)];
    assert_eq!(lines(&c.run())[0].split(' ').next(), Some("app-create"));
}

#[test]
fn a_change_is_one_minimal_update_and_no_change_is_nothing() {
    let mut c = Case::new();
    c.accounts = vec![account("2", "bob", "Lead", None, true)];
    c.state.accounts = vec![remote("r2", "bob", Some("2"), "Eng", true)];
    c.links.insert("2".into(), link("r2", true, None));
    assert_eq!(
        lines(&c.run()),
        vec![r#"app-update 2 r2 [title:["Eng"]->["Lead"]]"#]
    );
    c.state.accounts[0]
        .attrs
        .insert("title".into(), "Lead".into());
    assert!(c.run().changes.is_empty());
    // An attribute the app holds but no mapping names is not ours: left alone.
    c.state.accounts[0]
        .attrs
        .insert("nickName".into(), "b".into());
    assert!(c.run().changes.is_empty());
}

#[test]
fn leavers_are_deactivated_then_deleted_after_the_apps_retention() {
    let mut c = Case::new();
    c.accounts = vec![account("2", "bob", "Eng", None, false)];
    c.state.accounts = vec![remote("r2", "bob", Some("2"), "Eng", true)];
    c.links.insert("2".into(), link("r2", true, None));
    assert_eq!(
        lines(&c.run()),
        vec![r#"app-deactivate 2 r2 [active:["true"]->["false"]]"#]
    );
    // inactive since 2026-02-15, 30 days: due on 2026-03-17
    c.state.accounts[0].active = false;
    c.links
        .insert("2".into(), link("r2", false, Some("2026-02-15")));
    assert!(c.run().changes.is_empty());
    c.today = "2026-03-17";
    assert_eq!(lines(&c.run()), vec!["app-delete 2 r2 []"]);
    // Never deleted without delete-after.
    c.app = app(None);
    assert!(c.run().changes.is_empty());
    // Found inactive with no date yet: the clock starts today.
    c.links.insert("2".into(), link("r2", false, None));
    assert_eq!(c.run().inactive_since, vec!["2".to_string()]);
}

#[test]
fn people_gone_from_the_export_are_deactivated_unless_the_export_is_uncertain() {
    let mut c = Case::new();
    c.state.accounts = vec![remote("r5", "eve", Some("5"), "x", true)];
    c.links.insert("5".into(), link("r5", true, None));
    let p = c.run();
    assert_eq!(
        lines(&p),
        vec![r#"app-deactivate 5 r5 [active:["true"]->["false"]]"#]
    );
    assert!(p.changes[0].reason.contains("no longer in the export"));
    c.uncertain = true;
    assert!(c.run().changes.is_empty());
    // Out of scope but still in the export: the reason says so.
    c.uncertain = false;
    c.present.insert("5".into());
    assert!(c.run().changes[0].reason.contains("no longer in scope"));
    // A linked account deleted by hand is forgotten, not re-created for someone out of scope.
    c.state.accounts.clear();
    let p = c.run();
    assert!(p.changes.is_empty());
    assert_eq!(p.forget, vec!["5".to_string()]);
}

#[test]
fn a_linked_account_deleted_by_hand_is_created_again_for_someone_in_scope() {
    let mut c = Case::new();
    c.accounts = vec![account("2", "bob", "Eng", None, true)];
    c.links.insert("2".into(), link("r2", true, None));
    let p = c.run();
    assert_eq!(p.changes[0].op, AppOp::AppCreate);
    assert!(p.changes[0].reason.contains("no longer exists"));
}

#[test]
fn groups_get_member_deltas_limited_to_managed_accounts() {
    let mut c = Case::new();
    c.accounts = vec![
        account("1", "ann", "CEO", None, true),
        account("2", "bob", "Eng", None, true),
        account("3", "cyd", "Eng", None, false),
    ];
    c.state.accounts = vec![
        remote("r1", "ann", Some("1"), "CEO", true),
        remote("r2", "bob", Some("2"), "Eng", true),
        remote("r3", "cyd", Some("3"), "Eng", false),
    ];
    for (k, r) in [("1", "r1"), ("2", "r2"), ("3", "r3")] {
        c.links.insert(k.into(), link(r, true, None));
    }
    c.state.groups = vec![RemoteGroup {
        id: "g1".into(),
        display_name: "Engineering".into(),
        // r3 is inactive (removed), "other" is not ours (kept), r1 is missing (added? no: not granted)
        members: ["r2", "r3", "other"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        etag: None,
    }];
    c.groups = vec![
        PushedGroup {
            dn: "cn=engineering,ou=groups".into(),
            name: "engineering".into(),
            members: ["1", "2", "3"].iter().map(|s| s.to_string()).collect(),
        },
        PushedGroup {
            dn: "cn=board,ou=groups".into(),
            name: "board".into(),
            members: ["1"].iter().map(|s| s.to_string()).collect(),
        },
    ];
    let l = lines(&c.run());
    assert!(
        l.contains(&r#"add-member cn=engineering,ou=groups g1 [members:[]->["1"]]"#.to_string()),
        "{l:#?}"
    );
    assert!(
        l.contains(&r#"remove-member cn=engineering,ou=groups g1 [members:["3"]->[]]"#.to_string()),
        "{l:#?}"
    );
    assert!(
        l.contains(&r#"app-create cn=board,ou=groups - [members:[]->["1"]]"#.to_string()),
        "{l:#?}"
    );
}

#[test]
fn group_patterns() {
    assert!(glob("eng*", "engineering"));
    assert!(glob("*ing", "engineering"));
    assert!(glob("e*g*g", "engineering"));
    assert!(!glob("e*x", "engineering"));
    assert!(!glob("eng*", "board"));
    assert!(glob("*", "anything"));
    assert!(glob("board", "board"));
    assert!(!glob("board", "boards"));
}

#[test]
fn scim_resources_round_trip_through_the_mapped_attributes() {
    let attrs: BTreeMap<String, String> = [
        ("userName", "bob"),
        ("name.givenName", "Bob"),
        ("emails", "bob@example.com"),
        ("department", "Eng"),
        ("manager", "1"),
        ("title", "Lead"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let ids: BTreeMap<String, String> = [("1".to_string(), "r1".to_string())].into();
    let mut u = scim::user_json("2", &attrs, true, &ids);
    u["id"] = serde_json::json!("r2");
    let r = scim::parse_user(&u);
    assert_eq!(r.external_id.as_deref(), Some("2"));
    assert_eq!(
        r.attrs["manager"], "r1",
        "the manager is sent as its remote id"
    );
    let mut expect = attrs.clone();
    expect.insert("manager".into(), "r1".into());
    assert_eq!(r.attrs, expect);
    assert!(u["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == scim::ENTERPRISE));
}

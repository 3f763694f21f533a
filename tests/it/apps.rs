//! Applications: SCIM 2.0 against a real, independent server (scim2-server; one tenant per test,
//! through a recording and fault-injecting proxy), and command targets.

use serde_json::{json, Value};

use crate::common::*;

const APP_HEADER: &str =
    "employee_id,given_name,preferred_name,surname,title,email,manager_id,department,end_date";

/// A test with an app `wiki` (tenant = the test's name) behind a fresh proxy.
fn setup(name: &str, extra_app: &str, extra: &str) -> (TestEnv, ScimProxy) {
    let t = TestEnv::new(name);
    count_scim(name);
    let proxy = ScimProxy::start(&t.dir, None);
    write_app_config(&t, &proxy.url(name), extra_app, extra);
    (t, proxy)
}

fn write_app_config(t: &TestEnv, url: &str, extra_app: &str, extra: &str) {
    std::fs::write(t.dir.join("scim.token"), format!("{}\n", scim().token)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        t.dir.join("scim.token"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let cfg = t.default_config(&slapd().ldaps_uri)
        + extra
        + &format!(
            r#"
[[apps]]
name = "wiki"
kind = "scim"
url = "{url}"
token-file = "scim.token"
max-requests-per-second = 0
retries = 2
timeout = "5s"
{extra_app}
[apps.attributes]
userName = "{{{{ entry.uid }}}}"
"name.givenName" = "{{{{ given_name }}}}"
"name.familyName" = "{{{{ surname }}}}"
displayName = "{{{{ entry.cn }}}}"
emails = "{{{{ email }}}}"
title = "{{{{ title }}}}"
employeeNumber = "{{{{ employee_id }}}}"
department = "{{{{ department }}}}"
manager = "{{{{ manager_id }}}}"
"#
        );
    t.write_config(&cfg);
}

fn writes(reqs: &[Value]) -> Vec<Value> {
    reqs.iter()
        .filter(|r| r["method"] != "GET")
        .cloned()
        .collect()
}

#[test]
fn scim_joiners_get_accounts_and_a_title_change_is_one_patch() {
    let (t, proxy) = setup("scim_joiners", "", "");
    t.write_csv(
        APP_HEADER,
        &[
            "1,Ann,,Boss,CEO,ann@example.com,,Board,",
            "2,Bob,,Worker,Engineer,bob@example.com,1,Engineering,",
            "3,Cyd,,Worker,Engineer,cyd@example.com,1,Engineering,",
        ],
    );
    // The plan shows the app's changes next to the directory's, with reasons.
    let (code, plan) = t.plan_json();
    assert_eq!(code, 0, "{plan:#}");
    let app_creates: Vec<Value> = changes(&plan)
        .into_iter()
        .filter(|c| c["op"] == "app-create")
        .collect();
    assert_eq!(app_creates.len(), 3, "{plan:#}");
    assert!(app_creates.iter().all(|c| c["target"] == "wiki"));
    assert!(app_creates[0]["reason"]
        .as_str()
        .unwrap()
        .contains("in scope of apps.wiki"));
    let text = t.run(&["plan"]);
    assert!(
        text.stdout
            .contains("+ app-create wiki: bworker (record 2)"),
        "{}",
        text.stdout
    );
    assert!(
        writes(&proxy.requests()).is_empty(),
        "a plan writes nothing"
    );

    let r = t.sync_ok();
    assert!(r.stdout.contains("3 app-create"), "{}", r.stdout);
    let users = scim_users("scim_joiners");
    assert_eq!(users.len(), 3, "{users:#?}");
    let ann = &users["1"];
    let bob = &users["2"];
    assert_eq!(ann["userName"], "aboss");
    assert_eq!(ann["active"], true);
    assert_eq!(ann["name"]["givenName"], "Ann");
    assert_eq!(ann["name"]["familyName"], "Boss");
    assert_eq!(ann["displayName"], "Ann Boss");
    assert_eq!(ann["title"], "CEO");
    assert_eq!(ann["emails"][0]["value"], "ann@example.com");
    let ext = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    assert_eq!(bob[ext]["employeeNumber"], "2");
    assert_eq!(bob[ext]["department"], "Engineering");
    assert_eq!(
        bob[ext]["manager"]["value"], ann["id"],
        "the manager is the manager's account id"
    );

    // A second run sends no write request.
    proxy.clear();
    let r = t.sync_ok();
    let w = writes(&proxy.requests());
    assert!(w.is_empty(), "second run wrote: {w:#?}\n{}", r.stdout);

    // A title change is exactly one PATCH holding only the title.
    t.write_csv(
        APP_HEADER,
        &[
            "1,Ann,,Boss,CEO,ann@example.com,,Board,",
            "2,Bob,,Worker,Staff Engineer,bob@example.com,1,Engineering,",
            "3,Cyd,,Worker,Engineer,cyd@example.com,1,Engineering,",
        ],
    );
    proxy.clear();
    t.sync_ok();
    let w = writes(&proxy.requests());
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(w[0]["method"], "PATCH");
    assert_eq!(
        w[0]["path"],
        format!("/scim_joiners/v2/Users/{}", bob["id"].as_str().unwrap())
    );
    assert_eq!(
        w[0]["body"]["Operations"],
        json!([{"op": "replace", "path": "title", "value": "Staff Engineer"}])
    );
    assert_eq!(scim_users("scim_joiners")["2"]["title"], "Staff Engineer");

    // explain shows the account.
    let e = t.run(&["explain", "2", "--format", "json"]);
    let v: Value = serde_json::from_str(&e.stdout).unwrap();
    assert_eq!(v["apps"][0]["app"], "wiki", "{v:#}");
    assert_eq!(v["apps"][0]["remote-id"], bob["id"]);
    // history has the app rows
    let h = t.run(&["history", "--who", "2"]);
    assert!(h.stdout.contains("app-update"), "{}", h.stdout);

    // The bearer token is never printed, logged or kept.
    let token = &scim().token;
    for args in [
        vec!["-vv", "sync"],
        vec!["-vv", "--log-format", "json", "plan"],
        vec!["check-config"],
    ] {
        let r = t.run(&args);
        assert!(
            !r.stdout.contains(token.as_str()) && !r.stderr.contains(token.as_str()),
            "{args:?} printed the token:\n{r:?}"
        );
    }
    for f in std::fs::read_dir(t.dir.join("state")).unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "the token is in the mirror"
        );
    }
}

#[test]
fn scim_leaver_is_deactivated_then_deleted_after_retention_and_a_rehire_reactivates() {
    let lifecycle = "\n[lifecycle]\nend-date = \"end_date\"\ndelete-after = \"never\"\n\n[safety]\nmax-disable-percent = 100\nmax-delete-percent = 100\n";
    let (t, proxy) = setup("scim_leaver", "delete-after = \"30d\"", lifecycle);
    let rows = |end: &str| {
        vec![
            "1,Ann,,Boss,CEO,ann@example.com,,Board,".to_string(),
            format!("2,Bob,,Worker,Engineer,bob@example.com,1,Engineering,{end}"),
        ]
    };
    let write = |end: &str| {
        let r = rows(end);
        let refs: Vec<&str> = r.iter().map(String::as_str).collect();
        t.write_csv(APP_HEADER, &refs);
    };
    write("2026-03-31");
    let r = t.run(&["sync", "--as-of", "2026-03-01"]);
    assert_eq!(r.code, 0, "{r:?}");
    let id = scim_users("scim_leaver")["2"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(scim_users("scim_leaver")["2"]["active"], true);

    // The end date passed: active = false by PATCH, not deleted.
    proxy.clear();
    let r = t.run(&["sync", "--as-of", "2026-04-01"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("1 app-deactivate"), "{}", r.stdout);
    let w = writes(&proxy.requests());
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(w[0]["method"], "PATCH");
    assert_eq!(
        w[0]["body"]["Operations"],
        json!([{"op": "replace", "path": "active", "value": false}])
    );
    assert_eq!(scim_users("scim_leaver")["2"]["active"], false);

    // Within retention nothing happens.
    proxy.clear();
    let r = t.run(&["sync", "--as-of", "2026-04-20"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(writes(&proxy.requests()).is_empty());

    // A rehire within retention re-activates the same account.
    write("");
    let r = t.run(&["sync", "--as-of", "2026-04-21"]);
    assert_eq!(r.code, 0, "{r:?}");
    let u = &scim_users("scim_leaver")["2"];
    assert_eq!(u["id"], id.as_str());
    assert_eq!(u["active"], true);

    // Leaves again; deleted once the app's delete-after (30d) is over.
    write("2026-05-01");
    let r = t.run(&["sync", "--as-of", "2026-05-02"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(scim_users("scim_leaver")["2"]["active"], false);
    let r = t.run(&["sync", "--as-of", "2026-05-31"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        scim_users("scim_leaver").contains_key("2"),
        "not before 30 days"
    );
    proxy.clear();
    let r = t.run(&["sync", "--as-of", "2026-06-02"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        writes(&proxy.requests())
            .iter()
            .all(|w| w["method"] != "PUT"),
        "never a PUT"
    );
    assert!(r.stdout.contains("1 app-delete"), "{}", r.stdout);
    let w = writes(&proxy.requests());
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(w[0]["method"], "DELETE");
    assert_eq!(scim_get("scim_leaver", &format!("/Users/{id}")).0, 404);
    assert!(!scim_users("scim_leaver").contains_key("2"));
    assert!(scim_users("scim_leaver").contains_key("1"));
}

#[test]
fn scim_groups_are_pushed_with_member_adds_and_removes() {
    let groups = "\n[[groups]]\ndn = \"cn={{ department | slug }},ou=groups,BASE\"\nfor-each = \"department\"\n";
    let groups = groups.replace("BASE", "ou=scim_groups,dc=example,dc=com");
    let groups = groups + "\n[safety]\nmax-attribute-removal-percent = 100\n";
    let (t, proxy) = setup("scim_groups", "groups = [\"*\"]", &groups);
    ldapmodify(&format!(
        "dn: ou=groups,{}\nchangetype: add\nobjectClass: organizationalUnit\nou: groups\n\n",
        t.base_dn
    ));
    t.write_csv(
        APP_HEADER,
        &[
            "1,Ann,,Boss,CEO,ann@example.com,,Board,",
            "2,Bob,,Worker,Engineer,bob@example.com,1,Engineering,",
            "3,Cyd,,Worker,Engineer,cyd@example.com,1,Engineering,",
        ],
    );
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 0, "{r:?}");
    let users = scim_users("scim_groups");
    let id = |k: &str| users[k]["id"].as_str().unwrap().to_string();
    let (_, g) = scim_get("scim_groups", "/Groups");
    let groups: Vec<Value> = g["Resources"].as_array().cloned().unwrap();
    let members = |name: &str, groups: &[Value]| -> Vec<String> {
        let g = groups
            .iter()
            .find(|g| g["displayName"] == name)
            .unwrap_or_else(|| panic!("no group {name}: {groups:#?}"));
        let mut m: Vec<String> = g["members"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| m["value"].as_str().unwrap().to_string())
            .collect();
        m.sort();
        m
    };
    let mut eng = vec![id("2"), id("3")];
    eng.sort();
    assert_eq!(members("engineering", &groups), eng);
    assert_eq!(members("board", &groups), vec![id("1")]);

    // Cyd moves to the board: one PATCH removes her from engineering, one adds her to board.
    t.write_csv(
        APP_HEADER,
        &[
            "1,Ann,,Boss,CEO,ann@example.com,,Board,",
            "2,Bob,,Worker,Engineer,bob@example.com,1,Engineering,",
            "3,Cyd,,Worker,Engineer,cyd@example.com,1,Board,",
        ],
    );
    proxy.clear();
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 0, "{r:?}");
    let w = writes(&proxy.requests());
    let group_writes: Vec<&Value> = w
        .iter()
        .filter(|r| r["path"].as_str().unwrap().contains("/Groups"))
        .collect();
    assert_eq!(group_writes.len(), 2, "{w:#?}");
    for gw in &group_writes {
        assert_eq!(gw["method"], "PATCH", "never a full replace: {gw:#}");
        let ops = gw["body"]["Operations"].as_array().unwrap();
        assert!(ops.iter().all(|o| o["op"] == "add" || o["op"] == "remove"));
    }
    let (_, g) = scim_get("scim_groups", "/Groups");
    let groups: Vec<Value> = g["Resources"].as_array().cloned().unwrap();
    assert_eq!(members("engineering", &groups), vec![id("2")]);
    let mut board = vec![id("1"), id("3")];
    board.sort();
    assert_eq!(members("board", &groups), board);
    // and the department attribute followed (one PATCH for the user)
    assert_eq!(
        scim_users("scim_groups")["3"]
            ["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["department"],
        "Board"
    );
}

#[test]
fn scim_existing_account_with_the_same_username_is_linked_not_duplicated() {
    let (t, proxy) = setup("scim_link", "", "");
    let (code, made) = scim_post(
        "scim_link",
        "/Users",
        &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "bworker", "title": "made by hand"}),
    );
    assert_eq!(code, 201, "{made}");
    t.write_csv(
        APP_HEADER,
        &[
            "1,Ann,,Boss,CEO,ann@example.com,,Board,",
            "2,Bob,,Worker,Engineer,bob@example.com,1,Engineering,",
        ],
    );
    let (_, plan) = t.plan_json();
    assert!(
        changes(&plan)
            .iter()
            .any(|c| c["op"] == "app-link" && c["key"] == "2"),
        "{plan:#}"
    );
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 0, "{r:?}");
    let users = scim_users("scim_link");
    assert_eq!(users.len(), 2, "{users:#?}");
    assert_eq!(
        users["2"]["id"], made["id"],
        "the existing account was linked"
    );
    assert_eq!(users["2"]["title"], "Engineer");
    let posts: Vec<Value> = writes(&proxy.requests())
        .into_iter()
        .filter(|r| r["method"] == "POST")
        .collect();
    assert_eq!(posts.len(), 1, "only Ann is created: {posts:#?}");
    proxy.clear();
    t.sync_ok();
    assert!(writes(&proxy.requests()).is_empty());
}

#[test]
fn scim_429_retry_after_is_honoured_and_a_lost_answer_makes_no_duplicate() {
    let (t, proxy) = setup("scim_429", "", "");
    t.write_csv(APP_HEADER, &["1,Ann,,Boss,CEO,ann@example.com,,Board,"]);
    proxy.inject(json!({"status": 429, "retry_after": 2, "count": 1, "methods": ["POST"]}));
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 0, "{r:?}");
    let reqs = proxy.requests();
    let posts: Vec<&Value> = reqs.iter().filter(|r| r["method"] == "POST").collect();
    assert_eq!(posts.len(), 2, "{reqs:#?}");
    assert_eq!(posts[0]["injected"], true);
    assert_eq!(posts[0]["status"], 429);
    let waited = posts[1]["t"].as_f64().unwrap() - posts[0]["t"].as_f64().unwrap();
    assert!(
        waited >= 2.0,
        "the retry came {waited:.2}s after a 429 with Retry-After: 2"
    );
    assert_eq!(scim_users("scim_429").len(), 1);

    // The server applies a POST but the answer is lost (504 after forwarding): the retry looks the
    // account up by externalId and does not create it twice.
    t.write_csv(
        APP_HEADER,
        &[
            "1,Ann,,Boss,CEO,ann@example.com,,Board,",
            "2,Bob,,Worker,Engineer,bob@example.com,1,Engineering,",
        ],
    );
    proxy.clear();
    proxy.inject(json!({"status": 504, "forward": true, "count": 1, "methods": ["POST"]}));
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 0, "{r:?}");
    let users = scim_users("scim_429");
    assert_eq!(users.len(), 2, "{users:#?}");
    let (_, all) = scim_get("scim_429", "/Users?filter=userName%20eq%20%22bworker%22");
    assert_eq!(all["totalResults"], 1, "{all:#}");
    proxy.clear();
    t.sync_ok();
    assert!(writes(&proxy.requests()).is_empty());
}

#[test]
fn scim_server_down_leaves_the_directory_applied_and_converges_when_back() {
    let (t, mut proxy) = setup("scim_down", "", "");
    let port = proxy.port;
    proxy.stop();
    t.write_csv(
        APP_HEADER,
        &[
            "1,Ann,,Boss,CEO,ann@example.com,,Board,",
            "2,Bob,,Worker,Engineer,bob@example.com,1,Engineering,",
        ],
    );
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 69, "an unreachable app: exit 69\n{r:?}");
    assert!(r.stdout.contains("app wiki unreachable"), "{r:?}");
    assert_eq!(t.people().len(), 2, "the directory's changes went ahead");
    let (code, plan) = t.plan_json();
    assert_eq!(code, 69);
    assert!(plan["apps-unreachable"]["wiki"].is_string(), "{plan:#}");
    // Back again (same port): the accounts are created, once.
    let proxy = ScimProxy::start(&t.dir, Some(port));
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(scim_users("scim_down").len(), 2);
    proxy.clear();
    let r = t.sync_ok();
    assert!(writes(&proxy.requests()).is_empty(), "{}", r.stdout);
}

#[test]
fn scim_failing_account_is_quarantined_and_the_rest_proceed() {
    let (t, proxy) = setup("scim_fail", "", "");
    t.write_csv(
        APP_HEADER,
        &[
            "1,Ann,,Boss,CEO,ann@example.com,,Board,",
            "2,Bob,,Worker,Engineer,not-an-email,1,Engineering,",
        ],
    );
    // Every POST fails with 500 for this run (retries included).
    proxy.inject(json!({"status": 500, "count": 100, "methods": ["POST"]}));
    let r = t.run(&["sync", "--format", "json"]);
    assert_eq!(r.code, 3, "{r:?}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let failed = v["app-failed"].as_array().unwrap();
    for k in ["1", "2"] {
        assert!(
            failed
                .iter()
                .any(|f| f["key"] == k && f["op"] == "app-create"),
            "{v:#}"
        );
    }
    assert_eq!(
        v["apps"]["wiki"]["failed"].as_u64().unwrap(),
        failed.len() as u64
    );
    assert_eq!(t.people().len(), 2, "the directory went ahead");
    proxy.inject(json!({"count": 0}));
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 0, "retried on the next run: {r:?}");
    assert_eq!(scim_users("scim_fail").len(), 2);
}

#[test]
fn command_app_receives_each_change_as_json() {
    let t = TestEnv::new("cmd_app");
    let script = t.dir.join("record.sh");
    let log = t.dir.join("received.jsonl");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ninput=$(cat)\nprintf '%s\\n' \"$input\" >> {}\ncase \"$input\" in *'\"key\":\"3\"'*) echo 'home volume full' >&2; exit 1;; esac\nexit 0\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = t.default_config(&slapd().ldaps_uri)
        + "\n[lifecycle]\nend-date = \"end_date\"\n\n[safety]\nmax-disable-percent = 100\n"
        + &format!(
            r#"
[[apps]]
name = "homes"
kind = "command"
command = ["{}", "--flag"]
timeout = "10s"
when = "department == 'Engineering'"
[apps.attributes]
uid = "{{{{ entry.uid }}}}"
title = "{{{{ title }}}}"
"#,
            script.display()
        );
    t.write_config(&cfg);
    t.write_csv(
        APP_HEADER,
        &[
            "1,Ann,,Boss,CEO,ann@example.com,,Board,",
            "2,Bob,,Worker,Engineer,bob@example.com,1,Engineering,",
            "3,Cyd,,Worker,Engineer,cyd@example.com,1,Engineering,",
        ],
    );
    let r = t.run(&["sync", "--as-of", "2026-01-01"]);
    assert_eq!(r.code, 3, "Cyd's command failed: {r:?}");
    let got: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 2, "only Engineering: {got:#?}");
    assert_eq!(got[0]["op"], "app-create");
    assert_eq!(got[0]["key"], "2");
    assert_eq!(got[0]["app"], "homes");
    assert_eq!(got[0]["attributes"]["uid"], "bworker");
    assert_eq!(got[0]["attributes"]["title"], "Engineer");
    assert_eq!(got[0]["active"], true);
    assert!(got[0]["reason"].as_str().unwrap().contains("joiner"));
    let h = t.run(&["history", "--who", "3"]);
    assert!(
        h.stdout.contains("home volume full"),
        "stderr in the audit: {}",
        h.stdout
    );

    // Cyd is retried; Bob's title change carries the old value; nothing else is sent.
    std::fs::write(
        &script,
        format!("#!/bin/sh\ncat >> {}\nexit 0\n", log.display()),
    )
    .unwrap();
    std::fs::remove_file(&log).unwrap();
    t.write_csv(
        APP_HEADER,
        &[
            "1,Ann,,Boss,CEO,ann@example.com,,Board,",
            "2,Bob,,Worker,Lead,bob@example.com,1,Engineering,",
            "3,Cyd,,Worker,Engineer,cyd@example.com,1,Engineering,",
        ],
    );
    let r = t.run(&["sync", "--as-of", "2026-01-01"]);
    assert_eq!(r.code, 0, "{r:?}");
    let got: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 2, "{got:#?}");
    let bob = got.iter().find(|g| g["key"] == "2").unwrap();
    assert_eq!(bob["op"], "app-update");
    assert_eq!(bob["attributes"], json!({"title": "Lead"}));
    assert_eq!(bob["old"], json!({"title": "Engineer"}));
    assert!(got
        .iter()
        .any(|g| g["key"] == "3" && g["op"] == "app-create"));

    // A leaver: app-deactivate.
    std::fs::remove_file(&log).unwrap();
    t.write_csv(
        APP_HEADER,
        &[
            "1,Ann,,Boss,CEO,ann@example.com,,Board,",
            "2,Bob,,Worker,Lead,bob@example.com,1,Engineering,2026-01-31",
            "3,Cyd,,Worker,Engineer,cyd@example.com,1,Engineering,",
        ],
    );
    let r = t.run(&["sync", "--as-of", "2026-02-01"]);
    assert_eq!(r.code, 0, "{r:?}");
    let got: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["op"], "app-deactivate");
    assert_eq!(got[0]["active"], false);
    assert!(
        got[0]["reason"].as_str().unwrap().contains("leaver"),
        "{got:#?}"
    );
}

#[test]
fn scim_etag_is_sent_and_a_412_rereads_and_retries_once() {
    let (t, proxy) = setup("scim_etag", "", "");
    t.write_csv(APP_HEADER, &["1,Ann,,Boss,CEO,ann@example.com,,Board,"]);
    t.sync_ok();
    let id = scim_users("scim_etag")["1"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    t.write_csv(APP_HEADER, &["1,Ann,,Boss,Chair,ann@example.com,,Board,"]);
    proxy.clear();
    proxy.inject(json!({"status": 412, "count": 1, "methods": ["PATCH"]}));
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 0, "{r:?}");
    let reqs: Vec<Value> = proxy
        .requests()
        .into_iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/Users/{id}"))
        })
        .collect();
    let seq: Vec<String> = reqs
        .iter()
        .map(|r| format!("{} {}", r["method"].as_str().unwrap(), r["status"]))
        .collect();
    assert_eq!(seq, vec!["PATCH 412", "GET 200", "PATCH 204"], "{reqs:#?}");
    assert!(
        reqs[0]["if_match"].as_str().unwrap().starts_with("W/"),
        "If-Match carries the ETag read: {reqs:#?}"
    );
    assert_eq!(scim_users("scim_etag")["1"]["title"], "Chair");
}

#[test]
fn scim_service_without_patch_gets_put_and_the_budget_spaces_requests() {
    let (t, proxy) = setup("scim_put", "", "");
    // 4 requests per second at most.
    let cfg = std::fs::read_to_string(&t.config)
        .unwrap()
        .replace("max-requests-per-second = 0", "max-requests-per-second = 4");
    t.write_config(&cfg);
    proxy.inject(json!({"no_patch": true}));
    t.write_csv(APP_HEADER, &["1,Ann,,Boss,CEO,ann@example.com,,Board,"]);
    t.sync_ok();
    t.write_csv(APP_HEADER, &["1,Ann,,Boss,Chair,ann@example.com,,Board,"]);
    proxy.clear();
    t.sync_ok();
    let reqs = proxy.requests();
    let w = writes(&reqs);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(w[0]["method"], "PUT", "no PATCH on a service without it");
    assert_eq!(w[0]["body"]["title"], "Chair");
    assert_eq!(
        w[0]["body"]["userName"], "aboss",
        "the whole resource is sent"
    );
    assert_eq!(scim_users("scim_put")["1"]["title"], "Chair");
    let times: Vec<f64> = reqs.iter().map(|r| r["t"].as_f64().unwrap()).collect();
    assert!(times.len() >= 4, "{reqs:#?}");
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= 0.2,
            "requests closer than the budget of 4/s allows: {times:?}"
        );
    }
}

#[test]
fn scim_account_deleted_by_hand_is_created_again() {
    let (t, proxy) = setup("scim_gone", "", "");
    t.write_csv(APP_HEADER, &["1,Ann,,Boss,CEO,ann@example.com,,Board,"]);
    t.sync_ok();
    let id = scim_users("scim_gone")["1"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let s = scim();
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "DELETE",
            "-H",
        ])
        .arg(format!("Authorization: Bearer {}", s.token))
        .arg(format!("{}/scim_gone/v2/Users/{id}", s.root))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "204");
    let (_, plan) = t.plan_json();
    let c: Vec<Value> = changes(&plan)
        .into_iter()
        .filter(|c| c["target"] == "wiki")
        .collect();
    assert_eq!(c.len(), 1, "{plan:#}");
    assert_eq!(c[0]["op"], "app-create");
    assert!(c[0]["reason"]
        .as_str()
        .unwrap()
        .contains("no longer exists"));
    t.sync_ok();
    let users = scim_users("scim_gone");
    assert_eq!(users.len(), 1);
    assert_ne!(users["1"]["id"], id.as_str());
    proxy.clear();
    t.sync_ok();
    assert!(writes(&proxy.requests()).is_empty());
}

#[test]
fn a_when_typo_that_deactivates_everyone_is_refused_by_the_gates() {
    let (t, proxy) = setup("scim_gate", "", "");
    let rows: Vec<String> = (1..=30)
        .map(|i| format!("{i},Person,,Number{i},Staff,p{i}@example.com,,Engineering,"))
        .collect();
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    t.write_csv(APP_HEADER, &refs);
    t.sync_ok();
    assert_eq!(scim_users("scim_gate").len(), 30);
    // A typo in `when`: nobody matches any more.
    let cfg = std::fs::read_to_string(&t.config).unwrap().replace(
        "timeout = \"5s\"",
        "timeout = \"5s\"\nwhen = \"department == 'Engineeering'\"",
    );
    t.write_config(&cfg);
    proxy.clear();
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr
            .contains("30 of 30 accounts in app wiki (100.0%) would be deactivated"),
        "{r:?}"
    );
    assert!(writes(&proxy.requests()).is_empty());
    assert!(scim_users("scim_gate")
        .values()
        .all(|u| u["active"] == true));
}

#[test]
fn check_config_online_probes_each_application() {
    let (t, mut proxy) = setup("scim_online", "", "");
    t.write_csv(APP_HEADER, &["1,Ann,,Boss,CEO,ann@example.com,,Board,"]);
    let r = t.run(&["check-config", "--online"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("apps.wiki: http://127.0.0.1:") && r.stderr.contains("PATCH supported"),
        "{r:?}"
    );
    // A wrong token is named as such.
    std::fs::write(t.dir.join("scim.token"), "wrong\n").unwrap();
    let r = t.run(&["check-config", "--online"]);
    assert_eq!(r.code, 69, "{r:?}");
    assert!(r.stderr.contains("refused the bearer token"), "{r:?}");
    assert!(!r.stderr.contains(&scim().token), "{r:?}");
    proxy.stop();
    let r = t.run(&["check-config", "--online"]);
    assert_eq!(r.code, 69, "{r:?}");
    assert!(r.stderr.contains("is unreachable"), "{r:?}");
}

#[test]
fn scim_over_https_is_verified_with_the_ca_file() {
    let t = TestEnv::new("scim_tls");
    count_scim("scim_tls");
    let proxy = ScimProxy::start_with(&t.dir, None, true);
    let url = format!("https://127.0.0.1:{}/scim_tls/v2", proxy.port);
    // Without ca-file the system's trust store does not know the test CA: refused, and said so.
    write_app_config(&t, &url, "", "");
    t.write_csv(APP_HEADER, &["1,Ann,,Boss,CEO,ann@example.com,,Board,"]);
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 69, "{r:?}");
    assert!(r.stdout.contains("app wiki unreachable"), "{r:?}");
    assert!(
        r.stderr.to_lowercase().contains("certificate")
            || r.stdout.to_lowercase().contains("certificate"),
        "the error names the certificate: {r:?}"
    );
    assert!(proxy.requests().is_empty(), "no request got through");
    // With the CA: verified, applied.
    write_app_config(
        &t,
        &url,
        &format!("ca-file = \"{}\"", slapd().ca.display()),
        "",
    );
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(scim_users("scim_tls").len(), 1);
}

#[test]
fn command_app_in_batch_mode_gets_one_array_per_run() {
    let t = TestEnv::new("cmd_batch");
    let script = t.dir.join("record.sh");
    let log = t.dir.join("received.jsonl");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntr -d '\\n' >> {0}\necho >> {0}\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = t.default_config(&slapd().ldaps_uri)
        + &format!(
            "\n[[apps]]\nname = \"homes\"\nkind = \"command\"\ncommand = [\"{}\"]\nbatch = true\n[apps.attributes]\nuid = \"{{{{ entry.uid }}}}\"\n",
            script.display()
        );
    t.write_config(&cfg);
    t.write_export(&[
        "1,Ann,,Boss,,ann@example.com,",
        "2,Bob,,Worker,,bob@example.com,1",
    ]);
    t.sync_ok();
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "one invocation: {lines:#?}");
    let batch = lines[0].as_array().unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[0]["op"], "app-create");
    assert_eq!(batch[1]["attributes"]["uid"], "bworker");
    // Nothing changed: the program is not run.
    t.sync_ok();
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1);
}

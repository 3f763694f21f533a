//! LDAP transactions (RFC 5805, opt-in) against a real slapd: a phase's changes go in
//! transactions of `directory.transaction-size` operations; the overlays (memberof, refint,
//! syncprov) see them as they see single operations; a change the server refuses fails its
//! transaction, is sent alone and quarantined, and the rest is committed; the first change of
//! each kind goes alone (a pilot), so that no failed commit can leave slapd with attribute
//! numbers it rolled back.

use crate::common::*;

/// Run a test of this module alone on its own slapd (common::transactions_slapd): the way the
/// option is meant to be used, nothing else writing meanwhile. Debian's slapd 2.5.13 has crashed
/// in a commit even so, now and then (about one full run of this binary in five to ten, never
/// in a run of this module alone; docs/performance.md, "LDAP transactions"): when the test fails
/// and that server's process is gone, the test says so and runs once more, whole, on a fresh
/// server. A failure with the server still running fails the test at once, as does a second
/// failure.
fn alone(test: impl Fn()) {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let s = transactions_slapd();
    use_slapd(s);
    let Err(failure) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&test)) else {
        return;
    };
    if s.alive() {
        std::panic::resume_unwind(failure);
    }
    eprintln!(
        "slapd (pid {}) died during this test: a crash of slapd's own (see above); the test runs \
         once more on a fresh slapd",
        s.pid
    );
    use_slapd(restart_transactions_slapd());
    test();
}

const H: &str = "employee_id,given_name,preferred_name,surname,title,email,manager_id,department";

/// The default test configuration with `transaction-size` (None: the default) and one group per
/// department.
fn config(t: &TestEnv, size: Option<u32>) -> String {
    let b = &t.base_dn;
    let size = size
        .map(|n| format!("transaction-size = {n}\n"))
        .unwrap_or_default();
    t.default_config(&slapd().ldaps_uri)
        .replace("\n[state]", &format!("{size}\n[state]"))
        + &format!(
            r#"
[[groups]]
dn = "cn=dept-{{{{ department | slug }}}},ou=groups,{b}"
for-each = "department"

[safety]
max-attribute-removal-percent = 50
"#
        )
}

fn sync_json(t: &TestEnv) -> (i32, serde_json::Value) {
    json(t, &["sync", "--format", "json"])
}

/// `sync --dry-run`: the plan; asserts that the directory was read incrementally (the summary
/// on stderr says how it was read).
fn dry_run(t: &TestEnv) -> (i32, serde_json::Value) {
    let r = t.run(&["sync", "--dry-run", "--format", "json"]);
    assert!(r.stderr.contains("(incremental read"), "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("plan JSON did not parse ({e}): {r:?}"));
    (r.code, v)
}

fn json(t: &TestEnv, args: &[&str]) -> (i32, serde_json::Value) {
    let r = t.run(args);
    let v: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("sync JSON did not parse ({e}): {r:?}"));
    (r.code, v)
}

/// One attribute of one entry, asked for by name (memberOf is operational), sorted.
fn attr(dn: &str, a: &str) -> Vec<String> {
    let out = ldap(
        &[
            "ldapsearch",
            "-LLL",
            "-o",
            "ldif-wrap=no",
            "-s",
            "base",
            "-b",
            dn,
            "(objectClass=*)",
            a,
        ],
        None,
    );
    let mut v = parse_ldif(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .next()
        .and_then(|e| e.attrs.get(&a.to_ascii_lowercase()).cloned())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn writes_go_in_transactions_that_the_overlays_and_links_follow() {
    alone(|| {
        let t = TestEnv::new("txn");
        ldapmodify(&format!(
            "dn: ou=groups,{}\nchangetype: add\nobjectClass: organizationalUnit\nou: groups\n\n",
            t.base_dn
        ));
        t.write_config(&config(&t, Some(2)));
        t.write_csv(
            H,
            &[
                "1,Ann,,Boss,CEO,ann@example.com,,Board",
                "2,Bob,,Worker,Dev,bob@example.com,1,Engineering",
                "3,Cy,,Lone,QA,cy@example.com,1,Engineering",
                "4,Dan,,Gone,Ops,dan@example.com,1,Engineering",
                "5,Eve,,Ever,Dev,eve@example.com,1,Engineering",
                "6,Fay,,Far,Sales,fay@example.com,1,Sales",
                "7,Gil,,Good,Sales,gil@example.com,1,Sales",
            ],
        );
        let (code, s) = sync_json(&t);
        assert_eq!(code, 0, "{s:#}");
        // Phases: Ann alone (no transaction for one change); the six she manages: the first alone
        // (a pilot: nothing of its kind was written before in this fresh subtree), then five in
        // transactions of 2 (three); the three groups: a pilot, then two in one transaction.
        assert_eq!(s["transactions"], 4, "{s:#}");
        assert_eq!(s["applied"]["add"], 10, "{s:#}");
        let p = t.people();
        assert_eq!(p.len(), 7);
        let eng = format!("cn=dept-engineering,ou=groups,{}", t.base_dn);
        let bob = format!("uid=bworker,{}", t.people);
        let cy = format!("uid=clone,{}", t.people);
        assert_eq!(
            p["2"].one("manager"),
            Some(format!("uid=aboss,{}", t.people).as_str())
        );
        // memberof ran inside the transaction that added two of the groups.
        assert_eq!(attr(&cy, "memberOf"), vec![eng.clone()]);
        assert_eq!(attr(&eng, "member").len(), 4);
        for (uid, group) in [("aboss", "board"), ("ffar", "sales"), ("ggood", "sales")] {
            assert_eq!(
                attr(&format!("uid={uid},{}", t.people), "memberOf"),
                vec![format!("cn=dept-{group},ou=groups,{}", t.base_dn)]
            );
        }
        // (a quiet run: the first run read an empty subtree by a paged search; this one's read
        // keeps the content-sync cookie the next runs start from)
        t.sync_ok();
        // The adds' entryUUIDs were read back after the commits: the mirror links every record, so
        // a changed surname is a rename of the same entry, not an add and a delete.
        let uuid_before = p["3"].one("entryUUID").unwrap().to_string();
        // Everyone gets a new title, Cy a new surname, Dan a new manager (Cy).
        t.write_csv(
            H,
            &[
                "1,Ann,,Boss,Chair,ann@example.com,,Board",
                "2,Bob,,Worker,Senior Dev,bob@example.com,1,Engineering",
                "3,Cy,,Lane,Senior QA,cy@example.com,1,Engineering",
                "4,Dan,,Gone,SRE,dan@example.com,3,Engineering",
                "5,Eve,,Ever,Lead,eve@example.com,1,Engineering",
                "6,Fay,,Far,Sales Lead,fay@example.com,1,Sales",
                "7,Gil,,Good,Sales Rep,gil@example.com,1,Sales",
            ],
        );
        let (code, plan) = dry_run(&t);
        assert_eq!(code, 0, "{plan:#}");
        let ops: Vec<String> = changes(&plan)
            .iter()
            .map(|c| c["op"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ops.iter().filter(|o| *o == "rename").count(), 1, "{plan:#}");
        assert!(!ops.iter().any(|o| o == "add" || o == "delete"), "{plan:#}");
        let (code, s) = sync_json(&t);
        assert_eq!(code, 0, "{s:#}");
        assert!(s["transactions"].as_u64().unwrap() >= 2, "{s:#}");
        assert!(s["failed"].as_array().unwrap().is_empty(), "{s:#}");
        let p = t.people();
        let lane = format!("uid=clane,{}", t.people);
        assert_eq!(p["3"].dn, lane);
        assert_eq!(p["3"].one("entryUUID"), Some(uuid_before.as_str()));
        assert_eq!(p["2"].one("title"), Some("Senior Dev"));
        assert_eq!(p["5"].one("title"), Some("Lead"));
        assert_eq!(p["7"].one("title"), Some("Sales Rep"));
        assert_eq!(p["4"].one("manager"), Some(lane.as_str()));
        // refint renamed the member inside the same commit's aftermath; memberOf followed the entry.
        let members = attr(&eng, "member");
        assert!(members.contains(&lane), "{members:?}");
        assert!(!members.contains(&cy), "{members:?}");
        assert_eq!(attr(&lane, "memberOf"), vec![eng.clone()]);
        // Converged; syncprov saw the committed changes: after one run (a run after renames reads
        // the directory whole, as without transactions), reads are incremental and plan nothing.
        t.sync_ok();
        let (code, plan) = dry_run(&t);
        assert_eq!(code, 0, "{plan:#}");
        assert!(changes(&plan).is_empty(), "converged: {plan:#}");
        // A change by hand after the transactions (drift) is seen by the incremental read.
        ldapmodify(&format!(
            "dn: {bob}\nchangetype: modify\nreplace: title\ntitle: Hacker\n\n"
        ));
        let (_, plan) = dry_run(&t);
        let ch = changes(&plan);
        assert_eq!(ch.len(), 1, "{plan:#}");
        assert_eq!(ch[0]["attributes"]["title"]["new"][0], "Senior Dev");
    });
}

#[test]
fn a_refused_change_fails_its_transaction_and_is_quarantined_alone() {
    alone(|| {
        let t = TestEnv::new("txnfail");
        ldapmodify(&format!(
            "dn: ou=groups,{}\nchangetype: add\nobjectClass: organizationalUnit\nou: groups\n\n",
            t.base_dn
        ));
        t.write_config(&config(&t, Some(100)));
        // mail is IA5String: slapd refuses Bea's non-ASCII address before it queues her add. Dee
        // and Fay have no surname (inetOrgPerson must have sn): that is found at the commit, which
        // fails the whole transaction, names Dee's add, then Fay's in the second attempt.
        t.write_csv(
            H,
            &[
                "1,Ann,,Able,,ann@example.com,,Sales",
                "2,Bea,,Bad,,bé@exämple.com,,Sales",
                "3,Cal,,Cool,,cal@example.com,,Sales",
                "4,Dee,,,,dee@example.com,,Sales",
                "5,Eli,,Even,,eli@example.com,,Sales",
                "6,Fay,,,,fay@example.com,,Sales",
            ],
        );
        let (code, s) = sync_json(&t);
        assert_eq!(code, 3, "{s:#}");
        let failed = s["failed"].as_array().unwrap();
        let mut keys: Vec<&str> = failed.iter().map(|f| f["key"].as_str().unwrap()).collect();
        keys.sort();
        assert_eq!(keys, vec!["2", "4", "6"], "{s:#}");
        // The server's own reasons: Bea's from the queueing, Dee's and Fay's from their adds sent
        // alone after their transaction failed.
        for f in failed {
            let (rc, name) = if f["key"] == "2" {
                (21, "invalidAttributeSyntax")
            } else {
                (65, "objectClassViolation")
            };
            assert_eq!(f["rc"], rc, "{f:#}");
            assert!(f["error"].as_str().unwrap().contains(name), "{f:#}");
        }
        let p = t.people();
        assert_eq!(p.keys().collect::<Vec<_>>(), vec!["1", "3", "5"]);
        // The rest was committed in one transaction (the third attempt), and the group (the next
        // phase: one change, no transaction) has the people added as members.
        assert_eq!(s["transactions"], 1, "{s:#}");
        let sales = format!("cn=dept-sales,ou=groups,{}", t.base_dn);
        let members = attr(&sales, "member");
        for uid in ["aable", "ccool", "eeven"] {
            let dn = format!("uid={uid},{}", t.people);
            assert!(members.contains(&dn), "{members:?}");
            assert_eq!(attr(&dn, "memberOf"), vec![sales.clone()]);
        }
        // Nothing was written twice and the next run plans only the quarantined two again.
        let (_, plan) = t.plan_json();
        let ch = changes(&plan);
        let mut adds: Vec<&str> = ch
            .iter()
            .filter(|c| c["op"] == "add")
            .map(|c| c["key"].as_str().unwrap())
            .collect();
        adds.sort();
        assert_eq!(adds, vec!["2", "4", "6"], "{plan:#}");
    });
}

#[test]
fn transactions_are_off_unless_asked_for() {
    alone(|| {
        let t = TestEnv::new("txnoff");
        ldapmodify(&format!(
            "dn: ou=groups,{}\nchangetype: add\nobjectClass: organizationalUnit\nou: groups\n\n",
            t.base_dn
        ));
        t.write_config(&config(&t, None));
        t.write_csv(
            H,
            &[
                "1,Ann,,Boss,CEO,ann@example.com,,Board",
                "2,Bob,,Worker,Dev,bob@example.com,1,Board",
            ],
        );
        let (code, s) = sync_json(&t);
        assert_eq!(code, 0, "{s:#}");
        assert_eq!(s["transactions"], 0, "{s:#}");
        assert_eq!(s["applied"]["add"], 3, "{s:#}");
        assert_eq!(t.people().len(), 2);
        let r = t.run(&["sync"]);
        assert!(!r.stdout.contains("LDAP transaction"), "{r:?}");
        // 0 says the same.
        t.write_config(&config(&t, Some(0)));
        t.write_csv(
            H,
            &[
                "1,Ann,,Boss,CEO,ann@example.com,,Board",
                "2,Bob,,Worker,Dev,bob@example.com,1,Board",
                "3,Cy,,Lone,QA,cy@example.com,1,Board",
                "4,Dan,,Gone,Ops,dan@example.com,1,Board",
            ],
        );
        let (code, s) = sync_json(&t);
        assert_eq!(code, 0, "{s:#}");
        assert_eq!(s["transactions"], 0, "{s:#}");
        assert_eq!(s["applied"]["add"], 2, "{s:#}");
        assert_eq!(t.people().len(), 4);
    });
}

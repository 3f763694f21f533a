//! Groups and placement against a real slapd.

use crate::common::*;

const H: &str =
    "employee_id,given_name,preferred_name,surname,title,email,manager_id,department,location";

fn write(t: &TestEnv, rows: &[&str]) {
    t.write_csv(H, rows);
}

fn members(dn: &str, attr: &str) -> Vec<String> {
    let mut v: Vec<String> = search(dn, "(objectClass=*)")
        .into_iter()
        .next()
        .map(|e| {
            e.attrs
                .get(&attr.to_ascii_lowercase())
                .cloned()
                .unwrap_or_default()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn group_config(t: &TestEnv) -> String {
    let b = &t.base_dn;
    t.default_config(&slapd().ldaps_uri)
        + &format!(
            r#"
[[groups]]
dn = "cn=engineering,ou=groups,{b}"
when = "department == 'Engineering'"

[[groups]]
dn = "cn=dept-{{{{ department | slug }}}},ou=groups,{b}"
for-each = "department"
object-class = "groupOfUniqueNames"
empty = "delete"

[[groups]]
dn = "cn=staff,ou=groups,{b}"
object-class = "posixGroup"
gid-number = 5000

[[groups]]
dn = "cn=berliners,ou=groups,{b}"
when = "location == 'Berlin'"
members = "merge"

[safety]
max-attribute-removal-percent = 70
max-delete-percent = 60
min-source-percent = 50
"#
        )
}

#[test]
fn group_rules_create_and_maintain_memberships() {
    let t = TestEnv::new("grouprules");
    ldapmodify(&format!(
        "dn: ou=groups,{}\nchangetype: add\nobjectClass: organizationalUnit\nou: groups\n\n",
        t.base_dn
    ));
    // A group nobody listed, and a listed one that already exists with a hand-added member.
    ldapmodify(&format!(
        "dn: cn=handmade,ou=groups,{b}\nchangetype: add\nobjectClass: groupOfNames\ncn: handmade\nmember: cn=someone,{b}\n\n\
         dn: cn=berliners,ou=groups,{b}\nchangetype: add\nobjectClass: groupOfNames\ncn: berliners\nmember: cn=visitor,{b}\n\n",
        b = t.base_dn
    ));
    t.write_config(&group_config(&t));
    write(
        &t,
        &[
            "1,Ann,,Boss,,,,Engineering,Berlin",
            "2,Bob,,Worker,,,1,Engineering,Paris",
            "3,Cy,,Lone,,,1,Sales & Marketing,Berlin",
        ],
    );
    let r = t.sync_ok();
    assert!(r.stdout.contains("sync:"), "{r:?}");
    let dn = |uid: &str| format!("uid={uid},{}", t.people).to_ascii_lowercase();
    let g = |cn: &str| format!("cn={cn},ou=groups,{}", t.base_dn);
    let lower = |v: Vec<String>| {
        v.into_iter()
            .map(|x| x.to_ascii_lowercase())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        lower(members(&g("engineering"), "member")),
        vec![dn("aboss"), dn("bworker")]
    );
    assert_eq!(
        lower(members(&g("dept-engineering"), "uniqueMember")),
        vec![dn("aboss"), dn("bworker")]
    );
    assert_eq!(
        lower(members(&g("dept-sales-marketing"), "uniqueMember")),
        vec![dn("clone")]
    );
    assert_eq!(
        members(&g("staff"), "memberUid"),
        vec!["aboss", "bworker", "clone"]
    );
    // merge: the hand-added visitor stays
    let berliners = lower(members(&g("berliners"), "member"));
    assert!(
        berliners.contains(&format!("cn=visitor,{}", t.base_dn).to_ascii_lowercase()),
        "{berliners:?}"
    );
    assert!(
        berliners.contains(&dn("aboss"))
            && berliners.contains(&dn("clone"))
            && berliners.len() == 3
    );
    // untouched
    assert_eq!(
        members(&g("handmade"), "member"),
        vec![format!("cn=someone,{}", t.base_dn)]
    );
    let (_, plan) = t.plan_json();
    assert!(changes(&plan).is_empty(), "second run: {plan:#}");

    // explain: the rule that grants each group, the template and the source columns of each value
    let r = t.run(&["explain", "bworker", "--format", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let ex: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(ex["key"], "2");
    let groups = ex["groups"].as_array().unwrap();
    let eng = groups
        .iter()
        .find(|g| g["dn"].as_str().unwrap().starts_with("cn=engineering"))
        .unwrap();
    assert_eq!(eng["rule"]["index"], 0);
    assert_eq!(eng["rule"]["when"], "department == 'Engineering'");
    assert_eq!(eng["sources"]["department"], "Engineering");
    let dept = groups
        .iter()
        .find(|g| g["dn"].as_str().unwrap().starts_with("cn=dept-engineering"))
        .unwrap();
    assert_eq!(dept["rule"]["for-each"], "department");
    let cn = ex["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["attribute"] == "cn")
        .unwrap();
    assert_eq!(cn["sources"]["given_name"], "Bob");
    assert_eq!(cn["value"][0], "Bob Worker");
    assert!(
        ex["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["op"] == "add" && h["key"] == "2"),
        "{ex:#}"
    );
    let r = t.run(&["explain", "2"]);
    assert!(
        r.stdout
            .contains("groups[0] when department == 'Engineering'"),
        "{r:?}"
    );
    // history and the access report
    let r = t.run(&["history", "--who", "2", "--format", "json"]);
    let h: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        h.as_array()
            .unwrap()
            .iter()
            .any(|x| x["op"] == "add" && x["state"] == "done"),
        "{h:#}"
    );
    let r = t.run(&["report", "access", "--format", "csv"]);
    assert_eq!(r.code, 0, "{r:?}");
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("\"cn=engineering,ou=groups") && l.contains("uid=bworker"))
        .unwrap_or_else(|| panic!("{}", r.stdout));
    assert!(
        line.contains(",2,groups[0] when department == 'Engineering',20"),
        "{line}"
    );

    // Bob moves to Sales & Marketing; Ann leaves Berlin; everyone leaves Engineering.
    write(
        &t,
        &[
            "1,Ann,,Boss,,,,Management,Paris",
            "2,Bob,,Worker,,,1,Sales & Marketing,Paris",
            "3,Cy,,Lone,,,1,Sales & Marketing,Berlin",
        ],
    );
    let (code, plan) = t.plan_json();
    assert_eq!(code, 0, "{plan:#}");
    let ch = changes(&plan);
    let ops: Vec<(String, String)> = ch
        .iter()
        .map(|c| {
            (
                c["op"].as_str().unwrap().to_string(),
                c["dn"].as_str().unwrap().to_ascii_lowercase(),
            )
        })
        .collect();
    // membership changes are deltas, never a replace of the list
    assert!(ch.iter().all(
        |c| c["op"] != "modify" || !c["attributes"].as_object().unwrap().contains_key("member")
    ));
    assert!(
        ops.contains(&(
            "add-member".into(),
            g("dept-sales-marketing").to_ascii_lowercase()
        )),
        "{ops:?}"
    );
    assert!(
        ops.contains(&("remove-member".into(), g("berliners").to_ascii_lowercase())),
        "{ops:?}"
    );
    assert!(
        ops.contains(&("delete".into(), g("dept-engineering").to_ascii_lowercase())),
        "empty = delete: {ops:?}"
    );
    assert!(
        ops.contains(&("add".into(), g("dept-management").to_ascii_lowercase())),
        "{ops:?}"
    );
    t.sync_ok();
    // the static engineering group is empty now: it keeps a placeholder member (groupOfNames needs one)
    assert_eq!(
        members(&g("engineering"), "member"),
        vec!["cn=dirbridge-empty-group".to_string()]
    );
    assert!(
        search(&g("dept-engineering"), "(objectClass=*)").is_empty(),
        "created by dirbridge, emptied: deleted"
    );
    assert_eq!(
        lower(members(&g("dept-sales-marketing"), "uniqueMember")),
        vec![dn("bworker"), dn("clone")]
    );
    let berliners = lower(members(&g("berliners"), "member"));
    assert_eq!(berliners.len(), 2, "{berliners:?}");
    assert!(!berliners.contains(&dn("aboss")));
    let (_, plan) = t.plan_json();
    assert!(changes(&plan).is_empty(), "converged: {plan:#}");
    // someone joins Engineering again: the placeholder goes
    write(
        &t,
        &[
            "1,Ann,,Boss,,,,Engineering,Paris",
            "2,Bob,,Worker,,,1,Sales & Marketing,Paris",
            "3,Cy,,Lone,,,1,Sales & Marketing,Berlin",
        ],
    );
    t.sync_ok();
    assert_eq!(
        lower(members(&g("engineering"), "member")),
        vec![dn("aboss")]
    );
}

#[test]
fn placement_moves_entries_and_creates_ous() {
    let t = TestEnv::new("placement");
    let cfg = t.default_config(&slapd().ldaps_uri).replace(
        "[users.attributes]",
        &format!(
            "[[users.placement]]\nwhen = \"location == 'Berlin'\"\nbase = \"ou=berlin,{p}\"\ncreate = true\n\n\
             [[users.placement]]\nwhen = \"location == 'Oslo'\"\nbase = \"ou=oslo,{p}\"\n\n[users.attributes]",
            p = t.people
        ),
    ) + "\n[safety]\nmax-delete-percent = 60\nmin-source-percent = 50\nmax-move-percent = 60\n";
    t.write_config(&cfg);
    write(
        &t,
        &[
            "1,Ann,,Boss,,,,X,Berlin",
            "2,Bob,,Worker,,,1,X,Paris",
            "3,Ola,,Nordmann,,,1,X,Oslo",
        ],
    );
    let r = t.run(&["sync"]);
    assert_eq!(
        r.code, 3,
        "Oslo's OU does not exist and its rule does not create it: {r:?}"
    );
    assert!(
        r.stderr
            .contains("users.placement[1] puts this person under ou=oslo"),
        "{r:?}"
    );
    let p = t.people();
    assert_eq!(p["1"].dn, format!("uid=aboss,ou=berlin,{}", t.people));
    assert_eq!(p["2"].dn, format!("uid=bworker,{}", t.people));
    assert!(!p.contains_key("3"));
    let uuid = p["1"].one("entryUUID").unwrap().to_string();
    // Ann moves to Paris (the default), with a new title in the same run
    write(
        &t,
        &["1,Ann,,Boss,Chief,,,X,Paris", "2,Bob,,Worker,,,1,X,Paris"],
    );
    let (_, plan) = t.plan_json();
    let ops: Vec<String> = changes(&plan)
        .iter()
        .map(|c| c["op"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ops,
        vec!["modify", "move", "modify"],
        "Ann changes title (before her move, by her DN then) and moves; Bob's manager DN follows: {plan:#}"
    );
    assert_eq!(
        changes(&plan)[0]["dn"],
        format!("uid=aboss,ou=berlin,{}", t.people)
    );
    t.sync_ok();
    let p = t.people();
    assert_eq!(p["1"].dn, format!("uid=aboss,{}", t.people));
    assert_eq!(
        p["1"].one("entryUUID"),
        Some(uuid.as_str()),
        "a move keeps the entry"
    );
    assert_eq!(p["1"].one("title"), Some("Chief"));
    assert_eq!(
        p["2"].one("manager"),
        Some(format!("uid=aboss,{}", t.people).as_str())
    );
    let (_, plan) = t.plan_json();
    assert!(changes(&plan).is_empty(), "{plan:#}");
}

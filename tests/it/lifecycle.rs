//! Joiners, movers, leavers against a real slapd (with ppolicy), driven with --as-of.

use crate::common::*;

const H: &str = "employee_id,given_name,preferred_name,surname,title,email,manager_id,start_date,end_date,status";

fn write(t: &TestEnv, rows: &[&str]) {
    t.write_csv(H, rows);
}

fn sync_at(t: &TestEnv, day: &str) -> Run {
    let r = t.run(&["sync", "--as-of", day]);
    assert_eq!(r.code, 0, "sync --as-of {day}: {r:?}");
    r
}

fn locked(e: &LdapEntry) -> bool {
    e.one("pwdAccountLockedTime") == Some("000001010000Z")
}

fn all_entries(t: &TestEnv) -> std::collections::BTreeMap<String, LdapEntry> {
    // pwdAccountLockedTime is operational: ask for it by name
    let out = ldap(
        &[
            "ldapsearch",
            "-LLL",
            "-o",
            "ldif-wrap=no",
            "-b",
            &t.base_dn,
            "(employeeNumber=*)",
            "*",
            "entryUUID",
            "pwdAccountLockedTime",
        ],
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut m = std::collections::BTreeMap::new();
    for block in text.split("\n\n") {
        let mut dn = String::new();
        let mut attrs: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for line in block.lines() {
            if let Some((k, v)) = line.split_once(": ") {
                if k == "dn" {
                    dn = v.to_string();
                } else {
                    attrs
                        .entry(k.to_ascii_lowercase())
                        .or_default()
                        .push(v.to_string());
                }
            }
        }
        if !dn.is_empty() {
            let key = attrs["employeenumber"][0].clone();
            m.insert(key, LdapEntry { dn, attrs });
        }
    }
    m
}

#[test]
fn joiner_mover_leaver_story() {
    let t = TestEnv::new("lifecycle");
    let b = t.base_dn.clone();
    ldapmodify(&format!(
        "dn: ou=leavers,{b}\nchangetype: add\nobjectClass: organizationalUnit\nou: leavers\n\n\
         dn: ou=groups,{b}\nchangetype: add\nobjectClass: organizationalUnit\nou: groups\n\n"
    ));
    let cfg = t.default_config(&slapd().ldaps_uri)
        + &format!(
            r#"
[[groups]]
dn = "cn=staff,ou=groups,{b}"

[lifecycle]
start-date = "start_date"
end-date = "end_date"
status = "status"
timezone = "Europe/Berlin"
pre-hire-days = 7
leave = "disable"
disabled-base = "ou=leavers,{b}"
delete-after = "30d"

[safety]
max-disable-percent = 50
max-move-percent = 50
max-delete-percent = 50
min-source-percent = 50
max-attribute-removal-percent = 50
"#
        );
    t.write_config(&cfg);
    let base_rows = [
        "1,Ann,,Able,,,,2026-01-01,,",
        "2,Bob,,Worker,,,1,2026-01-01,2026-03-31,",
        "3,Cy,,Future,,,1,2026-05-01,,",
        "4,Dee,,Away,,,1,2026-01-01,,leave",
        "5,Eve,,Gone,,,1,2026-01-01,,",
    ];
    write(&t, &base_rows);
    let staff = format!("cn=staff,ou=groups,{b}");
    let staff_members = || {
        let mut v: Vec<String> = search(&staff, "(objectClass=*)")
            .first()
            .map(|e| e.attrs.get("member").cloned().unwrap_or_default())
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.to_ascii_lowercase())
            .collect();
        v.sort();
        v
    };

    // 1 March: Ann, Bob, Dee (on leave: disabled), Eve exist; Cy's start is two months away.
    let (_, plan) = {
        let r = t.run(&["plan", "--as-of", "2026-03-01", "--format", "json"]);
        (
            r.code,
            serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap(),
        )
    };
    sync_at(&t, "2026-03-01");
    let p = all_entries(&t);
    assert_eq!(p.keys().collect::<Vec<_>>(), vec!["1", "2", "4", "5"]);
    assert!(!locked(&p["1"]) && locked(&p["4"]));
    let _ = plan;
    assert_eq!(staff_members().len(), 4);
    // explain names the state and the next date at which anything changes
    let r = t.run(&["explain", "3", "--as-of", "2026-03-01", "--format", "json"]);
    let ex: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(ex["lifecycle"]["state"]["state"], "not-yet", "{ex:#}");
    assert_eq!(
        ex["lifecycle"]["next-change"], "2026-04-24",
        "7 days before the start: {ex:#}"
    );
    let r = t.run(&["explain", "2", "--as-of", "2026-03-01", "--format", "json"]);
    let ex: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(ex["lifecycle"]["next-change"], "2026-03-31", "{ex:#}");
    let r = t.run(&["plan", "--as-of", "2026-03-01", "--format", "json"]);
    let p1: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(p1["summary"]["next-change"], "2026-03-31", "{p1:#}");

    // 1 April: Bob's end date (31 March) has passed: disabled, moved, out of the group.
    let r = t.run(&["plan", "--as-of", "2026-04-01", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let ops: Vec<(String, String)> = changes(&plan)
        .iter()
        .map(|c| {
            (
                c["op"].as_str().unwrap().to_string(),
                c["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(ops.contains(&("disable".into(), "2".into())), "{ops:?}");
    assert!(ops.contains(&("move".into(), "2".into())), "{ops:?}");
    assert!(
        ops.contains(&("remove-member".into(), "groups[0]".into())),
        "{ops:?}"
    );
    assert_eq!(plan["summary"]["disable"], 1, "{plan:#}");
    sync_at(&t, "2026-04-01");
    let p = all_entries(&t);
    assert_eq!(p["2"].dn, format!("uid=bworker,ou=leavers,{b}"));
    assert!(locked(&p["2"]));
    assert!(!staff_members().contains(&format!("uid=bworker,ou=leavers,{b}").to_ascii_lowercase()));
    assert_eq!(staff_members().len(), 3);

    // 25 April: Cy is inside the 7-day pre-hire window: created, disabled.
    sync_at(&t, "2026-04-25");
    let p = all_entries(&t);
    assert!(locked(&p["3"]), "a pre-hire is created disabled");

    // 1 May: Cy starts (enabled); Eve vanishes from the export (leaver); Bob's 30 days are over
    // (deleted); a homonym of Bob joins and must not get Bob's uid... which Bob held until today.
    write(
        &t,
        &[
            "1,Ann,,Able,,,,2026-01-01,,",
            "2,Bob,,Worker,,,1,2026-01-01,2026-03-31,",
            "3,Cy,,Future,,,1,2026-05-01,,",
            "4,Dee,,Away,,,1,2026-01-01,,leave",
            "6,Bo,,Worker,,,1,2026-05-01,,",
        ],
    );
    sync_at(&t, "2026-05-01");
    let p = all_entries(&t);
    assert!(!p.contains_key("2"), "purged after retention: {p:#?}");
    assert!(!locked(&p["3"]), "Cy started");
    assert!(
        locked(&p["5"]) && p["5"].dn == format!("uid=egone,ou=leavers,{b}"),
        "Eve vanished: {:?}",
        p["5"]
    );
    assert_eq!(
        p["6"].one("uid"),
        Some("bworker2"),
        "Bob's uid was still reserved by his entry"
    );
    let eve_uuid = p["5"].one("entryUUID").unwrap().to_string();

    // 10 May: Eve is back within retention: the same entry is enabled and moved back.
    write(
        &t,
        &[
            "1,Ann,,Able,,,,2026-01-01,,",
            "2,Bob,,Worker,,,1,2026-01-01,2026-03-31,",
            "3,Cy,,Future,,,1,2026-05-01,,",
            "4,Dee,,Back,,,1,2026-01-01,,",
            "5,Eve,,Gone,,,1,2026-01-01,,",
            "6,Bo,,Worker,,,1,2026-05-01,,",
        ],
    );
    sync_at(&t, "2026-05-10");
    let p = all_entries(&t);
    assert_eq!(
        p["5"].one("entryUUID"),
        Some(eve_uuid.as_str()),
        "a rehire keeps the entry"
    );
    assert_eq!(p["5"].dn, format!("uid=egone,{}", t.people));
    assert!(!locked(&p["5"]) && !locked(&p["4"]));
    assert!(!p.contains_key("2"), "Bob is past retention: not recreated");
    let r = t.run(&["plan", "--as-of", "2026-05-10", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(changes(&plan).is_empty(), "converged: {plan:#}");
}

#[test]
fn joiners_get_a_random_password_handed_to_a_program() {
    let t = TestEnv::new("passwords");
    let script = t.dir.join("deliver.sh");
    let out = t.dir.join("delivered.jsonl");
    std::fs::write(&script, "#!/bin/sh\ncat >> \"$1\"\necho >> \"$1\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = t.default_config(&slapd().ldaps_uri)
        + &format!(
            "\n[lifecycle]\npassword = \"random\"\npassword-command = [\"{}\", \"{}\"]\n",
            script.display(),
            out.display()
        );
    t.write_config(&cfg);
    t.write_export(&["1,Ann,,Boss,,ann@example.com,", "2,Bob,,Worker,,,1"]);
    let (code, plan) = t.plan_json();
    assert_eq!(code, 0);
    assert!(
        !plan.to_string().contains("userPassword"),
        "the plan never holds a password: {plan:#}"
    );
    let r = t.sync_ok();
    let delivered: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(delivered.len(), 2);
    let ann = delivered.iter().find(|d| d["key"] == "1").unwrap();
    assert_eq!(ann["uid"], "aboss");
    assert_eq!(ann["mail"], "ann@example.com");
    let pw = ann["password"].as_str().unwrap().to_string();
    assert!(pw.len() >= 20);
    // the person can bind with it
    let dn = ann["dn"].as_str().unwrap();
    let who = std::process::Command::new("ldapwhoami")
        .args(["-x", "-H", &slapd().ldap_uri, "-D", dn, "-w", &pw])
        .output()
        .unwrap();
    assert!(
        who.status.success(),
        "{}",
        String::from_utf8_lossy(&who.stderr)
    );
    // and it is nowhere else: not in dirbridge's output, not in the mirror
    assert!(!r.stdout.contains(&pw) && !r.stderr.contains(&pw));
    let db = std::fs::read(t.dir.join("state/mirror.db")).unwrap();
    assert!(!db.windows(pw.len()).any(|w| w == pw.as_bytes()));
    let h = t.run(&["history", "--format", "json"]);
    assert!(
        h.stdout.contains("initial password for record 1 handed to"),
        "{h:?}"
    );
    assert!(!h.stdout.contains(&pw));
    // a second run does not touch the passwords
    let (_, plan) = t.plan_json();
    assert!(changes(&plan).is_empty(), "{plan:#}");
}

#[test]
fn disable_by_attributes_and_enable_again() {
    let t = TestEnv::new("disableattrs");
    let cfg = t.default_config(&slapd().ldaps_uri).replace("title = \"{{ title }}\"\n", "")
        + "\n[lifecycle]\nend-date = \"end_date\"\ndisable-method = \"attributes\"\ndisable-attributes = { title = \"DISABLED\", description = \"disabled by dirbridge\" }\n\n[safety]\nmax-disable-percent = 60\n";
    t.write_config(&cfg);
    let h = "employee_id,given_name,preferred_name,surname,title,email,manager_id,end_date";
    let write =
        |rows: &[&str]| t.write_export_raw(format!("{h}\n{}\n", rows.join("\n")).as_bytes());
    write(&["1,Ann,,Boss,,,,", "2,Bob,,Worker,,,1,2026-03-31"]);
    assert_eq!(t.run(&["sync", "--as-of", "2026-03-01"]).code, 0);
    assert!(t.people()["2"].one("description").is_none());
    let r = t.run(&["sync", "--as-of", "2026-04-01"]);
    assert_eq!(r.code, 0, "{r:?}");
    let p = t.people();
    assert_eq!(p["2"].one("title"), Some("DISABLED"));
    assert_eq!(p["2"].one("description"), Some("disabled by dirbridge"));
    assert!(p["1"].one("description").is_none());
    // the end date is lifted: enabled again, the attributes go
    write(&["1,Ann,,Boss,,,,", "2,Bob,,Worker,,,1,"]);
    let r = t.run(&["plan", "--as-of", "2026-04-02", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(changes(&plan)[0]["op"], "enable", "{plan:#}");
    assert_eq!(t.run(&["sync", "--as-of", "2026-04-02"]).code, 0);
    let p = t.people();
    assert!(
        p["2"].one("title").is_none() && p["2"].one("description").is_none(),
        "{:?}",
        p["2"]
    );
}

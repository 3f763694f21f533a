//! Core sync against a real slapd: creates, converges, modifies, renames, deletes, relinks.

use crate::common::*;

const PEOPLE: &[&str] = &[
    "1,Ann,,Boss,CEO,ann@example.com,",
    "2,Bob,Bobby,Worker,Developer,bob@example.com,1",
    "3,Cy,,Lone,QA,cy@example.com,1",
    "4,Dan,,Gone,Ops,dan@example.com,2",
];

#[test]
fn first_sync_creates_everyone_then_second_is_empty() {
    let t = TestEnv::new("first");
    t.write_export(PEOPLE);
    let r = t.sync_ok();
    assert!(
        r.stdout
            .contains("sync: 4 add, 0 modify, 0 rename, 0 delete applied"),
        "{r:?}"
    );
    let p = t.people();
    assert_eq!(p.len(), 4);
    let bob = &p["2"];
    assert_eq!(bob.dn, format!("uid=bworker,{}", t.people));
    assert_eq!(bob.one("cn"), Some("Bobby Worker"));
    assert_eq!(bob.one("givenName"), Some("Bob"));
    assert_eq!(bob.one("sn"), Some("Worker"));
    assert_eq!(bob.one("title"), Some("Developer"));
    assert_eq!(bob.one("mail"), Some("bob@example.com"));
    assert_eq!(
        bob.one("manager"),
        Some(format!("uid=aboss,{}", t.people).as_str())
    );
    assert_eq!(
        p["4"].one("manager"),
        Some(format!("uid=bworker,{}", t.people).as_str())
    );
    assert!(
        p["1"].one("manager").is_none(),
        "an empty render is an absent attribute"
    );
    // The second run plans and applies nothing; the adds' entryUUIDs were read back (base
    // searches after the writes), so nobody is relinked by the anchor.
    let (code, plan) = t.plan_json();
    assert_eq!(code, 0);
    assert!(changes(&plan).is_empty(), "{plan:#}");
    assert!(plan["relinked"].as_array().unwrap().is_empty(), "{plan:#}");
    let r = t.sync_ok();
    assert!(
        r.stdout
            .contains("0 add, 0 modify, 0 rename, 0 delete applied"),
        "{r:?}"
    );
}

#[test]
fn changes_give_exact_modify_rename_and_delete() {
    let t = TestEnv::new("churn");
    t.write_export(PEOPLE);
    t.sync_ok();
    let before = t.people();
    // Bob: new title and manager; Cy: new surname (uid is forced: rename); Dan leaves.
    t.write_export(&[
        "1,Ann,,Boss,CEO,ann@example.com,",
        "2,Bob,Bobby,Worker,Senior Developer,bob@example.com,3",
        "3,Cy,,Lane,QA,cy@example.com,1",
    ]);
    // Allow one delete out of four (the default gates refuse 25%).
    let cfg = std::fs::read_to_string(&t.config).unwrap()
        + "\n[safety]\nmax-delete-percent = 30\nmin-source-percent = 70\n";
    t.write_config(&cfg);
    let (code, plan) = t.plan_json();
    assert_eq!(code, 0, "{plan:#}");
    let ch = changes(&plan);
    let ops: Vec<(String, String)> = ch
        .iter()
        .map(|c| {
            (
                c["op"].as_str().unwrap().to_string(),
                c["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // Cy's own modify goes to the entry before its rename (modifies before renames: each rename
    // sets refint scanning the directory); Bob's names Cy's new DN, so it waits for the rename.
    assert_eq!(
        ops,
        vec![
            ("modify".to_string(), "3".to_string()),
            ("rename".to_string(), "3".to_string()),
            ("modify".to_string(), "2".to_string()),
            ("delete".to_string(), "4".to_string()),
        ]
    );
    let bob = &ch[2]["attributes"];
    assert_eq!(bob.as_object().unwrap().len(), 2, "{bob:#}");
    assert_eq!(bob["title"]["old"][0], "Developer");
    assert_eq!(bob["title"]["new"][0], "Senior Developer");
    assert_eq!(bob["manager"]["new"][0], format!("uid=clane,{}", t.people));
    assert_eq!(ch[1]["dn"], format!("uid=clone,{}", t.people));
    assert_eq!(ch[1]["new-dn"], format!("uid=clane,{}", t.people));
    assert_eq!(ch[0]["dn"], format!("uid=clone,{}", t.people));
    let cy: Vec<&String> = ch[0]["attributes"].as_object().unwrap().keys().collect();
    assert_eq!(cy, vec!["cn", "sn"]);
    t.sync_ok();
    let after = t.people();
    assert_eq!(after.len(), 3);
    assert!(!after.contains_key("4"));
    assert_eq!(after["3"].dn, format!("uid=clane,{}", t.people));
    // The rename kept the entry (same entryUUID): the link is the id, not the DN.
    assert_eq!(after["3"].one("entryUUID"), before["3"].one("entryUUID"));
    assert_eq!(after["3"].one("uid"), Some("clane"));
    assert_eq!(after["3"].one("sn"), Some("Lane"));
    assert_eq!(after["3"].one("cn"), Some("Cy Lane"));
    assert_eq!(after["2"].one("title"), Some("Senior Developer"));
    assert_eq!(
        after["2"].one("manager"),
        Some(format!("uid=clane,{}", t.people).as_str())
    );
    let (_, plan) = t.plan_json();
    assert!(changes(&plan).is_empty(), "converged: {plan:#}");
}

/// Each person's HR key and uid, in key order.
fn uids(t: &TestEnv) -> Vec<(String, String)> {
    t.people()
        .into_iter()
        .map(|(k, e)| (k, e.one("uid").unwrap().to_string()))
        .collect()
}

#[test]
fn homonyms_keep_their_uids_across_runs() {
    let t = TestEnv::new("homonyms");
    t.write_export(&[
        "20,John,,Smith,A,,",
        "30,Jane,,Smith,B,,",
        "40,Jim,,Smith,C,,",
    ]);
    t.sync_ok();
    assert_eq!(
        uids(&t),
        vec![
            ("20".into(), "jsmith".into()),
            ("30".into(), "jsmith2".into()),
            ("40".into(), "jsmith3".into())
        ]
    );
    // A new homonym with a lower key, and the first one leaves: nobody is renumbered.
    t.write_export(&[
        "10,Joe,,Smith,D,,",
        "30,Jane,,Smith,B,,",
        "40,Jim,,Smith,C,,",
        "50,Jo,,Smith,E,,",
    ]);
    let cfg = std::fs::read_to_string(&t.config).unwrap()
        + "\n[safety]\nmax-delete-percent = 50\nmin-source-percent = 10\n";
    t.write_config(&cfg);
    t.sync_ok();
    let u = uids(&t);
    assert_eq!(
        u,
        vec![
            ("10".into(), "jsmith4".into()),
            ("30".into(), "jsmith2".into()),
            ("40".into(), "jsmith3".into()),
            ("50".into(), "jsmith5".into())
        ],
        "jsmith is still held by the leaver's entry until it is deleted in this run"
    );
    let (_, plan) = t.plan_json();
    assert!(changes(&plan).is_empty(), "{plan:#}");
}

#[test]
fn hard_names_round_trip_through_dns() {
    let t = TestEnv::new("hardnames");
    // cn is the RDN here, so every special character reaches a DN.
    let cfg = t
        .default_config(&slapd().ldaps_uri)
        .replace("rdn = \"uid\"", "rdn = \"cn\"")
        .replace(
            "cn = \"{{ preferred_name or given_name }} {{ surname }}\"",
            "cn = \"{{ given_name }}{{ surname }}\"",
        );
    t.write_config(&cfg);
    let names = [
        ("1", "Doe, ", "John"),
        ("2", "a+b", "=c"),
        ("3", "\"\"Quoted\"\"", "\\Back"),
        ("4", "<angle>", ";semi"),
        ("5", "#hash", "Tag"),
        ("6", " lead", "ing"),
        ("7", "trail", "ing "),
        ("8", "Zoë", " Ørsted"),
        ("9", "Łukasz", " Żółć"),
        ("10", "Σωκράτης", " 北京"),
    ];
    let rows: Vec<String> = names
        .iter()
        .map(|(k, g, s)| format!("{k},\"{g}\",,\"{s}\",,,"))
        .collect();
    let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
    t.write_export(&rows);
    t.sync_ok();
    let p = t.people();
    assert_eq!(p.len(), names.len(), "{p:#?}");
    for (k, g, s) in names {
        let want = format!("{}{}", g.replace("\"\"", "\""), s);
        assert_eq!(p[k].one("cn"), Some(want.as_str()), "record {k}");
        let parsed = dirbridge::dn::Dn::parse(&p[k].dn).unwrap();
        assert_eq!(
            parsed.first().unwrap().value,
            want,
            "record {k}: DN {}",
            p[k].dn
        );
    }
    let (_, plan) = t.plan_json();
    assert!(
        changes(&plan).is_empty(),
        "hard names must not cause changes on the next run: {plan:#}"
    );
}

#[test]
fn a_large_load_links_every_new_entry() {
    // 600 adds under one parent: their entryUUIDs are read back by one one-level search of the
    // parent (READ_BACK_ONE_LEVEL is 512), not by 600 base searches.
    let t = TestEnv::new("bigload");
    let rows: Vec<String> = (1..=600)
        .map(|i| format!("{i},Given{i},,Sur{i},Staff,p{i}@example.com,"))
        .collect();
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    t.write_export(&refs);
    let r = t.sync_ok();
    assert!(r.stdout.contains("sync: 600 add,"), "{r:?}");
    let (code, plan) = t.plan_json();
    assert_eq!(code, 0);
    assert!(changes(&plan).is_empty(), "{plan:#}");
    assert!(plan["relinked"].as_array().unwrap().is_empty(), "{plan:#}");
    // linked to the entry it made: a new surname renames that entry (same entryUUID)
    let uuid = t.people()["7"].one("entryUUID").unwrap().to_string();
    let mut rows = rows;
    rows[6] = "7,Given7,,Other,Staff,p7@example.com,".to_string();
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    t.write_export(&refs);
    let r = t.sync_ok();
    assert!(
        r.stdout.contains("0 add, 1 modify, 1 rename, 0 delete"),
        "{r:?}"
    );
    let p = t.people();
    assert_eq!(p.len(), 600);
    assert_eq!(p["7"].one("entryUUID"), Some(uuid.as_str()));
    assert_eq!(p["7"].one("sn"), Some("Other"));
}

#[test]
fn lost_mirror_relinks_without_changes() {
    let t = TestEnv::new("relink");
    t.write_export(PEOPLE);
    t.sync_ok();
    std::fs::remove_dir_all(t.dir.join("state")).unwrap();
    let (code, plan) = t.plan_json();
    assert_eq!(code, 0);
    assert!(changes(&plan).is_empty(), "{plan:#}");
    assert_eq!(plan["relinked"].as_array().unwrap().len(), 4);
    let r = t.sync_ok();
    assert!(
        r.stdout.contains("0 add, 0 modify, 0 rename, 0 delete"),
        "{r:?}"
    );
    assert_eq!(t.people().len(), 4);
    // and the links are back: the next plan relinks nobody
    let (_, plan) = t.plan_json();
    assert!(plan["relinked"].as_array().unwrap().is_empty(), "{plan:#}");
}

#[test]
fn entries_without_the_anchor_are_never_touched() {
    let t = TestEnv::new("unanchored");
    ldapmodify(&format!(
        "dn: uid=admin,{}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: admin\ncn: Admin\nsn: Admin\n\n",
        t.people
    ));
    t.write_export(&["1,Ann,,Admin,,,"]);
    t.sync_ok();
    let all = search(&t.people, "(uid=*)");
    assert_eq!(all.len(), 2);
    let ann = all
        .iter()
        .find(|e| e.one("employeeNumber") == Some("1"))
        .unwrap();
    assert_eq!(ann.one("uid"), Some("aadmin"));
    // the hand-made entry survives an export without it
    t.write_export(&["1,Ann,,Admin,,,"]);
    t.sync_ok();
    assert!(search(&t.people, "(uid=admin)").len() == 1);
}

#[test]
fn a_refused_entry_is_quarantined_and_the_rest_goes_on() {
    let t = TestEnv::new("opfail");
    // mail is IA5String: a non-ASCII address is refused by the server (invalidAttributeSyntax).
    t.write_export(&[
        "1,Ann,,Able,,ann@example.com,",
        "2,Bea,,Bad,,bé@exämple.com,",
        "3,Cal,,Cool,,cal@example.com,",
    ]);
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("invalidAttributeSyntax (21)"), "{r:?}");
    assert!(r.stderr.contains("record 2"), "{r:?}");
    let p = t.people();
    assert_eq!(p.keys().collect::<Vec<_>>(), vec!["1", "3"]);
}

#[test]
fn only_key_is_a_canary() {
    let t = TestEnv::new("canary");
    t.write_export(PEOPLE);
    let r = t.run(&["sync", "--only", "3"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(t.people().keys().collect::<Vec<_>>(), vec!["3"]);
    let (_, plan) = t.plan_json();
    assert_eq!(changes(&plan).len(), 3);
}

#[test]
fn ldif_output_replays_with_ldapmodify() {
    let t = TestEnv::new("ldif");
    t.write_export(PEOPLE);
    let r = t.run(&["plan", "--format", "ldif"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.matches("changetype: add").count(), 4);
    ldapmodify(&r.stdout);
    let p = t.people();
    assert_eq!(p.len(), 4);
    assert_eq!(p["2"].one("cn"), Some("Bobby Worker"));
    // what ldapmodify wrote is what dirbridge wants: nothing left to do
    let (_, plan) = t.plan_json();
    assert!(changes(&plan).is_empty(), "{plan:#}");
    assert_eq!(plan["relinked"].as_array().unwrap().len(), 4);
}

#[test]
fn a_sync_asked_for_its_ldif_prints_the_changes_whole() {
    // (a sync that shows only its summary lets the changes' values go once journaled; one that
    // prints them must keep them)
    let t = TestEnv::new("syncldif");
    t.write_export(PEOPLE);
    let r = t.run(&["sync", "--format", "ldif"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout.matches("changetype: add").count(),
        4,
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("cn: Bobby Worker"), "{}", r.stdout);
    assert!(r.stdout.contains("sn: Worker"), "{}", r.stdout);
    assert_eq!(t.people().len(), 4);
}

#[test]
fn json_and_jsonl_sources() {
    let t = TestEnv::new("jsonsrc");
    let json = r#"[
  {"employee_id": "1", "given_name": "Ann", "preferred_name": null, "surname": "Boss", "title": "CEO", "email": "", "manager_id": ""},
  {"employee_id": 2, "given_name": "Bob", "surname": "Worker", "title": "Dev", "email": "bob@example.com", "manager_id": "1"}
]"#;
    std::fs::write(t.dir.join("export.json"), json).unwrap();
    let cfg = std::fs::read_to_string(&t.config)
        .unwrap()
        .replace("kind = \"csv\"", "kind = \"json\"")
        .replace("path = \"export.csv\"", "path = \"export.json\"");
    t.write_config(&cfg);
    t.sync_ok();
    let p = t.people();
    assert_eq!(
        p["2"].one("manager"),
        Some(format!("uid=aboss,{}", t.people).as_str())
    );
    assert_eq!(p["2"].one("cn"), Some("Bob Worker"));
    let jsonl = "{\"employee_id\":\"1\",\"given_name\":\"Ann\",\"surname\":\"Boss\",\"title\":\"CEO\",\"email\":\"\",\"manager_id\":\"\",\"preferred_name\":\"\"}\n\
                 {\"employee_id\":\"2\",\"given_name\":\"Bob\",\"surname\":\"Worker\",\"title\":\"Lead\",\"email\":\"bob@example.com\",\"manager_id\":\"1\",\"preferred_name\":\"\"}\n";
    std::fs::write(t.dir.join("export.jsonl"), jsonl).unwrap();
    let cfg = cfg
        .replace("kind = \"json\"", "kind = \"jsonl\"")
        .replace("export.json\"", "export.jsonl\"");
    t.write_config(&cfg);
    t.sync_ok();
    assert_eq!(t.people()["2"].one("title"), Some("Lead"));
}

#[test]
fn failover_and_ldapi_sasl_external() {
    let t = TestEnv::new("failover");
    t.write_export(PEOPLE);
    let s = slapd();
    // a dead server first, then the real one
    let cfg = t.default_config(&s.ldaps_uri).replace(
        &format!("url = \"{}\"", s.ldaps_uri),
        &format!(
            "url = [\"ldaps://127.0.0.1:1\", \"{}\"]\nconnect-timeout = \"2s\"",
            s.ldaps_uri
        ),
    );
    t.write_config(&cfg);
    t.sync_ok();
    assert_eq!(t.people().len(), 4);
    // ldapi:// with SASL EXTERNAL, no bind-dn and no password
    let cfg = t
        .default_config(&s.ldapi_uri)
        .lines()
        .filter(|l| {
            !l.starts_with("bind-dn")
                && !l.starts_with("password-file")
                && !l.starts_with("ca-file")
        })
        .collect::<Vec<_>>()
        .join("\n");
    t.write_config(&cfg);
    let (code, plan) = t.plan_json();
    assert_eq!(code, 0, "{plan:#}");
    assert!(changes(&plan).is_empty(), "{plan:#}");
}

#[test]
fn starttls_is_verified() {
    let t = TestEnv::new("starttls");
    t.write_export(PEOPLE);
    let s = slapd();
    let cfg = t
        .default_config(&s.ldap_uri)
        .replace("base-dn =", "starttls = true\nbase-dn =");
    t.write_config(&cfg);
    t.sync_ok();
    assert_eq!(t.people().len(), 4);
}

#[test]
fn attribute_aliases_do_not_cause_changes() {
    let t = TestEnv::new("aliases");
    t.write_export(PEOPLE);
    let cfg = t
        .default_config(&slapd().ldaps_uri)
        .replace("\nsn = ", "\nsurname = ")
        .replace("\ncn = ", "\ncommonName = ")
        .replace("\nmail = ", "\nrfc822Mailbox = ");
    t.write_config(&cfg);
    t.sync_ok();
    assert_eq!(t.people()["2"].one("sn"), Some("Worker"));
    let (_, plan) = t.plan_json();
    assert!(changes(&plan).is_empty(), "{plan:#}");
}

#[test]
fn correlation_links_pre_existing_entries_and_never_guesses() {
    let t = TestEnv::new("correlate");
    let p = &t.people;
    ldapmodify(&format!(
        "dn: uid=jdoe,{p}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: jdoe\ncn: J Doe\nsn: Doe\nmail: john.doe@example.com\n\n\
         dn: cn=Ann Smith 1,{p}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: asmith\ncn: Ann Smith 1\nsn: Smith\n\n\
         dn: cn=Ann Smith 2,{p}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: asmith\ncn: Ann Smith 2\nsn: Smith\n\n"
    ));
    let before = search(&format!("uid=jdoe,{p}"), "(objectClass=*)");
    let cfg = t.default_config(&slapd().ldaps_uri).replace(
        "anchor = \"employeeNumber\"",
        "anchor = \"employeeNumber\"\ncorrelate = [\"mail\", \"uid\"]",
    );
    t.write_config(&cfg);
    t.write_export(&[
        "1,John,,Doe,Dev,john.doe@example.com,",
        "2,Ann,,Smith,Ops,,",
    ]);
    let (code, plan) = t.plan_json();
    assert_eq!(code, 3, "Ann matches two entries: quarantined: {plan:#}");
    let ch = changes(&plan);
    assert_eq!(ch.len(), 1, "{plan:#}");
    assert_eq!(ch[0]["op"], "link");
    assert_eq!(ch[0]["attributes"]["employeeNumber"]["new"][0], "1");
    let q = plan["quarantined"].to_string();
    assert!(q.contains("matches 2 entries"), "{q}");
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 3, "{r:?}");
    let john = search(&format!("uid=jdoe,{p}"), "(objectClass=*)");
    assert_eq!(john[0].one("employeeNumber"), Some("1"));
    assert_eq!(john[0].one("entryUUID"), before[0].one("entryUUID"));
    assert_eq!(john[0].one("cn"), Some("John Doe"));
    assert_eq!(
        search(p, "(uid=asmith)").len(),
        2,
        "nothing guessed, nothing created"
    );
    assert_eq!(search(p, "(employeeNumber=*)").len(), 1);
}

#[test]
fn posix_accounts_get_stable_numbers_never_reused() {
    let t = TestEnv::new("posix");
    // a hand-made account elsewhere in the directory holds 20000
    ldapmodify(&format!(
        "dn: uid=svc,{b}\nchangetype: add\nobjectClass: account\nobjectClass: posixAccount\nuid: svc\ncn: svc\nuidNumber: 20000\ngidNumber: 20000\nhomeDirectory: /srv/svc\n\n",
        b = t.base_dn
    ));
    let cfg = t.default_config(&slapd().ldaps_uri).replace(
        "[users.unique]",
        "[users.posix]\nuid-number = [20000, 20100]\ngid-number = 100\nhome-directory = \"/home/{{ uid }}\"\nlogin-shell = \"/bin/bash\"\n\n[users.unique]",
    ) + "\n[safety]\nmax-delete-percent = 50\nmin-source-percent = 50\n";
    t.write_config(&cfg);
    t.write_export(&["1,Ann,,Boss,,,", "2,Bob,,Worker,,,1", "3,Cy,,Lone,,,1"]);
    t.sync_ok();
    let p = t.people();
    let num = |k: &str, p: &std::collections::BTreeMap<String, LdapEntry>| {
        p[k].one("uidNumber").unwrap().to_string()
    };
    assert_eq!(
        (num("1", &p), num("2", &p), num("3", &p)),
        ("20001".into(), "20002".into(), "20003".into())
    );
    assert_eq!(p["2"].one("gidNumber"), Some("100"));
    assert_eq!(p["2"].one("homeDirectory"), Some("/home/bworker"));
    assert_eq!(p["2"].one("loginShell"), Some("/bin/bash"));
    assert!(p["2"].attrs["objectclass"]
        .iter()
        .any(|c| c == "posixAccount"));
    // Bob leaves, Dee joins: Dee never gets Bob's 20002; the others keep theirs.
    t.write_export(&["1,Ann,,Boss,,,", "3,Cy,,Lone,,,1", "4,Dee,,New,,,1"]);
    t.sync_ok();
    let p = t.people();
    assert_eq!(
        (num("1", &p), num("3", &p), num("4", &p)),
        ("20001".into(), "20003".into(), "20004".into())
    );
    let (_, plan) = t.plan_json();
    assert!(changes(&plan).is_empty(), "{plan:#}");
    // a lost mirror adopts the numbers the entries carry
    std::fs::remove_dir_all(t.dir.join("state")).unwrap();
    let (_, plan) = t.plan_json();
    assert!(changes(&plan).is_empty(), "{plan:#}");
}

#[test]
fn a_manager_is_added_before_the_people_who_name_them() {
    // Person i reports to person 2i: every manager has a higher key than their reports (key
    // order would add the reports first), in chains eight deep, among 300 adds written as one
    // batch over several connections. slapd stamps each write with a growing entryCSN.
    let t = TestEnv::new("mgrorder");
    let rows: Vec<String> = (1..=300)
        .map(|i| {
            let mgr = if 2 * i <= 300 {
                (2 * i).to_string()
            } else {
                String::new()
            };
            format!("{i},Given{i},,Sur{i},Staff,m{i}@example.com,{mgr}")
        })
        .collect();
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    t.write_export(&refs);
    let r = t.sync_ok();
    assert!(r.stdout.contains("sync: 300 add,"), "{r:?}");
    let csn: std::collections::BTreeMap<u32, String> = search_with(
        &t.people,
        "(employeeNumber=*)",
        &["employeeNumber", "entryCSN"],
    )
    .into_iter()
    .map(|e| {
        (
            e.one("employeeNumber").unwrap().parse().unwrap(),
            e.one("entryCSN").unwrap().to_string(),
        )
    })
    .collect();
    assert_eq!(csn.len(), 300);
    for i in 1..=150u32 {
        assert!(
            csn[&(2 * i)] < csn[&i],
            "person {} (the manager) was written after person {i}: {} >= {}",
            2 * i,
            csn[&(2 * i)],
            csn[&i]
        );
    }
}

#[test]
fn a_holder_outside_the_people_and_the_people_themselves_keep_uids_taken_across_runs() {
    let t = TestEnv::new("holders");
    // A service account elsewhere under base-dn holds uid jdoe.
    ldapmodify(&format!(
        "dn: ou=system,{b}\nchangetype: add\nobjectClass: organizationalUnit\nou: system\n\n\
         dn: uid=jdoe,ou=system,{b}\nchangetype: add\nobjectClass: account\nuid: jdoe\n\n",
        b = t.base_dn
    ));
    t.write_export(&["10,Ann,,Lee,A,,"]);
    t.sync_ok();
    // The next runs read the directory incrementally, onto the snapshot the mirror keeps.
    t.write_export(&["10,Ann,,Lee,A,,", "20,John,,Doe,B,,"]);
    let r = t.sync_ok();
    assert!(r.stdout.contains("incremental read"), "{r:?}");
    t.write_export(&["10,Ann,,Lee,A,,", "20,John,,Doe,B,,", "30,Al,,Lee,C,,"]);
    let r = t.sync_ok();
    assert!(r.stdout.contains("incremental read"), "{r:?}");
    assert_eq!(
        uids(&t),
        vec![
            ("10".into(), "alee".into()),
            ("20".into(), "jdoe2".into()),
            ("30".into(), "alee2".into())
        ]
    );
    // The mirror keeps a row of unique values for the service account only: the people's are
    // made again from their entries when the snapshot is read.
    let db = rusqlite::Connection::open(t.dir.join("state/mirror.db")).unwrap();
    let rows: Vec<String> = db
        .prepare("SELECT dn FROM dir_uniques ORDER BY dn")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, [format!("uid=jdoe,ou=system,{}", t.base_dn)]);
    let (_, plan) = t.plan_json();
    assert!(changes(&plan).is_empty(), "converged: {plan:#}");
}

//! Active Directory against a real Samba AD DC (started by the harness in its own network
//! namespace; dirbridge and the LDAP tools run inside it). One OU per test under one domain, so
//! sAMAccountNames, which are unique domain-wide, use surnames of each test's own.

use crate::common::*;

fn deliver_script(t: &AdEnv) -> (std::path::PathBuf, std::path::PathBuf) {
    let script = t.dir.join("deliver.sh");
    let out = t.dir.join("delivered.jsonl");
    std::fs::write(&script, "#!/bin/sh\ncat >> \"$1\"\necho >> \"$1\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, out)
}

fn delivered(out: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn ad_joiners_get_enabled_accounts_with_a_working_password_and_unique_names() {
    let _policy = AD_PASSWORD_POLICY.lock().unwrap_or_else(|e| e.into_inner());
    let t = AdEnv::new("adjoin");
    let (script, out) = deliver_script(&t);
    t.write_config(&t.default_config(&format!(
        "\n[lifecycle]\npassword = \"random\"\npassword-command = [\"{}\", \"{}\"]\n",
        script.display(),
        out.display()
    )));
    // Someone made "bjoiner" by hand elsewhere in the domain, in another case: Bob gets bjoiner2.
    ad_modify(&format!(
        "dn: CN=Hand Made,CN=Users,{}\nchangetype: add\nobjectClass: user\nsAMAccountName: BJOINER\nuserPrincipalName: handmade@ad.example.test\n\n",
        ad().base
    ));
    t.write_export(&[
        "1,Ann,Joiner,CEO,Board,1,",
        "2,Bob,Joiner,Engineer,Engineering,1,",
        "3,Maximilian-Alexander,Kowalczykowski-Joiner,Engineer,Engineering,2,",
        "4,Ann,Joiner,Intern,Engineering,2,",
    ]);
    let r = t.sync_ok();
    assert!(r.stdout.contains("4 add"), "{r:?}");
    let p = t.people();
    assert_eq!(p.len(), 4, "{p:#?}");
    // A homonym: the next candidate for the CN, the sAMAccountName and the UPN.
    assert!(p["4"].dn.starts_with("CN=Ann Joiner2,"), "{}", p["4"].dn);
    assert_eq!(p["4"].one("sAMAccountName"), Some("ajoiner2"));
    assert_eq!(
        p["4"].one("userPrincipalName"),
        Some("ajoiner2@ad.example.test")
    );
    let ann = &p["1"];
    let bob = &p["2"];
    let max = &p["3"];
    assert_eq!(ann.one("sAMAccountName"), Some("ajoiner"));
    assert_eq!(
        bob.one("sAMAccountName"),
        Some("bjoiner2"),
        "BJOINER is taken, case-insensitively"
    );
    assert_eq!(
        bob.one("userPrincipalName"),
        Some("bjoiner2@ad.example.test")
    );
    let sam = max.one("sAMAccountName").unwrap();
    assert!(sam.chars().count() <= 20, "{sam}");
    assert_eq!(sam, "mkowalczykowski-join");
    assert_eq!(
        ann.one("userAccountControl"),
        Some("512"),
        "enabled, normal account"
    );
    assert_eq!(
        ann.one("pwdLastSet"),
        Some("0"),
        "must change at first logon"
    );
    assert!(ann.attrs["objectclass"].iter().any(|c| c == "user"));
    assert_eq!(
        bob.one("manager").map(str::to_lowercase),
        Some(ann.dn.to_lowercase()),
        "manager set after the add"
    );
    assert!(ann.one("manager").is_none(), "a self-manager is left out");
    // The password works: a bind says "must change" (data 773) until the forced change is
    // cleared; the test clears it as an administrator (pwdLastSet = -1) because the user's own
    // change needs Kerberos kpasswd or SAMR, which the test DC does not run.
    let d = delivered(&out);
    assert_eq!(d.len(), 4, "{d:#?}");
    let dann = d.iter().find(|x| x["key"] == "1").unwrap();
    assert_eq!(dann["sAMAccountName"], "ajoiner");
    let pw = dann["password"].as_str().unwrap().to_string();
    let err = ad_bind("ajoiner@ad.example.test", &pw).unwrap_err();
    assert!(err.contains("data 773"), "{err}");
    ad_modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: pwdLastSet\npwdLastSet: -1\n\n",
        ann.dn
    ));
    ad_bind("ajoiner@ad.example.test", &pw).expect("the delivered password binds");
    assert!(ad_bind("ajoiner@ad.example.test", "Wrong-Pw-123!").is_err());
    // The password is nowhere else.
    assert!(!r.stdout.contains(&pw) && !r.stderr.contains(&pw));
    let db = std::fs::read(t.dir.join("state/mirror.db")).unwrap();
    assert!(!db.windows(pw.len()).any(|w| w == pw.as_bytes()));
    // The link is the objectGUID: a second run plans nothing and reads incrementally.
    let r = t.sync_ok();
    assert!(
        r.stdout.contains("0 add, 0 modify, 0 rename, 0 delete"),
        "{r:?}"
    );
    assert!(r.stdout.contains("incremental read"), "{r:?}");
    let r = t.run(&["explain", "2", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let guid = v["entry"]["uuid"].as_str().unwrap();
    assert_eq!(guid.len(), 36, "objectGUID as text: {guid}");
    let by_guid = ad_search(
        &format!("<GUID={guid}>"),
        "(objectClass=*)",
        &["sAMAccountName"],
    );
    assert_eq!(by_guid.len(), 1);
    assert_eq!(by_guid[0].one("sAMAccountName"), Some("bjoiner2"));
}

#[test]
fn ad_hand_edits_are_seen_incrementally_and_renames_keep_the_object_guid() {
    let t = AdEnv::new("addrift");
    t.write_export(&[
        "1,Ann,Drifter,CEO,Board,,",
        "2,Bob,Drifter,Engineer,Engineering,1,",
    ]);
    t.sync_ok();
    let before = t.people();
    let guid = before["2"].one("objectGUID").unwrap().to_string();
    // A change by hand: the next run is incremental, fetches only that, and corrects it.
    ad_modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: title\ntitle: Changed by hand\n\n",
        before["2"].dn
    ));
    let r = t.run(&["sync", "--format", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["summary"]["modify"], 1, "{v:#}");
    let fetched = v["summary"]["entries-fetched"].as_u64().unwrap();
    assert_eq!(v["read-mode"], "incremental", "{v:#}");
    // The domain is shared with the other tests (base-dn is its root): the changes they make
    // meanwhile are read too; a full read takes every user of the domain.
    let r = t.run(&["plan", "--full-read", "--format", "json"]);
    let full: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let all = full["summary"]["entries-fetched"].as_u64().unwrap();
    assert!(
        fetched < all,
        "incremental fetched {fetched}, a full read {all}"
    );
    assert_eq!(t.people()["2"].one("title"), Some("Engineer"));
    // A rename (new surname): modrdn, objectGUID kept.
    t.write_export(&[
        "1,Ann,Drifter,CEO,Board,,",
        "2,Bob,Wanderer,Engineer,Engineering,1,",
    ]);
    let r = t.sync_ok();
    assert!(r.stdout.contains("1 rename"), "{r:?}");
    let after = t.people();
    assert!(
        after["2"].dn.starts_with("CN=Bob Wanderer,"),
        "{}",
        after["2"].dn
    );
    assert_eq!(after["2"].one("objectGUID"), Some(guid.as_str()));
    assert_eq!(after["2"].one("sn"), Some("Wanderer"));
    // A person deleted by hand is recreated (the deleted object is recognised).
    let ann_dn = after["1"].dn.clone();
    let a = ad();
    let out = ad_tool("ldapdelete", &a.bind_dn, &a.password, &[&ann_dn], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = t.sync_ok();
    assert!(r.stdout.contains("1 add"), "{r:?}");
    assert!(r.stdout.contains("incremental read"), "{r:?}");
    assert_eq!(t.people().len(), 2);
    let r = t.sync_ok();
    assert!(
        r.stdout.contains("0 add, 0 modify, 0 rename, 0 delete"),
        "{r:?}"
    );
    // A state the DC does not recognise (another or a restored DC: its invocationId differs) is
    // not trusted: one full read, said so.
    let db = t.dir.join("state/mirror.db");
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"UPDATE dir_state SET value = json_set(value, '$.invocation', 'not-this-dc') WHERE name = 'read-cursor'\"); c.commit()")
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = t.run(&["-v", "sync"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("(full read"), "{r:?}");
    assert!(r.stderr.contains("invocationId changed"), "{r:?}");
    let r = t.sync_ok();
    assert!(
        r.stdout.contains("incremental read"),
        "back to incremental: {r:?}"
    );
}

#[test]
fn ad_leaver_is_disabled_then_moved_then_deleted() {
    let _policy = AD_PASSWORD_POLICY.lock().unwrap_or_else(|e| e.into_inner());
    let t = AdEnv::new("adleave");
    // Initial passwords go to files readable only by the service user.
    let pwdir = t.dir.join("passwords");
    std::fs::create_dir(&pwdir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pwdir, std::fs::Permissions::from_mode(0o700)).unwrap();
    ad_modify(&format!(
        "dn: OU=Leavers,{}\nchangetype: add\nobjectClass: organizationalUnit\n\n",
        t.ou
    ));
    t.write_config(&t.default_config(&format!(
        "\n[lifecycle]\nend-date = \"end_date\"\ntimezone = \"UTC\"\ndisabled-base = \"OU=Leavers,{}\"\ndelete-after = \"30d\"\npassword = \"random\"\npassword-directory = \"{}\"\n\n[safety]\nmax-disable-percent = 100\nmax-move-percent = 100\nmax-delete-percent = 100\n",
        t.ou,
        pwdir.display()
    )));
    t.write_export(&[
        "1,Ann,Leaver,CEO,Board,,",
        "2,Bob,Leaver,Engineer,Engineering,1,2026-03-31",
    ]);
    let r = t.run(&["sync", "--as-of", "2026-03-01"]);
    assert_eq!(r.code, 0, "{r:?}");
    let p = t.people();
    assert_eq!(p["2"].one("userAccountControl"), Some("512"));
    // accountExpires: the end of 2026-03-31 (UTC), in 100-ns intervals since 1601
    assert_eq!(p["2"].one("accountExpires"), Some("134194752000000000"));
    assert_eq!(
        p["1"].one("accountExpires"),
        Some("0"),
        "no end date: never"
    );
    let file = pwdir.join("2.json");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the password file is the service user's only");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(v["sAMAccountName"], "bleaver");
    let pw = v["password"].as_str().unwrap().to_string();
    ad_modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: pwdLastSet\npwdLastSet: -1\n-\nreplace: accountExpires\naccountExpires: 0\n\n",
        p["2"].dn
    ));
    ad_bind("bleaver@ad.example.test", &pw).expect("bind before leaving");
    t.write_export(&[
        "1,Ann,Leaver,CEO,Board,,",
        "2,Bob,Leaver,Engineer,Engineering,1,2026-03-31",
    ]);
    let r = t.run(&["sync", "--as-of", "2026-04-01"]);
    assert_eq!(r.code, 0, "{r:?}");
    let p = t.people();
    let bob = &p["2"];
    assert_eq!(
        bob.one("userAccountControl"),
        Some("514"),
        "disabled, other bits kept"
    );
    assert!(
        bob.dn.to_lowercase().contains("ou=leavers"),
        "moved to the leavers OU: {}",
        bob.dn
    );
    let err = ad_bind("bleaver@ad.example.test", &pw).unwrap_err();
    assert!(err.contains("data 533"), "disabled: {err}");
    let r = t.run(&["sync", "--as-of", "2026-05-02"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("1 delete"), "{r:?}");
    let p = t.people();
    assert!(!p.contains_key("2"));
    assert!(p.contains_key("1"));
}

#[test]
fn ad_group_above_1500_members_is_read_in_ranges() {
    let t = AdEnv::new("adgroup");
    ad_modify(&format!(
        "dn: OU=Groups,{}\nchangetype: add\nobjectClass: organizationalUnit\n\n",
        t.ou
    ));
    let n = 1_520;
    t.write_config(&t.default_config(&format!(
        "\n[[groups]]\ndn = \"CN=staff-adgroup,OU=Groups,{ou}\"\n\n[[groups]]\ndn = \"CN={{{{ department | slug }}}}-adgroup,OU=Groups,{ou}\"\nfor-each = \"department\"\n",
        ou = t.ou
    )).replace("ca-file", "range-size = 400\nmax-in-flight = 16\nca-file"));
    let rows: Vec<String> = (1..=n)
        .map(|i| {
            format!(
                "{i},P{i},Grouped,Staff,{},,",
                if i % 2 == 0 { "Even" } else { "Odd" }
            )
        })
        .collect();
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    t.write_export(&refs);
    let r = t.run(&["sync", "--accept-gate", "max-attribute-removal-percent"]);
    assert_eq!(r.code, 0, "{r:?}");
    let g = ad_search(
        &format!("OU=Groups,{}", t.ou),
        "(cn=staff-adgroup)",
        &["member", "groupType", "sAMAccountName"],
    );
    assert_eq!(g.len(), 1);
    assert_eq!(
        g[0].one("groupType"),
        Some("-2147483646"),
        "global security"
    );
    assert_eq!(g[0].one("sAMAccountName"), Some("staff-adgroup"));
    // A full read of the group takes several ranged requests of 400 values.
    let r = t.run(&["plan", "--format", "json", "--full-read"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let plan_changes = changes(&v);
    assert!(
        plan_changes.is_empty(),
        "converged: {:#?}",
        &plan_changes[..plan_changes.len().min(3)]
    );
    let ranged = v["summary"]["ranged-reads"].as_u64().unwrap();
    assert!(
        ranged >= 3,
        "{n} members in ranges of 400: {ranged} ranged requests\n{:#}",
        v["summary"]
    );
    // A nested group added by hand is left alone.
    let staff = g[0].dn.clone();
    ad_modify(&format!(
        "dn: CN=nested-adgroup,OU=Groups,{ou}\nchangetype: add\nobjectClass: group\nsAMAccountName: nested-adgroup\n\ndn: {staff}\nchangetype: modify\nadd: member\nmember: CN=nested-adgroup,OU=Groups,{ou}\n\n",
        ou = t.ou
    ));
    // One person leaves the export: removed from the big group by a member delta.
    let rows: Vec<&str> = refs[1..].to_vec();
    t.write_export(&rows);
    let r = t.run(&[
        "sync",
        "--accept-gate",
        "max-delete-percent",
        "--accept-gate",
        "max-attribute-removal-percent",
        "--format",
        "json",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["summary"]["delete"], 1, "{:#}", v["summary"]);
    let r = t.run(&["plan", "--full-read"]);
    assert!(
        r.stdout.contains("0 add, 0 modify, 0 rename, 0 delete"),
        "{r:?}"
    );
    let nested = ad_search(&format!("OU=Groups,{}", t.ou), "(memberOf=*)", &["cn"]);
    assert!(
        nested.iter().any(|e| e.one("cn") == Some("nested-adgroup")),
        "the nested group is still a member: {nested:?}"
    );
}

#[test]
fn ad_errors_are_explained() {
    let policy = AD_PASSWORD_POLICY.lock().unwrap_or_else(|e| e.into_inner());
    let t = AdEnv::new("aderr");
    // The domain wants passwords of 30 characters; dirbridge makes 20: AD answers 0000052D,
    // dirbridge tries new ones, then quarantines the entry with what to do; the rest goes on.
    let (script, out) = deliver_script(&t);
    t.write_config(&t.default_config(&format!(
        "\n[lifecycle]\npassword = \"random\"\npassword-length = 20\npassword-command = [\"{}\", \"{}\"]\n",
        script.display(),
        out.display()
    )));
    let set_min = |n: u32| {
        ad_modify(&format!(
            "dn: {}\nchangetype: modify\nreplace: minPwdLength\nminPwdLength: {n}\n\n",
            ad().base
        ))
    };
    set_min(30);
    t.write_export(&["1,Ann,Erring,CEO,Board,,"]);
    let r = t.run(&["-v", "sync"]);
    set_min(7);
    drop(policy);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("0000052D"), "{r:?}");
    assert!(
        r.stderr.contains("raise lifecycle.password-length"),
        "{r:?}"
    );
    assert!(
        r.stderr.matches("trying a new one").count() >= 2,
        "new passwords were tried: {r:?}"
    );
    assert!(
        delivered(&out).is_empty(),
        "no password handed out for a failed add"
    );
    // Plain ldap:// with a simple bind: AD wants an encrypted connection.
    let cfg = t
        .default_config("")
        .replace(&ad().uri, &ad().uri_ldap)
        .replace("ca-file", "allow-insecure = true\nca-file");
    t.write_config(&cfg);
    let r = t.run(&["plan"]);
    assert_eq!(r.code, 69, "{r:?}");
    assert!(r.stderr.contains("use ldaps:// or starttls"), "{r:?}");
    // A wrong password: data 52e, said in words.
    std::fs::write(t.dir.join("bind.password"), "Not-The-Password-1\n").unwrap();
    t.write_config(&t.default_config(""));
    let r = t.run(&["plan"]);
    assert_eq!(r.code, 69, "{r:?}");
    assert!(
        r.stderr
            .contains("wrong password or unknown user (data 52e)"),
        "{r:?}"
    );
}

#[test]
fn ad_moves_into_new_ous_keep_groups_converged() {
    let t = AdEnv::new("admove");
    ad_modify(&format!(
        "dn: OU=Groups,{}\nchangetype: add\nobjectClass: organizationalUnit\n\n",
        t.ou
    ));
    let groups = format!(
        "\n[[groups]]\ndn = \"CN=staff-admove,OU=Groups,{ou}\"\n\n[safety]\nmax-move-percent = 100\nmax-attribute-removal-percent = 100\n",
        ou = t.ou
    );
    t.write_config(&t.default_config(&groups));
    t.write_export(&[
        "1,Ann,Mover,CEO,Board,,",
        "2,Bob,Mover,Engineer,Engineering,1,",
        "3,Cyd,Mover,Engineer,Engineering,1,",
    ]);
    t.sync_ok();
    // Engineering gets an OU of its own (created): two moves; AD rewrites the group's member
    // values and Bob's manager links itself, and the next runs must agree with it.
    let placement = format!(
        "\n[[users.placement]]\nwhen = \"department == 'Engineering'\"\nbase = \"OU=Eng,{}\"\ncreate = true\n",
        t.people
    );
    let cfg = t.default_config(&groups).replace(
        "[users.attributes]",
        &format!("{placement}\n[users.attributes]"),
    );
    t.write_config(&cfg);
    let r = t.sync_ok();
    assert!(r.stdout.contains("2 move"), "{r:?}");
    let p = t.people();
    assert!(p["2"].dn.contains("OU=Eng,"), "{}", p["2"].dn);
    for _ in 0..3 {
        let r = t.sync_ok();
        assert!(
            !r.stdout.contains("failed; 1") && r.stdout.contains("0 failed"),
            "{r:?}"
        );
    }
    let r = t.run(&["plan", "--full-read"]);
    assert!(
        r.stdout.starts_with("0 add, 0 modify, 0 rename, 0 delete")
            || r.stdout.contains("\n0 add, 0 modify, 0 rename, 0 delete"),
        "converged: {r:?}"
    );
    let g = ad_search(
        &format!("OU=Groups,{}", t.ou),
        "(cn=staff-admove)",
        &["member"],
    );
    let members: Vec<String> = g[0].attrs["member"]
        .iter()
        .map(|m| m.to_lowercase())
        .collect();
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(
        members
            .iter()
            .any(|m| m.starts_with("cn=bob mover,ou=eng,")),
        "{members:?}"
    );
}

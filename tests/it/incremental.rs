//! Incremental reads of OpenLDAP (RFC 4533 content sync, refreshOnly, cookies in the mirror):
//! a run after one change fetches only that change; changes made by hand are corrected; a cookie
//! the server no longer knows (a fresh database under the same suffix) leads to one full read.

use crate::common::*;

fn fetched(r: &Run) -> (String, u64) {
    let v: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("sync JSON did not parse ({e}): {r:?}"));
    (
        v["read-mode"].as_str().unwrap_or("").to_string(),
        v["summary"]["entries-fetched"].as_u64().unwrap(),
    )
}

/// Runs until one is quiet (maps nothing, fetches nothing), at most four: an entry whose write
/// slapd's contextCSN had not yet covered may surface once first. Every run reads incrementally.
fn reaches_a_quiet_run(t: &TestEnv) -> bool {
    (0..4).any(|_| {
        let r = t.run(&["-v", "sync", "--format", "json"]);
        assert_eq!(r.code, 0, "{r:?}");
        let (mode, n) = fetched(&r);
        assert_eq!(mode, "incremental", "{r:?}");
        n == 0 && r.stderr.contains("quiet run")
    })
}

/// A test environment on the shared slapd that writes one change at a time: with several in
/// flight slapd's contextCSN can lag behind the last of them, and such an entry surfaces in a
/// later delta than its own (counted there).
fn one_write_at_a_time(name: &str) -> TestEnv {
    let t = TestEnv::new(name);
    let cfg = t
        .default_config(&slapd().ldaps_uri)
        .replace("base-dn =", "max-in-flight = 1\nbase-dn =");
    t.write_config(&cfg);
    t
}

/// The title of `dn` changed by hand, then a run: it must correct exactly that entry.
fn title_changed_by_hand_is_corrected(t: &TestEnv, dn: &str) -> serde_json::Value {
    ldapmodify(&format!(
        "dn: {dn}\nchangetype: modify\nreplace: title\ntitle: Changed by hand\n\n"
    ));
    let r = t.run(&["sync", "--format", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["read-mode"], "incremental", "{v:#}");
    assert_eq!(v["summary"]["modify"], 1, "{v:#}");
    v
}

#[test]
fn a_run_after_one_change_reads_only_that_change_and_hand_edits_are_corrected() {
    let t = one_write_at_a_time("incr");
    let rows: Vec<String> = (1..=60)
        .map(|i| format!("{i},Given{i},,Family{i},Title {i},p{i}@example.com,"))
        .collect();
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    t.write_export(&refs);
    let r = t.run(&["sync", "--format", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let (mode, _) = fetched(&r);
    assert_eq!(mode, "full", "the first read is full");
    // Nothing changed anywhere and the last run planned nothing: a quiet run maps nothing and
    // fetches nothing.
    assert!(reaches_a_quiet_run(&t), "no quiet run");
    let r = t.run(&["-v", "plan"]);
    assert!(r.stderr.contains("quiet run"), "plan too: {r:?}");
    // One record changes: the next run applies it; the one after fetches just that entry back.
    let mut changed = rows.clone();
    changed[9] = "10,Given10,,Family10,Chief,p10@example.com,".into();
    let refs: Vec<&str> = changed.iter().map(String::as_str).collect();
    t.write_export(&refs);
    let r = t.run(&["sync", "--format", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = t.run(&["sync", "--format", "json"]);
    let (mode, n) = fetched(&r);
    assert_eq!(mode, "incremental", "{r:?}");
    // The changed entry comes in the people's and the uniques' delta and is read back as written
    // in the last run (3). slapd's contextCSN can lag behind concurrent writes — the other tests
    // write to the same server meanwhile — so a few entries written earlier may surface in this
    // delta instead of an earlier one. A full read fetches 120 (60 people, 60 unique values).
    assert!(
        n <= 3 + 7,
        "at most the changed entry plus a small constant: {n}"
    );
    // A change by hand (drift) is seen incrementally and corrected.
    let people = t.people();
    let v = title_changed_by_hand_is_corrected(&t, &people["20"].dn);
    assert!(
        v["summary"]["entries-fetched"].as_u64().unwrap() <= 10,
        "{v:#}"
    );
    assert_eq!(t.people()["20"].one("title"), Some("Title 20"));
    // An entry deleted by hand is seen (refreshDeletes) and recreated.
    let out = ldap(&["ldapdelete", &people["30"].dn], None);
    assert!(out.status.success());
    let r = t.run(&["sync", "--format", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["summary"]["add"], 1, "{v:#}");
    assert_eq!(t.people().len(), 60);
}

#[test]
fn a_fresh_database_under_the_same_suffix_leads_to_one_full_read() {
    // A server of its own: the test replaces its database. (The shared one is up first, so the
    // two never race for the same ports.)
    let t = TestEnv::new("freshdb");
    let dir = std::env::temp_dir().join(format!("dirbridge-it-fresh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_pair();
    let up = || {
        let out = std::process::Command::new("bash")
            .arg(repo().join("tests/support/slapd-up.sh"))
            .arg(&dir)
            .arg(port.to_string())
            .env("SLAPD_DBNOSYNC", "1")
            .env("SLAPD_ROOTPW", ADMIN_PW)
            .env("SLAPD_WATCH_PID", std::process::id().to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let down = || {
        let out = std::process::Command::new("bash")
            .arg(repo().join("tests/support/slapd-down.sh"))
            .arg(&dir)
            .arg("--purge")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    up();
    let url = format!("ldaps://127.0.0.1:{}", port + 1);
    // Writes over two connections (directory.connections) on this server of its own.
    let cfg = t
        .default_config(&url)
        .replace("base-dn =", "connections = 2\nbase-dn =")
        .replace(&t.people, "ou=people,dc=example,dc=com")
        .replace(
            &format!("base-dn = \"{}\"", t.base_dn),
            "base-dn = \"dc=example,dc=com\"",
        )
        .replace(
            &slapd().ca.display().to_string(),
            &dir.join("tls/ca.crt").display().to_string(),
        );
    t.write_config(&cfg);
    t.write_export(&[
        "1,Ann,,Boss,,ann@example.com,",
        "2,Bob,,Worker,,bob@example.com,1",
    ]);
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = t.run(&["sync"]);
    let r2 = t.run(&["sync"]);
    assert!(
        r2.stdout.contains("incremental read, 0 fetched"),
        "{r:?}\n{r2:?}"
    );
    // The server comes back with a fresh database under the same suffix (a rebuild from an LDIF
    // backup: same entries, new entryUUIDs and CSNs, one title changed since the backup).
    let backup = std::process::Command::new("ldapsearch")
        .args([
            "-x",
            "-LLL",
            "-o",
            "ldif-wrap=no",
            "-H",
            &format!("ldap://127.0.0.1:{port}"),
            "-D",
            ADMIN_DN,
            "-w",
            ADMIN_PW,
            "-b",
            "ou=people,dc=example,dc=com",
            "(employeeNumber=*)",
            "objectClass",
            "uid",
            "cn",
            "givenName",
            "sn",
            "mail",
            "manager",
            "employeeNumber",
            "title",
        ])
        .output()
        .unwrap();
    assert!(backup.status.success());
    down();
    up();
    // entries in backup order (the manager first), each with changetype add
    let mut adds = String::new();
    for block in String::from_utf8_lossy(&backup.stdout).split("\n\n") {
        if block.trim().is_empty() {
            continue;
        }
        let mut lines = block.lines();
        let dn = lines.next().unwrap();
        adds.push_str(dn);
        adds.push_str("\nchangetype: add\n");
        for l in lines {
            if l.starts_with("manager:") {
                continue;
            }
            adds.push_str(l);
            adds.push('\n');
        }
        adds.push('\n');
    }
    let out = {
        use std::io::Write;
        let mut child = std::process::Command::new("ldapmodify")
            .args([
                "-x",
                "-H",
                &format!("ldap://127.0.0.1:{port}"),
                "-D",
                ADMIN_DN,
                "-w",
                ADMIN_PW,
            ])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(adds.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    assert!(
        out.status.success(),
        "{}\n{adds}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = t.run(&["-v", "sync"]);
    // Not silence: the stale cookie is not taken as "nothing changed". Everything is read again,
    // the entries are relinked by their anchor (new entryUUIDs), and what differs is corrected.
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("full read"), "{r:?}");
    assert!(
        r.stderr.contains("a new or rebuilt database"),
        "logged: {r:?}"
    );
    assert!(r.stdout.contains("0 add"), "no duplicates: {r:?}");
    assert!(
        r.stdout.contains("1 modify"),
        "the manager the backup lacked: {r:?}"
    );
    let r = t.run(&["sync"]);
    let r2 = t.run(&["sync"]);
    assert!(
        r2.stdout.contains("0 add, 0 modify, 0 rename, 0 delete"),
        "{r:?}\n{r2:?}"
    );
    assert!(r2.stdout.contains("incremental read"), "{r2:?}");
    down();
}

/// A manager deleted by hand: slapd's refint overlay removes `manager` from the reports without
/// a new entryCSN or modifyTimestamp, so neither read method sees the reports change. The read
/// notices the delete and reads the people in full: the manager is recreated and every report
/// points at it again.
fn manager_deleted_by_hand_is_recreated_and_reports_restored(t: &TestEnv) {
    let people = t.people();
    let out = ldap(&["ldapdelete", &people["1"].dn], None);
    assert!(out.status.success());
    // refint rewrites the references in a thread of its own, after the delete has answered: a
    // loaded machine sees them for a moment longer.
    let mut cleared = false;
    for _ in 0..100 {
        if t.people().values().all(|p| p.one("manager").is_none()) {
            cleared = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(cleared, "refint removed the references (waited 5 s)");
    let r = t.run(&["-v", "sync", "--format", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["summary"]["add"], 1, "{v:#}");
    assert_eq!(v["summary"]["modify"], 39, "{v:#}");
    assert!(
        r.stderr.contains("deleted or renamed outside dirbridge"),
        "{r:?}"
    );
    let after = t.people();
    let boss = after["1"].dn.clone();
    for k in 2..=40 {
        assert_eq!(
            after[&k.to_string()].one("manager"),
            Some(boss.as_str()),
            "{k}"
        );
    }
}

fn boss_and_reports() -> Vec<String> {
    let mut rows = vec!["1,Ann,,Boss,Chief,ann@example.com,".to_string()];
    rows.extend((2..=40).map(|i| format!("{i},Given{i},,Family{i},Title {i},p{i}@example.com,1")));
    rows
}

#[test]
fn content_sync_sees_a_manager_deleted_by_hand() {
    let t = one_write_at_a_time("refint");
    let rows = boss_and_reports();
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    t.write_export(&refs);
    for _ in 0..2 {
        let r = t.run(&["sync"]);
        assert_eq!(r.code, 0, "{r:?}");
    }
    manager_deleted_by_hand_is_recreated_and_reports_restored(&t);
}

#[test]
fn without_content_sync_the_directory_is_polled_by_modify_timestamp() {
    let t = TestEnv::new("poll");
    let cfg = t.default_config(&slapd().ldaps_uri).replace(
        "base-dn =",
        "content-sync = false\nfull-read-every = \"1h\"\nmax-in-flight = 1\nbase-dn =",
    );
    t.write_config(&cfg);
    let rows = boss_and_reports();
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    t.write_export(&refs);
    let r = t.run(&["sync", "--format", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(fetched(&r).0, "full");
    // The run after the load reads back what it wrote; then quiet runs that fetch nothing.
    assert!(reaches_a_quiet_run(&t), "no quiet run while polling");
    // A title changed by hand: its modifyTimestamp is newer; fetched (people and uniques) and
    // corrected.
    let people = t.people();
    let v = title_changed_by_hand_is_corrected(&t, &people["20"].dn);
    let n = v["summary"]["entries-fetched"].as_u64().unwrap();
    assert!((1..=3).contains(&n), "the edited entry, not all 80: {v:#}");
    assert_eq!(t.people()["20"].one("title"), Some("Title 20"));
    manager_deleted_by_hand_is_recreated_and_reports_restored(&t);
    // full-read-every: a full read once the last one is older.
    t.write_config(&cfg.replace("full-read-every = \"1h\"", "full-read-every = \"1s\""));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = t.run(&["-v", "sync", "--format", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(fetched(&r).0, "full", "{r:?}");
    assert!(r.stderr.contains("full-read-every"), "{r:?}");
}

/// People whose record and entry are as the last run left them are not mapped again; a change of
/// their own record or entry, or of someone they refer to, maps them again as before.
#[test]
fn settled_people_are_mapped_again_only_when_they_or_the_people_they_name_change() {
    let t = one_write_at_a_time("settled");
    let mut rows = boss_and_reports();
    t.write_export(&rows);
    // the first run adds everyone (settled as the adds wrote them), the second plans nothing
    for _ in 0..2 {
        let r = t.run(&["sync"]);
        assert_eq!(r.code, 0, "{r:?}");
    }
    // One record changes: only it is mapped; the change is applied.
    rows[4] = "5,Given5,,Family5,Chief,p5@example.com,1".into();
    t.write_export(&rows);
    let r = t.run(&["-v", "sync", "--format", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("settled=39 mapped=1"), "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["summary"]["modify"], 1, "{v:#}");
    assert_eq!(t.people()["5"].one("title"), Some("Chief"));
    // A hand edit of a settled person's entry is seen and corrected.
    let dn = t.people()["20"].dn.clone();
    title_changed_by_hand_is_corrected(&t, &dn);
    assert_eq!(t.people()["20"].one("title"), Some("Title 20"));
    // The boss's surname changes, so does the boss's uid and DN: every report names the boss
    // (manager_id 1) and is mapped again, and the plan changes their manager.
    rows[0] = "1,Ann,,Bossa,Chief,ann@example.com,".into();
    t.write_export(&rows);
    let (code, plan) = t.plan_json();
    assert_eq!(code, 0, "{plan:#}");
    let managers = changes(&plan)
        .iter()
        .filter(|c| c["op"] == "modify")
        .filter(|c| c["attributes"].to_string().contains("manager"))
        .count();
    assert_eq!(managers, 39, "{plan:#}");
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 0, "{r:?}");
    let boss = t.people()["1"].dn.clone();
    assert!(boss.starts_with("uid=abossa,"), "{boss}");
    assert!(t
        .people()
        .values()
        .filter(|p| p.one("employeeNumber") != Some("1"))
        .all(|p| p.one("manager") == Some(boss.as_str())));
}

#[test]
fn people_added_are_settled_in_the_next_run_as_their_adds_wrote_them() {
    let t = one_write_at_a_time("added-settled");
    let mut rows = boss_and_reports();
    t.write_export(&rows);
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 0, "{r:?}");
    // The entries read back are those the adds wrote: no one is mapped again, nothing planned.
    let r = t.run(&["-v", "sync", "--format", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("settled=40 mapped=0"), "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["summary"]["add"], 0, "{v:#}");
    assert_eq!(v["summary"]["modify"], 0, "{v:#}");
    // A joiner is settled in the run after the one that added them.
    rows.push("41,Given41,,Family41,Title 41,p41@example.com,1".into());
    t.write_export(&rows);
    let r = t.run(&["-v", "sync", "--format", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("settled=40 mapped=1"), "{r:?}");
    let r = t.run(&["-v", "sync"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("settled=41 mapped=0"), "{r:?}");
    // An entry edited by hand after its add is no longer as written: mapped again, corrected.
    let dn = t.people()["41"].dn.clone();
    title_changed_by_hand_is_corrected(&t, &dn);
    assert_eq!(t.people()["41"].one("title"), Some("Title 41"));
}

//! Nothing is deleted by accident: truncated exports, malformed rows, gates, the run lock.

use crate::common::*;

fn many(n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| format!("{i},Given{i},,Family{i},Title {i},p{i}@example.com,"))
        .collect()
}

#[test]
fn truncated_export_is_refused_and_nothing_is_deleted() {
    let t = TestEnv::new("truncated");
    let rows = many(40);
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    t.write_export(&refs);
    t.sync_ok();
    assert_eq!(t.people().len(), 40);
    // Half the file is gone.
    t.write_export(&refs[..20]);
    let (code, plan) = t.plan_json();
    assert_eq!(code, 4, "plan exits 4 when a gate would refuse: {plan:#}");
    let gates: Vec<&str> = plan["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["gate"].as_str().unwrap())
        .collect();
    assert!(gates.contains(&"max-delete-percent"), "{gates:?}");
    assert!(gates.contains(&"min-source-percent"), "{gates:?}");
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr
            .contains("REFUSED by safety.max-delete-percent: 20 of 40 managed entries (50.0%)"),
        "{r:?}"
    );
    assert!(r.stdout.contains("nothing written"), "{r:?}");
    assert_eq!(t.people().len(), 40, "nothing was deleted");
    // the refusal is remembered: plan says so
    let r = t.run(&["plan"]);
    assert!(
        r.stdout.contains("the last sync") && r.stdout.contains("was refused by safety gate(s)"),
        "{r:?}"
    );
}

#[test]
fn an_operator_can_accept_a_gate_and_it_is_audited() {
    let t = TestEnv::new("acceptgate");
    let rows = many(20);
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    t.write_export(&refs);
    t.sync_ok();
    t.write_export(&refs[..10]);
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr.contains("--accept-gate max-delete-percent") || r.stdout.contains("--accept-gate"),
        "{r:?}"
    );
    let r = t.run(&["sync", "--accept-gate", "max-delete-percent"]);
    assert_eq!(r.code, 4, "min-source-percent still refuses: {r:?}");
    assert_eq!(t.people().len(), 20);
    let r = t.run(&[
        "sync",
        "--accept-gate",
        "max-delete-percent",
        "--accept-gate",
        "min-source-percent",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(t.people().len(), 10);
    let r = t.run(&["history", "--format", "json"]);
    let h: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let notes: Vec<&serde_json::Value> = h
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["op"] == "accept-gate")
        .collect();
    assert_eq!(notes.len(), 2, "{h:#}");
    assert!(notes.iter().any(|n| n["reason"]
        .as_str()
        .unwrap()
        .contains("accepted safety.min-source-percent")));
    // an unknown gate name is a usage error
    assert_eq!(t.run(&["sync", "--accept-gate", "max-everything"]).code, 2);
}

#[test]
fn malformed_row_is_quarantined_and_its_person_is_kept() {
    let t = TestEnv::new("malformed");
    let rows = many(10);
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    t.write_export(&refs);
    t.sync_ok();
    // Row 3 gets an extra field (an unquoted comma); row 5 a byte that is not UTF-8; row 7 is
    // duplicated with another title; row 9's title changes (the rest of the run goes on).
    let mut text = String::from(HEADER);
    text.push('\n');
    let mut bytes = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let n = i + 1;
        match n {
            3 => text.push_str("3,Given3,,Family3,Title, with comma,p3@example.com,\n"),
            5 => {
                bytes = text.clone().into_bytes();
                bytes.extend_from_slice(b"5,Given5,,Fam\xffily5,Title 5,p5@example.com,\n");
                text.clear();
            }
            7 => {
                text.push_str(r);
                text.push('\n');
                text.push_str("7,Given7,,Family7,Other,p7@example.com,\n");
            }
            9 => text.push_str("9,Given9,,Family9,Changed,p9@example.com,\n"),
            _ => {
                text.push_str(r);
                text.push('\n');
            }
        }
    }
    bytes.extend_from_slice(text.as_bytes());
    t.write_export_raw(&bytes);
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 3, "{r:?}");
    // each problem names the file and line
    let csv = t.dir.join("export.csv");
    let file = csv.display();
    assert!(
        r.stderr
            .contains(&format!("{file}:4: has 8 fields, the header has 7")),
        "{r:?}"
    );
    assert!(
        r.stderr.contains(&format!(
            "{file}:6: undecodable bytes in column \"surname\""
        )),
        "{r:?}"
    );
    assert!(
        r.stderr.contains(&format!("{file}:8: duplicate key \"7\"")),
        "{r:?}"
    );
    assert!(r.stderr.contains("this run deleted nothing"), "{r:?}");
    let p = t.people();
    assert_eq!(p.len(), 10, "nobody was deleted");
    assert_eq!(
        p["9"].one("title"),
        Some("Changed"),
        "the rest of the run went on"
    );
    assert_eq!(
        p["7"].one("title"),
        Some("Title 7"),
        "a duplicated key is left alone"
    );
    assert_eq!(p["5"].one("sn"), Some("Family5"));
}

#[test]
fn removed_person_is_deleted_within_the_gates() {
    let t = TestEnv::new("leaver");
    let rows = many(30);
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    t.write_export(&refs);
    t.sync_ok();
    t.write_export(&refs[1..]);
    let r = t.sync_ok();
    assert!(
        r.stdout
            .contains("0 add, 0 modify, 0 rename, 1 delete applied"),
        "{r:?}"
    );
    let p = t.people();
    assert_eq!(p.len(), 29);
    assert!(!p.contains_key("1"));
}

#[test]
fn template_typo_blanking_an_attribute_is_refused() {
    let t = TestEnv::new("blanking");
    let rows = many(20);
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    t.write_export(&refs);
    t.sync_ok();
    // The title column is emptied for everyone (an HR export mistake).
    let blank: Vec<String> = (1..=20)
        .map(|i| format!("{i},Given{i},,Family{i},,p{i}@example.com,"))
        .collect();
    let refs: Vec<&str> = blank.iter().map(String::as_str).collect();
    t.write_export(&refs);
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("max-attribute-removal-percent"), "{r:?}");
    assert!(t.people().values().all(|e| e.one("title").is_some()));
}

#[test]
fn a_second_run_waits_for_the_lock_and_exits_75() {
    let t = TestEnv::new("lock");
    t.write_export(&["1,Ann,,Boss,,,"]);
    t.sync_ok();
    let lock = t.dir.join("state/mirror.db.lock");
    // The holder writes its pid into the lock file, as dirbridge does.
    let mut holder = std::process::Command::new("flock")
        .arg(&lock)
        .args(["sh", "-c", "echo $$ > \"$0\"; exec sleep 30"])
        .arg(&lock)
        .spawn()
        .expect("flock(1) from util-linux");
    // wait until the holder has it
    let mut held = false;
    for _ in 0..100 {
        let st = std::process::Command::new("flock")
            .args(["-n"])
            .arg(&lock)
            .arg("true")
            .status()
            .unwrap();
        // held, and the holder has written its pid and become `sleep 30`
        let pid = std::fs::read_to_string(&lock).unwrap_or_default();
        let cmd = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap_or_default();
        if !st.success() && cmd.starts_with(b"sleep") {
            held = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(held);
    let r = t.run(&["sync"]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(r.code, 75, "{r:?}");
    assert!(
        r.stderr.contains("another dirbridge run holds the lock"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains(": sleep 30)"),
        "the holder is named by pid and command: {r:?}"
    );
    // plan does not write, so it does not need the lock
    let (code, _) = t.plan_json();
    assert_eq!(code, 0);
}

#[test]
fn unreadable_export_writes_nothing() {
    let t = TestEnv::new("noexport");
    t.write_export(&["1,Ann,,Boss,,,"]);
    t.sync_ok();
    std::fs::write(t.dir.join("export.csv"), "").unwrap();
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 66, "{r:?}");
    assert!(
        r.stderr.contains("export.csv") && r.stderr.contains("nothing was written"),
        "{r:?}"
    );
    assert_eq!(t.people().len(), 1);
}

//! The planner at scale, without LDAP: N synthetic records against a synthetic directory snapshot
//! (most people unchanged, 5% with a new title, 1% joiners, 1% leavers), through `run::decide`.
//! Prints the time of each stage and the peak RSS. Issue 5's check: 1,000,000 records in ≤ 30 s
//! and ≤ 2 GB.
//!
//!   cargo run --release --example planner -- 1000000

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use dirbridge::config::{self, Check};
use dirbridge::mapping::Mapper;
use dirbridge::model::{DirSnapshot, Entry, MatchRules};
use dirbridge::run::{decide, DecideInput};

// The same allocator as the binary (src/main.rs), with the same settings.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../src/allocator.rs"]
mod allocator;

fn main() {
    allocator::defaults();
    dirbridge::no_transparent_huge_pages();
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("dirbridge-planner-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let header = "employee_id,given_name,surname,title,department,manager_id";
    std::fs::write(dir.join("export.csv"), format!("{header}\n")).expect("write");
    std::fs::write(dir.join("pw"), "x\n").expect("write");
    let text = r#"
[source]
kind = "csv"
path = "export.csv"
key = "employee_id"
[directory]
url = "ldaps://ldap.example.com"
bind-dn = "cn=x,dc=example,dc=com"
password-file = "pw"
base-dn = "dc=example,dc=com"
[state]
path = "mirror.db"
[users]
base = "ou=people,dc=example,dc=com"
[users.attributes]
uid = "{{ (given_name[:1] ~ surname) | ascii | lower }}{{ n }}"
cn = "{{ given_name }} {{ surname }}"
givenName = "{{ given_name }}"
sn = "{{ surname }}"
title = "{{ title }}"
departmentNumber = "{{ department }}"
manager = "{{ manager_id | person_dn }}"
[users.unique]
uid = true
[safety]
max-deletes = 100000000
max-delete-percent = 100
max-attribute-removal-percent = 100
"#;
    let cfg_path = dir.join("dirbridge.toml");
    std::fs::write(&cfg_path, text).expect("write");
    let (cfg, _) = config::load(&cfg_path, Check::Run).expect("configuration");

    let t0 = Instant::now();
    // The export: people 0..n (1% of them new), their managers in a tree.
    let mut csv = String::with_capacity(n * 64);
    csv.push_str(header);
    csv.push('\n');
    for i in 0..n {
        let title = if i % 20 == 7 { "Lead" } else { "Staff" };
        let manager = if i == 0 {
            String::new()
        } else {
            (1_000_000 + i / 10).to_string()
        };
        csv.push_str(&format!(
            "{},Given{i},Family{i},{title},D{},{manager}\n",
            1_000_000 + i,
            i % 50
        ));
    }
    let export = dirbridge::source::parse(&cfg.source, csv.as_bytes()).expect("export");
    drop(csv);
    let t_export = t0.elapsed();
    let rss_export = dirbridge::run::memory_mb("VmRSS");

    // The directory: everyone but the joiners (i % 100 == 99), plus 1% leavers no longer in the
    // export; titles as before the 5% change.
    let t1 = Instant::now();
    let base = "ou=people,dc=example,dc=com";
    let mut entries = Vec::with_capacity(n);
    let mut links = BTreeMap::new();
    let mut uids: Vec<(String, dirbridge::names::Values)> = Vec::with_capacity(n + n / 100);
    let uid_of = |i: usize| format!("gfamily{i}");
    let mut put = |i: usize, key: String, title: &str, entries: &mut Vec<Entry>| {
        let uuid = format!("u-{i}");
        let uid = uid_of(i);
        let mut attrs = dirbridge::names::NameMap::new();
        attrs.insert("objectclass", vec!["inetOrgPerson".into()]);
        attrs.insert("employeenumber", vec![key.clone()]);
        attrs.insert("uid", vec![uid.clone()]);
        attrs.insert("cn", vec![format!("Given{i} Family{i}")]);
        attrs.insert("givenname", vec![format!("Given{i}")]);
        attrs.insert("sn", vec![format!("Family{i}")]);
        attrs.insert("title", vec![title.to_string()]);
        attrs.insert("departmentnumber", vec![format!("D{}", i % 50)]);
        if i > 0 {
            attrs.insert("manager", vec![format!("uid={},{base}", uid_of(i / 10))]);
        }
        uids.push((uid.clone(), uuid.clone().into()));
        entries.push(Entry::new(
            uuid.clone(),
            format!("uid={uid},{base}"),
            attrs.into_iter().collect(),
        ));
        links.insert(key, uuid);
    };
    for i in 0..n {
        if i % 100 == 99 {
            continue;
        }
        put(i, (1_000_000 + i).to_string(), "Staff", &mut entries);
    }
    for j in 0..n / 100 {
        let i = n + j;
        put(i, (1_000_000 + i).to_string(), "Staff", &mut entries);
    }
    let taken = HashMap::from([("uid".to_string(), uids.into_iter().collect())]);
    let dir_snap = DirSnapshot {
        entries,
        taken,
        groups: Vec::new(),
        missing_bases: BTreeSet::new(),
    };
    let t_dir = t1.elapsed();
    let rss_dir = dirbridge::run::memory_mb("VmRSS");

    let t2 = Instant::now();
    let rules = MatchRules::default();
    let mapper = Mapper::new(&cfg.users, &export.header).expect("mapper");
    let d = decide(&DecideInput {
        settled: &Default::default(),
        apps: &BTreeMap::new(),
        cfg: &cfg,
        users: &cfg.users,
        mapper: &mapper,
        export: &export,
        dir: &dir_snap,
        rules: &rules,
        links: &links,
        departures: &BTreeMap::new(),
        created: &BTreeSet::new(),
        posix_ids: &BTreeMap::new(),
        today: "2026-11-28".parse().expect("date"),
        only: None,
        keep_desired: false,
        uuid_index: None,
    });
    let t_decide = t2.elapsed();
    let summary = dirbridge::plan::summary(&d.plan);
    println!(
        "planner: {n} records, {} entries: export {:.2} s ({rss_export} MB), snapshot {:.2} s ({rss_dir} MB), decide {:.2} s; total {:.2} s; peak RSS {} MB",
        dir_snap.entries.len(),
        t_export.as_secs_f64(),
        t_dir.as_secs_f64(),
        t_decide.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        dirbridge::run::memory_mb("VmHWM")
    );
    println!(
        "plan: {} add, {} modify, {} delete, {} quarantined",
        summary["add"], summary["modify"], summary["delete"], summary["quarantined"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

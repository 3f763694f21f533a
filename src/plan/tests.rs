//! Golden tests: records + directory snapshot + links in, the exact plan JSON out.
//! `UPDATE_GOLDEN=1 cargo test --lib golden` rewrites `expected.json`; review the diff before committing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use super::gates::{check, GateInput, LastGood};
use super::*;
use crate::config::{Encoding, SafetyConfig, SourceConfig, SourceKind};
use crate::mapping::tests::{header, users};
use crate::mapping::Mapper;
use crate::model::{DirSnapshot, Entry, MatchRules};

#[derive(serde::Deserialize)]
struct DirFile {
    entries: Vec<Entry>,
    taken: HashMap<String, crate::model::Holders>,
}

fn golden(case: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(case);
    let src = SourceConfig {
        kind: SourceKind::Csv,
        path: PathBuf::from("records.csv"),
        key: "employee_id".into(),
        delimiter: ',',
        encoding: Encoding::Utf8,
    };
    let export =
        crate::source::parse(&src, &std::fs::read(dir.join("records.csv")).unwrap()).unwrap();
    assert_eq!(export.header, header());
    let d: DirFile =
        serde_json::from_str(&std::fs::read_to_string(dir.join("directory.json")).unwrap())
            .unwrap();
    let snap = DirSnapshot {
        entries: d.entries,
        taken: d.taken,
        ..Default::default()
    };
    let links: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("links.json")).unwrap()).unwrap();
    let rules = MatchRules::default();
    let u = users();
    let present: BTreeSet<String> = export.records.iter().map(|r| r.key.clone()).collect();
    let linking = crate::mapping::link::link(&present, &snap, &links, &u.anchor, &rules);
    let mut mapped = Mapper::new(&u, &export.header).unwrap().map(
        &export.records,
        &BTreeSet::new(),
        &linking,
        &snap,
        &rules,
    );
    let mut p = Plan {
        records: export.records.len(),
        entries_read: snap.entries.len(),
        managed: linking.managed,
        relinked: linking.relinked.clone(),
        ..Default::default()
    };
    p.changes = order(
        plan(PlanInput {
            users: &u,
            desired: &mut mapped.desired,
            keep_values: false,
            dir: &snap,
            by_uuid: &snap.uuid_index(),
            linking: &linking,
            rules: &rules,
            no_deletes: false,
            only: None,
            lifecycle: false,
            purge: &[],
        }),
        &rules,
    );
    let mut got = output::json(&p);
    got.push_str("\n# phases: ");
    got.push_str(
        &p.changes
            .iter()
            .map(|c| format!("{}:{}", c.key, c.phase))
            .collect::<Vec<_>>()
            .join(" "),
    );
    got.push('\n');
    let exp_path = dir.join("expected.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&exp_path, &got).unwrap();
    }
    let expected = std::fs::read_to_string(&exp_path).unwrap_or_default();
    assert_eq!(
        got, expected,
        "golden {case} differs (UPDATE_GOLDEN=1 to rewrite, then review)"
    );
}

#[test]
fn golden_basic() {
    golden("basic");
}

fn change(op: Op, key: &str, attrs: Vec<AttrDelta>) -> Change {
    Change {
        op,
        dn: format!("uid={key},ou=people,dc=example,dc=com"),
        new_dn: None,
        key: key.into(),
        uuid: None,
        attributes: attrs,
        reason: String::new(),
        phase: 0,
        subject: Subject::Person,
    }
}

fn gate(
    changes: &[Change],
    managed: usize,
    source: usize,
    last: Option<&LastGood>,
    header: &[String],
) -> Vec<&'static str> {
    check(&GateInput {
        entries: &[],
        rules: &MatchRules::default(),
        safety: &SafetyConfig::default(),
        changes,
        managed,
        source_records: source,
        header,
        last_good: last,
        dir_empty: false,
        links: managed,
    })
    .into_iter()
    .map(|r| r.gate)
    .collect()
}

#[test]
fn delete_gates() {
    let h: Vec<String> = vec!["id".into()];
    let dels: Vec<Change> = (0..3)
        .map(|i| change(Op::Delete, &i.to_string(), vec![]))
        .collect();
    assert!(
        gate(&dels, 100, 97, None, &h).is_empty(),
        "3% of 100 is under 5%"
    );
    assert_eq!(
        gate(&dels, 50, 47, None, &h),
        vec!["max-delete-percent"],
        "6% of 50"
    );
    let many: Vec<Change> = (0..51)
        .map(|i| change(Op::Delete, &i.to_string(), vec![]))
        .collect();
    assert_eq!(gate(&many, 10_000, 10_000, None, &h), vec!["max-deletes"]);
}

#[test]
fn attribute_removal_gate() {
    let h: Vec<String> = vec!["id".into()];
    let rm = |k: &str| {
        change(
            Op::Modify,
            k,
            vec![AttrDelta {
                attr: "title".into(),
                kind: DeltaKind::Delete,
                old: vec!["x".into()].into(),
                new: Default::default(),
            }],
        )
    };
    let changes: Vec<Change> = (0..11).map(|i| rm(&i.to_string())).collect();
    assert_eq!(
        gate(&changes, 100, 100, None, &h),
        vec!["max-attribute-removal-percent"]
    );
    assert!(
        gate(&changes[..10], 100, 100, None, &h).is_empty(),
        "10% is not more than 10%"
    );
}

#[test]
fn history_gates_apply_once_there_is_a_last_good_run() {
    let h: Vec<String> = vec!["id".into(), "name".into()];
    let last = LastGood {
        records: 100,
        header: h.clone(),
    };
    assert!(
        gate(&[], 0, 50, None, &h).is_empty(),
        "first run: no history"
    );
    assert_eq!(
        gate(&[], 0, 50, Some(&last), &h),
        vec!["min-source-percent"]
    );
    assert!(gate(&[], 0, 90, Some(&last), &h).is_empty());
    assert_eq!(gate(&[], 0, 100, Some(&last), &h[..1]), vec!["columns"]);
}

#[test]
fn empty_directory_with_links_is_refused() {
    let r = check(&GateInput {
        entries: &[],
        rules: &MatchRules::default(),
        safety: &SafetyConfig::default(),
        changes: &[],
        managed: 0,
        source_records: 10,
        header: &[],
        last_good: None,
        dir_empty: true,
        links: 10,
    });
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].gate, "empty-directory");
}

#[test]
fn protected_entries_are_refused() {
    let s = SafetyConfig {
        protected: vec!["uid=boss,ou=people,dc=example,dc=com".into()],
        ..SafetyConfig::default()
    };
    let r = check(&GateInput {
        entries: &[],
        rules: &MatchRules::default(),
        safety: &s,
        changes: &[change(Op::Modify, "Boss", vec![])],
        managed: 100,
        source_records: 100,
        header: &[],
        last_good: None,
        dir_empty: false,
        links: 100,
    });
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].gate, "protected");
}

#[test]
fn protected_filters_are_refused() {
    let s = SafetyConfig {
        protected: vec!["(employeeType=executive)".into()],
        ..SafetyConfig::default()
    };
    let exec = Entry {
        digest: Default::default(),
        uuid: "u1".into(),
        dn: "uid=boss,ou=people,dc=example,dc=com".into(),
        attrs: [("employeetype".to_string(), vec!["Executive".to_string()])]
            .into_iter()
            .collect(),
    };
    let mut c = change(Op::Modify, "boss", vec![]);
    c.uuid = Some("u1".into());
    let mut other = change(Op::Modify, "clerk", vec![]);
    other.uuid = Some("u2".into());
    let input = |changes: &[Change]| {
        check(&GateInput {
            entries: std::slice::from_ref(&exec),
            rules: &MatchRules::default(),
            safety: &s,
            changes,
            managed: 100,
            source_records: 100,
            header: &[],
            last_good: None,
            dir_empty: false,
            links: 100,
        })
    };
    let r = input(std::slice::from_ref(&c));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].gate, "protected");
    assert!(r[0].message.contains("(employeeType=executive)"));
    assert!(input(std::slice::from_ref(&other)).is_empty());
}

#[test]
fn an_add_waits_for_the_adds_it_names_in_earlier_phases_only() {
    let mgr = |key: &str| AttrDelta {
        attr: "manager".into(),
        kind: DeltaKind::Add,
        old: Default::default(),
        new: format!("uid={key},ou=people,dc=example,dc=com").into(),
    };
    // b reports to a (new), c to b (new), d to x (not added in this run); e and f name each
    // other (a cycle: the same phase), g names itself
    let adds = vec![
        change(Op::Add, "a", vec![]),
        change(Op::Add, "b", vec![mgr("a")]),
        change(Op::Add, "c", vec![mgr("b")]),
        change(Op::Add, "d", vec![mgr("x")]),
        change(Op::Add, "e", vec![mgr("f")]),
        change(Op::Add, "f", vec![mgr("e")]),
        change(Op::Add, "g", vec![mgr("g")]),
    ];
    let rules = MatchRules::default();
    let ordered = order(adds, &rules);
    let phase = |k: &str| ordered.iter().find(|c| c.key == k).unwrap().phase;
    assert!(phase("a") < phase("b") && phase("b") < phase("c"));
    assert_eq!(phase("e"), phase("f"));
    let batch: Vec<&Change> = ordered.iter().collect();
    let waits = add_waits(&batch, &rules);
    let of = |k: &str| -> Vec<&str> {
        let i = batch.iter().position(|c| c.key == k).unwrap();
        waits[i].iter().map(|&j| batch[j].key.as_str()).collect()
    };
    assert_eq!(of("a"), Vec::<&str>::new());
    assert_eq!(of("b"), ["a"]);
    assert_eq!(of("c"), ["b"]);
    assert!(of("d").is_empty() && of("e").is_empty() && of("f").is_empty());
    assert!(of("g").is_empty());
}

#[test]
fn modifies_that_touch_no_renamed_entry_go_before_the_renames() {
    let mgr = |dn: &str, kind: DeltaKind| AttrDelta {
        attr: "manager".into(),
        kind,
        old: if kind == DeltaKind::Delete {
            dn.to_string().into()
        } else {
            Default::default()
        },
        new: if kind == DeltaKind::Delete {
            Default::default()
        } else {
            dn.to_string().into()
        },
    };
    let title = || AttrDelta {
        attr: "title".into(),
        kind: DeltaKind::Replace,
        old: "Dev".to_string().into(),
        new: "Lead".to_string().into(),
    };
    let renamed = |key: &str, uuid: &str, to: &str| Change {
        new_dn: Some(to.into()),
        uuid: Some(uuid.into()),
        ..change(Op::Rename, key, vec![])
    };
    let with_uuid = |mut c: Change, uuid: &str| {
        c.uuid = Some(uuid.into());
        c
    };
    let rules = MatchRules::default();
    let plan = vec![
        change(Op::Add, "new", vec![]),
        renamed("r", "u-r", "uid=r2,ou=people,dc=example,dc=com"),
        // a move: and a DN under its new place, named by the plain text of a DN-less attribute
        Change {
            op: Op::Move,
            ..renamed("m", "u-m", "uid=m,ou=Gone,dc=example,dc=com")
        },
        with_uuid(change(Op::Modify, "plain", vec![title()]), "u-plain"),
        // the renamed entry's own modify, by its new DN: sent before the rename, by its old DN
        Change {
            dn: "uid=r2,ou=people,dc=example,dc=com".into(),
            ..with_uuid(change(Op::Modify, "r", vec![title()]), "u-r")
        },
        // by its entryUUID alone (its DN as the plan had it before)
        with_uuid(change(Op::Disable, "m", vec![]), "u-m"),
        // one of its RDN's attributes: after the rename, which sets it
        Change {
            dn: "uid=q2,ou=people,dc=example,dc=com".into(),
            ..with_uuid(
                change(
                    Op::Modify,
                    "q",
                    vec![AttrDelta {
                        attr: "UID".into(),
                        kind: DeltaKind::Add,
                        old: Default::default(),
                        new: "q-alias".to_string().into(),
                    }],
                ),
                "u-q",
            )
        },
        renamed("q", "u-q", "uid=q2,ou=people,dc=example,dc=com"),
        // a returner: moved back, then enabled
        Change {
            op: Op::Move,
            ..renamed("e", "u-e", "uid=e,ou=Back,dc=example,dc=com")
        },
        Change {
            dn: "uid=e,ou=Back,dc=example,dc=com".into(),
            ..with_uuid(change(Op::Enable, "e", vec![]), "u-e")
        },
        // naming the renamed entry's new DN (another spelling), or its old one being removed
        change(
            Op::Modify,
            "to-new",
            vec![mgr(
                "UID=R2, ou=People,dc=example,dc=com",
                DeltaKind::Replace,
            )],
        ),
        change(
            Op::Modify,
            "from-old",
            vec![mgr("uid=r,ou=people,dc=example,dc=com", DeltaKind::Delete)],
        ),
        change(
            Op::Modify,
            "to-new-entry",
            vec![mgr("uid=new,ou=people,dc=example,dc=com", DeltaKind::Add)],
        ),
        change(
            Op::Modify,
            "escaped",
            vec![mgr("uid=a\\,b,ou=people,dc=example,dc=com", DeltaKind::Add)],
        ),
        change(Op::Link, "linked", vec![]),
        change(Op::Delete, "gone", vec![]),
    ];
    let ordered = order(plan, &rules);
    let of = |k: &str, op: Op| ordered.iter().find(|c| c.key == k && c.op == op).unwrap();
    let phase = |k: &str, op: Op| of(k, op).phase;
    let dn_of = |k: &str, op: Op| of(k, op).dn.as_str();
    let rename = phase("r", Op::Rename);
    assert_eq!(phase("m", Op::Move), rename);
    assert!(phase("new", Op::Add) < phase("plain", Op::Modify));
    for (k, op) in [
        ("plain", Op::Modify),
        ("to-new-entry", Op::Modify),
        ("escaped", Op::Modify),
        ("linked", Op::Link),
        ("r", Op::Modify),
        ("m", Op::Disable),
    ] {
        assert!(phase(k, op) < rename, "{k} before the renames");
    }
    assert_eq!(dn_of("r", Op::Modify), "uid=r,ou=people,dc=example,dc=com");
    assert_eq!(dn_of("m", Op::Disable), "uid=m,ou=people,dc=example,dc=com");
    assert_eq!(
        dn_of("plain", Op::Modify),
        "uid=plain,ou=people,dc=example,dc=com"
    );
    assert_eq!(dn_of("q", Op::Modify), "uid=q2,ou=people,dc=example,dc=com");
    for (k, op) in [
        ("e", Op::Enable),
        ("q", Op::Modify),
        ("to-new", Op::Modify),
        ("from-old", Op::Modify),
    ] {
        assert!(rename < phase(k, op), "{k} after the renames");
        assert!(phase(k, op) < phase("gone", Op::Delete));
    }
    // the applied order is the phases' order
    assert!(ordered.windows(2).all(|w| w[0].phase <= w[1].phase));
    // without renames, every modify goes at once after the adds
    let ordered = order(
        vec![
            change(Op::Add, "new", vec![]),
            change(Op::Modify, "plain", vec![title()]),
        ],
        &rules,
    );
    assert_eq!(ordered[1].phase, ordered[0].phase + 1);
}

#[test]
fn a_large_plan_made_in_two_halves_keeps_each_kind_in_the_order_of_the_people() {
    // 6,000 people (two threads from 4,096): a third new, a third renamed, a third with a new
    // title, every tenth settled; the changes come as one thread would make them.
    let u = users();
    let mut entries = Vec::new();
    let mut desired = Vec::new();
    for i in 0..6000usize {
        let key = format!("{i:05}");
        let uid = format!("u{i}");
        let dn = format!("uid={uid},{}", u.base);
        let settled = i % 10 == 9;
        let uuid = (i % 3 != 0).then(|| format!("uuid-{key}"));
        if let Some(uuid) = &uuid {
            let attrs: crate::names::NameMap<crate::names::Values> = [
                // (as read: attribute names in lower case)
                ("objectclass", "inetOrgPerson".to_string()),
                ("employeenumber", key.clone()),
                ("uid", format!("old{i}")),
                ("title", "Old".to_string()),
            ]
            .into_iter()
            .collect();
            entries.push(Entry::new(
                uuid.clone(),
                format!("uid=old{i},{}", u.base),
                attrs,
            ));
        }
        let title = if i % 3 == 2 { "New" } else { "Old" };
        desired.push(crate::mapping::Desired {
            key: key.into(),
            line: (i + 2) as u32,
            uuid: uuid.map(Into::into),
            dn: if i % 3 == 2 {
                format!("uid=old{i},{}", u.base)
            } else {
                dn
            }
            .into(),
            attrs: [
                ("uid", if i % 3 == 2 { format!("old{i}") } else { uid }),
                ("title", title.to_string()),
            ]
            .into_iter()
            .collect(),
            placement: None,
            fields: Default::default(),
            lifecycle_attrs: Default::default(),
            state: None,
            settled,
        });
    }
    let snap = DirSnapshot {
        entries,
        ..Default::default()
    };
    let changes = plan(PlanInput {
        users: &u,
        desired: &mut desired,
        keep_values: false,
        dir: &snap,
        by_uuid: &snap.uuid_index(),
        linking: &Default::default(),
        rules: &MatchRules::default(),
        no_deletes: false,
        only: None,
        lifecycle: false,
        purge: &[],
    });
    let kinds: Vec<(Op, usize)> = changes
        .iter()
        .map(|c| (c.op, c.key.parse::<usize>().unwrap()))
        .collect();
    let expect = |rest: usize, op: Op| {
        (0..6000)
            .filter(move |i| i % 3 == rest && (rest == 0 || i % 10 != 9))
            .map(move |i| (op, i))
    };
    let want: Vec<(Op, usize)> = expect(0, Op::Add)
        .chain(expect(1, Op::Rename))
        .chain(expect(2, Op::Modify))
        .collect();
    let mut counts = BTreeMap::new();
    for (op, _) in &kinds {
        *counts.entry(format!("{op:?}")).or_insert(0) += 1;
    }
    assert_eq!(kinds.len(), want.len(), "{counts:?}");
    assert_eq!(kinds, want);
}

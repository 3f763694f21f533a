//! A time-travel story through the pure core (`run::decide`) with a fixed `today` and an
//! in-memory directory that applies each plan. The expected plans are written by hand from the
//! story below, not taken from the code's output.
//!
//! Ann joins in Sales (Paris); Bob joins in Sales (Berlin) with an end date of 31 March; Cy is
//! hired for 10 March. On 20 March Ann moves to Engineering in Berlin. Bob leaves on his end date;
//! Cy goes on leave. On 20 April Ann vanishes from the export, Bob's homonym Bea joins, Cy is
//! back. On 5 May Ann is back (a rehire within retention) and Bob's 30 days are over.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::config::{self, Config};
use crate::dn;
use crate::mapping::Mapper;
use crate::model::{DirSnapshot, Entry, MatchRules};
use crate::plan::{DeltaKind, Op, Plan, Subject};
use crate::run::{decide, DecideInput};

const HEADER: &str =
    "employee_id,given_name,surname,department,location,start_date,end_date,status";
const P: &str = "ou=people,dc=example,dc=com";
const B: &str = "ou=berlin,ou=people,dc=example,dc=com";
const L: &str = "ou=leavers,dc=example,dc=com";
const G: &str = "ou=groups,dc=example,dc=com";

fn config(dir: &std::path::Path) -> Config {
    std::fs::write(dir.join("pw"), "x\n").unwrap();
    let text = format!(
        r#"
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
base = "{P}"
rdn = "uid"
object-classes = ["inetOrgPerson"]
anchor = "employeeNumber"

[[users.placement]]
when = "location == 'Berlin'"
base = "{B}"

[users.attributes]
uid = "{{{{ (given_name[:1] ~ surname) | ascii | lower }}}}{{{{ n }}}}"
cn = "{{{{ given_name }}}} {{{{ surname }}}}"
sn = "{{{{ surname }}}}"

[users.unique]
uid = true

[[groups]]
dn = "cn=staff,{G}"

[[groups]]
dn = "cn=dept-{{{{ department | slug }}}},{G}"
for-each = "department"
empty = "delete"

[lifecycle]
start-date = "start_date"
end-date = "end_date"
status = "status"
pre-hire-days = 7
leave = "disable"
disabled-base = "{L}"
delete-after = "30d"
"#
    );
    let file = dir.join("dirbridge.toml");
    std::fs::write(&file, &text).unwrap();
    match config::load(&file, config::Check::Strict) {
        Ok((c, _)) => c,
        Err(d) => panic!("{d}"),
    }
}

/// An in-memory directory that applies plans the way slapd would (without refint).
#[derive(Default)]
struct Fake {
    dir: DirSnapshot,
    links: BTreeMap<String, String>,
    created: BTreeSet<String>,
    departures: BTreeMap<String, jiff::civil::Date>,
    next: u32,
}

fn set_attr(
    e: &mut Entry,
    attr: &str,
    kind: DeltaKind,
    old: &[String],
    new: &[String],
    member: bool,
) {
    let k = attr.to_ascii_lowercase();
    let same = |a: &str, b: &str| {
        if member {
            dn::normalize(a) == dn::normalize(b)
        } else {
            a.eq_ignore_ascii_case(b)
        }
    };
    match kind {
        DeltaKind::Add => e.attrs.entry(k).or_default().extend(new.iter().cloned()),
        DeltaKind::Replace => {
            e.attrs.insert(k, new.to_vec().into());
        }
        DeltaKind::Delete if member => {
            if let Some(v) = e.attrs.get_mut(&k) {
                v.retain(|x| !old.iter().any(|o| same(o, x)));
            }
        }
        DeltaKind::Delete => {
            e.attrs.remove(&k);
        }
    }
}

impl Fake {
    fn apply(&mut self, plan: &Plan) {
        for c in &plan.changes {
            match (c.subject, c.op) {
                (Subject::Person, Op::Add) => {
                    self.next += 1;
                    let uuid = format!("u{}", self.next);
                    let mut e = Entry {
                        digest: Default::default(),
                        uuid: uuid.clone(),
                        dn: c.dn.clone(),
                        attrs: Default::default(),
                    };
                    for a in &c.attributes {
                        set_attr(&mut e, &a.attr, DeltaKind::Add, &[], &a.new, false);
                    }
                    for u in e.get("uid") {
                        self.dir
                            .taken
                            .entry("uid".into())
                            .or_default()
                            .insert(u.to_lowercase(), vec![uuid.clone()].into());
                    }
                    self.links.insert(c.key.clone(), uuid);
                    self.dir.entries.push(e);
                }
                (Subject::Group, Op::Add) => {
                    self.next += 1;
                    let mut e = Entry {
                        digest: Default::default(),
                        uuid: format!("g{}", self.next),
                        dn: c.dn.clone(),
                        attrs: Default::default(),
                    };
                    for a in &c.attributes {
                        set_attr(&mut e, &a.attr, DeltaKind::Add, &[], &a.new, false);
                    }
                    self.created.insert(dn::normalize(&c.dn));
                    self.dir.groups.push(e);
                }
                (Subject::Group, Op::AddMember | Op::RemoveMember) => {
                    let g = self
                        .dir
                        .groups
                        .iter_mut()
                        .find(|g| dn::normalize(&g.dn) == dn::normalize(&c.dn))
                        .unwrap();
                    for a in &c.attributes {
                        set_attr(g, &a.attr, a.kind, &a.old, &a.new, true);
                    }
                }
                (Subject::Group, Op::Delete) => {
                    self.dir
                        .groups
                        .retain(|g| dn::normalize(&g.dn) != dn::normalize(&c.dn));
                    self.created.remove(&dn::normalize(&c.dn));
                }
                (Subject::Person, Op::Delete) => {
                    let uuid = c.uuid.clone().unwrap();
                    self.dir.entries.retain(|e| e.uuid != uuid);
                    for vals in self.dir.taken.values_mut() {
                        vals.retain(|_, us| !us.contains(&uuid));
                    }
                    self.links.remove(&c.key);
                }
                (Subject::Person, Op::Rename | Op::Move) => {
                    let e = self
                        .dir
                        .entries
                        .iter_mut()
                        .find(|e| Some(&e.uuid) == c.uuid.as_ref())
                        .unwrap();
                    e.dn = c.new_dn.clone().unwrap();
                }
                (Subject::Person, _) => {
                    let e = self
                        .dir
                        .entries
                        .iter_mut()
                        .find(|e| Some(&e.uuid) == c.uuid.as_ref())
                        .unwrap();
                    for a in &c.attributes {
                        set_attr(e, &a.attr, a.kind, &a.old, &a.new, false);
                    }
                }
                other => panic!("the story does not expect {other:?}"),
            }
        }
    }
}

/// One line per change: `op key dn`, `op key old -> new` for moves, member values as +v / -v.
fn lines(plan: &Plan) -> BTreeSet<String> {
    plan.changes
        .iter()
        .map(|c| match c.op {
            Op::Move | Op::Rename => format!(
                "{} {} {} -> {}",
                c.op.as_str(),
                c.key,
                c.dn,
                c.new_dn.as_deref().unwrap_or("")
            ),
            Op::AddMember => {
                let mut v: Vec<String> = c
                    .attributes
                    .iter()
                    .flat_map(|a| a.new.iter().map(|x| format!("+{x}")))
                    .collect();
                v.sort();
                format!("add-member {} {} {}", c.key, c.dn, v.join(" "))
            }
            Op::RemoveMember => {
                let mut v: Vec<String> = c
                    .attributes
                    .iter()
                    .flat_map(|a| a.old.iter().map(|x| format!("-{x}")))
                    .collect();
                v.sort();
                format!("remove-member {} {} {}", c.key, c.dn, v.join(" "))
            }
            _ => format!("{} {} {}", c.op.as_str(), c.key, c.dn),
        })
        .collect()
}

/// `run::decide` over `rows` (the export) and the fake directory, on `day`, with the people
/// `settled` and the mirror's `links`.
fn decide_on(
    cfg: &Config,
    fake: &Fake,
    rows: &[&str],
    day: &str,
    settled: &foldhash::HashMap<String, usize>,
    links: &BTreeMap<String, String>,
) -> crate::run::Decision {
    let mut csv = String::from(HEADER);
    csv.push('\n');
    for r in rows {
        csv.push_str(r);
        csv.push('\n');
    }
    let export = crate::source::parse(&cfg.source, csv.as_bytes()).unwrap();
    let rules = MatchRules::default();
    let mapper = Mapper::new(&cfg.users, &export.header)
        .and_then(|m| m.with_groups(&cfg.groups))
        .unwrap()
        .with_disabled_base(Some(L.to_string()));
    decide(&DecideInput {
        settled,
        apps: &BTreeMap::new(),
        cfg,
        users: &cfg.users,
        mapper: &mapper,
        export: &export,
        dir: &fake.dir,
        rules: &rules,
        links,
        departures: &fake.departures,
        created: &fake.created,
        posix_ids: &BTreeMap::new(),
        today: day.parse().unwrap(),
        only: None,
        keep_desired: false,
        uuid_index: None,
    })
}

fn step(cfg: &Config, fake: &mut Fake, rows: &[&str], day: &str, expected: &[&str]) -> Plan {
    let d = decide_on(cfg, fake, rows, day, &Default::default(), &fake.links);
    assert!(
        d.plan.quarantined.is_empty(),
        "{day}: {:?}",
        d.plan.quarantined
    );
    let got = lines(&d.plan);
    let want: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    assert_eq!(got, want, "{day}: the plan differs from the story");
    fake.apply(&d.plan);
    fake.departures = d.overlay.departures.clone();
    d.plan
}

/// A scratch directory with an empty export, the story's configuration, an empty directory.
fn scene(name: &str) -> (PathBuf, Config, Fake) {
    let tmp = std::env::temp_dir().join(format!("dirbridge-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("export.csv"), format!("{HEADER}\n")).unwrap();
    let cfg = config(&tmp);
    (tmp, cfg, Fake::default())
}

#[test]
fn joiner_mover_leaver_story() {
    let (tmp, cfg, mut fake) = scene("story");
    let ann = "1,Ann,Able,Sales,Paris,2026-01-01,,";
    let ann_moved = "1,Ann,Able,Engineering,Berlin,2026-01-01,,";
    let bob = "2,Bob,Brown,Sales,Berlin,2026-01-01,2026-03-31,";
    let cy = "3,Cy,Cole,Engineering,Paris,2026-03-10,,";
    let cy_leave = "3,Cy,Cole,Engineering,Paris,2026-03-10,,leave";
    let bea = "4,Bea,Brown,Sales,Paris,2026-04-20,,";
    let f = |s: &str| {
        s.replace("$P", P)
            .replace("$B", B)
            .replace("$L", L)
            .replace("$G", G)
    };

    // 1 March: two joiners; Cy's pre-hire window opens on 3 March.
    let p = step(
        &cfg,
        &mut fake,
        &[ann, bob, cy],
        "2026-03-01",
        &[
            &f("add 1 uid=aable,$P"),
            &f("add 2 uid=bbrown,$B"),
            &f("add groups[0] cn=staff,$G"),
            &f("add groups[1] cn=dept-sales,$G"),
        ],
    );
    assert_eq!(p.not_yet, 1);
    assert_eq!(
        p.next_change.as_deref(),
        Some("2026-03-03"),
        "Cy's pre-hire window"
    );

    // 5 March: Cy is a pre-hire: created disabled, in the groups.
    let p = step(
        &cfg,
        &mut fake,
        &[ann, bob, cy],
        "2026-03-05",
        &[
            &f("add 3 uid=ccole,$P"),
            &f("add-member groups[0] cn=staff,$G +uid=ccole,$P"),
            &f("add groups[1] cn=dept-engineering,$G"),
        ],
    );
    let add = p.changes.iter().find(|c| c.key == "3").unwrap();
    assert!(add
        .attributes
        .iter()
        .any(|a| a.attr == "pwdAccountLockedTime" && *a.new == ["000001010000Z"]));

    // 10 March: Cy starts.
    step(
        &cfg,
        &mut fake,
        &[ann, bob, cy],
        "2026-03-10",
        &[&f("enable 3 uid=ccole,$P")],
    );

    // 20 March: Ann moves to Engineering in Berlin: the OU and the groups change in one run.
    step(
        &cfg,
        &mut fake,
        &[ann_moved, bob, cy],
        "2026-03-20",
        &[
            &f("move 1 uid=aable,$P -> uid=aable,$B"),
            &f("add-member groups[0] cn=staff,$G +uid=aable,$B"),
            &f("remove-member groups[0] cn=staff,$G -uid=aable,$P"),
            &f("add-member groups[1] cn=dept-engineering,$G +uid=aable,$B"),
            &f("remove-member groups[1] cn=dept-sales,$G -uid=aable,$B -uid=aable,$P"),
        ],
    );

    // 1 April: Bob's end date has passed: disabled, moved, out of his groups; Sales is empty and
    // dirbridge made it: deleted. Cy is on leave: disabled.
    step(
        &cfg,
        &mut fake,
        &[ann_moved, bob, cy_leave],
        "2026-04-01",
        &[
            &f("disable 2 uid=bbrown,$B"),
            &f("move 2 uid=bbrown,$B -> uid=bbrown,$L"),
            &f("remove-member groups[0] cn=staff,$G -uid=bbrown,$B -uid=bbrown,$L"),
            &f("delete groups[1] cn=dept-sales,$G"),
            &f("disable 3 uid=ccole,$P"),
        ],
    );

    // 20 April: Ann vanishes from the export; Bea Brown joins and must not inherit Bob's uid;
    // Cy is back.
    step(
        &cfg,
        &mut fake,
        &[bob, cy, bea],
        "2026-04-20",
        &[
            &f("disable 1 uid=aable,$B"),
            &f("move 1 uid=aable,$B -> uid=aable,$L"),
            &f("remove-member groups[0] cn=staff,$G -uid=aable,$B -uid=aable,$L"),
            &f("remove-member groups[1] cn=dept-engineering,$G -uid=aable,$B -uid=aable,$L"),
            &f("add 4 uid=bbrown2,$P"),
            &f("add-member groups[0] cn=staff,$G +uid=bbrown2,$P"),
            &f("add groups[1] cn=dept-sales,$G"),
            &f("enable 3 uid=ccole,$P"),
        ],
    );

    // 5 May: Ann is back within retention (the same entry); Bob's 30 days are over.
    step(
        &cfg,
        &mut fake,
        &[ann_moved, bob, cy, bea],
        "2026-05-05",
        &[
            &f("enable 1 uid=aable,$B"),
            &f("move 1 uid=aable,$L -> uid=aable,$B"),
            &f("add-member groups[0] cn=staff,$G +uid=aable,$B"),
            &f("add-member groups[1] cn=dept-engineering,$G +uid=aable,$B"),
            &f("delete 2 uid=bbrown,$L"),
        ],
    );
    assert_eq!(
        fake.links.get("1").map(String::as_str),
        Some("u1"),
        "the rehire kept Ann's entry"
    );

    // Nothing left to do.
    step(
        &cfg,
        &mut fake,
        &[ann_moved, bob, cy, bea],
        "2026-05-05",
        &[],
    );
    let _ = std::fs::remove_dir_all(PathBuf::from(&tmp));
}

/// The settled people keep their entries without mapping only while this run links them as the
/// mirror did: one whose mirror link names no entry any more (relinked by the anchor here) is
/// mapped again, the other stays settled.
#[test]
fn a_settled_person_whose_link_is_made_again_is_mapped_again() {
    let (tmp, cfg, mut fake) = scene("story-relink");
    let rows = [
        "1,Ann,Able,Sales,Paris,2026-01-01,,",
        "2,Bob,Brown,Sales,Berlin,2026-01-01,,",
    ];
    step(
        &cfg,
        &mut fake,
        &rows,
        "2026-03-01",
        &[
            &format!("add 1 uid=aable,{P}"),
            &format!("add 2 uid=bbrown,{B}"),
            &format!("add groups[0] cn=staff,{G}"),
            &format!("add groups[1] cn=dept-sales,{G}"),
        ],
    );
    let index = |key: &str| {
        let uuid = &fake.links[key];
        fake.dir
            .entries
            .iter()
            .position(|e| &e.uuid == uuid)
            .unwrap()
    };
    let settled: foldhash::HashMap<String, usize> =
        [("1".to_string(), index("1")), ("2".to_string(), index("2"))]
            .into_iter()
            .collect();
    // Bob's link in the mirror names an entry that is gone: the linker finds his by the anchor.
    let mut links = fake.links.clone();
    links.insert("2".into(), "gone".into());
    let d = decide_on(&cfg, &fake, &rows, "2026-03-02", &settled, &links);
    let was_settled = |key: &str| {
        d.mapped
            .desired
            .iter()
            .find(|x| &*x.key == key)
            .map(|x| x.settled)
    };
    assert_eq!(was_settled("1"), Some(true));
    assert_eq!(was_settled("2"), Some(false));
    assert_eq!(d.linking.by_key.get("2"), fake.links.get("2"));
    assert!(lines(&d.plan).is_empty(), "{:?}", lines(&d.plan));
    let _ = std::fs::remove_dir_all(PathBuf::from(&tmp));
}

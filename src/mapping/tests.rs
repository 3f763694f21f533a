use super::*;
use crate::config::{Policy, UsersConfig};
use crate::model::{DirSnapshot, Entry, MatchRules};
use crate::source::Record;

pub(crate) fn users() -> UsersConfig {
    let mut attributes = BTreeMap::new();
    attributes.insert(
        "uid".into(),
        "{{ (given_name[:1] ~ surname) | ascii | lower }}{{ n }}".into(),
    );
    attributes.insert(
        "cn".into(),
        "{{ preferred_name or given_name }} {{ surname }}".into(),
    );
    attributes.insert("sn".into(), "{{ surname }}".into());
    attributes.insert("title".into(), "{{ title }}".into());
    attributes.insert("manager".into(), "{{ manager_id | person_dn }}".into());
    UsersConfig {
        base: "ou=people,dc=example,dc=com".into(),
        rdn: "uid".into(),
        object_classes: vec!["inetOrgPerson".into()],
        anchor: "employeeNumber".into(),
        attributes,
        unique: ["uid".to_string()].into_iter().collect(),
        policy: BTreeMap::new(),
        placement: vec![],
        correlate: vec![],
        posix: None,
    }
}

pub(crate) fn header() -> Vec<String> {
    [
        "employee_id",
        "given_name",
        "preferred_name",
        "surname",
        "title",
        "manager_id",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub(crate) fn rec(key: &str, given: &str, sn: &str, title: &str, mgr: &str) -> Record {
    let mut fields = crate::names::NameMap::new();
    fields.insert("employee_id", key.into());
    fields.insert("given_name", given.into());
    fields.insert("preferred_name", "".into());
    fields.insert("surname", sn.into());
    fields.insert("title", title.into());
    fields.insert("manager_id", mgr.into());
    Record {
        key: key.into(),
        line: key.parse::<usize>().unwrap_or(0) + 1,
        fields: fields.into(),
    }
}

fn entry(uuid: &str, dn: &str, attrs: &[(&str, &str)]) -> Entry {
    let mut m = crate::names::NameMap::<crate::names::Values>::new();
    for (k, v) in attrs {
        m.entry(k.to_ascii_lowercase())
            .or_default()
            .push(v.to_string());
    }
    Entry {
        digest: Default::default(),
        uuid: uuid.into(),
        dn: dn.into(),
        attrs: m,
    }
}

/// `dir` gets an entry holding `uid` (and, with a key, linked to that person by the anchor).
fn holder(dir: &mut DirSnapshot, uuid: &str, dn: &str, uid: &str, key: Option<&str>) {
    let mut attrs = vec![("uid", uid)];
    if let Some(k) = key {
        attrs.push(("employeeNumber", k));
    }
    dir.entries.push(entry(uuid, dn, &attrs));
    dir.taken
        .entry("uid".into())
        .or_default()
        .insert(uid.into(), vec![uuid.into()].into());
}

fn run(records: &[Record], dir: &DirSnapshot, users: &UsersConfig) -> MapOutput {
    let rules = MatchRules::default();
    let present: BTreeSet<String> = records.iter().map(|r| r.key.clone()).collect();
    let linking = link::link(&present, dir, &BTreeMap::new(), &users.anchor, &rules);
    Mapper::new(users, &header())
        .unwrap()
        .map(records, &BTreeSet::new(), &linking, dir, &rules)
}

fn uid_of<'a>(out: &'a MapOutput, key: &str) -> &'a str {
    &out.desired.iter().find(|d| &*d.key == key).unwrap().attrs["uid"][0]
}

#[test]
fn homonyms_numbered_by_key_order_and_stable() {
    let recs = vec![
        rec("10", "John", "Smith", "Dev", ""),
        rec("9", "Jane", "Smith", "Ops", ""),
        rec("11", "Jim", "Smith", "QA", ""),
    ];
    let out = run(&recs, &DirSnapshot::default(), &users());
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    // numeric keys order numerically: 9 < 10 < 11
    assert_eq!(uid_of(&out, "9"), "jsmith");
    assert_eq!(uid_of(&out, "10"), "jsmith2");
    assert_eq!(uid_of(&out, "11"), "jsmith3");

    // Second run: the directory has them; a new homonym with a lower key does not renumber anyone.
    let mut dir = DirSnapshot::default();
    for (u, k, uid) in [
        ("u9", "9", "jsmith"),
        ("u10", "10", "jsmith2"),
        ("u11", "11", "jsmith3"),
    ] {
        dir.entries.push(entry(
            u,
            &format!("uid={uid},ou=people,dc=example,dc=com"),
            &[("uid", uid), ("employeeNumber", k)],
        ));
        dir.taken
            .entry("uid".into())
            .or_default()
            .insert(uid.into(), vec![u.into()].into());
    }
    let mut recs2 = recs.clone();
    recs2.push(rec("1", "Jo", "Smith", "New", ""));
    let out = run(&recs2, &dir, &users());
    assert_eq!(uid_of(&out, "9"), "jsmith");
    assert_eq!(uid_of(&out, "10"), "jsmith2");
    assert_eq!(uid_of(&out, "11"), "jsmith3");
    assert_eq!(uid_of(&out, "1"), "jsmith4");
}

#[test]
fn value_sticks_until_base_changes_and_excludes_own_entry() {
    let mut dir = DirSnapshot::default();
    dir.entries.push(entry(
        "u1",
        "uid=jsmith2,ou=people,dc=example,dc=com",
        &[("uid", "jsmith2"), ("employeeNumber", "1")],
    ));
    dir.taken
        .entry("uid".into())
        .or_default()
        .insert("jsmith2".into(), vec!["u1".into()].into());
    // jsmith is free now, but the person keeps jsmith2: the base part did not change.
    let out = run(&[rec("1", "John", "Smith", "", "")], &dir, &users());
    assert_eq!(uid_of(&out, "1"), "jsmith2");
    assert_eq!(
        &*out.desired[0].dn,
        "uid=jsmith2,ou=people,dc=example,dc=com"
    );
    // Surname changes: the base changes, a new value is chosen (own old value does not block).
    let out = run(&[rec("1", "John", "Smyth", "", "")], &dir, &users());
    assert_eq!(uid_of(&out, "1"), "jsmyth");
    assert_eq!(
        &*out.desired[0].dn,
        "uid=jsmyth,ou=people,dc=example,dc=com"
    );
}

#[test]
fn values_taken_elsewhere_in_the_directory_are_skipped() {
    let mut dir = DirSnapshot::default();
    // a service account outside users.base holds "jdoe"
    dir.taken
        .entry("uid".into())
        .or_default()
        .insert("jdoe".into(), vec!["svc".into()].into());
    let out = run(&[rec("5", "John", "Doe", "", "")], &dir, &users());
    assert_eq!(uid_of(&out, "5"), "jdoe2");
}

#[test]
fn hard_names_and_empty_attributes() {
    let recs = vec![
        rec("1", "Zoë", "Ørsted", "", ""),
        rec("2", "Łukasz", "Groß", "CEO", ""),
    ];
    let out = run(&recs, &DirSnapshot::default(), &users());
    assert_eq!(uid_of(&out, "1"), "zorsted");
    assert_eq!(uid_of(&out, "2"), "lgross");
    let d1 = out.desired.iter().find(|d| &*d.key == "1").unwrap();
    assert_eq!(d1.attrs["cn"], vec!["Zoë Ørsted"]);
    assert!(!d1.attrs.contains_key("title"), "empty renders mean absent");
    assert!(!d1.attrs.contains_key("manager"));
}

#[test]
fn no_latin_rendering_is_a_per_record_error() {
    let recs = vec![
        rec("1", "\u{E000}", "\u{E001}", "", ""),
        rec("2", "Ann", "Lee", "", ""),
    ];
    let out = run(&recs, &DirSnapshot::default(), &users());
    assert_eq!(out.desired.len(), 1);
    assert_eq!(out.errors.len(), 1);
    assert_eq!(out.errors[0].key, "1");
    assert!(
        out.errors[0].reason.contains("no Latin rendering"),
        "{}",
        out.errors[0].reason
    );
}

#[test]
fn person_dn_resolves_managers_in_the_export() {
    let recs = vec![
        rec("1", "Ann", "Boss", "", ""),
        rec("2", "Bob", "Worker", "", "1"),
        rec("3", "Cy", "Lone", "", "99"),
    ];
    let out = run(&recs, &DirSnapshot::default(), &users());
    let d2 = out.desired.iter().find(|d| &*d.key == "2").unwrap();
    assert_eq!(
        d2.attrs["manager"],
        vec!["uid=aboss,ou=people,dc=example,dc=com"]
    );
    let d3 = out.desired.iter().find(|d| &*d.key == "3").unwrap();
    assert!(
        !d3.attrs.contains_key("manager"),
        "a manager not in the export gives no value"
    );
}

#[test]
fn initial_policy_keeps_the_existing_name() {
    let mut u = users();
    u.policy.insert("uid".into(), Policy::Initial);
    let mut dir = DirSnapshot::default();
    dir.entries.push(entry(
        "u1",
        "uid=old,ou=people,dc=example,dc=com",
        &[("uid", "old"), ("employeeNumber", "1")],
    ));
    let out = run(&[rec("1", "John", "Smith", "", "")], &dir, &u);
    assert_eq!(uid_of(&out, "1"), "old");
    assert_eq!(&*out.desired[0].dn, "uid=old,ou=people,dc=example,dc=com");
}

#[test]
fn template_check_reports_unknown_columns_and_filters() {
    let h = header();
    assert!(check_template("{{ surname }}", &h, true).is_ok());
    assert!(check_template("{{ surname }}{{ n }}", &h, true).is_ok());
    let e = check_template("{{ surnme }}", &h, true).unwrap_err();
    assert!(
        e.contains("`surnme`") && e.contains("did you mean `surname`"),
        "{e}"
    );
    let e = check_template("{{ surname | asci }}", &h, true).unwrap_err();
    assert!(e.contains("unknown filter"), "{e}");
    let e = check_template("{{ surname ", &h, true).unwrap_err();
    assert!(e.contains("syntax error"), "{e}");
}

#[test]
fn key_order_is_numeric_for_numbers() {
    let mut v = vec!["10", "9", "b", "a", "011"];
    v.sort_by(|a, b| key_order(a, b));
    assert_eq!(v, vec!["9", "10", "011", "a", "b"]);
}

#[test]
fn person_dn_keeps_pointing_at_quarantined_people() {
    let mut dir = DirSnapshot::default();
    dir.entries.push(entry(
        "u1",
        "uid=aboss,ou=people,dc=example,dc=com",
        &[("uid", "aboss"), ("employeeNumber", "1")],
    ));
    let recs = vec![rec("2", "Bob", "Worker", "", "1")];
    let rules = MatchRules::default();
    let u = users();
    let present: BTreeSet<String> = recs.iter().map(|r| r.key.clone()).collect();
    let linking = link::link(&present, &dir, &BTreeMap::new(), &u.anchor, &rules);
    assert_eq!(linking.gone.values().collect::<Vec<_>>(), vec!["1"]);
    let m = Mapper::new(&u, &header()).unwrap();
    // record 1 is simply gone: its reports lose the manager
    let out = m.map(&recs, &BTreeSet::new(), &linking, &dir, &rules);
    assert!(!out.desired[0].attrs.contains_key("manager"));
    // record 1 could not be read: its reports keep pointing at its entry
    let keep: BTreeSet<String> = ["1".to_string()].into_iter().collect();
    let out = m.map(&recs, &keep, &linking, &dir, &rules);
    assert_eq!(
        out.desired[0].attrs["manager"],
        vec!["uid=aboss,ou=people,dc=example,dc=com"]
    );
}

#[test]
fn slicing_variables_are_checked() {
    let h = header();
    let e = check_template("{{ (givne_name[:1] ~ surname) | lower }}", &h, true).unwrap_err();
    assert!(e.contains("givne_name"), "{e}");
    assert_eq!(
        template_variables("{{ (given_name[:1] ~ surname) | lower }}", &h),
        vec!["given_name".to_string(), "surname".to_string()]
    );
}

#[test]
fn trailing_n_templates_are_recognised() {
    assert_eq!(
        n_suffixed("{{ sn | lower }}{{ n }}"),
        Some("{{ sn | lower }}")
    );
    assert_eq!(n_suffixed("{{ sn }}{{n}}"), Some("{{ sn }}"));
    assert_eq!(n_suffixed("{{ sn }}{{ n -}}"), Some("{{ sn }}"));
    assert_eq!(n_suffixed("{{ sn }} {{- n }}"), None);
    assert_eq!(n_suffixed("{{ sn }}{{ n }}x"), None);
    assert_eq!(n_suffixed("{{ sn ~ n }}"), None);
    assert_eq!(n_suffixed("{{ sn }}{{ nn }}"), None);
}

/// The one-render numbering of `<prefix>{{ n }}` gives exactly what rendering every number gives:
/// 200 homonyms (in 3 spellings differing in case), numbers 2, 5 and 40 taken in the directory,
/// one existing homonym keeping its number.
#[test]
fn trailing_n_numbering_equals_rendering_each_number() {
    let mut recs = Vec::new();
    for k in 1..=200 {
        let sn = ["Smith", "SMITH", "smith"][k % 3];
        recs.push(rec(&k.to_string(), "John", sn, "Dev", ""));
    }
    let mut dir = DirSnapshot::default();
    for (u, uid) in [("x2", "jsmith2"), ("x5", "jsmith5"), ("x40", "jsmith40")] {
        let dn = format!("uid={uid},ou=other,dc=example,dc=com");
        holder(&mut dir, u, &dn, uid, None);
    }
    // person 7 exists as jsmith77 and keeps it (it still fits the template)
    holder(
        &mut dir,
        "u7",
        "uid=jsmith77,ou=people,dc=example,dc=com",
        "jsmith77",
        Some("7"),
    );
    let fast = users();
    let mut slow = users();
    // the same values, in a shape that is rendered once per number tried
    slow.attributes.insert(
        "uid".into(),
        "{{ (given_name[:1] ~ surname) | ascii | lower }}{{ n }}{{ '' }}".into(),
    );
    for u in [&fast, &slow] {
        assert_eq!(
            Mapper::new(u, &header()).unwrap().suffix_n.contains("uid"),
            std::ptr::eq(u, &fast)
        );
    }
    let a = run(&recs, &dir, &fast);
    let b = run(&recs, &dir, &slow);
    assert!(a.errors.is_empty(), "{:?}", a.errors);
    let uids = |o: &MapOutput| -> Vec<(String, String)> {
        o.desired
            .iter()
            .map(|d| (d.key.to_string(), d.attrs["uid"][0].clone()))
            .collect()
    };
    assert_eq!(uids(&a), uids(&b));
    assert_eq!(uid_of(&a, "1"), "jsmith");
    assert_eq!(uid_of(&a, "2"), "jsmith3");
    assert_eq!(uid_of(&a, "4"), "jsmith6");
    assert!(uids(&a).iter().all(|(_, u)| u != "jsmith40"));
}

#[test]
fn trailing_n_keeps_an_existing_holders_number() {
    let recs: Vec<Record> = (1..=9)
        .map(|k| rec(&k.to_string(), "John", "Smith", "Dev", ""))
        .collect();
    let mut dir = DirSnapshot::default();
    holder(
        &mut dir,
        "u7",
        "uid=jsmith77,ou=people,dc=example,dc=com",
        "jsmith77",
        Some("7"),
    );
    let out = run(&recs, &dir, &users());
    assert_eq!(uid_of(&out, "7"), "jsmith77");
    assert_eq!(uid_of(&out, "8"), "jsmith7");
}

#[test]
fn a_kept_link_wins_over_another_keys_anchor() {
    // Key "a7" is linked to its entry; key "A7" (no link, sorted first) folds to the same anchor
    // value under caseIgnoreMatch. The linked entry stays "a7"'s: an entry is never taken by
    // another key's anchor while its own link holds, and no entry ends up linked twice.
    let mut dir = DirSnapshot::default();
    dir.entries.push(entry(
        "u1",
        "uid=a7,ou=people,dc=example,dc=com",
        &[("uid", "a7"), ("employeeNumber", "a7")],
    ));
    dir.entries.push(entry(
        "u2",
        "uid=b8,ou=people,dc=example,dc=com",
        &[("uid", "b8"), ("employeeNumber", "b8")],
    ));
    let rules = MatchRules::default();
    let u = users();
    let present: BTreeSet<String> = ["A7", "a7", "b8"].iter().map(|s| s.to_string()).collect();
    let links: BTreeMap<String, String> =
        [("a7".to_string(), "u1".to_string())].into_iter().collect();
    let linking = link::link(&present, &dir, &links, &u.anchor, &rules);
    assert_eq!(linking.by_key.get("a7").map(String::as_str), Some("u1"));
    assert_eq!(linking.by_key.get("A7"), None);
    // the unlinked key with an anchored entry of its own is linked by the anchor, and said so
    assert_eq!(linking.by_key.get("b8").map(String::as_str), Some("u2"));
    assert_eq!(linking.relinked.len(), 1);
    assert_eq!(linking.relinked[0].key, "b8");
    assert!(linking.conflicts.is_empty());
    assert!(linking.gone.is_empty());
}

#[test]
fn many_settled_people_are_made_beside_the_mapped_and_merged_in_key_order() {
    // past crate::TWO_THREADS_FROM settled people (even keys, handed over in reverse), and three
    // mapped ones before, between and after them; a manager among the settled
    let n = crate::TWO_THREADS_FROM + 10;
    let key = |i: usize| format!("{}", 1000 + 2 * i);
    let recs: Vec<Record> = (0..n)
        .map(|i| rec(&key(i), "Ann", "Lee", "t", ""))
        .collect();
    let dir = DirSnapshot {
        entries: recs
            .iter()
            .map(|r| {
                let uid = format!("x{}", r.key);
                let dn = format!("uid={uid},ou=people,dc=example,dc=com");
                entry(
                    &format!("u{}", r.key),
                    &dn,
                    &[("uid", &uid), ("employeeNumber", &r.key)],
                )
            })
            .collect(),
        ..Default::default()
    };
    let settled: Vec<(&Record, &Entry)> = recs.iter().zip(&dir.entries).rev().collect();
    let fresh = [
        rec("999", "Bo", "Day", "t", ""),
        rec("1003", "Cy", "Fox", "t", "1002"),
        rec("99999", "Di", "Gray", "t", ""),
    ];
    let fresh: Vec<&Record> = fresh.iter().collect();
    let rules = MatchRules::default();
    let u = users();
    let m = Mapper::new(&u, &header()).unwrap();
    let present: BTreeSet<String> = recs
        .iter()
        .chain(fresh.iter().copied())
        .map(|r| r.key.clone())
        .collect();
    let linking = link::link(&present, &dir, &BTreeMap::new(), &u.anchor, &rules);
    let out = m.map_with(
        &fresh,
        &BTreeSet::new(),
        &linking,
        &dir,
        &dir.uuid_index(),
        &rules,
        &BTreeMap::new(),
        &settled,
    );
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let keys: Vec<&str> = out.desired.iter().map(|d| &*d.key).collect();
    assert_eq!(keys.len(), n + 3);
    assert!(keys.windows(2).all(|w| key_order(w[0], w[1]).is_lt()));
    assert_eq!(&keys[..4], ["999", "1000", "1002", "1003"]);
    assert_eq!(keys[n + 2], "99999");
    let d = |k: &str| out.desired.iter().find(|d| &*d.key == k).unwrap();
    assert!(!d("1003").settled && d("1002").settled);
    assert_eq!(&*d("1002").dn, "uid=x1002,ou=people,dc=example,dc=com");
    assert_eq!(d("1002").attrs["uid"], vec!["x1002"]);
    assert_eq!(d("1002").uuid.as_deref(), Some("u1002"));
    // the mapped person's manager is found among the settled people
    assert_eq!(
        d("1003").attrs["manager"],
        vec!["uid=x1002,ou=people,dc=example,dc=com"]
    );
}

#[test]
fn a_crowded_base_takes_the_first_number_no_one_else_holds() {
    // jsmith, jsmith2 … jsmith40 are held by others but for jsmith17; an existing person whose
    // surname became Smith holds jsmith25 already (their own value does not block them)
    let mut dir = DirSnapshot::default();
    for n in (1..=40).filter(|&n| n != 17) {
        let uid = if n == 1 {
            "jsmith".to_string()
        } else {
            format!("jsmith{n}")
        };
        let key = (n == 25).then_some("7");
        let dn = format!("uid={uid},ou=people,dc=example,dc=com");
        holder(&mut dir, &format!("u{n}"), &dn, &uid, key);
    }
    let recs = vec![
        rec("5", "John", "Smith", "", ""),
        rec("6", "Jane", "Smith", "", ""),
        rec("7", "Jim", "Smith", "", ""),
        rec("8", "Joe", "Smith", "", ""),
    ];
    let out = run(&recs, &dir, &users());
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(uid_of(&out, "7"), "jsmith25");
    // new people in key order: the gap first, then after the last number given
    assert_eq!(uid_of(&out, "5"), "jsmith17");
    assert_eq!(uid_of(&out, "6"), "jsmith41");
    assert_eq!(uid_of(&out, "8"), "jsmith42");
}

#[test]
fn a_template_that_is_one_column_is_that_column() {
    assert_eq!(plain_field("{{ title }}"), Some("title"));
    assert_eq!(plain_field("{{title}}"), Some("title"));
    assert_eq!(plain_field("{{ _x9 }}"), Some("_x9"));
    for not in [
        " {{ title }}",
        "{{ title }} ",
        "{{- title }}",
        "{{ title -}}",
        "{{ title | lower }}",
        "{{ title }}{{ n }}",
        "{{ n }}",
        "{{ none }}",
        "{{ 9x }}",
        "{{ a.b }}",
        "Dr {{ title }}",
    ] {
        assert_eq!(plain_field(not), None, "{not}");
    }
}

#[test]
fn a_column_read_as_it_is_gives_what_rendering_it_gives() {
    // the same columns through `{{ col }}` (read as they are) and `{{ col ~ '' }}` (rendered)
    let with = |wrap: bool| {
        let mut u = users();
        for (attr, col) in [
            ("title", "title"),
            ("sn", "surname"),
            ("givenName", "given_name"),
        ] {
            let src = if wrap {
                format!("{{{{ {col} ~ '' }}}}")
            } else {
                format!("{{{{ {col} }}}}")
            };
            u.attributes.insert(attr.into(), src);
        }
        u
    };
    let recs = vec![
        rec("1", "José", "Núñez", "  Head of  Things ", ""),
        rec("2", "Ann", "O'Neil", "", ""),
        rec("3", "Bo", "<b>&amp;", "{{ x }}", ""),
    ];
    let plain = run(&recs, &DirSnapshot::default(), &with(false));
    let rendered = run(&recs, &DirSnapshot::default(), &with(true));
    assert!(plain.errors.is_empty(), "{:?}", plain.errors);
    assert_eq!(Mapper::new(&with(false), &header()).unwrap().plain.len(), 3);
    assert!(Mapper::new(&with(true), &header())
        .unwrap()
        .plain
        .is_empty());
    let attrs = |o: &MapOutput| -> Vec<String> {
        o.desired.iter().map(|d| format!("{:?}", d.attrs)).collect()
    };
    assert_eq!(attrs(&plain), attrs(&rendered));
    // an empty field leaves the attribute out either way
    let two = plain.desired.iter().find(|d| &*d.key == "2").unwrap();
    assert!(!two.attrs.contains_key("title"));
}

#[test]
fn a_template_split_around_n_gives_what_rendering_it_whole_gives() {
    assert_eq!(
        n_split("{{ a | lower }}.{{ b }}{{ n }}@x.org"),
        Some(("{{ a | lower }}.{{ b }}", "@x.org"))
    );
    assert_eq!(n_split("{{n}}-{{ a }}"), Some(("", "-{{ a }}")));
    for not in [
        "{{ a }}{{ n }}{{ n }}",
        "{{ a }}{{ n ~ '' }}@x",
        "{% if a %}{{ a }}{% endif %}{{ n }}@x",
        "{{ a }}{{- n }}@x",
        "{{ a -}}{{ n }}@x",
        "{{ a }}\n{{ n }}@x",
        "{{ a }}",
    ] {
        assert_eq!(n_split(not), None, "{not}");
    }
    // mail numbered with `n` before the domain: split (P and S rendered once a person) and whole
    // (`n ~ ''` is not split: one render a number tried) give the same values
    let with = |n: &str| {
        let mut u = users();
        u.attributes.insert(
            "mail".into(),
            format!("{{{{ given_name | lower }}}}.{{{{ surname | lower }}}}{n}@example.com"),
        );
        u.unique.insert("mail".into());
        u
    };
    let (split, whole) = (with("{{ n }}"), with("{{ n ~ '' }}"));
    assert!(Mapper::new(&split, &header())
        .unwrap()
        .split_n
        .contains_key("mail"));
    assert!(Mapper::new(&whole, &header()).unwrap().split_n.is_empty());
    // john.smith and john.smith2 … john.smith5 held by others, but for john.smith3; an existing
    // person (key 7) holds john.smith4 and keeps it
    let mut dir = DirSnapshot::default();
    for n in [1, 2, 4, 5] {
        let mail = if n == 1 {
            "john.smith@example.com".to_string()
        } else {
            format!("john.smith{n}@example.com")
        };
        let uuid = format!("m{n}");
        let mut attrs = vec![("mail", mail.as_str())];
        if n == 4 {
            attrs.push(("employeeNumber", "7"));
        }
        dir.entries.push(entry(
            &uuid,
            &format!("uid=m{n},ou=people,dc=example,dc=com"),
            &attrs,
        ));
        dir.taken
            .entry("mail".into())
            .or_default()
            .insert(mail, vec![uuid].into());
    }
    let recs: Vec<Record> = ["5", "6", "7", "8", "9"]
        .iter()
        .map(|k| rec(k, "John", "Smith", "", ""))
        .collect();
    let mails = |u: &UsersConfig| -> Vec<(String, String)> {
        let out = run(&recs, &dir, u);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        out.desired
            .iter()
            .map(|d| (d.key.to_string(), d.attrs["mail"][0].clone()))
            .collect()
    };
    let got = mails(&split);
    assert_eq!(got, mails(&whole));
    let of = |k: &str| got.iter().find(|(key, _)| key == k).unwrap().1.as_str();
    assert_eq!(of("7"), "john.smith4@example.com");
    assert_eq!(of("5"), "john.smith3@example.com");
    assert_eq!(of("6"), "john.smith6@example.com");
    assert_eq!(of("9"), "john.smith8@example.com");
}

//! POSIX accounts (pure): uidNumber allocation from a configured range, stable across runs (the
//! mirror keeps every number ever given, so none is reused), gidNumber, home and shell.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{GidPolicy, PosixConfig};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    /// HR key → uidNumber, for everyone asked about.
    pub numbers: BTreeMap<String, u32>,
    /// Numbers given (or adopted from the directory) in this run: to keep in the mirror.
    pub new: BTreeMap<String, u32>,
    /// Keys that could not get a number (the range is exhausted).
    pub exhausted: Vec<String>,
}

/// `people`: HR keys in allocation order, each with the uidNumber its entry already has.
/// `known`: every number the mirror ever gave (key → number). `used`: numbers held in the directory.
pub fn allocate(
    cfg: &PosixConfig,
    people: &[(String, Option<u32>)],
    known: &BTreeMap<String, u32>,
    used: &BTreeSet<u32>,
) -> Allocation {
    let mut out = Allocation::default();
    let mut taken: BTreeSet<u32> = known.values().copied().collect();
    taken.extend(used.iter().copied());
    let mut cursor = cfg.uid_first;
    for (key, current) in people {
        let n = match (current, known.get(key)) {
            (Some(c), k) => {
                if k != Some(c) {
                    out.new.insert(key.clone(), *c);
                }
                *c
            }
            (None, Some(k)) => *k,
            (None, None) => {
                while cursor <= cfg.uid_last && taken.contains(&cursor) {
                    cursor += 1;
                }
                if cursor > cfg.uid_last {
                    out.exhausted.push(key.clone());
                    continue;
                }
                taken.insert(cursor);
                out.new.insert(key.clone(), cursor);
                cursor
            }
        };
        out.numbers.insert(key.clone(), n);
    }
    out
}

pub fn gid(cfg: &PosixConfig, uid_number: u32) -> u32 {
    match cfg.gid {
        GidPolicy::Fixed(g) => g,
        GidPolicy::SameAsUid => uid_number,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PosixConfig {
        PosixConfig {
            uid_first: 10000,
            uid_last: 10004,
            gid: GidPolicy::Fixed(100),
            home_directory: String::new(),
            login_shell: None,
        }
    }

    #[test]
    fn numbers_are_stable_and_never_reused() {
        let c = cfg();
        let people = |keys: &[&str]| {
            keys.iter()
                .map(|k| (k.to_string(), None))
                .collect::<Vec<_>>()
        };
        // 10001 is held by a hand-made account in the directory
        let used: BTreeSet<u32> = [10001].into_iter().collect();
        let a = allocate(&c, &people(&["a", "b", "c"]), &BTreeMap::new(), &used);
        assert_eq!(
            a.numbers,
            [
                ("a".into(), 10000),
                ("b".into(), 10002),
                ("c".into(), 10003)
            ]
            .into_iter()
            .collect()
        );
        // b left (its number stays known), d joins: d never gets 10002
        let known = a.numbers.clone();
        let a2 = allocate(&c, &people(&["a", "c", "d"]), &known, &used);
        assert_eq!(a2.numbers["d"], 10004);
        assert_eq!(a2.numbers["a"], 10000);
        // the range is exhausted now
        let mut known2 = known.clone();
        known2.extend(a2.new.clone());
        let a3 = allocate(&c, &people(&["e"]), &known2, &used);
        assert_eq!(a3.exhausted, vec!["e".to_string()]);
        // an entry that already has a number keeps it
        let a4 = allocate(&c, &[("x".into(), Some(20000))], &BTreeMap::new(), &used);
        assert_eq!(a4.numbers["x"], 20000);
        assert_eq!(a4.new["x"], 20000);
        assert_eq!(gid(&c, 10000), 100);
    }
}

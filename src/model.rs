//! The data the pure core works on: directory entries, snapshots, matching rules.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::dn;

/// A 64-bit digest of what a mirror's row holds (and of what a settled person depends on), to
/// tell changed rows without reading the old ones back or serialising unchanged ones (kept as 16
/// hex digits). Pure, so the core computes it too (`Entry::digest`). foldhash with a fixed seed:
/// several times faster than SipHash on the many short strings of a row, and the same in every run
/// of one build (another build may digest differently: its first run then rewrites the rows once).
pub fn digest(v: &impl std::hash::Hash) -> u64 {
    use std::hash::BuildHasher;
    const SEED: u64 = 0x6469_7262_7269_6467; // "dirbridg"
    foldhash::quality::FixedState::with_seed(SEED).hash_one(v)
}

/// One directory entry as read (attribute names lower-cased).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The immutable id (entryUUID on OpenLDAP).
    pub uuid: String,
    pub dn: String,
    pub attrs: crate::names::NameMap<crate::names::Values>,
    /// The digest of its DN and attributes ([`Entry::digest`]), once known: the mirror's rows
    /// carry it, so that an entry read back from them is not digested again.
    #[serde(skip)]
    pub(crate) digest: Digest,
}

/// A digest, once computed or known; not part of what an entry is (two entries equal in
/// content are equal whether or not either knows its digest).
#[derive(Clone, Debug, Default)]
pub(crate) struct Digest(std::sync::OnceLock<u64>);

impl Digest {
    /// A digest known beforehand (the mirror's row kept it).
    pub(crate) fn known(d: u64) -> Digest {
        Digest(std::sync::OnceLock::from(d))
    }

    /// The digest, if computed or known yet.
    #[cfg(test)]
    pub(crate) fn get(&self) -> Option<u64> {
        self.0.get().copied()
    }
}

impl PartialEq for Digest {
    fn eq(&self, _: &Digest) -> bool {
        true
    }
}

impl Eq for Digest {}

impl Entry {
    /// An entry of these values (its digest computed when first asked).
    pub fn new(
        uuid: String,
        dn: String,
        attrs: crate::names::NameMap<crate::names::Values>,
    ) -> Entry {
        Entry {
            uuid,
            dn,
            attrs,
            digest: Digest::default(),
        }
    }

    /// Forget the digest, after changing the entry's DN or attributes (a reader completing what
    /// it read, a test). Code that changes them without this leaves a digest of the old values:
    /// the changed entry would look unchanged to the settled people's check and to the mirror's
    /// row comparison.
    pub fn changed(&mut self) {
        self.digest = Digest::default();
    }

    /// A 64-bit digest of the entry's DN and attributes (the mirror's row digest): computed once,
    /// or taken from the mirror's row the entry was read from. Entries are not changed once built
    /// (see [`Entry::changed`] for those that are), so the digest stays their own.
    pub fn digest(&self) -> u64 {
        *self
            .digest
            .0
            .get_or_init(|| digest(&(&self.dn, &self.attrs)))
    }

    pub fn get(&self, attr: &str) -> &[String] {
        // names are kept lower-case; most callers already ask in lower case (no allocation)
        let found = if attr.bytes().any(|b| b.is_ascii_uppercase()) {
            self.attrs.get(&attr.to_ascii_lowercase())
        } else {
            self.attrs.get(attr)
        };
        found.map(|v| &**v).unwrap_or(&[])
    }
}

/// What the directory holds: entries under `users.base`, and the values of unique attributes
/// anywhere under `base-dn`.
#[derive(Clone, Debug, Default)]
pub struct DirSnapshot {
    pub entries: Vec<Entry>,
    /// lower-cased attribute → folded value → the uuids of the entries holding it.
    pub taken: HashMap<String, Holders>,
    /// Managed groups (entries under the groups' parents).
    pub groups: Vec<Entry>,
    /// Normalised DNs of configured bases (placement, group parents) that do not exist.
    pub missing_bases: std::collections::BTreeSet<String>,
}

/// entryUUID → the entry's index in [`DirSnapshot::entries`]. Built once per run and lent to
/// the linking, the settled people, the mapping and the plan (each built its own: 7 ms apiece
/// at 100,000 entries, and the mapping's walked all of them for the few it looks up).
///
/// The table holds only each entry's index (4 bytes a slot), and a lookup compares the uuid of
/// the entry it points at: a map of `&str` → `usize` took 24 bytes a slot, 50 MB at 1,000,000
/// entries, alive through the mapping, where the planner's memory peaks.
pub struct UuidIndex<'a> {
    entries: &'a [Entry],
    table: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

impl UuidIndex<'_> {
    /// The index of the entry with this entryUUID (of the last one, were two to have it).
    pub fn get(&self, uuid: &str) -> Option<usize> {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(uuid);
        self.table
            .find(h, |&i| self.entries[i as usize].uuid == uuid)
            .map(|&i| i as usize)
    }
}

impl DirSnapshot {
    /// entryUUID → the entry's index in `entries`.
    pub fn uuid_index(&self) -> UuidIndex<'_> {
        use std::hash::BuildHasher;
        let entries = self.entries.as_slice();
        let hasher = foldhash::fast::RandomState::default();
        let mut table = hashbrown::HashTable::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            // (a directory of more than 2^32 entries is not one this runs on)
            let i = i as u32;
            let h = hasher.hash_one(e.uuid.as_str());
            match table.entry(
                h,
                |&j: &u32| entries[j as usize].uuid == e.uuid,
                |&j: &u32| hasher.hash_one(entries[j as usize].uuid.as_str()),
            ) {
                hashbrown::hash_table::Entry::Occupied(mut o) => *o.get_mut() = i,
                hashbrown::hash_table::Entry::Vacant(v) => {
                    v.insert(i);
                }
            }
        }
        UuidIndex {
            entries,
            table,
            hasher,
        }
    }
}

/// Folded value → the uuids of the entries holding it, for one unique attribute: a list in value
/// order, looked up by bisection. A hash map holds the same in twice the memory once its table
/// has doubled past seven eighths full (at 1,000,000 values, 100 MB where this takes 48).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holders(Vec<(String, crate::names::Values)>);

impl Holders {
    fn find(&self, value: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(v, _)| v.as_str().cmp(value))
    }

    pub fn get(&self, value: &str) -> Option<&crate::names::Values> {
        self.find(value).ok().map(|i| &self.0[i].1)
    }

    /// Replace the holders of `value` (one value at a time: a whole list is collected instead).
    pub fn insert(&mut self, value: String, holders: crate::names::Values) {
        match self.find(&value) {
            Ok(i) => self.0[i].1 = holders,
            Err(i) => self.0.insert(i, (value, holders)),
        }
    }

    /// The values that are `base` followed by a digit (`base2`, `base17`, also `base1x`): one run
    /// of the list, from `base0` up to `base:` (the character after `9`).
    pub fn numbered(&self, base: &str) -> &[(String, crate::names::Values)] {
        let (from, to) = (format!("{base}0"), format!("{base}:"));
        let lo = self.0.partition_point(|(v, _)| *v < from);
        let hi = self.0.partition_point(|(v, _)| *v < to);
        &self.0[lo..hi]
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut crate::names::Values) -> bool) {
        self.0.retain_mut(|(v, us)| keep(v, us));
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(v, _)| v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a Holders {
    type Item = (&'a String, &'a crate::names::Values);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, crate::names::Values)>,
        fn(&'a (String, crate::names::Values)) -> (&'a String, &'a crate::names::Values),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(v, us)| (v, us))
    }
}

impl IntoIterator for Holders {
    type Item = (String, crate::names::Values);
    type IntoIter = std::vec::IntoIter<(String, crate::names::Values)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// From (value, holders) in any order; the holders of a value listed twice are put together.
impl FromIterator<(String, crate::names::Values)> for Holders {
    fn from_iter<I: IntoIterator<Item = (String, crate::names::Values)>>(it: I) -> Holders {
        let mut all: Vec<(String, crate::names::Values)> = it.into_iter().collect();
        all.sort_by(|a, b| a.0.cmp(&b.0)); // stable: a value's holders keep their order
        let mut out: Vec<(String, crate::names::Values)> = Vec::with_capacity(all.len());
        for (v, us) in all {
            match out.last_mut() {
                Some((last, held)) if *last == v => held.extend(us),
                _ => out.push((v, us)),
            }
        }
        out.shrink_to_fit();
        Holders(out)
    }
}

impl<'de> Deserialize<'de> for Holders {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Holders, D::Error> {
        let m: HashMap<String, crate::names::Values> = HashMap::deserialize(d)?;
        Ok(m.into_iter().collect())
    }
}

/// The equality matching rule of an attribute, as far as comparing values needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    CaseIgnore,
    CaseExact,
    Dn,
    Telephone,
    Numeric,
    Octet,
}

/// attribute (lower-case) → rule. Built from the server's schema; `default()` knows the usual
/// inetOrgPerson attributes for offline use and tests.
#[derive(Clone, Debug)]
pub struct MatchRules {
    rules: HashMap<String, Rule>,
}

impl Default for MatchRules {
    fn default() -> Self {
        let mut rules = HashMap::new();
        for a in [
            "manager",
            "member",
            "uniquemember",
            "owner",
            "seealso",
            "secretary",
            "roleoccupant",
        ] {
            rules.insert(a.to_string(), Rule::Dn);
        }
        for a in [
            "telephonenumber",
            "mobile",
            "facsimiletelephonenumber",
            "homephone",
            "pager",
        ] {
            rules.insert(a.to_string(), Rule::Telephone);
        }
        for a in ["uidnumber", "gidnumber"] {
            rules.insert(a.to_string(), Rule::Numeric);
        }
        rules.insert("userpassword".to_string(), Rule::Octet);
        for a in ["homedirectory", "loginshell", "memberuid"] {
            rules.insert(a.to_string(), Rule::CaseExact);
        }
        MatchRules { rules }
    }
}

impl MatchRules {
    pub fn from_map(rules: HashMap<String, Rule>) -> Self {
        MatchRules { rules }
    }

    pub fn rule(&self, attr: &str) -> Rule {
        // Attribute names are short ASCII: lower-case them on the stack (this runs for every value
        // compared).
        let mut buf = [0u8; 64];
        let key = if attr.len() <= buf.len() && attr.is_ascii() {
            for (d, c) in buf.iter_mut().zip(attr.bytes()) {
                *d = c.to_ascii_lowercase();
            }
            std::str::from_utf8(&buf[..attr.len()]).ok()
        } else {
            None
        };
        match key {
            Some(k) => self.rules.get(k),
            None => self.rules.get(&attr.to_ascii_lowercase()),
        }
        .copied()
        .unwrap_or(Rule::CaseIgnore)
    }

    /// The comparison form of a value.
    pub fn fold(&self, attr: &str, v: &str) -> String {
        match self.rule(attr) {
            Rule::CaseIgnore => dn::fold_case_ignore(v),
            Rule::CaseExact => dn::collapse_spaces(v),
            Rule::Dn => dn::normalize(v),
            Rule::Telephone => v
                .chars()
                .filter(|c| *c != ' ' && *c != '-')
                .collect::<String>()
                .to_lowercase(),
            Rule::Numeric => v.chars().filter(|c| !c.is_whitespace()).collect(),
            Rule::Octet => v.to_string(),
        }
    }

    /// Whether two value sets are equal under the attribute's rule.
    pub fn same_values(&self, attr: &str, a: &[String], b: &[String]) -> bool {
        // Identical values are equal under every rule; one value each needs no sets.
        if a == b {
            return true;
        }
        if let ([x], [y]) = (a, b) {
            return self.fold(attr, x) == self.fold(attr, y);
        }
        let mut x: Vec<String> = a.iter().map(|v| self.fold(attr, v)).collect();
        let mut y: Vec<String> = b.iter().map(|v| self.fold(attr, v)).collect();
        x.sort();
        x.dedup();
        y.sort();
        y.dedup();
        x == y
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uuid_index_finds_each_entry_and_the_last_of_a_repeated_uuid() {
        let e = |u: &str| Entry::new(u.to_string(), format!("uid={u},dc=x"), Default::default());
        let dir = DirSnapshot {
            entries: (0..5000)
                .map(|i| e(&format!("uuid-{i}")))
                .chain([e("uuid-7")])
                .collect(),
            ..Default::default()
        };
        let index = dir.uuid_index();
        assert_eq!(index.get("uuid-0"), Some(0));
        assert_eq!(index.get("uuid-4999"), Some(4999));
        assert_eq!(index.get("uuid-7"), Some(5000));
        assert_eq!(index.get("uuid-5000"), None);
        assert_eq!(index.get(""), None);
        assert!((0..5000)
            .filter(|&i| i != 7)
            .all(|i| index.get(&format!("uuid-{i}")) == Some(i)));
    }

    #[test]
    fn the_numbered_values_of_a_base_are_those_it_is_followed_by_a_digit_in() {
        let h: Holders = [
            "jsmith", "jsmith2", "jsmith17", "jsmith1x", "jsmith-a", "jsmitha", "jsmith:",
            "jsmit9", "jsmiti", "ksmith2",
        ]
        .into_iter()
        .map(|v| (v.to_string(), crate::names::Values::from("u".to_string())))
        .collect();
        let got: Vec<&str> = h
            .numbered("jsmith")
            .iter()
            .map(|(v, _)| v.as_str())
            .collect();
        assert_eq!(got, ["jsmith17", "jsmith1x", "jsmith2"]);
        assert!(h.numbered("nobody").is_empty());
        assert!(Holders::default().numbered("jsmith").is_empty());
    }

    #[test]
    fn holders_are_kept_in_value_order_and_a_value_listed_twice_keeps_both() {
        let one = |u: &str| crate::names::Values::from(u.to_string());
        let mut h: Holders = [("b", "u1"), ("a", "u2"), ("b", "u3"), ("c", "u4")]
            .into_iter()
            .map(|(v, u)| (v.to_string(), one(u)))
            .collect();
        assert_eq!(
            h.keys().map(String::as_str).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(&h.get("b").unwrap()[..], ["u1", "u3"]);
        assert_eq!(h.get("d"), None);
        h.insert("aa".into(), one("u5"));
        h.insert("c".into(), one("u6"));
        assert_eq!(
            h.keys().map(String::as_str).collect::<Vec<_>>(),
            ["a", "aa", "b", "c"]
        );
        assert_eq!(&h.get("c").unwrap()[..], ["u6"]);
        h.retain(|_, us| !us.contains(&"u2".to_string()));
        assert_eq!(h.len(), 3);
        assert_eq!(h.get("a"), None);
        let back: Holders = serde_json::from_str(r#"{"x": ["u7"], "w": ["u8", "u9"]}"#).unwrap();
        assert_eq!(
            back.keys().map(String::as_str).collect::<Vec<_>>(),
            ["w", "x"]
        );
    }
    #[test]
    fn folding() {
        let r = MatchRules::default();
        assert!(r.same_values("cn", &["John  Doe ".into()], &["john doe".into()]));
        assert!(r.same_values(
            "manager",
            &["UID=a, OU=People,dc=x".into()],
            &["uid=a,ou=people,dc=x".into()]
        ));
        assert!(r.same_values(
            "telephoneNumber",
            &["+49 30-1234".into()],
            &["+49301234".into()]
        ));
        assert!(!r.same_values("homeDirectory", &["/home/A".into()], &["/home/a".into()]));
    }
}

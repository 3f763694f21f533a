//! Compact maps keyed by attribute or column names.
//!
//! A directory entry, a desired entry and an HR record each hold ten or so named values, and a
//! run holds hundreds of thousands of them. As `BTreeMap<String, _>` each costs a B-tree node
//! (eleven slots, ~640 bytes) plus one allocation per name. Here a name is interned once per
//! process ([`Name`], one pointer to a leaked string: the set of attribute and column names is bounded by the
//! configuration, the schema and the export's header) and a map is one sorted vector of exactly
//! the size it needs ([`NameMap`]): about half the memory of a 100,000-person run.
//!
//! `NameMap` keeps `BTreeMap`'s iteration order (by name, byte-wise) and serialises as a map, so
//! what the mirror stores and the plan prints is unchanged.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

/// An interned name (attribute or column). Compares and orders as its text.
///
/// One pointer wide (a `&'static str` would be two): maps of names are held by the hundred
/// thousand, and the width of their keys is a tenth of a directory entry.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(&'static Text);

/// The text of a name, leaked once (what makes [`Name`] thin: a pointer to a `Box<str>`).
#[derive(PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Text(Box<str>);

type NameSet = HashMap<&'static str, &'static Text, foldhash::fast::RandomState>;

fn interned(s: &str) -> &'static Text {
    // Each thread keeps the names it has seen (a few dozen): the millions of lookups of a run
    // that loads 100,000 entries take no lock, and two threads that parse at once (the export
    // and the mirror's snapshot) do not wait for each other.
    thread_local! {
        static SEEN: std::cell::RefCell<NameSet> = Default::default();
    }
    if let Some(n) = SEEN.with(|seen| seen.borrow().get(s).copied()) {
        return n;
    }
    static NAMES: OnceLock<Mutex<NameSet>> = OnceLock::new();
    let set = NAMES.get_or_init(Default::default);
    // A poisoned lock still holds a valid set (inserts are atomic from its point of view).
    let mut set = set.lock().unwrap_or_else(|p| p.into_inner());
    let n = match set.get(s) {
        Some(n) => *n,
        None => {
            let leaked: &'static Text = Box::leak(Box::new(Text(s.into())));
            set.insert(&leaked.0, leaked);
            leaked
        }
    };
    drop(set);
    SEEN.with(|seen| seen.borrow_mut().insert(&n.0, n));
    n
}

impl Name {
    pub fn new(s: &str) -> Name {
        Name(interned(s))
    }

    pub fn as_str(&self) -> &'static str {
        &self.0 .0
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        Name::new(s)
    }
}

impl From<&String> for Name {
    fn from(s: &String) -> Name {
        Name::new(s)
    }
}

impl From<String> for Name {
    fn from(s: String) -> Name {
        Name::new(&s)
    }
}

impl From<&Name> for Name {
    fn from(n: &Name) -> Name {
        *n
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.as_str().to_owned()
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Name, E> {
                Ok(Name::new(v))
            }
        }
        d.deserialize_str(V)
    }
}

/// A map from names to values, sorted by name, stored as one boxed slice of exactly its size
/// (a vector's capacity would be one more word per map, and a million people hold millions).
/// Lookups are binary searches; inserts shift (maps here hold tens of names, not thousands).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NameMap<V> {
    items: Box<[(Name, V)]>,
}

impl<V> Default for NameMap<V> {
    fn default() -> Self {
        NameMap {
            items: Box::default(),
        }
    }
}

impl<V: fmt::Debug> fmt::Debug for NameMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V> NameMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Change the items as a vector (growing by exactly what is added: boxing it again then
    /// does not reallocate).
    fn edit<R>(&mut self, f: impl FnOnce(&mut Vec<(Name, V)>) -> R) -> R {
        let mut items = std::mem::take(&mut self.items).into_vec();
        let r = f(&mut items);
        self.items = items.into_boxed_slice();
        r
    }

    fn find(&self, k: &str) -> Result<usize, usize> {
        self.items.binary_search_by(|(n, _)| n.as_str().cmp(k))
    }

    /// Where `k` is, for lookups: maps here are small, and comparing lengths first avoids most
    /// byte comparisons (a binary search compares bytes at every step).
    fn position(&self, k: &str) -> Option<usize> {
        if self.items.len() > 24 {
            return self.find(k).ok();
        }
        self.items
            .iter()
            .position(|(n, _)| n.len() == k.len() && n.as_bytes() == k.as_bytes())
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn get(&self, k: &str) -> Option<&V> {
        self.position(k).map(|i| &self.items[i].1)
    }

    pub fn get_mut(&mut self, k: &str) -> Option<&mut V> {
        match self.position(k) {
            Some(i) => Some(&mut self.items[i].1),
            None => None,
        }
    }

    pub fn contains_key(&self, k: &str) -> bool {
        self.position(k).is_some()
    }

    /// Insert or replace; returns the value replaced. The vector grows by exactly one.
    pub fn insert(&mut self, k: impl Into<Name>, v: V) -> Option<V> {
        let k = k.into();
        match self.find(k.as_str()) {
            Ok(i) => Some(std::mem::replace(&mut self.items[i].1, v)),
            Err(i) => {
                self.edit(|items| {
                    items.reserve_exact(1);
                    items.insert(i, (k, v));
                });
                None
            }
        }
    }

    pub fn remove(&mut self, k: &str) -> Option<V> {
        let i = self.find(k).ok()?;
        Some(self.edit(|items| items.remove(i).1))
    }

    /// The value under `k`, inserted first (made by `f`) when absent.
    pub fn get_or_insert_with(&mut self, k: impl Into<Name>, f: impl FnOnce() -> V) -> &mut V {
        let k = k.into();
        let i = match self.find(k.as_str()) {
            Ok(i) => i,
            Err(i) => {
                self.edit(|items| {
                    items.reserve_exact(1);
                    items.insert(i, (k, f()));
                });
                i
            }
        };
        &mut self.items[i].1
    }

    /// BTreeMap-style `entry(k).or_default()` and friends.
    pub fn entry(&mut self, k: impl Into<Name>) -> NameEntry<'_, V> {
        NameEntry {
            map: self,
            key: k.into(),
        }
    }

    pub fn iter(&self) -> Iter<'_, V> {
        Iter(self.items.iter())
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &Name> + ExactSizeIterator {
        self.items.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.items.iter().map(|(_, v)| v)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.items.iter_mut().map(|(_, v)| v)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Name, &mut V)> {
        self.items.iter_mut().map(|(k, v)| (&*k, v))
    }

    pub fn retain(&mut self, mut f: impl FnMut(&Name, &mut V) -> bool) {
        self.edit(|items| items.retain_mut(|(k, v)| f(k, v)));
    }

    /// From items already in name order, each name once (e.g. a CSV row whose columns were put
    /// in name order once for the whole file).
    pub(crate) fn from_sorted(items: Vec<(Name, V)>) -> Self {
        debug_assert!(items.windows(2).all(|w| w[0].0 < w[1].0));
        NameMap {
            items: items.into_boxed_slice(),
        }
    }

    /// From pairs in any order; a later pair replaces an earlier one with the same name.
    fn from_pairs(mut items: Vec<(Name, V)>) -> Self {
        // Pairs already in name order (what dirbridge wrote, as the mirror's snapshot decodes
        // 100,000 entries per run) are kept as they are, not sorted and copied again.
        if items.windows(2).all(|w| w[0].0 < w[1].0) {
            return NameMap {
                items: items.into_boxed_slice(),
            };
        }
        // stable: equal names keep their input order, so the last one wins below
        items.sort_by_key(|a| a.0);
        let mut out: Vec<(Name, V)> = Vec::with_capacity(items.len());
        for (k, v) in items {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        NameMap {
            items: out.into_boxed_slice(),
        }
    }
}

pub struct NameEntry<'a, V> {
    map: &'a mut NameMap<V>,
    key: Name,
}

impl<'a, V> NameEntry<'a, V> {
    pub fn or_insert_with(self, f: impl FnOnce() -> V) -> &'a mut V {
        self.map.get_or_insert_with(self.key, f)
    }

    pub fn or_insert(self, v: V) -> &'a mut V {
        self.map.get_or_insert_with(self.key, || v)
    }

    pub fn or_default(self) -> &'a mut V
    where
        V: Default,
    {
        self.map.get_or_insert_with(self.key, V::default)
    }
}

pub struct Iter<'a, V>(std::slice::Iter<'a, (Name, V)>);

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a Name, &'a V);
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(k, v)| (k, v))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl<V> DoubleEndedIterator for Iter<'_, V> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back().map(|(k, v)| (k, v))
    }
}

impl<V> ExactSizeIterator for Iter<'_, V> {}

impl<'a, V> IntoIterator for &'a NameMap<V> {
    type Item = (&'a Name, &'a V);
    type IntoIter = Iter<'a, V>;
    fn into_iter(self) -> Iter<'a, V> {
        self.iter()
    }
}

impl<V> IntoIterator for NameMap<V> {
    type Item = (Name, V);
    type IntoIter = std::vec::IntoIter<(Name, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.into_vec().into_iter()
    }
}

impl<K: Into<Name>, V, W: Into<V>> FromIterator<(K, W)> for NameMap<V> {
    fn from_iter<I: IntoIterator<Item = (K, W)>>(iter: I) -> Self {
        Self::from_pairs(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl<K: Into<Name>, V> Extend<(K, V)> for NameMap<V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<K: Into<Name>, V, W: Into<V>, const N: usize> From<[(K, W); N]> for NameMap<V> {
    fn from(a: [(K, W); N]) -> Self {
        a.into_iter().collect()
    }
}

impl<V> From<std::collections::BTreeMap<String, V>> for NameMap<V> {
    fn from(m: std::collections::BTreeMap<String, V>) -> Self {
        // already sorted and unique
        NameMap {
            items: m.into_iter().map(|(k, v)| (Name::new(&k), v)).collect(),
        }
    }
}

impl<V> std::ops::Index<&str> for NameMap<V> {
    type Output = V;
    #[allow(clippy::panic)]
    fn index(&self, k: &str) -> &V {
        match self.get(k) {
            Some(v) => v,
            None => panic!("no value named {k:?}"),
        }
    }
}

impl<V: Serialize> Serialize for NameMap<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for NameMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Vis<V> {
            type Value = NameMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                // (JSON gives no size: room for a directory entry's usual dozen or so names,
                // not a list grown four times over)
                let mut items = Vec::with_capacity(a.size_hint().unwrap_or(16).min(256));
                while let Some((k, v)) = a.next_entry::<Name, V>()? {
                    items.push((k, v));
                }
                Ok(NameMap::from_pairs(items))
            }
        }
        d.deserialize_map(Vis(std::marker::PhantomData))
    }
}

/// The values of one attribute, read as a `[String]`. Most attributes hold one value, which is
/// held inline (no list to allocate: a directory entry's ten single values would otherwise be
/// ten more allocations); several are one boxed slice of exactly their number.
#[derive(Clone)]
pub struct Values(Repr);

#[derive(Clone)]
enum Repr {
    One(String),
    Many(Box<[String]>),
}

impl Values {
    pub fn new() -> Values {
        Values(Repr::Many(Box::default()))
    }

    /// The values as a list (no copy).
    pub fn into_vec(self) -> Vec<String> {
        match self.0 {
            Repr::One(v) => vec![v],
            Repr::Many(b) => b.into_vec(),
        }
    }

    /// Change the values as a list (then held inline again if one is left).
    fn edit(&mut self, f: impl FnOnce(&mut Vec<String>)) {
        let mut all = std::mem::take(self).into_vec();
        f(&mut all);
        *self = Values::from(all);
    }

    /// Add a value at the end.
    pub fn push(&mut self, v: String) {
        self.edit(|all| all.push(v));
    }

    /// Keep the values for which `f` holds.
    pub fn retain(&mut self, f: impl FnMut(&String) -> bool) {
        self.edit(|all| all.retain(f));
    }
}

impl Default for Values {
    fn default() -> Values {
        Values::new()
    }
}

impl std::ops::Deref for Values {
    type Target = [String];
    fn deref(&self) -> &[String] {
        match &self.0 {
            Repr::One(v) => std::slice::from_ref(v),
            Repr::Many(b) => b,
        }
    }
}

impl std::ops::DerefMut for Values {
    fn deref_mut(&mut self) -> &mut [String] {
        match &mut self.0 {
            Repr::One(v) => std::slice::from_mut(v),
            Repr::Many(b) => b,
        }
    }
}

impl From<Vec<String>> for Values {
    fn from(mut v: Vec<String>) -> Values {
        if v.len() == 1 {
            if let Some(one) = v.pop() {
                return Values(Repr::One(one));
            }
        }
        Values(Repr::Many(v.into_boxed_slice()))
    }
}

impl From<String> for Values {
    fn from(v: String) -> Values {
        Values(Repr::One(v))
    }
}

impl From<Values> for Vec<String> {
    fn from(v: Values) -> Vec<String> {
        v.into_vec()
    }
}

impl FromIterator<String> for Values {
    fn from_iter<I: IntoIterator<Item = String>>(iter: I) -> Values {
        Values::from(iter.into_iter().collect::<Vec<_>>())
    }
}

impl Extend<String> for Values {
    fn extend<I: IntoIterator<Item = String>>(&mut self, iter: I) {
        self.edit(|all| all.extend(iter));
    }
}

impl IntoIterator for Values {
    type Item = String;
    type IntoIter = std::vec::IntoIter<String>;
    fn into_iter(self) -> Self::IntoIter {
        self.into_vec().into_iter()
    }
}

impl<'a> IntoIterator for &'a Values {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl PartialEq for Values {
    fn eq(&self, other: &Values) -> bool {
        **self == **other
    }
}

impl Eq for Values {}

impl<T> PartialEq<Vec<T>> for Values
where
    String: PartialEq<T>,
{
    fn eq(&self, other: &Vec<T>) -> bool {
        **self == **other
    }
}

impl std::hash::Hash for Values {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (**self).hash(h)
    }
}

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl Serialize for Values {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Values {
    /// A list of one value is read into its inline slot, with no list allocated on the way (a
    /// `Vec<String>` first was one more allocation per attribute of every entry decoded).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Values, D::Error> {
        struct Vis;
        impl<'de> serde::de::Visitor<'de> for Vis {
            type Value = Values;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of strings")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Values, A::Error> {
                let Some(first) = a.next_element::<String>()? else {
                    return Ok(Values::new());
                };
                let Some(second) = a.next_element::<String>()? else {
                    return Ok(Values(Repr::One(first)));
                };
                let mut all = Vec::with_capacity(a.size_hint().unwrap_or(2).saturating_add(2));
                all.push(first);
                all.push(second);
                while let Some(v) = a.next_element::<String>()? {
                    all.push(v);
                }
                Ok(Values(Repr::Many(all.into_boxed_slice())))
            }
        }
        d.deserialize_seq(Vis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_gives_one_name_per_text() {
        let a = Name::new("telephoneNumber");
        let b = Name::from(String::from("telephoneNumber"));
        assert_eq!(a, b);
        assert!(std::ptr::eq(a.as_str(), b.as_str()));
        assert_ne!(Name::new("cn"), Name::new("CN"));
    }

    #[test]
    fn behaves_like_a_btreemap() {
        use std::collections::BTreeMap;
        let ops = [
            ("sn", 1),
            ("cn", 2),
            ("uid", 3),
            ("cn", 4),
            ("Mail", 5),
            ("a", 6),
            ("zz", 7),
        ];
        let mut m = NameMap::new();
        let mut b = BTreeMap::new();
        for (k, v) in ops {
            assert_eq!(m.insert(k, v), b.insert(k.to_string(), v));
        }
        assert_eq!(m.remove("uid"), b.remove("uid"));
        assert_eq!(m.remove("nope"), b.remove("nope"));
        *m.entry("a").or_default() += 10;
        *b.entry("a".to_string()).or_default() += 10;
        *m.entry("new").or_insert(1) += 1;
        *b.entry("new".to_string()).or_insert(1) += 1;
        let got: Vec<(String, i32)> = m.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let want: Vec<(String, i32)> = b.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(got, want);
        assert_eq!(m.get("cn"), Some(&4));
        assert!(!m.contains_key("uid"));
        assert_eq!(m.len(), b.len());
        // large maps are searched by bisection
        for i in (0..60).rev() {
            m.insert(format!("attr{i}"), i);
            b.insert(format!("attr{i}"), i);
        }
        for i in 0..61 {
            let k = format!("attr{i}");
            assert_eq!(m.get(&k), b.get(&k));
        }
        assert_eq!(m.get("cn"), Some(&4));
        assert!(m.keys().zip(b.keys()).all(|(x, y)| x == y));
    }

    #[test]
    fn serialises_as_a_sorted_map_and_the_last_duplicate_wins() {
        let m: NameMap<Vec<String>> =
            serde_json::from_str(r#"{"uid":["a"],"cn":["b"],"uid":["c"]}"#).expect("json");
        assert_eq!(m.get("uid"), Some(&vec!["c".to_string()]));
        assert_eq!(
            serde_json::to_string(&m).expect("json"),
            r#"{"cn":["b"],"uid":["c"]}"#
        );
        let collected: NameMap<i32> = [("b", 1), ("a", 2), ("b", 3)].into_iter().collect();
        assert_eq!(
            collected
                .iter()
                .map(|(k, v)| (k.as_str(), *v))
                .collect::<Vec<_>>(),
            [("a", 2), ("b", 3)]
        );
    }

    #[test]
    fn values_read_as_a_slice_whatever_their_number() {
        let one = Values::from(vec!["a".to_string()]);
        assert!(matches!(one.0, Repr::One(_)));
        assert_eq!(&*one, ["a".to_string()]);
        let mut v = one.clone();
        v.push("b".into());
        assert!(matches!(v.0, Repr::Many(_)));
        assert_eq!(v, vec!["a".to_string(), "b".to_string()]);
        v.retain(|x| x == "b");
        assert!(matches!(v.0, Repr::One(_)));
        v.extend(["c".to_string()]);
        assert_eq!(v.iter().map(String::as_str).collect::<Vec<_>>(), ["b", "c"]);
        let none = Values::default();
        assert!(none.is_empty());
        assert_eq!(none.first(), None);
        // serialised as the list it reads as, in both directions
        let m: NameMap<Values> =
            serde_json::from_str(r#"{"uid":["a"],"cn":[],"mail":["x","y"]}"#).expect("json");
        assert_eq!(m["uid"], vec!["a".to_string()]);
        assert!(m["cn"].is_empty());
        assert_eq!(m["mail"].len(), 2);
        assert_eq!(
            serde_json::to_string(&m).expect("json"),
            r#"{"cn":[],"mail":["x","y"],"uid":["a"]}"#
        );
        assert_eq!(m["mail"].clone().into_vec(), ["x", "y"]);
        // read straight into their shapes: one value inline, several as one slice
        assert!(matches!(m["uid"].0, Repr::One(_)));
        assert!(matches!(m["mail"].0, Repr::Many(_)));
        let three: Values = serde_json::from_str(r#"["p","q","r"]"#).expect("json");
        assert_eq!(three, vec!["p".to_string(), "q".into(), "r".into()]);
        // a map written in name order is kept as read; one out of order is sorted
        let sorted: NameMap<Values> =
            serde_json::from_str(r#"{"cn":["b"],"sn":["s"],"uid":["a"]}"#).expect("json");
        let unsorted: NameMap<Values> =
            serde_json::from_str(r#"{"uid":["a"],"sn":["s"],"cn":["b"]}"#).expect("json");
        assert_eq!(sorted, unsorted);
        assert_eq!(
            sorted.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["cn", "sn", "uid"]
        );
    }
}

//! Compact maps keyed by attribute or column names.
//!
//! A directory entry, a desired entry and an HR record each hold ten or so named values, and a
//! run holds hundreds of thousands of them. As `BTreeMap<String, _>` each costs a B-tree node
//! (eleven slots, ~640 bytes) plus one allocation per name. Here a name is interned once per
//! process ([`Name`], a `&'static str`: the set of attribute and column names is bounded by the
//! configuration, the schema and the export's header) and a map is one sorted vector of exactly
//! the size it needs ([`NameMap`]): about half the memory of a 100,000-person run.
//!
//! `NameMap` keeps `BTreeMap`'s iteration order (by name, byte-wise) and serialises as a map, so
//! what the mirror stores and the plan prints is unchanged.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

/// An interned name (attribute or column). Compares and orders as its text.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(&'static str);

fn interned(s: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let set = NAMES.get_or_init(Default::default);
    // A poisoned lock still holds a valid set (inserts are atomic from its point of view).
    let mut set = set.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = set.get(s) {
        return n;
    }
    let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
    set.insert(leaked);
    leaked
}

impl Name {
    pub fn new(s: &str) -> Name {
        Name(interned(s))
    }

    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
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
        n.0.to_owned()
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        self.0 == other.as_str()
    }
}

impl Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
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

/// A map from names to values, sorted by name, stored as one vector of exactly its size.
/// Lookups are binary searches; inserts shift (maps here hold tens of names, not thousands).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NameMap<V> {
    items: Vec<(Name, V)>,
}

impl<V> Default for NameMap<V> {
    fn default() -> Self {
        NameMap { items: Vec::new() }
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

    fn find(&self, k: &str) -> Result<usize, usize> {
        self.items.binary_search_by(|(n, _)| n.0.cmp(k))
    }

    /// Where `k` is, for lookups: maps here are small, and comparing lengths first avoids most
    /// byte comparisons (a binary search compares bytes at every step).
    fn position(&self, k: &str) -> Option<usize> {
        if self.items.len() > 24 {
            return self.find(k).ok();
        }
        self.items
            .iter()
            .position(|(n, _)| n.0.len() == k.len() && n.0.as_bytes() == k.as_bytes())
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
        match self.find(k.0) {
            Ok(i) => Some(std::mem::replace(&mut self.items[i].1, v)),
            Err(i) => {
                self.items.reserve_exact(1);
                self.items.insert(i, (k, v));
                None
            }
        }
    }

    pub fn remove(&mut self, k: &str) -> Option<V> {
        self.find(k).ok().map(|i| self.items.remove(i).1)
    }

    /// The value under `k`, inserted first (made by `f`) when absent.
    pub fn get_or_insert_with(&mut self, k: impl Into<Name>, f: impl FnOnce() -> V) -> &mut V {
        let k = k.into();
        let i = match self.find(k.0) {
            Ok(i) => i,
            Err(i) => {
                self.items.reserve_exact(1);
                self.items.insert(i, (k, f()));
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
        self.items.retain_mut(|(k, v)| f(k, v));
    }

    /// Release spare capacity (after building a map by pushes of unknown count).
    pub fn shrink_to_fit(&mut self) {
        self.items.shrink_to_fit();
    }

    /// From items already in name order, each name once (e.g. a CSV row whose columns were put
    /// in name order once for the whole file).
    pub(crate) fn from_sorted(items: Vec<(Name, V)>) -> Self {
        debug_assert!(items.windows(2).all(|w| w[0].0 .0 < w[1].0 .0));
        NameMap { items }
    }

    /// From pairs in any order; a later pair replaces an earlier one with the same name.
    fn from_pairs(mut items: Vec<(Name, V)>) -> Self {
        // stable: equal names keep their input order, so the last one wins below
        items.sort_by(|a, b| a.0 .0.cmp(b.0 .0));
        let mut out: Vec<(Name, V)> = Vec::with_capacity(items.len());
        for (k, v) in items {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        out.shrink_to_fit();
        NameMap { items: out }
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
        self.items.into_iter()
    }
}

impl<K: Into<Name>, V> FromIterator<(K, V)> for NameMap<V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self::from_pairs(iter.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

impl<K: Into<Name>, V> Extend<(K, V)> for NameMap<V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<K: Into<Name>, V, const N: usize> From<[(K, V); N]> for NameMap<V> {
    fn from(a: [(K, V); N]) -> Self {
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
                let mut items = Vec::with_capacity(a.size_hint().unwrap_or(0).min(256));
                while let Some((k, v)) = a.next_entry::<Name, V>()? {
                    items.push((k, v));
                }
                Ok(NameMap::from_pairs(items))
            }
        }
        d.deserialize_map(Vis(std::marker::PhantomData))
    }
}

/// Deserialise a map of value lists with every list exactly as long as it is (`serde`'s `Vec`
/// starts at four slots: a directory entry's ten single values would take four times the
/// memory). For `#[serde(deserialize_with)]` on entries' attributes.
pub fn exact_values<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<NameMap<Vec<String>>, D::Error> {
    struct Exact(Vec<String>);
    impl<'de> Deserialize<'de> for Exact {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Exact, D::Error> {
            let mut v = Vec::<String>::deserialize(d)?;
            v.shrink_to_fit();
            Ok(Exact(v))
        }
    }
    let m = NameMap::<Exact>::deserialize(d)?;
    Ok(NameMap {
        items: m.items.into_iter().map(|(k, v)| (k, v.0)).collect(),
    })
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
        // capacity is exact after single inserts
        assert_eq!(m.items.capacity(), m.items.len());
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
}

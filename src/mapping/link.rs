//! Linking HR keys to directory entries (pure). The link (HR key ↔ entryUUID) identifies a
//! person's entry; the anchor attribute marks ownership and relinks entries when the mirror lost
//! the link.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::model::{DirSnapshot, MatchRules};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Relink {
    pub key: String,
    pub uuid: String,
    pub dn: String,
    pub why: String,
}

#[derive(Clone, Debug, Default)]
pub struct Linking {
    /// HR key → uuid of the person's entry.
    pub by_key: BTreeMap<String, String>,
    /// Links made (or remade) from the anchor in this run.
    pub relinked: Vec<Relink>,
    /// Keys whose anchor is carried by more than one entry: left alone, reported.
    pub conflicts: BTreeMap<String, Vec<String>>,
    /// Anchored entries whose key is not in the export: uuid → key.
    pub gone: BTreeMap<String, String>,
    /// Links in the mirror whose entry no longer exists in the directory.
    pub dangling: Vec<String>,
    /// Number of anchored (managed) entries.
    pub managed: usize,
    /// Keys linked in this run by `users.correlate` (the anchor is written by a `link` change).
    pub correlated: BTreeMap<String, String>,
    /// Keys whose correlation matched several entries: reported, never guessed.
    pub ambiguous: BTreeMap<String, String>,
}

/// Link records that have no entry to a pre-existing entry without the anchor, when exactly one
/// such entry holds the record's value of a `users.correlate` attribute (tried in order).
/// `values`: HR key → attribute → the record's value (rendered with `n` empty).
pub fn correlate(
    linking: &mut Linking,
    dir: &DirSnapshot,
    anchor: &str,
    attrs: &[String],
    values: &BTreeMap<String, BTreeMap<String, String>>,
    rules: &MatchRules,
) {
    let linked: BTreeSet<&str> = linking.by_key.values().map(String::as_str).collect();
    let free: Vec<&crate::model::Entry> = dir
        .entries
        .iter()
        .filter(|e| e.get(anchor).is_empty() && !linked.contains(e.uuid.as_str()))
        .collect();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut found: Vec<(String, String)> = Vec::new();
    'records: for (key, vals) in values {
        if linking.by_key.contains_key(key) {
            continue;
        }
        for a in attrs {
            let Some(v) = vals.get(a) else { continue };
            let f = rules.fold(a, v);
            let m: Vec<&&crate::model::Entry> = free
                .iter()
                .filter(|e| e.get(a).iter().any(|x| rules.fold(a, x) == f))
                .collect();
            match m.len() {
                0 => continue,
                1 => {
                    if taken.insert(m[0].uuid.clone()) {
                        found.push((key.clone(), m[0].uuid.clone()));
                    } else {
                        linking.ambiguous.insert(
                            key.clone(),
                            format!(
                                "{a} = {v:?} matches {}, which another record also matches",
                                m[0].dn
                            ),
                        );
                    }
                    continue 'records;
                }
                _ => {
                    let dns: Vec<&str> = m.iter().map(|e| e.dn.as_str()).collect();
                    linking.ambiguous.insert(
                        key.clone(),
                        format!("users.correlate: {a} = {v:?} matches {} entries ({}); link one by hand (set its {anchor})", m.len(), dns.join("; ")),
                    );
                    continue 'records;
                }
            }
        }
    }
    for (k, u) in found {
        linking.by_key.insert(k.clone(), u.clone());
        linking.correlated.insert(k, u);
    }
}

/// `present`: every key the export names (valid and quarantined). `links`: the mirror's links.
pub fn link<S: AsRef<str> + Ord>(
    present: &BTreeSet<S>,
    dir: &DirSnapshot,
    links: &BTreeMap<String, String>,
    anchor: &str,
    rules: &MatchRules,
) -> Linking {
    link_indexed(present, dir, &dir.uuid_index(), links, anchor, rules)
}

/// [`link`] with `dir`'s [`crate::model::UuidIndex`].
pub fn link_indexed<S: AsRef<str> + Ord>(
    present: &BTreeSet<S>,
    dir: &DirSnapshot,
    by_uuid: &crate::model::UuidIndex<'_>,
    links: &BTreeMap<String, String>,
    anchor: &str,
    rules: &MatchRules,
) -> Linking {
    let mut out = Linking {
        managed: dir
            .entries
            .iter()
            .filter(|e| !e.get(anchor).is_empty())
            .count(),
        ..Default::default()
    };
    let mut used: Vec<bool> = vec![false; dir.entries.len()];
    // First the links: a key whose linked entry is there keeps it. Both in key order: the links
    // are walked alongside (no lookup per key), and the links made are collected in order and
    // built into a map at once.
    let mut by_key: Vec<(String, String)> = Vec::with_capacity(present.len());
    let mut unlinked: Vec<&str> = Vec::new();
    let mut walk = links.iter().peekable();
    for key in present {
        let key = key.as_ref();
        while walk.next_if(|(k, _)| k.as_str() < key).is_some() {}
        let link = walk.next_if(|(k, _)| k.as_str() == key).map(|(_, u)| u);
        if let Some(uuid) = link {
            if let Some(i) = by_uuid.get(uuid.as_str()) {
                by_key.push((key.to_string(), uuid.clone()));
                used[i] = true;
                continue;
            }
            out.dangling.push(key.to_string());
        }
        unlinked.push(key);
    }
    // Then the keys without a usable link (joiners, a lost mirror), by anchor among the entries no
    // link claims: an entry linked to one key is never taken by another's anchor, and the index
    // is as small as the unclaimed entries (a churn of 100,000: a few hundred, not every entry).
    if !unlinked.is_empty() {
        let mut by_anchor: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, e) in dir.entries.iter().enumerate() {
            if used[i] {
                continue;
            }
            if let Some(v) = e.get(anchor).first() {
                by_anchor.entry(rules.fold(anchor, v)).or_default().push(i);
            }
        }
        for key in unlinked {
            let cands: Vec<usize> = by_anchor
                .get(&rules.fold(anchor, key))
                .map(|c| c.iter().copied().filter(|i| !used[*i]).collect())
                .unwrap_or_default();
            match cands.len() {
                0 => {}
                1 => {
                    let e = &dir.entries[cands[0]];
                    used[cands[0]] = true;
                    by_key.push((key.to_string(), e.uuid.clone()));
                    let why = if links.contains_key(key) {
                        "the linked entry is gone; relinked by anchor".to_string()
                    } else {
                        "no link in the mirror; linked by anchor".to_string()
                    };
                    out.relinked.push(Relink {
                        key: key.to_string(),
                        uuid: e.uuid.clone(),
                        dn: e.dn.clone(),
                        why,
                    });
                }
                _ => {
                    out.conflicts.insert(
                        key.to_string(),
                        cands.iter().map(|&i| dir.entries[i].dn.clone()).collect(),
                    );
                    for i in cands {
                        used[i] = true;
                    }
                }
            }
        }
    }
    out.by_key = by_key.into_iter().collect();
    // (hashed, not sorted: 100,000 keys are folded once as soon as one entry is unclaimed)
    let mut present_folded: Option<foldhash::HashSet<String>> = None;
    for (i, e) in dir.entries.iter().enumerate() {
        if used[i] {
            continue;
        }
        if let Some(v) = e.get(anchor).first() {
            // An anchored entry no export key claims. If its key is present (say, claimed through a
            // link by another entry) it is a duplicate: never delete it automatically.
            let folded = present_folded.get_or_insert_with(|| {
                present
                    .iter()
                    .map(|k| rules.fold(anchor, k.as_ref()))
                    .collect()
            });
            if !folded.contains(&rules.fold(anchor, v)) {
                out.gone.insert(e.uuid.clone(), v.clone());
            }
        }
    }
    out
}

/// `old` → `new` (HR key → uuid, both in key order): the keys gone, and the links of `new` that
/// `old` does not hold as they are (new keys, and keys linked to another entry), in key order
/// (one walk over both, no lookups).
pub fn links_diff<'a>(
    old: &BTreeMap<String, String>,
    new: &'a BTreeMap<String, String>,
) -> (Vec<String>, Vec<(&'a String, &'a String)>) {
    let mut gone = Vec::new();
    let mut changed = Vec::new();
    let mut o = old.iter().peekable();
    for (k, u) in new {
        while let Some((ok, _)) = o.next_if(|(ok, _)| ok.as_str() < k.as_str()) {
            gone.push(ok.clone());
        }
        match o.next_if(|(ok, _)| *ok == k) {
            Some((_, ou)) if ou == u => {}
            _ => changed.push((k, u)),
        }
    }
    gone.extend(o.map(|(k, _)| k.clone()));
    (gone, changed)
}

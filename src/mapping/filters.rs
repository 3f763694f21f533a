//! Template filters the domain needs: `ascii`, `slug`, `person_dn` (and MiniJinja's own `lower`).

use std::sync::{Arc, RwLock};

use minijinja::{Environment, Error, ErrorKind};

/// Transliterate to ASCII (`Zoë Ørsted` → `Zoe Orsted`, `Łukasz` → `Lukasz`, `ß` → `ss`).
/// A character with no Latin rendering is an error, unless a fallback is given: then the whole value
/// becomes the fallback.
pub fn ascii(value: &str, fallback: Option<&str>) -> Result<String, String> {
    const TOFU: &str = "\u{FFFD}";
    let out = deunicode::deunicode_with_tofu(value, TOFU);
    if out.contains(TOFU) {
        let bad: String = value
            .chars()
            .filter(|c| deunicode::deunicode_char(*c).is_none())
            .take(3)
            .collect();
        return match fallback {
            Some(f) => Ok(f.to_string()),
            None => Err(format!(
                "{value:?} has no Latin rendering (characters {bad:?}); give a fallback: ascii('…')"
            )),
        };
    }
    Ok(out)
}

/// Lower-case ASCII words joined by `-`: `Research & Development` → `research-development`.
pub fn slug(value: &str) -> Result<String, String> {
    let a = ascii(value, None)?;
    let mut out = String::with_capacity(a.len());
    let mut dash = false;
    for c in a.chars() {
        if c.is_ascii_alphanumeric() {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c.to_ascii_lowercase());
        } else {
            dash = true;
        }
    }
    Ok(out)
}

/// HR key → DN of that person's entry, filled by the mapper between its two passes.
pub type PersonDns = Arc<RwLock<DnIndex>>;

/// Keys and DNs, sorted by key and looked up by bisection, their text in one buffer: a hash map
/// of a million people takes twice the memory (its table doubles past seven eighths full), and a
/// list of boxed keys and DNs (two allocations a person) put the 1,000,000-record planner's peak
/// 19 MB higher (1,939,452-1,939,632 against 1,919,940-1,920,100 kB).
#[derive(Debug, Default)]
pub struct DnIndex {
    /// Each person's key followed by their DN, in key order.
    text: String,
    /// Where each key starts in `text` and where it ends (its DN runs to the next key's start).
    rows: Vec<(usize, usize)>,
}

impl DnIndex {
    /// From pairs in any order; of two pairs with the same key, the later one stays.
    pub fn new(mut pairs: Vec<(Box<str>, Box<str>)>) -> DnIndex {
        pairs.sort_by(|a, b| a.0.cmp(&b.0)); // stable: equal keys keep their order
        pairs.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        let mut text = String::with_capacity(pairs.iter().map(|(k, d)| k.len() + d.len()).sum());
        let mut rows = Vec::with_capacity(pairs.len());
        for (k, d) in pairs {
            rows.push((text.len(), text.len() + k.len()));
            text.push_str(&k);
            text.push_str(&d);
        }
        DnIndex { text, rows }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        let key_of = |&(a, b): &(usize, usize)| &self.text[a..b];
        let i = self.rows.binary_search_by(|r| key_of(r).cmp(key)).ok()?;
        let end = self.rows.get(i + 1).map_or(self.text.len(), |r| r.0);
        Some(&self.text[self.rows[i].1..end])
    }
}

pub fn register(env: &mut Environment<'static>, person_dns: PersonDns) {
    env.add_filter(
        "ascii",
        |v: String, fallback: Option<String>| -> Result<String, Error> {
            ascii(&v, fallback.as_deref()).map_err(|m| Error::new(ErrorKind::InvalidOperation, m))
        },
    );
    env.add_filter("slug", |v: String| -> Result<String, Error> {
        slug(&v).map_err(|m| Error::new(ErrorKind::InvalidOperation, m))
    });
    env.add_filter("person_dn", move |v: String| -> String {
        let key = v.trim();
        if key.is_empty() {
            return String::new();
        }
        person_dns
            .read()
            .map(|m| m.get(key).unwrap_or_default().to_string())
            .unwrap_or_default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn transliteration() {
        assert_eq!(ascii("Zoë Ørsted", None).unwrap(), "Zoe Orsted");
        assert_eq!(ascii("Łukasz", None).unwrap(), "Lukasz");
        assert_eq!(ascii("Straße", None).unwrap(), "Strasse");
        assert_eq!(ascii("Владимир", None).unwrap(), "Vladimir");
        assert!(ascii("\u{E000}", None)
            .unwrap_err()
            .contains("no Latin rendering"));
        assert_eq!(ascii("\u{E000}", Some("user")).unwrap(), "user");
    }
    #[test]
    fn slugs() {
        assert_eq!(
            slug("Research & Development").unwrap(),
            "research-development"
        );
        assert_eq!(slug("  Ærø  Sales ").unwrap(), "aero-sales");
    }
    #[test]
    fn dn_index_keeps_the_last_pair_of_a_key() {
        let p = |k: &str, d: &str| (Box::<str>::from(k), Box::<str>::from(d));
        let ix = DnIndex::new(vec![
            p("2", "b"),
            p("1", "a"),
            p("2", "c"),
            p("10", "x"),
            p("4", ""),
        ]);
        assert_eq!(ix.get("2"), Some("c"));
        assert_eq!(ix.get("1"), Some("a"));
        assert_eq!(ix.get("10"), Some("x"));
        assert_eq!(
            ix.get("4"),
            Some(""),
            "the last key's DN runs to the end of the text"
        );
        assert_eq!(ix.get("3"), None);
        assert_eq!(ix.get(""), None);
        assert_eq!(DnIndex::default().get("1"), None);
    }
}

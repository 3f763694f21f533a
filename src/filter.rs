//! A small RFC 4515 filter evaluator for entries held in memory (`safety.protected` filters):
//! `&`, `|`, `!`, equality, presence and substrings (`*`), compared by the attributes' rules.

use crate::model::{Entry, MatchRules};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Present(String),
    /// attribute, the value's pieces split at `*` (one piece: equality)
    Match(String, Vec<String>),
}

fn unescape(v: &str) -> Result<String, String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let h = v
                .get(i + 1..i + 3)
                .ok_or("a \\ must be followed by two hex digits")?;
            out.push(
                u8::from_str_radix(h, 16).map_err(|_| "a \\ must be followed by two hex digits")?,
            );
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the value is not UTF-8".to_string())
}

impl Filter {
    pub fn parse(s: &str) -> Result<Filter, String> {
        let s = s.trim();
        let (f, rest) = parse_one(s)?;
        if !rest.trim().is_empty() {
            return Err(format!("unexpected text after the filter: {rest:?}"));
        }
        Ok(f)
    }

    pub fn matches(&self, e: &Entry, rules: &MatchRules) -> bool {
        match self {
            Filter::And(v) => v.iter().all(|f| f.matches(e, rules)),
            Filter::Or(v) => v.iter().any(|f| f.matches(e, rules)),
            Filter::Not(f) => !f.matches(e, rules),
            Filter::Present(a) => a.eq_ignore_ascii_case("objectClass") || !e.get(a).is_empty(),
            Filter::Match(a, pieces) => e.get(a).iter().any(|v| {
                let v = rules.fold(a, v);
                let p: Vec<String> = pieces.iter().map(|x| rules.fold(a, x)).collect();
                if p.len() == 1 {
                    return v == p[0];
                }
                let (first, last) = (&p[0], &p[p.len() - 1]);
                if !v.starts_with(first.as_str())
                    || !v.ends_with(last.as_str())
                    || v.len() < first.len() + last.len()
                {
                    return false;
                }
                let mut rest = &v[first.len()..v.len() - last.len()];
                for mid in &p[1..p.len() - 1] {
                    match rest.find(mid.as_str()) {
                        Some(i) => rest = &rest[i + mid.len()..],
                        None => return false,
                    }
                }
                true
            }),
        }
    }
}

fn parse_one(s: &str) -> Result<(Filter, &str), String> {
    let s = s.trim_start();
    let inner = s
        .strip_prefix('(')
        .ok_or_else(|| format!("a filter starts with '(': {s:?}"))?;
    match inner.chars().next() {
        Some('&') | Some('|') => {
            let mut rest = &inner[1..];
            let mut items = Vec::new();
            loop {
                rest = rest.trim_start();
                if let Some(r) = rest.strip_prefix(')') {
                    let f = if inner.starts_with('&') {
                        Filter::And(items)
                    } else {
                        Filter::Or(items)
                    };
                    return Ok((f, r));
                }
                let (f, r) = parse_one(rest)?;
                items.push(f);
                rest = r;
            }
        }
        Some('!') => {
            let (f, r) = parse_one(&inner[1..])?;
            let r = r
                .trim_start()
                .strip_prefix(')')
                .ok_or("missing ')' after a (! …) filter")?;
            Ok((Filter::Not(Box::new(f)), r))
        }
        _ => {
            let end = inner.find(')').ok_or("missing ')'")?;
            let item = &inner[..end];
            let (attr, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not attr=value"))?;
            let attr = attr.trim();
            if attr.is_empty() || attr.ends_with(['~', '>', '<', ':']) {
                return Err(format!(
                    "{item:?}: only =, =* and * wildcards are supported"
                ));
            }
            let f = if value == "*" {
                Filter::Present(attr.to_string())
            } else {
                let pieces = value
                    .split('*')
                    .map(unescape)
                    .collect::<Result<Vec<_>, _>>()?;
                Filter::Match(attr.to_string(), pieces)
            };
            Ok((f, &inner[end + 1..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn e(attrs: &[(&str, &str)]) -> Entry {
        let mut m = crate::names::NameMap::<crate::names::Values>::new();
        for (k, v) in attrs {
            m.entry(k.to_ascii_lowercase())
                .or_default()
                .push(v.to_string());
        }
        Entry {
            digest: Default::default(),
            uuid: "u".into(),
            dn: "uid=x,dc=example,dc=com".into(),
            attrs: m,
        }
    }

    #[test]
    fn evaluates() {
        let r = MatchRules::default();
        let x = e(&[
            ("employeeType", "Executive"),
            ("cn", "Ann Boss"),
            ("title", "CEO (acting)"),
        ]);
        for (f, want) in [
            ("(employeeType=executive)", true),
            ("(employeeType=staff)", false),
            ("(&(cn=ann*)(employeeType=*))", true),
            ("(|(cn=*bob*)(cn=*oss))", true),
            ("(!(cn=Ann Boss))", false),
            ("(title=CEO \\28acting\\29)", true),
            ("(mail=*)", false),
        ] {
            assert_eq!(Filter::parse(f).unwrap().matches(&x, &r), want, "{f}");
        }
        assert!(Filter::parse("(cn=a").is_err());
        assert!(Filter::parse("cn=a").is_err());
        assert!(Filter::parse("(cn>=a)").is_err());
    }
}

//! Distinguished names and filter values: escaping (RFC 4514, RFC 4515), parsing and normalisation.
//!
//! This is the one place where DN and filter strings are built from values. Call sites never format
//! DNs or filters by hand.

use std::fmt;

/// One attribute-value assertion of an RDN (`uid=jdoe`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ava {
    pub attr: String,
    pub value: String,
}

/// A parsed DN: a list of RDNs, most specific first; each RDN is one or more AVAs (`cn=a+sn=b`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dn {
    pub rdns: Vec<Vec<Ava>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid DN {dn:?}: {why}")]
pub struct DnError {
    pub dn: String,
    pub why: &'static str,
}

/// Escape an attribute value for use in a DN (RFC 4514 §2.4).
pub fn escape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 4);
    let n = v.chars().count();
    for (i, c) in v.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i + 1 == n => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            _ => out.push(c),
        }
    }
    out
}

/// Escape a value for use inside a search filter (RFC 4515 §3).
pub fn escape_filter(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 4);
    for c in v.chars() {
        match c {
            '*' => out.push_str("\\2a"),
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            '\\' => out.push_str("\\5c"),
            '\0' => out.push_str("\\00"),
            _ => out.push(c),
        }
    }
    out
}

/// An equality filter `(attr=value)` with the value escaped.
pub fn eq_filter(attr: &str, value: &str) -> String {
    format!("({attr}={})", escape_filter(value))
}

/// Build `attr=value,parent` with the value escaped.
pub fn child(attr: &str, value: &str, parent: &str) -> String {
    if parent.is_empty() {
        format!("{attr}={}", escape_value(value))
    } else {
        format!("{attr}={},{parent}", escape_value(value))
    }
}

/// Build the RDN string `attr=value` with the value escaped.
pub fn rdn(attr: &str, value: &str) -> String {
    format!("{attr}={}", escape_value(value))
}

fn hexval(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl Dn {
    pub fn parse(s: &str) -> Result<Dn, DnError> {
        let err = |why| DnError {
            dn: s.to_string(),
            why,
        };
        let b = s.as_bytes();
        let mut rdns = Vec::new();
        let mut cur: Vec<Ava> = Vec::new();
        let mut i = 0;
        if s.trim().is_empty() {
            return Ok(Dn { rdns });
        }
        loop {
            // attribute type
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            let start = i;
            while i < b.len() && b[i] != b'=' {
                if matches!(b[i], b',' | b'+') {
                    return Err(err("attribute type without '='"));
                }
                i += 1;
            }
            if i >= b.len() {
                return Err(err("attribute type without '='"));
            }
            let attr = s[start..i].trim().to_string();
            if attr.is_empty() {
                return Err(err("empty attribute type"));
            }
            i += 1; // '='
                    // value
            while i < b.len() && b[i] == b' ' {
                i += 1; // leading unescaped spaces are not part of the value
            }
            let mut raw: Vec<u8> = Vec::new();
            let mut trailing_unescaped_spaces = 0usize;
            if i < b.len() && b[i] == b'#' && raw.is_empty() {
                // hex string form: keep it as written
                let hs = i;
                i += 1;
                while i < b.len() && b[i].is_ascii_hexdigit() {
                    i += 1;
                }
                raw.extend_from_slice(&b[hs..i]);
            } else {
                while i < b.len() && b[i] != b',' && b[i] != b'+' && b[i] != b';' {
                    if b[i] == b'\\' {
                        i += 1;
                        if i >= b.len() {
                            return Err(err("dangling backslash"));
                        }
                        if i + 1 < b.len() {
                            if let (Some(h), Some(l)) = (hexval(b[i]), hexval(b[i + 1])) {
                                raw.push(h * 16 + l);
                                i += 2;
                                trailing_unescaped_spaces = 0;
                                continue;
                            }
                        }
                        raw.push(b[i]);
                        i += 1;
                        trailing_unescaped_spaces = 0;
                        continue;
                    }
                    if b[i] == b' ' {
                        trailing_unescaped_spaces += 1;
                    } else {
                        trailing_unescaped_spaces = 0;
                    }
                    raw.push(b[i]);
                    i += 1;
                }
            }
            raw.truncate(raw.len() - trailing_unescaped_spaces);
            let value = String::from_utf8(raw).map_err(|_| err("value is not UTF-8"))?;
            cur.push(Ava { attr, value });
            if i >= b.len() {
                rdns.push(std::mem::take(&mut cur));
                break;
            }
            if b[i] == b'+' {
                i += 1;
                continue;
            }
            // ',' or ';'
            rdns.push(std::mem::take(&mut cur));
            i += 1;
        }
        Ok(Dn { rdns })
    }

    /// The canonical comparison form: attribute types lower-cased, values unescaped, case-folded and
    /// with insignificant spaces collapsed, multi-valued RDNs sorted.
    pub fn normalized(&self) -> String {
        let mut out = String::new();
        for (i, rdn) in self.rdns.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let mut avas: Vec<String> = rdn
                .iter()
                .map(|a| {
                    format!(
                        "{}={}",
                        a.attr.to_ascii_lowercase(),
                        escape_value(&fold_case_ignore(&a.value))
                    )
                })
                .collect();
            avas.sort();
            out.push_str(&avas.join("+"));
        }
        out
    }

    /// The parent DN as a string (escaped again), empty for a one-RDN DN.
    pub fn parent(&self) -> Dn {
        Dn {
            rdns: self.rdns.iter().skip(1).cloned().collect(),
        }
    }

    pub fn first(&self) -> Option<&Ava> {
        self.rdns.first().and_then(|r| r.first())
    }

    /// True when `self` is `other` or lies under it.
    pub fn is_within(&self, other: &Dn) -> bool {
        if other.rdns.len() > self.rdns.len() {
            return false;
        }
        let skip = self.rdns.len() - other.rdns.len();
        let tail = Dn {
            rdns: self.rdns[skip..].to_vec(),
        };
        tail.normalized() == other.normalized()
    }
}

impl fmt::Display for Dn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rdn) in self.rdns.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            for (j, a) in rdn.iter().enumerate() {
                if j > 0 {
                    f.write_str("+")?;
                }
                write!(f, "{}={}", a.attr, escape_value(&a.value))?;
            }
        }
        Ok(())
    }
}

/// caseIgnoreMatch folding: trim, collapse inner whitespace runs to one space, lower-case.
pub fn fold_case_ignore(v: &str) -> String {
    collapse_spaces(v).to_lowercase()
}

/// Insignificant-space handling of RFC 4518 (simplified): trim and collapse runs of spaces.
pub fn collapse_spaces(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for w in v.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    out
}

/// The DNs a [`normalize`]d DN lies under, as suffixes of it: its parent's, its parent's parent's,
/// and so on (in the normalized form a comma inside a value is escaped, and so is a backslash).
pub fn normalized_ancestors(normalized: &str) -> impl Iterator<Item = &str> {
    let b = normalized.as_bytes();
    (0..b.len())
        .filter(move |&i| b[i] == b',')
        .filter(move |&i| b[..i].iter().rev().take_while(|&&x| x == b'\\').count() % 2 == 0)
        .map(move |i| &normalized[i + 1..])
}

/// Normalise a DN string for comparison; an unparsable DN compares by its folded text.
pub fn normalize(dn: &str) -> String {
    if let Some(n) = normalize_plain(dn) {
        return n;
    }
    match Dn::parse(dn) {
        Ok(d) => d.normalized(),
        Err(_) => fold_case_ignore(dn),
    }
}

/// The common case without escapes, multi-valued RDNs or special characters: the same result as
/// parsing, without the allocations (the profile showed DN normalisation as a third of a run).
fn normalize_plain(dn: &str) -> Option<String> {
    if dn
        .bytes()
        .any(|b| matches!(b, b'\\' | b'+' | b'"' | b'#' | b';' | b'<' | b'>') || !b.is_ascii())
    {
        return None;
    }
    let mut out = String::with_capacity(dn.len());
    for (i, part) in dn.split(',').enumerate() {
        let (attr, value) = part.split_once('=')?;
        let (attr, value) = (attr.trim(), value.trim());
        if attr.is_empty() || value.contains('=') {
            return None;
        }
        if i > 0 {
            out.push(',');
        }
        for c in attr.chars() {
            out.push(c.to_ascii_lowercase());
        }
        out.push('=');
        let mut space = false;
        for c in value.chars() {
            if c.is_whitespace() {
                space = true;
                continue;
            }
            if space {
                out.push(' ');
                space = false;
            }
            out.push(c.to_ascii_lowercase());
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_normalized_dns_ancestors_skip_escaped_commas() {
        let n = normalize(r"uid=a\,b,OU=x\\,dc=example , dc=com");
        assert_eq!(n, r"uid=a\,b,ou=x\\,dc=example,dc=com");
        assert_eq!(
            normalized_ancestors(&n).collect::<Vec<_>>(),
            [r"ou=x\\,dc=example,dc=com", "dc=example,dc=com", "dc=com"]
        );
        assert_eq!(normalized_ancestors("dc=com").count(), 0);
    }

    #[test]
    fn escape_specials_round_trip() {
        for v in [
            "Doe, John",
            "a+b",
            "say \"hi\"",
            "back\\slash",
            "<tag>",
            "semi;colon",
            "eq=ual",
            "#hash",
            " leading",
            "trailing ",
            "Zoë Ørsted",
            "李 北京",
            "mid # hash",
        ] {
            let dn = child("cn", v, "ou=people,dc=example,dc=com");
            let parsed = Dn::parse(&dn).unwrap();
            assert_eq!(parsed.rdns.len(), 4, "{dn}");
            assert_eq!(parsed.first().unwrap().value, v, "{dn}");
            assert_eq!(parsed.to_string(), dn);
        }
    }

    #[test]
    fn escapes_exactly() {
        assert_eq!(escape_value("Doe, John #1 "), "Doe\\, John #1\\ ");
        assert_eq!(escape_value("#x"), "\\#x");
        assert_eq!(escape_filter("a*(b)\\"), "a\\2a\\28b\\29\\5c");
        assert_eq!(escape_filter("Zoë*"), "Zoë\\2a");
    }

    #[test]
    fn normalisation_ignores_spelling() {
        assert_eq!(
            normalize("UID=JDoe, OU=People,DC=Example,DC=com"),
            normalize("uid=jdoe,ou=people,dc=example,dc=com")
        );
        assert_eq!(normalize("cn=a\\2cb,dc=x"), normalize("cn=a\\,b,dc=x"));
        assert_ne!(normalize("uid=a,dc=x"), normalize("uid=b,dc=x"));
    }

    #[test]
    fn fast_path_agrees_with_parsing() {
        for dn in [
            "uid=JDoe, OU=People,DC=Example,DC=com",
            "cn=Ann  Boss ,ou=x,dc=y",
            "uid=a,dc=x",
            "cn=Müller,dc=x",
            "cn=a\\,b,dc=x",
            "cn=a+sn=b,dc=x",
            "",
        ] {
            let slow = match Dn::parse(dn) {
                Ok(d) => d.normalized(),
                Err(_) => fold_case_ignore(dn),
            };
            assert_eq!(normalize(dn), slow, "{dn}");
        }
    }

    #[test]
    fn within() {
        let a = Dn::parse("uid=x,ou=People,dc=example,dc=com").unwrap();
        let b = Dn::parse("ou=people,dc=example,dc=com").unwrap();
        assert!(a.is_within(&b));
        assert!(!b.is_within(&a));
        assert_eq!(a.parent().normalized(), b.normalized());
    }

    #[test]
    fn bad_dns() {
        assert!(Dn::parse("uid").is_err());
        assert!(Dn::parse("uid=a\\").is_err());
    }
}

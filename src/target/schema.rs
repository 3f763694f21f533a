//! The server's schema (RFC 4512 subschema): attribute types with their equality matching rules,
//! and object classes. Parsed from the `attributeTypes` and `objectClasses` values.

use std::collections::{HashMap, HashSet};

use crate::model::{MatchRules, Rule};

#[derive(Clone, Debug, Default)]
pub struct Schema {
    /// lower-cased attribute name → (equality rule name, superior type)
    attrs: HashMap<String, (Option<String>, Option<String>)>,
    /// lower-cased attribute name (any alias) → the type's first NAME, as the server returns it.
    canonical: HashMap<String, String>,
    classes: HashSet<String>,
}

fn tokens(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '(' || c == ')' {
            out.push(c.to_string());
            chars.next();
        } else if c == '\'' {
            chars.next();
            let mut t = String::new();
            for ch in chars.by_ref() {
                if ch == '\'' {
                    break;
                }
                t.push(ch);
            }
            out.push(t);
        } else {
            let mut t = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() || ch == '(' || ch == ')' {
                    break;
                }
                t.push(ch);
                chars.next();
            }
            out.push(t);
        }
    }
    out
}

/// NAME, EQUALITY and SUP of one definition.
fn parse_def(def: &str) -> (Vec<String>, Option<String>, Option<String>) {
    let t = tokens(def);
    let mut names = Vec::new();
    let mut eq = None;
    let mut sup = None;
    let mut syntax: Option<String> = None;
    let mut i = 0;
    while i < t.len() {
        match t[i].as_str() {
            "NAME" => {
                i += 1;
                if t.get(i).map(String::as_str) == Some("(") {
                    i += 1;
                    while i < t.len() && t[i] != ")" {
                        names.push(t[i].clone());
                        i += 1;
                    }
                } else if let Some(n) = t.get(i) {
                    names.push(n.clone());
                }
            }
            "EQUALITY" => {
                i += 1;
                eq = t.get(i).cloned();
            }
            "SUP" => {
                i += 1;
                if t.get(i).map(String::as_str) != Some("(") {
                    sup = t.get(i).cloned();
                }
            }
            "SYNTAX" => {
                i += 1;
                syntax = t
                    .get(i)
                    .map(|s| s.split('{').next().unwrap_or("").to_string());
            }
            _ => {}
        }
        i += 1;
    }
    // Active Directory publishes no EQUALITY: its matching follows the syntax (strings are
    // case-insensitive, DNs are compared as DNs).
    if eq.is_none() {
        eq = syntax.and_then(|s| {
            let rule = match s.strip_prefix("1.3.6.1.4.1.1466.115.121.1.")? {
                "12" => "distinguishedNameMatch",
                "15" | "26" | "44" | "7" => "caseIgnoreMatch",
                "27" => "integerMatch",
                "36" => "numericStringMatch",
                "50" => "telephoneNumberMatch",
                _ => return None,
            };
            Some(rule.to_string())
        });
    }
    (names, eq, sup)
}

impl Schema {
    pub fn parse(attribute_types: &[String], object_classes: &[String]) -> Schema {
        let mut s = Schema::default();
        for def in attribute_types {
            let (names, eq, sup) = parse_def(def);
            let first = names.first().cloned();
            for n in names {
                if let Some(f) = &first {
                    s.canonical.insert(n.to_ascii_lowercase(), f.clone());
                }
                s.attrs
                    .insert(n.to_ascii_lowercase(), (eq.clone(), sup.clone()));
            }
        }
        for def in object_classes {
            let (names, _, _) = parse_def(def);
            for n in names {
                s.classes.insert(n.to_ascii_lowercase());
            }
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.attrs.is_empty()
    }

    pub fn has_attr(&self, a: &str) -> bool {
        // attribute options (`cn;lang-de`) name the base type
        let base = a.split(';').next().unwrap_or(a);
        self.attrs.contains_key(&base.to_ascii_lowercase())
    }

    /// The name the server uses for an attribute given by any of its names (`surname` → `sn`);
    /// unknown names are returned as given.
    pub fn canonical(&self, a: &str) -> String {
        let (base, opts) = match a.split_once(';') {
            Some((b, o)) => (b, Some(o)),
            None => (a, None),
        };
        let c = self
            .canonical
            .get(&base.to_ascii_lowercase())
            .cloned()
            .unwrap_or_else(|| base.to_string());
        match opts {
            Some(o) => format!("{c};{o}"),
            None => c,
        }
    }

    pub fn has_class(&self, c: &str) -> bool {
        self.classes.contains(&c.to_ascii_lowercase())
    }

    fn equality(&self, a: &str) -> Option<String> {
        let mut cur = a.to_ascii_lowercase();
        for _ in 0..16 {
            let (eq, sup) = self.attrs.get(&cur)?;
            if let Some(e) = eq {
                return Some(e.clone());
            }
            cur = sup.as_ref()?.to_ascii_lowercase();
        }
        None
    }

    pub fn match_rules(&self) -> MatchRules {
        let mut m = HashMap::new();
        for a in self.attrs.keys() {
            let rule = match self.equality(a).map(|e| e.to_ascii_lowercase()).as_deref() {
                Some(
                    "caseignorematch"
                    | "caseignoreia5match"
                    | "caseignorelistmatch"
                    | "caseignoreordermatch",
                ) => Rule::CaseIgnore,
                Some("caseexactmatch" | "caseexactia5match" | "caseexactordermatch") => {
                    Rule::CaseExact
                }
                Some("distinguishednamematch" | "uniquemembermatch") => Rule::Dn,
                Some("telephonenumbermatch") => Rule::Telephone,
                Some("numericstringmatch" | "integermatch") => Rule::Numeric,
                Some(_) => Rule::Octet,
                None => Rule::Octet,
            };
            m.insert(a.clone(), rule);
        }
        MatchRules::from_map(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_openldap_definitions() {
        let at = vec![
            "( 2.5.4.41 NAME 'name' EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15{32768} )".to_string(),
            "( 2.5.4.3 NAME ( 'cn' 'commonName' ) DESC 'RFC4519: common name(s) for which the entity is known by' SUP name )".to_string(),
            "( 0.9.2342.19200300.100.1.10 NAME 'manager' DESC 'RFC1274: DN of manager' EQUALITY distinguishedNameMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.12 )".to_string(),
            "( 1.3.6.1.1.1.1.3 NAME 'homeDirectory' EQUALITY caseExactIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 SINGLE-VALUE )".to_string(),
        ];
        let oc = vec!["( 2.16.840.1.113730.3.2.2 NAME 'inetOrgPerson' DESC 'RFC2798' SUP organizationalPerson STRUCTURAL MAY ( audio $ x ) )".to_string()];
        let s = Schema::parse(&at, &oc);
        assert!(s.has_attr("commonName") && s.has_attr("CN") && s.has_attr("cn;lang-de"));
        assert!(!s.has_attr("titel"));
        assert!(s.has_class("inetorgperson"));
        assert_eq!(s.canonical("commonName"), "cn");
        assert_eq!(s.canonical("COMMONNAME;lang-de"), "cn;lang-de");
        assert_eq!(s.canonical("unknownThing"), "unknownThing");
        let r = s.match_rules();
        assert_eq!(r.rule("cn"), Rule::CaseIgnore);
        assert_eq!(r.rule("manager"), Rule::Dn);
        assert_eq!(r.rule("homeDirectory"), Rule::CaseExact);
    }
}

//! Mapping (pure): HR records → desired directory entries, through strict MiniJinja templates.

pub mod filters;
pub mod groups;
pub mod link;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};
use serde::Serialize;

use crate::config::{Policy, UsersConfig, KNOWN_VARIABLES};
use crate::dn::{self, Dn};
use crate::model::{DirSnapshot, Entry, MatchRules};
use crate::source::Record;
use link::Linking;

/// The entry a record should have.
///
/// One per person in the export, held until the plan is made: its texts are boxed (no spare
/// capacity, 8 bytes less each than a `String`) and its line and placement 32-bit, 112 bytes
/// before its strings instead of 152; the 1,000,000-record planner peaked 39 MB lower.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Desired {
    pub key: Box<str>,
    pub line: u32,
    /// The linked entry's uuid, when the person already has one.
    pub uuid: Option<Box<str>>,
    pub dn: Box<str>,
    /// attribute (as configured) → values; absent attributes are not listed.
    pub attrs: crate::names::NameMap<crate::names::Values>,
    /// The `[[users.placement]]` rule that chose the parent, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<u32>,
    /// The record's fields (for group rules and explain).
    #[serde(skip)]
    pub fields: crate::source::Fields,
    /// Attributes the lifecycle owns (the disable attributes) → wanted values (empty: absent).
    #[serde(skip_serializing_if = "crate::names::NameMap::is_empty")]
    pub lifecycle_attrs: crate::names::NameMap<crate::names::Values>,
    /// The lifecycle state, when `[lifecycle]` is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<Box<crate::lifecycle::State>>,
    /// A settled person (see [`Mapper::map_with`]): the last run planned nothing for the same
    /// record, entry and configuration, so the plan has nothing to compare; `attrs` holds only
    /// their entry's `uid`.
    #[serde(skip)]
    pub settled: bool,
}

/// Whether the folded unique value `folded` is held by an entry other than `own`, or was given
/// in this run to a record other than `i`.
fn held_by_other(
    taken: Option<&crate::model::Holders>,
    reserved: &HashMap<String, usize>,
    folded: &str,
    own: Option<&str>,
    i: usize,
) -> bool {
    taken
        .and_then(|t| t.get(folded))
        .is_some_and(|us| held_by_another(us, own))
        || given_to_another(reserved, folded, i)
}

/// Whether an entry other than `own` is among a value's holders.
fn held_by_another(holders: &crate::names::Values, own: Option<&str>) -> bool {
    holders.iter().any(|u| Some(u.as_str()) != own)
}

/// Whether the folded unique value `folded` was given in this run to a record other than `i`.
fn given_to_another(reserved: &HashMap<String, usize>, folded: &str, i: usize) -> bool {
    reserved.get(folded).is_some_and(|&j| j != i)
}

/// Why a person gets no value of a unique attribute: `value` is taken and no number is left.
fn no_number_left(attr: &str, value: &str) -> String {
    format!(
        "users.attributes.{attr}: {value:?} is already taken and the template has no {{{{ n }}}} to number it"
    )
}

/// Note why person `i` failed (the first reason stays).
fn fail(failed: &mut BTreeMap<usize, String>, i: usize, why: String) {
    failed.entry(i).or_insert(why);
}

/// A record that could not be mapped: it is quarantined for this run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapError {
    pub key: String,
    pub line: usize,
    pub reason: String,
}

#[derive(Clone, Debug, Default)]
pub struct MapOutput {
    pub desired: Vec<Desired>,
    pub errors: Vec<MapError>,
}

pub(crate) fn new_env(person_dns: filters::PersonDns) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    filters::register(&mut env, person_dns);
    env
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Check one template against the export's header: it must compile, name only columns (or known
/// variables such as `n`), and use only known filters. `header_known` false skips the column check
/// (the header could not be read; that is reported on its own).
pub fn check_template(src: &str, header: &[String], header_known: bool) -> Result<(), String> {
    let env = new_env(Default::default());
    let tmpl = env.template_from_str(src).map_err(|e| describe(&e))?;
    if header_known {
        unknown_variables(tmpl.undeclared_variables(false), header)?;
        trial(tmpl.render(Value::from_object(sample(header))).map(|_| ()))?;
    }
    Ok(())
}

/// The export's columns a template reads (for `explain`). MiniJinja's own list misses names used
/// through slices (`given_name[:1]`), so the source's identifiers are matched against the columns.
pub fn template_variables(src: &str, header: &[String]) -> Vec<String> {
    let words: std::collections::HashSet<&str> = src
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    header
        .iter()
        .filter(|h| words.contains(h.as_str()))
        .cloned()
        .collect()
}

/// The variables a condition reads (for `explain`).
pub fn expression_variables(src: &str) -> Vec<String> {
    let env = new_env(Default::default());
    let mut v: Vec<String> = env
        .compile_expression(src)
        .map(|e| e.undeclared_variables(false).into_iter().collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Check a condition (`when`): the same rules as [`check_template`], for an expression.
pub fn check_expression(src: &str, header: &[String], header_known: bool) -> Result<(), String> {
    let env = new_env(Default::default());
    let expr = env.compile_expression(src).map_err(|e| describe(&e))?;
    if header_known {
        unknown_variables(expr.undeclared_variables(false), header)?;
        trial(expr.eval(Value::from_object(sample(header))).map(|_| ()))?;
    }
    Ok(())
}

fn sample(header: &[String]) -> BTreeMap<String, Value> {
    let mut ctx: BTreeMap<String, Value> = header
        .iter()
        .map(|h| (h.clone(), Value::from("Sample")))
        .collect();
    ctx.insert("n".into(), Value::from(""));
    ctx
}

/// A trial evaluation finds unknown filters, tests and functions.
pub(crate) fn trial(r: Result<(), minijinja::Error>) -> Result<(), String> {
    match r {
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnknownFilter
                    | ErrorKind::UnknownFunction
                    | ErrorKind::UnknownTest
                    | ErrorKind::UnknownMethod
                    | ErrorKind::UndefinedError
            ) =>
        {
            Err(describe(&e))
        }
        _ => Ok(()),
    }
}

pub(crate) fn unknown_variables(
    vars: std::collections::HashSet<String>,
    header: &[String],
) -> Result<(), String> {
    let mut unknown: Vec<String> = vars
        .into_iter()
        .filter(|v| !KNOWN_VARIABLES.contains(&v.as_str()) && !header.contains(v))
        .collect();
    unknown.sort();
    let Some(v) = unknown.first() else {
        return Ok(());
    };
    let close = header
        .iter()
        .map(|h| (levenshtein(v, h), h))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, h)| format!(" (did you mean `{h}`?)"))
        .unwrap_or_default();
    Err(format!(
        "unknown variable{} `{}`{close}: not a column of the export (columns: {}) and not a known variable ({})",
        if unknown.len() > 1 { "s" } else { "" },
        unknown.join("`, `"),
        header.join(", "),
        KNOWN_VARIABLES.join(", ")
    ))
}

pub(crate) fn describe(e: &minijinja::Error) -> String {
    let mut s = e.kind().to_string();
    if let Some(d) = e.detail() {
        s = format!("{s}: {d}");
    }
    if let Some(l) = e.line() {
        s = format!("{s} (template line {l})");
    }
    s
}

/// The settled people's desired entries, in key order: each one's entry's DN, and of its values
/// only `uid`, what group rules read of a desired entry (posixGroup members). The plan does not
/// compare settled people, and explain and report do not use them: copying every value was 40%
/// of the time of a run.
fn settled_desired(users: &UsersConfig, settled: &[(&Record, &Entry)]) -> Vec<Desired> {
    let uid = users
        .attributes
        .keys()
        .chain([&users.rdn])
        .find(|a| a.eq_ignore_ascii_case("uid"))
        .map(|a| (crate::names::Name::new(a), a));
    let mut settled: Vec<&(&Record, &Entry)> = settled.iter().collect();
    settled.sort_by(|a, b| key_order(&a.0.key, &b.0.key));
    settled
        .into_iter()
        .map(|(r, e)| {
            let attrs: crate::names::NameMap<crate::names::Values> = uid
                .iter()
                .filter_map(|(n, a)| {
                    let v = e.get(a);
                    (!v.is_empty()).then(|| (*n, v.to_vec()))
                })
                .collect();
            Desired {
                key: r.key.as_str().into(),
                line: line_number(r.line),
                uuid: Some(e.uuid.as_str().into()),
                dn: e.dn.as_str().into(),
                attrs,
                placement: None,
                fields: r.fields.clone(),
                lifecycle_attrs: Default::default(),
                state: None,
                settled: true,
            }
        })
        .collect()
}

/// A record's line as a desired entry keeps it (a line past 4,294,967,295 is kept as that).
fn line_number(line: usize) -> u32 {
    u32::try_from(line).unwrap_or(u32::MAX)
}

/// Numeric keys compare as numbers, others as text: "ascending HR-key order".
pub fn key_order(a: &str, b: &str) -> Ordering {
    let num = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if num(a) && num(b) {
        let (ta, tb) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
        ta.len()
            .cmp(&tb.len())
            .then_with(|| ta.cmp(tb))
            .then_with(|| a.cmp(b))
    } else {
        a.cmp(b)
    }
}

const SENTINEL: &str = "\u{E000}";

/// Evaluate a condition for a record: true when it is truthy.
pub fn truthy(expr: &minijinja::Expression<'_, '_>, ctx: &Value) -> Result<bool, String> {
    expr.eval(ctx.clone())
        .map(|v| v.is_true())
        .map_err(|e| describe(&e))
}

/// The index of the first placement rule whose condition holds.
fn place(
    exprs: &[Option<Result<minijinja::Expression<'_, '_>, String>>],
    ctx: &Value,
) -> Result<Option<usize>, String> {
    for (i, e) in exprs.iter().enumerate() {
        match e {
            None => return Ok(Some(i)),
            Some(Err(msg)) => return Err(msg.clone()),
            Some(Ok(x)) => {
                if truthy(x, ctx).map_err(|m| format!("users.placement[{i}].when: {m}"))? {
                    return Ok(Some(i));
                }
            }
        }
    }
    Ok(None)
}

pub struct Mapper {
    env: Environment<'static>,
    users: UsersConfig,
    header: Arc<[String]>,
    /// Attributes whose template is one column and nothing else (`{{ title }}`): their value is
    /// the field, read without rendering.
    plain: BTreeMap<String, String>,
    person_dns: filters::PersonDns,
    /// Attributes whose template uses `n`.
    uses_n: BTreeSet<String>,
    /// Attributes whose template is `<anything without n>{{ n }}`: the value for `n` is the value
    /// for `n = ""` followed by `n`, so numbering needs one render, not one per number tried.
    suffix_n: BTreeSet<String>,
    /// Attributes whose template is `<P>{{ n }}<S>`, P and S plain text and expressions without
    /// `n` (`{{ given_name | slug }}.{{ surname | slug }}{{ n }}@example.com`): the value for `n`
    /// is P, then `n`, then S, each rendered once (the names of P's and S's templates), so
    /// numbering needs two renders, not one per number tried.
    split_n: BTreeMap<String, (String, String)>,
    /// `lifecycle.disabled-base`: people found there who are not leavers go back to `users.base`.
    disabled_base: Option<String>,
    /// Active Directory: sAMAccountName is made to fit (20 characters, no forbidden ones).
    ad: bool,
}

/// A record as templates see it: every column of the header (empty when the record has no value),
/// read from the record's shared fields when a template asks, not copied into a map per record.
#[derive(Debug)]
struct RecordContext {
    header: Arc<[String]>,
    fields: crate::source::Fields,
}

impl minijinja::value::Object for RecordContext {
    fn repr(self: &Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let k = key.as_str()?;
        match self.fields.get(k) {
            Some(v) => Some(Value::from(&**v)),
            None => self.header.iter().any(|h| h == k).then(|| Value::from("")),
        }
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        let mut keys: BTreeSet<&str> = self.header.iter().map(String::as_str).collect();
        keys.extend(self.fields.keys().map(|k| k.as_str()));
        minijinja::value::Enumerator::Values(keys.into_iter().map(Value::from).collect())
    }
}

/// The column a template renders as it is, when the template is that column and nothing else
/// (`{{ title }}`, `{{surname}}`; not `{{- title }}`, a literal such as `{{ none }}` or `n`).
fn plain_field(src: &str) -> Option<&str> {
    let inner = src.strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.starts_with(['-', '+']) || inner.ends_with(['-', '+']) {
        return None;
    }
    let name = inner.trim();
    let ident = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let reserved = [
        "n", "true", "false", "none", "True", "False", "None", "self", "loop", "super", "varargs",
        "kwargs",
    ];
    (ident && !reserved.contains(&name)).then_some(name)
}

/// The part before a trailing `{{ n }}` (`{{n}}`, `{{- n -}}`), if the template ends with one.
fn n_suffixed(src: &str) -> Option<&str> {
    let body = src.strip_suffix("}}")?;
    let open = body.rfind("{{")?;
    let raw = &body[open + 2..];
    // `{{- n }}` would strip whitespace the prefix renders: not this shape.
    let inner = raw.trim().trim_end_matches('-').trim_end();
    (inner == "n" && !raw.trim_start().starts_with('-')).then(|| &src[..open])
}

/// The text before and after the one `{{ n }}` of a template, when the two can be rendered on
/// their own and put together around `n` to give what the whole renders: no statements or
/// comments (`{% %}`, `{# #}`: a block or a `set` spans the split), no whitespace control (`-`
/// strips across it), and no line break ending the first part (a template's own last line break
/// is dropped). Whether the parts are free of `n` is checked by compiling them.
fn n_split(src: &str) -> Option<(&str, &str)> {
    let mut found = None;
    let mut at = 0;
    while let Some(open) = src[at..].find("{{").map(|o| o + at) {
        let close = src[open..].find("}}").map(|c| c + open)?;
        if src[open + 2..close].trim() == "n" {
            if found.is_some() {
                return None;
            }
            found = Some((open, close + 2));
        }
        at = close + 2;
    }
    let (open, end) = found?;
    let (p, s) = (&src[..open], &src[end..]);
    let plain = |t: &str| !["{%", "{#", "{{-", "-}}"].iter().any(|m| t.contains(m));
    (plain(p) && plain(s) && !p.ends_with('\n')).then_some((p, s))
}

impl Mapper {
    pub fn new(users: &UsersConfig, header: &[String]) -> Result<Mapper, String> {
        let person_dns: filters::PersonDns = Default::default();
        let mut env = new_env(person_dns.clone());
        for (name, src) in &users.attributes {
            env.add_template_owned(name.clone(), src.clone())
                .map_err(|e| format!("users.attributes.{name}: {}", describe(&e)))?;
        }
        let mut uses_n = BTreeSet::new();
        let mut suffix_n = BTreeSet::new();
        let mut split_parts: Vec<(String, String, String)> = Vec::new();
        for (name, src) in &users.attributes {
            if let Ok(t) = env.get_template(name) {
                if t.undeclared_variables(false).contains("n") {
                    uses_n.insert(name.clone());
                    if let Some(prefix) = n_suffixed(src) {
                        let free = env
                            .template_from_str(prefix)
                            .is_ok_and(|p| !p.undeclared_variables(false).contains("n"));
                        if free {
                            suffix_n.insert(name.clone());
                            continue;
                        }
                    }
                    if let Some((p, s)) = n_split(src) {
                        let free = |t: &str| {
                            env.template_from_str(t)
                                .is_ok_and(|t| !t.undeclared_variables(false).contains("n"))
                        };
                        if free(p) && free(s) {
                            split_parts.push((name.clone(), p.to_string(), s.to_string()));
                        }
                    }
                }
            }
        }
        let mut split_n = BTreeMap::new();
        for (name, p, s) in split_parts {
            // (names no attribute can have)
            let (pn, sn) = (
                format!("{name} {{{{ n }}}} before"),
                format!("{name} {{{{ n }}}} after"),
            );
            env.add_template_owned(pn.clone(), p)
                .and_then(|()| env.add_template_owned(sn.clone(), s))
                .map_err(|e| format!("users.attributes.{name}: {}", describe(&e)))?;
            split_n.insert(name, (pn, sn));
        }
        let plain = users
            .attributes
            .iter()
            .filter_map(|(name, src)| {
                let col = plain_field(src).filter(|c| header.iter().any(|h| h == c))?;
                Some((name.clone(), col.to_string()))
            })
            .collect();
        Ok(Mapper {
            ad: false,
            plain,
            suffix_n,
            split_n,
            disabled_base: None,
            uses_n,
            env,
            users: users.clone(),
            header: header.into(),
            person_dns,
        })
    }

    pub fn with_ad(mut self, ad: bool) -> Mapper {
        self.ad = ad;
        self
    }

    pub fn with_disabled_base(mut self, base: Option<String>) -> Mapper {
        self.disabled_base = base;
        self
    }

    /// The records' values of some attributes, rendered with `n` empty (for correlation).
    pub fn plain_values(
        &self,
        records: &[&Record],
        attrs: &[String],
    ) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for r in records {
            let ctx = self.context(r);
            let mut vals = BTreeMap::new();
            for a in attrs {
                if let Ok(Some(v)) = self.render(a, &ctx, "") {
                    vals.insert(a.clone(), v);
                }
            }
            out.insert(r.key.clone(), vals);
        }
        out
    }

    /// Register the POSIX home and shell templates.
    pub fn with_posix(
        mut self,
        posix: Option<&crate::config::PosixConfig>,
    ) -> Result<Mapper, String> {
        if let Some(p) = posix {
            self.env
                .add_template_owned("posix.home-directory", p.home_directory.clone())
                .map_err(|e| format!("users.posix.home-directory: {}", describe(&e)))?;
            if let Some(s) = &p.login_shell {
                self.env
                    .add_template_owned("posix.login-shell", s.clone())
                    .map_err(|e| format!("users.posix.login-shell: {}", describe(&e)))?;
            }
        }
        Ok(self)
    }

    /// Home and shell of a POSIX account, from the record and its uid.
    pub fn render_posix(
        &self,
        fields: &crate::source::FieldMap,
        uid: &str,
    ) -> Result<(Option<String>, Option<String>), String> {
        let mut ctx: BTreeMap<String, Value> = self
            .header
            .iter()
            .map(|h| (h.clone(), Value::from("")))
            .collect();
        for (k, v) in fields {
            ctx.insert(k.to_string(), Value::from(&**v));
        }
        ctx.insert("uid".into(), Value::from(uid));
        ctx.insert("n".into(), Value::from(""));
        let mut out = [None, None];
        for (i, name) in ["posix.home-directory", "posix.login-shell"]
            .iter()
            .enumerate()
        {
            if let Ok(t) = self.env.get_template(name) {
                let s = t
                    .render(Value::from_object(ctx.clone()))
                    .map_err(|e| format!("users.{name}: {}", describe(&e)))?;
                if !s.trim().is_empty() {
                    out[i] = Some(s);
                }
            }
        }
        let [home, shell] = out;
        Ok((home, shell))
    }

    /// Register the group rules' DN templates.
    pub fn with_groups(mut self, rules: &[crate::config::GroupRule]) -> Result<Mapper, String> {
        for r in rules.iter().filter(|r| r.for_each.is_some()) {
            self.env
                .add_template_owned(groups::template_name(r.index), r.dn.clone())
                .map_err(|e| format!("groups[{}].dn: {}", r.index, describe(&e)))?;
        }
        Ok(self)
    }

    /// A record's template context, built once (renders add `n` on top without copying it).
    fn context(&self, r: &Record) -> Value {
        Value::from_object(RecordContext {
            header: self.header.clone(),
            fields: r.fields.clone(),
        })
    }

    /// Render the part before or after `{{ n }}` of `attr`'s template (see `split_n`).
    fn render_part(&self, attr: &str, part: &str, ctx: &Value) -> Result<String, String> {
        let t = self.env.get_template(part).map_err(|e| describe(&e))?;
        t.render(ctx.clone())
            .map_err(|e| format!("users.attributes.{attr}: {}", describe(&e)))
    }

    /// Render one attribute; `None` when it renders empty (the attribute is absent).
    fn render(&self, attr: &str, ctx: &Value, n: &str) -> Result<Option<String>, String> {
        let field = self.plain.get(attr).and_then(|col| {
            let r = ctx.downcast_object_ref::<RecordContext>()?;
            // (a column of the header: absent from the record, it renders empty)
            Some(r.fields.get(col.as_str()).map_or("", |v| &**v))
        });
        let out = match field {
            Some(v) => v.to_string(),
            None => {
                let with_n = minijinja::value::merge_maps([
                    Value::from_object(BTreeMap::from([("n".to_string(), Value::from(n))])),
                    ctx.clone(),
                ]);
                let t = self.env.get_template(attr).map_err(|e| describe(&e))?;
                t.render(with_n)
                    .map_err(|e| format!("users.attributes.{attr}: {}", describe(&e)))?
            }
        };
        let out = if self.ad && attr.eq_ignore_ascii_case("sAMAccountName") {
            crate::ad::fit_sam(&out, n)
        } else {
            out
        };
        // Only an all-blank render means "absent"; other values are kept as rendered, spaces included.
        Ok(if out.trim().is_empty() {
            None
        } else {
            Some(out)
        })
    }

    /// Map the export. `records` are the valid records; `quarantined` the keys left alone.
    pub fn map(
        &self,
        records: &[Record],
        quarantined: &BTreeSet<String>,
        linking: &Linking,
        dir: &DirSnapshot,
        rules: &MatchRules,
    ) -> MapOutput {
        let records: Vec<&Record> = records.iter().collect();
        self.map_with(
            &records,
            quarantined,
            linking,
            dir,
            &dir.uuid_index(),
            rules,
            &BTreeMap::new(),
            &[],
        )
    }

    /// Empty the index behind `person_dn` (this run's people → DNs; at a million people, a copy
    /// of every key and DN). A run calls this once it renders no more templates.
    pub fn forget_people(&self) {
        if let Ok(mut g) = self.person_dns.write() {
            *g = Default::default();
        }
    }

    /// [`Mapper::map`] with forced parents (HR key → parent DN), e.g. `disabled-base` for leavers,
    /// and settled people: records whose entry the last run left as this mapping would make it
    /// (record and entry unchanged since, nothing they refer to changed). Those are not rendered
    /// again; their desired entry is their entry's DN and `uid`, marked `settled`.
    #[allow(clippy::too_many_arguments)]
    pub fn map_with(
        &self,
        records: &[&Record],
        quarantined: &BTreeSet<String>,
        linking: &Linking,
        dir: &DirSnapshot,
        dir_index: &crate::model::UuidIndex<'_>,
        rules: &MatchRules,
        parents: &BTreeMap<String, String>,
        settled: &[(&Record, &Entry)],
    ) -> MapOutput {
        let users = &self.users;
        // The settled people's desired entries (a sort and a copy of each one's key, DN and uid:
        // 50 ms at 100,000 people) are made on the second core while the others are mapped, after
        // their keys and DNs for person_dn (sent first: 10 ms).
        let settled_pairs = || -> Vec<(Box<str>, Box<str>)> {
            settled
                .iter()
                .map(|(r, e)| (r.key.as_str().into(), e.dn.as_str().into()))
                .collect()
        };
        std::thread::scope(|scope| {
            let (pairs_tx, pairs_rx) = std::sync::mpsc::channel();
            let side = if settled.len() >= crate::TWO_THREADS_FROM {
                Some(scope.spawn(move || {
                    let _ = pairs_tx.send(settled_pairs());
                    settled_desired(users, settled)
                }))
            } else {
                drop(pairs_tx);
                None
            };
            let theirs = || match side.map(|h| h.join()) {
                Some(Ok(made)) => made,
                _ => settled_desired(users, settled),
            };
            // The entries of the people mapped here, and of the quarantined and gone (person_dn).
            let by_uuid = |u: &str| dir_index.get(u).and_then(|i| dir.entries.get(i));
            let mut order: Vec<&Record> = records
                .iter()
                .copied()
                .filter(|r| !linking.conflicts.contains_key(&r.key))
                .collect();
            order.sort_by(|a, b| key_order(&a.key, &b.key));
            let mut errors: Vec<MapError> = Vec::new();
            for (k, dns) in &linking.conflicts {
                if let Some(r) = records.iter().find(|r| &r.key == k) {
                    errors.push(MapError {
                            key: k.clone(),
                            line: r.line,
                            reason: format!(
                                "more than one entry carries anchor {} = {k:?}: {}; remove the duplicate",
                                self.users.anchor,
                                dns.join(" and ")
                            ),
                        });
                }
            }
            let placement_exprs: Vec<Option<Result<minijinja::Expression<'_, '_>, String>>> = self
                .users
                .placement
                .iter()
                .map(|p| {
                    p.when.as_ref().map(|w| {
                        self.env.compile_expression(w).map_err(|e| {
                            format!("users.placement[{}].when: {}", p.index, describe(&e))
                        })
                    })
                })
                .collect();
            let mut ctxs: Vec<Value> = order.iter().map(|r| self.context(r)).collect();
            let existing: Vec<Option<&Entry>> = order
                .iter()
                .map(|r| linking.by_key.get(&r.key).and_then(|u| by_uuid(u)))
                .collect();
            // index → why mapping failed (few: a list of one slot per person would be 24 MB at a million)
            let mut failed: BTreeMap<usize, String> = BTreeMap::new();
            // Filled in place: the values, DN and placement go straight into each person's entry
            // (side lists of each would be 60 MB at a million people); the failed are dropped last.
            let mut desired: Vec<Desired> = order
                .iter()
                .enumerate()
                .map(|(i, r)| Desired {
                    key: r.key.as_str().into(),
                    line: line_number(r.line),
                    uuid: existing[i].map(|e| e.uuid.as_str().into()),
                    dn: Default::default(),
                    attrs: Default::default(),
                    placement: None,
                    fields: r.fields.clone(),
                    lifecycle_attrs: Default::default(),
                    state: None,
                    settled: false,
                })
                .collect();

            // Active Directory: a userPrincipalName's local part implies a sAMAccountName, so the two
            // are unique against each other too (`bjoiner@…` collides with sAMAccountName BJOINER).
            let local = |v: &str| v.split('@').next().unwrap_or("").to_lowercase();
            let mut sam_like: HashMap<String, Vec<String>> = HashMap::new();
            if self.ad {
                for a in ["samaccountname", "userprincipalname"] {
                    for (v, us) in dir.taken.get(a).into_iter().flatten() {
                        sam_like
                            .entry(local(v))
                            .or_default()
                            .extend(us.iter().cloned());
                    }
                }
            }
            let mut chosen_sam: HashMap<String, usize> = HashMap::new();
            // Pass 1: unique attributes, in name order; existing holders first, then new ones by key.
            for attr in &self.users.unique {
                let sam_rule = self.ad
                    && (attr.eq_ignore_ascii_case("sAMAccountName")
                        || attr.eq_ignore_ascii_case("userPrincipalName"));
                let lower = attr.to_ascii_lowercase();
                let taken = dir.taken.get(&lower);
                let mut reserved: HashMap<String, usize> = HashMap::new();
                let mut pending: Vec<usize> = Vec::new();
                for i in 0..order.len() {
                    if failed.contains_key(&i) {
                        continue;
                    }
                    let cur = existing[i].and_then(|e| e.get(attr).first().cloned());
                    let keep = match (&cur, self.users.policy_of(attr)) {
                        (Some(c), Policy::Initial) => Some(c.clone()),
                        (Some(c), Policy::Force) => match self.sticks(attr, &ctxs[i], c, rules) {
                            Ok(true) => Some(c.clone()),
                            Ok(false) => None,
                            Err(e) => {
                                fail(&mut failed, i, e);
                                continue;
                            }
                        },
                        (None, _) => None,
                    };
                    match keep {
                        Some(v) => {
                            reserved.insert(rules.fold(attr, &v), i);
                            desired[i].attrs.insert(attr.clone(), v.into());
                        }
                        None => pending.push(i),
                    }
                }
                // `<prefix>{{ n }}` templates: per folded prefix, the last number given. A new person
                // with the same prefix starts after it (every lower number is taken by then), so
                // 66 John Smiths cost 66 tries, not 66 × 67 / 2.
                let suffixed = self.suffix_n.contains(attr) && !sam_rule;
                let mut last_n: HashMap<String, u32> = HashMap::new();
                // `<P>{{ n }}<S>` templates: the same, per P and S as rendered (the same two give
                // the same values for every number)
                let split = self.split_n.get(attr).filter(|_| !sam_rule);
                let mut last_split: HashMap<(String, String), u32> = HashMap::new();
                // (a candidate's folded value, when it is the folded base and the number)
                let mut candidate = String::new();
                'people: for i in pending {
                    let own = existing[i].map(|e| e.uuid.as_str());
                    let mut n = 1u32;
                    let mut plain: Option<(String, String)> = None;
                    if suffixed {
                        // rendered blank or failed: the loop below says so
                        if let Ok(Some(v)) = self.render(attr, &ctxs[i], "") {
                            let f = rules.fold(attr, &v);
                            if own.is_none() {
                                if let Some(k) = last_n.get(&f) {
                                    n = k + 1;
                                }
                            }
                            plain = Some((v, f));
                        }
                    }
                    let mut parts: Option<(String, String)> = None;
                    if let Some((pn, sn)) = split {
                        let both = self
                            .render_part(attr, pn, &ctxs[i])
                            .and_then(|p| Ok((p, self.render_part(attr, sn, &ctxs[i])?)));
                        match both {
                            Ok(ps) => {
                                if own.is_none() {
                                    if let Some(k) = last_split.get(&ps) {
                                        n = k + 1;
                                    }
                                }
                                parts = Some(ps);
                            }
                            Err(e) => {
                                fail(&mut failed, i, e);
                                continue;
                            }
                        }
                    }
                    // A base whose folding keeps appended digits as they are (not one ending in a
                    // space, which folding trims): the numbers taken by others are skipped by
                    // appending each to the folded base, without formatting and folding a value per
                    // number. The bench's hard names give a new person's base ~160 holders.
                    if let Some((v, f)) = &plain {
                        let digits_kept = ["7", "10"]
                            .iter()
                            .all(|d| rules.fold(attr, &format!("{v}{d}")) == format!("{f}{d}"));
                        if digits_kept && self.uses_n.contains(attr) {
                            // The numbers other entries hold after this base, read off the list
                            // of holders at once (not looked up number by number), sorted (a
                            // set of the ~160 numbers per new person's base took 20 ms per
                            // churn at 100,000 people).
                            let mut held: Vec<u32> = taken
                                .map(|t| t.numbered(f))
                                .unwrap_or(&[])
                                .iter()
                                .filter(|(_, us)| held_by_another(us, own))
                                .filter_map(|(v, _)| {
                                    let d = &v[f.len()..];
                                    let canonical = !d.starts_with('0')
                                        && d.bytes().all(|b| b.is_ascii_digit());
                                    canonical.then(|| d.parse::<u32>().ok()).flatten()
                                })
                                .collect();
                            held.sort_unstable();
                            loop {
                                candidate.clear();
                                candidate.push_str(f);
                                if n > 1 {
                                    use std::fmt::Write as _;
                                    let _ = write!(candidate, "{n}");
                                }
                                let by_other = if n == 1 {
                                    held_by_other(taken, &reserved, &candidate, own, i)
                                } else {
                                    held.binary_search(&n).is_ok()
                                        || given_to_another(&reserved, &candidate, i)
                                };
                                if !by_other {
                                    break;
                                }
                                if n >= 100_000 {
                                    fail(&mut failed, i, no_number_left(attr, &format!("{v}{n}")));
                                    continue 'people;
                                }
                                n += 1;
                            }
                            let value = if n > 1 { format!("{v}{n}") } else { v.clone() };
                            let e = last_n.entry(f.clone()).or_insert(n);
                            *e = (*e).max(n);
                            reserved.insert(candidate.clone(), i);
                            desired[i].attrs.insert(attr.clone(), value.into());
                            continue;
                        }
                    }
                    loop {
                        let ns = if n == 1 { String::new() } else { n.to_string() };
                        let rendered = match (&plain, &parts) {
                            (Some((v, _)), _) => Ok(Some(format!("{v}{ns}"))),
                            (None, Some((p, s))) => {
                                // (only an all-blank value is absent, as `render` has it)
                                let v = format!("{p}{ns}{s}");
                                Ok((!v.trim().is_empty()).then_some(v))
                            }
                            (None, None) => self.render(attr, &ctxs[i], &ns),
                        };
                        match rendered {
                            Err(e) => {
                                fail(&mut failed, i, e);
                                break;
                            }
                            Ok(None) => break,
                            Ok(Some(v)) => {
                                let f = rules.fold(attr, &v);
                                let by_other = held_by_other(taken, &reserved, &f, own, i);
                                let by_sam_rule = sam_rule && {
                                    let l = local(&v);
                                    sam_like.get(&l).is_some_and(|us| {
                                        us.iter().any(|u| Some(u.as_str()) != own)
                                    }) || chosen_sam.get(&l).is_some_and(|&j| j != i)
                                };
                                if !by_other && !by_sam_rule {
                                    if sam_rule {
                                        chosen_sam.insert(local(&v), i);
                                    }
                                    if let Some((_, pf)) = &plain {
                                        let e = last_n.entry(pf.clone()).or_insert(n);
                                        *e = (*e).max(n);
                                    }
                                    if let Some(ps) = parts.take() {
                                        let e = last_split.entry(ps).or_insert(n);
                                        *e = (*e).max(n);
                                    }
                                    reserved.insert(f, i);
                                    desired[i].attrs.insert(attr.clone(), v.into());
                                    break;
                                }
                                if n >= 100_000 || !self.uses_n.contains(attr) {
                                    fail(&mut failed, i, no_number_left(attr, &v));
                                    break;
                                }
                            }
                        }
                        n += 1;
                    }
                }
            }

            // The RDN and the DN.
            let rdn = self.users.rdn.clone();
            for i in 0..order.len() {
                if failed.contains_key(&i) {
                    continue;
                }
                if !desired[i].attrs.contains_key(&rdn) {
                    match self.render(&rdn, &ctxs[i], "") {
                        Ok(Some(v)) => {
                            desired[i].attrs.insert(rdn.clone(), v.into());
                        }
                        Ok(None) => {
                            fail(&mut failed, i, format!("users.attributes.{rdn} (the RDN) rendered empty; the entry cannot be named"));
                            continue;
                        }
                        Err(e) => {
                            fail(&mut failed, i, e);
                            continue;
                        }
                    }
                }
                let want = desired[i].attrs[&rdn][0].clone();
                // Placement: the first matching rule, else users.base. Without rules, an existing entry
                // stays where it is.
                let placed = match place(&placement_exprs, &ctxs[i]) {
                    Ok(p) => p,
                    Err(e) => {
                        fail(&mut failed, i, e);
                        continue;
                    }
                };
                let cur = existing[i].and_then(|e| Dn::parse(&e.dn).ok());
                let parent = match (placed, &cur) {
                    _ if parents.contains_key(&order[i].key) => parents[&order[i].key].clone(),
                    (Some(r), _) => self.users.placement[r].base.clone(),
                    (None, Some(d))
                        if self.users.placement.is_empty()
                            && !self
                                .disabled_base
                                .as_ref()
                                .and_then(|b| Dn::parse(b).ok())
                                .is_some_and(|b| d.parent().is_within(&b)) =>
                    {
                        d.parent().to_string()
                    }
                    _ => self.users.base.clone(),
                };
                desired[i].placement = placed.map(|r| r as u32);
                if dir.missing_bases.contains(&dn::normalize(&parent)) {
                    match placed.map(|r| &self.users.placement[r]) {
                        Some(rule) if rule.create => {}
                        Some(rule) => {
                            fail(&mut failed, i, format!(
                                    "users.placement[{}] puts this person under {parent}, which does not exist: create it, or set create = true in that rule",
                                    rule.index
                                ));
                            continue;
                        }
                        None => {
                            fail(&mut failed, i, format!("{parent} does not exist"));
                            continue;
                        }
                    }
                }
                let same_parent = cur
                    .as_ref()
                    .map(|d| d.parent().normalized() == dn::normalize(&parent))
                    .unwrap_or(false);
                let cur_rdn = cur.as_ref().and_then(|d| d.first().cloned());
                let same_rdn = cur_rdn
                    .as_ref()
                    .map(|a| {
                        a.attr.eq_ignore_ascii_case(&rdn)
                            && rules.fold(&rdn, &a.value) == rules.fold(&rdn, &want)
                    })
                    .unwrap_or(false);
                desired[i].dn = match (existing[i], cur_rdn) {
                    (None, _) => dn::child(&rdn, &want, &parent).into(),
                    (Some(e), _) if same_rdn && same_parent => e.dn.as_str().into(),
                    (Some(_), Some(a))
                        if self.users.policy_of(&rdn) == Policy::Initial
                            && a.attr.eq_ignore_ascii_case(&rdn) =>
                    {
                        // dirbridge does not own the name: keep it (a move keeps it too).
                        desired[i].attrs.insert(rdn.clone(), a.value.clone().into());
                        dn::child(&a.attr, &a.value, &parent).into()
                    }
                    (Some(_), _) => dn::child(&rdn, &want, &parent).into(),
                };
            }

            // person_dn: every person in the export, and quarantined people who have an entry.
            {
                let mut map: Vec<(Box<str>, Box<str>)> =
                    Vec::with_capacity(order.len() + settled.len());
                for i in 0..order.len() {
                    if !failed.contains_key(&i) {
                        map.push((order[i].key.as_str().into(), desired[i].dn.clone()));
                    }
                }
                map.extend(pairs_rx.recv().unwrap_or_else(|_| settled_pairs()));
                // A quarantined person keeps the entry they have (also one the linker took as gone).
                let gone_by_key: foldhash::HashMap<&str, &str> = linking
                    .gone
                    .iter()
                    .map(|(u, k)| (k.as_str(), u.as_str()))
                    .collect();
                for k in quarantined {
                    let uuid = linking
                        .by_key
                        .get(k)
                        .map(String::as_str)
                        .or_else(|| gone_by_key.get(k.as_str()).copied());
                    if let Some(e) = uuid.and_then(by_uuid) {
                        map.push((k.as_str().into(), e.dn.as_str().into()));
                    }
                }
                if let Ok(mut g) = self.person_dns.write() {
                    *g = filters::DnIndex::new(map);
                }
            }
            // (the entries were needed for names and places; rendering the rest does not read
            // them: at a million people the list is 8 MB at the run's peak)
            drop(existing);

            // Pass 2: every other attribute.
            for i in 0..order.len() {
                if failed.contains_key(&i) {
                    continue;
                }
                for attr in self.users.attributes.keys() {
                    if desired[i].attrs.contains_key(attr) || self.users.unique.contains(attr) {
                        continue;
                    }
                    match self.render(attr, &ctxs[i], "") {
                        Ok(Some(v)) => {
                            desired[i].attrs.insert(attr.clone(), v.into());
                        }
                        Ok(None) => {}
                        Err(e) => {
                            fail(&mut failed, i, e);
                            break;
                        }
                    }
                }
                // (rendered: the context goes now, not with the others at the end)
                ctxs[i] = Value::UNDEFINED;
            }

            // (what only rendering needed goes first: at a million people the contexts are 40 MB,
            // and the settled below are added to a new list)
            drop(ctxs);
            let mut i = 0;
            desired.retain_mut(|d| {
                i += 1;
                match failed.remove(&(i - 1)) {
                    Some(reason) => {
                        errors.push(MapError {
                            key: std::mem::take(&mut d.key).into(),
                            line: d.line as usize,
                            reason,
                        });
                        false
                    }
                    None => true,
                }
            });
            let theirs = theirs();
            if !theirs.is_empty() {
                // both lists in key order: merged, not sorted again
                let mapped = std::mem::take(&mut desired);
                desired.reserve_exact(mapped.len() + theirs.len());
                let mut mapped = mapped.into_iter().peekable();
                for t in theirs {
                    while let Some(d) =
                        mapped.next_if(|d| key_order(&d.key, &t.key) != std::cmp::Ordering::Greater)
                    {
                        desired.push(d);
                    }
                    desired.push(t);
                }
                desired.extend(mapped);
            }
            errors.sort_by(|a, b| key_order(&a.key, &b.key));
            MapOutput { desired, errors }
        })
    }

    /// Whether the current value `cur` is still a numbering of the template's base (`base`, `base2`, …).
    fn sticks(
        &self,
        attr: &str,
        ctx: &Value,
        cur: &str,
        rules: &MatchRules,
    ) -> Result<bool, String> {
        let base = self.render(attr, ctx, "")?;
        let Some(base) = base else { return Ok(false) };
        let fc = rules.fold(attr, cur);
        if fc == rules.fold(attr, &base) {
            return Ok(true);
        }
        // (a `<prefix>{{ n }}` template's value for n is its value for "" followed by n: no
        // second render)
        let pat;
        let (pre, suf) = if self.suffix_n.contains(attr) {
            (base.as_str(), "")
        } else {
            let Ok(Some(p)) = self.render(attr, ctx, SENTINEL) else {
                return Ok(false);
            };
            pat = p;
            let Some(parts) = pat.split_once(SENTINEL) else {
                return Ok(false);
            };
            parts
        };
        let (fp, fs) = (rules.fold(attr, pre), rules.fold(attr, suf));
        if fc.len() < fp.len() + fs.len() || !fc.starts_with(&fp) || !fc.ends_with(&fs) {
            return Ok(false);
        }
        let mid = &fc[fp.len()..fc.len() - fs.len()];
        Ok(!mid.is_empty()
            && !mid.starts_with('0')
            && mid.bytes().all(|b| b.is_ascii_digit())
            && mid != "1")
    }
}

#[cfg(test)]
pub(crate) mod tests;

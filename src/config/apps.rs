//! `[[apps]]`: applications that get accounts (SCIM 2.0 services, and programs run per change).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{check_private, Ctx, Number};
use crate::secret::Secret;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawApp {
    name: Spanned<String>,
    kind: Spanned<String>,
    url: Option<Spanned<String>>,
    token_file: Option<Spanned<PathBuf>>,
    ca_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    allow_insecure: bool,
    when: Option<Spanned<String>>,
    #[serde(default)]
    attributes: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    groups: Vec<Spanned<String>>,
    delete_after: Option<Spanned<String>>,
    max_requests_per_second: Option<Spanned<Number>>,
    concurrency: Option<Spanned<i64>>,
    timeout: Option<Spanned<String>>,
    retries: Option<Spanned<i64>>,
    command: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    batch: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppKind {
    Scim,
    Command,
}

/// One application, resolved.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct AppConfig {
    pub name: String,
    pub kind: AppKind,
    /// SCIM: the service's base URL (ending in `/v2` or wherever `/Users` lives).
    pub url: Option<String>,
    #[serde(skip)]
    pub token: Option<Secret>,
    pub token_source: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub allow_insecure: bool,
    /// Who gets an account (an expression over the record and `entry`); None: everyone.
    pub when: Option<String>,
    /// SCIM attribute (or, for commands, any name) → template.
    pub attributes: BTreeMap<String, String>,
    /// Managed groups pushed to the application (group DN or its first RDN value; `*` globs).
    pub groups: Vec<String>,
    /// Deactivated accounts are deleted after this long (None: never).
    #[serde(with = "super::opt_secs")]
    pub delete_after: Option<Duration>,
    /// Request budget (0: unlimited).
    pub max_requests_per_second: f64,
    pub concurrency: usize,
    #[serde(with = "super::secs")]
    pub timeout: Duration,
    /// Attempts after the first, for 429/503/5xx and timeouts.
    pub retries: u32,
    pub command: Vec<String>,
    pub batch: bool,
}

/// The SCIM attributes dirbridge can map, as written in `[apps.attributes]`. `active` and
/// `externalId` are dirbridge's own (lifecycle state and HR key).
pub const SCIM_ATTRIBUTES: &[&str] = &[
    "userName",
    "name.givenName",
    "name.familyName",
    "name.middleName",
    "name.formatted",
    "displayName",
    "nickName",
    "title",
    "userType",
    "preferredLanguage",
    "locale",
    "timezone",
    "emails",
    "phoneNumbers",
    "employeeNumber",
    "department",
    "costCenter",
    "organization",
    "division",
    "manager",
];

/// Variables app templates may use besides the export's columns.
pub const APP_VARIABLES: &[&str] = &["entry"];

fn duration(
    cx: &mut Ctx<'_>,
    v: &Option<Spanned<String>>,
    what: &str,
    default: Option<Duration>,
    never_ok: bool,
) -> Option<Duration> {
    let Some(s) = v else { return default };
    let text = s.get_ref().as_str();
    if never_ok && text == "never" {
        return None;
    }
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Some(d),
        _ => {
            cx.err(
                Some(s.span()),
                format!(
                    "{what} = {text:?} is not a duration such as \"30s\" or \"90d\"{}",
                    if never_ok { " (or \"never\")" } else { "" }
                ),
            );
            default
        }
    }
}

pub(super) fn resolve(
    cx: &mut Ctx<'_>,
    raw: &[Spanned<RawApp>],
    header: &[String],
    entry_attrs: &[String],
    rel: &dyn Fn(&Path) -> PathBuf,
) -> Vec<AppConfig> {
    let mut out: Vec<AppConfig> = Vec::new();
    for (i, a) in raw.iter().enumerate() {
        let ra = a.get_ref();
        let name = ra.name.get_ref().trim().to_string();
        let at = format!("apps[{i}]");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            cx.err(
                Some(ra.name.span()),
                format!("{at}.name = {name:?}: use letters, digits, - and _ (it names the app in plans, the audit and status)"),
            );
        }
        if out.iter().any(|o| o.name == name) {
            cx.err(
                Some(ra.name.span()),
                format!("{at}.name = {name:?} is used by another [[apps]] entry"),
            );
        }
        let at = format!("apps.{name}");
        let kind = match ra.kind.get_ref().as_str() {
            "scim" => AppKind::Scim,
            "command" => AppKind::Command,
            other => {
                cx.err(
                    Some(ra.kind.span()),
                    format!("{at}.kind = {other:?} is not one of \"scim\", \"command\""),
                );
                AppKind::Command
            }
        };
        let mut token = None;
        let mut token_source = None;
        let mut url = None;
        let mut command = Vec::new();
        match kind {
            AppKind::Scim => {
                match &ra.url {
                    None => cx.err(
                        Some(a.span()),
                        format!("{at}: kind = \"scim\" needs url = \"https://…/scim/v2\""),
                    ),
                    Some(u) => {
                        let text = u.get_ref().trim_end_matches('/').to_string();
                        match reqwest::Url::parse(&text) {
                            Ok(parsed) => {
                                let host = parsed.host_str().unwrap_or("");
                                let loopback = host == "localhost"
                                    || host
                                        .trim_matches(['[', ']'])
                                        .parse::<std::net::IpAddr>()
                                        .is_ok_and(|ip| ip.is_loopback());
                                match parsed.scheme() {
                                    "https" => {}
                                    "http" if loopback || ra.allow_insecure => {}
                                    "http" => cx.err(
                                        Some(u.span()),
                                        format!("{at}.url: plain http would send the token in clear text to {}: use https://, or set allow-insecure = true to accept the risk", parsed.host_str().unwrap_or("?")),
                                    ),
                                    s => cx.err(
                                        Some(u.span()),
                                        format!("{at}.url: scheme {s:?} is not http or https"),
                                    ),
                                }
                            }
                            Err(e) => cx.err(Some(u.span()), format!("{at}.url: {e}")),
                        }
                        url = Some(text);
                    }
                }
                let cred = std::env::var_os("CREDENTIALS_DIRECTORY")
                    .map(|c| PathBuf::from(c).join(format!("app-{name}-token")));
                let (path, span) = match (&cred, &ra.token_file) {
                    (Some(c), _) if c.exists() => (Some(c.clone()), None),
                    (_, Some(p)) => (Some(rel(p.get_ref())), Some(p.span())),
                    _ => (None, None),
                };
                match path {
                    None => cx.err(
                        Some(a.span()),
                        format!("{at}: kind = \"scim\" needs token-file (the bearer token; or the systemd credential app-{name}-token)"),
                    ),
                    Some(p) => match std::fs::read_to_string(&p) {
                        Ok(s) => {
                            let t = s.trim().to_string();
                            if t.is_empty() {
                                cx.err(span.clone(), format!("token file {} is empty", p.display()));
                            }
                            check_private(cx, &p, span.clone());
                            token = Some(Secret::new(t));
                            token_source = Some(p);
                        }
                        Err(e) => cx.err(
                            span.clone(),
                            format!("cannot read token file {}: {e}", p.display()),
                        ),
                    },
                }
                if !ra.attributes.contains_key("userName") {
                    cx.err(
                        Some(a.span()),
                        format!("{at}.attributes must map userName (e.g. userName = \"{{{{ entry.uid }}}}\")"),
                    );
                }
                for (k, v) in &ra.attributes {
                    if !SCIM_ATTRIBUTES.contains(&k.as_str()) {
                        cx.err(
                            Some(v.span()),
                            format!(
                                "{at}.attributes.{k}: not a SCIM attribute dirbridge maps; use one of: {} (active and externalId are set by dirbridge)",
                                SCIM_ATTRIBUTES.join(", ")
                            ),
                        );
                    }
                }
                if let Some(c) = &ra.command {
                    cx.err(
                        Some(c.span()),
                        format!("{at}.command only applies to kind = \"command\""),
                    );
                }
            }
            AppKind::Command => {
                match &ra.command {
                    Some(c) if !c.get_ref().is_empty() => {
                        if !Path::new(&c.get_ref()[0]).is_absolute() {
                            cx.err(
                                Some(c.span()),
                                format!("{at}.command: the program must be an absolute path (it runs without a shell)"),
                            );
                        }
                        command = c.get_ref().clone();
                    }
                    _ => cx.err(
                        Some(a.span()),
                        format!(
                            "{at}: kind = \"command\" needs command = [\"/path/to/program\", …]"
                        ),
                    ),
                }
                for (what, set) in [
                    ("url", ra.url.as_ref().map(|u| u.span())),
                    ("token-file", ra.token_file.as_ref().map(|u| u.span())),
                    ("ca-file", ra.ca_file.as_ref().map(|u| u.span())),
                ] {
                    if let Some(span) = set {
                        cx.err(
                            Some(span),
                            format!("{at}.{what} only applies to kind = \"scim\""),
                        );
                    }
                }
                if let Some(g) = ra.groups.first() {
                    cx.err(
                        Some(g.span()),
                        format!("{at}.groups only applies to kind = \"scim\""),
                    );
                }
            }
        }
        let ca_file = ra.ca_file.as_ref().map(|c| {
            let p = rel(c.get_ref());
            if let Err(e) = std::fs::metadata(&p) {
                cx.err(
                    Some(c.span()),
                    format!("cannot read ca-file {}: {e}", p.display()),
                );
            }
            p
        });
        let mut attributes = BTreeMap::new();
        for (k, v) in &ra.attributes {
            if let Err(m) = crate::apps::check_template(v.get_ref(), header, entry_attrs) {
                cx.err(Some(v.span()), format!("{at}.attributes.{k}: {m}"));
            }
            attributes.insert(k.clone(), v.get_ref().clone());
        }
        if let Some(w) = &ra.when {
            if let Err(m) = crate::apps::check_expression(w.get_ref(), header, entry_attrs) {
                cx.err(Some(w.span()), format!("{at}.when: {m}"));
            }
        }
        let delete_after = duration(
            cx,
            &ra.delete_after,
            &format!("{at}.delete-after"),
            None,
            true,
        );
        let timeout = duration(
            cx,
            &ra.timeout,
            &format!("{at}.timeout"),
            Some(Duration::from_secs(30)),
            false,
        )
        .unwrap_or(Duration::from_secs(30));
        let max_requests_per_second = match &ra.max_requests_per_second {
            None => 20.0,
            Some(n) if n.get_ref().get() >= 0.0 => n.get_ref().get(),
            Some(n) => {
                cx.err(
                    Some(n.span()),
                    format!("{at}.max-requests-per-second must be 0 (unlimited) or more"),
                );
                20.0
            }
        };
        let concurrency = match &ra.concurrency {
            None => 4,
            Some(n) if (1..=64).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                cx.err(
                    Some(n.span()),
                    format!("{at}.concurrency must be between 1 and 64"),
                );
                4
            }
        };
        let retries = match &ra.retries {
            None => 3,
            Some(n) if (0..=20).contains(n.get_ref()) => *n.get_ref() as u32,
            Some(n) => {
                cx.err(
                    Some(n.span()),
                    format!("{at}.retries must be between 0 and 20"),
                );
                3
            }
        };
        out.push(AppConfig {
            name,
            kind,
            url,
            token,
            token_source,
            ca_file,
            allow_insecure: ra.allow_insecure,
            when: ra.when.as_ref().map(|w| w.get_ref().clone()),
            attributes,
            groups: ra.groups.iter().map(|g| g.get_ref().clone()).collect(),
            delete_after,
            max_requests_per_second,
            concurrency,
            timeout,
            retries,
            command,
            batch: ra.batch,
        });
    }
    out
}

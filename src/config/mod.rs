//! Configuration: raw serde structs (kebab-case, unknown keys refused) resolved into a runtime
//! [`Config`] (paths checked, templates compiled against the export's header, secrets read).
//! Every problem is collected before anything is reported.

pub mod apps;
pub mod diagnostic;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::dn::Dn;
use crate::secret::Secret;
pub use diagnostic::{Diagnostic, Diagnostics, Severity};

pub const DEFAULT_PATH: &str = "/etc/dirbridge/dirbridge.toml";

// ---------------------------------------------------------------- raw (as written)

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawConfig {
    source: Spanned<RawSource>,
    directory: Spanned<RawDirectory>,
    state: RawState,
    users: Spanned<RawUsers>,
    #[serde(default)]
    safety: RawSafety,
    // Sections of capabilities that are not built yet: refused by name, not as unknown keys.
    #[serde(default)]
    groups: Vec<Spanned<RawGroup>>,
    lifecycle: Option<Spanned<RawLifecycle>>,
    #[serde(default)]
    apps: Vec<Spanned<apps::RawApp>>,
    daemon: Option<Spanned<RawDaemon>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawSource {
    kind: Spanned<String>,
    path: Spanned<PathBuf>,
    key: Spanned<String>,
    delimiter: Option<Spanned<String>>,
    encoding: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawDirectory {
    url: Spanned<OneOrMany>,
    #[serde(default)]
    flavor: Option<Spanned<String>>,
    bind_dn: Option<Spanned<String>>,
    password_file: Option<Spanned<PathBuf>>,
    ca_file: Option<Spanned<PathBuf>>,
    base_dn: Spanned<String>,
    #[serde(default)]
    starttls: bool,
    #[serde(default)]
    allow_insecure: bool,
    connect_timeout: Option<Spanned<String>>,
    operation_timeout: Option<Spanned<String>>,
    page_size: Option<u32>,
    max_in_flight: Option<u32>,
    connections: Option<u32>,
    transaction_size: Option<Spanned<u32>>,
    range_size: Option<u32>,
    content_sync: Option<bool>,
    full_read_every: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawState {
    path: Spanned<PathBuf>,
    audit_retention: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawUsers {
    base: Spanned<String>,
    rdn: Option<Spanned<String>>,
    object_classes: Option<Spanned<Vec<String>>>,
    anchor: Option<Spanned<String>>,
    attributes: Spanned<BTreeMap<String, Spanned<String>>>,
    #[serde(default)]
    unique: BTreeMap<String, Spanned<bool>>,
    #[serde(default)]
    policy: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    correlate: Vec<Spanned<String>>,
    #[serde(default)]
    placement: Vec<Spanned<RawPlacement>>,
    posix: Option<Spanned<RawPosix>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawGroup {
    dn: Spanned<String>,
    when: Option<Spanned<String>>,
    for_each: Option<Spanned<String>>,
    object_class: Option<Spanned<String>>,
    members: Option<Spanned<String>>,
    empty: Option<Spanned<String>>,
    placeholder: Option<Spanned<String>>,
    gid_number: Option<Spanned<i64>>,
    create: Option<bool>,
    group_type: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawLifecycle {
    start_date: Option<Spanned<String>>,
    end_date: Option<Spanned<String>>,
    status: Option<Spanned<String>>,
    terminated: Option<Vec<String>>,
    on_leave: Option<Vec<String>>,
    leave: Option<Spanned<String>>,
    pre_hire: Option<Spanned<String>>,
    pre_hire_days: Option<Spanned<i64>>,
    timezone: Option<Spanned<String>>,
    disable: Option<Spanned<String>>,
    disable_method: Option<Spanned<String>>,
    #[serde(default)]
    disable_attributes: BTreeMap<String, String>,
    drop_groups: Option<bool>,
    disabled_base: Option<Spanned<String>>,
    delete_after: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    password_command: Option<Spanned<Vec<String>>>,
    password_directory: Option<Spanned<PathBuf>>,
    password_length: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawPosix {
    uid_number: Spanned<Vec<i64>>,
    gid_number: Spanned<toml::Value>,
    home_directory: Spanned<String>,
    login_shell: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawDaemon {
    schedule: Option<Spanned<String>>,
    socket: Option<Spanned<PathBuf>>,
    read_group: Option<Spanned<String>>,
    admin_group: Option<Spanned<String>>,
    stale_after: Option<Spanned<String>>,
    watch: Option<bool>,
    debounce: Option<Spanned<String>>,
    allow_root: Option<bool>,
    metrics: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawPlacement {
    when: Option<Spanned<String>>,
    base: Spanned<String>,
    #[serde(default)]
    create: bool,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(untagged)]
enum Number {
    Int(i64),
    Float(f64),
}
impl Number {
    fn get(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawSafety {
    max_deletes: Option<Spanned<i64>>,
    max_delete_percent: Option<Spanned<Number>>,
    max_disables: Option<Spanned<i64>>,
    max_disable_percent: Option<Spanned<Number>>,
    max_moves: Option<Spanned<i64>>,
    max_move_percent: Option<Spanned<Number>>,
    min_source_percent: Option<Spanned<Number>>,
    max_attribute_removal_percent: Option<Spanned<Number>>,
    #[serde(default)]
    protected: Vec<Spanned<String>>,
}

// ---------------------------------------------------------------- resolved (runtime)

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Csv,
    Json,
    Jsonl,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    Utf8,
    Windows1252,
    Latin1,
}

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SourceConfig {
    pub kind: SourceKind,
    pub path: PathBuf,
    pub key: String,
    pub delimiter: char,
    pub encoding: Encoding,
}

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DirectoryConfig {
    pub urls: Vec<String>,
    pub flavor: String,
    pub bind_dn: Option<String>,
    #[serde(skip)]
    pub password: Option<Secret>,
    pub password_source: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub base_dn: String,
    pub starttls: bool,
    pub allow_insecure: bool,
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
    #[serde(with = "secs")]
    pub operation_timeout: Duration,
    pub page_size: u32,
    pub max_in_flight: usize,
    /// Connections used for writes (each with `max-in-flight` operations outstanding).
    pub connections: usize,
    /// Operations per LDAP transaction (RFC 5805) where the server offers them; 0: none.
    pub transaction_size: usize,
    /// Read multi-valued `member` in ranges of this many values (`member;range=0-1499`); None:
    /// ask for the whole attribute and follow the ranges the server chooses.
    pub range_size: Option<u32>,
    /// Use RFC 4533 content synchronization where the server offers it (else: modifyTimestamp
    /// polling).
    pub content_sync: bool,
    /// With modifyTimestamp polling: a full read at least this often.
    #[serde(with = "secs")]
    pub full_read_every: Duration,
}

impl DirectoryConfig {
    pub fn is_ad(&self) -> bool {
        self.flavor == "active-directory"
    }
}

mod opt_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &Option<std::time::Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_str("never"),
        }
    }
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Set once at creation, never changed afterwards.
    Initial,
    /// dirbridge owns the value (the default).
    Force,
}

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct UsersConfig {
    pub base: String,
    pub rdn: String,
    pub object_classes: Vec<String>,
    pub anchor: String,
    /// attribute name → template source, in name order.
    pub attributes: BTreeMap<String, String>,
    pub unique: BTreeSet<String>,
    pub policy: BTreeMap<String, Policy>,
    /// First match wins; none matching (or none configured) means `base`.
    pub placement: Vec<PlacementRule>,
    /// Attributes that link a pre-existing entry without the anchor (exactly one match).
    pub correlate: Vec<String>,
    /// POSIX accounts (uidNumber/gidNumber allocation, home and shell).
    pub posix: Option<PosixConfig>,
}

/// The primary group of POSIX accounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GidPolicy {
    /// Everyone has this gidNumber.
    Fixed(u32),
    /// gidNumber = uidNumber (user private groups).
    SameAsUid,
}

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PosixConfig {
    pub uid_first: u32,
    pub uid_last: u32,
    pub gid: GidPolicy,
    /// Templates; they may use `uid` (the account's uid) besides the export's columns.
    pub home_directory: String,
    pub login_shell: Option<String>,
}

impl UsersConfig {
    pub fn policy_of(&self, attr: &str) -> Policy {
        self.policy.get(attr).copied().unwrap_or(Policy::Force)
    }
}

/// The object class of a managed group, which decides its member attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum GroupKind {
    #[serde(rename = "groupOfNames")]
    GroupOfNames,
    #[serde(rename = "groupOfUniqueNames")]
    GroupOfUniqueNames,
    #[serde(rename = "posixGroup")]
    PosixGroup,
    /// Active Directory's `group` (security or distribution, with sAMAccountName and groupType).
    #[serde(rename = "group")]
    AdGroup,
}

impl GroupKind {
    pub fn object_class(self) -> &'static str {
        match self {
            GroupKind::GroupOfNames => "groupOfNames",
            GroupKind::GroupOfUniqueNames => "groupOfUniqueNames",
            GroupKind::PosixGroup => "posixGroup",
            GroupKind::AdGroup => "group",
        }
    }
    /// The attribute that lists members.
    pub fn member_attr(self) -> &'static str {
        match self {
            GroupKind::GroupOfNames => "member",
            GroupKind::GroupOfUniqueNames => "uniqueMember",
            GroupKind::PosixGroup => "memberUid",
            GroupKind::AdGroup => "member",
        }
    }
    /// Whether the schema requires at least one member.
    pub fn member_required(self) -> bool {
        !matches!(self, GroupKind::PosixGroup | GroupKind::AdGroup)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberPolicy {
    /// The group holds exactly the people its rule grants (hand-added members are removed).
    Exact,
    /// Members added by hand are kept; only people dirbridge manages are added and removed.
    Merge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EmptyPolicy {
    /// Keep the group with a placeholder member.
    Placeholder,
    /// Delete the group (only one dirbridge created; others keep the placeholder).
    Delete,
}

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct GroupRule {
    /// Position in the file (`groups[0]` is the first `[[groups]]`).
    pub index: usize,
    /// The DN, a template when `for-each` is set.
    pub dn: String,
    /// The DN's parent (fixed: only the first RDN may vary).
    pub parent: String,
    pub when: Option<String>,
    pub for_each: Option<String>,
    pub kind: GroupKind,
    pub members: MemberPolicy,
    pub empty: EmptyPolicy,
    pub placeholder: String,
    pub gid_number: Option<i64>,
    pub create: bool,
    /// Active Directory groupType (global security by default).
    pub group_type: Option<i64>,
}

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PlacementRule {
    pub index: usize,
    pub when: Option<String>,
    pub base: String,
    pub create: bool,
}

pub const DEFAULT_PLACEHOLDER: &str = "cn=dirbridge-empty-group";

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LeavePolicy {
    #[default]
    Keep,
    Disable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PreHirePolicy {
    /// Created disabled `pre-hire-days` before the start date.
    #[default]
    Disabled,
    /// Not created before the start date.
    Skip,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DisableMethod {
    /// ppolicy's pwdAccountLockedTime = 000001010000Z (needs the ppolicy overlay).
    #[default]
    Ppolicy,
    /// Active Directory: the ACCOUNTDISABLE bit (2) of userAccountControl, other bits kept.
    UserAccountControl,
    /// A configured set of attributes (`disable-attributes`).
    Attributes,
}

/// When the daemon runs.
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// A 5-field cron expression (local time).
    Cron(String),
    /// Every so often, from the daemon's start.
    #[serde(with = "secs")]
    Every(Duration),
}

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DaemonConfig {
    pub schedule: Option<Schedule>,
    pub socket: PathBuf,
    pub read_group: Option<String>,
    pub admin_group: Option<String>,
    #[serde(with = "opt_secs")]
    pub stale_after: Option<Duration>,
    /// Run when the HR export changes.
    pub watch: bool,
    /// Debounce plus the file-stability wait.
    #[serde(with = "secs")]
    pub debounce: Duration,
    pub allow_root: bool,
    /// A loopback address to serve Prometheus metrics on.
    pub metrics: Option<std::net::SocketAddr>,
}

pub const DEFAULT_SOCKET: &str = "/run/dirbridge/control.sock";

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            schedule: None,
            socket: PathBuf::from(DEFAULT_SOCKET),
            read_group: None,
            admin_group: None,
            stale_after: None,
            watch: true,
            debounce: Duration::from_millis(200),
            allow_root: false,
            metrics: None,
        }
    }
}

/// `every 15m` or a 5-field cron expression.
pub fn parse_schedule(s: &str) -> Result<Schedule, String> {
    let t = s.trim();
    if let Some(rest) = t.strip_prefix("every ") {
        return match humantime::parse_duration(rest.trim()) {
            Ok(d) if d >= Duration::from_secs(1) => Ok(Schedule::Every(d)),
            _ => Err(format!("{t:?}: `every` needs a duration such as 15m or 1h")),
        };
    }
    if t.split_whitespace().count() != 5 {
        return Err(format!("{t:?} is neither `every <duration>` nor a 5-field cron expression (minute hour day month weekday)"));
    }
    t.parse::<croner::Cron>()
        .map_err(|e| format!("{t:?}: {e}"))?;
    Ok(Schedule::Cron(t.to_string()))
}

pub const PPOLICY_LOCK_ATTR: &str = "pwdAccountLockedTime";
pub const PPOLICY_LOCK_VALUE: &str = "000001010000Z";

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LifecycleConfig {
    pub start_date: Option<String>,
    pub end_date: Option<String>,
    pub status: Option<String>,
    pub terminated: Vec<String>,
    pub on_leave: Vec<String>,
    pub leave: LeavePolicy,
    pub pre_hire: PreHirePolicy,
    pub pre_hire_days: u32,
    pub timezone: Option<String>,
    pub disable_method: DisableMethod,
    pub disable_attributes: BTreeMap<String, String>,
    pub drop_groups: bool,
    pub disabled_base: Option<String>,
    /// None: never deleted.
    pub delete_after_days: Option<u32>,
    /// Joiners get a random password handed to this command (argv, no shell; JSON on stdin).
    pub password_command: Option<Vec<String>>,
    /// Initial passwords written to `<dir>/<key>.json` (0600) instead of a program.
    pub password_directory: Option<PathBuf>,
    pub password_length: usize,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            start_date: None,
            end_date: None,
            status: None,
            terminated: vec!["terminated".into()],
            on_leave: vec!["leave".into()],
            leave: LeavePolicy::Keep,
            pre_hire: PreHirePolicy::Disabled,
            pre_hire_days: 0,
            timezone: None,
            disable_method: DisableMethod::Ppolicy,
            disable_attributes: BTreeMap::new(),
            drop_groups: true,
            disabled_base: None,
            delete_after_days: Some(90),
            password_command: None,
            password_directory: None,
            password_length: 20,
        }
    }
}

impl LifecycleConfig {
    /// The attributes a disabled entry carries (attribute → value).
    pub fn disabled_attrs(&self) -> BTreeMap<String, String> {
        match self.disable_method {
            DisableMethod::Ppolicy => [(
                PPOLICY_LOCK_ATTR.to_string(),
                PPOLICY_LOCK_VALUE.to_string(),
            )]
            .into_iter()
            .collect(),
            DisableMethod::Attributes => self.disable_attributes.clone(),
            DisableMethod::UserAccountControl => BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, serde::Serialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct SafetyConfig {
    pub max_deletes: u64,
    pub max_delete_percent: f64,
    pub max_disables: u64,
    pub max_disable_percent: f64,
    pub max_moves: u64,
    pub max_move_percent: f64,
    pub min_source_percent: f64,
    pub max_attribute_removal_percent: f64,
    pub protected: Vec<String>,
}

impl Default for SafetyConfig {
    fn default() -> Self {
        SafetyConfig {
            max_deletes: 50,
            max_delete_percent: 5.0,
            max_disables: 50,
            max_disable_percent: 5.0,
            max_moves: 50,
            max_move_percent: 5.0,
            min_source_percent: 90.0,
            max_attribute_removal_percent: 10.0,
            protected: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    pub file: PathBuf,
    pub source: SourceConfig,
    pub directory: DirectoryConfig,
    pub state: PathBuf,
    /// Audit rows older than this are forgotten (None: kept forever).
    #[serde(with = "opt_secs")]
    pub audit_retention: Option<Duration>,
    pub users: UsersConfig,
    pub groups: Vec<GroupRule>,
    pub lifecycle: Option<LifecycleConfig>,
    pub daemon: DaemonConfig,
    pub safety: SafetyConfig,
    pub apps: Vec<apps::AppConfig>,
    /// The export's columns as read while checking the templates.
    pub header: Vec<String>,
}

/// Known template variables besides the export's columns.
pub const KNOWN_VARIABLES: &[&str] = &["n"];

struct Ctx<'a> {
    file: &'a Path,
    src: &'a str,
    diags: Diagnostics,
}

impl Ctx<'_> {
    fn err(&mut self, span: Option<std::ops::Range<usize>>, msg: impl Into<String>) {
        self.diags.items.push(Diagnostic::at(
            Severity::Error,
            self.file,
            self.src,
            span,
            msg.into(),
        ));
    }
    fn warn(&mut self, span: Option<std::ops::Range<usize>>, msg: impl Into<String>) {
        self.diags.items.push(Diagnostic::at(
            Severity::Warning,
            self.file,
            self.src,
            span,
            msg.into(),
        ));
    }
}

/// How much of the world the configuration is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// `check-config`: an unreadable export is an error.
    Strict,
    /// A run: an unreadable export is the run's own error (exit 66), reported when it reads it.
    Run,
}

/// Load, validate and resolve a configuration file. `Err` holds every problem found; `Ok` may carry
/// warnings.
pub fn load(file: &Path, mode: Check) -> Result<(Config, Diagnostics), Diagnostics> {
    let src = match std::fs::read_to_string(file) {
        Ok(s) => s,
        Err(e) => {
            let mut d = Diagnostics::default();
            d.items.push(Diagnostic::at(
                Severity::Error,
                file,
                "",
                None,
                format!(
                    "cannot read the configuration file: {e} (use -c/--config to name another)"
                ),
            ));
            return Err(d);
        }
    };
    load_str(file, &src, mode)
}

/// Like [`load`], from text already read.
pub fn load_str(file: &Path, src: &str, mode: Check) -> Result<(Config, Diagnostics), Diagnostics> {
    let mut cx = Ctx {
        file,
        src,
        diags: Diagnostics::default(),
    };
    // serde stops at the first problem. An unknown key is blanked out (offsets unchanged) and the
    // file parsed again, so that every unknown key is reported, along with the other problems.
    let mut work = src.as_bytes().to_vec();
    let raw: RawConfig = loop {
        let text = String::from_utf8_lossy(&work).into_owned();
        match toml::from_str(&text) {
            Ok(r) => break r,
            Err(e) => {
                let msg = e.message().trim().to_string();
                cx.err(e.span(), msg.clone());
                match e.span() {
                    Some(span)
                        if msg.starts_with("unknown field") && cx.diags.items.len() < 100 =>
                    {
                        blank_key(&mut work, span.start)
                    }
                    _ => return Err(cx.diags),
                }
            }
        }
    };
    let base_dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let rel = |p: &Path| -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base_dir.join(p)
        }
    };

    // ---- [source]
    let s = raw.source.get_ref();
    let kind = match s.kind.get_ref().as_str() {
        "csv" => SourceKind::Csv,
        "json" => SourceKind::Json,
        "jsonl" => SourceKind::Jsonl,
        other => {
            cx.err(
                Some(s.kind.span()),
                format!("source.kind = {other:?} is not one of \"csv\", \"json\", \"jsonl\""),
            );
            SourceKind::Csv
        }
    };
    let delimiter = match &s.delimiter {
        None => ',',
        Some(d) => {
            let v = d.get_ref();
            let mut chars = v.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if c.is_ascii() && c != '"' && c != '\n' => c,
                _ if v == "\\t" => '\t',
                _ => {
                    cx.err(
                        Some(d.span()),
                        format!("source.delimiter must be one ASCII character, not {v:?}"),
                    );
                    ','
                }
            }
        }
    };
    if kind != SourceKind::Csv {
        if let Some(d) = &s.delimiter {
            cx.warn(
                Some(d.span()),
                "source.delimiter only applies to kind = \"csv\"",
            );
        }
    }
    let encoding = match &s.encoding {
        None => Encoding::Utf8,
        Some(e) => match e.get_ref().to_ascii_lowercase().as_str() {
            "utf-8" | "utf8" => Encoding::Utf8,
            "windows-1252" | "cp1252" => Encoding::Windows1252,
            "iso-8859-1" | "latin1" | "latin-1" => Encoding::Latin1,
            other => {
                cx.err(
                    Some(e.span()),
                    format!("source.encoding = {other:?} is not one of \"utf-8\", \"windows-1252\", \"iso-8859-1\""),
                );
                Encoding::Utf8
            }
        },
    };
    let key = s.key.get_ref().trim().to_string();
    if key.is_empty() {
        cx.err(
            Some(s.key.span()),
            "source.key must name the column that holds the HR key",
        );
    }
    let source = SourceConfig {
        kind,
        path: rel(s.path.get_ref()),
        key: key.clone(),
        delimiter,
        encoding,
    };
    let header: Vec<String> = match crate::source::read_header(&source) {
        Ok(h) => {
            if !key.is_empty() && !h.iter().any(|c| c == &key) {
                cx.err(
                    Some(s.key.span()),
                    format!(
                        "source.key = {key:?} is not a column of {}; columns: {}",
                        source.path.display(),
                        h.join(", ")
                    ),
                );
            }
            h
        }
        Err(e) => {
            let msg =
                format!("cannot read the export's header, so templates cannot be checked: {e}");
            match mode {
                Check::Strict => cx.err(Some(s.path.span()), msg),
                Check::Run => cx.warn(Some(s.path.span()), msg),
            }
            Vec::new()
        }
    };

    // ---- [directory]
    let d = raw.directory.get_ref();
    let urls = match d.url.get_ref() {
        OneOrMany::One(u) => vec![u.clone()],
        OneOrMany::Many(v) => v.clone(),
    };
    if urls.is_empty() {
        cx.err(
            Some(d.url.span()),
            "directory.url must name at least one server",
        );
    }
    let flavor = d
        .flavor
        .as_ref()
        .map(|f| f.get_ref().clone())
        .unwrap_or_else(|| "openldap".into());
    if let Some(n) = &d.transaction_size {
        if *n.get_ref() > 1 && flavor == "active-directory" {
            cx.warn(
                Some(n.span()),
                "directory.transaction-size is ignored with Active Directory (it offers no LDAP transactions): one operation at a time",
            );
        }
    }
    if let Some(f) = &d.flavor {
        match f.get_ref().as_str() {
            "openldap" => {}
            "active-directory" => {}
            other => cx.err(
                Some(f.span()),
                format!(
                    "directory.flavor = {other:?} is not one of \"openldap\", \"active-directory\""
                ),
            ),
        }
    }
    let mut any_plain_simple = false;
    let mut any_tls = false;
    let mut all_ldapi = true;
    for u in &urls {
        let lower = u.to_ascii_lowercase();
        if lower.starts_with("ldapi://") {
            continue;
        }
        all_ldapi = false;
        if lower.starts_with("ldaps://") {
            any_tls = true;
        } else if lower.starts_with("ldap://") {
            if d.starttls {
                any_tls = true;
            } else {
                any_plain_simple = true;
            }
        } else {
            cx.err(
                Some(d.url.span()),
                format!("directory.url {u:?} must start with ldap://, ldaps:// or ldapi://"),
            );
        }
    }
    if any_plain_simple && !d.allow_insecure {
        cx.err(
            Some(d.url.span()),
            "a simple bind over plain ldap:// would send the password in clear text: use ldaps://, set \
             starttls = true, use ldapi://, or set allow-insecure = true to accept the risk",
        );
    }
    let mut password = None;
    let mut password_source = None;
    let bind_dn = d.bind_dn.as_ref().map(|b| b.get_ref().clone());
    if let Some(b) = &d.bind_dn {
        if let Err(e) = Dn::parse(b.get_ref()) {
            cx.err(Some(b.span()), format!("directory.bind-dn: {e}"));
        }
        let cred = std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(|c| PathBuf::from(c).join("bind-password"));
        let (path, span) = match (&cred, &d.password_file) {
            (Some(c), _) if c.exists() => (Some(c.clone()), None),
            (_, Some(p)) => (Some(rel(p.get_ref())), Some(p.span())),
            _ => (None, None),
        };
        match path {
            None => cx.err(
                Some(b.span()),
                "directory.bind-dn is set but there is no password: set password-file (or provide the \
                 systemd credential bind-password)",
            ),
            Some(p) => match std::fs::read_to_string(&p) {
                Ok(s) => {
                    let pw = s.trim_end_matches(['\n', '\r']).to_string();
                    if pw.is_empty() {
                        cx.err(span.clone(), format!("password file {} is empty", p.display()));
                    }
                    check_private(&mut cx, &p, span.clone());
                    password = Some(Secret::new(pw));
                    password_source = Some(p);
                }
                Err(e) => cx.err(span.clone(), format!("cannot read password file {}: {e}", p.display())),
            },
        }
    } else if !all_ldapi {
        cx.err(
            Some(raw.directory.span()),
            "directory.bind-dn is required unless every url is ldapi:// (SASL EXTERNAL)",
        );
    }
    let ca_file = d.ca_file.as_ref().map(|c| (rel(c.get_ref()), c.span()));
    if let Some((p, span)) = &ca_file {
        if let Err(e) = std::fs::metadata(p) {
            cx.err(
                Some(span.clone()),
                format!("cannot read ca-file {}: {e}", p.display()),
            );
        }
        if !any_tls {
            cx.warn(
                Some(span.clone()),
                "ca-file is set but no url uses TLS (ldaps:// or starttls = true)",
            );
        }
    }
    let mut dur = |v: &Option<Spanned<String>>, name: &str, default: u64| -> Duration {
        match v {
            None => Duration::from_secs(default),
            Some(s) => {
                match humantime::parse_duration(s.get_ref()) {
                    Ok(d) if !d.is_zero() => d,
                    _ => {
                        cx.err(
                        Some(s.span()),
                        format!("directory.{name} = {:?} is not a duration such as \"10s\" or \"2m\"", s.get_ref()),
                    );
                        Duration::from_secs(default)
                    }
                }
            }
        }
    };
    let connect_timeout = dur(&d.connect_timeout, "connect-timeout", 10);
    let operation_timeout = dur(&d.operation_timeout, "operation-timeout", 30);
    let full_read_every = dur(&d.full_read_every, "full-read-every", 86_400);
    let base_dn = d.base_dn.get_ref().clone();
    let base_parsed = match Dn::parse(&base_dn) {
        Ok(b) if !b.rdns.is_empty() => Some(b),
        Ok(_) => {
            cx.err(
                Some(d.base_dn.span()),
                "directory.base-dn must not be empty",
            );
            None
        }
        Err(e) => {
            cx.err(Some(d.base_dn.span()), format!("directory.base-dn: {e}"));
            None
        }
    };
    let directory = DirectoryConfig {
        urls,
        flavor,
        bind_dn,
        password,
        password_source,
        ca_file: ca_file.map(|(p, _)| p),
        base_dn,
        starttls: d.starttls,
        allow_insecure: d.allow_insecure,
        connect_timeout,
        operation_timeout,
        page_size: d.page_size.unwrap_or(500).max(1),
        range_size: d.range_size.filter(|r| *r > 0),
        max_in_flight: d.max_in_flight.unwrap_or(8).clamp(1, 1024) as usize,
        connections: d.connections.unwrap_or(4).clamp(1, 16) as usize,
        transaction_size: d
            .transaction_size
            .as_ref()
            .map_or(0, |n| *n.get_ref())
            .min(100_000) as usize,
        content_sync: d.content_sync.unwrap_or(true),
        full_read_every,
    };

    // ---- [state]
    let state = rel(raw.state.path.get_ref());
    let audit_retention = match &raw.state.audit_retention {
        None => Some(Duration::from_secs(400 * 86_400)),
        Some(v) if v.get_ref() == "never" => None,
        Some(v) => match humantime::parse_duration(v.get_ref()) {
            Ok(d) => Some(d),
            Err(_) => {
                cx.err(Some(v.span()), format!("state.audit-retention = {:?} is not a duration such as \"400d\" (or \"never\")", v.get_ref()));
                None
            }
        },
    };

    // ---- [users]
    let u = raw.users.get_ref();
    match Dn::parse(u.base.get_ref()) {
        Ok(b) => {
            if let Some(bd) = &base_parsed {
                if !b.is_within(bd) {
                    cx.err(
                        Some(u.base.span()),
                        format!(
                            "users.base {:?} is not under directory.base-dn {:?}",
                            u.base.get_ref(),
                            directory.base_dn
                        ),
                    );
                }
            }
        }
        Err(e) => cx.err(Some(u.base.span()), format!("users.base: {e}")),
    }
    let attrs = u.attributes.get_ref();
    let ad = directory.is_ad();
    // Defaults by flavor: OpenLDAP uid / inetOrgPerson / employeeNumber; Active Directory
    // CN / top person organizationalPerson user / employeeID.
    let users_span = raw.users.span();
    let rdn_span = u
        .rdn
        .as_ref()
        .map(|r| r.span())
        .unwrap_or(users_span.clone());
    let rdn = u
        .rdn
        .as_ref()
        .map(|r| r.get_ref().trim().to_string())
        .unwrap_or_else(|| if ad { "cn".into() } else { "uid".into() });
    if !attrs.contains_key(&rdn) && !attrs.keys().any(|k| k.eq_ignore_ascii_case(&rdn)) {
        cx.err(
            Some(rdn_span),
            format!(
                "users.rdn = {rdn:?} needs a template in [users.attributes] (add `{rdn} = \"…\"`)"
            ),
        );
    }
    let anchor = u
        .anchor
        .as_ref()
        .map(|a| a.get_ref().trim().to_string())
        .unwrap_or_else(|| {
            if ad {
                "employeeID".into()
            } else {
                "employeeNumber".into()
            }
        });
    if let Some(a) = attrs.get(&anchor) {
        cx.err(
            Some(a.span()),
            format!("users.attributes.{anchor}: the anchor attribute is set by dirbridge to the HR key ({key}); remove this template"),
        );
    }
    let object_classes_in: Vec<String> = match &u.object_classes {
        Some(o) => {
            if o.get_ref().is_empty() {
                cx.err(
                    Some(o.span()),
                    "users.object-classes must list at least one object class",
                );
            }
            o.get_ref().clone()
        }
        None if ad => ["top", "person", "organizationalPerson", "user"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        None => vec!["inetOrgPerson".to_string()],
    };
    if ad {
        for (name, tpl) in attrs {
            if name.eq_ignore_ascii_case("sAMAccountName") && !tpl.get_ref().contains("{{ n") {
                cx.warn(
                    Some(tpl.span()),
                    "users.attributes.sAMAccountName does not use {{ n }}: a taken name cannot get the next candidate (jdoe2)",
                );
            }
        }
    }
    let mut attributes = BTreeMap::new();
    for (name, tpl) in attrs {
        if !is_attr_name(name) {
            cx.err(
                Some(tpl.span()),
                format!("users.attributes: {name:?} is not an attribute name"),
            );
            continue;
        }
        if let Err(msg) = crate::mapping::check_template(tpl.get_ref(), &header, !header.is_empty())
        {
            cx.err(Some(tpl.span()), format!("users.attributes.{name}: {msg}"));
        }
        attributes.insert(name.clone(), tpl.get_ref().clone());
    }
    let mut unique = BTreeSet::new();
    for (name, v) in &u.unique {
        if !attrs.contains_key(name) {
            cx.err(
                Some(v.span()),
                format!(
                    "users.unique.{name}: there is no template for {name} in [users.attributes]"
                ),
            );
        } else if *v.get_ref() {
            unique.insert(name.clone());
        }
    }
    if ad {
        for (a, tpl) in attrs {
            if a.eq_ignore_ascii_case("sAMAccountName")
                || a.eq_ignore_ascii_case("userPrincipalName")
            {
                unique.insert(a.clone());
            }
            // The RDN (cn) names the entry in its OU: homonyms need the next candidate too.
            if a.eq_ignore_ascii_case(&rdn) {
                if tpl.get_ref().contains("{{ n") {
                    unique.insert(a.clone());
                } else {
                    cx.warn(
                        Some(tpl.span()),
                        format!("users.attributes.{a} names the entry (users.rdn) but does not use {{{{ n }}}}: two people with the same name would collide (entryAlreadyExists); e.g. \"{{{{ given_name }}}} {{{{ surname }}}}{{{{ n }}}}\""),
                    );
                }
            }
        }
    }
    let mut policy = BTreeMap::new();
    for (name, v) in &u.policy {
        let p = match v.get_ref().as_str() {
            "initial" => Policy::Initial,
            "force" => Policy::Force,
            other => {
                cx.err(
                    Some(v.span()),
                    format!("users.policy.{name} = {other:?} is not \"initial\" or \"force\""),
                );
                continue;
            }
        };
        if !attrs.contains_key(name) {
            cx.err(
                Some(v.span()),
                format!(
                    "users.policy.{name}: there is no template for {name} in [users.attributes]"
                ),
            );
        }
        policy.insert(name.clone(), p);
    }
    let mut placement = Vec::new();
    for (index, p) in u.placement.iter().enumerate() {
        let pr = p.get_ref();
        if let Some(w) = &pr.when {
            if let Err(msg) =
                crate::mapping::check_expression(w.get_ref(), &header, !header.is_empty())
            {
                cx.err(
                    Some(w.span()),
                    format!("users.placement[{index}].when: {msg}"),
                );
            }
        }
        match Dn::parse(pr.base.get_ref()) {
            Ok(b) => {
                if let Some(bd) = &base_parsed {
                    if !b.is_within(bd) {
                        cx.err(
                            Some(pr.base.span()),
                            format!("users.placement[{index}].base is not under directory.base-dn"),
                        );
                    }
                }
            }
            Err(e) => cx.err(
                Some(pr.base.span()),
                format!("users.placement[{index}].base: {e}"),
            ),
        }
        placement.push(PlacementRule {
            index,
            when: pr.when.as_ref().map(|w| w.get_ref().clone()),
            base: pr.base.get_ref().clone(),
            create: pr.create,
        });
    }
    let mut correlate = Vec::new();
    for c in &u.correlate {
        if !attrs.contains_key(c.get_ref()) {
            cx.err(
                Some(c.span()),
                format!(
                    "users.correlate: {:?} has no template in [users.attributes]",
                    c.get_ref()
                ),
            );
        }
        correlate.push(c.get_ref().clone());
    }
    let posix = u.posix.as_ref().map(|p| {
        let pr = p.get_ref();
        let range = pr.uid_number.get_ref();
        let (first, last) = match range.as_slice() {
            [a, b] if *a > 0 && a <= b && *b <= u32::MAX as i64 => (*a as u32, *b as u32),
            _ => {
                cx.err(Some(pr.uid_number.span()), "users.posix.uid-number must be [first, last] with 0 < first <= last");
                (0, 0)
            }
        };
        let gid = match pr.gid_number.get_ref() {
            toml::Value::Integer(n) if *n > 0 && *n <= u32::MAX as i64 => GidPolicy::Fixed(*n as u32),
            toml::Value::String(s) if s == "uid" => GidPolicy::SameAsUid,
            _ => {
                cx.err(Some(pr.gid_number.span()), "users.posix.gid-number must be a number or \"uid\" (the same as uidNumber)");
                GidPolicy::SameAsUid
            }
        };
        let mut with_uid = header.clone();
        with_uid.push("uid".into());
        for (t, name) in [(Some(&pr.home_directory), "home-directory"), (pr.login_shell.as_ref(), "login-shell")] {
            if let Some(t) = t {
                if let Err(msg) = crate::mapping::check_template(t.get_ref(), &with_uid, !header.is_empty()) {
                    cx.err(Some(t.span()), format!("users.posix.{name}: {msg}"));
                }
            }
        }
        if !attrs.contains_key("uid") {
            cx.err(Some(p.span()), "users.posix needs a uid template in [users.attributes] (posixAccount requires uid)");
        }
        PosixConfig {
            uid_first: first,
            uid_last: last,
            gid,
            home_directory: pr.home_directory.get_ref().clone(),
            login_shell: pr.login_shell.as_ref().map(|s| s.get_ref().clone()),
        }
    });
    let mut object_classes = object_classes_in;
    if posix.is_some()
        && !object_classes
            .iter()
            .any(|c| c.eq_ignore_ascii_case("posixAccount"))
    {
        object_classes.push("posixAccount".into());
    }
    let users = UsersConfig {
        posix,
        correlate,
        placement,
        base: u.base.get_ref().clone(),
        rdn,
        object_classes,
        anchor,
        attributes,
        unique,
        policy,
    };

    // ---- [[groups]]
    let mut groups = Vec::new();
    for (index, g) in raw.groups.iter().enumerate() {
        let gr = g.get_ref();
        let name = format!("groups[{index}]");
        let dn_src = gr.dn.get_ref().clone();
        // Only the first RDN may vary: the parent must be a fixed DN.
        let parent = split_parent(&dn_src);
        match &parent {
            Some(p) if !p.contains("{{") && !p.contains("{%") => match Dn::parse(p) {
                Ok(pd) => {
                    if let Some(bd) = &base_parsed {
                        if !pd.is_within(bd) {
                            cx.err(Some(gr.dn.span()), format!("{name}.dn is not under directory.base-dn"));
                        }
                    }
                }
                Err(e) => cx.err(Some(gr.dn.span()), format!("{name}.dn: {e}")),
            },
            _ => cx.err(
                Some(gr.dn.span()),
                format!("{name}.dn must be `<attr>=<value>,<fixed parent DN>`; only the first RDN may use the record's fields"),
            ),
        }
        let templated = dn_src.contains("{{") || dn_src.contains("{%");
        if let Some(f) = &gr.for_each {
            if !header.is_empty() && !header.contains(f.get_ref()) {
                cx.err(
                    Some(f.span()),
                    format!(
                        "{name}.for-each = {:?} is not a column of the export (columns: {})",
                        f.get_ref(),
                        header.join(", ")
                    ),
                );
            }
            if !templated {
                cx.err(Some(gr.dn.span()), format!("{name}.dn must use the record (e.g. {{{{ {} | slug }}}}) when for-each is set", f.get_ref()));
            }
        } else if templated {
            cx.err(Some(gr.dn.span()), format!("{name}.dn uses a template: set for-each to the column that makes one group per value"));
        }
        if templated {
            if let Err(msg) = crate::mapping::check_template(&dn_src, &header, !header.is_empty()) {
                cx.err(Some(gr.dn.span()), format!("{name}.dn: {msg}"));
            }
        } else if let Err(e) = Dn::parse(&dn_src) {
            cx.err(Some(gr.dn.span()), format!("{name}.dn: {e}"));
        }
        if let Some(w) = &gr.when {
            if let Err(msg) =
                crate::mapping::check_expression(w.get_ref(), &header, !header.is_empty())
            {
                cx.err(Some(w.span()), format!("{name}.when: {msg}"));
            }
        }
        let kind = match gr
            .object_class
            .as_ref()
            .map(|o| (o.get_ref().to_ascii_lowercase(), o.span()))
        {
            None if directory.is_ad() => GroupKind::AdGroup,
            None => GroupKind::GroupOfNames,
            Some((o, _)) if o == "group" && directory.is_ad() => GroupKind::AdGroup,
            Some((o, _)) if o == "groupofnames" => GroupKind::GroupOfNames,
            Some((o, _)) if o == "groupofuniquenames" => GroupKind::GroupOfUniqueNames,
            Some((o, _)) if o == "posixgroup" => GroupKind::PosixGroup,
            Some((o, span)) => {
                cx.err(Some(span), format!("{name}.object-class = {o:?} is not groupOfNames, groupOfUniqueNames or posixGroup"));
                GroupKind::GroupOfNames
            }
        };
        // groupType: scope bit (2 global, 4 domain local, 8 universal) + 0x80000000 for security.
        let group_type = match (&gr.group_type, kind) {
            (None, GroupKind::AdGroup) => Some(-2147483646),
            (None, _) => None,
            (Some(t), GroupKind::AdGroup) => match t.get_ref().as_str() {
                "global-security" | "security" => Some(-2147483646),
                "domain-local-security" => Some(-2147483644),
                "universal-security" => Some(-2147483640),
                "global-distribution" | "distribution" => Some(2),
                "domain-local-distribution" => Some(4),
                "universal-distribution" => Some(8),
                other => {
                    cx.err(Some(t.span()), format!("{name}.group-type = {other:?} is not one of \"global-security\" (the default), \"domain-local-security\", \"universal-security\", \"global-distribution\", \"domain-local-distribution\", \"universal-distribution\""));
                    None
                }
            },
            (Some(t), _) => {
                cx.err(Some(t.span()), format!("{name}.group-type only applies to Active Directory groups (object-class = \"group\")"));
                None
            }
        };
        if kind == GroupKind::PosixGroup {
            if gr.gid_number.is_none() {
                cx.err(
                    Some(g.span()),
                    format!("{name}: a posixGroup needs gid-number"),
                );
            }
            if gr.for_each.is_some() {
                cx.err(Some(g.span()), format!("{name}: posixGroup with for-each needs gidNumber allocation, which is not supported yet"));
            }
        }
        let members = match gr
            .members
            .as_ref()
            .map(|m| (m.get_ref().as_str(), m.span()))
        {
            None | Some(("exact", _)) => MemberPolicy::Exact,
            Some(("merge", _)) => MemberPolicy::Merge,
            Some((other, span)) => {
                cx.err(
                    Some(span),
                    format!("{name}.members = {other:?} is not \"exact\" or \"merge\""),
                );
                MemberPolicy::Exact
            }
        };
        let empty = match gr.empty.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
            None | Some(("placeholder", _)) => EmptyPolicy::Placeholder,
            Some(("delete", _)) => EmptyPolicy::Delete,
            Some((other, span)) => {
                cx.err(
                    Some(span),
                    format!("{name}.empty = {other:?} is not \"placeholder\" or \"delete\""),
                );
                EmptyPolicy::Placeholder
            }
        };
        let placeholder = match &gr.placeholder {
            Some(p) => {
                if let Err(e) = Dn::parse(p.get_ref()) {
                    cx.err(Some(p.span()), format!("{name}.placeholder: {e}"));
                }
                p.get_ref().clone()
            }
            None => DEFAULT_PLACEHOLDER.to_string(),
        };
        groups.push(GroupRule {
            group_type,
            index,
            dn: dn_src,
            parent: parent.unwrap_or_default(),
            when: gr.when.as_ref().map(|w| w.get_ref().clone()),
            for_each: gr.for_each.as_ref().map(|f| f.get_ref().clone()),
            kind,
            members,
            empty,
            placeholder,
            gid_number: gr.gid_number.as_ref().map(|g| *g.get_ref()),
            create: gr.create.unwrap_or(true),
        });
    }

    // ---- [lifecycle]
    let lifecycle = raw.lifecycle.as_ref().map(|l| {
        let lr = l.get_ref();
        let mut lc = LifecycleConfig::default();
        let mut column = |c: &Option<Spanned<String>>, key: &str| -> Option<String> {
            let c = c.as_ref()?;
            if !header.is_empty() && !header.contains(c.get_ref()) {
                cx.err(Some(c.span()), format!("lifecycle.{key} = {:?} is not a column of the export (columns: {})", c.get_ref(), header.join(", ")));
            }
            Some(c.get_ref().clone())
        };
        lc.start_date = column(&lr.start_date, "start-date");
        lc.end_date = column(&lr.end_date, "end-date");
        lc.status = column(&lr.status, "status");
        if let Some(t) = &lr.terminated {
            lc.terminated = t.clone();
        }
        if let Some(t) = &lr.on_leave {
            lc.on_leave = t.clone();
        }
        if let Some(v) = &lr.leave {
            lc.leave = match v.get_ref().as_str() {
                "keep" => LeavePolicy::Keep,
                "disable" => LeavePolicy::Disable,
                other => {
                    cx.err(Some(v.span()), format!("lifecycle.leave = {other:?} is not \"keep\" or \"disable\""));
                    LeavePolicy::Keep
                }
            };
        }
        if let Some(v) = &lr.pre_hire {
            lc.pre_hire = match v.get_ref().as_str() {
                "disabled" => PreHirePolicy::Disabled,
                "skip" => PreHirePolicy::Skip,
                other => {
                    cx.err(Some(v.span()), format!("lifecycle.pre-hire = {other:?} is not \"disabled\" or \"skip\""));
                    PreHirePolicy::Disabled
                }
            };
        }
        if let Some(v) = &lr.pre_hire_days {
            if *v.get_ref() < 0 || *v.get_ref() > 3650 {
                cx.err(Some(v.span()), "lifecycle.pre-hire-days must be between 0 and 3650");
            } else {
                lc.pre_hire_days = *v.get_ref() as u32;
            }
        }
        if let Some(tz) = &lr.timezone {
            if jiff::tz::TimeZone::get(tz.get_ref()).is_err() {
                cx.err(Some(tz.span()), format!("lifecycle.timezone = {:?} is not a known time zone (e.g. \"Europe/Berlin\", \"UTC\")", tz.get_ref()));
            }
            lc.timezone = Some(tz.get_ref().clone());
        }
        if let Some(v) = &lr.disable {
            if v.get_ref() != "on-end-date" {
                cx.err(Some(v.span()), format!("lifecycle.disable = {:?}: only \"on-end-date\" is supported", v.get_ref()));
            }
        }
        if let Some(v) = &lr.disable_method {
            lc.disable_method = match v.get_ref().as_str() {
                "ppolicy" if directory.is_ad() => {
                    cx.err(Some(v.span()), "lifecycle.disable-method = \"ppolicy\" is OpenLDAP's; with flavor = \"active-directory\" use \"user-account-control\" (the default)");
                    DisableMethod::UserAccountControl
                }
                "ppolicy" => DisableMethod::Ppolicy,
                "attributes" => DisableMethod::Attributes,
                "user-account-control" => DisableMethod::UserAccountControl,
                other => {
                    cx.err(Some(v.span()), format!("lifecycle.disable-method = {other:?} is not \"ppolicy\", \"user-account-control\" or \"attributes\""));
                    DisableMethod::Ppolicy
                }
            };
        } else if directory.is_ad() {
            lc.disable_method = DisableMethod::UserAccountControl;
        }
        lc.disable_attributes = lr.disable_attributes.clone();
        if lc.disable_method == DisableMethod::Attributes && lc.disable_attributes.is_empty() {
            cx.err(Some(l.span()), "lifecycle: disable-method = \"attributes\" needs disable-attributes, e.g. { loginShell = \"/usr/sbin/nologin\" }");
        }
        if let Some(b) = lr.drop_groups {
            lc.drop_groups = b;
        }
        if let Some(b) = &lr.disabled_base {
            match Dn::parse(b.get_ref()) {
                Ok(d) => {
                    if let Some(bd) = &base_parsed {
                        if !d.is_within(bd) {
                            cx.err(Some(b.span()), "lifecycle.disabled-base is not under directory.base-dn");
                        }
                    }
                }
                Err(e) => cx.err(Some(b.span()), format!("lifecycle.disabled-base: {e}")),
            }
            lc.disabled_base = Some(b.get_ref().clone());
        }
        if let Some(v) = &lr.delete_after {
            lc.delete_after_days = match v.get_ref().as_str() {
                "never" => None,
                text => match humantime::parse_duration(text) {
                    Ok(d) => Some((d.as_secs() / 86_400) as u32),
                    Err(_) => {
                        cx.err(Some(v.span()), format!("lifecycle.delete-after = {text:?} is not a duration such as \"90d\" (or \"never\")"));
                        None
                    }
                },
            };
        }
        match lr.password.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
            None | Some(("none", _)) => {
                if let Some(c) = &lr.password_command {
                    cx.warn(Some(c.span()), "lifecycle.password-command is ignored unless password = \"random\"");
                }
            }
            Some(("random", span)) => {
                match (&lr.password_command, &lr.password_directory) {
                    (Some(c), _) if !c.get_ref().is_empty() => {
                        let prog = std::path::Path::new(&c.get_ref()[0]);
                        if !prog.is_absolute() {
                            cx.err(Some(c.span()), "lifecycle.password-command: the program must be an absolute path (it runs without a shell)");
                        }
                        lc.password_command = Some(c.get_ref().clone());
                    }
                    (None, Some(d)) => {
                        let p = rel(d.get_ref());
                        use std::os::unix::fs::PermissionsExt;
                        match std::fs::metadata(&p) {
                            Ok(m) if m.is_dir() && m.permissions().mode() & 0o077 == 0 => {}
                            Ok(m) if m.is_dir() => cx.err(Some(d.span()), format!("lifecycle.password-directory {} is readable by others: chmod 700 it", p.display())),
                            Ok(_) => cx.err(Some(d.span()), format!("lifecycle.password-directory {} is not a directory", p.display())),
                            Err(e) => cx.err(Some(d.span()), format!("lifecycle.password-directory {}: {e}", p.display())),
                        }
                        lc.password_directory = Some(p);
                    }
                    _ => cx.err(Some(span.clone()), "lifecycle.password = \"random\" needs password-command = [\"/path/to/program\", …] or password-directory = \"/var/lib/dirbridge/passwords\""),
                }
                // Active Directory accepts unicodePwd only over an encrypted connection.
                if directory.is_ad()
                    && !directory.starttls
                    && directory
                        .urls
                        .iter()
                        .any(|u| !u.to_ascii_lowercase().starts_with("ldaps://"))
                {
                    cx.err(Some(span), "lifecycle.password = \"random\" with Active Directory sets unicodePwd, which AD accepts only over ldaps:// or StartTLS: use ldaps:// urls or starttls = true");
                }
            }
            Some((other, span)) => cx.err(Some(span), format!("lifecycle.password = {other:?} is not \"none\" or \"random\"")),
        }
        if let Some(n) = &lr.password_length {
            if !(12..=128).contains(n.get_ref()) {
                cx.err(Some(n.span()), "lifecycle.password-length must be between 12 and 128");
            } else {
                lc.password_length = *n.get_ref() as usize;
            }
        }
        if lc.start_date.is_none() && lc.end_date.is_none() && lc.status.is_none() {
            cx.warn(Some(l.span()), "[lifecycle] names no start-date, end-date or status column: only people who vanish from the export become leavers");
        }
        lc
    });

    // ---- [daemon]
    let mut daemon = DaemonConfig::default();
    if let Some(d) = &raw.daemon {
        let dr = d.get_ref();
        if let Some(sch) = &dr.schedule {
            match parse_schedule(sch.get_ref()) {
                Ok(s) => daemon.schedule = Some(s),
                Err(e) => cx.err(Some(sch.span()), format!("daemon.schedule = {e}")),
            }
        }
        if let Some(sock) = &dr.socket {
            daemon.socket = rel(sock.get_ref());
        }
        for (g, key) in [
            (&dr.read_group, "read-group"),
            (&dr.admin_group, "admin-group"),
        ] {
            if let Some(g) = g {
                if crate::control::group_gid(g.get_ref()).is_none() {
                    cx.warn(
                        Some(g.span()),
                        format!(
                            "daemon.{key} = {:?} is not a group in /etc/group",
                            g.get_ref()
                        ),
                    );
                }
            }
        }
        daemon.read_group = dr.read_group.as_ref().map(|g| g.get_ref().clone());
        daemon.admin_group = dr.admin_group.as_ref().map(|g| g.get_ref().clone());
        if let Some(v) = &dr.stale_after {
            match humantime::parse_duration(v.get_ref()) {
                Ok(d) => daemon.stale_after = Some(d),
                Err(_) => cx.err(
                    Some(v.span()),
                    format!(
                        "daemon.stale-after = {:?} is not a duration such as \"26h\"",
                        v.get_ref()
                    ),
                ),
            }
        }
        if let Some(v) = &dr.debounce {
            match humantime::parse_duration(v.get_ref()) {
                Ok(d) if d <= Duration::from_secs(60) => daemon.debounce = d,
                _ => cx.err(
                    Some(v.span()),
                    format!(
                        "daemon.debounce = {:?} is not a duration up to 60s",
                        v.get_ref()
                    ),
                ),
            }
        }
        daemon.watch = dr.watch.unwrap_or(true);
        daemon.allow_root = dr.allow_root.unwrap_or(false);
        if let Some(m) = &dr.metrics {
            match m.get_ref().parse::<std::net::SocketAddr>() {
                Ok(a) if a.ip().is_loopback() => daemon.metrics = Some(a),
                Ok(_) => cx.err(Some(m.span()), "daemon.metrics must be a loopback address such as \"127.0.0.1:9184\" (put a proxy in front for anything else)"),
                Err(_) => cx.err(Some(m.span()), format!("daemon.metrics = {:?} is not an address such as \"127.0.0.1:9184\"", m.get_ref())),
            }
        }
    }

    // ---- [safety]
    let sf = &raw.safety;
    let def = SafetyConfig::default();
    let mut pct = |v: &Option<Spanned<Number>>, name: &str, default: f64| -> f64 {
        match v {
            None => default,
            Some(s) => {
                let n = s.get_ref().get();
                if !(0.0..=100.0).contains(&n) {
                    cx.err(
                        Some(s.span()),
                        format!("safety.{name} = {n} must be between 0 and 100"),
                    );
                }
                n
            }
        }
    };
    let max_delete_percent = pct(
        &sf.max_delete_percent,
        "max-delete-percent",
        def.max_delete_percent,
    );
    let max_disable_percent = pct(
        &sf.max_disable_percent,
        "max-disable-percent",
        def.max_disable_percent,
    );
    let min_source_percent = pct(
        &sf.min_source_percent,
        "min-source-percent",
        def.min_source_percent,
    );
    let max_attribute_removal_percent = pct(
        &sf.max_attribute_removal_percent,
        "max-attribute-removal-percent",
        def.max_attribute_removal_percent,
    );
    let max_move_percent = pct(
        &sf.max_move_percent,
        "max-move-percent",
        def.max_move_percent,
    );
    let mut count = |v: &Option<Spanned<i64>>, name: &str, default: u64| -> u64 {
        match v {
            None => default,
            Some(s) if *s.get_ref() >= 0 => *s.get_ref() as u64,
            Some(s) => {
                cx.err(
                    Some(s.span()),
                    format!("safety.{name} must not be negative"),
                );
                default
            }
        }
    };
    let max_deletes = count(&sf.max_deletes, "max-deletes", def.max_deletes);
    let max_disables = count(&sf.max_disables, "max-disables", def.max_disables);
    let max_moves = count(&sf.max_moves, "max-moves", def.max_moves);
    let mut protected = Vec::new();
    for p in &sf.protected {
        let v = p.get_ref();
        let checked = if v.trim_start().starts_with('(') {
            crate::filter::Filter::parse(v)
                .map(|_| ())
                .map_err(|e| format!("safety.protected filter {v:?}: {e}"))
        } else {
            Dn::parse(v)
                .map(|_| ())
                .map_err(|e| format!("safety.protected: {e}"))
        };
        match checked {
            Ok(()) => protected.push(v.clone()),
            Err(e) => cx.err(Some(p.span()), e),
        }
    }
    let safety = SafetyConfig {
        max_deletes,
        max_delete_percent,
        max_disables,
        max_disable_percent,
        max_moves,
        max_move_percent,
        min_source_percent,
        max_attribute_removal_percent,
        protected,
    };

    let entry_attrs: Vec<String> = users.attributes.keys().cloned().collect();
    let apps = apps::resolve(&mut cx, &raw.apps, &header, &entry_attrs, &rel);

    if cx.diags.has_errors() {
        return Err(cx.diags);
    }
    Ok((
        Config {
            file: file.to_path_buf(),
            source,
            directory,
            state,
            audit_retention,
            users,
            groups,
            lifecycle,
            daemon,
            safety,
            apps,
            header,
        },
        cx.diags,
    ))
}

/// Replace the line holding `at` with spaces; if it is a table header, the whole table.
fn blank_key(work: &mut [u8], at: usize) {
    let at = at.min(work.len());
    let start = work[..at]
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    let line_end = |from: usize, w: &[u8]| {
        w[from..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| from + i)
            .unwrap_or(w.len())
    };
    let mut end = line_end(start, work);
    let is_header = work[start..end].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if is_header {
        // up to the next header
        let mut pos = end;
        while pos < work.len() {
            let next = pos + 1;
            let e = line_end(next.min(work.len()), work);
            if work[next.min(work.len())..e]
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                == Some(&b'[')
            {
                break;
            }
            end = e;
            pos = e;
        }
    }
    for b in &mut work[start..end] {
        if *b != b'\n' {
            *b = b' ';
        }
    }
}

/// The part of a DN (or DN template) after its first unescaped comma.
fn split_parent(dn: &str) -> Option<String> {
    let b = dn.as_bytes();
    let mut i = 0;
    let mut depth = 0; // inside {{ }}
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'{' if b.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if b.get(i + 1) == Some(&b'}') => {
                depth -= 1;
                i += 1;
            }
            b',' if depth == 0 => return Some(dn[i + 1..].trim().to_string()),
            _ => {}
        }
        i += 1;
    }
    None
}

fn is_attr_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ';')
}

/// Warn when a file holding a secret can be read by other users.
fn check_private(cx: &mut Ctx<'_>, p: &Path, span: Option<std::ops::Range<usize>>) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(p) {
        if m.permissions().mode() & 0o004 != 0 {
            cx.warn(
                span,
                format!(
                    "{} holds a secret and is readable by every user: chmod o-r it",
                    p.display()
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(name: &str, cfg: &str) -> (PathBuf, Result<(Config, Diagnostics), Diagnostics>) {
        let dir = std::env::temp_dir().join(format!("dirbridge-cfg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("export.csv"), "id,given,sn\n1,A,B\n").unwrap();
        std::fs::write(dir.join("pw"), "x\n").unwrap();
        let file = dir.join("dirbridge.toml");
        std::fs::write(&file, cfg).unwrap();
        let r = load(&file, Check::Strict);
        (dir, r)
    }

    const GOOD: &str = r#"
[source]
kind = "csv"
path = "export.csv"
key = "id"

[directory]
url = "ldaps://ldap.example.com"
bind-dn = "cn=x,dc=example,dc=com"
password-file = "pw"
base-dn = "dc=example,dc=com"

[state]
path = "m.db"

[users]
base = "ou=people,dc=example,dc=com"
rdn = "uid"
object-classes = ["inetOrgPerson"]
anchor = "employeeNumber"

[users.attributes]
uid = "{{ given | lower }}{{ n }}"
sn = "{{ sn }}"

[users.unique]
uid = true
"#;

    #[test]
    fn good_config_resolves_with_defaults() {
        let (dir, r) = setup("good", GOOD);
        let (cfg, _) = r.unwrap();
        assert_eq!(cfg.safety, SafetyConfig::default());
        assert_eq!(cfg.header, vec!["id", "given", "sn"]);
        assert_eq!(cfg.directory.password.as_ref().unwrap().expose(), "x");
        assert_eq!(cfg.state, dir.join("m.db"));
        assert_eq!(cfg.directory.connect_timeout, Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn transactions_are_off_by_default_and_ignored_with_active_directory() {
        let (dir, r) = setup("txn-default", GOOD);
        let about_transactions =
            |d: &diagnostic::Diagnostics| d.warnings().any(|w| w.message.contains("transaction"));
        let (cfg, diags) = r.unwrap();
        assert_eq!(cfg.directory.transaction_size, 0);
        assert!(!about_transactions(&diags));
        let _ = std::fs::remove_dir_all(dir);
        let on = GOOD.replace(
            "base-dn = \"dc=example,dc=com\"",
            "base-dn = \"dc=example,dc=com\"\ntransaction-size = 500",
        );
        let (dir, r) = setup("txn-on", &on);
        let (cfg, diags) = r.unwrap();
        assert_eq!(cfg.directory.transaction_size, 500);
        assert!(!about_transactions(&diags));
        let _ = std::fs::remove_dir_all(dir);
        let ad = on.replace(
            "transaction-size = 500",
            "transaction-size = 500\nflavor = \"active-directory\"",
        );
        let (dir, r) = setup("txn-ad", &ad);
        let (_, diags) = r.unwrap();
        let line = ad
            .lines()
            .position(|l| l.starts_with("transaction-size"))
            .unwrap()
            + 1;
        let warned: Vec<String> = diags
            .warnings()
            .map(|w| format!("{}: {}", w.line, w.message))
            .collect();
        assert!(
            warned.iter().any(|w| w.starts_with(&format!(
                "{line}: directory.transaction-size is ignored with Active Directory"
            ))),
            "{warned:#?}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let bad = GOOD
            .replace("[state]\n", "[state]\nbogus = 1\n")
            .replace("anchor = ", "colour = \"blue\"\nanchor = ")
            .replace("sn = \"{{ sn }}\"", "sn = \"{{ surname }}\"")
            .replace(
                "[users.unique]",
                "[nonsense]\nx = 1\ny = 2\n\n[users.unique]",
            );
        let (dir, r) = setup("bad", &bad);
        let d = r.unwrap_err();
        let msgs: Vec<String> = d
            .errors()
            .map(|e| format!("{}: {}", e.line, e.message))
            .collect();
        let line = |needle: &str| bad.lines().position(|l| l.contains(needle)).unwrap() + 1;
        assert!(
            msgs.contains(&format!(
                "{}: unknown field `bogus`, expected `path` or `audit-retention`",
                line("bogus")
            )),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with(&format!("{}: unknown field `colour`", line("colour")))),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with(&format!("{}: unknown field `nonsense`", line("nonsense")))),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter().any(|m| m.starts_with(&format!(
                "{}: users.attributes.sn: unknown variable `surname`",
                line("surname")
            ))),
            "{msgs:#?}"
        );
        assert_eq!(msgs.len(), 4, "{msgs:#?}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn schedules() {
        assert_eq!(
            parse_schedule("every 15m"),
            Ok(Schedule::Every(Duration::from_secs(900)))
        );
        assert_eq!(
            parse_schedule("*/15 2-6 * * 1-5"),
            Ok(Schedule::Cron("*/15 2-6 * * 1-5".into()))
        );
        assert!(parse_schedule("every often").is_err());
        assert!(parse_schedule("* * * *").unwrap_err().contains("5-field"));
        assert!(parse_schedule("61 * * * *").is_err());
    }

    #[test]
    fn clear_text_bind_needs_opt_in() {
        let (dir, r) = setup("plain", &GOOD.replace("ldaps://", "ldap://"));
        let d = r.unwrap_err();
        assert!(d.to_string().contains("clear text"), "{d}");
        let (dir2, r) = setup(
            "plain2",
            &GOOD
                .replace("ldaps://", "ldap://")
                .replace("base-dn", "starttls = true\nbase-dn"),
        );
        assert!(r.is_ok());
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(dir2);
    }

    #[test]
    fn apps_are_checked_with_every_problem_at_once() {
        let apps = r#"
[[apps]]
name = "wiki"
kind = "scim"
url = "http://wiki.example.com/scim/v2"
token-file = "missing.token"
when = "departmnet == 'x'"
[apps.attributes]
userName = "{{ entry.uidd }}"
nickname = "{{ given }}"

[[apps]]
name = "wiki"
kind = "command"
command = ["relative/prog"]
url = "https://x"
[apps.attributes]
home = "{{ sn }}"
"#;
        let (dir, r) = setup("apps", &format!("{GOOD}{apps}"));
        let d = r.unwrap_err().to_string();
        for want in [
            "apps.wiki.url: plain http would send the token in clear text",
            "cannot read token file",
            "apps.wiki.when: unknown variable `departmnet`",
            "apps.wiki.attributes.userName: undefined value",
            "entry holds the attributes of [users.attributes]: sn, uid",
            "apps.wiki.attributes.nickname: not a SCIM attribute dirbridge maps",
            "is used by another [[apps]] entry",
            "the program must be an absolute path",
            "apps.wiki.url only applies to kind = \"scim\"",
        ] {
            assert!(d.contains(want), "missing {want:?} in:\n{d}");
        }
        // A loopback http URL, a token file and good templates pass.
        std::fs::write(dir.join("t"), "tok\n").unwrap();
        let ok = r#"
[[apps]]
name = "wiki"
kind = "scim"
url = "http://127.0.0.1:8080/v2/"
token-file = "t"
delete-after = "30d"
[apps.attributes]
userName = "{{ entry.uid }}"
"name.familyName" = "{{ sn }}"
"#;
        let file = dir.join("ok.toml");
        std::fs::write(&file, format!("{GOOD}{ok}")).unwrap();
        let (c, _) = load(&file, Check::Strict).unwrap();
        assert_eq!(c.apps.len(), 1);
        assert_eq!(c.apps[0].url.as_deref(), Some("http://127.0.0.1:8080/v2"));
        assert_eq!(c.apps[0].token.as_ref().map(|t| t.expose()), Some("tok"));
        assert_eq!(
            c.apps[0].delete_after,
            Some(Duration::from_secs(30 * 86_400))
        );
        let shown = serde_json::to_string(&c).unwrap();
        assert!(
            !shown.contains("\"tok\""),
            "the token is never shown: {shown}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

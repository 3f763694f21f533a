//! The LDAP client edge: connect (failover, TLS verified, timeouts), bind, read, apply.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::StreamExt;
use ldap3::adapters::PagedResults;
use ldap3::controls::ControlType;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Mod, Scope, SearchEntry};

use super::schema::Schema;
use super::TargetError;
use crate::config::DirectoryConfig;
use crate::dn::{self, Dn};
use crate::model::Entry;
use crate::plan::{Change, DeltaKind, Op};

pub struct LdapTarget {
    ldap: Ldap,
    /// More bound connections to the same server, for writes (`directory.connections`): bound
    /// on a task of their own from the connect on (`writers_coming`), taken by the first write
    /// that needs them ([`Self::writers`]). Their TLS handshakes and binds ran before the run
    /// went on, 5-10 ms of a 10,000-person churn's start; they now go on while the schema and
    /// the directory are read.
    writers: tokio::sync::OnceCell<Vec<Ldap>>,
    writers_coming: std::sync::Mutex<Option<tokio::task::JoinHandle<Vec<Ldap>>>>,
    pub url: String,
    op_timeout: Duration,
    page_size: i32,
    /// Active Directory: objectGUID is the immutable id; passwords go in unicodePwd.
    ad: bool,
    /// `directory.range-size`: read `member` in ranges of this many values.
    range_size: Option<u32>,
    /// Extra requests made to read the rest of a ranged attribute (`member;range=1500-*`).
    pub ranged_reads: std::sync::atomic::AtomicU64,
    /// `directory.transaction-size`: operations per LDAP transaction (0 or 1: none).
    txn_size: usize,
    /// Whether the server takes transactions: unknown until the first write, then yes or no.
    txn_state: std::sync::atomic::AtomicU8,
    /// Transactions committed.
    pub transactions: std::sync::atomic::AtomicU64,
    /// What this server is known to have written before: see [`Registered`].
    registered: std::sync::Mutex<Registered>,
    /// The root DSE's static attributes, read once per connection ([`Self::root_dse`]).
    root: tokio::sync::OnceCell<Option<SearchEntry>>,
}

/// slapd (back-mdb; measured on Debian's 2.5.13) numbers each attribute description the first time a database
/// stores it; when a transaction fails at its commit, the numbers given inside it are rolled back
/// on disk but not in slapd's memory, and every entry written later with such an attribute is
/// unreadable ("internal error in mdb_entry_decode", reproduced with ldapmodify -E txn=commit:
/// persistent, a restart does not cure it). So a change goes in a transaction
/// only when everything it makes the server store has been stored before: its attributes were
/// seen on an entry of the directory or written by a change that succeeded, and a change of its
/// kind succeeded outside a transaction in this run (the kind brings the server's own
/// attributes: entryUUID, modifiersName, memberOf from the memberof overlay, ppolicy's
/// pwdChangedTime). Otherwise it is sent alone first, as a pilot.
#[derive(Default)]
struct Registered {
    attrs: HashSet<String>,
    kinds: HashSet<(Op, crate::plan::Subject, bool)>,
}

/// A change's kind: what it does, to what, and whether it adds group members (which makes the
/// memberof overlay write memberOf).
fn kind(c: &Change) -> (Op, crate::plan::Subject, bool) {
    let adds_members = c.attributes.iter().any(|a| {
        a.kind != DeltaKind::Delete
            && !a.new.is_empty()
            && ["member", "uniquemember", "memberuid"]
                .iter()
                .any(|m| a.attr.eq_ignore_ascii_case(m))
    });
    (c.op, c.subject, adds_members)
}

/// Where an Active Directory DC stands: its invocationId, highestCommittedUSN and naming context.
#[derive(Clone, Debug)]
pub struct AdPosition {
    pub invocation: String,
    pub highest_usn: u64,
    pub naming_context: String,
}

/// What a content-synchronization refresh returned.
#[derive(Debug, Default)]
pub struct SyncResult {
    /// Entries added or modified since the cookie (every entry without one).
    pub changed: Vec<Entry>,
    /// entryUUIDs the server says are still there (present phase).
    pub present: std::collections::HashSet<String>,
    /// entryUUIDs deleted since the cookie.
    pub deleted: std::collections::HashSet<String>,
    /// The present phase was used: what is neither present nor changed is gone.
    pub present_phase: bool,
    pub cookie: Option<Vec<u8>>,
    /// The server refused the cookie (e-syncRefreshRequired).
    pub refresh_required: bool,
    /// No cookie was given: `changed` is everything.
    pub full: bool,
}

/// An entryUUID from its 16 bytes, as OpenLDAP writes it.
pub fn uuid_text(b: &[u8]) -> Option<String> {
    if b.len() != 16 {
        return None;
    }
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// Add values read for `k` (lower-cased) to an entry's attributes ([`Values`] keeps them exactly
/// as long as they are: the parser's lists have room for four, and a full read holds a million).
///
/// [`Values`]: crate::names::Values
fn put_values(attrs: &mut crate::names::NameMap<crate::names::Values>, k: &str, v: Vec<String>) {
    let k = k.to_ascii_lowercase();
    match attrs.get_mut(&k) {
        Some(have) => have.extend(v),
        None => {
            attrs.insert(k, v.into());
        }
    }
}

fn entry_of(se: SearchEntry, uuid: Option<String>) -> Entry {
    let mut attrs = crate::names::NameMap::<crate::names::Values>::new();
    for (k, v) in se.attrs {
        put_values(&mut attrs, &k, v);
    }
    let from_attr = attrs.remove("entryuuid").and_then(|v| v.into_iter().next());
    Entry {
        digest: Default::default(),
        uuid: from_attr.or(uuid).unwrap_or_default(),
        dn: se.dn,
        attrs,
    }
}

/// A binary attribute holding a GUID (objectGUID, invocationId) as text: from the binary values,
/// or from the text ones when the 16 bytes happened to be valid UTF-8.
fn guid_attr(e: &SearchEntry, name: &str) -> Option<String> {
    e.bin_attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first())
        .and_then(|b| crate::ad::guid_text(b))
        .or_else(|| {
            e.attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.first())
                .and_then(|s| crate::ad::guid_text(s.as_bytes()))
        })
}

/// The values of an attribute of an entry, whatever the case of its name.
fn values(e: &SearchEntry, name: &str) -> Vec<String> {
    e.attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// The result code of an operation that was not sent because the run was told to stop.
pub const NOT_SENT: u32 = u32::MAX;

/// Whether change `i` of a batch has its journal row: `journaled` counts the rows written so far
/// (a prefix of the batch, the run writing them beside the writes); None: all were written
/// before. False when the journal stopped short of it (the mirror could not be written): the
/// change is not sent.
async fn journaled_past(journaled: Option<tokio::sync::watch::Receiver<usize>>, i: usize) -> bool {
    match journaled {
        None => true,
        Some(mut j) => j.wait_for(|&n| n > i).await.is_ok(),
    }
}

/// How a batch's writes keep step with the run's journal, which is written beside them.
pub struct JournalLink {
    /// How many of the batch's changes, from the first, have their pending row so far: a change
    /// is sent only once it has (see [`journaled_past`]).
    pub journaled: tokio::sync::watch::Receiver<usize>,
    /// Each change's answer as it comes (its index, then [`journal_outcome`]), for the run to
    /// record beside the writes. None: the run records them after the batch.
    pub answered: Option<tokio::sync::mpsc::UnboundedSender<(usize, bool, String)>>,
}

/// What the journal records of a change's answer: whether it was applied, and "success" or the
/// failure. None for a change not sent: its journal row stays pending (the next run plans it
/// again).
pub fn journal_outcome(r: &Result<Option<String>, OpFailure>) -> Option<(bool, String)> {
    match r {
        Ok(_) => Some((true, "success".to_string())),
        Err(f) if f.rc == NOT_SENT => None,
        Err(f) => Some((false, f.to_string())),
    }
}

/// A change held back because its journal row could not be written.
fn not_journaled() -> OpFailure {
    OpFailure {
        rc: NOT_SENT,
        text: "not sent: its journal row could not be written".into(),
    }
}

/// One change's result: for an add, the new entry's id when it could be read.
type OpResult = Result<Option<String>, OpFailure>;

/// A failed write: the server's result code and message. The entry is quarantined; the run goes on.
#[derive(Clone, Debug)]
pub struct OpFailure {
    pub rc: u32,
    pub text: String,
}

impl std::fmt::Display for OpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}){}",
            result_name(self.rc),
            self.rc,
            if self.text.is_empty() {
                String::new()
            } else {
                format!(": {}", self.text)
            }
        )
    }
}

pub fn result_name(rc: u32) -> &'static str {
    match rc {
        0 => "success",
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        8 => "strongerAuthRequired",
        10 => "referral",
        11 => "adminLimitExceeded",
        16 => "noSuchAttribute",
        17 => "undefinedAttributeType",
        18 => "inappropriateMatching",
        19 => "constraintViolation",
        20 => "attributeOrValueExists",
        21 => "invalidAttributeSyntax",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        48 => "inappropriateAuthentication",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        64 => "namingViolation",
        65 => "objectClassViolation",
        66 => "notAllowedOnNonLeaf",
        67 => "notAllowedOnRDN",
        68 => "entryAlreadyExists",
        69 => "objectClassModsProhibited",
        80 => "other",
        _ => "error",
    }
}

fn tls_config(cfg: &DirectoryConfig) -> Result<Option<Arc<rustls::ClientConfig>>, TargetError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let Some(ca) = &cfg.ca_file else {
        return Ok(None);
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| TargetError::Tls(format!("cannot read ca-file {}: {e}", ca.display())))?;
    for c in certs {
        let c = c.map_err(|e| {
            TargetError::Tls(format!(
                "ca-file {}: not a PEM certificate: {e}",
                ca.display()
            ))
        })?;
        roots.add(c).map_err(|e| {
            TargetError::Tls(format!(
                "ca-file {}: unusable certificate: {e}",
                ca.display()
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(TargetError::Tls(format!(
            "ca-file {} holds no certificate",
            ca.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TargetError::Tls(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

fn is_tls_error(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("certificate")
        || m.contains("tls")
        || m.contains("handshake")
        || m.contains("rustls")
        || m.contains("unknownissuer")
}

/// `host:port` of an ldap:// or ldaps:// URL (None for ldapi:// and anything else).
fn host_port(url: &str) -> Option<String> {
    let lower = url.to_ascii_lowercase();
    let (rest, port) = if lower.starts_with("ldaps://") {
        (&url[8..], 636)
    } else if lower.starts_with("ldap://") {
        (&url[7..], 389)
    } else {
        return None;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.is_empty() {
        return Some(format!("localhost:{port}"));
    }
    // host, host:port, [v6], [v6]:port
    let has_port = match authority.rfind(']') {
        Some(i) => authority[i..].contains(':'),
        None => authority.contains(':'),
    };
    Some(if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{port}")
    })
}

/// The TCP connection for `url`, with Nagle's algorithm off: LDAP sends small requests and waits
/// for their answers, and with Nagle on, each connection's TLS handshake and bind stalled on the
/// server's delayed ACK (40 ms of a 60 ms quiet run at 10,000 people).
async fn tcp_nodelay(url: &str, timeout: Duration) -> Result<Option<ldap3::StdStream>, String> {
    let Some(addr) = host_port(url) else {
        return Ok(None);
    };
    let s = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr))
        .await
        .map_err(|_| format!("no answer within {}", humantime::format_duration(timeout)))?
        .map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let s = s.into_std().map_err(|e| e.to_string())?;
    Ok(Some(ldap3::StdStream::Tcp(s)))
}

/// How to reach `url`: TLS, StartTLS, and a TCP socket opened with Nagle off.
async fn conn_settings(
    cfg: &DirectoryConfig,
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<LdapConnSettings, String> {
    let mut settings = LdapConnSettings::new().set_conn_timeout(cfg.connect_timeout);
    if let Some(t) = tls {
        settings = settings.set_config(t);
    }
    if cfg.starttls && url.to_ascii_lowercase().starts_with("ldap://") {
        settings = settings.set_starttls(true);
    }
    if let Some(stream) = tcp_nodelay(url, cfg.connect_timeout).await? {
        settings = settings.set_std_stream(stream);
    }
    Ok(settings)
}

/// Bind as configured: SASL EXTERNAL over ldapi:// without a bind DN, else a simple bind.
async fn bind(
    ldap: &mut Ldap,
    cfg: &DirectoryConfig,
    ldapi: bool,
) -> Result<ldap3::LdapResult, ldap3::LdapError> {
    if ldapi && cfg.bind_dn.is_none() {
        ldap.sasl_external_bind().await
    } else {
        let pw = cfg.password.as_ref().map(|p| p.expose()).unwrap_or("");
        ldap.simple_bind(cfg.bind_dn.as_deref().unwrap_or(""), pw)
            .await
    }
}

/// One more connection to `url`, bound like the first.
async fn extra_connection(
    cfg: &DirectoryConfig,
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    ldapi: bool,
) -> Result<Ldap, String> {
    let settings = conn_settings(cfg, url, tls).await?;
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, url)
        .await
        .map_err(|e| e.to_string())?;
    ldap3::drive!(conn);
    ldap.with_timeout(cfg.operation_timeout);
    let r = bind(&mut ldap, cfg, ldapi)
        .await
        .map_err(|e| e.to_string())?;
    if r.rc != 0 {
        return Err(format!("bind refused: rc {}", r.rc));
    }
    Ok(ldap)
}

impl LdapTarget {
    /// Connect to the first URL that answers, verify TLS, bind.
    pub async fn connect(cfg: &DirectoryConfig) -> Result<LdapTarget, TargetError> {
        let tls = tls_config(cfg)?;
        let mut failures = Vec::new();
        for url in &cfg.urls {
            let lower = url.to_ascii_lowercase();
            let ldapi = lower.starts_with("ldapi://");
            let settings = match conn_settings(cfg, url, tls.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    failures.push(format!("{url}: {e}"));
                    continue;
                }
            };
            let conn = tokio::time::timeout(
                cfg.connect_timeout + Duration::from_secs(1),
                LdapConnAsync::with_settings(settings, url),
            )
            .await;
            let (conn, mut ldap) = match conn {
                Err(_) => {
                    failures.push(format!(
                        "{url}: no answer within {}",
                        humantime::format_duration(cfg.connect_timeout)
                    ));
                    continue;
                }
                Ok(Err(e)) => {
                    let msg = e.to_string();
                    if is_tls_error(&msg) && (lower.starts_with("ldaps://") || cfg.starttls) {
                        let against = match &cfg.ca_file {
                            Some(p) => format!("the CA certificates in ca-file {}", p.display()),
                            None => "the system's trusted CAs (set directory.ca-file to the directory's CA)".into(),
                        };
                        return Err(TargetError::Tls(format!(
                            "TLS with {url} failed: {msg}; the server's certificate could not be verified against {against}"
                        )));
                    }
                    failures.push(format!("{url}: {msg}"));
                    continue;
                }
                Ok(Ok(x)) => x,
            };
            ldap3::drive!(conn);
            ldap.with_timeout(cfg.operation_timeout);
            let bound = bind(&mut ldap, cfg, ldapi).await;
            match bound {
                Ok(r) if r.rc == 0 => {}
                Ok(r) => {
                    let who = cfg.bind_dn.as_deref().unwrap_or("SASL EXTERNAL");
                    let hint = if let Some(why) = crate::ad::explain_bind(&r.text) {
                        format!("; {why}")
                    } else if r.rc == 8 {
                        "; the server requires an encrypted connection: use ldaps:// or starttls = true".to_string()
                    } else if r.rc == 49 {
                        match &cfg.password_source {
                            Some(p) => format!("; check the password in {}", p.display()),
                            None => String::new(),
                        }
                    } else {
                        String::new()
                    };
                    return Err(TargetError::Bind(format!(
                        "{url}: bind as {who} refused: {}{hint}",
                        OpFailure {
                            rc: r.rc,
                            text: r.text
                        }
                    )));
                }
                Err(e) => {
                    let msg = e.to_string();
                    if is_tls_error(&msg) && cfg.starttls {
                        let against = match &cfg.ca_file {
                            Some(p) => format!("ca-file {}", p.display()),
                            None => "the system's trusted CAs (set directory.ca-file)".into(),
                        };
                        return Err(TargetError::Tls(format!(
                            "StartTLS with {url} failed: {msg}; not verified against {against}"
                        )));
                    }
                    failures.push(format!("{url}: bind failed: {msg}"));
                    continue;
                }
            }
            // More connections for writes, bound the same way, on a task of their own; one that
            // fails is done without.
            let coming = (cfg.connections > 1).then(|| {
                let (cfg, url, tls) = (cfg.clone(), url.clone(), tls.clone());
                tokio::spawn(async move {
                    let extra = (1..cfg.connections)
                        .map(|_| extra_connection(&cfg, &url, tls.clone(), ldapi));
                    let mut writers = Vec::new();
                    for r in futures_util::future::join_all(extra).await {
                        match r {
                            Ok(l) => writers.push(l),
                            Err(e) => {
                                tracing::warn!(target: "dirbridge::ldap", "an extra write connection to {url} failed: {e}; going on without it");
                            }
                        }
                    }
                    writers
                })
            });
            return Ok(LdapTarget {
                writers: tokio::sync::OnceCell::new(),
                writers_coming: std::sync::Mutex::new(coming),
                ldap,
                url: url.clone(),
                op_timeout: cfg.operation_timeout,
                page_size: cfg.page_size as i32,
                ad: cfg.is_ad(),
                range_size: cfg.range_size,
                ranged_reads: std::sync::atomic::AtomicU64::new(0),
                txn_size: if cfg.is_ad() { 0 } else { cfg.transaction_size },
                txn_state: std::sync::atomic::AtomicU8::new(TXN_UNKNOWN),
                transactions: std::sync::atomic::AtomicU64::new(0),
                registered: std::sync::Mutex::new(Registered::default()),
                root: tokio::sync::OnceCell::new(),
            });
        }
        Err(TargetError::Unreachable(format!(
            "no directory server could be reached: {}",
            failures.join("; ")
        )))
    }

    /// Paged subtree search; entries come back with lower-cased attribute names. `uuid` is taken
    /// from entryUUID. A result code other than success fails the read.
    pub async fn search(
        &self,
        base: &str,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Vec<Entry>, TargetError> {
        self.search_in(base, Scope::Subtree, filter, attrs).await
    }

    /// [`LdapTarget::search`] with another scope.
    async fn search_in(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Vec<Entry>, TargetError> {
        let mut ldap = self.ldap.clone();
        ldap.with_timeout(self.op_timeout);
        let attrs_owned: Vec<String> = attrs
            .iter()
            .map(|s| {
                if self.ad && s.eq_ignore_ascii_case("entryUUID") {
                    "objectGUID".to_string()
                } else if let (Some(n), true) = (self.range_size, s.eq_ignore_ascii_case("member"))
                {
                    format!("member;range=0-{}", n.saturating_sub(1))
                } else {
                    s.to_string()
                }
            })
            .collect();
        let mut stream = ldap
            .streaming_search_with(
                PagedResults::new(self.page_size),
                base,
                scope,
                filter,
                attrs_owned,
            )
            .await
            .map_err(|e| TargetError::Read(format!("search of {base} failed: {e}")))?;
        let mut out = Vec::new();
        loop {
            let item = stream
                .next()
                .await
                .map_err(|e| TargetError::Read(format!("search of {base} failed: {e}")))?;
            let Some(re) = item else { break };
            if re.is_ref() || re.is_intermediate() {
                continue;
            }
            let se = SearchEntry::construct(re);
            let mut attrs = crate::names::NameMap::<crate::names::Values>::new();
            let guid = guid_attr(&se, "objectGUID");
            for (k, v) in se.attrs {
                if k.eq_ignore_ascii_case("objectGUID") {
                    continue;
                }
                put_values(&mut attrs, &k, v);
            }
            let uuid = guid
                .or_else(|| attrs.remove("entryuuid").and_then(|v| v.into_iter().next()))
                .unwrap_or_default();
            out.push(Entry {
                digest: Default::default(),
                uuid,
                dn: se.dn,
                attrs,
            });
        }
        let res = stream.finish().await;
        if res.rc == 0 {
            // Ranged attributes (AD: `member;range=0-1499`): read the rest, range by range.
            for e in out.iter_mut() {
                self.complete_ranges(e).await?;
            }
        }
        match res.rc {
            0 => {
                // (grown by doubling: a full read would keep up to twice its entries' slots)
                out.shrink_to_fit();
                Ok(out)
            }
            32 => Err(TargetError::Read(format!(
                "{base} does not exist on the server (noSuchObject); create it, or fix the configured base"
            ))),
            4 => Err(TargetError::Read(format!(
                "search of {base} hit the server's size limit (sizeLimitExceeded, after {} entries): give the bind identity an olcLimits entry; a partial read is never taken as the whole directory",
                out.len()
            ))),
            rc => Err(TargetError::Read(format!(
                "search of {base} failed: {}",
                OpFailure { rc, text: res.text }
            ))),
        }
    }

    /// Replace `attr;range=a-b` values by the whole attribute, asking for the following ranges
    /// until the server answers with `attr;range=x-*`.
    async fn complete_ranges(&self, e: &mut Entry) -> Result<(), TargetError> {
        e.changed();
        let ranged: Vec<String> = e
            .attrs
            .keys()
            .filter(|k| k.contains(";range="))
            .map(|k| k.to_string())
            .collect();
        for key in ranged {
            let Some(values) = e.attrs.remove(&key) else {
                continue;
            };
            let (attr, range) = key.split_once(";range=").unwrap_or((&key, "0-*"));
            let attr = attr.to_string();
            let mut all = values.into_vec();
            let mut high = range
                .split_once('-')
                .map(|(_, h)| h.to_string())
                .unwrap_or_default();
            while high != "*" {
                let Ok(h) = high.parse::<u64>() else { break };
                let next = match self.range_size {
                    Some(n) => format!("{attr};range={}-{}", h + 1, h + n as u64),
                    None => format!("{attr};range={}-*", h + 1),
                };
                let mut ldap = self.ldap.clone();
                ldap.with_timeout(self.op_timeout);
                self.ranged_reads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (rs, _) = ldap
                    .search(&e.dn, Scope::Base, "(objectClass=*)", vec![next.as_str()])
                    .await
                    .and_then(|r| r.success())
                    .map_err(|err| {
                        TargetError::Read(format!("reading {next} of {} failed: {err}", e.dn))
                    })?;
                let Some(se) = rs.into_iter().next().map(SearchEntry::construct) else {
                    break;
                };
                let Some((k, v)) = se.attrs.into_iter().find(|(k, _)| {
                    k.to_ascii_lowercase()
                        .starts_with(&format!("{attr};range="))
                }) else {
                    break;
                };
                all.extend(v);
                high = k
                    .split_once(";range=")
                    .and_then(|(_, r)| r.split_once('-'))
                    .map(|(_, h)| h.to_string())
                    .unwrap_or_else(|| "*".into());
            }
            e.attrs.entry(attr).or_default().extend(all);
        }
        Ok(())
    }

    /// One entry by a base-scope search (None when it does not exist).
    async fn base_entry(
        &self,
        dn: &str,
        attrs: &[&str],
    ) -> Result<Option<SearchEntry>, TargetError> {
        let mut ldap = self.ldap.clone();
        ldap.with_timeout(self.op_timeout);
        let what = if dn.is_empty() { "the root DSE" } else { dn };
        let (rs, _) = ldap
            .search(dn, Scope::Base, "(objectClass=*)", attrs.to_vec())
            .await
            .and_then(|r| r.success())
            .map_err(|e| TargetError::Read(format!("reading {what} failed: {e}")))?;
        Ok(rs.into_iter().next().map(SearchEntry::construct))
    }

    /// The root DSE's attributes that do not change while the server runs (the schema's entry,
    /// the controls and extended operations offered, the naming contexts), read once: a run
    /// asked for them three times, one round trip each, before its first write.
    async fn root_dse(&self) -> Result<Option<&SearchEntry>, TargetError> {
        self.root
            .get_or_try_init(|| {
                self.base_entry(
                    "",
                    &[
                        "subschemaSubentry",
                        "supportedControl",
                        "supportedExtension",
                        "namingContexts",
                    ],
                )
            })
            .await
            .map(Option::as_ref)
    }

    /// Active Directory: the DC's position, read from the root DSE and its NTDS Settings object.
    pub async fn ad_position(&mut self) -> Result<AdPosition, TargetError> {
        let root = self
            .base_entry(
                "",
                &[
                    "highestCommittedUSN",
                    "dsServiceName",
                    "defaultNamingContext",
                ],
            )
            .await?
            .ok_or_else(|| TargetError::Read("the root DSE is empty".into()))?;
        let one = |n: &str| values(&root, n).into_iter().next();
        let highest_usn = one("highestCommittedUSN")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                TargetError::Read(
                    "the root DSE has no highestCommittedUSN: is this Active Directory? (directory.flavor)"
                        .into(),
                )
            })?;
        let naming_context = one("defaultNamingContext").unwrap_or_default();
        let service = one("dsServiceName").unwrap_or_default();
        let invocation = self
            .base_entry(&service, &["invocationId"])
            .await?
            .and_then(|e| guid_attr(&e, "invocationId"))
            .unwrap_or_default();
        Ok(AdPosition {
            invocation,
            highest_usn,
            naming_context,
        })
    }

    /// The objectGUIDs of deleted objects matching `filter` (AD's show-deleted control).
    pub async fn search_deleted(
        &mut self,
        base: &str,
        filter: &str,
    ) -> Result<Vec<String>, TargetError> {
        let mut ldap = self.ldap.clone();
        ldap.with_timeout(self.op_timeout);
        let show_deleted = ldap3::controls::RawControl {
            ctype: "1.2.840.113556.1.4.417".to_string(),
            crit: true,
            val: None,
        };
        let ldap3::SearchResult(rs, res) = ldap
            .with_controls(show_deleted)
            .search(base, Scope::Subtree, filter, vec!["objectGUID"])
            .await
            .map_err(|e| TargetError::Read(format!("reading deleted objects failed: {e}")))?;
        if res.rc != 0 {
            return Err(TargetError::Read(format!(
                "reading deleted objects under {base} failed: {}",
                OpFailure {
                    rc: res.rc,
                    text: res.text
                }
            )));
        }
        Ok(rs
            .into_iter()
            .filter(|r| !r.is_ref())
            .map(SearchEntry::construct)
            .filter_map(|e| guid_attr(&e, "objectGUID"))
            .collect())
    }

    /// The identity and position of the database holding `dn`: its naming context's entryUUID and
    /// highest contextCSN (OpenLDAP). A fresh database has another entryUUID; a restored one an
    /// older contextCSN.
    pub async fn database_position(&mut self, dn: &str) -> Result<(String, String), TargetError> {
        let contexts = self
            .root_dse()
            .await?
            .map(|e| values(e, "namingContexts"))
            .unwrap_or_default();
        let target = Dn::parse(dn).ok();
        let nc = contexts
            .iter()
            .filter(|c| {
                let cd = Dn::parse(c).ok();
                matches!((&target, &cd), (Some(t), Some(c)) if t.is_within(c))
            })
            .max_by_key(|c| c.len())
            .cloned()
            .unwrap_or_else(|| dn.to_string());
        let e = self.base_entry(&nc, &["entryUUID", "contextCSN"]).await?;
        let get = |n: &str| e.as_ref().map(|e| values(e, n)).unwrap_or_default();
        let uuid = get("entryUUID").into_iter().next().unwrap_or_default();
        let csn = get("contextCSN").into_iter().max().unwrap_or_default();
        Ok((uuid, csn))
    }

    /// Whether the server offers RFC 4533 content synchronization (OpenLDAP's syncprov).
    pub async fn supports_content_sync(&mut self) -> Result<bool, TargetError> {
        Ok(self
            .root_dse()
            .await?
            .map(|e| values(e, "supportedControl"))
            .unwrap_or_default()
            .iter()
            .any(|c| c == "1.3.6.1.4.1.4203.1.9.1.1"))
    }

    /// RFC 4533 content synchronization, refreshOnly: with a cookie, only what changed since
    /// (entries added or modified, and the entryUUIDs deleted or still present); without one, every
    /// entry and a cookie for next time. `refresh_required` says the server refused the cookie
    /// (e-syncRefreshRequired): read again without one.
    pub async fn sync_search(
        &self,
        base: &str,
        filter: &str,
        attrs: &[&str],
        cookie: Option<Vec<u8>>,
    ) -> Result<SyncResult, TargetError> {
        use ldap3::controls::{SyncDone, SyncInfo, SyncRequest, SyncState};
        let mut ldap = self.ldap.clone();
        ldap.with_timeout(self.op_timeout);
        let had_cookie = cookie.is_some();
        let req = SyncRequest {
            cookie,
            ..Default::default()
        };
        let attrs_owned: Vec<String> = attrs.iter().map(|s| s.to_string()).collect();
        let mut stream = ldap
            .with_controls(req)
            .streaming_search(base, Scope::Subtree, filter, attrs_owned)
            .await
            .map_err(|e| TargetError::Read(format!("content sync of {base} failed: {e}")))?;
        let mut out = SyncResult::default();
        let parse_guard = |what: &str| {
            TargetError::Read(format!(
                "content sync of {base}: the server sent a malformed {what}; a full read follows"
            ))
        };
        loop {
            let item = stream
                .next()
                .await
                .map_err(|e| TargetError::Read(format!("content sync of {base} failed: {e}")))?;
            let Some(re) = item else { break };
            if re.is_ref() {
                continue;
            }
            if re.is_intermediate() {
                let info = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    ldap3::controls::parse_syncinfo(re)
                }))
                .map_err(|_| parse_guard("syncInfo"))?;
                match info {
                    SyncInfo::NewCookie(c) => out.cookie = Some(c),
                    SyncInfo::RefreshDelete { cookie, .. } => {
                        if cookie.is_some() {
                            out.cookie = cookie;
                        }
                    }
                    SyncInfo::RefreshPresent { cookie, .. } => {
                        out.present_phase = true;
                        if cookie.is_some() {
                            out.cookie = cookie;
                        }
                    }
                    SyncInfo::SyncIdSet {
                        cookie,
                        refresh_deletes,
                        sync_uuids,
                    } => {
                        let ids = sync_uuids.iter().filter_map(|u| uuid_text(u));
                        if refresh_deletes {
                            out.deleted.extend(ids);
                        } else {
                            out.present_phase = true;
                            out.present.extend(ids);
                        }
                        if cookie.is_some() {
                            out.cookie = cookie;
                        }
                    }
                }
                continue;
            }
            let state =
                re.1.iter()
                    .find(|c| matches!(c.0, Some(ControlType::SyncState)))
                    .map(|c| {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            c.1.parse::<SyncState>()
                        }))
                    })
                    .transpose()
                    .map_err(|_| parse_guard("syncState control"))?;
            let se = SearchEntry::construct(re);
            match state {
                Some(st) => {
                    let uuid = uuid_text(&st.entry_uuid).unwrap_or_default();
                    if st.cookie.is_some() {
                        out.cookie = st.cookie;
                    }
                    match st.state {
                        ldap3::controls::EntryState::Delete => {
                            out.deleted.insert(uuid);
                        }
                        ldap3::controls::EntryState::Present if se.attrs.is_empty() => {
                            out.present.insert(uuid);
                        }
                        _ => out.changed.push(entry_of(se, Some(uuid))),
                    }
                }
                None => out.changed.push(entry_of(se, None)),
            }
        }
        let res = stream.finish().await;
        if res.rc == 4096 {
            out.refresh_required = true;
            return Ok(out);
        }
        if res.rc != 0 {
            return Err(TargetError::Read(format!(
                "content sync of {base} failed: {}",
                OpFailure {
                    rc: res.rc,
                    text: res.text
                }
            )));
        }
        if let Some(done) = res
            .ctrls
            .iter()
            .find(|c| matches!(c.0, Some(ControlType::SyncDone)))
        {
            let d = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                done.1.parse::<SyncDone>()
            }))
            .map_err(|_| parse_guard("syncDone control"))?;
            if d.cookie.is_some() {
                out.cookie = d.cookie;
            }
            // refreshDeletes FALSE after a refresh with a cookie: the present phase was used, and
            // entries neither present nor changed are gone.
            if had_cookie && !d.refresh_deletes {
                out.present_phase = true;
            }
        }
        out.full = !had_cookie;
        Ok(out)
    }

    /// Whether an entry exists (a base-scope search; noSuchObject is `false`).
    pub async fn exists(&mut self, dn: &str) -> Result<bool, TargetError> {
        let mut ldap = self.ldap.clone();
        ldap.with_timeout(self.op_timeout);
        let r = ldap
            .search(dn, Scope::Base, "(objectClass=*)", vec!["1.1"])
            .await
            .map_err(|e| TargetError::Read(format!("reading {dn} failed: {e}")))?;
        match r.1.rc {
            0 => Ok(!r.0.is_empty()),
            32 => Ok(false),
            rc => Err(TargetError::Read(format!(
                "reading {dn} failed: {}",
                OpFailure { rc, text: r.1.text }
            ))),
        }
    }

    pub async fn read_schema(&mut self) -> Result<Schema, TargetError> {
        let sub = self
            .root_dse()
            .await?
            .and_then(|e| {
                e.attrs
                    .get("subschemaSubentry")
                    .and_then(|v| v.first().cloned())
            })
            .unwrap_or_else(|| "cn=Subschema".to_string());
        let mut ldap = self.ldap.clone();
        ldap.with_timeout(self.op_timeout);
        let (entries, _) = ldap
            .search(
                &sub,
                Scope::Base,
                "(objectClass=subschema)",
                vec!["attributeTypes", "objectClasses"],
            )
            .await
            .and_then(|r| r.success())
            .map_err(|e| TargetError::Read(format!("reading the schema ({sub}) failed: {e}")))?;
        let Some(e) = entries.into_iter().next().map(SearchEntry::construct) else {
            return Ok(Schema::default());
        };
        let get = |n: &str| {
            e.attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        Ok(Schema::parse(&get("attributeTypes"), &get("objectClasses")))
    }

    /// Apply changes with up to `in_flight` operations outstanding on each write connection.
    /// Results come back in input order: `Ok(Some(uuid))` for adds whose identity is known now
    /// (Active Directory's objectGUID, an OpenLDAP transaction's read-back), `Ok(None)` else (an
    /// OpenLDAP add: see [`LdapTarget::read_back_uuids`]).
    pub async fn apply(
        &self,
        changes: &[&Change],
        in_flight: usize,
    ) -> Vec<Result<Option<String>, OpFailure>> {
        self.apply_with(changes, &[], in_flight, None, &[], None)
            .await
    }

    /// [`LdapTarget::apply`] with initial passwords for adds (`passwords[i]` for `changes[i]`),
    /// where `changes[i]` is sent only once the changes `after[i]` (indices into `changes`; none
    /// when `after` is empty) have been answered. Where the server offers LDAP transactions (RFC
    /// 5805) and `directory.transaction-size` allows, the changes go in transactions of that many
    /// operations (one database commit each; the run gives waits only where it writes one
    /// operation at a time); otherwise, or where a transaction fails, one operation at a time.
    /// With `journal`, no change is sent before its journal row is written, and each answer is
    /// passed on as it comes (see [`JournalLink`]).
    pub async fn apply_with(
        &self,
        changes: &[&Change],
        passwords: &[Option<crate::secret::Secret>],
        in_flight: usize,
        cancel: Option<tokio::sync::watch::Receiver<bool>>,
        after: &[Vec<usize>],
        journal: Option<JournalLink>,
    ) -> Vec<Result<Option<String>, OpFailure>> {
        if changes.len() > 1 && self.txn_size > 1 && self.offers_transactions().await {
            // (a transaction's changes go together: all of them journaled first; their answers
            // are recorded after the batch)
            if !journaled_past(journal.map(|j| j.journaled), changes.len() - 1).await {
                return changes.iter().map(|_| Err(not_journaled())).collect();
            }
            return self
                .apply_in_transactions(changes, passwords, in_flight, cancel)
                .await;
        }
        let results = self
            .apply_each(changes, passwords, in_flight, cancel, after, journal)
            .await;
        if self.txn_size > 1 {
            self.learn(
                changes
                    .iter()
                    .zip(&results)
                    .filter(|(_, r)| r.is_ok())
                    .map(|(c, _)| *c),
            );
        }
        results
    }

    /// Attribute names the server has stored (seen on entries read from it): changes that use
    /// only these may go in transactions (see [`Registered`]).
    pub fn note_attributes<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        if let Ok(mut r) = self.registered.lock() {
            for n in names {
                if !r.attrs.contains(n) {
                    r.attrs.insert(n.to_ascii_lowercase());
                }
            }
        }
    }

    /// Changes that succeeded: their attributes and kinds are stored by the server now.
    fn learn<'a>(&self, done: impl Iterator<Item = &'a Change>) {
        if let Ok(mut r) = self.registered.lock() {
            for c in done {
                r.kinds.insert(kind(c));
                for a in &c.attributes {
                    if !r.attrs.contains(&*a.attr) {
                        r.attrs.insert(a.attr.to_ascii_lowercase());
                    }
                }
            }
        }
    }

    /// The changes (of `idx`) that would make the server store something it has not stored
    /// before: a kind or an attribute not yet vouched for.
    fn unregistered(&self, changes: &[&Change], idx: impl Iterator<Item = usize>) -> Vec<usize> {
        let Ok(r) = self.registered.lock() else {
            return idx.collect();
        };
        idx.filter(|i| {
            let c = changes[*i];
            !(r.kinds.contains(&kind(c))
                && c.attributes.iter().all(|a| {
                    r.attrs.contains(&*a.attr) || r.attrs.contains(&a.attr.to_ascii_lowercase())
                }))
        })
        .collect()
    }

    /// Whether transactions are to be used: asked of the root DSE once (the Start and End
    /// Transaction extended operations); never on Active Directory.
    async fn offers_transactions(&self) -> bool {
        use std::sync::atomic::Ordering;
        match self.txn_state.load(Ordering::Relaxed) {
            TXN_YES => return true,
            TXN_NO => return false,
            _ => {}
        }
        let offered = !self.ad
            && match self.root_dse().await {
                // (slapd 2.5 lists the two extended operations but not the control in
                // supportedControl)
                Ok(Some(e)) => {
                    let ext = values(e, "supportedExtension");
                    ext.iter().any(|x| x == TXN_START) && ext.iter().any(|x| x == TXN_END)
                }
                _ => false,
            };
        if offered {
            tracing::warn!(target: "dirbridge::ldap", "{}: writing in LDAP transactions of up to {} changes (directory.transaction-size): slapd 2.5 has crashed and stalled with transactions while other clients read or wrote; use them only while nothing else uses this directory (dirbridge.toml(5))", self.url, self.txn_size);
        } else {
            tracing::info!(target: "dirbridge::ldap", "{}: the server does not offer LDAP transactions: one operation at a time (directory.transaction-size is ignored)", self.url);
        }
        self.txn_state
            .store(if offered { TXN_YES } else { TXN_NO }, Ordering::Relaxed);
        offered
    }

    /// The changes in transactions of `txn_size` operations, one transaction after the other on
    /// the first connection, after the pilots (see [`Registered`]).
    async fn apply_in_transactions(
        &self,
        changes: &[&Change],
        passwords: &[Option<crate::secret::Secret>],
        in_flight: usize,
        cancel: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Vec<OpResult> {
        // Pilots first: changes that would make the server store something for the first time
        // are sent alone (see [`Registered`]); a pilot that succeeds vouches for its kind and
        // attributes. After MAX_PILOTS, what is still not vouched for goes one at a time.
        const MAX_PILOTS: usize = 16;
        let mut done: Vec<(usize, OpResult)> = Vec::new();
        let mut uncovered = self.unregistered(changes, 0..changes.len());
        let mut pilots = 0;
        while let Some(&i) = uncovered.first() {
            if pilots == MAX_PILOTS {
                done.extend(
                    self.apply_subset(&uncovered, changes, passwords, in_flight, cancel.clone())
                        .await,
                );
                break;
            }
            pilots += 1;
            done.extend(
                self.apply_subset(&[i], changes, passwords, 1, cancel.clone())
                    .await,
            );
            uncovered = self.unregistered(changes, uncovered[1..].iter().copied());
        }
        let sent: HashSet<usize> = done.iter().map(|(i, _)| *i).collect();
        let mut indices: Vec<usize> = (0..changes.len()).filter(|i| !sent.contains(i)).collect();
        if indices.len() < 2 {
            // (a transaction of one change costs two more round trips and saves nothing)
            done.extend(
                self.apply_subset(&indices, changes, passwords, in_flight, cancel.clone())
                    .await,
            );
            indices.clear();
        }
        // One transaction at a time, on the first connection: slapd 2.5 crashed when two
        // connections' transactions (or a transaction's pipelined requests) met other writes
        // (see try_transaction).
        let mut results = done;
        for chunk in indices.chunks(self.txn_size) {
            results.extend(
                self.one_transaction(
                    self.ldap.clone(),
                    chunk,
                    changes,
                    passwords,
                    in_flight,
                    cancel.clone(),
                )
                .await,
            );
        }
        results.sort_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, r)| r).collect()
    }

    /// One transaction's changes (`idx` into `changes`). A commit that fails names the operation
    /// that failed: it is sent alone (its own result tells why) and the rest go in a new
    /// transaction, twice at most; then, or when the failure names no operation, the rest are
    /// sent one at a time. Nothing of a failed transaction was written, so nothing is sent twice.
    async fn one_transaction(
        &self,
        mut ldap: Ldap,
        idx: &[usize],
        changes: &[&Change],
        passwords: &[Option<crate::secret::Secret>],
        in_flight: usize,
        cancel: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Vec<(usize, OpResult)> {
        let mut out = Vec::with_capacity(idx.len());
        let mut pending: Vec<usize> = idx.to_vec();
        for _ in 0..3 {
            if pending.is_empty() {
                return out;
            }
            match self
                .try_transaction(&mut ldap, &pending, changes, passwords, in_flight, &cancel)
                .await
            {
                TxnOutcome::Committed(res) => {
                    out.extend(res);
                    return out;
                }
                TxnOutcome::Unknown(f, settled) => {
                    pending.retain(|i| !settled.iter().any(|(j, _)| j == i));
                    out.extend(settled);
                    out.extend(pending.iter().map(|i| (*i, Err(f.clone()))));
                    return out;
                }
                TxnOutcome::Failed(culprit, settled) => {
                    pending.retain(|i| !settled.iter().any(|(j, _)| j == i));
                    out.extend(settled);
                    let Some(culprit) = culprit else { break };
                    tracing::info!(target: "dirbridge::ldap", dn = %changes[culprit].dn, "a transaction of {} changes failed on this one: it is sent alone, the rest again in a transaction", pending.len());
                    out.extend(
                        self.apply_subset(&[culprit], changes, passwords, 1, cancel.clone())
                            .await,
                    );
                    pending.retain(|i| *i != culprit);
                }
            }
        }
        if !pending.is_empty() {
            tracing::info!(target: "dirbridge::ldap", "{} changes are sent one at a time (their transaction failed)", pending.len());
            out.extend(
                self.apply_subset(&pending, changes, passwords, in_flight, cancel)
                    .await,
            );
        }
        out
    }

    /// Start a transaction, queue the changes in it, commit, read the new entries' entryUUIDs.
    async fn try_transaction(
        &self,
        ldap: &mut Ldap,
        idx: &[usize],
        changes: &[&Change],
        passwords: &[Option<crate::secret::Secret>],
        in_flight: usize,
        cancel: &Option<tokio::sync::watch::Receiver<bool>>,
    ) -> TxnOutcome {
        use std::sync::atomic::Ordering;
        let stopping = || cancel.as_ref().is_some_and(|c| *c.borrow());
        let not_sent = || OpFailure {
            rc: NOT_SENT,
            text: "not sent: stopping".into(),
        };
        if stopping() {
            return TxnOutcome::Committed(idx.iter().map(|i| (*i, Err(not_sent()))).collect());
        }
        ldap.with_timeout(self.op_timeout);
        let id = match ldap
            .extended(ldap3::exop::Exop {
                name: Some(TXN_START.to_string()),
                val: None,
            })
            .await
        {
            Ok(ldap3::result::ExopResult(exop, r)) if r.rc == 0 => exop.val.unwrap_or_default(),
            Ok(ldap3::result::ExopResult(_, r)) => {
                tracing::warn!(target: "dirbridge::ldap", "{}: the server refused to start a transaction ({}): writing one operation at a time from now on", self.url, OpFailure { rc: r.rc, text: r.text });
                self.txn_state.store(TXN_NO, Ordering::Relaxed);
                return TxnOutcome::Failed(None, Vec::new());
            }
            Err(_) => return TxnOutcome::Failed(None, Vec::new()),
        };
        // Queue, one request at a time: the server answers each at once (success = queued).
        // Pipelined requests inside a transaction crashed Debian's slapd 2.5.13 (segfault) when
        // another connection wrote at the same time: in 3 stress runs of 30 rounds, each died
        // within 6 to 8 rounds with 32 in flight; none died in 100 rounds with one at a time
        // (bench/txn-stress.sh runs the shipped way).
        let futs = idx.iter().map(|&i| {
            let mut l = ldap.clone();
            let id = id.as_slice();
            let pw = passwords.get(i).cloned().flatten();
            async move {
                if stopping() {
                    return (i, 0, Err(not_sent()));
                }
                let r = apply_one(&mut l, changes[i], self.op_timeout, pw, self.ad, Some(id)).await;
                (i, l.last_id(), r)
            }
        });
        let queued: Vec<(usize, i32, OpResult)> =
            futures_util::stream::iter(futs).then(|f| f).collect().await;
        // A change the server refused to queue (its syntax, say: slapd checks that before it
        // queues) keeps that refusal as its result and stays out of the transaction. A refusal
        // of the transaction itself (53 "backend doesn't support transactions", 71 "cannot span
        // multiple database contexts", 2, 12), or no answer (80: whether it was queued is
        // unknown), aborts it: the changes are sent one at a time.
        let txn_refused = |f: &OpFailure| {
            matches!(f.rc, 2 | 12 | 71 | 80) || (f.rc == 53 && f.text.contains("transaction"))
        };
        let refused = queued
            .iter()
            .find_map(|(_, _, r)| r.as_ref().err().filter(|f| txn_refused(f)));
        let sent = queued.iter().filter(|(_, _, r)| r.is_ok()).count();
        if refused.is_some() || sent == 0 {
            if let Some(f) = refused {
                tracing::info!(target: "dirbridge::ldap", "{}: a change was not accepted into a transaction ({f}); sending these one at a time", self.url);
                if f.rc != 80 {
                    self.txn_state.store(TXN_NO, Ordering::Relaxed);
                }
            }
            let _ = ldap
                .extended(ldap3::exop::Exop {
                    name: Some(TXN_END.to_string()),
                    val: Some(end_txn_value(&id, false)),
                })
                .await;
            if refused.is_none() {
                // Nothing was queued: each change was refused on its own, or the run is stopping.
                return TxnOutcome::Committed(queued.into_iter().map(|(i, _, r)| (i, r)).collect());
            }
            return TxnOutcome::Failed(None, Vec::new());
        }
        // Final already: refused on their own, or not sent.
        let settled = |q: &[(usize, i32, OpResult)]| {
            q.iter()
                .filter(|(_, _, r)| r.is_err())
                .map(|(i, _, r)| (*i, r.clone()))
                .collect::<Vec<_>>()
        };
        ldap.with_timeout(self.op_timeout.max(Duration::from_secs(300)));
        let end = ldap
            .extended(ldap3::exop::Exop {
                name: Some(TXN_END.to_string()),
                val: Some(end_txn_value(&id, true)),
            })
            .await;
        match end {
            Err(e) => TxnOutcome::Unknown(OpFailure {
                rc: 80,
                text: format!("the commit of a transaction of {sent} changes got no answer ({e}): whether they were written is unknown; the next run reads the directory again and plans what is missing"),
            }, settled(&queued)),
            Ok(ldap3::result::ExopResult(exop, r)) if r.rc != 0 => {
                let culprit = exop
                    .val
                    .as_deref()
                    .and_then(end_txn_failed_msgid)
                    .and_then(|m| queued.iter().find(|(_, id, r)| *id == m && r.is_ok()))
                    .map(|(i, _, _)| *i);
                tracing::debug!(target: "dirbridge::ldap", "transaction of {sent} changes not committed: {}", OpFailure { rc: r.rc, text: r.text });
                TxnOutcome::Failed(culprit, settled(&queued))
            }
            Ok(_) => {
                self.transactions.fetch_add(1, Ordering::Relaxed);
                // The adds' entryUUIDs, read now that they exist.
                let reads = queued.into_iter().map(|(i, _, r)| {
                    let mut l = ldap.clone();
                    let t = self.op_timeout;
                    async move {
                        if r.is_err() || changes[i].op != Op::Add {
                            return (i, r);
                        }
                        l.with_timeout(t);
                        let uuid = read_entry_uuid(&mut l, &changes[i].dn).await;
                        (i, Ok(uuid))
                    }
                });
                TxnOutcome::Committed(
                    futures_util::stream::iter(reads)
                        .buffer_unordered(in_flight.max(1))
                        .collect()
                        .await,
                )
            }
        }
    }

    /// The changes `idx` (indices into `changes`) one operation at a time; their results with
    /// their indices. Those that succeed vouch for their kinds and attributes.
    async fn apply_subset(
        &self,
        idx: &[usize],
        changes: &[&Change],
        passwords: &[Option<crate::secret::Secret>],
        in_flight: usize,
        cancel: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Vec<(usize, OpResult)> {
        let sub: Vec<&Change> = idx.iter().map(|i| changes[*i]).collect();
        let pw: Vec<Option<crate::secret::Secret>> = idx
            .iter()
            .map(|i| passwords.get(*i).cloned().flatten())
            .collect();
        let r = self
            .apply_each(&sub, &pw, in_flight, cancel, &[], None)
            .await;
        self.learn(
            sub.iter()
                .zip(&r)
                .filter(|(_, r)| r.is_ok())
                .map(|(c, _)| *c),
        );
        idx.iter().copied().zip(r).collect()
    }

    /// One operation at a time (each its own commit on the server), up to `in_flight` outstanding
    /// per connection.
    async fn apply_each(
        &self,
        changes: &[&Change],
        passwords: &[Option<crate::secret::Secret>],
        in_flight: usize,
        cancel: Option<tokio::sync::watch::Receiver<bool>>,
        after: &[Vec<usize>],
        journal: Option<JournalLink>,
    ) -> Vec<OpResult> {
        let (journaled, answered) = match journal {
            Some(j) => (Some(j.journaled), j.answered),
            None => (None, None),
        };
        let tell = |i: usize, r: &OpResult| {
            if let (Some(a), Some((ok, text))) = (&answered, journal_outcome(r)) {
                let _ = a.send((i, ok, text));
            }
        };
        // Changes of one phase are independent (but for `after`): spread them over the
        // connections.
        let writers = self.writers().await;
        let pool: Vec<&Ldap> = std::iter::once(&self.ldap).chain(writers.iter()).collect();
        // (`slot`: the connection, in turn as changes are sent)
        let make = |i: usize, slot: usize| {
            let c = changes[i];
            let mut ldap = pool[slot % pool.len()].clone();
            let t = self.op_timeout;
            let pw = passwords.get(i).cloned().flatten();
            let cancel = cancel.clone();
            let journaled = journaled.clone();
            let ad = self.ad;
            async move {
                // Never sent before its journal row is written (see `journaled_past`).
                if !journaled_past(journaled, i).await {
                    return (i, Err(not_journaled()));
                }
                // An operation not yet sent when the daemon is told to stop is not sent at all;
                // those in flight finish.
                if cancel.as_ref().is_some_and(|c| *c.borrow()) {
                    return (
                        i,
                        Err(OpFailure {
                            rc: NOT_SENT,
                            text: "not sent: stopping".into(),
                        }),
                    );
                }
                let r = apply_one(&mut ldap, c, t, pw, ad, None).await;
                // AD's diagnostics (`0000XXXX: …`) get what they mean and what happens next.
                let r = match r {
                    Err(mut f) if ad => {
                        if let Some(why) = crate::ad::explain_error(f.rc, &f.text) {
                            f.text = format!("{} — {why}", f.text.trim_end_matches('\0'));
                        }
                        Err(f)
                    }
                    other => other,
                };
                (i, r)
            }
        };
        let room = in_flight.max(1) * pool.len();
        let mut results: Vec<(usize, OpResult)> = if after.iter().all(Vec::is_empty) {
            futures_util::stream::iter((0..changes.len()).map(|i| make(i, i)))
                .buffer_unordered(room)
                .inspect(|(i, r)| tell(*i, r))
                .collect()
                .await
        } else {
            // A change is sent once the changes it waits for have answered (whatever the
            // answer), never before; the others keep the connections full meanwhile.
            let mut left: Vec<usize> = (0..changes.len())
                .map(|i| after.get(i).map_or(0, Vec::len))
                .collect();
            let mut waiting: Vec<Vec<usize>> = vec![Vec::new(); changes.len()];
            for (i, first) in after.iter().enumerate() {
                for &j in first {
                    waiting[j].push(i);
                }
            }
            let mut ready: std::collections::VecDeque<usize> =
                (0..changes.len()).filter(|&i| left[i] == 0).collect();
            let mut running = futures_util::stream::FuturesUnordered::new();
            let mut out = Vec::with_capacity(changes.len());
            let mut sent = 0;
            loop {
                while running.len() < room {
                    match ready.pop_front() {
                        Some(i) => {
                            running.push(make(i, sent));
                            sent += 1;
                        }
                        None => break,
                    }
                }
                let Some((i, r)) = running.next().await else {
                    break;
                };
                tell(i, &r);
                out.push((i, r));
                for &k in &waiting[i] {
                    left[k] -= 1;
                    if left[k] == 0 {
                        ready.push_back(k);
                    }
                }
            }
            // (a change whose wait never ended: only a cycle, which `after` never holds)
            let stuck: Vec<usize> = (0..changes.len()).filter(|&i| left[i] > 0).collect();
            let rest: Vec<(usize, OpResult)> =
                futures_util::stream::iter(stuck.into_iter().map(|i| make(i, i)))
                    .buffer_unordered(room)
                    .inspect(|(i, r)| tell(*i, r))
                    .collect()
                    .await;
            out.extend(rest);
            out
        };
        results.sort_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, r)| r).collect()
    }

    /// The entryUUIDs of entries this run added (OpenLDAP adds answer without one: see
    /// `apply_one`), in the order of `dns`; None, with a warning, where one cannot be read (the
    /// next run links that entry by its anchor), and on Active Directory (its adds read their
    /// objectGUID themselves). Where many were added under one parent and they are a large part
    /// of the directory (`existing`: the entries the run read), one paged one-level search of the
    /// parent reads them all; the others, base searches spread over the connections.
    pub async fn read_back_uuids(
        &self,
        dns: &[&str],
        in_flight: usize,
        existing: usize,
    ) -> Vec<Option<String>> {
        let mut out: Vec<Option<String>> = vec![None; dns.len()];
        if self.ad {
            return out;
        }
        let mut by_parent: HashMap<String, (String, Vec<usize>)> = HashMap::new();
        for (i, dn) in dns.iter().enumerate() {
            if let Ok(d) = crate::dn::Dn::parse(dn) {
                let p = d.parent();
                by_parent
                    .entry(p.normalized())
                    .or_insert_with(|| (p.to_string(), Vec::new()))
                    .1
                    .push(i);
            }
        }
        for (parent, idx) in by_parent.values() {
            if idx.len() < READ_BACK_ONE_LEVEL || idx.len() * 4 < existing || parent.is_empty() {
                continue;
            }
            let children = self
                .search_in(parent, Scope::OneLevel, "(objectClass=*)", &["entryUUID"])
                .await;
            match children {
                Ok(children) => {
                    let found: HashMap<String, String> = children
                        .into_iter()
                        .filter(|e| !e.uuid.is_empty())
                        .map(|e| (crate::dn::normalize(&e.dn), e.uuid))
                        .collect();
                    for &i in idx {
                        out[i] = found.get(&crate::dn::normalize(dns[i])).cloned();
                    }
                }
                Err(e) => {
                    tracing::debug!(target: "dirbridge::ldap", "reading the new entries' entryUUIDs under {parent} at once failed ({e}); one by one")
                }
            }
        }
        let writers = self.writers().await;
        let pool: Vec<&Ldap> = std::iter::once(&self.ldap).chain(writers.iter()).collect();
        let reads = (0..dns.len())
            .filter(|&i| out[i].is_none())
            .map(|i| {
                let mut l = pool[i % pool.len()].clone();
                l.with_timeout(self.op_timeout);
                async move { (i, read_entry_uuid(&mut l, dns[i]).await) }
            })
            .collect::<Vec<_>>();
        let read: Vec<(usize, Option<String>)> = futures_util::stream::iter(reads)
            .buffer_unordered(in_flight.max(1) * pool.len())
            .collect()
            .await;
        for (i, u) in read {
            out[i] = u;
        }
        out
    }

    /// The extra write connections, once bound (see `writers`).
    async fn writers(&self) -> &[Ldap] {
        self.writers
            .get_or_init(|| async {
                let coming = self.writers_coming.lock().ok().and_then(|mut c| c.take());
                match coming {
                    Some(h) => h.await.unwrap_or_default(),
                    None => Vec::new(),
                }
            })
            .await
    }

    pub async fn unbind(mut self) {
        let coming = self.writers_coming.lock().ok().and_then(|mut c| c.take());
        let mut writers = self.writers.take().unwrap_or_default();
        if let Some(h) = coming {
            // (a run that wrote nothing: the connections still being made are dropped)
            if h.is_finished() {
                writers.extend(h.await.unwrap_or_default());
            } else {
                h.abort();
            }
        }
        for mut w in writers {
            let _ = w.unbind().await;
        }
        let _ = self.ldap.unbind().await;
    }
}

/// At least this many entries added under one parent (and at least a quarter as many as the
/// directory had) are read back by one one-level search of the parent rather than one base search
/// each. Measured on slapd with 4 connections: a base search about 55 µs, a one-level search about
/// 10 µs per entry it returns (0.10 s for 10,000).
const READ_BACK_ONE_LEVEL: usize = 512;

/// RFC 5805 object identifiers: Start and End Transaction, Transaction Specification control.
const TXN_START: &str = "1.3.6.1.1.21.1";
const TXN_END: &str = "1.3.6.1.1.21.3";
const TXN_SPEC: &str = "1.3.6.1.1.21.2";
const TXN_UNKNOWN: u8 = 0;
const TXN_YES: u8 = 1;
const TXN_NO: u8 = 2;

/// How a transaction ended.
enum TxnOutcome {
    /// Committed (or nothing to commit): each change's result.
    Committed(Vec<(usize, OpResult)>),
    /// Not committed, nothing written; the change that failed, when the server said which, and
    /// the results already final (changes refused before the commit, or not sent).
    Failed(Option<usize>, Vec<(usize, OpResult)>),
    /// The commit got no answer: whether it was written is unknown (and the results already final).
    Unknown(OpFailure, Vec<(usize, OpResult)>),
}

/// The Transaction Specification control (critical; its value is the transaction's identifier).
fn txn_spec(id: &[u8]) -> ldap3::controls::RawControl {
    ldap3::controls::RawControl {
        ctype: TXN_SPEC.to_string(),
        crit: true,
        val: Some(id.to_vec()),
    }
}

fn ber_len(out: &mut Vec<u8>, n: usize) {
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let b = n.to_be_bytes();
        let skip = b.iter().take_while(|x| **x == 0).count();
        out.push(0x80 | (b.len() - skip) as u8);
        out.extend_from_slice(&b[skip..]);
    }
}

/// txnEndReq ::= SEQUENCE { commit BOOLEAN DEFAULT TRUE, identifier OCTET STRING } (RFC 5805 2.3).
fn end_txn_value(id: &[u8], commit: bool) -> Vec<u8> {
    let mut inner = Vec::with_capacity(id.len() + 8);
    if !commit {
        inner.extend_from_slice(&[0x01, 0x01, 0x00]);
    }
    inner.push(0x04);
    ber_len(&mut inner, id.len());
    inner.extend_from_slice(id);
    let mut out = vec![0x30];
    ber_len(&mut out, inner.len());
    out.extend(inner);
    out
}

/// The messageID of the update that failed, from txnEndRes ::= SEQUENCE { messageID MessageID
/// OPTIONAL, updatesControls SEQUENCE … OPTIONAL } (None when absent or not understood).
fn end_txn_failed_msgid(v: &[u8]) -> Option<i32> {
    let len = |b: &[u8]| -> Option<(usize, usize)> {
        // (length, bytes taken by the length octets)
        let first = *b.first()?;
        if first < 0x80 {
            return Some((first as usize, 1));
        }
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < 1 + n {
            return None;
        }
        Some((
            b[1..=n].iter().fold(0usize, |a, x| (a << 8) | *x as usize),
            1 + n,
        ))
    };
    if v.first() != Some(&0x30) {
        return None;
    }
    let (_, l) = len(&v[1..])?;
    let rest = &v[1 + l..];
    if rest.first() != Some(&0x02) {
        return None;
    }
    let (n, l) = len(&rest[1..])?;
    let bytes = rest.get(1 + l..1 + l + n)?;
    if n == 0 || n > 4 {
        return None;
    }
    let mut x: i64 = if bytes[0] & 0x80 != 0 { -1 } else { 0 };
    for b in bytes {
        x = (x << 8) | *b as i64;
    }
    i32::try_from(x).ok()
}

fn member_fold(attr: &str, v: &str) -> String {
    if attr.eq_ignore_ascii_case("memberUid") {
        v.to_lowercase()
    } else {
        dn::normalize(v)
    }
}

/// Member adds/removes of a change; with `current`, only the values still to add or remove.
fn member_mods(c: &Change, current: Option<&HashSet<String>>) -> Vec<Mod<String>> {
    let mut mods = Vec::new();
    for a in &c.attributes {
        let keep = |v: &&String| match current {
            None => true,
            Some(cur) => {
                let present = cur.contains(&member_fold(&a.attr, v));
                if a.kind == DeltaKind::Delete {
                    present
                } else {
                    !present
                }
            }
        };
        match a.kind {
            DeltaKind::Delete => {
                let vals: HashSet<String> = a.old.iter().filter(keep).cloned().collect();
                if !vals.is_empty() {
                    mods.push(Mod::Delete(a.attr.to_string(), vals));
                }
            }
            _ => {
                let vals: HashSet<String> = a.new.iter().filter(keep).cloned().collect();
                if !vals.is_empty() {
                    mods.push(Mod::Add(a.attr.to_string(), vals));
                }
            }
        }
    }
    mods
}

fn set(v: &[String]) -> HashSet<String> {
    v.iter().cloned().collect()
}

fn lerr(e: ldap3::LdapError) -> OpFailure {
    match e {
        ldap3::LdapError::LdapResult { result } => OpFailure {
            rc: result.rc,
            text: result.text,
        },
        other => OpFailure {
            rc: 80,
            text: other.to_string(),
        },
    }
}

/// The value AD wants in unicodePwd: the password in double quotes, UTF-16LE.
pub fn unicode_pwd(pw: &str) -> Vec<u8> {
    format!("\"{pw}\"")
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect()
}

/// An AD add: values as bytes (unicodePwd is binary), then the new entry's objectGUID read back.
async fn add_ad(ldap: &mut Ldap, c: &Change, password: Option<&crate::secret::Secret>) -> OpResult {
    let mut attrs: HashMap<Vec<u8>, HashSet<Vec<u8>>> = HashMap::new();
    for a in &c.attributes {
        attrs
            .entry(a.attr.as_bytes().to_vec())
            .or_default()
            .extend(a.new.iter().map(|v| v.as_bytes().to_vec()));
    }
    if let Some(pw) = password {
        attrs.insert(
            b"unicodePwd".to_vec(),
            [unicode_pwd(pw.expose())].into_iter().collect(),
        );
        // The person sets their own password at first logon.
        attrs.insert(
            b"pwdLastSet".to_vec(),
            [b"0".to_vec()].into_iter().collect(),
        );
    }
    let attrs: Vec<(Vec<u8>, HashSet<Vec<u8>>)> = attrs.into_iter().collect();
    let r = ldap.add(&c.dn, attrs).await.map_err(lerr)?;
    if r.rc != 0 {
        return Err(OpFailure {
            rc: r.rc,
            text: r.text,
        });
    }
    let (rs, _) = ldap
        .search(&c.dn, Scope::Base, "(objectClass=*)", vec!["objectGUID"])
        .await
        .and_then(|r| r.success())
        .map_err(lerr)?;
    Ok(rs
        .into_iter()
        .next()
        .map(SearchEntry::construct)
        .and_then(|e| guid_attr(&e, "objectGUID")))
}

/// The entryUUID of an entry just added (None, with a warning, when it cannot be read: the next
/// run links the entry by its anchor).
async fn read_entry_uuid(ldap: &mut Ldap, dn: &str) -> Option<String> {
    match ldap
        .search(dn, Scope::Base, "(objectClass=*)", vec!["entryUUID"])
        .await
        .and_then(|r| r.success())
    {
        Ok((rs, _)) => rs
            .into_iter()
            .next()
            .map(SearchEntry::construct)
            .and_then(|e| values(&e, "entryUUID").into_iter().next()),
        Err(e) => {
            tracing::warn!(target: "dirbridge::ldap", dn = %dn, "added, but its entryUUID could not be read back: {e}; the next run links it");
            None
        }
    }
}

/// One change. With `txn` (a transaction's identifier), the request carries the Transaction
/// Specification control and the server only queues it: success means "queued", and an add's
/// entryUUID is read after the commit (slapd refuses Post-Read inside a transaction).
async fn apply_one(
    ldap: &mut Ldap,
    c: &Change,
    t: Duration,
    password: Option<crate::secret::Secret>,
    ad: bool,
    txn: Option<&[u8]>,
) -> OpResult {
    // A test-only delay per operation, so that tests can stop the daemon in the middle of a run
    // (documented in tests/it/daemon.rs; never set in production).
    if let Some(ms) = std::env::var("DIRBRIDGE_TEST_OP_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    ldap.with_timeout(t);
    let check = |r: ldap3::LdapResult| -> Result<ldap3::LdapResult, OpFailure> {
        if r.rc == 0 {
            Ok(r)
        } else {
            Err(OpFailure {
                rc: r.rc,
                text: r.text,
            })
        }
    };
    match c.op {
        Op::Add if ad => add_ad(ldap, c, password.as_ref()).await,
        Op::Add => {
            let mut attrs: HashMap<String, HashSet<String>> = HashMap::new();
            for a in &c.attributes {
                attrs
                    .entry(a.attr.to_string())
                    .or_default()
                    .extend(a.new.iter().cloned());
            }
            if let Some(pw) = &password {
                attrs.insert(
                    "userPassword".into(),
                    [pw.expose().to_string()].into_iter().collect(),
                );
            }
            let attrs: Vec<(String, HashSet<String>)> = attrs.into_iter().collect();
            if let Some(id) = txn {
                check(
                    ldap.with_controls(txn_spec(id))
                        .add(&c.dn, attrs)
                        .await
                        .map_err(lerr)?,
                )?;
                return Ok(None);
            }
            // The entryUUID is read after the run's writes (`read_back_uuids`), not asked for
            // with Post-Read: slapd builds a Post-Read answer inside the add's write transaction,
            // where every other write waits (12-15% of an initial load's time; a search beside
            // each add cost as much: docs/performance.md).
            check(ldap.add(&c.dn, attrs).await.map_err(lerr)?)?;
            Ok(None)
        }
        Op::Modify | Op::Link | Op::Disable | Op::Enable => {
            let mods: Vec<Mod<String>> = c
                .attributes
                .iter()
                .map(|a| match a.kind {
                    DeltaKind::Add => Mod::Add(a.attr.to_string(), set(&a.new)),
                    DeltaKind::Delete => Mod::Delete(a.attr.to_string(), HashSet::new()),
                    DeltaKind::Replace => Mod::Replace(a.attr.to_string(), set(&a.new)),
                })
                .collect();
            if let Some(id) = txn {
                ldap.with_controls(txn_spec(id));
            }
            check(ldap.modify(&c.dn, mods).await.map_err(lerr)?)?;
            Ok(None)
        }
        Op::AddMember | Op::RemoveMember => {
            // Permissive modify (where the server knows it): adding a value that is there or
            // deleting one that is gone is not an error.
            let permissive = ldap3::controls::RawControl {
                ctype: "1.2.840.113556.1.4.1413".to_string(),
                crit: false,
                val: None,
            };
            let mods = member_mods(c, None);
            if let Some(id) = txn {
                // Queued: a member already there or gone shows at the commit (permissive modify
                // makes it no error on OpenLDAP).
                check(
                    ldap.with_controls(vec![permissive, txn_spec(id)])
                        .modify(&c.dn, mods)
                        .await
                        .map_err(lerr)?,
                )?;
                return Ok(None);
            }
            let r = ldap
                .with_controls(permissive)
                .modify(&c.dn, mods)
                .await
                .map_err(lerr)?;
            // 16/20 (OpenLDAP), 68/53 (Active Directory: "Attribute member already exists",
            // "… doesn't exist"): a member was renamed or moved by the server already.
            if matches!(r.rc, 16 | 20) || (ad && matches!(r.rc, 53 | 68)) {
                // The server's referential integrity may have renamed a member already (a person
                // moved in this run): re-read the group and send only what is still needed.
                let attr = c
                    .attributes
                    .first()
                    .map(|a| a.attr.to_string())
                    .unwrap_or_default();
                let (entries, _) = ldap
                    .search(&c.dn, Scope::Base, "(objectClass=*)", vec![attr.as_str()])
                    .await
                    .and_then(|r| r.success())
                    .map_err(lerr)?;
                let current: HashSet<String> = entries
                    .into_iter()
                    .next()
                    .map(SearchEntry::construct)
                    .and_then(|e| {
                        e.attrs
                            .into_iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(&attr))
                            .map(|(_, v)| v)
                    })
                    .unwrap_or_default()
                    .iter()
                    .map(|v| member_fold(&attr, v))
                    .collect();
                let mods = member_mods(c, Some(&current));
                if mods.is_empty() {
                    return Ok(None);
                }
                check(ldap.modify(&c.dn, mods).await.map_err(lerr)?)?;
                return Ok(None);
            }
            check(r)?;
            Ok(None)
        }
        Op::Rename | Op::Move => {
            let new = c.new_dn.as_deref().unwrap_or("");
            let nd = Dn::parse(new).map_err(|e| OpFailure {
                rc: 34,
                text: e.to_string(),
            })?;
            let od = Dn::parse(&c.dn).map_err(|e| OpFailure {
                rc: 34,
                text: e.to_string(),
            })?;
            let rdn = nd
                .first()
                .map(|a| dn::rdn(&a.attr, &a.value))
                .unwrap_or_default();
            let np = nd.parent();
            let sup = if np.normalized() != od.parent().normalized() {
                Some(np.to_string())
            } else {
                None
            };
            if let Some(id) = txn {
                ldap.with_controls(txn_spec(id));
            }
            check(
                ldap.modifydn(&c.dn, &rdn, true, sup.as_deref())
                    .await
                    .map_err(lerr)?,
            )?;
            Ok(None)
        }
        Op::Delete => {
            if let Some(id) = txn {
                ldap.with_controls(txn_spec(id));
            }
            check(ldap.delete(&c.dn).await.map_err(lerr)?)?;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod host_port_tests {
    use super::host_port;

    #[test]
    fn urls_give_host_and_port() {
        assert_eq!(
            host_port("ldaps://127.0.0.1:20390").as_deref(),
            Some("127.0.0.1:20390")
        );
        assert_eq!(
            host_port("ldap://ldap.example.com").as_deref(),
            Some("ldap.example.com:389")
        );
        assert_eq!(
            host_port("LDAPS://dc1.corp.example/").as_deref(),
            Some("dc1.corp.example:636")
        );
        assert_eq!(host_port("ldaps://[::1]").as_deref(), Some("[::1]:636"));
        assert_eq!(
            host_port("ldap://[::1]:1389").as_deref(),
            Some("[::1]:1389")
        );
        assert_eq!(host_port("ldap://").as_deref(), Some("localhost:389"));
        assert_eq!(host_port("ldapi://%2Frun%2Fslapd%2Fldapi"), None);
    }
}

#[cfg(test)]
mod txn_tests {
    use super::{end_txn_failed_msgid, end_txn_value};

    #[test]
    fn end_transaction_requests_are_encoded_as_rfc_5805_says() {
        // Commit is the default and left out; OpenLDAP's identifiers are empty.
        assert_eq!(end_txn_value(b"", true), vec![0x30, 0x02, 0x04, 0x00]);
        assert_eq!(
            end_txn_value(b"ab", false),
            vec![0x30, 0x07, 0x01, 0x01, 0x00, 0x04, 0x02, b'a', b'b']
        );
        // Long identifiers take long-form lengths.
        let v = end_txn_value(&[7u8; 200], true);
        assert_eq!(&v[..7], &[0x30, 0x81, 0xcb, 0x04, 0x81, 0xc8, 7]);
        assert_eq!(v.len(), 3 + 3 + 200);
    }

    #[test]
    fn the_failed_update_is_found_in_the_end_transaction_response() {
        // slapd: SEQUENCE { INTEGER msgid } when an update failed.
        assert_eq!(
            end_txn_failed_msgid(&[0x30, 0x03, 0x02, 0x01, 0x2a]),
            Some(42)
        );
        assert_eq!(
            end_txn_failed_msgid(&[0x30, 0x04, 0x02, 0x02, 0x01, 0x00]),
            Some(256)
        );
        // With updates' controls after it.
        assert_eq!(
            end_txn_failed_msgid(&[0x30, 0x07, 0x02, 0x01, 0x05, 0x30, 0x02, 0x30, 0x00]),
            Some(5)
        );
        // Only controls, nothing, or garbage: no operation named.
        assert_eq!(end_txn_failed_msgid(&[0x30, 0x02, 0x30, 0x00]), None);
        assert_eq!(end_txn_failed_msgid(&[]), None);
        assert_eq!(end_txn_failed_msgid(&[0x30, 0x05, 0x02, 0x09]), None);
        assert_eq!(end_txn_failed_msgid(&[0x04, 0x00]), None);
    }
}

#[cfg(test)]
mod journal_gate_tests {
    use super::journaled_past;
    use futures_util::FutureExt;

    #[test]
    fn a_change_is_held_until_its_journal_row_is_written_and_dropped_without_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (tx, rx) = tokio::sync::watch::channel(0usize);
            // the third change of the batch (index 2)
            let mut third = Box::pin(journaled_past(Some(rx.clone()), 2));
            assert_eq!((&mut third).now_or_never(), None);
            tx.send_replace(2);
            assert_eq!((&mut third).now_or_never(), None, "rows 0 and 1 only");
            tx.send_replace(3);
            assert_eq!((&mut third).now_or_never(), Some(true));
            // the journal stops short (the mirror could not be written): not sent
            let fourth = journaled_past(Some(rx), 3);
            drop(tx);
            assert!(!fourth.await);
            // no gate: everything was journaled before
            assert!(journaled_past(None, 99).await);
        });
    }
}

//! The LDAP client edge: connect (failover, TLS verified, timeouts), bind, read, apply.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::StreamExt;
use ldap3::adapters::PagedResults;
use ldap3::controls::{ControlType, PostRead, PostReadResp};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Mod, Scope, SearchEntry};

use super::schema::Schema;
use super::TargetError;
use crate::config::DirectoryConfig;
use crate::dn::{self, Dn};
use crate::model::Entry;
use crate::plan::{Change, DeltaKind, Op};

pub struct LdapTarget {
    ldap: Ldap,
    /// More bound connections to the same server, for writes (`directory.connections`).
    writers: Vec<Ldap>,
    pub url: String,
    op_timeout: Duration,
    page_size: i32,
    /// Active Directory: objectGUID is the immutable id; passwords go in unicodePwd.
    ad: bool,
    /// `directory.range-size`: read `member` in ranges of this many values.
    range_size: Option<u32>,
    /// Extra requests made to read the rest of a ranged attribute (`member;range=1500-*`).
    pub ranged_reads: std::sync::atomic::AtomicU64,
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
            // More connections for writes, bound the same way; one that fails is done without.
            let mut writers = Vec::new();
            for _ in 1..cfg.connections {
                match extra_connection(cfg, url, tls.clone(), ldapi).await {
                    Ok(l) => writers.push(l),
                    Err(e) => {
                        tracing::warn!(target: "dirbridge::ldap", "an extra write connection to {url} failed: {e}; going on with {}", writers.len() + 1);
                        break;
                    }
                }
            }
            return Ok(LdapTarget {
                writers,
                ldap,
                url: url.clone(),
                op_timeout: cfg.operation_timeout,
                page_size: cfg.page_size as i32,
                ad: cfg.is_ad(),
                range_size: cfg.range_size,
                ranged_reads: std::sync::atomic::AtomicU64::new(0),
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
        &mut self,
        base: &str,
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
                Scope::Subtree,
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
            .base_entry("", &["namingContexts"])
            .await?
            .map(|e| values(&e, "namingContexts"))
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
            .base_entry("", &["supportedControl"])
            .await?
            .map(|e| values(&e, "supportedControl"))
            .unwrap_or_default()
            .iter()
            .any(|c| c == "1.3.6.1.4.1.4203.1.9.1.1"))
    }

    /// RFC 4533 content synchronization, refreshOnly: with a cookie, only what changed since
    /// (entries added or modified, and the entryUUIDs deleted or still present); without one, every
    /// entry and a cookie for next time. `refresh_required` says the server refused the cookie
    /// (e-syncRefreshRequired): read again without one.
    pub async fn sync_search(
        &mut self,
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
        let mut ldap = self.ldap.clone();
        ldap.with_timeout(self.op_timeout);
        let (root, _) = ldap
            .search(
                "",
                Scope::Base,
                "(objectClass=*)",
                vec!["subschemaSubentry"],
            )
            .await
            .and_then(|r| r.success())
            .map_err(|e| TargetError::Read(format!("reading the root DSE failed: {e}")))?;
        let sub = root
            .into_iter()
            .next()
            .map(SearchEntry::construct)
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

    /// Apply changes with up to `in_flight` operations outstanding on this connection. Results come
    /// back in input order: `Ok(Some(uuid))` for adds (from the Post-Read control), `Ok(None)` else.
    pub async fn apply(
        &self,
        changes: &[&Change],
        in_flight: usize,
    ) -> Vec<Result<Option<String>, OpFailure>> {
        self.apply_with(changes, &[], in_flight, None).await
    }

    /// [`LdapTarget::apply`] with initial passwords for adds (`passwords[i]` for `changes[i]`).
    pub async fn apply_with(
        &self,
        changes: &[&Change],
        passwords: &[Option<crate::secret::Secret>],
        in_flight: usize,
        cancel: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Vec<Result<Option<String>, OpFailure>> {
        // Changes of one phase are independent: spread them over the connections.
        let pool: Vec<&Ldap> = std::iter::once(&self.ldap)
            .chain(self.writers.iter())
            .collect();
        let futs = changes.iter().enumerate().map(|(i, c)| {
            let mut ldap = pool[i % pool.len()].clone();
            let t = self.op_timeout;
            let pw = passwords.get(i).cloned().flatten();
            let cancel = cancel.clone();
            let ad = self.ad;
            async move {
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
                let r = apply_one(&mut ldap, c, t, pw, ad).await;
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
        });
        let mut results: Vec<(usize, Result<Option<String>, OpFailure>)> =
            futures_util::stream::iter(futs)
                .buffer_unordered(in_flight.max(1) * pool.len())
                .collect()
                .await;
        results.sort_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, r)| r).collect()
    }

    pub async fn unbind(mut self) {
        for mut w in std::mem::take(&mut self.writers) {
            let _ = w.unbind().await;
        }
        let _ = self.ldap.unbind().await;
    }
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
async fn add_ad(
    ldap: &mut Ldap,
    c: &Change,
    password: Option<&crate::secret::Secret>,
) -> Result<Option<String>, OpFailure> {
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

async fn apply_one(
    ldap: &mut Ldap,
    c: &Change,
    t: Duration,
    password: Option<crate::secret::Secret>,
    ad: bool,
) -> Result<Option<String>, OpFailure> {
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
            let r = ldap
                .with_controls(PostRead::new(vec!["entryUUID"]))
                .add(&c.dn, attrs)
                .await
                .map_err(lerr)?;
            let r = check(r)?;
            let uuid = r
                .ctrls
                .iter()
                .find(|c| matches!(c.0, Some(ControlType::PostReadResp)))
                .and_then(|c| c.1.val.as_ref().map(|_| c.1.parse::<PostReadResp>()))
                .and_then(|p| {
                    p.attrs
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("entryUUID"))
                        .and_then(|(_, v)| v.first().cloned())
                });
            Ok(uuid)
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
            check(
                ldap.modifydn(&c.dn, &rdn, true, sup.as_deref())
                    .await
                    .map_err(lerr)?,
            )?;
            Ok(None)
        }
        Op::Delete => {
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

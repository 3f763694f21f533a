//! A SCIM 2.0 client (RFC 7643/7644): reads an application's users and groups, and applies
//! [`AppChange`]s with minimal PATCH requests. A good client: a request budget, a concurrency
//! limit, `Retry-After` honoured on 429/503, exponential backoff with jitter on 5xx and timeouts,
//! idempotent creates (look up by externalId, then userName, before every POST; 409 links).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

use super::{AppChange, AppOp, AppState, RemoteAccount, RemoteGroup};
use crate::config::apps::AppConfig;
use crate::plan::{DeltaKind, Subject};

pub const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const PAGE: usize = 500;

const TOP: &[&str] = &[
    "userName",
    "displayName",
    "nickName",
    "title",
    "userType",
    "preferredLanguage",
    "locale",
    "timezone",
];
const NAME: &[(&str, &str)] = &[
    ("name.givenName", "givenName"),
    ("name.familyName", "familyName"),
    ("name.middleName", "middleName"),
    ("name.formatted", "formatted"),
];
const EXT: &[&str] = &[
    "employeeNumber",
    "department",
    "costCenter",
    "organization",
    "division",
];

/// Why a request to an application failed, after its retries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppError {
    /// Nothing answered (connection refused, DNS, TLS, timeout): the app's changes wait.
    #[error("{app}: {url} is unreachable: {why}")]
    Unreachable {
        app: String,
        url: String,
        why: String,
    },
    /// The token was refused: fix token-file.
    #[error(
        "{app}: the service refused the bearer token (HTTP {status}): check apps.{app}.token-file"
    )]
    Unauthorized { app: String, status: u16 },
    /// The service answered with an error for this request.
    #[error("{app}: {method} {path} answered HTTP {status}{}: {detail}", scim_type.as_deref().map(|t| format!(" ({t})")).unwrap_or_default())]
    Refused {
        app: String,
        method: String,
        path: String,
        status: u16,
        scim_type: Option<String>,
        detail: String,
    },
    #[error("{app}: {0}", app = .1)]
    Other(String, String),
}

impl AppError {
    pub fn status(&self) -> Option<u16> {
        match self {
            AppError::Refused { status, .. } | AppError::Unauthorized { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            AppError::Unreachable { .. } | AppError::Unauthorized { .. }
        )
    }
}

/// Requests sent, retries made, and the waits `Retry-After` asked for (for the summary and tests).
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub writes: AtomicU64,
    pub retries: AtomicU64,
}

/// Spaces requests out to stay within `max-requests-per-second`.
struct Budget {
    interval: Duration,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Budget {
    async fn wait(&self) {
        if self.interval.is_zero() {
            return;
        }
        let at = {
            let mut next = self.next.lock().await;
            let now = tokio::time::Instant::now();
            let at = (*next).max(now);
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

struct Resp {
    etag: Option<String>,
    body: Value,
}

pub struct ScimClient {
    app: AppConfig,
    base: String,
    http: reqwest::Client,
    budget: Budget,
    gate: tokio::sync::Semaphore,
    pub counters: Counters,
    /// Current ETags by resource id (updated from every response).
    etags: Mutex<BTreeMap<String, String>>,
    patch: std::sync::atomic::AtomicBool,
}

fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(d.as_nanos() as u64);
    let r = (h.finish() % 1000) as f64 / 1000.0; // 0..1
    d.mul_f64(0.5 + r)
}

/// `Retry-After`: delta-seconds or an HTTP date.
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let when = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
    let now =
        jiff::Timestamp::try_from(crate::clock::Clock::now(&crate::clock::SystemClock)).ok()?;
    let secs = when.as_second() - now.as_second();
    Some(Duration::from_secs(secs.max(0) as u64))
}

fn scim_error(body: &Value) -> (Option<String>, String) {
    let t = body
        .get("scimType")
        .and_then(Value::as_str)
        .map(String::from);
    let d = body
        .get("detail")
        .and_then(Value::as_str)
        .map(String::from)
        .unwrap_or_else(|| body.to_string().chars().take(300).collect());
    (t, d)
}

fn quote_filter(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

impl ScimClient {
    pub fn new(app: &AppConfig) -> Result<ScimClient, AppError> {
        let other = |m: String| AppError::Other(m, app.name.clone());
        let mut b = reqwest::Client::builder()
            .timeout(app.timeout)
            .connect_timeout(app.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("dirbridge/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(app.concurrency);
        if let Some(ca) = &app.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| other(format!("cannot read ca-file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| other(format!("ca-file {}: {e}", ca.display())))?;
            b = b.tls_certs_only(certs);
        }
        let http = b
            .build()
            .map_err(|e| other(format!("cannot set up the HTTP client: {e}")))?;
        let interval = if app.max_requests_per_second > 0.0 {
            Duration::from_secs_f64(1.0 / app.max_requests_per_second)
        } else {
            Duration::ZERO
        };
        Ok(ScimClient {
            base: app.url.clone().unwrap_or_default(),
            app: app.clone(),
            http,
            budget: Budget {
                interval,
                next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
            },
            gate: tokio::sync::Semaphore::new(app.concurrency.max(1)),
            counters: Counters::default(),
            etags: Mutex::new(BTreeMap::new()),
            patch: std::sync::atomic::AtomicBool::new(true),
        })
    }

    fn etag_of(&self, id: &str) -> Option<String> {
        self.etags.lock().ok().and_then(|m| m.get(id).cloned())
    }

    fn remember_etag(&self, id: &str, etag: Option<String>) {
        if let Ok(mut m) = self.etags.lock() {
            match etag {
                Some(e) => {
                    m.insert(id.to_string(), e);
                }
                None => {
                    m.remove(id);
                }
            }
        }
    }

    /// One request with the budget, the concurrency limit and the retry policy. `idempotent`:
    /// 5xx and timeouts are retried (a POST is retried only on 429/503, which the server did not
    /// process).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
        idempotent: bool,
    ) -> Result<Resp, AppError> {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let token = self.app.token.as_ref().map(|t| t.expose().to_string());
        let mut attempt = 0u32;
        loop {
            self.budget.wait().await;
            let permit = self.gate.acquire().await;
            let mut rq = self
                .http
                .request(method.clone(), &url)
                .header(reqwest::header::ACCEPT, "application/scim+json");
            if let Some(t) = &token {
                rq = rq.bearer_auth(t);
            }
            if let Some(b) = body {
                rq = rq
                    .header(reqwest::header::CONTENT_TYPE, "application/scim+json")
                    .body(b.to_string());
            }
            if let Some(e) = if_match {
                rq = rq.header(reqwest::header::IF_MATCH, e);
            }
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            if method != Method::GET {
                self.counters.writes.fetch_add(1, Ordering::Relaxed);
            }
            let sent = rq.send().await;
            drop(permit);
            let wait = match sent {
                Ok(r) => {
                    let status = r.status();
                    let headers = r.headers().clone();
                    let etag = headers
                        .get(reqwest::header::ETAG)
                        .and_then(|v| v.to_str().ok())
                        .map(String::from);
                    let text = r.text().await.unwrap_or_default();
                    let body: Value = if text.trim().is_empty() {
                        Value::Null
                    } else {
                        serde_json::from_str(&text).unwrap_or(Value::String(text))
                    };
                    let transient = status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::SERVICE_UNAVAILABLE
                        || (status.is_server_error() && idempotent);
                    if !transient || attempt >= self.app.retries {
                        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                            return Err(AppError::Unauthorized {
                                app: self.app.name.clone(),
                                status: status.as_u16(),
                            });
                        }
                        if status.is_success() || status == StatusCode::NOT_MODIFIED {
                            return Ok(Resp { etag, body });
                        }
                        let (scim_type, detail) = scim_error(&body);
                        return Err(AppError::Refused {
                            app: self.app.name.clone(),
                            method: method.to_string(),
                            path: path.to_string(),
                            status: status.as_u16(),
                            scim_type,
                            detail,
                        });
                    }
                    let backoff = jitter(Duration::from_millis(500) * 2u32.pow(attempt.min(6)));
                    let w = retry_after(&headers).unwrap_or(backoff);
                    tracing::warn!(target: "dirbridge::apps", app = %self.app.name, status = status.as_u16(), wait_ms = w.as_millis() as u64, "{method} {path}: retrying");
                    w
                }
                Err(e) => {
                    let why = if e.is_timeout() {
                        format!(
                            "no answer within {}",
                            humantime::format_duration(self.app.timeout)
                        )
                    } else {
                        let mut s = e.to_string();
                        let mut src = std::error::Error::source(&e);
                        while let Some(inner) = src {
                            s = format!("{s}: {inner}");
                            src = inner.source();
                        }
                        s
                    };
                    // A request that never reached the server may always be sent again.
                    let safe = idempotent || e.is_connect();
                    if !safe || attempt >= self.app.retries {
                        return Err(AppError::Unreachable {
                            app: self.app.name.clone(),
                            url: url.clone(),
                            why,
                        });
                    }
                    let w = jitter(Duration::from_millis(500) * 2u32.pow(attempt.min(6)));
                    tracing::warn!(target: "dirbridge::apps", app = %self.app.name, wait_ms = w.as_millis() as u64, "{method} {path}: {why}; retrying");
                    w
                }
            };
            attempt += 1;
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
    }

    async fn list(&self, resource: &str, attributes: Option<&str>) -> Result<Vec<Value>, AppError> {
        let mut out = Vec::new();
        let mut start = 1usize;
        loop {
            let mut path = format!("/{resource}?startIndex={start}&count={PAGE}");
            if let Some(a) = attributes {
                path.push_str(&format!("&attributes={a}"));
            }
            let r = self.send(Method::GET, &path, None, None, true).await?;
            let items = r
                .body
                .get("Resources")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = r
                .body
                .get("totalResults")
                .and_then(Value::as_u64)
                .unwrap_or(0) as usize;
            let n = items.len();
            out.extend(items);
            if n == 0 || out.len() >= total {
                return Ok(out);
            }
            start += n;
        }
    }

    /// Read the application's state: whether it offers PATCH, every user, the groups.
    pub async fn read(&self, want_groups: bool) -> Result<AppState, AppError> {
        let patch = match self
            .send(Method::GET, "/ServiceProviderConfig", None, None, true)
            .await
        {
            Ok(r) => r
                .body
                .pointer("/patch/supported")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            Err(e @ (AppError::Unreachable { .. } | AppError::Unauthorized { .. })) => {
                return Err(e)
            }
            Err(_) => true,
        };
        self.patch.store(patch, Ordering::Relaxed);
        let users = self.list("Users", None).await?;
        let mut accounts = Vec::with_capacity(users.len());
        for u in &users {
            let a = parse_user(u);
            self.remember_etag(&a.id, a.etag.clone());
            accounts.push(a);
        }
        let mut groups = Vec::new();
        if want_groups {
            for g in self.list("Groups", None).await? {
                let rg = parse_group(&g);
                self.remember_etag(&rg.id, rg.etag.clone());
                groups.push(rg);
            }
        }
        Ok(AppState {
            accounts,
            groups,
            patch,
        })
    }

    /// `check-config --online`: the service answers, takes the token, and says whether it has PATCH.
    pub async fn probe(&self) -> Result<String, AppError> {
        let spc = self
            .send(Method::GET, "/ServiceProviderConfig", None, None, true)
            .await?;
        let patch = spc
            .body
            .pointer("/patch/supported")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let users = self
            .send(Method::GET, "/Users?startIndex=1&count=1", None, None, true)
            .await?;
        let total = users
            .body
            .get("totalResults")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        Ok(format!(
            "{} answers and takes the token; {total} user(s); {}",
            self.base,
            if patch {
                "PATCH supported"
            } else {
                "no PATCH: updates use GET + PUT"
            }
        ))
    }

    async fn find(&self, attr: &str, value: &str) -> Result<Option<RemoteAccount>, AppError> {
        let filter = format!("{attr} eq {}", quote_filter(value));
        let mut u = reqwest::Url::parse(&format!("{}/Users", self.base))
            .map_err(|e| AppError::Other(e.to_string(), self.app.name.clone()))?;
        u.query_pairs_mut().append_pair("filter", &filter);
        let r = self.send(Method::GET, u.as_str(), None, None, true).await?;
        Ok(r.body
            .get("Resources")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .map(parse_user))
    }

    async fn get_user(&self, id: &str) -> Result<Option<RemoteAccount>, AppError> {
        match self
            .send(Method::GET, &format!("/Users/{id}"), None, None, true)
            .await
        {
            Ok(r) => {
                let mut a = parse_user(&r.body);
                if a.etag.is_none() {
                    a.etag = r.etag;
                }
                self.remember_etag(id, a.etag.clone());
                Ok(Some(a))
            }
            Err(AppError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Create a user, idempotently: the run's read of every account showed none with this
    /// externalId or userName; a POST that fails, times out or answers 409 is followed by a lookup
    /// (externalId, then userName) before anything is sent again, so an account created by a lost
    /// answer, or made meanwhile by hand, is linked instead of duplicated.
    async fn create(
        &self,
        key: &str,
        attrs: &BTreeMap<String, String>,
        ids: &BTreeMap<String, String>,
    ) -> Result<String, AppError> {
        let mut attempt = 0;
        loop {
            // The run read every account just before planning this create; after a failed or
            // unanswered POST (and after a 409), look again before sending another.
            if attempt > 0 {
                if let Some(found) = self.find("externalId", key).await? {
                    self.converge(&found, key, attrs, ids).await?;
                    return Ok(found.id);
                }
                let user_name = attrs.get("userName").cloned().unwrap_or_default();
                if let Some(found) = self.find("userName", &user_name).await? {
                    if found.external_id.as_deref().is_none_or(|e| e == key) {
                        self.converge(&found, key, attrs, ids).await?;
                        return Ok(found.id);
                    }
                }
            }
            let body = user_json(key, attrs, true, ids);
            match self
                .send(Method::POST, "/Users", Some(&body), None, false)
                .await
            {
                Ok(r) => {
                    let id = r
                        .body
                        .get("id")
                        .and_then(Value::as_str)
                        .map(String::from)
                        .ok_or_else(|| {
                            AppError::Other(
                                "POST /Users answered without an id".into(),
                                self.app.name.clone(),
                            )
                        })?;
                    self.remember_etag(&id, r.etag);
                    return Ok(id);
                }
                // Someone holds the userName: look again (it is linked if it is ours to link).
                Err(AppError::Refused { status: 409, .. }) if attempt == 0 => {}
                // No answer, or the server failed: the POST may or may not have been applied; the
                // next attempt looks the account up first.
                Err(AppError::Unreachable { .. })
                | Err(AppError::Refused { status: 500.., .. })
                    if attempt < self.app.retries =>
                {
                    tokio::time::sleep(jitter(Duration::from_millis(500) * 2u32.pow(attempt)))
                        .await;
                }
                Err(e) => return Err(e),
            }
            attempt += 1;
            if attempt > self.app.retries + 1 {
                return Err(AppError::Other(
                    format!("could not create the account of record {key}"),
                    self.app.name.clone(),
                ));
            }
        }
    }

    /// Bring an account found by lookup to the wanted attributes (only what differs).
    async fn converge(
        &self,
        found: &RemoteAccount,
        key: &str,
        attrs: &BTreeMap<String, String>,
        ids: &BTreeMap<String, String>,
    ) -> Result<(), AppError> {
        let mut ops = Vec::new();
        for (k, v) in attrs {
            let want = if k == "manager" {
                match ids.get(v) {
                    Some(id) => id.clone(),
                    None => continue,
                }
            } else {
                v.clone()
            };
            if found.attrs.get(k) != Some(&want) {
                ops.extend(patch_ops(
                    k,
                    DeltaKind::Replace,
                    Some(&want),
                    found.attrs.contains_key(k),
                ));
            }
        }
        if found.external_id.as_deref() != Some(key) {
            ops.push(json!({"op": "replace", "path": "externalId", "value": key}));
        }
        if !found.active {
            ops.push(json!({"op": "replace", "path": "active", "value": true}));
        }
        if ops.is_empty() {
            return Ok(());
        }
        self.patch_user(&found.id, ops, found).await
    }

    async fn patch_user(
        &self,
        id: &str,
        ops: Vec<Value>,
        known: &RemoteAccount,
    ) -> Result<(), AppError> {
        if !self.patch.load(Ordering::Relaxed) {
            return self.put_user(id, &ops).await;
        }
        let body = json!({"schemas": [PATCH_OP], "Operations": ops});
        let path = format!("/Users/{id}");
        let etag = self.etag_of(id).or_else(|| known.etag.clone());
        match self
            .send(Method::PATCH, &path, Some(&body), etag.as_deref(), true)
            .await
        {
            Ok(r) => {
                self.remember_etag(id, r.etag);
                Ok(())
            }
            // Changed since we read it: read it again and retry once.
            Err(AppError::Refused { status: 412, .. }) => {
                let fresh = self.get_user(id).await?;
                let etag = fresh.and_then(|f| f.etag);
                let r = self
                    .send(Method::PATCH, &path, Some(&body), etag.as_deref(), true)
                    .await?;
                self.remember_etag(id, r.etag);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// For services without PATCH: read the resource, apply the operations, PUT it back.
    async fn put_user(&self, id: &str, ops: &[Value]) -> Result<(), AppError> {
        let path = format!("/Users/{id}");
        let r = self.send(Method::GET, &path, None, None, true).await?;
        let mut res = r.body;
        for op in ops {
            apply_op_to_resource(&mut res, op);
        }
        if let Value::Object(m) = &mut res {
            m.remove("meta");
        }
        let r2 = self
            .send(Method::PUT, &path, Some(&res), r.etag.as_deref(), true)
            .await?;
        self.remember_etag(id, r2.etag);
        Ok(())
    }

    /// Apply one change. `ids`: HR key → remote id of every account known so far (creates add
    /// theirs). Returns the account's id for creates and links.
    pub async fn apply(
        &self,
        c: &AppChange,
        ids: &BTreeMap<String, String>,
        state: &AppState,
    ) -> Result<Option<String>, AppError> {
        let known = c
            .remote_id
            .as_deref()
            .and_then(|id| state.accounts.iter().find(|a| a.id == id))
            .cloned()
            .unwrap_or_default();
        match (c.subject, c.op) {
            (Subject::Person, AppOp::AppCreate) => {
                let attrs: BTreeMap<String, String> = c
                    .attributes
                    .iter()
                    .filter(|d| d.attr != "externalId")
                    .filter_map(|d| d.new.first().map(|v| (d.attr.to_string(), v.clone())))
                    .collect();
                self.create(&c.key, &attrs, ids).await.map(Some)
            }
            (Subject::Person, AppOp::AppLink) => Ok(c.remote_id.clone()),
            (Subject::Person, AppOp::AppUpdate | AppOp::AppDeactivate) => {
                let id = match c.remote_id.clone().or_else(|| ids.get(&c.key).cloned()) {
                    Some(id) => id,
                    None => {
                        return Err(AppError::Other(
                            format!("record {} has no account yet", c.key),
                            self.app.name.clone(),
                        ))
                    }
                };
                let mut ops = Vec::new();
                for d in &c.attributes {
                    let new = d.new.first();
                    if d.attr == "active" {
                        ops.push(json!({"op": "replace", "path": "active", "value": new.map(|v| v == "true").unwrap_or(false)}));
                        continue;
                    }
                    let value = if d.attr == "manager" {
                        match new.and_then(|k| ids.get(k)) {
                            Some(id) => Some(id.clone()),
                            None if new.is_some() => continue,
                            None => None,
                        }
                    } else {
                        new.cloned()
                    };
                    let kind = if value.is_none() {
                        DeltaKind::Delete
                    } else {
                        d.kind
                    };
                    ops.extend(patch_ops(&d.attr, kind, value.as_ref(), !d.old.is_empty()));
                }
                if ops.is_empty() {
                    return Ok(None);
                }
                match self.patch_user(&id, ops, &known).await {
                    Err(AppError::Refused { status: 404, .. }) => Err(AppError::Other(
                        format!("account {id} of record {} no longer exists; the next run looks it up again", c.key),
                        self.app.name.clone(),
                    )),
                    other => other.map(|_| None),
                }
            }
            (Subject::Person, AppOp::AppDelete) => {
                let Some(id) = c.remote_id.as_deref() else {
                    return Ok(None);
                };
                match self
                    .send(Method::DELETE, &format!("/Users/{id}"), None, None, true)
                    .await
                {
                    Ok(_) | Err(AppError::Refused { status: 404, .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            }
            (Subject::Group, AppOp::AppCreate) => {
                let members: Vec<Value> = c
                    .attributes
                    .iter()
                    .flat_map(|d| d.new.iter())
                    .filter_map(|k| ids.get(k))
                    .map(|id| json!({"value": id}))
                    .collect();
                let body =
                    json!({"schemas": [GROUP], "displayName": c.account, "members": members});
                let r = self
                    .send(Method::POST, "/Groups", Some(&body), None, false)
                    .await?;
                Ok(r.body.get("id").and_then(Value::as_str).map(String::from))
            }
            (Subject::Group, AppOp::AddMember | AppOp::RemoveMember) => {
                let Some(gid) = c.remote_id.as_deref() else {
                    return Ok(None);
                };
                let ops: Vec<Value> = if c.op == AppOp::AddMember {
                    let vals: Vec<Value> = c
                        .attributes
                        .iter()
                        .flat_map(|d| d.new.iter())
                        .filter_map(|k| ids.get(k))
                        .map(|id| json!({"value": id}))
                        .collect();
                    if vals.is_empty() {
                        return Ok(None);
                    }
                    vec![json!({"op": "add", "path": "members", "value": vals})]
                } else {
                    c.attributes
                        .iter()
                        .flat_map(|d| d.old.iter())
                        .filter_map(|k| ids.get(k))
                        .map(|id| json!({"op": "remove", "path": format!("members[value eq {}]", quote_filter(id))}))
                        .collect()
                };
                if ops.is_empty() {
                    return Ok(None);
                }
                let body = json!({"schemas": [PATCH_OP], "Operations": ops});
                let path = format!("/Groups/{gid}");
                let etag = self.etag_of(gid);
                match self
                    .send(Method::PATCH, &path, Some(&body), etag.as_deref(), true)
                    .await
                {
                    Ok(r) => {
                        self.remember_etag(gid, r.etag);
                        Ok(None)
                    }
                    Err(AppError::Refused { status: 412, .. }) => {
                        let fresh = self.send(Method::GET, &path, None, None, true).await?;
                        let r = self
                            .send(
                                Method::PATCH,
                                &path,
                                Some(&body),
                                fresh.etag.as_deref(),
                                true,
                            )
                            .await?;
                        self.remember_etag(gid, r.etag);
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
            (s, op) => Err(AppError::Other(
                format!("internal: {op:?} of a {s:?} is not a SCIM change"),
                self.app.name.clone(),
            )),
        }
    }
}

/// The PATCH operations for one mapped attribute.
fn patch_ops(attr: &str, kind: DeltaKind, value: Option<&String>, had: bool) -> Vec<Value> {
    let path = match attr {
        "emails" if had => "emails[type eq \"work\"].value".to_string(),
        "phoneNumbers" if had => "phoneNumbers[type eq \"work\"].value".to_string(),
        a if EXT.contains(&a) => format!("{ENTERPRISE}:{a}"),
        "manager" => format!("{ENTERPRISE}:manager"),
        a => a.to_string(),
    };
    match (kind, value) {
        (DeltaKind::Delete, _) | (_, None) => {
            let p = match attr {
                "emails" | "phoneNumbers" => format!("{attr}[type eq \"work\"]"),
                _ => path,
            };
            vec![json!({"op": "remove", "path": p})]
        }
        (_, Some(v)) => {
            let value = match attr {
                "emails" if !had => json!([{"value": v, "type": "work", "primary": true}]),
                "phoneNumbers" if !had => json!([{"value": v, "type": "work"}]),
                "manager" => json!({"value": v}),
                _ => json!(v),
            };
            let op = if matches!(attr, "emails" | "phoneNumbers") && !had {
                "add"
            } else {
                "replace"
            };
            vec![json!({"op": op, "path": path, "value": value})]
        }
    }
}

/// Apply a PATCH operation to a resource locally (the PUT fallback).
fn apply_op_to_resource(res: &mut Value, op: &Value) {
    let Some(path) = op.get("path").and_then(Value::as_str) else {
        return;
    };
    let remove = op.get("op").and_then(Value::as_str) == Some("remove");
    let value = op.get("value").cloned().unwrap_or(Value::Null);
    let Value::Object(m) = res else { return };
    if let Some(attr) = path.strip_prefix(&format!("{ENTERPRISE}:")) {
        let ext = m
            .entry(ENTERPRISE.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(e) = ext {
            if remove {
                e.remove(attr);
            } else {
                e.insert(attr.to_string(), value);
            }
        }
        if let Some(Value::Array(s)) = m.get_mut("schemas") {
            if !s.iter().any(|x| x == ENTERPRISE) {
                s.push(json!(ENTERPRISE));
            }
        }
        return;
    }
    if let Some(rest) = path.strip_prefix("name.") {
        let n = m.entry("name").or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(n) = n {
            if remove {
                n.remove(rest);
            } else {
                n.insert(rest.to_string(), value);
            }
        }
        return;
    }
    for multi in ["emails", "phoneNumbers"] {
        if path.starts_with(multi) {
            let list = m.entry(multi).or_insert_with(|| json!([]));
            if let Value::Array(l) = list {
                l.retain(|x| x.get("type").and_then(Value::as_str) != Some("work"));
                if !remove {
                    let v = match &value {
                        Value::Array(a) => a.first().cloned().unwrap_or(Value::Null),
                        Value::String(s) => {
                            json!({"value": s, "type": "work", "primary": multi == "emails"})
                        }
                        other => other.clone(),
                    };
                    l.push(v);
                }
            }
            return;
        }
    }
    if remove {
        m.remove(path);
    } else {
        m.insert(path.to_string(), value);
    }
}

/// The SCIM User resource for a create.
pub fn user_json(
    key: &str,
    attrs: &BTreeMap<String, String>,
    active: bool,
    ids: &BTreeMap<String, String>,
) -> Value {
    let mut u = Map::new();
    let mut schemas = vec![json!(USER)];
    let mut name = Map::new();
    let mut ext = Map::new();
    for (k, v) in attrs {
        if TOP.contains(&k.as_str()) {
            u.insert(k.clone(), json!(v));
        } else if let Some((_, sub)) = NAME.iter().find(|(n, _)| n == k) {
            name.insert(sub.to_string(), json!(v));
        } else if EXT.contains(&k.as_str()) {
            ext.insert(k.clone(), json!(v));
        } else if k == "manager" {
            if let Some(id) = ids.get(v) {
                ext.insert("manager".into(), json!({"value": id}));
            }
        } else if k == "emails" {
            u.insert(
                "emails".into(),
                json!([{"value": v, "type": "work", "primary": true}]),
            );
        } else if k == "phoneNumbers" {
            u.insert("phoneNumbers".into(), json!([{"value": v, "type": "work"}]));
        }
    }
    if !name.is_empty() {
        u.insert("name".into(), Value::Object(name));
    }
    if !ext.is_empty() {
        schemas.push(json!(ENTERPRISE));
        u.insert(ENTERPRISE.into(), Value::Object(ext));
    }
    u.insert("externalId".into(), json!(key));
    u.insert("active".into(), json!(active));
    u.insert("schemas".into(), Value::Array(schemas));
    Value::Object(u)
}

fn work_value(v: Option<&Value>) -> Option<String> {
    let list = v?.as_array()?;
    let pick = list
        .iter()
        .find(|x| x.get("type").and_then(Value::as_str) == Some("work"))
        .or_else(|| {
            list.iter()
                .find(|x| x.get("primary").and_then(Value::as_bool) == Some(true))
        })
        .or_else(|| list.first())?;
    pick.get("value").and_then(Value::as_str).map(String::from)
}

/// A SCIM User resource, as the mapped attributes dirbridge compares.
pub fn parse_user(u: &Value) -> RemoteAccount {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(String::from);
    let mut attrs = BTreeMap::new();
    for k in TOP {
        if let Some(v) = s(u.get(*k)) {
            attrs.insert(k.to_string(), v);
        }
    }
    for (k, sub) in NAME {
        if let Some(v) = s(u.get("name").and_then(|n| n.get(*sub))) {
            attrs.insert(k.to_string(), v);
        }
    }
    let ext = u.get(ENTERPRISE);
    for k in EXT {
        if let Some(v) = s(ext.and_then(|e| e.get(*k))) {
            attrs.insert(k.to_string(), v);
        }
    }
    if let Some(v) = s(ext
        .and_then(|e| e.get("manager"))
        .and_then(|m| m.get("value")))
    {
        attrs.insert("manager".into(), v);
    }
    if let Some(v) = work_value(u.get("emails")) {
        attrs.insert("emails".into(), v);
    }
    if let Some(v) = work_value(u.get("phoneNumbers")) {
        attrs.insert("phoneNumbers".into(), v);
    }
    RemoteAccount {
        id: s(u.get("id")).unwrap_or_default(),
        user_name: s(u.get("userName")).unwrap_or_default(),
        external_id: s(u.get("externalId")),
        active: u.get("active").and_then(Value::as_bool).unwrap_or(true),
        attrs,
        etag: s(u.pointer("/meta/version")),
    }
}

pub fn parse_group(g: &Value) -> RemoteGroup {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(String::from);
    RemoteGroup {
        id: s(g.get("id")).unwrap_or_default(),
        display_name: s(g.get("displayName")).unwrap_or_default(),
        members: g
            .get("members")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|m| s(m.get("value")))
                    .collect::<BTreeSet<_>>()
            })
            .unwrap_or_default(),
        etag: s(g.pointer("/meta/version")),
    }
}

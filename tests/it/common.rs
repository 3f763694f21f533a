//! The integration test harness: one real slapd per test binary (started on first use, stopped
//! when the binary exits), one subtree per test, the dirbridge binary run as a user would.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=com";
pub const ADMIN_PW: &str = "Pw-for-tests-7f3a9c";
/// The bind password the tests give dirbridge (the server's rootpw); it must never be printed.
pub const BIND_PW: &str = ADMIN_PW;

pub struct Slapd {
    /// slapd's process (it detaches from the script that starts it).
    pub pid: u32,
    pub ldap_uri: String,
    pub ldaps_uri: String,
    pub ldapi_uri: String,
    pub ca: PathBuf,
}

pub fn free_pair() -> u16 {
    // Ports below 32768 (Linux's ephemeral range starts there). Spread by pid, then probe.
    let start = 20000 + (std::process::id() % 500) as u16 * 20;
    for p in (start..32000).step_by(2).chain((20000..start).step_by(2)) {
        let a = std::net::TcpListener::bind(("127.0.0.1", p));
        let b = std::net::TcpListener::bind(("127.0.0.1", p + 1));
        if a.is_ok() && b.is_ok() {
            return p;
        }
    }
    panic!("no free port pair below 32000 on 127.0.0.1");
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

thread_local! {
    /// The server of the test running on this thread, when it is not the shared one.
    static OWN: std::cell::Cell<Option<&'static Slapd>> = const { std::cell::Cell::new(None) };
}

/// The server of the running test: the shared one, unless the test chose another with
/// [`use_slapd`]. A server that fails to start fails the test, with the script's output.
pub fn slapd() -> &'static Slapd {
    if let Some(s) = OWN.with(|c| c.get()) {
        return s;
    }
    static S: OnceLock<Slapd> = OnceLock::new();
    S.get_or_init(|| start_slapd("slapd"))
}

/// A second server, for the tests of LDAP transactions: slapd 2.5.13 has crashed when a
/// transaction met other clients' writes (docs/performance.md), so they do not share the server
/// the other tests write to (and take turns on this one). Started on first use; a server that
/// died is replaced by [`restart_transactions_slapd`].
pub fn transactions_slapd() -> &'static Slapd {
    let mut current = TXN_SLAPD.lock().unwrap_or_else(|e| e.into_inner());
    let s: &'static Slapd =
        current.get_or_insert_with(|| Box::leak(Box::new(start_slapd("txn-slapd"))));
    s
}

/// A fresh server for the tests of LDAP transactions, in place of one that died.
pub fn restart_transactions_slapd() -> &'static Slapd {
    static RESTARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RESTARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let s: &'static Slapd = Box::leak(Box::new(start_slapd(&format!("txn-slapd-{n}"))));
    *TXN_SLAPD.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
    s
}

static TXN_SLAPD: std::sync::Mutex<Option<&'static Slapd>> = std::sync::Mutex::new(None);

impl Slapd {
    /// Whether the server's process still runs (a crashed slapd is gone: nothing waits for it).
    pub fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).is_ok_and(|st| {
            st.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
    }
}

/// Make the helpers of this thread (this test) use `s`.
pub fn use_slapd(s: &'static Slapd) {
    OWN.with(|c| c.set(Some(s)));
}

fn start_slapd(tag: &str) -> Slapd {
    {
        let dir = std::env::temp_dir().join(format!("dirbridge-it-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let port = free_pair();
        let out = Command::new("bash")
            .arg(repo().join("tests/support/slapd-up.sh"))
            .arg(&dir)
            .arg(port.to_string())
            .env("SLAPD_DBNOSYNC", "1")
            .env("SLAPD_PPOLICY", "1")
            .env("SLAPD_ROOTPW", ADMIN_PW)
            .env("SLAPD_WATCH_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .output()
            .expect("run tests/support/slapd-up.sh");
        assert!(
            out.status.success(),
            "slapd did not start (install slapd and ldap-utils: .ci/run does):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        Slapd {
            pid: env["SLAPD_PID"]
                .parse()
                .expect("slapd-up.sh prints SLAPD_PID"),
            ldap_uri: env["LDAP_URI"].clone(),
            ldaps_uri: env["LDAPS_URI"].clone(),
            ldapi_uri: env["LDAPI_URI"].clone(),
            ca: PathBuf::from(&env["LDAP_CA"]),
        }
    }
}

/// Count a test that ran against a server (`.ci/run` reports and checks the counts).
fn count(server: &str, test: &str) {
    if let Some(dir) = std::env::var_os("DIRBRIDGE_IT_COUNT_DIR") {
        let _ = std::fs::create_dir_all(&dir);
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Path::new(&dir).join(server))
        {
            let _ = writeln!(f, "{test}");
        }
    }
}

pub fn ldap(args: &[&str], input: Option<&str>) -> Output {
    let s = slapd();
    let mut cmd = Command::new(args[0]);
    cmd.args(["-x", "-H", &s.ldap_uri, "-D", ADMIN_DN, "-w", ADMIN_PW])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ldap tool");
    if let Some(i) = input {
        child.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().unwrap()
}

pub fn ldapmodify(ldif: &str) {
    let out = ldap(&["ldapmodify", "-c"], Some(ldif));
    assert!(
        out.status.success(),
        "ldapmodify failed: {}\n{ldif}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An entry as ldapsearch shows it: attribute names lower-cased, values decoded.
#[derive(Debug, Clone)]
pub struct LdapEntry {
    pub dn: String,
    pub attrs: BTreeMap<String, Vec<String>>,
}

impl LdapEntry {
    pub fn one(&self, a: &str) -> Option<&str> {
        self.attrs
            .get(&a.to_ascii_lowercase())
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

fn b64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .expect("base64 from ldapsearch")
}

pub fn search(base: &str, filter: &str) -> Vec<LdapEntry> {
    search_with(base, filter, &["*", "entryUUID"])
}

/// [`search`] asking for `attrs` (operational ones by name).
pub fn search_with(base: &str, filter: &str, attrs: &[&str]) -> Vec<LdapEntry> {
    let mut args = vec![
        "ldapsearch",
        "-LLL",
        "-o",
        "ldif-wrap=no",
        "-b",
        base,
        filter,
    ];
    args.extend_from_slice(attrs);
    let out = ldap(&args, None);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() && out.status.code() != Some(32) {
        panic!(
            "ldapsearch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_ldif(&text)
}

/// `ldapsearch -LLL -o ldif-wrap=no` output as entries (base64 values decoded; binary ones kept
/// as `base64:…`).
pub fn parse_ldif(text: &str) -> Vec<LdapEntry> {
    let mut entries = Vec::new();
    for block in text.split("\n\n") {
        let mut dn = String::new();
        let mut attrs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in block.lines() {
            if line.starts_with('#') {
                continue;
            }
            let (k, v) = if let Some((k, v)) = line.split_once(":: ") {
                (
                    k,
                    String::from_utf8(b64(v)).unwrap_or_else(|_| format!("base64:{v}")),
                )
            } else if let Some((k, v)) = line.split_once(": ") {
                (k, v.to_string())
            } else {
                continue;
            };
            if k == "dn" {
                dn = v;
            } else {
                attrs.entry(k.to_ascii_lowercase()).or_default().push(v);
            }
        }
        if !dn.is_empty() {
            entries.push(LdapEntry { dn, attrs });
        }
    }
    entries
}

/// One test's world: its own subtree `ou=<name>,dc=example,dc=com` with `ou=people` under it, a
/// working directory with the export, the configuration, the password file and the mirror.
pub struct TestEnv {
    pub dir: PathBuf,
    pub base_dn: String,
    pub people: String,
    pub config: PathBuf,
}

pub const HEADER: &str = "employee_id,given_name,preferred_name,surname,title,email,manager_id";

impl TestEnv {
    pub fn new(name: &str) -> TestEnv {
        let s = slapd();
        count("slapd", name);
        let dir = std::env::temp_dir().join(format!("dirbridge-it-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let base_dn = format!("ou={name},dc=example,dc=com");
        let people = format!("ou=people,{base_dn}");
        ldapmodify(&format!(
            "dn: {base_dn}\nchangetype: add\nobjectClass: organizationalUnit\nou: {name}\n\n\
             dn: {people}\nchangetype: add\nobjectClass: organizationalUnit\nou: people\n\n"
        ));
        std::fs::write(dir.join("bind.password"), format!("{BIND_PW}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.join("bind.password"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let env = TestEnv {
            config: dir.join("dirbridge.toml"),
            dir,
            base_dn,
            people,
        };
        env.write_config(&env.default_config(&s.ldaps_uri));
        env
    }

    pub fn default_config(&self, url: &str) -> String {
        let s = slapd();
        format!(
            r#"# test configuration
[source]
kind = "csv"
path = "export.csv"
key = "employee_id"

[directory]
url = "{url}"
bind-dn = "{ADMIN_DN}"
password-file = "bind.password"
ca-file = "{ca}"
base-dn = "{base}"

[state]
path = "state/mirror.db"

[users]
base = "{people}"
rdn = "uid"
object-classes = ["inetOrgPerson"]
anchor = "employeeNumber"

[users.attributes]
uid = "{{{{ (given_name[:1] ~ surname) | ascii | lower }}}}{{{{ n }}}}"
cn = "{{{{ preferred_name or given_name }}}} {{{{ surname }}}}"
givenName = "{{{{ given_name }}}}"
sn = "{{{{ surname }}}}"
title = "{{{{ title }}}}"
mail = "{{{{ email }}}}"
manager = "{{{{ manager_id | person_dn }}}}"

[users.unique]
uid = true
"#,
            ca = s.ca.display(),
            base = self.base_dn,
            people = self.people,
        )
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn write_export<R: AsRef<str>>(&self, rows: &[R]) {
        let mut s = String::from(HEADER);
        s.push('\n');
        for r in rows {
            s.push_str(r.as_ref());
            s.push('\n');
        }
        std::fs::write(self.dir.join("export.csv"), s).unwrap();
    }

    /// Write an export with its own header.
    pub fn write_csv(&self, header: &str, rows: &[&str]) {
        let mut s = String::from(header);
        s.push('\n');
        for r in rows {
            s.push_str(r);
            s.push('\n');
        }
        self.write_export_raw(s.as_bytes());
    }

    pub fn write_export_raw(&self, bytes: &[u8]) {
        std::fs::write(self.dir.join("export.csv"), bytes).unwrap();
    }

    /// Run the dirbridge binary with `-c <config>` and the given arguments.
    pub fn run(&self, args: &[&str]) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_dirbridge"))
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .current_dir(&self.dir)
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let r = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        };
        assert!(
            !r.stdout.contains(BIND_PW) && !r.stderr.contains(BIND_PW),
            "the bind password appeared in the output of {args:?}:\n{}\n{}",
            r.stdout,
            r.stderr
        );
        r
    }

    /// `sync` that must succeed with exit 0.
    pub fn sync_ok(&self) -> Run {
        let r = self.run(&["sync"]);
        assert_eq!(r.code, 0, "sync failed:\n{}\n{}", r.stdout, r.stderr);
        r
    }

    /// `plan --format json`, parsed.
    pub fn plan_json(&self) -> (i32, serde_json::Value) {
        let r = self.run(&["plan", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| {
            panic!("plan JSON did not parse ({e}):\n{}\n{}", r.stdout, r.stderr)
        });
        (r.code, v)
    }

    pub fn people(&self) -> BTreeMap<String, LdapEntry> {
        search(&self.people, "(employeeNumber=*)")
            .into_iter()
            .map(|e| (e.one("employeeNumber").unwrap_or_default().to_string(), e))
            .collect()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub fn changes(plan: &serde_json::Value) -> Vec<serde_json::Value> {
    plan["changes"].as_array().cloned().unwrap_or_default()
}

/// The shared SCIM 2.0 server (PyPI scim2-server, one in-memory store per URL prefix, so each
/// test uses a tenant of its own).
pub struct Scim {
    pub root: String,
    pub token: String,
}

pub fn scim() -> &'static Scim {
    static S: OnceLock<Scim> = OnceLock::new();
    S.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dirbridge-it-scim-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Ports below 32768; the pair search leaves even ports to slapd.
        let start = 21001 + (std::process::id() % 400) as u16 * 20;
        let port = (start..32000)
            .step_by(2)
            .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            .expect("a free port for the SCIM server");
        let out = Command::new("bash")
            .arg(repo().join("tests/support/scim-up.sh"))
            .arg(&dir)
            .arg(port.to_string())
            .env("SCIM_DYNAMIC_TENANTS", "1")
            .env("SCIM_WATCH_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .output()
            .expect("run tests/support/scim-up.sh");
        assert!(
            out.status.success(),
            "the SCIM server did not start (.ci/run installs it: tests/support/scim-up.sh --install):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        Scim {
            root: env["SCIM_ROOT"].clone(),
            token: env["SCIM_TOKEN"].clone(),
        }
    })
}

/// Count a test that ran against the SCIM server.
pub fn count_scim(test: &str) {
    count("scim", test);
}

/// A recording, fault-injecting proxy in front of the SCIM server (tests/support/scim-proxy.py).
pub struct ScimProxy {
    pub port: u16,
    child: Option<std::process::Child>,
    pub log: PathBuf,
    pub faults: PathBuf,
}

impl ScimProxy {
    pub fn start(dir: &Path, port: Option<u16>) -> ScimProxy {
        Self::start_with(dir, port, false)
    }

    /// With `tls`, the proxy serves HTTPS with the test slapd's certificate (CA: `slapd().ca`).
    pub fn start_with(dir: &Path, port: Option<u16>, tls: bool) -> ScimProxy {
        let s = scim();
        let log = dir.join("scim-requests.jsonl");
        let faults = dir.join("scim-faults.json");
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("tests/support/scim-proxy.py"))
            .arg("--upstream")
            .arg(&s.root)
            .arg("--log")
            .arg(&log)
            .arg("--faults")
            .arg(&faults)
            .arg("--watch-pid")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(p) = port {
            cmd.arg("--port").arg(p.to_string());
        }
        if tls {
            let tls_dir = slapd().ca.parent().unwrap().to_path_buf();
            cmd.arg("--tls-cert")
                .arg(tls_dir.join("server.crt"))
                .arg("--tls-key")
                .arg(tls_dir.join("server.key"));
        }
        let mut child = cmd.spawn().expect("start scim-proxy.py");
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .strip_prefix("PORT=")
            .unwrap_or_else(|| panic!("scim-proxy said {line:?}"))
            .parse()
            .unwrap();
        ScimProxy {
            port,
            child: Some(child),
            log,
            faults,
        }
    }

    /// The tenant's base URL through the proxy.
    pub fn url(&self, tenant: &str) -> String {
        format!("http://127.0.0.1:{}/{tenant}/v2", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Requests recorded so far: (method, path, body, status, monotonic time, injected).
    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn clear(&self) {
        let _ = std::fs::remove_file(&self.log);
    }

    pub fn inject(&self, spec: serde_json::Value) {
        std::fs::write(&self.faults, spec.to_string()).unwrap();
    }
}

impl Drop for ScimProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A request straight to the SCIM server (not through a proxy): (status, body).
pub fn scim_get(tenant: &str, path: &str) -> (u16, serde_json::Value) {
    let s = scim();
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {}", s.token))
        .arg(format!("{}/{tenant}/v2{path}", s.root))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// POST a resource straight to the SCIM server.
pub fn scim_post(tenant: &str, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let s = scim();
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-X", "POST", "-H"])
        .arg(format!("Authorization: Bearer {}", s.token))
        .args(["-H", "Content-Type: application/scim+json", "-d"])
        .arg(body.to_string())
        .arg(format!("{}/{tenant}/v2{path}", s.root))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// Every user of a tenant, by externalId (or userName when it has none).
pub fn scim_users(tenant: &str) -> BTreeMap<String, serde_json::Value> {
    let (code, v) = scim_get(tenant, "/Users?count=1000");
    assert_eq!(code, 200, "{v}");
    v["Resources"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|u| {
            let k = u["externalId"]
                .as_str()
                .or(u["userName"].as_str())
                .unwrap_or_default()
                .to_string();
            (k, u)
        })
        .collect()
}

/// The shared Samba AD DC (tests/support/samba-ad-up.sh): its own network namespace with only
/// loopback; dirbridge and the LDAP tools run inside it (`ip netns exec`). Needs root, as CI has.
pub struct Ad {
    pub netns: String,
    pub uri: String,
    pub uri_ldap: String,
    pub base: String,
    pub bind_dn: String,
    pub password: String,
    pub ca: PathBuf,
}

pub fn ad() -> &'static Ad {
    static S: OnceLock<Ad> = OnceLock::new();
    S.get_or_init(|| {
        assert!(
            control_uid() == 0,
            "the Active Directory tests start a Samba DC in a network namespace and need root (CI runs as root)"
        );
        let dir = std::env::temp_dir().join(format!("dirbridge-it-ad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new("bash")
            .arg(repo().join("tests/support/samba-ad-up.sh"))
            .arg(&dir)
            .env("AD_WATCH_PID", std::process::id().to_string())
            .env(
                "AD_NETNS",
                format!("dbit-{}", std::process::id()),
            )
            .stdin(Stdio::null())
            .output()
            .expect("run tests/support/samba-ad-up.sh");
        assert!(
            out.status.success(),
            "the Samba AD DC did not start:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        Ad {
            netns: env["AD_NETNS"].clone(),
            uri: env["AD_URI"].clone(),
            uri_ldap: env["AD_URI_LDAP"].clone(),
            base: env["AD_BASE_DN"].clone(),
            bind_dn: env["AD_BIND_DN"].clone(),
            password: env["AD_PASSWORD"].clone(),
            ca: PathBuf::from(&env["AD_CA"]),
        }
    })
}

fn control_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
}

/// An LDAP tool inside the DC's namespace, bound as `who` (DN or UPN) with `pw`.
pub fn ad_tool(tool: &str, who: &str, pw: &str, args: &[&str], input: Option<&str>) -> Output {
    let a = ad();
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns", "exec", &a.netns, tool, "-x", "-H", &a.uri, "-D", who, "-w", pw,
    ])
    .args(args)
    .env("LDAPTLS_CACERT", &a.ca)
    .env("LDAPTLS_REQCERT", "demand")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("ip netns exec");
    if let Some(i) = input {
        child.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().unwrap()
}

pub fn ad_modify(ldif: &str) {
    let a = ad();
    let out = ad_tool("ldapmodify", &a.bind_dn, &a.password, &[], Some(ldif));
    assert!(
        out.status.success(),
        "ldapmodify on AD failed: {}\n{ldif}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Entries under `base` matching `filter`, with the attributes asked for.
pub fn ad_search(base: &str, filter: &str, attrs: &[&str]) -> Vec<LdapEntry> {
    let a = ad();
    let mut args = vec!["-LLL", "-o", "ldif-wrap=no", "-b", base, filter];
    args.extend_from_slice(attrs);
    let out = ad_tool("ldapsearch", &a.bind_dn, &a.password, &args, None);
    parse_ldif(&String::from_utf8_lossy(&out.stdout))
}

/// One AD test's world: `OU=<name>` under the domain with `OU=People` in it, the export, the
/// configuration and the mirror; dirbridge runs inside the DC's namespace.
pub struct AdEnv {
    pub dir: PathBuf,
    pub ou: String,
    pub people: String,
    pub config: PathBuf,
}

pub const AD_HEADER: &str = "employee_id,given_name,surname,title,department,manager_id,end_date";

impl AdEnv {
    pub fn new(name: &str) -> AdEnv {
        let a = ad();
        count("samba-ad", name);
        let dir = std::env::temp_dir().join(format!("dirbridge-it-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ou = format!("OU={name},{}", a.base);
        let people = format!("OU=People,{ou}");
        ad_modify(&format!(
            "dn: {ou}\nchangetype: add\nobjectClass: organizationalUnit\n\n\
             dn: {people}\nchangetype: add\nobjectClass: organizationalUnit\n\n"
        ));
        std::fs::write(dir.join("bind.password"), format!("{}\n", a.password)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.join("bind.password"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let env = AdEnv {
            config: dir.join("dirbridge.toml"),
            dir,
            ou,
            people,
        };
        env.write_config(&env.default_config(""));
        env
    }

    /// The documented AD configuration (docs/dirbridge.toml.5.md), plus `extra`.
    pub fn default_config(&self, extra: &str) -> String {
        let a = ad();
        format!(
            r#"[source]
kind = "csv"
path = "export.csv"
key = "employee_id"

[directory]
url = "{uri}"
flavor = "active-directory"
bind-dn = "{bind}"
password-file = "bind.password"
ca-file = "{ca}"
base-dn = "{base}"

[state]
path = "state/mirror.db"

[users]
base = "{people}"

[users.attributes]
cn = "{{{{ given_name }}}} {{{{ surname }}}}{{{{ n }}}}"
sAMAccountName = "{{{{ (given_name[:1] ~ surname) | ascii | lower }}}}{{{{ n }}}}"
userPrincipalName = "{{{{ (given_name[:1] ~ surname) | ascii | lower }}}}{{{{ n }}}}@ad.example.test"
givenName = "{{{{ given_name }}}}"
sn = "{{{{ surname }}}}"
displayName = "{{{{ given_name }}}} {{{{ surname }}}}"
title = "{{{{ title }}}}"
department = "{{{{ department }}}}"
manager = "{{{{ manager_id | person_dn }}}}"
{extra}"#,
            uri = a.uri,
            bind = a.bind_dn,
            ca = a.ca.display(),
            base = a.base,
            people = self.people,
        )
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn write_export(&self, rows: &[&str]) {
        let mut s = String::from(AD_HEADER);
        s.push('\n');
        for r in rows {
            s.push_str(r);
            s.push('\n');
        }
        std::fs::write(self.dir.join("export.csv"), s).unwrap();
    }

    /// Run dirbridge inside the DC's network namespace.
    pub fn run(&self, args: &[&str]) -> Run {
        let a = ad();
        let out = Command::new("ip")
            .args(["netns", "exec", &a.netns])
            .arg(env!("CARGO_BIN_EXE_dirbridge"))
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .current_dir(&self.dir)
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let r = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        };
        assert!(
            !r.stdout.contains(&a.password) && !r.stderr.contains(&a.password),
            "the bind password appeared in the output of {args:?}"
        );
        r
    }

    pub fn sync_ok(&self) -> Run {
        let r = self.run(&["sync"]);
        assert_eq!(r.code, 0, "sync failed:\n{r:?}");
        r
    }

    /// The people dirbridge manages here, by employeeID.
    pub fn people(&self) -> BTreeMap<String, LdapEntry> {
        ad_search(
            &self.ou,
            "(employeeID=*)",
            &[
                "*",
                "objectGUID",
                "userAccountControl",
                "pwdLastSet",
                "accountExpires",
            ],
        )
        .into_iter()
        .map(|e| (e.one("employeeID").unwrap_or_default().to_string(), e))
        .collect()
    }
}

impl Drop for AdEnv {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Tests that create accounts with passwords, or change the domain's password policy, hold this
/// (the policy is domain-wide).
pub static AD_PASSWORD_POLICY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A simple bind as `who`: Ok, or the server's message (`… data 773 …`).
pub fn ad_bind(who: &str, pw: &str) -> Result<(), String> {
    let out = ad_tool(
        "ldapsearch",
        who,
        pw,
        &["-s", "base", "-b", "", "(objectClass=*)", "1.1"],
        None,
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

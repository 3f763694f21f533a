//! The control socket: length-prefixed JSON requests and responses over a Unix stream socket.
//! Anyone may connect (mode 0666); the daemon answers `unauthorized` by the peer's credentials:
//! read-only requests for root, the service user and `read-group` (and `admin-group`), mutating
//! ones for root, the service user and `admin-group`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 1024 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Trigger { wait: bool },
    Reload,
    Pause,
    Resume,
}

impl Request {
    pub fn mutating(&self) -> bool {
        !matches!(self, Request::Status)
    }
    /// A form safe to log.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Trigger { .. } => "trigger",
            Request::Reload => "reload",
            Request::Pause => "pause",
            Request::Resume => "resume",
        }
    }
}

/// What one run did, as `status` and `trigger --wait` report it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "kebab-case")]
pub struct RunSummary {
    pub id: u64,
    pub trigger: String,
    pub started_at: String,
    pub duration_seconds: f64,
    pub exit_code: i32,
    pub counts: BTreeMap<String, usize>,
    pub quarantined: usize,
    pub refusals: Vec<String>,
    pub errors: Vec<String>,
    pub summary: String,
    /// Each application's health in that run.
    #[serde(default)]
    pub apps: BTreeMap<String, crate::run::AppHealth>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "kebab-case")]
pub struct StatusReport {
    pub pid: u32,
    pub started_at: String,
    pub uptime_seconds: u64,
    pub config_file: String,
    pub config_loaded_at: String,
    /// The last reload failed: the old configuration keeps running.
    pub config_error: Option<String>,
    pub paused: bool,
    /// The run in progress: its trigger and start.
    pub running: Option<(String, String)>,
    pub last_run: Option<RunSummary>,
    pub last_success_at: Option<String>,
    pub next_run: Option<String>,
    pub runs: u64,
    pub alarms: Vec<String>,
    /// Counters since the daemon started: `runs|TRIGGER|RESULT`, `changes|OP`, `quarantined`,
    /// `refusals`.
    pub totals: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "response", rename_all = "kebab-case")]
pub enum Response {
    Status(Box<StatusReport>),
    /// The trigger was queued; with `wait`, the run it caused.
    Triggered {
        run: Option<RunSummary>,
    },
    Done {
        message: String,
    },
    Error {
        message: String,
    },
    Unauthorized {
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the frame is larger than {MAX_FRAME} bytes")]
    TooLarge,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a valid message: {0}")]
    Json(#[from] serde_json::Error),
}

pub async fn write_frame<T: Serialize>(s: &mut UnixStream, v: &T) -> Result<(), FrameError> {
    let body = serde_json::to_vec(v)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge);
    }
    s.write_all(&(body.len() as u32).to_be_bytes()).await?;
    s.write_all(&body).await?;
    s.flush().await?;
    Ok(())
}

pub async fn read_frame<T: for<'de> Deserialize<'de>>(s: &mut UnixStream) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(FrameError::TooLarge);
    }
    let mut body = vec![0u8; n];
    s.read_exact(&mut body).await?;
    Ok(serde_json::from_slice(&body)?)
}

/// Send one request to the daemon and wait for its answer (`wait` bounds how long).
pub async fn call(socket: &Path, req: &Request, wait: Duration) -> Result<Response, String> {
    let mut s = UnixStream::connect(socket).await.map_err(|e| {
        format!(
            "cannot reach the daemon at {}: {e} (is `dirbridge daemon` running? daemon.socket names the socket)",
            socket.display()
        )
    })?;
    write_frame(&mut s, req).await.map_err(|e| e.to_string())?;
    match tokio::time::timeout(wait, read_frame::<Response>(&mut s)).await {
        Ok(r) => r.map_err(|e| format!("the daemon's answer: {e}")),
        Err(_) => Err(format!(
            "the daemon did not answer within {}s",
            wait.as_secs()
        )),
    }
}

// ------------------------------------------------------------------------------------ identities

/// A group's gid and listed members, from /etc/group.
pub fn group_entry(name: &str) -> Option<(u32, Vec<String>)> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            let gid = f[2].parse().ok()?;
            let members = f[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .map(String::from)
                .collect();
            Some((gid, members))
        } else {
            None
        }
    })
}

pub fn group_gid(name: &str) -> Option<u32> {
    group_entry(name).map(|(g, _)| g)
}

fn user_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[0].to_string())
    })
}

/// The supplementary groups of a process (from /proc/PID/status).
fn process_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Groups:")).map(|l| {
                l["Groups:".len()..]
                    .split_whitespace()
                    .filter_map(|g| g.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Peer {
    pub fn in_group(&self, group: &str) -> bool {
        let Some((gid, members)) = group_entry(group) else {
            return false;
        };
        if self.gid == gid {
            return true;
        }
        if let Some(pid) = self.pid {
            if process_groups(pid).contains(&gid) {
                return true;
            }
        }
        user_name(self.uid).is_some_and(|n| members.contains(&n))
    }
}

/// The service's own uid (the user the daemon runs as).
pub fn own_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// Whether `peer` may make `req`.
pub fn authorized(
    peer: &Peer,
    req: &Request,
    read_group: Option<&str>,
    admin_group: Option<&str>,
) -> bool {
    if peer.uid == 0 || peer.uid == own_uid() {
        return true;
    }
    let admin = admin_group.is_some_and(|g| peer.in_group(g));
    if req.mutating() {
        admin
    } else {
        admin || read_group.is_some_and(|g| peer.in_group(g))
    }
}

/// The status as Prometheus text exposition.
pub fn prometheus(s: &StatusReport) -> String {
    let mut o = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, lines: Vec<(String, f64)>| {
        o.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in lines {
            o.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    metric(
        "dirbridge_up",
        "The daemon answers.",
        "gauge",
        vec![(String::new(), 1.0)],
    );
    metric(
        "dirbridge_paused",
        "Runs are held.",
        "gauge",
        vec![(String::new(), if s.paused { 1.0 } else { 0.0 })],
    );
    metric(
        "dirbridge_alarms",
        "Active alarms (stale export, no recent success, failed reload).",
        "gauge",
        vec![(String::new(), s.alarms.len() as f64)],
    );
    if let Some(t) = s
        .last_success_at
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
    {
        let secs = t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        metric(
            "dirbridge_last_success_timestamp_seconds",
            "When the last successful run ended.",
            "gauge",
            vec![(String::new(), secs)],
        );
    }
    let mut runs = Vec::new();
    let mut changes = Vec::new();
    for (k, v) in &s.totals {
        let parts: Vec<&str> = k.split('|').collect();
        match parts.as_slice() {
            ["runs", trigger, result] => runs.push((
                format!("{{trigger=\"{trigger}\",result=\"{result}\"}}"),
                *v as f64,
            )),
            ["changes", op] => {
                changes.push((format!("{{target=\"directory\",op=\"{op}\"}}"), *v as f64))
            }
            _ => {}
        }
    }
    metric(
        "dirbridge_runs_total",
        "Runs by trigger and result.",
        "counter",
        runs,
    );
    metric(
        "dirbridge_changes_total",
        "Changes applied, by target and operation.",
        "counter",
        changes,
    );
    metric(
        "dirbridge_quarantined_total",
        "Records quarantined, summed over runs.",
        "counter",
        vec![(
            String::new(),
            s.totals.get("quarantined").copied().unwrap_or(0) as f64,
        )],
    );
    metric(
        "dirbridge_gate_refusals_total",
        "Safety gate refusals, summed over runs.",
        "counter",
        vec![(
            String::new(),
            s.totals.get("refusals").copied().unwrap_or(0) as f64,
        )],
    );
    if let Some(r) = &s.last_run {
        let trig = format!("{{trigger=\"{}\"}}", r.trigger);
        metric(
            "dirbridge_last_run_exit_code",
            "Exit code of the last run.",
            "gauge",
            vec![(trig.clone(), r.exit_code as f64)],
        );
        metric(
            "dirbridge_last_run_duration_seconds",
            "Duration of the last run.",
            "gauge",
            vec![(trig, r.duration_seconds)],
        );
        metric(
            "dirbridge_last_run_changes",
            "Changes applied by the last run, by operation.",
            "gauge",
            r.counts
                .iter()
                .map(|(k, v)| (format!("{{target=\"directory\",op=\"{k}\"}}"), *v as f64))
                .collect(),
        );
        if !r.apps.is_empty() {
            metric(
                "dirbridge_app_up",
                "1 when the application could be read in the last run.",
                "gauge",
                r.apps
                    .iter()
                    .map(|(a, h)| {
                        (
                            format!("{{app=\"{a}\"}}"),
                            if h.reachable { 1.0 } else { 0.0 },
                        )
                    })
                    .collect(),
            );
            metric(
                "dirbridge_app_failed_changes",
                "Application changes that failed in the last run.",
                "gauge",
                r.apps
                    .iter()
                    .map(|(a, h)| (format!("{{app=\"{a}\"}}"), h.failed as f64))
                    .collect(),
            );
            metric(
                "dirbridge_app_failing_accounts",
                "Accounts whose application changes failed on consecutive runs.",
                "gauge",
                r.apps
                    .iter()
                    .map(|(a, h)| (format!("{{app=\"{a}\"}}"), h.failing_accounts as f64))
                    .collect(),
            );
        }
        metric(
            "dirbridge_last_run_quarantined",
            "Records quarantined in the last run.",
            "gauge",
            vec![(String::new(), r.quarantined as f64)],
        );
        metric(
            "dirbridge_last_run_gate_refusals",
            "Safety gates that refused the last run.",
            "gauge",
            vec![(String::new(), r.refusals.len() as f64)],
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn requests_round_trip_and_are_classified() {
        for r in [
            Request::Status,
            Request::Trigger { wait: true },
            Request::Reload,
            Request::Pause,
            Request::Resume,
        ] {
            let j = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&j).unwrap(), r);
        }
        assert_eq!(
            serde_json::to_string(&Request::Trigger { wait: false }).unwrap(),
            r#"{"request":"trigger","wait":false}"#
        );
        assert!(!Request::Status.mutating() && Request::Reload.mutating());
        let root = Peer {
            uid: 0,
            gid: 0,
            pid: None,
        };
        assert!(authorized(&root, &Request::Reload, None, None));
        let nobody = Peer {
            uid: 65534,
            gid: 65534,
            pid: None,
        };
        assert!(!authorized(&nobody, &Request::Status, None, None) || own_uid() == 65534);
        assert_eq!(group_gid("root"), Some(0));
    }
}

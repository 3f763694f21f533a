//! `dirbridge daemon`: decides *when* a run happens — schedule, a change of the HR file, a
//! lifecycle date coming due, SIGUSR1, the control socket — and runs one at a time, coalescing
//! the triggers that arrive during a run into exactly one more run.

mod notify;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::clock::{Clock, SystemClock};
use crate::config::{self, Config, Schedule};
use crate::control::{self, Peer, Request, Response, RunSummary, StatusReport};
use crate::exit;
use crate::mirror::RunLock;
use crate::run::{self, RunOptions};

/// Why a run happens.
pub struct Trigger {
    pub kind: &'static str,
    /// Answered with the summary of the run that serves this trigger (`trigger --wait`).
    pub reply: Option<oneshot::Sender<RunSummary>>,
}

struct Shared {
    path: PathBuf,
    cfg: RwLock<Arc<Config>>,
    status: Mutex<StatusReport>,
    started: Instant,
    triggers: mpsc::UnboundedSender<Trigger>,
    /// Wakes the scheduler when the schedule or the next lifecycle date changed.
    resched: tokio::sync::Notify,
    next_lifecycle: Mutex<Option<SystemTime>>,
}

fn now_text() -> String {
    SystemClock.rfc3339()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn current(shared: &Shared) -> Arc<Config> {
    shared
        .cfg
        .read()
        .map(|c| c.clone())
        .unwrap_or_else(|p| p.into_inner().clone())
}

impl Shared {
    fn status(&self) -> StatusReport {
        let cfg = current(self);
        let mut s = lock(&self.status).clone();
        s.uptime_seconds = self.started.elapsed().as_secs();
        s.alarms = alarms(&cfg, &s);
        s
    }

    /// Load the configuration again; a bad file keeps the old one running and says why.
    fn reload(&self) -> Result<(), String> {
        match config::load(&self.path, config::Check::Run) {
            Ok((cfg, _)) => {
                *self.cfg.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cfg);
                let mut s = lock(&self.status);
                s.config_loaded_at = now_text();
                s.config_error = None;
                drop(s);
                self.resched.notify_one();
                tracing::info!(target: "dirbridge::daemon", "configuration reloaded");
                Ok(())
            }
            Err(d) => {
                let msg = d.to_string().trim().to_string();
                tracing::error!(target: "dirbridge::daemon", "reload refused, the old configuration keeps running: {msg}");
                lock(&self.status).config_error = Some(msg.clone());
                Err(msg)
            }
        }
    }
}

/// Stale export, or no successful run for `stale-after`.
fn alarms(cfg: &Config, s: &StatusReport) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(err) = &s.config_error {
        out.push(format!(
            "the last reload failed; the previous configuration is running: {err}"
        ));
    }
    if let Some(r) = &s.last_run {
        for (a, h) in &r.apps {
            if !h.reachable {
                out.push(format!(
                    "application {a} was unreachable in the last run: {}",
                    h.error.as_deref().unwrap_or("?")
                ));
            } else if h.failing_accounts > 0 {
                out.push(format!(
                    "application {a}: {} account(s) failing (see dirbridge history)",
                    h.failing_accounts
                ));
            }
        }
    }
    let Some(stale) = cfg.daemon.stale_after else {
        return out;
    };
    let now = SystemClock.now();
    if let Ok(m) = std::fs::metadata(&cfg.source.path).and_then(|m| m.modified()) {
        if now.duration_since(m).unwrap_or_default() > stale {
            out.push(format!(
                "the export {} has not changed for more than {}",
                cfg.source.path.display(),
                humantime::format_duration(stale)
            ));
        }
    }
    let since_success = s
        .last_success_at
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .map(|t| now.duration_since(t).unwrap_or_default());
    let up = Duration::from_secs(s.uptime_seconds);
    if since_success.unwrap_or(up) > stale {
        out.push(format!(
            "no successful run for more than {}",
            humantime::format_duration(stale)
        ));
    }
    out
}

/// Preflight checks before serving. `Err` is a message and an exit code.
fn preflight(cfg: &Config) -> Result<(), (String, i32)> {
    if control::own_uid() == 0 && !cfg.daemon.allow_root {
        return Err((
            "refusing to run as root: run as the service user (systemd User=dirbridge), or set daemon.allow-root = true".into(),
            exit::CONFIG,
        ));
    }
    let state_dir = cfg
        .state
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&state_dir)
        .and_then(|_| {
            let probe = state_dir.join(".dirbridge-write-test");
            std::fs::write(&probe, b"")?;
            std::fs::remove_file(&probe)
        })
        .map_err(|e| {
            (
                format!(
                    "the state directory {} is not writable: {e}",
                    state_dir.display()
                ),
                exit::CONFIG,
            )
        })?;
    for (what, p) in [
        ("configuration", Some(cfg.file.clone())),
        ("password file", cfg.directory.password_source.clone()),
    ] {
        if let Some(p) = p {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = std::fs::metadata(&p) {
                if m.permissions().mode() & 0o004 != 0 {
                    tracing::warn!(target: "dirbridge::daemon", "the {what} {} is readable by every user", p.display());
                }
            }
        }
    }
    Ok(())
}

/// Bind the control socket: any local user may connect (authorization is the daemon's answer).
/// A stale socket is replaced; a path that is not a socket is never unlinked.
fn bind(path: &Path) -> Result<UnixListener, String> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(format!(
                "{} exists and is not a socket: refusing to remove it",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove the stale socket {}: {e}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let l = UnixListener::bind(path).map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
    Ok(l)
}

async fn serve_connection(shared: Arc<Shared>, mut s: tokio::net::UnixStream) {
    let peer = match s.peer_cred() {
        Ok(c) => Peer {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        },
        Err(_) => return,
    };
    let req: Request = match tokio::time::timeout(
        Duration::from_secs(5),
        control::read_frame(&mut s),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(target: "dirbridge::control", uid = peer.uid, "refused a request: {e}");
            let _ = control::write_frame(
                &mut s,
                &Response::Error {
                    message: format!("bad request: {e}"),
                },
            )
            .await;
            return;
        }
        Err(_) => return,
    };
    let cfg = current(&shared);
    if !control::authorized(
        &peer,
        &req,
        cfg.daemon.read_group.as_deref(),
        cfg.daemon.admin_group.as_deref(),
    ) {
        tracing::warn!(target: "dirbridge::control", uid = peer.uid, request = req.name(), "unauthorized");
        let _ = control::write_frame(
            &mut s,
            &Response::Unauthorized {
                message: format!(
                    "uid {} may not {} (see daemon.read-group and daemon.admin-group)",
                    peer.uid,
                    req.name()
                ),
            },
        )
        .await;
        return;
    }
    tracing::info!(target: "dirbridge::control", uid = peer.uid, request = req.name(), "request");
    let resp = match req {
        Request::Status => Response::Status(Box::new(shared.status())),
        Request::Trigger { wait } => {
            let (tx, rx) = oneshot::channel();
            let reply = wait.then_some(tx);
            if shared
                .triggers
                .send(Trigger {
                    kind: "socket",
                    reply,
                })
                .is_err()
            {
                Response::Error {
                    message: "the daemon is stopping".into(),
                }
            } else if wait {
                match rx.await {
                    Ok(summary) => Response::Triggered { run: Some(summary) },
                    Err(_) => Response::Error {
                        message: "the daemon stopped before the run".into(),
                    },
                }
            } else {
                Response::Triggered { run: None }
            }
        }
        Request::Reload => match shared.reload() {
            Ok(()) => Response::Done {
                message: "configuration reloaded".into(),
            },
            Err(e) => Response::Error {
                message: format!("reload refused, the old configuration keeps running: {e}"),
            },
        },
        Request::Pause => {
            lock(&shared.status).paused = true;
            Response::Done {
                message: "paused: no run starts until resume".into(),
            }
        }
        Request::Resume => {
            lock(&shared.status).paused = false;
            let _ = shared.triggers.send(Trigger {
                kind: "resume",
                reply: None,
            });
            Response::Done {
                message: "resumed".into(),
            }
        }
    };
    let _ = control::write_frame(&mut s, &resp).await;
}

async fn socket_server(shared: Arc<Shared>, listener: UnixListener) {
    let limit = Arc::new(Semaphore::new(8));
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let sh = shared.clone();
        tokio::spawn(async move {
            // `trigger --wait` may take as long as a run; everything else is quick.
            let _ =
                tokio::time::timeout(Duration::from_secs(6 * 3600), serve_connection(sh, s)).await;
            drop(permit);
        });
    }
}

/// Prometheus metrics over plain HTTP on a loopback address: any request gets the text.
async fn metrics_server(shared: Arc<Shared>, l: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let sh = shared.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            let body = control::prometheus(&sh.status());
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        });
    }
}

/// The next scheduled instant after now, if any.
fn next_scheduled(schedule: &Option<Schedule>, last: Instant) -> Option<(Instant, SystemTime)> {
    match schedule {
        None => None,
        Some(Schedule::Every(d)) => {
            let at = last + *d;
            Some((
                at,
                SystemClock.now() + at.saturating_duration_since(Instant::now()),
            ))
        }
        Some(Schedule::Cron(expr)) => {
            let cron: croner::Cron = expr.parse().ok()?;
            let now: chrono::DateTime<chrono::Local> = SystemClock.now().into();
            let next = cron.find_next_occurrence(&now, false).ok()?;
            let wait = (next - now).to_std().unwrap_or_default();
            Some((Instant::now() + wait, SystemClock.now() + wait))
        }
    }
}

async fn scheduler(shared: Arc<Shared>) {
    let mut last = Instant::now();
    loop {
        let cfg = current(&shared);
        let sched = next_scheduled(&cfg.daemon.schedule, last);
        let life = *lock(&shared.next_lifecycle);
        let life_at =
            life.map(|t| Instant::now() + t.duration_since(SystemClock.now()).unwrap_or_default());
        let (at, kind) = match (sched, life_at) {
            (Some((s, _)), Some(l)) if l < s => (Some(l), "lifecycle"),
            (Some((s, _)), _) => (Some(s), "schedule"),
            (None, Some(l)) => (Some(l), "lifecycle"),
            (None, None) => (None, ""),
        };
        lock(&shared.status).next_run =
            sched.map(|(_, t)| humantime::format_rfc3339_seconds(t).to_string());
        match at {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {
                        last = Instant::now();
                        if kind == "lifecycle" {
                            *lock(&shared.next_lifecycle) = None;
                        }
                        let _ = shared.triggers.send(Trigger { kind, reply: None });
                    }
                    _ = shared.resched.notified() => {}
                }
            }
            None => shared.resched.notified().await,
        }
    }
}

async fn signals(shared: Arc<Shared>, stop: tokio::sync::watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut usr1), Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::user_defined1()),
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!(target: "dirbridge::daemon", "cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = usr1.recv() => { let _ = shared.triggers.send(Trigger { kind: "signal", reply: None }); }
            _ = hup.recv() => { let _ = shared.reload(); }
            _ = term.recv() => { let _ = stop.send(true); }
            _ = int.recv() => { let _ = stop.send(true); }
        }
    }
}

fn summarize(
    id: u64,
    kind: &str,
    started_at: &str,
    r: &Result<run::RunOutcome, run::RunError>,
) -> RunSummary {
    match r {
        Ok(o) => RunSummary {
            id,
            trigger: kind.into(),
            started_at: started_at.into(),
            duration_seconds: o.duration.as_secs_f64(),
            exit_code: o.exit_code(),
            counts: o.applied.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            quarantined: o.plan.quarantined.len(),
            refusals: o
                .plan
                .refusals
                .iter()
                .map(|r| format!("{}: {}", r.gate, r.message))
                .collect(),
            errors: o
                .failed
                .iter()
                .map(|f| format!("{} {}: {}", f.change.op.as_str(), f.change.dn, f.failure))
                .chain(o.app_failed.iter().map(|f| {
                    format!(
                        "{} app {}: {}: {}",
                        f.change.op.as_str(),
                        f.change.app,
                        f.change.account,
                        f.error
                    )
                }))
                .collect(),
            summary: format!(
                "{}{}",
                o.summary_line(),
                if o.interrupted { " (interrupted)" } else { "" }
            ),
            apps: o.apps.clone(),
        },
        Err(e) => RunSummary {
            id,
            trigger: kind.into(),
            started_at: started_at.into(),
            exit_code: e.exit_code(),
            errors: vec![e.to_string()],
            summary: format!("run failed: {e}"),
            ..Default::default()
        },
    }
}

/// The daemon. Returns the process exit code.
pub fn main(path: &Path) -> i32 {
    let cfg = match config::load(path, config::Check::Run) {
        Ok((c, w)) => {
            for d in w.warnings() {
                tracing::warn!(target: "dirbridge::config", "{d}");
            }
            c
        }
        Err(d) => {
            eprint!("{d}");
            return exit::CONFIG;
        }
    };
    if let Err((msg, code)) = preflight(&cfg) {
        eprintln!("dirbridge: {msg}");
        return code;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dirbridge: cannot start the runtime: {e}");
            return exit::SOFTWARE;
        }
    };
    rt.block_on(serve(path, cfg))
}

async fn serve(path: &Path, cfg: Config) -> i32 {
    // The daemon holds the mirror's lock for its whole life: a manual sync exits 75.
    let _lock = match RunLock::acquire(&cfg.state) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("dirbridge: {e}");
            return exit::LOCKED;
        }
    };
    let listener = match bind(&cfg.daemon.socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("dirbridge: {e}");
            return exit::CONFIG;
        }
    };
    let socket = cfg.daemon.socket.clone();
    let (tx, mut rx) = mpsc::unbounded_channel::<Trigger>();
    let now = now_text();
    let shared = Arc::new(Shared {
        path: path.to_path_buf(),
        cfg: RwLock::new(Arc::new(cfg)),
        status: Mutex::new(StatusReport {
            pid: std::process::id(),
            started_at: now.clone(),
            config_file: path.display().to_string(),
            config_loaded_at: now,
            ..Default::default()
        }),
        started: Instant::now(),
        triggers: tx,
        resched: tokio::sync::Notify::new(),
        next_lifecycle: Mutex::new(None),
    });
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(socket_server(shared.clone(), listener));
    tokio::spawn(signals(shared.clone(), stop_tx));
    tokio::spawn(scheduler(shared.clone()));
    if let Some(addr) = current(&shared).daemon.metrics {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tokio::spawn(metrics_server(shared.clone(), l));
            }
            Err(e) => {
                tracing::error!(target: "dirbridge::daemon", "cannot serve metrics on {addr}: {e}")
            }
        }
    }
    let cfg0 = current(&shared);
    let _watcher = if cfg0.daemon.watch {
        match watch::watch(
            &cfg0.source.path,
            cfg0.daemon.debounce,
            shared.triggers.clone(),
        ) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(target: "dirbridge::daemon", "cannot watch {}: {e}; runs come from the schedule, signals and the socket only", cfg0.source.path.display());
                None
            }
        }
    } else {
        None
    };
    // READY only once the socket answers.
    match control::call(&socket, &Request::Status, Duration::from_secs(5)).await {
        Ok(Response::Status(_)) => {}
        other => {
            eprintln!("dirbridge: the control socket does not answer: {other:?}");
            let _ = std::fs::remove_file(&socket);
            return exit::SOFTWARE;
        }
    }
    notify::send(&["READY=1", "STATUS=waiting for the first trigger"]);
    notify::start_watchdog();
    tracing::info!(target: "dirbridge::daemon", socket = %socket.display(), "ready");
    // The first run happens at once.
    let _ = shared.triggers.send(Trigger {
        kind: "start",
        reply: None,
    });

    let mut pending: Option<&'static str> = None;
    let mut waiters: Vec<oneshot::Sender<RunSummary>> = Vec::new();
    let mut run_id = 0u64;
    let mut stopping = false;
    // The mirror's connection, with the directory snapshot it caches, from one run to the next.
    let mirror_slot = run::MirrorSlot::default();
    while !stopping {
        if pending.is_none() {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(t) => { pending = Some(t.kind); waiters.extend(t.reply); }
                    None => break,
                },
                _ = stop_rx.changed() => break,
            }
        }
        // Coalesce whatever else is queued.
        while let Ok(t) = rx.try_recv() {
            waiters.extend(t.reply);
        }
        if lock(&shared.status).paused {
            // Hold the trigger until resume (which sends one) or stop.
            tokio::select! {
                m = rx.recv() => if let Some(t) = m { waiters.extend(t.reply); if t.kind == "resume" { pending = Some(pending.unwrap_or("resume")); } },
                _ = stop_rx.changed() => break,
            }
            continue;
        }
        let kind = pending.take().unwrap_or("unknown");
        let serving = std::mem::take(&mut waiters);
        run_id += 1;
        let started_at = now_text();
        lock(&shared.status).running = Some((kind.to_string(), started_at.clone()));
        notify::send(&[&format!("STATUS=run {run_id} ({kind}) in progress")]);
        let cfg = current(&shared);
        let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
        let opts = RunOptions {
            daemon_holds_lock: true,
            cancel: Some(cancel_rx),
            mirror_slot: Some(mirror_slot.clone()),
            summary_only: true,
            ..Default::default()
        };
        let fut = run::run(&cfg, &opts, &SystemClock);
        tokio::pin!(fut);
        let result = loop {
            tokio::select! {
                r = &mut fut => break r,
                m = rx.recv() => if let Some(t) = m {
                    // A trigger during a run: exactly one more run.
                    pending = Some(t.kind);
                    waiters.extend(t.reply);
                },
                _ = stop_rx.changed(), if !stopping => {
                    tracing::info!(target: "dirbridge::daemon", "stopping: finishing the operations in flight");
                    stopping = true;
                    let _ = cancel_tx.send(true);
                }
            }
        };
        let summary = summarize(run_id, kind, &started_at, &result);
        match &result {
            Ok(o) => {
                tracing::info!(target: "dirbridge::daemon", run = run_id, trigger = kind, exit = o.exit_code(), "{}", summary.summary);
                if let Some(d) = o
                    .plan
                    .next_change
                    .as_deref()
                    .and_then(|d| d.parse::<jiff::civil::Date>().ok())
                {
                    let tz = cfg
                        .lifecycle
                        .as_ref()
                        .and_then(|l| l.timezone.as_deref())
                        .and_then(|t| jiff::tz::TimeZone::get(t).ok())
                        .unwrap_or_else(jiff::tz::TimeZone::system);
                    if let Ok(z) = d.to_zoned(tz) {
                        let t = SystemTime::from(z.timestamp());
                        *lock(&shared.next_lifecycle) = Some(t);
                        shared.resched.notify_one();
                    }
                }
            }
            Err(e) => {
                tracing::error!(target: "dirbridge::daemon", run = run_id, trigger = kind, "run failed: {e}")
            }
        }
        {
            let mut s = lock(&shared.status);
            s.running = None;
            s.runs += 1;
            if matches!(summary.exit_code, 0 | 3) && summary.refusals.is_empty() {
                s.last_success_at = Some(now_text());
            }
            let result = match (&result, summary.exit_code) {
                (Ok(o), _) if o.interrupted => "interrupted",
                (Err(_), _) => "failed",
                (_, 0) => "ok",
                (_, 3) => "quarantined",
                (_, 4) => "refused",
                _ => "failed",
            };
            *s.totals.entry(format!("runs|{kind}|{result}")).or_default() += 1;
            for (op, n) in &summary.counts {
                *s.totals.entry(format!("changes|{op}")).or_default() += *n as u64;
            }
            *s.totals.entry("quarantined".into()).or_default() += summary.quarantined as u64;
            *s.totals.entry("refusals".into()).or_default() += summary.refusals.len() as u64;
            s.last_run = Some(summary.clone());
        }
        notify::send(&[&format!("STATUS={}", summary.summary)]);
        for w in serving {
            let _ = w.send(summary.clone());
        }
        for a in shared.status().alarms {
            tracing::warn!(target: "dirbridge::daemon", "alarm: {a}");
        }
    }
    notify::send(&["STOPPING=1"]);
    let _ = std::fs::remove_file(&socket);
    tracing::info!(target: "dirbridge::daemon", "stopped");
    exit::OK
}

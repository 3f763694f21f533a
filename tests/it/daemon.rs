//! The daemon against a real slapd: triggers, coalescing, reload, the control socket's
//! authorization and framing, systemd notifications, and stopping in the middle of a run.
//! `DIRBRIDGE_TEST_OP_DELAY_MS` (a test-only per-operation delay in the applier) makes a run
//! slow enough to be interrupted.

use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

struct Daemon {
    child: Child,
    socket: PathBuf,
    config: PathBuf,
}

impl Daemon {
    fn start(t: &TestEnv, env: &[(&str, String)]) -> Daemon {
        let socket = t.dir.join("control.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dirbridge"));
        cmd.arg("-c")
            .arg(&t.config)
            .arg("-v")
            .arg("daemon")
            .current_dir(&t.dir);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(t.dir.join("daemon.log")).unwrap(),
            ));
        cmd.env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let d = Daemon {
            child,
            socket,
            config: t.config.clone(),
        };
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            // 0, or 3 when an alarm is up: either way the daemon answers
            if matches!(d.ctl(&["status", "--format", "json"]).0, 0 | 3) {
                return d;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the daemon did not answer: {}",
            std::fs::read_to_string(t.dir.join("daemon.log")).unwrap_or_default()
        );
    }

    fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_dirbridge"))
            .arg("-c")
            .arg(&self.config)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    fn status(&self) -> serde_json::Value {
        let (_, out, err) = self.ctl(&["status", "--format", "json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status: {e}: {out} {err}"))
    }

    fn runs(&self) -> u64 {
        self.status()["runs"].as_u64().unwrap()
    }

    /// Wait until no run is in progress and `runs` has reached `n`.
    fn wait_runs(&self, n: u64) {
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            let s = self.status();
            if s["runs"].as_u64().unwrap() >= n && s["running"].is_null() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("runs did not reach {n}: {:#}", self.status());
    }

    fn signal(&self, sig: &str) {
        assert!(Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success());
    }

    fn stop(mut self) -> i32 {
        self.signal("-TERM");
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("the daemon did not stop within 30 s");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn daemon_config(t: &TestEnv, extra: &str) {
    daemon_config_debounced(t, "200ms", extra)
}

fn daemon_config_debounced(t: &TestEnv, debounce: &str, extra: &str) {
    let cfg = t.default_config(&slapd().ldaps_uri)
        + &format!(
            "\n[daemon]\nsocket = \"{}\"\nallow-root = true\ndebounce = \"{debounce}\"\n{extra}\n",
            t.dir.join("control.sock").display()
        );
    t.write_config(&cfg);
}

/// The export written aside with Ann and `second`, then renamed over the watched file.
fn replace_by_rename(t: &TestEnv, second: &str) {
    let tmp = t.dir.join(".export.tmp");
    std::fs::write(&tmp, format!("{HEADER}\n1,Ann,,Boss,CEO,,\n{second}\n")).unwrap();
    std::fs::rename(&tmp, t.dir.join("export.csv")).unwrap();
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn an_export_edit_reaches_the_directory_by_itself() {
    let t = TestEnv::new("dwatch");
    daemon_config(&t, "");
    t.write_export(&["1,Ann,,Boss,CEO,,", "2,Bob,,Worker,Dev,,1"]);
    let d = Daemon::start(&t, &[]);
    d.wait_runs(1);
    assert_eq!(t.people().len(), 2);
    // written in place
    t.write_export(&["1,Ann,,Boss,CEO,,", "2,Bob,,Worker,Lead,,1"]);
    wait_for("the new title", || {
        t.people()["2"].one("title") == Some("Lead")
    });
    // replaced by rename
    replace_by_rename(&t, "2,Bob,,Worker,Head,,1");
    wait_for("the renamed file", || {
        t.people()["2"].one("title") == Some("Head")
    });
    // written slowly, in two halves: never read half-written
    let full = format!("{HEADER}\n1,Ann,,Boss,CEO,,\n2,Bob,,Worker,Chief,,1\n3,Cy,,Third,QA,,1\n");
    let (a, b) = full.split_at(full.len() / 2 + 3);
    let runs = d.runs();
    {
        let mut f = std::fs::File::create(t.dir.join("export.csv")).unwrap();
        f.write_all(a.as_bytes()).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(60));
        f.write_all(b.as_bytes()).unwrap();
    }
    wait_for("the slow write", || t.people().len() == 3);
    d.wait_runs(runs + 1);
    let s = d.status();
    let last = &s["last-run"];
    assert_eq!(
        last["quarantined"], 0,
        "a half-written file was read: {s:#}"
    );
    assert_eq!(last["exit-code"], 0, "{s:#}");
    assert_eq!(t.people()["2"].one("title"), Some("Chief"));
    assert_eq!(d.stop(), 0);
}

#[test]
fn an_export_moved_into_place_runs_at_once_one_written_in_place_waits_for_the_debounce() {
    let t = TestEnv::new("dmoved");
    // a debounce far longer than the waits below
    daemon_config_debounced(&t, "40s", "");
    t.write_export(&["1,Ann,,Boss,CEO,,", "2,Bob,,Worker,Dev,,1"]);
    let d = Daemon::start(&t, &[]);
    d.wait_runs(1);
    // written aside and renamed over the export: complete as it appears, no debounce
    replace_by_rename(&t, "2,Bob,,Worker,Moved,,1");
    wait_for("the export moved into place", || {
        t.people()["2"].one("title") == Some("Moved")
    });
    d.wait_runs(2);
    // written in place: it waits for the debounce (the writer may not be done)
    t.write_export(&["1,Ann,,Boss,CEO,,", "2,Bob,,Worker,InPlace,,1"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(d.runs(), 2, "an in-place write ran before its debounce");
    assert_eq!(t.people()["2"].one("title"), Some("Moved"));
    assert_eq!(d.stop(), 0);
}

fn free_port() -> u16 {
    let start = 24000 + (std::process::id() % 2000) as u16;
    (start..31000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 32768")
}

#[test]
fn signals_and_triggers_cause_exactly_one_run_each() {
    let t = TestEnv::new("dtrig");
    let port = free_port();
    daemon_config(
        &t,
        &format!("watch = false\nmetrics = \"127.0.0.1:{port}\""),
    );
    t.write_export(&["1,Ann,,Boss,CEO,,"]);
    let d = Daemon::start(&t, &[]);
    d.wait_runs(1);
    d.signal("-USR1");
    d.wait_runs(2);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.runs(), 2);
    let (code, out, _) = d.ctl(&["trigger", "--wait"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("sync: 0 add"), "{out}");
    assert_eq!(d.runs(), 3);
    // a manual sync while the daemon runs
    let r = t.run(&["sync"]);
    assert_eq!(r.code, 75, "{r:?}");
    assert!(
        r.stderr.contains("daemon") && r.stderr.contains("dirbridge trigger --wait"),
        "{r:?}"
    );
    // pause holds runs; resume runs the held trigger
    assert_eq!(d.ctl(&["pause"]).0, 0);
    d.signal("-USR1");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(d.runs(), 3, "paused");
    assert_eq!(d.status()["paused"], true);
    assert_eq!(d.ctl(&["resume"]).0, 0);
    d.wait_runs(4);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.runs(), 4);
    // metrics, over the loopback listener and from `status --format prometheus`
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(
        body.contains("dirbridge_runs_total{trigger=\"start\",result=\"ok\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("dirbridge_runs_total{trigger=\"signal\",result=\"ok\"} 2"),
        "the signal held during the pause counts as a signal: {body}"
    );
    assert!(
        body.contains("dirbridge_changes_total{target=\"directory\",op=\"add\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("dirbridge_last_success_timestamp_seconds"),
        "{body}"
    );
    let (_, prom, _) = d.ctl(&["status", "--format", "prometheus"]);
    assert!(prom.contains("dirbridge_gate_refusals_total 0"), "{prom}");
    assert_eq!(d.stop(), 0);
}

#[test]
fn triggers_during_a_run_coalesce_into_one_more_run() {
    let t = TestEnv::new("dcoal");
    daemon_config(&t, "watch = false");
    let rows: Vec<String> = (1..=400)
        .map(|i| format!("{i},Given{i},,Family{i},,,"))
        .collect();
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    t.write_export(&refs);
    // 400 adds at 20 ms each, 32 in flight: the first run takes a quarter of a second or more
    let d = Daemon::start(&t, &[("DIRBRIDGE_TEST_OP_DELAY_MS", "20".into())]);
    wait_for("a run in progress", || !d.status()["running"].is_null());
    for _ in 0..10 {
        assert_eq!(d.ctl(&["trigger"]).0, 0);
    }
    assert!(
        !d.status()["running"].is_null(),
        "the run must still be in progress for this test to mean anything"
    );
    d.wait_runs(2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        d.runs(),
        2,
        "ten triggers during a run make exactly one more run"
    );
    let h = t.run(&["history", "--format", "json", "--limit", "1000"]);
    assert!(h.stdout.contains("\"op\": \"add\""));
    assert_eq!(t.people().len(), 400);
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_broken_reload_keeps_the_old_configuration() {
    let t = TestEnv::new("dreload");
    daemon_config(&t, "watch = false");
    t.write_export(&["1,Ann,,Boss,CEO,,"]);
    let d = Daemon::start(&t, &[]);
    d.wait_runs(1);
    let good = std::fs::read_to_string(&t.config).unwrap();
    std::fs::write(&t.config, good.replace("[users]", "[users]\nbogus-key = 1")).unwrap();
    d.signal("-HUP");
    wait_for("the reload error in status", || {
        !d.status()["config-error"].is_null()
    });
    let s = d.status();
    assert!(
        s["config-error"].as_str().unwrap().contains("bogus-key"),
        "{s:#}"
    );
    assert!(s["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a.as_str().unwrap().contains("last reload failed")));
    // the old configuration keeps working
    let (code, out, _) = d.ctl(&["trigger", "--wait"]);
    assert_eq!(code, 0, "{out}");
    let (code, _, err) = d.ctl(&["reload"]);
    assert_eq!(code, 78, "{err}");
    std::fs::write(&t.config, good).unwrap();
    assert_eq!(d.ctl(&["reload"]).0, 0);
    assert!(d.status()["config-error"].is_null());
    assert_eq!(d.stop(), 0);
}

#[test]
fn the_control_socket_checks_who_asks_and_what_it_is_sent() {
    let t = TestEnv::new("dauth");
    let group = "dirbridge-it-read";
    let _ = Command::new("groupadd").args(["-f", group]).status();
    let gid = std::fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .find(|l| l.starts_with(&format!("{group}:")))
        .and_then(|l| l.split(':').nth(2).map(String::from))
        .expect("groupadd made the group");
    daemon_config(&t, &format!("watch = false\nread-group = \"{group}\""));
    t.write_export(&["1,Ann,,Boss,CEO,,"]);
    let d = Daemon::start(&t, &[]);
    d.wait_runs(1);
    let as_user = |gid: &str, args: &[&str]| {
        Command::new("setpriv")
            .args([
                "--reuid=nobody",
                &format!("--regid={gid}"),
                "--clear-groups",
                env!("CARGO_BIN_EXE_dirbridge"),
            ])
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .output()
            .unwrap()
    };
    // a member of read-group may read, not act
    let r = as_user(&gid, &["status"]);
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let r = as_user(&gid, &["trigger"]);
    assert_eq!(
        r.status.code(),
        Some(77),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(String::from_utf8_lossy(&r.stderr).contains("unauthorized"));
    // an unrelated user may do neither
    assert_eq!(as_user("nogroup", &["status"]).status.code(), Some(77));
    assert_eq!(as_user("nogroup", &["reload"]).status.code(), Some(77));
    // an oversized frame and garbage are refused, and the daemon keeps serving
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(&(8u32 * 1024 * 1024).to_be_bytes()).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("larger than"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(&5u32.to_be_bytes()).unwrap();
    s.write_all(b"}}}}}").unwrap();
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    assert!(String::from_utf8_lossy(&body).contains("bad request"));
    assert_eq!(d.ctl(&["status"]).0, 0);
    // the socket is connectable by anyone; a path that is not a socket is never removed
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777,
        0o666
    );
    assert_eq!(d.stop(), 0);
    std::fs::write(t.dir.join("control.sock"), "not a socket").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dirbridge"))
        .arg("-c")
        .arg(&t.config)
        .arg("daemon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"));
    assert_eq!(
        std::fs::read_to_string(t.dir.join("control.sock")).unwrap(),
        "not a socket"
    );
}

#[test]
fn systemd_hears_ready_after_the_socket_answers_and_watchdog_pings() {
    let t = TestEnv::new("dnotify");
    daemon_config(&t, "watch = false");
    let rows: Vec<String> = (1..=200)
        .map(|i| format!("{i},Given{i},,Family{i},,,"))
        .collect();
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    t.write_export(&refs);
    let nsock = t.dir.join("notify.sock");
    let listener = UnixDatagram::bind(&nsock).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let d = Daemon::start(
        &t,
        &[
            ("NOTIFY_SOCKET", nsock.display().to_string()),
            ("WATCHDOG_USEC", "2000000".into()),
            // 200 adds at 1.5 s each, 32 in flight: the first run lasts about ten seconds
            ("DIRBRIDGE_TEST_OP_DELAY_MS", "1500".into()),
        ],
    );
    let mut got: Vec<String> = Vec::new();
    let mut pings_while_running = 0;
    let mut buf = [0u8; 4096];
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < until, "the run did not end: {got:?}");
        // A recv with a timeout fails with EINTR when the test process is stopped and continued
        // (SO_RCVTIMEO calls are not restarted after SIGCONT): CI saw it once; wait again.
        let n = match listener.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.unwrap(),
        };
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        if msg.contains("READY=1") {
            // READY comes only once the socket answers
            assert_eq!(d.ctl(&["status"]).0, 0);
        }
        let running = !d.status()["running"].is_null();
        if msg.contains("WATCHDOG=1") && running {
            pings_while_running += 1;
        }
        let done = msg.contains("STATUS=sync:");
        got.push(msg);
        if done {
            break;
        }
    }
    assert!(got.iter().any(|m| m.contains("READY=1")), "{got:?}");
    assert!(
        pings_while_running >= 8,
        "a ping a second during a ten-second run: {pings_while_running} {got:?}"
    );
    d.wait_runs(1);
    assert_eq!(d.stop(), 0);
}

#[test]
fn stopping_mid_run_leaves_a_journal_the_next_start_finishes() {
    let t = TestEnv::new("dstop");
    daemon_config(&t, "watch = false");
    let rows: Vec<String> = (1..=2000)
        .map(|i| format!("{i},Given{i},,Family{i},,,"))
        .collect();
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    t.write_export(&refs);
    let d = Daemon::start(&t, &[("DIRBRIDGE_TEST_OP_DELAY_MS", "25".into())]);
    wait_for("some adds", || {
        search(&t.people, "(employeeNumber=*)").len() > 50
    });
    let started = Instant::now();
    assert_eq!(d.stop(), 0, "SIGTERM exits 0");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "and within a bound"
    );
    let n = search(&t.people, "(employeeNumber=*)").len();
    assert!(n > 0 && n < 2000, "the run was really interrupted: {n}");
    let h = t.run(&["history", "--format", "json", "--limit", "5000"]);
    let rows: serde_json::Value = serde_json::from_str(&h.stdout).unwrap();
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r["state"] == "pending"),
        "an unfinished journal"
    );
    // The journal is written beside the writes, in chunks: every entry that was added has its
    // row, recorded as done, and no row says done for an entry that is not there.
    let present: std::collections::BTreeSet<String> = search(&t.people, "(employeeNumber=*)")
        .iter()
        .map(|e| e.dn.to_ascii_lowercase())
        .collect();
    let done: std::collections::BTreeSet<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["op"] == "add" && r["state"] == "done")
        .map(|r| r["dn"].as_str().unwrap().to_ascii_lowercase())
        .collect();
    assert_eq!(
        done, present,
        "the adds answered are those journaled as done"
    );
    assert_eq!(
        rows.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["op"] == "add")
            .count(),
        2000,
        "every add of the run has its journal row, sent or not"
    );
    // the next start converges to exactly 2000, one entry per anchor
    let d = Daemon::start(&t, &[]);
    d.wait_runs(1);
    let all = search(&t.people, "(employeeNumber=*)");
    assert_eq!(all.len(), 2000);
    let anchors: std::collections::BTreeSet<&str> =
        all.iter().filter_map(|e| e.one("employeeNumber")).collect();
    assert_eq!(anchors.len(), 2000);
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_stale_export_is_an_alarm() {
    let t = TestEnv::new("dstale");
    daemon_config(&t, "watch = false\nstale-after = \"1h\"");
    t.write_export(&["1,Ann,,Boss,CEO,,"]);
    let old = Command::new("touch")
        .args(["-d", "2 days ago"])
        .arg(t.dir.join("export.csv"))
        .status()
        .unwrap();
    assert!(old.success());
    let d = Daemon::start(&t, &[]);
    d.wait_runs(1);
    let s = d.status();
    let alarms = s["alarms"].as_array().unwrap();
    assert!(
        alarms.iter().any(|a| a
            .as_str()
            .unwrap()
            .contains("has not changed for more than 1h")),
        "{s:#}"
    );
    let (code, out, _) = d.ctl(&["status"]);
    assert_eq!(code, 3, "status exits 3 on an alarm: {out}");
    assert!(out.contains("ALARM:"), "{out}");
    let (_, prom, _) = d.ctl(&["status", "--format", "prometheus"]);
    assert!(prom.contains("dirbridge_alarms 1"), "{prom}");
    assert!(std::fs::read_to_string(t.dir.join("daemon.log"))
        .unwrap()
        .contains("alarm: the export"));
    assert_eq!(d.stop(), 0);
}

#[test]
fn status_shows_each_applications_health() {
    let t = TestEnv::new("dapps");
    std::fs::write(t.dir.join("app.token"), "tok\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        t.dir.join("app.token"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    // Nothing listens on this port: the app is down.
    let port = free_port();
    daemon_config(
        &t,
        &format!(
            "\n[[apps]]\nname = \"chat\"\nkind = \"scim\"\nurl = \"http://127.0.0.1:{port}/v2\"\ntoken-file = \"app.token\"\nretries = 0\ntimeout = \"2s\"\n[apps.attributes]\nuserName = \"{{{{ entry.uid }}}}\"\n"
        ),
    );
    t.write_export(&["1,Ann,,Boss,,ann@example.com,"]);
    let d = Daemon::start(&t, &[]);
    d.wait_runs(1);
    let s = d.status();
    let run = &s["last-run"];
    assert_eq!(run["exit-code"], 69, "{s:#}");
    assert_eq!(run["apps"]["chat"]["reachable"], false, "{s:#}");
    assert!(run["apps"]["chat"]["error"]
        .as_str()
        .unwrap()
        .contains("unreachable"));
    assert!(
        s["alarms"].as_array().unwrap().iter().any(|a| a
            .as_str()
            .unwrap()
            .contains("application chat was unreachable")),
        "{s:#}"
    );
    assert_eq!(t.people().len(), 1, "the directory went ahead");
    let (code, text, _) = d.ctl(&["status"]);
    assert_eq!(code, 3, "an alarm: exit 3");
    assert!(text.contains("app chat: UNREACHABLE"), "{text}");
    let (_, prom, _) = d.ctl(&["status", "--format", "prometheus"]);
    assert!(prom.contains("dirbridge_app_up{app=\"chat\"} 0"), "{prom}");
    assert_eq!(d.stop(), 0);
}

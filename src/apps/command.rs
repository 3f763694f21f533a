//! Command applications: a program of the sysadmin's, run without a shell, with the change as JSON
//! on stdin. Exit 0 means applied; anything else failed, with stderr kept for the audit.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::AppChange;

/// A command app's state is what dirbridge last sent it (kept in the mirror).
pub fn state(links: &std::collections::BTreeMap<String, super::AppLink>) -> super::AppState {
    super::AppState {
        accounts: links
            .iter()
            .map(|(k, l)| super::RemoteAccount {
                id: l.remote_id.clone(),
                user_name: l
                    .attrs
                    .get("userName")
                    .cloned()
                    .unwrap_or_else(|| k.clone()),
                external_id: Some(k.clone()),
                active: l.active,
                attrs: l.attrs.clone(),
                etag: None,
            })
            .collect(),
        groups: Vec::new(),
        patch: true,
    }
}

/// The JSON a program receives for one change.
pub fn payload(c: &AppChange) -> Value {
    let mut new = Map::new();
    let mut old = Map::new();
    let mut active = None;
    for d in &c.attributes {
        if d.attr == "active" {
            active = d.new.first().map(|v| v == "true");
            continue;
        }
        if let Some(v) = d.new.first() {
            new.insert(d.attr.to_string(), json!(v));
        }
        if let Some(v) = d.old.first() {
            old.insert(d.attr.to_string(), json!(v));
        }
    }
    let active = active.unwrap_or(!matches!(
        c.op,
        super::AppOp::AppDeactivate | super::AppOp::AppDelete
    ));
    json!({
        "app": c.app,
        "op": c.op.as_str(),
        "key": c.key,
        "account": c.account,
        "attributes": new,
        "old": old,
        "active": active,
        "reason": c.reason,
    })
}

/// Run `argv` with `input` on stdin. `Err` holds the exit status and the first 2,000 characters
/// of stderr (or why it could not run).
pub fn run(argv: &[String], input: &Value, timeout: Duration) -> Result<(), String> {
    let Some(prog) = argv.first() else {
        return Err("no program configured".into());
    };
    let mut child = Command::new(prog)
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.take(64 * 1024).read_to_string(&mut s);
        }
        s
    });
    if let Some(mut stdin) = child.stdin.take() {
        let mut text = input.to_string();
        text.push('\n');
        // A program that does not read its input is its own business: a broken pipe is not an error.
        let _ = stdin.write_all(text.as_bytes());
    }
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{prog} did not finish within {}",
                    humantime::format_duration(timeout)
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("{prog}: {e}")),
        }
    };
    let err = reader.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let err: String = err.trim().chars().take(2000).collect();
    Err(format!(
        "{prog} exited with {status}{}",
        if err.is_empty() {
            String::new()
        } else {
            format!(": {err}")
        }
    ))
}

//! Initial passwords for joiners: generated at apply time, sent in the add, handed to a delivery
//! program (argv, no shell, JSON on stdin). Never logged, never stored, never in the plan.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::secret::Secret;

const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
const DIGIT: &[u8] = b"23456789";
const SYMBOL: &[u8] = b"-_.!@#%+=";

/// A random password of `len` characters with at least one of each class.
pub fn generate(len: usize) -> std::io::Result<Secret> {
    let all: Vec<u8> = [LOWER, UPPER, DIGIT, SYMBOL].concat();
    let mut rng = std::fs::File::open("/dev/urandom")?;
    let mut pick = |set: &[u8]| -> std::io::Result<u8> {
        // rejection sampling: no modulo bias
        let limit = 256 - (256 % set.len());
        loop {
            let mut b = [0u8; 1];
            rng.read_exact(&mut b)?;
            if (b[0] as usize) < limit {
                return Ok(set[b[0] as usize % set.len()]);
            }
        }
    };
    let mut out: Vec<u8> = Vec::with_capacity(len);
    for set in [LOWER, UPPER, DIGIT, SYMBOL] {
        out.push(pick(set)?);
    }
    while out.len() < len {
        out.push(pick(&all)?);
    }
    // shuffle (Fisher–Yates)
    for i in (1..out.len()).rev() {
        let j = pick(&(0..=i as u8).collect::<Vec<u8>>())? as usize;
        out.swap(i, j);
    }
    Ok(Secret::new(String::from_utf8_lossy(&out).into_owned()))
}

/// Hand a password to the delivery program. `Err` says why, with the password redacted.
pub fn deliver(
    command: &[String],
    payload: &serde_json::Value,
    password: &Secret,
    timeout: Duration,
) -> Result<(), String> {
    let Some(prog) = command.first() else {
        return Err("no password-command".into());
    };
    let mut child = Command::new(prog)
        .args(&command[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    let mut body = payload.clone();
    if let serde_json::Value::Object(m) = &mut body {
        m.insert(
            "password".into(),
            serde_json::Value::String(password.expose().to_string()),
        );
    }
    let text = body.to_string();
    drop(body);
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("{prog}: writing its input failed: {e}"))?;
    }
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{prog} did not finish within {}s",
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{prog}: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let err: String = err
        .replace(password.expose(), "[redacted]")
        .chars()
        .take(500)
        .collect();
    Err(format!("{prog} exited with {status}: {}", err.trim()))
}

/// Write the initial password to `<dir>/<key>.json`, readable only by this process's user
/// (0600; the directory must not be readable by others). Returns the file's path, for the audit.
pub fn write_file(
    dir: &std::path::Path,
    key: &str,
    payload: &serde_json::Value,
    password: &Secret,
) -> Result<String, String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is readable by others (mode {:o}): chmod 700 it",
            dir.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    let safe: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{safe}.json"));
    let mut body = payload.clone();
    if let serde_json::Value::Object(m) = &mut body {
        m.insert(
            "password".into(),
            serde_json::Value::String(password.expose().to_string()),
        );
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(format!("{body}\n").as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn passwords_are_random_and_complex() {
        let a = generate(20).unwrap();
        let b = generate(20).unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().chars().count(), 20);
        let s = a.expose();
        assert!(s.chars().any(|c| c.is_ascii_lowercase()));
        assert!(s.chars().any(|c| c.is_ascii_uppercase()));
        assert!(s.chars().any(|c| c.is_ascii_digit()));
        assert!(s.bytes().any(|c| SYMBOL.contains(&c)));
    }
}

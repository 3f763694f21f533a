//! Watching the HR export: inotify through `notify` on the file's directory (so a file replaced
//! by rename is seen), debounced, and never read half-written: a file written in place triggers a
//! run only once its size and mtime stayed the same for a short while. A file moved into place
//! (written aside, then renamed over the export: the way to publish one atomically) is complete
//! as it appears, and triggers a run at once.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::Trigger;

fn stamp(p: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// Start watching; keep the returned watcher alive.
pub fn watch(
    file: &Path,
    debounce: Duration,
    triggers: mpsc::UnboundedSender<Trigger>,
) -> Result<notify::RecommendedWatcher, String> {
    use notify::Watcher;
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = file
        .file_name()
        .map(|n| n.to_os_string())
        .ok_or("the export path has no file name")?;
    // (true: the export was moved into place, complete)
    let (tx, mut rx) = mpsc::unbounded_channel::<bool>();
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            use notify::event::{ModifyKind, RenameMode};
            // (a rename within the directory comes as From, To and Both: Both repeats the others)
            if matches!(
                ev.kind,
                notify::EventKind::Access(_)
                    | notify::EventKind::Modify(ModifyKind::Name(RenameMode::Both))
            ) {
                return;
            }
            let is_export = |p: &PathBuf| p.file_name() == Some(name.as_os_str());
            let moved_in = matches!(
                ev.kind,
                notify::EventKind::Modify(ModifyKind::Name(RenameMode::To))
            ) && ev.paths.first().is_some_and(is_export);
            if moved_in || ev.paths.iter().any(is_export) {
                let _ = tx.send(moved_in);
            }
        }
    })
    .map_err(|e| e.to_string())?;
    w.watch(&dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| e.to_string())?;
    let file = file.to_path_buf();
    tokio::spawn(async move {
        // debounce: a quiet period of `debounce / 2`, then a stability wait of the rest
        let quiet = debounce / 2;
        let settle = (debounce - quiet).max(Duration::from_millis(20));
        while let Some(first) = rx.recv().await {
            let mut moved_in = first;
            while !moved_in {
                match tokio::time::timeout(quiet, rx.recv()).await {
                    Ok(Some(m)) => moved_in = m,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if moved_in {
                // complete as it appeared: no wait (what else is queued is part of this run)
                while rx.try_recv().is_ok() {}
                if stamp(&file).is_some() {
                    let _ = triggers.send(Trigger {
                        kind: "file",
                        reply: None,
                    });
                }
                continue;
            }
            // stable size and mtime: the writer is done (bounded: a file written for minutes
            // keeps postponing, and a file that disappears is not a trigger)
            let mut prev = stamp(&file);
            for _ in 0..600 {
                tokio::time::sleep(settle).await;
                while rx.try_recv().is_ok() {}
                let now = stamp(&file);
                if now.is_some() && now == prev {
                    let _ = triggers.send(Trigger {
                        kind: "file",
                        reply: None,
                    });
                    break;
                }
                prev = now;
            }
        }
    });
    Ok(w)
}

//! Watching the HR export: inotify through `notify` on the file's directory (so a file replaced
//! by rename is seen), debounced, and never read half-written: a run is triggered only once the
//! file's size and mtime stayed the same for a short while.

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
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if matches!(ev.kind, notify::EventKind::Access(_)) {
                return;
            }
            if ev
                .paths
                .iter()
                .any(|p| p.file_name() == Some(name.as_os_str()))
            {
                let _ = tx.send(());
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
        while rx.recv().await.is_some() {
            loop {
                match tokio::time::timeout(quiet, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
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

//! systemd's notify protocol (sd_notify): READY=1, STATUS=…, WATCHDOG=1, STOPPING=1 as datagrams
//! to $NOTIFY_SOCKET (a path or an abstract name). Without NOTIFY_SOCKET it does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

fn socket_addr() -> Option<std::os::unix::net::SocketAddr> {
    let p = std::env::var_os("NOTIFY_SOCKET")?;
    let p = p.to_string_lossy().into_owned();
    if let Some(name) = p.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()
    } else {
        std::os::unix::net::SocketAddr::from_pathname(p).ok()
    }
}

/// Send some `KEY=value` lines; errors are ignored (systemd may not be listening).
pub fn send(lines: &[&str]) {
    let Some(addr) = socket_addr() else { return };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let msg = lines
        .iter()
        .map(|l| l.replace('\n', " "))
        .collect::<Vec<_>>()
        .join("\n");
    let _ = sock.send_to_addr(msg.as_bytes(), &addr);
}

/// The watchdog interval systemd asked for ($WATCHDOG_USEC, for this process).
pub fn watchdog() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Ping WATCHDOG=1 at half the interval, from its own task (so a long run does not starve it).
pub fn start_watchdog() {
    let Some(every) = watchdog() else { return };
    tokio::spawn(async move {
        let mut t = tokio::time::interval(every / 2);
        loop {
            t.tick().await;
            send(&["WATCHDOG=1"]);
        }
    });
}

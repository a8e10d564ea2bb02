//! Duties of the process itself: stopping on SIGTERM/SIGINT, reaping orphans
//! when running as PID 1 in a container, and telling systemd (Type=notify)
//! when the member is ready and when it stops.

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

/// Resolves when the process is asked to stop. The handlers are installed
/// up front: the kernel gives PID 1 no default action for these signals.
pub fn stop_requested() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("received SIGTERM, shutting down"),
            _ = int.recv() => tracing::info!("received SIGINT, shutting down"),
        }
    })
}

/// As PID 1, adopts every orphan in the container and must reap it, or
/// zombies pile up. cairn starts no children of its own, so any child is one.
pub fn reap_orphans_if_init() -> std::io::Result<()> {
    if std::process::id() != 1 {
        return Ok(());
    }
    let mut children = signal(SignalKind::child())?;
    tokio::spawn(async move {
        while children.recv().await.is_some() {
            loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                    Ok(status) => tracing::debug!(?status, "reaped orphan"),
                    Err(Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "waitpid");
                        break;
                    }
                }
            }
        }
    });
    Ok(())
}

/// sd_notify: one datagram to $NOTIFY_SOCKET, when systemd gave one.
pub fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(e) = send_notify(&path, state) {
        tracing::warn!(error = %e, "sd_notify {state}");
    }
}

fn send_notify(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = path.as_bytes();
    // A leading '@' names a socket in the abstract namespace.
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(std::path::Path::new(path))?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

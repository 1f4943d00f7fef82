//! Rare kernel-side events (`aya-log`, e.g. the should-never-happen `drop_table` path)
//! forwarded to the agent's log. Never per packet: the program logs only on paths that
//! indicate a bug.

use std::os::fd::AsRawFd;

use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;

/// Writes kernel log records as `tracing` events (target `lb_ebpf`).
pub struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        match record.level() {
            log::Level::Error => tracing::error!(target: "lb_ebpf", "{}", record.args()),
            log::Level::Warn => tracing::warn!(target: "lb_ebpf", "{}", record.args()),
            log::Level::Info => tracing::info!(target: "lb_ebpf", "{}", record.args()),
            _ => tracing::debug!(target: "lb_ebpf", "{}", record.args()),
        }
    }
    fn flush(&self) {}
}

/// A logger's ring buffer, readable from the async runtime.
struct Readable(EbpfLogger<KernelLog>);

impl AsRawFd for Readable {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// Reads the program's log records as they come, for as long as the runtime runs.
pub fn spawn(logger: EbpfLogger<KernelLog>) {
    // SAFETY: the ring buffer's fd is owned by the logger, which the AsyncFd owns: it
    // stays open and the same for the AsyncFd's whole life.
    let fd = match unsafe { AsyncFd::register_with_interest(Readable(logger), tokio::io::Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "kernel log not readable; kernel-side events are not logged");
            return;
        }
    };
    tokio::spawn(async move {
        let mut fd = fd;
        loop {
            let Ok(mut ready) = fd.readable_mut().await else { return };
            ready.get_inner_mut().0.flush();
            ready.clear_ready();
        }
    });
}

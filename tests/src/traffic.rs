//! Background traffic for lifecycle tests: a stream of new connections, and
//! long-lived connections that keep talking. Both count every failure.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::lab::Lab;
use crate::netns::spawn_in;
use crate::servers::{connect_many, tcp_backends};

/// What a background traffic source saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    pub failed: u64,
    pub errors: Vec<String>,
}

pub struct Background {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<std::io::Result<Tally>>>,
}

impl Background {
    /// New TCP connections to `vip`, one after another, until stopped.
    pub fn churn(lab: &Lab, vip: SocketAddr) -> Result<Background> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let client = lab.client();
        let handle = spawn_in(&client, move || {
            let mut t = Tally::default();
            while !s.load(Ordering::Relaxed) {
                match crate::servers::open_and_close(vip) {
                    Ok(_) => t.ok += 1,
                    Err(e) => {
                        t.failed += 1;
                        t.errors.push(format!("{e:#}"));
                    }
                }
            }
            t
        })?;
        Ok(Background { stop, handles: vec![handle] })
    }

    /// `n` long-lived connections that each echo a line every `every`, until stopped;
    /// an echo from another backend, or a broken connection, counts as a failure.
    pub fn streams(lab: &Lab, vip: SocketAddr, n: usize, every: Duration) -> Result<Background> {
        let stop = Arc::new(AtomicBool::new(false));
        let conns = connect_many(lab, vip, n)?;
        let handles = conns
            .into_iter()
            .map(|mut c| {
                let s = stop.clone();
                std::thread::spawn(move || {
                    let mut t = Tally::default();
                    while !s.load(Ordering::Relaxed) {
                        match c.echo("tick") {
                            Ok(()) => t.ok += 1,
                            Err(e) => {
                                t.failed += 1;
                                t.errors.push(format!("stream to {}: {e:#}", c.backend));
                                break;
                            }
                        }
                        std::thread::sleep(every);
                    }
                    Ok(t)
                })
            })
            .collect();
        Ok(Background { stop, handles })
    }

    /// Stops and adds up what every thread saw.
    pub fn finish(self) -> Result<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for h in self.handles {
            let t = h.join().map_err(|_| anyhow!("traffic thread panicked"))??;
            total.ok += t.ok;
            total.failed += t.failed;
            total.errors.extend(t.errors);
        }
        Ok(total)
    }
}

/// Waits until `f` holds, polling every 100 ms, for at most `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if f()? {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(anyhow!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Backends of `n` new connections (re-exported for tests' convenience).
pub fn backends_of(lab: &Lab, vip: SocketAddr, n: usize) -> Result<Vec<String>> {
    tcp_backends(lab, vip, n)
}

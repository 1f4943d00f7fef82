//! A Prometheus stand-in: `GET /metrics` on the agent every second, on a thread of its
//! own (created inside the LB's namespace, so it inherits it), while the Kubernetes
//! benchmark measures change latency. Each scrape makes the agent walk the flow table.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the scrapes saw.
#[derive(Clone, Debug, Default)]
pub struct Scrapes {
    /// Duration of each answered scrape (ms).
    pub ms: Vec<f64>,
    /// Scrapes without a `200` answer.
    pub failed: usize,
}

pub struct Scraper {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Scrapes>,
}

impl Scraper {
    pub fn start(addr: SocketAddr, every: Duration) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut out = Scrapes::default();
            while !flag.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                match get(addr) {
                    Ok(true) => out.ms.push(t0.elapsed().as_secs_f64() * 1e3),
                    _ => out.failed += 1,
                }
                std::thread::sleep(every.saturating_sub(t0.elapsed()));
            }
            out
        });
        Scraper { stop, thread }
    }

    pub fn finish(self) -> Scrapes {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// One scrape; true when it answered `200` with a page.
fn get(addr: SocketAddr) -> std::io::Result<bool> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nhost: lb\r\nconnection: close\r\n\r\n")?;
    let mut text = String::new();
    c.read_to_string(&mut text)?;
    Ok(text.starts_with("HTTP/1.1 200") && text.contains("lb_sync_total"))
}

/// A port on 127.0.0.1 free a moment ago (in the calling thread's namespace).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

//! Telling users, where they look: Service `status.loadBalancer.ingress` (with `ipMode`),
//! a condition per LB host saying whether the Service is programmed in its data plane
//! and how, Events for every problem and state change, and the pods' `progress` labels.
//!
//! The reporter is a task of its own: the data path's loop hands it what changed and
//! goes on, so a slow or unreachable API server never delays a map update. Messages
//! that queue up while it writes are merged (the latest outcome per Service wins).
//! Status is written with server-side apply under a field manager per host, so several
//! LB hosts each own their own condition; nothing is written when nothing changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use futures::StreamExt;
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::info;

use super::desired::{ServiceKey, ServiceOutcome};
use super::watch::KubeSource;

mod conditions;
mod events;
mod progress;

pub const CONDITION_PREFIX: &str = "lb-agent.io/Programmed-";
/// Requests (status writes, Events) in flight at once.
const IN_FLIGHT: usize = 8;
/// Services handled at a time in a burst.
const CHUNK: usize = 256;

/// How this host's data plane is doing, for the condition's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostState {
    /// E.g. "XDP native on eth0".
    pub mode: String,
    /// The last sync's error, if it failed.
    pub error: Option<String>,
}

/// What the data path's loop tells the reporter.
#[derive(Debug)]
pub enum Report {
    /// The data plane's state: every Service's condition follows it.
    Host(HostState),
    /// Services whose outcome changed; `None`: no longer ours.
    Services(Vec<(ServiceKey, Option<ServiceOutcome>)>),
    /// Backends' ramp progress, for their pods' `progress` labels.
    Progress(Vec<(IpAddr, (String, String), u32)>),
    /// A Normal Event on a Service: (Service, reason, note).
    Event(ServiceKey, &'static str, String),
    /// A Warning Event on a Service: (Service, reason, note).
    Warning(ServiceKey, &'static str, String),
}

/// The handle the loop sends through.
#[derive(Clone)]
pub struct ReportSender(mpsc::UnboundedSender<Report>);

impl ReportSender {
    pub fn send(&self, r: Report) {
        // The reporter only stops with the process.
        let _ = self.0.send(r);
    }
}

/// An Event's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

struct KubeReporter {
    client: Client,
    /// Events published so far (their names must be unique).
    events_sent: std::sync::atomic::AtomicU64,
    source: KubeSource,
    host_name: String,
    host: HostState,
    outcomes: BTreeMap<ServiceKey, ServiceOutcome>,
    /// The status body last written per Service (a hash of it).
    written: HashMap<ServiceKey, u64>,
    /// The condition's (status, lastTransitionTime) per Service.
    since: HashMap<ServiceKey, (bool, String)>,
    /// Each Service's problems as last published (a fixed one is forgotten).
    problems: events::Problems,
    programmed: BTreeSet<ServiceKey>,
    /// Progress last written or found on the label, per backend.
    progress_seen: HashMap<IpAddr, u32>,
    /// Services whose status write failed: retried.
    failed: BTreeSet<ServiceKey>,
    /// New Services not warned about missing endpoints yet (`conditions::is_new`):
    /// looked at again on the next tick.
    deferred: BTreeSet<ServiceKey>,
}

/// How soon failed status writes are retried (and new Services looked at again) when
/// nothing else comes.
const RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts the reporter task.
pub fn spawn(client: Client, host: &str, source: KubeSource, mode: String) -> ReportSender {
    let (tx, mut rx) = mpsc::unbounded_channel::<Report>();
    let mut r = KubeReporter {
        client,
        events_sent: std::sync::atomic::AtomicU64::new(0),
        source,
        host_name: host.into(),
        host: HostState { mode, error: None },
        outcomes: BTreeMap::new(),
        written: HashMap::new(),
        since: HashMap::new(),
        problems: events::Problems::default(),
        programmed: BTreeSet::new(),
        progress_seen: HashMap::new(),
        failed: BTreeSet::new(),
        deferred: BTreeSet::new(),
    };
    tokio::spawn(async move {
        loop {
            let mut batch = Vec::new();
            match tokio::time::timeout(RETRY, rx.recv()).await {
                Ok(Some(first)) => batch.push(first),
                Ok(None) => return,
                Err(_) if r.failed.is_empty() && r.deferred.is_empty() => continue,
                Err(_) => {}
            }
            while let Ok(m) = rx.try_recv() {
                batch.push(m);
            }
            r.handle(batch).await;
        }
    });
    ReportSender(tx)
}

fn hash_of(v: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

impl KubeReporter {
    async fn handle(&mut self, batch: Vec<Report>) {
        let mut services: BTreeSet<ServiceKey> = std::mem::take(&mut self.failed);
        services.extend(std::mem::take(&mut self.deferred));
        let mut released: Vec<ServiceKey> = Vec::new();
        let mut progress: BTreeMap<IpAddr, ((String, String), u32)> = BTreeMap::new();
        let mut events = Vec::new();
        for m in batch {
            match m {
                Report::Host(h) if h != self.host => {
                    self.host = h;
                    services.extend(self.outcomes.keys().cloned());
                }
                Report::Host(_) => {}
                Report::Services(list) => {
                    for (key, outcome) in list {
                        match outcome {
                            Some(o) => {
                                self.outcomes.insert(key.clone(), o);
                                services.insert(key);
                            }
                            None => {
                                self.outcomes.remove(&key);
                                services.remove(&key);
                                released.push(key);
                            }
                        }
                    }
                }
                Report::Progress(list) => progress.extend(list.into_iter().map(|(a, pod, p)| (a, (pod, p)))),
                Report::Event(key, reason, note) => events.push((key, EventType::Normal, reason, note)),
                Report::Warning(key, reason, note) => events.push((key, EventType::Warning, reason, note)),
            }
        }
        self.statuses(services).await;
        for key in released {
            self.release(key).await;
        }
        self.progress(progress).await;
        for (key, type_, reason, note) in events {
            self.event(&key, type_, reason, note).await;
        }
    }

    /// Writes status and conditions, and publishes Events for new problems and for
    /// Services that became programmed: `CHUNK` Services at a time, `IN_FLIGHT` requests
    /// at once, so a burst (every Service at start) never holds every body in memory.
    async fn statuses(&mut self, keys: BTreeSet<ServiceKey>) {
        let started = std::time::Instant::now();
        let (total, mut written, mut published) = (keys.len(), 0, 0);
        let keys: Vec<ServiceKey> = keys.into_iter().collect();
        for chunk in keys.chunks(CHUNK) {
            let mut writes = Vec::new();
            let mut events = Vec::new();
            for key in chunk {
                self.status(key, &mut writes, &mut events);
            }
            published += events.len();
            let this = &*self;
            futures::stream::iter(events)
                .for_each_concurrent(IN_FLIGHT, |(key, type_, reason, note)| async move {
                    this.event(&key, type_, reason, note).await
                })
                .await;
            let results: Vec<(ServiceKey, u64, bool)> = futures::stream::iter(writes)
                .map(|(key, body, hash)| async move {
                    let ok = this.patch(&key, &body).await;
                    (key, hash, ok)
                })
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await;
            for (key, hash, ok) in results {
                if ok {
                    written += 1;
                    self.written.insert(key, hash);
                } else {
                    self.written.remove(&key);
                    self.failed.insert(key);
                }
            }
        }
        if total >= CHUNK {
            let seconds = started.elapsed().as_secs_f64();
            crate::mem::give_back_free_memory();
            let rss_mib = crate::mem::rss_mib();
            info!(services = total, written, events = published, seconds, rss_mib, "Service statuses written");
        }
    }

    /// A Service that stopped being ours (class or type changed, deleted): our status
    /// fields are released (an apply with none of them).
    async fn release(&mut self, key: ServiceKey) {
        self.since.remove(&key);
        self.programmed.remove(&key);
        self.problems.forget(&key);
        if self.written.remove(&key).is_some() && self.source.lock().service(&key).is_some() {
            let body = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": key.name, "namespace": key.namespace}});
            self.patch(&key, &body).await;
        }
    }
}

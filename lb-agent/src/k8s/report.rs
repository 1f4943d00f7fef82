//! Telling users, where they look: Service `status.loadBalancer.ingress` (with `ipMode`),
//! a condition per LB host saying whether the Service is programmed in its data plane
//! and how, Events for every problem and state change, and the pods' `progress` labels.
//!
//! Status is written with server-side apply under a field manager per host, so several
//! LB hosts each own their own condition; nothing is written when nothing changed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::desired::{Computed, ServiceKey, ServiceOutcome, PROGRESS_LABEL};
use super::watch::KubeSource;
use crate::model::Vip;
use crate::ramp::{Effective, Event as RampEvent};

pub const CONDITION_PREFIX: &str = "lb-agent.io/Programmed-";

/// How this host's data plane is doing, for the condition's message.
pub struct HostState {
    /// E.g. "XDP native on eth0".
    pub mode: String,
    /// The last sync's error, if it failed.
    pub error: Option<String>,
}

pub struct KubeReporter {
    client: Client,
    recorder: Recorder,
    host: String,
    written: BTreeMap<ServiceKey, Value>,
    since: BTreeMap<ServiceKey, (bool, String)>,
    reported: BTreeSet<(ServiceKey, String)>,
    programmed: BTreeSet<ServiceKey>,
    /// What each Service's status was last computed from: unchanged input, no work.
    last_input: BTreeMap<ServiceKey, (ServiceOutcome, Option<String>)>,
    /// Progress last seen (written or already on the label) per backend address.
    progress_seen: std::sync::Mutex<BTreeMap<IpAddr, u32>>,
}

impl KubeReporter {
    pub fn new(client: Client, host: &str) -> Self {
        let reporter = Reporter { controller: "lb-agent".into(), instance: Some(host.into()) };
        KubeReporter {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            host: host.into(),
            written: BTreeMap::new(),
            since: BTreeMap::new(),
            reported: BTreeSet::new(),
            programmed: BTreeSet::new(),
            last_input: BTreeMap::new(),
            progress_seen: Default::default(),
        }
    }

    fn condition_type(&self) -> String {
        format!("{CONDITION_PREFIX}{}", self.host)
    }

    async fn event(&self, source: &KubeSource, key: &ServiceKey, type_: EventType, reason: &str, note: String) {
        let Some(svc) = source.service(key) else { return };
        let ev = Event { type_, reason: reason.into(), note: Some(note), action: "Program".into(), secondary: None };
        if let Err(e) = self.recorder.publish(&ev, &svc.object_ref(&())).await {
            warn!(service = %key, error = %e, "publishing an Event");
        }
    }

    /// Writes status and conditions, and publishes Events for new problems and for
    /// Services that became programmed.
    pub async fn report(&mut self, source: &KubeSource, computed: &Computed, host: &HostState) {
        for (key, outcome) in &computed.services {
            let input = (outcome.clone(), host.error.clone());
            if self.last_input.get(key) == Some(&input) && self.written.contains_key(key) {
                continue;
            }
            self.last_input.insert(key.clone(), input);
            for p in &outcome.problems {
                if self.reported.insert((key.clone(), p.to_string())) {
                    self.event(source, key, EventType::Warning, p.reason(), p.to_string()).await;
                }
            }
            let ok = !outcome.vips.is_empty() && host.error.is_none();
            let (reason, message) = match (&host.error, outcome.problems.first()) {
                (Some(e), _) => ("SyncFailed".to_string(), format!("{}: {e}", host.mode)),
                (None, _) if outcome.vips.is_empty() => {
                    let why = outcome.problems.first().map(|p| p.to_string()).unwrap_or_default();
                    ("NotProgrammed".to_string(), why)
                }
                (None, Some(p)) => {
                    ("PartlyProgrammed".to_string(), format!("{} ({} VIPs); {p}", host.mode, outcome.vips.len()))
                }
                (None, None) => ("Programmed".to_string(), format!("{} ({} VIPs)", host.mode, outcome.vips.len())),
            };
            if ok && self.programmed.insert(key.clone()) {
                let vips: Vec<String> = outcome.vips.iter().map(Vip::to_string).collect();
                self.event(source, key, EventType::Normal, "Programmed", format!("{}: {}", host.mode, vips.join(", ")))
                    .await;
            } else if !ok {
                self.programmed.remove(key);
            }
            let ingress = if outcome.vips.is_empty() { None } else { outcome.address };
            self.apply_status(key, ingress, ok, &reason, &message).await;
        }
        // Services that stopped being ours (class changed, type changed): release them.
        let gone: Vec<ServiceKey> =
            self.written.keys().filter(|k| !computed.services.contains_key(k)).cloned().collect();
        for key in gone {
            self.written.remove(&key);
            self.last_input.remove(&key);
            self.since.remove(&key);
            self.programmed.remove(&key);
            if source.service(&key).is_some() {
                self.patch(&key, json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": key.name, "namespace": key.namespace}}))
                    .await;
            }
        }
    }

    async fn apply_status(&mut self, key: &ServiceKey, ingress: Option<IpAddr>, ok: bool, reason: &str, message: &str) {
        let status = if ok { "True" } else { "False" };
        let condition_type = self.condition_type();
        let since = self.since.entry(key.clone()).or_insert_with(|| (ok, Timestamp::now().to_string()));
        if since.0 != ok {
            *since = (ok, Timestamp::now().to_string());
        }
        let since = since.1.clone();
        let ingress: Vec<Value> =
            ingress.map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"})).into_iter().collect();
        let body = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": key.name, "namespace": key.namespace},
            "status": {
                "loadBalancer": {"ingress": ingress},
                "conditions": [{
                    "type": condition_type, "status": status, "reason": reason,
                    "message": message, "lastTransitionTime": since,
                }]
            }
        });
        if self.written.get(key) == Some(&body) {
            return;
        }
        if self.patch(key, body.clone()).await {
            self.written.insert(key.clone(), body);
        } else {
            // Retried on the next sync even if nothing changes meanwhile.
            self.last_input.remove(key);
        }
    }

    async fn patch(&self, key: &ServiceKey, body: Value) -> bool {
        let api: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
        let params = PatchParams::apply(&format!("lb-agent-{}", self.host)).force();
        match api.patch_status(&key.name, &params, &Patch::Apply(&body)).await {
            Ok(_) => true,
            Err(e) => {
                warn!(service = %key, error = %e, "writing Service status");
                false
            }
        }
    }

    /// Writes each backend pod's ramp progress to its `progress` label when it differs.
    pub async fn progress(&self, source: &KubeSource, computed: &Computed, effective: &BTreeMap<Vip, Vec<Effective>>) {
        let mut done = BTreeSet::new();
        for e in effective.values().flatten().filter(|e| !e.draining) {
            if self.progress_seen.lock().expect("lock").get(&e.addr) == Some(&e.progress) {
                continue;
            }
            let Some((ns, name)) = computed.pods.get(&e.addr) else { continue };
            if !done.insert((ns.clone(), name.clone())) {
                continue;
            }
            let current = source.pod(ns, name).and_then(|p| p.metadata.labels.as_ref()?.get(PROGRESS_LABEL).cloned());
            if current.as_deref() == Some(e.progress.to_string().as_str()) {
                self.progress_seen.lock().expect("lock").insert(e.addr, e.progress);
                continue;
            }
            let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
            let patch = json!({"metadata": {"labels": {PROGRESS_LABEL: e.progress.to_string()}}});
            match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    self.progress_seen.lock().expect("lock").insert(e.addr, e.progress);
                    info!(pod = %format!("{ns}/{name}"), progress = e.progress, "progress label written")
                }
                Err(err) => warn!(pod = %format!("{ns}/{name}"), error = %err, "writing the progress label"),
            }
        }
    }

    /// Events for ramps and drains that finished, on the Services they belong to.
    pub async fn backend_events(&self, source: &KubeSource, computed: &Computed, events: &[RampEvent]) {
        for ev in events {
            let (vip, text, reason) = match ev {
                RampEvent::RampFinished { vip, backend } => {
                    (vip, format!("backend {backend} reached full weight"), "RampFinished")
                }
                RampEvent::DrainFinished { vip, backend, live_flows, timed_out } => (
                    vip,
                    format!(
                        "backend {backend} drained ({}; {live_flows} live flows)",
                        if *timed_out { "timed out" } else { "no flows left" }
                    ),
                    "DrainFinished",
                ),
                _ => continue,
            };
            if let Some((key, _)) = computed.services.iter().find(|(_, o)| o.vips.contains(vip)) {
                self.event(source, key, EventType::Normal, reason, format!("{vip}: {text}")).await;
            }
        }
    }
}

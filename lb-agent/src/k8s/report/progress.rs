//! Each backend's ramp progress, written to its pod's `progress` label (the label that
//! also gives a backend its starting progress when an agent first sees it), so users
//! see the ramp and an agent that starts later picks it up where it was.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;
use tracing::{debug, info, warn};

use super::super::desired::PROGRESS_LABEL;
use super::{KubeReporter, IN_FLIGHT};

impl KubeReporter {
    /// Writes each backend pod's ramp progress to its `progress` label when it differs.
    pub(super) async fn progress(&mut self, list: BTreeMap<IpAddr, ((String, String), u32)>) {
        let mut done = BTreeSet::new();
        let mut writes = Vec::new();
        for (addr, ((ns, name), progress)) in list {
            if self.progress_seen.get(&addr) == Some(&progress) || !done.insert((ns.clone(), name.clone())) {
                continue;
            }
            if self.source.lock().progress(&ns, &name) == Some(progress) {
                self.progress_seen.insert(addr, progress);
                continue;
            }
            writes.push((addr, ns, name, progress));
        }
        let client = &self.client;
        let results: Vec<(IpAddr, u32, bool)> = futures::stream::iter(writes)
            .map(|(addr, ns, name, progress)| async move {
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let patch = json!({"metadata": {"labels": {PROGRESS_LABEL: progress.to_string()}}});
                let ok = match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                    Ok(_) => {
                        debug!(pod = %format!("{ns}/{name}"), progress, "progress label written");
                        true
                    }
                    Err(err) => {
                        warn!(pod = %format!("{ns}/{name}"), error = %err, "writing the progress label");
                        false
                    }
                };
                (addr, progress, ok)
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let mut values = BTreeSet::new();
        let mut pods = 0;
        for (addr, progress, _) in results.into_iter().filter(|(_, _, ok)| *ok) {
            self.progress_seen.insert(addr, progress);
            values.insert(progress);
            pods += 1;
        }
        if pods > 0 {
            info!(pods, progress = ?values, "progress labels written");
        }
    }
}

//! A Service's status: `loadBalancer.ingress` and this host's condition.
//!
//! The condition speaks of the Service it is on and of this host, nothing else. A failed
//! sync's error can come from any one object (a VIP address the kernel refuses, say), so
//! its text goes to the log and to that object's own reports, never into every other
//! Service's condition: there it only says that this host's data plane is not up to date.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value};
use tracing::warn;

use super::super::desired::{ServiceKey, ServiceOutcome, ServiceProblem};
use super::{hash_of, EventType, HostState, KubeReporter, CONDITION_PREFIX};

/// One Service's condition on this host.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Condition {
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The condition from this host's state and the Service's own outcome (pure). `ok` is
/// judged on what the data plane holds (`outcome.held`), not on what was wanted.
pub(super) fn condition(host: &HostState, outcome: &ServiceOutcome) -> Condition {
    let held = &outcome.held;
    let ok = held.serving() && host.error.is_none();
    let (reason, message) = match (&host.error, held.failure(), outcome.problems.first()) {
        (Some(_), _, _) => (
            "SyncFailed",
            format!(
                "{}: the last sync of this host's data plane failed and is being retried (the agent's log says why)",
                host.mode
            ),
        ),
        (None, Some((vip, m)), _) => ("NotProgrammed", format!("{vip}: {m}")),
        (None, None, p) if outcome.vips.is_empty() => ("NotProgrammed", p.map(|p| p.to_string()).unwrap_or_default()),
        (None, None, _) if !ok => ("NoServingBackends", format!("{}: {held}", host.mode)),
        (None, None, Some(p)) => ("PartlyProgrammed", format!("{}: {held}; {p}", host.mode)),
        (None, None, None) => ("Programmed", format!("{}: {held}", host.mode)),
    };
    Condition { ok, reason, message }
}

/// How long a new Service may be without ready endpoints before it is warned about:
/// its EndpointSlices are written by another controller, a moment after it.
pub(super) const NEW_SERVICE_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Was a Service created less than `NEW_SERVICE_GRACE` before `now`? (Unknown: no.)
pub(super) fn is_new(created: Option<Timestamp>, now: Timestamp) -> bool {
    let grace = NEW_SERVICE_GRACE.as_millis() as i64;
    created.is_some_and(|c| now.as_millisecond() - c.as_millisecond() < grace)
}

impl KubeReporter {
    fn condition_type(&self) -> String {
        format!("{CONDITION_PREFIX}{}", self.host_name)
    }

    /// One Service's status body (when it changed) and Events.
    pub(super) fn status(
        &mut self,
        key: &ServiceKey,
        writes: &mut Vec<(ServiceKey, Value, u64)>,
        events: &mut Vec<(ServiceKey, EventType, &'static str, String)>,
    ) {
        let Some(mut outcome) = self.outcomes.get(key).cloned() else { return };
        let created = self.source.lock().service(key).and_then(|s| s.created);
        if outcome.problems.contains(&ServiceProblem::NoReadyEndpoints) && is_new(created, Timestamp::now()) {
            // Its EndpointSlices usually come a moment after it: not a problem yet.
            outcome.problems.retain(|p| *p != ServiceProblem::NoReadyEndpoints);
            self.deferred.insert(key.clone());
        }
        for p in self.problems.update(key, &outcome.problems) {
            events.push((key.clone(), EventType::Warning, p.reason(), p.to_string()));
        }
        let c = condition(&self.host, &outcome);
        if c.ok && self.programmed.insert(key.clone()) {
            let vips: Vec<String> = outcome.vips.iter().map(ToString::to_string).collect();
            let note = format!("{}: {}", self.host.mode, vips.join(", "));
            events.push((key.clone(), EventType::Normal, "Programmed", note));
        } else if !c.ok {
            self.programmed.remove(key);
        }
        let ingress = if outcome.vips.is_empty() { None } else { outcome.address };
        let body = self.status_body(key, ingress, &c);
        let hash = hash_of(&body);
        if self.written.get(key) != Some(&hash) {
            writes.push((key.clone(), body, hash));
        }
    }

    fn status_body(&mut self, key: &ServiceKey, ingress: Option<IpAddr>, c: &Condition) -> Value {
        let status = if c.ok { "True" } else { "False" };
        let condition_type = self.condition_type();
        let since = self.since.entry(key.clone()).or_insert_with(|| (c.ok, Timestamp::now().to_string()));
        if since.0 != c.ok {
            *since = (c.ok, Timestamp::now().to_string());
        }
        let ingress: Vec<Value> =
            ingress.map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"})).into_iter().collect();
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": key.name, "namespace": key.namespace},
            "status": {
                "loadBalancer": {"ingress": ingress},
                "conditions": [{
                    "type": condition_type, "status": status, "reason": c.reason,
                    "message": c.message, "lastTransitionTime": since.1,
                }]
            }
        })
    }

    /// Server-side apply of our status fields, under this host's field manager.
    pub(super) async fn patch(&self, key: &ServiceKey, body: &Value) -> bool {
        let api: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
        let params = PatchParams::apply(&format!("lb-agent-{}", self.host_name)).force();
        match api.patch_status(&key.name, &params, &Patch::Apply(body)).await {
            Ok(_) => true,
            Err(e) => {
                warn!(service = %key, error = %e, "writing Service status");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::held::{Held, VipHeld};
    use super::*;
    use crate::dataplane::Programmed;

    fn host(error: Option<&str>) -> HostState {
        HostState { mode: "XDP native on eth0".into(), error: error.map(Into::into) }
    }

    fn served() -> ServiceOutcome {
        let vip = "192.0.2.100:80/tcp".parse().unwrap();
        let mut held = Held::default();
        held.vips.insert(vip, VipHeld::Programmed(Programmed { serving: 2, ramping: 1, ..Default::default() }));
        ServiceOutcome { address: Some("192.0.2.100".parse().unwrap()), vips: vec![vip], held, ..Default::default() }
    }

    #[test]
    fn a_new_service_gets_a_grace_for_its_endpoints() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let ago = |s: i64| Some(Timestamp::from_second(1_000_000 - s).unwrap());
        assert!(is_new(ago(0), now) && is_new(ago(9), now));
        assert!(!is_new(ago(10), now) && !is_new(ago(3600), now) && !is_new(None, now));
    }

    #[test]
    fn a_sync_error_is_not_copied_into_conditions() {
        let err = "cannot add address 224.0.0.1 to interface 2 (Service other/bad)";
        let c = condition(&host(Some(err)), &served());
        assert_eq!((c.ok, c.reason), (false, "SyncFailed"));
        assert!(!c.message.contains("224.0.0.1") && !c.message.contains("other/bad"), "{}", c.message);
        assert!(c.message.contains("XDP native on eth0"), "{}", c.message);
    }

    #[test]
    fn a_condition_names_only_its_own_problems() {
        let c = condition(&host(None), &served());
        assert_eq!(
            (c.ok, c.reason, c.message.as_str()),
            (
                true,
                "Programmed",
                "XDP native on eth0: 1 of 1 VIPs in the data plane; 2 backends serving (1 ramping up)"
            )
        );
        let mut partly = served();
        partly.problems.push(ServiceProblem::NoReadyEndpoints);
        let c = condition(&host(None), &partly);
        assert_eq!((c.ok, c.reason), (true, "PartlyProgrammed"));
        assert!(c.message.contains("no ready endpoints"), "{}", c.message);
        let none = ServiceOutcome { problems: vec![ServiceProblem::NoAddress], ..Default::default() };
        let c = condition(&host(None), &none);
        assert_eq!((c.ok, c.reason), (false, "NotProgrammed"));
        assert!(c.message.starts_with("no address requested"), "{}", c.message);
    }

    #[test]
    fn a_condition_says_what_the_data_plane_holds() {
        let vip = served().vips[0];
        let mut skipped = served();
        skipped.held.vips.insert(vip, VipHeld::Programmed(Programmed::default()));
        skipped.held.off_link = vec!["10.9.0.1".parse().unwrap()];
        let c = condition(&host(None), &skipped);
        assert_eq!((c.ok, c.reason), (false, "NoServingBackends"));
        assert!(c.message.contains("1 endpoints skipped"), "{}", c.message);
        let mut refused = served();
        refused.held.vips.insert(vip, VipHeld::Failed("no room for another VIP (capacity 64)".into()));
        let c = condition(&host(None), &refused);
        assert_eq!((c.ok, c.reason), (false, "NotProgrammed"));
        assert!(c.message.contains("capacity 64"), "{}", c.message);
    }
}

//! Events on Services, and which problems are new enough to deserve one.
//!
//! A problem is published once while it lasts, and again if it comes back after it was
//! fixed: the reporter keeps, per Service, the problems of its last outcome (not every
//! problem ever seen), so a fix forgets it.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::Api;
use tracing::warn;

use super::super::desired::{ServiceKey, ServiceProblem};
use super::{EventType, KubeReporter};

/// The problems each Service has now, as last published.
#[derive(Debug, Default)]
pub(super) struct Problems(BTreeMap<ServiceKey, BTreeSet<String>>);

impl Problems {
    /// Records `now` as the Service's problems and returns those it did not have before
    /// (new, or back after a fix): each deserves a Warning Event.
    pub(super) fn update<'a>(&mut self, key: &ServiceKey, now: &'a [ServiceProblem]) -> Vec<&'a ServiceProblem> {
        let texts: BTreeSet<String> = now.iter().map(ToString::to_string).collect();
        let before = self.0.remove(key).unwrap_or_default();
        let mut seen = BTreeSet::new();
        let fresh = now.iter().filter(|p| {
            let t = p.to_string();
            !before.contains(&t) && seen.insert(t)
        });
        let fresh = fresh.collect();
        if !texts.is_empty() {
            self.0.insert(key.clone(), texts);
        }
        fresh
    }

    /// A Service that is no longer ours: if it comes back, its problems are new again.
    pub(super) fn forget(&mut self, key: &ServiceKey) {
        self.0.remove(key);
    }
}

impl KubeReporter {
    /// Publishes an Event (events.k8s.io/v1) on a Service. Each is created as it is:
    /// the reporter only publishes what is new (a problem it did not have before, a state
    /// change), so no cache of past Events is kept for folding repeats into series.
    pub(super) async fn event(&self, key: &ServiceKey, type_: EventType, reason: &str, note: String) {
        let Some(regarding) = self.source.object_ref(key) else { return };
        let now = Timestamp::now();
        let n = self.events_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ev = K8sEvent {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}.{n:x}", key.name, now.as_nanosecond())),
                namespace: Some(key.namespace.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some("Program".into()),
            reason: Some(reason.into()),
            note: Some(note),
            regarding: Some(regarding),
            reporting_controller: Some("lb-agent".into()),
            reporting_instance: Some(self.host_name.clone()),
            type_: Some(match type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            ..Default::default()
        };
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &key.namespace);
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            warn!(service = %key, reason, error = %e, "publishing an Event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ServiceKey {
        ServiceKey { namespace: "ns".into(), name: name.into() }
    }

    #[test]
    fn a_problem_is_published_again_when_it_comes_back_after_a_fix() {
        let mut p = Problems::default();
        let bad = [ServiceProblem::BadAddress { value: "x".into() }];
        assert_eq!(p.update(&key("a"), &bad).len(), 1, "new: published");
        assert!(p.update(&key("a"), &bad).is_empty(), "still there: not again");
        assert!(p.update(&key("a"), &[]).is_empty(), "fixed");
        assert_eq!(p.update(&key("a"), &bad).len(), 1, "back after the fix: published again");
        // Another problem replacing it is new; the old one then is forgotten.
        let other = [ServiceProblem::NoAddress];
        assert_eq!(p.update(&key("a"), &other), vec![&other[0]]);
        assert_eq!(p.update(&key("a"), &bad).len(), 1);
    }

    #[test]
    fn problems_are_kept_per_service() {
        let mut p = Problems::default();
        let bad = [ServiceProblem::NoAddress];
        assert_eq!(p.update(&key("a"), &bad).len(), 1);
        assert_eq!(p.update(&key("b"), &bad).len(), 1, "b's problem is b's own");
        p.forget(&key("a"));
        assert_eq!(p.update(&key("a"), &bad).len(), 1, "a Service that left and came back starts afresh");
        assert!(p.update(&key("b"), &bad).is_empty());
    }

    #[test]
    fn a_problem_listed_twice_is_published_once() {
        let mut p = Problems::default();
        let twice = [ServiceProblem::NoReadyEndpoints, ServiceProblem::NoReadyEndpoints];
        assert_eq!(p.update(&key("a"), &twice).len(), 1);
    }
}

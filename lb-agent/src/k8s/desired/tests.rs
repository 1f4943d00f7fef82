use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use kube::ResourceExt;
use serde_json::json;

use super::*;
use crate::k8s::objects::{pod_progress, Selection};

fn svc(name: &str, created: &str, spec: serde_json::Value) -> Service {
    let mut spec = spec;
    spec["type"] = json!("LoadBalancer");
    if spec.get("loadBalancerClass").is_none() {
        spec["loadBalancerClass"] = json!(DEFAULT_CLASS);
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
        "spec": spec
    }))
    .unwrap()
}

fn slice(service: &str, family: &str, port: i32, endpoints: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": format!("{service}-{family}"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": family,
        "ports": [{"name": "", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints
    }))
    .unwrap()
}

fn ep(addr: &str, ready: bool, serving: bool, terminating: bool, pod: &str) -> serde_json::Value {
    json!({"addresses": [addr], "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
           "targetRef": {"kind": "Pod", "namespace": "default", "name": pod}})
}

fn pod(name: &str, progress: Option<&str>) -> PartialObjectMeta<Pod> {
    let labels = progress.map(|p| json!({"progress": p})).unwrap_or(json!({}));
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": labels}}))
        .unwrap()
}

fn sel() -> Selection {
    Selection { class: DEFAULT_CLASS.into(), default_class: false }
}

fn run(svcs: &[Service], slices: &[EndpointSlice], pods: &[PartialObjectMeta<Pod>]) -> State {
    let svcs: Vec<ServiceView> = svcs.iter().map(|s| ServiceView::new(s, &sel())).collect();
    let slices: Vec<SliceView> = slices.iter().map(SliceView::new).collect();
    let progress: HashMap<(String, String), Option<u32>> =
        pods.iter().map(|p| ((p.namespace().unwrap_or_default(), p.name_any()), pod_progress(p))).collect();
    State::compute(&svcs.iter().collect::<Vec<_>>(), &slices.iter().collect::<Vec<_>>(), |ns, name| {
        progress.get(&(ns.to_string(), name.to_string())).copied().flatten()
    })
}

fn vip(s: &str) -> Vip {
    s.parse().unwrap()
}

#[test]
fn endpoints_ready_draining_out_and_progress() {
    let s = svc("web", "2026-01-01T00:00:00Z", json!({"loadBalancerIP": "192.0.2.10", "ports": [{"port": 80}]}));
    let eps = json!([
        ep("10.0.0.1", true, true, false, "a"),
        ep("10.0.0.2", false, true, true, "b"),
        ep("10.0.0.3", false, false, true, "c"),
        ep("10.0.0.4", false, false, false, "d"),
    ]);
    let c = run(&[s], &[slice("web", "IPv4", 80, eps)], &[pod("a", Some("40")), pod("b", None)]);
    let spec = &c.desired.vips[&vip("192.0.2.10:80/tcp")];
    let got: Vec<(String, bool, Option<u32>)> =
        spec.backends.iter().map(|b| (b.addr.to_string(), b.draining, b.start_progress)).collect();
    assert_eq!(got, vec![("10.0.0.1".into(), false, Some(40)), ("10.0.0.2".into(), true, None)]);
    let pod = c.pod_of(&vip("192.0.2.10:80/tcp"), "10.0.0.1".parse().unwrap());
    assert_eq!(pod, Some(&("default".into(), "a".into())));
    assert!(c.services.values().all(|o| o.problems.is_empty()));
}

/// A table: (Service spec, endpoint port, problem it must report).
#[test]
fn problems_are_per_service() {
    let cases = [
        (json!({"ports": [{"port": 80}]}), 80, ServiceProblem::NoAddress),
        (
            json!({"loadBalancerIP": "nope", "ports": [{"port": 80}]}),
            80,
            ServiceProblem::BadAddress { value: "nope".into() },
        ),
        (
            json!({"loadBalancerIP": "192.0.2.10", "ports": [{"port": 80, "protocol": "SCTP"}]}),
            80,
            ServiceProblem::UnsupportedProtocol { port: 80, protocol: "SCTP".into() },
        ),
        (
            json!({"loadBalancerIP": "192.0.2.10", "ports": [{"port": 80}]}),
            8080,
            ServiceProblem::PortMismatch { port: 80, endpoint_port: 8080 },
        ),
    ];
    for (spec, ep_port, problem) in cases {
        let broken = svc("broken", "2026-01-01T00:00:00Z", spec);
        let good =
            svc("good", "2026-01-01T00:00:00Z", json!({"loadBalancerIP": "192.0.2.20", "ports": [{"port": 443}]}));
        let slices = [
            slice("broken", "IPv4", ep_port, json!([ep("10.0.0.1", true, true, false, "a")])),
            slice("good", "IPv4", 443, json!([ep("10.0.0.2", true, true, false, "b")])),
        ];
        let c = run(&[broken, good], &slices, &[]);
        let key = |n: &str| ServiceKey { namespace: "default".into(), name: n.into() };
        assert_eq!(c.services[&key("broken")].problems, vec![problem.clone()], "{problem}");
        assert!(c.services[&key("good")].problems.is_empty(), "the good Service is untouched by {problem}");
        assert_eq!(c.desired.vips[&vip("192.0.2.20:443/tcp")].backends.len(), 1);
    }
}

#[test]
fn older_service_keeps_a_contested_vip() {
    let old = svc("old", "2026-01-01T00:00:00Z", json!({"loadBalancerIP": "192.0.2.10", "ports": [{"port": 80}]}));
    let new = svc(
        "new",
        "2026-02-01T00:00:00Z",
        json!({"loadBalancerIP": "192.0.2.10", "ports": [{"port": 80}, {"port": 81}]}),
    );
    let slices = [
        slice("old", "IPv4", 80, json!([ep("10.0.0.1", true, true, false, "a")])),
        serde_json::from_value(json!({
            "metadata": {"name": "new-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "new"}},
            "addressType": "IPv4", "ports": [], "endpoints": [ep("10.0.0.2", true, true, false, "b")]
        }))
        .unwrap(),
    ];
    let c = run(&[new, old], &slices, &[]);
    assert_eq!(c.desired.vips[&vip("192.0.2.10:80/tcp")].backends[0].addr.to_string(), "10.0.0.1");
    let new_outcome = &c.services[&ServiceKey { namespace: "default".into(), name: "new".into() }];
    assert_eq!(new_outcome.vips, vec![vip("192.0.2.10:81/tcp")]);
    assert!(matches!(&new_outcome.problems[0], ServiceProblem::Conflict { owner, .. } if owner.name == "old"));
}

#[test]
fn class_affinity_ipv6_and_no_endpoints() {
    let mut other =
        svc("other", "2026-01-01T00:00:00Z", json!({"loadBalancerIP": "192.0.2.30", "ports": [{"port": 80}]}));
    other.spec.as_mut().unwrap().load_balancer_class = Some("someone-else".into());
    let v6 = svc(
        "v6",
        "2026-01-01T00:00:00Z",
        json!({"ports": [{"port": 53, "protocol": "UDP"}], "sessionAffinity": "ClientIP",
               "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}),
    );
    let mut v6 = v6;
    v6.metadata.annotations = Some([(ADDRESS_ANNOTATION.to_string(), "2001:db8::10".to_string())].into());
    let mut s6: EndpointSlice = slice("v6", "IPv6", 53, json!([ep("2001:db8::2", true, true, false, "x")]));
    s6.ports.as_mut().unwrap()[0].protocol = Some("UDP".into());
    let lonely =
        svc("lonely", "2026-01-01T00:00:00Z", json!({"loadBalancerIP": "192.0.2.40", "ports": [{"port": 80}]}));
    let c = run(&[other, v6, lonely], &[s6], &[]);
    assert!(!c.services.contains_key(&ServiceKey { namespace: "default".into(), name: "other".into() }));
    let spec = &c.desired.vips[&vip("[2001:db8::10]:53/udp")];
    assert_eq!((spec.affinity_timeout_s, spec.backends.len()), (600, 1));
    let lonely = &c.services[&ServiceKey { namespace: "default".into(), name: "lonely".into() }];
    assert_eq!(lonely.problems, vec![ServiceProblem::NoReadyEndpoints]);
    assert!(c.desired.vips[&vip("192.0.2.40:80/tcp")].backends.is_empty());
}

fn key(n: &str) -> ServiceKey {
    ServiceKey { namespace: "default".into(), name: n.into() }
}

/// Updating one Service at a time gives what computing everything at once gives, and
/// says exactly which VIPs and Services changed.
#[test]
fn incremental_updates_match_a_full_compute() {
    let old = svc("old", "2026-01-01T00:00:00Z", json!({"loadBalancerIP": "192.0.2.10", "ports": [{"port": 80}]}));
    let new = svc(
        "new",
        "2026-02-01T00:00:00Z",
        json!({"loadBalancerIP": "192.0.2.10", "ports": [{"port": 80}, {"port": 81}]}),
    );
    let other = svc("other", "2026-01-01T00:00:00Z", json!({"loadBalancerIP": "192.0.2.20", "ports": [{"port": 80}]}));
    let mk = |service: &str, addr: &str| slice(service, "IPv4", 80, json!([ep(addr, true, true, false, "p")]));
    let mut for_new = mk("new", "10.0.0.2");
    // No port in the slice: the endpoints serve both of "new"'s ports.
    for_new.ports = None;
    let slices = [mk("old", "10.0.0.1"), for_new, mk("other", "10.0.0.3")];
    let view = |s: &Service| ServiceView::new(s, &sel());
    let sv: Vec<SliceView> = slices.iter().map(SliceView::new).collect();
    let none = |_: &str, _: &str| None;
    let mut state = State::default();
    let mut up = Update::default();
    state.update(&key("new"), Some(&view(&new)), &[&sv[1]], &none, &mut up);
    // Alone, "new" owns both of its VIPs.
    assert_eq!(state.services[&key("new")].vips.len(), 2);
    state.update(&key("other"), Some(&view(&other)), &[&sv[2]], &none, &mut up);
    let mut up = Update::default();
    state.update(&key("old"), Some(&view(&old)), &[&sv[0]], &none, &mut up);
    // The older Service takes :80 from "new"; "other" is not touched.
    assert_eq!(up.vips, BTreeSet::from([vip("192.0.2.10:80/tcp")]));
    assert_eq!(up.services, BTreeSet::from([key("old"), key("new")]));
    let full = run(&[old.clone(), new.clone(), other.clone()], &slices, &[]);
    assert_eq!(state.desired, full.desired);
    assert_eq!(state.services, full.services);

    // An EndpointSlice change touches its VIP and Service only; a repeat touches nothing.
    let changed = SliceView::new(&mk("other", "10.0.0.9"));
    let mut up = Update::default();
    state.update(&key("other"), Some(&view(&other)), &[&changed], &none, &mut up);
    assert_eq!(up.vips, BTreeSet::from([vip("192.0.2.20:80/tcp")]));
    assert!(up.services.is_empty(), "the outcome (VIPs, problems) did not change");
    let mut up = Update::default();
    state.update(&key("other"), Some(&view(&other)), &[&changed], &none, &mut up);
    assert!(up.is_empty());

    // Deleting the older Service gives :80 back to "new".
    let mut up = Update::default();
    state.update(&key("old"), None, &[], &none, &mut up);
    assert_eq!(state.desired.vips[&vip("192.0.2.10:80/tcp")].backends[0].addr.to_string(), "10.0.0.2");
    assert_eq!(up.services, BTreeSet::from([key("old"), key("new")]));
    assert!(!state.services.contains_key(&key("old")));
    assert!(state.services[&key("new")].problems.is_empty());
}

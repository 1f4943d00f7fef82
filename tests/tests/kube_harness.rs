//! The Kubernetes test harness itself (`lb_tests::kube`): a real kube-apiserver + etcd on
//! 127.0.0.1 stores a LoadBalancer Service, takes its status through the status
//! subresource, mints ServiceAccount tokens that RBAC denies until a binding allows them,
//! and keeps everything across an API server stop and restart.
//!
//! Skips (recorded) without root, like the rest of the suite, and when the binaries are
//! missing, except under CI=true, where missing binaries fail: `cargo xtask setup` builds them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::ObjectMeta;
use lb_tests::kube::ApiServer;
use serde_json::json;

const NS: &str = "lb-harness";

/// Whether the test must skip because the binaries are missing (never under CI=true).
fn assets_missing(test: &str) -> bool {
    match lb_tests::kube::assets_dir() {
        Ok(_) => false,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("CI=true and {e:#}"),
        Err(e) => {
            lb_tests::record_skip(test, &format!("{e:#}"));
            true
        }
    }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), ..Default::default() }
}

/// The HTTP code of a failed call (0 when it did not fail with an API status).
fn code<T: std::fmt::Debug>(r: &kube::Result<T>) -> u16 {
    match r {
        Err(kube::Error::Api(s)) => s.code,
        _ => 0,
    }
}

fn ingress_ips(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| i.iter().filter_map(|x| x.ip.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_stores_services_status_denies_tokens_and_survives_restart() {
    let test = "apiserver_stores_services_status_denies_tokens_and_survives_restart";
    if lb_tests::skip(test) || assets_missing(test) {
        return;
    }
    let t = Instant::now();
    let mut api = ApiServer::start().await.expect("etcd + kube-apiserver start");
    eprintln!(
        "kube: etcd + kube-apiserver ready in {:.2?} (kube-apiserver alone {:.2?}) at {}",
        t.elapsed(),
        api.last_start(),
        api.url()
    );
    let client = api.client();
    let pp = PostParams::default();

    // A namespace and a LoadBalancer Service.
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(&pp, &Namespace { metadata: meta(NS), ..Default::default() }).await.expect("create namespace");
    let svcs: Api<Service> = Api::namespaced(client.clone(), NS);
    let svc = Service {
        metadata: meta("web"),
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            selector: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::Int(8080)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = svcs.create(&pp, &svc).await.expect("create Service");
    let uid = created.metadata.uid.clone().expect("a stored object has a uid");

    let got = svcs.get("web").await.expect("read the Service back");
    let spec = got.spec.as_ref().expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(got.metadata.uid.as_deref(), Some(uid.as_str()));
    let port = &spec.ports.as_ref().expect("ports")[0];
    assert_eq!((port.port, port.target_port.clone()), (80, Some(IntOrString::Int(8080))));
    // The API server allocated a ClusterIP from the configured range and a NodePort.
    let cluster_ip: std::net::Ipv4Addr = spec.cluster_ip.as_deref().expect("clusterIP allocated").parse().unwrap();
    assert_eq!(cluster_ip.octets()[..2], [10, 96], "clusterIP {cluster_ip} in 10.96.0.0/16");
    let node_port = port.node_port.expect("a LoadBalancer Service gets a nodePort");
    assert!((30000..=32767).contains(&node_port), "nodePort {node_port}");
    assert!(ingress_ips(&got).is_empty(), "no ingress before anyone writes it: {:?}", got.status);

    // status.loadBalancer.ingress through the status subresource...
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.100"}]}}});
    let patched =
        svcs.patch_status("web", &PatchParams::default(), &Patch::Merge(&status)).await.expect("patch status");
    assert_eq!(ingress_ips(&patched), ["192.0.2.100"]);
    assert_eq!(ingress_ips(&svcs.get("web").await.unwrap()), ["192.0.2.100"], "status read back");
    // ...and only through it: the main resource ignores a status change.
    let other = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.200"}]}}});
    svcs.patch("web", &PatchParams::default(), &Patch::Merge(&other)).await.expect("patch the main resource");
    assert_eq!(ingress_ips(&svcs.get("web").await.unwrap()), ["192.0.2.100"], "status unchanged via main resource");

    // A ServiceAccount token authenticates (403, not 401) but RBAC grants it nothing...
    let token = api.service_account_token(NS, "lb-agent").await.expect("mint a ServiceAccount token");
    let as_sa: Api<Service> = Api::namespaced(api.client_for_token(&token), NS);
    let denied = as_sa.list(&ListParams::default()).await;
    assert_eq!(code(&denied), 403, "list Services as the ServiceAccount without RBAC: {denied:?}");
    let Err(kube::Error::Api(s)) = &denied else { unreachable!() };
    assert!(s.message.contains("system:serviceaccount:lb-harness:lb-agent"), "names the user: {}", s.message);
    // The same through a kubeconfig file, as the agent binary would be run.
    let kubeconfig = Kubeconfig::read_from(api.kubeconfig(&token)).expect("read the written kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    let via_file: Api<Service> = Api::namespaced(kube::Client::try_from(config).unwrap(), NS);
    let denied = via_file.get("web").await;
    assert_eq!(code(&denied), 403, "get the Service via the kubeconfig: {denied:?}");
    // An unknown token is not authenticated at all.
    let bogus: Api<Service> = Api::namespaced(api.client_for_token("not-a-token"), NS);
    let r = bogus.list(&ListParams::default()).await;
    assert_eq!(code(&r), 401, "an unknown token: {r:?}");

    // ...until a Role and a RoleBinding allow it.
    let role = Role {
        metadata: meta("lb-agent"),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["services".into()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(client.clone(), NS).create(&pp, &role).await.expect("create Role");
    let binding = RoleBinding {
        metadata: meta("lb-agent"),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "lb-agent".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "lb-agent".into(),
            namespace: Some(NS.into()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(client.clone(), NS).create(&pp, &binding).await.expect("create RoleBinding");
    let deadline = Instant::now() + Duration::from_secs(10);
    let allowed = loop {
        // The authorizer sees new bindings through its informer: shortly, not at once.
        match as_sa.list(&ListParams::default()).await {
            Ok(list) => break list,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(code(&Err::<(), _>(e)), 403);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("still denied 10 s after the RoleBinding: {e}"),
        }
    };
    assert_eq!(allowed.items.iter().filter_map(|s| s.metadata.name.as_deref()).collect::<Vec<_>>(), ["web"]);
    let r = as_sa.patch_status("web", &PatchParams::default(), &Patch::Merge(&status)).await;
    assert_eq!(code(&r), 403, "the Role does not allow writing status: {r:?}");

    // Stop the API server: calls fail; etcd keeps the data.
    let t = Instant::now();
    api.stop();
    eprintln!("kube: kube-apiserver stopped in {:.2?}", t.elapsed());
    assert!(!api.is_running());
    let r = svcs.get("web").await;
    assert!(r.is_err(), "no API server, no answer: {r:?}");

    api.restart().await.expect("restart kube-apiserver");
    eprintln!("kube: kube-apiserver restarted, ready in {:.2?}", api.last_start());
    // The clients made before the restart work again (same port, CA and tokens).
    let after = svcs.get("web").await.expect("the Service after the restart");
    assert_eq!(after.metadata.uid.as_deref(), Some(uid.as_str()), "the same object, kept by etcd");
    assert_eq!(ingress_ips(&after), ["192.0.2.100"], "its status too");
    let list = as_sa.list(&ListParams::default()).await.expect("the ServiceAccount token after the restart");
    assert_eq!(list.items.len(), 1);
}

//! Shared steps of the Kubernetes tests (tests/tests/kube*.rs): the deploy/ manifests,
//! an agent running as their ServiceAccount, the objects a test writes (namespaces, pods,
//! Services, EndpointSlices) and what it reads back (the maps, Events).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde::Deserialize as _;
use serde_json::json;

use super::ApiServer;
use crate::agent::{Agent, PinnedMaps};
use crate::lab::{backend_addrs, Lab, VIP4};
use crate::servers::{TCP_PORT, UDP_PORT};

/// Whether a Kubernetes test must skip (and why, printed and recorded): no privileges,
/// or no kube-apiserver/etcd assets. In CI (`CI` set) missing assets are no reason to
/// skip: the test runs and fails, naming what is missing.
pub fn skip_kube(test: &str) -> bool {
    if crate::skip(test) {
        return true;
    }
    match super::assets_dir() {
        Err(e) if std::env::var_os("CI").is_none() => {
            crate::record_skip(test, &e.to_string());
            true
        }
        _ => false,
    }
}

/// Runs the future `f` makes on a current-thread runtime on a thread inside network
/// namespace `ns` (the future is made there, so it need not be `Send`).
pub fn block_on_in<T: Send, Fut: Future<Output = T>>(ns: &str, f: impl FnOnce() -> Fut + Send) -> T {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns");
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only.
            assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f())
        })
        .join()
        .expect("test thread")
    })
}

/// Applies `deploy/namespace.yaml` and `deploy/rbac.yaml` exactly as shipped.
pub async fn apply_deploy(client: &Client) -> Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    let pp = PatchParams::apply("lb-tests").force();
    for file in ["namespace.yaml", "rbac.yaml"] {
        let text = std::fs::read_to_string(format!("{root}/{file}"))?;
        let docs = serde_yaml::Deserializer::from_str(&text)
            .map(|d| Ok(serde_yaml::from_value::<serde_json::Value>(serde_yaml::Value::deserialize(d)?)?))
            .collect::<Result<Vec<_>>>()?;
        for v in docs {
            let name = v["metadata"]["name"].as_str().context("name")?.to_string();
            let ns = v["metadata"]["namespace"].as_str().unwrap_or("lb-system").to_string();
            match v["kind"].as_str() {
                Some("Namespace") => {
                    drop(Api::<Namespace>::all(client.clone()).patch(&name, &pp, &Patch::Apply(&v)).await?)
                }
                Some("ServiceAccount") => drop(
                    Api::<ServiceAccount>::namespaced(client.clone(), &ns).patch(&name, &pp, &Patch::Apply(&v)).await?,
                ),
                Some("ClusterRole") => {
                    drop(Api::<ClusterRole>::all(client.clone()).patch(&name, &pp, &Patch::Apply(&v)).await?)
                }
                Some("ClusterRoleBinding") => {
                    drop(Api::<ClusterRoleBinding>::all(client.clone()).patch(&name, &pp, &Patch::Apply(&v)).await?)
                }
                other => anyhow::bail!("unexpected kind {other:?} in {file}"),
            }
        }
    }
    Ok(())
}

/// Starts the agent as the deploy/ ServiceAccount (a kubeconfig with its token).
pub async fn start_agent(api: &ApiServer, lab: &Lab, extra: &[&str]) -> Result<Agent> {
    let token = api.service_account_token("lb-system", "lb-agent").await?;
    let kubeconfig = api.kubeconfig(&token);
    let kc = kubeconfig.to_string_lossy().to_string();
    let mut args = vec!["--kubeconfig", kc.as_str(), "--node-name", "lbtest", "--metrics-addr", "off"];
    args.extend_from_slice(extra);
    Agent::start_kube(lab, &args)
}

/// A namespace with its `default` ServiceAccount (no controller-manager makes it here).
pub async fn namespace(client: &Client, name: &str) -> Result<()> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    Api::<ServiceAccount>::namespaced(client.clone(), name).create(&PostParams::default(), &sa).await?;
    Ok(())
}

/// Pods stand for the backends' metadata (labels, the `progress` label).
pub async fn pods(client: &Client, progress: &BTreeMap<usize, &str>, count: usize) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "web");
    for i in 0..count {
        let labels = progress.get(&i).map(|p| json!({"app": "echo", "progress": p})).unwrap_or(json!({"app": "echo"}));
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("b{i}"), "labels": labels},
            "spec": {"containers": [{"name": "echo", "image": "echo"}]}
        }))?;
        api.create(&PostParams::default(), &pod).await?;
    }
    Ok(())
}

pub fn service(name: &str, address: &str, ports: serde_json::Value) -> Result<Service> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": "lb-agent.io/xdp", "loadBalancerIP": address, "ports": ports}
    }))?)
}

/// An endpoint of backend `i`: (ready, serving, terminating).
pub fn endpoint(i: usize, state: (bool, bool, bool)) -> serde_json::Value {
    json!({"addresses": [backend_addrs(i).0.to_string()],
           "conditions": {"ready": state.0, "serving": state.1, "terminating": state.2},
           "targetRef": {"kind": "Pod", "namespace": "web", "name": format!("b{i}")}})
}

pub async fn put_slice(client: &Client, service: &str, endpoints: Vec<serde_json::Value>) -> Result<()> {
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "tcp", "port": TCP_PORT, "protocol": "TCP"}, {"name": "udp", "port": UDP_PORT, "protocol": "UDP"}],
        "endpoints": endpoints
    }))?;
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "web");
    api.patch(&format!("{service}-1"), &PatchParams::apply("lb-tests").force(), &Patch::Apply(&slice)).await?;
    Ok(())
}

/// Polls until `f` holds; returns how long it took.
pub async fn until<F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let start = Instant::now();
    loop {
        if f().await? {
            return Ok(start.elapsed());
        }
        ensure!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn active_backends(agent: &Agent) -> Result<Vec<IpAddr>> {
    let Ok(m) = PinnedMaps::open(&agent.pin_dir) else { return Ok(vec![]) };
    let mut v: Vec<IpAddr> = m
        .backend_list()?
        .iter()
        .filter(|(_, b)| b.flags & lb_common::BACKEND_F_DRAINING == 0)
        .map(|(_, b)| lb_agent::model::addr_from_bytes(b.family, &b.addr))
        .collect();
    v.sort();
    v.dedup();
    Ok(v)
}

pub fn addrs(list: &[usize]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = list.iter().map(|i| backend_addrs(*i).0).collect();
    v.sort();
    v
}

/// Warning Events of a Service, by reason.
pub async fn event_reasons(client: &Client, service: &str) -> Result<Vec<String>> {
    let events: Api<Event> = Api::namespaced(client.clone(), "web");
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(service))
        .filter_map(|e| e.reason)
        .collect())
}

pub fn vip_sock(port: u16) -> SocketAddr {
    SocketAddr::new(VIP4.parse().unwrap(), port)
}

/// This host's condition on a Service (`lb-agent.io/Programmed-lbtest`), as JSON.
pub async fn condition(services: &Api<Service>, name: &str) -> Result<serde_json::Value> {
    let st = serde_json::to_value(services.get(name).await?.status.unwrap_or_default())?;
    let list = st["conditions"].as_array().cloned().unwrap_or_default();
    Ok(list.into_iter().find(|c| c["type"] == "lb-agent.io/Programmed-lbtest").unwrap_or_default())
}

/// Compacts etcd's whole history up to now (through its JSON gateway: the kube assets
/// have no etcdctl), so no resourceVersion a watch held stays valid: a resume gets 410
/// Gone and must relist. Returns the revision compacted to.
pub fn compact_etcd(etcd_url: &str) -> Result<u64> {
    let host = etcd_url.strip_prefix("http://").context("etcd URL is plain http")?.to_string();
    let post = |path: &str, body: &str| -> Result<serde_json::Value> {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(&host).with_context(|| format!("connecting to etcd at {host}"))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        c.write_all(format!("{head}{body}").as_bytes())?;
        let mut text = String::new();
        c.read_to_string(&mut text)?;
        let (status, rest) = text.split_once("\r\n").context("etcd's status line")?;
        ensure!(status.contains(" 200 "), "etcd {path}: {status}: {rest}");
        let body = rest.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        serde_json::from_str(body).with_context(|| format!("etcd {path} answered {body:?}"))
    };
    // Any key: the answer's header carries the current revision. "/" is "Lw==".
    let range = post("/v3/kv/range", r#"{"key":"Lw==","limit":1}"#)?;
    let revision: u64 =
        range["header"]["revision"].as_str().context("revision in etcd's answer")?.parse().context("revision")?;
    post("/v3/kv/compaction", &format!(r#"{{"revision":"{revision}","physical":true}}"#))?;
    Ok(revision)
}

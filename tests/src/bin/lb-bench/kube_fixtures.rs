//! The Kubernetes benchmark's objects: Services, EndpointSlices, the deploy/ RBAC,
//! the neighbour entries of the 100,000 backends.

use std::fmt::Write as _;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use lb_agent::k8s::desired::DEFAULT_CLASS;
use lb_agent::model::{Protocol, Vip};

use lb_tests::lab::Lab;
use lb_tests::netns::ip;
use serde::Deserialize as _;
use serde_json::{json, Value};

use crate::kube::*;

/// VIP of Service `i`.
pub(crate) fn vip(i: usize) -> Vip {
    let addr = Ipv4Addr::new(198, 51, 100, 1 + (i / PORTS_PER_ADDR) as u8);
    Vip { addr: IpAddr::V4(addr), port: (FIRST_PORT + i % PORTS_PER_ADDR) as u16, proto: Protocol::Tcp }
}

/// Address of endpoint `n` (0-based over all Services).
pub(crate) fn backend(n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::from(BACKEND_NET)) + BACKEND_OFFSET + n as u32)
}

pub(crate) fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

pub(crate) fn service(i: usize) -> Result<Service> {
    let v = vip(i);
    Ok(serde_json::from_value(json!({
        "metadata": {"name": service_name(i)},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": DEFAULT_CLASS,
            "loadBalancerIP": v.addr.to_string(),
            // 10,000 LoadBalancer Services cannot all have node ports (30000-32767).
            "allocateLoadBalancerNodePorts": false,
            "ports": [{"name": "tcp", "port": v.port, "protocol": "TCP"}]
        }
    }))?)
}

/// Service `i`'s endpoints; `not_ready` marks one of them not ready (and not serving).
pub(crate) fn endpoints(i: usize, not_ready: Option<usize>) -> Value {
    let list: Vec<Value> = (0..PER_SERVICE)
        .map(|j| {
            let ready = not_ready != Some(j);
            json!({"addresses": [backend(i * PER_SERVICE + j).to_string()],
                   "conditions": {"ready": ready, "serving": ready, "terminating": false}})
        })
        .collect();
    Value::Array(list)
}

pub(crate) fn slice(i: usize) -> Result<EndpointSlice> {
    let name = service_name(i);
    Ok(serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-1"), "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "tcp", "port": vip(i).port, "protocol": "TCP"}],
        "endpoints": endpoints(i, None)
    }))?)
}

/// Runs the future `f` makes on a current-thread runtime on a thread inside network
/// namespace `ns`, allowed on every CPU (the benchmark's main thread is pinned to one,
/// and the API server, etcd and the agent started from this thread inherit its mask).
pub(crate) fn block_on_in<T: Send, Fut: Future<Output = Result<T>>>(
    ns: &str,
    f: impl FnOnce() -> Fut + Send,
) -> Result<T> {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).with_context(|| format!("opening netns {ns}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            unpin_thread()?;
            // SAFETY: setns on this thread only; the fd is valid for the call.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the Kubernetes benchmark thread panicked"))?
    })
}

/// Lets the calling thread run on every CPU.
pub(crate) fn unpin_thread() -> Result<()> {
    // SAFETY: the cpu_set_t is zeroed, filled with CPU_SET and passed with its size; the
    // kernel ignores CPUs that do not exist.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}

/// Applies `deploy/namespace.yaml` and `deploy/rbac.yaml` exactly as shipped.
pub(crate) async fn apply_deploy(client: &Client) -> Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    let pp = PatchParams::apply("lb-bench").force();
    for file in ["namespace.yaml", "rbac.yaml"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).with_context(|| format!("reading {file}"))?;
        let docs = serde_yaml::Deserializer::from_str(&text)
            .map(|d| Ok(serde_yaml::from_value::<Value>(serde_yaml::Value::deserialize(d)?)?))
            .collect::<Result<Vec<_>>>()?;
        for v in docs {
            let name = v["metadata"]["name"].as_str().context("name")?.to_string();
            let ns = v["metadata"]["namespace"].as_str().unwrap_or("lb-system").to_string();
            let patch = Patch::Apply(&v);
            match v["kind"].as_str() {
                Some("Namespace") => drop(Api::<Namespace>::all(client.clone()).patch(&name, &pp, &patch).await?),
                Some("ServiceAccount") => {
                    drop(Api::<ServiceAccount>::namespaced(client.clone(), &ns).patch(&name, &pp, &patch).await?)
                }
                Some("ClusterRole") => drop(Api::<ClusterRole>::all(client.clone()).patch(&name, &pp, &patch).await?),
                Some("ClusterRoleBinding") => {
                    drop(Api::<ClusterRoleBinding>::all(client.clone()).patch(&name, &pp, &patch).await?)
                }
                other => bail!("unexpected kind {other:?} in {file}"),
            }
        }
    }
    Ok(())
}

/// Whether an API error is worth retrying (throttled, server busy, connection trouble).
pub(crate) fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => matches!(s.code, 429 | 500 | 502 | 503 | 504),
        _ => true,
    }
}

/// Creates an object, retrying transient errors; an object that already exists is fine.
pub(crate) async fn create<K>(api: &Api<K>, obj: &K) -> Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let mut attempt = 0;
    loop {
        match api.create(&PostParams::default(), obj).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => return Ok(()),
            Err(e) if attempt < 8 && transient(&e) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("creating {}", obj.meta().name.clone().unwrap_or_default()))
            }
        }
    }
}

/// The Services and their EndpointSlices, `IN_FLIGHT` requests at a time.
pub(crate) async fn create_objects(client: &Client) -> Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (next, client) = (next.clone(), client.clone());
        tasks.spawn(async move {
            let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
            let slices: Api<EndpointSlice> = Api::namespaced(client, NAMESPACE);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= SERVICES {
                    return Ok::<(), anyhow::Error>(());
                }
                create(&services, &service(i)?).await?;
                create(&slices, &slice(i)?).await?;
                if (i + 1) % 2_000 == 0 {
                    eprintln!("lb-bench: kube: {} of {SERVICES} Services and EndpointSlices created", i + 1);
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("a creating task")??;
    }
    Ok(())
}

/// Writes 100,000 PERMANENT neighbour entries on the LB's eth0 with one `ip -batch`.
pub(crate) fn neighbours(lab: &Lab) -> Result<()> {
    let path = std::env::temp_dir().join(format!("{}-neigh.batch", lab.prefix));
    let mut text = String::with_capacity(SERVICES * PER_SERVICE * 80);
    for n in 0..SERVICES * PER_SERVICE {
        let [_, a, b, c] = (n as u32).to_be_bytes();
        let _ = writeln!(
            text,
            "neigh replace {} lladdr 02:be:00:{a:02x}:{b:02x}:{c:02x} dev eth0 nud permanent",
            backend(n)
        );
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let result = ip(&lab.lb(), &["-batch", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
    result?;
    let listed = ip(&lab.lb(), &["neigh", "show", "dev", "eth0", "nud", "permanent"])?;
    let count = listed.lines().count();
    ensure!(count >= SERVICES * PER_SERVICE, "only {count} PERMANENT neighbour entries after ip -batch");
    Ok(())
}

//! Watching Services, EndpointSlices and pod metadata into local caches (kube-runtime
//! reflectors). Nothing is computed before every cache has finished its first list, so
//! an empty cache can never delete a VIP; a watch error keeps the last state and the
//! watcher retries with backoff.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::Notify;
use tracing::warn;

use super::desired::{self, Computed, Selection};

/// Which objects to watch.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// Only this namespace (all namespaces when `None`).
    pub namespace: Option<String>,
    /// Label selector for Services (e.g. `app=web`).
    pub service_selector: Option<String>,
    pub selection: Selection,
}

pub struct KubeSource {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<PartialObjectMeta<Pod>>,
    selection: Selection,
    /// Notified on every change of any cache.
    pub changed: Arc<Notify>,
}

fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// What the agent reads of an object, as a digest: an event that leaves it unchanged
/// (the agent's own status writes, resyncs) wakes nobody.
fn digest<T: serde::Serialize>(parts: &T) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(parts).unwrap_or_default().hash(&mut h);
    h.finish()
}

fn service_digest(s: &Service) -> u64 {
    digest(&(&s.spec, &s.metadata.labels, &s.metadata.annotations))
}

fn slice_digest(s: &EndpointSlice) -> u64 {
    digest(&(&s.endpoints, &s.ports, &s.address_type, &s.metadata.labels))
}

fn pod_digest(p: &PartialObjectMeta<Pod>) -> u64 {
    digest(&p.metadata.labels)
}

/// Drops what the agent never reads before it reaches the cache (memory).
fn slim_meta(m: &mut kube::api::ObjectMeta) {
    m.managed_fields = None;
}

/// Runs a reflector for `K` in the background; returns its store. `slim` trims each
/// object before it is stored; `changed` is notified when an object's `digest` changed,
/// an object was deleted, or a (re)list completed.
fn reflect<K, S>(
    stream: S,
    what: &'static str,
    slim: fn(&mut K),
    digest: fn(&K) -> u64,
    changed: Arc<Notify>,
) -> Store<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + Send + Sync + serde::de::DeserializeOwned + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, stream.modify(slim).default_backoff());
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        let mut seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        let key = |o: &K| {
            format!("{}/{}", o.meta().namespace.as_deref().unwrap_or(""), o.meta().name.as_deref().unwrap_or(""))
        };
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => {
                    let d = digest(&o);
                    if seen.insert(key(&o), d) != Some(d) {
                        changed.notify_one();
                    }
                }
                Ok(watcher::Event::Delete(o)) => {
                    seen.remove(&key(&o));
                    changed.notify_one();
                }
                Ok(_) => changed.notify_one(),
                Err(e) => warn!(what, error = %e, "watch error; keeping the last state and retrying"),
            }
        }
    });
    store
}

impl KubeSource {
    /// Starts the watches (they run until the process ends).
    pub fn start(client: &Client, opts: &WatchOptions) -> KubeSource {
        let changed = Arc::new(Notify::new());
        let mut svc_cfg = watcher::Config::default();
        if let Some(sel) = &opts.service_selector {
            svc_cfg = svc_cfg.labels(sel);
        }
        let services = reflect(
            watcher(api::<Service>(client, &opts.namespace), svc_cfg),
            "Services",
            |s: &mut Service| {
                slim_meta(&mut s.metadata);
                s.status = None;
            },
            service_digest,
            changed.clone(),
        );
        let slices = reflect(
            watcher(api::<EndpointSlice>(client, &opts.namespace), watcher::Config::default()),
            "EndpointSlices",
            |s: &mut EndpointSlice| slim_meta(&mut s.metadata),
            slice_digest,
            changed.clone(),
        );
        // Metadata only: labels are all we need of pods.
        let pod_api = api::<PartialObjectMeta<Pod>>(client, &opts.namespace);
        let pods = reflect(
            watcher(pod_api, watcher::Config::default()),
            "Pods",
            |p: &mut PartialObjectMeta<Pod>| slim_meta(&mut p.metadata),
            pod_digest,
            changed.clone(),
        );
        KubeSource { services, slices, pods, selection: opts.selection.clone(), changed }
    }

    /// Waits until every cache has its first complete list.
    pub async fn ready(&self) {
        let _ = self.services.wait_until_ready().await;
        let _ = self.slices.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
    }

    /// The wanted state from the caches as they are now.
    pub fn compute(&self) -> Computed {
        let (s, e, p) = (self.services.state(), self.slices.state(), self.pods.state());
        desired::compute(
            &s.iter().map(|x| x.as_ref()).collect::<Vec<_>>(),
            &e.iter().map(|x| x.as_ref()).collect::<Vec<_>>(),
            &p.iter().map(|x| x.as_ref()).collect::<Vec<_>>(),
            &self.selection,
        )
    }

    /// A Service from the cache.
    pub fn service(&self, key: &desired::ServiceKey) -> Option<Arc<Service>> {
        self.services.get(&reflector::ObjectRef::new(&key.name).within(&key.namespace))
    }

    /// A pod's metadata from the cache.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Arc<PartialObjectMeta<Pod>>> {
        self.pods.get(&reflector::ObjectRef::new(name).within(namespace))
    }
}

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

/// Runs a reflector for `K` in the background; returns its store.
fn reflect<K, S>(stream: S, what: &'static str, changed: Arc<Notify>) -> Store<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + Send + Sync + serde::de::DeserializeOwned + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, stream.default_backoff());
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
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
        let services = reflect(watcher(api::<Service>(client, &opts.namespace), svc_cfg), "Services", changed.clone());
        let slices = reflect(
            watcher(api::<EndpointSlice>(client, &opts.namespace), watcher::Config::default()),
            "EndpointSlices",
            changed.clone(),
        );
        // Metadata only: labels are all we need of pods.
        let pod_api = api::<PartialObjectMeta<Pod>>(client, &opts.namespace);
        let pods = reflect(watcher(pod_api, watcher::Config::default()), "Pods", changed.clone());
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

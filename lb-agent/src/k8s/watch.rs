//! Watching Services, EndpointSlices and pod metadata into one local cache of compact
//! projections (`objects`), with the Services to recompute marked as events arrive.
//!
//! * Nothing is computed before every watch has finished its first list, so an empty
//!   cache can never delete a VIP.
//! * A watch error keeps the last state; the watcher retries with a short, capped,
//!   jittered backoff (`Retry`). kube's default grows to 30 s and is only reset by an
//!   event, so after an API server outage the resume failed (its resourceVersion had
//!   expired: 410 Gone) after up to 30 s and the relist waited up to 30 s more: a change
//!   took ~1 minute to reach the maps. With `Retry` a change made once the API server is
//!   back reaches the maps within ~2 s. A relist replaces a collection and marks exactly
//!   the Services whose objects differ.
//! * An event that changes nothing the agent reads (its own status writes, resyncs)
//!   marks nothing and wakes nobody.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::desired::{ServiceKey, State};
use super::objects::{pod_progress, Selection, ServiceView, SliceView};

mod retry;
use retry::Retry;

/// Which objects to watch.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// Only this namespace (all namespaces when `None`).
    pub namespace: Option<String>,
    /// Label selector for Services (e.g. `app=web`).
    pub service_selector: Option<String>,
    pub selection: Selection,
}

type ObjectKey = (String, String);

/// What the watches have seen.
#[derive(Default)]
pub struct Cache {
    services: HashMap<ServiceKey, ServiceView>,
    slices: HashMap<ObjectKey, SliceView>,
    /// Service -> names of its EndpointSlices (in the Service's namespace).
    by_service: HashMap<ServiceKey, BTreeSet<String>>,
    /// Pod -> its `progress` label.
    pods: HashMap<ObjectKey, Option<u32>>,
    /// Services whose objects changed since the last `take_dirty`.
    dirty: BTreeSet<ServiceKey>,
    /// Which watches have finished their first list.
    listed: [bool; 3],
}

impl Cache {
    pub fn service(&self, key: &ServiceKey) -> Option<&ServiceView> {
        self.services.get(key)
    }

    pub fn slices_of(&self, key: &ServiceKey) -> Vec<&SliceView> {
        let names = self.by_service.get(key).into_iter().flatten();
        names.filter_map(|n| self.slices.get(&(key.namespace.clone(), n.clone()))).collect()
    }

    /// A pod's `progress` label, when it has a valid one.
    pub fn progress(&self, namespace: &str, name: &str) -> Option<u32> {
        self.pods.get(&(namespace.to_string(), name.to_string())).copied().flatten()
    }

    /// The Services to recompute, marked since the last call.
    pub fn take_dirty(&mut self) -> BTreeSet<ServiceKey> {
        std::mem::take(&mut self.dirty)
    }

    /// The wanted state from everything cached.
    pub fn compute(&self) -> State {
        let services: Vec<&ServiceView> = self.services.values().collect();
        let slices: Vec<&SliceView> = self.slices.values().collect();
        State::compute(&services, &slices, |ns, name| self.progress(ns, name))
    }

    /// Brings the Services marked dirty up to date in `state`.
    pub fn update(&mut self, state: &mut State, out: &mut super::desired::Update) {
        for key in self.take_dirty() {
            let slices = self.slices_of(&key);
            state.update(&key, self.services.get(&key), &slices, &|ns, name| self.progress(ns, name), out);
        }
    }
}

/// One watched kind: how its objects are projected and stored.
trait Kind: Send + 'static {
    type Object: kube::Resource + Clone + std::fmt::Debug + Send + serde::de::DeserializeOwned + 'static;
    type Key: Clone + Eq + Hash + Send;
    type View: PartialEq + Send;
    const NAME: &'static str;
    const INDEX: usize;
    fn project(o: &Self::Object, sel: &Selection) -> (Self::Key, Self::View);
    fn keys(c: &Cache) -> Vec<Self::Key>;
    /// Stores (or with `None` removes) one object and marks the Services it concerns.
    fn set(c: &mut Cache, key: Self::Key, view: Option<Self::View>);
}

fn object_key<K: kube::Resource>(o: &K) -> ObjectKey {
    (o.meta().namespace.clone().unwrap_or_default(), o.meta().name.clone().unwrap_or_default())
}

struct Services;
impl Kind for Services {
    type Object = Service;
    type Key = ServiceKey;
    type View = ServiceView;
    const NAME: &'static str = "Services";
    const INDEX: usize = 0;
    fn project(o: &Service, sel: &Selection) -> (ServiceKey, ServiceView) {
        let v = ServiceView::new(o, sel);
        (v.key.clone(), v)
    }
    fn keys(c: &Cache) -> Vec<ServiceKey> {
        c.services.keys().cloned().collect()
    }
    fn set(c: &mut Cache, key: ServiceKey, view: Option<ServiceView>) {
        let old = match view {
            Some(v) => c.services.insert(key.clone(), v),
            None => c.services.remove(&key),
        };
        if old.as_ref() != c.services.get(&key) {
            c.dirty.insert(key);
        }
    }
}

struct Slices;
impl Kind for Slices {
    type Object = EndpointSlice;
    type Key = ObjectKey;
    type View = SliceView;
    const NAME: &'static str = "EndpointSlices";
    const INDEX: usize = 1;
    fn project(o: &EndpointSlice, _: &Selection) -> (ObjectKey, SliceView) {
        (object_key(o), SliceView::new(o))
    }
    fn keys(c: &Cache) -> Vec<ObjectKey> {
        c.slices.keys().cloned().collect()
    }
    fn set(c: &mut Cache, key: ObjectKey, view: Option<SliceView>) {
        let old = c.slices.remove(&key);
        if old == view {
            if let Some(v) = old {
                c.slices.insert(key, v);
            }
            return;
        }
        if let Some(s) = old.as_ref().and_then(|v| v.service.clone()) {
            if let Some(names) = c.by_service.get_mut(&s) {
                names.remove(&key.1);
                if names.is_empty() {
                    c.by_service.remove(&s);
                }
            }
            c.dirty.insert(s);
        }
        if let Some(v) = view {
            if let Some(s) = v.service.clone() {
                c.by_service.entry(s.clone()).or_default().insert(key.1.clone());
                c.dirty.insert(s);
            }
            c.slices.insert(key, v);
        }
    }
}

/// Pods (those with a `progress` label) only give a new backend its starting progress:
/// a label change marks nothing (a backend that exists keeps its ramp).
struct Pods;
impl Kind for Pods {
    type Object = PartialObjectMeta<Pod>;
    type Key = ObjectKey;
    type View = Option<u32>;
    const NAME: &'static str = "Pods";
    const INDEX: usize = 2;
    fn project(o: &PartialObjectMeta<Pod>, _: &Selection) -> (ObjectKey, Option<u32>) {
        (object_key(o), pod_progress(o))
    }
    fn keys(c: &Cache) -> Vec<ObjectKey> {
        c.pods.keys().cloned().collect()
    }
    fn set(c: &mut Cache, key: ObjectKey, view: Option<Option<u32>>) {
        match view {
            Some(v) => c.pods.insert(key, v),
            None => c.pods.remove(&key),
        };
    }
}

struct Shared {
    cache: Mutex<Cache>,
    changed: Notify,
}

/// The watches and their cache.
#[derive(Clone)]
pub struct KubeSource {
    shared: Arc<Shared>,
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

/// Runs one watch in the background, feeding the shared cache.
fn spawn_watch<K: Kind>(
    stream: impl futures::Stream<Item = Result<watcher::Event<K::Object>, watcher::Error>> + Send + 'static,
    sel: Selection,
    shared: Arc<Shared>,
) where
    <K::Object as kube::Resource>::DynamicType: Default,
{
    tokio::spawn(async move {
        let stream = stream.backoff(Retry::default());
        futures::pin_mut!(stream);
        // A (re)list in progress: replaces the collection when complete.
        let mut relist: Vec<(K::Key, K::View)> = Vec::new();
        // Failing since (for one warning per outage, not one per retry).
        let mut failing: Option<std::time::Instant> = None;
        while let Some(event) = stream.next().await {
            match (&event, failing) {
                (Err(e), None) => {
                    warn!(what = K::NAME, error = %e, "watch error; keeping the last state and retrying");
                    failing = Some(std::time::Instant::now());
                }
                (Err(e), Some(_)) => debug!(what = K::NAME, error = %e, "watch still failing"),
                (Ok(_), Some(since)) => {
                    info!(what = K::NAME, seconds = since.elapsed().as_secs_f64(), "watch resumed");
                    failing = None;
                }
                (Ok(_), None) => {}
            }
            let mut cache = shared.cache.lock().expect("cache lock");
            let had_dirty = !cache.dirty.is_empty();
            match event {
                Ok(watcher::Event::Init) => relist.clear(),
                Ok(watcher::Event::InitApply(o)) => relist.push(K::project(&o, &sel)),
                Ok(watcher::Event::InitDone) => {
                    let listed: std::collections::HashSet<K::Key> = relist.iter().map(|(k, _)| k.clone()).collect();
                    for gone in K::keys(&cache).into_iter().filter(|k| !listed.contains(k)) {
                        K::set(&mut cache, gone, None);
                    }
                    for (k, v) in relist.drain(..) {
                        K::set(&mut cache, k, Some(v));
                    }
                    relist.shrink_to_fit();
                    if !cache.listed[K::INDEX] {
                        cache.listed[K::INDEX] = true;
                        shared.changed.notify_one();
                    }
                }
                Ok(watcher::Event::Apply(o)) => {
                    let (k, v) = K::project(&o, &sel);
                    K::set(&mut cache, k, Some(v));
                }
                Ok(watcher::Event::Delete(o)) => {
                    let (k, _) = K::project(&o, &sel);
                    K::set(&mut cache, k, None);
                }
                Err(_) => {}
            }
            if !had_dirty && !cache.dirty.is_empty() {
                shared.changed.notify_one();
            }
        }
    });
}

impl KubeSource {
    /// Starts the watches (they run until the process ends).
    pub fn start(client: &Client, opts: &WatchOptions) -> KubeSource {
        let shared = Arc::new(Shared { cache: Mutex::new(Cache::default()), changed: Notify::new() });
        let mut svc_cfg = watcher::Config::default();
        if let Some(sel) = &opts.service_selector {
            svc_cfg = svc_cfg.labels(sel);
        }
        let sel = opts.selection.clone();
        let ns = &opts.namespace;
        spawn_watch::<Services>(watcher(api::<Service>(client, ns), svc_cfg), sel.clone(), shared.clone());
        let slices = watcher(api::<EndpointSlice>(client, ns), watcher::Config::default());
        spawn_watch::<Slices>(slices, sel.clone(), shared.clone());
        // Metadata only, and only pods that carry a `progress` label: the label is all the
        // agent reads of pods, so the rest of the cluster's pods are never sent to it. A
        // pod whose label is removed leaves the watch (a delete here).
        let pod_cfg = watcher::Config::default().labels(super::desired::PROGRESS_LABEL);
        let pods = watcher(api::<PartialObjectMeta<Pod>>(client, ns), pod_cfg);
        spawn_watch::<Pods>(pods, sel, shared.clone());
        KubeSource { shared }
    }

    /// Waits until every watch has its first complete list.
    pub async fn ready(&self) {
        loop {
            let notified = self.shared.changed.notified();
            if self.lock().listed.iter().all(|l| *l) {
                return;
            }
            notified.await;
        }
    }

    /// Resolves when a Service is marked dirty.
    pub async fn changed(&self) {
        self.shared.changed.notified().await
    }

    pub fn lock(&self) -> MutexGuard<'_, Cache> {
        self.shared.cache.lock().expect("cache lock")
    }

    /// The ObjectReference of a cached Service (for Events).
    pub fn object_ref(&self, key: &ServiceKey) -> Option<k8s_openapi::api::core::v1::ObjectReference> {
        let cache = self.lock();
        let s = cache.service(key)?;
        Some(k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(key.namespace.clone()),
            name: Some(key.name.clone()),
            uid: s.uid.clone(),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn slice(name: &str, service: &str, addr: &str) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "endpoints": [{"addresses": [addr]}]
        }))
        .unwrap()
    }

    fn key(name: &str) -> ServiceKey {
        ServiceKey { namespace: "ns".into(), name: name.into() }
    }

    fn set(c: &mut Cache, s: &EndpointSlice) {
        let sel = Selection { class: "x".into(), default_class: false };
        let (k, v) = Slices::project(s, &sel);
        Slices::set(c, k, Some(v));
    }

    #[test]
    fn slice_events_mark_exactly_the_services_they_concern() {
        let mut c = Cache::default();
        set(&mut c, &slice("a-1", "a", "10.0.0.1"));
        assert_eq!(c.take_dirty(), BTreeSet::from([key("a")]));
        assert_eq!(c.slices_of(&key("a")).len(), 1);
        // The same content again (a resync, a status write elsewhere): nothing to do.
        set(&mut c, &slice("a-1", "a", "10.0.0.1"));
        assert!(c.take_dirty().is_empty());
        // The slice moves to another Service: both are marked, the index follows.
        set(&mut c, &slice("a-1", "b", "10.0.0.1"));
        assert_eq!(c.take_dirty(), BTreeSet::from([key("a"), key("b")]));
        assert!(c.slices_of(&key("a")).is_empty());
        assert_eq!(c.slices_of(&key("b")).len(), 1);
        // Deleted.
        Slices::set(&mut c, ("ns".into(), "a-1".into()), None);
        assert_eq!(c.take_dirty(), BTreeSet::from([key("b")]));
        assert!(c.slices_of(&key("b")).is_empty());
    }
}

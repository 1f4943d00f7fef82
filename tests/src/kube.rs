//! A real Kubernetes control plane for tests: `etcd` and `kube-apiserver` on 127.0.0.1.
//!
//! The binaries come from `KUBEBUILDER_ASSETS` when it holds them, else from the cache that
//! `cargo xtask setup` (`cargo xtask kube-assets`) fills: `~/.cache/lb/kube-assets/RELEASE`.
//! Everything else is made here, with no outside tool: a CA and a serving certificate for
//! 127.0.0.1, a service-account signing key, a static token file with an admin token
//! (group `system:masters`), random free ports and a temporary directory (removed on drop;
//! set `LB_KUBE_KEEP=1` to keep it, with the logs, for a post-mortem).
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! let mut api = lb_tests::kube::ApiServer::start().await?;
//! let client = api.client();
//! api.stop(); // kube-apiserver only; etcd keeps the data
//! api.restart().await?; // same port, same certificates, same tokens
//! # Ok(()) }
//! ```
//!
//! The processes listen on the host's loopback: something in a network namespace of its own
//! (the lab's LB namespace) cannot reach them at 127.0.0.1.

pub mod fixtures;
mod process;

use process::{free_port, random_hex, terminate, unique_temp_dir, DirGuard};

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::core::ObjectMeta;

/// The Kubernetes release `cargo xtask kube-assets` builds (`xtask/src/kube_assets.rs`).
pub const K8S_RELEASE: &str = "v1.35.4";
/// The Service ClusterIP range the API server is configured with. Only configuration:
/// nothing ever sends traffic to it.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/16";
/// The `--service-account-issuer` (and so the audience of minted tokens).
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// How long a (re)start may take before it is an error; a start takes seconds here.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const ETCD_TIMEOUT: Duration = Duration::from_secs(30);

/// The directory holding `kube-apiserver` and `etcd`: `KUBEBUILDER_ASSETS` if it holds
/// both, else `~/.cache/lb/kube-assets/RELEASE`; an error that says how to get them.
pub fn assets_dir() -> Result<PathBuf> {
    let has_all = |d: &Path| ["kube-apiserver", "etcd"].iter().all(|b| d.join(b).is_file());
    let mut looked = Vec::new();
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").map(PathBuf::from) {
        if has_all(&dir) {
            return Ok(dir);
        }
        looked.push(format!("KUBEBUILDER_ASSETS={}", dir.display()));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let dir = PathBuf::from(home).join(".cache/lb/kube-assets").join(K8S_RELEASE);
        if has_all(&dir) {
            return Ok(dir);
        }
        looked.push(dir.display().to_string());
    }
    bail!(
        "kube-apiserver and etcd not found (looked in {}): run `cargo xtask setup` (or `cargo xtask kube-assets`), \
         or set KUBEBUILDER_ASSETS to a directory holding them",
        if looked.is_empty() {
            "no place: neither KUBEBUILDER_ASSETS nor HOME is set".into()
        } else {
            looked.join(", ")
        }
    )
}

/// A running etcd + kube-apiserver pair. Dropping it kills both and removes its directory.
pub struct ApiServer {
    dir: PathBuf,
    etcd: Child,
    apiserver: Option<Child>,
    apiserver_bin: PathBuf,
    apiserver_args: Vec<OsString>,
    port: u16,
    etcd_url: String,
    ca_der: Vec<u8>,
    admin_token: String,
    kubeconfigs: AtomicUsize,
    last_start: Duration,
}

impl ApiServer {
    /// Starts etcd and kube-apiserver and waits until `/readyz` answers `ok`.
    pub async fn start() -> Result<ApiServer> {
        let assets = assets_dir()?;
        let dir = unique_temp_dir()?;
        // Until `api` owns the directory (its Drop removes it), a failure removes it here.
        let mut guard = DirGuard(Some(dir.clone()));
        let port = free_port()?;
        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let admin_token = random_hex(16)?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_log = dir.join("etcd.log");
        let mut etcd_cmd = Command::new(assets.join("etcd"));
        etcd_cmd
            .arg("--name=lb-tests")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=lb-tests={peer_url}"))
            // Test data: durability across a machine crash is not wanted, speed is.
            .arg("--unsafe-no-fsync")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&etcd_log).context("creating etcd.log")?);
        let etcd = etcd_cmd.spawn().with_context(|| format!("starting {}", assets.join("etcd").display()))?;
        guard.0 = None;
        let mut api = ApiServer {
            dir,
            etcd,
            apiserver: None,
            apiserver_bin: assets.join("kube-apiserver"),
            apiserver_args: Vec::new(),
            port,
            etcd_url,
            ca_der: Vec::new(),
            admin_token,
            kubeconfigs: AtomicUsize::new(0),
            last_start: Duration::ZERO,
        };
        api.wait_etcd(&etcd_log).await?;
        api.write_credentials()?;
        api.apiserver_args = api.apiserver_args();
        api.restart().await?;
        Ok(api)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The API server's secure port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` of etcd.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The PEM file of the CA that signed the serving certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The static bearer token of the admin (user `admin`, group `system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// kube-apiserver's log (all its runs, each restart marked).
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("kube-apiserver.log")
    }

    /// How long the last (re)start of kube-apiserver took until `/readyz` said `ok`.
    pub fn last_start(&self) -> Duration {
        self.last_start
    }

    /// Whether kube-apiserver is running (not [`stop`](Self::stop)ped).
    pub fn is_running(&self) -> bool {
        self.apiserver.is_some()
    }

    /// A `kube::Config` for this server with a bearer token.
    pub fn config_for_token(&self, token: &str) -> kube::Config {
        let mut config = kube::Config::new(self.url().parse().expect("https://127.0.0.1:PORT is a URI"));
        config.root_cert = Some(vec![self.ca_der.clone()]);
        config.auth_info.token = Some(token.to_string().into());
        config.connect_timeout = Some(Duration::from_secs(5));
        config
    }

    /// A client for a bearer token. Needs a Tokio runtime (it spawns a task).
    pub fn client_for_token(&self, token: &str) -> kube::Client {
        kube::Client::try_from(self.config_for_token(token)).expect("a client from a token and a CA certificate")
    }

    /// The admin's client (group `system:masters`). Needs a Tokio runtime.
    pub fn client(&self) -> kube::Client {
        self.client_for_token(&self.admin_token)
    }

    /// Writes a kubeconfig for `token` (for a binary's `--kubeconfig`) and returns its path.
    /// Each call writes a new file in the server's directory.
    pub fn kubeconfig(&self, token: &str) -> PathBuf {
        let n = self.kubeconfigs.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("kubeconfig-{n}.yaml"));
        // JSON is YAML: serde_json quotes whatever the token or the path hold.
        let doc = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "lb-tests", "cluster": {
                "server": self.url(),
                "certificate-authority": self.ca_file(),
            }}],
            "users": [{"name": "lb-tests", "user": {"token": token}}],
            "contexts": [{"name": "lb-tests", "context": {"cluster": "lb-tests", "user": "lb-tests"}}],
            "current-context": "lb-tests",
        });
        let text = serde_json::to_string_pretty(&doc).expect("a JSON value serializes");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// Mints a token for ServiceAccount `ns/name` through the TokenRequest API (one hour),
    /// creating the ServiceAccount first if it does not exist (no controller-manager runs
    /// here to create `default` ones). The namespace must exist.
    pub async fn service_account_token(&self, ns: &str, name: &str) -> Result<String> {
        let sas: Api<ServiceAccount> = Api::namespaced(self.client(), ns);
        if sas.get_opt(name).await.with_context(|| format!("reading ServiceAccount {ns}/{name}"))?.is_none() {
            let sa = ServiceAccount {
                metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
                ..Default::default()
            };
            match sas.create(&PostParams::default(), &sa).await {
                Ok(_) => {}
                // Created concurrently: fine.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e).with_context(|| format!("creating ServiceAccount {ns}/{name}")),
            }
        }
        let request = TokenRequest {
            spec: TokenRequestSpec { audiences: vec![], expiration_seconds: Some(3600), bound_object_ref: None },
            ..Default::default()
        };
        let minted = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("TokenRequest for ServiceAccount {ns}/{name}"))?;
        let token = minted.status.map(|s| s.token).unwrap_or_default();
        if token.is_empty() {
            bail!("TokenRequest for ServiceAccount {ns}/{name} returned no token");
        }
        Ok(token)
    }

    /// Stops kube-apiserver (SIGTERM, SIGKILL after 15 s); etcd keeps running. Idempotent.
    pub fn stop(&mut self) {
        if let Some(child) = self.apiserver.take() {
            terminate(child, Duration::from_secs(15));
        }
    }

    /// (Re)starts kube-apiserver with the same port, certificates and tokens (stopping it
    /// first if it runs) and waits until `/readyz` answers `ok`.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        let log_path = self.log_file();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        std::io::Write::write_all(&mut log, b"\n===== lb-tests: kube-apiserver starting =====\n")?;
        let started = Instant::now();
        let mut cmd = Command::new(&self.apiserver_bin);
        cmd.args(&self.apiserver_args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = cmd.spawn().with_context(|| format!("starting {}", self.apiserver_bin.display()))?;
        self.apiserver = Some(child);
        self.wait_ready(started).await?;
        self.last_start = started.elapsed();
        Ok(())
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
        if std::env::var_os("LB_KUBE_KEEP").is_some() {
            eprintln!("kube: kept {} (LB_KUBE_KEEP)", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

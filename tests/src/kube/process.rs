//! Running etcd and kube-apiserver: their arguments, credentials (a CA, serving
//! certificates, a token file) and readiness checks, and the small helpers around them.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The Kubernetes release `cargo xtask kube-assets` builds (`xtask/src/kube_assets.rs`).
use super::*;

impl ApiServer {
    pub(super) fn apiserver_args(&self) -> Vec<OsString> {
        let d = |f: &str| self.dir.join(f).display().to_string();
        [
            format!("--etcd-servers={}", self.etcd_url),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={}", self.port),
            format!("--cert-dir={}", d("certs")),
            format!("--tls-cert-file={}", d("serving.crt")),
            format!("--tls-private-key-file={}", d("serving.key")),
            format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            "--authorization-mode=RBAC".into(),
            format!("--token-auth-file={}", d("tokens.csv")),
            // Nothing here serves the kubernetes Service's endpoints (a loopback address).
            "--endpoint-reconciler-type=none".into(),
        ]
        .into_iter()
        .map(OsString::from)
        .collect()
    }

    /// CA + serving certificate for 127.0.0.1, the service-account key, the token file.
    pub(super) fn write_credentials(&mut self) -> Result<()> {
        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(DnType::CommonName, "lb-tests CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca_params.self_signed(&ca_key).context("self-signing the CA")?;
        let issuer = Issuer::new(ca_params, ca_key);

        let serving_key = KeyPair::generate().context("generating the serving key")?;
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let serving = params.signed_by(&serving_key, &issuer).context("signing the serving certificate")?;

        let sa_key = KeyPair::generate().context("generating the service-account key")?;
        let files = [
            ("ca.crt", ca_cert.pem()),
            ("serving.crt", serving.pem()),
            ("serving.key", serving_key.serialize_pem()),
            ("sa.key", sa_key.serialize_pem()),
            ("sa.pub", sa_key.public_key_pem()),
            // token,user,uid,"groups"
            ("tokens.csv", format!("{},admin,lb-tests-admin,\"system:masters\"\n", self.admin_token)),
        ];
        for (name, text) in files {
            let path = self.dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        self.ca_der = ca_cert.der().to_vec();
        Ok(())
    }

    pub(super) async fn wait_etcd(&mut self, log: &Path) -> Result<()> {
        let deadline = Instant::now() + ETCD_TIMEOUT;
        let addr = self.etcd_url.trim_start_matches("http://").to_string();
        loop {
            if let Some(status) = self.etcd.try_wait()? {
                bail!("etcd exited ({status}) before it was healthy; its log ends:\n{}", tail(log, 30));
            }
            if let Ok(body) = http_get(&addr, "/health").await {
                if body.contains("\"health\":\"true\"") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("etcd at {} not healthy after {ETCD_TIMEOUT:?}; its log ends:\n{}", self.etcd_url, tail(log, 30));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(super) async fn wait_ready(&mut self, started: Instant) -> Result<()> {
        let mut config = self.config_for_token(&self.admin_token);
        config.default_retry = false;
        config.connect_timeout = Some(Duration::from_secs(1));
        config.read_timeout = Some(Duration::from_secs(5));
        let client = kube::Client::try_from(config).context("a client for /readyz")?;
        loop {
            let child = self.apiserver.as_mut().expect("started above");
            if let Some(status) = child.try_wait()? {
                self.apiserver = None;
                bail!(
                    "kube-apiserver exited ({status}) before it was ready; its log ({}) ends:\n{}",
                    self.log_file().display(),
                    tail(&self.log_file(), 40)
                );
            }
            let req = http::Request::get("/readyz").body(Vec::new()).expect("a GET request");
            let last = match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            if started.elapsed() > READY_TIMEOUT {
                self.stop();
                bail!(
                    "kube-apiserver at {} not ready after {READY_TIMEOUT:?} (last answer: {last}); its log ends:\n{}",
                    self.url(),
                    tail(&self.log_file(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Removes a directory unless forgotten.
pub(super) struct DirGuard(pub(super) Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// SIGTERM, then SIGKILL if it has not exited within `grace`.
pub(super) fn terminate(mut child: Child, grace: Duration) {
    // SAFETY: kill(2) on a child we own and have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A port that was free on 127.0.0.1 a moment ago.
pub(super) fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0 to find a free port")?;
    Ok(l.local_addr()?.port())
}

pub(super) fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

pub(super) fn unique_temp_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("lb-kube-{}-{}", std::process::id(), random_hex(4)?));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A plain HTTP/1.0 GET (etcd's health endpoint); the body.
pub(super) async fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await??;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out);
    Ok(text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// The last `n` lines of a file, for error messages.
pub(super) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

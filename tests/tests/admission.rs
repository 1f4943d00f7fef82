//! deploy/admission.yaml against a real kube-apiserver: the agent's ServiceAccount, with
//! the RBAC of deploy/rbac.yaml, may change a pod's `progress` label (to 0-100, or remove
//! it) and nothing else of it; other users are not affected.
//!
//! Skips (recorded) without root, like the rest of the suite, and when the binaries are
//! missing, except under CI=true, where missing binaries fail: `cargo xtask setup` builds them.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::Client;
use lb_tests::kube::ApiServer;
use serde::Deserialize as _;
use serde_json::{json, Value};

const NS: &str = "web";

/// Applies the manifests in deploy/ named `files` as they are (server-side apply).
async fn apply(client: &Client, files: &[&str]) -> Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    for file in files {
        let text = std::fs::read_to_string(format!("{root}/{file}")).with_context(|| format!("reading {file}"))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde_yaml::from_value(serde_yaml::Value::deserialize(doc)?)?;
            let obj: DynamicObject = serde_json::from_value(v.clone())?;
            let types = obj.types.clone().with_context(|| format!("{file}: a document without apiVersion/kind"))?;
            let gvk = GroupVersionKind::try_from(&types)?;
            let (plural, namespaced) = match gvk.kind.as_str() {
                "Namespace" => ("namespaces", false),
                "ServiceAccount" => ("serviceaccounts", true),
                "ClusterRole" => ("clusterroles", false),
                "ClusterRoleBinding" => ("clusterrolebindings", false),
                "ValidatingAdmissionPolicy" => ("validatingadmissionpolicies", false),
                "ValidatingAdmissionPolicyBinding" => ("validatingadmissionpolicybindings", false),
                other => bail!("{file}: unexpected kind {other}"),
            };
            let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
            let name = obj.metadata.name.clone().context("a name")?;
            let api: Api<DynamicObject> = match (namespaced, obj.metadata.namespace.as_deref()) {
                (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
                (true, None) => bail!("{file}: {} {name} without a namespace", gvk.kind),
                (false, _) => Api::all_with(client.clone(), &ar),
            };
            api.patch(&name, &PatchParams::apply("lb-tests").force(), &Patch::Apply(&v))
                .await
                .with_context(|| format!("applying {} {name} from {file}", gvk.kind))?;
        }
    }
    Ok(())
}

/// The message of a refused call, or `None` when it succeeded.
async fn refusal(pods: &Api<Pod>, patch: Value) -> Result<Option<String>> {
    match pods.patch("b0", &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(s)) => Ok(Some(format!("{} {}", s.code, s.message))),
        Err(e) => Err(e.into()),
    }
}

async fn labels(pods: &Api<Pod>) -> Result<Value> {
    Ok(serde_json::to_value(pods.get("b0").await?.metadata.labels.unwrap_or_default())?)
}

async fn policy_holds(api: &ApiServer) -> Result<()> {
    let admin = api.client();
    apply(&admin, &["namespace.yaml", "rbac.yaml", "admission.yaml"]).await?;
    let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(json!({"metadata": {"name": NS}}))?;
    Api::all(admin.clone()).create(&PostParams::default(), &ns).await?;
    // Its `default` ServiceAccount (no controller-manager runs here to make it).
    api.service_account_token(NS, "default").await?;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "b0", "labels": {"app": "echo", "progress": "0"}},
        "spec": {"containers": [{"name": "echo", "image": "echo"}]}
    }))?;
    let admin_pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    admin_pods.create(&PostParams::default(), &pod).await?;
    let token = api.service_account_token("lb-system", "lb-agent").await?;
    let agent_pods: Api<Pod> = Api::namespaced(api.client_for_token(&token), NS);

    // The API server loads new policies asynchronously: wait until another label is refused.
    let start = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let probe = json!({"metadata": {"labels": {"app": format!("probe-{n}")}}});
        match refusal(&agent_pods, probe).await? {
            Some(msg) if msg.contains("lb-agent may") => {
                println!("policy in force after {:?}", start.elapsed());
                break;
            }
            // Accepted (the policy is not loaded yet) or refused by RBAC (not yet loaded).
            _ => {}
        }
        ensure!(start.elapsed() < Duration::from_secs(30), "another label is still accepted after 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reset = json!({"metadata": {"labels": {"app": "echo"}}});
    admin_pods.patch("b0", &PatchParams::default(), &Patch::Merge(&reset)).await?;

    // The agent's own write (report.rs: a merge patch of the label) goes through.
    let progress = |v: &str| json!({"metadata": {"labels": {"progress": v}}});
    ensure!(refusal(&agent_pods, progress("40")).await?.is_none(), "the progress label may change");
    ensure!(labels(&admin_pods).await?["progress"] == "40", "stored: {}", labels(&admin_pods).await?);
    ensure!(refusal(&agent_pods, progress("100")).await?.is_none(), "100 is a progress");

    // Anything else is refused, and nothing of it is stored.
    let before = labels(&admin_pods).await?;
    let refused = [
        ("another label", json!({"metadata": {"labels": {"app": "stolen"}}}), "only the `progress` label"),
        ("a new label", json!({"metadata": {"labels": {"x": "y"}}}), "only the `progress` label"),
        ("a removed label", json!({"metadata": {"labels": {"app": null}}}), "only the `progress` label"),
        ("progress and another label", json!({"metadata": {"labels": {"progress": "50", "app": "x"}}}), "only"),
        ("a progress that is no number", progress("abc"), "whole number from 0 to 100"),
        ("a progress above 100", progress("101"), "whole number from 0 to 100"),
        // A field the API server lets an update change; the policy does not.
        ("the spec", json!({"spec": {"activeDeadlineSeconds": 5}}), "not its spec"),
        ("an annotation", json!({"metadata": {"annotations": {"a": "b"}}}), "not its spec, annotations"),
    ];
    for (what, patch, says) in refused {
        let msg = refusal(&agent_pods, patch).await?.with_context(|| format!("{what}: accepted"))?;
        ensure!(msg.contains("lb-agent may") && msg.contains(says), "{what}: refused by the policy: {msg}");
        println!("{what}: refused: {msg}");
    }
    let after = admin_pods.get("b0").await?;
    ensure!(serde_json::to_value(after.metadata.labels.unwrap_or_default())? == before, "nothing changed");
    ensure!(after.spec.context("spec")?.active_deadline_seconds.is_none(), "the spec is unchanged");

    // Removing the label is the agent's to do too.
    ensure!(refusal(&agent_pods, json!({"metadata": {"labels": {"progress": null}}})).await?.is_none(), "removal");
    // The policy binds the agent only: the admin changes any label.
    let other = json!({"metadata": {"labels": {"app": "admin"}}});
    admin_pods.patch("b0", &PatchParams::default(), &Patch::Merge(&other)).await.context("the admin is unaffected")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_progress_label_is_the_agents_to_change() {
    let test = "only_the_progress_label_is_the_agents_to_change";
    if lb_tests::skip(test) {
        return;
    }
    if let Err(e) = lb_tests::kube::assets_dir() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true and {e:#}");
        }
        lb_tests::record_skip(test, &format!("{e:#}"));
        return;
    }
    let api = ApiServer::start().await.unwrap();
    policy_holds(&api).await.unwrap();
}

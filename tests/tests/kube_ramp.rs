//! Slow start for Kubernetes pods, measured from real connections: a 4th pod joins 3
//! (every endpoint has weight 1) and, at every ramp step, its share of new connections
//! is counted from which backend answered. The share must rise through at least four
//! distinct levels and end at a full quarter. The agent's `progress` label on the pod
//! only tells the test when a step happened; the levels are measured.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::PostParams;
use kube::{Api, Client};
use lb_agent::config::XdpModeChoice;
use lb_tests::kube::fixtures::*;
use lb_tests::kube::ApiServer;
use lb_tests::lab::{Lab, VIP4};
use lb_tests::servers::{split, start_backend, tcp_backends, TCP_PORT};
use serde_json::json;

/// Connections per measurement: the share's standard deviation is then at most 2.2
/// points, against 6 or more points between expected levels.
const SAMPLE: usize = 500;

async fn progress_label(client: &Client, i: usize) -> Result<Option<String>> {
    let p = Api::<Pod>::namespaced(client.clone(), "web").get(&format!("b{i}")).await?;
    Ok(p.metadata.labels.and_then(|l| l.get("progress").cloned()))
}

async fn ramp(lab: &Lab) -> Result<()> {
    let api = ApiServer::start().await?;
    let admin = api.client();
    apply_deploy(&admin).await?;
    // Steps of 25 points every 4 s: levels 0, 25, 50, 75, 100 % of a full pod's weight.
    let agent = start_agent(&api, lab, &["--ramp-interval", "4s", "--ramp-step", "25"]).await?;
    namespace(&admin, "web").await?;
    pods(&admin, &BTreeMap::from([(3, "0")]), 4).await?;
    let svc = service("echo", VIP4, json!([{"name": "tcp", "port": TCP_PORT}]))?;
    Api::<Service>::namespaced(admin.clone(), "web").create(&PostParams::default(), &svc).await?;
    let ready = (true, true, false);
    put_slice(&admin, "echo", (0..3).map(|i| endpoint(i, ready)).collect()).await?;
    until("three endpoints in the maps", Duration::from_secs(20), || async {
        Ok(active_backends(&agent)? == addrs(&[0, 1, 2]))
    })
    .await
    .with_context(|| agent.log_text())?;
    let first = split(&tcp_backends(lab, vip_sock(TCP_PORT), SAMPLE)?);
    ensure!(first.len() == 3, "a Service's first backends serve at once, at full weight: {first:.3?}");

    put_slice(&admin, "echo", (0..4).map(|i| endpoint(i, ready)).collect()).await?;
    until("b3 in the maps", Duration::from_secs(10), || async { Ok(active_backends(&agent)?.len() == 4) }).await?;
    // (label seen, b3's measured share), one measurement per step.
    let mut levels: Vec<(String, f64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let label = progress_label(&admin, 3).await?.unwrap_or_default();
        if levels.last().map(|(l, _)| l) != Some(&label) {
            let share = split(&tcp_backends(lab, vip_sock(TCP_PORT), SAMPLE)?).get("b3").copied().unwrap_or(0.0);
            println!("b3 at label progress={label}: {share:.3} of {SAMPLE} new connections");
            levels.push((label.clone(), share));
        }
        if label == "100" || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shares: Vec<f64> = levels.iter().map(|(_, s)| *s).collect();
    let mut distinct = shares.clone();
    distinct.dedup_by(|b, a| (*b - *a).abs() < 0.03);
    ensure!(distinct.len() >= 4, "at least 4 distinct levels of b3's share, measured: {levels:?}");
    ensure!(shares.windows(2).all(|w| w[1] > w[0] - 0.04), "the share only rises: {levels:?}");
    ensure!(shares[0] < 0.05, "at progress 0 the new pod gets (almost) nothing: {levels:?}");
    let last = *shares.last().unwrap();
    ensure!((last - 0.25).abs() < 0.06, "at full weight a quarter: {levels:?}");

    // Session affinity cannot be turned on while the VIP is live (established
    // connections would move): the Service is told so, and keeps serving as it was.
    let patch = json!({"spec": {"sessionAffinity": "ClientIP"}});
    Api::<Service>::namespaced(admin.clone(), "web")
        .patch("echo", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await?;
    until("a ChangeRefused Warning on echo", Duration::from_secs(15), || async {
        Ok(event_reasons(&admin, "echo").await?.iter().any(|r| r == "ChangeRefused"))
    })
    .await
    .with_context(|| agent.log_text())?;
    ensure!(split(&tcp_backends(lab, vip_sock(TCP_PORT), 200)?).len() == 4, "echo still serves all four");
    Ok(())
}

#[test]
fn a_pod_joining_three_ramps_through_measured_levels() {
    if skip_kube("a_pod_joining_three_ramps_through_measured_levels") {
        return;
    }
    let lab = Lab::new("kramp", 4, XdpModeChoice::Native).unwrap();
    for i in 0..4 {
        start_backend(&lab, i).unwrap();
    }
    let lb = lab.lb();
    block_on_in(&lb, || ramp(&lab)).unwrap();
}

//! A new Service is usually seen before its EndpointSlices (another controller writes
//! them a moment later): against a real kube-apiserver + etcd, it gets no
//! `NoReadyEndpoints` Warning when its slices follow within the grace, and one when they
//! never come.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::core::v1::Service;
use kube::api::PostParams;
use kube::Api;
use lb_agent::config::XdpModeChoice;
use lb_tests::kube::fixtures::*;
use lb_tests::kube::ApiServer;
use lb_tests::lab::{Lab, VIP4};
use lb_tests::servers::{split, start_backend, tcp_backends, TCP_PORT};
use serde_json::json;

async fn count(admin: &kube::Client, service: &str, reason: &str) -> Result<usize> {
    Ok(event_reasons(admin, service).await?.iter().filter(|r| *r == reason).count())
}

async fn grace(lab: &Lab) -> Result<()> {
    let api = ApiServer::start().await?;
    let admin = api.client();
    apply_deploy(&admin).await?;
    let agent = start_agent(&api, lab, &[]).await?;
    namespace(&admin, "web").await?;
    pods(&admin, &BTreeMap::new(), 2).await?;
    let services: Api<Service> = Api::namespaced(admin.clone(), "web");
    let pp = PostParams::default();

    // Slices 2 s after the Service: no warning, then it serves.
    services.create(&pp, &service("late", VIP4, json!([{"name": "tcp", "port": TCP_PORT}]))?).await?;
    let lonely_since = Instant::now();
    services.create(&pp, &service("lonely", "192.0.2.102", json!([{"name": "tcp", "port": 8080}]))?).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ready = (true, true, false);
    put_slice(&admin, "late", vec![endpoint(0, ready), endpoint(1, ready)]).await?;
    until("late programmed", Duration::from_secs(15), || async {
        Ok(condition(&services, "late").await?["status"] == "True")
    })
    .await
    .with_context(|| agent.log_text())?;
    let names = tcp_backends(lab, vip_sock(TCP_PORT), 100)?;
    ensure!(split(&names).len() == 2, "late serves from both backends: {:?}", split(&names));

    // No slices at all: warned once the grace is over, not before.
    let waited = until("lonely's NoReadyEndpoints Warning", Duration::from_secs(30), || async {
        Ok(count(&admin, "lonely", "NoReadyEndpoints").await? >= 1)
    })
    .await
    .with_context(|| agent.log_text())?;
    let after = lonely_since.elapsed();
    println!("lonely warned {after:?} after it was created ({waited:?} of waiting)");
    ensure!(after >= Duration::from_secs(9), "lonely was warned before its grace ended: {after:?}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    ensure!(count(&admin, "lonely", "NoReadyEndpoints").await? == 1, "warned once");
    let late = count(&admin, "late", "NoReadyEndpoints").await?;
    ensure!(late == 0, "late, whose slices came 2 s after it, got {late} NoReadyEndpoints Warnings");
    Ok(())
}

#[test]
fn kubernetes_new_service_is_not_warned_before_its_slices_could_arrive() {
    if skip_kube("kubernetes_new_service_is_not_warned_before_its_slices_could_arrive") {
        return;
    }
    let lab = Lab::new("kgrace", 2, XdpModeChoice::Native).unwrap();
    for i in 0..2 {
        start_backend(&lab, i).unwrap();
    }
    let lb = lab.lb();
    block_on_in(&lb, || grace(&lab)).unwrap();
}

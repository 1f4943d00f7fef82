//! Kubernetes against a real kube-apiserver + etcd, for what goes wrong: an API server
//! outage long enough for every resume point to expire, and reports that must follow a
//! Service's problems as they come, go and come back, each on its own Service.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::core::v1::Service;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Api;
use lb_agent::config::XdpModeChoice;
use lb_tests::kube::fixtures::*;
use lb_tests::kube::ApiServer;
use lb_tests::lab::{Lab, VIP4};
use lb_tests::servers::{split, start_backend, tcp_backends, TCP_PORT};
use serde_json::json;

fn lab(tag: &str, backends: usize) -> Lab {
    let lab = Lab::new(tag, backends, XdpModeChoice::Native).unwrap();
    for i in 0..backends {
        start_backend(&lab, i).unwrap();
    }
    lab
}

/// How long the API server stays down: kube's default watch backoff (0.8 s doubling to
/// 30 s) would have grown past 20 s by then.
const OUTAGE: Duration = Duration::from_secs(25);

async fn outage(lab: &Lab) -> Result<()> {
    let mut api = ApiServer::start().await?;
    let admin = api.client();
    apply_deploy(&admin).await?;
    let agent = start_agent(&api, lab, &[]).await?;
    namespace(&admin, "web").await?;
    // b2 joins later: its pod says it starts at full weight (no slow start to wait out).
    pods(&admin, &BTreeMap::from([(2, "100")]), 3).await?;
    let services: Api<Service> = Api::namespaced(admin.clone(), "web");
    services
        .create(&PostParams::default(), &service("echo", VIP4, json!([{"name": "tcp", "port": TCP_PORT}]))?)
        .await?;
    let ready = (true, true, false);
    put_slice(&admin, "echo", vec![endpoint(0, ready), endpoint(1, ready)]).await?;
    until("b0 and b1 in the maps", Duration::from_secs(20), || async {
        Ok(active_backends(&agent)? == addrs(&[0, 1]))
    })
    .await
    .with_context(|| agent.log_text())?;

    api.stop();
    tokio::time::sleep(OUTAGE / 2).await;
    // Every resume point the watches hold expires: they must relist (410 Gone).
    let revision = compact_etcd(api.etcd_url())?;
    println!("API server down; etcd compacted to revision {revision}");
    tokio::time::sleep(OUTAGE / 2).await;
    ensure!(tcp_backends(lab, vip_sock(TCP_PORT), 50)?.len() == 50, "traffic flows while the API server is down");
    api.restart().await?;

    // A change made once the API server is back reaches the maps, and the traffic, soon.
    let changed = Instant::now();
    put_slice(&admin, "echo", vec![endpoint(0, ready), endpoint(1, ready), endpoint(2, ready)]).await?;
    let lat = until("b2 in the maps after the outage", Duration::from_secs(5), || async {
        Ok(active_backends(&agent)? == addrs(&[0, 1, 2]))
    })
    .await
    .with_context(|| agent.log_text())?;
    let since_change = changed.elapsed();
    println!("API server down {OUTAGE:?}; a change made after it came back reached the maps in {lat:?}");
    ensure!(since_change < Duration::from_secs(5), "the change took {since_change:?}");
    let names = tcp_backends(lab, vip_sock(TCP_PORT), 300)?;
    ensure!(split(&names).contains_key("b2"), "b2 takes connections: {:?}", split(&names));
    let log = agent.log_text();
    ensure!(log.contains("watch resumed"), "the watches' recovery is logged:\n{log}");
    ensure!(log.matches("watch error").count() <= 3, "one warning per watch and outage, not one per retry:\n{log}");
    Ok(())
}

#[test]
fn kubernetes_change_after_an_api_server_outage_reaches_the_maps_within_5s() {
    if skip_kube("kubernetes_change_after_an_api_server_outage_reaches_the_maps_within_5s") {
        return;
    }
    let lab = lab("kout", 3);
    let lb = lab.lb();
    block_on_in(&lb, || outage(&lab)).unwrap();
}

/// Sets a Service's requested address (a server-side apply of the test's own field).
async fn set_address(services: &Api<Service>, name: &str, address: &str) -> Result<()> {
    let patch = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                       "spec": {"loadBalancerIP": address}});
    services.patch(name, &PatchParams::apply("lb-tests-address").force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

async fn count(admin: &kube::Client, service: &str, reason: &str) -> Result<usize> {
    Ok(event_reasons(admin, service).await?.iter().filter(|r| *r == reason).count())
}

async fn reports(lab: &Lab) -> Result<()> {
    let api = ApiServer::start().await?;
    let admin = api.client();
    apply_deploy(&admin).await?;
    let agent = start_agent(&api, lab, &[]).await?;
    namespace(&admin, "web").await?;
    pods(&admin, &BTreeMap::new(), 2).await?;
    let services: Api<Service> = Api::namespaced(admin.clone(), "web");
    let pp = PostParams::default();
    services.create(&pp, &service("good", VIP4, json!([{"name": "tcp", "port": TCP_PORT}]))?).await?;
    let ready = (true, true, false);
    put_slice(&admin, "good", vec![endpoint(0, ready), endpoint(1, ready)]).await?;
    services.create(&pp, &service("flaky", "not-an-ip", json!([{"name": "tcp", "port": 8080}]))?).await?;

    // Bad, fixed, bad again: a Warning Event each time it goes bad.
    let wait_events = |n: usize| {
        let admin = admin.clone();
        async move {
            until(&format!("{n} InvalidAddress Events on flaky"), Duration::from_secs(15), || async {
                Ok(count(&admin, "flaky", "InvalidAddress").await? >= n)
            })
            .await
        }
    };
    wait_events(1).await.with_context(|| agent.log_text())?;
    set_address(&services, "flaky", "192.0.2.101").await?;
    until("flaky's condition without the address problem", Duration::from_secs(15), || async {
        // Its VIP is in the data plane, with no endpoint to serve it (it has none).
        Ok(condition(&services, "flaky").await?["reason"] == "NoServingBackends")
    })
    .await
    .with_context(|| agent.log_text())?;
    set_address(&services, "flaky", "still-not-an-ip").await?;
    wait_events(2).await.with_context(|| agent.log_text())?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n = count(&admin, "flaky", "InvalidAddress").await?;
    ensure!(n == 2, "made bad twice, reported twice (not more): {n}");
    println!("flaky: bad, fixed, bad again -> {n} InvalidAddress Events");

    // A Service whose VIP the kernel refuses (::1): whatever becomes of it, the good
    // Service's condition never carries its error, and the good one keeps serving.
    services.create(&pp, &service("refused", "::1", json!([{"name": "tcp", "port": TCP_PORT}]))?).await?;
    until("refused's InvalidAddress Event (a loopback address can be no VIP)", Duration::from_secs(15), || async {
        Ok(count(&admin, "refused", "InvalidAddress").await? >= 1)
    })
    .await
    .with_context(|| agent.log_text())?;
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let c = condition(&services, "good").await?;
        let message = c["message"].as_str().unwrap_or_default().to_string();
        ensure!(!message.contains("::1"), "good's condition carries refused's error: {c}");
        if seen.last() != Some(&message) {
            seen.push(message);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("good's condition messages while refused exists: {seen:?}");
    let names = tcp_backends(lab, vip_sock(TCP_PORT), 200)?;
    ensure!(split(&names).len() == 2, "good's traffic reaches both backends: {:?}", split(&names));
    services.delete("refused", &DeleteParams::default()).await?;
    until("good programmed", Duration::from_secs(15), || async {
        Ok(condition(&services, "good").await?["status"] == "True")
    })
    .await
    .with_context(|| agent.log_text())?;
    Ok(())
}

#[test]
fn kubernetes_problems_are_reported_again_when_they_return_and_only_on_their_service() {
    if skip_kube("kubernetes_problems_are_reported_again_when_they_return_and_only_on_their_service") {
        return;
    }
    let lab = lab("krep", 2);
    let lb = lab.lb();
    block_on_in(&lb, || reports(&lab)).unwrap();
}

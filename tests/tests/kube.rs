//! Kubernetes end to end: a real kube-apiserver + etcd, the agent running as the
//! ServiceAccount of `deploy/` with exactly its RBAC, and real traffic in the lab.
//!
//! The control plane runs inside the lab's LB namespace (so the agent, also there,
//! reaches it on 127.0.0.1); the test body runs on a runtime on a thread in that
//! namespace. EndpointSlices are written by the test, as the EndpointSlice controller
//! would (no kubelet runs pods here).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use lb_agent::config::XdpModeChoice;
use lb_tests::agent::{Agent, PinnedMaps};
use lb_tests::kube::fixtures::*;
use lb_tests::kube::ApiServer;
use lb_tests::lab::{backend_addrs, Lab, VIP4};
use lb_tests::servers::{split, start_backend, tcp_backends, udp_backends, TCP_PORT, UDP_PORT};
use serde_json::json;

async fn pod_progress(client: &Client, i: usize) -> Result<Option<String>> {
    let p = Api::<Pod>::namespaced(client.clone(), "web").get(&format!("b{i}")).await?;
    Ok(p.metadata.labels.and_then(|l| l.get("progress").cloned()))
}

async fn service_to_traffic(lab: &Lab) -> Result<()> {
    let mut api = ApiServer::start().await?;
    println!("kube-apiserver ready in {:?}", api.last_start());
    let admin = api.client();
    apply_deploy(&admin).await?;
    let mut agent =
        // A UDP flow counts as live until it has been silent for the flow idle timeout:
        // 3 s lets the drained backend's UDP flows (one-request sockets) end in time.
        start_agent(&api, lab, &["--ramp-interval", "1s", "--ramp-step", "50", "--drain-min", "2s", "--flow-idle-timeout", "3s"])
            .await?;
    namespace(&admin, "web").await?;
    pods(&admin, &BTreeMap::from([(3, "0")]), 4).await?;
    let svc = service(
        "echo",
        VIP4,
        json!([{"name": "tcp", "port": TCP_PORT}, {"name": "udp", "port": UDP_PORT, "protocol": "UDP"}]),
    )?;
    let services: Api<Service> = Api::namespaced(admin.clone(), "web");
    services.create(&PostParams::default(), &svc).await?;
    let ready = (true, true, false);
    let t0 = Instant::now();
    put_slice(&admin, "echo", (0..3).map(|i| endpoint(i, ready)).collect()).await?;
    until("the three endpoints in the maps", Duration::from_secs(20), || async {
        Ok(active_backends(&agent)? == addrs(&[0, 1, 2]))
    })
    .await
    .with_context(|| agent.log_text())?;
    println!("EndpointSlice created -> maps programmed: {:?} (agent start included)", t0.elapsed());

    // Status: the ingress with ipMode, and this host's condition.
    until("Service status", Duration::from_secs(10), || async {
        let s = services.get("echo").await?;
        let st = serde_json::to_value(s.status.unwrap_or_default())?;
        let ingress_ok = st["loadBalancer"]["ingress"] == json!([{"ip": VIP4, "ipMode": "VIP"}]);
        let cond_ok = st["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "lb-agent.io/Programmed-lbtest" && c["status"] == "True"));
        Ok(ingress_ok && cond_ok)
    })
    .await?;
    let tcp = tcp_backends(lab, vip_sock(TCP_PORT), 600)?;
    let udp = udp_backends(lab, vip_sock(UDP_PORT), 300)?;
    println!("TCP split {:.3?}, UDP split {:.3?}", split(&tcp), split(&udp));
    for share in split(&tcp).values().chain(split(&udp).values()) {
        ensure!((share - 1.0 / 3.0).abs() < 0.08, "equal weights: {:?}", split(&tcp));
    }

    // A new endpoint whose pod says progress=0 ramps; the agent writes progress back.
    let t1 = Instant::now();
    put_slice(&admin, "echo", (0..4).map(|i| endpoint(i, ready)).collect()).await?;
    let lat =
        until("b3 in the maps", Duration::from_secs(10), || async { Ok(active_backends(&agent)?.len() == 4) }).await?;
    println!("EndpointSlice update -> map update: {lat:?}");
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let p = pod_progress(&admin, 3).await?.unwrap_or_default();
        if seen.last() != Some(&p) {
            seen.push(p.clone());
        }
        if p == "100" {
            break;
        }
        ensure!(Instant::now() < deadline, "b3's progress label never reached 100: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("b3 progress label: {seen:?} ({:?} after the update)", t1.elapsed());
    ensure!(seen.iter().any(|p| p == "50"), "the ramp is visible step by step: {seen:?}");

    // A terminating-but-serving endpoint drains: no new connections.
    put_slice(
        &admin,
        "echo",
        vec![endpoint(0, ready), endpoint(1, (false, true, true)), endpoint(2, ready), endpoint(3, ready)],
    )
    .await?;
    until("b1 draining", Duration::from_secs(10), || async {
        Ok(!active_backends(&agent)?.contains(&backend_addrs(1).0))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        !tcp_backends(lab, vip_sock(TCP_PORT), 300)?.iter().any(|b| b == "b1"),
        "a draining endpoint got new connections"
    );

    // The API server goes away: the data plane keeps serving; it comes back: converge.
    api.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(tcp_backends(lab, vip_sock(TCP_PORT), 100)?.len() == 100, "traffic flows while the API server is down");
    api.restart().await?;
    put_slice(&admin, "echo", vec![endpoint(0, ready), endpoint(2, ready), endpoint(3, ready)]).await?;
    let lat = until("convergence after the API server restart", Duration::from_secs(30), || async {
        let m = PinnedMaps::open(&agent.pin_dir)?;
        Ok(m.backend_by_addr(backend_addrs(1).0)?.is_none() && active_backends(&agent)? == addrs(&[0, 2, 3]))
    })
    .await
    .with_context(|| agent.log_text())?;
    println!("after the API server restart, converged in {lat:?}");

    // Events: the Service was reported programmed.
    let events: Api<Event> = Api::namespaced(admin.clone(), "web");
    let reasons: Vec<String> =
        events.list(&ListParams::default()).await?.items.into_iter().filter_map(|e| e.reason).collect();
    ensure!(reasons.iter().any(|r| r == "Programmed"), "a Programmed Event: {reasons:?}");

    // The Service goes: its VIPs leave the maps and the interface.
    services.delete("echo", &DeleteParams::default()).await?;
    until("VIPs removed", Duration::from_secs(10), || async {
        Ok(PinnedMaps::open(&agent.pin_dir)?.vip_count()? == 0)
    })
    .await?;
    let addrs = lb_tests::netns::ip(&lab.lb(), &["-br", "addr", "show", "eth0"])?;
    ensure!(!addrs.contains(VIP4), "VIP address removed: {addrs}");
    agent.wait_programmed(0, 0).context("nothing left programmed after the Service went")?;
    Ok(())
}

#[test]
fn kubernetes_service_becomes_balanced_traffic() {
    if skip_kube("kubernetes_service_becomes_balanced_traffic") {
        return;
    }
    let lab = Lab::new("kube", 4, XdpModeChoice::Native).unwrap();
    for i in 0..4 {
        start_backend(&lab, i).unwrap();
    }
    let lb = lab.lb();
    block_on_in(&lb, || service_to_traffic(&lab)).unwrap();
}

async fn bad_services_and_rbac(lab: &Lab) -> Result<()> {
    let api = ApiServer::start().await?;
    let admin = api.client();
    apply_deploy(&admin).await?;
    namespace(&admin, "web").await?;
    pods(&admin, &BTreeMap::new(), 2).await?;

    // Without the RBAC of deploy/, the agent says which permission it lacks and never
    // programs anything.
    let nobody = api.service_account_token("lb-system", "nobody").await?;
    let kc = api.kubeconfig(&nobody).to_string_lossy().to_string();
    let unauthorized = Agent::start_kube(lab, &["--kubeconfig", &kc, "--metrics-addr", "off"])?;
    let log = {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let log = unauthorized.log_text();
            if log.contains("cannot list resource \"services\"") || Instant::now() > deadline {
                break log;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    ensure!(
        log.contains("services is forbidden") && log.contains("cannot list resource \"services\""),
        "the missing permission is named:\n{log}"
    );
    ensure!(!log.contains("ready: first sync done"), "nothing is applied without the caches");
    unauthorized.kill()?;
    println!("without RBAC: {}", log.lines().find(|l| l.contains("forbidden")).unwrap_or("").trim());

    let agent = start_agent(&api, lab, &[]).await?;
    let services: Api<Service> = Api::namespaced(admin.clone(), "web");
    let pp = PostParams::default();
    services.create(&pp, &service("echo", VIP4, json!([{"name": "tcp", "port": TCP_PORT}]))?).await?;
    put_slice(&admin, "echo", vec![endpoint(0, (true, true, false)), endpoint(1, (true, true, false))]).await?;
    services.create(&pp, &service("bad-address", "not-an-ip", json!([{"name": "tcp", "port": 80}]))?).await?;
    services
        .create(
            &pp,
            &service(
                "sctp",
                "192.0.2.101",
                json!([{"name": "s", "port": 80, "protocol": "SCTP"}, {"name": "tcp", "port": TCP_PORT}]),
            )?,
        )
        .await?;
    services.create(&pp, &service("thief", VIP4, json!([{"name": "tcp", "port": TCP_PORT}]))?).await?;

    let want = [
        ("bad-address", "InvalidAddress"),
        ("sctp", "UnsupportedProtocol"),
        ("sctp", "NoReadyEndpoints"),
        ("thief", "AddressConflict"),
        ("echo", "Programmed"),
    ];
    for (svc, reason) in want {
        until(&format!("{reason} Event on {svc}"), Duration::from_secs(15), || async {
            Ok(event_reasons(&admin, svc).await?.iter().any(|r| r == reason))
        })
        .await
        .with_context(|| agent.log_text())?;
    }
    // The good Service is untouched by the others: programmed, and its traffic flows.
    let names = tcp_backends(lab, vip_sock(TCP_PORT), 200)?;
    ensure!(split(&names).len() == 2, "echo's traffic reaches both backends: {:?}", split(&names));
    let st = serde_json::to_value(services.get("echo").await?.status.unwrap_or_default())?;
    ensure!(st["loadBalancer"]["ingress"] == json!([{"ip": VIP4, "ipMode": "VIP"}]), "echo's status: {st}");
    let thief = serde_json::to_value(services.get("thief").await?.status.unwrap_or_default())?;
    let cond = &thief["conditions"][0];
    ensure!(cond["status"] == "False" && cond["reason"] == "NotProgrammed", "thief's condition: {cond}");
    println!(
        "events: bad-address {:?}, thief {:?}",
        event_reasons(&admin, "bad-address").await?,
        event_reasons(&admin, "thief").await?
    );
    Ok(())
}

#[test]
fn kubernetes_bad_services_and_missing_rbac() {
    if skip_kube("kubernetes_bad_services_and_missing_rbac") {
        return;
    }
    let lab = Lab::new("kbad", 2, XdpModeChoice::Native).unwrap();
    for i in 0..2 {
        start_backend(&lab, i).unwrap();
    }
    let lb = lab.lb();
    block_on_in(&lb, || bad_services_and_rbac(&lab)).unwrap();
}

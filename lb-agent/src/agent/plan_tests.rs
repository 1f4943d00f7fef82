//! The loop's sync, reload-shaped changes and drains, run against the fake data plane:
//! plan -> apply -> failures, as `serve` chains them, without netlink or maps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::agent::failures::Failures;
use crate::dataplane::fake::FakeDataplane;
use crate::dataplane::{Dataplane, Snapshot};
use crate::model::{BackendSpec, VipSpec};
use crate::ramp::{DrainPolicy, Event, RampPolicy};

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

fn vip(port: u16) -> Vip {
    format!("192.0.2.1:{port}/tcp").parse().unwrap()
}

fn backend(i: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, i])
}

fn spec(backends: &[u8]) -> VipSpec {
    VipSpec { backends: backends.iter().map(|&i| BackendSpec::new(backend(i), 1)).collect(), ..Default::default() }
}

/// The loop's state around a fake data plane.
struct Loop {
    dp: FakeDataplane,
    desired: Desired,
    ramp: Ramp,
    users: Users,
    failures: Failures,
    live: BTreeMap<(Vip, IpAddr), u64>,
    drain: DrainPolicy,
    now_ms: u64,
}

impl Loop {
    fn new(dp: FakeDataplane) -> Self {
        let drain = DrainPolicy { min_drain: Duration::ZERO, timeout: Duration::from_secs(300) };
        Loop {
            dp,
            desired: Desired::default(),
            ramp: Ramp::default(),
            users: Users::default(),
            failures: Failures::default(),
            live: BTreeMap::new(),
            drain,
            now_ms: 1_000_000,
        }
    }

    /// One sync of `vips` (all wanted and ramping VIPs when `None`); returns the plan's
    /// events and the failures new in it.
    fn sync(&mut self, vips: Option<&[Vip]>) -> (Vec<Event>, Vec<crate::dataplane::VipFailure>) {
        let all = vips.is_none();
        let tried: BTreeSet<Vip> = match vips {
            Some(v) => v.iter().copied().collect(),
            None => self.desired.vips.keys().copied().chain(self.ramp.vips()).collect(),
        };
        let input = Inputs {
            desired: &self.desired,
            ramp: RampPolicy { step: 25, interval: Duration::from_secs(1) },
            drain: &self.drain,
            live: &self.live,
            mac: &|_| Some(MAC),
            now_ms: self.now_ms,
        };
        let p = plan(&tried, &input, &mut self.ramp, &mut self.users);
        let report = if all {
            let vips = p.changes.iter().filter_map(|(v, s)| Some((*v, s.clone()?))).collect();
            self.dp.apply(&Snapshot { vips }).unwrap()
        } else {
            self.dp.apply_vips(&p.changes).unwrap()
        };
        let changes = self.failures.update(&tried, &report.failed, Instant::now());
        (p.events, changes.new)
    }

    fn maintain(&mut self) {
        use crate::dataplane::Census;
        self.dp.census(Duration::from_secs(30)).run();
        self.live = self.dp.maintain(()).unwrap().live_flows;
    }
}

#[test]
fn vips_that_do_not_fit_are_reported_and_the_others_applied() {
    let mut l = Loop::new(FakeDataplane { capacity: Some(2), ..Default::default() });
    for port in [80, 81, 82] {
        l.desired.vips.insert(vip(port), spec(&[1, 2]));
    }
    let (_, new) = l.sync(None);
    assert_eq!(l.dp.current().vips.keys().copied().collect::<Vec<_>>(), vec![vip(80), vip(81)]);
    assert_eq!(new.len(), 1);
    assert!(new[0].capacity && new[0].vip == vip(82), "{new:?}");
    // Retried: still no room, not reported again; a change to a VIP that fits lands.
    l.desired.vips.insert(vip(80), spec(&[1, 2, 3]));
    let (_, new) = l.sync(Some(&[vip(80), vip(82)]));
    assert!(new.is_empty());
    assert_eq!(l.dp.current().vips[&vip(80)].backends.len(), 3);
    // Room again: the retry applies it and the failure is gone.
    l.desired.vips.remove(&vip(81));
    l.sync(Some(&[vip(81)]));
    l.sync(Some(&l.failures.due(Instant::now() + crate::agent::failures::RETRY)));
    assert!(l.dp.current().vips.contains_key(&vip(82)));
    assert_eq!(l.failures.len(), 0);
}

#[test]
fn a_refused_vip_never_stops_the_others() {
    let mut l = Loop::new(FakeDataplane { refuse: [vip(81)].into(), ..Default::default() });
    l.desired.vips.insert(vip(80), spec(&[1]));
    l.desired.vips.insert(vip(81), spec(&[1]));
    let (_, new) = l.sync(None);
    assert_eq!(new.len(), 1);
    assert!(new[0].message.contains("os error"), "the OS error is kept: {}", new[0].message);
    l.desired.vips.insert(vip(80), spec(&[1, 2]));
    l.sync(Some(&[vip(80), vip(81)]));
    assert_eq!(l.dp.current().vips[&vip(80)].backends.len(), 2);
    assert!(!l.dp.current().vips.contains_key(&vip(81)));
}

#[test]
fn a_drain_ends_when_its_flows_do() {
    let mut l = Loop::new(FakeDataplane::default());
    l.desired.vips.insert(vip(80), spec(&[1, 2]));
    l.sync(None);
    // Backend 2 leaves: it drains with weight 0 while it has live flows.
    l.desired.vips.insert(vip(80), spec(&[1]));
    let (events, _) = l.sync(Some(&[vip(80)]));
    assert!(events.iter().any(|e| matches!(e, Event::DrainStarted { backend: b, .. } if *b == backend(2))));
    let held = &l.dp.current().vips[&vip(80)].backends;
    let b2 = held.iter().find(|b| b.addr == backend(2)).expect("still held while draining");
    assert!(b2.draining && b2.weight == 0);
    l.dp.live.insert((vip(80), backend(2)), 5);
    l.maintain();
    l.now_ms += 10_000;
    l.sync(Some(&[vip(80)]));
    assert!(l.dp.current().vips[&vip(80)].backends.iter().any(|b| b.addr == backend(2)), "5 live flows: kept");
    l.dp.live.insert((vip(80), backend(2)), 0);
    l.maintain();
    l.now_ms += 1_000;
    let (events, _) = l.sync(Some(&[vip(80)]));
    assert!(events.iter().any(|e| matches!(e, Event::DrainFinished { live_flows: 0, timed_out: false, .. })));
    assert!(l.dp.current().vips[&vip(80)].backends.iter().all(|b| b.addr != backend(2)));
}

#[test]
fn a_backend_that_joins_ramps_and_a_removed_vip_is_gone() {
    let mut l = Loop::new(FakeDataplane::default());
    l.desired.vips.insert(vip(80), VipSpec { backends: vec![BackendSpec::new(backend(1), 100)], ..Default::default() });
    l.sync(None);
    l.desired.vips.get_mut(&vip(80)).unwrap().backends.push(BackendSpec::new(backend(2), 100));
    l.sync(Some(&[vip(80)]));
    let weight =
        |l: &Loop| l.dp.current().vips[&vip(80)].backends.iter().find(|b| b.addr == backend(2)).unwrap().weight;
    let first = weight(&l);
    assert!(first < 100, "a joining backend starts below its target: {first}");
    l.now_ms += 1_000;
    l.sync(Some(&[vip(80)]));
    assert!(weight(&l) > first, "and rises with time");
    l.desired.vips.remove(&vip(80));
    l.sync(None);
    assert!(l.dp.current().vips.is_empty());
    assert_eq!(l.dp.programmed(&vip(80)), None);
}

#[test]
fn a_weight_1_backend_ramps_through_levels_and_first_backends_start_full() {
    let mut l = Loop::new(FakeDataplane::default());
    // The Service is seen before its EndpointSlice: no backends yet.
    l.desired.vips.insert(vip(80), spec(&[]));
    l.sync(None);
    l.desired.vips.insert(vip(80), spec(&[1, 2, 3]));
    l.sync(Some(&[vip(80)]));
    let shares =
        |l: &Loop| -> Vec<u32> { l.dp.current().vips[&vip(80)].backends.iter().map(|b| b.share_weight()).collect() };
    assert_eq!(shares(&l), vec![100, 100, 100], "a VIP's first backends start at full weight");
    // A 4th weight-1 backend joins: its share of new flows rises step by step.
    l.desired.vips.insert(vip(80), spec(&[1, 2, 3, 4]));
    let mut levels = Vec::new();
    for _ in 0..5 {
        l.sync(Some(&[vip(80)]));
        let s = shares(&l);
        levels.push(s[3] as f64 / s.iter().sum::<u32>() as f64);
        l.now_ms += 1_000;
    }
    levels.dedup();
    assert!(levels.len() >= 4 && levels.windows(2).all(|w| w[0] < w[1]), "rising levels: {levels:?}");
    assert!((levels.last().unwrap() - 0.25).abs() < 1e-9, "ends at a full share: {levels:?}");
}

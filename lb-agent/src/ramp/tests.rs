use super::*;

const S: u64 = 1000;

fn vip() -> Vip {
    "192.0.2.1:80/tcp".parse().unwrap()
}
fn a(last: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, last])
}
fn w(last: u8, target: u32) -> Wanted {
    Wanted { addr: a(last), target, start_progress: None, draining: false }
}
fn wanted(list: Vec<Wanted>) -> BTreeMap<Vip, (RampPolicy, Vec<Wanted>)> {
    BTreeMap::from([(vip(), (RampPolicy { step: 20, interval: Duration::from_secs(10) }, list))])
}
fn weights(out: &BTreeMap<Vip, Vec<Effective>>) -> Vec<(u8, u32, u32, bool)> {
    out[&vip()]
        .iter()
        .map(|e| (if let IpAddr::V4(v) = e.addr { v.octets()[3] } else { 0 }, e.weight, e.progress, e.draining))
        .collect()
}

#[test]
fn initial_backends_start_full_later_ones_ramp() {
    let mut r = Ramp::default();
    let mut ev = vec![];
    let d = DrainPolicy::default();
    let out = r.advance(&wanted(vec![w(1, 100)]), &d, 0, |_, _| None, &mut ev);
    assert_eq!(weights(&out), vec![(1, 100, 100, false)]);
    // A new backend: 0 %, then +20 points per 10 s, to 100 %.
    let table = [(0, 0), (9 * S, 0), (10 * S, 20), (25 * S, 40), (50 * S, 100), (80 * S, 100)];
    for (t, progress) in table {
        let out = r.advance(&wanted(vec![w(1, 100), w(2, 50)]), &d, 1 + t, |_, _| None, &mut ev);
        assert_eq!(weights(&out)[1], (2, 50 * progress / 100, progress, false), "at {t} ms");
    }
    assert!(ev.contains(&Event::RampStarted { vip: vip(), backend: a(2), progress: 0 }));
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::RampFinished { .. })).count(), 1);
}

#[test]
fn start_progress_and_restore_continue_the_ramp() {
    let mut r = Ramp::default();
    let mut ev = vec![];
    let d = DrainPolicy::default();
    r.advance(&wanted(vec![w(1, 10)]), &d, 0, |_, _| None, &mut ev);
    let mut b = w(2, 10);
    b.start_progress = Some(40);
    let out = r.advance(&wanted(vec![w(1, 10), b]), &d, 100 * S, |_, _| None, &mut ev);
    assert_eq!(weights(&out)[1], (2, 4, 40, false));
    // "Restart": a new Ramp restored from the record keeps going from 40 %, never 0.
    let rec = *r.record(&vip(), a(2)).unwrap();
    let mut r2 = Ramp::default();
    r2.restore(vip(), a(1), *r.record(&vip(), a(1)).unwrap());
    r2.restore(vip(), a(2), rec);
    let out = r2.advance(&wanted(vec![w(1, 10), b]), &d, 115 * S, |_, _| None, &mut ev);
    assert_eq!(weights(&out)[1], (2, 6, 60, false));
}

#[test]
fn drain_keeps_backend_until_flows_end_or_timeout() {
    let mut r = Ramp::default();
    let mut ev = vec![];
    let d = DrainPolicy { min_drain: Duration::from_secs(5), timeout: Duration::from_secs(60) };
    r.advance(&wanted(vec![w(1, 1), w(2, 1)]), &d, 0, |_, _| None, &mut ev);
    // Backend 2 leaves: weight 0 at once, kept while it has flows.
    let out = r.advance(&wanted(vec![w(1, 1)]), &d, S, |_, _| Some(3), &mut ev);
    assert_eq!(weights(&out), vec![(1, 1, 100, false), (2, 0, 100, true)]);
    // No flows, but before min_drain: kept.
    let out = r.advance(&wanted(vec![w(1, 1)]), &d, 3 * S, |_, _| Some(0), &mut ev);
    assert_eq!(out[&vip()].len(), 2);
    // No flows after min_drain: gone.
    let out = r.advance(&wanted(vec![w(1, 1)]), &d, 7 * S, |_, _| Some(0), &mut ev);
    assert_eq!(weights(&out), vec![(1, 1, 100, false)]);
    assert!(ev.contains(&Event::DrainFinished { vip: vip(), backend: a(2), live_flows: 0, timed_out: false }));
    // Marked draining by the source, flows never end: gone at the timeout.
    let mut b = w(1, 1);
    b.draining = true;
    let out = r.advance(&wanted(vec![b]), &d, 10 * S, |_, _| Some(9), &mut ev);
    assert_eq!(weights(&out), vec![(1, 0, 100, true)]);
    let out = r.advance(&wanted(vec![b]), &d, 71 * S, |_, _| Some(9), &mut ev);
    assert!(out[&vip()].is_empty());
    assert!(ev.contains(&Event::DrainFinished { vip: vip(), backend: a(1), live_flows: 9, timed_out: true }));
}

#[test]
fn vip_never_goes_dark_while_backends_ramp() {
    let mut r = Ramp::default();
    let mut ev = vec![];
    let d = DrainPolicy::default();
    r.advance(&wanted(vec![w(1, 10)]), &d, 0, |_, _| None, &mut ev);
    // The only backend is replaced by a new one at 0 %: it gets one step's weight.
    let out = r.advance(&wanted(vec![w(2, 10)]), &d, S, |_, _| Some(5), &mut ev);
    assert_eq!(weights(&out), vec![(2, 2, 0, false), (1, 0, 100, true)]);
}

#[test]
fn effective_weights() {
    assert_eq!(effective_weight(100, 20), 20);
    assert_eq!(effective_weight(3, 20), 1); // never 0 while both are positive
    assert_eq!(effective_weight(0, 100), 0);
    assert_eq!(effective_weight(7, 0), 0);
    assert_eq!(effective_weight(65_535, 100), 65_535);
}

#[test]
fn busy_vips_are_those_ramping_or_draining() {
    let mut r = Ramp::default();
    let mut ev = vec![];
    let d = DrainPolicy { min_drain: Duration::from_secs(0), timeout: Duration::from_secs(300) };
    let p = RampPolicy { step: 50, interval: Duration::from_secs(10) };
    r.advance_vip(&vip(), &p, &[w(1, 10)], &d, 0, &|_, _| None, &mut ev);
    assert!(!r.busy(), "a new VIP starts at full weight");
    r.advance_vip(&vip(), &p, &[w(1, 10), w(2, 10)], &d, 1, &|_, _| None, &mut ev);
    assert_eq!(r.busy_vips().iter().collect::<Vec<_>>(), vec![&vip()]);
    r.advance_vip(&vip(), &p, &[w(1, 10), w(2, 10)], &d, 20 * S + 1, &|_, _| None, &mut ev);
    assert!(!r.busy(), "ramp finished");
    // Backend 2 leaves: draining until its flows are gone.
    r.advance_vip(&vip(), &p, &[w(1, 10)], &d, 21 * S, &|_, _| Some(3), &mut ev);
    assert!(r.busy());
    let out = r.advance_vip(&vip(), &p, &[w(1, 10)], &d, 22 * S, &|_, _| Some(0), &mut ev);
    assert_eq!(out.len(), 1);
    assert!(!r.busy());
    r.remove_vip(&vip());
    assert_eq!(r.vips().count(), 0);
}

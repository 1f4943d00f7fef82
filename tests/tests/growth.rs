//! A VIP's table is sized from its backends and grows with them: the XDP program run
//! through BPF_PROG_TEST_RUN on hand-built frames. What is checked is what a user sees:
//! established connections keep their backend across the growth (the backend each was
//! on is what the kernel did before, not a prediction), new connections spread over all
//! backends, and the replaced table map is released.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions};
use lb_agent::dataplane::xdp::loader::{self, LoadOptions, PROG_LB};
use lb_agent::dataplane::xdp::XdpDataplane;
use lb_agent::dataplane::{Census, Dataplane, SnapBackend, SnapVip, Snapshot};
use lb_agent::model::Vip;
use lb_tests::frames::{Frame, ACK, LB_MAC, SYN, TCP};

const XDP_TX: u32 = 3;

fn backends(n: u8) -> Vec<SnapBackend> {
    (1..=n)
        .map(|i| {
            let addr: IpAddr = format!("10.0.1.{i}").parse().unwrap();
            SnapBackend::steady(addr, 1, Some([0x02, 0xbe, 0, 0, 1, i]))
        })
        .collect()
}

fn snapshot(vip: Vip, n: u8) -> Snapshot {
    let mut s = Snapshot::default();
    s.vips.insert(vip, SnapVip { backends: backends(n), ..SnapVip::default() });
    s
}

/// The destination MAC the program gave one frame.
fn run(prog: &aya::programs::Xdp, f: &Frame) -> [u8; 6] {
    let input = f.bytes();
    let mut out = vec![0u8; input.len() + 256];
    let opts = TestRunOptions { data_in: Some(&input), data_out: Some(&mut out), ..TestRunOptions::default() };
    let r = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
    assert_eq!(r.return_value, XDP_TX, "frame from port {} forwarded", f.sport);
    out[..6].try_into().unwrap()
}

#[test]
fn a_growing_table_keeps_established_connections() {
    if lb_tests::skip("a_growing_table_keeps_established_connections") {
        return;
    }
    let opts = LoadOptions {
        table_size: 65_536,
        max_vips: 4,
        max_backends: 64,
        max_flows: 65_536,
        hash_seed: 7,
        lb_mac: LB_MAC,
        flow_idle_ns: 120_000_000_000,
    };
    let loader::Loaded { ebpf, maps, .. } = loader::load(&opts).expect("load XDP object");
    let prog = loader::program(&ebpf, PROG_LB).unwrap();
    let mut dp = XdpDataplane::new(maps, &opts);
    let vip: Vip = "192.0.2.20:80/tcp".parse().unwrap();
    let size = |dp: &XdpDataplane| dp.maps().vips.get(&vip.key(), 0).unwrap().table_size();

    // Two backends: the smallest table.
    dp.apply(&snapshot(vip, 2)).unwrap();
    assert_eq!(size(&dp), 256, "2 backends: 256 slots");
    let conns: Vec<Frame> = (0..2000u16)
        .map(|i| Frame { tcp_flags: ACK, ..Frame::new("203.0.113.7".parse().unwrap(), vip.addr, TCP, 10_000 + i, 80) })
        .collect();
    let before: Vec<[u8; 6]> = conns.iter().map(|f| run(prog, f)).collect();

    // Thirty backends: 3,000 slots wanted, the table grows to 8,192 (x32).
    dp.apply(&snapshot(vip, 30)).unwrap();
    assert_eq!(size(&dp), 8192, "30 backends: 8,192 slots");
    for (f, old) in conns.iter().zip(&before) {
        assert_eq!(&run(prog, f), old, "established connection from port {} kept its backend", f.sport);
    }
    // New connections spread over all thirty.
    let mut share: BTreeMap<[u8; 6], u32> = BTreeMap::new();
    for i in 0..6000u16 {
        let syn =
            Frame { tcp_flags: SYN, ..Frame::new("198.51.100.3".parse().unwrap(), vip.addr, TCP, 20_000 + i, 80) };
        *share.entry(run(prog, &syn)).or_default() += 1;
    }
    let (min, max) = (share.values().min().copied().unwrap(), share.values().max().copied().unwrap());
    println!("new connections over {} backends: {min}..{max} each (200 expected)", share.len());
    assert_eq!(share.len(), 30, "every backend gets new connections");
    assert!(min >= 120 && max <= 290, "shares within reason of 1/30: {min}..{max}");
    // Established connections still where they were after the new ones.
    for (f, old) in conns.iter().zip(&before) {
        assert_eq!(&run(prog, f), old, "connection from port {} after new ones", f.sport);
    }

    // Fewer backends again: the table does not shrink (established flows would move).
    dp.apply(&snapshot(vip, 3)).unwrap();
    assert_eq!(size(&dp), 8192, "a table never shrinks while its VIP lives");

    // The replaced 256-slot table map goes once no packet can be using it.
    let tables = |dp: &XdpDataplane| (dp.maps().tables.held(), dp.maps().tables.retired());
    assert_eq!(tables(&dp), (1, 1), "the grown table held, the one it replaced waiting");
    std::thread::sleep(Duration::from_millis(1100));
    let found = dp.census(Duration::from_secs(120)).run();
    dp.maintain(found).unwrap();
    assert_eq!(tables(&dp), (1, 0), "the replaced table map was released");
    // A removed VIP releases its table map too.
    dp.apply(&Snapshot::default()).unwrap();
    assert_eq!(tables(&dp), (0, 1), "the removed VIP's table map waits for the sweep");
    std::thread::sleep(Duration::from_millis(1100));
    let found = dp.census(Duration::from_secs(120)).run();
    dp.maintain(found).unwrap();
    assert_eq!(tables(&dp), (0, 0), "and are released");
}

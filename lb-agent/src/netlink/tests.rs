use super::neigh::usable_neighbour;
use super::*;

fn link(addrs: &[(&str, u8)]) -> Link {
    Link {
        index: 2,
        name: "eth0".into(),
        mac: [2, 0, 0, 0, 0, 1],
        addrs: addrs.iter().map(|(a, p)| (a.parse().unwrap(), *p)).collect(),
        gateways: vec!["10.1.2.254".parse().unwrap(), "fe80::1".parse().unwrap()],
    }
}

#[test]
fn host_conflicts() {
    let l = link(&[("10.1.2.3", 24), ("192.0.2.100", 32), ("10.9.0.1", 31), ("2001:db8::5", 64)]);
    let vips: std::collections::BTreeSet<IpAddr> = [ip("192.0.2.100")].into();
    let why = |a: &str| host_conflict(&l, &vips, ip(a));
    assert!(why("10.1.2.3").unwrap().contains("this host's own address on eth0 (10.1.2.3/24)"));
    assert!(why("2001:db8::5").unwrap().contains("own address"));
    assert!(why("10.1.2.254").unwrap().contains("gateway of a route out of eth0"));
    assert!(why("fe80::1").unwrap().contains("gateway"));
    assert!(why("10.1.2.255").unwrap().contains("broadcast address of 10.1.2.3/24"));
    // A VIP an agent added is not the host's; a /31 has no broadcast; others are free.
    assert_eq!(why("192.0.2.100"), None);
    assert_eq!(why("10.9.0.0"), None);
    assert_eq!(why("10.1.2.7"), None);
    assert_eq!(why("2001:db8::6"), None);
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn on_link_v4() {
    let l = link(&[("10.1.2.3", 24), ("172.16.5.9", 12), ("192.0.2.100", 32)]);
    assert!(on_link(&l, ip("10.1.2.1")));
    assert!(on_link(&l, ip("10.1.2.255")));
    assert!(!on_link(&l, ip("10.1.3.1")));
    assert!(on_link(&l, ip("172.31.255.254")));
    assert!(on_link(&l, ip("172.16.0.1")));
    assert!(!on_link(&l, ip("172.32.0.1")));
    assert!(on_link(&l, ip("192.0.2.100")));
    assert!(!on_link(&l, ip("192.0.2.101")));
    assert!(!on_link(&l, ip("::ffff:10.1.2.1")));
}

#[test]
fn on_link_v4_odd_prefixes() {
    assert!(on_link(&link(&[("10.0.0.5", 31)]), ip("10.0.0.4")));
    assert!(!on_link(&link(&[("10.0.0.5", 31)]), ip("10.0.0.6")));
    assert!(on_link(&link(&[("10.0.0.5", 0)]), ip("203.0.113.7")));
    assert!(on_link(&link(&[("10.0.0.5", 1)]), ip("127.0.0.1")));
    assert!(!on_link(&link(&[("10.0.0.5", 1)]), ip("128.0.0.1")));
    assert!(on_link(&link(&[("10.0.0.5", 27)]), ip("10.0.0.31")));
    assert!(!on_link(&link(&[("10.0.0.5", 27)]), ip("10.0.0.32")));
}

#[test]
fn on_link_v6() {
    let l = link(&[("2001:db8:1::10", 64), ("fe80::1", 64), ("2001:db8:ff::", 48), ("2001:db8::100", 128)]);
    assert!(on_link(&l, ip("2001:db8:1::1")));
    assert!(on_link(&l, ip("2001:db8:1:0:ffff:ffff:ffff:ffff")));
    assert!(!on_link(&l, ip("2001:db8:1:1::1")));
    assert!(on_link(&l, ip("fe80::abcd")));
    assert!(on_link(&l, ip("2001:db8:ff:1234::1")));
    assert!(!on_link(&l, ip("2001:db8:fe::1")));
    assert!(on_link(&l, ip("2001:db8::100")));
    assert!(!on_link(&l, ip("2001:db8::101")));
    assert!(!on_link(&l, ip("10.0.0.1")));
    assert!(on_link(&link(&[("2001:db8::1", 0)]), ip("2001:4860::8888")));
    assert!(on_link(&link(&[("2001:db8::1", 127)]), ip("2001:db8::")));
    assert!(!on_link(&link(&[("2001:db8::1", 127)]), ip("2001:db8::2")));
    assert!(on_link(&link(&[("2001:db8::1", 65)]), ip("2001:db8::7fff:0:0:1")));
    assert!(!on_link(&link(&[("2001:db8::1", 65)]), ip("2001:db8::8000:0:0:1")));
}

#[test]
fn on_link_empty() {
    assert!(!on_link(&link(&[]), ip("10.0.0.1")));
    assert!(!on_link(&link(&[]), ip("::1")));
}

#[test]
fn usable_neighbour_filters_states_and_lladdr() {
    let entry = |state, lladdr: Vec<u8>| {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.state = state;
        m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(Ipv4Addr::new(192, 0, 2, 7))));
        if !lladdr.is_empty() {
            m.attributes.push(NeighbourAttribute::LinkLayerAddress(lladdr));
        }
        m
    };
    let mac = vec![2, 0, 0, 0, 0, 7];
    for state in [
        NeighbourState::Reachable,
        NeighbourState::Stale,
        NeighbourState::Delay,
        NeighbourState::Probe,
        NeighbourState::Permanent,
        NeighbourState::Noarp,
    ] {
        assert_eq!(
            usable_neighbour(&entry(state, mac.clone())),
            Some((ip("192.0.2.7"), [2, 0, 0, 0, 0, 7])),
            "{state}"
        );
    }
    for state in [NeighbourState::Incomplete, NeighbourState::Failed, NeighbourState::None] {
        assert_eq!(usable_neighbour(&entry(state, mac.clone())), None, "{state}");
    }
    assert_eq!(usable_neighbour(&entry(NeighbourState::Reachable, vec![])), None);
    assert_eq!(usable_neighbour(&entry(NeighbourState::Reachable, vec![1, 2, 3, 4])), None);
    // Multicast group mappings (NOARP entries) are not neighbours.
    assert_eq!(usable_neighbour(&entry(NeighbourState::Noarp, vec![1, 0, 0x5e, 0, 0, 1])), None);
    let mut group = entry(NeighbourState::Noarp, vec![0x33, 0x33, 0, 0, 0, 0x16]);
    group.header.family = AddressFamily::Inet6;
    group.attributes[0] = NeighbourAttribute::Destination(NeighbourAddress::Inet6("ff02::16".parse().unwrap()));
    assert_eq!(usable_neighbour(&group), None);
}

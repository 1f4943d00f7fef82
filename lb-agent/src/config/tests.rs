use super::*;

fn flags(args: &[(&str, &str)]) -> Vec<RawVip> {
    let mut vips = vec![];
    let mut backends = vec![];
    for (i, (k, v)) in args.iter().enumerate() {
        match *k {
            "vip" => vips.push((i, v.to_string())),
            _ => backends.push((i, v.to_string())),
        }
    }
    group_flags(&vips, &backends).unwrap()
}

#[test]
fn backends_belong_to_the_vip_before_them() {
    let raw = flags(&[
        ("vip", "192.0.2.1:80/tcp"),
        ("b", "10.0.0.1=3"),
        ("b", "10.0.0.2"),
        ("vip", "192.0.2.1:53/udp"),
        ("b", "10.0.0.3=0"),
    ]);
    let cfg = build(Some("eth0".into()), None, raw, None).unwrap();
    let tcp: Vip = "192.0.2.1:80/tcp".parse().unwrap();
    let udp: Vip = "192.0.2.1:53/udp".parse().unwrap();
    let w = |v: &Vip| cfg.desired.vips[v].backends.iter().map(|b| (b.addr.to_string(), b.weight)).collect::<Vec<_>>();
    assert_eq!(w(&tcp), vec![("10.0.0.1".into(), 3), ("10.0.0.2".into(), 1)]);
    assert_eq!(w(&udp), vec![("10.0.0.3".into(), 0)]);
}

#[test]
fn orphan_backend() {
    let err = group_flags(&[(2, "192.0.2.1:80/tcp".into())], &[(1, "10.0.0.1".into())]).unwrap_err();
    assert_eq!(err.field, "--backend");
    assert_eq!(err.problem, Problem::Orphan);
}

/// A table of invalid inputs and the (field, problem) each must report.
#[test]
#[allow(clippy::type_complexity)]
fn invalid_inputs_name_the_field() {
    let cases: Vec<(Vec<(&str, &str)>, &str, Problem)> = vec![
        (vec![("vip", "192.0.2.1:80")], "--vip", Problem::Vip(VipSyntax::Shape)),
        (vec![("vip", "192.0.2.1:80/icmp")], "--vip", Problem::Vip(VipSyntax::Protocol)),
        (vec![("vip", "192.0.2.1:0/tcp")], "--vip", Problem::Vip(VipSyntax::Port)),
        (vec![("vip", "192.0.2.999:80/tcp")], "--vip", Problem::Vip(VipSyntax::Shape)),
        (vec![("vip", "192.0.2.1:80/tcp"), ("b", "10.0.0.x")], "--backend", Problem::Address),
        (vec![("vip", "192.0.2.1:80/tcp"), ("b", "10.0.0.1=65536")], "--backend", Problem::Weight),
        (vec![("vip", "192.0.2.1:80/tcp"), ("b", "10.0.0.1=-1")], "--backend", Problem::Weight),
        (vec![("vip", "192.0.2.1:80/tcp"), ("b", "10.0.0.1=heavy")], "--backend", Problem::Weight),
        (vec![("vip", "192.0.2.1:80/tcp"), ("b", "2001:db8::1")], "--backend", Problem::Family { vip: 4, backend: 6 }),
        (
            vec![("vip", "192.0.2.1:80/tcp"), ("b", "10.0.0.1"), ("b", "10.0.0.1=2")],
            "--backend",
            Problem::DuplicateBackend,
        ),
        (vec![("vip", "192.0.2.1:80/tcp"), ("vip", "192.0.2.1:80/TCP")], "--vip", Problem::DuplicateVip),
    ];
    for (args, field, problem) in cases {
        let err = build(Some("eth0".into()), None, flags(&args), None).unwrap_err();
        assert_eq!((err.field.as_str(), &err.problem), (field, &problem), "for {args:?}");
    }
}

#[test]
fn iface_is_required() {
    let err = build(None, None, vec![], None).unwrap_err();
    assert_eq!((err.field.as_str(), err.problem), ("--iface", Problem::Missing));
}

#[test]
fn message_is_one_clear_line() {
    let err = build(Some("eth0".into()), None, flags(&[("vip", "192.0.2.1:80/tcp"), ("b", "10.0.0.1=70000")]), None)
        .unwrap_err();
    assert_eq!(err.to_string(), "--backend \"10.0.0.1=70000\": weight must be a whole number from 0 to 65535");
}

#[test]
fn file_config_and_flags_merge() {
    let file: FileConfig = toml::from_str(
        r#"
        iface = "lb0"
        xdp_mode = "generic"
        [[vip]]
        address = "[2001:db8::10]:443/tcp"
        backend = [ { address = "2001:db8::2", weight = 5 }, { address = "2001:db8::3" } ]
        "#,
    )
    .unwrap();
    let cfg = build(None, None, flags(&[("vip", "192.0.2.1:80/tcp")]), Some(&file)).unwrap();
    assert_eq!(cfg.iface, "lb0");
    assert_eq!(cfg.xdp_mode, XdpModeChoice::Generic);
    assert_eq!(cfg.desired.vips.len(), 2);
    let v6: Vip = "[2001:db8::10]:443/tcp".parse().unwrap();
    assert_eq!(cfg.desired.vips[&v6].backends[0].weight, 5);
    // Flags win.
    let cfg = build(Some("eth9".into()), Some(XdpModeChoice::Native), vec![], Some(&file)).unwrap();
    assert_eq!((cfg.iface.as_str(), cfg.xdp_mode), ("eth9", XdpModeChoice::Native));
}

#[test]
fn file_errors_name_the_field() {
    let file: FileConfig = toml::from_str(
        r#"
        [[vip]]
        address = "192.0.2.1:80/tcp"
        backend = [ { address = "10.0.0.1", weight = 100000 } ]
        "#,
    )
    .unwrap();
    let err = build(Some("x".into()), None, vec![], Some(&file)).unwrap_err();
    assert_eq!(err.field, "vip[0].backend[0]");
    assert_eq!(err.problem, Problem::Weight);
    assert!(toml::from_str::<FileConfig>("[[vip]]\naddress = \"x\"\nbogus = 1\n").is_err());
}

#[test]
fn one_bad_vip_does_not_hide_the_others() {
    let raw =
        flags(&[("vip", "192.0.2.1:80/tcp"), ("b", "10.0.0.1"), ("vip", "nonsense"), ("vip", "192.0.2.2:80/tcp")]);
    let (desired, errors) = validate_vips(&raw);
    assert_eq!(desired.vips.len(), 2);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].value, "nonsense");
}

#[test]
fn vip_settings_from_the_file() {
    let file: FileConfig = toml::from_str(
        r#"
        [[vip]]
        address = "192.0.2.1:80/tcp"
        ramp_step = 25
        ramp_interval = "500ms"
        session_affinity = "ClientIP"
        affinity_timeout = 60
        backend = [ { address = "10.0.0.1", start_progress = 40 }, { address = "10.0.0.2", draining = true } ]
        [[vip]]
        address = "192.0.2.1:81/tcp"
        session_affinity = "ClientIP"
        "#,
    )
    .unwrap();
    let cfg = build(Some("x".into()), None, vec![], Some(&file)).unwrap();
    let v: Vip = "192.0.2.1:80/tcp".parse().unwrap();
    let spec = &cfg.desired.vips[&v];
    assert_eq!(spec.ramp, Some(RampPolicy { step: 25, interval: std::time::Duration::from_millis(500) }));
    assert_eq!(spec.affinity_timeout_s, 60);
    assert_eq!(spec.backends[0].start_progress, Some(40));
    assert!(spec.backends[1].draining);
    let v81: Vip = "192.0.2.1:81/tcp".parse().unwrap();
    assert_eq!(cfg.desired.vips[&v81].affinity_timeout_s, DEFAULT_AFFINITY_TIMEOUT_S);
    assert_eq!(cfg.desired.vips[&v81].ramp, None);
}

#[test]
fn vip_setting_errors_name_the_field() {
    let cases = [
        ("ramp_step = 0", "vip[0].ramp_step", Problem::Percent { min: 1 }),
        ("ramp_step = 101", "vip[0].ramp_step", Problem::Percent { min: 1 }),
        ("ramp_interval = \"soon\"", "vip[0].ramp_interval", Problem::Duration),
        ("ramp_interval = 0", "vip[0].ramp_interval", Problem::Duration),
        ("session_affinity = \"Cookie\"", "vip[0].session_affinity", Problem::Affinity),
        ("session_affinity = \"ClientIP\"\naffinity_timeout = \"1ms\"", "vip[0].affinity_timeout", Problem::Duration),
        ("source_ranges = [\"10.0.0.0/33\"]", "vip[0].source_ranges", Problem::SourceRange),
        ("source_ranges = [\"everywhere\"]", "vip[0].source_ranges", Problem::SourceRange),
    ];
    for (line, field, problem) in cases {
        let text = format!("[[vip]]\naddress = \"192.0.2.1:80/tcp\"\n{line}\n");
        let file: FileConfig = toml::from_str(&text).unwrap();
        let err = build(Some("x".into()), None, vec![], Some(&file)).unwrap_err();
        assert_eq!((err.field.as_str(), err.problem), (field, problem), "{line}");
    }
    let file: FileConfig = toml::from_str(
        "[[vip]]\naddress = \"192.0.2.1:80/tcp\"\nbackend = [ { address = \"10.0.0.1\", start_progress = 120 } ]\n",
    )
    .unwrap();
    let err = build(Some("x".into()), None, vec![], Some(&file)).unwrap_err();
    assert_eq!(err.field, "vip[0].backend[0].start_progress");
}

#[test]
fn durations() {
    use std::time::Duration;
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
    assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse_duration("3h"), Some(Duration::from_secs(10_800)));
    assert_eq!(parse_duration("42"), Some(Duration::from_secs(42)));
    assert_eq!(parse_duration("ten"), None);
    assert_eq!(parse_duration("-1s"), None);
}

#[test]
fn source_ranges_are_normalised() {
    let given = ["198.51.100.7/24", "203.0.113.9", " 198.51.100.0/24 ", "2001:db8::1/32"].map(String::from);
    let got = parse_source_ranges("f", &given).unwrap();
    let want: Vec<ipnet::IpNet> =
        ["198.51.100.0/24", "203.0.113.9/32", "2001:db8::/32"].map(|n| n.parse().unwrap()).into();
    assert_eq!(got, want);
    assert!(parse_source_ranges("f", &[]).unwrap().is_empty());
}

#[test]
fn addresses_that_can_be_no_vip_are_refused_by_name() {
    let cases = [
        ("127.0.0.1", Some("loopback")),
        ("[::1]", Some("loopback")),
        ("0.0.0.0", Some("unspecified")),
        ("224.0.0.1", Some("multicast")),
        ("[ff02::1]", Some("multicast")),
        ("255.255.255.255", Some("broadcast")),
        ("169.254.1.1", Some("link-local")),
        ("[fe80::1]", Some("link-local")),
        ("240.0.0.1", Some("reserved (240.0.0.0/4)")),
        ("[::ffff:192.0.2.1]", Some("IPv4-mapped")),
        ("192.0.2.10", None),
        ("[2001:db8::10]", None),
    ];
    for (addr, want) in cases {
        let raw = flags(&[
            ("vip", &format!("{addr}:80/tcp")),
            ("b", if addr.starts_with('[') { "2001:db8::2" } else { "10.0.0.2" }),
        ]);
        let got = build(Some("eth0".into()), None, raw, None);
        match want {
            Some(kind) => {
                let e = got.unwrap_err();
                assert_eq!((e.field.as_str(), &e.problem), ("--vip", &Problem::UnusableVip(kind)), "{addr}");
                assert!(e.to_string().contains(kind), "{e}");
            }
            None => assert!(got.is_ok(), "{addr}: {got:?}"),
        }
    }
    let raw = flags(&[("vip", "192.0.2.10:80/tcp"), ("b", "192.0.2.10")]);
    assert_eq!(build(Some("eth0".into()), None, raw, None).unwrap_err().problem, Problem::BackendIsVip);
}

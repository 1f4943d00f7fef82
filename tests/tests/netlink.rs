//! The agent's rtnetlink edge (`lb_agent::netlink`) against a veth pair between two
//! network namespaces of our own.
//!
//! Each test builds `lbnl-<pid>-<tag>-a` and `-b`, joined by `veth0` (in a) and `veth1`
//! (in b), addressed from 192.0.2.0/24 and 2001:db8::/64, and runs the `Netlink` calls
//! on a thread that has entered namespace a. Nothing is sent outside those namespaces.

use std::future::Future;
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use lb_agent::netlink::{on_link, Netlink, NetlinkError};

const MAC_A: [u8; 6] = [0x02, 0x4c, 0x42, 0x6e, 0x6c, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0x4c, 0x42, 0x6e, 0x6c, 0x0b];
const A4: &str = "192.0.2.1";
const B4: &str = "192.0.2.2";
const A6: &str = "2001:db8::1";
const B6: &str = "2001:db8::2";

fn ip_of(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mac_str(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Runs `ip ARGS`, failing on a non-zero exit; returns its stdout.
fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Two namespaces joined by a veth pair; deleted (with the pair) on drop, also on panic.
struct Lab {
    a: String,
    b: String,
}

impl Lab {
    fn new(tag: &str) -> Result<Self> {
        let pid = std::process::id();
        let lab = Lab { a: format!("lbnl-{pid}-{tag}-a"), b: format!("lbnl-{pid}-{tag}-b") };
        ip(&["netns", "add", &lab.a])?;
        ip(&["netns", "add", &lab.b])?;
        let (a, b) = (lab.a.as_str(), lab.b.as_str());
        let (mac_a, mac_b) = (mac_str(MAC_A), mac_str(MAC_B));
        #[rustfmt::skip]
        ip(&["-n", a, "link", "add", "veth0", "address", &mac_a, "type", "veth",
             "peer", "name", "veth1", "address", &mac_b, "netns", b])?;
        ip(&["-n", a, "addr", "add", &format!("{A4}/24"), "dev", "veth0"])?;
        ip(&["-n", b, "addr", "add", &format!("{B4}/24"), "dev", "veth1"])?;
        ip(&["-n", a, "addr", "add", &format!("{A6}/64"), "dev", "veth0", "nodad"])?;
        ip(&["-n", b, "addr", "add", &format!("{B6}/64"), "dev", "veth1", "nodad"])?;
        ip(&["-n", a, "link", "set", "veth0", "up"])?;
        ip(&["-n", b, "link", "set", "veth1", "up"])?;
        Ok(lab)
    }

    /// `ip -n a ARGS`.
    fn ip_a(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.a.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// veth0's index, as `ip` sees it.
    fn veth0_index(&self) -> Result<u32> {
        let out = self.ip_a(&["-o", "link", "show", "dev", "veth0"])?;
        let index = out.split(':').next().context("empty ip link output")?;
        index.trim().parse().with_context(|| format!("ifindex in {out:?}"))
    }

    /// Runs `body` on a thread inside namespace a, on a current-thread tokio runtime.
    fn in_a<F, Fut>(&self, body: F) -> Result<()>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>>,
    {
        let path = format!("/run/netns/{}", self.a);
        let thread = std::thread::spawn(move || -> Result<()> {
            let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: setns on a valid namespace fd only changes this thread's namespace.
            let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(body())
        });
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Polls `nl.neighbours(index)` until every peer maps to `mac`, for at most `limit`.
async fn wait_for_mac(
    lab: &Lab,
    nl: &Netlink,
    index: u32,
    peers: &[IpAddr],
    mac: [u8; 6],
    limit: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let table = nl.neighbours(index).await?;
        if peers.iter().all(|p| table.get(p) == Some(&mac)) {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < limit,
            "{peers:?} not at {} after {limit:?}: {table:?}\n{}",
            mac_str(mac),
            lab.ip_a(&["neigh", "show", "dev", "veth0"])?
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn netlink_link_and_addresses() -> Result<()> {
    if lb_tests::skip("netlink_link_and_addresses") {
        return Ok(());
    }
    let lab = std::sync::Arc::new(Lab::new("addr")?);
    let index = lab.veth0_index()?;
    let l = lab.clone();
    lab.in_a(move || async move {
        let nl = Netlink::new()?;

        let link = nl.link("veth0").await?;
        assert_eq!(link.index, index);
        assert_eq!(link.name, "veth0");
        assert_eq!(link.mac, MAC_A);
        assert!(link.addrs.contains(&(ip_of(A4), 24)), "{:?}", link.addrs);
        assert!(link.addrs.contains(&(ip_of(A6), 64)), "{:?}", link.addrs);
        assert!(on_link(&link, ip_of(B4)));
        assert!(on_link(&link, ip_of(B6)));
        assert!(!on_link(&link, ip_of("192.0.3.2")));
        assert!(!on_link(&link, ip_of("2001:db8:0:1::2")));

        for missing in ["nope0", "", "a-name-far-too-long-for-linux"] {
            match nl.link(missing).await {
                Err(NetlinkError::NoSuchInterface { name }) => assert_eq!(name, missing),
                other => panic!("link({missing:?}): {other:?}"),
            }
        }

        for (vip, plen) in [("192.0.2.100", 32), ("2001:db8::100", 128)] {
            let addr = ip_of(vip);
            let shown = format!("\"local\":\"{vip}\",\"prefixlen\":{plen}");
            assert!(nl.add_address(index, addr).await?, "first add of {vip}");
            let json = l.ip_a(&["-j", "addr", "show", "dev", "veth0"])?;
            assert!(json.contains(&shown), "{vip} missing from {json}");
            if addr.is_ipv6() {
                let entry = &json[json.find(&shown).unwrap()..];
                let entry = &entry[..entry.find('}').unwrap()];
                assert!(entry.contains("\"nodad\":true"), "{entry}");
            }
            assert!(!nl.add_address(index, addr).await?, "second add of {vip}");
            assert!(nl.link("veth0").await?.addrs.contains(&(addr, plen)));

            nl.del_address(index, addr).await?;
            let json = l.ip_a(&["-j", "addr", "show", "dev", "veth0"])?;
            assert!(!json.contains(&format!("\"local\":\"{vip}\"")), "{vip} still in {json}");
            nl.del_address(index, addr).await?;
        }
        // The subnet addresses survive: deleting a /32 does not touch the /24.
        let link = nl.link("veth0").await?;
        assert!(link.addrs.contains(&(ip_of(A4), 24)), "{:?}", link.addrs);
        assert!(link.addrs.contains(&(ip_of(A6), 64)), "{:?}", link.addrs);

        match nl.add_address(9999, ip_of("192.0.2.100")).await {
            Err(NetlinkError::NoSuchIfindex { ifindex: 9999 }) => {}
            other => panic!("add_address on ifindex 9999: {other:?}"),
        }
        Ok(())
    })
}

#[test]
fn netlink_resolve_and_forget() -> Result<()> {
    if lb_tests::skip("netlink_resolve_and_forget") {
        return Ok(());
    }
    let lab = std::sync::Arc::new(Lab::new("neigh")?);
    let index = lab.veth0_index()?;
    let l = lab.clone();
    lab.in_a(move || async move {
        let nl = Netlink::new()?;
        let peers = [ip_of(B4), ip_of(B6)];

        let before = nl.neighbours(index).await?;
        for peer in peers {
            assert!(!before.contains_key(&peer), "{peer} known before resolve: {before:?}");
        }

        for peer in peers {
            nl.resolve(index, peer).await?;
        }
        let took = wait_for_mac(&l, &nl, index, &peers, MAC_B, Duration::from_secs(20)).await?;
        eprintln!("resolved {peers:?} in {took:?}");
        for peer in peers {
            let shown = l.ip_a(&["neigh", "show", &peer.to_string(), "dev", "veth0"])?;
            assert!(shown.contains("managed"), "{peer}: {shown}");
        }

        // Resolving again leaves the resolved entries usable.
        for peer in peers {
            nl.resolve(index, peer).await?;
        }
        let table = nl.neighbours(index).await?;
        for peer in peers {
            assert_eq!(table.get(&peer), Some(&MAC_B), "{peer} after second resolve");
        }

        for peer in peers {
            nl.forget(index, peer).await?;
        }
        let table = nl.neighbours(index).await?;
        for peer in peers {
            assert!(!table.contains_key(&peer), "{peer} still there: {table:?}");
            let shown = l.ip_a(&["neigh", "show", &peer.to_string(), "dev", "veth0"])?;
            assert!(shown.trim().is_empty(), "{peer} after forget: {shown}");
            nl.forget(index, peer).await?;
        }

        // A static entry is usable as it is: resolve() does not demote it to a managed
        // one, and forget() does not delete what resolve() did not add.
        let fixed = ip_of("192.0.2.3");
        let fixed_mac = [0x02, 0x4c, 0x42, 0x6e, 0x6c, 0x0c];
        #[rustfmt::skip]
        l.ip_a(&["neigh", "add", "192.0.2.3", "lladdr", &mac_str(fixed_mac),
                 "dev", "veth0", "nud", "permanent"])?;
        nl.resolve(index, fixed).await?;
        let shown = l.ip_a(&["neigh", "show", "192.0.2.3", "dev", "veth0"])?;
        assert!(shown.contains("PERMANENT") && !shown.contains("managed"), "{shown}");
        nl.forget(index, fixed).await?;
        assert_eq!(nl.neighbours(index).await?.get(&fixed), Some(&fixed_mac));
        Ok(())
    })
}

#[test]
fn netlink_resolve_follows_mac_change() -> Result<()> {
    if lb_tests::skip("netlink_resolve_follows_mac_change") {
        return Ok(());
    }
    let lab = std::sync::Arc::new(Lab::new("mac")?);
    // Age entries quickly in namespace a, so the kernel re-probes within seconds.
    for family in ["ipv4", "ipv6"] {
        let key = |k: &str| format!("net.{family}.neigh.veth0.{k}");
        #[rustfmt::skip]
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.a, "sysctl", "-q", "-w",
                   &format!("{}=500", key("base_reachable_time_ms")),
                   &format!("{}=1", key("delay_first_probe_time")),
                   &format!("{}=200", key("retrans_time_ms"))])
            .output()?;
        ensure!(out.status.success(), "sysctl: {}", String::from_utf8_lossy(&out.stderr));
    }
    let index = lab.veth0_index()?;
    let l = lab.clone();
    lab.in_a(move || async move {
        let nl = Netlink::new()?;
        let peers = [ip_of(B4), ip_of(B6)];
        for peer in peers {
            nl.resolve(index, peer).await?;
        }
        wait_for_mac(&l, &nl, index, &peers, MAC_B, Duration::from_secs(20)).await?;

        // The peer changes its MAC without telling anyone (no gratuitous ARP / NA).
        let new_mac = [0x02, 0x4c, 0x42, 0x6e, 0x6c, 0x1b];
        ip(&["-n", &l.b, "link", "set", "veth1", "address", &mac_str(new_mac)])?;
        let took = wait_for_mac(&l, &nl, index, &peers, new_mac, Duration::from_secs(20)).await?;
        eprintln!("followed the MAC change of {peers:?} in {took:?}");

        for peer in peers {
            nl.forget(index, peer).await?;
        }
        Ok(())
    })
}

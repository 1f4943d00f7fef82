//! A small network in namespaces: a client, an LB host and N backends on one bridge.
//! Everything is created here and removed when the `Lab` is dropped (also on panic).
//!
//! Addresses are documentation ranges used only inside these namespaces:
//! segment 192.0.2.0/24 and 2001:db8:77::/64; VIPs 192.0.2.100 and 2001:db8:77::100.

use std::net::IpAddr;

use anyhow::{Context, Result};
use aya::Ebpf;
use lb_agent::config::XdpModeChoice;
use lb_agent::dataplane::xdp::loader::{self, LoadOptions, PROG_PASS};

use crate::netns::{ip, run_in, sh, sysctl};

pub const VIP4: &str = "192.0.2.100";
pub const VIP6: &str = "2001:db8:77::100";
pub const CLIENT4: &str = "192.0.2.1";
pub const CLIENT6: &str = "2001:db8:77::1";
pub const LB4: &str = "192.0.2.2";
pub const LB6: &str = "2001:db8:77::2";

/// The IPv4 and IPv6 address of backend `i` (0-based).
pub fn backend_addrs(i: usize) -> (IpAddr, IpAddr) {
    (format!("192.0.2.{}", 11 + i).parse().unwrap(), format!("2001:db8:77::{}", 11 + i).parse().unwrap())
}

pub struct Lab {
    pub prefix: String,
    pub backends: usize,
    namespaces: Vec<String>,
    /// Keeps the pass-through program on the bridge-side peer of the LB attached.
    _peer_xdp: Option<Ebpf>,
}

impl Lab {
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }
    pub fn client(&self) -> String {
        self.ns("cl")
    }
    pub fn lb(&self) -> String {
        self.ns("lb")
    }
    pub fn backend(&self, i: usize) -> String {
        self.ns(&format!("b{i}"))
    }

    /// Builds the network. `mode` is the XDP mode the LB will use: in native mode the
    /// bridge-side peer of the LB's veth gets a pass-through XDP program, without which
    /// XDP_TX frames are never delivered.
    pub fn new(tag: &str, backends: usize, mode: XdpModeChoice) -> Result<Lab> {
        let prefix = format!("lb{tag}{}", std::process::id() % 100_000);
        let mut lab = Lab { prefix, backends, namespaces: vec![], _peer_xdp: None };
        lab.build(mode).with_context(|| format!("building namespace lab {}", lab.prefix))?;
        Ok(lab)
    }

    fn add_ns(&mut self, name: &str) -> Result<()> {
        let _ = sh("ip", &["netns", "del", name]);
        sh("ip", &["netns", "add", name])?;
        self.namespaces.push(name.to_string());
        ip(name, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// A veth pair: `eth0` in `ns`, `port` on the bridge in the switch namespace.
    fn plug(&self, ns: &str, port: &str, v4: &str, v6: &str) -> Result<()> {
        let sw = self.ns("sw");
        ip(ns, &["link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", &sw])?;
        ip(&sw, &["link", "set", port, "master", "br0", "up"])?;
        ip(ns, &["addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
        ip(ns, &["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])?;
        ip(ns, &["link", "set", "eth0", "up"])?;
        Ok(())
    }

    fn build(&mut self, mode: XdpModeChoice) -> Result<()> {
        let sw = self.ns("sw");
        self.add_ns(&sw)?;
        ip(&sw, &["link", "add", "br0", "type", "bridge"])?;
        ip(&sw, &["link", "set", "br0", "up"])?;
        // No IPv6 multicast snooping surprises, no forwarding delay.
        sh("ip", &["netns", "exec", &sw, "sh", "-c", "echo 0 > /sys/class/net/br0/bridge/multicast_snooping; echo 0 > /sys/class/net/br0/bridge/forward_delay"])?;

        let (cl, lb) = (self.client(), self.lb());
        self.add_ns(&cl)?;
        self.plug(&cl, "cl", CLIENT4, CLIENT6)?;
        // Native XDP forwards frames whose checksum was left to offload: finish them here.
        sh("ip", &["netns", "exec", &cl, "ethtool", "-K", "eth0", "tx", "off"])?;

        self.add_ns(&lb)?;
        self.plug(&lb, "lb", LB4, LB6)?;

        for i in 0..self.backends {
            let b = self.backend(i);
            self.add_ns(&b)?;
            let (v4, v6) = backend_addrs(i);
            self.plug(&b, &format!("b{i}"), &v4.to_string(), &v6.to_string())?;
            // Direct server return: the backend holds the VIPs but never answers for them.
            ip(&b, &["addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
            ip(&b, &["addr", "add", &format!("{VIP6}/128"), "dev", "lo", "nodad"])?;
            for iface in ["all", "eth0"] {
                sysctl(&b, &format!("net.ipv4.conf.{iface}.arp_ignore"), "1")?;
                sysctl(&b, &format!("net.ipv4.conf.{iface}.arp_announce"), "2")?;
            }
        }
        if mode != XdpModeChoice::Generic {
            self._peer_xdp = Some(attach_pass(&sw, "lb")?);
        }
        Ok(())
    }
}

/// Attaches the object's pass-through program to `iface` in `ns` (native mode).
fn attach_pass(ns: &str, iface: &'static str) -> Result<Ebpf> {
    let ns_owned = ns.to_string();
    run_in(ns, move || -> Result<Ebpf> {
        let opts =
            LoadOptions { table_size: 256, max_vips: 1, max_backends: 1, max_flows: 1, ..LoadOptions::default() };
        let loader::Loaded { mut ebpf, .. } = loader::load(&opts)?;
        loader::attach_program(&mut ebpf, PROG_PASS, iface, XdpModeChoice::Native)
            .with_context(|| format!("pass-through XDP on {iface} in {ns_owned}"))?;
        Ok(ebpf)
    })?
}

impl Lab {
    /// Gives the LB a new `eth0`, as when an interface is deleted and created again under
    /// the same name, or (`rename_old_to`) renamed away and replaced by a new one. The new
    /// interface has the LB's addresses and is on the bridge; the client forgets the
    /// LB's old MAC.
    pub fn replace_lb_iface(&mut self, rename_old_to: Option<&str>, mode: XdpModeChoice) -> Result<()> {
        let (lb, sw) = (self.lb(), self.ns("sw"));
        let port: &'static str = match rename_old_to {
            None => {
                ip(&lb, &["link", "del", "eth0"])?;
                "lb"
            }
            Some(name) => {
                ip(&lb, &["link", "set", "eth0", "down"])?;
                ip(&lb, &["addr", "flush", "dev", "eth0"])?;
                ip(&lb, &["link", "set", "eth0", "name", name])?;
                "lb2"
            }
        };
        self._peer_xdp = None;
        self.plug(&lb, port, LB4, LB6)?;
        if mode != XdpModeChoice::Generic {
            self._peer_xdp = Some(attach_pass(&sw, port)?);
        }
        ip(&self.client(), &["neigh", "flush", "dev", "eth0"])?;
        Ok(())
    }

    /// Where agents in this lab pin (removed with the lab).
    pub fn pin_root(&self) -> std::path::PathBuf {
        format!("/sys/fs/bpf/{}", self.prefix).into()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.pin_root());
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = sh("ip", &["netns", "del", ns]) {
                eprintln!("lab cleanup: {e}");
            }
        }
    }
}

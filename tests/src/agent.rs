//! Runs the real `lb-agent` binary inside the lab's LB namespace and watches its
//! pinned maps.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use lb_common::{
    Backend, Counter, Traffic, VipKey, VipMeta, BACKEND_F_ACTIVE, MAP_BACKENDS, MAP_BACKEND_STATS, MAP_REASONS,
    MAP_VIPS,
};

use crate::lab::Lab;
use crate::netns::command_in;

/// The `lb-agent` binary: `LB_AGENT_BIN`, or next to this executable (target/<profile>/).
pub fn agent_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LB_AGENT_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("lb-agent");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "lb-agent binary not found next to {} (run `cargo build --release -p lb-agent`, or set LB_AGENT_BIN)",
        exe.display()
    )
}

pub struct Agent {
    child: Child,
    /// The agent's process id (capsh, when used, execs the agent in place).
    pub pid: u32,
    pub pin_dir: PathBuf,
    pub pin_root: PathBuf,
    pub log: PathBuf,
    pub config: PathBuf,
}

impl Agent {
    /// Starts `lb-agent --iface eth0 --config <file> <extra>` in the lab's LB namespace.
    pub fn start(lab: &Lab, config_toml: &str, extra: &[&str]) -> Result<Agent> {
        Self::start_with(lab, Some(config_toml), extra, None)
    }

    /// Starts `lb-agent --iface eth0 <extra>` (no config file: e.g. `--kubeconfig`).
    pub fn start_kube(lab: &Lab, extra: &[&str]) -> Result<Agent> {
        Self::start_with(lab, None, extra, None)
    }

    /// As [`start`](Self::start), with exactly the capabilities `caps` (capsh names such
    /// as `cap_bpf`) and no_new_privs, as the DaemonSet's container runs the agent
    /// ([`crate::caps`]).
    pub fn start_with_caps(lab: &Lab, config_toml: &str, extra: &[&str], caps: &[String]) -> Result<Agent> {
        Self::start_with(lab, Some(config_toml), extra, Some(caps))
    }

    fn start_with(lab: &Lab, config_toml: Option<&str>, extra: &[&str], caps: Option<&[String]>) -> Result<Agent> {
        let dir = std::env::temp_dir().join(format!("{}-agent", lab.prefix));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("lb.toml");
        if let Some(text) = config_toml {
            std::fs::write(&config, text)?;
        }
        // One log per start: a restarted agent must not be judged by its predecessor.
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
        let log = dir.join(format!("agent-{stamp}.log"));
        let pin_root = lab.pin_root();
        let mut cmd = match caps {
            None => command_in(&lab.lb(), &agent_binary()?)?,
            Some(caps) => {
                let mut c = command_in(&lab.lb(), Path::new(crate::caps::CAPSH))?;
                c.args(crate::caps::capsh_args(caps, &agent_binary()?)?);
                c
            }
        };
        cmd.args(["--iface", "eth0", "--pin-root"]).arg(&pin_root).args(extra);
        if config_toml.is_some() {
            cmd.arg("--config").arg(&config);
        }
        cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log)?).env("LB_LOG", "info");
        let child = cmd.spawn().context("starting lb-agent")?;
        Ok(Agent { pid: child.id(), child, pin_dir: pin_root.join("eth0"), pin_root, log, config })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the pinned maps hold `vips` VIPs and `active` active backends.
    pub fn wait_programmed(&mut self, vips: usize, active: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("lb-agent exited ({status}):\n{}", self.log_text());
            }
            let ready = self.log_text().contains("ready: first sync done");
            if let (true, Ok(m)) = (ready, PinnedMaps::open(&self.pin_dir)) {
                if m.vip_count()? == vips && m.active_backends()? == active {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("lb-agent did not program {vips} VIPs / {active} backends in 20 s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Rewrites the config file and sends SIGHUP.
    pub fn reload(&self, config_toml: &str) -> Result<()> {
        std::fs::write(&self.config, config_toml)?;
        self.signal(libc::SIGHUP)
    }

    pub fn signal(&self, sig: i32) -> Result<()> {
        // SAFETY: sending a signal to our own child.
        if unsafe { libc::kill(self.child.id() as i32, sig) } != 0 {
            bail!("kill: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The exit status if the agent has exited.
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// SIGKILL: the agent dies without any cleanup.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) -> Result<std::process::ExitStatus> {
        self.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("lb-agent did not stop on SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // The data path (pins) outlives the agent by design: the lab removes the pins.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `lb-agent cleanup` for the lab's LB (removes the pinned link, maps, VIPs).
pub fn cleanup(lab: &Lab, pin_root: &Path) -> Result<()> {
    let mut cmd = command_in(&lab.lb(), &agent_binary()?)?;
    let out = cmd.args(["cleanup", "--iface", "eth0", "--pin-root"]).arg(pin_root).output()?;
    if !out.status.success() {
        bail!("lb-agent cleanup failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Read-only handles on an agent's pinned maps.
pub struct PinnedMaps {
    pub vips: HashMap<MapData, VipKey, VipMeta>,
    pub backends: Array<MapData, Backend>,
    pub reasons: PerCpuArray<MapData, Counter>,
    pub backend_stats: PerCpuArray<MapData, Traffic>,
}

impl PinnedMaps {
    /// Opens the maps an agent pinned under `pin_dir` (`<root>/<iface>`).
    pub fn open(pin_dir: &Path) -> Result<PinnedMaps> {
        let dir = lb_agent::dataplane::xdp::loader::maps_dir(pin_dir);
        let data = |name: &str| MapData::from_pin(dir.join(name)).with_context(|| format!("pinned map {name}"));
        Ok(PinnedMaps {
            vips: Map::HashMap(data(MAP_VIPS)?).try_into()?,
            backends: Map::Array(data(MAP_BACKENDS)?).try_into()?,
            reasons: Map::PerCpuArray(data(MAP_REASONS)?).try_into()?,
            backend_stats: Map::PerCpuArray(data(MAP_BACKEND_STATS)?).try_into()?,
        })
    }
    pub fn vip_count(&self) -> Result<usize> {
        Ok(self.vips.keys().collect::<Result<Vec<_>, _>>()?.len())
    }
    pub fn active_backends(&self) -> Result<usize> {
        let mut n = 0;
        for b in self.backends.iter() {
            n += usize::from(b?.flags & BACKEND_F_ACTIVE != 0);
        }
        Ok(n)
    }
    /// Packets counted for a verdict reason.
    pub fn reason(&self, index: u32) -> Result<u64> {
        Ok(lb_agent::dataplane::xdp::counters::read(&self.reasons, index)?.packets)
    }
    /// The active backends with their ids.
    pub fn backend_list(&self) -> Result<Vec<(u32, Backend)>> {
        let mut v = vec![];
        for (id, b) in self.backends.iter().enumerate() {
            let b = b?;
            if b.flags & BACKEND_F_ACTIVE != 0 {
                v.push((id as u32, b));
            }
        }
        Ok(v)
    }
    /// The `BACKENDS` entry of a backend address (any VIP), if present.
    pub fn backend_by_addr(&self, addr: std::net::IpAddr) -> Result<Option<Backend>> {
        for b in self.backends.iter() {
            let b = b?;
            if b.flags & lb_common::BACKEND_F_PRESENT != 0
                && lb_agent::model::addr_from_bytes(b.family, &b.addr) == addr
            {
                return Ok(Some(b));
            }
        }
        Ok(None)
    }

    /// Packets, bytes and new flows a backend id was sent.
    pub fn backend_counter(&self, id: u32) -> Result<Traffic> {
        Ok(lb_agent::dataplane::xdp::counters::traffic(&self.backend_stats, id)?)
    }
}

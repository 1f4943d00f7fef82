//! The Kubernetes benchmark's section of BENCHMARKS.md.

use std::fmt::Write as _;

use lb_agent::k8s::desired::DEFAULT_CLASS;

use crate::section::{count, mib, online_cpus, targets, yes};
use lb_tests::kube::K8S_RELEASE;

use crate::kube::*;

pub(crate) fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

pub(crate) fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

pub(crate) fn totals(b: &KubeBench) -> Vec<f64> {
    b.changes.iter().map(|c| c.total_ms).collect()
}

/// The peak RSS the target is judged on: the agent's VmHWM (MB).
pub(crate) fn peak_mb(b: &KubeBench) -> f64 {
    mb(b.mem_after.hwm.max(b.mem_converged.hwm))
}

/// (target, met) lines, for the terminal and the section.
pub fn verdicts(b: &KubeBench) -> Vec<(String, bool)> {
    let t = totals(b);
    let p99 = percentile(&t, 99.0);
    let peak = peak_mb(b);
    vec![
        (
            format!("EndpointSlice change → map update p99 ≤ {P99_MS:.0} ms: p99 {p99:.1} ms over {} changes", t.len()),
            p99 <= P99_MS,
        ),
        (format!("Agent RSS ≤ {RSS_MB:.0} MB: peak (VmHWM) {peak:.1} MB"), peak <= RSS_MB),
    ]
}

/// The section, from its heading to just before the next one.
pub fn section(b: &KubeBench, quick: bool, kube_only: bool) -> String {
    let mut d = format!("{HEADING}\n\n");
    let run = match (quick, kube_only) {
        (true, true) => "`--kube-only --quick`",
        (true, false) => "`--quick`",
        (false, true) => "`--kube-only`",
        (false, false) => "full",
    };
    let _ = writeln!(
        d,
        "Measured {} (run: {run}); load average at the start of this part: {} on {} CPUs (the API server, etcd, the \
         agent and this benchmark share them).\n",
        b.date,
        b.load,
        online_cpus()
    );
    method(&mut d, b);
    results(&mut d, b);
    convergence(&mut d, b);
    latency(&mut d, b);
    memory(&mut d, b);
    targets(&mut d, verdicts(b));
    d
}

pub(crate) fn method(d: &mut String, b: &KubeBench) {
    let first = vip(0);
    let last = vip(SERVICES - 1);
    let _ = writeln!(
        d,
        "* **Cluster**: a real kube-apiserver and etcd ({K8S_RELEASE}, `lb_tests::kube::ApiServer`) on 127.0.0.1 \
         inside the LB's namespace of a namespace lab with no backends and no traffic; `deploy/rbac.yaml` applied as \
         shipped. The real `lb-agent` binary runs there as the ServiceAccount `lb-system/lb-agent` (`--kubeconfig` \
         with its token) with `--xdp-mode generic --max-vips {MAX_VIPS} --max-backends {MAX_BACKENDS} --table-size \
         {TABLE_SIZE} --metrics-addr 127.0.0.1:PORT`, watching all namespaces."
    );
    let _ = writeln!(
        d,
        "* **Objects**: {} Services of type LoadBalancer (class `{DEFAULT_CLASS}`, `allocateLoadBalancerNodePorts: \
         false`, one TCP port, `loadBalancerIP` {} … {}: {VIP_ADDRS} addresses × {PORTS_PER_ADDR} ports) and one \
         EndpointSlice each with {PER_SERVICE} ready endpoints: {} distinct addresses {} … {} (no `targetRef`, no \
         pods). Created through the API server **before the agent starts** ({IN_FLIGHT} requests in flight): {:.1} s \
         for {} objects ({:.0} per second). So this is a cold start of an agent (a new or restarted LB host) into a \
         full cluster.",
        count(SERVICES),
        first.addr,
        last.addr,
        count(SERVICES * PER_SERVICE),
        backend(0),
        backend(SERVICES * PER_SERVICE - 1),
        b.create_s,
        count(2 * SERVICES),
        2.0 * SERVICES as f64 / b.create_s.max(1e-9)
    );
    let _ = writeln!(
        d,
        "* **Backend MACs**: the LB's eth0 also holds {LB_EXTRA_ADDR} (the endpoints are on-link) and its namespace \
         holds one PERMANENT neighbour entry per endpoint, written with one `ip -batch` ({:.1} s); the agent leaves \
         PERMANENT entries alone. No `gc_thresh` was raised: the kernel does not count PERMANENT entries against it \
         (and does not show `neigh/default` in a non-initial namespace).",
        b.neigh_ms / 1e3
    );
    let _ = writeln!(
        d,
        "* **First convergence**: from just before the agent is started until the pinned `VIPS` map holds all {} VIPs \
         **and** the agent has logged `ready: first sync done` (polled every 100 ms). The milestones in between are \
         the agent's own log timestamps.",
        count(SERVICES)
    );
    let _ = writeln!(
        d,
        "* **Change latency**: once the agent has settled (its reporter has logged `Service statuses written` for the \
         start's burst, then two {:.0}-second windows in a row in which it used less than \
         {QUIET_PCT:.0} % of a CPU or less than 70 % of its busiest window; at most {:.0} s of waiting), up to {} single \
         changes (none started after {:.0} s), one at a time, each on a different Service: a merge patch of the \
         EndpointSlice's `endpoints` that turns one ready endpoint into not ready (not serving). That endpoint's \
         backend drains (weight 0), so the VIP's Maglev table changes and the agent flips the VIP's `half`. Measured \
         from just before the PATCH request is sent until a thread polling that VIP's `VIPS` entry (one `bpf()` \
         lookup every ~100 µs) sees `half` change. A pause of 50–150 ms separates the changes, so they land at \
         different points of the agent's 500 ms tick.",
        SETTLE_WINDOW.as_secs_f64(),
        SETTLE_TIMEOUT.as_secs_f64(),
        b.planned_changes,
        b.budget_s
    );
    d.push_str(
        "* **Memory**: VmRSS / VmHWM / RssAnon / RssFile / RssShmem of the agent from `/proc/PID/status`, and the \
         resident part of its BPF map mappings (the `TABLES` windows it mmaps) from `/proc/PID/smaps`.\n\n",
    );
}

pub(crate) fn results(d: &mut String, b: &KubeBench) {
    let t = totals(b);
    let peak = peak_mb(b);
    d.push_str("| Measure | Value | Target | Met |\n| --- | ---: | --- | --- |\n");
    let _ = writeln!(d, "| Time to first convergence | {:.1} s | — | — |", b.converge_s);
    let _ = writeln!(d, "| … of which until `VIPS` held every VIP | {:.1} s | — | — |", b.maps_full_s);
    let _ = writeln!(d, "| Change → map update, p50 ({} changes) | {:.1} ms | — | — |", t.len(), median(&t));
    let p99 = percentile(&t, 99.0);
    let _ = writeln!(d, "| Change → map update, p99 | {p99:.1} ms | ≤ {P99_MS:.0} ms | {} |", yes(p99 <= P99_MS));
    let _ = writeln!(d, "| Change → map update, max | {:.1} ms | — | — |", percentile(&t, 100.0));
    let _ = writeln!(d, "| Agent peak RSS (VmHWM) | {peak:.1} MB | ≤ {RSS_MB:.0} MB | {} |", yes(peak <= RSS_MB));
    d.push('\n');
}

pub(crate) fn convergence(d: &mut String, b: &KubeBench) {
    let m = &b.milestones;
    let s = |v: Option<f64>| v.map_or("—".to_string(), |ms| format!("{:.1} s", ms / 1e3));
    let _ = writeln!(
        d,
        "First convergence, from the agent's log (seconds after the start): maps loaded and pinned {}; Service, \
         EndpointSlice and Pod caches listed and the first wanted state computed (`caches ready`) {}; first sync \
         applied (`data plane updated`: VIP addresses, {} neighbour look-ups, every table) {}; `ready: first sync \
         done` {}. {} active backends in `BACKENDS` afterwards. The reporter, a task of its own, then wrote every \
         Service's status (server-side apply) and published a `Programmed` Event per Service, {IN_FLIGHT_AGENT} \
         requests at a time: done {} after `ready`.\n",
        s(m.maps_ready),
        s(m.caches_ready),
        count(SERVICES * PER_SERVICE),
        s(m.first_update),
        s(m.ready),
        count(b.active_backends),
        b.reported_s.map_or("—".to_string(), |v| format!("{v:.1} s")),
    );
    let window = SETTLE_WINDOW.as_secs_f64();
    let busiest = b.settle_windows.iter().copied().fold(0.0, f64::max);
    let text = if b.settled {
        let busy = b.settle_windows.len().saturating_sub(2) as f64 * window;
        format!(
            "After `ready` the agent stayed busy for about {busy:.0} s more (up to {busiest:.0} % of a CPU, measured \
             over {window:.0}-second windows) before settling at {:.0} % of a CPU.",
            b.idle_cpu_pct,
        )
    } else {
        format!(
            "After `ready` the agent was still busy {:.0} s later ({:.0} % of a CPU over the last {window:.0}-second \
             window, up to {busiest:.0} %), and the changes started anyway.",
            b.settle_s, b.idle_cpu_pct,
        )
    };
    let _ = writeln!(d, "{text}\n");
}

pub(crate) fn latency(d: &mut String, b: &KubeBench) {
    let t = totals(b);
    let w: Vec<f64> = b.changes.iter().map(|c| c.write_ms).collect();
    let rest: Vec<f64> = b.changes.iter().map(|c| c.total_ms - c.write_ms).collect();
    let busy_pct = b.change_cpu_ms / 10.0 / b.change_phase_s.max(1e-9);
    let s = &b.scrapes;
    let _ = writeln!(
        d,
        "Where the change latency goes ({} changes in {:.0} s, during which the agent used {busy_pct:.0} % of a CPU; \
         idle it used {:.0} %). Meanwhile `/metrics` was scraped every second ({} scrapes answered, {} failed; \
         median {:.0} ms, max {:.0} ms each: a scrape reads every map, the flow table included, on a worker \
         thread, never on the loop that applies changes):\n",
        t.len(),
        b.change_phase_s,
        b.idle_cpu_pct,
        s.ms.len(),
        s.failed,
        percentile(&s.ms, 50.0),
        percentile(&s.ms, 100.0)
    );
    d.push_str("| Part | p50 (ms) | p99 (ms) | max (ms) |\n| --- | ---: | ---: | ---: |\n");
    let row = |d: &mut String, name: &str, v: &[f64]| {
        let (p50, p99, max) = (percentile(v, 50.0), percentile(v, 99.0), percentile(v, 100.0));
        let _ = writeln!(d, "| {name} | {p50:.1} | {p99:.1} | {max:.1} |");
    };
    row(d, "PATCH sent → the API server's answer (the write is in etcd; the watch event leaves about then)", &w);
    row(d, "Answer → `half` flipped (watch delivery and the agent)", &rest);
    row(d, "Total", &t);
    d.push('\n');
    let ms_of = |n: usize| b.compute.iter().find(|(k, _)| *k == n).map(|(_, v)| median(v)).unwrap_or(f64::NAN);
    let (small, full) = (ms_of(1_000), ms_of(SERVICES));
    let runs = b.compute.iter().map(|(_, v)| v.len()).min().unwrap_or(0);
    let _ = writeln!(
        d,
        "Pieces of the agent's work, measured in this process with the agent's own code over the same objects \
         (listed back from the API server): `State::compute`, the whole wanted state at once (done at start only), \
         over 1,000 Services and their EndpointSlices {small:.1} ms, over all {} {full:.1} ms ({:.0}× the time for \
         10× the objects; median of at least {runs} runs); `State::update`, what the agent recomputes per change \
         (one Service after a change to its EndpointSlice), for each of the {} Services one after the other, \
         {:.1} ms in all ({:.1} µs per change); one dump of the {} neighbour entries through the agent's netlink \
         code {:.0} ms (the agent reads the table on a thread of its own, every 5 s). Idle, the agent used {:.0} % of \
         a CPU (about {:.0} ms per 500 ms tick).\n",
        count(SERVICES),
        full / small,
        count(SERVICES),
        b.compute_each_ms,
        b.compute_each_ms * 1e3 / SERVICES as f64,
        count(SERVICES * PER_SERVICE),
        median(&b.neigh_dump_ms),
        b.idle_cpu_pct,
        b.idle_cpu_pct / 100.0 * 500.0
    );
}

pub(crate) fn memory(d: &mut String, b: &KubeBench) {
    d.push_str("| Agent memory | VmRSS | VmHWM | RssAnon | RssFile | RssShmem | Mapped BPF maps (resident) |\n");
    d.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (name, m) in [("After the first convergence", b.mem_converged), ("After the changes", b.mem_after)] {
        let _ = writeln!(
            d,
            "| {name} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
            mib(m.rss),
            mib(m.hwm),
            mib(m.anon),
            mib(m.file),
            mib(m.shmem),
            mib(m.bpf_mapped)
        );
    }
    let _ = writeln!(
        d,
        "\nThe target is judged on the peak (VmHWM) in MB (10^6 bytes). The agent maps only the `TABLES` pages of the \
         VIP it reads or writes, and only meanwhile, so the maps' (kernel) memory is not in these figures. The \
         agent keeps a compact projection of each Service and EndpointSlice, made as the object arrives: the same \
         {} objects, listed in this process, take {:.0} MiB as typed objects and {:.1} MiB as the agent's \
         projections (RssAnon with them minus without them, freed memory given back both times); as JSON they are \
         {:.1} MB, of which {:.1} MB is `managedFields`. The rest is the agent's own state derived from them (the \
         wanted state, ramp, neighbour and data-plane records per backend, the status last written per Service) and \
         what the allocator keeps of transient allocations.\n",
        count(2 * SERVICES),
        mib(b.objects_kib),
        mib(b.views_kib),
        b.objects_json as f64 / 1e6,
        b.managed_fields_json as f64 / 1e6
    );
}

/// `doc` with the Kubernetes section replaced by `section` (or added before "## Variance",
/// or at the end).
pub fn splice(doc: &str, section: &str) -> String {
    crate::section::splice(doc, HEADING, section)
}

/// The section when the benchmark cannot run here.
pub fn skipped(why: &str) -> String {
    format!("{HEADING}\n\nNot measured: {why}\n\n")
}

#[cfg(test)]
mod tests {
    use super::{backend, percentile, splice, vip, SERVICES};

    #[test]
    fn splices_and_addresses() {
        let doc = "# B\n\n## Control-plane scale\n\ns\n\n## Variance\n\nv\n";
        let once = splice(doc, "## Kubernetes at scale\n\nold\n\n");
        assert_eq!(once, "# B\n\n## Control-plane scale\n\ns\n\n## Kubernetes at scale\n\nold\n\n## Variance\n\nv\n");
        let twice = splice(&once, "## Kubernetes at scale\n\nnew\n\n");
        assert_eq!(twice, "# B\n\n## Control-plane scale\n\ns\n\n## Kubernetes at scale\n\nnew\n\n## Variance\n\nv\n");
        assert_eq!(vip(SERVICES - 1).to_string(), "198.51.100.40:8249/tcp");
        assert_eq!(backend(99_999).to_string(), "10.201.135.159");
        assert_eq!(percentile(&[3.0, 1.0, 2.0, 4.0], 50.0), 2.0);
        assert_eq!(percentile(&(1..=200).map(f64::from).collect::<Vec<_>>(), 99.0), 198.0);
    }
}

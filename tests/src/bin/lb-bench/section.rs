//! What the sections of BENCHMARKS.md share: when and under what load they were
//! measured, number formats, and the list of targets.

use std::fmt::Write;

/// The date and time now, in UTC.
pub fn date() -> String {
    let out = std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// CPUs online (not this thread's affinity: the measuring thread is pinned to one).
pub fn online_cpus() -> i64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1)
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Thousands separated by commas.
pub fn count(n: impl std::fmt::Display) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The "Met" column.
pub fn yes(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "**NO**"
    }
}

/// The closing list of targets with their verdicts.
pub fn targets(d: &mut String, verdicts: Vec<(String, bool)>) {
    d.push_str("Targets:\n\n");
    for (what, met) in verdicts {
        let _ = writeln!(d, "* {what} — {}", if met { "met" } else { "**NOT met**" });
    }
    d.push('\n');
}

/// `doc` with the section under `heading` replaced by `section` (or the section added
/// before "## Variance", or at the end; a new document if `doc` is empty).
pub fn splice(doc: &str, heading: &str, section: &str) -> String {
    if doc.trim().is_empty() {
        return format!(
            "# Benchmarks\n\nWritten by `cargo xtask bench` (`tests/src/bin/lb-bench.rs`); re-run it rather than \
             editing by hand.\n\n{section}"
        );
    }
    let next_heading = |from: usize| doc[from..].find("\n## ").map_or(doc.len(), |i| from + i + 1);
    if let Some(start) = doc.find(&format!("\n{heading}\n")).map(|i| i + 1) {
        let end = next_heading(start + heading.len());
        return format!("{}{section}{}", &doc[..start], &doc[end..]);
    }
    match doc.find("\n## Variance\n") {
        Some(i) => format!("{}{section}{}", &doc[..i + 1], &doc[i + 1..]),
        None => format!("{}\n{section}", doc.trim_end_matches('\n').to_string() + "\n"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_have_separators() {
        assert_eq!(super::count(1234567usize), "1,234,567");
        assert_eq!(super::count(999u64), "999");
    }

    #[test]
    fn splices_a_section_before_variance_then_in_place() {
        let doc = "# B\n\n## Results\n\nr\n\n## Variance\n\nv\n";
        let once = super::splice(doc, "## X", "## X\n\nold\n\n");
        assert_eq!(once, "# B\n\n## Results\n\nr\n\n## X\n\nold\n\n## Variance\n\nv\n");
        let twice = super::splice(&once, "## X", "## X\n\nnew\n\n");
        assert_eq!(twice, "# B\n\n## Results\n\nr\n\n## X\n\nnew\n\n## Variance\n\nv\n");
    }
}

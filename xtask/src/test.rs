//! `cargo xtask test`: setup, unit tests, then the privileged suite, which must not
//! silently skip everything.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::{cmd, setup};

pub fn run(root: &Path) -> Result<()> {
    setup::run()?;
    // Licenses, bans and sources of the dependency tree (deny.toml); no advisories (offline).
    crate::deny::check(root)?;

    // lb-common's tests need its `user` feature, which a workspace run would not select.
    cmd::run(cmd::cargo().current_dir(root).args(["test", "-p", "lb-common", "--features", "user"]))?;
    cmd::run(cmd::cargo().current_dir(root).args([
        "test",
        "--workspace",
        "--exclude",
        "lb-tests",
        "--exclude",
        "lb-common",
    ]))?;

    // The namespace tests run the real agent binary, found next to the test executables.
    cmd::run(cmd::cargo().current_dir(root).args(["build", "--release", "-p", "lb-agent"]))?;

    let skip_log = fresh_skip_log()?;
    let mut privileged = cmd::cargo();
    privileged
        .current_dir(root)
        .args(["test", "-p", "lb-tests", "--release", "--", "--test-threads=1"])
        .env("LB_SKIP_LOG", &skip_log);
    let shown = cmd::display(&privileged);
    let (status, out) = cmd::run_tee(&mut privileged)?;
    let skips = std::fs::read_to_string(&skip_log).unwrap_or_default();
    let _ = std::fs::remove_file(&skip_log);
    let (passed, failed) = count_results(&out);
    let skips = parse_skips(&skips);

    if !status.success() {
        bail!("`{shown}` failed ({status}): {passed} passed, {failed} failed, {} skipped", skips.len());
    }
    let ran = judge(passed, &skips, std::env::var_os("CI").is_some())?;
    println!(
        "xtask test: ok — unit tests passed; privileged suite: {ran} ran, {} skipped{}",
        skips.len(),
        if passed == 0 { " (no privileged tests exist yet)" } else { "" }
    );
    Ok(())
}

/// How many privileged tests really ran; an error when every one of them skipped, and
/// in CI (`ci`) when any did: there, a group that silently skips (say, every Kubernetes
/// test) must not pass. (A skipped test returns early, so libtest counts it as passed.)
fn judge(passed: usize, skips: &[(String, String)], ci: bool) -> Result<usize> {
    if ci && !skips.is_empty() {
        let list: Vec<String> = skips.iter().map(|(t, r)| format!("{t} ({r})")).collect();
        bail!("in CI no privileged test may skip; {} skipped: {}", skips.len(), list.join(", "));
    }
    if skips.len() >= passed && (passed > 0 || !skips.is_empty()) {
        let mut reasons: Vec<&str> = skips.iter().map(|(_, r)| r.as_str()).collect();
        reasons.sort_unstable();
        reasons.dedup();
        bail!("every privileged test skipped: {} ({} skipped of {passed})", reasons.join("; "), skips.len());
    }
    Ok(passed.saturating_sub(skips.len()))
}

/// A new, empty file in the temp dir for `LB_SKIP_LOG`.
fn fresh_skip_log() -> Result<std::path::PathBuf> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let path = std::env::temp_dir().join(format!("lb-skip-{}-{nanos}.log", std::process::id()));
    std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(path)
}

/// Sums `N passed` and `M failed` over libtest's `test result:` lines.
fn count_results(output: &str) -> (usize, usize) {
    let (mut passed, mut failed) = (0, 0);
    for line in output.lines() {
        let Some(rest) = line.trim_start().strip_prefix("test result:") else {
            continue;
        };
        let words: Vec<&str> = rest.split(|c: char| c == ';' || c.is_whitespace()).filter(|w| !w.is_empty()).collect();
        for pair in words.windows(2) {
            let Ok(n) = pair[0].parse::<usize>() else {
                continue;
            };
            match pair[1] {
                "passed" => passed += n,
                "failed" => failed += n,
                _ => {}
            }
        }
    }
    (passed, failed)
}

/// `(test, reason)` from the skip log's `test<TAB>reason` lines.
fn parse_skips(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.split_once('\t') {
            Some((t, r)) => (t.to_string(), r.to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_over_all_result_lines() {
        let out = "running 3 tests\n\
            test a ... ok\n\
            test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
            \n\
            test result: FAILED. 1 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.50s\n\
            test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\
            not a test result: 7 passed\n";
        assert_eq!(count_results(out), (4, 2));
        assert_eq!(count_results(""), (0, 0));
    }

    #[test]
    fn all_skipped_fails() {
        let skip = |t: &str| (t.to_string(), "needs root".to_string());
        let err = judge(2, &[skip("a"), skip("b")], false).unwrap_err().to_string();
        assert!(err.starts_with("every privileged test skipped: needs root"), "{err}");
        assert!(judge(0, &[skip("a")], false).is_err());
        assert_eq!(judge(3, &[skip("a")], false).unwrap(), 2);
        assert_eq!(judge(0, &[], false).unwrap(), 0);
    }

    #[test]
    fn in_ci_any_skip_fails() {
        let skip = |t: &str| (t.to_string(), "no kube assets".to_string());
        let err = judge(10, &[skip("kube_a")], true).unwrap_err().to_string();
        assert!(err.contains("kube_a (no kube assets)"), "{err}");
        assert_eq!(judge(10, &[], true).unwrap(), 10);
    }

    #[test]
    fn parses_skip_lines() {
        let s = parse_skips("a\tneeds root\n\nb\tno bpffs\nodd line\n");
        assert_eq!(s.len(), 3);
        assert_eq!(s[0], ("a".into(), "needs root".into()));
        assert_eq!(s[2], ("odd line".into(), String::new()));
    }
}

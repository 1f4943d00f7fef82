//! The watches' retry policy (see `Retry`).

use std::time::Duration;

use kube::runtime::utils::Backoff;

/// Backoff between watch retries: `RETRY_FIRST`, doubling up to `RETRY_MAX`, each
/// delay jittered by up to ±25 % so agents on many hosts do not retry in step. The
/// stream resets it on any event. A few requests a second per watch while the API
/// server is down is cheap; being minutes late after it is back is not.
#[derive(Clone, Debug)]
pub(super) struct Retry {
    next: Duration,
    seed: u64,
}

const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_millis(1500);

impl Default for Retry {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();
        Retry { next: RETRY_FIRST, seed: seed | 1 }
    }
}

impl Iterator for Retry {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (base * 2).min(RETRY_MAX);
        // xorshift: cheap jitter, no random-number crate for this.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let permille = 750 + self.seed % 501; // 0.75 ..= 1.25
        Some(base * permille as u32 / 1000)
    }
}

impl Backoff for Retry {
    fn reset(&mut self) {
        self.next = RETRY_FIRST;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn retry_backoff_is_capped_jittered_and_resets() {
        let mut r = Retry::default();
        let delays: Vec<Duration> = r.by_ref().take(20).collect();
        let max = RETRY_MAX * 5 / 4;
        assert!(delays.iter().all(|d| *d <= max), "never above the cap (+25 %): {delays:?}");
        assert!(delays[0] <= RETRY_FIRST * 5 / 4, "starts short: {delays:?}");
        assert!(delays[10..].iter().all(|d| *d >= RETRY_MAX * 3 / 4), "grows to the cap: {delays:?}");
        let distinct: BTreeSet<Duration> = delays[10..].iter().copied().collect();
        assert!(distinct.len() > 1, "jittered: {delays:?}");
        r.reset();
        assert!(r.next().unwrap() <= RETRY_FIRST * 5 / 4, "short again after a reset");
    }
}

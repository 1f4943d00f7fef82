//! Min / median / max of a set of samples.

/// A summary of samples (nanoseconds or milliseconds; the caller knows which).
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub samples: usize,
}

impl Summary {
    /// Summarises `samples`; panics on an empty set (every measurement takes some).
    pub fn of(samples: &[f64]) -> Summary {
        assert!(!samples.is_empty(), "no samples to summarise");
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
        Summary { min: s[0], median, max: s[n - 1], samples: n }
    }

    /// Every figure less `base` (the empty program's median): the net cost.
    pub fn minus(&self, base: f64) -> Summary {
        Summary { min: self.min - base, median: self.median - base, max: self.max - base, ..*self }
    }
}

#[cfg(test)]
mod tests {
    use super::Summary;

    #[test]
    fn odd_and_even_medians() {
        let s = Summary::of(&[5.0, 1.0, 3.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 3.0, 5.0));
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert_eq!(Summary::of(&[4.0, 2.0]).minus(1.0).median, 2.0);
    }
}

//! The exposition text format's parts (metrics.rs writes the families): latency buckets fed
//! from hdrhistogram histograms, and the text with its escaping.

use std::{
    collections::HashMap,
    fmt::{Display, Write as _},
};

use hdrhistogram::Histogram;

/// Upper bounds of the latency buckets in µs (exported in seconds): 100µs to 30s, dense
/// enough for loopback database queries and for slow requests alike.
pub const BUCKETS_US: [u64; 17] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// A Prometheus histogram of latencies: per-bucket counts, their sum and count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyBuckets {
    /// Counts per bucket (not cumulative); the last one is above every bound (+Inf).
    counts: [u64; BUCKETS_US.len() + 1],
    sum_us: u128,
    count: u64,
}

impl LatencyBuckets {
    /// Records `n` latencies of `us` microseconds.
    pub fn observe(&mut self, us: u64, n: u64) {
        self.observe_rounded(us, us, n);
    }

    /// Records `n` latencies placed in a bucket by `bucket_us` and summed as `sum_us`.
    fn observe_rounded(&mut self, bucket_us: u64, sum_us: u64, n: u64) {
        let index = BUCKETS_US
            .iter()
            .position(|bound| bucket_us <= *bound)
            .unwrap_or(BUCKETS_US.len());
        self.counts[index] += n;
        self.sum_us += u128::from(sum_us) * u128::from(n);
        self.count += n;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_us as f64 / 1e6
    }

    /// `(le, cumulative count)` for every bucket, ending with `("+Inf", count)`.
    pub fn cumulative(&self) -> Vec<(String, u64)> {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.counts.len());
        for (i, n) in self.counts.iter().enumerate() {
            total += n;
            let le = match BUCKETS_US.get(i) {
                Some(us) => seconds(*us),
                None => "+Inf".to_string(),
            };
            out.push((le, total));
        }
        out
    }
}

/// Microseconds as seconds, the way Prometheus writes `le` (`0.0001`, `2.5`, `30`).
fn seconds(us: u64) -> String {
    format!("{}", us as f64 / 1e6)
}

/// Feeds [`LatencyBuckets`] with what a cumulative hdrhistogram recorded since the last feed.
#[derive(Debug, Default)]
pub struct HdrFeed {
    /// Count already fed, by the lowest value of each hdrhistogram bucket.
    seen: HashMap<u64, u64>,
    total: u64,
}

impl HdrFeed {
    pub fn feed(&mut self, hdr: &Histogram<u64>, into: &mut LatencyBuckets) {
        if hdr.len() == self.total {
            return;
        }
        if hdr.len() < self.total {
            // Not the histogram fed before: take it as new (the buckets still only grow).
            self.seen.clear();
        }
        for value in hdr.iter_recorded() {
            let at = value.value_iterated_to();
            let lowest = hdr.lowest_equivalent(at);
            let seen = self.seen.entry(lowest).or_insert(0);
            let now = value.count_at_value();
            if now > *seen {
                into.observe_rounded(lowest, hdr.median_equivalent(at), now - *seen);
                *seen = now;
            }
        }
        self.total = hdr.len();
    }
}

/// Exposition text being written.
#[derive(Default)]
pub(super) struct Text(pub String);

impl Text {
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP drainwatch_{name} {help}");
        let _ = writeln!(self.0, "# TYPE drainwatch_{name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        let _ = write!(self.0, "drainwatch_{name}");
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (label, text)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{label}=\"{}\"", escape_label(text));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: impl Display) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value);
    }

    pub fn histogram_samples(&mut self, name: &str, labels: &[(&str, &str)], h: &LatencyBuckets) {
        let bucket = format!("{name}_bucket");
        for (le, n) in h.cumulative() {
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, n);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum_seconds());
        self.sample(&format!("{name}_count"), labels, h.count());
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape_label(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

extern crate std;
use std::vec::Vec;

use super::*;

#[test]
fn log2_is_the_highest_set_bit() {
    assert_eq!(log2(0), 0);
    assert_eq!(log2(1), 0);
    for e in 1..64 {
        assert_eq!(log2(1 << e), e);
        assert_eq!(log2((1 << e) | 1), e);
        assert_eq!(log2((1u64 << e) - 1), e - 1);
    }
    assert_eq!(log2(u64::MAX), 63);
}

#[test]
fn every_value_falls_in_the_range_of_its_bucket() {
    let mut values: Vec<u64> = (0..5000).collect();
    for e in 4..32 {
        let p = 1u64 << e;
        values.extend([p - 1, p, p + 1, p + p / 3, p + p / 2, p * 2 - 1]);
    }
    for v in values {
        let b = bucket(v);
        assert!(b < LATENCY_MAX_SLOT, "{v} -> {b}");
        let (low, high) = bucket_range(b);
        assert!(
            low <= v && v <= high,
            "{v} not in bucket {b} = [{low}, {high}]"
        );
    }
}

#[test]
fn buckets_are_ordered_and_at_most_a_sixteenth_wide() {
    let mut previous_high = None;
    for b in 0..=bucket(u64::MAX) {
        let (low, high) = bucket_range(b);
        if let Some(prev) = previous_high {
            assert_eq!(low, prev + 1, "bucket {b} does not follow on");
        }
        assert!(
            (high - low) as f64 <= low as f64 / 16.0,
            "bucket {b} too wide"
        );
        let mid = bucket_value(b);
        assert!(low <= mid && mid <= high);
        previous_high = Some(high);
    }
}

#[test]
fn huge_values_are_clamped_into_the_last_bucket() {
    let last = bucket(u64::MAX);
    assert_eq!(bucket(1 << 40), last);
    assert_eq!(bucket((1 << 32) - 1), last);
    assert!(last < LATENCY_MAX_SLOT);
}

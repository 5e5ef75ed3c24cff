//! Request latencies, aggregated in the kernel: a log-linear histogram of microseconds
//! (16 buckets per power of two, so a bucket is at most 1/16 = 6.25% wide and its midpoint
//! within ±3.2% of every value in it). Counting in a per-CPU map instead of sending an event
//! per request keeps the ring buffer for rare events (DEVELOPERS.md: avoid per-event wake-ups).
//!
//! The bucket function is shared: the probe files values with it, userspace turns a bucket
//! back into a value, and both are unit-tested here on the host.

/// Buckets per power of two.
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;

/// Request-latency histograms kept at once, one per target process (tgid) that answered a
/// request, so that two servers watched together are never one series. Preallocated by the
/// kernel, one copy per CPU: 256 x 4 KiB per CPU (fewer entries on machines of more than 16
/// CPUs: probe-user's `latency_entries`). Userspace deletes a process's histogram once it has read it after
/// the exit; a process that finds the map full records into [`LATENCY_OVERFLOW_TGID`].
pub const MAX_LATENCY_TARGETS: u32 = 256;
/// The key of the histogram shared by processes that found no room of their own (tgid 0 is
/// the idle task, never a target). Userspace creates it at load and reports it apart.
pub const LATENCY_OVERFLOW_TGID: u32 = 0;

/// Slots of [`LatencyHistogram::counts`]; the last one holds the largest value seen (µs).
pub const LATENCY_SLOTS: usize = 512;
/// The slot that holds the largest latency seen on this CPU, in µs.
pub const LATENCY_MAX_SLOT: usize = LATENCY_SLOTS - 1;
/// Latencies are clamped to 2^32 µs (71 minutes) before bucketing.
const MAX_EXPONENT: u32 = 32;

/// One per target process: request counts by latency bucket, plus the largest latency.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyHistogram {
    pub counts: [u64; LATENCY_SLOTS],
}

/// Position of the highest set bit (0 for 0 and 1). Branches instead of a loop: the
/// verifier sees a fixed, short path.
#[inline(always)]
pub fn log2(mut v: u64) -> u32 {
    let mut e = 0;
    if v >> 32 != 0 {
        v >>= 32;
        e += 32;
    }
    if v >> 16 != 0 {
        v >>= 16;
        e += 16;
    }
    if v >> 8 != 0 {
        v >>= 8;
        e += 8;
    }
    if v >> 4 != 0 {
        v >>= 4;
        e += 4;
    }
    if v >> 2 != 0 {
        v >>= 2;
        e += 2;
    }
    if v >> 1 != 0 {
        e += 1;
    }
    e
}

/// The bucket of a latency in µs: values below 16 have a bucket each; above, the exponent
/// picks a group of 16 and the next four bits the bucket in it. Always < LATENCY_MAX_SLOT.
#[inline(always)]
pub fn bucket(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let us = if us >> MAX_EXPONENT != 0 {
        (1u64 << MAX_EXPONENT) - 1
    } else {
        us
    };
    let e = log2(us); // 4..=31
    let sub = (us >> (e - SUB_BITS)) & (SUB - 1);
    ((e - SUB_BITS + 1) as u64 * SUB + sub) as usize
}

/// The values a bucket holds: `[low, high]` in µs.
pub fn bucket_range(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < SUB {
        return (index, index);
    }
    let e = index / SUB + SUB_BITS as u64 - 1;
    let sub = index % SUB;
    let width = 1u64 << (e - SUB_BITS as u64);
    let low = (1u64 << e) + sub * width;
    (low, low + width - 1)
}

/// The value that stands for a bucket: its midpoint.
pub fn bucket_value(index: usize) -> u64 {
    let (low, high) = bucket_range(index);
    low + (high - low) / 2
}

#[cfg(test)]
mod tests;

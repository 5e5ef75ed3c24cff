//! The userspace ends of the probe's maps: targets, connections, pending syscalls, request
//! counters and latencies, the loss counters (probe-common's map names and types).

use aya::maps::{Array, HashMap, PerCpuArray, PerCpuHashMap};
use probe_common::{
    latency::{LatencyHistogram, LATENCY_MAX_SLOT, LATENCY_OVERFLOW_TGID, LATENCY_SLOTS},
    map_names, ConnKey, ConnState, Counter, Pending, TargetInfo, COMM_LEN, CONN_EXISTED,
    CONN_UNKNOWN,
};

use super::owned::{Probe, BPF_NOEXIST};
use crate::{kernel::attach::load_error, Error, Result};

/// The socket-level backends' map of sockets (probe-ebpf/src/sockets/sock_tp.rs).
const SOCKS: &str = "SOCKS";

/// What was judged of a connection found at attach, for [`Probe::add_conn`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnSeed {
    /// A client connection whose request may be in flight: the kernel ends it at the
    /// server's next send, with an unknown start (0); an upstream connection awaiting a
    /// reply: the call ends at its first bytes.
    pub busy: bool,
    /// A client connection whose state is unknown (`CONN_UNKNOWN`).
    pub unknown: bool,
    /// An upstream connection that has received data in its life (`CONN_ANSWERED`).
    pub answered: bool,
}
impl Probe {
    /// A local TCP port a target listens on (the socket hooks call a socket first seen
    /// there accepted: `client`).
    pub fn add_listen_port(&mut self, port: u16) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(map_names::LISTEN_PORTS)
            .ok_or_else(|| Error::Load("no LISTEN_PORTS map in the object".into()))?;
        let mut ports: Array<_, u8> = Array::try_from(map).map_err(load_error)?;
        ports.set(port as u32, 1, 0).map_err(load_error)
    }

    /// The sockets of a process about to become a target, by inode, as its /proc survey
    /// classified them (`(inode, role, protocol)` in the kernel's numbering): the socket
    /// backends classify one reached before its entry is in `CONNS` by this, not by its
    /// peer (probe-ebpf/src/sockets/sock_tp.rs, `SURVEYED`). A full map leaves the rest to
    /// the peer, as before.
    pub fn survey_sockets(&mut self, sockets: &[(u64, u8, u8)]) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(map_names::SURVEYED)
            .ok_or_else(|| Error::Load("no SURVEYED map in the object".into()))?;
        let mut surveyed: HashMap<_, u64, [u8; 2]> = HashMap::try_from(map).map_err(load_error)?;
        for &(inode, role, proto) in sockets {
            if surveyed.insert(inode, [role, proto], 0).is_err() {
                log::debug!("socket {inode}: the survey map is full; its peer classifies it");
            }
        }
        Ok(())
    }

    /// Forgets sockets told by [`Probe::survey_sockets`]: their process's connections are
    /// in `CONNS` now, which classifies them from here on.
    pub fn forget_surveyed(&mut self, inodes: &[u64]) {
        let Some(map) = self.ebpf.map_mut(map_names::SURVEYED) else {
            return;
        };
        let Ok(mut surveyed) = HashMap::<_, u64, [u8; 2]>::try_from(map) else {
            return;
        };
        for inode in inodes {
            let _ = surveyed.remove(inode);
        }
    }

    /// Makes a tgid (or one of its threads) a target.
    pub fn add_target(&mut self, id: u32, tgid: u32) -> Result<()> {
        self.insert_target(id, TargetInfo::new(tgid, probe_common::ORIGIN_USER))
    }

    /// Makes the command `audit -- CMD` launched a target, held before its exec: it and what
    /// it forks carry `ORIGIN_LAUNCHED_TREE`, so the kernel follows what they signal
    /// (docs/design.md, "Command line").
    pub fn add_launched(&mut self, pid: u32) -> Result<()> {
        let origin = probe_common::ORIGIN_USER | probe_common::ORIGIN_LAUNCHED_TREE;
        self.insert_target(pid, TargetInfo::new(pid, origin))
    }

    fn insert_target(&mut self, id: u32, info: TargetInfo) -> Result<()> {
        // The bitmap first: the kernel looks in TARGETS only for pids whose bit is set.
        if let Some((word, mask)) = probe_common::target_bit(id) {
            let map = self
                .ebpf
                .map_mut(map_names::USER_TARGET_BITS)
                .ok_or_else(|| Error::Load("no USER_TARGET_BITS map in the object".into()))?;
            let mut bits: Array<_, u64> = Array::try_from(map).map_err(load_error)?;
            // Userspace is this map's only writer (the kernel has its own), so a plain
            // read-modify-write is safe.
            let old = bits.get(&word, 0).map_err(load_error)?;
            bits.set(word, old | mask, 0).map_err(load_error)?;
        }
        let map = self
            .ebpf
            .map_mut(map_names::TARGETS)
            .ok_or_else(|| Error::Load("no TARGETS map in the object".into()))?;
        let mut targets: HashMap<_, u32, TargetInfo> =
            HashMap::try_from(map).map_err(load_error)?;
        // BPF_NOEXIST: an entry the kernel made already (a followed fork, or the tgid's own
        // entry when its main thread is added) holds counters that must not be reset.
        match targets.insert(id, info, BPF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(_) if targets.get(&id, 0).is_ok() => Ok(()),
            Err(err) => Err(load_error(err)),
        }
    }

    /// Answered requests by latency bucket, per target process (tgid; the tgid
    /// [`LATENCY_OVERFLOW_TGID`] holds those of processes that found the map full); the last
    /// slot of each is the largest latency seen (µs). See `probe_common::latency`.
    pub fn request_latency(&self) -> Option<Vec<(u32, Vec<u64>)>> {
        let map = self.ebpf.map(map_names::REQUEST_LATENCY)?;
        let histograms = PerCpuHashMap::<_, u32, LatencyHistogram>::try_from(map).ok()?;
        let mut out: Vec<(u32, Vec<u64>)> = histograms
            .iter()
            .filter_map(|entry| entry.ok())
            .map(|(tgid, copies)| (tgid, sum_copies(&copies)))
            .filter(|(_, counts)| counts.iter().any(|&c| c != 0))
            .collect();
        out.sort_by_key(|(tgid, _)| *tgid);
        Some(out)
    }

    /// The latency histogram of one process, as [`Probe::request_latency`] reads them.
    pub fn request_latency_of(&self, tgid: u32) -> Option<Vec<u64>> {
        let map = self.ebpf.map(map_names::REQUEST_LATENCY)?;
        let histograms = PerCpuHashMap::<_, u32, LatencyHistogram>::try_from(map).ok()?;
        histograms
            .get(&tgid, 0)
            .ok()
            .map(|copies| sum_copies(&copies))
    }

    /// Forgets the latency histogram of a process that exited, once it has been read: its
    /// room goes to the next process (the kernel never removes one).
    pub fn forget_latency(&mut self, tgid: u32) {
        if tgid == LATENCY_OVERFLOW_TGID {
            return;
        }
        if let Some(map) = self.ebpf.map_mut(map_names::REQUEST_LATENCY) {
            if let Ok(mut histograms) = PerCpuHashMap::<_, u32, LatencyHistogram>::try_from(map) {
                let _ = histograms.remove(&tgid);
            }
        }
    }

    /// Whether the kernel's connection map says a request is in flight on a connection.
    /// A connection added `unknown` has had traffic since (the kernel clears the flag at
    /// its first send or receive), or is gone.
    pub fn had_traffic(&self, key: ConnKey) -> bool {
        self.conn_entry(key)
            .is_some_and(|entry| entry.is_none_or(|state| state.flags & CONN_UNKNOWN == 0))
    }

    pub fn request_in_flight(&self, key: ConnKey) -> bool {
        self.conn_entry(key)
            .flatten()
            .is_some_and(|state| state.request_in_flight != 0)
    }

    /// The kernel's entry for a connection: `None` when the map cannot be read, `Some(None)`
    /// when it holds no entry for it.
    fn conn_entry(&self, key: ConnKey) -> Option<Option<ConnState>> {
        let map = self.ebpf.map(map_names::CONNS)?;
        let conns = HashMap::<_, ConnKey, ConnState>::try_from(map).ok()?;
        Some(conns.get(&key, 0).ok())
    }

    /// The kernel's flags of a connection (`probe_common::CONN_*`), `None` once it is gone.
    pub fn conn_flags(&self, key: ConnKey) -> Option<u8> {
        let map = self.ebpf.map(map_names::CONNS)?;
        let conns = HashMap::<_, ConnKey, ConnState>::try_from(map).ok()?;
        conns.get(&key, 0).ok().map(|state| state.flags)
    }

    /// The request in flight on a connection, by the kernel's map: `None` when there is
    /// none; `Some(None)` when its start is unknown (in flight at attach), else its ktime.
    pub fn request_since(&self, key: ConnKey) -> Option<Option<u64>> {
        let map = self.ebpf.map(map_names::CONNS)?;
        let conns = HashMap::<_, ConnKey, ConnState>::try_from(map).ok()?;
        let state = conns.get(&key, 0).ok()?;
        (state.request_in_flight != 0)
            .then_some((state.request_since_ns != 0).then_some(state.request_since_ns))
    }

    /// Tracks a connection that existed before attach: its primary fd, and the fds that
    /// duplicate it (same socket inode).
    /// `seed`: what was judged of it at attach ([`ConnSeed`]). Returns false when the kernel
    /// already tracks the fd (it was accepted or connected after the probe attached): its
    /// entry, with any request it counted, is kept.
    pub fn add_conn(
        &mut self,
        key: ConnKey,
        aliases: &[u32],
        role: u8,
        proto: u8,
        seed: ConnSeed,
    ) -> Result<bool> {
        let ConnSeed {
            busy,
            unknown,
            answered,
        } = seed;
        let map = self
            .ebpf
            .map_mut(map_names::CONNS)
            .ok_or_else(|| Error::Load("no CONNS map in the object".into()))?;
        let mut conns: HashMap<_, ConnKey, ConnState> =
            HashMap::try_from(map).map_err(load_error)?;
        let mut state = ConnState::new(role, proto, key.fd);
        state.flags = CONN_EXISTED
            | if unknown { CONN_UNKNOWN } else { 0 }
            | if answered {
                probe_common::CONN_ANSWERED
            } else {
                0
            };
        state.request_in_flight = busy as u8;
        state.aliases = aliases.len().min(u8::MAX as usize) as u8;
        if conns.insert(key, state, BPF_NOEXIST).is_err() {
            if conns.get(&key, 0).is_ok() {
                return Ok(false);
            }
            return Err(Error::Load(format!(
                "cannot track fd {} of {}: the connection map is full",
                key.fd, key.tgid
            )));
        }
        for &fd in aliases {
            let mut alias = state;
            alias.aliases = 0;
            conns
                .insert(ConnKey { tgid: key.tgid, fd }, alias, 0)
                .map_err(load_error)?;
        }
        Ok(true)
    }

    /// Records a syscall that a thread was already blocked in at attach (from
    /// /proc/TGID/task/PID/syscall), so that its exit is understood.
    pub fn add_pending(&mut self, pid_tgid: u64, pending: Pending) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(map_names::PENDING)
            .ok_or_else(|| Error::Load("no PENDING map in the object".into()))?;
        let mut map: HashMap<_, u64, Pending> = HashMap::try_from(map).map_err(load_error)?;
        map.insert(pid_tgid, pending, 0).map_err(load_error)
    }

    /// Forgets a pending syscall recorded by [`Probe::add_pending`] (it ended meanwhile).
    pub fn remove_pending(&mut self, pid_tgid: u64) {
        if let Some(map) = self.ebpf.map_mut(map_names::PENDING) {
            if let Ok(mut map) = HashMap::<_, u64, Pending>::try_from(map) {
                let _ = map.remove(&pid_tgid);
            }
        }
    }

    /// Forgets connections the kernel closed on its own (the target exited).
    pub fn remove_conns(&mut self, keys: &[ConnKey]) {
        let Some(map) = self.ebpf.map_mut(map_names::CONNS) else {
            return;
        };
        let Ok(mut conns) = HashMap::<_, ConnKey, ConnState>::try_from(map) else {
            return;
        };
        for key in keys {
            let _ = conns.remove(key);
        }
        if self.hooks.by_socket() && !keys.is_empty() {
            self.forget_sockets(keys);
        }
    }

    /// The socket backend's `SOCKS` entries (`struct sock` address -> connection) of
    /// connections closed without a kernel hook seeing it (an exit, a unix-domain close):
    /// else a socket allocated later at the same address would be taken for them.
    fn forget_sockets(&mut self, keys: &[ConnKey]) {
        let Some(map) = self.ebpf.map_mut(SOCKS) else {
            return;
        };
        let Ok(mut socks) = HashMap::<_, u64, ConnKey>::try_from(map) else {
            return;
        };
        let stale: Vec<u64> = socks
            .iter()
            .filter_map(|entry| entry.ok())
            .filter(|(_, key)| keys.contains(key))
            .map(|(sk, _)| sk)
            .collect();
        for sk in stale {
            let _ = socks.remove(&sk);
        }
    }

    /// What the probe could not see: events lost in the ring buffer, fork children and
    /// connections that did not fit their maps, database I/O and TLS plaintext not read.
    pub fn unseen(&self) -> u64 {
        self.lost()
            + self.counter(Counter::TargetsFull)
            + self.counter(Counter::ConnsFull)
            + self.counter(Counter::DbIoMissed)
    }

    /// Watches for processes that exec under `name` (`--comm`).
    pub fn add_comm(&mut self, name: &str) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(map_names::COMMS)
            .ok_or_else(|| Error::Load("no COMMS map in the object".into()))?;
        let mut comms: HashMap<_, [u8; COMM_LEN], u8> =
            HashMap::try_from(map).map_err(load_error)?;
        let mut key = [0u8; COMM_LEN];
        let bytes = name.as_bytes();
        let n = bytes.len().min(COMM_LEN - 1);
        key[..n].copy_from_slice(&bytes[..n]);
        comms.insert(key, 1, 0).map_err(load_error)
    }

    /// Events the kernel could not put into the ring buffer (summed over CPUs).
    pub fn lost(&self) -> u64 {
        self.counter(Counter::Lost)
    }

    pub fn counter(&self, counter: Counter) -> u64 {
        let Some(map) = self.ebpf.map(map_names::COUNTERS) else {
            return 0;
        };
        let Ok(counters) = PerCpuArray::<_, u64>::try_from(map) else {
            return 0;
        };
        counters
            .get(&(counter as u32), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}

/// One histogram from the kernel's copies, one per CPU (probe-ebpf's `REQUEST_LATENCY`):
/// counts add up, and the last slot, the largest latency, is the largest of the copies'.
/// Each copy only grows, so a sum read later is never below one read earlier.
pub(crate) fn sum_copies(copies: &[LatencyHistogram]) -> Vec<u64> {
    let mut out = vec![0u64; LATENCY_SLOTS];
    for copy in copies {
        for (slot, (total, &count)) in out.iter_mut().zip(copy.counts.iter()).enumerate() {
            if slot == LATENCY_MAX_SLOT {
                *total = (*total).max(count);
            } else {
                *total = total.wrapping_add(count);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(slots: &[(usize, u64)]) -> LatencyHistogram {
        let mut h = LatencyHistogram {
            counts: [0; LATENCY_SLOTS],
        };
        for &(slot, count) in slots {
            h.counts[slot] = count;
        }
        h
    }

    #[test]
    fn copies_add_up_and_the_largest_latency_is_the_largest_copys() {
        let sum = sum_copies(&[
            copy(&[(3, 2), (40, 1), (LATENCY_MAX_SLOT, 900)]),
            copy(&[(3, 5), (LATENCY_MAX_SLOT, 120)]),
        ]);
        assert_eq!((sum[3], sum[40], sum[4]), (7, 1, 0));
        assert_eq!(sum[LATENCY_MAX_SLOT], 900);
        assert_eq!(sum.len(), LATENCY_SLOTS);
    }
}

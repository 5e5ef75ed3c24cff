//! Operations (`--op SPEC`, docs/design.md "operation"): the target's own functions, hooked
//! with an uprobe at entry and an uretprobe at return (probe-ebpf/src/ops/mod.rs), the binary as
//! it is. A SPEC is `FUNCTION` (the executable first, then its mapped libraries) or
//! `LIB:FUNCTION` (a mapped library whose file name is LIB or starts with `LIB.`); FUNCTION is
//! an ELF symbol as written (`purchase`, `_ZN4Game8purchaseEi`) or demangled, with or without
//! its parameters (`Game::purchase`, `Game::purchase(int)`, a Rust path `shop::purchase`),
//! or the last part of a demangled path (`purchase` for `Game::purchase`) when nothing
//! matches more closely.
//!
//! On the per-process uprobe unit (kernel/uprobe.rs), like the TLS hooks: each attachment is
//! scoped to one process, and
//! processes are looked at when they become targets and again on the session's rescans (a
//! library loaded later, a forked child). The entry probe finds its function by the address
//! it fired at (`OP_ADDRS`, per process): this works on every kernel with uprobes, where a
//! BPF cookie needs 5.15.
//!
//! A runtime whose functions are not ELF functions of the program (Go's, an interpreter's)
//! is a [`Runtime`] of its own file (runtime.rs) and one line of [`runtimes!`]'s list below.

mod args;
mod before;
mod found;
mod runtime;
mod stacks;
mod symbols;

use std::{
    collections::HashMap,
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::Arc,
};

pub use args::OpArgs;
pub use found::{Hooked, Refusal};
pub use symbols::{Maps, OpSpec};

use crate::kernel::{
    links::Links,
    uprobe::{self, Uprobes},
};
use before::{thread_id, BeforeAttachThreads};
use found::Found;
use runtime::Runtime;
use symbols::{matches, note_nearest, read_symbols, Symbol};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData},
    Ebpf,
};
use probe_common::{
    latency::LatencyHistogram,
    ops::{
        map_names, OpAddrKey, OpCall, OpCounters, OpGoKey, OpStatsKey, BEFORE_ATTACH,
        MAX_OP_FUNCTIONS,
    },
};

/// The runtimes: each line a module (its file) and its [`Runtime`] type, in the order
/// they are asked whether a process is theirs. A new runtime is its file and one line.
macro_rules! runtimes {
    ($($module:ident :: $runtime:ident),* $(,)?) => {
        $(mod $module;)*

        /// One of each runtime, in the list's order.
        fn runtimes() -> Vec<Box<dyn Runtime>> {
            vec![$(Box::new($module::$runtime::default())),*]
        }
    };
}

runtimes! {
    go::Go,
    python::CPython,
}

/// The runtimes whose calls from before attach go unseen, as the drain's basis names them
/// (`Go`, `Go or CPython`).
pub fn blind_runtimes() -> String {
    let names: Vec<&str> = runtimes()
        .iter()
        .filter(|r| r.blind_at_attach())
        .map(|r| r.name())
        .collect();
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

const ENTRY: &str = "op_entry";
const RETURN: &str = "op_return";

pub struct OpHooks {
    /// The `--op` list, what was hooked and searched (found.rs).
    found: Found,
    /// The entry and return programs on ELF functions, attached per process
    /// (kernel/uprobe.rs).
    uprobes: Uprobes,
    /// Parsed symbol tables by file (a forked child maps the same files).
    symbols: HashMap<PathBuf, Arc<Vec<Symbol>>>,
    /// Each function's histogram totals at the previous read, to hand on only what is new.
    latency_seen: Vec<Vec<u64>>,
    /// Where each hooked function sits in each process: (tgid, start, end, function).
    ranges: Vec<(u32, u64, u64, u32)>,
    /// Threads inside a hooked function since before it was hooked (stacks.rs), or not yet
    /// known (`None`: running when looked at), with when they were first looked at (ns).
    before_attach: BeforeAttachThreads,
    /// The runtimes ([`runtimes!`]).
    runtimes: Vec<Box<dyn Runtime>>,
}

/// What the kernel's operation maps hold now ([`OpHooks::read`]).
#[derive(Debug, Default)]
pub struct OpsRead {
    pub counters: Vec<(OpStatsKey, OpCounters)>,
    /// (tgid, pid, the call) of each thread inside an operation.
    pub threads: Vec<(u32, u32, OpCall)>,
    /// Latencies recorded since the previous read: (function, [(µs, how many)]).
    pub latency_us: Vec<(u32, Vec<(u64, u64)>)>,
    /// Threads inside an operation since before its function was hooked, whose end the
    /// kernel cannot see: (tgid, pid, function or `None` while unknown, first looked at (ns)).
    pub before_attach: Vec<(u32, u32, Option<u32>, u64)>,
    /// Go processes whose calls from before attach are not seen.
    pub blind_at_attach: Vec<u32>,
}

impl Default for OpHooks {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl OpHooks {
    /// Sets the `--op` list (before the first attach).
    pub fn set_specs(&mut self, specs: Vec<OpSpec>) {
        *self = Self::new(specs);
    }

    pub fn new(specs: Vec<OpSpec>) -> Self {
        Self {
            found: Found::new(specs),
            uprobes: Uprobes::new("--op", [ENTRY, RETURN]),
            symbols: HashMap::new(),
            latency_seen: Vec::new(),
            ranges: Vec::new(),
            before_attach: BeforeAttachThreads::default(),
            runtimes: runtimes(),
        }
    }

    pub fn specs(&self) -> &[OpSpec] {
        &self.found.specs
    }

    pub fn is_on(&self) -> bool {
        !self.found.specs.is_empty()
    }

    pub fn hooked(&self) -> &[Hooked] {
        &self.found.hooked
    }

    /// The specs that matched nothing in any process looked at, each as one line naming
    /// what was searched and the nearest names.
    pub fn unmatched(&self) -> Vec<String> {
        self.found.unmatched()
    }

    pub fn take_links(&mut self) -> Links {
        let mut links = self.uprobes.take_links();
        for runtime in &mut self.runtimes {
            links.append(runtime.take_links());
        }
        links
    }

    /// Processes whose calls from before their hooks were planted are not seen (a
    /// runtime's, runtime.rs).
    pub fn blind_at_attach(&self) -> &[u32] {
        &self.found.blind
    }

    /// Hooks the `--op` functions that `tgid` maps now and were not hooked in it before;
    /// returns the ones newly hooked. A process that is gone yields nothing.
    pub fn attach(&mut self, ebpf: &mut Ebpf, tgid: u32) -> Result<Vec<Hooked>, Refusal> {
        let Some(pid) = NonZeroU32::new(tgid) else {
            return Ok(Vec::new());
        };
        if self.found.specs.is_empty() {
            return Ok(Vec::new());
        }
        let Some(maps) = Maps::read(tgid) else {
            return Ok(Vec::new());
        };
        for runtime in &mut self.runtimes {
            if runtime.claims(&maps, tgid) {
                return runtime.attach(&mut self.found, ebpf, tgid, pid, &maps);
            }
        }
        let mut new = Vec::new();
        for (index, spec) in self.found.specs.clone().iter().enumerate() {
            let already = self.found.is_hooked(tgid, index);
            for path in maps.files_for(spec) {
                if already || !self.found.seen.insert((tgid, format!("{index}\0{path}"))) {
                    continue;
                }
                let file = maps.file(&path);
                let Some(symbols) = self.symbols_of(&file) else {
                    continue;
                };
                let found = matches(&symbols, &spec.function);
                if found.is_empty() {
                    let search = &mut self.found.searches[index];
                    if !search.files.contains(&path) {
                        search.files.push(path.clone());
                    }
                    note_nearest(search, &symbols, &spec.function);
                    continue;
                }
                for symbol in found {
                    let Some(addr) = maps.vaddr(&path, symbol.file_offset) else {
                        continue;
                    };
                    self.hook(ebpf, pid, &file, symbol.file_offset)?;
                    let key = OpAddrKey {
                        tgid,
                        _pad: 0,
                        addr,
                    };
                    self.found.write_addr(ebpf, key, index as u32)?;
                    self.ranges
                        .push((tgid, addr, addr + symbol.size.max(1), index as u32));
                    let hooked = Hooked {
                        tgid,
                        function: index as u32,
                        path: path.clone(),
                        symbol: symbol.demangled.clone(),
                    };
                    log::debug!("{}", hooked.describe(&self.found.specs));
                    self.found.hooked.push(hooked.clone());
                    new.push(hooked);
                }
                // The executable's (or the first library's) match is the function: later
                // files are not searched once one matched.
                break;
            }
        }
        if !new.is_empty() {
            self.before_attach.look_at_threads(ebpf, tgid, &self.ranges);
        }
        Ok(new)
    }

    fn symbols_of(&mut self, file: &Path) -> Option<Arc<Vec<Symbol>>> {
        // Keyed by the file the link resolves to, so processes sharing it share the parse.
        let real = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
        if let Some(symbols) = self.symbols.get(&real) {
            return Some(symbols.clone());
        }
        let symbols = Arc::new(read_symbols(file).ok()?);
        self.symbols.insert(real, symbols.clone());
        Some(symbols)
    }

    fn hook(
        &mut self,
        ebpf: &mut Ebpf,
        pid: NonZeroU32,
        file: &Path,
        offset: u64,
    ) -> Result<(), Refusal> {
        for name in [ENTRY, RETURN] {
            self.uprobes
                .attach(ebpf, name, file, offset, pid)
                .map_err(|e| Refusal::Failed(format!("attaching {name}: {e}")))?;
        }
        Ok(())
    }

    /// The counters, the threads inside an operation and the latencies new since the last
    /// read.
    pub fn read(&mut self, ebpf: &mut Ebpf) -> OpsRead {
        let runtimes: usize = self.runtimes.iter().map(|r| r.attached()).sum();
        if self.found.specs.is_empty() || self.uprobes.attached() + runtimes == 0 {
            return OpsRead::default();
        }
        let mut latency_us = Vec::new();
        for (function, totals) in self.latency(ebpf) {
            let seen = match self.latency_seen.get_mut(function as usize) {
                Some(seen) => seen,
                None => {
                    self.latency_seen
                        .resize(function as usize + 1, vec![0; totals.len()]);
                    &mut self.latency_seen[function as usize]
                }
            };
            if seen.len() != totals.len() {
                *seen = vec![0; totals.len()];
            }
            let buckets = totals.len().saturating_sub(1); // the last slot is the max
            let new: Vec<(u64, u64)> = totals[..buckets]
                .iter()
                .zip(seen.iter())
                .enumerate()
                .filter(|(_, (now, before))| now > before)
                .map(|(i, (now, before))| (probe_common::latency::bucket_value(i), now - before))
                .collect();
            *seen = totals;
            if !new.is_empty() {
                latency_us.push((function, new));
            }
        }
        self.before_attach.recheck(ebpf, &self.ranges);
        OpsRead {
            counters: self.counters(ebpf),
            threads: self.in_flight(ebpf),
            latency_us,
            before_attach: self
                .before_attach
                .threads
                .iter()
                .map(|((tgid, tid), b)| (*tgid, *tid, b.function, b.since_ns))
                .collect(),
            blind_at_attach: self.found.blind.clone(),
        }
    }

    /// Every (process, function)'s counters now.
    pub fn counters(&self, ebpf: &Ebpf) -> Vec<(OpStatsKey, OpCounters)> {
        let Some(map) = ebpf.map(map_names::OP_STATS) else {
            return Vec::new();
        };
        let Ok(stats) = BpfHashMap::<&MapData, OpStatsKey, OpCounters>::try_from(map) else {
            return Vec::new();
        };
        stats.iter().filter_map(|entry| entry.ok()).collect()
    }

    /// The threads inside an operation now: (tgid, pid, the call).
    pub fn in_flight(&self, ebpf: &Ebpf) -> Vec<(u32, u32, OpCall)> {
        let Some(map) = ebpf.map(map_names::OP_CALLS) else {
            return Vec::new();
        };
        let Ok(calls) = BpfHashMap::<&MapData, u64, OpCall>::try_from(map) else {
            return Vec::new();
        };
        // A BEFORE_ATTACH entry is no counted call: it travels as `before_attach`.
        let mut out: Vec<(u32, u32, OpCall)> = calls
            .iter()
            .filter_map(|entry| entry.ok())
            .filter(|(_, call)| call.depth != BEFORE_ATTACH)
            .map(|(id, call)| ((id >> 32) as u32, id as u32, call))
            .collect();
        // Goroutines inside an operation: no thread is theirs (pid 0).
        if let Some(Ok(go)) = ebpf
            .map(map_names::OP_GO_CALLS)
            .map(BpfHashMap::<&MapData, OpGoKey, OpCall>::try_from)
        {
            out.extend(
                go.iter()
                    .filter_map(|entry| entry.ok())
                    .map(|(key, call)| (key.tgid, 0, call)),
            );
        }
        out
    }

    /// Each function's latency histogram totals (the last slot is the max, µs).
    pub fn latency(&self, ebpf: &Ebpf) -> Vec<(u32, Vec<u64>)> {
        let Some(map) = ebpf.map(map_names::OP_LATENCY) else {
            return Vec::new();
        };
        let Ok(array) = Array::<&MapData, LatencyHistogram>::try_from(map) else {
            return Vec::new();
        };
        (0..self.found.specs.len().min(MAX_OP_FUNCTIONS as usize) as u32)
            .filter_map(|i| Some((i, array.get(&i, 0).ok()?.counts.to_vec())))
            .collect()
    }

    /// Takes a process that exited out of the maps (its counters were read at its exit).
    pub fn forget(&mut self, ebpf: &mut Ebpf, tgid: u32) {
        let mine: Vec<OpAddrKey> = self
            .found
            .addrs
            .iter()
            .copied()
            .filter(|k| k.tgid == tgid)
            .collect();
        self.found.addrs.retain(|k| k.tgid != tgid);
        self.found.seen.retain(|(t, _)| *t != tgid);
        self.ranges.retain(|r| r.0 != tgid);
        let marked: Vec<u64> = self
            .before_attach
            .threads
            .iter()
            .filter(|((t, _), b)| *t == tgid && b.marked)
            .map(|((t, tid), _)| thread_id(*t, *tid))
            .collect();
        self.before_attach.threads.retain(|(t, _), _| *t != tgid);
        self.found.blind.retain(|t| *t != tgid);
        // Marks its threads' exits did not take (a thread the kernel did not see exit).
        if let Some(Ok(mut map)) = ebpf
            .map_mut(map_names::OP_CALLS)
            .map(BpfHashMap::<&mut MapData, u64, OpCall>::try_from)
        {
            for id in marked {
                let _ = map.remove(&id);
            }
        }
        // Calls keyed by a runtime's own key (`OpGoKey`: a goroutine, an interpreter frame)
        // have no thread exit to take them out.
        if let Some(Ok(mut map)) = ebpf
            .map_mut(map_names::OP_GO_CALLS)
            .map(BpfHashMap::<&mut MapData, OpGoKey, OpCall>::try_from)
        {
            let keys: Vec<OpGoKey> = map
                .keys()
                .filter_map(|k| k.ok())
                .filter(|k| k.tgid == tgid)
                .collect();
            for key in keys {
                let _ = map.remove(&key);
            }
        }
        if let Some(Ok(mut map)) = ebpf
            .map_mut(map_names::OP_ADDRS)
            .map(BpfHashMap::<&mut MapData, OpAddrKey, u32>::try_from)
        {
            for key in mine {
                let _ = map.remove(&key);
            }
        }
        if let Some(Ok(mut map)) = ebpf
            .map_mut(map_names::OP_STATS)
            .map(BpfHashMap::<&mut MapData, OpStatsKey, OpCounters>::try_from)
        {
            for function in 0..self.found.specs.len() as u32 {
                let _ = map.remove(&OpStatsKey { tgid, function });
            }
        }
    }
}

impl uprobe::UprobeUnit for OpHooks {
    fn take_links(&mut self) -> Links {
        OpHooks::take_links(self)
    }
}

//! Operations (`--op`, docs/design.md "operation"): what is in flight inside the targets'
//! own functions, and the `operation_cut` violation (docs/design.md, "Violations") when a
//! process or one of its threads exits inside one. Pure: fed the kernel's counters
//! ([`OpsSample`]), the cut threads ([`OpCut`]) and the exits, in event order.
//!
//! A violation is one per (process, function): every operation of that function the process
//! abandoned, whether its thread exited alone or with the whole process. At the process's
//! exit the kernel's counters are final (no thread of an exiting process runs user code
//! again), so `started - ended` there is the exact number abandoned; the cut threads' own
//! events, which may arrive just before or after the exit, give their ages. An operation
//! begun before attach is in no counter: its thread's exit inside it is the kernel's event
//! too (`OpCut::before_attach`, from the mark userspace put in the kernel's map), and one
//! still listed from before attach at the process's exit is counted there; by thread, so
//! an event read after the exit does not count it twice.

pub mod events;

use std::collections::{BTreeMap, BTreeSet};

use hdrhistogram::Histogram;

use crate::{
    model::ops::events::{OpCount, OpCut, OpThread, OpsSample, UNKNOWN_FUNCTION},
    model::report::{OperationCut, OperationsReport, Percentiles, Violation},
};

/// What one (process, function) abandoned, so far.
#[derive(Clone, Debug, Default)]
struct Cut {
    first_ns: u64,
    /// Cut threads the kernel counted (their events).
    threads: u64,
    /// In flight at the process's exit, by the kernel's final counters.
    at_exit: u64,
    /// Threads cut inside an operation begun before attach, which no counter has: those
    /// whose exit the kernel reported inside it, and those still inside it at the process's
    /// exit. By thread, since a thread's event may come after the exit that counted it.
    before_attach: BTreeSet<u32>,
    oldest_age_ns: u64,
}

impl Cut {
    /// The kernel's counted calls (its cut events and its final counters both count those)
    /// and the operations from before attach, which neither does.
    fn count(&self) -> u64 {
        self.threads.max(self.at_exit) + self.before_attach.len() as u64
    }
}

#[derive(Debug)]
pub struct OpsTracker {
    /// The `--op` SPECs, by function index.
    names: Vec<String>,
    /// The kernel's counters of each (process, function), as last read; kept after the
    /// process exits (the report counts its operations).
    counts: BTreeMap<(u32, u32), OpCount>,
    /// Threads inside an operation at the last read, of running processes.
    threads: Vec<OpThread>,
    /// Threads inside an operation since before attach (or not yet known not to be), of
    /// running processes, at the last read: in flight, though no counter has them.
    before_attach: Vec<OpThread>,
    /// Running processes whose operations from before attach cannot be seen (a Go or
    /// CPython program's).
    blind_at_attach: Vec<u32>,
    /// The runtimes whose processes those can be, as the basis names them (`Go or CPython`:
    /// the kernel's list, kernel/ops/runtime.rs).
    blind_runtimes: String,
    exited: BTreeSet<u32>,
    cuts: BTreeMap<(u32, u32), Cut>,
    /// Threads the kernel saw cut inside a call it counted (tgid, pid): a thread also listed
    /// from before attach made a hooked call since, and is not counted twice.
    cut_threads: BTreeSet<(u32, u32)>,
    /// Threads still unknown (never seen blocked, so never looked at) when their process
    /// exited: each might have been inside an operation from before attach, which no
    /// `operation_cut` counts; the report is then never `clean`.
    exited_unknown: u64,
    latency: Histogram<u64>,
    /// Latencies by function index (the metrics' series).
    by_function: Vec<Histogram<u64>>,
    last_edge_ns: u64,
}

impl OpsTracker {
    pub fn new(names: Vec<String>) -> Self {
        let by_function = names.iter().map(|_| histogram()).collect();
        Self {
            names,
            counts: BTreeMap::new(),
            threads: Vec::new(),
            before_attach: Vec::new(),
            blind_at_attach: Vec::new(),
            blind_runtimes: String::new(),
            exited: BTreeSet::new(),
            cuts: BTreeMap::new(),
            cut_threads: BTreeSet::new(),
            exited_unknown: 0,
            latency: histogram(),
            by_function,
            last_edge_ns: 0,
        }
    }

    /// Names the runtimes whose calls from before attach go unseen.
    pub fn with_blind_runtimes(mut self, names: String) -> Self {
        self.blind_runtimes = names;
        self
    }

    /// The runtimes whose calls from before attach go unseen (`Go or CPython`).
    pub fn blind_runtimes(&self) -> &str {
        &self.blind_runtimes
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    fn name(&self, function: u32) -> String {
        self.names
            .get(function as usize)
            .cloned()
            .unwrap_or_else(|| format!("#{function}"))
    }

    pub fn sample(&mut self, sample: &OpsSample) {
        for count in &sample.counts {
            let key = (count.tgid, count.function);
            // Counters only grow: a read older than one already taken changes nothing.
            let newer = self.counts.get(&key).is_none_or(|old| {
                count.started + count.ended + count.cut >= old.started + old.ended + old.cut
            });
            if newer {
                self.counts.insert(key, *count);
            }
            self.last_edge_ns = self.last_edge_ns.max(count.last_edge_ns);
        }
        self.threads = sample
            .threads
            .iter()
            .copied()
            .filter(|t| !self.exited.contains(&t.tgid))
            .collect();
        self.before_attach = sample
            .before_attach
            .iter()
            .copied()
            .filter(|t| !self.exited.contains(&t.tgid))
            .collect();
        self.blind_at_attach = sample
            .blind_at_attach
            .iter()
            .copied()
            .filter(|t| !self.exited.contains(t))
            .collect();
        for (function, latencies) in &sample.latency_us {
            for &(us, n) in latencies {
                let us = us.clamp(1, self.latency.high());
                let _ = self.latency.record_n(us, n);
                if let Some(h) = self.by_function.get_mut(*function as usize) {
                    let _ = h.record_n(us, n);
                }
            }
        }
    }

    /// A thread exited inside an operation: the violation for its (process, function), as
    /// it stands now (`ms`: ktime ns to ms since attach).
    pub fn cut(&mut self, event: &OpCut, ms: impl Fn(u64) -> u64) -> OperationCut {
        let key = (event.tgid, event.function);
        let cut = self.cuts.entry(key).or_insert(Cut {
            first_ns: event.ktime_ns,
            ..Cut::default()
        });
        if event.before_attach {
            cut.before_attach.insert(event.pid);
        } else {
            cut.threads += 1;
            self.cut_threads.insert((event.tgid, event.pid));
        }
        cut.oldest_age_ns = cut
            .oldest_age_ns
            .max(event.ktime_ns.saturating_sub(event.since_ns));
        self.last_edge_ns = self.last_edge_ns.max(event.ktime_ns);
        self.violation(key, &ms)
    }

    /// The process exited: its operations still in flight were abandoned. `counts` are the
    /// kernel's counters read at the exit (final); `None` when they could not be read.
    pub fn exit(&mut self, tgid: u32, ktime_ns: u64, ms: impl Fn(u64) -> u64) -> Vec<OperationCut> {
        self.exited.insert(tgid);
        let mut out = Vec::new();
        let before_keys: Vec<(u32, u32)> = self
            .before_attach
            .iter()
            .filter(|t| t.function != UNKNOWN_FUNCTION)
            .map(|t| (t.tgid, t.function))
            .collect();
        let keys: Vec<(u32, u32)> = self
            .counts
            .keys()
            .chain(self.cuts.keys())
            .chain(before_keys.iter())
            .filter(|(t, _)| *t == tgid)
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for key in keys {
            // A thread from before attach that the kernel has seen in a hooked call since
            // (cut, or inside one at the last read) is the kernel's to count.
            let before: Vec<&OpThread> = self
                .before_attach
                .iter()
                .filter(|t| (t.tgid, t.function) == key)
                .filter(|t| {
                    !self.cut_threads.contains(&(t.tgid, t.pid))
                        && !self
                            .threads
                            .iter()
                            .any(|k| (k.tgid, k.pid) == (t.tgid, t.pid))
                })
                .collect();
            let abandoned = self
                .counts
                .get(&key)
                .map_or(0, |c| c.started.saturating_sub(c.ended));
            let before_pids: Vec<u32> = before.iter().map(|t| t.pid).collect();
            let oldest = self
                .threads
                .iter()
                .chain(before.iter().copied())
                .filter(|t| (t.tgid, t.function) == key)
                .map(|t| ktime_ns.saturating_sub(t.since_ns))
                .max()
                .unwrap_or(0);
            if abandoned == 0 && before_pids.is_empty() && !self.cuts.contains_key(&key) {
                continue;
            }
            let cut = self.cuts.entry(key).or_insert(Cut {
                first_ns: ktime_ns,
                ..Cut::default()
            });
            cut.at_exit = abandoned;
            cut.before_attach.extend(before_pids);
            cut.oldest_age_ns = cut.oldest_age_ns.max(oldest);
            out.push(self.violation(key, &ms));
        }
        self.exited_unknown += self
            .before_attach
            .iter()
            .filter(|t| t.tgid == tgid && t.function == UNKNOWN_FUNCTION)
            .filter(|t| {
                !self.cut_threads.contains(&(t.tgid, t.pid))
                    && !self.threads.iter().any(|k| (k.tgid, k.pid) == (t.tgid, t.pid))
            })
            .count() as u64;
        self.threads.retain(|t| t.tgid != tgid);
        self.before_attach.retain(|t| t.tgid != tgid);
        self.blind_at_attach.retain(|t| *t != tgid);
        out
    }

    fn violation(&self, key: (u32, u32), ms: &impl Fn(u64) -> u64) -> OperationCut {
        let cut = self.cuts.get(&key).cloned().unwrap_or_default();
        OperationCut {
            pid: key.0,
            at_ms: ms(cut.first_ns),
            function: self.name(key.1),
            count: cut.count(),
            oldest_age_ms: cut.oldest_age_ns / 1_000_000,
        }
    }

    /// Operations in flight now, in one process or in all (`None`).
    /// A thread still being looked at (`UNKNOWN_FUNCTION`) counts: unknown is never idle.
    pub fn in_flight(&self, tgid: Option<u32>) -> u64 {
        let wanted = |t: u32| !self.exited.contains(&t) && tgid.is_none_or(|want| want == t);
        let counted: u64 = self
            .counts
            .iter()
            .filter(|((t, _), _)| wanted(*t))
            .map(|(_, c)| c.started.saturating_sub(c.ended + c.cut))
            .sum();
        counted + self.before_attach.iter().filter(|t| wanted(t.tgid)).count() as u64
    }

    /// Running processes whose operations from before attach could not be seen.
    pub fn blind_at_attach(&self) -> &[u32] {
        &self.blind_at_attach
    }

    /// Threads in flight since before attach (or still being looked at), as last read.
    pub fn before_attach(&self) -> &[OpThread] {
        &self.before_attach
    }

    /// In flight now by function: (SPEC, how many, when the oldest began (ktime ns) if its
    /// thread was seen inside it at the last read).
    pub fn in_flight_by_function(&self) -> Vec<(String, u64, Option<u64>)> {
        (0..self.names.len() as u32)
            .map(|function| {
                let count = self
                    .counts
                    .iter()
                    .filter(|((t, f), _)| *f == function && !self.exited.contains(t))
                    .map(|(_, c)| c.started.saturating_sub(c.ended + c.cut))
                    .sum::<u64>()
                    + self
                        .before_attach
                        .iter()
                        .filter(|t| t.function == function)
                        .count() as u64;
                let oldest = self
                    .threads
                    .iter()
                    .chain(&self.before_attach)
                    .filter(|t| t.function == function)
                    .map(|t| t.since_ns)
                    .min();
                (self.name(function), count, oldest)
            })
            .collect()
    }

    /// Per (process, SPEC): operations in flight now (0 once the process exited) and
    /// operations returned since attach, for the metrics' series (output/metrics.rs).
    pub fn by_process(&self) -> Vec<(u32, &str, u64, u64)> {
        let mut out: BTreeMap<(u32, u32), (u64, u64)> = BTreeMap::new();
        for ((tgid, function), c) in &self.counts {
            let entry = out.entry((*tgid, *function)).or_default();
            if !self.exited.contains(tgid) {
                entry.0 += c.started.saturating_sub(c.ended + c.cut);
            }
            entry.1 += c.ended;
        }
        for t in &self.before_attach {
            // A thread still being looked at is counted under its process's first SPEC:
            // unknown is never idle (see in_flight).
            let function = if t.function == UNKNOWN_FUNCTION {
                0
            } else {
                t.function
            };
            out.entry((t.tgid, function)).or_default().0 += 1;
        }
        out.into_iter()
            .filter_map(|((tgid, function), (in_flight, ended))| {
                let name = self.names.get(function as usize)?;
                Some((tgid, name.as_str(), in_flight, ended))
            })
            .collect()
    }

    /// The latest operation start, end or cut (ktime ns); 0 if none yet.
    pub fn last_edge_ns(&self) -> u64 {
        self.last_edge_ns
    }

    /// Operations that returned, over every process.
    pub fn completed(&self) -> u64 {
        self.counts.values().map(|c| c.ended).sum()
    }

    /// Latencies (µs) by SPEC, for the metrics.
    pub fn histograms(&self) -> impl Iterator<Item = (&str, &Histogram<u64>)> {
        self.names.iter().map(String::as_str).zip(&self.by_function)
    }

    pub fn report(&self) -> OperationsReport {
        OperationsReport {
            count: self.completed(),
            in_flight: self.in_flight(None),
            latency_us: Percentiles {
                p50: self.latency.value_at_quantile(0.50),
                p90: self.latency.value_at_quantile(0.90),
                p99: self.latency.value_at_quantile(0.99),
                max: self.latency.max(),
            },
        }
    }
}

/// Puts `cut` in the violations: it replaces the one already there for the same process and
/// function (which keeps its first `at_ms`), or is added.
pub fn merge(violations: &mut Vec<Violation>, cut: OperationCut) {
    for violation in violations.iter_mut() {
        if let Violation::OperationCut(old) = violation {
            if old.pid == cut.pid && old.function == cut.function {
                let at_ms = old.at_ms.min(cut.at_ms);
                *old = cut;
                old.at_ms = at_ms;
                return;
            }
        }
    }
    violations.push(Violation::OperationCut(cut));
}

fn histogram() -> Histogram<u64> {
    crate::model::conns::histogram()
}

/// The operations in the state (model/tracker.rs): their cuts are violations, their calls in
/// flight hold the drain, and they fill the report's `operations`.
impl crate::model::tracker::Tracker for OpsTracker {
    fn apply(
        &mut self,
        event: &crate::events::Event,
        attach_ns: u64,
        violations: &mut Vec<Violation>,
    ) {
        use crate::{events::Event, model::tracker::ms_since};
        let Event::Unit(event) = event else {
            return;
        };
        if let Some(cut) = event.read::<OpCut>() {
            merge(violations, self.cut(&cut, ms_since(attach_ns)));
        } else if let Some(sample) = event.read::<OpsSample>() {
            self.sample(&sample);
        }
    }

    fn exit(&mut self, tgid: u32, ktime_ns: u64, attach_ns: u64, violations: &mut Vec<Violation>) {
        let ms = crate::model::tracker::ms_since(attach_ns);
        for cut in OpsTracker::exit(self, tgid, ktime_ns, ms) {
            merge(violations, cut);
        }
    }

    fn idle(&self) -> bool {
        self.in_flight(None) == 0
    }

    fn last_edge_ns(&self) -> u64 {
        OpsTracker::last_edge_ns(self)
    }

    fn report(&self, report: &mut crate::model::report::Report) {
        report.operations = Some(OpsTracker::report(self));
        // Never `clean` about an operation that may have been cut unseen.
        if self.exited_unknown > 0 && report.verdict == crate::model::report::Verdict::Clean {
            report.verdict = crate::model::report::Verdict::Incomplete;
        }
    }

    fn operations(&self) -> Option<&dyn crate::model::tracker::Operations> {
        Some(self)
    }
}

impl crate::model::tracker::Operations for OpsTracker {
    fn in_flight(&self) -> u64 {
        OpsTracker::in_flight(self, None)
    }

    fn in_flight_by_function(&self) -> Vec<(String, u64, Option<u64>)> {
        OpsTracker::in_flight_by_function(self)
    }

    fn summary(&self) -> OperationsReport {
        OpsTracker::report(self)
    }

    fn names(&self) -> &[String] {
        OpsTracker::names(self)
    }

    fn by_process(&self) -> Vec<(u32, &str, u64, u64)> {
        OpsTracker::by_process(self)
    }

    fn histograms(&self) -> Vec<(&str, &Histogram<u64>)> {
        OpsTracker::histograms(self).collect()
    }

    fn blind_at_attach(&self) -> &[u32] {
        OpsTracker::blind_at_attach(self)
    }

    fn blind_runtimes(&self) -> &str {
        OpsTracker::blind_runtimes(self)
    }
}

#[cfg(test)]
mod tests;

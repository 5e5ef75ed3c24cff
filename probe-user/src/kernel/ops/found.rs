//! What every way of hooking `--op` functions shares (the ELF functions of mod.rs, each
//! runtime of runtime.rs): the `--op` list, the functions found and hooked, the searches
//! that found nothing yet, the addresses written into `OP_ADDRS`, the processes whose calls
//! from before attach are not seen.

use std::collections::HashSet;

use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    Ebpf,
};
use probe_common::ops::{map_names, OpAddrKey};

use super::symbols::{OpSpec, Search};
use crate::kernel::uprobe;

/// A function found and hooked in one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hooked {
    pub tgid: u32,
    /// Index of its spec in the `--op` list.
    pub function: u32,
    /// As the target maps it.
    pub path: String,
    /// The symbol, demangled.
    pub symbol: String,
}

impl Hooked {
    /// One line for `-v`: `pid 12: purchase = Game::purchase(int) in /srv/game`.
    pub fn describe(&self, specs: &[OpSpec]) -> String {
        let spec = specs
            .get(self.function as usize)
            .map_or("?", |s| s.text.as_str());
        format!(
            "pid {}: --op {spec} = {} in {}",
            self.tgid, self.symbol, self.path
        )
    }
}

/// Why a process's functions cannot be hooked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Loading or attaching the programs failed.
    Failed(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Failed(why) => write!(f, "--op: {why}"),
        }
    }
}

/// The state every way of hooking shares.
pub(super) struct Found {
    pub specs: Vec<OpSpec>,
    /// (tgid, what was looked at in it) already looked at.
    pub seen: HashSet<(u32, String)>,
    pub hooked: Vec<Hooked>,
    /// Addresses written into `OP_ADDRS`, to take out at the process's exit.
    pub addrs: Vec<OpAddrKey>,
    /// Per spec: the files searched and the nearest names, while nothing matched.
    pub searches: Vec<Search>,
    /// Processes of a runtime whose calls running before attach are not seen.
    pub blind: Vec<u32>,
}

impl Found {
    pub fn new(specs: Vec<OpSpec>) -> Self {
        let searches = specs.iter().map(|_| Search::default()).collect();
        Self {
            specs,
            seen: HashSet::new(),
            hooked: Vec::new(),
            addrs: Vec::new(),
            searches,
            blind: Vec::new(),
        }
    }

    /// Whether spec `index` is hooked in `tgid` already.
    pub fn is_hooked(&self, tgid: u32, index: usize) -> bool {
        self.hooked
            .iter()
            .any(|h| h.tgid == tgid && h.function == index as u32)
    }

    /// `tgid`'s calls running before attach are not seen.
    pub fn note_blind(&mut self, tgid: u32) {
        if !self.blind.contains(&tgid) {
            self.blind.push(tgid);
        }
    }

    /// Writes where function `function` starts in `key.tgid` into `OP_ADDRS` (the entry
    /// program finds its function by the address it fired at), and keeps the key.
    pub fn write_addr(
        &mut self,
        ebpf: &mut Ebpf,
        key: OpAddrKey,
        function: u32,
    ) -> Result<(), Refusal> {
        let map = ebpf
            .map_mut(map_names::OP_ADDRS)
            .ok_or_else(|| Refusal::Failed("no OP_ADDRS map in the object".into()))?;
        let mut addrs = BpfHashMap::<&mut MapData, OpAddrKey, u32>::try_from(map)
            .map_err(|e| Refusal::Failed(e.to_string()))?;
        addrs
            .insert(key, function, 0)
            .map_err(|e| Refusal::Failed(format!("OP_ADDRS: {}", uprobe::error_line(&e))))?;
        self.addrs.push(key);
        Ok(())
    }

    /// The specs that matched nothing in any process looked at, each as one line naming
    /// what was searched and the nearest names.
    pub fn unmatched(&self) -> Vec<String> {
        self.specs
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.hooked.iter().any(|h| h.function == *i as u32))
            .map(|(i, spec)| {
                let search = &self.searches[i];
                let files: Vec<&str> = search.files.iter().map(String::as_str).collect();
                let searched = match files.len() {
                    0 => "no file of the targets matches that library name".to_string(),
                    1..=3 => format!("searched {}", files.join(", ")),
                    n => format!(
                        "searched {}, {} and {} more files",
                        files[0],
                        files[1],
                        n - 2
                    ),
                };
                let nearest: Vec<&str> = search
                    .nearest
                    .iter()
                    .map(|(_, name)| name.as_str())
                    .collect();
                let nearest = if nearest.is_empty() {
                    String::new()
                } else {
                    format!("; nearest: {}", nearest.join(", "))
                };
                format!(
                    "--op {}: no function of that name ({searched}){nearest}",
                    spec.text
                )
            })
            .collect()
    }
}

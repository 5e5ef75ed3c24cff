//! `--op` on Go programs (docs/design.md, "operation": a Go function per goroutine, without
//! uretprobes). The function is found in the executable's `.gopclntab` (gopclntab.rs: it is
//! there whether or not the binary is stripped, and names every function the symbol table
//! would), its code decoded (gocode.rs), and two plain uprobe programs attached in the one
//! process (probe-ebpf/src/ops/mod.rs): `op_go_entry` after the stack check, `op_go_return` at
//! each RET, paired in the kernel by the goroutine's `g` (R14 in Go's register ABI).
//!
//! Covered: Go 1.18 and later on x86-64 (the table layout gopclntab.rs reads, and the
//! register ABI of Go 1.17+ that keeps `g` in R14). Other architectures and older Go are
//! refused with one line.
//!
//! Not seen: a call already running when its probes were planted (its goroutine's stack is
//! Go's, not the thread's, so kernel/ops/stacks.rs cannot find it): the drain basis says so
//! for every Go target ([`super::OpHooks::blind_at_attach`]).

mod gocode;
mod gopclntab;

use std::{
    collections::HashMap,
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::Ebpf;
use probe_common::ops::OpAddrKey;

use super::{
    found::{Found, Hooked, Refusal},
    runtime::Runtime,
    symbols::{Maps, OpSpec, Search, NEAREST},
};
use crate::kernel::{links::Links, uprobe::Uprobes};
use gocode::GoProbes;
use gopclntab::GoFunc;

pub(super) const GO_ENTRY: &str = "op_go_entry";
pub(super) const GO_RETURN: &str = "op_go_return";

/// A Go executable's functions, parsed once per file.
struct GoBinary {
    pub funcs: Vec<GoFunc>,
    /// `go1.19.8`, when its build info says.
    pub version: Option<String>,
    data: Vec<u8>,
}

impl GoBinary {
    pub fn read(file: &Path) -> Result<Self, String> {
        let data = std::fs::read(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
        {
            use object::Object;
            let elf = object::File::parse(&*data).map_err(|e| e.to_string())?;
            if elf.architecture() != object::Architecture::X86_64 {
                return Err(format!(
                    "a Go program for {:?}: drainwatch follows Go functions on x86-64 only",
                    elf.architecture()
                ));
            }
        }
        let funcs = gopclntab::go_functions(&data).map_err(|e| e.to_string())?;
        let version = gopclntab::go_version(&data);
        Ok(Self {
            funcs,
            version,
            data,
        })
    }

    /// The probe points of `func` and the file offset of its entry, or why not.
    fn probes(&self, func: &GoFunc) -> Result<(GoProbes, u64), String> {
        let (code, offset) = gopclntab::code_at(&self.data, func.entry, func.end)
            .ok_or_else(|| "its code is not in the file".to_string())?;
        Ok((gocode::probes(code, func.entry)?, offset))
    }
}

/// `(*Game).purchase` and `Game.purchase` alike: a method's receiver without its pointer.
fn normalized(name: &str) -> String {
    name.replace("(*", "").replace(')', "")
}

/// The functions `spec` names, best tier first: the runtime's name as written
/// (`main.(*Game).purchase`); a name ending in `.SPEC` or `/SPEC` (`purchase`,
/// `(*Game).purchase`, `shop.Buy` for `example.com/game/shop.Buy`); the same with a method's
/// receiver written without its pointer (`Game.purchase`). The first tier that matches is
/// taken whole.
fn go_matches<'a>(funcs: &'a [GoFunc], spec: &str) -> Vec<&'a GoFunc> {
    let ends_with = |name: &str, tail: &str| {
        name.strip_suffix(tail)
            .is_some_and(|head| head.ends_with('.') || head.ends_with('/'))
    };
    let wanted = normalized(spec);
    let tiers: [&dyn Fn(&GoFunc) -> bool; 3] =
        [&|f| f.name == spec, &|f| ends_with(&f.name, spec), &|f| {
            let name = normalized(&f.name);
            name == wanted || ends_with(&name, &wanted)
        }];
    for tier in tiers {
        let found: Vec<&GoFunc> = funcs.iter().filter(|f| tier(f)).collect();
        if !found.is_empty() {
            return found;
        }
    }
    Vec::new()
}

/// Keeps the Go names closest to `spec` (whole, or by their last part) in `search`.
fn go_nearest(search: &mut Search, funcs: &[GoFunc], spec: &str) {
    for func in funcs {
        let last = func.name.rsplit('.').next().unwrap_or(&func.name);
        let distance = strsim::levenshtein(&func.name, spec).min(strsim::levenshtein(last, spec));
        if search.nearest.len() == NEAREST
            && search.nearest.last().is_some_and(|(d, _)| *d <= distance)
        {
            continue;
        }
        if search.nearest.iter().any(|(_, n)| *n == func.name) {
            continue;
        }
        search.nearest.push((distance, func.name.clone()));
        search.nearest.sort();
        search.nearest.truncate(NEAREST);
    }
}

/// Go programs: hooked without uretprobes, per goroutine.
pub(super) struct Go {
    /// The entry and RET programs, attached per process.
    uprobes: Uprobes,
    /// Parsed Go executables by file.
    binaries: HashMap<PathBuf, Arc<GoBinary>>,
    /// Whether each executable (by the file it resolves to) is a Go program.
    is_go: HashMap<PathBuf, bool>,
}

impl Default for Go {
    fn default() -> Self {
        Self {
            uprobes: Uprobes::new("--op Go", [GO_ENTRY, GO_RETURN]),
            binaries: HashMap::new(),
            is_go: HashMap::new(),
        }
    }
}

impl Runtime for Go {
    fn name(&self) -> &'static str {
        "Go"
    }

    fn blind_at_attach(&self) -> bool {
        true
    }

    /// A Go program's executable has a `.gopclntab` or `.go.buildinfo` section.
    fn claims(&mut self, maps: &Maps, _tgid: u32) -> bool {
        let Some(exe) = maps.exe() else {
            return false;
        };
        let file = maps.file(exe);
        // A file replaced on disk is read through /proc/PID/map_files (symbols.rs), whose
        // link canonicalizes to nothing: it is its own key.
        let real = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
        if let Some(is_go) = self.is_go.get(&real) {
            return *is_go;
        }
        let Ok(data) = std::fs::read(&file) else {
            return false;
        };
        use object::Object;
        let is_go = object::File::parse(&*data).is_ok_and(|elf| {
            elf.section_by_name(".gopclntab").is_some()
                || elf.section_by_name(".go.buildinfo").is_some()
        });
        self.is_go.insert(real, is_go);
        is_go
    }

    /// Hooks the `--op` functions of the Go program `tgid` (its executable only: a Go program
    /// is one static file).
    fn attach(
        &mut self,
        found: &mut Found,
        ebpf: &mut Ebpf,
        tgid: u32,
        pid: NonZeroU32,
        maps: &Maps,
    ) -> Result<Vec<Hooked>, Refusal> {
        let Some(exe) = maps.exe().map(str::to_string) else {
            return Ok(Vec::new());
        };
        let file = maps.file(&exe);
        let binary = self.go_binary_of(&file).map_err(|why| {
            Refusal::Failed(format!("--op on the Go program {exe} (pid {tgid}): {why}"))
        })?;
        found.note_blind(tgid);
        let mut new = Vec::new();
        for (index, spec) in found.specs.clone().iter().enumerate() {
            if found.is_hooked(tgid, index)
                || !found.seen.insert((tgid, format!("{index}\0{exe}")))
            {
                continue;
            }
            if spec
                .library
                .as_deref()
                .is_some_and(|lib| !super::symbols::library_matches(&exe, lib))
            {
                continue;
            }
            let matched = go_matches(&binary.funcs, &spec.function);
            if matched.is_empty() {
                let search = &mut found.searches[index];
                if !search.files.contains(&exe) {
                    search.files.push(exe.clone());
                }
                go_nearest(search, &binary.funcs, &spec.function);
                continue;
            }
            for func in matched {
                let (hooked, key) = self.hook_go(
                    ebpf,
                    (tgid, pid),
                    maps,
                    (&file, &binary),
                    func,
                    (index, spec),
                )?;
                found.write_addr(ebpf, key, index as u32)?;
                log::debug!("{}", hooked.describe(&found.specs));
                found.hooked.push(hooked.clone());
                new.push(hooked);
            }
        }
        Ok(new)
    }

    fn attached(&self) -> usize {
        self.uprobes.attached()
    }

    fn take_links(&mut self) -> Links {
        self.uprobes.take_links()
    }
}

impl Go {
    /// Plants the probes of `func` (the function `spec`, at `index` in the `--op` list) in
    /// process `tgid`, whose executable `file` is `binary`; returns it, and its entry's
    /// `OP_ADDRS` key.
    fn hook_go(
        &mut self,
        ebpf: &mut Ebpf,
        (tgid, pid): (u32, NonZeroU32),
        maps: &Maps,
        (file, binary): (&Path, &GoBinary),
        func: &GoFunc,
        (index, spec): (usize, &OpSpec),
    ) -> Result<(Hooked, OpAddrKey), Refusal> {
        let exe = maps.exe().unwrap_or_default();
        let refuse = |why: String| {
            Refusal::Failed(format!(
                "--op {}: {} in {exe} (pid {tgid}) cannot be probed: {why}",
                spec.text, func.name
            ))
        };
        let (probes, start_offset) = binary.probes(func).map_err(refuse)?;
        let offset = |addr: u64| start_offset + (addr - func.entry);
        let addr = maps
            .vaddr(exe, offset(probes.entry))
            .ok_or_else(|| refuse("its code is not mapped".into()))?;
        self.uprobes
            .attach(ebpf, GO_ENTRY, file, offset(probes.entry), pid)
            .map_err(|e| refuse(format!("attaching {GO_ENTRY}: {e}")))?;
        for ret in &probes.returns {
            self.uprobes
                .attach(ebpf, GO_RETURN, file, offset(*ret), pid)
                .map_err(|e| refuse(format!("attaching {GO_RETURN}: {e}")))?;
        }
        let key = OpAddrKey {
            tgid,
            _pad: 0,
            addr,
        };
        let version = binary.version.as_deref().unwrap_or("Go");
        let hooked = Hooked {
            tgid,
            function: index as u32,
            path: exe.to_string(),
            symbol: format!(
                "{} ({version}, entry {:#x}, {} RET probes)",
                func.name,
                probes.entry,
                probes.returns.len()
            ),
        };
        Ok((hooked, key))
    }

    fn go_binary_of(&mut self, file: &Path) -> Result<Arc<GoBinary>, String> {
        let real = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
        if let Some(binary) = self.binaries.get(&real) {
            return Ok(binary.clone());
        }
        let binary = Arc::new(GoBinary::read(file)?);
        self.binaries.insert(real, binary.clone());
        Ok(binary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn func(name: &str) -> GoFunc {
        GoFunc {
            name: name.into(),
            entry: 0,
            end: 1,
        }
    }

    #[test]
    fn go_names_match_whole_by_their_end_and_without_the_pointer() {
        let funcs = vec![
            func("main.purchase"),
            func("main.purchase.func1"),
            func("main.(*Game).refund"),
            func("example.com/game/shop.Buy"),
            func("main.Game.Sell"),
        ];
        let names = |spec: &str| -> Vec<&str> {
            go_matches(&funcs, spec)
                .iter()
                .map(|f| f.name.as_str())
                .collect()
        };
        assert_eq!(names("main.purchase"), vec!["main.purchase"]);
        assert_eq!(names("purchase"), vec!["main.purchase"]);
        assert_eq!(names("refund"), vec!["main.(*Game).refund"]);
        assert_eq!(names("(*Game).refund"), vec!["main.(*Game).refund"]);
        assert_eq!(names("Game.refund"), vec!["main.(*Game).refund"]);
        assert_eq!(names("shop.Buy"), vec!["example.com/game/shop.Buy"]);
        assert_eq!(names("Sell"), vec!["main.Game.Sell"]);
        assert!(names("chase").is_empty());
        assert!(names("func1").len() == 1);
        let mut search = Search::default();
        go_nearest(&mut search, &funcs, "purchse");
        assert_eq!(search.nearest[0].1, "main.purchase");
    }
}

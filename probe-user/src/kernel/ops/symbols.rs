//! Finding `--op` functions: a SPEC read, the ELF symbols of a process's files (names
//! demangled), the process's mappings (where a file offset sits in memory), and the nearest
//! names when nothing matched.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use crate::kernel::mapped::{self, Mapping};

/// One `--op` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpSpec {
    /// As given, for messages and the report's `function`.
    pub text: String,
    /// `LIB` of `LIB:FUNCTION`.
    pub library: Option<String>,
    pub function: String,
}

impl OpSpec {
    /// Reads `FUNCTION` or `LIB:FUNCTION`. A `::` belongs to a C++ or Rust path, so the
    /// library is split off at a single colon only.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bytes = text.as_bytes();
        let split = (0..bytes.len()).find(|&i| {
            bytes[i] == b':' && bytes.get(i + 1) != Some(&b':') && (i == 0 || bytes[i - 1] != b':')
        });
        let (library, function) = match split {
            Some(i) => (Some(text[..i].to_string()), &text[i + 1..]),
            None => (None, text),
        };
        if function.trim().is_empty() || library.as_ref().is_some_and(|l| l.trim().is_empty()) {
            return Err(format!(
                "--op `{text}`: give FUNCTION or LIB:FUNCTION (e.g. `purchase`, \
                 `Game::purchase`, `libgame.so:purchase`)"
            ));
        }
        Ok(Self {
            text: text.to_string(),
            library,
            function: function.to_string(),
        })
    }

    /// Reads every `--op` given, once each; at most `MAX_OP_FUNCTIONS`.
    pub fn parse_all(texts: &[String]) -> Result<Vec<Self>, String> {
        let max = probe_common::ops::MAX_OP_FUNCTIONS as usize;
        if texts.len() > max {
            return Err(format!(
                "--op is given {} times: drainwatch follows at most {max} functions",
                texts.len()
            ));
        }
        let mut out: Vec<Self> = Vec::new();
        for text in texts {
            let spec = Self::parse(text)?;
            if !out.contains(&spec) {
                out.push(spec);
            }
        }
        Ok(out)
    }
}

/// A function symbol of an ELF file.
#[derive(Debug)]
pub(super) struct Symbol {
    pub raw: String,
    /// Demangled, parameters included (C++), without the hash (Rust); `raw` for C.
    pub demangled: String,
    /// `demangled` without its parameter list.
    pub plain: String,
    pub file_offset: u64,
    /// Bytes of code (the symbol's size; 0 when the ELF does not say).
    pub size: u64,
}

/// What the search for each spec looked at, to say so when nothing matched.
#[derive(Default)]
pub(super) struct Search {
    /// In the order searched (the executable first).
    pub files: Vec<String>,
    /// Names seen, by closeness to the spec (edit distance, then name).
    pub nearest: Vec<(usize, String)>,
}

pub(super) const NEAREST: usize = 5;

/// The symbols that `function` names, best tier first: the raw symbol; the demangled name
/// with or without parameters; the demangled name's last path part. The first tier that
/// matches is taken whole (an overloaded C++ name hooks each overload).
pub(super) fn matches<'a>(symbols: &'a [Symbol], function: &str) -> Vec<&'a Symbol> {
    let tiers: [&dyn Fn(&Symbol) -> bool; 3] = [
        &|s| s.raw == function,
        &|s| s.demangled == function || s.plain == function,
        &|s| {
            s.plain
                .strip_suffix(function)
                .is_some_and(|head| head.ends_with("::"))
        },
    ];
    for tier in tiers {
        let mut found: Vec<&Symbol> = symbols.iter().filter(|s| tier(s)).collect();
        if !found.is_empty() {
            // One hook per address: aliases of one function share it.
            found.sort_by_key(|s| s.file_offset);
            found.dedup_by_key(|s| s.file_offset);
            return found;
        }
    }
    Vec::new()
}

/// Keeps the names of `symbols` closest to `function` in `search.nearest`.
pub(super) fn note_nearest(search: &mut Search, symbols: &[Symbol], function: &str) {
    for symbol in symbols {
        let last = symbol.plain.rsplit("::").next().unwrap_or(&symbol.plain);
        let distance =
            strsim::levenshtein(&symbol.plain, function).min(strsim::levenshtein(last, function));
        if search.nearest.len() == NEAREST
            && search.nearest.last().is_some_and(|(d, _)| *d <= distance)
        {
            continue;
        }
        if search.nearest.iter().any(|(_, n)| *n == symbol.plain) {
            continue;
        }
        search.nearest.push((distance, symbol.plain.clone()));
        search.nearest.sort();
        search.nearest.truncate(NEAREST);
    }
}

/// The defined function symbols of an ELF file (symbol table and dynamic symbols), with
/// their file offsets.
pub(super) fn read_symbols(path: &Path) -> std::io::Result<Vec<Symbol>> {
    use object::{Object, ObjectSymbol};
    let data = std::fs::read(path)?;
    let elf = object::File::parse(&*data).map_err(std::io::Error::other)?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for symbol in elf.symbols().chain(elf.dynamic_symbols()) {
        if symbol.is_undefined() || symbol.kind() != object::SymbolKind::Text {
            continue;
        }
        let Ok(raw) = symbol.name() else {
            continue;
        };
        if !is_entry(raw) || !seen.insert((raw.to_string(), symbol.address())) {
            continue;
        }
        let Some(file_offset) = crate::kernel::uprobe::file_offset(&elf, &symbol) else {
            continue;
        };
        let (demangled, plain) = demangle(raw);
        out.push(Symbol {
            raw: raw.to_string(),
            demangled,
            plain,
            file_offset,
            size: symbol.size(),
        });
    }
    Ok(out)
}

/// Whether a symbol is a function's entry. A `.cold` part (GCC's hot/cold splitting) is
/// jumped to, not called: a return probe there would take whatever is on the stack for a
/// return address.
fn is_entry(raw: &str) -> bool {
    !raw.is_empty() && !raw.ends_with(".cold") && !raw.contains(".cold.")
}

/// (demangled, without parameters): Rust (legacy and v0) without the hash, C++ (Itanium)
/// with its parameters; C names as they are.
fn demangle(raw: &str) -> (String, String) {
    if let Ok(rust) = rustc_demangle::try_demangle(raw) {
        let name = format!("{rust:#}");
        return (name.clone(), name);
    }
    if raw.starts_with("_Z") {
        if let Ok(cpp) = cpp_demangle::Symbol::new(raw) {
            if let Ok(name) = cpp.demangle() {
                let plain = without_parameters(&name);
                return (name, plain);
            }
        }
    }
    (raw.to_string(), raw.to_string())
}

/// `Game::purchase(int) const` → `Game::purchase`; the parameter list is the first `(` outside
/// template brackets (`std::function<void (int)>::operator()(int)` keeps its template).
fn without_parameters(name: &str) -> String {
    let mut depth = 0i32;
    for (i, c) in name.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            '(' if depth == 0 && !name[..i].ends_with("operator") => {
                return name[..i].to_string();
            }
            _ => {}
        }
    }
    name.to_string()
}

/// A process's mappings, as every way of hooking `--op` functions reads them (mod.rs, each
/// runtime of runtime.rs: public, so that what only some runtime reads is no dead code
/// where none of those is listed).
pub struct Maps {
    tgid: u32,
    exe: Option<String>,
    /// (start, end, file offset, path) of each executable file mapping.
    regions: Vec<(u64, u64, u64, String)>,
    /// Every mapped file, executable or not (a runtime's tell-tale libraries).
    files: Vec<String>,
    /// Mapped files no longer at their path (a deploy renamed a new binary over it, an
    /// upgrade replaced a library): where the mapped one itself is read, by path.
    replaced: Vec<(String, PathBuf)>,
}

impl Maps {
    pub fn read(tgid: u32) -> Option<Self> {
        let text = std::fs::read_to_string(format!("/proc/{tgid}/maps")).ok()?;
        let exe = mapped::exe_of(tgid);
        let mut regions = Vec::new();
        let mut files = Vec::new();
        let mut replaced = Vec::new();
        for line in text.lines() {
            let Some(mapping) = Mapping::parse(line) else {
                continue;
            };
            let path = mapping.path;
            if !files.iter().any(|f| f == path) {
                files.push(path.to_string());
                if let Some(own) = mapping.replaced(tgid) {
                    replaced.push((path.to_string(), own));
                }
            }
            if let (true, Some((start, end))) = (mapping.executable, mapping.bounds()) {
                regions.push((start, end, mapping.offset, path.to_string()));
            }
        }
        Some(Self {
            tgid,
            exe,
            regions,
            files,
            replaced,
        })
    }

    /// Where to open `path`, a file this process maps, to read and hook the very file it
    /// maps: through the process's own root (a target in another mount namespace, a
    /// container, maps files of its own), or, for a file replaced on disk since it was
    /// mapped, through /proc/PID/map_files. The file now at the path is another inode,
    /// whose uprobes the running process would never hit: operations never seen, a drain
    /// called early.
    pub fn file(&self, path: &str) -> PathBuf {
        self.replaced
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, own)| own.clone())
            .unwrap_or_else(|| mapped::in_process(self.tgid, path))
    }

    /// The executable, as the process maps it.
    pub fn exe(&self) -> Option<&str> {
        self.exe.as_deref()
    }

    /// Every file the process maps.
    pub fn mapped_files(&self) -> impl Iterator<Item = &str> {
        self.files.iter().map(String::as_str)
    }

    /// The files to search for a spec, in order.
    pub fn files_for(&self, spec: &OpSpec) -> Vec<String> {
        let mut mapped: Vec<&str> = Vec::new();
        for (_, _, _, path) in &self.regions {
            if !mapped.contains(&path.as_str()) {
                mapped.push(path);
            }
        }
        match &spec.library {
            Some(lib) => mapped
                .into_iter()
                .filter(|path| library_matches(path, lib))
                .map(str::to_string)
                .collect(),
            None => {
                let exe = self.exe.as_deref();
                let mut out: Vec<String> = exe
                    .filter(|e| mapped.contains(e))
                    .map(|e| vec![e.to_string()])
                    .unwrap_or_default();
                out.extend(
                    mapped
                        .into_iter()
                        .filter(|p| Some(*p) != exe)
                        .map(str::to_string),
                );
                out
            }
        }
    }

    /// Where file offset `offset` of `path` sits in the process's memory.
    pub fn vaddr(&self, path: &str, offset: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|(start, end, off, p)| p == path && *off <= offset && offset - off < end - start)
            .map(|(start, _, off, _)| start + (offset - off))
    }
}

/// `LIB` names a mapped file: its full path, its file name, or the file name's start up to a
/// dot (`libgame.so` for `libgame.so.1`, `libgame` for `libgame.so`).
pub(super) fn library_matches(path: &str, lib: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    path == lib
        || name == lib
        || name
            .strip_prefix(lib)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(raw: &str, offset: u64) -> Symbol {
        let (demangled, plain) = demangle(raw);
        Symbol {
            raw: raw.into(),
            demangled,
            plain,
            file_offset: offset,
            size: 16,
        }
    }

    #[test]
    fn a_spec_splits_its_library_at_a_single_colon_only() {
        let spec = OpSpec::parse("libgame.so:purchase").unwrap();
        assert_eq!(spec.library.as_deref(), Some("libgame.so"));
        assert_eq!(spec.function, "purchase");
        let spec = OpSpec::parse("Game::purchase").unwrap();
        assert_eq!(spec.library, None);
        assert_eq!(spec.function, "Game::purchase");
        let spec = OpSpec::parse("libgame.so:Game::purchase(int)").unwrap();
        assert_eq!(spec.library.as_deref(), Some("libgame.so"));
        assert_eq!(spec.function, "Game::purchase(int)");
        assert!(OpSpec::parse("libgame.so:").is_err());
        assert!(OpSpec::parse(":purchase").is_err());
        assert!(OpSpec::parse("").is_err());
    }

    #[test]
    fn names_match_raw_demangled_and_by_last_part() {
        let symbols = vec![
            sym("purchase", 0x10),
            sym("_ZN4Game8purchaseEi", 0x20),
            sym("_ZN4Game8purchaseEv", 0x30),
            sym("_ZN7dw_game4shop6refund17h0123456789abcdefE", 0x40),
            sym("main", 0x50),
        ];
        let offsets = |name: &str| -> Vec<u64> {
            matches(&symbols, name)
                .iter()
                .map(|s| s.file_offset)
                .collect()
        };
        // C first: the raw symbol wins over a demangled path ending in it.
        assert_eq!(offsets("purchase"), vec![0x10]);
        // C++: with or without parameters; without, every overload.
        assert_eq!(offsets("Game::purchase(int)"), vec![0x20]);
        assert_eq!(offsets("Game::purchase"), vec![0x20, 0x30]);
        assert_eq!(offsets("_ZN4Game8purchaseEv"), vec![0x30]);
        // Rust: the path without its hash, or its last part.
        assert_eq!(offsets("dw_game::shop::refund"), vec![0x40]);
        assert_eq!(offsets("refund"), vec![0x40]);
        assert_eq!(offsets("shop::refund"), vec![0x40]);
        assert!(offsets("hop::refund").is_empty());
        assert!(offsets("purchas").is_empty());
        assert!(!is_entry("_ZN4Game8purchaseEv.cold"));
        assert!(is_entry("_ZN4Game8purchaseEv.constprop.0"));
    }

    #[test]
    fn nearest_names_are_the_closest_few() {
        let symbols = vec![
            sym("purchase", 0x10),
            sym("_ZN4Game6refundEi", 0x20),
            sym("main", 0x50),
        ];
        let mut search = Search::default();
        note_nearest(&mut search, &symbols, "purchse");
        let names: Vec<&str> = search.nearest.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names[0], "purchase");
        assert_eq!(names.len(), 3);
    }

    #[test]
    fn parameters_are_cut_outside_templates() {
        assert_eq!(
            without_parameters("Game::purchase(int) const"),
            "Game::purchase"
        );
        assert_eq!(
            without_parameters("std::function<void (int)>::operator()(int) const"),
            "std::function<void (int)>::operator()"
        );
        assert_eq!(without_parameters("purchase"), "purchase");
    }

    #[test]
    fn a_library_is_named_by_its_file_name_or_its_start() {
        assert!(library_matches("/usr/lib/libgame.so.1", "libgame.so"));
        assert!(library_matches("/usr/lib/libgame.so.1", "libgame"));
        assert!(library_matches(
            "/usr/lib/libgame.so.1",
            "/usr/lib/libgame.so.1"
        ));
        assert!(!library_matches("/usr/lib/libgameplay.so", "libgame"));
    }
}

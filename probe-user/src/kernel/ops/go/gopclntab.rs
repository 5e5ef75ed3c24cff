//! A Go binary's functions, from its `.gopclntab`: the runtime's own table of every function
//! (name, entry, and so its end, the next one's entry), which Go keeps for tracebacks and
//! which stripping (`-ldflags=-s -w`, `strip`) does not remove. Read for `--op` on Go
//! programs (kernel/ops/go.rs), the binary as it is.
//!
//! Covered: the table layout of Go 1.18 and 1.19 (magic 0xfffffff0) and of Go 1.20 and later
//! (0xfffffff1, the same layout), little-endian, 8-byte pointers (layout: Go's
//! src/runtime/symtab.go, `pcHeader`, `functab`, `_func`). Go 1.16 and 1.17 (0xfffffffa) and
//! older use other layouts and are refused by name.

use object::{Object, ObjectSection, ObjectSegment};

/// One Go function: its name as the runtime writes it (`main.(*Game).purchase`) and where its
/// code sits, as virtual addresses of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct GoFunc {
    pub name: String,
    pub entry: u64,
    /// The next function's entry (its code, padding included, ends before).
    pub end: u64,
}

/// Why a Go binary's table cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum PclntabError {
    #[error("no .gopclntab in the file (not a Go program, or a layout drainwatch does not know)")]
    Missing,
    #[error(
        "its Go is older than 1.18 (function table magic {0:#x}): drainwatch reads Go 1.18 and \
         later"
    )]
    TooOld(u32),
    #[error("its function table is not one drainwatch reads ({0})")]
    Unknown(String),
}

const MAGIC_118: u32 = 0xffff_fff0;
const MAGIC_120: u32 = 0xffff_fff1;
/// Go 1.16 and 1.17; 1.2 to 1.15 were 0xfffffffb.
const OLD_MAGICS: [u32; 2] = [0xffff_fffa, 0xffff_fffb];

/// The functions of the Go ELF file `data`, in address order.
pub(super) fn go_functions(data: &[u8]) -> Result<Vec<GoFunc>, PclntabError> {
    let elf = object::File::parse(data).map_err(|e| PclntabError::Unknown(e.to_string()))?;
    let text = elf.section_by_name(".text").map(|s| s.address());
    let table = match elf.section_by_name(".gopclntab") {
        Some(section) => section
            .data()
            .map_err(|e| PclntabError::Unknown(e.to_string()))?,
        // A position-independent Go program keeps the table inside .data.rel.ro (Go's
        // cmd/link puts it there when it has relocations): found by its header.
        None => find_in(&elf).ok_or(PclntabError::Missing)?,
    };
    parse(table, text)
}

/// The table inside a read-only data section, found by its magic and a header that holds.
fn find_in<'a>(elf: &object::File<'a>) -> Option<&'a [u8]> {
    for name in [".data.rel.ro", ".rodata"] {
        let Some(data) = elf.section_by_name(name).and_then(|s| s.data().ok()) else {
            continue;
        };
        let mut at = 0;
        while at + 8 <= data.len() {
            let magic = u32::from_le_bytes(data[at..at + 4].try_into().ok()?);
            if (magic == MAGIC_118 || magic == MAGIC_120)
                && data[at + 4] == 0
                && data[at + 5] == 0
                && matches!(data[at + 6], 1 | 2 | 4)
                && data[at + 7] == 8
                && parse(&data[at..], None).is_ok()
            {
                return Some(&data[at..]);
            }
            at += 8; // the header is pointer-aligned
        }
    }
    // The segments, for a file whose section headers are gone.
    for segment in elf.segments() {
        let data = segment.data().ok()?;
        let mut at = 0;
        while at + 8 <= data.len() {
            let magic = u32::from_le_bytes(data[at..at + 4].try_into().ok()?);
            if (magic == MAGIC_118 || magic == MAGIC_120) && parse(&data[at..], None).is_ok() {
                return Some(&data[at..]);
            }
            at += 8;
        }
    }
    None
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

/// Reads a table (`pcHeader` at its start). `text`: the .text section's address, used when
/// the header's own `textStart` is 0 (a position-independent file: the linker leaves it to a
/// relocation).
pub(super) fn parse(table: &[u8], text: Option<u64>) -> Result<Vec<GoFunc>, PclntabError> {
    let bad = |what: &str| PclntabError::Unknown(what.to_string());
    let magic = u32_at(table, 0).ok_or_else(|| bad("shorter than its header"))?;
    if OLD_MAGICS.contains(&magic) {
        return Err(PclntabError::TooOld(magic));
    }
    if magic != MAGIC_118 && magic != MAGIC_120 {
        return Err(PclntabError::Unknown(format!("magic {magic:#x}")));
    }
    if table.get(7) != Some(&8) {
        return Err(bad("pointers are not 8 bytes"));
    }
    // pcHeader: magic, pad1, pad2, minLC, ptrSize, then pointer-sized nfunc, nfiles,
    // textStart, funcnameOffset, cuOffset, filetabOffset, pctabOffset, pclnOffset.
    let word = |i: usize| u64_at(table, 8 + 8 * i).ok_or_else(|| bad("shorter than its header"));
    let nfunc = word(0)? as usize;
    let text_start = match word(2)? {
        0 => text.ok_or_else(|| bad("no text start"))?,
        start => start,
    };
    let funcnames = word(3)? as usize;
    let pcln = word(7)? as usize;
    if nfunc == 0 || nfunc > table.len() / 8 {
        return Err(bad("function count out of range"));
    }
    // functab: nfunc + 1 pairs (entryoff, funcoff) of u32, entry offsets from textStart,
    // func offsets from the functab's start; the last entry is the end of the last function.
    let pair = |i: usize| -> Result<(u32, u32), PclntabError> {
        let at = pcln + 8 * i;
        Ok((
            u32_at(table, at).ok_or_else(|| bad("functab beyond the table"))?,
            u32_at(table, at + 4).ok_or_else(|| bad("functab beyond the table"))?,
        ))
    };
    let mut out = Vec::with_capacity(nfunc);
    for i in 0..nfunc {
        let (entry, funcoff) = pair(i)?;
        let (next, _) = pair(i + 1)?;
        if next < entry {
            return Err(bad("functab out of order"));
        }
        // _func: entryOff u32, nameOff i32, ...
        let func = pcln + funcoff as usize;
        if u32_at(table, func) != Some(entry) {
            return Err(bad("a _func does not match its functab entry"));
        }
        let name_off = u32_at(table, func + 4).ok_or_else(|| bad("_func beyond the table"))?;
        let name_at = funcnames + name_off as usize;
        let name = table
            .get(name_at..)
            .and_then(|rest| rest.split(|b| *b == 0).next())
            .ok_or_else(|| bad("a name beyond the table"))?;
        out.push(GoFunc {
            name: String::from_utf8_lossy(name).into_owned(),
            entry: text_start + entry as u64,
            end: text_start + next as u64,
        });
    }
    Ok(out)
}

/// The bytes of `[start, end)` (virtual addresses) and the file offset of `start`, from the
/// section that holds them.
pub(super) fn code_at(data: &[u8], start: u64, end: u64) -> Option<(&[u8], u64)> {
    let elf = object::File::parse(data).ok()?;
    let section = elf
        .sections()
        .find(|s| s.address() <= start && end <= s.address() + s.size())?;
    let (offset, _) = section.file_range()?;
    let from = (offset + (start - section.address())) as usize;
    Some((data.get(from..from + (end - start) as usize)?, from as u64))
}

/// The Go version a binary was built with (`go1.19.8`), from its `.go.buildinfo` (Go 1.18
/// and later write it inline: src/debug/buildinfo/buildinfo.go), if it says.
pub(super) fn go_version(data: &[u8]) -> Option<String> {
    let elf = object::File::parse(data).ok()?;
    let info = elf.section_by_name(".go.buildinfo")?.data().ok()?;
    // "\xff Go buildinf:", pointer size, flags (bit 1: inline strings), padding to 32.
    if !info.starts_with(b"\xff Go buildinf:") || info.get(15)? & 2 == 0 {
        return None;
    }
    let (len, used) = uvarint(info.get(32..)?)?;
    let start = 32 + used;
    let bytes = info.get(start..start + len as usize)?;
    String::from_utf8(bytes.to_vec()).ok()
}

fn uvarint(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in data.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::{path::PathBuf, process::Command, sync::OnceLock};

    /// A small Go program with a method, a closure and a defer, built with the machine's Go
    /// (Debian golang-go, `cargo xtask setup`) once per test process: (plain, stripped).
    pub fn go_binaries() -> &'static (PathBuf, PathBuf) {
        static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
        BUILT.get_or_init(|| {
            // Under target/, named once: runs do not pile up directories; written under this
            // process's own names and renamed, so test processes side by side never read a
            // half-written file.
            let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/go-unit"));
            std::fs::create_dir_all(&dir).expect("target/go-unit");
            let source = dir.join(format!("main.{}.go", std::process::id()));
            std::fs::write(
                &source,
                "package main\n\nimport (\n\t\"fmt\"\n\t\"os\"\n\t\"time\"\n)\n\n\
                 type Game struct{ n int }\n\n\
                 func (g *Game) Purchase(op int) int {\n\tdefer func() { g.n++ }()\n\
                 \tif op > 100 {\n\t\treturn 0\n\t}\n\ttime.Sleep(time.Millisecond)\n\
                 \tvar big [4096]byte\n\tbig[op] = 1\n\treturn op*2 + int(big[3])\n}\n\n\
                 func main() {\n\tg := &Game{}\n\tfmt.Println(g.Purchase(len(os.Args)))\n}\n",
            )
            .expect("write main.go");
            let build = |out: &str, flags: &[&str]| {
                let path = dir.join(out);
                let tmp = dir.join(format!("{out}.{}", std::process::id()));
                let status = Command::new("go")
                    .arg("build")
                    .args(flags)
                    .arg("-o")
                    .arg(&tmp)
                    .arg(&source)
                    .env("GO111MODULE", "off")
                    .env("GOCACHE", dir.join("gocache"))
                    .env("GOFLAGS", "")
                    .status()
                    .expect("`go` not found: `cargo xtask setup` installs Debian's golang-go");
                assert!(status.success(), "go build {flags:?}: {status}");
                std::fs::rename(&tmp, &path).expect("move the Go test binary into place");
                path
            };
            let built = (build("plain", &[]), build("stripped", &["-ldflags=-s -w"]));
            let _ = std::fs::remove_file(&source);
            built
        })
    }

    #[test]
    fn the_table_of_a_real_go_binary_agrees_with_its_symbol_table() {
        use object::ObjectSymbol;
        let (plain, stripped) = go_binaries();
        let data = std::fs::read(plain).expect("read plain");
        let funcs = go_functions(&data).expect("a Go 1.18+ table");
        assert!(
            funcs.len() > 500,
            "a Go program has the runtime's functions"
        );
        assert!(funcs.windows(2).all(|w| w[0].end <= w[1].entry));
        // Every function the table names is a symbol at the same address, and its size fits.
        let elf = object::File::parse(&*data).expect("ELF");
        let symbols: std::collections::HashMap<String, (u64, u64)> = elf
            .symbols()
            .filter_map(|s| Some((s.name().ok()?.to_string(), (s.address(), s.size()))))
            .collect();
        let purchase = funcs
            .iter()
            .find(|f| f.name == "main.(*Game).Purchase")
            .expect("the method is in the table");
        let (address, size) = symbols["main.(*Game).Purchase"];
        assert_eq!(purchase.entry, address);
        assert!(purchase.end >= address + size && purchase.end - address - size < 64);
        let checked = funcs
            .iter()
            .filter(|f| symbols.get(&f.name).is_some_and(|(a, _)| *a == f.entry))
            .count();
        assert!(
            checked * 10 >= funcs.len() * 9,
            "{checked} of {}",
            funcs.len()
        );
        // Stripped: no symbol table, the same functions.
        let data = std::fs::read(stripped).expect("read stripped");
        let elf = object::File::parse(&*data).expect("ELF");
        assert_eq!(elf.symbols().count(), 0, "-s -w strips the symbol table");
        let stripped_funcs = go_functions(&data).expect("the table survives stripping");
        let names = |f: &[GoFunc]| f.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&stripped_funcs), names(&funcs));
        let version = go_version(&data).expect("a version in .go.buildinfo");
        assert!(version.starts_with("go1."), "{version}");
    }

    #[test]
    fn other_layouts_are_refused_by_name() {
        let mut header = vec![0u8; 80];
        header[..4].copy_from_slice(&0xffff_fffau32.to_le_bytes());
        header[7] = 8;
        assert_eq!(parse(&header, None), Err(PclntabError::TooOld(0xffff_fffa)));
        header[..4].copy_from_slice(&0x1234u32.to_le_bytes());
        assert!(matches!(
            parse(&header, None),
            Err(PclntabError::Unknown(_))
        ));
        assert!(matches!(
            parse(&[0xf0], None),
            Err(PclntabError::Unknown(_))
        ));
        // The right magic, a function count past the table: refused, never read out of range.
        header[..4].copy_from_slice(&MAGIC_120.to_le_bytes());
        header[8..16].copy_from_slice(&1_000_000u64.to_le_bytes());
        assert!(matches!(
            parse(&header, None),
            Err(PclntabError::Unknown(_))
        ));
        assert_eq!(uvarint(&[0x96, 0x01]), Some((150, 2)));
    }
}

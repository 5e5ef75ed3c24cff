//! CPython's USDT markers, read from the interpreter's ELF file: the `.note.stapsdt` notes
//! (SystemTap's "SDT" note format: per marker its address, the `.stapsdt.base` address it
//! was linked against, its semaphore's address, provider, name and argument list), turned
//! into file offsets a uprobe is attached at and a semaphore's `ref_ctr_offset` is given as.
//! What the kernel side reads at the markers (probe-ebpf/src/ops/py.rs) is checked here
//! before anything is attached: the interpreter is 3.11 (`Py_Version`), the markers pass
//! their arguments where it reads them, and the marker functions keep the frame in RBX.

use iced_x86::{Decoder, DecoderOptions, InstructionInfoFactory, Mnemonic, OpAccess, Register};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

/// The argument list of `function__entry`/`function__return` the kernel side reads:
/// file name in RBP, function name in R12, line number in EAX.
const ARGS: &str = "8@%rbp 8@%r12 -4@%eax";

/// One marker: where it is in the file, and its semaphore's file offset (0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Marker {
    pub offset: u64,
    pub semaphore: u64,
}

/// The markers `--op` uses in one CPython file.
#[derive(Clone, Debug)]
pub(super) struct PyMarkers {
    pub entry: Marker,
    pub ret: Marker,
    /// A marker whose code runs only while its own semaphore is raised, and the `line`
    /// marker's semaphore: a uprobe planted at the first with the second as its reference
    /// counter turns CPython 3.11's tracing path on (python.rs says why), without a trap.
    pub switch: Marker,
    /// `3.11.2`.
    pub version: String,
}

/// One SDT note.
#[derive(Debug)]
struct Note {
    pc: u64,
    semaphore: u64,
    provider: String,
    name: String,
    args: String,
}

impl PyMarkers {
    /// Reads and checks the markers of the CPython file `data`; `Err` says why `--op` cannot
    /// use them, in words for the user.
    pub fn read(data: &[u8]) -> Result<Self, String> {
        let elf = object::File::parse(data).map_err(|e| e.to_string())?;
        if elf.architecture() != object::Architecture::X86_64 {
            return Err(format!(
                "a CPython for {:?}: drainwatch reads CPython's markers on x86-64 only",
                elf.architecture()
            ));
        }
        let version = py_version(&elf, data)
            .ok_or("it does not say its version (no Py_Version): not CPython 3.11 or later")?;
        if version >> 16 != 0x030b {
            return Err(format!(
                "CPython {}.{}: drainwatch follows Python functions in CPython 3.11 only \
                 (its frame layout)",
                version >> 24,
                (version >> 16) & 0xff
            ));
        }
        let version = format!(
            "{}.{}.{}",
            version >> 24,
            (version >> 16) & 0xff,
            (version >> 8) & 0xff
        );
        let notes = notes(&elf).ok_or(
            "it has no USDT markers (a CPython built without --with-dtrace; Debian's and \
             Ubuntu's python3.11 have them)",
        )?;
        let find = |name: &str| {
            notes
                .iter()
                .find(|n| n.provider == "python" && n.name == name)
                .ok_or_else(|| format!("it has no python:{name} marker"))
        };
        let (entry, ret, line) = (
            find("function__entry")?,
            find("function__return")?,
            find("line")?,
        );
        for note in [entry, ret] {
            if note.args != ARGS {
                return Err(format!(
                    "its python:{} marker passes `{}`, drainwatch reads `{ARGS}`",
                    note.name, note.args
                ));
            }
        }
        let switch = notes
            .iter()
            .find(|n| {
                n.provider == "python"
                    && n.semaphore != 0
                    && ![entry, ret, line].iter().any(|m| m.name == n.name)
                    && n.semaphore != line.semaphore
            })
            .ok_or("it has no other marker behind a semaphore to raise `line`'s by")?;
        let marker = |note: &Note, semaphore: u64| -> Result<Marker, String> {
            let offset = file_offset(&elf, note.pc)
                .ok_or_else(|| format!("its python:{} marker is not in the file", note.name))?;
            let semaphore = file_offset(&elf, semaphore).ok_or_else(|| {
                format!("the semaphore of python:{} is not in the file", note.name)
            })?;
            Ok(Marker { offset, semaphore })
        };
        let markers = Self {
            entry: marker(entry, entry.semaphore)?,
            ret: marker(ret, ret.semaphore)?,
            switch: marker(switch, line.semaphore)?,
            version,
        };
        for (note, at) in [(entry, markers.entry), (ret, markers.ret)] {
            frame_in_rbx(data, at.offset, note.pc)
                .map_err(|why| format!("its python:{} marker function {why}", note.name))?;
        }
        Ok(markers)
    }
}

/// `Py_Version` (PY_VERSION_HEX, exported since 3.11).
fn py_version(elf: &object::File, data: &[u8]) -> Option<u32> {
    let symbol = elf
        .dynamic_symbols()
        .chain(elf.symbols())
        .find(|s| s.name() == Ok("Py_Version") && !s.is_undefined())?;
    let at = file_offset(elf, symbol.address())? as usize;
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// The SDT notes, their addresses corrected for a file moved after linking (prelink): the
/// difference between `.stapsdt.base`'s address and the base each note was written with.
fn notes(elf: &object::File) -> Option<Vec<Note>> {
    let section = elf.section_by_name(".note.stapsdt")?;
    let data = section.data().ok()?;
    let base = elf.section_by_name(".stapsdt.base").map(|s| s.address());
    let mut out = Vec::new();
    let mut at = 0usize;
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
    };
    let align = |n: usize| (n + 3) & !3;
    while at + 12 <= data.len() {
        let (namesz, descsz, kind) = (word(at)? as usize, word(at + 4)? as usize, word(at + 8)?);
        let name = data.get(at + 12..at + 12 + namesz)?;
        let desc_at = at + 12 + align(namesz);
        let desc = data.get(desc_at..desc_at + descsz)?;
        at = desc_at + align(descsz);
        // NT_STAPSDT (3), owner "stapsdt".
        if kind != 3 || name.strip_suffix(b"\0") != Some(b"stapsdt") || desc.len() < 24 {
            continue;
        }
        let u64_at = |i: usize| u64::from_le_bytes(desc[i..i + 8].try_into().unwrap_or([0; 8]));
        let (mut pc, linked_base, mut semaphore) = (u64_at(0), u64_at(8), u64_at(16));
        if let Some(base) = base {
            pc = pc.wrapping_add(base).wrapping_sub(linked_base);
            if semaphore != 0 {
                semaphore = semaphore.wrapping_add(base).wrapping_sub(linked_base);
            }
        }
        let mut strings = desc[24..]
            .split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned());
        out.push(Note {
            pc,
            semaphore,
            provider: strings.next().unwrap_or_default(),
            name: strings.next().unwrap_or_default(),
            args: strings.next().unwrap_or_default(),
        });
    }
    Some(out)
}

/// The file offset of virtual address `addr`, through the loadable segment holding it.
fn file_offset(elf: &object::File, addr: u64) -> Option<u64> {
    elf.segments().find_map(|segment| {
        let (offset, size) = segment.file_range();
        let start = segment.address();
        (addr >= start && addr - start < size).then(|| offset + (addr - start))
    })
}

/// Checks that at the marker at file offset `offset` (address `pc`), RBX holds the frame
/// the marker function was called with: the instructions before it copy RDI (its first
/// argument, `_PyInterpreterFrame *frame`) into RBX, read `frame->f_code` at 0x20, and
/// write RBX no more. RBX is callee-saved, so the calls in between keep it.
fn frame_in_rbx(data: &[u8], offset: u64, pc: u64) -> Result<(), String> {
    const WINDOW: usize = 64;
    let end = offset as usize;
    let begin = end.saturating_sub(WINDOW);
    let code = data.get(begin..end).ok_or("is not in the file")?;
    let mut info = InstructionInfoFactory::new();
    // Decoding from each possible start, keep a decoding that ends exactly at the marker.
    'start: for skip in 0..code.len() {
        let ip = pc - (code.len() - skip) as u64;
        let mut decoder = Decoder::with_ip(64, &code[skip..], ip, DecoderOptions::NONE);
        let mut saved = false;
        let mut f_code = false;
        let mut passed = false;
        while decoder.can_decode() {
            let ins = decoder.decode();
            if ins.is_invalid() {
                continue 'start;
            }
            let is_mov = ins.mnemonic() == Mnemonic::Mov && ins.op_count() == 2;
            if is_mov && ins.op0_register() == Register::RBX && ins.op1_register() == Register::RDI
            {
                saved = true;
                continue;
            }
            if is_mov
                && ins.op1_kind() == iced_x86::OpKind::Memory
                && ins.memory_displacement64() == 0x20
                && matches!(ins.memory_base(), Register::RDI | Register::RBX)
            {
                f_code = true;
            }
            if is_mov && ins.op0_register() == Register::RDI && ins.op1_register() == Register::RBX
            {
                passed = true;
            }
            let writes_rbx = info.info(&ins).used_registers().iter().any(|r| {
                r.register().full_register() == Register::RBX
                    && matches!(
                        r.access(),
                        OpAccess::Write | OpAccess::ReadWrite | OpAccess::CondWrite
                    )
            });
            if saved && writes_rbx {
                continue 'start;
            }
        }
        if decoder.ip() == pc && saved && f_code && passed {
            return Ok(());
        }
    }
    Err("does not keep the frame in RBX as drainwatch reads it".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 12's python3.11 (3.11.2), the interpreter the integration tests run: its
    /// markers are read and checked as the kernel side needs them.
    #[test]
    fn debians_python311_markers_are_read_and_checked() {
        let path = "/usr/bin/python3.11";
        let data = std::fs::read(path).expect("Debian's python3.11 (cargo xtask setup)");
        let markers = PyMarkers::read(&data).expect("its markers");
        assert!(markers.version.starts_with("3.11."), "{}", markers.version);
        assert_ne!(markers.entry.offset, markers.ret.offset);
        assert_ne!(markers.entry.semaphore, 0);
        assert_eq!(markers.ret.semaphore, markers.entry.semaphore + 2);
        assert_ne!(markers.switch.semaphore, markers.entry.semaphore);
        // The semaphores are 16-bit counters in `.probes`, inside the file.
        assert!(markers.switch.semaphore < data.len() as u64);
    }

    #[test]
    fn a_file_without_markers_is_refused_in_words() {
        let exe = std::fs::read("/proc/self/exe").expect("own executable");
        let why = PyMarkers::read(&exe).expect_err("not CPython");
        assert!(why.contains("Py_Version"), "{why}");
    }
}

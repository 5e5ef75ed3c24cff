//! Just enough of a BTF reader to find a struct member's byte offset in the running kernel
//! (`task_struct.exit_code` and `signal_struct.live`, which no tracepoint carries on every
//! kernel) and a kernel function's type id (what `doctor`'s fentry check attaches to). aya
//! keeps its own BTF type accessors crate-private, and this is a few dozen lines.
//! Format: Documentation/bpf/btf.rst in the kernel source.

use std::{
    fs,
    ops::Range,
    path::Path,
    sync::{Arc, Mutex},
};

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
pub const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
pub const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_TYPE_TAG: u32 = 18;

/// One type, as an index into the raw data: the kernel's BTF has ~100k types, and keeping
/// them compact (no per-type allocation) matters for drainwatch's peak memory.
#[derive(Clone, Copy, Debug)]
struct Type {
    kind: u8,
    /// Member offsets are bitfield-encoded (kind_flag).
    kind_flag: bool,
    /// For structs/unions: how many members.
    vlen: u16,
    name_off: u32,
    /// For modifiers and typedefs: the referenced type id.
    referenced: u32,
    /// Where the member records start in the type section.
    at: u32,
}

/// Parsed BTF, owning the bytes it was parsed from.
pub struct Btf {
    /// Index = type id; id 0 is `void`.
    types: Vec<Type>,
    data: Vec<u8>,
    /// The type and string sections, as ranges of `data`.
    type_section: Range<usize>,
    string_section: Range<usize>,
}

/// The running kernel's BTF.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The running kernel's BTF, read and parsed once while drainwatch attaches, then
/// [`release_kernel`]d. Attaching asks it half a dozen questions (the features, each
/// backend's checks, the probe's offsets, the attach stub); reading and parsing the ~5 MB
/// file for each was most of attach's CPU time, many seconds under a slow (emulated) CPU.
static KERNEL: Mutex<Option<Arc<Btf>>> = Mutex::new(None);

fn kernel() -> Option<Arc<Btf>> {
    let mut cached = KERNEL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if cached.is_none() {
        *cached = Btf::parse(fs::read(Path::new(KERNEL_BTF)).ok()?).map(Arc::new);
    }
    cached.clone()
}

/// Frees the cached kernel BTF (~8 MB with its index) once attaching is done; a later
/// question reads it again.
pub fn release_kernel() {
    let mut cached = KERNEL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *cached = None;
}

/// The BTF type id of kernel function `name`, if the kernel has BTF and that function.
pub fn kernel_func_id(name: &str) -> Option<u32> {
    kernel()?.func_id(name)
}

/// Whether the running kernel's BTF has `struct name` (a kernel built with the code that
/// defines it).
pub fn kernel_has_struct(name: &str) -> bool {
    kernel().is_some_and(|btf| btf.type_id(KIND_STRUCT, name).is_some())
}

/// How many parameters the kernel function `name` takes, from its BTF prototype.
pub fn kernel_func_params(name: &str) -> Option<usize> {
    kernel()?.func_params(name)
}

/// Byte offsets of `(struct, member)` pairs in the running kernel's BTF; `None` for each
/// one that is not there (or when the kernel has no BTF).
pub fn kernel_member_offsets<const N: usize>(wanted: [(&str, &str); N]) -> [Option<u32>; N] {
    let btf = kernel();
    wanted.map(|(name, member)| btf.as_ref()?.member_offset(name, member))
}

/// The named members of `struct name` in the running kernel's BTF, in order: (member, byte
/// offset, byte size). `None` without kernel BTF or without that struct; a member whose
/// size this reader cannot tell (a bitfield, a function pointer's target) is left out.
pub fn kernel_struct_fields(name: &str) -> Option<Vec<(String, u32, u32)>> {
    kernel()?.struct_fields(name)
}

/// A BTF blob in which each of `wanted` (kind, name) found in the running kernel's BTF has
/// its kernel type id, and every other id below the largest is a placeholder (a pointer to
/// void). aya's program loaders take a whole parsed BTF only to look an attach target up by
/// name and kind (`BtfTracePoint::load`: typedef `btf_trace_NAME`; `FExit::load`: the
/// function); parsing the kernel's ~126k types for that cost ~17 MB at the peak of the load.
/// The placeholders cost aya one small record each, up to the largest id wanted. `None`
/// without kernel BTF; a name it lacks is left out, and aya's lookup fails on it as before.
pub fn kernel_id_stub(wanted: &[(u32, &str)]) -> Option<Vec<u8>> {
    let btf = kernel()?;
    let found: Vec<(u32, u32, &str)> = wanted
        .iter()
        .filter_map(|&(kind, name)| Some((btf.type_id(kind, name)?, kind, name)))
        .collect();
    Some(id_stub(&found))
}

/// The blob of [`kernel_id_stub`] for (id, kind, name) triples.
fn id_stub(named: &[(u32, u32, &str)]) -> Vec<u8> {
    let mut strings = vec![0u8];
    let mut name_offs = Vec::new();
    for &(id, kind, name) in named {
        name_offs.push((id, kind, strings.len() as u32));
        strings.extend(name.as_bytes());
        strings.push(0);
    }
    let last = named.iter().map(|&(id, _, _)| id).max().unwrap_or(0);
    let mut types = Vec::with_capacity(last as usize * 12);
    for id in 1..=last {
        let (name_off, kind) = name_offs
            .iter()
            .find(|&&(at, _, _)| at == id)
            .map_or((0, KIND_PTR), |&(_, kind, off)| (off, kind));
        // name_off, info (kind, no members), referenced type: void.
        for word in [name_off, kind << 24, 0] {
            types.extend(word.to_le_bytes());
        }
    }
    blob(&types, &strings)
}

/// A BTF blob (include/uapi/linux/btf.h `struct btf_header`, version 1): the header, then
/// the type section, then the string section.
fn blob(types: &[u8], strings: &[u8]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(24 + types.len() + strings.len());
    blob.extend(BTF_MAGIC.to_le_bytes());
    blob.extend([1u8, 0]); // version, flags
    blob.extend(24u32.to_le_bytes()); // hdr_len
    blob.extend(0u32.to_le_bytes()); // type_off
    blob.extend((types.len() as u32).to_le_bytes());
    blob.extend((types.len() as u32).to_le_bytes()); // str_off
    blob.extend((strings.len() as u32).to_le_bytes());
    blob.extend_from_slice(types);
    blob.extend_from_slice(strings);
    blob
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

impl Btf {
    /// Parses little-endian BTF (the only kind a little-endian kernel exposes).
    pub fn parse(data: Vec<u8>) -> Option<Self> {
        if u16::from_le_bytes(data.get(0..2)?.try_into().ok()?) != BTF_MAGIC {
            return None;
        }
        let hdr_len = u32_at(&data, 4)? as usize;
        let type_off = u32_at(&data, 8)? as usize;
        let type_len = u32_at(&data, 12)? as usize;
        let str_off = u32_at(&data, 16)? as usize;
        let str_len = u32_at(&data, 20)? as usize;
        let type_section = hdr_len + type_off..hdr_len + type_off + type_len;
        let string_section = hdr_len + str_off..hdr_len + str_off + str_len;
        data.get(string_section.clone())?;
        let type_data = data.get(type_section.clone())?;
        let void = Type {
            kind: 0,
            kind_flag: false,
            vlen: 0,
            name_off: 0,
            referenced: 0,
            at: 0,
        };
        let mut types = vec![void];
        let mut at = 0;
        while at < type_data.len() {
            let name_off = u32_at(type_data, at)?;
            let info = u32_at(type_data, at + 4)?;
            let size_or_type = u32_at(type_data, at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let extra = match kind {
                1 | 14 | 17 => 4,                      // INT, VAR, DECL_TAG
                3 => 12,                               // ARRAY
                KIND_STRUCT | KIND_UNION => vlen * 12, // members
                6 | 13 => vlen * 8,                    // ENUM, FUNC_PROTO
                15 | 19 => vlen * 12,                  // DATASEC, ENUM64
                _ => 0,
            };
            if at + extra > type_data.len() {
                return None;
            }
            types.push(Type {
                kind: kind as u8,
                kind_flag,
                vlen: vlen as u16,
                name_off,
                referenced: size_or_type,
                at: at as u32,
            });
            at += extra;
        }
        Some(Self {
            types,
            data,
            type_section,
            string_section,
        })
    }

    fn type_data(&self) -> &[u8] {
        &self.data[self.type_section.clone()]
    }

    fn strings(&self) -> &[u8] {
        &self.data[self.string_section.clone()]
    }

    /// (name_off, type id, bit offset) of each member of a struct/union.
    fn members(&self, ty: Type) -> impl Iterator<Item = (u32, u32, u32)> + '_ {
        let is_aggregate = matches!(ty.kind as u32, KIND_STRUCT | KIND_UNION);
        let count = if is_aggregate { ty.vlen as usize } else { 0 };
        (0..count).filter_map(move |i| {
            let m = ty.at as usize + i * 12;
            let raw_offset = u32_at(self.type_data(), m + 8)?;
            // With kind_flag, the low 24 bits are the bit offset.
            let bits = if ty.kind_flag {
                raw_offset & 0xff_ffff
            } else {
                raw_offset
            };
            Some((
                u32_at(self.type_data(), m)?,
                u32_at(self.type_data(), m + 4)?,
                bits,
            ))
        })
    }

    fn name(&self, offset: u32) -> &[u8] {
        let rest = self.strings().get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// Whether the string at `offset` is `name`: compared in place, without first
    /// measuring the string (a lookup runs this over every one of ~100k types).
    fn name_is(&self, offset: u32, name: &[u8]) -> bool {
        let start = offset as usize;
        let strings = self.strings();
        strings.get(start..start + name.len()) == Some(name)
            && strings.get(start + name.len()) == Some(&0)
    }

    /// Skips typedefs and qualifiers to the underlying type id.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(
                        t.kind as u32,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.referenced
                }
                _ => break,
            }
        }
        id
    }

    /// The type id of the kernel function `name` (a BTF FUNC), which fentry programs name
    /// as their attach point.
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.type_id(KIND_FUNC, name)
    }

    /// The parameter count of function `name` (the `vlen` of the FUNC_PROTO its FUNC
    /// refers to).
    pub fn func_params(&self, name: &str) -> Option<usize> {
        let func = self.types.get(self.func_id(name)? as usize)?;
        let proto = self.types.get(func.referenced as usize)?;
        (proto.kind as u32 == KIND_FUNC_PROTO).then_some(proto.vlen as usize)
    }

    /// The id of the first type of `kind` named `name`.
    pub fn type_id(&self, kind: u32, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| t.kind as u32 == kind && self.name_is(t.name_off, name.as_bytes()))
            .map(|id| id as u32)
    }

    /// Byte offset of `member` in `struct name`, looking inside anonymous struct/union
    /// members (task_struct groups fields that way under layout randomisation).
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        let id = self.types.iter().position(|t| {
            t.kind as u32 == KIND_STRUCT && self.name_is(t.name_off, name.as_bytes())
        })?;
        self.find_member(id as u32, member.as_bytes(), 0)
            .filter(|bits| bits % 8 == 0)
            .map(|bits| bits / 8)
    }

    /// See [`kernel_struct_fields`].
    pub fn struct_fields(&self, name: &str) -> Option<Vec<(String, u32, u32)>> {
        let ty = *self
            .types
            .iter()
            .find(|t| t.kind as u32 == KIND_STRUCT && self.name_is(t.name_off, name.as_bytes()))?;
        // With kind_flag, a member's bitfield size is in the top 8 bits of its offset.
        let bitfield = |i: usize| {
            ty.kind_flag
                && u32_at(self.type_data(), ty.at as usize + i * 12 + 8).unwrap_or(0) >> 24 != 0
        };
        let fields = self
            .members(ty)
            .enumerate()
            .filter(|&(i, (name_off, _, bits))| name_off != 0 && bits % 8 == 0 && !bitfield(i))
            .filter_map(|(_, (name_off, type_id, bits))| {
                let name = String::from_utf8_lossy(self.name(name_off)).into_owned();
                Some((name, bits / 8, self.size_of(type_id, 0)?))
            })
            .collect();
        Some(fields)
    }

    /// The byte size of type `id`, through typedefs, qualifiers and (nested) arrays.
    fn size_of(&self, id: u32, depth: u32) -> Option<u32> {
        let ty = *self.types.get(self.resolve(id) as usize)?;
        match ty.kind as u32 {
            // INT, STRUCT, UNION, ENUM, ENUM64: the size is in the type itself.
            1 | KIND_STRUCT | KIND_UNION | 6 | 19 => Some(ty.referenced),
            KIND_PTR => Some(8),
            // ARRAY: struct btf_array { type, index_type, nelems } after the type.
            3 if depth < 8 => {
                let elem = u32_at(self.type_data(), ty.at as usize)?;
                let count = u32_at(self.type_data(), ty.at as usize + 8)?;
                self.size_of(elem, depth + 1)?.checked_mul(count)
            }
            _ => None,
        }
    }

    fn find_member(&self, id: u32, member: &[u8], base_bits: u32) -> Option<u32> {
        let ty = *self.types.get(id as usize)?;
        for (name_off, type_id, bits) in self.members(ty) {
            let name = self.name(name_off);
            if name == member {
                return Some(base_bits + bits);
            }
            if name.is_empty() {
                let inner = self.resolve(type_id);
                let is_aggregate = self
                    .types
                    .get(inner as usize)
                    .is_some_and(|t| matches!(t.kind as u32, KIND_STRUCT | KIND_UNION));
                if is_aggregate {
                    if let Some(found) = self.find_member(inner, member, base_bits + bits) {
                        return Some(found);
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use aya_obj::btf::BtfKind;

    use super::*;

    /// Builds a tiny BTF blob: `struct outer { int a; union { int b; }; int c; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0".to_vec();
        let s = |name: &str| {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend(w.to_le_bytes()));
        push(&[s("int"), 1 << 24, 4, 32]); // 1: int
        push(&[0, (KIND_UNION << 24) | 1, 4, s("b"), 1, 0]); // 2: union { int b }
        push(&[
            s("outer"),
            (KIND_STRUCT << 24) | 3,
            12,
            s("a"),
            1,
            0,
            0,
            2,
            32,
            s("c"),
            1,
            64,
        ]); // 3: struct outer
        blob(&types, &strings)
    }

    #[test]
    fn a_functions_parameters_are_counted_from_its_prototype() {
        let strings = b"\0int\0f\0x\0y\0".to_vec();
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend(w.to_le_bytes()));
        push(&[1, 1 << 24, 4, 32]); // 1: int
        push(&[0, (KIND_FUNC_PROTO << 24) | 2, 1, 7, 1, 9, 1]); // 2: int (int x, int y)
        push(&[5, KIND_FUNC << 24, 2]); // 3: f
        let data = blob(&types, &strings);
        let btf = Btf::parse(data.clone()).unwrap();
        assert_eq!(btf.func_params("f"), Some(2));
        assert_eq!(btf.func_params("x"), None);
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let data = sample();
        let btf = Btf::parse(data.clone()).unwrap();
        assert_eq!(btf.member_offset("outer", "a"), Some(0));
        assert_eq!(btf.member_offset("outer", "b"), Some(4));
        assert_eq!(btf.member_offset("outer", "c"), Some(8));
        assert_eq!(btf.member_offset("outer", "d"), None);
        assert_eq!(btf.member_offset("inner", "a"), None);
    }

    #[test]
    fn a_structs_named_fields_have_their_offsets_and_sizes() {
        // struct tp { char comm[16]; int pid; union { int b; }; }: the anonymous member is
        // no field of its own.
        let strings = b"\0int\0char\0tp\0comm\0pid\0b\0".to_vec();
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend(w.to_le_bytes()));
        push(&[1, 1 << 24, 4, 32]); // 1: int
        push(&[5, 1 << 24, 1, 8]); // 2: char
        push(&[0, 3 << 24, 0, 2, 1, 16]); // 3: char[16]
        push(&[0, (KIND_UNION << 24) | 1, 4, 22, 1, 0]); // 4: union { int b }
        push(&[
            10,
            (KIND_STRUCT << 24) | 3,
            24,
            13,
            3,
            0,
            18,
            1,
            128,
            0,
            4,
            160,
        ]); // 5: tp
        let btf = Btf::parse(blob(&types, &strings)).unwrap();
        assert_eq!(
            btf.struct_fields("tp"),
            Some(vec![("comm".into(), 0, 16), ("pid".into(), 16, 4)])
        );
        assert_eq!(btf.struct_fields("nope"), None);
    }

    #[test]
    fn id_stub_keeps_the_ids_and_names_wanted() {
        let blob = id_stub(&[(5, KIND_TYPEDEF, "btf_trace_x"), (3, KIND_FUNC, "f")]);
        let btf = Btf::parse(blob.clone()).unwrap();
        assert_eq!(btf.type_id(KIND_TYPEDEF, "btf_trace_x"), Some(5));
        assert_eq!(btf.func_id("f"), Some(3));
        assert_eq!(btf.func_id("btf_trace_x"), None);
        assert_eq!(btf.types.len(), 6, "void, then ids 1..=5");
        // aya finds them where the program loaders look (BtfTracePoint::load, FExit::load).
        let aya = aya::Btf::parse(&blob, aya::Endianness::default()).unwrap();
        assert_eq!(
            aya.id_by_type_name_kind("btf_trace_x", BtfKind::Typedef)
                .ok(),
            Some(5)
        );
        assert_eq!(aya.id_by_type_name_kind("f", BtfKind::Func).ok(), Some(3));
        assert!(aya.id_by_type_name_kind("f", BtfKind::Typedef).is_err());
    }

    /// On the running kernel: aya finds the socket backends' attach targets at the same ids
    /// in the stub as in all of the kernel's BTF.
    #[test]
    fn the_stub_gives_aya_the_kernels_ids() {
        let Ok(full) = aya::Btf::from_sys_fs() else {
            panic!("this test reads {KERNEL_BTF}, which this kernel lacks (CONFIG_DEBUG_INFO_BTF)");
        };
        let wanted = [
            (
                KIND_TYPEDEF,
                "btf_trace_sched_process_exit",
                BtfKind::Typedef,
            ),
            (
                KIND_TYPEDEF,
                "btf_trace_inet_sock_set_state",
                BtfKind::Typedef,
            ),
            (KIND_FUNC, "tcp_sendmsg", BtfKind::Func),
            (KIND_FUNC, "tcp_recvmsg", BtfKind::Func),
        ];
        let query: Vec<(u32, &str)> = wanted.iter().map(|&(k, n, _)| (k, n)).collect();
        let blob = kernel_id_stub(&query).unwrap();
        let stub = aya::Btf::parse(&blob, aya::Endianness::default()).unwrap();
        for (_, name, kind) in wanted {
            let id = full.id_by_type_name_kind(name, kind).unwrap();
            assert_eq!(
                stub.id_by_type_name_kind(name, kind).ok(),
                Some(id),
                "{name}"
            );
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(Vec::new()).is_none());
        assert!(Btf::parse(vec![0u8; 64]).is_none());
        let mut truncated = sample();
        truncated.truncate(40);
        assert!(Btf::parse(truncated.to_vec()).is_none());
    }
}

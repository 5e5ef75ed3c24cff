//! tracefs: make sure it is mounted (aya finds tracepoint ids there), and find tracepoint
//! field offsets in the running kernel (its BTF, else the `format` files: [`Format::find`]),
//! so the probe does not depend on one kernel's record layout.
//! See Documentation/trace/events.rst ("Event formats") in the kernel source.

use std::{ffi::CString, fs, path::PathBuf};

use crate::{Error, Result};

const ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Finds a mounted tracefs, mounting it at /sys/kernel/tracing when none is.
/// Returns the root and whether drainwatch mounted it.
pub fn ensure_mounted() -> Result<(PathBuf, bool)> {
    if let Some(root) = mounted_root() {
        return Ok((root, false));
    }
    let target = ROOTS[0];
    let source = CString::new("tracefs").expect("no NUL");
    let dir = CString::new(target).expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            dir.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(Error::Tracefs(std::io::Error::last_os_error().to_string()));
    }
    mounted_root()
        .map(|root| (root, true))
        .ok_or_else(|| Error::Tracefs("mounted, but no events directory appeared".into()))
}

/// The mounted tracefs root, if any (nothing is mounted here).
pub fn find_root() -> Option<PathBuf> {
    mounted_root()
}

fn mounted_root() -> Option<PathBuf> {
    ROOTS
        .iter()
        .map(PathBuf::from)
        .find(|root| root.join("events").is_dir())
}

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// The fields of one tracepoint, parsed from its `format` file.
#[derive(Clone, Debug)]
pub struct Format {
    pub category: String,
    pub name: String,
    pub fields: Vec<Field>,
}

impl Format {
    /// The format of tracepoint `category:name`: from kernel BTF where it has one, else
    /// read from tracefs under `root` ([`Format::read`]).
    ///
    /// Kernel BTF holds `struct trace_event_raw_NAME`, the very struct the format file is
    /// printed from (include/trace/trace_events.h: each field's offset is its `offsetof`
    /// there). Reading a format file takes the kernel's `event_mutex` (`f_start`,
    /// kernel/trace/trace_events.c), which every tracepoint perf event's release holds
    /// across an RCU grace period (`perf_trace_destroy`, kernel/trace/trace_event_perf.c):
    /// behind another drainwatch's detach (a `wait` just before a `stop`, host/detach.rs)
    /// each read waited for it, up to hundreds of milliseconds of attach (docs/bench.md,
    /// "Attach and detach"). An event of a shared class (`DEFINE_EVENT`: sched_process_exit
    /// before Linux 6.13) has no struct of its own name, and a kernel without BTF none at
    /// all: those are read from tracefs.
    pub fn find(root: &std::path::Path, category: &str, name: &str) -> Result<Self> {
        match crate::kernel::btf::kernel_struct_fields(&format!("trace_event_raw_{name}")) {
            Some(fields) => Ok(Self {
                category: category.into(),
                name: name.into(),
                fields: fields
                    .into_iter()
                    .map(|(name, offset, size)| Field { name, offset, size })
                    .collect(),
            }),
            None => Self::read(root, category, name),
        }
    }

    pub fn read(root: &std::path::Path, category: &str, name: &str) -> Result<Self> {
        let path = root.join("events").join(category).join(name).join("format");
        let text = fs::read_to_string(&path).map_err(|err| Error::TracepointFormat {
            category: category.into(),
            name: name.into(),
            problem: format!("cannot read {}: {err}", path.display()),
        })?;
        Ok(Self::parse(category, name, &text))
    }

    /// Parses lines like
    /// `field:pid_t pid; offset:36; size:4; signed:1;` (tab-separated).
    pub fn parse(category: &str, name: &str, text: &str) -> Self {
        let fields = text.lines().filter_map(parse_field).collect();
        Self {
            category: category.into(),
            name: name.into(),
            fields,
        }
    }

    /// Whether the tracepoint has `field` (optional fields differ between kernels).
    pub fn has(&self, field: &str) -> bool {
        self.fields.iter().any(|f| f.name == field)
    }

    /// The offset of `field`, checking that it has the size the probe reads.
    pub fn offset(&self, field: &str, size: u32) -> Result<u32> {
        let found = self
            .fields
            .iter()
            .find(|f| f.name == field)
            .ok_or_else(|| self.error(format!("no field `{field}`")))?;
        if found.size != size {
            return Err(self.error(format!(
                "field `{field}` is {} bytes, the probe reads {size}",
                found.size
            )));
        }
        Ok(found.offset)
    }

    fn error(&self, problem: String) -> Error {
        Error::TracepointFormat {
            category: self.category.clone(),
            name: self.name.clone(),
            problem,
        }
    }
}

fn parse_field(line: &str) -> Option<Field> {
    let mut decl = None;
    let mut offset = None;
    let mut size = None;
    for part in line.trim().split(';') {
        let part = part.trim();
        if let Some(d) = part.strip_prefix("field:") {
            decl = Some(d);
        } else if let Some(o) = part.strip_prefix("offset:") {
            offset = o.parse().ok();
        } else if let Some(s) = part.strip_prefix("size:") {
            size = s.parse().ok();
        }
    }
    // The name is the last word of the declaration, without an array suffix:
    // `char comm[16]` -> `comm`, `__data_loc char[] filename` -> `filename`.
    let name = decl?.split_whitespace().last()?;
    let name = name.split('[').next()?;
    Some(Field {
        name: name.to_string(),
        offset: offset?,
        size: size?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNAL_GENERATE: &str = "name: signal_generate
ID: 261
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:int sig;	offset:8;	size:4;	signed:1;
	field:int errno;	offset:12;	size:4;	signed:1;
	field:int code;	offset:16;	size:4;	signed:1;
	field:char comm[16];	offset:20;	size:16;	signed:0;
	field:pid_t pid;	offset:36;	size:4;	signed:1;
	field:__data_loc char[] parent_comm;	offset:44;	size:4;	signed:0;

print fmt: \"sig=%d\", REC->sig
";

    #[test]
    fn parses_a_format_file() {
        let format = Format::parse("signal", "signal_generate", SIGNAL_GENERATE);
        assert_eq!(format.offset("sig", 4).unwrap(), 8);
        assert_eq!(format.offset("pid", 4).unwrap(), 36);
        assert_eq!(format.offset("comm", 16).unwrap(), 20);
        assert_eq!(format.offset("parent_comm", 4).unwrap(), 44);
        let err = format.offset("pid", 8).unwrap_err().to_string();
        assert!(err.contains("is 4 bytes"), "{err}");
        let err = format.offset("nope", 4).unwrap_err().to_string();
        assert!(err.contains("no field `nope`"), "{err}");
    }

    /// The formats the probe reads, from this kernel's BTF, match its tracefs format files
    /// field for field (those BTF names apart: `__data_loc` strings, the common header).
    /// Needs root, tracefs and kernel BTF, as every attach does: it fails where they lack.
    #[test]
    fn formats_from_kernel_btf_are_the_format_files() {
        let root = find_root().expect("tracefs mounted (root, as for every attach)");
        for (category, name) in crate::kernel::features::LIFECYCLE_TRACEPOINTS {
            let read = Format::read(&root, category, name).expect("the format file");
            let found = Format::find(&root, category, name).unwrap();
            for field in &found.fields {
                if let Some(same) = read.fields.iter().find(|f| f.name == field.name) {
                    assert_eq!(same, field, "{category}:{name}");
                }
            }
            for field in read
                .fields
                .iter()
                .filter(|f| !f.name.starts_with("common_"))
            {
                let data_loc = format!("__data_loc_{}", field.name);
                assert!(
                    found
                        .fields
                        .iter()
                        .any(|f| f.name == field.name || f.name == data_loc),
                    "{category}:{name}: {} not found",
                    field.name
                );
            }
        }
    }
}

//! Attaching programs of the loaded object, by kind of hook: the steps the probe's lifecycle
//! programs and every hook backend (kernel/backends/) are made of. Each attach takes its
//! link as owned at once ([`Links`]), so detaching needs nothing per kind.

use aya::{
    programs::{BtfTracePoint, FExit, RawTracePoint, TracePoint},
    Ebpf,
};

use crate::{
    kernel::{btf, links::Links},
    Error, Result,
};

/// An aya error as the crate's: permission as [`Error::NotPermitted`] (its own message),
/// anything else as a load error with its whole chain.
pub fn load_error(err: impl std::fmt::Display + std::fmt::Debug) -> Error {
    let text = format!("{err:#}");
    if text.contains("Operation not permitted") || format!("{err:?}").contains("EPERM") {
        Error::NotPermitted
    } else {
        Error::Load(text)
    }
}

/// Loads the tracepoint program `program` and attaches it to `category:name` for each of
/// `names`.
pub fn tracepoint(
    ebpf: &mut Ebpf,
    program: &str,
    category: &str,
    names: &[&str],
    links: &mut Links,
) -> Result<()> {
    let program: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| Error::Load(format!("no program {program} in the object")))?
        .try_into()
        .map_err(load_error)?;
    program.load().map_err(load_error)?;
    for name in names {
        let id = program.attach(category, name).map_err(load_error)?;
        links.add(program.take_link(id).map_err(load_error)?);
    }
    Ok(())
}

/// Loads the raw tracepoint program `program` and attaches it to `tracepoint`.
pub fn raw_tracepoint(
    ebpf: &mut Ebpf,
    program: &str,
    tracepoint: &str,
    links: &mut Links,
) -> Result<()> {
    let raw: &mut RawTracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| Error::Load(format!("no program {program} in the object")))?
        .try_into()
        .map_err(load_error)?;
    raw.load().map_err(load_error)?;
    let id = raw.attach(tracepoint).map_err(load_error)?;
    links.add(raw.take_link(id).map_err(load_error)?);
    Ok(())
}

/// Loads and attaches BTF-typed programs: `tp_btf` programs, each on the tracepoint of its
/// name, and `fexits` (program, kernel function). A missing hook would lose events silently,
/// so any failure fails the load (the user can unset DRAINWATCH_HOOKS), except permission,
/// which gets its own message; the failure is recorded in `failures` too.
pub fn btf_programs(
    ebpf: &mut Ebpf,
    tp_btf: &[&str],
    fexits: &[(&str, &str)],
    links: &mut Links,
    failures: &mut Vec<String>,
) -> Result<()> {
    // aya looks each attach target up in a BTF by name: a stub with only those names, at
    // their kernel ids, instead of all of the kernel's BTF parsed (kernel/btf.rs).
    let typedefs: Vec<String> = tp_btf
        .iter()
        .map(|name| format!("btf_trace_{name}"))
        .collect();
    let wanted: Vec<(u32, &str)> = typedefs
        .iter()
        .map(|name| (btf::KIND_TYPEDEF, name.as_str()))
        .chain(
            fexits
                .iter()
                .map(|&(_, function)| (btf::KIND_FUNC, function)),
        )
        .collect();
    let stub = btf::kernel_id_stub(&wanted)
        .ok_or_else(|| Error::Load(format!("cannot read {}", btf::KERNEL_BTF)))?;
    let btf = aya::Btf::parse(&stub, aya::Endianness::default()).map_err(load_error)?;
    drop(stub);
    // Verified in parallel, one thread per program, before anything is attached: the
    // kernel's verifier, which runs in the BPF_PROG_LOAD caller's thread, is most of the
    // attach time (the socket data-path programs took over a second each on a loaded
    // 2-CPU machine, docs/bench.md "Attach and detach"), and the programs do not depend
    // on one another.
    let mut loaded = verify_in_parallel(ebpf, tp_btf, fexits, &btf);
    let mut fail = |name: &str, err: Error| -> Result<()> {
        if matches!(err, Error::NotPermitted) {
            return Err(err);
        }
        failures.push(format!("{name}: {err}"));
        Err(Error::Load(format!(
            "socket hook {name}: {err} (unset DRAINWATCH_HOOKS to use the default hooks)"
        )))
    };
    for &name in tp_btf {
        let attached = (|| -> Result<_> {
            loaded.remove(name).unwrap_or_else(|| Err(missing(name)))?;
            let program: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| missing(name))?
                .try_into()
                .map_err(load_error)?;
            let id = program.attach().map_err(load_error)?;
            program.take_link(id).map_err(load_error)
        })();
        match attached {
            Ok(link) => links.add(link),
            Err(err) => fail(&format!("tp_btf:{name}"), err)?,
        }
    }
    for &(name, function) in fexits {
        let attached = (|| -> Result<_> {
            loaded.remove(name).unwrap_or_else(|| Err(missing(name)))?;
            let program: &mut FExit = ebpf
                .program_mut(name)
                .ok_or_else(|| missing(name))?
                .try_into()
                .map_err(load_error)?;
            let id = program.attach().map_err(load_error)?;
            program.take_link(id).map_err(load_error)
        })();
        match attached {
            Ok(link) => links.add(link),
            Err(err) => fail(&format!("fexit:{function}"), err)?,
        }
    }
    Ok(())
}

fn missing(name: &str) -> Error {
    Error::Load(format!("no program {name} in the object"))
}

/// Loads (the kernel verifies) each `tp_btf` program and each fexit program (program,
/// kernel function) of `ebpf` on a thread of its own; the outcome by program name.
fn verify_in_parallel(
    ebpf: &mut Ebpf,
    tp_btf: &[&str],
    fexits: &[(&str, &str)],
    btf: &aya::Btf,
) -> std::collections::HashMap<String, Result<()>> {
    std::thread::scope(|scope| {
        let threads: Vec<_> = ebpf
            .programs_mut()
            .filter_map(|(name, program)| {
                let fexit = fexits.iter().find(|(p, _)| *p == name).map(|&(_, f)| f);
                if fexit.is_none() && !tp_btf.contains(&name) {
                    return None;
                }
                let load = move || -> Result<()> {
                    match fexit {
                        Some(function) => {
                            let program: &mut FExit = program.try_into().map_err(load_error)?;
                            program.load(function, btf).map_err(load_error)
                        }
                        None => {
                            let program: &mut BtfTracePoint =
                                program.try_into().map_err(load_error)?;
                            program.load(name, btf).map_err(load_error)
                        }
                    }
                };
                Some((name.to_string(), scope.spawn(load)))
            })
            .collect();
        threads
            .into_iter()
            .map(|(name, thread)| {
                let outcome = thread
                    .join()
                    .unwrap_or_else(|_| Err(Error::Load(format!("loading {name} panicked"))));
                (name, outcome)
            })
            .collect()
    })
}

//! Other kernels in QEMU: Debian's kernel packages, unpacked under target/kernels/, booted
//! with a busybox initramfs that mounts this machine's / read-only (virtio-9p) under a
//! tmpfs overlay and chroots into it. Inside, the guest runs the very binaries built here
//! (drainwatch, the fixtures, the test executables) against the host's PostgreSQL, on its
//! own kernel. Any shell script can be run in any guest ([`run`]); `matrix` uses this to run
//! integration tests.
//!
//! Facts this relies on, checked on this project's machines: /dev/kvm here does not boot guests, so it is
//! TCG; Debian's generic kernels have 9p, virtio and overlayfs as modules, whose
//! dependencies are read from each module's own `.modinfo` (`depends=`), since the packages
//! ship no modules.dep (their postinst runs depmod).

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::exec;

/// A kernel the matrix boots.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// Short name used on the command line and in output ("6.1").
    pub name: &'static str,
    /// The Debian package holding it.
    pub package: &'static str,
    /// The Debian release whose archive has it when this machine's own apt sources do not
    /// (Debian 11's 5.10 for a Debian 12 machine): fetched from the same archive the
    /// machine's sources name, through a private apt state under target/ (see [`download`]).
    pub suite: Option<&'static str>,
    /// The backend drainwatch picks there with nothing forced (docs/hooks.md, "Choosing
    /// one"), as `doctor` names it: 6.1 has no socket length tracepoints but fentry (the
    /// fentry backend), 6.12 has both (the socket backend), 5.10 has fentry but not the
    /// task-register helpers the socket-level programs call (the syscall hooks). The guest
    /// checks it.
    pub default_hooks: &'static str,
    /// The hook backends the matrix runs its tests on there, each forced with
    /// `DRAINWATCH_HOOKS`: the default first, then any backend whose oldest or newest
    /// kernel this is (matrix.rs, "Which backends where"). The host runs the socket and
    /// syscall backends.
    /// `DW_MATRIX_HOOKS=fentry,socket` replaces the list.
    pub hooks: &'static [&'static str],
}

/// Debian 11's kernel (5.10 LTS, the series Debian 11 and Amazon Linux 2 run; the newest
/// bullseye has, fetched from the same Debian archive), Debian 12's own (6.1 LTS) and
/// bookworm-security's 6.12 LTS: the oldest kernel drainwatch supports and the two LTS
/// series most game servers run.
pub const KERNELS: [Kernel; 3] = [
    Kernel {
        name: "5.10",
        package: "linux-image-5.10.0-32-amd64-unsigned",
        suite: Some("bullseye"),
        default_hooks: "syscalls",
        // Its default; the socket-level backends need helpers 5.10 lacks (docs/hooks.md).
        hooks: &["syscalls"],
    },
    Kernel {
        name: "6.1",
        package: "linux-image-6.1.0-57-amd64-unsigned",
        suite: None,
        default_hooks: "fentry",
        // Its default, the oldest kernel fentry runs on; the syscall hooks run on 5.10
        // (oldest) and on the host (newest) instead (matrix.rs, "Which backends where").
        hooks: &["fentry"],
    },
    Kernel {
        name: "6.12",
        package: "linux-image-6.12.117+deb12-amd64-unsigned",
        suite: None,
        default_hooks: "socket-tracepoints",
        // Its default, and fentry, which 6.12 offers too (issue #15: both there).
        hooks: &["socket", "fentry"],
    },
];

/// Modules the guest needs that Debian builds as modules; their dependencies come along.
/// Besides the host's root over virtio-9p under an overlay: sock_diag for TCP and unix
/// sockets, which drainwatch asks about connections that existed before attach (a Debian
/// system loads these on demand through modprobe; the guest, running this machine's
/// userland, has no modules of its kernel to load on demand).
const WANTED_MODULES: [&str; 7] = [
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "overlay",
    "inet_diag",
    "tcp_diag",
    "unix_diag",
];

/// Printed by the guest's init as its last line: the script's exit status.
const EXIT_MARKER: &str = "DW-GUEST-EXIT=";

/// The guest's /init: mounts the host's / read-only under a tmpfs overlay, the kernel
/// filesystems drainwatch needs inside it, brings up loopback and runs the script named
/// on the kernel command line (`dw.script=`) as root in the chroot, then powers off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in /modules/*.ko; do insmod "$m" || echo "guest: insmod $m failed"; done
script=$(sed -n 's/.*dw\.script=\([^ ]*\).*/\1/p' /proc/cmdline)
mkdir -p /host /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose host /host \
    || { echo "guest: cannot mount the host's / over 9p"; echo "DW-GUEST-EXIT=125"; poweroff -f; }
mount -t tmpfs -o size=70% tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
    || { echo "guest: overlay mount failed"; echo "DW-GUEST-EXIT=125"; poweroff -f; }
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
cd /newroot
mount -t tracefs tracefs sys/kernel/tracing
mount -t debugfs debugfs sys/kernel/debug
mount -t bpf bpf sys/fs/bpf
mount -t cgroup2 cgroup2 sys/fs/cgroup
mount -t securityfs securityfs sys/kernel/security
mkdir -p dev/pts dev/shm
mount -t devpts devpts dev/pts
mount -t tmpfs tmpfs dev/shm
mount -t tmpfs tmpfs tmp
mount -t tmpfs tmpfs run
ip link set lo up
ulimit -l unlimited
hostname dw-guest
echo "guest: kernel $(uname -r) up, running $script"
chroot /newroot /bin/sh "$script"
echo "DW-GUEST-EXIT=$?"
poweroff -f
"#;

/// What a guest run printed and how it ended.
pub struct GuestRun {
    pub console: String,
    /// The script's exit status; `None` when the guest never reported one (crash, hang).
    pub status: Option<i32>,
    pub took: Duration,
    /// The host CPU time the guest used (its QEMU process, read about once a second).
    pub cpu: Duration,
}

/// Kernel files unpacked from the package.
pub struct Unpacked {
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
}

fn cache_dir(kernel: &Kernel) -> PathBuf {
    exec::target_dir().join("kernels").join(kernel.package)
}

/// Downloads and unpacks `kernel` and builds its initramfs, once (cached under target/).
pub fn prepare(kernel: &Kernel) -> Result<Unpacked> {
    let dir = cache_dir(kernel);
    let root = dir.join("root");
    let initramfs = dir.join("initramfs.cpio.gz");
    // The initramfs is rebuilt when what goes into it changes (the init script, the module
    // list), not only when it is missing.
    let stamp = dir.join("initramfs.stamp");
    let recipe = format!("{INIT}\n{WANTED_MODULES:?}");
    let fresh = fs::read_to_string(&stamp).is_ok_and(|s| s == recipe) && initramfs.is_file();
    if let (Some(vmlinuz), true) = (find_vmlinuz(&root), fresh) {
        return Ok(Unpacked { vmlinuz, initramfs });
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if find_vmlinuz(&root).is_none() {
        let deb = download(kernel, &dir)?;
        let _ = fs::remove_dir_all(&root);
        exec::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))
            .with_context(|| format!("unpacking {}", deb.display()))?;
    }
    let vmlinuz =
        find_vmlinuz(&root).with_context(|| format!("{} has no boot/vmlinuz-*", kernel.package))?;
    build_initramfs(&root, &dir, &initramfs)?;
    fs::write(&stamp, recipe)?;
    Ok(Unpacked { vmlinuz, initramfs })
}

fn find_vmlinuz(root: &Path) -> Option<PathBuf> {
    fs::read_dir(root.join("boot"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
}

fn download(kernel: &Kernel, dir: &Path) -> Result<PathBuf> {
    let existing = |dir: &Path| -> Option<PathBuf> {
        fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.extension().is_some_and(|e| e == "deb")
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{}_", kernel.package)))
            })
    };
    if let Some(deb) = existing(dir) {
        return Ok(deb);
    }
    println!("guest: downloading {}", kernel.package);
    let options = match kernel.suite {
        Some(suite) => private_sources(suite)?,
        None => Vec::new(),
    };
    let apt = |what: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(&options)
            .args(what)
            .current_dir(dir)
            .stdin(Stdio::null());
        exec::run(&mut cmd)
    };
    if apt(&["download", kernel.package]).is_err() {
        // A fresh machine's (or the private state's) package lists may not name it yet.
        apt(&["update"]).context("refreshing the apt package lists")?;
        apt(&["download", kernel.package])
            .with_context(|| format!("apt-get download {}", kernel.package))?;
    }
    existing(dir).with_context(|| format!("apt-get download left no {}.deb", kernel.package))
}

/// apt options that read `suite` of this machine's Debian archive from a sources list and
/// package lists of their own under target/kernels/apt-SUITE/, leaving the machine's apt
/// configuration and state untouched (`Dir::Etc::sourceparts=-` hides its own sources).
fn private_sources(suite: &str) -> Result<Vec<String>> {
    let uri = archive_uri()?;
    let state = exec::target_dir()
        .join("kernels")
        .join(format!("apt-{suite}"));
    fs::create_dir_all(state.join("lists/partial"))
        .with_context(|| format!("creating {}", state.display()))?;
    let list = state.join("sources.list");
    fs::write(&list, format!("deb {uri} {suite} main\n"))?;
    Ok(vec![
        "-o".into(),
        format!("Dir::Etc::sourcelist={}", list.display()),
        "-o".into(),
        "Dir::Etc::sourceparts=-".into(),
        "-o".into(),
        format!("Dir::State::Lists={}", state.join("lists").display()),
    ])
}

/// The Debian archive this machine's apt uses (the first `URIs:` of a deb822 source, or the
/// first `deb` line), so that a mirror or proxy configured there serves the old suite too.
fn archive_uri() -> Result<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        if let Some(uri) = archive_in(&text) {
            return Ok(uri);
        }
    }
    bail!("no Debian archive in /etc/apt/sources.list or /etc/apt/sources.list.d")
}

/// The first archive URI in a sources file (either format) that is Debian's main archive,
/// not its security archive.
fn archive_in(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            if let Some(rest) = l.strip_prefix("URIs:") {
                return rest.split_whitespace().next();
            }
            let mut words = l.split_whitespace();
            (words.next() == Some("deb")).then_some(())?;
            words.find(|w| !w.starts_with('['))
        })
        .find(|uri| !uri.contains("security"))
        .map(str::to_string)
}

/// Every module file under `root/lib/modules`, by module name (`-` spelled `_`).
fn module_index(root: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut index = BTreeMap::new();
    let mut stack = vec![root.join("lib/modules")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(stem) = name
                .strip_suffix(".ko")
                .or_else(|| name.strip_suffix(".ko.xz"))
            {
                index.insert(stem.replace('-', "_"), path);
            }
        }
    }
    Ok(index)
}

/// The module's bytes, uncompressed (busybox insmod takes plain .ko files only).
fn module_bytes(path: &Path) -> Result<Vec<u8>> {
    if path.extension().is_some_and(|e| e == "xz") {
        let out = exec::output(Command::new("xz").arg("-dc").arg(path))?;
        if !out.status.success() {
            bail!("xz -dc {} failed", path.display());
        }
        Ok(out.stdout)
    } else {
        fs::read(path).with_context(|| format!("reading {}", path.display()))
    }
}

/// `depends=a,b` from the module's .modinfo section.
fn module_depends(bytes: &[u8]) -> Vec<String> {
    let needle = b"depends=";
    let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) else {
        return Vec::new();
    };
    let rest = &bytes[at + needle.len()..];
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
}

/// The wanted modules and their dependencies, dependencies first, as (name, bytes).
fn modules_in_load_order(root: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let index = module_index(root)?;
    let mut ordered: Vec<(String, Vec<u8>)> = Vec::new();
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        ordered: &mut Vec<(String, Vec<u8>)>,
        depth: u32,
    ) -> Result<()> {
        if depth > 16 || ordered.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        // Not a module in this kernel: built in, nothing to load.
        let Some(path) = index.get(name) else {
            return Ok(());
        };
        let bytes = module_bytes(path)?;
        for dep in module_depends(&bytes) {
            visit(&dep, index, ordered, depth + 1)?;
        }
        ordered.push((name.to_string(), bytes));
        Ok(())
    }
    for name in WANTED_MODULES {
        visit(name, &index, &mut ordered, 0)?;
    }
    Ok(ordered)
}

fn build_initramfs(root: &Path, dir: &Path, out: &Path) -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        bail!("/bin/busybox is missing: `cargo xtask setup` installs busybox-static");
    }
    let tree = dir.join("initramfs");
    let _ = fs::remove_dir_all(&tree);
    for sub in ["bin", "modules", "proc", "sys", "dev"] {
        fs::create_dir_all(tree.join(sub))?;
    }
    fs::copy(busybox, tree.join("bin/busybox")).context("copying busybox")?;
    let init = tree.join("init");
    fs::write(&init, INIT)?;
    exec::run(Command::new("chmod").arg("755").arg(&init))?;
    for (i, (name, bytes)) in modules_in_load_order(root)?.into_iter().enumerate() {
        fs::write(tree.join(format!("modules/{i:02}-{name}.ko")), bytes)?;
    }
    let script = format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        tree.display(),
        out.display()
    );
    exec::run(Command::new("sh").arg("-c").arg(script)).context("packing the initramfs")?;
    Ok(())
}

/// Boots `kernel` and runs `script` (a file on this machine's /, seen at the same path in
/// the guest) as root in the guest's chroot. The guest is killed after `timeout`; its
/// console (the serial port) is returned either way, and streamed to stdout as it comes
/// with `prefix` so a CI log shows progress.
pub fn run(kernel: &Kernel, script: &Path, timeout: Duration, prefix: &str) -> Result<GuestRun> {
    let unpacked = prepare(kernel)?;
    let started = Instant::now();
    let mut cmd = Command::new("qemu-system-x86_64");
    // One host thread for both vCPUs (thread=single): with multi-threaded TCG a 6.12 guest
    // once died of an int3 Oops right after drainwatch attached. Attaching flips static
    // keys, which the kernel patches with text_poke_bp (an int3 first, other CPUs synced
    // by IPI); multi-threaded TCG can run a stale translated block holding that int3 on the
    // other vCPU after the handler is gone. Single-threaded TCG has no such window; two
    // vCPUs keep the guest's concurrency real.
    cmd.args(["-accel", "tcg,thread=single", "-cpu", "max", "-m", "3072"])
        .args(["-smp", "2", "-M", "q35", "-nographic", "-no-reboot"])
        .args(["-serial", "stdio", "-monitor", "none", "-net", "none"])
        .arg("-kernel")
        .arg(&unpacked.vmlinuz)
        .arg("-initrd")
        .arg(&unpacked.initramfs)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 quiet loglevel=4 dw.script={}",
            script.display()
        ))
        .args([
            "-fsdev",
            "local,id=host,path=/,readonly=on,security_model=none,multidevs=remap",
            "-device",
            "virtio-9p-pci,fsdev=host,mount_tag=host",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .context("starting qemu-system-x86_64 (`cargo xtask setup` installs qemu-system-x86)")?;
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().context("qemu stdout")?;
    let mut stderr = child.stderr.take().context("qemu stderr")?;
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(|l| l.ok()) {
            let text = String::from_utf8_lossy(&line).replace('\r', "");
            if tx.send(text).is_err() {
                break;
            }
        }
    });
    let mut console = String::new();
    let mut status = None;
    let deadline = started + timeout;
    let mut timed_out = false;
    let pid = child.id();
    // The host CPU the guest has used so far, last read while it ran (gone once it exits).
    let mut cpu = Duration::ZERO;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(now) = cpu_time(pid) {
            cpu = now;
        }
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                // Firmware chatter (SeaBIOS escape sequences) is noise in a CI log.
                let mut clean: String = line.chars().filter(|c| !c.is_control()).collect();
                if let Some(code) = clean.trim().strip_prefix(EXIT_MARKER) {
                    status = code.trim().parse().ok();
                }
                // Each step's header also says how much host CPU the guest had used when
                // it began: a step's CPU is what another guest beside it cannot have, its
                // wall time minus that is waiting (sleeps, timeouts) that guests side by
                // side overlap (matrix.rs, `guests_at_once`).
                if clean.starts_with("=== ") {
                    if let Some(now) = cpu_time(pid) {
                        cpu = now;
                    }
                    clean.push_str(&format!(" [host cpu {:.1}s]", cpu.as_secs_f64()));
                }
                println!("{prefix}{clean}");
                console.push_str(&clean);
                console.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break;
        }
    }
    let _ = child.wait();
    let _ = reader.join();
    let mut errors = String::new();
    let _ = stderr.read_to_string(&mut errors);
    if !errors.trim().is_empty() {
        console.push_str(&format!("qemu stderr: {}\n", errors.trim()));
    }
    if timed_out {
        console.push_str(&format!(
            "guest killed: no exit within {}\n",
            exec::elapsed(timeout)
        ));
    }
    Ok(GuestRun {
        console,
        status,
        took: started.elapsed(),
        cpu,
    })
}

/// The CPU time (user + system, every thread) process `pid` has used: fields 14 and 15 of
/// /proc/PID/stat (proc(5)), in clock ticks, which are 1/100 s on Linux (USER_HZ, fixed by
/// the ABI whatever the kernel's HZ).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are 11 and 12 on.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_are_read_from_modinfo() {
        let blob = b"\x7fELF...license=GPL\0depends=virtio,9pnet,virtio_ring\0name=9pnet_virtio\0";
        assert_eq!(module_depends(blob), vec!["virtio", "9pnet", "virtio_ring"]);
        assert!(module_depends(b"license=GPL\0depends=\0name=netfs\0").is_empty());
    }

    #[test]
    fn the_archive_is_read_from_either_sources_format() {
        let deb822 = "Types: deb\n# http://snapshot.debian.org/x\nURIs: http://deb.debian.org/debian\n\
                      Suites: bookworm\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\n";
        assert_eq!(
            archive_in(deb822).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let security_first = "URIs: http://security.debian.org/debian-security\n\
                              URIs: http://mirror.example/debian\n";
        assert_eq!(
            archive_in(security_first).as_deref(),
            Some("http://mirror.example/debian")
        );
        let one_line = "# deb http://old/ x main\ndeb [arch=amd64] http://ftp.de.debian.org/debian bookworm main\n";
        assert_eq!(
            archive_in(one_line).as_deref(),
            Some("http://ftp.de.debian.org/debian")
        );
        assert_eq!(archive_in("# nothing\n"), None);
    }
}

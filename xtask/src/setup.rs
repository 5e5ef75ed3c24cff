//! `cargo xtask setup`: make this machine able to build, load and test drainwatch.
//!
//! Idempotent and quiet when everything is present (one line per check), because every other
//! subcommand runs it first: a fresh machine or CI clone has nothing a previous session
//! installed by hand.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::exec::{self, cargo_home, elapsed};

/// The toolchain that compiles the eBPF crate (`-Z build-std=core` needs nightly). The
/// machine's nightly (1.97.0-nightly, LLVM 22) is known to work; it is never updated here,
/// because newer aya-ebpf/aya-build releases and bpf-linker must match its LLVM.
const NIGHTLY: &str = "nightly";

/// Debian packages the tests and the demo use: `bpftool` shows what is loaded/attached
/// (to prove nothing is left behind). The database servers are started privately by the
/// tests (tests/src/db/), never as system services: `postgresql` brings initdb and
/// postgres (/usr/lib/postgresql/<major>/bin), `mariadb-server` mariadb-install-db and
/// mariadbd (and, through mariadb-client, the my_print_defaults the installer runs),
/// `redis-server` redis-server. `prometheus` brings promtool, which checks what
/// `drainwatch serve` exports.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "bpftool",
    "postgresql",
    "mariadb-server",
    "redis-server",
    "prometheus",
    // `cargo xtask bench` compares drainwatch with the tools SREs use today; the fault
    // tests trace drainwatch's own signal syscalls with strace.
    "bpftrace",
    "strace",
    // `ss`: the exporter's default listen address is checked to be loopback only.
    "iproute2",
    // `ps`: the bash completion of --pid and --comm lists processes with it.
    "procps",
    // The kernel matrix (xtask/src/guest.rs): Debian's kernels booted under QEMU with a
    // busybox initramfs packed by cpio; 6.12's modules are xz-compressed.
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
    // A real pre-fork server (master + workers) for the process-tree tests: nginx-light is
    // the smallest Debian nginx with proxy_pass. The tests run it privately on loopback.
    "nginx-light",
    // tests/fixtures/game_ops.cpp, the compiled game server of the `--op` tests
    // (tests/src/game_ops.rs builds it), talks to PostgreSQL through libpq.
    "g++",
    "libpq-dev",
    // tests/fixtures/pg_shop.py runs on real Python client libraries from PyPI, in a venv
    // (ensure_python_clients).
    "python3-venv",
    // A self-signed certificate for the TLS PostgreSQL of the tests (tests/src/db/pg.rs).
    "openssl",
    // `xmllint --schema`: the JUnit files are validated against tests/fixtures/junit.xsd.
    "libxml2-utils",
    // More client stacks for the database tests (tests/src/stacks.rs): a Go server on
    // lib/pq (GOPATH sources under /usr/share/gocode) and a Java one on the PostgreSQL JDBC
    // driver (/usr/share/java/postgresql.jar), built by the tests into target/stacks.
    "golang-go",
    "golang-github-lib-pq-dev",
    "default-jdk-headless",
    "libpostgresql-jdbc-java",
    // The MySQL/MariaDB and Redis stacks of issue #23 (tests/tests/db_stacks_matrix.rs):
    // Go database/sql on go-sql-driver/mysql and go-redis v5 (GOPATH sources), HikariCP on
    // MariaDB Connector/J (slf4j-nop keeps HikariCP's logging quiet), mysqlclient
    // (MySQLdb on libmariadb, for the system python3).
    "golang-github-go-sql-driver-mysql-dev",
    "golang-gopkg-redis.v5-dev",
    "libhikaricp-java",
    "libmariadb-java",
    "libslf4j-java",
    "python3-mysqldb",
];

/// Python database clients of the test fixtures, pinned, installed from PyPI into
/// target/pyenv (Debian has no asyncpg; its psycopg is older). ansible-core plays
/// docs/fleet/rolling-restart.yml in tests/tests/fleet.rs (Debian's ansible is older and
/// brings hundreds of collections the playbook does not use).
const PYTHON_CLIENTS: &[&str] = &[
    "asyncpg==0.32.0",
    "psycopg[binary]==3.3.9",
    "PyMySQL==1.1.1",
    "ansible-core==2.19.14",
];

/// node-pg and node mysql2 for the node fixture (tests/fixtures/node_shop.js), pinned,
/// installed from npm into target/nodeenv (node 20 and npm come with the machine image;
/// Debian's node-pg is older, and it has no mysql2).
const NODE_CLIENTS: &[&str] = &["pg@8.23.1", "mysql2@3.26.1"];

/// Where aya looks for tracepoint ids; either one is enough.
const TRACEFS_EVENTS: &[&str] = &[
    "/sys/kernel/tracing/events",
    "/sys/kernel/debug/tracing/events",
];

/// Runs every setup step, printing one line each and the total time.
pub fn run() -> Result<()> {
    let started = Instant::now();
    ensure_nightly()?;
    let sysroot = nightly_sysroot()?;
    ensure_rust_src(&sysroot)?;
    ensure_bpf_linker(&sysroot)?;
    ensure_debian_packages(DEBIAN_PACKAGES)?;
    ensure_tracefs()?;
    ensure_python_clients()?;
    ensure_node_clients()?;
    println!("setup: done in {}", elapsed(started.elapsed()));
    Ok(())
}

fn say(what: &str, status: impl std::fmt::Display) {
    println!("setup: {what}: {status}");
}

fn nightly_version() -> Option<String> {
    exec::probe(Command::new("rustc").args([format!("+{NIGHTLY}").as_str(), "--version"]))
}

fn ensure_nightly() -> Result<()> {
    if let Some(version) = nightly_version() {
        say("nightly toolchain", format_args!("present ({version})"));
        return Ok(());
    }
    say(
        "nightly toolchain",
        "missing, installing (rustup, minimal profile)",
    );
    exec::run(Command::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
    ]))
    .context("installing the nightly toolchain (needed to build the eBPF probe)")?;
    let version = nightly_version()
        .context("`rustc +nightly --version` still fails after installing nightly")?;
    say("nightly toolchain", format_args!("installed ({version})"));
    Ok(())
}

fn nightly_sysroot() -> Result<PathBuf> {
    let sysroot = exec::stdout_of(Command::new("rustc").args([
        format!("+{NIGHTLY}").as_str(),
        "--print",
        "sysroot",
    ]))
    .context("finding the nightly sysroot")?;
    Ok(PathBuf::from(sysroot))
}

/// `-Z build-std=core` compiles `core` for bpfel-unknown-none from the nightly's rust-src.
fn ensure_rust_src(sysroot: &Path) -> Result<()> {
    let core = sysroot.join("lib/rustlib/src/rust/library/core");
    if core.is_dir() {
        say("rust-src for nightly", "present");
        return Ok(());
    }
    say("rust-src for nightly", "missing, installing");
    exec::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        NIGHTLY,
    ]))
    .context("installing rust-src for nightly (needed for -Z build-std=core)")?;
    if !core.is_dir() {
        bail!(
            "rust-src was installed but {} still does not exist",
            core.display()
        );
    }
    say("rust-src for nightly", "installed");
    Ok(())
}

fn bpf_linker_version() -> Option<String> {
    exec::probe(Command::new("bpf-linker").arg("--version"))
}

/// bpf-linker must use the same LLVM major as the nightly rustc. Debian only has an older
/// LLVM, so it is built against the nightly's own `libLLVM.so` through a small prefix of
/// symlinks. That prefix must outlive the build: the binary keeps an rpath to it.
fn ensure_bpf_linker(sysroot: &Path) -> Result<()> {
    if let Some(version) = bpf_linker_version() {
        let place = exec::find_on_path("bpf-linker")
            .map(|p| format!(", {}", p.display()))
            .unwrap_or_default();
        say("bpf-linker", format_args!("present ({version}{place})"));
        return Ok(());
    }
    let (libllvm, major) = find_nightly_libllvm(&sysroot.join("lib"))?;
    let prefix = cargo_home().join("drainwatch-llvm");
    link_llvm_prefix(&prefix, &libllvm)?;
    // A bpf-linker built here earlier only needs its prefix back (same nightly): no rebuild.
    if let Some(version) = bpf_linker_version() {
        say("bpf-linker", format_args!("repaired ({version})"));
        return Ok(());
    }
    say(
        "bpf-linker",
        format_args!(
            "missing or broken, installing against {} (LLVM {major}; takes a few minutes)",
            libllvm.display()
        ),
    );
    let mut install = exec::cargo();
    install
        .env("LLVM_PREFIX", &prefix)
        .arg("install")
        .arg("--root")
        .arg(cargo_home())
        // --force: a binary left over whose libLLVM is gone still counts as installed.
        .args(["bpf-linker", "--locked", "--force", "--no-default-features"])
        .args(["--features", &format!("llvm-{major}")]);
    exec::run(&mut install).context("building bpf-linker")?;
    let version = bpf_linker_version().context(
        "bpf-linker was installed but `bpf-linker --version` still fails \
         (is $CARGO_HOME/bin on PATH? check `ldd $(which bpf-linker)`)",
    )?;
    say("bpf-linker", format_args!("installed ({version})"));
    Ok(())
}

/// The nightly's `libLLVM.so.<major>...` and its major version.
fn find_nightly_libllvm(lib_dir: &Path) -> Result<(PathBuf, u32)> {
    let entries =
        fs::read_dir(lib_dir).with_context(|| format!("reading {}", lib_dir.display()))?;
    let mut found: Vec<(PathBuf, u32)> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let rest = name.strip_prefix("libLLVM.so.")?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            Some((entry.path(), digits.parse().ok()?))
        })
        .collect();
    found.sort();
    found.pop().with_context(|| {
        format!(
            "no libLLVM.so.<major>* in {}: this nightly does not ship LLVM as a shared \
             library, so bpf-linker cannot be built against it",
            lib_dir.display()
        )
    })
}

/// `<prefix>/lib/libLLVM.so` and `<prefix>/lib/<basename>`, both pointing at `libllvm`;
/// replaced every time so they never point at a nightly that is gone.
fn link_llvm_prefix(prefix: &Path, libllvm: &Path) -> Result<()> {
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let basename = libllvm
        .file_name()
        .context("libLLVM path has no file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(basename)] {
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("removing old {}", link.display()))?;
        }
        symlink(libllvm, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), libllvm.display()))?;
    }
    say("llvm prefix", prefix.display());
    Ok(())
}

fn is_installed(package: &str) -> Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stdin(Stdio::null())
        .output()
        .context(
            "could not run dpkg-query: setup expects a Debian machine \
             (install the packages by other means and rerun)",
        )?;
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed")
}

fn ensure_debian_packages(packages: &[&str]) -> Result<()> {
    let mut missing = Vec::new();
    for &package in packages {
        if is_installed(package)? {
            say(&format!("debian package {package}"), "present");
        } else {
            say(&format!("debian package {package}"), "missing");
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        bail!(
            "missing Debian packages: {list}; not root, so install them yourself: \
             sudo apt-get update && sudo apt-get install -y --no-install-recommends {list}"
        );
    }
    say("debian packages", format_args!("installing {list}"));
    exec::run(Command::new("apt-get").arg("update").stdin(Stdio::null()))
        .context("refreshing the apt package lists")?;
    exec::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .stdin(Stdio::null()),
    )
    .with_context(|| format!("installing Debian packages {list}"))?;
    let still: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|p| !is_installed(p).unwrap_or(false))
        .collect();
    if !still.is_empty() {
        bail!(
            "apt-get succeeded but these are still not installed: {}",
            still.join(" ")
        );
    }
    say("debian packages", format_args!("installed {list}"));
    Ok(())
}

/// Effective uid 0, read from /proc so xtask needs no libc binding.
fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            // Uid: real effective saved fs
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// aya resolves tracepoint ids through tracefs, which a fresh machine does not mount.
fn ensure_tracefs() -> Result<()> {
    if let Some(events) = TRACEFS_EVENTS.iter().find(|p| Path::new(p).is_dir()) {
        say("tracefs", format_args!("mounted ({events})"));
        return Ok(());
    }
    say("tracefs", "not mounted, mounting at /sys/kernel/tracing");
    exec::run(
        Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .stdin(Stdio::null()),
    )
    .context(
        "tracefs is not mounted and mounting it failed (needs root); aya needs \
         /sys/kernel/tracing to find tracepoint ids",
    )?;
    if !Path::new(TRACEFS_EVENTS[0]).is_dir() {
        bail!("mounted tracefs but {} does not exist", TRACEFS_EVENTS[0]);
    }
    say("tracefs", "mounted at /sys/kernel/tracing");
    Ok(())
}

/// The venv the Python fixtures run in (tests find it as `DW_PYTHON`, see test.rs).
pub fn python_env() -> PathBuf {
    exec::target_dir().join("pyenv")
}

/// Where the node fixtures find their modules (tests find it as `DW_NODE_MODULES`).
pub fn node_env() -> PathBuf {
    exec::target_dir().join("nodeenv")
}

fn ensure_node_clients() -> Result<()> {
    let env = node_env();
    // Every pin must be what is installed (a nodeenv from before a pin was added gets it).
    let installed = |pin: &str| -> Option<String> {
        let (name, wanted) = pin.rsplit_once('@')?;
        let check = format!(
            "console.log(require(process.argv[1] + '/node_modules/{name}/package.json').version)"
        );
        let version = exec::probe(Command::new("node").args(["-e", &check]).arg(&env))?;
        (version.trim() == wanted).then(|| pin.to_string())
    };
    if NODE_CLIENTS.iter().all(|pin| installed(pin).is_some()) {
        say(
            "node clients",
            format_args!("present ({})", NODE_CLIENTS.join(", ")),
        );
        return Ok(());
    }
    say(
        "node clients",
        format_args!("installing into {}", env.display()),
    );
    std::fs::create_dir_all(&env).with_context(|| format!("creating {}", env.display()))?;
    exec::run(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&env)
            .args(NODE_CLIENTS)
            .stdin(Stdio::null()),
    )
    .context("installing the node clients from npm (needs node and npm on PATH)")?;
    if let Some(pin) = NODE_CLIENTS.iter().find(|pin| installed(pin).is_none()) {
        bail!(
            "npm installed {pin} into {} but node cannot load it",
            env.display()
        );
    }
    Ok(())
}

fn ensure_python_clients() -> Result<()> {
    let env = python_env();
    let python = env.join("bin/python");
    // Every pin must be what is installed: a venv from before a pin was added or changed
    // gets the new set. Versions from the installed distributions' metadata, as pip sees them.
    let pins: Vec<String> = PYTHON_CLIENTS
        .iter()
        .map(|pin| {
            let (name, version) = pin.split_once("==").unwrap_or((pin, ""));
            let name = name.split('[').next().unwrap_or(name);
            format!("{name}=={version}")
        })
        .collect();
    let names: Vec<String> = pins
        .iter()
        .map(|p| format!("'{}'", p.split("==").next().unwrap_or(p)))
        .collect();
    let check = format!(
        "import importlib.metadata as m\nfor d in [{}]: print(f'{{d}}=={{m.version(d)}}')",
        names.join(", ")
    );
    let installed = exec::probe(Command::new(&python).args(["-c", &check]));
    let pinned = |versions: &String| pins.iter().all(|p| versions.lines().any(|l| l == p));
    if let Some(versions) = installed.filter(pinned) {
        say(
            "python clients",
            format_args!(
                "present ({})",
                versions.lines().collect::<Vec<_>>().join(", ")
            ),
        );
        return Ok(());
    }
    say(
        "python clients",
        format_args!("installing into {}", env.display()),
    );
    exec::run(
        Command::new("/usr/bin/python3")
            .arg("-m")
            .arg("venv")
            .arg(&env),
    )
    .context("creating the fixtures' Python venv (Debian package python3-venv)")?;
    // `python -m pip`, not bin/pip: a venv moved with its target/ keeps a stale #! in bin/pip.
    exec::run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(PYTHON_CLIENTS)
            .stdin(Stdio::null()),
    )
    .context("installing the fixtures' Python database clients from PyPI")?;
    Ok(())
}

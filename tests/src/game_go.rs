//! The Go game server (tests/fixtures/game_go.go), built here with Debian's golang-go and
//! lib/pq (golang-github-lib-pq-dev; `cargo xtask setup` installs both), twice: as `go build`
//! leaves it, and stripped (`-ldflags=-s -w`: no symbol table, no DWARF), into
//! target/game-go/, once per test process, unless `DW_GAME_GO_BIN` and
//! `DW_GAME_GO_STRIPPED_BIN` name them (the kernel matrix builds them on the host with
//! `dw-fixture build-game-go`: under TCG each guest test process linked both again, which
//! is minutes of a guest). [`crate::game_ops::GameOps::start_with`] runs it like the C++
//! one, behind the same gateway.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/game_go.go");
/// Where Debian's golang-*-dev packages put Go sources (a GOPATH).
const GOPATH: &str = "/usr/share/gocode";

/// (plain, stripped).
fn built() -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        if let (Some(plain), Some(stripped)) = (
            std::env::var_os("DW_GAME_GO_BIN"),
            std::env::var_os("DW_GAME_GO_STRIPPED_BIN"),
        ) {
            return (PathBuf::from(plain), PathBuf::from(stripped));
        }
        for (path, package) in [
            ("/usr/bin/go", "golang-go"),
            (
                "/usr/share/gocode/src/github.com/lib/pq",
                "golang-github-lib-pq-dev",
            ),
        ] {
            assert!(
                Path::new(path).exists(),
                "{path} not found: the Debian package {package} is missing; `cargo xtask \
                 setup` installs it"
            );
        }
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/game-go"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let build = |name: &str, flags: &[&str]| {
            let out = dir.join(name);
            // Built under a name of this process's own, then renamed: test processes running
            // side by side never run a half-written binary.
            let tmp = dir.join(format!("{name}.{}", std::process::id()));
            let done = Command::new("/usr/bin/go")
                .arg("build")
                .args(flags)
                .arg("-o")
                .arg(&tmp)
                .arg(SOURCE)
                .env("GO111MODULE", "off")
                .env("GOPATH", GOPATH)
                .env("GOCACHE", dir.join("gocache"))
                .env("GOFLAGS", "")
                .output()
                .unwrap_or_else(|e| panic!("run go build: {e}"));
            assert!(
                done.status.success(),
                "go build {SOURCE} failed ({}):\n{}",
                done.status,
                String::from_utf8_lossy(&done.stderr)
            );
            std::fs::rename(&tmp, &out).expect("move game_go into place");
            out
        };
        (
            build("game_go", &[]),
            build("game_go_stripped", &["-ldflags=-s -w"]),
        )
    })
}

/// The Go game server as `go build` leaves it (symbol table and DWARF included).
pub fn game_go_bin() -> PathBuf {
    built().0.clone()
}

/// The same, stripped: only `.gopclntab` names its functions.
pub fn game_go_stripped_bin() -> PathBuf {
    built().1.clone()
}

//! The Go and Java shops (tests/fixtures/stacks/shop.go on Go's lib/pq, go-sql-driver/mysql
//! and go-redis v5; tests/fixtures/stacks/Shop.java on the PostgreSQL JDBC driver, and on
//! HikariCP + MariaDB Connector/J), built here from Debian's packages (golang-go,
//! golang-github-lib-pq-dev, golang-github-go-sql-driver-mysql-dev,
//! golang-gopkg-redis.v5-dev; default-jdk-headless, libpostgresql-jdbc-java,
//! libhikaricp-java, libmariadb-java, libslf4j-java; `cargo xtask setup` installs them) into
//! target/stacks/, once per test process. [`crate::shop`] runs them like every other shop.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

const GO_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/stacks/shop.go");
const JAVA_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/stacks/Shop.java");
/// Debian's libpostgresql-jdbc-java.
pub const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";
/// The jars Shop.java runs with, and their packages: the JDBC drivers, HikariCP, and the
/// slf4j it logs through (the no-op binding: its pool log is not the test's business).
const JARS: &[(&str, &str)] = &[
    (JDBC_JAR, "libpostgresql-jdbc-java"),
    ("/usr/share/java/HikariCP.jar", "libhikaricp-java"),
    ("/usr/share/java/mariadb-java-client.jar", "libmariadb-java"),
    ("/usr/share/java/slf4j-api.jar", "libslf4j-java"),
    ("/usr/share/java/slf4j-nop.jar", "libslf4j-java"),
];
/// Where Debian's golang-*-dev packages put Go sources (a GOPATH).
const GOPATH: &str = "/usr/share/gocode";

fn stacks_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/stacks"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

fn require(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} not found: the Debian package {package} is missing; `cargo xtask setup` \
         installs it (or: apt-get install -y --no-install-recommends {package})"
    );
}

fn run_build(what: &str, cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {what} ({cmd:?}): {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// target/stacks/go-shop, built from shop.go against Debian's Go client libraries (GOPATH
/// mode: the packages ship sources, not modules).
pub fn go_shop() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            require("/usr/bin/go", "golang-go");
            for (source, package) in [
                ("github.com/lib/pq", "golang-github-lib-pq-dev"),
                (
                    "github.com/go-sql-driver/mysql",
                    "golang-github-go-sql-driver-mysql-dev",
                ),
                ("gopkg.in/redis.v5", "golang-gopkg-redis.v5-dev"),
            ] {
                require(&format!("{GOPATH}/src/{source}"), package);
            }
            let dir = stacks_dir();
            let out = dir.join("go-shop");
            // Built under a name of this process's own, then renamed: test processes
            // running side by side never run a half-written binary.
            let tmp = dir.join(format!("go-shop.{}", std::process::id()));
            run_build(
                "go build",
                Command::new("/usr/bin/go")
                    .args(["build", "-o"])
                    .arg(&tmp)
                    .arg(GO_SOURCE)
                    .env("GO111MODULE", "off")
                    .env("GOPATH", GOPATH)
                    .env("GOCACHE", dir.join("gocache"))
                    .env("GOFLAGS", ""),
            );
            std::fs::rename(&tmp, &out).expect("rename go-shop");
            out
        })
        .clone()
}

/// The class path that runs Shop: its classes and [`JARS`].
pub fn java_classpath() -> String {
    let mut path = java_classes().display().to_string();
    for (jar, _) in JARS {
        path.push(':');
        path.push_str(jar);
    }
    path
}

/// target/stacks/java/ holding Shop.class, compiled against Debian's JDBC driver and
/// HikariCP.
fn java_classes() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            require("/usr/bin/javac", "default-jdk-headless");
            for (jar, package) in JARS {
                require(jar, package);
            }
            let dir = stacks_dir();
            let tmp = dir.join(format!("java.{}", std::process::id()));
            run_build(
                "javac",
                Command::new("/usr/bin/javac")
                    .arg("-nowarn")
                    .arg("-d")
                    .arg(&tmp)
                    .args(["-cp", &format!("{JDBC_JAR}:/usr/share/java/HikariCP.jar")])
                    .arg(JAVA_SOURCE),
            );
            let out = dir.join("java");
            let _ = std::fs::remove_dir_all(&out);
            // Another process may have renamed its own in between: either is the same class.
            if std::fs::rename(&tmp, &out).is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            out
        })
        .clone()
}

//! A private nginx from Debian's `nginx-light` (installed by `cargo xtask setup`): a master
//! and its workers on a free loopback port, proxying to the fixture's slow HTTP upstream
//! (`dw-fixture slow-http`). Its config, pid file, logs and temp paths live in a temp dir;
//! no system nginx is touched.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::{
    fixture_bin, free_loopback_addr,
    game::{mono_ns, Gate},
    wait_with_deadline, TempDir, PATIENCE,
};

const NGINX: &str = "/usr/sbin/nginx";

/// The children of a process now, from /proc/PID/stat's ppid (proc(5)).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// `dw-fixture slow-http`: answers every request after a delay; says when each one came in.
pub struct SlowUpstream {
    child: Child,
    pub port: u16,
    requests: mpsc::Receiver<()>,
}

impl SlowUpstream {
    /// Answers after `delay_ms`, once `gate` (if any) is open.
    pub fn start(delay_ms: u64, gate: Option<&Gate>) -> Self {
        let mut cmd = Command::new(fixture_bin());
        cmd.args(["slow-http", "--delay-ms", &delay_ms.to_string()]);
        if let Some(gate) = gate {
            cmd.arg("--gate").arg(gate.path());
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .expect("start dw-fixture slow-http");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read ready line");
        let port = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("port="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port= in {line:?}"));
        let (tx, requests) = mpsc::channel();
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if line == "request" && tx.send(()).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            port,
            requests,
        }
    }

    /// Waits until `n` more requests have reached the upstream (so they are in flight in
    /// nginx too).
    pub fn wait_requests(&self, n: usize) {
        for i in 0..n {
            self.requests
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|_| panic!("only {i} of {n} requests reached the upstream"));
        }
    }
}

/// `dw-fixture slow-line`: a service that keeps its connections and answers each line after
/// `delay_ms` (not while a hold file exists, with [`LineService::start_holding`]).
pub struct LineService {
    child: Child,
    pub port: u16,
}

impl LineService {
    pub fn start(delay_ms: u64) -> Self {
        Self::start_with(delay_ms, None)
    }

    pub fn start_holding(delay_ms: u64, hold: &str) -> Self {
        Self::start_with(delay_ms, Some(hold))
    }

    fn start_with(delay_ms: u64, hold: Option<&str>) -> Self {
        let mut cmd = Command::new(fixture_bin());
        cmd.args(["slow-line", "--delay-ms", &delay_ms.to_string()]);
        if let Some(hold) = hold {
            cmd.args(["--hold-while", hold]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .expect("start dw-fixture slow-line");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("ready line");
        let port = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("port="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port= in {line:?}"));
        Self { child, port }
    }
}

impl Drop for LineService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SlowUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private nginx: master + workers, `daemon off` so the master is this test's child.
pub struct Nginx {
    child: Child,
    pub master: u32,
    pub workers: Vec<u32>,
    pub port: u16,
    pub dir: TempDir,
}

impl Nginx {
    /// Starts nginx with `workers` worker processes, proxying everything to `upstream_port`,
    /// and waits until every worker runs and the port answers.
    pub fn start(upstream_port: u16, workers: usize) -> Self {
        assert!(
            std::path::Path::new(NGINX).exists(),
            "{NGINX} not found: run `cargo xtask setup` (it installs Debian's nginx-light)"
        );
        let dir = TempDir::new("nginx");
        let addr = free_loopback_addr();
        let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
        let d = dir.0.display();
        // HTTP/1.0 to the upstream and no keep-alive to clients: every connection closes
        // when its answer is sent, so the verdicts never depend on idle keep-alive
        // connections.
        let conf = format!(
            "daemon off;\n\
             master_process on;\n\
             worker_processes {workers};\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
               access_log off;\n\
               keepalive_timeout 0;\n\
               client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               server {{\n\
                 listen {addr};\n\
                 location / {{\n\
                   proxy_pass http://127.0.0.1:{upstream_port};\n\
                   proxy_read_timeout 60s;\n\
                 }}\n\
               }}\n\
             }}\n"
        );
        let conf_path = dir.path("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        // A worker runs as `nobody` when the master is root: it must reach its temp dir.
        let _ = Command::new("chmod").args(["755", &dir.path("")]).status();
        let mut child = Command::new(NGINX)
            .args([
                "-p",
                &dir.path(""),
                "-c",
                &conf_path,
                "-e",
                &dir.path("error.log"),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start nginx");
        let master = child.id();
        let deadline = Instant::now() + PATIENCE;
        let workers = loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.path("error.log")).unwrap_or_default();
                panic!("nginx exited at start ({status}): {log}");
            }
            let found = children_of(master);
            if found.len() == workers && TcpStream::connect(&addr).is_ok() {
                break found;
            }
            assert!(Instant::now() < deadline, "nginx did not start: {found:?}");
            thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            master,
            workers,
            port,
            dir,
        }
    }

    pub fn wait(&mut self) -> ExitStatus {
        wait_with_deadline(&mut self.child, PATIENCE).expect("nginx did not exit")
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master first: a live master replaces a worker that dies (a new one, unknown
        // here, would be orphaned). Its children are read before, while they are its.
        let mut workers = children_of(self.master);
        workers.extend(&self.workers);
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in workers {
            // SAFETY: kill(2) on processes this test started (nginx workers never exit
            // with their master).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// A request sent from its own thread: what came back, and when (CLOCK_MONOTONIC).
pub struct Pending {
    /// The client's own address: drainwatch's `peer` for the connection.
    pub local: String,
    done: thread::JoinHandle<(String, u64)>,
}

impl Pending {
    /// Connects and sends `GET path` (HTTP/1.0: one request per connection).
    pub fn get(port: u16, path: &str) -> Self {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
        let local = stream.local_addr().expect("local addr").to_string();
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).expect("send request");
        let done = thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(PATIENCE));
            let mut reply = Vec::new();
            let _ = stream.read_to_end(&mut reply);
            (String::from_utf8_lossy(&reply).into_owned(), mono_ns())
        });
        Self { local, done }
    }

    /// The whole reply (empty when the server cut the connection) and when it ended.
    pub fn reply(self) -> (String, u64) {
        self.done.join().expect("client thread")
    }
}

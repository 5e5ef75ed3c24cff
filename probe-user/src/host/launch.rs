//! `audit -- CMD`: start a command held at the start line until drainwatch has made it a
//! target, so that nothing it does, from its first instruction, goes unseen.
//!
//! std's `Command::spawn` waits for the exec to happen, so a child that waits for the
//! parent before exec would deadlock it; this is a plain fork + execv with two pipes: one
//! that releases the child, one (close-on-exec) that carries an exec failure back.

use std::{
    ffi::{CString, OsStr},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use crate::{Error, Result};

/// A command resolved before anything is attached: a missing program is a usage error.
#[derive(Clone, Debug)]
pub struct LaunchCommand {
    pub program: PathBuf,
    pub argv: Vec<String>,
}

impl LaunchCommand {
    pub fn resolve(argv: &[String]) -> Result<Self> {
        let name = argv.first().ok_or_else(|| Error::InvalidValue {
            what: "command",
            value: String::new(),
            hint: "give the command to launch after --",
        })?;
        let not_found = |why: &str| Error::Launch {
            cmd: argv.join(" "),
            cause: std::io::Error::new(std::io::ErrorKind::NotFound, why.to_string()),
        };
        let program = if name.contains('/') {
            let path = PathBuf::from(name);
            if !is_executable(&path) {
                return Err(not_found("no such executable file"));
            }
            path
        } else {
            std::env::var_os("PATH")
                .as_deref()
                .map(std::env::split_paths)
                .into_iter()
                .flatten()
                .map(|dir| dir.join(name))
                .find(|candidate| is_executable(candidate))
                .ok_or_else(|| not_found("not found in PATH"))?
        };
        Ok(Self {
            program,
            argv: argv.to_vec(),
        })
    }

    /// The comm the kernel will give it: the file name, cut to 15 bytes.
    pub fn comm(&self) -> String {
        let name = self.program.file_name().unwrap_or(OsStr::new("?"));
        String::from_utf8_lossy(&name.as_bytes()[..name.len().min(15)]).into_owned()
    }
}

fn is_executable(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access(2) with a valid C string.
    path.is_file() && unsafe { libc::access(c_path.as_ptr(), libc::X_OK) } == 0
}

/// A forked child waiting for [`Held::release`].
pub struct Held {
    pub pid: u32,
    release_fd: libc::c_int,
    error_fd: libc::c_int,
    cmd: String,
}

fn pipe_cloexec() -> std::io::Result<[libc::c_int; 2]> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fds)
}

pub fn spawn_held(command: &LaunchCommand) -> Result<Held> {
    let cmd = command.argv.join(" ");
    let launch_error = |cause| Error::Launch {
        cmd: cmd.clone(),
        cause,
    };
    // Everything the child needs is built before fork: after it, only async-signal-safe
    // calls (read, write, close, signal, execv, _exit).
    let program = CString::new(command.program.as_os_str().as_bytes())
        .map_err(|e| launch_error(std::io::Error::other(e)))?;
    let args: Vec<CString> = command
        .argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| launch_error(std::io::Error::other(e)))?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let [release_read, release_write] = pipe_cloexec().map_err(launch_error)?;
    let [error_read, error_write] = pipe_cloexec().map_err(launch_error)?;
    // SAFETY: fork(2); the child branch below only makes async-signal-safe calls.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(launch_error(std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: child side; all pointers were prepared before fork.
        unsafe {
            let mut byte = 0u8;
            if libc::read(release_read, (&mut byte as *mut u8).cast(), 1) != 1 {
                libc::_exit(127);
            }
            // Rust ignores SIGPIPE; a launched program expects the default, as with spawn().
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::execv(program.as_ptr(), argv.as_ptr());
            let errno = *libc::__errno_location();
            libc::write(error_write, (&errno as *const i32).cast(), 4);
            libc::_exit(127);
        }
    }
    // SAFETY: closing the child's ends in the parent.
    unsafe {
        libc::close(release_read);
        libc::close(error_write);
    }
    Ok(Held {
        pid: pid as u32,
        release_fd: release_write,
        error_fd: error_read,
        cmd,
    })
}

impl Held {
    /// Lets the child exec; returns the exec error if it could not.
    pub fn release(self) -> Result<u32> {
        let byte = 1u8;
        let mut errno = 0i32;
        // SAFETY: plain reads and writes on fds this struct owns; each is closed once.
        let got = unsafe {
            libc::write(self.release_fd, (&byte as *const u8).cast(), 1);
            libc::close(self.release_fd);
            let got = libc::read(self.error_fd, (&mut errno as *mut i32).cast(), 4);
            libc::close(self.error_fd);
            got
        };
        if got == 4 {
            reap(self.pid);
            return Err(Error::Launch {
                cmd: self.cmd,
                cause: std::io::Error::from_raw_os_error(errno),
            });
        }
        Ok(self.pid)
    }
}

/// Collects a launched child's exit status so it does not linger as a zombie.
pub fn reap(pid: u32) {
    // SAFETY: waitpid on our own child.
    unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_programs_on_path_and_refuses_missing_ones() {
        let sh = LaunchCommand::resolve(&["sh".into(), "-c".into(), "true".into()]).unwrap();
        assert!(sh.program.is_absolute());
        assert_eq!(sh.comm(), "sh");
        let err = LaunchCommand::resolve(&["no-such-program-dw".into()]).unwrap_err();
        assert!(err.to_string().contains("not found in PATH"), "{err}");
        let err = LaunchCommand::resolve(&["/nonexistent/x".into()]).unwrap_err();
        assert!(err.to_string().contains("no such executable"), "{err}");
    }

    #[test]
    fn a_held_child_runs_only_after_release() {
        let cmd = LaunchCommand::resolve(&["true".into()]).unwrap();
        let held = spawn_held(&cmd).unwrap();
        let pid = held.pid;
        let mut status = 0;
        // SAFETY: WNOHANG poll of our own child.
        let done = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
        assert_eq!(done, 0, "still held");
        assert_eq!(held.release().unwrap(), pid);
        // SAFETY: blocking wait on our own child.
        unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}

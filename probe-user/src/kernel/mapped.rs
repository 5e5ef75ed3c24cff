//! The files a process maps, as /proc/PID/maps names them (proc(5)), and where to open
//! each so that what is read and hooked is the very file the process runs: through the
//! process's own root (a target in a container maps files of its own), or, for a file
//! replaced on disk since it was mapped (a deploy renaming a new build over the path, a
//! library upgrade), through /proc/PID/map_files. The file then at the path is another
//! inode, whose uprobes the running process never hits: `--op` would see no operation and
//! the TLS hooks no conversation.

use std::path::PathBuf;

/// The kernel's d_path of a file deleted or renamed over says " (deleted)" after it.
const DELETED: &str = " (deleted)";

/// One line of /proc/PID/maps that maps a file (proc(5): `address perms offset dev inode
/// path`).
pub struct Mapping<'a> {
    range: &'a str,
    pub executable: bool,
    pub offset: u64,
    dev: &'a str,
    inode: u64,
    pub path: &'a str,
}

impl<'a> Mapping<'a> {
    pub fn parse(line: &'a str) -> Option<Self> {
        let mut fields = line.splitn(6, ' ');
        let (range, perms, offset, dev, inode) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        // The path is the rest of the line after the padding: it may hold spaces.
        let path = fields.next()?.trim_start();
        let path = path.strip_suffix(DELETED).unwrap_or(path);
        if !path.starts_with('/') {
            return None;
        }
        Some(Self {
            range,
            executable: perms.contains('x'),
            offset: u64::from_str_radix(offset, 16).ok()?,
            dev,
            inode: inode.parse().ok()?,
            path,
        })
    }

    pub fn bounds(&self) -> Option<(u64, u64)> {
        let (start, end) = self.range.split_once('-')?;
        let hex = |s: &str| u64::from_str_radix(s, 16).ok();
        Some((hex(start)?, hex(end)?))
    }

    /// Where to open the mapped file when it is no longer the one at its path: its
    /// /proc/PID/map_files/START-END link opens the mapped file itself, deleted or not
    /// (root only; proc(5)), and a uprobe attached through it lands on that file's inode,
    /// the one the process runs. `None` while the file at its path is the mapped one.
    pub fn replaced(&self, tgid: u32) -> Option<PathBuf> {
        if self.is_at_its_path(tgid) {
            return None;
        }
        // Named by the bounds without /proc/PID/maps' zero padding (`%08lx`): a non-PIE
        // executable at 0x400000 is `00400000-…` there and `400000-…` here (fs/proc/base.c,
        // `map_files_readdir`'s "%lx-%lx").
        let (start, end) = self.bounds()?;
        let own = format!("/proc/{tgid}/map_files/{start:x}-{end:x}");
        log::debug!(
            "{} (pid {tgid}) was replaced on disk: read as {own}",
            self.path
        );
        Some(PathBuf::from(own))
    }

    /// Whether the file at its path (in the process's root) is still the mapped one: same
    /// device and inode. A file gone from its path, or another file there, is not.
    fn is_at_its_path(&self, tgid: u32) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(format!("/proc/{tgid}/root{}", self.path)) else {
            return false;
        };
        let Some((major, minor)) = self.dev.split_once(':') else {
            return true;
        };
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let same_dev = match (hex(major), hex(minor)) {
            (Some(major), Some(minor)) => {
                libc::major(meta.dev()) == major && libc::minor(meta.dev()) == minor
            }
            _ => true,
        };
        // An overlay (a container's root) may show another device or inode here than the
        // mapping's; reading through map_files is right for those too, only named longer.
        same_dev && meta.ino() == self.inode
    }
}

/// `path` as process `tgid` maps it, opened through the process's own root.
pub fn in_process(tgid: u32, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{tgid}/root{path}"))
}

/// The executable of `tgid`, by the path it was run from (without " (deleted)").
pub fn exe_of(tgid: u32) -> Option<String> {
    let link = std::fs::read_link(format!("/proc/{tgid}/exe")).ok()?;
    let link = link.to_string_lossy();
    Some(link.strip_suffix(DELETED).unwrap_or(&link).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_maps_line_keeps_a_path_with_spaces_and_drops_deleted() {
        let line =
            "7f00-7f80 r-xp 00001000 fd:01 123456                     /srv/my game/bin (deleted)";
        let m = Mapping::parse(line).expect("a file mapping");
        assert_eq!(m.path, "/srv/my game/bin");
        assert_eq!(
            (m.range, m.offset, m.dev, m.inode),
            ("7f00-7f80", 0x1000, "fd:01", 123456)
        );
        assert!(m.executable);
        assert_eq!(m.bounds(), Some((0x7f00, 0x7f80)));
        // A non-PIE executable's padded range names its map_files link unpadded.
        let low =
            Mapping::parse("00400000-00452000 r-xp 00000000 fd:01 7 /nonexistent/game").unwrap();
        assert_eq!(
            low.replaced(1),
            Some(PathBuf::from("/proc/1/map_files/400000-452000"))
        );
        // Anonymous and special mappings are no files.
        assert!(
            Mapping::parse("7ffd0000-7ffe0000 rw-p 00000000 00:00 0                  [stack]")
                .is_none()
        );
        assert!(Mapping::parse("7ffd0000-7ffe0000 rw-p 00000000 00:00 0 ").is_none());
    }

    #[test]
    fn a_file_still_at_its_path_is_read_there_a_replaced_one_through_map_files() {
        let me = std::process::id();
        let exe = exe_of(me).expect("our executable");
        let line = format!("1000-2000 r-xp 00000000 00:00 1 {exe}");
        let wrong_inode = Mapping::parse(&line).unwrap();
        assert!(!wrong_inode.is_at_its_path(me));
        let gone =
            Mapping::parse("1000-2000 r-xp 00000000 fd:01 7 /nonexistent/drainwatch").unwrap();
        assert!(!gone.is_at_its_path(me));
        // Our own executable is still at its path.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let ours = maps
            .lines()
            .filter_map(Mapping::parse)
            .find(|m| m.path == exe)
            .expect("our executable is mapped");
        assert_eq!(ours.replaced(me), None);
    }
}

//! `/proc/PID/maps` parsing.
//!
//! A line looks like
//! `7f1c2a000000-7f1c2a021000 r-xp 00002000 fd:01 1234567   /usr/lib/libc.so.6`
//! and the path may contain spaces or end in ` (deleted)`.

/// One mapping of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub readable: bool,
    pub executable: bool,
    /// Offset in the file of `start`.
    pub offset: u64,
    /// Device major and minor of the backing file, 0:0 for anonymous memory.
    pub dev: (u32, u32),
    pub inode: u64,
    /// The path as the process sees it (or `[vdso]`, `[stack]`...), without
    /// a ` (deleted)` suffix. `None` for anonymous memory.
    pub path: Option<String>,
    /// The file was deleted (or replaced) after it was mapped.
    pub deleted: bool,
}

impl MapEntry {
    /// A mapping of a regular file (not anonymous, not `[vdso]`/`[heap]`).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.as_deref().is_some_and(|p| p.starts_with('/'))
    }

    /// Whether `addr` falls inside this mapping.
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// The file offset of a runtime address inside this mapping.
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr.wrapping_sub(self.start).wrapping_add(self.offset)
    }
}

/// Parses a whole maps file; malformed lines are skipped, not fatal, since
/// the kernel format is fixed and a bad line can only mean a truncated read.
pub fn parse(text: &str) -> Vec<MapEntry> {
    let mut v: Vec<MapEntry> = text.lines().filter_map(parse_line).collect();
    v.sort_by_key(|m| m.start);
    v
}

/// Parses one line, or `None` if it is malformed.
pub fn parse_line(line: &str) -> Option<MapEntry> {
    let mut rest = line;
    let mut field = || -> Option<&str> {
        let t = rest.trim_start_matches(' ');
        let end = t.find(' ').unwrap_or(t.len());
        let (f, r) = t.split_at(end);
        rest = r;
        (!f.is_empty()).then_some(f)
    };
    let range = field()?;
    let perms = field()?;
    let offset = field()?;
    let dev = field()?;
    let inode = field()?;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    if end < start || perms.len() < 4 {
        return None;
    }
    let perms = perms.as_bytes();
    let (major, minor) = dev.split_once(':')?;
    let path = rest.trim_start_matches(' ');
    let (path, deleted) = match path.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (path, false),
    };
    Some(MapEntry {
        start,
        end,
        readable: perms[0] == b'r',
        executable: perms[2] == b'x',
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: (
            u32::from_str_radix(major, 16).ok()?,
            u32::from_str_radix(minor, 16).ok()?,
        ),
        inode: inode.parse().ok()?,
        path: (!path.is_empty()).then(|| path.to_owned()),
        deleted,
    })
}

/// The mapping containing `addr` in a list sorted by start.
pub fn find(maps: &[MapEntry], addr: u64) -> Option<&MapEntry> {
    let i = maps.partition_point(|m| m.start <= addr);
    let m = maps.get(i.checked_sub(1)?)?;
    m.contains(addr).then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_anon_special_and_deleted() {
        let text = "\
00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dbus-daemon
7f1c2a000000-7f1c2a021000 rw-p 00000000 00:00 0
7ffd5a3e8000-7ffd5a3ea000 r-xp 00000000 00:00 0                          [vdso]
7f00deadb000-7f00deadc000 r-xp 00001000 fd:01 42 /tmp/my dir/a.out (deleted)
garbage line
";
        let m = parse(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].start, 0x400000);
        assert_eq!(m[0].end, 0x452000);
        assert!(m[0].executable && m[0].is_file());
        assert_eq!(m[0].dev, (8, 2));
        assert_eq!(m[0].path.as_deref(), Some("/usr/bin/dbus-daemon"));
        let deleted = m.iter().find(|e| e.inode == 42).unwrap();
        assert!(deleted.deleted);
        assert_eq!(deleted.path.as_deref(), Some("/tmp/my dir/a.out"));
        assert_eq!(deleted.offset, 0x1000);
        assert_eq!(deleted.dev, (0xfd, 1));
        let vdso = m
            .iter()
            .find(|e| e.path.as_deref() == Some("[vdso]"))
            .unwrap();
        assert!(!vdso.is_file());
        let anon = m.iter().find(|e| e.path.is_none()).unwrap();
        assert!(!anon.executable);
    }

    #[test]
    fn find_uses_half_open_ranges() {
        let m = parse("1000-2000 r-xp 00000000 00:00 0\n3000-4000 r-xp 00000000 00:00 0\n");
        assert_eq!(find(&m, 0x1000).map(|e| e.start), Some(0x1000));
        assert_eq!(find(&m, 0x1fff).map(|e| e.start), Some(0x1000));
        assert!(find(&m, 0x2000).is_none());
        assert!(find(&m, 0x500).is_none());
        assert_eq!(find(&m, 0x3abc).map(|e| e.start), Some(0x3000));
        assert_eq!(m[1].file_offset(0x3abc), 0xabc);
    }

    #[test]
    fn malformed_lines_never_panic() {
        for l in [
            "",
            "-",
            "1-2",
            "2-1 r-xp 0 0:0 0",
            "1-2 r 0 0:0 0",
            "zz-1 r-xp 0 0:0 0 /x",
            "1-2 r-xp 0 00 0",
        ] {
            assert!(parse_line(l).is_none(), "{l:?}");
        }
    }
}

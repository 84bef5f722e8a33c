//! What we know of a process: its mappings over time, its binaries, its
//! names.
//!
//! Mappings come from the kernel's process events as they happen
//! ([`events`], applied by [`ProcessTable::apply`]), so each one carries the
//! time from which it was valid and, once replaced (an `exec`, a library
//! reloaded at the same address), until when ([`history`]). Processes that
//! were running before the capture started are read from `/proc/PID/maps`
//! at first sight instead.
//!
//! Binaries are opened once per file, through `/proc/PID/map_files/`
//! while the process lives (falling back to `/proc/PID/root/PATH`), or by
//! path once it is gone, checked to be the very inode that was mapped.
//! Holding the open file means symbolization still works after the
//! process exits, after the file is deleted, and across mount namespaces.

pub mod buildid;
pub mod container;
pub mod events;
pub mod exits;
pub mod history;
pub mod maps;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use buildid::BuildIds;
pub use maps::MapEntry;

/// Identity of a file on this machine: device and inode as `/proc/PID/maps`
/// reports them. Two processes mapping the same library share one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BinaryKey {
    pub dev: (u32, u32),
    pub inode: u64,
}

/// An executable file mapped by some process, opened and kept open.
pub struct Binary {
    pub key: BinaryKey,
    /// The path as the first process that mapped it saw it.
    pub path: String,
    /// The open file. `None` if it could not be opened (the process was
    /// gone, or we lack access); its frames stay unnamed then.
    pub file: Option<File>,
    /// The file's bytes, mapped read-only.
    pub data: Option<Arc<memmap2::Mmap>>,
    pub build_ids: BuildIds,
    /// Content hash, computed on first use and only for files without a
    /// build ID.
    content_hash: std::sync::OnceLock<Option<String>>,
}

impl std::fmt::Debug for Binary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binary")
            .field("key", &self.key)
            .field("path", &self.path)
            .field("open", &self.file.is_some())
            .finish()
    }
}

impl Binary {
    /// Opens the file behind `entry` of process `pid`.
    fn open(pid: u32, entry: &MapEntry, key: BinaryKey) -> Binary {
        Binary::from_file(entry, key, open_mapped_file(pid, entry))
    }

    fn from_file(entry: &MapEntry, key: BinaryKey, file: Option<File>) -> Binary {
        let path = entry.path.clone().unwrap_or_default();
        // SAFETY: the mapping is read-only and private. Another process
        // truncating the file could fault us (SIGBUS); that is the accepted
        // cost of not copying whole binaries, and what every symbolizer
        // (blazesym included) does.
        let data = file
            .as_ref()
            .and_then(|f| unsafe { memmap2::Mmap::map(f) }.ok())
            .map(Arc::new);
        let build_ids = data
            .as_deref()
            .map(|d| buildid::read(d))
            .unwrap_or_default();
        Binary {
            key,
            path,
            file,
            data,
            build_ids,
            content_hash: std::sync::OnceLock::new(),
        }
    }

    /// Opens the file behind a mapping an event reported: through
    /// `map_files` while the process lives, else by path (in its root while
    /// it lives, on the host once gone), checked to be the mapped inode.
    /// `None` if nothing that is that file could be opened: its frames stay
    /// unnamed, never misnamed.
    fn open_checked(pid: u32, entry: &MapEntry, key: BinaryKey) -> Option<Binary> {
        let mf = format!("/proc/{pid}/map_files/{:x}-{:x}", entry.start, entry.end);
        let file = match File::open(&mf) {
            Ok(f) => f,
            Err(_) => {
                let path = entry.path.as_deref()?;
                let rooted =
                    Path::new(&format!("/proc/{pid}/root")).join(path.trim_start_matches('/'));
                let f = File::open(rooted).or_else(|_| File::open(path)).ok()?;
                is_inode(&f, key).then_some(f)?
            }
        };
        Some(Binary::from_file(entry, key, Some(file)))
    }

    /// What identifies the file for offline symbolization: the GNU build
    /// ID, else the Go build ID, else a content hash of the file (see
    /// [`buildid::identity`]). `None` only if the file could not be read.
    pub fn identity(&self) -> Option<&str> {
        if let Some(id) = self.build_ids.preferred() {
            return Some(id);
        }
        self.content_hash
            .get_or_init(|| match &self.file {
                // Read, not through `data`: see content_hash_of_file.
                Some(f) => buildid::content_hash_of_file(f).ok(),
                None => self.data.as_deref().map(|d| buildid::content_hash(d)),
            })
            .as_deref()
    }

    /// A path that reaches the open file from this process for as long as
    /// we live, whatever happens to the original path or process.
    pub fn fd_path(&self) -> Option<PathBuf> {
        use std::os::fd::AsRawFd;
        let f = self.file.as_ref()?;
        Some(PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())))
    }

    /// The basename of the path the process used.
    pub fn basename(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// `/proc/PID/map_files/START-END` sees the very inode that is mapped, even
/// if deleted or in another mount namespace; `/proc/PID/root/PATH` is the
/// fallback for kernels or setups where map_files is not readable.
fn open_mapped_file(pid: u32, entry: &MapEntry) -> Option<File> {
    let mf = format!("/proc/{pid}/map_files/{:x}-{:x}", entry.start, entry.end);
    if let Ok(f) = File::open(&mf) {
        return Some(f);
    }
    let path = entry.path.as_deref()?;
    let rooted = Path::new(&format!("/proc/{pid}/root")).join(path.trim_start_matches('/'));
    File::open(rooted).ok()
}

/// Whether an open file is the inode `key` names (device numbers as
/// `/proc/PID/maps` and MMAP2 records print them).
fn is_inode(f: &File, key: BinaryKey) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = f.metadata() else {
        return false;
    };
    let dev = m.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    m.ino() == key.inode && (major, minor) == key.dev
}

/// One process as last seen.
pub struct Process {
    pub pid: u32,
    /// Process name (`/proc/PID/comm`, i.e. the main thread's name).
    pub comm: String,
    /// Resolved executable path (`/proc/PID/exe`), if readable.
    pub exe: Option<PathBuf>,
    /// Executable mappings, sorted by start address.
    pub maps: Vec<MapEntry>,
    /// The binary behind each file-backed executable mapping, by its start.
    pub binaries: HashMap<u64, Arc<Binary>>,
    /// The mappings' validity over time (see [`history`]).
    pub history: history::Timeline,
    /// When the process was forked (CLOCK_MONOTONIC ns), if a fork event
    /// said so; 0 for processes older than the capture.
    pub born_ns: u64,
    /// When it exited, if an exit event said so; `u64::MAX` until then.
    pub exit_ns: u64,
    last_refresh: Instant,
}

impl Process {
    /// The mapping containing `addr` and its binary, if any.
    pub fn find(&self, addr: u64) -> Option<(&MapEntry, Option<&Arc<Binary>>)> {
        let m = maps::find(&self.maps, addr)?;
        Some((m, self.binaries.get(&m.start)))
    }
}

/// Every process seen during a capture, and every binary they map.
#[derive(Default)]
pub struct ProcessTable {
    /// The current life of each pid.
    procs: HashMap<u32, Process>,
    /// Earlier lives of pids that were reused, kept while their samples
    /// may still come.
    gone: Vec<Process>,
    binaries: HashMap<BinaryKey, Arc<Binary>>,
    /// The pids whose events are followed; `None`: all.
    track: Option<std::collections::HashSet<u32>>,
}

/// How often one process's maps may be re-read when addresses miss: a
/// process whose samples keep missing (JIT code, say) must not make us
/// re-read its maps on every sample.
const REFRESH_INTERVAL: Duration = Duration::from_millis(200);

impl ProcessTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// The process, snapshotting it on first sight. `None` if it is gone
    /// before we could read anything.
    pub fn observe(&mut self, pid: u32) -> Option<&Process> {
        if !self.procs.contains_key(&pid) {
            let p = self.snapshot(pid)?;
            self.procs.insert(pid, p);
        }
        self.procs.get(&pid)
    }

    /// Re-reads the maps of `pid` because an address fell outside all of
    /// them (a dlopen, an exec, a new JIT region). Rate limited per process.
    /// Returns true when the maps were re-read.
    pub fn refresh(&mut self, pid: u32) -> bool {
        let due = self
            .procs
            .get(&pid)
            .is_none_or(|p| p.last_refresh.elapsed() >= REFRESH_INTERVAL);
        if !due {
            return false;
        }
        if let Some(mut fresh) = self.snapshot(pid) {
            // Keep binaries of mappings that are gone: samples taken before
            // an exec or dlclose still point into them.
            if let Some(old) = self.procs.remove(&pid) {
                fresh.history = old.history;
                fresh.history.gen += 1;
                fresh.born_ns = old.born_ns;
                fresh.exit_ns = old.exit_ns;
                for m in old.maps {
                    let overlaps = fresh
                        .maps
                        .iter()
                        .any(|f| f.start < m.end && m.start < f.end);
                    if !overlaps {
                        if let Some(b) = old.binaries.get(&m.start) {
                            fresh.binaries.insert(m.start, b.clone());
                        }
                        fresh.maps.push(m);
                    }
                }
                fresh.maps.sort_by_key(|m| m.start);
            }
            self.procs.insert(pid, fresh);
            true
        } else {
            if let Some(p) = self.procs.get_mut(&pid) {
                p.last_refresh = Instant::now();
            }
            false
        }
    }

    /// A process seen earlier.
    pub fn get(&self, pid: u32) -> Option<&Process> {
        self.procs.get(&pid)
    }

    /// All processes seen.
    pub fn processes(&self) -> impl Iterator<Item = &Process> {
        self.procs.values()
    }

    /// Forgets a process (it exited, or its pid now names another process)
    /// and hands back what we knew about it. Its binaries stay in the table
    /// until [`ProcessTable::prune_binaries`]. For long-running callers (the
    /// node agent), so that a reused pid is snapshotted afresh and memory
    /// does not grow with every process that ever ran.
    pub fn remove(&mut self, pid: u32) -> Option<Process> {
        self.procs.remove(&pid)
    }

    /// Takes the binaries that no process in the table (and no one else)
    /// still holds out of the table, unless `keep` says to keep one a
    /// while longer. The caller decides when to drop them (and so close
    /// them): anything that knows a binary by its `/proc/self/fd/N` path
    /// must forget it first, since the fd number goes to the next file
    /// opened.
    pub fn prune_binaries(&mut self, mut keep: impl FnMut(&BinaryKey) -> bool) -> Vec<Arc<Binary>> {
        let dead: Vec<BinaryKey> = self
            .binaries
            .iter()
            .filter(|(k, b)| Arc::strong_count(b) == 1 && !keep(k))
            .map(|(k, _)| *k)
            .collect();
        dead.iter()
            .filter_map(|k| self.binaries.remove(k))
            .collect()
    }

    /// How many binaries are open.
    pub fn binary_count(&self) -> usize {
        self.binaries.len()
    }

    fn snapshot(&mut self, pid: u32) -> Option<Process> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        let maps: Vec<MapEntry> = maps::parse(&text)
            .into_iter()
            .filter(|m| m.executable)
            .collect();
        let mut binaries = HashMap::new();
        for m in maps.iter().filter(|m| m.is_file()) {
            let key = BinaryKey {
                dev: m.dev,
                inode: m.inode,
            };
            let b = self
                .binaries
                .entry(key)
                .or_insert_with(|| Arc::new(Binary::open(pid, m, key)))
                .clone();
            binaries.insert(m.start, b);
        }
        Some(Process {
            pid,
            comm: read_comm(pid).unwrap_or_default(),
            exe: std::fs::read_link(format!("/proc/{pid}/exe")).ok(),
            maps,
            binaries,
            history: history::Timeline::default(),
            born_ns: 0,
            exit_ns: u64::MAX,
            last_refresh: Instant::now(),
        })
    }

    /// Which processes' events are followed: every one for a system-wide
    /// capture, the targets for `--pid`.
    pub fn track_only(&mut self, pids: &[u32]) {
        self.track = Some(pids.iter().copied().collect());
    }

    fn tracked(&self, pid: u32) -> bool {
        self.track.as_ref().is_none_or(|t| t.contains(&pid))
    }

    /// Applies one of the kernel's process events (see [`events`]).
    pub fn apply(&mut self, e: &events::ProcEvent) {
        use events::ProcEvent;
        match e {
            ProcEvent::Fork {
                pid,
                ppid,
                tid,
                time_ns,
            } if pid == tid && self.tracked(*pid) => {
                if let Some(mut old) = self.procs.remove(pid) {
                    old.exit_ns = old.exit_ns.min(*time_ns);
                    self.gone.push(old);
                }
                let child = match self.observe(*ppid) {
                    Some(parent) => Process::forked(parent, *pid, *time_ns),
                    None => Process::born(*pid, "", *time_ns),
                };
                self.procs.insert(*pid, child);
            }
            ProcEvent::Exit { pid, tid, time_ns } if pid == tid => {
                if let Some(p) = self.procs.get_mut(pid) {
                    p.exit_ns = p.exit_ns.min(*time_ns);
                }
            }
            ProcEvent::Comm {
                pid,
                comm,
                exec: true,
                time_ns,
                ..
            } if self.tracked(*pid) => {
                self.procs
                    .entry(*pid)
                    .or_insert_with(|| Process::born(*pid, comm, 0))
                    .exec_at(comm, *time_ns);
            }
            ProcEvent::Mmap(m) if self.tracked(m.pid) => self.map(m),
            _ => {}
        }
    }

    fn map(&mut self, m: &events::Mmap) {
        let entry = MapEntry {
            start: m.start,
            end: m.start.saturating_add(m.len),
            readable: true,
            executable: true,
            offset: m.pgoff,
            dev: m.dev,
            inode: m.inode,
            path: (!m.path.is_empty()).then(|| m.path.clone()),
            deleted: false,
        };
        let binary = entry
            .is_file()
            .then(|| self.open_mapped(m.pid, &entry))
            .flatten();
        // A process older than the capture that maps a library now: what
        // /proc shows already includes it, which the event then confirms.
        if !self.procs.contains_key(&m.pid) && self.observe(m.pid).is_none() {
            self.procs.insert(m.pid, Process::born(m.pid, "", 0));
        }
        if let Some(p) = self.procs.get_mut(&m.pid) {
            p.map_at(entry, binary, m.time_ns);
        }
    }

    /// The binary behind a mapping an event reported: one already open
    /// for that device and inode, else opened now. A file reached by path
    /// (the process is gone) is used only if it is that very inode.
    fn open_mapped(&mut self, pid: u32, entry: &MapEntry) -> Option<Arc<Binary>> {
        let key = BinaryKey {
            dev: entry.dev,
            inode: entry.inode,
        };
        if let Some(b) = self.binaries.get(&key) {
            return Some(b.clone());
        }
        let b = Binary::open_checked(pid, entry, key)?;
        let b = Arc::new(b);
        self.binaries.insert(key, b.clone());
        Some(b)
    }

    /// The process `pid` was at time `t`: its life that began before `t`
    /// (a pid is reused only after its last owner exited).
    pub fn at(&self, pid: u32, t: u64) -> Option<&Process> {
        match self.procs.get(&pid) {
            Some(p) if p.born_ns <= t => Some(p),
            _ => self
                .gone
                .iter()
                .rev()
                .find(|p| p.pid == pid && p.born_ns <= t && t < p.exit_ns),
        }
    }

    /// Says that the process `pid` born at `born_ns` exited by `t` (its
    /// pidfd said so), so that it is forgotten in time.
    pub fn exited(&mut self, pid: u32, born_ns: u64, t: u64) {
        let mark = |p: &mut Process| {
            if p.pid == pid && p.born_ns == born_ns {
                p.exit_ns = p.exit_ns.min(t);
            }
        };
        if let Some(p) = self.procs.get_mut(&pid) {
            mark(p);
        }
        self.gone.iter_mut().for_each(mark);
    }

    /// Forgets what no sample can still need: processes that exited, and
    /// mappings that stopped applying, before `before_ns`.
    pub fn prune(&mut self, before_ns: u64) {
        let dead: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, p)| p.exit_ns < before_ns)
            .map(|(&pid, _)| pid)
            .collect();
        for pid in dead {
            self.procs.remove(&pid);
        }
        self.gone.retain(|p| p.exit_ns >= before_ns);
        for p in self.procs.values_mut().chain(self.gone.iter_mut()) {
            p.prune_ended(before_ns);
        }
    }
}

/// Every binary of every profiled process stays open until symbolization
/// (so that exited and deleted binaries can still be named): a system-wide
/// capture or the node agent can need more descriptors than the usual soft
/// limit of 1024, so take the hard limit.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// `/proc/PID/comm` without its newline.
pub fn read_comm(pid: u32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(s.trim_end_matches('\n').to_owned())
}

/// Whether a process with this pid exists now.
pub fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether the process is running: it exists and is not a zombie waiting
/// to be reaped.
pub fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X" | "x") | None)
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat`
/// field 22): with the pid, what identifies it across pid reuse.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Total CPU time (user + system) a process has used so far, from
/// `/proc/PID/stat`, in clock ticks converted to seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field is parenthesized and may contain spaces: skip past it.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ")" come state (field 3) ... utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some((utime + stime) as f64 / ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observes_self_with_named_executable_mapping() {
        let pid = std::process::id();
        let mut t = ProcessTable::new();
        let p = t.observe(pid).expect("own process is visible");
        assert!(!p.comm.is_empty());
        // Our own code is in an executable, file-backed mapping.
        let here = observes_self_with_named_executable_mapping as *const () as u64;
        let (m, bin) = p.find(here).expect("own code is mapped");
        assert!(m.executable);
        let bin = bin.expect("binary opened");
        assert!(bin.data.is_some());
        assert!(bin.build_ids.gnu.is_some());
    }

    #[test]
    fn missing_process_is_none() {
        let mut t = ProcessTable::new();
        assert!(t.observe(u32::MAX - 1).is_none());
        assert!(!exists(u32::MAX - 1));
        assert!(cpu_seconds(std::process::id()).is_some());
    }
}

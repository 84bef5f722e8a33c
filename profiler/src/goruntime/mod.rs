//! Go runtime profiles of any Go process, read from outside: heap, allocs,
//! mutex, block (from the runtime's profile buckets) and goroutines (from
//! `allgs`), with no port, no code change and no toolchain in the target.
//!
//! How: the runtime already keeps these profiles in its own memory. We find
//! its variables (`runtime.mbuckets`, `allgs`, ...) in the executable, by
//! `.symtab` when present and else through the RIP-relative operands of the
//! runtime functions that use them (`.gopclntab` names functions even in
//! stripped binaries), validate each by reading it, and read the data with
//! `process_vm_readv`. The result is encoded as Go's `net/http/pprof`
//! writes it, so `go tool pprof` sees the same profile the process would
//! have served.
//!
//! Module map: `memory` (process_vm_readv/writev), `version` (Go release),
//! `x86` (RIP-relative operands), `vars` (finding runtime variables),
//! `layout` (struct offsets: DWARF, else a table by release), `mprof` (the
//! profile buckets), `heap` and `contention` (their pprof encodings),
//! `symbols` (PCs to pprof locations), `goroutines` (allgs walk and
//! unwinding), `freeze` (ptrace stop/resume of all threads), `cli`.

pub mod cli;
mod contention;
mod freeze;
mod goroutines;
mod heap;
mod layout;
mod memory;
mod mprof;
mod symbols;
mod vars;
mod version;
mod x86;

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

pub use layout::{runtime_layout, Layout, RuntimeLayout};
pub use memory::MemError;
pub use version::GoVersion;

use crate::symbolize::go::GoTable;
use memory::Memory;

/// Why a Go runtime profile could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GoRuntimeError {
    #[error("no process with pid {pid}")]
    NoProcess { pid: u32 },
    #[error("cannot read process {pid} ({what}): {source}; run as root or with CAP_SYS_PTRACE")]
    Access {
        pid: u32,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("process {pid} ({exe}) is not a Go program (its executable has no Go pclntab)")]
    NotGo { pid: u32, exe: String },
    #[error("process {pid} ({exe}): cannot read its Go symbol table: {detail}")]
    BadTable {
        pid: u32,
        exe: String,
        detail: String,
    },
    #[error("process {pid} ({exe}): no Go version found in its executable (.go.buildinfo)")]
    NoVersion { pid: u32, exe: String },
    #[error(
        "process {pid} ({exe}) runs {version}, which this build does not support \
         (supported: go1.{lo} to go1.{hi}); refusing to guess its runtime layout"
    )]
    UnsupportedVersion {
        pid: u32,
        exe: String,
        version: String,
        lo: u32,
        hi: u32,
    },
    #[error("process {pid} ({exe}): cannot find {what} in the executable: {detail}")]
    NotFound {
        pid: u32,
        exe: String,
        what: &'static str,
        detail: String,
    },
    #[error("process {pid} ({exe}): {what} failed validation: {detail}")]
    Invalid {
        pid: u32,
        exe: String,
        what: &'static str,
        detail: String,
    },
    #[error("process {pid} ({exe}): {what}")]
    Disabled { pid: u32, exe: String, what: String },
    #[error("process {pid}: cannot freeze its threads: {detail}")]
    Freeze { pid: u32, detail: String },
    #[error(transparent)]
    Memory(#[from] MemError),
}

impl GoRuntimeError {
    /// Whether the request itself was wrong (exit code 2): no such process,
    /// or not a Go program.
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::NoProcess { .. } | Self::NotGo { .. })
    }
}

/// One Go process, opened for reading its runtime data.
pub(crate) struct GoProcess {
    pub pid: u32,
    /// The executable's path as the process sees it.
    pub exe: String,
    pub table: Arc<GoTable>,
    pub version: GoVersion,
    pub version_string: String,
    /// Runtime address minus link-time address of the executable.
    pub bias: u64,
    /// The executable's mapping (for the pprof Mapping).
    pub mapping: ExeMapping,
    pub mem: Memory,
    /// The executable's bytes (DWARF and `.symtab`, when present).
    pub data: Arc<memmap2::Mmap>,
}

/// Where the executable's text is mapped.
#[derive(Clone, Debug)]
pub(crate) struct ExeMapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub build_id: String,
}

impl GoProcess {
    /// Opens `pid`: its executable, Go version and load bias. Everything
    /// that can be refused is refused here, before any runtime data is read.
    pub(crate) fn open(pid: u32) -> Result<GoProcess, GoRuntimeError> {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        if !proc_dir.exists() {
            return Err(GoRuntimeError::NoProcess { pid });
        }
        let access = |what: &str, source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::NotFound {
                GoRuntimeError::NoProcess { pid }
            } else {
                GoRuntimeError::Access {
                    pid,
                    what: what.to_owned(),
                    source,
                }
            }
        };
        let exe = std::fs::read_link(proc_dir.join("exe"))
            .map_err(|e| access("/proc/PID/exe", e))?
            .to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_owned();
        let file = File::open(proc_dir.join("exe")).map_err(|e| access("its executable", e))?;
        let inode = file
            .metadata()
            .map_err(|e| access("its executable", e))?
            .ino();
        // SAFETY: a private read-only mapping; see process::Binary::open.
        let data = Arc::new(
            unsafe { memmap2::Mmap::map(&file) }.map_err(|e| access("its executable", e))?,
        );
        let table = match GoTable::parse_mapped(data.clone()) {
            Ok(Some(t)) => Arc::new(t),
            Ok(None) => return Err(GoRuntimeError::NotGo { pid, exe }),
            Err(e) => {
                return Err(GoRuntimeError::BadTable {
                    pid,
                    exe,
                    detail: e.to_string(),
                })
            }
        };
        let version_string = table
            .go_version()
            .ok_or_else(|| GoRuntimeError::NoVersion {
                pid,
                exe: exe.clone(),
            })?
            .to_owned();
        let version = GoVersion::parse(&version_string)
            .filter(|v| v.is_supported())
            .ok_or_else(|| GoRuntimeError::UnsupportedVersion {
                pid,
                exe: exe.clone(),
                version: version_string.clone(),
                lo: *version::SUPPORTED.start(),
                hi: *version::SUPPORTED.end(),
            })?;
        let maps = std::fs::read_to_string(proc_dir.join("maps"))
            .map_err(|e| access("/proc/PID/maps", e))?;
        let entries = crate::process::maps::parse(&maps);
        let mine: Vec<_> = entries.iter().filter(|m| m.inode == inode).collect();
        let first = mine.first().ok_or_else(|| GoRuntimeError::NotFound {
            pid,
            exe: exe.clone(),
            what: "the executable's mapping",
            detail: "no mapping of its inode in /proc/PID/maps".into(),
        })?;
        let link = table
            .vaddr_of_offset(first.offset)
            .ok_or_else(|| GoRuntimeError::NotFound {
                pid,
                exe: exe.clone(),
                what: "the executable's load address",
                detail: format!("no segment covers file offset {:#x}", first.offset),
            })?;
        let bias = first.start.wrapping_sub(link);
        let text = mine.iter().find(|m| m.executable).unwrap_or(first);
        // The GNU build ID when there is one, as Go's own profiles and our
        // CPU profiles name the mapping; else the Go build ID.
        let build_id = crate::process::buildid::read(&data)
            .preferred()
            .map(str::to_owned)
            .unwrap_or_default();
        let mapping = ExeMapping {
            start: text.start,
            end: text.end,
            offset: text.offset,
            build_id,
        };
        Ok(GoProcess {
            pid,
            exe,
            table,
            version,
            version_string,
            bias,
            mapping,
            mem: Memory::new(pid),
            data,
        })
    }

    /// A process-less view of an executable, for tests of the code rules.
    #[cfg(test)]
    pub(crate) fn from_file(path: &std::path::Path) -> GoProcess {
        let file = File::open(path).unwrap();
        // SAFETY: test-only, a private read-only mapping of a fixture.
        let data = Arc::new(unsafe { memmap2::Mmap::map(&file) }.unwrap());
        let table = Arc::new(GoTable::parse_mapped(data.clone()).unwrap().unwrap());
        let version_string = table.go_version().unwrap().to_owned();
        GoProcess {
            pid: 0,
            exe: path.display().to_string(),
            version: GoVersion::parse(&version_string).unwrap(),
            version_string,
            table,
            bias: 0,
            mapping: ExeMapping {
                start: 0,
                end: 0,
                offset: 0,
                build_id: String::new(),
            },
            mem: Memory::new(0),
            data,
        }
    }

    /// The runtime address of link-time address `vaddr`.
    pub(crate) fn runtime_addr(&self, vaddr: u64) -> u64 {
        vaddr.wrapping_add(self.bias)
    }

    /// The link-time address of runtime address `addr`.
    pub(crate) fn link_addr(&self, addr: u64) -> u64 {
        addr.wrapping_sub(self.bias)
    }

    pub(crate) fn not_found(
        &self,
        what: &'static str,
        detail: impl Into<String>,
    ) -> GoRuntimeError {
        GoRuntimeError::NotFound {
            pid: self.pid,
            exe: self.exe.clone(),
            what,
            detail: detail.into(),
        }
    }

    pub(crate) fn invalid(&self, what: &'static str, detail: impl Into<String>) -> GoRuntimeError {
        GoRuntimeError::Invalid {
            pid: self.pid,
            exe: self.exe.clone(),
            what,
            detail: detail.into(),
        }
    }
}

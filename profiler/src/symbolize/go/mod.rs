//! Go `.gopclntab` reader: function names, file:line and inlined frames for
//! PCs in Go binaries, including stripped ones.
//!
//! Why our own reader: Go binaries built with `-ldflags=-s -w` (the common
//! production setting) have no symbol table and no DWARF, so generic ELF
//! symbolizers find nothing. The runtime's own table (`pclntab`) is always
//! present because Go needs it for tracebacks; it has names, positions and
//! inline trees for every function.
//!
//! Design:
//!
//! * [`GoTable::parse`] only reads headers: the ELF headers, the pclntab
//!   header, and (for Go 1.26+) the text start from the moduledata. Nothing
//!   is decoded up front; the table is read in place from the shared file
//!   bytes, so opening a large binary is cheap and memory use is flat.
//! * [`GoTable::lookup`] binary-searches the function table and decodes the
//!   function's `_func` record and pc-value tables once; the decoded function
//!   is cached (bounded), so further PCs in it are binary searches. Things
//!   needed only by some lookups (the `gofunc` base of inline trees, version,
//!   build ID) are resolved on first use and cached.
//! * Everything read from the file is untrusted: reads are bounds-checked
//!   and arithmetic is checked, so corrupt input gives `Err` or `None`,
//!   never a panic.
//!
//! Module map: `header` (pcHeader, versions), `locate` (finding the table and
//! the text start), `moduledata` (the runtime's module descriptor, for
//! stripped binaries), `funcs` (function table, `_func`, pc-value tables),
//! `inline` (inline trees), `cache` (decoded functions), `buildid` (build ID and version), `elf`
//! (segments, sections, symbols), `bytes` (checked reads); `testutil` has the
//! test-only toolchain and fixture helpers.
//!
//! Not supported: tables from Go 1.0/1.1 (different format), inline frames
//! for Go 1.9–1.11 binaries (older inline-tree layout), and modules split
//! into several text sections (very large ppc64/arm binaries; amd64 and arm64
//! binaries have one).

mod buildid;
mod bytes;
mod cache;
mod elf;
mod funcs;
mod header;
mod inline;
mod locate;
mod moduledata;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

use std::fmt;
use std::sync::{Arc, OnceLock};

use self::bytes::slice_at;
use self::cache::Cache;
use self::elf::Image;
use self::funcs::{DecodedFunc, FuncData, TableView, FUNCDATA_INL_TREE, PCDATA_INL_TREE_INDEX};
use self::header::{Header, Version};
use self::inline::{InlineTree, Layout, RawFrame};
use self::locate::Located;
use self::moduledata::Moduledata;

/// Why a file that looks like a Go binary could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GoError {
    /// The ELF headers themselves are malformed.
    #[error("malformed ELF file: {0}")]
    Elf(#[from] object::read::Error),
    /// A Go table (or the file) ends before the data it describes.
    #[error("Go pclntab is truncated: {0}")]
    Truncated(&'static str),
    /// A Go table contains values that cannot be right.
    #[error("Go pclntab is corrupt: {0}")]
    Corrupt(&'static str),
    /// The table uses text-relative entries (Go 1.18+) and no source of the
    /// text start address (header, moduledata, symbol, section) is usable.
    #[error("cannot determine the start address of Go text")]
    NoTextStart,
}

/// One frame of a symbolized PC.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GoFrame {
    /// Fully qualified Go function name, e.g. `main.main` or `net/http.(*conn).serve`.
    pub function: String,
    /// Source file path as recorded by the compiler; empty if unknown.
    pub file: String,
    /// Line in `file`; 0 if unknown.
    pub line: u32,
    /// Line of the `func` keyword; 0 if unknown (tables before Go 1.20).
    pub start_line: u32,
    /// Whether this frame was inlined into the next one.
    pub inlined: bool,
}

/// The bytes of an ELF file, owned or mapped.
enum ElfBytes {
    Owned(Arc<[u8]>),
    Mapped(Arc<memmap2::Mmap>),
}

impl std::ops::Deref for ElfBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            ElfBytes::Owned(b) => b,
            ElfBytes::Mapped(m) => m,
        }
    }
}

/// A function's stack-pointer deltas, from its `pcsp` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpDeltas {
    /// The function's entry and end (link-time addresses).
    pub entry: u64,
    pub end: u64,
    /// `(start, end, delta)`: over `[start, end)` the stack pointer is
    /// `delta` bytes below its value at entry (which points at the return
    /// address).
    pub spans: Vec<(u64, u64, i32)>,
}

/// One parsed Go binary. Cheap to open, `Send + Sync`, lookups take `&self`.
pub struct GoTable {
    data: ElfBytes,
    img: Image,
    loc: Located,
    header: Header,
    /// Base of 1.18+ entry offsets (0 for older tables).
    text_start: u64,
    /// PCs covered by the table: `[pc_lo, pc_hi)`.
    pc_lo: u64,
    pc_hi: u64,
    moduledata: OnceLock<Option<Moduledata>>,
    gofunc: OnceLock<Option<u64>>,
    version: OnceLock<Option<String>>,
    build_id: OnceLock<Option<String>>,
    /// Decoded functions by index.
    cache: Cache<DecodedFunc>,
}

impl fmt::Debug for GoTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GoTable")
            .field("version", &self.header.version)
            .field("table_vaddr", &format_args!("{:#x}", self.loc.vaddr))
            .field("functions", &self.header.nfunc)
            .field(
                "text",
                &format_args!("{:#x}..{:#x}", self.pc_lo, self.pc_hi),
            )
            .finish_non_exhaustive()
    }
}

impl GoTable {
    /// Parses the ELF bytes (the whole file). `Ok(None)` if this is not a Go
    /// binary; `Err` if it looks like Go but the table is truncated/corrupt.
    pub fn parse(elf: Arc<[u8]>) -> Result<Option<GoTable>, GoError> {
        Self::parse_bytes(ElfBytes::Owned(elf))
    }

    /// Like [`GoTable::parse`], for a file mapped into memory: the live
    /// symbolizer maps binaries rather than copying them.
    pub fn parse_mapped(elf: Arc<memmap2::Mmap>) -> Result<Option<GoTable>, GoError> {
        Self::parse_bytes(ElfBytes::Mapped(elf))
    }

    fn parse_bytes(elf: ElfBytes) -> Result<Option<GoTable>, GoError> {
        let data: &[u8] = &elf;
        let Some(img) = Image::parse(data)? else {
            return Ok(None);
        };
        let Some((loc, header)) = locate::locate(data, &img)? else {
            return Ok(None);
        };
        let bytes = slice_at(data, loc.offset, loc.len).ok_or(GoError::Truncated("pclntab"))?;
        let moduledata = OnceLock::new();
        let unrelocated = TableView {
            bytes,
            h: &header,
            text_start: 0,
            vaddr: loc.vaddr,
        };
        let text_start = locate::text_start(data, &img, &unrelocated, || {
            moduledata
                .get_or_init(|| find_moduledata(data, &img, &loc, &header))
                .clone()
        })?;
        let view = TableView {
            text_start,
            ..unrelocated
        };
        if !view.looks_sane() {
            return Err(GoError::Corrupt("function table"));
        }
        let (pc_lo, pc_hi) = view
            .pc_range()
            .ok_or(GoError::Corrupt("function table range"))?;
        Ok(Some(GoTable {
            data: elf,
            img,
            loc,
            header,
            text_start,
            pc_lo,
            pc_hi,
            moduledata,
            gofunc: OnceLock::new(),
            version: OnceLock::new(),
            build_id: OnceLock::new(),
            cache: Cache::default(),
        }))
    }

    /// Go version string if found (`runtime.buildVersion`), e.g. `go1.27.3`.
    pub fn go_version(&self) -> Option<&str> {
        self.version
            .get_or_init(|| buildid::go_version(&self.data, &self.img))
            .as_deref()
    }

    /// Go build ID from `.note.go.buildid` (or the text header), if present.
    pub fn go_build_id(&self) -> Option<&str> {
        self.build_id
            .get_or_init(|| buildid::build_id(&self.data, &self.img))
            .as_deref()
    }

    /// Whether `vaddr` (a link-time virtual address, as in the symbol table)
    /// lies in Go text covered by the table.
    pub fn contains(&self, vaddr: u64) -> bool {
        (self.pc_lo..self.pc_hi).contains(&vaddr)
    }

    /// The covered text range `[start, end)`.
    pub fn text_range(&self) -> (u64, u64) {
        (self.pc_lo, self.pc_hi)
    }

    /// Number of functions in the table.
    pub fn function_count(&self) -> usize {
        self.header.nfunc
    }

    /// Entry address and name of the physical function containing `vaddr`.
    pub fn function(&self, vaddr: u64) -> Option<(u64, String)> {
        let view = self.view();
        let f = view.func(view.find(vaddr)?)?;
        let name = view.func_name(f.name_off)?;
        Some((f.entry, String::from_utf8_lossy(name).into_owned()))
    }

    /// Frames for `vaddr`: innermost inlined function first, physical
    /// function last. `None` if outside the table (or its record is corrupt).
    pub fn lookup(&self, vaddr: u64) -> Option<Vec<GoFrame>> {
        let view = self.view();
        let idx = view.find(vaddr)?;
        let d = self
            .cache
            .get_or_insert(idx, || Some(DecodedFunc::decode(&view, view.func(idx)?)))?;
        let tree = if d.inl.is_empty() {
            None
        } else {
            self.inline_tree(&view, &d.func)
        };
        let raw = inline::frames(&view, &d, vaddr, tree.as_ref())?;
        Some(raw.into_iter().map(to_frame).collect())
    }

    /// The stack-pointer deltas of the function named `name` (found by a
    /// scan of the function table): how far below its entry stack pointer
    /// the function's SP is, per PC range. Unwinding through Go code that
    /// C calls (cgo's `crosscall2`) needs them, since such code has no
    /// `.eh_frame` and may not keep a frame-pointer chain C can follow.
    pub fn sp_deltas(&self, name: &str) -> Option<SpDeltas> {
        let view = self.view();
        let func = (0..self.header.nfunc)
            .filter_map(|i| view.func(i))
            .find(|f| view.func_name(f.name_off) == Some(name.as_bytes()))?;
        let runs = funcs::Runs::decode(&view, func.pcsp, func.entry, func.end);
        let spans = runs
            .spans(func.entry)
            .filter(|&(start, end, _)| start < end && start < func.end)
            .map(|(start, end, delta)| (start, end.min(func.end), delta))
            .collect::<Vec<_>>();
        (!spans.is_empty()).then_some(SpDeltas {
            entry: func.entry,
            end: func.end,
            spans,
        })
    }

    /// Entry and end (link-time addresses) of the function named `name`,
    /// found by a scan of the function table: the Go runtime readers locate
    /// runtime variables through the code of functions that use them.
    pub fn function_range(&self, name: &str) -> Option<(u64, u64)> {
        let view = self.view();
        (0..self.header.nfunc)
            .filter_map(|i| view.func(i))
            .find(|f| view.func_name(f.name_off) == Some(name.as_bytes()))
            .map(|f| (f.entry, f.end))
    }

    /// The `funcID` of the function containing `vaddr`.
    pub fn func_id(&self, vaddr: u64) -> Option<u8> {
        let view = self.view();
        view.func(view.find(vaddr)?).map(|f| f.func_id)
    }

    /// The largest `funcID` of any function: the ID of compiler-generated
    /// wrappers, which is the last in the runtime's enumeration in every
    /// release (its number changes as special functions are added).
    pub fn wrapper_func_id(&self) -> Option<u8> {
        let view = self.view();
        (0..self.header.nfunc)
            .filter_map(|i| view.func(i))
            .map(|f| f.func_id)
            .max()
    }

    /// Link-time addresses of the `.symtab` symbols `names` (`None` for each
    /// missing one, or all when the binary is stripped).
    pub fn symbol_addrs(&self, names: &[&str]) -> Vec<Option<u64>> {
        self.img
            .symbols(&self.data, names)
            .into_iter()
            .map(|s| s.map(|s| s.addr))
            .collect()
    }

    /// The link-time address that file offset `offset` is loaded at (by the
    /// file-backed segment covering it): with a mapping's start and file
    /// offset it gives the load bias of a position-independent executable.
    pub fn vaddr_of_offset(&self, offset: u64) -> Option<u64> {
        self.img
            .segments
            .iter()
            .find(|s| offset >= s.offset && offset - s.offset < s.filesz.max(1))
            .map(|s| s.vaddr + (offset - s.offset))
    }

    /// Whether `vaddr` lies in a writable segment (data or bss), where the
    /// runtime's variables live.
    pub fn in_data(&self, vaddr: u64) -> bool {
        self.img
            .segments
            .iter()
            .any(|s| s.is_write() && vaddr >= s.vaddr && vaddr - s.vaddr < s.memsz)
    }

    /// `len` bytes at link-time address `vaddr`, if they all lie in one
    /// segment's file-backed part.
    pub fn code(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        self.img.read(&self.data, vaddr, len)
    }

    /// A view of the table for decoding.
    fn view(&self) -> TableView<'_> {
        let bytes = slice_at(&self.data, self.loc.offset, self.loc.len).unwrap_or_default();
        TableView {
            bytes,
            h: &self.header,
            text_start: self.text_start,
            vaddr: self.loc.vaddr,
        }
    }

    /// The inline tree of `f`, if it has one we can read.
    fn inline_tree(&self, view: &TableView<'_>, f: &funcs::Func) -> Option<InlineTree<'_>> {
        if view.pcdata_offset(f, PCDATA_INL_TREE_INDEX) == 0 {
            return None;
        }
        let addr = match view.funcdata(f, FUNCDATA_INL_TREE)? {
            FuncData::GoFuncOffset(off) => self.gofunc()?.checked_add(u64::from(off))?,
            FuncData::Address(_) if self.pre_go112() => return None,
            FuncData::Address(a) => a,
        };
        self.tree_at(addr)
    }

    /// Whether this is a 1.2-format table from before Go 1.12, whose inline
    /// trees have a layout we do not decode.
    fn pre_go112(&self) -> bool {
        self.header.version == Version::V12
            && self
                .go_version()
                .and_then(minor_version)
                .is_some_and(|m| m < 12)
    }

    /// An inline tree starting at `vaddr`.
    fn tree_at(&self, vaddr: u64) -> Option<InlineTree<'_>> {
        Some(InlineTree {
            bytes: self.img.read_to_segment_end(&self.data, vaddr)?,
            layout: Layout::for_version(self.header.version),
            endian: self.header.endian,
        })
    }

    /// The moduledata, searched for on first use.
    fn moduledata(&self) -> Option<&Moduledata> {
        self.moduledata
            .get_or_init(|| find_moduledata(&self.data, &self.img, &self.loc, &self.header))
            .as_ref()
    }

    /// `moduledata.gofunc`, the base of 1.18+ funcdata offsets.
    fn gofunc(&self) -> Option<u64> {
        *self.gofunc.get_or_init(|| self.resolve_gofunc())
    }

    /// Picks `gofunc` among the moduledata words and the `go:func.*` symbol:
    /// the first candidate under which sample inline trees decode sensibly.
    fn resolve_gofunc(&self) -> Option<u64> {
        let view = self.view();
        let samples = inline_samples(&view);
        if samples.is_empty() {
            return None;
        }
        let valid = |base: u64| {
            samples.iter().all(|(f, off)| {
                let tree = base
                    .checked_add(u64::from(*off))
                    .and_then(|a| self.tree_at(a));
                tree.is_some_and(|t| inline::plausible(&view, f, &t))
            })
        };
        if let Some(md) = self.moduledata() {
            let rest = (moduledata::TEXT + 1..moduledata::WORDS)
                .filter(|i| !moduledata::GOFUNC_KNOWN.contains(i));
            let order = moduledata::GOFUNC_KNOWN.into_iter().chain(rest);
            if let Some(v) = order.map(|i| md.word(i)).find(|&v| v != 0 && valid(v)) {
                return Some(v);
            }
        }
        let syms = self.img.symbols(&self.data, &["go:func.*", "go.func.*"]);
        syms.into_iter()
            .flatten()
            .map(|s| s.addr)
            .find(|&v| valid(v))
    }
}

/// Moduledata search (only 1.16+ layouts are known).
fn find_moduledata(data: &[u8], img: &Image, loc: &Located, h: &Header) -> Option<Moduledata> {
    if h.version < Version::V116 {
        return None;
    }
    moduledata::find(data, img, loc.vaddr, h.funcnametab)
}

/// Up to 8 functions with 1.18+ inline trees, spread over the table, with
/// their `gofunc` offsets.
fn inline_samples(view: &TableView<'_>) -> Vec<(DecodedFunc, u32)> {
    const WANT: usize = 8;
    let n = view.h.nfunc;
    let pick = |i: usize| {
        let f = view.func(i)?;
        if view.pcdata_offset(&f, PCDATA_INL_TREE_INDEX) == 0 {
            return None;
        }
        match view.funcdata(&f, FUNCDATA_INL_TREE)? {
            FuncData::GoFuncOffset(off) => Some((DecodedFunc::decode(view, f), off)),
            FuncData::Address(_) => None,
        }
    };
    let spread: Vec<_> = (0..n)
        .step_by((n / 512).max(1))
        .filter_map(pick)
        .take(WANT)
        .collect();
    if !spread.is_empty() {
        return spread;
    }
    (0..n).filter_map(pick).take(WANT).collect()
}

/// `12` for `go1.12.5`.
fn minor_version(v: &str) -> Option<u32> {
    let rest = v.strip_prefix("go1.")?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Converts a borrowed frame to the public, owned form.
fn to_frame(r: RawFrame<'_>) -> GoFrame {
    GoFrame {
        function: String::from_utf8_lossy(r.name).into_owned(),
        file: r
            .file
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .unwrap_or_default(),
        line: r.line,
        start_line: r.start_line,
        inlined: r.inlined,
    }
}

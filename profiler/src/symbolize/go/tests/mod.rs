//! Tests of the Go table reader against real Go binaries built from
//! `tests/fixtures/goinline` (see [`super::testutil`]), plus synthetic tables
//! for the formats no installed toolchain produces.
//!
//! * [`fixture`]: answers compared with Go's own tools and runtime.
//! * [`robust`]: stripped, section-less, renamed and corrupted inputs.
//! * [`synthetic`]: hand-built Go 1.2 and 1.16 tables.
//! * [`perf`]: open time and lookup rate (ignored by default).

mod fixture;
mod perf;
mod robust;
mod synthetic;

use std::path::PathBuf;
use std::sync::Arc;

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

use super::testutil::{self, Build, Toolchain};
use super::GoTable;

/// The fixture every test here uses.
pub(super) const FIXTURE: &str = "goinline";

/// One built and opened fixture binary.
pub(super) struct Bin {
    pub label: String,
    pub tc: Toolchain,
    pub build: Build,
    pub path: PathBuf,
    pub data: Arc<[u8]>,
    pub table: GoTable,
}

/// Builds (or reuses) and opens one variant; panics if it is not a Go table.
pub(super) fn load(tc: &Toolchain, build: Build) -> Bin {
    let path = testutil::build_fixture(tc, FIXTURE, build);
    let data: Arc<[u8]> = std::fs::read(&path).expect("read fixture binary").into();
    let table = GoTable::parse(data.clone())
        .expect("parse")
        .expect("is a Go binary");
    Bin {
        label: format!("{}-{}", tc.version, build.label()),
        tc: tc.clone(),
        build,
        path,
        data,
        table,
    }
}

/// The variants built for each toolchain: normal and stripped, each as a
/// plain executable and as a PIE (Go 1.19 PIEs keep the table in
/// `.data.rel.ro.gopclntab`); for Go 1.27 also an externally linked PIE when a
/// C compiler exists (its `runtime.text` is not the start of `.text`).
pub(super) fn variants(tc: &Toolchain) -> Vec<Build> {
    let mut v = Vec::new();
    for pie in [false, true] {
        v.push(Build {
            pie,
            ..Build::default()
        });
        v.push(Build {
            pie,
            stripped: true,
            ..Build::default()
        });
    }
    if tc.version.starts_with("go1.27") {
        testutil::require_cc();
        v.push(Build {
            pie: true,
            external: true,
            stripped: false,
        });
        v.push(Build {
            pie: true,
            external: true,
            stripped: true,
        });
    }
    v
}

/// Every variant of every available toolchain.
pub(super) fn all_bins() -> Vec<Bin> {
    testutil::toolchains()
        .iter()
        .flat_map(|tc| variants(tc).into_iter().map(|b| load(tc, b)))
        .collect()
}

/// Unstripped variants only (they have the symbol table used as ground truth).
pub(super) fn unstripped_bins() -> Vec<Bin> {
    all_bins()
        .into_iter()
        .filter(|b| !b.build.stripped)
        .collect()
}

/// `(address, size, name)` of the sized text symbols of an unstripped binary.
pub(super) fn text_symbols(data: &[u8]) -> Vec<(u64, u64, String)> {
    let file = object::File::parse(data).expect("parse ELF");
    let mut syms: Vec<_> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
        .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_owned())))
        .collect();
    syms.sort();
    syms
}

/// A symbol's address by name.
pub(super) fn symbol(data: &[u8], name: &str) -> Option<u64> {
    let file = object::File::parse(data).ok()?;
    file.symbols()
        .find(|s| s.name() == Ok(name))
        .map(|s| s.address())
}

/// A section's bytes by name.
pub(super) fn section_bytes(data: &[u8], name: &str) -> Option<Vec<u8>> {
    let file = object::File::parse(data).ok()?;
    Some(file.section_by_name(name)?.data().ok()?.to_vec())
}

/// The `[start, end)` range of the symbol `name`.
pub(super) fn symbol_range(data: &[u8], name: &str) -> Option<(u64, u64)> {
    text_symbols(data)
        .into_iter()
        .find(|s| s.2 == name)
        .map(|(a, size, _)| (a, a + size))
}

/// Evenly spaced sample of `n` PCs over the table's text.
pub(super) fn sample_pcs(t: &GoTable, n: u64) -> Vec<u64> {
    let (lo, hi) = t.text_range();
    let step = ((hi - lo) / n).max(1);
    (lo..hi)
        .step_by(usize::try_from(step).unwrap_or(1))
        .collect()
}

/// 1-based line number of the first line of `main.go` containing `needle`.
pub(super) fn source_line(needle: &str) -> u32 {
    let src = std::fs::read_to_string(testutil::fixture_dir(FIXTURE).join("main.go"))
        .expect("read main.go");
    let idx = src
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in main.go"));
    u32::try_from(idx + 1).expect("line fits")
}

#[test]
fn go_table_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<GoTable>();
}

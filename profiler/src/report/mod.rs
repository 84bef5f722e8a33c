//! `rprof-bpf report`: read any pprof file (ours, Go's runtime/pprof,
//! net/http/pprof, Pyroscope; gzipped or not) and show it as a top table,
//! an interactive flame graph, folded stacks, or raw traces.
//!
//! The top table and the traces reproduce `go tool pprof -top` and
//! `-traces` exactly, numbers, order and headers, so that people can
//! trust them side by side. The pipeline follows pprof's:
//!
//! 1. [`model`]: resolve and check the protobuf (no panics on bad input),
//!    apply the profile's `drop_frames`, `--focus`/`--ignore`;
//! 2. [`prepare`]: pick the sample value, compute the total, header lines;
//! 3. [`graph`]: expand locations into per-function nodes (inlined
//!    functions are nodes of their own unless `--noinlines`) with flat and
//!    cumulative values;
//! 4. [`top`], [`traces`], [`collapsed`], [`flame`]: the outputs;
//!    [`format`] has pprof's number formatting.

mod cli;
mod collapsed;
mod flame;
mod format;
mod graph;
mod model;
mod prepare;
mod tags;
mod top;
mod traces;
pub mod ui;

use std::io::Write;

use anyhow::Result;

pub use cli::{run, ReportArgs};

use crate::pprof::Profile;
use prepare::Prepared;

/// What to report and how, with pprof's defaults.
#[derive(Clone, Debug)]
pub struct Options {
    /// Sample value to report, by type name or index; `None` means the
    /// profile's default type, else the last one (as pprof).
    pub sample_index: Option<String>,
    /// Unit for printed values ("ms", "s", "MB", ...); "minimum" picks one
    /// from the values as pprof does.
    pub unit: String,
    /// Keep only samples with a frame matching this regex (function name,
    /// source file or binary).
    pub focus: Option<String>,
    /// Drop samples with a frame matching this regex.
    pub ignore: Option<String>,
    /// Leave out frames matching this regex (the samples stay).
    pub hide: Option<String>,
    /// Keep only samples whose labels match (pprof's `-tagfocus` syntax:
    /// `key=regex`, `key=N`, `key=N:M`...).
    pub tagfocus: Option<String>,
    /// Drop samples whose labels match (`-tagignore`).
    pub tagignore: Option<String>,
    /// Attribute inlined functions to the function they were inlined into.
    pub noinlines: bool,
    /// Rows of the top table; 0 means all (after pprof's 0.5% cut).
    pub nodecount: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sample_index: None,
            unit: "minimum".to_string(),
            focus: None,
            ignore: None,
            hide: None,
            tagfocus: None,
            tagignore: None,
            noinlines: false,
            nodecount: 20,
        }
    }
}

/// The top table with its header lines, exactly as `go tool pprof -top
/// -nodecount=N` prints it.
pub fn top_table(profile: &Profile, nodecount: usize) -> Result<String> {
    top_table_with(
        profile,
        &Options {
            nodecount,
            ..Options::default()
        },
    )
}

/// [`top_table`] with all options.
pub fn top_table_with(profile: &Profile, opts: &Options) -> Result<String> {
    let mut prep = Prepared::new(profile, opts)?;
    Ok(top::render(&mut prep, opts.nodecount))
}

/// The top table of the change from `base` to `profile`, as `go tool
/// pprof -top -diff_base=BASE [-normalize]` prints it.
pub fn top_table_diff(
    profile: &Profile,
    base: &Profile,
    normalize: bool,
    opts: &Options,
) -> Result<String> {
    let model = prepare::load_model(profile, Some((base, normalize)))?;
    let mut prep = Prepared::from_model(std::sync::Arc::new(model), opts)?;
    Ok(top::render(&mut prep, opts.nodecount))
}

/// Every sample's stack, as `go tool pprof -traces` prints them.
pub fn traces(profile: &Profile, opts: &Options) -> Result<String> {
    let prep = Prepared::new(profile, opts)?;
    Ok(traces::render(&prep))
}

/// Draws an interactive SVG flame graph of the default sample value.
/// Inlined frames are marked `(inline)`.
pub fn write_flamegraph(profile: &Profile, title: &str, out: &mut dyn Write) -> Result<()> {
    write_flamegraph_with(profile, title, &Options::default(), out)
}

/// [`write_flamegraph`] with all options.
pub fn write_flamegraph_with(
    profile: &Profile,
    title: &str,
    opts: &Options,
    out: &mut dyn Write,
) -> Result<()> {
    let prep = Prepared::new(profile, opts)?;
    flame::write(&prep, title, out)
}

/// Writes the folded stacks of the default sample value: root first,
/// `;`-separated, a space and the value; one line per distinct stack.
pub fn write_collapsed(profile: &Profile, out: &mut dyn Write) -> Result<()> {
    write_collapsed_with(profile, &Options::default(), out)
}

/// [`write_collapsed`] with all options.
pub fn write_collapsed_with(profile: &Profile, opts: &Options, out: &mut dyn Write) -> Result<()> {
    let prep = Prepared::new(profile, opts)?;
    collapsed::write(&prep, out)
}

/// A title for a flame graph of `profile`: the process name(s) from the
/// `process` label, else the main binary's name.
pub fn default_title(profile: &Profile) -> Result<String> {
    let prep = Prepared::new(profile, &Options::default())?;
    Ok(flame::default_title(&prep))
}

//! The `report` subcommand's arguments and driver.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};

use super::prepare::{load_model, Prepared};
use super::{collapsed, flame, top, traces, Options};
use crate::pprof;

/// Arguments of `rprof-bpf report`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// Profile to read: any pprof protobuf file, gzipped or not.
    pub file: PathBuf,

    /// Print the functions with the most samples, as `go tool pprof -top`
    /// does (the default).
    #[arg(long, conflicts_with_all = ["flamegraph", "collapsed", "traces"])]
    pub top: bool,

    /// Rows of the top table; 0 shows every function above 0.5% of the total.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub nodecount: usize,

    /// Sample value to report, by type name (e.g. "samples", "cpu",
    /// "alloc_space") or index. Default: the profile's default, else the last.
    #[arg(long, value_name = "NAME|INDEX")]
    pub sample_index: Option<String>,

    /// Unit for values: ns, us, ms, s, B, kB, MB... or "minimum" to choose
    /// from the values (as pprof).
    #[arg(long, value_name = "UNIT", default_value = "minimum")]
    pub unit: String,

    /// Only samples with a frame (function, source file or binary) matching
    /// this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub focus: Option<String>,

    /// Leave out samples with a frame matching this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub ignore: Option<String>,

    /// Leave out frames matching this regular expression (function, source
    /// file or binary); their samples stay, attributed to the callers.
    #[arg(long, value_name = "REGEX")]
    pub hide: Option<String>,

    /// Only samples whose labels match, in pprof's syntax: `key=REGEX`,
    /// `REGEX` (against `key:value`), `key=N`, `key=N:M`, `key=N:`, `key=:M`
    /// (numeric labels such as pid, with units: `bytes=64kb:`).
    #[arg(long, value_name = "FILTER")]
    pub tagfocus: Option<String>,

    /// Leave out samples whose labels match (same syntax as --tagfocus).
    #[arg(long, value_name = "FILTER")]
    pub tagignore: Option<String>,

    /// Attribute inlined functions to the function they were inlined into.
    #[arg(long)]
    pub noinlines: bool,

    /// Show the change from this older profile: its values are subtracted,
    /// and percentages are of its total (as `go tool pprof -diff_base`).
    #[arg(long, value_name = "OLD")]
    pub diff_base: Option<PathBuf>,

    /// With --diff-base: scale the profile so that it sums to the base's
    /// total first, to compare shapes rather than amounts (pprof's
    /// `-normalize`).
    #[arg(long, requires = "diff_base")]
    pub normalize: bool,

    /// Serve an interactive browser UI (top table, flame graph, source,
    /// callers/callees, diff) at this address, e.g. 127.0.0.1:8080 or
    /// :8080 (which means loopback). Runs until Ctrl-C.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["top", "flamegraph", "collapsed", "traces"])]
    pub http: Option<String>,

    /// Write an interactive SVG flame graph to this file.
    #[arg(long, value_name = "OUT.svg", conflicts_with_all = ["collapsed", "traces"])]
    pub flamegraph: Option<PathBuf>,

    /// Title of the flame graph. Default: the profiled process or binary.
    #[arg(long, value_name = "TEXT", requires = "flamegraph")]
    pub title: Option<String>,

    /// Print folded stacks (root first, `;`-separated, then the value) for
    /// flame graph tools.
    #[arg(long, conflicts_with = "traces")]
    pub collapsed: bool,

    /// Print every sample's stack with its labels, as `go tool pprof -traces`.
    #[arg(long)]
    pub traces: bool,
}

impl ReportArgs {
    pub(crate) fn options(&self) -> Options {
        Options {
            sample_index: self.sample_index.clone(),
            unit: self.unit.clone(),
            focus: self.focus.clone(),
            ignore: self.ignore.clone(),
            hide: self.hide.clone(),
            tagfocus: self.tagfocus.clone(),
            tagignore: self.tagignore.clone(),
            noinlines: self.noinlines,
            nodecount: self.nodecount,
        }
    }
}

/// Writes `text` to stdout. A closed pipe (`report ... | head`) is not an
/// error: the reader has what it wanted.
fn print(text: &[u8]) -> Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

/// Reads the profile and its diff base (if any) into a model. Errors name
/// the file at fault.
pub(crate) fn load(
    path: &Path,
    diff_base: Option<&Path>,
    normalize: bool,
) -> Result<Arc<super::model::Model>> {
    let profile = pprof::read_file(path)?;
    let base = diff_base.map(pprof::read_file).transpose()?;
    let model =
        load_model(&profile, base.as_ref().map(|b| (b, normalize))).map_err(
            |e| match diff_base {
                Some(b) if format!("{e:#}").contains("base profile") => {
                    anyhow!("{}: {e:#}", b.display())
                }
                _ => anyhow!("{}: {e:#}", path.display()),
            },
        )?;
    Ok(Arc::new(model))
}

/// Runs `rprof-bpf report`. Every error names the file it is about.
pub fn run(args: &ReportArgs) -> Result<()> {
    let path = &args.file;
    if let Some(addr) = &args.http {
        return super::ui::serve_files(addr, args);
    }
    let model = load(path, args.diff_base.as_deref(), args.normalize)?;
    let opts = args.options();
    let mut prep =
        Prepared::from_model(model, &opts).map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
    for w in &prep.warnings {
        eprintln!("rprof-bpf: {w}");
    }

    if let Some(svg) = &args.flamegraph {
        let title = match &args.title {
            Some(t) => t.clone(),
            None => flame::default_title(&prep),
        };
        let mut bytes = Vec::new();
        flame::write(&prep, &title, &mut bytes)
            .map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
        pprof::write_file_atomic(svg, &bytes)
            .with_context(|| format!("cannot write {}", svg.display()))?;
        eprintln!("rprof-bpf: wrote flame graph to {}", svg.display());
        return Ok(());
    }
    if args.collapsed {
        let mut bytes = Vec::new();
        collapsed::write(&prep, &mut bytes)?;
        return print(&bytes);
    }
    if args.traces {
        return print(traces::render(&prep).as_bytes());
    }
    print(top::render(&mut prep, opts.nodecount).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        report: ReportArgs,
    }

    fn parse(args: &[&str]) -> Result<ReportArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("report").chain(args.iter().copied())).map(|c| c.report)
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_are_pprofs() {
        let a = parse(&["cpu.pb.gz"]).unwrap();
        assert_eq!(a.nodecount, 20);
        assert_eq!(a.unit, "minimum");
        assert!(a.sample_index.is_none() && a.flamegraph.is_none());
        assert!(!a.collapsed && !a.traces && !a.noinlines);
    }

    #[test]
    fn options_parse() {
        let a = parse(&[
            "cpu.pb.gz",
            "--top",
            "--nodecount",
            "5",
            "--sample-index",
            "samples",
            "--unit",
            "ms",
            "--focus",
            "main",
            "--ignore",
            "runtime",
            "--noinlines",
        ])
        .unwrap();
        let o = a.options();
        assert_eq!(o.nodecount, 5);
        assert_eq!(o.sample_index.as_deref(), Some("samples"));
        assert_eq!(o.unit, "ms");
        assert_eq!(o.focus.as_deref(), Some("main"));
        assert_eq!(o.ignore.as_deref(), Some("runtime"));
        assert!(o.noinlines);
    }

    #[test]
    fn output_modes_conflict() {
        assert!(parse(&["f", "--collapsed", "--traces"]).is_err());
        assert!(parse(&["f", "--top", "--flamegraph", "x.svg"]).is_err());
        assert!(parse(&["f", "--flamegraph", "x.svg", "--collapsed"]).is_err());
        assert!(parse(&["f", "--title", "t"]).is_err());
        assert!(parse(&["f", "--flamegraph", "x.svg", "--title", "t"]).is_ok());
        assert!(parse(&[]).is_err());
    }
}

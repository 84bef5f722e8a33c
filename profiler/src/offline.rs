//! `rprof-bpf symbolize`: name the frames of a raw profile (written with
//! `--no-symbolize`) on another machine, from files found by build ID.
//!
//! The same code paths as live mode do the naming; this module only finds
//! the files and rewrites the profile's locations. Kernel frames are named
//! from a vmlinux (KASLR slide taken off, build ID checked) and, for what
//! it does not cover, from a kallsyms copy. Mappings that local files
//! leave without debug info, and the kernel when no `--vmlinux` is given,
//! are looked up on debuginfod servers when some are configured.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::engine::encode::{line, MappingFlags, KERNEL_MAPPING};
use crate::engine::resolve::lookup_pc;
use crate::pprof::{self, Line, Mapping, Profile, ProfileBuilder};
use crate::symbolize::debuginfod::{self, Config, ConfigError, Debuginfod, Lookup};
use crate::symbolize::elf::ElfSymbolizer;
use crate::symbolize::kernel::Kallsyms;
use crate::symbolize::locate::{Found, Locator};
use crate::symbolize::vmlinux::{self, Vmlinux};
use crate::symbolize::{Frame, SymbolFile, Symbolizer};

/// Arguments of `rprof-bpf symbolize`.
#[derive(clap::Args, Debug)]
pub struct SymbolizeArgs {
    /// The raw profile.
    pub input: PathBuf,
    /// Where to write the symbolized profile.
    #[arg(short, long)]
    pub output: PathBuf,
    /// A debug directory: `DIR/.build-id/xx/rest[.debug]`, `DIR/<build_id>/<name>`,
    /// and the targets of `.gnu_debuglink`. Repeatable.
    #[arg(long = "debug-dir", value_name = "DIR")]
    pub debug_dirs: Vec<PathBuf>,
    /// A directory of binaries, searched recursively for matching build IDs. Repeatable.
    #[arg(long = "binary", value_name = "DIR")]
    pub binary_dirs: Vec<PathBuf>,
    /// A copy of the capturing node's /proc/kallsyms, to name kernel frames.
    #[arg(long, value_name = "FILE")]
    pub kallsyms: Option<PathBuf>,
    /// The capturing node's kernel image (ELF with symbols), to name kernel
    /// frames; used only if its build ID matches the profile's kernel.
    #[arg(long, value_name = "FILE")]
    pub vmlinux: Option<PathBuf>,
    /// A debuginfod server (http:// or https://) to fetch debug files from
    /// by build ID, for what local files leave unnamed. Repeatable, tried in
    /// order; replaces DEBUGINFOD_URLS, which is used otherwise.
    #[arg(long = "debuginfod", value_name = "URL")]
    pub debuginfod: Vec<String>,
    /// Ask no debuginfod server, even with DEBUGINFOD_URLS set.
    #[arg(long, conflicts_with = "debuginfod")]
    pub no_debuginfod: bool,
}

impl SymbolizeArgs {
    /// The debuginfod client the arguments and environment ask for; a bad
    /// server URL is a usage error.
    pub fn debuginfod(&self) -> Result<Option<Debuginfod>, ConfigError> {
        if self.no_debuginfod {
            return Ok(None);
        }
        let config = if self.debuginfod.is_empty() {
            Config::from_env(&debuginfod::process_env)?
        } else {
            Some(Config::from_urls(
                &self.debuginfod,
                &debuginfod::process_env,
            )?)
        };
        Ok(config.map(Debuginfod::new))
    }
}

/// What happened to one mapping.
#[derive(Clone, Debug)]
pub struct MappingReport {
    pub filename: String,
    pub build_id: String,
    /// `None`: no matching file; for already symbolized mappings, the
    /// profile's own symbols.
    pub found: Option<Found>,
    pub already: bool,
    /// What else the summary should say: the KASLR slide, or why a file
    /// was refused.
    pub notes: Vec<String>,
    pub named: usize,
    pub locations: usize,
}

/// Runs the command: read, symbolize, write atomically, print a summary.
pub fn run(args: &SymbolizeArgs) -> Result<()> {
    let debuginfod = args.debuginfod()?;
    let profile = pprof::read_file(&args.input)?;
    let kallsyms = match &args.kallsyms {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read kallsyms file {}", p.display()))?;
            Some(Kallsyms::parse(&text))
        }
        None => None,
    };
    // Opened before anything is written: a bad --vmlinux is a usage error.
    let vmlinux = args.vmlinux.as_deref().map(Vmlinux::open).transpose()?;
    let mut locator = Locator::new(args.debug_dirs.clone(), args.binary_dirs.clone());
    let mut symbolizer =
        Symbolizer::with_parts(ElfSymbolizer::with_debug_dirs(&args.debug_dirs), kallsyms);
    let (profile, reports) = symbolize_profile(
        profile,
        &mut locator,
        &mut symbolizer,
        vmlinux.as_ref(),
        debuginfod.as_ref(),
    );
    pprof::write_file_atomic(&args.output, &pprof::encode_gzip(&profile))
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    for r in &reports {
        eprintln!("{}", describe(r));
    }
    let named: usize = reports.iter().map(|r| r.named).sum();
    let total: usize = reports.iter().map(|r| r.locations).sum();
    eprintln!(
        "rprof-bpf: {named} of {total} locations named -> {}",
        args.output.display()
    );
    Ok(())
}

fn describe(r: &MappingReport) -> String {
    let id = if r.build_id.is_empty() {
        "no build ID".to_owned()
    } else {
        format!("build ID {}", r.build_id)
    };
    let status = match (&r.found, r.already) {
        (_, true) => Some("already symbolized".to_owned()),
        (Some(f), _) => Some(format!("found {} ({})", f.path.display(), f.how)),
        // A note (a refused file) says more than "not found".
        (None, _) if !r.notes.is_empty() => None,
        (None, _) => Some("not found".to_owned()),
    };
    let parts: Vec<String> = status.into_iter().chain(r.notes.clone()).collect();
    format!(
        "  {} [{id}]: {}; {}/{} locations named",
        r.filename,
        parts.join("; "),
        r.named,
        r.locations
    )
}

/// The locations that hold a sampled PC rather than a return address, so
/// are looked up as is; all others one byte earlier. As in live mode
/// (`encode`), that is each sample's first kernel location and its first
/// user location: a user PC under kernel frames is where the thread
/// entered the kernel, and live mode keeps it apart from the same address
/// as a caller.
fn leaf_locations(profile: &Profile) -> HashSet<u64> {
    let kernel = profile
        .mapping
        .iter()
        .find(|m| profile.str(m.filename) == KERNEL_MAPPING)
        .map(|m| m.id);
    let mapping_of: HashMap<u64, u64> = profile
        .location
        .iter()
        .map(|l| (l.id, l.mapping_id))
        .collect();
    let is_kernel = |id: &u64| kernel.is_some() && mapping_of.get(id).copied() == kernel;
    let mut leaves = HashSet::new();
    for s in &profile.sample {
        leaves.extend(s.location_id.first().copied());
        leaves.extend(s.location_id.iter().find(|id| !is_kernel(id)).copied());
    }
    leaves
}

/// Symbolizes every mapping that is not symbolized yet. Mappings that are
/// keep their frames untouched, so running this twice changes nothing.
pub fn symbolize_profile(
    profile: Profile,
    locator: &mut Locator,
    symbolizer: &mut Symbolizer,
    vmlinux: Option<&Vmlinux>,
    debuginfod: Option<&Debuginfod>,
) -> (Profile, Vec<MappingReport>) {
    let leaves = leaf_locations(&profile);
    let mut by_mapping: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, l) in profile.location.iter().enumerate() {
        by_mapping.entry(l.mapping_id).or_default().push(i);
    }

    let mut b = ProfileBuilder::from_profile(profile);
    let mut reports = Vec::new();
    let mappings = b.profile().mapping.clone();
    let mut sources = find_files(
        b.profile(),
        locator,
        symbolizer,
        vmlinux.is_some(),
        debuginfod,
    );
    for m in &mappings {
        let filename = b.profile().str(m.filename).to_owned();
        let build_id = b.profile().str(m.build_id).to_owned();
        let locs = by_mapping.remove(&m.id).unwrap_or_default();
        let mut report = MappingReport {
            filename: filename.clone(),
            build_id: build_id.clone(),
            found: None,
            already: m.has_functions,
            notes: Vec::new(),
            named: 0,
            locations: locs.len(),
        };
        if m.has_functions {
            report.named = locs
                .iter()
                .filter(|&&i| !b.profile().location[i].line.is_empty())
                .count();
            reports.push(report);
            continue;
        }
        // (location index, lookup key) pairs.
        let lookups: Vec<(usize, u64)> = locs
            .iter()
            .map(|&i| {
                let l = &b.profile().location[i];
                (i, lookup_pc(l.address, leaves.contains(&l.id)))
            })
            .collect();
        let source = sources.remove(&m.id).unwrap_or_default();
        let fetched = source.remote.as_ref().and_then(|l| l.found.as_ref());
        let remote_problems = source.remote.as_ref().and_then(Lookup::explain);
        let frames: Vec<Vec<Frame>> = if filename == KERNEL_MAPPING {
            let addrs: Vec<u64> = lookups.iter().map(|&(_, a)| a).collect();
            let opened = fetched.map(|f| (Vmlinux::open(&f.path), f.how()));
            let image = match (vmlinux, &opened) {
                (Some(v), _) => Some((v, "--vmlinux".to_owned())),
                (None, Some((Ok(v), how))) => Some((v, how.clone())),
                (None, Some((Err(e), _))) => {
                    report.notes.push(format!("debuginfod: {e:#}"));
                    None
                }
                (None, None) => None,
            };
            report.notes.extend(remote_problems);
            kernel_frames(m, &build_id, &addrs, image, symbolizer, &mut report)
        } else {
            report.found = match (fetched, source.local) {
                (Some(f), local) => {
                    if let Some(l) = local {
                        let has = format!("{} has no debug info", l.path.display());
                        report.notes.push(has);
                    }
                    Some(Found {
                        path: f.path.clone(),
                        how: f.how(),
                    })
                }
                (None, local) => local,
            };
            report.notes.extend(remote_problems);
            let file = report
                .found
                .as_ref()
                .and_then(|f| SymbolFile::open(&f.path).ok());
            match file {
                Some(file) => {
                    let vaddrs: Vec<u64> = lookups
                        .iter()
                        .map(|&(_, a)| {
                            let off = a.wrapping_sub(m.memory_start).wrapping_add(m.file_offset);
                            file.vaddr(off, m.file_offset).unwrap_or(u64::MAX)
                        })
                        .collect();
                    symbolizer.symbolize_file(&file, &vaddrs)
                }
                None => Vec::new(),
            }
        };
        let mut flags = MappingFlags::default();
        for ((i, _), f) in lookups.iter().zip(frames) {
            if f.is_empty() {
                continue;
            }
            flags.note(&f);
            let lines: Vec<Line> = f.iter().map(|fr| line(&mut b, fr)).collect();
            if let Some(loc) = b.location_at_mut(*i) {
                loc.line = lines;
                report.named += 1;
            }
        }
        if let Some(mm) = b.mapping_mut(m.id) {
            flags.apply(mm);
        }
        reports.push(report);
    }
    (b.finish(), reports)
}

/// Where the files of a mapping may come from: the local search, and what
/// debuginfod said when it was asked.
#[derive(Default)]
struct Sources {
    local: Option<Found>,
    remote: Option<Lookup>,
}

/// Finds the files of every mapping not symbolized yet: locally first;
/// then, in one batch so that downloads run side by side, on debuginfod
/// for those that local files leave without debug info (none found, or
/// one without DWARF) and for the kernel when there is no `--vmlinux`.
fn find_files(
    profile: &Profile,
    locator: &mut Locator,
    symbolizer: &mut Symbolizer,
    have_vmlinux: bool,
    debuginfod: Option<&Debuginfod>,
) -> HashMap<u64, Sources> {
    let mut out = HashMap::new();
    let mut ask: Vec<(u64, String)> = Vec::new();
    for m in profile.mapping.iter().filter(|m| !m.has_functions) {
        let filename = profile.str(m.filename);
        let build_id = profile.str(m.build_id);
        let mut source = Sources::default();
        let wanted = if filename == KERNEL_MAPPING {
            !have_vmlinux
        } else {
            source.local = locator.find(build_id, filename);
            match source.local.as_ref().map(|f| SymbolFile::open(&f.path)) {
                Some(Ok(file)) => symbolizer.wants_debug_file(&file).is_some(),
                Some(Err(_)) | None => true,
            }
        };
        if wanted && debuginfod.is_some() && debuginfod::is_gnu_build_id(build_id) {
            ask.push((m.id, build_id.to_ascii_lowercase()));
        }
        out.insert(m.id, source);
    }
    if let Some(d) = debuginfod {
        let ids: Vec<String> = ask.iter().map(|(_, id)| id.clone()).collect();
        for ((mapping, _), lookup) in ask.iter().zip(d.find_all(&ids)) {
            if let Some(s) = out.get_mut(mapping) {
                s.remote = Some(lookup);
            }
        }
    }
    out
}

/// Names kernel addresses (return addresses already moved into their call):
/// from the kernel image (`--vmlinux`, or one from debuginfod, with where it
/// came from) for those inside the recorded kernel text, if its build ID
/// matches; from kallsyms for the rest (modules, BPF, or everything when
/// there is no usable image). Unnamed addresses get no frames.
fn kernel_frames(
    m: &Mapping,
    build_id: &str,
    addrs: &[u64],
    vmlinux: Option<(&Vmlinux, String)>,
    symbolizer: &mut Symbolizer,
    report: &mut MappingReport,
) -> Vec<Vec<Frame>> {
    let mut frames = vec![Vec::new(); addrs.len()];
    if let Some((v, how)) = vmlinux {
        match v.slide_for(m, build_id) {
            Ok(slide) => {
                report.found = Some(Found {
                    path: v.file.path.clone(),
                    how,
                });
                report
                    .notes
                    .push(format!("KASLR slide {}", vmlinux::format_slide(slide)));
                let text = m.memory_start..m.memory_limit;
                let inside: Vec<usize> = (0..addrs.len())
                    .filter(|&i| text.contains(&addrs[i]))
                    .collect();
                let vaddrs: Vec<u64> = inside
                    .iter()
                    .map(|&i| addrs[i].wrapping_sub(slide as u64))
                    .collect();
                for (i, f) in inside
                    .into_iter()
                    .zip(symbolizer.symbolize_file(&v.file, &vaddrs))
                {
                    frames[i] = f;
                }
            }
            Err(why) => report.notes.push(why),
        }
    }
    let mut from_kallsyms = 0;
    for (f, &a) in frames.iter_mut().zip(addrs) {
        if f.is_empty() {
            if let Some(k) = symbolizer.kernel(a) {
                *f = vec![k];
                from_kallsyms += 1;
            }
        }
    }
    if from_kallsyms > 0 {
        report
            .notes
            .push(format!("{from_kallsyms} named from --kallsyms"));
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A user PC under kernel frames (a syscall) is a leaf, like a user PC
    /// with no kernel frames; the same address as a caller is not.
    #[test]
    fn first_user_location_under_kernel_frames_is_a_leaf() {
        let mut b = ProfileBuilder::new();
        let mapping = |b: &mut ProfileBuilder, name: &str| Mapping {
            filename: b.intern(name),
            ..Mapping::default()
        };
        let m = mapping(&mut b, KERNEL_MAPPING);
        let kernel = b.add_mapping(m);
        let m = mapping(&mut b, "/srv/app");
        let user = b.add_mapping(m);
        let k_leaf = b.add_location(kernel, 0xffff_8000, vec![]);
        let k_caller = b.add_location(kernel, 0xffff_9000, vec![]);
        let syscall_pc = b.add_location(user, 0x1203, vec![]);
        let as_caller = b.add_location(user, 0x1203, vec![]);
        let spin_pc = b.add_location(user, 0x2000, vec![]);
        let main = b.add_location(user, 0x3000, vec![]);
        b.add_sample(vec![k_leaf, k_caller, syscall_pc, main], vec![1], vec![]);
        b.add_sample(vec![spin_pc, as_caller, main], vec![1], vec![]);
        let leaves = leaf_locations(&b.finish());
        let want: HashSet<u64> = [k_leaf, syscall_pc, spin_pc].into();
        assert_eq!(leaves, want);
    }
}

//! What each fuzz target in `fuzz/` does with its input bytes.
//!
//! The targets are one-line wrappers around these functions so that the
//! exact same code runs under libFuzzer (`cargo xtask fuzz`) and in the
//! plain `cargo test` below, which replays the committed seeds and every
//! crash the fuzzer ever found (`fuzz/regressions/<target>/`). Built only
//! for tests and with the `fuzzing` feature, which the fuzz crate enables:
//! it is not part of the profiler.
//!
//! Each function feeds untrusted bytes to one parser and then uses the
//! result the way the profiler does, so that bad values reach the code that
//! trusts them. A panic, an overflow (the fuzz build checks arithmetic), a
//! hang or a broken invariant (checked with `assert!` here) is a finding.

use std::cell::RefCell;
use std::sync::Arc;

use prost::Message;

use crate::agent::http::parse_query;
use crate::agent::labels::parse_cgroup;
use crate::offline::symbolize_profile;
use crate::pprof;
use crate::process::maps;
use crate::report::{self, Options};
use crate::symbolize::elf::ElfSymbolizer;
use crate::symbolize::go::GoTable;
use crate::symbolize::kernel::Kallsyms;
use crate::symbolize::locate::Locator;
use crate::symbolize::Symbolizer;
use crate::unwind::table;

/// What a target does with one input.
pub type Harness = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs`.
pub const TARGETS: &[(&str, Harness)] = &[
    ("gopclntab", gopclntab),
    ("eh_frame", eh_frame),
    ("pprof", pprof),
    ("proc_maps", proc_maps),
    ("cgroup", cgroup),
    ("http_query", http_query),
];

/// `.gopclntab`: the ELF is parsed (section, symbol or segment scan), then
/// the table answers queries at addresses spread over the text it claims to
/// cover and at addresses taken from the input itself.
pub fn gopclntab(data: &[u8]) {
    let Ok(Some(table)) = GoTable::parse(Arc::from(data)) else {
        return;
    };
    let _ = (
        table.go_version(),
        table.go_build_id(),
        table.function_count(),
    );
    // The cgo unwind rules read the function table by name, its pcsp
    // deltas and code bytes: every span they give must lie in the text.
    for (start, end, _) in crate::unwind::cgo::trampoline_rules(&table) {
        assert!(start < end, "empty rule span {start:#x}..{end:#x}");
    }
    let (lo, hi) = table.text_range();
    assert!(lo < hi, "empty text range {lo:#x}..{hi:#x} accepted");
    let span = hi - lo;
    let spread = (0..16u64).map(|i| lo.wrapping_add(span / 16 * i + i));
    let edges = [lo.wrapping_sub(1), lo, hi - 1, hi, 0, u64::MAX];
    let from_input = data
        .rchunks_exact(8)
        .take(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()));
    for pc in spread.chain(edges).chain(from_input) {
        let inside = table.contains(pc);
        let frames = table.lookup(pc);
        if !inside {
            assert!(frames.is_none(), "frames for {pc:#x} outside the text");
        }
        if let Some((entry, _name)) = table.function(pc) {
            assert!(entry <= pc, "function entry {entry:#x} after {pc:#x}");
            let _ = table.lookup(entry);
        }
    }
}

/// `.eh_frame`/`.debug_frame` → unwind rows, from a whole ELF file as the
/// loader passes it. The rows must come out sorted by offset with no two
/// neighbours alike, which the BPF binary search relies on.
pub fn eh_frame(data: &[u8]) {
    let Ok(rows) = table::compile(data) else {
        return;
    };
    for w in rows.windows(2) {
        assert!(w[0].pc < w[1].pc, "rows out of order");
        assert_ne!(
            table::Rule::of(&w[0]),
            table::Rule::of(&w[1]),
            "equal neighbours"
        );
    }
}

/// A pprof file as `report` and `symbolize` read it: decoded, then every
/// report output built from it (top table, traces, folded stacks, flame
/// graph, with and without filters), then symbolized offline against a
/// small kallsyms and no binaries, and encoded again.
pub fn pprof(data: &[u8]) {
    let Ok(profile) = pprof::decode(data) else {
        return;
    };
    let plain = Options::default();
    let filtered = Options {
        focus: Some("a|main".into()),
        ignore: Some("runtime".into()),
        hide: Some("inner".into()),
        tagfocus: Some("pid=1:".into()),
        tagignore: Some("thread=x".into()),
        noinlines: true,
        sample_index: Some("0".into()),
        unit: "ms".into(),
        nodecount: 0,
    };
    for opts in [&plain, &filtered] {
        let _ = report::top_table_with(&profile, opts);
        let _ = report::traces(&profile, opts);
        let _ = report::write_collapsed_with(&profile, opts, &mut Vec::new());
    }
    let _ = report::default_title(&profile);
    let _ = report::write_flamegraph_with(&profile, "fuzz", &plain, &mut Vec::new());

    let mut locator = Locator::new(Vec::new(), Vec::new());
    let (out, _reports) = OFFLINE_SYMBOLIZER.with_borrow_mut(|symbolizer| {
        symbolize_profile(profile, &mut locator, symbolizer, None, None)
    });
    let bytes = out.encode_to_vec();
    assert!(
        bytes.is_empty() || pprof::decode(&bytes).is_ok(),
        "symbolize wrote a profile it cannot read back"
    );
}

thread_local! {
    /// The offline symbolizer, built once (blazesym's set-up is the slow
    /// part; it is not `Send`, and libFuzzer runs on one thread). No binary
    /// is ever found, so only the kernel table is consulted.
    static OFFLINE_SYMBOLIZER: RefCell<Symbolizer> = RefCell::new(Symbolizer::with_parts(
        ElfSymbolizer::with_debug_dirs(&[]),
        Some(Kallsyms::parse(
            "ffffffff81000000 T _stext\n\
             ffffffff81001000 t do_one_initcall\n\
             ffffffff81002000 T ksys_write [ext4]\n\
             ffffffffa0000000 T module_fn\t[mod]\n",
        )),
    ));
}

/// `/proc/PID/maps`: parsed, then searched as the normalizer does, at the
/// edges of every mapping.
pub fn proc_maps(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let entries = maps::parse(&text);
    for e in &entries {
        assert!(e.start <= e.end, "inverted mapping accepted");
        for addr in [e.start, e.end.wrapping_sub(1), e.end] {
            if let Some(m) = maps::find(&entries, addr) {
                assert!(
                    m.contains(addr),
                    "find returned a mapping without {addr:#x}"
                );
                let _ = (m.file_offset(addr), m.is_file());
            }
        }
    }
}

/// `/proc/PID/cgroup`.
pub fn cgroup(data: &[u8]) {
    let ids = parse_cgroup(&String::from_utf8_lossy(data));
    if let Some(id) = ids.container_id {
        assert!(!id.is_empty(), "empty container ID");
    }
}

/// The agent's profile query: the raw query string through axum's own
/// `Query` extractor (percent- and form-decoding, as the handler gets it),
/// and the same bytes split on `&`/`=` without decoding, for values no URI
/// could carry.
pub fn http_query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let uri = format!("/debug/pprof/profile?{text}").parse::<axum::http::Uri>();
    if let Ok(uri) = uri {
        type Pairs = axum::extract::Query<Vec<(String, String)>>;
        if let Ok(axum::extract::Query(pairs)) = Pairs::try_from_uri(&uri) {
            check_query(&pairs);
        }
    }
    let raw: Vec<(String, String)> = text
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.to_owned(), String::new()),
        })
        .collect();
    check_query(&raw);
}

/// Parses one query and checks the promises of its answer.
fn check_query(pairs: &[(String, String)]) {
    use crate::agent::http::{Target, MAX_SECONDS};
    let Ok(q) = parse_query(pairs) else {
        return;
    };
    assert!(
        (1..=MAX_SECONDS).contains(&q.seconds),
        "seconds out of range"
    );
    match q.target {
        Target::Pid(pid) => assert!(pid > 0, "pid 0 accepted"),
        Target::Container(id) => assert!(
            (12..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "bad container ID accepted: {id:?}"
        ),
        Target::Pod { namespace, name } => {
            assert!(!namespace.is_empty() && !name.is_empty() && !name.contains('/'));
        }
        Target::Node => {}
    }
}

#[cfg(test)]
mod tests {
    use super::TARGETS;
    use std::path::{Path, PathBuf};

    /// `fuzz/` at the workspace root.
    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
    }

    /// The files directly under `dir` (none if it does not exist).
    fn files(dir: &Path) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut v: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    }

    /// Every crash the fuzzers found, and every committed seed, run through
    /// its target: none may panic. The seeds are real inputs, so the test
    /// also fails if a seed directory goes missing.
    #[test]
    fn seeds_and_regressions_replay_cleanly() {
        let dir = fuzz_dir();
        for (name, run) in TARGETS {
            let seeds = files(&dir.join("seeds").join(name));
            assert!(!seeds.is_empty(), "no seeds for fuzz target {name}");
            let regressions = files(&dir.join("regressions").join(name));
            for path in seeds.iter().chain(&regressions) {
                let data = std::fs::read(path).unwrap();
                eprintln!("{name}: {}", path.display());
                run(&data);
            }
        }
    }
}

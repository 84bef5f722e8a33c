//! Answers for real fixture binaries, compared with Go's own tools and
//! runtime: the symbol table, `go tool addr2line`, `go tool buildid`, and
//! the runtime's CPU profile (which expands inlined frames itself).

use super::super::testutil::{self, Build};
use super::super::GoFrame;
use super::*;

/// Whether a table name matches a symbol name. Go 1.19's linker writes some
/// generated names differently in the two tables (`type..eq.[...]T` for the
/// symbol `type..eq.[5]T`, `·` for `.`); the runtime reports the table's form.
fn same_function(table: &str, symbol: &str) -> bool {
    let table = &table.replace('·', ".");
    if table == symbol {
        return true;
    }
    let Some((pre, post)) = table.split_once("[...]") else {
        return false;
    };
    symbol.len() > pre.len() + post.len()
        && symbol.starts_with(pre)
        && symbol.ends_with(post)
        && symbol[pre.len()..].starts_with('[')
        && symbol[..symbol.len() - post.len()].ends_with(']')
}

/// Function names of a frame chain.
fn names(frames: &[GoFrame]) -> Vec<&str> {
    frames.iter().map(|f| f.function.as_str()).collect()
}

#[test]
fn version_and_build_id_match_go_tool() {
    for bin in all_bins() {
        assert_eq!(
            bin.table.go_version(),
            Some(bin.tc.version.as_str()),
            "{}",
            bin.label
        );
        let want = testutil::go_buildid(&bin.tc, &bin.path);
        assert_eq!(
            bin.table.go_build_id(),
            Some(want.as_str()),
            "{}",
            bin.label
        );
    }
}

#[test]
fn every_function_symbol_resolves_to_its_name() {
    for bin in unstripped_bins() {
        let syms = text_symbols(&bin.data);
        let mut checked = 0;
        for (addr, size, name) in syms.iter().filter(|s| bin.table.contains(s.0)) {
            // The symbol table marks assembly (ABI0) functions; pclntab does not.
            let name = name.strip_suffix(".abi0").unwrap_or(name);
            let last = addr + size - 1;
            for pc in [*addr, last] {
                let frames = bin
                    .table
                    .lookup(pc)
                    .unwrap_or_else(|| panic!("{}: no frames at {pc:#x}", bin.label));
                let physical = frames.last().expect("at least one frame");
                let ok = same_function(&physical.function, name);
                assert!(
                    ok,
                    "{}: {} at {pc:#x}, symbol {name}",
                    bin.label, physical.function
                );
                assert!(!physical.inlined);
            }
            let found = bin.table.function(*addr).expect("function");
            assert!(
                found.0 == *addr && same_function(&found.1, name),
                "{}: {found:?} vs {name}",
                bin.label
            );
            checked += 1;
        }
        assert!(
            checked > 1000,
            "{}: only {checked} symbols in the table",
            bin.label
        );
    }
}

#[test]
fn text_start_matches_runtime_text() {
    for bin in unstripped_bins() {
        let want = symbol(&bin.data, "runtime.text").expect("runtime.text");
        assert_eq!(bin.table.text_start, want, "{}", bin.label);
        assert_eq!(
            bin.table.text_range().0,
            want,
            "{}: first function starts the text",
            bin.label
        );
    }
}

#[test]
fn file_and_line_match_addr2line() {
    for bin in unstripped_bins() {
        let mut pcs = sample_pcs(&bin.table, 3000);
        for f in ["main.main", "main.loop", "main.hot60", "main.cool10"] {
            let (lo, hi) = symbol_range(&bin.data, f).expect("fixture function");
            pcs.extend(lo..hi);
        }
        // Go 1.19's addr2line cannot find the table in its own PIEs
        // (`.data.rel.ro.gopclntab`); the newest toolchain reads all formats.
        let oracle = testutil::go127();
        let want = testutil::addr2line(&oracle, &bin.path, &pcs);
        for (pc, (func, file, line)) in pcs.iter().zip(&want) {
            let frames = bin
                .table
                .lookup(*pc)
                .unwrap_or_else(|| panic!("{}: no frames at {pc:#x}", bin.label));
            let inner = &frames[0];
            let ctx = format!("{} at {pc:#x}: {frames:?}", bin.label);
            assert_eq!(frames.last().map(|f| &f.function), Some(func), "{ctx}");
            assert_eq!((&inner.file, inner.line), (file, *line), "{ctx}");
        }
    }
}

/// Lines of the fixture the inline chains must point at.
struct Lines {
    func_mix: u32,
    func_warm30: u32,
    func_hot60: u32,
    func_loop: u32,
    mix_body: std::ops::RangeInclusive<u32>,
    mix_in_warm30: u32,
    mix_in_hot60: u32,
    warm30_in_loop: u32,
}

impl Lines {
    fn read() -> Lines {
        let func_mix = source_line("func mix(");
        Lines {
            func_mix,
            func_warm30: source_line("func warm30("),
            func_hot60: source_line("func hot60("),
            func_loop: source_line("func loop("),
            mix_body: func_mix..=func_mix + 5,
            mix_in_warm30: source_line("x = mix(x) + 5"),
            mix_in_hot60: source_line("x = mix(x) + 3"),
            warm30_in_loop: source_line("x = warm30(x, 3)"),
        }
    }
}

#[test]
fn inline_chains_in_the_hot_loop() {
    let l = Lines::read();
    for bin in all_bins() {
        // Stripped binaries have no symbols: find the functions by name via the table.
        let range_of = |name: &str| {
            let (lo, hi) = bin.table.text_range();
            let entry = (lo..hi)
                .step_by(16)
                .find_map(|pc| bin.table.function(pc).filter(|f| f.1 == name))?;
            // The last function in the text runs to its end.
            let end = (entry.0..hi)
                .find(|pc| bin.table.function(*pc).map(|f| f.0) != Some(entry.0))
                .unwrap_or(hi);
            Some(entry.0..end)
        };
        let has_start = bin.tc.version.starts_with("go1.27");
        let sl = |n: u32| if has_start { n } else { 0 };

        let hot_loop =
            range_of("main.loop").unwrap_or_else(|| panic!("{}: no main.loop", bin.label));
        let chains: Vec<Vec<GoFrame>> = hot_loop.filter_map(|pc| bin.table.lookup(pc)).collect();
        let warm = chains
            .iter()
            .find(|c| names(c) == ["main.mix", "main.warm30", "main.loop"])
            .unwrap_or_else(|| panic!("{}: no mix -> warm30 -> loop chain", bin.label));
        assert_eq!(
            warm.iter().map(|f| f.inlined).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert!(
            l.mix_body.contains(&warm[0].line),
            "{}: {warm:?}",
            bin.label
        );
        assert_eq!(
            (warm[1].line, warm[2].line),
            (l.mix_in_warm30, l.warm30_in_loop),
            "{}",
            bin.label
        );
        assert!(
            warm.iter().all(|f| f.file.ends_with("goinline/main.go")),
            "{}",
            bin.label
        );
        let starts: Vec<u32> = warm.iter().map(|f| f.start_line).collect();
        assert_eq!(
            starts,
            [sl(l.func_mix), sl(l.func_warm30), sl(l.func_loop)],
            "{}",
            bin.label
        );

        let hot = range_of("main.hot60").expect("main.hot60");
        let hot_chain = hot
            .filter_map(|pc| bin.table.lookup(pc))
            .find(|c| names(c) == ["main.mix", "main.hot60"])
            .unwrap_or_else(|| panic!("{}: no mix -> hot60 chain", bin.label));
        assert_eq!(hot_chain[1].line, l.mix_in_hot60, "{}", bin.label);
        assert_eq!(hot_chain[1].start_line, sl(l.func_hot60), "{}", bin.label);
    }
}

#[test]
fn matches_the_go_runtimes_own_profile() {
    // The runtime symbolizes its CPU profile itself, inlined frames included;
    // each location's address is the PC it looked up. Non-PIE only, so the
    // runtime addresses equal link-time addresses.
    for tc in testutil::toolchains() {
        let bin = load(&tc, Build::default());
        let dir = tempfile::tempdir().expect("temp dir");
        let prof = dir.path().join("cpu.pprof");
        testutil::run(
            &bin.path,
            &[
                "-seconds",
                "0.5",
                "-cpuprofile",
                prof.to_str().expect("utf-8 path"),
            ],
        );
        let locs = testutil::profile_locations(&tc, &prof);
        assert!(
            locs.len() > 5,
            "{}: only {} locations",
            bin.label,
            locs.len()
        );
        let mut saw_nested = false;
        for (addr, want) in &locs {
            let got = bin
                .table
                .lookup(*addr)
                .unwrap_or_else(|| panic!("{}: no frames at {addr:#x}", bin.label));
            let got: Vec<testutil::ProfileLine> = got
                .iter()
                .map(|f| testutil::ProfileLine {
                    function: f.function.clone(),
                    file: f.file.clone(),
                    line: f.line,
                    start_line: if want[0].start_line == 0 {
                        0
                    } else {
                        f.start_line
                    },
                })
                .collect();
            assert_eq!(&got, want, "{} at {addr:#x}", bin.label);
            saw_nested |= want.len() >= 3;
        }
        assert!(
            saw_nested,
            "{}: the profile had no doubly inlined location",
            bin.label
        );
    }
}

#[test]
fn outside_the_text_is_none() {
    for bin in all_bins() {
        let (lo, hi) = bin.table.text_range();
        assert!(
            bin.table.contains(lo) && bin.table.contains(hi - 1),
            "{}",
            bin.label
        );
        for pc in [0, lo - 1, hi, hi + 4096, u64::MAX] {
            assert!(!bin.table.contains(pc), "{}: {pc:#x}", bin.label);
            assert_eq!(bin.table.lookup(pc), None, "{}: {pc:#x}", bin.label);
            assert_eq!(bin.table.function(pc), None, "{}: {pc:#x}", bin.label);
        }
    }
}

#[test]
fn stripped_builds_answer_like_unstripped_ones() {
    for tc in testutil::toolchains() {
        for full in variants(&tc).into_iter().filter(|b| !b.stripped) {
            let (a, b) = (
                load(&tc, full),
                load(
                    &tc,
                    Build {
                        stripped: true,
                        ..full
                    },
                ),
            );
            // The code is laid out identically; only displacements to data
            // that moved (build info records the flags) differ.
            let size = |d: &[u8]| section_bytes(d, ".text").map(|t| t.len());
            assert_eq!(
                size(&a.data),
                size(&b.data),
                "{}: text size differs",
                a.label
            );
            assert_eq!(a.table.text_range(), b.table.text_range(), "{}", a.label);
            for pc in sample_pcs(&a.table, 20_000) {
                assert_eq!(
                    a.table.lookup(pc),
                    b.table.lookup(pc),
                    "{} vs {} at {pc:#x}",
                    a.label,
                    b.label
                );
            }
        }
    }
}

//! Open time and lookup rate on a large Go binary (the toolchain's own
//! `go` and `compile` commands). Not an assertion, just numbers:
//!
//! `cargo test -p rprof-bpf --release --lib symbolize::go::tests::perf -- --ignored --nocapture`

use std::path::PathBuf;
use std::time::Instant;

use super::super::testutil;
use super::*;

/// The largest Go binaries at hand: the toolchains' own commands.
fn big_binaries() -> Vec<PathBuf> {
    let tc = testutil::go127();
    let out = testutil::go_command(&tc)
        .args(["env", "GOROOT", "GOTOOLDIR"])
        .output()
        .expect("go env");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let (root, tools) = (
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
    );
    let mut bins = vec![
        PathBuf::from(root).join("bin/go"),
        PathBuf::from(tools).join("compile"),
    ];
    // A Go 1.19 (1.18-format table) binary too.
    bins.push(
        testutil::go119()
            .go
            .with_file_name("../pkg/tool/linux_amd64/compile"),
    );
    bins
}

#[test]
#[ignore = "measurement; run with --ignored --nocapture, preferably --release"]
fn open_time_and_lookup_rate() {
    for path in big_binaries() {
        let data: Arc<[u8]> = std::fs::read(&path).expect("read binary").into();
        let mut opens = Vec::new();
        for _ in 0..7 {
            let t0 = Instant::now();
            let table = GoTable::parse(data.clone()).expect("parse").expect("Go");
            opens.push(t0.elapsed());
            drop(table);
        }
        opens.sort();
        // Without section headers the table is found by scanning segments.
        let mut bare = data.to_vec();
        bare[0x28..0x30].fill(0);
        bare[0x3c..0x40].fill(0);
        let bare: Arc<[u8]> = bare.into();
        let t0 = Instant::now();
        let scanned = GoTable::parse(bare).expect("parse").expect("Go");
        let scan_open = t0.elapsed();
        assert_eq!(
            scanned.text_range(),
            GoTable::parse(data.clone())
                .expect("ok")
                .expect("Go")
                .text_range()
        );
        eprintln!("  open without section headers (segment scan): {scan_open:?}");
        let table = GoTable::parse(data.clone()).expect("parse").expect("Go");
        let t0 = Instant::now();
        let _ = table.lookup(table.text_range().0 + 64);
        let first = t0.elapsed();

        // Sweep: 1M PCs in address order over all of the text (each function
        // decoded once, then hit). Scattered: 200k PCs over all of the text in
        // random order (more functions than the cache holds, so many misses).
        // Warm: a profile-sized working set of 5k distinct PCs, in random
        // order, 200 times.
        let (sweep, frames) = rate(&table, &sample_pcs(&table, 1_000_000));
        let mut scattered = sample_pcs(&table, 200_000);
        shuffle(&mut scattered);
        let (cold, _) = rate(&table, &scattered);
        let mut hot = sample_pcs(&table, 5_000).repeat(200);
        shuffle(&mut hot);
        let (warm, _) = rate(&table, &hot);
        for n in [50, 500, 2000] {
            let mut few = sample_pcs(&table, n).repeat(1_000_000 / n as usize);
            shuffle(&mut few);
            eprintln!("  {n} distinct: {:.2} M/s", rate(&table, &few).0);
        }
        eprintln!(
            "{}: {:.1} MB, {} functions, {}, open median {:?} (min {:?}), first lookup {:?}, \
             lookups/s: sweep {:.2} M, scattered {:.2} M, warm {:.2} M; {:.2} frames/PC",
            path.display(),
            data.len() as f64 / 1e6,
            table.function_count(),
            table.go_version().unwrap_or("?"),
            opens[opens.len() / 2],
            opens[0],
            first,
            sweep,
            cold,
            warm,
            frames,
        );
    }
}

/// Lookups per second (millions) and frames per PC over `pcs`.
fn rate(table: &GoTable, pcs: &[u64]) -> (f64, f64) {
    let t0 = Instant::now();
    let mut frames = 0usize;
    for &pc in pcs {
        frames += table.lookup(pc).map_or(0, |f| f.len());
    }
    let secs = t0.elapsed().as_secs_f64();
    (
        pcs.len() as f64 / secs / 1e6,
        frames as f64 / pcs.len() as f64,
    )
}

/// Fisher-Yates with a fixed-seed xorshift, so runs are comparable.
fn shuffle(v: &mut [u64]) {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = usize::try_from(x % (i as u64 + 1)).unwrap_or(0);
        v.swap(i, j);
    }
}

//! Writes a large synthetic system-wide CPU profile, for the browser UI's
//! benchmark (`cargo xtask bench`, section "Browser UI"):
//!
//! ```text
//! cargo run --release --example synthetic_profile -- OUT.pb.gz [SAMPLES]
//! ```
//!
//! SAMPLES sample records (default 1,000,000), stacks of 8 to 48 frames in
//! 300 processes (40 programs) with 8 threads each, labelled as ours are
//! (pid, tid, thread, process). Each program has 1,500 stacks of its own,
//! some much hotter than others, and one sample in ten is a stack seen
//! nowhere else (the long tail of a real system-wide profile); stacks
//! share prefixes the way real ones do, over 20,000 functions in 40
//! binaries, every fifth frame with an inlined function.

use rprof_bpf::pprof::{
    self, Function, Label, Line, Location, Mapping, Profile, Sample, ValueType,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Skewed towards small values: a few hot choices, a long tail.
    fn skewed(&mut self, n: u64) -> u64 {
        let a = self.below(n);
        let b = self.below(n);
        a.min(b).min(self.below(n))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(out) = args.get(1) else {
        eprintln!("usage: synthetic_profile OUT.pb.gz [SAMPLES]");
        std::process::exit(2);
    };
    let samples: usize = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    const FUNCTIONS: u64 = 20_000;
    const BINARIES: u64 = 40;
    let mut p = Profile::default();
    let mut strings: Vec<String> = vec![String::new()];
    let mut s = |t: String| -> i64 {
        strings.push(t);
        strings.len() as i64 - 1
    };
    p.sample_type = vec![
        ValueType {
            r#type: s("samples".into()),
            unit: s("count".into()),
        },
        ValueType {
            r#type: s("cpu".into()),
            unit: s("nanoseconds".into()),
        },
    ];
    p.period_type = Some(ValueType {
        r#type: s("cpu".into()),
        unit: s("nanoseconds".into()),
    });
    p.period = 10_000_000;
    p.duration_nanos = 30_000_000_000;
    p.time_nanos = 1_700_000_000_000_000_000;
    for b in 0..BINARIES {
        p.mapping.push(Mapping {
            id: b + 1,
            memory_start: 0x40_0000 + b * 0x100_0000,
            memory_limit: 0x40_0000 + (b + 1) * 0x100_0000,
            filename: s(format!("/usr/bin/service-{b}")),
            has_functions: true,
            ..Default::default()
        });
    }
    for f in 0..FUNCTIONS {
        let bin = f % BINARIES;
        p.function.push(Function {
            id: f + 1,
            name: s(format!("svc{bin}/pkg{}.Func{f}", f % 97)),
            filename: s(format!("/src/svc{bin}/pkg{}/file{}.go", f % 97, f % 13)),
            start_line: (f % 500) as i64 + 1,
            ..Default::default()
        });
        // Every fifth location has a function inlined into it.
        let mut line = vec![Line {
            function_id: f + 1,
            line: (f % 500) as i64 + 3,
            ..Default::default()
        }];
        if f % 5 == 0 {
            line.insert(
                0,
                Line {
                    function_id: (f * 7 + 3) % FUNCTIONS + 1,
                    line: 10,
                    ..Default::default()
                },
            );
        }
        p.location.push(Location {
            id: f + 1,
            mapping_id: bin + 1,
            address: 0x40_0000 + bin * 0x100_0000 + f * 16,
            line,
            ..Default::default()
        });
    }
    let (k_pid, k_tid, k_thread, k_process) = (
        s("pid".into()),
        s("tid".into()),
        s("thread".into()),
        s("process".into()),
    );
    let comms: Vec<i64> = (0..40).map(|i| s(format!("service-{i}"))).collect();
    let threads: Vec<i64> = (0..8).map(|i| s(format!("worker-{i}"))).collect();
    // Entry chains: the shared tops of stacks.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let chains: Vec<Vec<u64>> = (0..64)
        .map(|_| {
            (0..4 + rng.below(6))
                .map(|_| rng.skewed(2000) + 1)
                .collect()
        })
        .collect();
    let random_stack = |rng: &mut Rng| -> Vec<u64> {
        let chain = &chains[rng.skewed(64) as usize];
        let depth = 8 + rng.below(41) as usize;
        let mut stack: Vec<u64> = chain.clone();
        while stack.len() < depth {
            // The next frame depends on the one above, so paths repeat.
            let prev = *stack.last().unwrap_or(&1);
            let next = (prev * 31 + rng.skewed(40) * 977) % FUNCTIONS + 1;
            stack.push(next);
        }
        stack.reverse(); // leaf first
        stack
    };
    let programs: Vec<Vec<Vec<u64>>> = (0..40)
        .map(|_| (0..1500).map(|_| random_stack(&mut rng)).collect())
        .collect();
    for _ in 0..samples {
        let proc_ = rng.below(300);
        let thread = rng.below(8);
        let stack = if rng.below(10) == 0 {
            random_stack(&mut rng)
        } else {
            programs[(proc_ % 40) as usize][rng.skewed(1500) as usize].clone()
        };
        p.sample.push(Sample {
            location_id: stack,
            value: vec![1, 10_000_000],
            label: vec![
                Label {
                    key: k_pid,
                    num: 1000 + proc_ as i64,
                    ..Default::default()
                },
                Label {
                    key: k_tid,
                    num: 100_000 + (proc_ * 8 + thread) as i64,
                    ..Default::default()
                },
                Label {
                    key: k_thread,
                    str: threads[thread as usize],
                    ..Default::default()
                },
                Label {
                    key: k_process,
                    str: comms[(proc_ % 40) as usize],
                    ..Default::default()
                },
            ],
        });
    }
    p.string_table = strings;
    let bytes = pprof::encode_gzip(&p);
    if let Err(e) = pprof::write_file_atomic(std::path::Path::new(out), &bytes) {
        eprintln!("cannot write {out}: {e}");
        std::process::exit(1);
    }
    println!("wrote {out}: {samples} samples, {} bytes", bytes.len());
}

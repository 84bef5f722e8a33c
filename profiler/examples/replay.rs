//! Replay bench of the engine's user-space cost per sample, without BPF.
//!
//! It starts `PROCS` real processes (`sleep`), so that ingest registers
//! real pids with real mappings and binaries, builds stacks for each from
//! addresses inside their executable mappings (a few dozen distinct stacks
//! per process, popular ones more often, 16-40 frames, some kernel
//! frames), and feeds samples through ingest → store → resolve at the rate
//! of a 64-CPU machine sampling at 100 Hz (6,400 samples/s of simulated
//! time). Both stores are measured: the recorder's totals and the agent's
//! window behind its lock, with one resolve of the whole window per
//! simulated 15 s (as the agent's push does).
//!
//! `cargo run --release --example replay [-- PROCS SECONDS]`; `cargo xtask
//! bench` runs it and puts the figures in BENCHMARKS.md. Prints one line
//! per store: `replay <store>: <ns> ns/sample ...`.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use profiler_ebpf::abi::{Sample, COMM_LEN, MAX_FRAMES};
use rprof_bpf::engine::ingest::{CgroupLabeler, Ingest, Ingested, Normalized};
use rprof_bpf::engine::resolve::{Pending, ResolveLimits, Resolver};
use rprof_bpf::engine::store::totals::Totals;
use rprof_bpf::engine::store::window::{Filter, Locs, Window};
use rprof_bpf::engine::store::{Added, StackId, Store};
use rprof_bpf::engine::Engine;

const RATE: u64 = 6_400;
const STACKS_PER_PROC: usize = 24;

/// A deterministic xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One process to replay: its pid, start time and sample templates.
struct Proc {
    templates: Vec<Sample>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let procs: usize = args.first().map_or(Ok(1000), |s| s.parse())?;
    let seconds: u64 = args.get(1).map_or(Ok(30), |s| s.parse())?;
    let children = spawn(procs)?;
    std::thread::sleep(Duration::from_millis(300));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let replay: Vec<Proc> = children
        .iter()
        .filter_map(|c| templates(c.id(), &mut rng))
        .collect();
    eprintln!("replay: {} processes with stacks", replay.len());
    let samples = RATE * seconds;

    let totals = run(&replay, samples, Totals::new(), |_| {}, |_, _| {});
    let window = Arc::new(Mutex::new(Window::new(Duration::from_secs(120), 64 << 20)));
    let resolver = Mutex::new(Resolver::new(ResolveLimits {
        symbolize: true,
        cache_entries: 50_000,
        parsed_memory: 16 << 20,
    }));
    let shared = Locked(window.clone());
    let expiring = window.clone();
    let expire = move |now: u64| {
        if let Ok(mut w) = expiring.lock() {
            w.expire(now);
        }
    };
    let agent = run(&replay, samples, shared, expire, |now, first| {
        // A push window: select the last 15 s and resolve what is new.
        let t0 = now.saturating_sub(15_000_000_000).max(first);
        if std::env::var_os("REPLAY_NO_RESOLVE").is_none() {
            resolve_window(&window, &resolver, t0, now);
        }
    });
    report("totals", &totals, samples, replay.len());
    report("window", &agent, samples, replay.len());
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    Ok(())
}

/// The agent's window behind its lock, as the agent's capture loop sees it.
struct Locked(Arc<Mutex<Window>>);

impl Store for Locked {
    fn add(&mut self, s: &Ingested<'_>) -> Added {
        self.0.lock().map(|mut w| w.add(s)).unwrap_or(Added {
            id: 0,
            needs_norm: false,
        })
    }
    fn set_norm(&mut self, id: StackId, norm: Normalized) {
        if let Ok(mut w) = self.0.lock() {
            w.set_norm(id, norm);
        }
    }
}

/// What a run cost: the steady state (the second half) and the whole.
struct Cost {
    steady_ns: f64,
    warm_ns: f64,
    resolve_ns: f64,
}

fn run<S: Store>(
    procs: &[Proc],
    samples: u64,
    store: S,
    mut on_tick: impl FnMut(u64),
    mut every_15s: impl FnMut(u64, u64),
) -> Cost {
    let mut engine = Engine::new(Ingest::new(Box::new(CgroupLabeler)), store);
    let mut rng = Rng(42);
    let first = mono_now();
    let step = 1_000_000_000 / RATE;
    // CPU time of this thread, not wall time: the bench must not depend on
    // what else the machine runs.
    let (mut half_at, mut resolve, mut warm_resolve) = (0u64, 0u64, 0u64);
    let begin = cpu_now();
    let mut next_push = first + 15_000_000_000;
    let mut sample = procs[0].templates[0];
    for i in 0..samples {
        if i == samples / 2 {
            half_at = cpu_now();
        }
        let p = &procs[rng.below(procs.len() as u64) as usize];
        // Popular stacks first: a skewed pick among the process's stacks.
        let k = (rng.below(p.templates.len() as u64) * rng.below(p.templates.len() as u64)
            / p.templates.len() as u64) as usize;
        let now = first + i * step;
        sample.clone_from(&p.templates[k]);
        sample.time_ns = now;
        engine.add(&sample, None);
        if i % (RATE / 5) == 0 {
            // The capture's 200 ms tick.
            engine.ingest.tick();
            on_tick(now);
        }
        if now >= next_push {
            let t = cpu_now();
            every_15s(now, first);
            let spent = cpu_now() - t;
            resolve += spent;
            if i >= samples / 2 {
                half_at += spent;
            } else {
                warm_resolve += spent;
            }
            next_push += 15_000_000_000;
        }
    }
    let end = cpu_now();
    let half = (samples / 2).max(1) as f64;
    Cost {
        warm_ns: half_at.saturating_sub(begin + warm_resolve) as f64 / half,
        steady_ns: end.saturating_sub(half_at) as f64 / half,
        resolve_ns: resolve as f64 / samples.max(1) as f64,
    }
}

fn resolve_window(window: &Mutex<Window>, resolver: &Mutex<Resolver>, t0: u64, t1: u64) {
    let Ok(sel) = window.lock().map(|w| w.select(&Filter::All, t0, t1)) else {
        return;
    };
    let pending: Vec<_> = sel
        .iter()
        .filter_map(|s| match &s.locs {
            Locs::Pending(maps) => Some((s, maps)),
            Locs::Ready(_) => None,
        })
        .collect();
    let stacks: Vec<Pending<'_>> = pending
        .iter()
        .map(|(s, maps)| Pending {
            addrs: &s.key.user[..maps.len()],
            maps,
        })
        .collect();
    let Ok(mut r) = resolver.lock() else {
        return;
    };
    let resolved = r.resolve(&stacks);
    let store = pending
        .iter()
        .zip(resolved)
        .map(|((s, _), locs)| (s.id, s.key.clone(), locs))
        .collect();
    if let Ok(mut w) = window.lock() {
        w.store(store);
    }
}

fn report(name: &str, c: &Cost, samples: u64, procs: usize) {
    println!(
        "replay {name}: {:.0} ns/sample at steady state ({:.0} ns while warming up), resolve {:.0} ns/sample, {samples} samples over {procs} processes at {RATE}/s",
        c.steady_ns, c.warm_ns, c.resolve_ns
    );
}

fn spawn(n: usize) -> std::io::Result<Vec<Child>> {
    (0..n)
        .map(|_| {
            Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
        })
        .collect()
}

/// Sample templates for `pid`: stacks of addresses inside its executable
/// file mappings, innermost first, with its real start time.
fn templates(pid: u32, rng: &mut Rng) -> Option<Proc> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let text: Vec<(u64, u64)> = maps
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?;
            let path = l.split_whitespace().nth(5)?;
            (perms.contains('x') && path.starts_with('/')).then_some(())?;
            let (a, b) = range.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect();
    if text.is_empty() {
        return None;
    }
    let start_ns = start_ns(pid)?;
    let mut comm = [0u8; COMM_LEN];
    comm[..5].copy_from_slice(b"sleep");
    let templates = (0..STACKS_PER_PROC)
        .map(|_| {
            let mut s = Sample {
                pid,
                tid: pid,
                cpu: 0,
                flags: 0,
                time_ns: 0,
                period: 10_000_000,
                start_ns,
                user_sp_word: 0,
                user_frames: 0,
                kernel_frames: 0,
                comm,
                user_stack: [0; MAX_FRAMES],
                kernel_stack: [0; MAX_FRAMES],
                state: 0,
                syscall: -1,
            };
            let depth = 16 + rng.below(25) as usize;
            for slot in s.user_stack.iter_mut().take(depth) {
                let (a, b) = text[rng.below(text.len() as u64) as usize];
                *slot = a + rng.below(b - a);
            }
            s.user_frames = depth as u32;
            let kdepth = rng.below(8) as usize;
            for (j, slot) in s.kernel_stack.iter_mut().take(kdepth).enumerate() {
                *slot = 0xffff_ffff_8100_0000 + 0x1000 * j as u64 + rng.below(0x800);
            }
            s.kernel_frames = kdepth as u32;
            s
        })
        .collect();
    Some(Proc { templates })
}

/// A process's start time as the BPF program reports it (monotonic ns),
/// from `/proc/PID/stat`'s boot-time ticks.
fn start_ns(pid: u32) -> Option<u64> {
    let ticks = rprof_bpf::process::start_ticks(pid)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let boot = clock(libc::CLOCK_BOOTTIME);
    let mono = clock(libc::CLOCK_MONOTONIC);
    let at_boot = ticks * (1_000_000_000 / hz);
    Some(at_boot.saturating_sub(boot.saturating_sub(mono)))
}

fn clock(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid local timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn cpu_now() -> u64 {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn mono_now() -> u64 {
    clock(libc::CLOCK_MONOTONIC)
}

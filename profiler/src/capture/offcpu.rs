//! The off-CPU programs (`profiler-ebpf/bpf/offcpu.h`): loading them,
//! attaching them to the scheduler's and the syscalls' BTF tracepoints,
//! starting their clock, and the sweep of threads still off CPU.

use std::io::Read;

use aya::maps::{Array, PerCpuArray};
use aya::programs::{BtfTracePoint, Iter};
use aya::{Btf, Ebpf};
use profiler_ebpf::abi;

use super::{root_cause, CaptureError};

/// Records and preemption unwinds each CPU may spend per 100 ms window
/// before its off-CPU sampling period doubles: 500/s, well above the
/// 2/P per thread (200/s at 100 Hz) one busy waiter costs.
pub const BUDGET_PER_WINDOW: u32 = 50;

/// The tracepoints, by program.
const TRACEPOINTS: [(&str, &str); 2] = [
    (abi::PROG_OFFCPU_SWITCH, "sched_switch"),
    (abi::PROG_OFFCPU_EXIT, "sys_exit"),
];

fn load_error(e: impl std::error::Error) -> CaptureError {
    CaptureError::Load(root_cause(&e))
}

/// Loads the programs (the kernel's BTF names their attach points).
pub fn load(bpf: &mut Ebpf) -> Result<(), CaptureError> {
    let btf = Btf::from_sys_fs().map_err(load_error)?;
    for (name, tp) in TRACEPOINTS {
        let prog: &mut BtfTracePoint = program(bpf, name)?.try_into().map_err(load_error)?;
        prog.load(tp, &btf).map_err(|e| {
            CaptureError::Load(format!(
                "the off-CPU program on tp_btf/{tp}: {}\nhint: off-CPU needs BTF tracepoints and task storage (Linux 5.11+)",
                root_cause(&e)
            ))
        })?;
    }
    let sweep: &mut Iter = program(bpf, abi::PROG_OFFCPU_SWEEP)?
        .try_into()
        .map_err(load_error)?;
    sweep.load("task", &btf).map_err(|e| {
        CaptureError::Load(format!(
            "the off-CPU sweep (iter.s/task): {}\nhint: it needs sleepable task iterators (Linux 5.18+)",
            root_cause(&e)
        ))
    })?;
    Ok(())
}

fn program<'a>(
    bpf: &'a mut Ebpf,
    name: &str,
) -> Result<&'a mut aya::programs::Program, CaptureError> {
    bpf.program_mut(name)
        .ok_or_else(|| CaptureError::Load(format!("the program {name} is missing")))
}

/// Attaches the tracepoints, then starts the clock: a thread off CPU since
/// before now counts its wait from now.
pub fn attach(bpf: &mut Ebpf) -> Result<(), CaptureError> {
    for (name, tp) in TRACEPOINTS {
        let prog: &mut BtfTracePoint = program(bpf, name)?.try_into().map_err(load_error)?;
        prog.attach().map_err(|e| CaptureError::Attach {
            cpu: 0,
            event: "off-cpu",
            reason: format!("tp_btf/{tp}: {}", root_cause(&e)),
        })?;
    }
    let map = bpf
        .map_mut(abi::MAP_OFFCPU_EPOCH)
        .ok_or_else(|| CaptureError::Load("the off-CPU epoch map is missing".into()))?;
    let mut epoch: Array<_, u64> = Array::try_from(map).map_err(load_error)?;
    epoch
        .set(0, super::clock::mono_now(), 0)
        .map_err(load_error)?;
    Ok(())
}

/// Runs the sweep: every target thread still off CPU sends a record of its
/// wait so far (into the ring buffer, read by the next drain), and its
/// clock restarts.
pub fn sweep(bpf: &mut Ebpf) -> Result<(), CaptureError> {
    let prog: &mut Iter = program(bpf, abi::PROG_OFFCPU_SWEEP)?
        .try_into()
        .map_err(load_error)?;
    let link = prog.attach().map_err(load_error)?;
    let link = prog.take_link(link).map_err(load_error)?;
    let mut file = link.into_file().map_err(load_error)?;
    // The program writes nothing to the file: reading it to the end runs
    // it once for every task.
    let mut sink = Vec::new();
    file.read_to_end(&mut sink).map_err(CaptureError::Ring)?;
    Ok(())
}

/// Unloads the programs (dropping their links): no more records.
pub fn detach(bpf: &mut Ebpf) {
    for (name, _) in TRACEPOINTS {
        if let Some(p) = bpf.program_mut(name) {
            if let Ok(prog) = <&mut BtfTracePoint>::try_from(p) {
                let _ = prog.unload();
            }
        }
    }
}

/// Waits the rate limit left unrecorded, summed over CPUs.
pub fn rate_limited(bpf: &Ebpf) -> u64 {
    let Some(map) = bpf.map(abi::MAP_OFFCPU_DROPS) else {
        return 0;
    };
    let Ok(drops) = PerCpuArray::<_, u64>::try_from(map) else {
        return 0;
    };
    drops.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

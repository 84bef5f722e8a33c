//! Checks made before a capture starts, so that a user learns about a
//! problem at once, with the fix, instead of after a 30 s wait.

use std::path::Path;

/// A problem found before capturing. `Usage` errors are the user's input
/// (exit code 2); `Environment` errors are the machine's (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Environment(String),
}

/// CAP_SYS_ADMIN: implies everything below on older kernels.
const CAP_SYS_ADMIN: u32 = 21;
/// CAP_PERFMON: perf_event_open system-wide.
const CAP_PERFMON: u32 = 38;
/// CAP_BPF: loading BPF programs and maps.
const CAP_BPF: u32 = 39;

/// The effective capability mask of this process, from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// We need CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN (which covers both on
/// kernels before 5.8 and still works after).
pub fn check_privileges() -> Result<(), PreflightError> {
    let caps = effective_caps().unwrap_or(0);
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(c, _)| !has(*c))
        .map(|(_, n)| n)
        .collect();
    Err(PreflightError::Environment(format!(
        "rprof-bpf needs root, or the capabilities CAP_BPF and CAP_PERFMON (missing: {}). \
         Run it with sudo, or grant them: sudo setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_syslog+ep $(command -v rprof-bpf)",
        missing.join(", ")
    )))
}

/// Where the kernel exposes its BTF.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The kernel must offer BPF (the `bpf` syscall is probed when loading)
/// and BTF, which the program's CO-RE relocations are resolved against.
/// Linux 5.17 is the oldest with everything the program uses (`bpf_loop`
/// for the unwinder).
pub fn check_kernel() -> Result<(), PreflightError> {
    if !Path::new(KERNEL_BTF).exists() {
        return Err(PreflightError::Environment(format!(
            "this kernel has no BTF ({KERNEL_BTF} is missing): rprof-bpf needs Linux 5.17 or later built with CONFIG_DEBUG_INFO_BTF=y and CONFIG_BPF_SYSCALL=y"
        )));
    }
    if !Path::new("/proc/sys/kernel/perf_event_paranoid").exists() {
        return Err(PreflightError::Environment(
            "this kernel has no perf events (/proc/sys/kernel/perf_event_paranoid is missing): rprof-bpf needs CONFIG_PERF_EVENTS=y".into(),
        ));
    }
    Ok(())
}

/// Every pid must name a running process.
pub fn check_pids(pids: &[u32]) -> Result<(), PreflightError> {
    for &pid in pids {
        if !crate::process::is_alive(pid) {
            return Err(PreflightError::Usage(format!(
                "no running process with pid {pid}"
            )));
        }
    }
    Ok(())
}

/// The frequency must be positive and within the kernel's limit
/// (`kernel.perf_event_max_sample_rate`).
pub fn check_frequency(hz: u64) -> Result<(), PreflightError> {
    if hz == 0 {
        return Err(PreflightError::Usage(
            "--frequency must be at least 1 Hz".into(),
        ));
    }
    let max = std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(max) = max {
        if hz > max {
            return Err(PreflightError::Usage(format!(
                "--frequency {hz} is above the kernel's limit of {max} Hz (sysctl kernel.perf_event_max_sample_rate)"
            )));
        }
    }
    Ok(())
}

/// The output must be creatable: its directory exists and is writable, and
/// the path is not a directory. Proven by creating (and removing) a temp
/// file next to it, which is exactly what the final write will do.
pub fn check_output(path: &Path) -> Result<(), PreflightError> {
    if path.is_dir() {
        return Err(PreflightError::Usage(format!(
            "output path {} is a directory",
            path.display()
        )));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(PreflightError::Usage(format!(
            "cannot write {}: directory {} does not exist",
            path.display(),
            dir.display()
        )));
    }
    tempfile::Builder::new()
        .prefix(".rprof-bpf-")
        .tempfile_in(dir)
        .map(drop)
        .map_err(|e| PreflightError::Usage(format!("cannot write {}: {e}", path.display())))?;
    if path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| PreflightError::Usage(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_checks() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_output(&dir.path().join("x.pb.gz")).is_ok());
        assert!(matches!(
            check_output(dir.path()),
            Err(PreflightError::Usage(_))
        ));
        let e = check_output(&dir.path().join("nope/x.pb.gz")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        // Nothing left behind by the probe.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn pid_and_frequency_checks() {
        assert!(check_pids(&[std::process::id()]).is_ok());
        let e = check_pids(&[std::process::id(), u32::MAX - 7]).unwrap_err();
        assert!(e.to_string().contains(&(u32::MAX - 7).to_string()));
        assert!(check_frequency(0).is_err());
        assert!(check_frequency(99).is_ok());
        assert!(check_frequency(u64::MAX).is_err());
    }
}

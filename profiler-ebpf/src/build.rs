//! How the BPF object is compiled. One place, so that `cargo xtask bpf` and
//! the freshness test cannot disagree about flags.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The compiler we pin: Debian's clang-19. Objects from other versions differ
/// byte for byte, which would make the freshness check meaningless.
pub const CLANG: &str = "clang-19";

/// Directory holding the C sources and the committed object. Spelled
/// through the workspace so it is right both here and in xtask, which
/// compiles this file as its own module.
pub fn bpf_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiler-ebpf/bpf")
}

/// The clang command that turns `bpf/profile.bpf.c` into `out`.
///
/// It runs inside `bpf/` with relative paths and
/// `-fdebug-compilation-dir=.`, so the output does not depend on where the
/// checkout lives: the same sources give the same bytes on every machine.
pub fn clang_command(out: &Path) -> Command {
    let mut cmd = Command::new(CLANG);
    cmd.current_dir(bpf_dir()).args([
        "-O2",
        "-g",
        "-target",
        "bpf",
        "-D__TARGET_ARCH_x86",
        "-I/usr/include/x86_64-linux-gnu",
        "-fdebug-compilation-dir=.",
        "-Wall",
        "-Werror",
        "-c",
        "profile.bpf.c",
        "-o",
    ]);
    cmd.arg(out);
    cmd
}

/// Path of the committed object.
pub fn committed_object() -> PathBuf {
    bpf_dir().join("profile.bpf.o")
}

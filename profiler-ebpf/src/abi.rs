//! Rust mirror of `bpf/abi.h`.
//!
//! Keep this file and the header in step: the `layout_matches_c_header` test
//! compiles the header with the host C compiler and compares every offset.

/// Frames kept per stack (`RPROF_MAX_FRAMES`).
pub const MAX_FRAMES: usize = 127;
/// Bytes of a task's comm (`RPROF_COMM_LEN`).
pub const COMM_LEN: usize = 16;
/// Entries of the tgid filter map (`RPROF_MAX_TARGETS`).
pub const MAX_TARGETS: usize = 1024;

/// `bpf_get_stack` failed for the user stack.
pub const FLAG_USER_STACK_ERR: u32 = 1 << 0;
/// `bpf_get_stack` failed for the kernel stack.
pub const FLAG_KERNEL_STACK_ERR: u32 = 1 << 1;

/// Ring buffer of [`Sample`] records.
pub const MAP_SAMPLES: &str = "samples";
/// Hash map of wanted tgids (key `u32`, value `u8`).
pub const MAP_TARGETS: &str = "targets";
/// Per-CPU count of samples lost to a full ring buffer.
pub const MAP_DROPS: &str = "drops";
/// `.rodata` global: 1 to sample only tgids in [`MAP_TARGETS`].
pub const GLOBAL_FILTER_PIDS: &str = "filter_pids";
/// `.rodata` global: 0 to skip kernel stacks.
pub const GLOBAL_CAPTURE_KERNEL: &str = "capture_kernel";
/// `.rodata` global (u64): wake the reader once this many bytes wait.
pub const GLOBAL_WAKEUP_BYTES: &str = "wakeup_bytes";

/// One sample as the BPF program writes it (`struct rprof_sample`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Sample {
    pub pid: u32,
    pub tid: u32,
    pub cpu: u32,
    pub flags: u32,
    pub time_ns: u64,
    pub period: u64,
    /// The word at the user stack pointer (user-mode samples), else 0: the
    /// return address a frameless leaf function leaves out of the chain.
    pub user_sp_word: u64,
    pub user_frames: u32,
    pub kernel_frames: u32,
    pub comm: [u8; COMM_LEN],
    pub user_stack: [u64; MAX_FRAMES],
    pub kernel_stack: [u64; MAX_FRAMES],
}

impl Sample {
    /// Reads a record from ring-buffer bytes. `None` if it is too short,
    /// which only a kernel/user ABI mismatch could cause.
    pub fn from_bytes(bytes: &[u8]) -> Option<Sample> {
        if bytes.len() < std::mem::size_of::<Sample>() {
            return None;
        }
        // SAFETY: the length is checked above, `Sample` is plain old data
        // (every bit pattern is valid) and read_unaligned has no alignment
        // requirement.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Sample>()) })
    }

    /// The valid user frames, innermost first.
    pub fn user_stack(&self) -> &[u64] {
        &self.user_stack[..(self.user_frames as usize).min(MAX_FRAMES)]
    }

    /// The valid kernel frames, innermost first.
    pub fn kernel_stack(&self) -> &[u64] {
        &self.kernel_stack[..(self.kernel_frames as usize).min(MAX_FRAMES)]
    }

    /// The thread name, up to its NUL.
    pub fn comm(&self) -> &[u8] {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        &self.comm[..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};
    use std::process::Command;

    /// Compiles a tiny C program against abi.h with the host compiler and
    /// compares what it prints with Rust's view of the same layout.
    #[test]
    fn layout_matches_c_header() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("layout.c");
        std::fs::write(
            &src,
            r#"
#include <stdio.h>
#include <stddef.h>
#include <linux/types.h>
#include "abi.h"
#define F(m) printf(#m " %zu\n", offsetof(struct rprof_sample, m))
int main(void) {
    printf("size %zu\n", sizeof(struct rprof_sample));
    F(pid); F(tid); F(cpu); F(flags); F(time_ns); F(period); F(user_sp_word);
    F(user_frames); F(kernel_frames); F(comm); F(user_stack); F(kernel_stack);
    printf("MAX_FRAMES %d\nCOMM_LEN %d\nMAX_TARGETS %d\n", RPROF_MAX_FRAMES, RPROF_COMM_LEN, RPROF_MAX_TARGETS);
    printf("FLAG_USER_STACK_ERR %u\nFLAG_KERNEL_STACK_ERR %u\n", RPROF_FLAG_USER_STACK_ERR, RPROF_FLAG_KERNEL_STACK_ERR);
    printf("MAP_SAMPLES %s\nMAP_TARGETS %s\nMAP_DROPS %s\n", RPROF_MAP_SAMPLES, RPROF_MAP_TARGETS, RPROF_MAP_DROPS);
    return 0;
}
"#,
        )
        .unwrap();
        let exe = dir.path().join("layout");
        let status = Command::new("cc")
            .arg("-I")
            .arg(crate::build::bpf_dir())
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .status()
            .expect("a host C compiler (cc) is needed for the layout test");
        assert!(status.success(), "abi.h does not compile for the host");
        let out = Command::new(&exe).output().unwrap();
        let c: String = String::from_utf8(out.stdout).unwrap();

        let rust = [
            ("size", size_of::<Sample>().to_string()),
            ("pid", offset_of!(Sample, pid).to_string()),
            ("tid", offset_of!(Sample, tid).to_string()),
            ("cpu", offset_of!(Sample, cpu).to_string()),
            ("flags", offset_of!(Sample, flags).to_string()),
            ("time_ns", offset_of!(Sample, time_ns).to_string()),
            ("period", offset_of!(Sample, period).to_string()),
            ("user_sp_word", offset_of!(Sample, user_sp_word).to_string()),
            ("user_frames", offset_of!(Sample, user_frames).to_string()),
            (
                "kernel_frames",
                offset_of!(Sample, kernel_frames).to_string(),
            ),
            ("comm", offset_of!(Sample, comm).to_string()),
            ("user_stack", offset_of!(Sample, user_stack).to_string()),
            ("kernel_stack", offset_of!(Sample, kernel_stack).to_string()),
            ("MAX_FRAMES", MAX_FRAMES.to_string()),
            ("COMM_LEN", COMM_LEN.to_string()),
            ("MAX_TARGETS", MAX_TARGETS.to_string()),
            ("FLAG_USER_STACK_ERR", FLAG_USER_STACK_ERR.to_string()),
            ("FLAG_KERNEL_STACK_ERR", FLAG_KERNEL_STACK_ERR.to_string()),
            ("MAP_SAMPLES", MAP_SAMPLES.to_string()),
            ("MAP_TARGETS", MAP_TARGETS.to_string()),
            ("MAP_DROPS", MAP_DROPS.to_string()),
        ];
        let expected: String = rust.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
        assert_eq!(c, expected);
    }

    /// The committed object must be what clang-19 makes of the committed C.
    /// Without clang-19 the check is skipped, except under CI, where a
    /// missing compiler is an error.
    #[test]
    fn committed_object_is_fresh() {
        let have_clang = Command::new(crate::build::CLANG)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !have_clang {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have clang-19 to check the committed BPF object"
            );
            eprintln!("clang-19 not found: skipping the BPF object freshness check");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("profile.bpf.o");
        let status = crate::build::clang_command(&out).status().unwrap();
        assert!(status.success(), "clang-19 failed on profile.bpf.c");
        let fresh = std::fs::read(&out).unwrap();
        let committed = std::fs::read(crate::build::committed_object()).unwrap();
        assert!(
            fresh == committed,
            "bpf/profile.bpf.o is stale: run `cargo xtask bpf` and commit the result"
        );
    }

    #[test]
    fn object_is_aligned_bpf_elf() {
        assert_eq!(crate::OBJECT.as_ptr() as usize % 8, 0);
        assert_eq!(&crate::OBJECT[..4], b"\x7fELF");
        // e_machine at offset 18: EM_BPF = 247.
        assert_eq!(
            u16::from_le_bytes([crate::OBJECT[18], crate::OBJECT[19]]),
            247
        );
    }
}

//! A kernel image (vmlinux) for naming the kernel frames of a raw profile
//! on another machine.
//!
//! A vmlinux numbers its symbols at link-time addresses; the running kernel
//! was moved by KASLR. The raw profile's kernel mapping records the runtime
//! `_stext` (see `encode::add_kernel_mapping`), so the slide is runtime
//! `_stext` minus the vmlinux's `_stext`, and a frame's link-time address is
//! its runtime address minus the slide. The naming itself is the ELF/DWARF
//! path every other file takes (symbol table, DWARF lines and inlined
//! frames when the vmlinux has them).

use std::path::Path;

use anyhow::{bail, Context, Result};
use object::read::elf::ElfFile64;
use object::{LittleEndian, Object, ObjectSymbol};

use super::SymbolFile;
use crate::pprof::Mapping;
use crate::process::buildid;

/// An opened vmlinux with a symbol table.
pub struct Vmlinux {
    pub file: SymbolFile,
    /// GNU build ID in hex, if the image has one.
    pub build_id: Option<String>,
    /// Link-time address of `_stext`.
    pub stext: u64,
}

impl Vmlinux {
    /// Opens `path` and reads what matching needs. Every error names the
    /// file: it is missing, not an ELF file, or has no usable symbols.
    pub fn open(path: &Path) -> Result<Vmlinux> {
        let file = SymbolFile::open(path)
            .with_context(|| format!("cannot read vmlinux file {}", path.display()))?;
        let stext = stext(&file.data)
            .map_err(|e| anyhow::anyhow!("vmlinux file {}: {e}", path.display()))?;
        let build_id = buildid::read(&file.data).gnu;
        Ok(Vmlinux {
            file,
            build_id,
            stext,
        })
    }

    /// The KASLR slide for a kernel mapping, or why this image must not
    /// name its frames: a build ID that differs or cannot be checked, or a
    /// profile that recorded no runtime `_stext`.
    pub fn slide_for(&self, mapping: &Mapping, mapping_build_id: &str) -> Result<i64, String> {
        let path = self.file.path.display();
        if mapping_build_id.is_empty() {
            return Err(format!(
                "the profile records no kernel build ID, so {path} cannot be checked: refused"
            ));
        }
        match &self.build_id {
            None => return Err(format!("{path} has no GNU build ID to check: refused")),
            Some(id) if !id.eq_ignore_ascii_case(mapping_build_id) => {
                return Err(format!(
                    "{path} has build ID {id}, not {mapping_build_id}: refused"
                ))
            }
            Some(_) => {}
        }
        let runtime_stext = runtime_stext(mapping).ok_or_else(|| {
            format!(
                "the profile records no runtime kernel text address (kallsyms was hidden, or an \
                 older rprof-bpf), so the KASLR slide is unknown: {path} not used"
            )
        })?;
        Ok(runtime_stext.wrapping_sub(self.stext) as i64)
    }
}

/// The runtime `_stext` a raw kernel mapping records: its start, repeated
/// as its file offset (perf's convention). Anything else (a mapping that
/// spans everything) records none.
pub fn runtime_stext(m: &Mapping) -> Option<u64> {
    (m.memory_start != 0 && m.file_offset == m.memory_start && m.memory_limit > m.memory_start)
        .then_some(m.memory_start)
}

/// Formats a slide the way people write address differences: `+0x1e00000`.
pub fn format_slide(slide: i64) -> String {
    if slide < 0 {
        format!("-{:#x}", slide.unsigned_abs())
    } else {
        format!("+{slide:#x}")
    }
}

/// The link-time address of `_stext`, the symbol the slide is measured at.
fn stext(data: &[u8]) -> Result<u64> {
    let Ok(elf) = ElfFile64::<LittleEndian>::parse(data) else {
        bail!("not a 64-bit little-endian ELF file (a compressed vmlinuz must be extracted first)");
    };
    if elf.symbol_table().is_none() {
        bail!("no symbol table (.symtab); a stripped image cannot name frames");
    }
    let found = elf
        .symbols()
        .find(|s| s.name_bytes() == Ok(b"_stext".as_slice()));
    match found {
        Some(s) => Ok(s.address()),
        None => bail!("no _stext symbol, so the KASLR slide cannot be measured"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(start: u64, limit: u64, offset: u64) -> Mapping {
        Mapping {
            memory_start: start,
            memory_limit: limit,
            file_offset: offset,
            ..Mapping::default()
        }
    }

    #[test]
    fn runtime_stext_only_from_a_recorded_range() {
        let k = 0xffffffff81000000;
        assert_eq!(runtime_stext(&mapping(k, k + 0x100000, k)), Some(k));
        assert_eq!(runtime_stext(&mapping(0, u64::MAX, 0)), None);
        // A live-symbolized mapping: kallsyms span, offset zero.
        assert_eq!(runtime_stext(&mapping(k, k + 0x100000, 0)), None);
    }

    #[test]
    fn slides_print_with_sign() {
        assert_eq!(format_slide(0x1e00000), "+0x1e00000");
        assert_eq!(format_slide(-0x200000), "-0x200000");
        assert_eq!(format_slide(0), "+0x0");
    }
}

//! The running kernel as the offline tests need it: its text symbols and
//! build ID, a vmlinux written from them, and the names a profile gives
//! its kernel frames.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use rprof_bpf::pprof::Profile;

/// A text symbol of the running kernel image (modules and BPF left out).
pub struct KernelSym {
    pub addr: u64,
    /// kallsyms type letter: `t` local, `T` global, `w`/`W` weak.
    pub kind: u8,
    pub name: String,
}

/// The running kernel's own text symbols, by address (aliases keep their
/// kallsyms order).
pub fn kernel_text_symbols() -> Vec<KernelSym> {
    let text = std::fs::read_to_string("/proc/kallsyms").unwrap();
    let mut syms: Vec<KernelSym> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // A fourth field is `[module]`: not part of vmlinux.
            let [addr, kind, name] = f[..] else {
                return None;
            };
            let addr = u64::from_str_radix(addr, 16).ok()?;
            let kind = kind.as_bytes()[0];
            (addr != 0 && b"tTwW".contains(&kind)).then(|| KernelSym {
                addr,
                kind,
                name: name.to_owned(),
            })
        })
        .collect();
    syms.sort_by_key(|s| s.addr);
    assert!(syms.len() > 10_000, "kallsyms hides addresses?");
    syms
}

/// The running kernel's GNU build ID as bytes.
pub fn kernel_build_id() -> Vec<u8> {
    let hex = rprof_bpf::symbolize::kernel::build_id().expect("a kernel build ID");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// Writes a vmlinux as the kernel build would, minus code and DWARF: an
/// x86-64 `ET_EXEC` whose `.text` spans the kernel's text at link-time
/// addresses (runtime minus `slide`), a `.symtab` holding every kernel text
/// symbol there (functions sized up to the next symbol, locals first as ELF
/// requires), and a `.notes` section and `PT_NOTE` with the GNU build ID.
pub fn write_vmlinux(path: &Path, syms: &[KernelSym], build_id: &[u8], slide: u64) {
    use object::elf;
    use object::write::elf::{FileHeader, ProgramHeader, SectionHeader, Sym, Writer};

    let link = |a: u64| a - slide;
    let text_start = link(syms[0].addr) & !0xfff;
    let text_end = link(syms[syms.len() - 1].addr) + 0x1000;
    let text_len = (text_end - text_start) as usize;
    // Sizes: up to the next symbol at a higher address.
    let sizes: Vec<u64> = (0..syms.len())
        .map(|i| {
            let next = syms[i..].iter().find(|s| s.addr > syms[i].addr);
            next.map_or(16, |n| n.addr - syms[i].addr)
        })
        .collect();
    let mut order: Vec<usize> = (0..syms.len()).collect();
    order.sort_by_key(|&i| syms[i].kind != b't');
    let locals = syms.iter().filter(|s| s.kind == b't').count() as u32;
    let mut note = Vec::new();
    for w in [4u32, build_id.len() as u32, elf::NT_GNU_BUILD_ID] {
        note.extend_from_slice(&w.to_le_bytes());
    }
    note.extend_from_slice(b"GNU\0");
    note.extend_from_slice(build_id);
    note.resize(note.len().div_ceil(4) * 4, 0);

    let mut out = Vec::new();
    let mut w = Writer::new(object::Endianness::Little, true, &mut out);
    w.reserve_file_header();
    w.reserve_program_headers(2);
    let text_off = w.reserve(text_len, 0x1000);
    let note_off = w.reserve(note.len(), 4);
    w.reserve_null_section_index();
    let text_name = w.add_section_name(b".text");
    let text_idx = w.reserve_section_index();
    let note_name = w.add_section_name(b".notes");
    w.reserve_section_index();
    let names: Vec<_> = order
        .iter()
        .map(|&i| {
            w.reserve_symbol_index(Some(text_idx));
            w.add_string(syms[i].name.as_bytes())
        })
        .collect();
    w.reserve_symtab_section_index();
    w.reserve_symtab();
    w.reserve_strtab_section_index();
    w.reserve_strtab();
    w.reserve_shstrtab_section_index();
    w.reserve_shstrtab();
    w.reserve_section_headers();

    w.write_file_header(&FileHeader {
        os_abi: elf::ELFOSABI_NONE,
        abi_version: 0,
        e_type: elf::ET_EXEC,
        e_machine: elf::EM_X86_64,
        e_entry: text_start,
        e_flags: 0,
    })
    .unwrap();
    w.write_align_program_headers();
    w.write_program_header(&ProgramHeader {
        p_type: elf::PT_LOAD,
        p_flags: elf::PF_R | elf::PF_X,
        p_offset: text_off as u64,
        p_vaddr: text_start,
        p_paddr: text_start,
        p_filesz: text_len as u64,
        p_memsz: text_len as u64,
        p_align: 0x1000,
    });
    w.write_program_header(&ProgramHeader {
        p_type: elf::PT_NOTE,
        p_flags: elf::PF_R,
        p_offset: note_off as u64,
        p_vaddr: 0,
        p_paddr: 0,
        p_filesz: note.len() as u64,
        p_memsz: note.len() as u64,
        p_align: 4,
    });
    w.pad_until(text_off);
    w.write(&vec![0xcc; text_len]); // int3, as padding between functions
    w.pad_until(note_off);
    w.write(&note);
    w.write_null_symbol();
    for (&i, &name) in order.iter().zip(&names) {
        let bind = match syms[i].kind {
            b't' => elf::STB_LOCAL,
            b'T' => elf::STB_GLOBAL,
            _ => elf::STB_WEAK,
        };
        w.write_symbol(&Sym {
            name: Some(name),
            section: Some(text_idx),
            st_info: (bind << 4) | elf::STT_FUNC,
            st_other: elf::STV_DEFAULT,
            st_shndx: 0,
            st_value: link(syms[i].addr),
            st_size: sizes[i],
        });
    }
    w.write_strtab();
    w.write_shstrtab();
    w.write_null_section_header();
    w.write_section_header(&SectionHeader {
        name: Some(text_name),
        sh_type: elf::SHT_PROGBITS,
        sh_flags: u64::from(elf::SHF_ALLOC | elf::SHF_EXECINSTR),
        sh_addr: text_start,
        sh_offset: text_off as u64,
        sh_size: text_len as u64,
        sh_link: 0,
        sh_info: 0,
        sh_addralign: 0x1000,
        sh_entsize: 0,
    });
    w.write_section_header(&SectionHeader {
        name: Some(note_name),
        sh_type: elf::SHT_NOTE,
        sh_flags: 0,
        sh_addr: 0,
        sh_offset: note_off as u64,
        sh_size: note.len() as u64,
        sh_link: 0,
        sh_info: 0,
        sh_addralign: 4,
        sh_entsize: 0,
    });
    w.write_symtab_section_header(1 + locals);
    w.write_strtab_section_header();
    w.write_shstrtab_section_header();
    assert_eq!(w.reserved_len(), w.len());
    std::fs::write(path, out).unwrap();
}

/// Function name of each kernel location, keyed by (address, is it some
/// sample's leaf); unnamed locations map to `None`.
pub fn kernel_names(p: &Profile) -> HashMap<(u64, bool), Option<String>> {
    let k = p
        .mapping
        .iter()
        .find(|m| p.str(m.filename) == "[kernel.kallsyms]")
        .expect("a kernel mapping");
    let leaves: BTreeSet<u64> = p
        .sample
        .iter()
        .filter_map(|s| s.location_id.first().copied())
        .collect();
    p.location
        .iter()
        .filter(|l| l.mapping_id == k.id)
        .map(|l| {
            let name = l.line.first().map(|ln| {
                let f = p.function.iter().find(|f| f.id == ln.function_id).unwrap();
                p.str(f.name).to_owned()
            });
            ((l.address, leaves.contains(&l.id)), name)
        })
        .collect()
}

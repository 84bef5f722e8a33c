//! The little we need from the ELF container, read once and kept as plain data.
//!
//! The Go tables point at each other by *virtual address* (the moduledata, the
//! inline trees in `go:func.*`, the build info strings), so the core service
//! here is mapping a link-time virtual address to bytes of the file through the
//! `PT_LOAD` program headers. Section headers and the symbol table are only
//! conveniences: a stripped or section-less binary must still work, so nothing
//! here requires them.
//!
//! Parsing uses `object`'s low-level, class-generic ELF API; the results are
//! copied into owned structs so [`super::GoTable`] does not borrow from a
//! parsed `object` file (the expensive parts, symbols and relocations, are
//! re-parsed on demand, which is cheap because `object` reads them in place).

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader, Rela, SectionHeader, Sym};
use object::Endianness;

use super::bytes::{slice_at, to_usize, Endian};
use super::GoError;

/// A `PT_LOAD` segment.
#[derive(Clone, Debug)]
pub(crate) struct Segment {
    pub vaddr: u64,
    pub memsz: u64,
    pub offset: u64,
    pub filesz: u64,
    pub flags: u32,
}

impl Segment {
    /// Whether the segment is mapped executable.
    pub fn is_exec(&self) -> bool {
        self.flags & elf::PF_X != 0
    }

    /// Whether the segment is mapped writable.
    pub fn is_write(&self) -> bool {
        self.flags & elf::PF_W != 0
    }

    /// Whether `vaddr` lies in the file-backed part of this segment.
    fn file_backed(&self, vaddr: u64) -> bool {
        vaddr >= self.vaddr && vaddr - self.vaddr < self.filesz
    }
}

/// A section header, reduced to what we use.
#[derive(Clone, Debug)]
pub(crate) struct Section {
    pub name: Vec<u8>,
    pub kind: u32,
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
}

/// An ELF symbol's value and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Symbol {
    pub addr: u64,
    pub size: u64,
}

/// The parsed ELF container.
#[derive(Clone, Debug)]
pub(crate) struct Image {
    pub endian: Endian,
    pub ptr_size: u8,
    pub machine: u16,
    pub segments: Vec<Segment>,
    /// File ranges (offset, size, alignment) of `PT_NOTE` segments.
    pub note_segments: Vec<(u64, u64, u64)>,
    /// All section headers; empty when the file has none (or they are unreadable).
    pub sections: Vec<Section>,
}

/// Dispatches a generic function on the ELF class of `data`.
/// `$other` is evaluated for an unknown class.
macro_rules! by_class {
    ($data:expr, $func:ident($($arg:expr),*), $other:expr) => {
        // e_ident[EI_CLASS] is byte 4.
        match $data.get(4) {
            Some(&elf::ELFCLASS32) => $func::<elf::FileHeader32<Endianness>>($data, $($arg),*),
            Some(&elf::ELFCLASS64) => $func::<elf::FileHeader64<Endianness>>($data, $($arg),*),
            _ => $other,
        }
    };
}

impl Image {
    /// Parses the headers. `Ok(None)` if `data` is not an ELF file at all.
    pub fn parse(data: &[u8]) -> Result<Option<Image>, GoError> {
        if !data.starts_with(&elf::ELFMAG) {
            return Ok(None);
        }
        Ok(Some(by_class!(
            data,
            parse_image(),
            return Err(GoError::Corrupt("unknown ELF class"))
        )?))
    }

    /// The section called `name`, if the file has section headers.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name.as_bytes())
    }

    /// The file bytes of a section (`None` for `SHT_NOBITS` or out of range).
    pub fn section_data<'a>(&self, data: &'a [u8], s: &Section) -> Option<&'a [u8]> {
        if s.kind == elf::SHT_NOBITS {
            return None;
        }
        slice_at(data, to_usize(s.offset)?, to_usize(s.size)?)
    }

    /// The file-backed segment containing `vaddr`.
    pub fn segment_of(&self, vaddr: u64) -> Option<&Segment> {
        self.segments.iter().find(|s| s.file_backed(vaddr))
    }

    /// File offset of `vaddr`, if it is file-backed.
    pub fn offset_of(&self, vaddr: u64) -> Option<usize> {
        let s = self.segment_of(vaddr)?;
        to_usize(s.offset.checked_add(vaddr - s.vaddr)?)
    }

    /// `len` bytes at `vaddr`, if they lie in one segment's file-backed part.
    pub fn read<'a>(&self, data: &'a [u8], vaddr: u64, len: usize) -> Option<&'a [u8]> {
        let s = self.segment_of(vaddr)?;
        let end = vaddr.checked_add(u64::try_from(len).ok()?)?;
        if end - s.vaddr > s.filesz {
            return None;
        }
        slice_at(data, self.offset_of(vaddr)?, len)
    }

    /// Everything from `vaddr` to the end of its segment's file-backed part.
    pub fn read_to_segment_end<'a>(&self, data: &'a [u8], vaddr: u64) -> Option<&'a [u8]> {
        let s = self.segment_of(vaddr)?;
        let len = to_usize(s.filesz - (vaddr - s.vaddr))?;
        slice_at(data, self.offset_of(vaddr)?, len)
    }

    /// A pointer-sized value at `vaddr`.
    pub fn read_word(&self, data: &[u8], vaddr: u64) -> Option<u64> {
        let b = self.read(data, vaddr, usize::from(self.ptr_size))?;
        super::bytes::word_at(b, 0, self.endian, self.ptr_size)
    }

    /// Whether `vaddr` is inside an executable segment (end inclusive, so a
    /// table's end-of-text sentinel also qualifies).
    pub fn in_exec(&self, vaddr: u64) -> bool {
        self.segments
            .iter()
            .any(|s| s.is_exec() && vaddr >= s.vaddr && vaddr - s.vaddr <= s.memsz)
    }

    /// Looks up symbols by exact name in `.symtab`, one pass over the table.
    /// Missing table or names give `None`s.
    pub fn symbols(&self, data: &[u8], names: &[&str]) -> Vec<Option<Symbol>> {
        if self.sections.is_empty() {
            return vec![None; names.len()];
        }
        by_class!(data, find_symbols(names), return vec![None; names.len()])
            .unwrap_or_else(|_| vec![None; names.len()])
    }

    /// All `R_*_RELATIVE` dynamic relocations (place, addend) accepted by
    /// `keep`. Only linkers that do not also write the addend into the file
    /// (RELA without `--apply-dynamic-relocs`, e.g. lld) make us need these.
    pub fn relative_relocs(&self, data: &[u8], keep: &dyn Fn(u64, u64) -> bool) -> Vec<(u64, u64)> {
        let Some(kind) = relative_reloc_type(self.machine) else {
            return Vec::new();
        };
        if self.sections.is_empty() {
            return Vec::new();
        }
        by_class!(data, find_relative_relocs(kind, keep), return Vec::new()).unwrap_or_default()
    }
}

/// The `R_*_RELATIVE` relocation type for an ELF machine.
fn relative_reloc_type(machine: u16) -> Option<u32> {
    Some(match machine {
        elf::EM_X86_64 => elf::R_X86_64_RELATIVE,
        elf::EM_AARCH64 => elf::R_AARCH64_RELATIVE,
        elf::EM_PPC64 => elf::R_PPC64_RELATIVE,
        elf::EM_RISCV => elf::R_RISCV_RELATIVE,
        elf::EM_S390 => elf::R_390_RELATIVE,
        elf::EM_LOONGARCH => elf::R_LARCH_RELATIVE,
        _ => return None,
    })
}

/// Class-generic body of [`Image::parse`].
fn parse_image<Elf: FileHeader<Endian = Endianness>>(data: &[u8]) -> object::read::Result<Image> {
    let header = Elf::parse(data)?;
    let endian = header.endian()?;
    let mut segments = Vec::new();
    let mut note_segments = Vec::new();
    for ph in header.program_headers(endian, data)? {
        let (offset, filesz) = (ph.p_offset(endian).into(), ph.p_filesz(endian).into());
        match ph.p_type(endian) {
            elf::PT_LOAD => segments.push(Segment {
                vaddr: ph.p_vaddr(endian).into(),
                memsz: ph.p_memsz(endian).into(),
                offset,
                filesz,
                flags: ph.p_flags(endian),
            }),
            elf::PT_NOTE => note_segments.push((offset, filesz, ph.p_align(endian).into())),
            _ => {}
        }
    }
    Ok(Image {
        endian: match endian {
            Endianness::Little => Endian::Little,
            Endianness::Big => Endian::Big,
        },
        ptr_size: if header.is_type_64() { 8 } else { 4 },
        machine: header.e_machine(endian),
        segments,
        note_segments,
        // Unreadable section headers are treated as absent: the program
        // headers are enough to find and read the Go tables.
        sections: read_sections(header, endian, data).unwrap_or_default(),
    })
}

/// Copies the section headers with their names.
fn read_sections<Elf: FileHeader<Endian = Endianness>>(
    header: &Elf,
    endian: Endianness,
    data: &[u8],
) -> object::read::Result<Vec<Section>> {
    let table = header.sections(endian, data)?;
    let mut out = Vec::with_capacity(table.len());
    for sh in table.iter() {
        out.push(Section {
            name: table.section_name(endian, sh).unwrap_or_default().to_vec(),
            kind: sh.sh_type(endian),
            addr: sh.sh_addr(endian).into(),
            offset: sh.sh_offset(endian).into(),
            size: sh.sh_size(endian).into(),
        });
    }
    Ok(out)
}

/// Class-generic body of [`Image::symbols`].
fn find_symbols<Elf: FileHeader<Endian = Endianness>>(
    data: &[u8],
    names: &[&str],
) -> object::read::Result<Vec<Option<Symbol>>> {
    let header = Elf::parse(data)?;
    let endian = header.endian()?;
    let table = header.sections(endian, data)?;
    let symtab = table.symbols(endian, data, elf::SHT_SYMTAB)?;
    let mut out = vec![None; names.len()];
    for sym in symtab.iter() {
        if sym.st_shndx(endian) == elf::SHN_UNDEF {
            continue;
        }
        let Ok(name) = symtab.symbol_name(endian, sym) else {
            continue;
        };
        if let Some(i) = names.iter().position(|n| n.as_bytes() == name) {
            if let Some(slot @ None) = out.get_mut(i) {
                *slot = Some(Symbol {
                    addr: sym.st_value(endian).into(),
                    size: sym.st_size(endian).into(),
                });
            }
        }
    }
    Ok(out)
}

/// Class-generic body of [`Image::relative_relocs`].
fn find_relative_relocs<Elf: FileHeader<Endian = Endianness>>(
    data: &[u8],
    kind: u32,
    keep: &dyn Fn(u64, u64) -> bool,
) -> object::read::Result<Vec<(u64, u64)>> {
    let header = Elf::parse(data)?;
    let endian = header.endian()?;
    let mut out = Vec::new();
    for sh in header.sections(endian, data)?.iter() {
        if sh.sh_type(endian) != elf::SHT_RELA {
            continue;
        }
        let Ok(relas) = sh.data_as_array::<Elf::Rela, _>(endian, data) else {
            continue;
        };
        for r in relas {
            if r.r_type(endian, false) != kind || r.r_sym(endian, false) != 0 {
                continue;
            }
            let place: u64 = r.r_offset(endian).into();
            // Addends are addresses here; reinterpreting the bits is intended.
            let addend = Into::<i64>::into(r.r_addend(endian)) as u64;
            if keep(place, addend) {
                out.push((place, addend));
            }
        }
    }
    Ok(out)
}

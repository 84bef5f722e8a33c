//! Build IDs: the identity of a binary that survives copying, stripping and
//! renaming. The GNU build ID comes from the `NT_GNU_BUILD_ID` note; Go
//! binaries also carry their own ID in the `.note.go.buildid` note.

use object::elf::{FileHeader64, PT_NOTE, SHT_NOTE};
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
use object::LittleEndian;

/// `NT_GNU_BUILD_ID`.
const NT_GNU_BUILD_ID: u32 = 3;
/// The Go linker's note type for its build ID, under the name "Go".
const NT_GO_BUILD_ID: u32 = 4;

/// The build IDs found in one ELF file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildIds {
    /// GNU build ID as lowercase hex.
    pub gnu: Option<String>,
    /// Go build ID (a printable string like `abc/def`).
    pub go: Option<String>,
}

impl BuildIds {
    /// The ID to put into pprof's `Mapping.build_id`: GNU first, Go second.
    pub fn preferred(&self) -> Option<&str> {
        self.gnu.as_deref().or(self.go.as_deref())
    }
}

/// What identifies a file for offline symbolization: its GNU build ID, else
/// its Go build ID, else a content hash (the first 20 bytes of its SHA-256,
/// in hex, shaped like a GNU build ID so that pprof's
/// `$PPROF_BINARY_PATH/<id>/<name>` layout works for it too).
pub fn identity(data: &[u8]) -> String {
    let ids = read(data);
    match ids.preferred() {
        Some(id) => id.to_owned(),
        None => content_hash(data),
    }
}

/// The content hash [`identity`] falls back to.
pub fn content_hash(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(data);
    hex(&digest[..20])
}

/// [`content_hash`] of an open file, read through a small buffer. Hashing
/// through a mapping of the file instead would leave every page of it
/// resident in our memory for as long as the mapping lives: hundreds of MB
/// for the toolchain libraries that ship without a build ID.
pub fn content_hash_of_file(file: &std::fs::File) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::FileExt;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(hex(&hasher.finalize()[..20]))
}

/// Reads the build IDs of a 64-bit little-endian ELF. Non-ELF or malformed
/// input gives empty IDs, not an error: an ID is optional information.
pub fn read(data: &[u8]) -> BuildIds {
    let mut ids = BuildIds::default();
    let Ok(header) = FileHeader64::<LittleEndian>::parse(data) else {
        return ids;
    };
    let Ok(endian) = header.endian() else {
        return ids;
    };
    // Program headers first: they survive `strip --strip-section-headers`.
    if let Ok(phdrs) = header.program_headers(endian, data) {
        for ph in phdrs.iter().filter(|p| p.p_type(endian) == PT_NOTE) {
            if let Ok(Some(notes)) = ph.notes(endian, data) {
                collect(notes, &mut ids);
            }
        }
    }
    if ids.gnu.is_none() || ids.go.is_none() {
        if let Ok(sections) = header.sections(endian, data) {
            for sh in sections.iter().filter(|s| s.sh_type(endian) == SHT_NOTE) {
                if let Ok(Some(notes)) = sh.notes(endian, data) {
                    collect(notes, &mut ids);
                }
            }
        }
    }
    ids
}

fn collect(
    mut notes: object::read::elf::NoteIterator<'_, FileHeader64<LittleEndian>>,
    ids: &mut BuildIds,
) {
    while let Ok(Some(note)) = notes.next() {
        match (note.name(), note.n_type(LittleEndian)) {
            (b"GNU", NT_GNU_BUILD_ID) if ids.gnu.is_none() => {
                ids.gnu = Some(hex(note.desc()));
            }
            (b"Go", NT_GO_BUILD_ID) if ids.go.is_none() => {
                let s = String::from_utf8_lossy(note.desc());
                ids.go = Some(s.trim_end_matches('\0').to_owned());
            }
            _ => {}
        }
    }
}

/// Lowercase hex, as pprof and `/usr/lib/debug/.build-id` spell build IDs.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_test_binary_gnu_build_id() {
        // Rust test binaries on Linux are linked with a GNU build ID.
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let ids = read(&exe);
        let gnu = ids.gnu.clone().expect("test binary has a GNU build ID");
        assert!(gnu.len() >= 16 && gnu.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(ids.preferred(), Some(gnu.as_str()));
    }

    #[test]
    fn identity_falls_back_to_content_hash() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        assert_eq!(identity(&exe), read(&exe).gnu.unwrap());
        let h = identity(b"no build id here");
        assert_eq!(h.len(), 40);
        assert_eq!(h, content_hash(b"no build id here"));
        assert_ne!(h, content_hash(b"no build id there"));
    }

    #[test]
    fn file_hash_is_the_content_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        // Larger than the read buffer, and not a multiple of it.
        let bytes: Vec<u8> = (0..(3 << 20) + 12345).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        assert_eq!(content_hash_of_file(&f).unwrap(), content_hash(&bytes));
        std::fs::write(&path, b"").unwrap();
        let f = std::fs::File::open(&path).unwrap();
        assert_eq!(content_hash_of_file(&f).unwrap(), content_hash(b""));
    }

    #[test]
    fn garbage_gives_no_ids() {
        assert_eq!(read(b""), BuildIds::default());
        assert_eq!(read(b"\x7fELF\x02\x01\x01garbage"), BuildIds::default());
    }
}

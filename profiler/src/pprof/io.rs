//! Reading and writing pprof files: gzip or plain, and atomic replacement so
//! that a crash or a full disk never leaves a half-written profile.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;

use super::proto::Profile;

/// Why a file could not be read as a profile. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid pprof profile: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Serializes and gzips a profile, as `go tool pprof` and every backend expect.
pub fn encode_gzip(profile: &Profile) -> Vec<u8> {
    let raw = profile.encode_to_vec();
    let mut gz = GzEncoder::new(Vec::with_capacity(raw.len() / 4), Compression::default());
    // Writing into a Vec cannot fail.
    gz.write_all(&raw).expect("writing to a Vec");
    gz.finish().expect("writing to a Vec")
}

/// The most a gzipped profile may inflate to. Real profiles are far
/// smaller (a busy node's hour is tens of MB); without a cap, a few KB of
/// crafted gzip would make `report` or `symbolize` exhaust memory.
pub const MAX_DECOMPRESSED: u64 = 1 << 30;

/// Decodes a profile from bytes, gzipped or not.
pub fn decode(bytes: &[u8]) -> Result<Profile, String> {
    decode_limited(bytes, MAX_DECOMPRESSED)
}

/// [`decode`] with the decompressed size capped at `limit` bytes.
fn decode_limited(bytes: &[u8], limit: u64) -> Result<Profile, String> {
    let raw;
    let data = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(bytes)
            .take(limit.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| format!("bad gzip data ({e})"))?;
        if out.len() as u64 > limit {
            return Err(format!(
                "the gzip data inflates to more than {limit} bytes: not a profile"
            ));
        }
        raw = out;
        &raw[..]
    } else {
        bytes
    };
    if data.is_empty() {
        return Err("the file is empty".into());
    }
    let p = Profile::decode(data).map_err(|e| format!("protobuf decode failed ({e})"))?;
    if p.string_table.first().map(String::as_str) != Some("") {
        return Err("string table does not start with \"\"".into());
    }
    Ok(p)
}

/// Reads a profile file, gzipped or not.
pub fn read_file(path: &Path) -> Result<Profile, ReadError> {
    let bytes = std::fs::read(path).map_err(|source| ReadError::Io {
        path: path.to_owned(),
        source,
    })?;
    decode(&bytes).map_err(|reason| ReadError::Invalid {
        path: path.to_owned(),
        reason,
    })
}

/// Writes `bytes` to `path` through a temporary file in the same directory,
/// synced and then renamed over the target: readers see the old file or the
/// whole new one, never a prefix.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".rprof-bpf-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    // Temp files are created 0600; a profile is meant to be shared, so give
    // it the usual 0644.
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_that_inflates_past_the_cap_is_refused() {
        let p = Profile {
            string_table: vec![String::new(), "x".repeat(4096)],
            ..Profile::default()
        };
        let gz = encode_gzip(&p);
        assert!(decode_limited(&gz, 1 << 20).is_ok());
        let e = decode_limited(&gz, 1000).unwrap_err();
        assert!(e.contains("more than 1000 bytes"), "{e}");
    }

    #[test]
    fn roundtrip_gzip_and_plain() {
        let p = Profile {
            string_table: vec!["".into(), "x".into()],
            period: 10,
            ..Profile::default()
        };
        let gz = encode_gzip(&p);
        assert_eq!(decode(&gz).unwrap(), p);
        assert_eq!(decode(&p.encode_to_vec()).unwrap(), p);
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        assert!(decode(b"").is_err());
        assert!(decode(b"\xff\xff\xff\xff garbage").is_err());
        let p = Profile {
            string_table: vec!["".into(); 100],
            ..Profile::default()
        };
        let gz = encode_gzip(&p);
        assert!(decode(&gz[..gz.len() / 2]).is_err());
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.pb.gz");
        write_file_atomic(&path, b"one").unwrap();
        write_file_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

//! The on-disk snapshot cache: the last applied snapshot, so a DP that restarts while the control
//! plane is unreachable still serves its last config.
//!
//! File format (`<cache-dir>/snapshot.bin`): the magic `PSTRNSC1`, the snapshot version (u64 LE),
//! the payload length (u64 LE), the payload's CRC-32 (u32 LE), then the payload: the snapshot as
//! protobuf. Written to a temp file, fsynced, then renamed over the old one, so a crash leaves
//! either the old file or the new one, never half of one.

use std::io::Write;
use std::path::PathBuf;

use postern_proto::sync::Snapshot;
use prost::Message;

const MAGIC: &[u8; 8] = b"PSTRNSC1";
const HEADER_LEN: usize = 8 + 8 + 8 + 4;
const FILE_NAME: &str = "snapshot.bin";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("reading {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0} is not a Postern snapshot cache (bad magic or truncated)")]
    Format(PathBuf),
    #[error("{0} is corrupt: {1}")]
    Corrupt(PathBuf, String),
}

pub struct SnapshotCache {
    dir: PathBuf,
}

impl SnapshotCache {
    pub fn new(dir: impl Into<PathBuf>) -> SnapshotCache {
        SnapshotCache { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// The cached snapshot; `Ok(None)` when there is none yet.
    pub fn load(&self) -> Result<Option<Snapshot>, CacheError> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CacheError::Io(path, e)),
        };
        decode(&bytes).map(Some).map_err(|e| match e {
            None => CacheError::Format(path),
            Some(msg) => CacheError::Corrupt(path, msg),
        })
    }

    /// Replaces the cached snapshot atomically (temp file + fsync + rename + fsync of the dir).
    pub fn store(&self, snapshot: &Snapshot) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self
            .dir
            .join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
        // A leftover from a crash would keep its old mode.
        let _ = std::fs::remove_file(&tmp);
        let result = (|| {
            // Owner-only: the snapshot carries credential secrets (consumers' jwt-auth secrets,
            // key-auth keys).
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            f.write_all(&encode(snapshot))?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.path())?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let payload = snapshot.encode_to_vec();
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&snapshot.version.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// `Err(None)`: not a cache file at all; `Err(Some(why))`: a cache file that is damaged.
fn decode(bytes: &[u8]) -> Result<Snapshot, Option<String>> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(None);
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let version = u64_at(8);
    let len = u64_at(16);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[24..28]);
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != len {
        return Err(Some(format!(
            "payload is {} bytes, header says {len}",
            payload.len()
        )));
    }
    if crc32fast::hash(payload) != u32::from_le_bytes(crc) {
        return Err(Some("checksum mismatch".to_string()));
    }
    let snapshot = Snapshot::decode(payload).map_err(|e| Some(format!("undecodable: {e}")))?;
    if snapshot.version != version {
        return Err(Some(format!(
            "header version {version} != snapshot version {}",
            snapshot.version
        )));
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use postern_proto::sync::Resource;

    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            version: 42,
            nonce: "n".into(),
            resources: vec![Resource {
                kind: "routes".into(),
                id: "r1".into(),
                mod_revision: 41,
                body: br#"{"uri":"/"}"#.to_vec().into(),
            }],
            store_id: "s1".into(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn round_trip_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SnapshotCache::new(dir.path().join("cache"));
        assert!(cache.load().unwrap().is_none());
        cache.store(&sample()).unwrap();
        assert_eq!(cache.load().unwrap(), Some(sample()));
        let mut newer = sample();
        newer.version = 43;
        cache.store(&newer).unwrap();
        assert_eq!(cache.load().unwrap().unwrap().version, 43);
        // No temp files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE_NAME]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(cache.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "the cache holds secrets: owner only");
        }
    }

    #[test]
    fn damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SnapshotCache::new(dir.path());
        cache.store(&sample()).unwrap();
        let good = std::fs::read(cache.path()).unwrap();

        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        let truncated = good[..good.len() - 3].to_vec();
        let mut wrong_version = good.clone();
        wrong_version[8] ^= 1;
        let cases: [(&[u8], &str); 4] = [
            (&flipped, "checksum"),
            (&truncated, "header says"),
            (&wrong_version, "header version"),
            (b"garbage", "not a Postern snapshot cache"),
        ];
        for (bytes, why) in cases {
            std::fs::write(cache.path(), bytes).unwrap();
            let err = cache.load().unwrap_err().to_string();
            assert!(err.contains(why), "{err} should mention {why}");
        }
    }
}

//! Packed snapshots: a big snapshot goes to a data plane that said `unpacks_snapshots` as one
//! zstd frame (`PackedSnapshot`); a small one, such as a one-route delta, as it is.
//!
//! Why not gRPC's per-message compression: it compresses every message, and with a fresh
//! compressor each time. Under config churn (many one-route deltas a second) setting up that
//! compressor was about 9 % of the control plane's CPU (bench/results/2026-12-02-session21.md),
//! and the DP paid a fresh decompressor per delta on the proxy's core, for deltas of a few
//! hundred bytes that gain nothing from it. Packing here also lets the CP compress a whole
//! snapshot once for every DP at that version: the nonce, the one per-stream field, travels
//! outside the frame.

use bytes::Bytes;
use prost::Message;

use crate::sync::{PackedSnapshot, Snapshot};

/// Snapshots encoding to fewer bytes than this go as they are: compressing them would cost
/// both sides more CPU than the bytes it saves cost to send.
pub const PACK_MIN_BYTES: usize = 8 * 1024;

/// The zstd level: gRPC's zstd default, the size/speed balance the stream had before.
const LEVEL: i32 = 3;

/// Whether `snapshot` is big enough to gain from packing (a cheap walk, no encoding): callers
/// ask before handing `pack` to another thread.
pub fn worth_packing(snapshot: &Snapshot) -> bool {
    snapshot.encoded_len() >= PACK_MIN_BYTES
}

/// `snapshot` encoded and compressed, or `None` when it is small enough to send as it is.
/// Its nonce is left out: the caller puts the stream's own in the `PackedSnapshot`.
pub fn pack(snapshot: &Snapshot) -> Option<Bytes> {
    if !worth_packing(snapshot) {
        return None;
    }
    let encoded = if snapshot.nonce.is_empty() {
        snapshot.encode_to_vec()
    } else {
        Snapshot {
            nonce: String::new(),
            ..snapshot.clone()
        }
        .encode_to_vec()
    };
    // One-shot compression knows the input's size: the frame declares it (what `unpack`
    // checks against its limit before allocating) and the compressor sizes its tables to it.
    let packed = zstd::bulk::compress(&encoded, LEVEL).expect("zstd compresses any input");
    Some(Bytes::from(packed))
}

/// Why a packed snapshot could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("the packed snapshot does not declare its size")]
    NoContentSize,
    #[error("the packed snapshot unpacks to {size} bytes, over the limit of {limit}")]
    TooLarge { size: u64, limit: usize },
    #[error("the packed snapshot is not a zstd frame: {0}")]
    Corrupt(String),
    #[error("the packed snapshot is not a Snapshot: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// The snapshot `packed` holds, with its nonce; refused when its frame says it unpacks to more
/// than `limit` bytes (checked before anything is allocated) or when it is not what it claims.
pub fn unpack(packed: PackedSnapshot, limit: usize) -> Result<Snapshot, UnpackError> {
    let size = match zstd::zstd_safe::get_frame_content_size(&packed.zstd) {
        Ok(Some(size)) => size,
        Ok(None) => return Err(UnpackError::NoContentSize),
        Err(e) => return Err(UnpackError::Corrupt(format!("{e:?}"))),
    };
    if size > limit as u64 {
        return Err(UnpackError::TooLarge { size, limit });
    }
    let encoded = zstd::bulk::decompress(&packed.zstd, size as usize)
        .map_err(|e| UnpackError::Corrupt(e.to_string()))?;
    let mut snapshot = Snapshot::decode(encoded.as_slice())?;
    snapshot.nonce = packed.nonce;
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::{Resource, ResourceKey};

    fn snapshot(routes: usize) -> Snapshot {
        Snapshot {
            version: 42,
            nonce: "7-3".into(),
            store_id: "store-a".into(),
            resources: (0..routes)
                .map(|i| Resource {
                    kind: "routes".into(),
                    id: format!("r{i}"),
                    mod_revision: i as u64,
                    body: Bytes::from(format!(
                        r#"{{"uri":"/r/{i}","upstream":{{"nodes":{{"127.0.0.1:80":1}}}}}}"#
                    )),
                })
                .collect(),
            delta: true,
            base_version: 41,
            removed: vec![ResourceKey {
                kind: "routes".into(),
                id: "gone".into(),
            }],
        }
    }

    #[test]
    fn a_small_snapshot_is_not_packed() {
        let small = snapshot(3);
        assert!(small.encoded_len() < PACK_MIN_BYTES);
        assert_eq!(pack(&small), None);
    }

    #[test]
    fn a_big_snapshot_unpacks_to_itself_with_the_streams_nonce() {
        let big = snapshot(1000);
        let packed = pack(&big).expect("packed");
        assert!(
            packed.len() * 5 < big.encoded_len(),
            "{} bytes packed, {} encoded",
            packed.len(),
            big.encoded_len()
        );
        let unpacked = unpack(
            PackedSnapshot {
                zstd: packed.clone(),
                nonce: "9-1".into(),
            },
            1 << 20,
        )
        .unwrap();
        assert_eq!(unpacked.nonce, "9-1");
        assert_eq!(
            unpacked,
            Snapshot {
                nonce: "9-1".into(),
                ..big.clone()
            }
        );
        // The nonce is not in the frame: the same snapshot under another nonce packs the same.
        let renonced = Snapshot {
            nonce: "other".into(),
            ..big
        };
        assert_eq!(pack(&renonced), Some(packed));
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_before_unpacking() {
        let big = snapshot(1000);
        // The frame holds the snapshot without its nonce.
        let frame_size = Snapshot {
            nonce: String::new(),
            ..big.clone()
        }
        .encoded_len();
        let packed = PackedSnapshot {
            zstd: pack(&big).unwrap(),
            nonce: String::new(),
        };
        match unpack(packed.clone(), frame_size - 1) {
            Err(UnpackError::TooLarge { size, limit }) => {
                assert_eq!((size as usize, limit), (frame_size, frame_size - 1));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(unpack(packed, frame_size).is_ok());
    }

    #[test]
    fn what_is_not_a_packed_snapshot_is_refused() {
        let garbage = PackedSnapshot {
            zstd: Bytes::from_static(b"not zstd at all"),
            nonce: String::new(),
        };
        assert!(matches!(
            unpack(garbage, 1 << 20),
            Err(UnpackError::Corrupt(_))
        ));
        // A streamed frame (no size in its header) is refused, not unpacked blind.
        let mut streamed = Vec::new();
        let mut enc = zstd::stream::write::Encoder::new(&mut streamed, LEVEL).unwrap();
        std::io::Write::write_all(&mut enc, &snapshot(10).encode_to_vec()).unwrap();
        enc.finish().unwrap();
        let unsized_frame = PackedSnapshot {
            zstd: Bytes::from(streamed),
            nonce: String::new(),
        };
        assert!(matches!(
            unpack(unsized_frame, 1 << 20),
            Err(UnpackError::NoContentSize)
        ));
        // A zstd frame of something that is not a Snapshot.
        let not_a_snapshot = PackedSnapshot {
            zstd: Bytes::from(zstd::bulk::compress(&[0xff; 64], LEVEL).unwrap()),
            nonce: String::new(),
        };
        assert!(matches!(
            unpack(not_a_snapshot, 1 << 20),
            Err(UnpackError::Decode(_))
        ));
    }
}

//! Checkpoint files: the parts each worker writes, the manifest that names a complete
//! checkpoint, choosing the newest sound checkpoint, and retention.
//!
//! ```text
//!  <dir>/ckpt-00000000000000000042/traits.w0.part    zstd(bincode((record, diff)...)), one per
//!  <dir>/ckpt-00000000000000000042/traits.w1.part    checkpointed collection per worker
//!  <dir>/ckpt-00000000000000000042/MANIFEST.json     written last, atomically (tmp, fsync, rename)
//! ```
//!
//! A part is written under a temporary name, fsynced and renamed; its size, record count and
//! CRC-32 go into the manifest. A checkpoint without a manifest is partial (a crash while
//! writing it); one whose part is missing, of another size or checksum is corrupt. Both are
//! skipped with a log line naming the checkpoint and why, and the previous one is used. A
//! manifest of another job, version or dataflow fingerprint is an error: loading it would
//! feed state of another shape into this dataflow.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The manifest's format version.
pub const FORMAT: u32 = 1;

/// The manifest's file name inside a checkpoint directory.
pub const MANIFEST: &str = "MANIFEST.json";

/// One worker's part of one checkpointed collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartMeta {
    /// The collection's name (`Dataflow::checkpointed`).
    pub collection: String,
    /// The global index of the worker that wrote it.
    pub worker: usize,
    /// File name inside the checkpoint directory.
    pub file: String,
    /// Records (distinct `(record, diff)` pairs).
    pub records: u64,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// CRC-32 (IEEE) of the file.
    pub crc32: u32,
    /// How long the worker stopped to hand its changes to the writer, in microseconds (the
    /// checkpoint's only pause of the dataflow; compressing and writing run off-thread).
    #[serde(default)]
    pub pause_us: u64,
    /// Whether the part holds only the changes since the checkpoint before (false: the whole
    /// share, a base). A collection's share is the sum of its parts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delta: bool,
    /// The epoch of the earlier checkpoint whose directory holds the file (a part of the
    /// chain of deltas this checkpoint extends); none: this checkpoint's own directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_in: Option<u64>,
}

impl PartMeta {
    /// The part's file, for the checkpoint in `dir`.
    pub fn path(&self, dir: &Path) -> PathBuf {
        match (self.stored_in, dir.parent()) {
            (Some(epoch), Some(root)) => checkpoint_dir(root, epoch).join(&self.file),
            _ => dir.join(&self.file),
        }
    }
}

/// `MANIFEST.json`: a complete checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The job's name.
    pub job: String,
    /// The job's version.
    pub version: String,
    /// Fingerprint of the checkpointed part of the dataflow (names and record types).
    pub fingerprint: String,
    /// The epoch whose state the checkpoint holds (every epoch up to and including it).
    pub epoch: u64,
    /// Workers of the run that wrote it.
    pub workers: usize,
    /// Wall-clock time of writing, milliseconds since 1970 (for operators; never read back
    /// into results).
    pub written_ms: u64,
    /// Every part.
    pub parts: Vec<PartMeta>,
}

impl Manifest {
    /// Total bytes of the parts (what a restore reads).
    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.bytes).sum()
    }

    /// Bytes of the parts written for this checkpoint (not those of earlier checkpoints it
    /// extends).
    pub fn written_bytes(&self) -> u64 {
        self.parts
            .iter()
            .filter(|p| p.stored_in.is_none())
            .map(|p| p.bytes)
            .sum()
    }

    /// The epochs of the earlier checkpoints whose directories hold parts of this one.
    pub fn references(&self) -> std::collections::BTreeSet<u64> {
        self.parts.iter().filter_map(|p| p.stored_in).collect()
    }

    /// The longest a worker stopped for this checkpoint: per worker, the sum of its parts'
    /// pauses, in microseconds.
    pub fn worker_pause_us(&self) -> u64 {
        let mut per_worker: std::collections::BTreeMap<usize, u64> = Default::default();
        for p in &self.parts {
            *per_worker.entry(p.worker).or_default() += p.pause_us;
        }
        per_worker.into_values().max().unwrap_or(0)
    }
}

/// An error writing or reading checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// I/O on a checkpoint file.
    #[error("checkpoint {path}: {cause}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        cause: std::io::Error,
    },
    /// A part or manifest that cannot be used.
    #[error("checkpoint {path}: {reason}")]
    Unusable {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The newest sound checkpoint belongs to another job, version or dataflow.
    #[error("checkpoint {path} cannot be restored into this job: {reason}; start afresh with `--fresh` (which ignores the checkpoints and the epoch log) or run the build that wrote it")]
    Incompatible {
        /// The checkpoint directory.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |cause| StoreError::Io {
        path: path.to_owned(),
        cause,
    }
}

/// The directory of the checkpoint of `epoch` under `root`.
pub fn checkpoint_dir(root: &Path, epoch: u64) -> PathBuf {
    root.join(format!("ckpt-{epoch:020}"))
}

/// The epoch of a checkpoint directory name.
fn epoch_of(name: &str) -> Option<u64> {
    name.strip_prefix("ckpt-")?.parse().ok()
}

/// A writer that computes the CRC-32 and size of what passes through it.
struct Counting<W> {
    inner: W,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// zstd level of parts: fast, still 3-6x smaller than bincode.
const ZSTD_LEVEL: i32 = 1;

/// Writes one part (`records` of `collection` held by `worker`, each a record and its
/// difference) into `dir`: compressed,
/// fsynced, renamed into place.
pub fn write_part<D: Serialize>(
    dir: &Path,
    collection: &str,
    worker: usize,
    records: &[D],
) -> Result<PartMeta, StoreError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let file = format!("{collection}.w{worker}.part");
    let path = dir.join(&file);
    let tmp = dir.join(format!("{file}.tmp"));
    let out = std::fs::File::create(&tmp).map_err(io_error(&tmp))?;
    let counting = Counting {
        inner: std::io::BufWriter::with_capacity(1 << 20, out),
        crc: crc32fast::Hasher::new(),
        bytes: 0,
    };
    let mut encoder =
        zstd::stream::write::Encoder::new(counting, ZSTD_LEVEL).map_err(io_error(&tmp))?;
    let count = records.len() as u64;
    bincode::serialize_into(&mut encoder, &count).map_err(|e| StoreError::Unusable {
        path: tmp.clone(),
        reason: format!("cannot encode: {e}"),
    })?;
    for r in records {
        bincode::serialize_into(&mut encoder, r).map_err(|e| StoreError::Unusable {
            path: tmp.clone(),
            reason: format!("cannot encode a record: {e}"),
        })?;
    }
    let mut counting = encoder.finish().map_err(io_error(&tmp))?;
    counting.flush().map_err(io_error(&tmp))?;
    let (crc32, bytes) = (counting.crc.clone().finalize(), counting.bytes);
    let file_handle = counting
        .inner
        .into_inner()
        .map_err(|e| io_error(&tmp)(e.into_error()))?;
    file_handle.sync_all().map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_error(&path))?;
    Ok(PartMeta {
        collection: collection.to_owned(),
        worker,
        file,
        records: count,
        bytes,
        crc32,
        pause_us: 0,
        delta: false,
        stored_in: None,
    })
}

/// Checks one part against its manifest entry: present, same size, same checksum.
fn verify_part(dir: &Path, part: &PartMeta) -> Result<(), StoreError> {
    let path = part.path(dir);
    let mut file = std::fs::File::open(&path).map_err(io_error(&path))?;
    let mut crc = crc32fast::Hasher::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_error(&path))?;
        if n == 0 {
            break;
        }
        crc.update(&buf[..n]);
        bytes += n as u64;
    }
    let crc = crc.finalize();
    if bytes != part.bytes || crc != part.crc32 {
        return Err(StoreError::Unusable {
            path,
            reason: format!(
                "{bytes} bytes with CRC-32 {crc:08x}, but the manifest says {} bytes with CRC-32 {:08x}",
                part.bytes, part.crc32
            ),
        });
    }
    Ok(())
}

/// Reads one part's records (verified by [`newest`] before).
pub fn read_part<D: DeserializeOwned>(dir: &Path, part: &PartMeta) -> Result<Vec<D>, StoreError> {
    let path = part.path(dir);
    let file = std::fs::File::open(&path).map_err(io_error(&path))?;
    let mut decoder = zstd::stream::read::Decoder::new(file).map_err(io_error(&path))?;
    let bad = |e: bincode::Error| StoreError::Unusable {
        path: path.clone(),
        reason: format!("cannot decode: {e}"),
    };
    let count: u64 = bincode::deserialize_from(&mut decoder).map_err(bad)?;
    if count != part.records {
        return Err(StoreError::Unusable {
            path: path.clone(),
            reason: format!("holds {count} records, the manifest says {}", part.records),
        });
    }
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        out.push(bincode::deserialize_from(&mut decoder).map_err(bad)?);
    }
    Ok(out)
}

/// Writes `manifest` into `dir` atomically: a temporary file, fsynced, renamed, and the
/// directory fsynced, so a crash leaves either no manifest or the whole one.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), StoreError> {
    let path = dir.join(MANIFEST);
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let text = serde_json::to_vec_pretty(manifest).map_err(|e| StoreError::Unusable {
        path: tmp.clone(),
        reason: e.to_string(),
    })?;
    let mut f = std::fs::File::create(&tmp).map_err(io_error(&tmp))?;
    f.write_all(&text).map_err(io_error(&tmp))?;
    f.sync_all().map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_error(&path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// What a restoring job must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The job's name.
    pub job: String,
    /// The job's version.
    pub version: String,
}

/// Reads and checks the checkpoint in `dir`: its manifest and every part.
fn sound(dir: &Path) -> Result<Manifest, StoreError> {
    let path = dir.join(MANIFEST);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::Unusable {
                path: dir.to_owned(),
                reason: "no manifest: the checkpoint was not finished (a crash while writing it)"
                    .into(),
            })
        }
        Err(e) => return Err(io_error(&path)(e)),
    };
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| StoreError::Unusable {
        path: path.clone(),
        reason: format!("unreadable manifest: {e}"),
    })?;
    if manifest.format != FORMAT {
        return Err(StoreError::Unusable {
            path,
            reason: format!(
                "manifest format {} (this build reads {FORMAT})",
                manifest.format
            ),
        });
    }
    for part in &manifest.parts {
        verify_part(dir, part)?;
    }
    Ok(manifest)
}

/// The checkpoint epochs under `root`, newest first.
pub fn list(root: &Path) -> Result<Vec<u64>, StoreError> {
    let mut epochs = Vec::new();
    match std::fs::read_dir(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(epochs),
        Err(e) => return Err(io_error(root)(e)),
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(io_error(root))?;
                if let Some(epoch) = epoch_of(&entry.file_name().to_string_lossy()) {
                    epochs.push(epoch);
                }
            }
        }
    }
    epochs.sort_unstable_by(|a, b| b.cmp(a));
    Ok(epochs)
}

/// The newest sound checkpoint under `root` for the job `id`, skipping (with a warning
/// naming each and why) partial and corrupt ones. A sound checkpoint of another job or
/// version is an error.
pub fn newest(root: &Path, id: &Identity) -> Result<Option<(PathBuf, Manifest)>, StoreError> {
    for epoch in list(root)? {
        let dir = checkpoint_dir(root, epoch);
        match sound(&dir) {
            Ok(m) => {
                if m.job != id.job || m.version != id.version {
                    return Err(StoreError::Incompatible {
                        path: dir,
                        reason: format!(
                            "it was written by {} {}, this is {} {}",
                            m.job, m.version, id.job, id.version
                        ),
                    });
                }
                return Ok(Some((dir, m)));
            }
            Err(e) => {
                tracing::warn!(checkpoint = %dir.display(), reason = %e, "skipping a checkpoint that cannot be used; trying the previous one");
            }
        }
    }
    Ok(None)
}

/// Deletes all but the newest `keep` complete checkpoints, and partial ones older than the
/// newest complete one, except the directories whose parts a kept checkpoint still uses
/// (its chain of deltas). Failures are logged, never fatal.
pub fn retain(root: &Path, keep: usize) {
    let Ok(epochs) = list(root) else { return };
    let mut complete = 0usize;
    let mut referenced = std::collections::BTreeSet::new();
    let mut drop = Vec::new();
    for epoch in epochs {
        let dir = checkpoint_dir(root, epoch);
        let manifest = std::fs::read(dir.join(MANIFEST))
            .ok()
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok());
        let kept = match &manifest {
            Some(m) => {
                complete += 1;
                let kept = complete <= keep;
                if kept {
                    referenced.extend(m.references());
                }
                kept
            }
            // Partial: still being written if newer than every complete one.
            None => complete == 0,
        };
        if !kept {
            drop.push((epoch, dir));
        }
    }
    for (epoch, dir) in drop {
        if referenced.contains(&epoch) {
            continue;
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(checkpoint = %dir.display(), error = %e, "cannot delete an old checkpoint");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            job: "j".into(),
            version: "1".into(),
        }
    }

    fn checkpoint(root: &Path, epoch: u64, records: &[(String, isize)]) -> Manifest {
        let dir = checkpoint_dir(root, epoch);
        let part = write_part(&dir, "c", 0, records).unwrap();
        let m = Manifest {
            format: FORMAT,
            job: "j".into(),
            version: "1".into(),
            fingerprint: "f".into(),
            epoch,
            workers: 1,
            written_ms: 0,
            parts: vec![part],
        };
        write_manifest(&dir, &m).unwrap();
        m
    }

    #[test]
    fn parts_round_trip() {
        let root = tempfile::tempdir().unwrap();
        let records: Vec<(String, isize)> = (0..1000).map(|i| (format!("k{i}"), i - 500)).collect();
        let m = checkpoint(root.path(), 7, &records);
        let (dir, found) = newest(root.path(), &id()).unwrap().unwrap();
        assert_eq!(found, m);
        let back: Vec<(String, isize)> = read_part(&dir, &found.parts[0]).unwrap();
        assert_eq!(back, records);
    }

    #[test]
    fn corrupt_and_partial_checkpoints_are_skipped_for_the_previous_one() {
        let root = tempfile::tempdir().unwrap();
        checkpoint(root.path(), 1, &[("a".into(), 1)]);
        checkpoint(root.path(), 2, &[("b".into(), 1)]);
        // Epoch 3: parts written, no manifest (a crash before it).
        write_part(
            &checkpoint_dir(root.path(), 3),
            "c",
            0,
            &[("c".to_owned(), 1)],
        )
        .unwrap();
        // Epoch 2: a flipped byte.
        let part = checkpoint_dir(root.path(), 2).join("c.w0.part");
        let mut bytes = std::fs::read(&part).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&part, bytes).unwrap();
        let (_, m) = newest(root.path(), &id()).unwrap().unwrap();
        assert_eq!(m.epoch, 1);
    }

    #[test]
    fn another_job_or_version_is_refused_with_a_clear_message() {
        let root = tempfile::tempdir().unwrap();
        checkpoint(root.path(), 1, &[("a".into(), 1)]);
        let other = Identity {
            job: "j".into(),
            version: "2".into(),
        };
        let e = newest(root.path(), &other).unwrap_err().to_string();
        assert!(
            e.contains("written by j 1, this is j 2") && e.contains("--fresh"),
            "{e}"
        );
    }

    /// A checkpoint at `epoch` extending `base` (a base part in its directory) with a delta.
    fn extending(root: &Path, epoch: u64, base: &Manifest, delta: &[(String, isize)]) -> Manifest {
        let dir = checkpoint_dir(root, epoch);
        let mut part = write_part(&dir, "c", 0, delta).unwrap();
        part.delta = true;
        let mut parts: Vec<PartMeta> = base
            .parts
            .iter()
            .map(|p| PartMeta {
                stored_in: Some(p.stored_in.unwrap_or(base.epoch)),
                ..p.clone()
            })
            .collect();
        parts.push(part);
        let m = Manifest {
            epoch,
            parts,
            ..base.clone()
        };
        write_manifest(&dir, &m).unwrap();
        m
    }

    #[test]
    fn a_chain_reads_the_earlier_parts_and_retention_keeps_them() {
        let root = tempfile::tempdir().unwrap();
        let base = checkpoint(root.path(), 1, &[("a".into(), 1), ("b".into(), 2)]);
        let two = extending(root.path(), 2, &base, &[("b".into(), -2), ("c".into(), 1)]);
        let three = extending(root.path(), 3, &two, &[("d".into(), 1)]);
        assert_eq!(three.references(), [1, 2].into_iter().collect());
        retain(root.path(), 1);
        assert_eq!(list(root.path()).unwrap(), vec![3, 2, 1]);
        let (dir, found) = newest(root.path(), &id()).unwrap().unwrap();
        assert_eq!(found.epoch, 3);
        let mut sum: std::collections::BTreeMap<String, isize> = Default::default();
        for p in &found.parts {
            for (k, r) in read_part::<(String, isize)>(&dir, p).unwrap() {
                *sum.entry(k).or_default() += r;
            }
        }
        sum.retain(|_, r| *r != 0);
        let expect: std::collections::BTreeMap<String, isize> = [("a", 1), ("c", 1), ("d", 1)]
            .map(|(k, r)| (k.to_owned(), r))
            .into();
        assert_eq!(sum, expect);
        // A new base at 4: 1-3 are no longer used once 4 is the only one kept.
        checkpoint(root.path(), 4, &[("z".into(), 1)]);
        retain(root.path(), 1);
        assert_eq!(list(root.path()).unwrap(), vec![4]);
    }

    #[test]
    fn a_corrupt_base_makes_every_checkpoint_extending_it_unsound() {
        let root = tempfile::tempdir().unwrap();
        let zero = checkpoint(root.path(), 0, &[("y".into(), 1)]);
        let base = checkpoint(root.path(), 1, &[("a".into(), 1)]);
        extending(root.path(), 2, &base, &[("c".into(), 1)]);
        let part = checkpoint_dir(root.path(), 1).join("c.w0.part");
        let mut bytes = std::fs::read(&part).unwrap();
        bytes[0] ^= 0x01;
        std::fs::write(&part, bytes).unwrap();
        let (_, m) = newest(root.path(), &id()).unwrap().unwrap();
        assert_eq!(m, zero);
    }

    #[test]
    fn retention_keeps_the_newest_complete_checkpoints() {
        let root = tempfile::tempdir().unwrap();
        for e in 1..=5 {
            checkpoint(root.path(), e, &[("a".into(), 1)]);
        }
        write_part(
            &checkpoint_dir(root.path(), 0),
            "c",
            0,
            &[("z".to_owned(), 1)],
        )
        .unwrap();
        write_part(
            &checkpoint_dir(root.path(), 6),
            "c",
            0,
            &[("z".to_owned(), 1)],
        )
        .unwrap();
        retain(root.path(), 2);
        assert_eq!(list(root.path()).unwrap(), vec![6, 5, 4]);
    }
}

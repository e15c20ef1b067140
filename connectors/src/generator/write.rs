//! Writing a generated data set to a file: the core of the `generate` CLI command.
//!
//! All partitions are merged into one file *by event time* (a k-way merge on each
//! partition's next event; ties go to the lower partition), so the file reads like a shop's
//! export: in time order except for the deliberately late events. The merge is
//! deterministic, so the same configuration always writes the same bytes. `rate` is
//! ignored: files are written as fast as possible.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use flate2::write::GzEncoder;
use flate2::Compression;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::clickstream::encode::{write_csv, write_json, CSV_HEADER, CSV_HEADER_EXTENDED};
use crate::clickstream::Event;

use super::source::{GeneratorPartition, GeneratorSource};
use super::{GeneratorConfig, GeneratorError};

/// File format of a written data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// REES46 CSV with its header (plus the extension columns when `extensions` is on).
    Csv,
    /// One JSON object per line.
    Json,
}

/// Where and how to write a data set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOptions {
    /// The data file.
    pub path: PathBuf,
    /// CSV or JSON lines.
    pub format: OutputFormat,
    /// Gzip the file (also on when `path` ends in `.gz`).
    pub gzip: bool,
    /// Where to write the incidents' [`GroundTruth`](super::GroundTruth) as JSON, if anywhere.
    pub ground_truth: Option<PathBuf>,
}

/// What [`write_dataset`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteReport {
    /// Events (data lines, header excluded).
    pub events: u64,
    /// Bytes of the data file (compressed size when gzipped).
    pub bytes: u64,
    /// Bytes before compression (equal to `bytes` without gzip).
    pub uncompressed_bytes: u64,
    /// Wall-clock seconds taken.
    pub seconds: f64,
}

/// Counts the bytes that reach the file.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

type FileOut = BufWriter<Counting<File>>;

enum Sink {
    Plain(FileOut),
    Gzip(GzEncoder<FileOut>),
}

impl Sink {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.write_all(buf),
            Sink::Gzip(w) => w.write_all(buf),
        }
    }

    /// Finishes the stream and returns the number of bytes in the file.
    fn finish(self) -> std::io::Result<u64> {
        let out = match self {
            Sink::Plain(w) => w,
            Sink::Gzip(w) => w.finish()?,
        };
        let mut counting = out.into_inner().map_err(|e| e.into_error())?;
        counting.flush()?;
        counting.inner.sync_all()?;
        Ok(counting.bytes)
    }
}

fn io_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> GeneratorError + 'a {
    move |source| GeneratorError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Generates the bounded data set of `cfg` into `opts.path` (and its ground truth beside
/// it when asked), with a progress bar on stderr when `progress` is true.
///
/// Fails with [`GeneratorError::Unbounded`] when `cfg.events` is `None`, and names the
/// path on any I/O error. Gzip uses the default compression level.
pub fn write_dataset(
    cfg: &GeneratorConfig,
    opts: &WriteOptions,
    progress: bool,
) -> Result<WriteReport, GeneratorError> {
    let started = Instant::now();
    let total = cfg.events.ok_or(GeneratorError::Unbounded)?;
    let mut cfg = cfg.clone();
    cfg.rate = None;
    let source = GeneratorSource::try_new("generator", cfg.clone())?;

    if let Some(truth_path) = &opts.ground_truth {
        let truth = source.ground_truth()?;
        let json = serde_json::to_vec_pretty(&truth)
            .map_err(std::io::Error::other)
            .map_err(io_err(truth_path, "cannot encode the ground truth"))?;
        std::fs::write(truth_path, json)
            .map_err(io_err(truth_path, "cannot write the ground truth"))?;
    }

    let path = &opts.path;
    let gzip = opts.gzip
        || path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    let file = File::create(path).map_err(io_err(path, "cannot create the file"))?;
    let out = BufWriter::with_capacity(
        1 << 20,
        Counting {
            inner: file,
            bytes: 0,
        },
    );
    let mut sink = if gzip {
        Sink::Gzip(GzEncoder::new(out, Compression::default()))
    } else {
        Sink::Plain(out)
    };

    let bar = if progress {
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events ({per_sec}, eta {eta})",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };

    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    if opts.format == OutputFormat::Csv {
        buf.extend_from_slice(
            if cfg.extensions {
                CSV_HEADER_EXTENDED
            } else {
                CSV_HEADER
            }
            .as_bytes(),
        );
        buf.push(b'\n');
    }
    let mut uncompressed = 0u64;
    let mut events = 0u64;

    for e in MergedEvents::new(&source)? {
        match opts.format {
            OutputFormat::Csv => write_csv(&e, cfg.extensions, &mut buf),
            OutputFormat::Json => write_json(&e, &mut buf),
        }
        events += 1;
        if buf.len() >= (1 << 20) - 4096 {
            sink.write_all(&buf).map_err(io_err(path, "write failed"))?;
            uncompressed += buf.len() as u64;
            buf.clear();
            bar.set_position(events);
        }
    }
    sink.write_all(&buf).map_err(io_err(path, "write failed"))?;
    uncompressed += buf.len() as u64;
    let bytes = sink
        .finish()
        .map_err(io_err(path, "cannot finish the file"))?;
    bar.set_position(events);
    bar.finish();
    Ok(WriteReport {
        events,
        bytes,
        uncompressed_bytes: uncompressed,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Every event of a source's partitions as one stream, merged by event time (ties go to the
/// lower partition): the order [`write_dataset`] writes, and the `replay` command sends.
/// Deterministic like the partitions themselves; unbounded when `events` is `None`.
pub struct MergedEvents {
    parts: Vec<GeneratorPartition>,
    /// Each partition's next event.
    heads: Vec<Option<Event>>,
    /// `(event_time, partition)` of every present head, earliest first.
    heap: BinaryHeap<Reverse<(i64, u32)>>,
}

impl MergedEvents {
    /// Opens every partition of `source` and reads its first event.
    pub fn new(source: &GeneratorSource) -> Result<MergedEvents, GeneratorError> {
        let n = source.config().partitions;
        let mut merged = MergedEvents {
            parts: Vec::with_capacity(n as usize),
            heads: Vec::with_capacity(n as usize),
            heap: BinaryHeap::with_capacity(n as usize),
        };
        for k in 0..n {
            let mut p = source.partition(k)?;
            let head = p.next_event();
            if let Some(e) = &head {
                merged.heap.push(Reverse((e.event_time, k)));
            }
            merged.heads.push(head);
            merged.parts.push(p);
        }
        Ok(merged)
    }
}

impl Iterator for MergedEvents {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        let Reverse((_, k)) = self.heap.pop()?;
        let k = k as usize;
        let next = self.parts[k].next_event();
        if let Some(e) = &next {
            self.heap.push(Reverse((e.event_time, k as u32)));
        }
        std::mem::replace(&mut self.heads[k], next)
    }
}

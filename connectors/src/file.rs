//! The file source: replays REES46 CSV or JSON-lines files (plain or gzip) as a stream.
//!
//! Configuration (`[sources.NAME]` with `kind = "file"`):
//! - `path`: a file, or a directory whose regular files (sorted by name) are read; each
//!   file is one partition, so a directory of N files spreads over up to N workers;
//! - `format`: `csv` or `json`; by default from the extension (`.csv`, `.json`, `.jsonl`,
//!   `.ndjson`, each optionally `.gz`);
//! - `pace`: replay paced by event time, this many times faster than real time (absent:
//!   as fast as possible). Pacing only delays reads; it never changes what is read;
//! - `progress`: show a progress bar (default: when stderr is a terminal);
//! - `min_year` / `max_year`: accepted event_time years (default 2000-2099).
//!
//! Positions are 1-based line numbers (the CSV header is line 1); a CSV record whose quoted
//! fields hold line breaks is read whole (up to 16 lines) and positioned at its first line.
//! Blank lines are skipped.
//! Every other line yields an event or a dead letter naming the file, the line and the
//! reason. A CSV whose header lacks a required column fails the partition with an error
//! naming the column, since no line of it could be decoded.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use cap_engine::dead_letter::DeadLetter;
use cap_engine::source::{
    Polled, Position, Progress, Source, SourceError, SourcePartition, SourceRecord,
};
use serde::{Deserialize, Serialize};

use crate::clickstream::csv::CsvDecoder;
use crate::clickstream::json::JsonDecoder;
use crate::clickstream::{DecodeError, DecodeOptions, Event};

/// Record format of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// REES46 CSV with a header line.
    Csv,
    /// One JSON object per line.
    Json,
}

impl Format {
    /// The format implied by a file name, if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        if name.ends_with(".csv") {
            Some(Format::Csv)
        } else if name.ends_with(".json") || name.ends_with(".jsonl") || name.ends_with(".ndjson") {
            Some(Format::Json)
        } else {
            None
        }
    }
}

/// `[sources.NAME]` for `kind = "file"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Always `file`.
    pub kind: String,
    /// A file or a directory of files.
    pub path: PathBuf,
    /// `csv` or `json`; inferred from the extension when absent.
    #[serde(default)]
    pub format: Option<Format>,
    /// Event-time pacing speed-up factor; absent: as fast as possible.
    #[serde(default)]
    pub pace: Option<f64>,
    /// Progress bar on/off; absent: on when stderr is a terminal.
    #[serde(default)]
    pub progress: Option<bool>,
    /// Earliest accepted event_time year.
    #[serde(default = "default_min_year")]
    pub min_year: i32,
    /// Latest accepted event_time year.
    #[serde(default = "default_max_year")]
    pub max_year: i32,
}

fn default_min_year() -> i32 {
    DecodeOptions::default().min_year
}
fn default_max_year() -> i32 {
    DecodeOptions::default().max_year
}

/// A file (or directory) source of clickstream events.
pub struct FileSource {
    name: String,
    files: Vec<(PathBuf, Format)>,
    config: FileSourceConfig,
}

impl FileSource {
    /// Resolves the files and formats of `config`; errors name the key and the path.
    pub fn new(name: &str, config: FileSourceConfig) -> Result<FileSource, SourceError> {
        let cfg_err = |reason: String| SourceError::Config {
            source_name: name.to_owned(),
            reason,
        };
        if let Some(p) = config.pace {
            if !(p.is_finite() && p > 0.0) {
                return Err(cfg_err(format!(
                    "sources.{name}.pace must be a positive number, found {p}"
                )));
            }
        }
        if config.min_year > config.max_year {
            return Err(cfg_err(format!(
                "sources.{name}.min_year ({}) is after max_year ({})",
                config.min_year, config.max_year
            )));
        }
        let meta = std::fs::metadata(&config.path).map_err(|e| {
            cfg_err(format!(
                "sources.{name}.path {}: {e}",
                config.path.display()
            ))
        })?;
        let mut paths = Vec::new();
        if meta.is_dir() {
            let entries = std::fs::read_dir(&config.path).map_err(|e| {
                cfg_err(format!(
                    "sources.{name}.path {}: {e}",
                    config.path.display()
                ))
            })?;
            for entry in entries.flatten() {
                let p = entry.path();
                if p.is_file()
                    && !p
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or(".")
                        .starts_with('.')
                {
                    paths.push(p);
                }
            }
            paths.sort();
            if paths.is_empty() {
                return Err(cfg_err(format!(
                    "sources.{name}.path {} is a directory with no files",
                    config.path.display()
                )));
            }
        } else {
            paths.push(config.path.clone());
        }
        let mut files = Vec::new();
        for p in paths {
            let format = match config.format.or_else(|| Format::from_path(&p)) {
                Some(f) => f,
                None => {
                    return Err(cfg_err(format!(
                        "cannot tell the format of {} from its name; set sources.{name}.format to `csv` or `json`",
                        p.display()
                    )))
                }
            };
            files.push((p, format));
        }
        Ok(FileSource {
            name: name.to_owned(),
            files,
            config,
        })
    }
}

impl Source<Event> for FileSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn partitions(&self) -> Vec<String> {
        self.files
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect()
    }

    fn open(&self, index: usize) -> Result<Box<dyn SourcePartition<Event>>, SourceError> {
        let (path, format) = self
            .files
            .get(index)
            .cloned()
            .ok_or_else(|| SourceError::Config {
                source_name: self.name.clone(),
                reason: format!("no partition {index}"),
            })?;
        let options = DecodeOptions {
            min_year: self.config.min_year,
            max_year: self.config.max_year,
        };
        let show = self
            .config
            .progress
            .unwrap_or_else(|| std::io::stderr().is_terminal());
        Ok(Box::new(FilePartition::open(
            &self.name,
            path,
            format,
            options,
            self.config.pace,
            show,
        )?))
    }
}

/// Counts bytes read from the underlying (possibly compressed) file, for progress.
struct Counting<R> {
    inner: R,
    count: Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// Lines one CSV record may span (quoted line breaks) before it is given up as malformed.
const MAX_RECORD_LINES: usize = 16;

enum Decoder {
    Csv(Option<CsvDecoder>),
    Json(JsonDecoder),
}

/// One non-blank record of a file, as read and as decoded.
pub(crate) struct RawRecord<'a> {
    /// Line number of its first line (1-based; the CSV header is line 1).
    pub(crate) position: Position,
    /// Its bytes as read, without the trailing line terminator.
    pub(crate) body: &'a [u8],
    /// The event, or why the record is not one.
    pub(crate) decoded: Result<Event, DecodeError>,
}

/// Why a [`RecordReader`] cannot go on.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The file could not be read.
    Io(std::io::Error),
    /// The CSV header at `position` is unusable (e.g. lacks a required column), so no line
    /// of the file could be decoded.
    Header {
        /// Line number of the header.
        position: Position,
        /// What is wrong with it.
        error: DecodeError,
    },
}

/// Reads a CSV or JSON-lines file (plain or gzip) record by record, decoding each: the
/// reading half of [`FilePartition`], shared with the `replay` command, which needs each
/// record's bytes as well as its event. Positions and blank lines as in the module docs.
pub(crate) struct RecordReader {
    reader: Box<dyn BufRead + Send>,
    decoder: Decoder,
    options: DecodeOptions,
    line: Vec<u8>,
    /// Line number of the next line to read (1-based).
    next_line: Position,
    bytes_read: Arc<std::sync::atomic::AtomicU64>,
    total_bytes: Option<u64>,
}

impl RecordReader {
    /// Opens `path` (through gzip when its name ends in `.gz`).
    pub(crate) fn open(
        path: &Path,
        format: Format,
        options: DecodeOptions,
    ) -> std::io::Result<RecordReader> {
        let file = File::open(path)?;
        let total_bytes = file.metadata().ok().map(|m| m.len());
        let bytes_read = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = Counting {
            inner: file,
            count: Arc::clone(&bytes_read),
        };
        let gz = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.eq_ignore_ascii_case("gz"))
            .unwrap_or(false);
        let reader: Box<dyn BufRead + Send> = if gz {
            Box::new(BufReader::with_capacity(
                1 << 20,
                flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 16, counted)),
            ))
        } else {
            Box::new(BufReader::with_capacity(1 << 20, counted))
        };
        let decoder = match format {
            Format::Csv => Decoder::Csv(None),
            Format::Json => Decoder::Json(JsonDecoder::new(options.clone())),
        };
        Ok(RecordReader {
            reader,
            decoder,
            options,
            line: Vec::with_capacity(512),
            next_line: 1,
            bytes_read,
            total_bytes,
        })
    }

    /// Line number of the next line to read.
    pub(crate) fn next_line(&self) -> Position {
        self.next_line
    }

    /// Bytes of the file read so far (compressed bytes for a gzip file).
    pub(crate) fn bytes_read(&self) -> u64 {
        self.bytes_read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Size of the file in bytes, when known.
    pub(crate) fn total_bytes(&self) -> Option<u64> {
        self.total_bytes
    }

    /// Reads and decodes the next non-blank record (the CSV header is consumed, not
    /// returned); `None` at end of file.
    pub(crate) fn next_record(&mut self) -> Result<Option<RawRecord<'_>>, ReadError> {
        // The loop only decides; the record borrows the line after it (a borrow returned
        // from inside the loop would outlive the next iteration's read, for the checker).
        let (position, end, decoded) = loop {
            self.line.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.line)
                .map_err(ReadError::Io)?;
            if n == 0 {
                return Ok(None);
            }
            let position = self.next_line;
            self.next_line += 1;
            // RFC 4180: a quoted CSV field may hold line breaks; gather the whole record, up
            // to MAX_RECORD_LINES lines (an unterminated quote then yields one dead letter).
            if matches!(self.decoder, Decoder::Csv(Some(_))) && self.line.contains(&b'"') {
                let mut extra = 0;
                while crate::clickstream::csv::record_len(&self.line).is_none()
                    && extra < MAX_RECORD_LINES
                {
                    let more = self
                        .reader
                        .read_until(b'\n', &mut self.line)
                        .map_err(ReadError::Io)?;
                    if more == 0 {
                        break;
                    }
                    self.next_line += 1;
                    extra += 1;
                }
            }
            let mut end = self.line.len();
            while end > 0 && matches!(self.line[end - 1], b'\n' | b'\r') {
                end -= 1;
            }
            let body = &self.line[..end];
            if body.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let decoded = match &mut self.decoder {
                Decoder::Csv(dec @ None) => {
                    let header = CsvDecoder::from_header(body, self.options.clone())
                        .map_err(|error| ReadError::Header { position, error })?;
                    *dec = Some(header);
                    continue;
                }
                Decoder::Csv(Some(dec)) => dec.decode(body),
                Decoder::Json(dec) => dec.decode(body),
            };
            break (position, end, decoded);
        };
        Ok(Some(RawRecord {
            position,
            body: &self.line[..end],
            decoded,
        }))
    }
}

/// One file being replayed.
pub struct FilePartition {
    label: String,
    dead_source: String,
    path: PathBuf,
    format: Format,
    options: DecodeOptions,
    records: RecordReader,
    pace: Option<f64>,
    pacing_origin: Option<(i64, Instant)>,
    /// A decoded record held back by pacing.
    held: Option<SourceRecord<Event>>,
    bar: Option<indicatif::ProgressBar>,
    eof: bool,
}

impl FilePartition {
    fn open(
        source: &str,
        path: PathBuf,
        format: Format,
        options: DecodeOptions,
        pace: Option<f64>,
        progress: bool,
    ) -> Result<FilePartition, SourceError> {
        let label = path.display().to_string();
        let records = RecordReader::open(&path, format, options.clone()).map_err(|cause| {
            SourceError::Io {
                source_name: source.to_owned(),
                partition: label.clone(),
                what: "cannot open".to_owned(),
                cause,
            }
        })?;
        let bar = if progress {
            let bar = indicatif::ProgressBar::with_draw_target(
                records.total_bytes(),
                indicatif::ProgressDrawTarget::stderr(),
            );
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(
                path.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("file")
                    .to_owned(),
            );
            Some(bar)
        } else {
            None
        };
        Ok(FilePartition {
            dead_source: format!("{source}:{label}"),
            label,
            path,
            format,
            options,
            records,
            pace,
            pacing_origin: None,
            held: None,
            bar,
            eof: false,
        })
    }

    /// Reads and decodes the next non-blank line; `None` at end of file.
    fn next_record(&mut self) -> Result<Option<SourceRecord<Event>>, SourceError> {
        let rec = match self.records.next_record() {
            Ok(Some(rec)) => rec,
            Ok(None) => return Ok(None),
            Err(ReadError::Io(cause)) => {
                return Err(SourceError::Io {
                    source_name: self.dead_source.clone(),
                    partition: self.label.clone(),
                    what: "read failed".to_owned(),
                    cause,
                })
            }
            Err(ReadError::Header { position, error }) => {
                return Err(SourceError::Config {
                    source_name: self.dead_source.clone(),
                    reason: format!("line {position}: bad CSV header: {error}"),
                })
            }
        };
        let position = rec.position;
        let item = rec.decoded.map_err(|e| {
            DeadLetter::new(
                self.dead_source.clone(),
                position,
                rec.body,
                format!("line {position}: {e}"),
            )
        });
        Ok(Some(SourceRecord { position, item }))
    }

    /// Whether pacing holds `rec` back now.
    fn paced_out(&mut self, rec: &SourceRecord<Event>) -> bool {
        let (Some(speed), Ok(ev)) = (self.pace, &rec.item) else {
            return false;
        };
        let (t0, w0) = *self
            .pacing_origin
            .get_or_insert((ev.event_time, Instant::now()));
        let due_ms = (ev.event_time - t0) as f64 / speed;
        due_ms > w0.elapsed().as_secs_f64() * 1000.0
    }
}

impl SourcePartition<Event> for FilePartition {
    fn label(&self) -> &str {
        &self.label
    }

    fn position(&self) -> Position {
        self.held
            .as_ref()
            .map(|r| r.position)
            .unwrap_or(self.records.next_line())
    }

    fn poll(
        &mut self,
        budget: usize,
        out: &mut Vec<SourceRecord<Event>>,
    ) -> Result<Polled, SourceError> {
        if self.eof && self.held.is_none() {
            return Ok(Polled::Exhausted);
        }
        let mut n = 0;
        while n < budget {
            let rec = match self.held.take() {
                Some(r) => r,
                None => match self.next_record()? {
                    Some(r) => r,
                    None => {
                        self.eof = true;
                        if let Some(bar) = &self.bar {
                            bar.finish();
                        }
                        break;
                    }
                },
            };
            if self.paced_out(&rec) {
                self.held = Some(rec);
                break;
            }
            out.push(rec);
            n += 1;
        }
        if let Some(bar) = &self.bar {
            bar.set_position(self.records.bytes_read());
        }
        Ok(if n > 0 {
            Polled::Records(n)
        } else if self.eof {
            Polled::Exhausted
        } else {
            Polled::Idle
        })
    }

    fn seek(&mut self, position: Position) -> Result<(), SourceError> {
        // Re-open and skip: line positions have no index; O(position).
        let source = self.dead_source.split(':').next().unwrap_or("").to_owned();
        let mut fresh = FilePartition::open(
            &source,
            self.path.clone(),
            self.format,
            self.options.clone(),
            self.pace,
            false,
        )?;
        while fresh.records.next_line() <= position {
            match fresh.next_record()? {
                Some(rec) if rec.position >= position => {
                    fresh.held = Some(rec);
                    break;
                }
                Some(_) => {}
                None if fresh.records.next_line() == position => break, // seeking to the end
                None => {
                    return Err(SourceError::Seek {
                        source_name: source,
                        partition: self.label.clone(),
                        position,
                        reason: format!(
                            "the file has only {} lines",
                            fresh.records.next_line() - 1
                        ),
                    })
                }
            }
        }
        *self = fresh;
        Ok(())
    }

    fn progress(&self) -> Option<Progress> {
        Some(Progress {
            done: self.records.bytes_read(),
            total: self.records.total_bytes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickstream::encode::{write_csv, CSV_HEADER_EXTENDED};
    use std::io::Write;

    const HEADER: &str = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session";

    fn config(path: &Path) -> FileSourceConfig {
        FileSourceConfig {
            kind: "file".into(),
            path: path.to_owned(),
            format: None,
            pace: None,
            progress: Some(false),
            min_year: 2000,
            max_year: 2099,
        }
    }

    fn read_all(source: &FileSource, index: usize) -> anyhow::Result<Vec<SourceRecord<Event>>> {
        let mut part = source.open(index)?;
        let mut out = Vec::new();
        while part.poll(3, &mut out)? != Polled::Exhausted {}
        Ok(out)
    }

    fn sample_csv() -> String {
        format!(
            "{HEADER}\n\
             2019-11-01 00:00:00 UTC,view,1003461,2053013555631882655,electronics.smartphone,xiaomi,489.07,520088904,4d3b30da-a5e4-49df-b1a8-ba5943f1dd33\n\
             \n\
             2019-11-01 00:00:01 UTC,cart,17302664,2053013553853497655,,creed,28.31,561587266,755422e7-9040-477b-9bd2-6a6e8fd97387\n\
             2019-11-01 00:00:02 UTC,click,1,2,,,1.00,3,s\n\
             2019-11-01 00:00:03 UTC,purchase,17302664,2053013553853497655,,creed,28.31,561587266,\n"
        )
    }

    #[test]
    fn csv_lines_become_events_and_dead_letters_at_their_line_numbers() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("events.csv");
        std::fs::write(&path, sample_csv())?;
        let source = FileSource::new("clickstream", config(&path))?;
        assert_eq!(source.partitions(), vec![path.display().to_string()]);
        let recs = read_all(&source, 0)?;
        let positions: Vec<u64> = recs.iter().map(|r| r.position).collect();
        assert_eq!(
            positions,
            vec![2, 4, 5, 6],
            "blank line 3 skipped, header is line 1"
        );
        assert!(recs[0].item.is_ok() && recs[1].item.is_ok() && recs[3].item.is_ok());
        let dead = recs[2]
            .item
            .as_ref()
            .err()
            .ok_or_else(|| anyhow::anyhow!("line 5 should be a dead letter"))?;
        assert_eq!(dead.position, 5);
        assert!(
            dead.reason.contains("line 5") && dead.reason.contains("event_type"),
            "{}",
            dead.reason
        );
        assert!(dead.source.starts_with("clickstream:"), "{}", dead.source);
        assert_eq!(dead.raw, b"2019-11-01 00:00:02 UTC,click,1,2,,,1.00,3,s");
        Ok(())
    }

    #[test]
    fn gzip_and_json_read_the_same_events() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let plain = dir.path().join("a.csv");
        std::fs::write(&plain, sample_csv())?;
        let gz = dir.path().join("a.csv.gz");
        let mut enc =
            flate2::write::GzEncoder::new(std::fs::File::create(&gz)?, flate2::Compression::fast());
        enc.write_all(sample_csv().as_bytes())?;
        enc.finish()?;
        let a: Vec<_> = read_all(&FileSource::new("s", config(&plain))?, 0)?
            .into_iter()
            .filter_map(|r| r.item.ok())
            .collect();
        let b: Vec<_> = read_all(&FileSource::new("s", config(&gz))?, 0)?
            .into_iter()
            .filter_map(|r| r.item.ok())
            .collect();
        assert_eq!(a, b);
        let json = dir.path().join("a.jsonl");
        let mut text = Vec::new();
        for e in &a {
            crate::clickstream::encode::write_json(e, &mut text);
        }
        std::fs::write(&json, text)?;
        let c: Vec<_> = read_all(&FileSource::new("s", config(&json))?, 0)?
            .into_iter()
            .filter_map(|r| r.item.ok())
            .collect();
        assert_eq!(a, c);
        Ok(())
    }

    #[test]
    fn quoted_line_breaks_stay_in_one_record() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ext.csv");
        let mut text = format!("{CSV_HEADER_EXTENDED}\n").into_bytes();
        let mut event = read_all(
            &FileSource::new(
                "s",
                config(&{
                    let p = dir.path().join("one.csv");
                    std::fs::write(&p, sample_csv())?;
                    p
                }),
            )?,
            0,
        )?
        .remove(0)
        .item
        .map_err(|d| anyhow::anyhow!(d.reason))?;
        event.user_agent = Some("Mozilla/5.0\n(multi, \"line\")".into());
        write_csv(&event, true, &mut text);
        write_csv(&event, true, &mut text);
        std::fs::write(&path, text)?;
        let recs = read_all(&FileSource::new("s", config(&path))?, 0)?;
        assert_eq!(
            recs.iter().map(|r| r.position).collect::<Vec<_>>(),
            vec![2, 4]
        );
        for r in recs {
            assert_eq!(r.item.map_err(|d| anyhow::anyhow!(d.reason))?, event);
        }
        Ok(())
    }

    #[test]
    fn seek_resumes_at_the_recorded_position() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("events.csv");
        std::fs::write(&path, sample_csv())?;
        let source = FileSource::new("clickstream", config(&path))?;
        let all = read_all(&source, 0)?;
        for skip in 0..all.len() {
            let mut part = source.open(0)?;
            part.seek(all[skip].position)?;
            let mut out = Vec::new();
            while part.poll(2, &mut out)? != Polled::Exhausted {}
            let got: Vec<u64> = out.iter().map(|r| r.position).collect();
            let want: Vec<u64> = all[skip..].iter().map(|r| r.position).collect();
            assert_eq!(got, want, "seek to {}", all[skip].position);
        }
        Ok(())
    }

    #[test]
    fn pacing_holds_records_until_their_event_time_is_due() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("events.csv");
        // Two events an hour apart: at 1x speed the second is not due during the test.
        std::fs::write(
            &path,
            format!("{HEADER}\n2019-11-01 00:00:00 UTC,view,1,2,,,1.00,3,s\n2019-11-01 01:00:00 UTC,view,1,2,,,1.00,3,s\n"),
        )?;
        let mut cfg = config(&path);
        cfg.pace = Some(1.0);
        let mut part = FileSource::new("s", cfg)?.open(0)?;
        let mut out = Vec::new();
        assert_eq!(part.poll(10, &mut out)?, Polled::Records(1));
        assert_eq!(part.poll(10, &mut out)?, Polled::Idle);
        assert_eq!(
            part.position(),
            3,
            "the held record is still the next position"
        );
        Ok(())
    }

    #[test]
    fn configuration_errors_name_the_key_or_column() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let odd = dir.path().join("events.txt");
        std::fs::write(&odd, "x")?;
        let err = FileSource::new("clickstream", config(&odd))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("sources.clickstream.format"), "{err}");
        let missing = FileSource::new("clickstream", config(&dir.path().join("nope.csv")))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(missing.contains("sources.clickstream.path"), "{missing}");
        let bad_header = dir.path().join("bad.csv");
        std::fs::write(
            &bad_header,
            "event_time,event_type\n2019-11-01 00:00:00 UTC,view\n",
        )?;
        let mut part = FileSource::new("clickstream", config(&bad_header))?.open(0)?;
        let err = part
            .poll(10, &mut Vec::new())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("product_id"), "{err}");
        Ok(())
    }

    #[test]
    fn a_directory_is_one_partition_per_file_in_name_order() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        for name in ["b.csv", "a.csv", ".hidden.csv"] {
            std::fs::write(dir.path().join(name), sample_csv())?;
        }
        let source = FileSource::new("s", config(dir.path()))?;
        let labels = source.partitions();
        assert_eq!(labels.len(), 2);
        assert!(
            labels[0].ends_with("a.csv") && labels[1].ends_with("b.csv"),
            "{labels:?}"
        );
        Ok(())
    }
}

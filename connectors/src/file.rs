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
use crate::clickstream::{DecodeOptions, Event};

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

/// One file being replayed.
pub struct FilePartition {
    label: String,
    dead_source: String,
    path: PathBuf,
    format: Format,
    options: DecodeOptions,
    reader: Box<dyn BufRead + Send>,
    decoder: Decoder,
    line: Vec<u8>,
    /// Line number of the next line to read (1-based).
    next_line: Position,
    bytes_read: Arc<std::sync::atomic::AtomicU64>,
    total_bytes: Option<u64>,
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
        let io = |what: &str, cause: std::io::Error| SourceError::Io {
            source_name: source.to_owned(),
            partition: label.clone(),
            what: what.to_owned(),
            cause,
        };
        let file = File::open(&path).map_err(|e| io("cannot open", e))?;
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
        let bar = if progress {
            let bar = indicatif::ProgressBar::with_draw_target(
                total_bytes,
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
        let decoder = match format {
            Format::Csv => Decoder::Csv(None),
            Format::Json => Decoder::Json(JsonDecoder::new(options.clone())),
        };
        Ok(FilePartition {
            dead_source: format!("{source}:{label}"),
            label,
            path,
            format,
            options,
            reader,
            decoder,
            line: Vec::with_capacity(512),
            next_line: 1,
            bytes_read,
            total_bytes,
            pace,
            pacing_origin: None,
            held: None,
            bar,
            eof: false,
        })
    }

    fn io_error(&self, what: &str, cause: std::io::Error) -> SourceError {
        SourceError::Io {
            source_name: self.dead_source.clone(),
            partition: self.label.clone(),
            what: what.to_owned(),
            cause,
        }
    }

    /// Reads and decodes the next non-blank line; `None` at end of file.
    fn next_record(&mut self) -> Result<Option<SourceRecord<Event>>, SourceError> {
        loop {
            self.line.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.line)
                .map_err(|e| self.io_error("read failed", e))?;
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
                        .map_err(|e| self.io_error("read failed", e))?;
                    if more == 0 {
                        break;
                    }
                    self.next_line += 1;
                    extra += 1;
                }
            }
            let mut body: &[u8] = &self.line;
            while let Some((&last, rest)) = body.split_last() {
                if last == b'\n' || last == b'\r' {
                    body = rest;
                } else {
                    break;
                }
            }
            if body.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let item = match &mut self.decoder {
                Decoder::Csv(dec @ None) => {
                    let header =
                        CsvDecoder::from_header(body, self.options.clone()).map_err(|e| {
                            SourceError::Config {
                                source_name: self.dead_source.clone(),
                                reason: format!("line {position}: bad CSV header: {e}"),
                            }
                        })?;
                    *dec = Some(header);
                    continue;
                }
                Decoder::Csv(Some(dec)) => dec.decode(body),
                Decoder::Json(dec) => dec.decode(body),
            };
            let item = item.map_err(|e| {
                DeadLetter::new(
                    self.dead_source.clone(),
                    position,
                    body,
                    format!("line {position}: {e}"),
                )
            });
            return Ok(Some(SourceRecord { position, item }));
        }
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
            .unwrap_or(self.next_line)
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
            bar.set_position(self.bytes_read.load(std::sync::atomic::Ordering::Relaxed));
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
        while fresh.next_line <= position {
            match fresh.next_record()? {
                Some(rec) if rec.position >= position => {
                    fresh.held = Some(rec);
                    break;
                }
                Some(_) => {}
                None if fresh.next_line == position => break, // seeking to the end
                None => {
                    return Err(SourceError::Seek {
                        source_name: source,
                        partition: self.label.clone(),
                        position,
                        reason: format!("the file has only {} lines", fresh.next_line - 1),
                    })
                }
            }
        }
        *self = fresh;
        Ok(())
    }

    fn progress(&self) -> Option<Progress> {
        Some(Progress {
            done: self.bytes_read.load(std::sync::atomic::Ordering::Relaxed),
            total: self.total_bytes,
        })
    }
}

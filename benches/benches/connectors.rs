//! Connector micro-benchmarks, single-threaded: generator events/s, CSV and JSON encode and
//! decode records/s on generated REES46 data.
//!
//! ```text
//! cargo bench -p cap-benches --bench connectors -- [--events N]
//! ```

use std::time::Instant;

use cap_connectors::clickstream::csv::CsvDecoder;
use cap_connectors::clickstream::encode::{write_csv, write_json, CSV_HEADER, CSV_HEADER_EXTENDED};
use cap_connectors::clickstream::json::JsonDecoder;
use cap_connectors::clickstream::{DecodeOptions, Event};
use cap_connectors::generator::{GeneratorConfig, GeneratorSource};
use cap_engine::source::{Polled, Source, SourceRecord};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "generator, CSV and JSON codec throughput (single thread)")]
struct Args {
    /// Events per measurement.
    #[arg(long, default_value_t = 2_000_000)]
    events: usize,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

fn generate(n: usize, extensions: bool) -> anyhow::Result<(Vec<Event>, f64)> {
    let cfg = GeneratorConfig {
        partitions: 1,
        extensions,
        ..GeneratorConfig::default()
    };
    let source = GeneratorSource::try_new("bench", cfg)?;
    let mut part = source.open(0)?;
    let mut out: Vec<SourceRecord<Event>> = Vec::with_capacity(4096);
    let mut events = Vec::with_capacity(n);
    let started = Instant::now();
    while events.len() < n {
        out.clear();
        if part.poll(4096.min(n - events.len()), &mut out)? == Polled::Exhausted {
            break;
        }
        events.extend(out.drain(..).filter_map(|r| r.item.ok()));
    }
    Ok((events, started.elapsed().as_secs_f64()))
}

fn report(what: &str, n: usize, bytes: usize, secs: f64) {
    println!(
        "{what:<34} {n:>9} records {secs:>7.3}s {:>7.2} M records/s {:>7.0} MB/s",
        n as f64 / secs / 1e6,
        bytes as f64 / secs / 1e6
    );
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for extensions in [false, true] {
        let tag = if extensions {
            "with extensions"
        } else {
            "REES46 columns"
        };
        let (events, secs) = generate(args.events, extensions)?;
        report(&format!("generator ({tag})"), events.len(), 0, secs);

        let mut buf = Vec::new();
        let mut ends = Vec::with_capacity(events.len());
        let started = Instant::now();
        for e in &events {
            write_csv(e, extensions, &mut buf);
            ends.push(buf.len());
        }
        report(
            &format!("csv encode ({tag})"),
            events.len(),
            buf.len(),
            started.elapsed().as_secs_f64(),
        );
        let header = if extensions {
            CSV_HEADER_EXTENDED
        } else {
            CSV_HEADER
        };
        let decoder = CsvDecoder::from_header(header.as_bytes(), DecodeOptions::default())?;
        let started = Instant::now();
        let (mut from, mut ok) = (0, 0usize);
        for &to in &ends {
            ok += usize::from(decoder.decode(&buf[from..to]).is_ok());
            from = to;
        }
        report(
            &format!("csv decode ({tag})"),
            ok,
            buf.len(),
            started.elapsed().as_secs_f64(),
        );
        anyhow::ensure!(
            ok == events.len(),
            "csv: {} of {} decoded",
            ok,
            events.len()
        );

        buf.clear();
        ends.clear();
        for e in &events {
            write_json(e, &mut buf);
            ends.push(buf.len());
        }
        let decoder = JsonDecoder::new(DecodeOptions::default());
        let started = Instant::now();
        let (mut from, mut ok) = (0, 0usize);
        for &to in &ends {
            ok += usize::from(decoder.decode(&buf[from..to]).is_ok());
            from = to;
        }
        report(
            &format!("json decode ({tag})"),
            ok,
            buf.len(),
            started.elapsed().as_secs_f64(),
        );
        anyhow::ensure!(
            ok == events.len(),
            "json: {} of {} decoded",
            ok,
            events.len()
        );
    }
    Ok(())
}

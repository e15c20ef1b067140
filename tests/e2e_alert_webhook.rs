//! End to end: the real `customer-analytics` binary over a generated CSV with injected bots
//! and DDoS bursts, with one webhook channel (`[[sinks.notify]]`, json format) at a receiver
//! on loopback. Every alert that appeared in the `alerts` table is notified, keyed by its
//! `alert_id` (body and `Idempotency-Key`), with the row the table had, and nothing else is.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{ensure, Context, Result};
use cap_tests::{generate_csv, read_jsonl, run_on_csv, WebhookReceiver};
use serde_json::Value;

#[test]
fn every_alert_of_the_table_reaches_the_webhook_keyed_by_alert_id() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = generate_csv(dir.path(), 150_000, 11, &[])?;
    let out = dir.path().join("out");
    let receiver = WebhookReceiver::start()?;
    // No rate limit to speak of: every alert is sent on its own.
    let notify = format!(
        "sinks.notify=[{{kind = \"webhook\", url = \"{}\", format = \"json\", \
         max_per_minute = 100000, queue_len = 100000}}]",
        receiver.url
    );
    run_on_csv(&csv, &out, "2", "4000", &["--set", &notify])?;
    // The job drained its channel before it exited: everything has arrived.

    // Every row each alert_id had in the changelog (a late event can change or retract one).
    let mut rows: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in read_jsonl(&out.join("alerts.changelog.jsonl"))? {
        if !line["row"].is_null() {
            let id = line["row"]["alert_id"].as_str().context("alert_id")?;
            rows.entry(id.to_owned())
                .or_default()
                .push(line["row"].clone());
        }
    }
    let in_table: BTreeSet<String> = read_jsonl(&out.join("alerts.jsonl"))?
        .iter()
        .map(|r| {
            r["alert_id"]
                .as_str()
                .map(str::to_owned)
                .context("alert_id")
        })
        .collect::<Result<_>>()?;
    ensure!(
        !in_table.is_empty(),
        "expected alerts from the injected incidents"
    );

    let mut received = BTreeSet::new();
    for (key, body) in receiver.requests() {
        let id = body["alert_id"]
            .as_str()
            .context("a body without alert_id")?;
        ensure!(key == id, "Idempotency-Key {key} for alert_id {id}");
        ensure!(body["table"] == "alerts", "{body}");
        ensure!(
            rows.get(id)
                .is_some_and(|seen| seen.contains(&body["alert"])),
            "notified a row the table never had: {body}"
        );
        received.insert(id.to_owned());
    }
    let ever: BTreeSet<String> = rows.keys().cloned().collect();
    ensure!(
        received == ever,
        "notified but never in the table: {:?}\nin the table but not notified: {:?}",
        received.difference(&ever).collect::<Vec<_>>(),
        ever.difference(&received).collect::<Vec<_>>()
    );
    // In particular every alert of the final table was notified.
    ensure!(
        in_table.is_subset(&received),
        "not notified: {:?}",
        in_table.difference(&received).collect::<Vec<_>>()
    );
    Ok(())
}

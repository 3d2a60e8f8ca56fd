//! `crm import`: streams a CSV or JSON-lines file to `ImportCustomers` with a column
//! mapping, shows progress, and returns the job. Also the import client of
//! `crm bench import` and `crm eval-dedup`.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;
use crm_proto::crm::{
    common::v1 as common,
    customer::v1::{
        self as pb, customer_profile_service_client::CustomerProfileServiceClient, import_customers_request::Content,
    },
};
use serde::Deserialize;
use tonic::transport::Channel;

pub type Row = BTreeMap<String, String>;

/// A mapping file (TOML):
///
/// ```toml
/// source = "legacy-erp"   # source system id
/// channel = "erp"         # web, app, store, service_desk, erp, ecommerce, ...
/// key_column = "id"       # optional: row key column (default: the line number)
/// [[mapping]]
/// column = "id"
/// field = "external_id"
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct MappingFile {
    pub source: String,
    pub channel: String,
    #[serde(default)]
    pub key_column: Option<String>,
    pub mapping: Vec<ColumnMapping>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ColumnMapping {
    pub column: String,
    pub field: String,
}

impl MappingFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("mapping file {}", path.display()))
    }
}

/// A channel by its short name (`erp`, `service_desk`).
pub fn channel(name: &str) -> anyhow::Result<common::Channel> {
    common::Channel::from_str_name(&format!("CHANNEL_{}", name.to_uppercase()))
        .filter(|c| *c != common::Channel::Unspecified)
        .with_context(|| {
            format!(
                "`{name}` is not a channel (web, app, store, service_desk, erp, ecommerce, phone, email, wechat, import, api)"
            )
        })
}

/// Reads every row of a `.csv` (header line) or `.jsonl` (one flat object per line) file.
pub fn read_rows(path: &Path) -> anyhow::Result<Vec<Row>> {
    let name = path.display().to_string();
    if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {name}"))?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| {
                let object: BTreeMap<String, serde_json::Value> =
                    serde_json::from_str(line).with_context(|| format!("{name}:{}: not a JSON object", i + 1))?;
                Ok(object
                    .into_iter()
                    .filter_map(|(k, v)| match v {
                        serde_json::Value::Null => None,
                        serde_json::Value::String(s) => Some((k, s)),
                        other => Some((k, other.to_string())),
                    })
                    .collect())
            })
            .collect()
    } else {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .from_path(path)
            .with_context(|| format!("reading {name}"))?;
        let headers: Vec<String> = reader.headers()?.iter().map(|h| h.trim().to_owned()).collect();
        reader
            .records()
            .enumerate()
            .map(|(i, record)| {
                let record = record.with_context(|| format!("{name}: record {}", i + 1))?;
                Ok(headers
                    .iter()
                    .zip(record.iter())
                    .filter(|(_, v)| !v.trim().is_empty())
                    .map(|(h, v)| (h.clone(), v.trim().to_owned()))
                    .collect())
            })
            .collect()
    }
}

/// What an import reads and how.
#[derive(Debug, Clone)]
pub struct Spec {
    pub job_id: String,
    pub source: String,
    pub channel: common::Channel,
    pub mapping: Vec<(String, String)>,
    /// Rows per message.
    pub batch: usize,
}

/// Streams `(row key, row)` pairs and ends with `complete`; returns the job and the
/// wall time. `progress` shows a progress bar on stderr.
pub async fn run(
    client: &mut CustomerProfileServiceClient<Channel>,
    token: &str,
    spec: &Spec,
    rows: Vec<(String, Row)>,
    progress: bool,
) -> anyhow::Result<(pb::ImportJob, Duration)> {
    let total = rows.len() as u64;
    let bar = if progress {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rows sent, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let first = pb::ImportCustomersRequest {
        content: Some(Content::Spec(pb::ImportSpec {
            import_job_id: spec.job_id.clone(),
            source: Some(pb::Source {
                system: spec.source.clone(),
                channel: spec.channel as i32,
            }),
            mapping: spec
                .mapping
                .iter()
                .map(|(column, field)| pb::FieldMapping {
                    column: column.clone(),
                    field: field.clone(),
                })
                .collect(),
        })),
    };
    let batch = spec.batch.clamp(1, 1000);
    let sender_bar = bar.clone();
    let sender = tokio::spawn(async move {
        if tx.send(first).await.is_err() {
            return;
        }
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<pb::ImportRow> = rows
                .by_ref()
                .take(batch)
                .map(|(key, values)| pb::ImportRow {
                    row_key: key,
                    values: values.into_iter().collect(),
                })
                .collect();
            let n = chunk.len() as u64;
            let message = pb::ImportCustomersRequest {
                content: Some(Content::Rows(pb::ImportRows { rows: chunk })),
            };
            if tx.send(message).await.is_err() {
                return;
            }
            sender_bar.inc(n);
        }
        let _ = tx
            .send(pb::ImportCustomersRequest {
                content: Some(Content::Complete(true)),
            })
            .await;
    });
    let started = Instant::now();
    let request = crate::authorized(tokio_stream::wrappers::ReceiverStream::new(rx), &crate::bearer(token)?);
    let job = client.import_customers(request).await;
    sender.abort();
    bar.finish_and_clear();
    let job = job.context("ImportCustomers failed")?.into_inner();
    Ok((job, started.elapsed()))
}

/// A one-line summary of a job.
pub fn summary(job: &pb::ImportJob, elapsed: Duration) -> String {
    format!(
        "{}: {} rows in {:.1} s ({:.0} rows/s): {} created, {} updated, {} merged, {} unchanged, {} rejected, {} skipped",
        job.name,
        job.rows_processed,
        elapsed.as_secs_f64(),
        job.rows_processed as f64 / elapsed.as_secs_f64().max(1e-9),
        job.created,
        job.updated,
        job.merged,
        job.unchanged,
        job.rejected,
        job.skipped
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_csv_and_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("a.csv");
        std::fs::write(&csv, "id,given\n1, Ann \n2,\n").unwrap();
        let rows = read_rows(&csv).unwrap();
        assert_eq!(rows[0]["given"], "Ann");
        assert!(!rows[1].contains_key("given"));
        let jsonl = dir.path().join("a.jsonl");
        std::fs::write(&jsonl, "{\"id\": 1, \"given\": \"Ann\", \"x\": null}\n\n{\"id\": \"2\"}\n").unwrap();
        let rows = read_rows(&jsonl).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["id"], "1");
        assert!(!rows[0].contains_key("x"));
        std::fs::write(&jsonl, "[1]\n").unwrap();
        assert!(read_rows(&jsonl).unwrap_err().to_string().contains("a.jsonl:1"));
    }

    #[test]
    fn mapping_files_and_channels() {
        let m: MappingFile =
            toml::from_str("source = \"erp\"\nchannel = \"erp\"\n[[mapping]]\ncolumn = \"id\"\nfield = \"external_id\"\n")
                .unwrap();
        assert_eq!(m.mapping[0].field, "external_id");
        assert_eq!(channel("service_desk").unwrap(), common::Channel::ServiceDesk);
        assert!(channel("fax").is_err());
        assert!(channel("unspecified").is_err());
    }
}

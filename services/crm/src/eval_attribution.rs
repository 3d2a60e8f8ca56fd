//! `crm eval-attribution`: the data-driven (Markov removal-effect) attribution model
//! against the PyPI package `ChannelAttribution` on the same generated journeys.
//!
//! Journeys are drawn with planted channel effects: each customer meets one to six
//! touches on five channels, and converts with a probability that grows with the
//! channels met (SMS and paid ads most, push least). The same paths go to this
//! service's model and, as counts per distinct path, to `ChannelAttribution`'s
//! `markov_model` (order 1) run by the given Python. The report gives both
//! conversion shares per channel and their largest difference; the command fails
//! when a share differs by more than the tolerance.

use std::{collections::BTreeMap, path::Path as FsPath};

use anyhow::Context;
use crm_segmentation::campaigns::attribution::{self, Model, Path, Touch};

use crate::seed::Rng;

/// The channels and how much each adds to the odds of converting.
const CHANNELS: &[(&str, f64, f64)] = &[
    // (name, chance to appear at each step, lift of the conversion probability)
    ("ad", 0.30, 0.10),
    ("sms", 0.20, 0.12),
    ("email", 0.25, 0.05),
    ("wechat", 0.15, 0.07),
    ("push", 0.10, 0.02),
];

/// The generated journeys.
pub fn journeys(customers: usize, seed: u64) -> Vec<Path> {
    let mut rng = Rng::new(seed);
    let mut unit = move || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let mut out = Vec::with_capacity(customers);
    for _ in 0..customers {
        let len = 1 + (unit() * 6.0) as usize;
        let mut touches = Vec::with_capacity(len);
        let mut p = 0.02;
        let mut seen = std::collections::BTreeSet::new();
        for step in 0..len {
            let mut draw = unit();
            let mut pick = CHANNELS[CHANNELS.len() - 1];
            for c in CHANNELS {
                if draw < c.1 {
                    pick = *c;
                    break;
                }
                draw -= c.1;
            }
            if seen.insert(pick.0) {
                p += pick.2;
            }
            touches.push(Touch {
                key: pick.0.to_owned(),
                at_us: step as i64 * 3_600_000_000,
            });
        }
        let converted = unit() < p;
        out.push(Path {
            conversion: converted.then_some((len as i64 * 3_600_000_000, 100.0)),
            touches,
        });
    }
    out
}

/// The paths as `ChannelAttribution` reads them: `path,total_conversions,total_null`.
fn csv(paths: &[Path]) -> String {
    let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for p in paths {
        let key = p.touches.iter().map(|t| t.key.as_str()).collect::<Vec<_>>().join(" > ");
        let c = counts.entry(key).or_default();
        if p.conversion.is_some() {
            c.0 += 1;
        } else {
            c.1 += 1;
        }
    }
    let mut out = String::from("path,total_conversions,total_null\n");
    for (path, (conv, null)) in counts {
        out.push_str(&format!("{path},{conv},{null}\n"));
    }
    out
}

const SCRIPT: &str = r#"
import json, sys
import pandas as pd
from ChannelAttribution import markov_model
data = pd.read_csv(sys.argv[1])
result = markov_model(data, "path", "total_conversions", var_null="total_null", order=1,
                      out_more=True, verbose=False, flg_pro=False)
rows = result["result"]
effects = result["removal_effects"]
print(json.dumps({
    "conversions": {str(r.channel_name): float(r.total_conversions) for r in rows.itertuples()},
    "removal_effects": {str(r.channel_name): float(r.removal_effect) for r in effects.itertuples()},
}))
"#;

fn shares(conversions: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let total: f64 = conversions.values().sum();
    conversions.iter().map(|(k, v)| (k.clone(), v / total)).collect()
}

/// Runs the comparison; the JSON report, or an error when a share differs by more
/// than `tolerance`.
pub fn run(
    python: &FsPath,
    customers: usize,
    seed: u64,
    tolerance: f64,
    keep: Option<&FsPath>,
) -> anyhow::Result<serde_json::Value> {
    let paths = journeys(customers, seed);
    let started = std::time::Instant::now();
    let ours = attribution::attribute(Model::DataDriven, &paths);
    let ours_ms = started.elapsed().as_secs_f64() * 1000.0;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("paths.csv");
    std::fs::write(&data, csv(&paths))?;
    if let Some(keep) = keep {
        std::fs::copy(&data, keep).with_context(|| format!("cannot write {}", keep.display()))?;
    }
    let (theirs, theirs_ms) = crate::python::run_json(python, "ChannelAttribution", SCRIPT, &[data.clone().into_os_string()])?;
    let their_conversions: BTreeMap<String, f64> = serde_json::from_value(theirs["conversions"].clone())?;
    let our_conversions: BTreeMap<String, f64> = ours.iter().map(|(k, c)| (k.clone(), c.conversions)).collect();
    let (a, b) = (shares(&our_conversions), shares(&their_conversions));
    let mut worst = 0.0f64;
    let mut channels = serde_json::Map::new();
    for (k, ours_share) in &a {
        let theirs_share = b.get(k).copied().unwrap_or(0.0);
        worst = worst.max((ours_share - theirs_share).abs());
        channels.insert(
            k.clone(),
            serde_json::json!({
                "share": ours_share,
                "channelattribution_share": theirs_share,
                "removal_effect": ours[k].removal_effect,
                "channelattribution_removal_effect": theirs["removal_effects"][k],
            }),
        );
    }
    let report = serde_json::json!({
        "customers": customers,
        "converting_paths": paths.iter().filter(|p| p.conversion.is_some()).count(),
        "distinct_paths": csv(&paths).lines().count() - 1,
        "channels": channels,
        "max_share_difference": worst,
        "tolerance": tolerance,
        "ours_ms": ours_ms,
        "channelattribution_ms": theirs_ms,
    });
    anyhow::ensure!(
        worst <= tolerance,
        "shares differ by {worst:.4} (more than {tolerance}): {report}"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journeys_are_reproducible_and_carry_the_planted_effects() {
        let a = journeys(2000, 7);
        assert_eq!(a, journeys(2000, 7));
        let converts = |with: &str| {
            let (n, c) = a
                .iter()
                .filter(|p| p.touches.iter().any(|t| t.key == with))
                .fold((0, 0), |(n, c), p| (n + 1, c + usize::from(p.conversion.is_some())));
            c as f64 / n as f64
        };
        assert!(
            converts("sms") > converts("push"),
            "sms {} push {}",
            converts("sms"),
            converts("push")
        );
        let effects = attribution::removal_effects(&a);
        assert!(effects["sms"] > effects["push"], "{effects:?}");
        assert!(csv(&a).starts_with("path,total_conversions,total_null\n"));
    }
}

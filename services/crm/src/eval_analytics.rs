//! `crm eval-analytics`: the analytics service's models against the PyPI reference
//! implementations, run by the given Python:
//!
//! - **Lifetime value** against `lifetimes`: both fit BG/NBD and Gamma-Gamma on the
//!   CDNOW sample as `lifetimes` ships it; the parameters must match the published
//!   ones within 1 %, and every customer's P(alive), expected purchases over 39
//!   weeks, expected spend and 12-month CLV must match `lifetimes`' within 1e-3
//!   relative (with each side's own fit). The same predictions under `lifetimes`'
//!   parameters check the formulas alone. Fit times of both are reported.
//! - **Association rules** against `mlxtend`: generated baskets with planted
//!   associations; `fpgrowth` + `association_rules` and ours at the same thresholds
//!   must give the same rule set, with the same support, confidence and lift.

use std::{collections::BTreeMap, path::Path};

use crm_analytics::{
    clv::{BgNbd, GammaGamma, History, Spend, lifetime_value},
    rules,
};

use crate::seed::Rng;

const CLV_SCRIPT: &str = r#"
import json, time
from lifetimes import BetaGeoFitter, GammaGammaFitter
from lifetimes.datasets import load_cdnow_summary_data_with_monetary_value
d = load_cdnow_summary_data_with_monetary_value()
started = time.perf_counter()
bgf = BetaGeoFitter(penalizer_coef=0.0)
bgf.fit(d["frequency"], d["recency"], d["T"])
bgf_s = time.perf_counter() - started
repeat = d[d["frequency"] > 0]
started = time.perf_counter()
ggf = GammaGammaFitter(penalizer_coef=0.0)
ggf.fit(repeat["frequency"], repeat["monetary_value"])
ggf_s = time.perf_counter() - started
f, r, T, m = d["frequency"], d["recency"], d["T"], d["monetary_value"]
print(json.dumps({
    "rows": [[float(a), float(b), float(c), float(e)] for a, b, c, e in zip(f, r, T, m)],
    "bgnbd": {k: float(v) for k, v in bgf.params_.items()},
    "gamma_gamma": {k: float(v) for k, v in ggf.params_.items()},
    "fit_seconds": bgf_s + ggf_s,
    "p_alive": [float(x) for x in bgf.conditional_probability_alive(f, r, T)],
    "expected_39": [float(x) for x in bgf.conditional_expected_number_of_purchases_up_to_time(39, f, r, T)],
    "spend": [float(x) for x in ggf.conditional_expected_average_profit(f, m)],
    "clv_12": [float(x) for x in ggf.customer_lifetime_value(bgf, f, r, T, m, time=12, discount_rate=0.01, freq="W")],
}))
"#;

const RULES_SCRIPT: &str = r#"
import json, sys, time
import pandas as pd
from mlxtend.preprocessing import TransactionEncoder
from mlxtend.frequent_patterns import fpgrowth, association_rules
baskets = [l.rstrip("\n").split(",") for l in open(sys.argv[1]) if l.strip()]
min_support, min_confidence, max_len = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
encoder = TransactionEncoder()
df = pd.DataFrame(encoder.fit(baskets).transform(baskets), columns=encoder.columns_)
started = time.perf_counter()
frequent = fpgrowth(df, min_support=min_support, use_colnames=True, max_len=max_len)
found = association_rules(frequent, num_itemsets=len(baskets), metric="confidence", min_threshold=min_confidence)
seconds = time.perf_counter() - started
print(json.dumps({
    "itemsets": len(frequent),
    "seconds": seconds,
    "rules": [[sorted(a), sorted(c), float(s), float(k), float(l)] for a, c, s, k, l in
              zip(found["antecedents"], found["consequents"], found["support"], found["confidence"], found["lift"])],
}))
"#;

fn floats(v: &serde_json::Value) -> anyhow::Result<Vec<f64>> {
    Ok(serde_json::from_value(v.clone())?)
}

/// The largest relative difference of two series (each pair's difference over the
/// larger magnitude; pairs both below 1e-12 count as equal).
fn worst_relative(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let scale = x.abs().max(y.abs());
            if scale < 1e-12 { 0.0 } else { (x - y).abs() / scale }
        })
        .fold(0.0, f64::max)
}

/// Per-customer predictions: P(alive), expected purchases in 39 weeks, expected
/// spend, 12-month CLV (periods of 4.345 weeks, 1 % per period).
fn predict(model: &BgNbd, spend: &GammaGamma, rows: &[[f64; 4]]) -> [Vec<f64>; 4] {
    let mut out: [Vec<f64>; 4] = Default::default();
    for row in rows {
        let h = History {
            x: row[0],
            t_x: row[1],
            t: row[2],
        };
        out[0].push(model.p_alive(&h));
        out[1].push(model.expected_purchases(&h, 39.0));
        let value = spend.expected_average_value(row[0], row[3]);
        out[2].push(value);
        out[3].push(lifetime_value(model, &h, value, 12, 4.345, 0.01));
    }
    out
}

/// The lifetime-value comparison; an error when a check fails.
pub fn clv(python: &Path, tolerance: f64) -> anyhow::Result<serde_json::Value> {
    let (theirs, theirs_ms) = crate::python::run_json(python, "lifetimes", CLV_SCRIPT, &[])?;
    let rows: Vec<[f64; 4]> = serde_json::from_value(theirs["rows"].clone())?;
    anyhow::ensure!(rows.len() == 2357, "CDNOW has 2357 customers, lifetimes gave {}", rows.len());
    let histories: Vec<History> = rows
        .iter()
        .map(|r| History {
            x: r[0],
            t_x: r[1],
            t: r[2],
        })
        .collect();
    let spends: Vec<Spend> = rows.iter().map(|r| Spend { x: r[0], m: r[3] }).collect();
    let started = std::time::Instant::now();
    let (model, ll) = BgNbd::fit(&histories);
    let (spend, spend_ll) = GammaGamma::fit(&spends);
    let fit_seconds = started.elapsed().as_secs_f64();
    let their_fit_seconds = theirs["fit_seconds"].as_f64().unwrap_or(f64::NAN);

    let mut problems = Vec::new();
    for (name, got, published) in [
        ("r", model.r, 0.243),
        ("alpha", model.alpha, 4.414),
        ("a", model.a, 0.793),
        ("b", model.b, 2.426),
        ("p", spend.p, 6.25),
        ("q", spend.q, 3.74),
        ("v", spend.v, 15.44),
    ] {
        if (got - published).abs() / published > 0.01 {
            problems.push(format!("{name} = {got}, published {published}"));
        }
    }
    let p = |k: &str, part: &str| theirs[part][k].as_f64().unwrap_or(f64::NAN);
    let their_model = BgNbd {
        r: p("r", "bgnbd"),
        alpha: p("alpha", "bgnbd"),
        a: p("a", "bgnbd"),
        b: p("b", "bgnbd"),
    };
    let their_spend = GammaGamma {
        p: p("p", "gamma_gamma"),
        q: p("q", "gamma_gamma"),
        v: p("v", "gamma_gamma"),
    };
    let names = ["p_alive", "expected_39", "spend", "clv_12"];
    let reference: Vec<Vec<f64>> = names.iter().map(|n| floats(&theirs[*n])).collect::<anyhow::Result<_>>()?;
    let own = predict(&model, &spend, &rows);
    let same_parameters = predict(&their_model, &their_spend, &rows);
    let mut predictions = serde_json::Map::new();
    for (i, name) in names.iter().enumerate() {
        let fitted = worst_relative(&own[i], &reference[i]);
        let formulas = worst_relative(&same_parameters[i], &reference[i]);
        if fitted > tolerance {
            problems.push(format!("{name}: a customer's prediction differs by {fitted:.2e} relative"));
        }
        predictions.insert(
            (*name).into(),
            serde_json::json!({
                "max_relative_difference": fitted,
                "max_relative_difference_same_parameters": formulas,
            }),
        );
    }
    let report = serde_json::json!({
        "customers": rows.len(),
        "ours": {
            "r": model.r, "alpha": model.alpha, "a": model.a, "b": model.b, "log_likelihood": ll,
            "p": spend.p, "q": spend.q, "v": spend.v, "spend_log_likelihood": spend_ll,
            "fit_seconds": fit_seconds,
        },
        "lifetimes": {
            "bgnbd": theirs["bgnbd"], "gamma_gamma": theirs["gamma_gamma"],
            "fit_seconds": their_fit_seconds, "script_ms": theirs_ms,
        },
        "fit_time_ratio_ours_to_lifetimes": fit_seconds / their_fit_seconds,
        "predictions": predictions,
        "tolerance": tolerance,
    });
    anyhow::ensure!(problems.is_empty(), "{}: {report}", problems.join("; "));
    Ok(report)
}

/// Baskets from a shop of `products` products in 12 categories, with planted
/// associations (accessories follow their device; some bundles).
pub fn baskets(count: usize, products: u64, seed: u64) -> Vec<Vec<String>> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut b: Vec<u64> = Vec::new();
        // One to four picks, the popular products more often (squared uniform).
        for _ in 0..1 + rng.below(4) {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            b.push((u * u * products as f64) as u64);
        }
        // Device i (even, below 20) brings its accessory i + 1 with 60 %, and product
        // 40 with 30 %.
        for i in b.clone() {
            if i < 20 && i % 2 == 0 && rng.chance(0.6) {
                b.push(i + 1);
                if rng.chance(0.3) {
                    b.push(40);
                }
            }
        }
        b.sort_unstable();
        b.dedup();
        out.push(b.iter().map(|i| format!("P{i:03}")).collect());
    }
    out
}

/// A product's category.
fn category(product: &str) -> String {
    let n: u64 = product.trim_start_matches('P').parse().unwrap_or(0);
    format!("C{:02}", n % 12)
}

/// One level's comparison: the rule sets must be equal, metrics within 1e-9.
fn compare_rules(
    python: &Path,
    level: &str,
    baskets: &[Vec<String>],
    min_support: f64,
    min_confidence: f64,
    max_len: usize,
) -> anyhow::Result<(serde_json::Value, Vec<String>)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("baskets.csv");
    std::fs::write(&file, baskets.iter().map(|b| b.join(",") + "\n").collect::<String>())?;
    let args = [
        file.into_os_string(),
        min_support.to_string().into(),
        min_confidence.to_string().into(),
        max_len.to_string().into(),
    ];
    let (theirs, theirs_ms) = crate::python::run_json(python, "mlxtend", RULES_SCRIPT, &args)?;

    let started = std::time::Instant::now();
    let mut ids: BTreeMap<&str, u32> = BTreeMap::new();
    for item in baskets.iter().flatten() {
        let next = ids.len() as u32;
        ids.entry(item).or_insert(next);
    }
    let names: BTreeMap<u32, &str> = ids.iter().map(|(k, v)| (*v, *k)).collect();
    let encoded: Vec<Vec<u32>> = baskets.iter().map(|b| b.iter().map(|i| ids[i.as_str()]).collect()).collect();
    let n = baskets.len() as u64;
    let sets = rules::frequent_itemsets(&encoded, rules::min_count(min_support, n), max_len);
    let ours_rules = rules::rules(&sets, n, min_confidence, 0.0);
    let ours_ms = started.elapsed().as_secs_f64() * 1000.0;

    type Key = (Vec<String>, Vec<String>);
    let named = |items: &[u32]| -> Vec<String> {
        let mut v: Vec<String> = items.iter().map(|i| names[i].to_owned()).collect();
        v.sort();
        v
    };
    let ours: BTreeMap<Key, [f64; 3]> = ours_rules
        .iter()
        .map(|r| {
            (
                (named(&r.antecedent), named(&r.consequent)),
                [r.support, r.confidence, r.lift],
            )
        })
        .collect();
    // Each: antecedents, consequents, support, confidence, lift.
    type Listed = (Vec<String>, Vec<String>, f64, f64, f64);
    let listed: Vec<Listed> = serde_json::from_value(theirs["rules"].clone())?;
    let their: BTreeMap<Key, [f64; 3]> = listed.into_iter().map(|(a, c, s, k, l)| ((a, c), [s, k, l])).collect();
    let mut problems = Vec::new();
    let only_ours: Vec<&Key> = ours.keys().filter(|k| !their.contains_key(*k)).collect();
    let only_theirs: Vec<&Key> = their.keys().filter(|k| !ours.contains_key(*k)).collect();
    if !only_ours.is_empty() || !only_theirs.is_empty() {
        problems.push(format!(
            "{level}: rule sets differ: only ours {only_ours:?}, only mlxtend's {only_theirs:?}"
        ));
    }
    let mut worst = 0.0f64;
    for (k, a) in &ours {
        if let Some(b) = their.get(k) {
            for (x, y) in a.iter().zip(b) {
                worst = worst.max((x - y).abs());
            }
        }
    }
    if worst > 1e-9 {
        problems.push(format!("{level}: metrics differ by {worst:e}"));
    }
    let report = serde_json::json!({
        "baskets": baskets.len(),
        "min_support": min_support,
        "min_confidence": min_confidence,
        "max_len": max_len,
        "itemsets": sets.len(),
        "mlxtend_itemsets": theirs["itemsets"],
        "rules": ours.len(),
        "mlxtend_rules": their.len(),
        "max_metric_difference": worst,
        "ours_ms": ours_ms,
        "mlxtend_ms": theirs["seconds"].as_f64().unwrap_or(f64::NAN) * 1000.0,
        "mlxtend_script_ms": theirs_ms,
    });
    Ok((report, problems))
}

/// The association-rules comparison at product and category level.
pub fn association_rules(python: &Path, count: usize, seed: u64) -> anyhow::Result<serde_json::Value> {
    let products = baskets(count, 60, seed);
    let categories: Vec<Vec<String>> = products
        .iter()
        .map(|b| {
            let mut c: Vec<String> = b.iter().map(|p| category(p)).collect();
            c.sort();
            c.dedup();
            c
        })
        .collect();
    let (product_report, mut problems) = compare_rules(python, "product", &products, 0.005, 0.2, 3)?;
    let (category_report, more) = compare_rules(python, "category", &categories, 0.02, 0.3, 4)?;
    problems.extend(more);
    let report = serde_json::json!({"product": product_report, "category": category_report});
    anyhow::ensure!(problems.is_empty(), "{}: {report}", problems.join("; "));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baskets_are_reproducible_and_carry_the_planted_pairs() {
        let a = baskets(5000, 60, 3);
        assert_eq!(a, baskets(5000, 60, 3));
        let with = |x: &str| a.iter().filter(|b| b.iter().any(|i| i == x)).count();
        let both = a
            .iter()
            .filter(|b| b.iter().any(|i| i == "P000") && b.iter().any(|i| i == "P001"))
            .count();
        // P001 follows P000 in about 60 % of its baskets.
        assert!(both as f64 / with("P000") as f64 > 0.5, "{both} of {}", with("P000"));
        assert_eq!(category("P013"), "C01");
        assert!(worst_relative(&[1.0, 0.0], &[1.0005, 0.0]) < 1e-3);
        assert!(worst_relative(&[1.0], &[1.01]) > 1e-3);
    }
}

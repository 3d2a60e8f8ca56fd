//! Multi-touch attribution: which touches get the credit for a conversion.
//!
//! A *path* is one person's touches (campaign messages sent, and interactions that
//! name a campaign, such as an ad click landing on the site) in the lookback window
//! before an order, after their previous order; or, for a person who did not
//! convert, their touches in the period (a null path, which only the data-driven
//! model reads).
//!
//! Rule-based models share each conversion (and its revenue) among its path's
//! touches: first touch, last touch, linear, time decay (weight halving every
//! `half_life` before the conversion) and position-based (40 % first, 40 % last,
//! 20 % shared by the middle). The data-driven model is the first-order Markov
//! chain's removal effect (Anderl et al. 2016): the chain start → touch states →
//! conversion | null is estimated from all paths; removing a state sends its
//! traffic to null; its removal effect is the relative drop in the probability of
//! conversion, and conversions are shared in proportion to removal effects.

use std::collections::{BTreeMap, HashMap};

/// One touch of a path.
#[derive(Debug, Clone, PartialEq)]
pub struct Touch {
    /// The group it counts for: a channel key or `campaigns/{id}`.
    pub key: String,
    pub at_us: i64,
}

/// One path: its touches in time order, and its conversion if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    pub touches: Vec<Touch>,
    /// (conversion time, revenue) for a converting path.
    pub conversion: Option<(i64, f64)>,
}

/// The models.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Model {
    FirstTouch,
    LastTouch,
    Linear,
    TimeDecay { half_life_us: i64 },
    PositionBased,
    DataDriven,
}

/// What a group is credited with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Credit {
    pub conversions: f64,
    pub revenue: f64,
    /// Touches of the group on converting paths.
    pub touches: i64,
    /// Data-driven only: the removal effect.
    pub removal_effect: f64,
}

/// Each touch's share of one conversion under a rule-based model.
pub fn weights(model: Model, touches: &[Touch], converted_at: i64) -> Vec<f64> {
    let n = touches.len();
    if n == 0 {
        return Vec::new();
    }
    let mut w = vec![0.0; n];
    match model {
        Model::FirstTouch => w[0] = 1.0,
        Model::LastTouch => w[n - 1] = 1.0,
        Model::Linear | Model::DataDriven => w.iter_mut().for_each(|x| *x = 1.0 / n as f64),
        Model::TimeDecay { half_life_us } => {
            // Relative to the latest touch (the same shares once normalised), so the
            // weights cannot all underflow to zero.
            let half = half_life_us.max(1) as f64;
            let latest = touches.iter().map(|t| t.at_us).max().unwrap_or(converted_at);
            for (x, t) in w.iter_mut().zip(touches) {
                *x = 0.5f64.powf(latest.saturating_sub(t.at_us).max(0) as f64 / half);
            }
            let total: f64 = w.iter().sum();
            w.iter_mut().for_each(|x| *x /= total);
        }
        Model::PositionBased => match n {
            1 => w[0] = 1.0,
            2 => {
                w[0] = 0.5;
                w[1] = 0.5;
            }
            _ => {
                w[0] = 0.4;
                w[n - 1] = 0.4;
                let middle = 0.2 / (n - 2) as f64;
                w[1..n - 1].iter_mut().for_each(|x| *x = middle);
            }
        },
    }
    w
}

/// Credits per group under `model`.
pub fn attribute(model: Model, paths: &[Path]) -> BTreeMap<String, Credit> {
    let mut out: BTreeMap<String, Credit> = BTreeMap::new();
    for p in paths.iter().filter(|p| p.conversion.is_some()) {
        for t in &p.touches {
            out.entry(t.key.clone()).or_default().touches += 1;
        }
    }
    if model == Model::DataDriven {
        let effects = removal_effects(paths);
        let total: f64 = effects.values().sum();
        let conversions = paths
            .iter()
            .filter(|p| p.conversion.is_some() && !p.touches.is_empty())
            .count() as f64;
        let revenue: f64 = paths
            .iter()
            .filter(|p| !p.touches.is_empty())
            .filter_map(|p| p.conversion.map(|c| c.1))
            .sum();
        for (key, effect) in effects {
            let c = out.entry(key).or_default();
            c.removal_effect = effect;
            if total > 0.0 {
                c.conversions = conversions * effect / total;
                c.revenue = revenue * effect / total;
            }
        }
        return out;
    }
    for p in paths {
        let Some((at, revenue)) = p.conversion else { continue };
        for (t, w) in p.touches.iter().zip(weights(model, &p.touches, at)) {
            let c = out.entry(t.key.clone()).or_default();
            c.conversions += w;
            c.revenue += w * revenue;
        }
    }
    out
}

/// The removal effect of every touch state of the first-order Markov chain
/// estimated from `paths`.
pub fn removal_effects(paths: &[Path]) -> BTreeMap<String, f64> {
    // States: 0 start, 1 conversion, 2 null, then one per key.
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut keys: Vec<&str> = Vec::new();
    for p in paths {
        for t in &p.touches {
            index.entry(&t.key).or_insert_with(|| {
                keys.push(&t.key);
                keys.len() + 2
            });
        }
    }
    let n = keys.len() + 3;
    let mut counts: Vec<HashMap<usize, f64>> = vec![HashMap::new(); n];
    for p in paths.iter().filter(|p| !p.touches.is_empty()) {
        let mut from = 0;
        for t in &p.touches {
            let to = index[t.key.as_str()];
            *counts[from].entry(to).or_default() += 1.0;
            from = to;
        }
        let end = if p.conversion.is_some() { 1 } else { 2 };
        *counts[from].entry(end).or_default() += 1.0;
    }
    // Transition probabilities, self-loops dropped (they delay, never change where
    // a walk ends).
    let transitions: Vec<Vec<(usize, f64)>> = counts
        .iter()
        .enumerate()
        .map(|(s, row)| {
            let total: f64 = row.iter().filter(|(to, _)| **to != s).map(|(_, c)| c).sum();
            row.iter()
                .filter(|(to, _)| **to != s)
                .map(|(to, c)| (*to, c / total))
                .collect()
        })
        .collect();
    let base = conversion_probability(&transitions, None);
    keys.iter()
        .map(|k| {
            let removed = index[k];
            let without = conversion_probability(&transitions, Some(removed));
            let effect = if base > 0.0 { 1.0 - without / base } else { 0.0 };
            ((*k).to_owned(), effect.max(0.0))
        })
        .collect()
}

/// The probability that a walk from the start ends in conversion; a `removed` state
/// leads to null.
fn conversion_probability(transitions: &[Vec<(usize, f64)>], removed: Option<usize>) -> f64 {
    let n = transitions.len();
    let mut x = vec![0.0; n];
    x[1] = 1.0;
    // Gauss-Seidel: absorbing chains converge; each sweep moves every estimate up
    // monotonically from zero.
    for _ in 0..100_000 {
        let mut change = 0.0f64;
        for s in (0..n).filter(|s| *s != 1 && *s != 2 && Some(*s) != removed) {
            let v: f64 = transitions[s].iter().map(|(to, p)| p * x[*to]).sum();
            change = change.max((v - x[s]).abs());
            x[s] = v;
        }
        if change < 1e-13 {
            break;
        }
    }
    x[0]
}

/// Builds the paths of a period from its orders and the touches from `lookback`
/// before its start to its end; `key` picks a touch's group. Revenue counts for
/// orders in `currency` only. Returns the paths (converting ones first per person).
pub fn paths(
    orders: &[super::store::OrderRow],
    touches: &[super::store::TouchRow],
    start_us: i64,
    lookback_us: i64,
    currency: &str,
    key: &dyn Fn(&super::store::TouchRow) -> String,
) -> Vec<Path> {
    let mut by_person: HashMap<&str, (Vec<&super::store::OrderRow>, Vec<&super::store::TouchRow>)> = HashMap::new();
    for o in orders {
        by_person.entry(&o.person_id).or_default().0.push(o);
    }
    for t in touches {
        by_person.entry(&t.person_id).or_default().1.push(t);
    }
    let mut people: Vec<_> = by_person.into_iter().collect();
    people.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::new();
    for (_, (mut orders, mut touches)) in people {
        orders.sort_by_key(|o| o.place_us);
        touches.sort_by_key(|t| t.at_us);
        let mut after = i64::MIN;
        let mut next = 0;
        for o in &orders {
            let from = after.max(o.place_us - lookback_us);
            let path: Vec<Touch> = touches
                .iter()
                .filter(|t| t.at_us > from && t.at_us <= o.place_us)
                .map(|t| Touch {
                    key: key(t),
                    at_us: t.at_us,
                })
                .collect();
            out.push(Path {
                touches: path,
                conversion: Some((o.place_us, if o.currency == currency { o.total_micros as f64 } else { 0.0 })),
            });
            after = o.place_us;
            next = touches.partition_point(|t| t.at_us <= after);
        }
        // Touches after the last conversion (or of someone who did not convert) in
        // the period: a path that ended without one.
        let rest: Vec<Touch> = touches[next..]
            .iter()
            .filter(|t| t.at_us >= start_us)
            .map(|t| Touch {
                key: key(t),
                at_us: t.at_us,
            })
            .collect();
        if !rest.is_empty() {
            out.push(Path {
                touches: rest,
                conversion: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(keys: &[&str], conversion: Option<f64>) -> Path {
        Path {
            touches: keys
                .iter()
                .enumerate()
                .map(|(i, k)| Touch {
                    key: (*k).to_owned(),
                    at_us: i as i64 * 1_000_000,
                })
                .collect(),
            conversion: conversion.map(|r| (keys.len() as i64 * 1_000_000, r)),
        }
    }

    #[test]
    fn rule_based_weights() {
        let p = path(&["ad", "sms", "email", "sms"], Some(100.0));
        let at = p.conversion.unwrap().0;
        assert_eq!(weights(Model::FirstTouch, &p.touches, at), vec![1.0, 0.0, 0.0, 0.0]);
        assert_eq!(weights(Model::LastTouch, &p.touches, at), vec![0.0, 0.0, 0.0, 1.0]);
        assert_eq!(weights(Model::Linear, &p.touches, at), vec![0.25; 4]);
        assert_eq!(weights(Model::PositionBased, &p.touches, at), vec![0.4, 0.1, 0.1, 0.4]);
        assert_eq!(weights(Model::PositionBased, &p.touches[..2], at), vec![0.5, 0.5]);
        // Touches 4, 3, 2, 1 s before; half-life 1 s: 1/16, 1/8, 1/4, 1/2 normalised.
        let w = weights(Model::TimeDecay { half_life_us: 1_000_000 }, &p.touches, at);
        let expected = [1.0, 2.0, 4.0, 8.0].map(|x| x / 15.0);
        for (a, b) in w.iter().zip(expected) {
            assert!((a - b).abs() < 1e-12, "{w:?}");
        }
        // Touches long before the conversion still share it (no underflow to 0/0).
        let far = weights(
            Model::TimeDecay {
                half_life_us: 60_000_000,
            },
            &p.touches,
            at + 86_400_000_000 * 30,
        );
        assert!((far.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{far:?}");
        let credit = attribute(Model::Linear, &[p]);
        assert!((credit["sms"].conversions - 0.5).abs() < 1e-12);
        assert!((credit["sms"].revenue - 50.0).abs() < 1e-9);
        assert_eq!(credit["sms"].touches, 2);
    }

    /// The worked example of Anderl et al. (and of ChannelAttribution's vignette):
    /// paths C1>C2>C3 (conversion), C1 (null), C2>C3 (null).
    #[test]
    fn removal_effects_match_the_hand_computed_example() {
        let paths = [
            path(&["c1", "c2", "c3"], Some(1.0)),
            path(&["c1"], None),
            path(&["c2", "c3"], None),
        ];
        // start→c1 2/3, start→c2 1/3; c1→c2 1/2, c1→null 1/2; c2→c3 1;
        // c3→conv 1/2, c3→null 1/2. P(conv) = (2/3·1/2 + 1/3)·1/2 = 1/3.
        // Without c1: 1/3·1/2 = 1/6 → 0.5. Without c2 or c3: 0 → 1.
        let effects = removal_effects(&paths);
        assert!((effects["c1"] - 0.5).abs() < 1e-9, "{effects:?}");
        assert!((effects["c2"] - 1.0).abs() < 1e-9);
        assert!((effects["c3"] - 1.0).abs() < 1e-9);
        let credit = attribute(Model::DataDriven, &paths);
        // One conversion shared 0.5 : 1 : 1.
        assert!((credit["c1"].conversions - 0.2).abs() < 1e-9, "{credit:?}");
        assert!((credit["c2"].conversions - 0.4).abs() < 1e-9);
        let total: f64 = credit.values().map(|c| c.conversions).sum();
        assert!((total - 1.0).abs() < 1e-9);
    }
}

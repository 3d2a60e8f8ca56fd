//! Recommendations from association rules: the consequents of every rule whose
//! antecedents the customer has all bought, without what they already bought, each
//! scored by its strongest rule.

use std::collections::{BTreeMap, HashSet};

use crm_proto::crm::analytics::v1 as pb;

use crate::store::RuleRow;

pub fn recommend(bought: &[String], rules: &[RuleRow], max: usize) -> Vec<pb::Recommendation> {
    let have: HashSet<&str> = bought.iter().map(String::as_str).collect();
    let mut best: BTreeMap<&str, &RuleRow> = BTreeMap::new();
    for rule in rules {
        if !rule.antecedents.iter().all(|a| have.contains(a.as_str())) {
            continue;
        }
        for item in rule.consequents.iter().filter(|c| !have.contains(c.as_str())) {
            let stronger = match best.get(item.as_str()) {
                None => true,
                Some(b) => (rule.confidence, rule.lift) > (b.confidence, b.lift),
            };
            if stronger {
                best.insert(item, rule);
            }
        }
    }
    let mut out: Vec<pb::Recommendation> = best
        .into_iter()
        .map(|(item, rule)| pb::Recommendation {
            item: item.to_owned(),
            confidence: rule.confidence,
            lift: rule.lift,
            because_of: rule.antecedents.clone(),
        })
        .collect();
    out.sort_by(|a, b| {
        b.confidence
            .total_cmp(&a.confidence)
            .then(b.lift.total_cmp(&a.lift))
            .then_with(|| a.item.cmp(&b.item))
    });
    out.truncate(max);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(a: &[&str], c: &[&str], confidence: f64, lift: f64) -> RuleRow {
        RuleRow {
            level: 1,
            rank: 0,
            antecedents: a.iter().map(|s| (*s).to_owned()).collect(),
            consequents: c.iter().map(|s| (*s).to_owned()).collect(),
            support: 0.1,
            confidence,
            lift,
            baskets: 10,
        }
    }

    #[test]
    fn only_matching_rules_and_nothing_already_bought() {
        let rules = vec![
            rule(&["phone"], &["case"], 0.8, 3.0),
            rule(&["phone"], &["charger", "case"], 0.5, 2.0),
            rule(&["phone", "laptop"], &["mouse"], 0.9, 5.0),
            rule(&["phone"], &["charger"], 0.6, 1.5),
            rule(&["tablet"], &["pen"], 0.99, 9.0),
        ];
        let bought = vec!["phone".to_owned(), "case".to_owned()];
        let got = recommend(&bought, &rules, 10);
        // case is owned; mouse needs a laptop; pen needs a tablet; charger's best rule is 0.6.
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].item.as_str(), got[0].confidence), ("charger", 0.6));
        assert_eq!(got[0].because_of, vec!["phone".to_owned()]);
        assert!(recommend(&[], &rules, 10).is_empty());
        assert_eq!(recommend(&["phone".to_owned()], &rules, 1)[0].item, "case");
    }
}

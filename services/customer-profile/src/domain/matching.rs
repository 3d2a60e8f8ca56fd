//! Duplicate detection: blocking keys that find candidate pairs cheaply, field
//! comparators, and a Fellegi–Sunter model that turns comparison outcomes into a
//! match probability.
//!
//! Each comparator yields agree / partial / disagree (or missing: no evidence). With
//! `m` the probability of an outcome among true matches and `u` among non-matches,
//! the outcome adds `log2(m / u)` to the match weight; the probability is the
//! logistic of the weight plus the prior log-odds. The `m`/`u` tables and the
//! thresholds are configuration (`customer_profile.matching`).

use serde::{Deserialize, Serialize};
use strsim::{jaro_winkler, levenshtein};

use super::{
    customer::{CustomerKind, Profile},
    normalize::{fold_name, has_cjk, name_key, soundex},
};

/// Probabilities of (agree, partial, disagree) among matches (`m`) and non-matches (`u`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Levels {
    pub m: [f64; 3],
    pub u: [f64; 3],
}

impl Levels {
    fn weight(&self, outcome: Outcome) -> f64 {
        let i = match outcome {
            Outcome::Agree => 0,
            Outcome::Partial => 1,
            Outcome::Disagree => 2,
            Outcome::Missing => return 0.0,
        };
        (self.m[i].max(1e-9) / self.u[i].max(1e-9)).log2()
    }
}

/// `[customer_profile.matching]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MatchConfig {
    /// Pairs at or above this probability go to the review queue.
    pub review_threshold: f64,
    /// Pairs at or above this probability are the same customer: ingestion and
    /// import link the record to the existing customer.
    pub auto_merge_threshold: f64,
    /// Prior probability that a blocked pair is a match.
    pub prior: f64,
    /// Candidates read per blocking key (most recent first).
    pub max_candidates_per_key: u32,
    /// How long a merge can be undone.
    pub unmerge_window_days: u32,
    pub given_name: Levels,
    pub family_name: Levels,
    pub organization_name: Levels,
    pub phone: Levels,
    pub email: Levels,
    pub national_id: Levels,
    pub birth_date: Levels,
    pub address: Levels,
    pub postal_code: Levels,
    pub locality: Levels,
}

impl MatchConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let prob = |v: f64| (0.0..=1.0).contains(&v);
        if !prob(self.review_threshold) || !prob(self.auto_merge_threshold) || self.review_threshold > self.auto_merge_threshold {
            return Err((
                "review_threshold".into(),
                "0 <= review_threshold <= auto_merge_threshold <= 1".into(),
            ));
        }
        if !(self.prior > 0.0 && self.prior < 1.0) {
            return Err(("prior".into(), "strictly between 0 and 1".into()));
        }
        if self.max_candidates_per_key == 0 {
            return Err(("max_candidates_per_key".into(), "at least 1".into()));
        }
        for (name, l) in self.tables() {
            for row in [l.m, l.u] {
                if row.iter().any(|p| !prob(*p)) || (row.iter().sum::<f64>() - 1.0).abs() > 0.01 {
                    return Err((
                        name.to_string(),
                        "m and u are 3 probabilities (agree, partial, disagree) summing to 1".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    fn tables(&self) -> [(&'static str, &Levels); 10] {
        [
            ("given_name", &self.given_name),
            ("family_name", &self.family_name),
            ("organization_name", &self.organization_name),
            ("phone", &self.phone),
            ("email", &self.email),
            ("national_id", &self.national_id),
            ("birth_date", &self.birth_date),
            ("address", &self.address),
            ("postal_code", &self.postal_code),
            ("locality", &self.locality),
        ]
    }

    pub fn decide(&self, probability: f64) -> Decision {
        if probability >= self.auto_merge_threshold {
            Decision::Match
        } else if probability >= self.review_threshold {
            Decision::Review
        } else {
            Decision::Distinct
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Agree,
    Partial,
    Disagree,
    Missing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Distinct,
    Review,
    Match,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub field: String,
    pub outcome: Outcome,
    pub similarity: f64,
    pub weight: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub probability: f64,
    pub comparisons: Vec<Comparison>,
}

/// A blocking key: customers sharing one are compared. `kind` names the rule;
/// `value` is hashed (blind index) before it is stored.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockingKey {
    pub kind: &'static str,
    pub value: String,
}

/// The blocking keys of a profile. Exact contacts and ids block alone; names never
/// do (common names are shared by thousands), only combined with a second
/// attribute, and in two spellings (the name key, and a phonetic family name plus
/// given initial) so a typo in one part still blocks:
/// name + birth date, name + postal code, phonetic family + birth date, phonetic
/// given + postal code, birth date + postal code; organisations by name key.
pub fn blocking_keys(p: &Profile) -> Vec<BlockingKey> {
    let mut keys = Vec::new();
    let mut push = |kind: &'static str, value: String| {
        if !value.is_empty() {
            keys.push(BlockingKey { kind, value });
        }
    };
    for phone in &p.phones {
        push("phone", phone.number.clone());
    }
    for email in &p.emails {
        push("email", email.address.to_lowercase());
    }
    push("national_id", p.national_id.clone());
    let given = fold_name(&p.person_name.given);
    let family = fold_name(&p.person_name.family);
    let postcodes: Vec<String> = p
        .addresses
        .iter()
        .filter(|a| !a.postal.postal_code.is_empty())
        .map(|a| format!("{}|{}", a.postal.region_code, a.postal.postal_code))
        .collect();
    let dob = p.birth_date.as_str();
    if p.kind != CustomerKind::Organization && (!given.is_empty() || !family.is_empty()) {
        let name = name_key(&given, &family);
        // Phonetic codes for Latin names; CJK names use their characters.
        let code = |part: &str| {
            if has_cjk(part) {
                part.chars().filter(|c| !c.is_whitespace()).collect()
            } else {
                soundex(part)
            }
        };
        let (family_code, given_code) = (code(&family), code(&given));
        if !dob.is_empty() {
            push("name_dob", format!("{name}|{dob}"));
            if !family_code.is_empty() {
                push("family_dob", format!("{family_code}|{dob}"));
            }
            if !given_code.is_empty() {
                push("given_dob", format!("{given_code}|{dob}"));
            }
        }
        for zip in &postcodes {
            push("name_zip", format!("{name}|{zip}"));
            if !given_code.is_empty() {
                push("given_zip", format!("{given_code}|{zip}"));
            }
            if !family_code.is_empty() {
                push("family_zip", format!("{family_code}|{zip}"));
            }
        }
    }
    if !dob.is_empty() {
        for zip in &postcodes {
            push("dob_zip", format!("{dob}|{zip}"));
        }
    }
    if !p.organization_name.is_empty() {
        let org = fold_name(&p.organization_name);
        let mut tokens: Vec<&str> = org.split_whitespace().collect();
        tokens.sort_unstable();
        push("organization", tokens.join(" "));
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Similarity-based outcome: agree at or above `agree`, partial at or above `partial`.
fn graded(similarity: f64, agree: f64, partial: f64) -> Outcome {
    if similarity >= agree {
        Outcome::Agree
    } else if similarity >= partial {
        Outcome::Partial
    } else {
        Outcome::Disagree
    }
}

/// Name similarity: Jaro-Winkler for Latin names, edit distance for CJK names.
fn name_similarity(a: &str, b: &str) -> f64 {
    if has_cjk(a) || has_cjk(b) {
        let len = a.chars().count().max(b.chars().count()).max(1);
        1.0 - levenshtein(a, b) as f64 / len as f64
    } else {
        jaro_winkler(a, b)
    }
}

fn text_outcome(a: &str, b: &str, agree: f64, partial: f64) -> (Outcome, f64) {
    if a.is_empty() || b.is_empty() {
        return (Outcome::Missing, 0.0);
    }
    let s = name_similarity(a, b);
    (graded(s, agree, partial), s)
}

/// Any value in common: agree; both sides non-empty and nothing in common: disagree.
fn set_outcome(a: &[String], b: &[String], partial: impl Fn(&str, &str) -> bool) -> (Outcome, f64) {
    if a.is_empty() || b.is_empty() {
        return (Outcome::Missing, 0.0);
    }
    if a.iter().any(|x| b.contains(x)) {
        (Outcome::Agree, 1.0)
    } else if a.iter().any(|x| b.iter().any(|y| partial(x, y))) {
        (Outcome::Partial, 0.5)
    } else {
        (Outcome::Disagree, 0.0)
    }
}

fn id_outcome(a: &str, b: &str) -> (Outcome, f64) {
    if a.is_empty() || b.is_empty() {
        return (Outcome::Missing, 0.0);
    }
    if a == b {
        return (Outcome::Agree, 1.0);
    }
    let len = a.len().max(b.len()) as f64;
    let d = strsim::damerau_levenshtein(a, b);
    let s = 1.0 - d as f64 / len;
    (if d <= 1 { Outcome::Partial } else { Outcome::Disagree }, s)
}

fn date_outcome(a: &str, b: &str) -> (Outcome, f64) {
    if a.is_empty() || b.is_empty() {
        return (Outcome::Missing, 0.0);
    }
    if a == b {
        return (Outcome::Agree, 1.0);
    }
    let pa: Vec<&str> = a.split('-').collect();
    let pb: Vec<&str> = b.split('-').collect();
    let same = pa.iter().zip(&pb).filter(|(x, y)| x == y).count();
    let swapped = pa.len() == 3 && pb.len() == 3 && pa[0] == pb[0] && pa[1] == pb[2] && pa[2] == pb[1];
    if same == 2 || swapped || strsim::damerau_levenshtein(a, b) == 1 {
        (Outcome::Partial, 0.66)
    } else {
        (Outcome::Disagree, same as f64 / 3.0)
    }
}

fn street(p: &Profile) -> Vec<String> {
    p.addresses
        .iter()
        .map(|a| fold_name(&a.postal.address_lines.join(" ")))
        .filter(|s| !s.is_empty())
        .collect()
}

fn best_pair(a: &[String], b: &[String], f: impl Fn(&str, &str) -> f64) -> Option<f64> {
    a.iter()
        .flat_map(|x| b.iter().map(|y| f(x, y)))
        .fold(None, |best, s| Some(best.map_or(s, |b: f64| b.max(s))))
}

fn list_text_outcome(a: &[String], b: &[String], agree: f64, partial: f64) -> (Outcome, f64) {
    match best_pair(a, b, name_similarity) {
        None => (Outcome::Missing, 0.0),
        Some(s) => (graded(s, agree, partial), s),
    }
}

/// Compares two profiles field by field and scores the pair.
pub fn score(cfg: &MatchConfig, a: &Profile, b: &Profile) -> Score {
    let mut comparisons = Vec::with_capacity(10);
    let mut add = |field: &str, levels: &Levels, (outcome, similarity): (Outcome, f64)| {
        comparisons.push(Comparison {
            field: field.to_owned(),
            outcome,
            similarity,
            weight: levels.weight(outcome),
        });
    };

    let (ga, fa) = (fold_name(&a.person_name.given), fold_name(&a.person_name.family));
    let (gb, fb) = (fold_name(&b.person_name.given), fold_name(&b.person_name.family));
    // Given and family name swapped (a common entry error) compare crosswise.
    let straight = name_similarity(&ga, &gb) + name_similarity(&fa, &fb);
    let crossed = name_similarity(&ga, &fb) + name_similarity(&fa, &gb);
    let (gb, fb) = if crossed > straight + 0.2 { (fb, gb) } else { (gb, fb) };
    add("given_name", &cfg.given_name, text_outcome(&ga, &gb, 0.92, 0.80));
    add("family_name", &cfg.family_name, text_outcome(&fa, &fb, 0.92, 0.80));
    add(
        "organization_name",
        &cfg.organization_name,
        text_outcome(&fold_name(&a.organization_name), &fold_name(&b.organization_name), 0.92, 0.80),
    );

    let phones = |p: &Profile| p.phones.iter().map(|x| x.number.clone()).collect::<Vec<_>>();
    add(
        "phone",
        &cfg.phone,
        set_outcome(&phones(a), &phones(b), |x, y| {
            x.len() > 8 && y.len() > 8 && x[x.len() - 8..] == y[y.len() - 8..]
        }),
    );
    let emails = |p: &Profile| p.emails.iter().map(|x| x.address.to_lowercase()).collect::<Vec<_>>();
    add(
        "email",
        &cfg.email,
        set_outcome(&emails(a), &emails(b), |x, y| x.split('@').next() == y.split('@').next()),
    );
    add("national_id", &cfg.national_id, id_outcome(&a.national_id, &b.national_id));
    add("birth_date", &cfg.birth_date, date_outcome(&a.birth_date, &b.birth_date));
    add("address", &cfg.address, list_text_outcome(&street(a), &street(b), 0.90, 0.75));
    let postcodes = |p: &Profile| {
        p.addresses
            .iter()
            .map(|x| x.postal.postal_code.clone())
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>()
    };
    add(
        "postal_code",
        &cfg.postal_code,
        set_outcome(&postcodes(a), &postcodes(b), |x, y| strsim::damerau_levenshtein(x, y) == 1),
    );
    let localities = |p: &Profile| {
        p.addresses
            .iter()
            .map(|x| fold_name(&x.postal.locality))
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>()
    };
    add(
        "locality",
        &cfg.locality,
        list_text_outcome(&localities(a), &localities(b), 0.92, 0.80),
    );

    let prior_log_odds = (cfg.prior / (1.0 - cfg.prior)).log2();
    let weight: f64 = comparisons.iter().map(|c| c.weight).sum::<f64>() + prior_log_odds;
    let probability = 1.0 / (1.0 + (-weight).exp2());
    Score {
        probability,
        comparisons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::customer::{Address, Email, Phone, PostalAddress};

    fn config() -> MatchConfig {
        let doc = crm_platform::config::load(&[crate::DEFAULTS], None).unwrap();
        crate::ServiceConfig::from_document(&doc).unwrap().matching
    }

    fn person(given: &str, family: &str) -> Profile {
        Profile {
            kind: CustomerKind::Person,
            display_name: format!("{given} {family}"),
            person_name: crate::domain::customer::PersonName {
                given: given.into(),
                family: family.into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn with_address(mut p: Profile, line: &str, postcode: &str, locality: &str) -> Profile {
        p.addresses.push(Address {
            kind: Default::default(),
            primary: true,
            postal: PostalAddress {
                region_code: "AU".into(),
                postal_code: postcode.into(),
                locality: locality.into(),
                address_lines: vec![line.into()],
                ..Default::default()
            },
        });
        p
    }

    #[test]
    fn defaults_are_valid() {
        config().validate().unwrap();
    }

    #[test]
    fn same_person_with_typos_matches() {
        let cfg = config();
        let mut a = with_address(person("Joshua", "Thompson"), "15 Miller Street", "2615", "Kambah");
        a.birth_date = "1985-04-12".into();
        let mut b = with_address(person("Josh", "Thomspon"), "15 Miler St", "2615", "Kambah");
        b.birth_date = "1985-12-04".into();
        let s = score(&cfg, &a, &b);
        assert!(s.probability >= cfg.review_threshold, "{s:#?}");
    }

    #[test]
    fn different_people_do_not() {
        let cfg = config();
        let mut a = with_address(person("Joshua", "Thompson"), "15 Miller Street", "2615", "Kambah");
        a.birth_date = "1985-04-12".into();
        let mut b = with_address(person("Emily", "Thompson"), "3 Ocean Road", "2615", "Kambah");
        b.birth_date = "1962-09-30".into();
        let s = score(&cfg, &a, &b);
        assert!(s.probability < cfg.review_threshold, "{s:#?}");
    }

    #[test]
    fn exact_contact_is_strong_evidence() {
        let cfg = config();
        let mut a = person("小明", "王");
        a.phones.push(Phone {
            number: "+8613800138000".into(),
            kind: Default::default(),
            primary: true,
            verified: false,
        });
        let mut b = person("小明", "王");
        b.phones = a.phones.clone();
        b.emails.push(Email {
            address: "wxm@example.cn".into(),
            kind: Default::default(),
            primary: true,
            verified: false,
        });
        let s = score(&cfg, &a, &b);
        assert_eq!(cfg.decide(s.probability), Decision::Match, "{s:#?}");
        let email = s.comparisons.iter().find(|c| c.field == "email").unwrap();
        assert_eq!(email.outcome, Outcome::Missing);
        assert_eq!(email.weight, 0.0);

        // Same phone, same family name, another given name: perhaps a household
        // sharing a line. A person should decide.
        let mut sibling = person("晓红", "王");
        sibling.phones = a.phones.clone();
        let s = score(&cfg, &a, &sibling);
        assert_eq!(cfg.decide(s.probability), Decision::Review, "{s:#?}");
    }

    #[test]
    fn swapped_names_compare_crosswise() {
        let cfg = config();
        let a = person("Wei", "Zhang");
        let b = person("Zhang", "Wei");
        let s = score(&cfg, &a, &b);
        assert!(s.comparisons.iter().take(2).all(|c| c.outcome == Outcome::Agree), "{s:#?}");
    }

    #[test]
    fn blocking_keys_survive_a_typo_in_either_name() {
        let mut a = with_address(person("Joshua", "Thompson"), "", "2615", "");
        a.birth_date = "1980-01-02".into();
        let mut b = with_address(person("Joshua", "Tompsen"), "", "2615", "");
        b.birth_date = "1980-01-02".into();
        let c = with_address(person("Joshau", "Thompson"), "", "2615", "");
        let shared = |x: &Profile, y: &Profile| {
            let kx = blocking_keys(x);
            blocking_keys(y).iter().any(|k| kx.contains(k))
        };
        assert!(shared(&a, &b));
        assert!(shared(&a, &c));
        assert!(!shared(&person("Ann", "Lee"), &person("Bob", "Ray")));
        // A name alone never blocks: 王伟 is shared by hundreds of thousands.
        assert!(!shared(&person("伟", "王"), &person("伟", "王")));
        let mut cjk = person("小明", "王");
        cjk.birth_date = "1990-01-01".into();
        let keys = blocking_keys(&cjk);
        assert!(
            keys.iter().any(|k| k.kind == "name_dob" && k.value == "王小明|1990-01-01"),
            "{keys:?}"
        );
    }
}

//! Association rules over baskets: frequent itemsets by FP-Growth (Han, Pei & Yin
//! 2000), then every rule `A → C` that splits a frequent itemset, with support,
//! confidence and lift. Supports and confidences are computed as `mlxtend` computes
//! them (shares of the basket count, confidence as a ratio of supports), so the same
//! thresholds give the same rules.

use std::collections::HashMap;

/// A frequent itemset: item ids in ascending order, and how many baskets hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Itemset {
    pub items: Vec<u32>,
    pub count: u64,
}

/// A rule `antecedent → consequent` (disjoint, each in ascending order).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub antecedent: Vec<u32>,
    pub consequent: Vec<u32>,
    /// Share of baskets holding both sides.
    pub support: f64,
    /// support(A ∪ C) / support(A).
    pub confidence: f64,
    /// confidence / support(C).
    pub lift: f64,
    /// Baskets holding both sides.
    pub count: u64,
}

const NONE: u32 = u32::MAX;

/// An FP-tree over local item indexes; local index `i` stands for `items[i]`, a rank
/// in the global order (most frequent first). Paths go from the root in ascending
/// local index.
struct Tree {
    items: Vec<u32>,
    /// Per local item: total count and the first node of its chain.
    totals: Vec<u64>,
    heads: Vec<u32>,
    nodes: Vec<Node>,
}

#[derive(Clone, Copy)]
struct Node {
    item: u32,
    count: u64,
    parent: u32,
    first_child: u32,
    next_sibling: u32,
    next_same: u32,
}

impl Tree {
    /// Builds the tree of `paths` (global ranks, ascending, each with its count),
    /// keeping only items reaching `min_count` in them.
    fn build(paths: &[(Vec<u32>, u64)], min_count: u64) -> Self {
        let mut counts: HashMap<u32, u64> = HashMap::new();
        for (path, n) in paths {
            for &g in path {
                *counts.entry(g).or_default() += n;
            }
        }
        let mut items: Vec<u32> = counts.iter().filter(|(_, c)| **c >= min_count).map(|(g, _)| *g).collect();
        items.sort_unstable();
        let local: HashMap<u32, u32> = items.iter().enumerate().map(|(i, g)| (*g, i as u32)).collect();
        let mut tree = Tree {
            totals: items.iter().map(|g| counts[g]).collect(),
            heads: vec![NONE; items.len()],
            items,
            nodes: vec![Node {
                item: NONE,
                count: 0,
                parent: NONE,
                first_child: NONE,
                next_sibling: NONE,
                next_same: NONE,
            }],
        };
        let mut kept = Vec::new();
        for (path, n) in paths {
            kept.clear();
            kept.extend(path.iter().filter_map(|g| local.get(g).copied()));
            tree.insert(&kept, *n);
        }
        tree
    }

    fn insert(&mut self, path: &[u32], n: u64) {
        let mut at = 0u32;
        for &item in path {
            let mut child = self.nodes[at as usize].first_child;
            while child != NONE && self.nodes[child as usize].item != item {
                child = self.nodes[child as usize].next_sibling;
            }
            if child == NONE {
                child = self.nodes.len() as u32;
                let parent = &mut self.nodes[at as usize];
                let sibling = parent.first_child;
                parent.first_child = child;
                self.nodes.push(Node {
                    item,
                    count: 0,
                    parent: at,
                    first_child: NONE,
                    next_sibling: sibling,
                    next_same: self.heads[item as usize],
                });
                self.heads[item as usize] = child;
            }
            self.nodes[child as usize].count += n;
            at = child;
        }
    }

    /// Appends every frequent itemset of this tree, each with `suffix` (global ranks).
    fn mine(&self, suffix: &mut Vec<u32>, min_count: u64, max_len: usize, out: &mut Vec<(Vec<u32>, u64)>) {
        for local in (0..self.items.len()).rev() {
            suffix.push(self.items[local]);
            out.push((suffix.clone(), self.totals[local]));
            if suffix.len() < max_len {
                // The prefix paths ending in this item, with the item's counts there.
                let mut paths = Vec::new();
                let mut node = self.heads[local];
                while node != NONE {
                    let n = self.nodes[node as usize];
                    let mut path = Vec::new();
                    let mut up = n.parent;
                    while up != 0 {
                        path.push(self.items[self.nodes[up as usize].item as usize]);
                        up = self.nodes[up as usize].parent;
                    }
                    if !path.is_empty() {
                        path.reverse();
                        paths.push((path, n.count));
                    }
                    node = n.next_same;
                }
                if !paths.is_empty() {
                    let conditional = Tree::build(&paths, min_count);
                    if !conditional.items.is_empty() {
                        conditional.mine(suffix, min_count, max_len, out);
                    }
                }
            }
            suffix.pop();
        }
    }
}

/// The smallest basket count meeting `min_support` as `mlxtend` decides it
/// (`count / baskets >= min_support` in floating point).
pub fn min_count(min_support: f64, baskets: u64) -> u64 {
    let mut c = (min_support * baskets as f64).floor().max(0.0) as u64;
    while c > 0 && (c - 1) as f64 / baskets as f64 >= min_support {
        c -= 1;
    }
    while (c as f64 / baskets as f64) < min_support {
        c += 1;
    }
    c.max(1)
}

/// Every itemset of at most `max_len` items held by at least `min_count` baskets.
/// Items within a basket may repeat (counted once); ids are any `u32`.
pub fn frequent_itemsets(baskets: &[Vec<u32>], min_count: u64, max_len: usize) -> Vec<Itemset> {
    if max_len == 0 {
        return Vec::new();
    }
    // Global ranks: most frequent first (ties by id), so shared prefixes are long.
    let mut counts: HashMap<u32, u64> = HashMap::new();
    for basket in baskets {
        let mut seen = basket.clone();
        seen.sort_unstable();
        seen.dedup();
        for id in seen {
            *counts.entry(id).or_default() += 1;
        }
    }
    let mut order: Vec<(u32, u64)> = counts.into_iter().filter(|(_, c)| *c >= min_count).collect();
    order.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let rank: HashMap<u32, u32> = order.iter().enumerate().map(|(r, (id, _))| (*id, r as u32)).collect();
    // Identical baskets are one path with their count.
    let mut grouped: HashMap<Vec<u32>, u64> = HashMap::new();
    for basket in baskets {
        let mut path: Vec<u32> = basket.iter().filter_map(|id| rank.get(id).copied()).collect();
        path.sort_unstable();
        path.dedup();
        if !path.is_empty() {
            *grouped.entry(path).or_default() += 1;
        }
    }
    let mut paths: Vec<(Vec<u32>, u64)> = grouped.into_iter().collect();
    paths.sort_unstable();
    let tree = Tree::build(&paths, min_count);
    let mut found = Vec::new();
    tree.mine(&mut Vec::new(), min_count, max_len, &mut found);
    let mut out: Vec<Itemset> = found
        .into_iter()
        .map(|(ranks, count)| {
            let mut items: Vec<u32> = ranks.into_iter().map(|r| order[r as usize].0).collect();
            items.sort_unstable();
            Itemset { items, count }
        })
        .collect();
    out.sort_unstable_by(|a, b| a.items.len().cmp(&b.items.len()).then_with(|| a.items.cmp(&b.items)));
    out
}

/// Every rule splitting a frequent itemset into two non-empty sides whose confidence
/// reaches `min_confidence` and lift `min_lift`, strongest first (by lift, then
/// confidence, then support).
pub fn rules(itemsets: &[Itemset], baskets: u64, min_confidence: f64, min_lift: f64) -> Vec<Rule> {
    let n = baskets as f64;
    let support: HashMap<&[u32], f64> = itemsets.iter().map(|s| (s.items.as_slice(), s.count as f64 / n)).collect();
    let mut out = Vec::new();
    for set in itemsets.iter().filter(|s| s.items.len() >= 2 && s.items.len() < 32) {
        let k = set.items.len();
        let both = set.count as f64 / n;
        for mask in 1u32..(1 << k) - 1 {
            let (mut a, mut c) = (Vec::new(), Vec::new());
            for (i, item) in set.items.iter().enumerate() {
                if mask & (1 << i) != 0 { a.push(*item) } else { c.push(*item) }
            }
            // Subsets of a frequent itemset are frequent: both sides are known.
            let (Some(sa), Some(sc)) = (support.get(a.as_slice()), support.get(c.as_slice())) else {
                continue;
            };
            let confidence = both / sa;
            let lift = confidence / sc;
            if confidence >= min_confidence && lift >= min_lift {
                out.push(Rule {
                    antecedent: a,
                    consequent: c,
                    support: both,
                    confidence,
                    lift,
                    count: set.count,
                });
            }
        }
    }
    out.sort_by(|x, y| {
        y.lift
            .total_cmp(&x.lift)
            .then(y.confidence.total_cmp(&x.confidence))
            .then(y.support.total_cmp(&x.support))
            .then_with(|| x.antecedent.cmp(&y.antecedent))
            .then_with(|| x.consequent.cmp(&y.consequent))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every itemset and its count by brute force, to check the tree against.
    fn brute_force(baskets: &[Vec<u32>], min_count: u64, max_len: usize) -> Vec<Itemset> {
        let mut items: Vec<u32> = baskets.iter().flatten().copied().collect();
        items.sort_unstable();
        items.dedup();
        let mut out = Vec::new();
        for mask in 1u64..(1 << items.len()) {
            let set: Vec<u32> = (0..items.len()).filter(|i| mask & (1 << i) != 0).map(|i| items[i]).collect();
            if set.len() > max_len {
                continue;
            }
            let count = baskets.iter().filter(|b| set.iter().all(|i| b.contains(i))).count() as u64;
            if count >= min_count {
                out.push(Itemset { items: set, count });
            }
        }
        out.sort_unstable_by(|a, b| a.items.len().cmp(&b.items.len()).then_with(|| a.items.cmp(&b.items)));
        out
    }

    #[test]
    fn fp_growth_finds_what_brute_force_finds() {
        // A small pseudo-random shop: 9 products, 300 baskets, some pairs planted.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let baskets: Vec<Vec<u32>> = (0..300)
            .map(|_| {
                let mut b: Vec<u32> = (0..9).filter(|_| next() % 4 == 0).collect();
                if b.contains(&1) && next() % 3 != 0 {
                    b.push(7);
                }
                if b.contains(&2) && b.contains(&3) {
                    b.push(8);
                    b.push(8);
                }
                b
            })
            .collect();
        for (min, max_len) in [(10, 9), (30, 2), (60, 3), (1, 4)] {
            assert_eq!(
                frequent_itemsets(&baskets, min, max_len),
                brute_force(&baskets, min, max_len),
                "min {min} max_len {max_len}"
            );
        }
    }

    #[test]
    fn rules_carry_support_confidence_and_lift() {
        // 10 baskets: A (1) in 5, B (2) in 4, both in 4; C (3) in 5, never with B.
        let mut baskets = vec![vec![1, 2]; 4];
        baskets.push(vec![1, 3]);
        baskets.extend(vec![vec![3]; 4]);
        baskets.push(vec![]);
        let sets = frequent_itemsets(&baskets, min_count(0.3, 10), 3);
        assert_eq!(
            sets.iter().map(|s| (s.items.clone(), s.count)).collect::<Vec<_>>(),
            vec![(vec![1], 5), (vec![2], 4), (vec![3], 5), (vec![1, 2], 4)]
        );
        let all = rules(&sets, 10, 0.0, 0.0);
        assert_eq!(all.len(), 2);
        // B → A: every B basket has A. Lift 1 / 0.5 = 2.
        assert_eq!(
            (all[0].antecedent.as_slice(), all[0].consequent.as_slice()),
            (&[2][..], &[1][..])
        );
        assert!((all[0].confidence - 1.0).abs() < 1e-12 && (all[0].lift - 2.0).abs() < 1e-12);
        // A → B: 4 of 5.
        assert!((all[1].confidence - 0.8).abs() < 1e-12 && (all[1].support - 0.4).abs() < 1e-12);
        assert_eq!(rules(&sets, 10, 0.9, 0.0).len(), 1);
        assert!(rules(&sets, 10, 0.0, 2.5).is_empty());
    }

    #[test]
    fn min_count_rounds_as_a_share_comparison_does() {
        assert_eq!(min_count(0.3, 10), 3);
        assert_eq!(min_count(0.25, 10), 3);
        assert_eq!(min_count(0.001, 1_000_000), 1_000);
        assert_eq!(min_count(0.0, 10), 1);
        for (s, n) in [(0.07, 100u64), (0.1, 30), (0.013, 977)] {
            let c = min_count(s, n);
            assert!(c as f64 / n as f64 >= s && (c - 1) as f64 / (n as f64) < s, "{s} {n}");
        }
    }
}

//! Small statistics shared by the services' reports.

/// The nearest-rank `percent` percentile (0–100) of `sorted` (ascending): the value
/// at rank ⌈percent × n / 100⌉, at least the first. `None` when empty. Integer
/// arithmetic: no rounding error moves the rank (0.9 × 30 in floating point is just
/// above 27).
pub fn nearest_rank(sorted: &[i64], percent: u32) -> Option<i64> {
    let rank = (u64::from(percent) * sorted.len() as u64).div_ceil(100).max(1);
    sorted.get(usize::try_from(rank - 1).ok()?).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_are_exact() {
        let v: Vec<i64> = (1..=10).collect();
        assert_eq!(nearest_rank(&v, 50), Some(5));
        assert_eq!(nearest_rank(&v, 90), Some(9));
        assert_eq!(nearest_rank(&[7], 90), Some(7));
        assert_eq!(nearest_rank(&[], 50), None);
        let thirty: Vec<i64> = (1..=30).collect();
        assert_eq!(nearest_rank(&thirty, 90), Some(27));
        assert_eq!(nearest_rank(&thirty, 100), Some(30));
    }
}

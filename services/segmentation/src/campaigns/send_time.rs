//! Send-time optimisation: each customer's message goes out at the hour of the week
//! they are most likely to engage, within the campaign's window.
//!
//! A customer's engagement (opens and clicks of past messages) falls into the 168
//! hours of the week, in their time zone. The estimate for hour `h` is the
//! Dirichlet-multinomial posterior mean (the many-category Beta-Binomial):
//! `(c_h + α·π_h) / (n + α)`, with `c_h` their engagements in `h`, `n` all of them,
//! `π_h` the population's share of engagement in `h` and `α` the prior's weight in
//! engagements. A customer with no history gets the population's best hour; each
//! engagement pulls the estimate toward their own habits.

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};
use chrono_tz::Tz;

/// Hours in a week.
pub const HOURS: usize = 168;

/// Monday 00:00 is 0.
pub fn hour_of_week(t: DateTime<Utc>, tz: Tz) -> usize {
    let local = t.with_timezone(&tz);
    local.weekday().num_days_from_monday() as usize * 24 + local.hour() as usize
}

/// Engagement counts per hour of the week.
pub type Histogram = [f64; HOURS];

/// The histogram of `times` in zone `tz`.
pub fn histogram(times: impl IntoIterator<Item = i64>, tz: Tz) -> Histogram {
    let mut h = [0.0; HOURS];
    for us in times {
        if let Some(t) = DateTime::from_timestamp_micros(us) {
            h[hour_of_week(t, tz)] += 1.0;
        }
    }
    h
}

/// Shares that sum to one (uniform for an empty histogram).
pub fn shares(h: &Histogram) -> Histogram {
    let total: f64 = h.iter().sum();
    if total <= 0.0 {
        return [1.0 / HOURS as f64; HOURS];
    }
    let mut out = [0.0; HOURS];
    for (o, x) in out.iter_mut().zip(h) {
        *o = x / total;
    }
    out
}

/// The posterior estimate of engagement in hour `h`.
pub fn estimate(own: &Histogram, population: &Histogram, alpha: f64, h: usize) -> f64 {
    let n: f64 = own.iter().sum();
    (own[h] + alpha * population[h]) / (n + alpha)
}

/// When to send to a customer: the start of the hour within `[start, start +
/// window)` with the best estimate (the earliest of equals; `start` itself when its
/// own hour wins).
pub fn best_time(
    start: DateTime<Utc>,
    window: Duration,
    tz: Tz,
    own: &Histogram,
    population: &Histogram,
    alpha: f64,
) -> DateTime<Utc> {
    let hours = window.num_hours().clamp(1, HOURS as i64);
    let mut best = (f64::MIN, start);
    for i in 0..hours {
        let at = if i == 0 {
            start
        } else {
            let next = start + Duration::hours(i);
            next - Duration::minutes(i64::from(next.minute()))
                - Duration::seconds(i64::from(next.second()))
                - Duration::nanoseconds(i64::from(next.nanosecond()))
        };
        let e = estimate(own, population, alpha, hour_of_week(at, tz));
        if e > best.0 + 1e-12 {
            best = (e, at);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn hours_of_the_week_follow_the_zone() {
        // Monday 2026-03-02 01:30 UTC is Monday 09:30 in Shanghai: hour 9.
        let sh: Tz = "Asia/Shanghai".parse().unwrap();
        assert_eq!(hour_of_week(at("2026-03-02T01:30:00Z"), sh), 9);
        // Sunday 23:00 UTC is Monday 07:00 there; Sunday 23 is hour 167 in UTC.
        assert_eq!(hour_of_week(at("2026-03-01T23:00:00Z"), sh), 7);
        assert_eq!(hour_of_week(at("2026-03-01T23:00:00Z"), Tz::UTC), 167);
    }

    #[test]
    fn a_new_customer_gets_the_population_best_and_history_pulls_away() {
        let mut pop = [1.0; HOURS];
        pop[10] = 50.0; // Monday 10:00 for everyone
        let pop = shares(&pop);
        let start = at("2026-03-02T00:00:00Z"); // Monday 00:00 UTC
        let day = Duration::hours(24);
        let none = [0.0; HOURS];
        assert_eq!(best_time(start, day, Tz::UTC, &none, &pop, 10.0), at("2026-03-02T10:00:00Z"));
        // Five evenings at 20:00 outweigh a prior of weight 10.
        let mut own = [0.0; HOURS];
        own[20] = 5.0;
        assert_eq!(best_time(start, day, Tz::UTC, &own, &pop, 10.0), at("2026-03-02T20:00:00Z"));
        // One is not enough.
        own[20] = 1.0;
        assert_eq!(best_time(start, day, Tz::UTC, &own, &pop, 10.0), at("2026-03-02T10:00:00Z"));
        // A window that starts mid-hour: the current hour goes at once.
        let mid = at("2026-03-02T10:25:00Z");
        assert_eq!(best_time(mid, Duration::hours(6), Tz::UTC, &none, &pop, 10.0), mid);
    }

    #[test]
    fn histograms_count_engagements_by_local_hour() {
        let sh: Tz = "Asia/Shanghai".parse().unwrap();
        let h = histogram(
            [at("2026-03-02T01:30:00Z"), at("2026-03-09T01:10:00Z")].map(|t| t.timestamp_micros()),
            sh,
        );
        assert_eq!(h[9], 2.0);
        assert!((shares(&h)[9] - 1.0).abs() < 1e-12);
        assert!((shares(&[0.0; HOURS])[0] - 1.0 / 168.0).abs() < 1e-12);
    }
}

//! `crm eval-send-time`: send-time optimisation on generated customers with a planted
//! preference. Each customer has a favourite hour of the week (most in weekday
//! evenings, some at lunch, the rest anywhere); a message sent at hour `h` is opened
//! with a probability that peaks at the favourite hour and falls off within a few
//! hours. Each customer's history is messages sent at random hours; a message is
//! opened later with some probability, when the customer is next active: within an
//! hour of their favourite. The optimiser picks an hour per customer from that history (smoothed
//! toward the population); the report compares the expected open rate of its picks
//! with fixed send times (Tuesday 10:00, and the population's best hour) and with
//! the planted favourites (the best any policy could do).

use crm_segmentation::campaigns::send_time::{HOURS, Histogram, estimate, shares};

use crate::seed::Rng;

fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// The open probability of a message sent at `h` to someone whose favourite is `f`.
fn open_probability(h: usize, f: usize) -> f64 {
    let d = h.abs_diff(f).min(HOURS - h.abs_diff(f)) as f64;
    0.04 + 0.36 * (-(d * d) / (2.0 * 1.5 * 1.5)).exp()
}

fn favourite(rng: &mut Rng) -> usize {
    let day = (unit(rng) * 7.0) as usize;
    let r = unit(rng);
    if r < 0.6 {
        // A weekday evening, 19:00 to 22:00.
        (unit(rng) * 5.0) as usize * 24 + 19 + (unit(rng) * 4.0) as usize
    } else if r < 0.85 {
        day * 24 + 12 + usize::from(unit(rng) < 0.5)
    } else {
        (unit(rng) * HOURS as f64) as usize % HOURS
    }
}

/// The report: expected open rates per policy.
pub fn run(customers: usize, history: usize, alpha: f64, seed: u64) -> serde_json::Value {
    let mut rng = Rng::new(seed);
    let mut people = Vec::with_capacity(customers);
    let mut population = [0.0; HOURS];
    for _ in 0..customers {
        let f = favourite(&mut rng);
        let mut own: Histogram = [0.0; HOURS];
        for _ in 0..history {
            let sent = (unit(&mut rng) * HOURS as f64) as usize % HOURS;
            // Opened at once when sent near the favourite hour, else later, at it.
            if unit(&mut rng) < open_probability(sent, f) + 0.15 {
                let jitter = (unit(&mut rng) * 3.0) as usize; // -1, 0 or +1 hour
                let opened = (f + HOURS + jitter - 1) % HOURS;
                own[opened] += 1.0;
                population[opened] += 1.0;
            }
        }
        people.push((f, own));
    }
    let population = shares(&population);
    let best_population = (0..HOURS)
        .max_by(|a, b| population[*a].total_cmp(&population[*b]))
        .unwrap_or(0);
    let tuesday_10 = 24 + 10;
    let (mut sto, mut fixed, mut fixed_best, mut oracle) = (0.0, 0.0, 0.0, 0.0);
    let mut new_customers = 0;
    for (f, own) in &people {
        let pick = (0..HOURS)
            .max_by(|a, b| estimate(own, &population, alpha, *a).total_cmp(&estimate(own, &population, alpha, *b)))
            .unwrap_or(0);
        new_customers += usize::from(own.iter().sum::<f64>() == 0.0);
        sto += open_probability(pick, *f);
        fixed += open_probability(tuesday_10, *f);
        fixed_best += open_probability(best_population, *f);
        oracle += open_probability(*f, *f);
    }
    let n = customers as f64;
    serde_json::json!({
        "customers": customers,
        "messages_in_history": history,
        "customers_without_opens": new_customers,
        "prior_weight": alpha,
        "open_rate": {
            "optimised": sto / n,
            "fixed_tuesday_10": fixed / n,
            "fixed_population_best_hour": fixed_best / n,
            "planted_favourite": oracle / n,
        },
        "population_best_hour_of_week": best_population,
        "lift_over_population_best": (sto - fixed_best) / fixed_best,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optimised_hours_beat_fixed_ones_on_planted_preferences() {
        let r = run(3000, 20, 10.0, 5);
        let rate = |k: &str| r["open_rate"][k].as_f64().unwrap();
        assert!(rate("optimised") > rate("fixed_population_best_hour") * 1.3, "{r}");
        assert!(rate("fixed_population_best_hour") > rate("fixed_tuesday_10"), "{r}");
        assert!(rate("optimised") < rate("planted_favourite"), "{r}");
    }
}

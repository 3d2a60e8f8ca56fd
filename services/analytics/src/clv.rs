//! BG/NBD (Fader, Hardie & Lee 2005, "Counting your customers the easy way"): each
//! customer buys at a Poisson rate λ ~ Gamma(r, α) while alive and may drop out after
//! each purchase with probability p ~ Beta(a, b). From a customer's history — `x`
//! repeat purchases, the last at `t_x`, observed for `T` — the model gives the
//! likelihood (fitted by maximum likelihood over everyone) and P(alive).
//!
//! Numerics: the log-likelihood is computed in log space throughout (log-gamma,
//! log-sum-exp for the term that mixes the alive and dropped-out cases), and the
//! optimiser works on the logarithms of the parameters, so they stay positive, within
//! bounds that keep the search away from overflow.

/// One customer's history (time in any unit, the same for all).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct History {
    /// Repeat purchases.
    pub x: f64,
    /// Time of the last purchase (0 when none).
    pub t_x: f64,
    /// Length of observation.
    pub t: f64,
}

/// BG/NBD parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BgNbd {
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; about 15 significant digits).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// ln(e^a + e^b) without overflow.
fn log_add(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + ((a - m).exp() + (b - m).exp()).ln()
}

impl BgNbd {
    /// One customer's log-likelihood (equation 6 of the paper).
    pub fn log_likelihood(&self, h: &History) -> f64 {
        let BgNbd { r, alpha, a, b } = *self;
        let common = ln_gamma(r + h.x) - ln_gamma(r) + r * alpha.ln() + ln_beta(a, b + h.x) - ln_beta(a, b);
        let alive = -(r + h.x) * (alpha + h.t).ln();
        let mixed = if h.x > 0.0 {
            let dropped = a.ln() - (b + h.x - 1.0).ln() - (r + h.x) * (alpha + h.t_x).ln();
            log_add(alive, dropped)
        } else {
            alive
        };
        common + mixed
    }

    /// The sample's log-likelihood.
    pub fn total_log_likelihood(&self, sample: &[History]) -> f64 {
        sample.iter().map(|h| self.log_likelihood(h)).sum()
    }

    /// P(alive at T | history) (equation 8 of the paper's note).
    pub fn p_alive(&self, h: &History) -> f64 {
        if h.x == 0.0 {
            return 1.0;
        }
        let BgNbd { r, alpha, a, b } = *self;
        let ln_odds = a.ln() - (b + h.x - 1.0).ln() + (r + h.x) * ((alpha + h.t).ln() - (alpha + h.t_x).ln());
        1.0 / (1.0 + ln_odds.exp())
    }

    /// Fits by maximum likelihood (Nelder–Mead on the parameters' logarithms, each kept
    /// within e^±10). Returns the parameters and the sample's log-likelihood.
    pub fn fit(sample: &[History]) -> (Self, f64) {
        let objective = |v: &[f64; 4]| {
            let p = BgNbd {
                r: v[0].exp(),
                alpha: v[1].exp(),
                a: v[2].exp(),
                b: v[3].exp(),
            };
            let ll = p.total_log_likelihood(sample);
            if ll.is_finite() { -ll } else { f64::INFINITY }
        };
        let best = nelder_mead(objective, [0.0; 4], 1.0, 10.0, 1e-10, 20_000);
        let p = BgNbd {
            r: best[0].exp(),
            alpha: best[1].exp(),
            a: best[2].exp(),
            b: best[3].exp(),
        };
        let ll = p.total_log_likelihood(sample);
        (p, ll)
    }
}

/// Minimises `f` from `start` (simplex steps of `step`, each coordinate within
/// ±`bound`) until the simplex's values differ by less than `tolerance`, or
/// `max_iterations`; restarts once from the best point to escape a collapsed simplex.
pub fn nelder_mead<const N: usize>(
    f: impl Fn(&[f64; N]) -> f64,
    start: [f64; N],
    step: f64,
    bound: f64,
    tolerance: f64,
    max_iterations: usize,
) -> [f64; N] {
    let clamp = |mut p: [f64; N]| {
        for v in &mut p {
            *v = v.clamp(-bound, bound);
        }
        p
    };
    let mut best = start;
    for _ in 0..2 {
        let mut simplex: Vec<([f64; N], f64)> = Vec::with_capacity(N + 1);
        simplex.push((best, f(&best)));
        for i in 0..N {
            let mut p = best;
            p[i] += step;
            let p = clamp(p);
            simplex.push((p, f(&p)));
        }
        for _ in 0..max_iterations {
            simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
            if (simplex[N].1 - simplex[0].1).abs() < tolerance {
                break;
            }
            let mut centroid = [0.0; N];
            for (p, _) in &simplex[..N] {
                for (c, v) in centroid.iter_mut().zip(p) {
                    *c += v / N as f64;
                }
            }
            let towards = |t: f64| {
                let mut p = [0.0; N];
                for i in 0..N {
                    p[i] = centroid[i] + t * (simplex[N].0[i] - centroid[i]);
                }
                clamp(p)
            };
            let reflected = towards(-1.0);
            let fr = f(&reflected);
            if fr < simplex[0].1 {
                let expanded = towards(-2.0);
                let fe = f(&expanded);
                simplex[N] = if fe < fr { (expanded, fe) } else { (reflected, fr) };
            } else if fr < simplex[N - 1].1 {
                simplex[N] = (reflected, fr);
            } else {
                let contracted = if fr < simplex[N].1 { towards(-0.5) } else { towards(0.5) };
                let fc = f(&contracted);
                if fc < simplex[N].1.min(fr) {
                    simplex[N] = (contracted, fc);
                } else {
                    // Shrink toward the best.
                    let b = simplex[0].0;
                    for (p, v) in simplex.iter_mut().skip(1) {
                        for i in 0..N {
                            p[i] = b[i] + 0.5 * (p[i] - b[i]);
                        }
                        *v = f(p);
                    }
                }
            }
        }
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        best = simplex[0].0;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_matches_known_values() {
        assert!((ln_gamma(1.0)).abs() < 1e-13);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
        assert!((ln_gamma(100.0) - 359.134_205_369_575_4).abs() < 1e-9);
    }

    #[test]
    fn nelder_mead_finds_a_quadratic_minimum() {
        let best = nelder_mead(
            |p: &[f64; 2]| (p[0] - 1.5).powi(2) + 3.0 * (p[1] + 0.5).powi(2),
            [0.0; 2],
            1.0,
            10.0,
            1e-14,
            10_000,
        );
        assert!((best[0] - 1.5).abs() < 1e-5 && (best[1] + 0.5).abs() < 1e-5, "{best:?}");
    }

    /// The CDNOW sample, fetched (pinned and checked) by `.ci/cdnow.sh` on first use.
    fn cdnow() -> Vec<History> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.ci/cdnow.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
        assert!(
            out.status.success(),
            "{script} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let path = format!("{dir}/cdnow_customers_summary.csv");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        text.lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Vec<f64> = l.split(',').skip(1).map(|x| x.trim().parse().unwrap()).collect();
                History {
                    x: v[0],
                    t_x: v[1],
                    t: v[2],
                }
            })
            .collect()
    }

    /// The paper's estimates on the CDNOW sample: r 0.243, α 4.414, a 0.793, b 2.426,
    /// log-likelihood −9582.4.
    #[test]
    fn the_fit_on_cdnow_matches_the_published_parameters() {
        let sample = cdnow();
        assert_eq!(sample.len(), 2357);
        let (p, ll) = BgNbd::fit(&sample);
        for (name, got, want) in [
            ("r", p.r, 0.243),
            ("alpha", p.alpha, 4.414),
            ("a", p.a, 0.793),
            ("b", p.b, 2.426),
        ] {
            assert!((got - want).abs() / want < 0.01, "{name}: {got} against {want} ({p:?})");
        }
        assert!((ll + 9582.4).abs() < 0.5, "log-likelihood {ll}");
        eprintln!("CDNOW: {p:?}, log-likelihood {ll:.2}");
        // A customer with no repeat purchase is alive for sure in this model; one who
        // bought often and long ago, less so than one who bought lately.
        assert_eq!(
            p.p_alive(&History {
                x: 0.0,
                t_x: 0.0,
                t: 38.86
            }),
            1.0
        );
        let lately = p.p_alive(&History {
            x: 5.0,
            t_x: 38.0,
            t: 38.86,
        });
        let long_ago = p.p_alive(&History {
            x: 5.0,
            t_x: 10.0,
            t: 38.86,
        });
        assert!(lately > 0.8 && long_ago < 0.1, "{lately} {long_ago}");
    }
}

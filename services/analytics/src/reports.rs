//! Reports: the projection's counts turned into chart-ready series (one point per
//! period or group, in axis order, each labelled). Pure functions over the rows the
//! store returns, so every figure is unit-tested here.

use std::collections::BTreeMap;

use chrono::{Datelike, Duration, NaiveDate, TimeZone, Utc};
use crm_platform::feed::from_micros;
use crm_proto::crm::analytics::v1::{self as pb, Granularity};

use crate::store::{FunnelCount, QualityPoint, TicketFacts, TouchCount};

const DAY_US: i64 = 86_400_000_000;

/// The periods of `[from, to)` at `granularity`: each one's start (µs, UTC midnight)
/// and label. The first starts at or before `from`.
pub fn periods(from_us: i64, to_us: i64, granularity: Granularity) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let Some(first) = Utc.timestamp_micros(from_us).single().map(|t| t.date_naive()) else {
        return out;
    };
    let mut day = match granularity {
        Granularity::Week => first - Duration::days(i64::from(first.weekday().num_days_from_monday())),
        Granularity::Month => first.with_day(1).unwrap_or(first),
        _ => first,
    };
    loop {
        let start = day.and_hms_opt(0, 0, 0).map_or(0, |t| t.and_utc().timestamp_micros());
        if start >= to_us || out.len() > 4000 {
            break;
        }
        let label = match granularity {
            Granularity::Month => day.format("%Y-%m").to_string(),
            _ => day.format("%Y-%m-%d").to_string(),
        };
        out.push((start, label));
        day = match granularity {
            Granularity::Week => day + Duration::days(7),
            Granularity::Month => next_month(day),
            _ => day + Duration::days(1),
        };
    }
    out
}

fn next_month(d: NaiveDate) -> NaiveDate {
    let (y, m) = if d.month() == 12 {
        (d.year() + 1, 1)
    } else {
        (d.year(), d.month() + 1)
    };
    NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(d)
}

/// The index of the period holding `us` (periods from [`periods`]).
pub fn period_of(periods: &[(i64, String)], us: i64) -> Option<usize> {
    match periods.partition_point(|(start, _)| *start <= us) {
        0 => None,
        i => Some(i - 1),
    }
}

fn series(metric: &str, group: &str, unit: &str, points: Vec<pb::Point>) -> pb::Series {
    pb::Series {
        metric: metric.into(),
        group: group.into(),
        unit: unit.into(),
        points,
        target: None,
        target_is_minimum: false,
    }
}

fn point(label: &str, time_us: Option<i64>, value: Option<f64>) -> pb::Point {
    pb::Point {
        label: label.into(),
        time: time_us.map(from_micros),
        value: value.unwrap_or(0.0),
        empty: value.is_none(),
        alert: false,
    }
}

fn ratio(n: i64, d: i64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// A channel's name as reports show it ("web", "service_desk").
pub fn channel_name(channel: i32) -> String {
    crm_proto::crm::common::v1::Channel::try_from(channel)
        .map(|c| c.as_str_name().trim_start_matches("CHANNEL_").to_ascii_lowercase())
        .unwrap_or_else(|_| channel.to_string())
}

/// The funnel: per cohort period (or source channel) how many reached each stage,
/// the conversion rate of each step, and the mean days spent in each stage before
/// the next; plus the whole range's funnel (`funnel`/`all`, one point per stage).
pub fn funnel(rows: &[FunnelCount], from_us: i64, to_us: i64, granularity: Granularity, by_channel: bool) -> Vec<pb::Series> {
    // The axis: periods, or the channels present (in channel order).
    let axis: Vec<(Option<i64>, String)> = if by_channel {
        let mut channels: Vec<i32> = rows.iter().map(|r| r.source_channel).collect();
        channels.sort_unstable();
        channels.dedup();
        channels.into_iter().map(|c| (None, channel_name(c))).collect()
    } else {
        periods(from_us, to_us, granularity)
            .into_iter()
            .map(|(s, l)| (Some(s), l))
            .collect()
    };
    let starts: Vec<(i64, String)> = axis.iter().map(|(s, l)| (s.unwrap_or(0), l.clone())).collect();
    let mut sums = vec![FunnelCount::default(); axis.len()];
    let mut total = FunnelCount::default();
    for r in rows {
        let i = if by_channel {
            axis.iter().position(|(_, l)| *l == channel_name(r.source_channel))
        } else {
            period_of(&starts, r.day * DAY_US)
        };
        for s in i.map(|i| &mut sums[i]).into_iter().chain(std::iter::once(&mut total)) {
            s.leads += r.leads;
            s.prospects += r.prospects;
            s.customers += r.customers;
            s.repeats += r.repeats;
            s.lead_secs += r.lead_secs;
            s.prospect_secs += r.prospect_secs;
            s.customer_secs += r.customer_secs;
        }
    }
    let along = |f: &dyn Fn(&FunnelCount) -> Option<f64>| -> Vec<pb::Point> {
        axis.iter().zip(&sums).map(|((t, l), s)| point(l, *t, f(s))).collect()
    };
    let days = |secs: i64, n: i64| (n > 0).then(|| secs as f64 / n as f64 / 86_400.0);
    let mut out = vec![
        series("entered", "lead", "count", along(&|s| Some(s.leads as f64))),
        series("entered", "prospect", "count", along(&|s| Some(s.prospects as f64))),
        series("entered", "customer", "count", along(&|s| Some(s.customers as f64))),
        series("entered", "repeat", "count", along(&|s| Some(s.repeats as f64))),
        series(
            "conversion_rate",
            "lead→prospect",
            "ratio",
            along(&|s| ratio(s.prospects, s.leads)),
        ),
        series(
            "conversion_rate",
            "prospect→customer",
            "ratio",
            along(&|s| ratio(s.customers, s.prospects)),
        ),
        series(
            "conversion_rate",
            "customer→repeat",
            "ratio",
            along(&|s| ratio(s.repeats, s.customers)),
        ),
        series(
            "mean_days_in_stage",
            "lead",
            "days",
            along(&|s| days(s.lead_secs, s.prospects)),
        ),
        series(
            "mean_days_in_stage",
            "prospect",
            "days",
            along(&|s| days(s.prospect_secs, s.customers)),
        ),
        series(
            "mean_days_in_stage",
            "customer",
            "days",
            along(&|s| days(s.customer_secs, s.repeats)),
        ),
    ];
    out.push(series(
        "funnel",
        "all",
        "count",
        [
            ("lead", total.leads),
            ("prospect", total.prospects),
            ("customer", total.customers),
            ("repeat", total.repeats),
        ]
        .iter()
        .map(|(l, n)| point(l, None, Some(*n as f64)))
        .collect(),
    ));
    out
}

/// The nearest-rank `percent` percentile (0–100) of sorted values, as a point value.
pub fn quantile(sorted: &[i64], percent: u32) -> Option<f64> {
    crm_platform::stats::nearest_rank(sorted, percent).map(|v| v as f64)
}

/// How a service report groups.
pub fn service_group(t: &TicketFacts, grouping: pb::ServiceGrouping) -> String {
    match grouping {
        pb::ServiceGrouping::Category => t.category.clone(),
        pb::ServiceGrouping::Queue => t.queue.clone(),
        pb::ServiceGrouping::Channel => channel_name(t.channel),
        pb::ServiceGrouping::Unspecified => String::new(),
    }
}

#[derive(Default)]
struct ServiceCell {
    volume: i64,
    complaints: i64,
    first_response: Vec<i64>,
    resolution: Vec<i64>,
    sla_met: i64,
    sla_decided: i64,
    ratings: i64,
    rating_sum: i64,
}

/// Service trends per period and group: volume, complaint rate, first-response and
/// resolution times (median and p90, seconds), SLA compliance (targets met among
/// those decided: met when the step was done without a breach, missed when
/// breached) and CSAT (mean rating, 1 to 5) — tickets counted in the period they
/// were created. Fed one ticket at a time, so a period's tickets need not all be in
/// memory at once: per ticket it keeps two durations.
pub struct ServiceTrends {
    axis: Vec<(i64, String)>,
    grouping: pb::ServiceGrouping,
    cells: BTreeMap<String, Vec<ServiceCell>>,
}

impl ServiceTrends {
    pub fn new(from_us: i64, to_us: i64, granularity: Granularity, grouping: pb::ServiceGrouping) -> Self {
        Self {
            axis: periods(from_us, to_us, granularity),
            grouping,
            cells: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, t: &TicketFacts) {
        let Some(i) = period_of(&self.axis, t.create_us) else { return };
        let periods = self.axis.len();
        let row = self
            .cells
            .entry(service_group(t, self.grouping))
            .or_insert_with(|| (0..periods).map(|_| ServiceCell::default()).collect());
        let c = &mut row[i];
        c.volume += 1;
        c.complaints += i64::from(t.complaint);
        if t.first_response_us > 0 {
            c.first_response.push((t.first_response_us - t.create_us) / 1_000_000);
        }
        if t.solve_us > 0 {
            c.resolution.push((t.solve_us - t.create_us) / 1_000_000);
        }
        if t.has_sla {
            for (done, breached) in [
                (t.first_response_us > 0, t.response_breached),
                (t.solve_us > 0, t.resolution_breached),
            ] {
                if breached {
                    c.sla_decided += 1;
                } else if done {
                    c.sla_decided += 1;
                    c.sla_met += 1;
                }
            }
        }
        if t.rating > 0 {
            c.ratings += 1;
            c.rating_sum += i64::from(t.rating);
        }
    }

    pub fn finish(self) -> Vec<pb::Series> {
        let Self { axis, mut cells, .. } = self;
        let mut out = Vec::new();
        for (group, row) in &mut cells {
            for c in row.iter_mut() {
                c.first_response.sort_unstable();
                c.resolution.sort_unstable();
            }
            let along = |f: &dyn Fn(&ServiceCell) -> Option<f64>| -> Vec<pb::Point> {
                axis.iter()
                    .zip(row.iter())
                    .map(|((s, l), c)| point(l, Some(*s), f(c)))
                    .collect()
            };
            out.extend([
                series("volume", group, "count", along(&|c| Some(c.volume as f64))),
                series("complaint_rate", group, "ratio", along(&|c| ratio(c.complaints, c.volume))),
                series(
                    "first_response_median",
                    group,
                    "seconds",
                    along(&|c| quantile(&c.first_response, 50)),
                ),
                series(
                    "first_response_p90",
                    group,
                    "seconds",
                    along(&|c| quantile(&c.first_response, 90)),
                ),
                series("resolution_median", group, "seconds", along(&|c| quantile(&c.resolution, 50))),
                series("resolution_p90", group, "seconds", along(&|c| quantile(&c.resolution, 90))),
                series("sla_compliance", group, "ratio", along(&|c| ratio(c.sla_met, c.sla_decided))),
                series(
                    "csat",
                    group,
                    "rating",
                    along(&|c| (c.ratings > 0).then(|| c.rating_sum as f64 / c.ratings as f64)),
                ),
            ]);
        }
        out
    }
}

#[derive(Default, Clone)]
struct MarketingCell {
    sent: i64,
    opened: i64,
    clicked: i64,
    unsubscribed: i64,
    converted: i64,
    control_converted: i64,
    revenue: BTreeMap<String, i64>,
    by_channel: BTreeMap<i32, i64>,
}

/// Campaign performance per period (totals, or per campaign): sent, opened, clicked,
/// unsubscribed, converted (outside the control group), revenue per currency, the
/// open, click and conversion rates, and conversions per channel.
pub fn marketing(
    counts: &[TouchCount],
    from_us: i64,
    to_us: i64,
    granularity: Granularity,
    by_campaign: bool,
) -> Vec<pb::Series> {
    use crm_proto::crm::segmentation::v1::TouchKind;
    let axis = periods(from_us, to_us, granularity);
    let mut cells: BTreeMap<String, Vec<MarketingCell>> = BTreeMap::new();
    for t in counts {
        let Some(i) = period_of(&axis, t.day * DAY_US) else { continue };
        let group = if by_campaign { t.campaign.clone() } else { String::new() };
        let c = &mut cells
            .entry(group)
            .or_insert_with(|| vec![MarketingCell::default(); axis.len()])[i];
        match TouchKind::try_from(t.kind) {
            Ok(TouchKind::Sent) => c.sent += t.count,
            Ok(TouchKind::Opened) => c.opened += t.count,
            Ok(TouchKind::Clicked) => c.clicked += t.count,
            Ok(TouchKind::Unsubscribed) => c.unsubscribed += t.count,
            Ok(TouchKind::Converted) if t.control => c.control_converted += t.count,
            Ok(TouchKind::Converted) => {
                c.converted += t.count;
                *c.revenue.entry(t.currency.clone()).or_default() += t.revenue_micros;
                *c.by_channel.entry(t.channel).or_default() += t.count;
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (group, row) in &cells {
        let along = |f: &dyn Fn(&MarketingCell) -> Option<f64>| -> Vec<pb::Point> {
            axis.iter()
                .zip(row.iter())
                .map(|((s, l), c)| point(l, Some(*s), f(c)))
                .collect()
        };
        out.extend([
            series("sent", group, "count", along(&|c| Some(c.sent as f64))),
            series("opened", group, "count", along(&|c| Some(c.opened as f64))),
            series("clicked", group, "count", along(&|c| Some(c.clicked as f64))),
            series("unsubscribed", group, "count", along(&|c| Some(c.unsubscribed as f64))),
            series("converted", group, "count", along(&|c| Some(c.converted as f64))),
            series(
                "control_converted",
                group,
                "count",
                along(&|c| Some(c.control_converted as f64)),
            ),
            series("open_rate", group, "ratio", along(&|c| ratio(c.opened, c.sent))),
            series("click_rate", group, "ratio", along(&|c| ratio(c.clicked, c.sent))),
            series("conversion_rate", group, "ratio", along(&|c| ratio(c.converted, c.sent))),
        ]);
        let currencies: std::collections::BTreeSet<&String> = row.iter().flat_map(|c| c.revenue.keys()).collect();
        for currency in currencies {
            out.push(series(
                "revenue",
                group,
                currency,
                along(&|c| Some(c.revenue.get(currency).copied().unwrap_or(0) as f64 / 1e6)),
            ));
        }
        let channels: std::collections::BTreeSet<i32> = row.iter().flat_map(|c| c.by_channel.keys().copied()).collect();
        for channel in channels {
            let name = if group.is_empty() {
                channel_name_contact(channel)
            } else {
                format!("{group}/{}", channel_name_contact(channel))
            };
            out.push(series(
                "conversions_by_channel",
                &name,
                "count",
                along(&|c| Some(c.by_channel.get(&channel).copied().unwrap_or(0) as f64)),
            ));
        }
    }
    out
}

/// Engagement per period: interactions recorded (page and product views, visits,
/// calls, messages, campaign responses), one series per channel.
pub fn engagement(counts: &[(i64, i32, i64)], from_us: i64, to_us: i64, granularity: Granularity) -> Vec<pb::Series> {
    let axis = periods(from_us, to_us, granularity);
    let mut by_channel: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (day, channel, n) in counts {
        if let Some(i) = period_of(&axis, day * DAY_US) {
            by_channel.entry(*channel).or_insert_with(|| vec![0; axis.len()])[i] += n;
        }
    }
    by_channel
        .iter()
        .map(|(channel, row)| {
            series(
                "interactions",
                &channel_name(*channel),
                "count",
                axis.iter()
                    .zip(row)
                    .map(|((s, l), n)| point(l, Some(*s), Some(*n as f64)))
                    .collect(),
            )
        })
        .collect()
}

/// A campaign channel's name (`crm.customer.v1.ContactChannel`).
fn channel_name_contact(channel: i32) -> String {
    crm_proto::crm::customer::v1::ContactChannel::try_from(channel)
        .map(|c| c.as_str_name().trim_start_matches("CONTACT_CHANNEL_").to_ascii_lowercase())
        .unwrap_or_else(|_| channel.to_string())
}

/// The KPIs a data-quality report draws, in order.
pub const KPIS: &[&str] = &[
    "completeness",
    "duplicate_rate",
    "entry_error_rate",
    "freshness",
    "self_service_rate",
];

/// Data quality: one series per KPI, one point per day of `[from, to)` (a day
/// without a snapshot is a gap), with the target and each point's alert state.
pub fn quality(points: &[QualityPoint], from_us: i64, to_us: i64) -> Vec<pb::Series> {
    let axis = periods(from_us, to_us, Granularity::Day);
    KPIS.iter()
        .map(|kpi| {
            let mine: Vec<&QualityPoint> = points.iter().filter(|p| p.kpi == *kpi).collect();
            let latest = mine.last();
            let mut s = series(
                kpi,
                "",
                "ratio",
                axis.iter()
                    .map(|(start, label)| match mine.iter().find(|p| p.day_us == *start) {
                        Some(p) => pb::Point {
                            alert: p.alert,
                            ..point(label, Some(*start), Some(p.value))
                        },
                        None => point(label, Some(*start), None),
                    })
                    .collect(),
            );
            s.target = latest.map(|p| p.target);
            s.target_is_minimum = latest.is_some_and(|p| p.minimum);
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`ServiceTrends`] of `tickets`.
    fn service(
        tickets: &[TicketFacts],
        from_us: i64,
        to_us: i64,
        granularity: Granularity,
        grouping: pb::ServiceGrouping,
    ) -> Vec<pb::Series> {
        let mut trends = ServiceTrends::new(from_us, to_us, granularity, grouping);
        for t in tickets {
            trends.add(t);
        }
        trends.finish()
    }

    fn us(y: i32, m: u32, d: u32) -> i64 {
        NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_micros()
    }

    #[test]
    fn periods_start_on_midnight_monday_and_the_first_of_the_month() {
        let from = us(2026, 1, 29) + 3_600_000_000;
        let to = us(2026, 3, 2);
        let months = periods(from, to, Granularity::Month);
        assert_eq!(
            months.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>(),
            vec!["2026-01", "2026-02", "2026-03"]
        );
        assert_eq!(months[0].0, us(2026, 1, 1));
        let weeks = periods(from, to, Granularity::Week);
        // 2026-01-29 is a Thursday: its week starts on Monday the 26th.
        assert_eq!(weeks[0], (us(2026, 1, 26), "2026-01-26".to_owned()));
        assert_eq!(weeks.len(), 5);
        let days = periods(us(2026, 2, 27), us(2026, 3, 2), Granularity::Day);
        assert_eq!(days.len(), 3);
        assert_eq!(period_of(&days, us(2026, 2, 28) + 5), Some(1));
        assert_eq!(period_of(&days, us(2026, 2, 26)), None);
    }

    #[test]
    fn the_funnel_counts_conversions_and_time_in_stage_per_cohort() {
        let jan = us(2026, 1, 10) / DAY_US;
        let feb = us(2026, 2, 3) / DAY_US;
        let rows = vec![
            FunnelCount {
                day: jan,
                source_channel: 1,
                leads: 10,
                prospects: 5,
                customers: 2,
                repeats: 1,
                lead_secs: 5 * 2 * 86_400,
                prospect_secs: 2 * 10 * 86_400,
                customer_secs: 30 * 86_400,
            },
            FunnelCount {
                day: feb,
                source_channel: 2,
                leads: 4,
                ..FunnelCount::default()
            },
        ];
        let s = funnel(&rows, us(2026, 1, 1), us(2026, 3, 1), Granularity::Month, false);
        let find = |m: &str, g: &str| s.iter().find(|x| x.metric == m && x.group == g).unwrap();
        let leads = find("entered", "lead");
        assert_eq!(leads.points.iter().map(|p| p.value).collect::<Vec<_>>(), vec![10.0, 4.0]);
        assert_eq!(leads.points[0].label, "2026-01");
        let rate = find("conversion_rate", "lead→prospect");
        assert_eq!((rate.points[0].value, rate.points[1].value), (0.5, 0.0));
        let repeat = find("conversion_rate", "customer→repeat");
        assert!(repeat.points[1].empty, "February has no customers to convert");
        assert_eq!(find("mean_days_in_stage", "lead").points[0].value, 2.0);
        assert_eq!(find("mean_days_in_stage", "prospect").points[0].value, 10.0);
        assert_eq!(
            find("funnel", "all").points.iter().map(|p| p.value).collect::<Vec<_>>(),
            vec![14.0, 5.0, 2.0, 1.0]
        );
        let by = funnel(&rows, us(2026, 1, 1), us(2026, 3, 1), Granularity::Month, true);
        let leads = by.iter().find(|x| x.metric == "entered" && x.group == "lead").unwrap();
        assert_eq!(
            leads.points.iter().map(|p| (p.label.as_str(), p.value)).collect::<Vec<_>>(),
            vec![("web", 10.0), ("app", 4.0)]
        );
    }

    #[test]
    fn service_trends_take_medians_p90_sla_and_csat() {
        let day = us(2026, 3, 2);
        let ticket = |mins: i64, rating: i32, breached: bool| TicketFacts {
            category: "billing".into(),
            create_us: day,
            first_response_us: day + mins * 60_000_000,
            solve_us: day + 2 * mins * 60_000_000,
            has_sla: true,
            response_breached: breached,
            rating,
            complaint: rating == 1,
            ..TicketFacts::default()
        };
        let tickets: Vec<TicketFacts> = (1..=10).map(|i| ticket(i, if i <= 2 { 1 } else { 0 }, i == 10)).collect();
        let s = service(&tickets, day, day + DAY_US, Granularity::Day, pb::ServiceGrouping::Category);
        let value = |m: &str| s.iter().find(|x| x.metric == m && x.group == "billing").unwrap().points[0].value;
        assert_eq!(value("volume"), 10.0);
        assert_eq!(value("complaint_rate"), 0.2);
        assert_eq!(value("first_response_median"), 300.0);
        assert_eq!(value("first_response_p90"), 540.0);
        assert_eq!(value("resolution_p90"), 1080.0);
        // 20 targets decided, one breached.
        assert_eq!(value("sla_compliance"), 19.0 / 20.0);
        assert_eq!(value("csat"), 1.0);
    }

    #[test]
    fn marketing_keeps_control_conversions_apart() {
        let day = us(2026, 3, 2) / DAY_US;
        let count = |kind: i32, control: bool, n: i64, revenue: i64| TouchCount {
            day,
            campaign: "campaigns/spring".into(),
            kind,
            channel: 2,
            control,
            currency: "CNY".into(),
            count: n,
            revenue_micros: revenue,
        };
        let counts = vec![
            count(1, false, 100, 0),
            count(2, false, 40, 0),
            count(3, false, 10, 0),
            count(5, false, 5, 500_000_000),
            count(5, true, 1, 80_000_000),
        ];
        let s = marketing(&counts, us(2026, 3, 2), us(2026, 3, 3), Granularity::Day, false);
        let value = |m: &str| s.iter().find(|x| x.metric == m).unwrap().points[0].value;
        assert_eq!(value("open_rate"), 0.4);
        assert_eq!(value("conversion_rate"), 0.05);
        assert_eq!(value("control_converted"), 1.0);
        assert_eq!(value("revenue"), 500.0);
        assert_eq!(value("conversions_by_channel"), 5.0);
    }

    #[test]
    fn engagement_counts_interactions_per_channel_and_period() {
        let d = us(2026, 3, 2) / DAY_US;
        let s = engagement(
            &[(d, 1, 5), (d + 1, 1, 2), (d + 1, 2, 7)],
            us(2026, 3, 2),
            us(2026, 3, 4),
            Granularity::Day,
        );
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].group.as_str(), s[0].points.iter().map(|p| p.value).collect::<Vec<_>>()),
            ("web", vec![5.0, 2.0])
        );
        assert_eq!(
            (s[1].group.as_str(), s[1].points[0].value, s[1].points[1].value),
            ("app", 0.0, 7.0)
        );
    }

    #[test]
    fn quality_series_leave_gaps_and_carry_targets() {
        let d1 = us(2026, 3, 1);
        let p = |day_us: i64, value: f64| QualityPoint {
            day_us,
            kpi: "completeness".into(),
            value,
            target: 0.95,
            minimum: true,
            alert: value < 0.95,
            numerator: 0,
            denominator: 0,
            compute_us: 0,
        };
        let s = quality(&[p(d1, 0.97), p(d1 + 2 * DAY_US, 0.93)], d1, d1 + 3 * DAY_US);
        let c = &s[0];
        assert_eq!((c.target, c.target_is_minimum), (Some(0.95), true));
        assert_eq!(
            c.points.iter().map(|p| (p.empty, p.alert)).collect::<Vec<_>>(),
            vec![(false, false), (true, false), (false, true)]
        );
        assert!(s[1].points.iter().all(|p| p.empty), "no duplicate-rate snapshots");
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let v: Vec<i64> = (1..=10).collect();
        assert_eq!(quantile(&v, 50), Some(5.0));
        assert_eq!(quantile(&v, 90), Some(9.0));
        assert_eq!(quantile(&[7], 90), Some(7.0));
        assert_eq!(quantile(&[], 50), None);
    }
}

//! `crm report`: an analytics report fetched from the suite and rendered for a
//! person: a table in the terminal, CSV, or an SVG line chart (one panel per unit,
//! one line per series, gaps where nothing was measured, the target of a KPI as a
//! dashed line). The SVG is written directly (text is left to the viewer's fonts,
//! so labels in any script show).

use std::fmt::Write as _;

use crm_proto::crm::analytics::v1::{self as pb, analytics_service_client::AnalyticsServiceClient};

/// Which report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Name {
    Funnel,
    Service,
    Marketing,
    DataQuality,
}

/// How to render it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Svg,
}

/// The request's knobs shared by every report.
#[derive(Debug, Clone)]
pub struct Query {
    pub from: chrono::DateTime<chrono::Utc>,
    pub to: chrono::DateTime<chrono::Utc>,
    pub granularity: pb::Granularity,
    /// funnel: `source-channel`; service: `category`, `queue`, `channel`;
    /// marketing: `campaign`.
    pub group_by: Option<String>,
}

/// Parses `2026-03-01` (midnight UTC) or an RFC 3339 time.
pub fn parse_time(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let day = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| anyhow::anyhow!("`{text}`: expected a date (2026-03-01) or an RFC 3339 time"))?;
    Ok(day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    })
}

/// Asks the analytics service for the report.
pub async fn fetch(target: &str, token: &str, name: Name, q: &Query) -> anyhow::Result<pb::Report> {
    let channel = tonic::transport::Channel::from_shared(target.to_owned())?.connect().await?;
    let mut client = AnalyticsServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let bearer = crate::bearer(token)?;
    let (start_time, end_time, granularity) = (timestamp(q.from), timestamp(q.to), q.granularity as i32);
    let group = q.group_by.as_deref().unwrap_or("");
    let bad_group = |allowed: &str| anyhow::anyhow!("--group-by {group}: this report groups by {allowed}");
    let response = match name {
        Name::Funnel => {
            if !matches!(group, "" | "source-channel") {
                return Err(bad_group("source-channel"));
            }
            let r = pb::GetFunnelReportRequest {
                start_time,
                end_time,
                granularity,
                by_source_channel: group == "source-channel",
                source_channels: vec![],
            };
            client.get_funnel_report(crate::authorized(r, &bearer)).await
        }
        Name::Service => {
            let group_by = match group {
                "" => pb::ServiceGrouping::Unspecified,
                "category" => pb::ServiceGrouping::Category,
                "queue" => pb::ServiceGrouping::Queue,
                "channel" => pb::ServiceGrouping::Channel,
                _ => return Err(bad_group("category, queue or channel")),
            };
            let r = pb::GetServiceReportRequest {
                start_time,
                end_time,
                granularity,
                group_by: group_by as i32,
                ..Default::default()
            };
            client.get_service_report(crate::authorized(r, &bearer)).await
        }
        Name::Marketing => {
            if !matches!(group, "" | "campaign") {
                return Err(bad_group("campaign"));
            }
            let r = pb::GetMarketingReportRequest {
                start_time,
                end_time,
                granularity,
                campaigns: vec![],
                by_campaign: group == "campaign",
            };
            client.get_marketing_report(crate::authorized(r, &bearer)).await
        }
        Name::DataQuality => {
            if !group.is_empty() {
                return Err(bad_group("nothing"));
            }
            let r = pb::GetDataQualityReportRequest { start_time, end_time };
            client.get_data_quality_report(crate::authorized(r, &bearer)).await
        }
    };
    response
        .map(tonic::Response::into_inner)
        .map_err(|s| anyhow::anyhow!("the analytics service refused the report: {:?}: {}", s.code(), s.message()))
}

/// A series' column name: `metric`, or `metric [group]`.
fn column(s: &pb::Series) -> String {
    if s.group.is_empty() {
        s.metric.clone()
    } else {
        format!("{} [{}]", s.metric, s.group)
    }
}

/// The axis labels, in order of first appearance across the series.
fn axis(report: &pb::Report) -> Vec<String> {
    let mut labels: Vec<String> = Vec::new();
    for s in &report.series {
        for p in &s.points {
            if !labels.contains(&p.label) {
                labels.push(p.label.clone());
            }
        }
    }
    labels
}

fn cell(s: &pb::Series, label: &str) -> String {
    match s.points.iter().find(|p| p.label == label) {
        Some(p) if !p.empty => {
            let v = if s.unit == "ratio" {
                format!("{:.2}%", p.value * 100.0)
            } else if p.value.fract() == 0.0 && p.value.abs() < 1e15 {
                format!("{}", p.value as i64)
            } else {
                format!("{:.2}", p.value)
            };
            if p.alert { format!("{v}!") } else { v }
        }
        _ => String::new(),
    }
}

/// CSV: one row per axis label, one column per series (ratios as fractions).
pub fn csv(report: &pb::Report) -> String {
    let quote = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    };
    let mut out = String::from("label");
    for s in &report.series {
        out.push(',');
        out.push_str(&quote(&column(s)));
    }
    out.push('\n');
    for label in axis(report) {
        out.push_str(&quote(&label));
        for s in &report.series {
            out.push(',');
            if let Some(p) = s.points.iter().find(|p| p.label == label && !p.empty) {
                out.push_str(&p.value.to_string());
            }
        }
        out.push('\n');
    }
    out
}

/// A table for the terminal: one row per series (the metrics read down), one column
/// per axis label; ratios in percent, `!` marks a KPI missing its target.
pub fn table(report: &pb::Report) -> String {
    if report.series.is_empty() {
        return format!("{} ({}): nothing in the period\n", report.report, granularity_name(report));
    }
    let labels = axis(report);
    let mut rows: Vec<Vec<String>> = vec![
        std::iter::once(format!("{} ({})", report.report, granularity_name(report)))
            .chain(labels.iter().cloned())
            .collect(),
    ];
    for s in &report.series {
        let mut row = vec![column(s)];
        row.extend(labels.iter().map(|l| cell(s, l)));
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, v)| {
                let pad = widths[c] - v.chars().count();
                if c == 0 {
                    format!("{v}{}", " ".repeat(pad))
                } else {
                    format!("{}{v}", " ".repeat(pad))
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
            out.push('\n');
        }
    }
    out
}

fn granularity_name(report: &pb::Report) -> &'static str {
    match pb::Granularity::try_from(report.granularity) {
        Ok(pb::Granularity::Day) => "daily",
        Ok(pb::Granularity::Week) => "weekly",
        Ok(pb::Granularity::Month) => "monthly",
        _ => "",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Round steps (about five) covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| span / s <= 5.0)
        .unwrap_or(10.0 * magnitude);
    // From the step at or below `lo` to the first at or above `hi`.
    let first = (lo / step).floor() as i64;
    let mut out = Vec::new();
    for k in first..first + 12 {
        let t = k as f64 * step;
        out.push(t);
        if t >= hi - step * 1e-9 {
            break;
        }
    }
    out
}

const PALETTE: &[&str] = &[
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
];

/// A chart panel: series of one unit over the same axis.
struct Panel<'a> {
    unit: &'a str,
    labels: Vec<String>,
    series: Vec<&'a pb::Series>,
}

/// The series grouped into panels by unit and axis (a funnel's stages apart from
/// its cohorts), in order of first appearance.
fn panels(report: &pb::Report) -> Vec<Panel<'_>> {
    let mut out: Vec<Panel<'_>> = Vec::new();
    for s in &report.series {
        let labels: Vec<String> = s.points.iter().map(|p| p.label.clone()).collect();
        match out.iter_mut().find(|p| p.unit == s.unit && p.labels == labels) {
            Some(p) => p.series.push(s),
            None => out.push(Panel {
                unit: &s.unit,
                labels,
                series: vec![s],
            }),
        }
    }
    out
}

/// An SVG line chart: one panel per unit and axis, the series there as lines.
pub fn svg(report: &pb::Report) -> String {
    let panels = panels(report);
    let (width, panel, top, left, plot_w) = (1100.0, 300.0, 50.0, 70.0, 700.0);
    let height = top + panel * panels.len().max(1) as f64 + 20.0;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let title = format!(
        "{} report, {} to {}",
        report.report,
        report.start_time.as_ref().map_or(String::new(), |t| day(t.seconds)),
        report.end_time.as_ref().map_or(String::new(), |t| day(t.seconds)),
    );
    let _ = write!(out, r#"<text x="{left}" y="28" font-size="18">{}</text>"#, escape(&title));
    let mut color = 0usize;
    for (k, Panel { unit, labels, series }) in panels.iter().enumerate() {
        let n = labels.len().max(1);
        let x_of = |i: usize| {
            left + if n == 1 {
                plot_w / 2.0
            } else {
                plot_w * i as f64 / (n - 1) as f64
            }
        };
        let y0 = top + panel * k as f64 + 20.0;
        let plot_h = panel - 70.0;
        let values = series
            .iter()
            .flat_map(|s| s.points.iter().filter(|p| !p.empty).map(|p| p.value).chain(s.target));
        let (mut lo, mut hi) = values.fold((0.0f64, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if !hi.is_finite() || hi <= lo {
            hi = lo + 1.0;
        }
        let ticks = ticks(lo, hi);
        let decimals = match ticks.as_slice() {
            [a, b, ..] => (-(b - a).log10()).ceil().max(0.0) as usize,
            _ => 0,
        };
        lo = lo.min(*ticks.first().unwrap_or(&lo));
        hi = hi.max(*ticks.last().unwrap_or(&hi));
        let y_of = |v: f64| y0 + plot_h - (v - lo) / (hi - lo) * plot_h;
        let _ = write!(
            out,
            r##"<text x="{left}" y="{}" font-weight="bold">{}</text>"##,
            y0 - 6.0,
            escape(unit)
        );
        for t in &ticks {
            let y = y_of(*t);
            let label = if *unit == "ratio" {
                format!("{:.*}%", decimals.saturating_sub(2), t * 100.0)
            } else {
                format!("{t:.decimals$}")
            };
            let _ = write!(
                out,
                r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + plot_w,
                left - 6.0,
                y + 4.0,
                escape(&label)
            );
        }
        // Axis labels, thinned to about twelve.
        let every = n.div_ceil(12);
        for (i, l) in labels.iter().enumerate().filter(|(i, _)| i % every == 0) {
            let _ = write!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x_of(i),
                y0 + plot_h + 16.0,
                escape(l)
            );
        }
        for (j, s) in series.iter().enumerate() {
            let stroke = PALETTE[color % PALETTE.len()];
            color += 1;
            // Runs of measured points: a gap where nothing was.
            let mut runs: Vec<Vec<(f64, f64, bool)>> = vec![Vec::new()];
            for (i, l) in labels.iter().enumerate() {
                match s.points.iter().find(|p| &p.label == l && !p.empty) {
                    Some(p) => runs.last_mut().map_or((), |r| r.push((x_of(i), y_of(p.value), p.alert))),
                    None => runs.push(Vec::new()),
                }
            }
            for run in runs.iter().filter(|r| !r.is_empty()) {
                let points: Vec<String> = run.iter().map(|(x, y, _)| format!("{x:.1},{y:.1}")).collect();
                let _ = write!(
                    out,
                    r#"<polyline fill="none" stroke="{stroke}" stroke-width="2" points="{}"/>"#,
                    points.join(" ")
                );
                for (x, y, alert) in run {
                    let fill = if *alert { "#d62728" } else { stroke };
                    let _ = write!(out, r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{fill}"/>"#);
                }
            }
            if let Some(t) = s.target {
                let y = y_of(t);
                let _ = write!(
                    out,
                    r#"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="{stroke}" stroke-dasharray="6 4"/>"#,
                    left + plot_w
                );
            }
            let ly = y0 + 14.0 * j as f64;
            let target = s.target.map_or(String::new(), |t| {
                let bound = if s.target_is_minimum { "≥" } else { "≤" };
                format!(" (target {bound} {t})")
            });
            let _ = write!(
                out,
                r#"<rect x="{}" y="{:.1}" width="12" height="3" fill="{stroke}"/><text x="{}" y="{:.1}">{}</text>"#,
                left + plot_w + 20.0,
                ly - 4.0,
                left + plot_w + 38.0,
                ly,
                escape(&format!("{}{target}", column(s)))
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

fn day(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0).map_or(String::new(), |t| t.format("%Y-%m-%d").to_string())
}

/// Renders `report` in `format`.
pub fn render(report: &pb::Report, format: Format) -> String {
    match format {
        Format::Table => table(report),
        Format::Csv => csv(report),
        Format::Svg => svg(report),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> pb::Report {
        let point = |label: &str, value: f64, empty: bool, alert: bool| pb::Point {
            label: label.into(),
            time: None,
            value,
            empty,
            alert,
        };
        pb::Report {
            report: "data-quality".into(),
            granularity: pb::Granularity::Day as i32,
            series: vec![
                pb::Series {
                    metric: "completeness".into(),
                    unit: "ratio".into(),
                    points: vec![
                        point("2026-03-01", 0.97, false, false),
                        point("2026-03-02", 0.0, true, false),
                        point("2026-03-03", 0.93, false, true),
                    ],
                    target: Some(0.95),
                    target_is_minimum: true,
                    ..Default::default()
                },
                pb::Series {
                    metric: "volume".into(),
                    group: "退货, \"急\"".into(),
                    unit: "count".into(),
                    points: vec![point("2026-03-01", 12.0, false, false)],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn csv_has_a_row_per_label_and_quotes_what_needs_it() {
        let text = csv(&report());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], r#"label,completeness,"volume [退货, ""急""]""#);
        assert_eq!(lines[1], "2026-03-01,0.97,12");
        assert_eq!(lines[2], "2026-03-02,,", "a gap stays empty");
        assert_eq!(lines[3], "2026-03-03,0.93,");
    }

    #[test]
    fn the_table_shows_percentages_gaps_and_alerts() {
        let text = table(&report());
        assert!(text.starts_with("data-quality (daily)"), "{text}");
        let completeness = text.lines().find(|l| l.starts_with("completeness")).unwrap();
        assert!(
            completeness.contains("97.00%") && completeness.ends_with("93.00%!"),
            "{completeness}"
        );
    }

    #[test]
    fn the_chart_has_a_panel_per_unit_a_gap_and_the_target() {
        let chart = svg(&report());
        assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
        // completeness: two runs around the gap; volume: one.
        assert_eq!(chart.matches("<polyline").count(), 3);
        assert!(chart.contains("stroke-dasharray"), "the target line");
        assert!(chart.contains("&quot;急&quot;"), "labels escaped");
        assert!(chart.contains(r##"fill="#d62728""##), "the alert point");
        let t = ticks(0.0, 1.0);
        assert_eq!(t.len(), 6);
        assert!((t[1] - 0.2).abs() < 1e-12 && (t[5] - 1.0).abs() < 1e-12, "{t:?}");
        assert!(chart.contains(">20%<") && chart.contains(">100%<"), "ratio ticks in percent");
    }

    #[test]
    fn an_empty_report_says_so() {
        let empty = pb::Report {
            report: "service".into(),
            granularity: pb::Granularity::Week as i32,
            ..Default::default()
        };
        assert_eq!(table(&empty), "service (weekly): nothing in the period\n");
        assert_eq!(csv(&empty), "label\n");
    }

    #[test]
    fn times_parse_as_dates_or_rfc3339() {
        assert_eq!(parse_time("2026-03-01").unwrap().timestamp(), 1_772_323_200);
        assert_eq!(parse_time("2026-03-01T08:00:00+08:00").unwrap().timestamp(), 1_772_323_200);
        assert!(parse_time("March").is_err());
    }
}

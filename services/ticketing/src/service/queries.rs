//! Reading tickets in bulk: lists, comments, the satisfaction survey and the service
//! report.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use crm_platform::{Error, Result, db::begin_write};
use crm_proto::crm::ticketing::v1 as pb;
use prost::Message;

use super::{Ticketing, config::channel_name, decode, etag, micros, sla_json, ticket_id, timestamp};
use crate::{
    domain::{
        calendar::Calendar,
        sla::{Calendars, ClockState},
        ticket::Status,
    },
    store::{self, Log, TicketFilter},
};

/// How long after the first response a customer may change their rating.
const SURVEY_CHANGE_WINDOW_DAYS: i64 = 7;

/// Tickets read per round while building a report.
const REPORT_BATCH: u64 = 2000;

/// A report covers at most this many days.
pub const MAX_REPORT_DAYS: i64 = 366;

impl Ticketing {
    /// A page of tickets, newest first, after `(create_us, id)`.
    pub async fn list_tickets(
        &self,
        filter: &TicketFilter,
        after: Option<&(i64, String)>,
        limit: u64,
    ) -> Result<Vec<pb::Ticket>> {
        store::list_tickets(&self.db, filter, after, limit)
            .await?
            .into_iter()
            .map(|row| {
                let mut t: pb::Ticket = decode(&row.data)?;
                t.etag = etag(row.revision);
                Ok(t)
            })
            .collect()
    }

    /// Comments after `after_seq`, oldest first; internal ones skipped when
    /// `public_only`. Returns (seq, comment).
    pub async fn comments(&self, name: &str, after_seq: i64, limit: u64, public_only: bool) -> Result<Vec<(i64, pb::Comment)>> {
        let id = ticket_id(name)?;
        let mut out = Vec::new();
        let mut after = after_seq;
        loop {
            let page = store::read_log(&self.db, Log::Comments, id, after, limit.max(50)).await?;
            let full = page.len() as u64 == limit.max(50);
            for (seq, data) in page {
                after = seq;
                let mut c: pb::Comment = decode(&data)?;
                if public_only && c.internal {
                    continue;
                }
                c.name = format!("{name}/comments/{seq}");
                out.push((seq, c));
                if out.len() as u64 == limit {
                    return Ok(out);
                }
            }
            if !full {
                return Ok(out);
            }
        }
    }

    /// Records the customer's rating of a solved (or closed) ticket, credited to its
    /// assignee. A second response replaces the first within 7 days of it.
    pub async fn submit_survey(
        &self,
        actor: &str,
        response: pb::SurveyResponse,
        now: DateTime<Utc>,
    ) -> Result<pb::SurveyResponse> {
        let mut bad = Vec::new();
        if !(1..=5).contains(&response.rating) {
            bad.push(crm_platform::FieldViolation::new("survey_response.rating", "1 to 5"));
        }
        if response.comment.chars().count() > 5000 {
            bad.push(crm_platform::FieldViolation::new(
                "survey_response.comment",
                "at most 5000 characters",
            ));
        }
        if ticket_id(&response.ticket).is_err() {
            bad.push(crm_platform::FieldViolation::new(
                "survey_response.ticket",
                "must be tickets/{ticket}",
            ));
        }
        if !bad.is_empty() {
            return Err(Error::InvalidArgument(bad));
        }
        let txn = begin_write(&self.db).await?;
        let mut work = super::tickets::Work::load(self, &txn, &response.ticket, actor, now).await?;
        if work.status().is_active() {
            return Err(Error::FailedPrecondition {
                reason: "TICKET_NOT_SOLVED",
                subject: response.ticket.clone(),
                message: format!("a {} ticket cannot be rated yet", work.status()),
            });
        }
        if let Some(previous) = store::get_survey(&txn, &work.id).await? {
            let previous: pb::SurveyResponse = decode(&previous)?;
            let first = previous.submit_time.map_or(0, |t| t.seconds);
            if now.timestamp() - first > SURVEY_CHANGE_WINDOW_DAYS * 86_400 {
                return Err(Error::FailedPrecondition {
                    reason: "SURVEY_CLOSED",
                    subject: response.ticket.clone(),
                    message: format!("a rating can be changed within {SURVEY_CHANGE_WINDOW_DAYS} days only"),
                });
            }
        }
        let saved = pb::SurveyResponse {
            ticket: response.ticket.clone(),
            agent: work.ticket.assignee.clone(),
            rating: response.rating,
            comment: response.comment.trim().to_owned(),
            submit_time: Some(timestamp(now)),
        };
        store::put_survey(&txn, &work.id, &saved.agent, saved.rating, micros(now), saved.encode_to_vec()).await?;
        work.note(pb::HistoryKind::Survey, format!("rated {}/5", saved.rating));
        work.event(
            "crm.ticketing.v1.SurveySubmitted",
            pb::SurveySubmitted {
                response: Some(saved.clone()),
            }
            .encode_to_vec(),
        );
        let mut loads = super::tickets::Loads::default();
        work.save(&mut loads).await?;
        self.finish(txn, loads).await?;
        Ok(saved)
    }

    /// The service report over tickets created in `[from, to)`.
    pub async fn service_report(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        group_by: pb::ReportGrouping,
        now: DateTime<Utc>,
    ) -> Result<pb::ServiceReport> {
        if to <= from || to - from > Duration::days(MAX_REPORT_DAYS) {
            return Err(Error::invalid(
                "end_time",
                format!("after start_time, at most {MAX_REPORT_DAYS} days later"),
            ));
        }
        let dir = self.directory(&self.db).await?;
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        let mut total = Group::default();
        let mut after: Option<(i64, String)> = None;
        loop {
            let rows = store::tickets_created(&self.db, micros(from), micros(to), after.as_ref(), REPORT_BATCH).await?;
            let Some(last) = rows.last() else { break };
            after = Some((last.0, last.1.clone()));
            let done = (rows.len() as u64) < REPORT_BATCH;
            let ids: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
            let ratings = store::ratings(&self.db, &ids).await?;
            for (_, id, data, sla) in rows {
                let t: pb::Ticket = decode(&data)?;
                let sla = sla_json::decode(&sla)?;
                let business = dir.calendar_of(dir.sla_policy_named(&t.sla_policy));
                let elapsed = Calendar::always();
                let cals = Calendars {
                    business: &business,
                    elapsed: &elapsed,
                };
                let mut fact = Fact {
                    complaint: t.category == "complaint" || t.tags.iter().any(|tag| tag == "complaint"),
                    first_response: between(t.create_time.as_ref(), t.first_response_time.as_ref()),
                    resolution: match super::config::status(t.status) {
                        Some(Status::Solved | Status::Closed) => between(t.create_time.as_ref(), t.solve_time.as_ref()),
                        _ => None,
                    },
                    sla_met: 0,
                    sla_decided: 0,
                    rating: ratings.get(&id).copied(),
                };
                for clock in &sla.clocks {
                    match clock.state(now, &cals) {
                        ClockState::Achieved => {
                            fact.sla_met += 1;
                            fact.sla_decided += 1;
                        }
                        ClockState::Breached => fact.sla_decided += 1,
                        ClockState::Active | ClockState::Paused => {}
                    }
                }
                let key = match group_by {
                    pb::ReportGrouping::Unspecified => String::new(),
                    pb::ReportGrouping::Category => t.category.clone(),
                    pb::ReportGrouping::Queue => t.queue.clone(),
                    pb::ReportGrouping::Agent => t.assignee.clone(),
                    pb::ReportGrouping::Channel => channel_name(t.channel),
                };
                total.add(&fact);
                if group_by != pb::ReportGrouping::Unspecified {
                    groups.entry(key).or_default().add(&fact);
                }
            }
            if done {
                break;
            }
        }
        let mut rows: Vec<pb::ServiceReportRow> = groups.into_iter().map(|(k, g)| g.row(k)).collect();
        rows.sort_by(|a, b| b.volume.cmp(&a.volume).then_with(|| a.key.cmp(&b.key)));
        Ok(pb::ServiceReport {
            rows,
            total: Some(total.row(String::new())),
        })
    }
}

fn between(from: Option<&prost_types::Timestamp>, to: Option<&prost_types::Timestamp>) -> Option<i64> {
    let (from, to) = (from?, to?);
    let ms = |t: &prost_types::Timestamp| t.seconds * 1000 + i64::from(t.nanos / 1_000_000);
    Some((ms(to) - ms(from)).max(0))
}

/// What one ticket contributes to a report.
#[derive(Debug, Clone, Default)]
struct Fact {
    complaint: bool,
    /// Milliseconds.
    first_response: Option<i64>,
    /// Milliseconds.
    resolution: Option<i64>,
    sla_met: i64,
    sla_decided: i64,
    rating: Option<i32>,
}

/// A report group being added up.
#[derive(Debug, Clone, Default)]
struct Group {
    volume: i64,
    complaints: i64,
    first_response: Vec<i64>,
    resolution: Vec<i64>,
    sla_met: i64,
    sla_decided: i64,
    rating_sum: i64,
    ratings: i64,
}

impl Group {
    fn add(&mut self, f: &Fact) {
        self.volume += 1;
        self.complaints += i64::from(f.complaint);
        self.first_response.extend(f.first_response);
        self.resolution.extend(f.resolution);
        self.sla_met += f.sla_met;
        self.sla_decided += f.sla_decided;
        if let Some(r) = f.rating {
            self.rating_sum += i64::from(r);
            self.ratings += 1;
        }
    }

    fn row(mut self, key: String) -> pb::ServiceReportRow {
        let ratio = |a: i64, b: i64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        pb::ServiceReportRow {
            key,
            volume: self.volume,
            complaint_rate: ratio(self.complaints, self.volume),
            first_response: Some(stats(&mut self.first_response)),
            resolution: Some(stats(&mut self.resolution)),
            sla_compliance: ratio(self.sla_met, self.sla_decided),
            csat: ratio(self.rating_sum, self.ratings),
            survey_responses: self.ratings,
        }
    }
}

/// The nearest-rank percentile `p` (0–100) of sorted values (0 when there are none).
fn percentile(sorted: &[i64], p: u32) -> i64 {
    crm_platform::stats::nearest_rank(sorted, p).unwrap_or(0)
}

fn stats(values: &mut [i64]) -> pb::DurationStats {
    values.sort_unstable();
    let duration = |ms: i64| prost_types::Duration {
        seconds: ms / 1000,
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    };
    pb::DurationStats {
        median: Some(duration(percentile(values, 50))),
        p90: Some(duration(percentile(values, 90))),
        count: values.len() as i64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<i64> = (1..=10).collect();
        assert_eq!(percentile(&v, 50), 5);
        assert_eq!(percentile(&v, 90), 9);
        assert_eq!(percentile(&[7], 90), 7);
        assert_eq!(percentile(&[], 50), 0);
    }

    #[test]
    fn groups_add_up() {
        let mut g = Group::default();
        g.add(&Fact {
            complaint: true,
            first_response: Some(1000),
            resolution: Some(10_000),
            sla_met: 2,
            sla_decided: 2,
            rating: Some(5),
        });
        g.add(&Fact {
            complaint: false,
            first_response: Some(3000),
            resolution: None,
            sla_met: 0,
            sla_decided: 1,
            rating: Some(2),
        });
        let row = g.row("how_to".into());
        assert_eq!(row.volume, 2);
        assert!((row.complaint_rate - 0.5).abs() < 1e-9);
        assert_eq!(row.first_response.as_ref().unwrap().median.as_ref().unwrap().seconds, 1);
        assert_eq!(row.first_response.as_ref().unwrap().count, 2);
        assert_eq!(row.resolution.as_ref().unwrap().count, 1);
        assert!((row.sla_compliance - 2.0 / 3.0).abs() < 1e-9);
        assert!((row.csat - 3.5).abs() < 1e-9);
    }
}

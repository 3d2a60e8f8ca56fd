//! SLA clocks. A policy gives a ticket targets per metric (first response, next
//! response, resolution), each counted in business hours of a calendar or in elapsed
//! time. A clock banks the time counted so far and runs from `running_since`; it pauses
//! while the ticket waits on the customer, stops when its metric is achieved, and a
//! reopened ticket resumes its resolution clock where it stopped.
//!
//! Escalation points are percentages of a target (75 warns, 100 is the breach, 150 is
//! half the target again past it). [`Sla::due_points`] says when each falls due; a
//! point is identified by `(metric, clock start, percent)`, so a new next-response
//! clock gets new points and a point never fires twice for the same clock.

use chrono::{DateTime, Duration, Utc};

use super::{
    calendar::{Calendar, CalendarError},
    ticket::Status,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Ticket created → first public reply by an agent.
    FirstResponse,
    /// Customer reply → the agent's next public reply.
    NextResponse,
    /// Ticket created → solved, without the time spent waiting on the customer.
    Resolution,
}

impl Metric {
    pub const ALL: [Metric; 3] = [Metric::FirstResponse, Metric::NextResponse, Metric::Resolution];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::FirstResponse => "first_response",
            Metric::NextResponse => "next_response",
            Metric::Resolution => "resolution",
        }
    }
}

/// One target of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub metric: Metric,
    pub within: Duration,
    /// Counted in the policy's calendar; otherwise in elapsed time.
    pub business_hours: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockState {
    Active,
    Paused,
    Achieved,
    Breached,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clock {
    pub metric: Metric,
    pub target: Duration,
    pub business_hours: bool,
    /// When this clock (this cycle of its metric) started; identifies its points.
    pub started_at: DateTime<Utc>,
    /// Time counted before the current running stretch.
    pub banked: Duration,
    /// Start of the current running stretch; `None` while paused or stopped.
    pub running_since: Option<DateTime<Utc>>,
    pub achieved_at: Option<DateTime<Utc>>,
}

/// The calendars a ticket's clocks count in: its policy's, and elapsed time.
pub struct Calendars<'a> {
    pub business: &'a Calendar,
    pub elapsed: &'a Calendar,
}

impl Calendars<'_> {
    fn of(&self, clock: &Clock) -> &Calendar {
        if clock.business_hours { self.business } else { self.elapsed }
    }
}

impl Clock {
    fn start(target: Target, at: DateTime<Utc>) -> Self {
        Self {
            metric: target.metric,
            target: target.within,
            business_hours: target.business_hours,
            started_at: at,
            banked: Duration::zero(),
            running_since: Some(at),
            achieved_at: None,
        }
    }

    /// Time counted up to `now`.
    pub fn elapsed(&self, now: DateTime<Utc>, cals: &Calendars) -> Duration {
        self.banked
            + self
                .running_since
                .map_or(Duration::zero(), |since| cals.of(self).business_between(since, now))
    }

    pub fn remaining(&self, now: DateTime<Utc>, cals: &Calendars) -> Duration {
        self.target - self.elapsed(now, cals)
    }

    pub fn state(&self, now: DateTime<Utc>, cals: &Calendars) -> ClockState {
        let over = self.elapsed(now, cals) > self.target;
        match (self.achieved_at, self.running_since, over) {
            (_, _, true) => ClockState::Breached,
            (Some(_), _, false) => ClockState::Achieved,
            (None, Some(_), false) => ClockState::Active,
            (None, None, false) => ClockState::Paused,
        }
    }

    /// When `percent` of the target will have been counted, if the clock runs.
    pub fn point_at(&self, percent: u32, cals: &Calendars) -> Result<Option<DateTime<Utc>>, CalendarError> {
        let Some(since) = self.running_since else {
            return Ok(None);
        };
        let threshold = self.target * i32::try_from(percent).unwrap_or(i32::MAX) / 100;
        let left = threshold - self.banked;
        if left <= Duration::zero() {
            // Passed before this stretch began: due as soon as it runs.
            return Ok(Some(since));
        }
        cals.of(self).add_business(since, left).map(Some)
    }

    fn pause(&mut self, at: DateTime<Utc>, cals: &Calendars) {
        if let Some(since) = self.running_since.take() {
            self.banked += cals.of(self).business_between(since, at);
        }
    }

    fn resume(&mut self, at: DateTime<Utc>) {
        if self.achieved_at.is_none() && self.running_since.is_none() {
            self.running_since = Some(at);
        }
    }

    fn achieve(&mut self, at: DateTime<Utc>, cals: &Calendars) {
        if self.achieved_at.is_none() {
            self.pause(at, cals);
            self.achieved_at = Some(at);
        }
    }
}

/// What happened to the ticket, as far as its clocks care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Created,
    /// A public reply by an agent.
    AgentReplied,
    /// A reply by the customer.
    CustomerReplied,
    StatusChanged {
        from: Status,
        to: Status,
    },
}

/// An escalation point that falls due at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuePoint {
    pub metric: Metric,
    pub clock_started_at: DateTime<Utc>,
    pub percent: u32,
    pub at: DateTime<Utc>,
}

/// A ticket's clocks under its current targets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sla {
    pub clocks: Vec<Clock>,
    targets: Vec<Target>,
    /// The ticket's status as the clocks last saw it.
    waiting_on_customer: bool,
}

impl Sla {
    /// Clocks for a ticket just created under `targets`.
    pub fn new(targets: Vec<Target>) -> Self {
        Self {
            clocks: Vec::new(),
            targets,
            waiting_on_customer: false,
        }
    }

    /// Rebuilds an SLA from stored clocks.
    pub fn restore(targets: Vec<Target>, clocks: Vec<Clock>, waiting_on_customer: bool) -> Self {
        Self {
            clocks,
            targets,
            waiting_on_customer,
        }
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    pub fn waiting_on_customer(&self) -> bool {
        self.waiting_on_customer
    }

    pub fn clock(&self, metric: Metric) -> Option<&Clock> {
        self.clocks.iter().find(|c| c.metric == metric)
    }

    fn target(&self, metric: Metric) -> Option<Target> {
        self.targets.iter().copied().find(|t| t.metric == metric)
    }

    fn clock_mut(&mut self, metric: Metric) -> Option<&mut Clock> {
        self.clocks.iter_mut().find(|c| c.metric == metric)
    }

    /// Starts (or restarts) the clock of `metric` if the policy targets it.
    fn start(&mut self, metric: Metric, at: DateTime<Utc>) {
        let Some(target) = self.target(metric) else {
            return;
        };
        let mut clock = Clock::start(target, at);
        if self.waiting_on_customer {
            clock.running_since = None;
        }
        self.clocks.retain(|c| c.metric != metric);
        self.clocks.push(clock);
        self.clocks.sort_by_key(|c| c.metric);
    }

    /// Applies what happened at `at`.
    pub fn on(&mut self, event: Event, at: DateTime<Utc>, cals: &Calendars) {
        match event {
            Event::Created => {
                self.start(Metric::FirstResponse, at);
                self.start(Metric::Resolution, at);
            }
            Event::AgentReplied => {
                for metric in [Metric::FirstResponse, Metric::NextResponse] {
                    if let Some(c) = self.clock_mut(metric) {
                        c.achieve(at, cals);
                    }
                }
            }
            Event::CustomerReplied => {
                let answered = self.clock(Metric::FirstResponse).is_none_or(|c| c.achieved_at.is_some());
                let waiting = self.clock(Metric::NextResponse).is_some_and(|c| c.achieved_at.is_none());
                if answered && !waiting {
                    self.start(Metric::NextResponse, at);
                }
            }
            Event::StatusChanged { from, to } => self.status_changed(from, to, at, cals),
        }
    }

    fn status_changed(&mut self, from: Status, to: Status, at: DateTime<Utc>, cals: &Calendars) {
        match to {
            Status::PendingCustomer => {
                self.waiting_on_customer = true;
                for c in &mut self.clocks {
                    c.pause(at, cals);
                }
            }
            Status::Solved | Status::Closed => {
                self.waiting_on_customer = false;
                // Solving answers the customer and ends the work.
                for c in &mut self.clocks {
                    c.achieve(at, cals);
                }
            }
            Status::New | Status::Open | Status::OnHold => {
                self.waiting_on_customer = false;
                if from == Status::Solved {
                    // Reopened: resolution counts on from where it stopped.
                    if let Some(c) = self.clock_mut(Metric::Resolution) {
                        c.achieved_at = None;
                    }
                }
                for c in &mut self.clocks {
                    c.resume(at);
                }
            }
        }
    }

    /// New targets (the policy changed, e.g. with the priority): clocks keep the time
    /// counted; metrics no longer targeted stop counting; a newly targeted metric
    /// starts if the ticket would already be counting it.
    pub fn retarget(&mut self, targets: Vec<Target>, status: Status, at: DateTime<Utc>) {
        self.targets = targets;
        let targets = self.targets.clone();
        self.clocks.retain(|c| targets.iter().any(|t| t.metric == c.metric));
        for t in &targets {
            if let Some(c) = self.clock_mut(t.metric) {
                c.target = t.within;
                c.business_hours = t.business_hours;
            } else if status.is_active() && t.metric != Metric::NextResponse {
                self.start(t.metric, at);
            }
        }
    }

    /// The escalation points still ahead for running clocks, for the given
    /// percentages (100 is the breach), earliest first.
    pub fn due_points(&self, percents: &[u32], cals: &Calendars) -> Result<Vec<DuePoint>, CalendarError> {
        let mut points = Vec::new();
        for c in self.clocks.iter().filter(|c| c.achieved_at.is_none()) {
            for &percent in percents {
                if let Some(at) = c.point_at(percent, cals)? {
                    points.push(DuePoint {
                        metric: c.metric,
                        clock_started_at: c.started_at,
                        percent,
                        at,
                    });
                }
            }
        }
        points.sort_by_key(|p| (p.at, p.metric, p.percent));
        Ok(points)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;

    use chrono::{NaiveDateTime, NaiveTime, TimeZone};
    use chrono_tz::Tz;

    use super::*;
    use crate::domain::calendar::Shift;

    const TZ: Tz = Tz::Asia__Shanghai;

    fn at(local: &str) -> DateTime<Utc> {
        let naive = NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M").unwrap();
        TZ.from_local_datetime(&naive).earliest().unwrap().with_timezone(&Utc)
    }

    fn office() -> Calendar {
        let day = vec![Shift::new(
            NaiveTime::from_hms_opt(9, 0, 0).unwrap(),
            NaiveTime::from_hms_opt(18, 0, 0).unwrap(),
        )];
        let week = [day.clone(), day.clone(), day.clone(), day.clone(), day, vec![], vec![]];
        Calendar::new(TZ, week, BTreeSet::new()).unwrap()
    }

    /// "Respond within 2 hours, resolve within 24 hours", in business hours; next
    /// response within 4 elapsed hours.
    fn targets() -> Vec<Target> {
        vec![
            Target {
                metric: Metric::FirstResponse,
                within: Duration::hours(2),
                business_hours: true,
            },
            Target {
                metric: Metric::NextResponse,
                within: Duration::hours(4),
                business_hours: false,
            },
            Target {
                metric: Metric::Resolution,
                within: Duration::hours(24),
                business_hours: true,
            },
        ]
    }

    #[test]
    fn a_ticket_through_its_life() {
        let office = office();
        let always = Calendar::always();
        let cals = Calendars {
            business: &office,
            elapsed: &always,
        };
        let mut sla = Sla::new(targets());
        // Created Friday 17:00: first response due Monday 10:00 (business hours).
        sla.on(Event::Created, at("2026-11-27 17:00"), &cals);
        let first = sla.clock(Metric::FirstResponse).unwrap();
        assert_eq!(first.point_at(100, &cals).unwrap(), Some(at("2026-11-30 10:00")));
        assert_eq!(first.point_at(75, &cals).unwrap(), Some(at("2026-11-30 09:30")));
        assert_eq!(first.state(at("2026-11-30 09:59"), &cals), ClockState::Active);
        assert_eq!(first.state(at("2026-11-30 10:01"), &cals), ClockState::Breached);

        // Answered Monday 09:30: achieved within target.
        sla.on(Event::AgentReplied, at("2026-11-30 09:30"), &cals);
        let first = sla.clock(Metric::FirstResponse).unwrap();
        assert_eq!(first.state(at("2026-12-30 00:00"), &cals), ClockState::Achieved);
        assert_eq!(first.elapsed(at("2026-12-30 00:00"), &cals), Duration::minutes(90));

        // The customer answers: a next-response clock in elapsed hours.
        sla.on(Event::CustomerReplied, at("2026-11-30 11:00"), &cals);
        let next = sla.clock(Metric::NextResponse).unwrap();
        assert_eq!(next.point_at(100, &cals).unwrap(), Some(at("2026-11-30 15:00")));

        // Waiting on the customer from 12:00 to Tuesday 12:00 pauses every clock.
        sla.on(
            Event::StatusChanged {
                from: Status::Open,
                to: Status::PendingCustomer,
            },
            at("2026-11-30 12:00"),
            &cals,
        );
        let resolution = sla.clock(Metric::Resolution).unwrap();
        // Fri 17-18 and Mon 9-12: 4 business hours counted.
        assert_eq!(resolution.elapsed(at("2026-12-01 12:00"), &cals), Duration::hours(4));
        assert_eq!(resolution.state(at("2026-12-01 12:00"), &cals), ClockState::Paused);
        assert!(
            sla.due_points(&[75, 100], &cals).unwrap().is_empty(),
            "nothing falls due while paused"
        );
        sla.on(
            Event::StatusChanged {
                from: Status::PendingCustomer,
                to: Status::Open,
            },
            at("2026-12-01 12:00"),
            &cals,
        );
        // 20 business hours left from Tuesday 12:00: Tue 6 h, Wed 9 h, Thu 5 h → Thu 14:00.
        let resolution = sla.clock(Metric::Resolution).unwrap();
        assert_eq!(resolution.point_at(100, &cals).unwrap(), Some(at("2026-12-03 14:00")));
        // The next-response clock resumed with 1 of its 4 elapsed hours used.
        let next = sla.clock(Metric::NextResponse).unwrap();
        assert_eq!(next.point_at(100, &cals).unwrap(), Some(at("2026-12-01 15:00")));

        // Solved Wednesday 10:00, reopened Friday 09:00: resolution counts on.
        sla.on(
            Event::StatusChanged {
                from: Status::Open,
                to: Status::Solved,
            },
            at("2026-12-02 10:00"),
            &cals,
        );
        assert_eq!(
            sla.clock(Metric::Resolution).unwrap().state(at("2026-12-04 08:00"), &cals),
            ClockState::Achieved
        );
        sla.on(
            Event::StatusChanged {
                from: Status::Solved,
                to: Status::Open,
            },
            at("2026-12-04 09:00"),
            &cals,
        );
        let resolution = sla.clock(Metric::Resolution).unwrap();
        // Counted: 4 + Tue 6 + Wed 1 = 11 h; 13 h left from Friday 09:00 → Monday 13:00.
        assert_eq!(resolution.elapsed(at("2026-12-04 09:00"), &cals), Duration::hours(11));
        assert_eq!(resolution.point_at(100, &cals).unwrap(), Some(at("2026-12-07 13:00")));
        assert_eq!(resolution.state(at("2026-12-07 13:01"), &cals), ClockState::Breached);
    }

    #[test]
    fn due_points_name_their_clock_cycle() {
        let office = office();
        let always = Calendar::always();
        let cals = Calendars {
            business: &office,
            elapsed: &always,
        };
        let mut sla = Sla::new(targets());
        sla.on(Event::Created, at("2026-11-30 09:00"), &cals);
        let points = sla.due_points(&[75, 100, 150], &cals).unwrap();
        let first: Vec<_> = points.iter().filter(|p| p.metric == Metric::FirstResponse).collect();
        assert_eq!(
            first.iter().map(|p| (p.percent, p.at)).collect::<Vec<_>>(),
            vec![
                (75, at("2026-11-30 10:30")),
                (100, at("2026-11-30 11:00")),
                (150, at("2026-11-30 12:00"))
            ]
        );
        assert!(points.windows(2).all(|w| w[0].at <= w[1].at));
        sla.on(Event::AgentReplied, at("2026-11-30 09:10"), &cals);
        sla.on(Event::CustomerReplied, at("2026-11-30 10:00"), &cals);
        sla.on(Event::AgentReplied, at("2026-11-30 10:30"), &cals);
        sla.on(Event::CustomerReplied, at("2026-11-30 16:00"), &cals);
        let next = sla.clock(Metric::NextResponse).unwrap();
        assert_eq!(next.started_at, at("2026-11-30 16:00"), "a new cycle");
        let points = sla.due_points(&[100], &cals).unwrap();
        assert!(
            points
                .iter()
                .any(|p| p.metric == Metric::NextResponse && p.clock_started_at == at("2026-11-30 16:00"))
        );
        // A second customer message before the answer does not restart the clock.
        sla.on(Event::CustomerReplied, at("2026-11-30 17:00"), &cals);
        assert_eq!(sla.clock(Metric::NextResponse).unwrap().started_at, at("2026-11-30 16:00"));
    }

    #[test]
    fn points_passed_while_paused_fall_due_on_resume() {
        let always = Calendar::always();
        let cals = Calendars {
            business: &always,
            elapsed: &always,
        };
        let mut sla = Sla::new(vec![Target {
            metric: Metric::Resolution,
            within: Duration::hours(10),
            business_hours: false,
        }]);
        let t0 = at("2026-11-30 00:00");
        sla.on(Event::Created, t0, &cals);
        sla.on(
            Event::StatusChanged {
                from: Status::New,
                to: Status::PendingCustomer,
            },
            t0 + Duration::hours(8),
            &cals,
        );
        sla.on(
            Event::StatusChanged {
                from: Status::PendingCustomer,
                to: Status::Open,
            },
            t0 + Duration::hours(30),
            &cals,
        );
        let points = sla.due_points(&[75, 100], &cals).unwrap();
        assert_eq!(points[0].percent, 75);
        assert_eq!(points[0].at, t0 + Duration::hours(30), "75 % was passed before the pause");
        assert_eq!(points[1].at, t0 + Duration::hours(32));
    }

    #[test]
    fn retargeting_keeps_counted_time() {
        let always = Calendar::always();
        let cals = Calendars {
            business: &always,
            elapsed: &always,
        };
        let t0 = at("2026-11-30 00:00");
        let mut sla = Sla::new(vec![Target {
            metric: Metric::Resolution,
            within: Duration::hours(24),
            business_hours: false,
        }]);
        sla.on(Event::Created, t0, &cals);
        // Raised to urgent after 3 hours: resolve within 4 hours, first response within 1.
        sla.retarget(
            vec![
                Target {
                    metric: Metric::Resolution,
                    within: Duration::hours(4),
                    business_hours: false,
                },
                Target {
                    metric: Metric::FirstResponse,
                    within: Duration::hours(1),
                    business_hours: false,
                },
            ],
            Status::Open,
            t0 + Duration::hours(3),
        );
        let resolution = sla.clock(Metric::Resolution).unwrap();
        assert_eq!(resolution.point_at(100, &cals).unwrap(), Some(t0 + Duration::hours(4)));
        let first = sla.clock(Metric::FirstResponse).unwrap();
        assert_eq!(first.point_at(100, &cals).unwrap(), Some(t0 + Duration::hours(4)));
    }
}

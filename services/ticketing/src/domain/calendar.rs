//! Business-hours calendars: a time zone, weekly opening hours (a shift may run past
//! midnight), and holidays. Two operations drive every SLA clock: how much business
//! time lies between two instants ([`Calendar::business_between`]) and when a given
//! amount of it will have elapsed ([`Calendar::add_business`]).
//!
//! Opening hours are local wall-clock times, so a day of daylight-saving change has
//! one hour more or less of them. A local time that does not exist (the hour skipped
//! in spring) starts at the transition; an ambiguous one (the hour repeated in
//! autumn) is its first occurrence. A holiday closes the shifts that start on it.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Days, Duration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

const MINUTES_PER_DAY: u32 = 24 * 60;

/// How far ahead a calendar is searched for opening hours: ten years. A calendar with
/// hours has them every week, so only holidays can stretch a search this far.
const HORIZON_DAYS: u64 = 3660;

/// One opening interval of a weekday, in minutes after local midnight; `end` may pass
/// 1440 (a shift that ends the next morning) but not 2880.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Shift {
    pub start: u32,
    pub end: u32,
}

impl Shift {
    /// `09:00`–`18:00`, or `22:00`–`06:00` for a shift into the next day.
    pub fn new(start: NaiveTime, end: NaiveTime) -> Self {
        let minutes = |t: NaiveTime| t.signed_duration_since(NaiveTime::MIN).num_minutes().unsigned_abs() as u32;
        let (start, end) = (minutes(start), minutes(end));
        Self {
            start,
            end: if end <= start { end + MINUTES_PER_DAY } else { end },
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CalendarError {
    #[error("a shift of {0} overlaps another shift")]
    Overlap(chrono::Weekday),
    #[error("a shift longer than a day on {0}")]
    TooLong(chrono::Weekday),
    #[error("the calendar has no opening hours")]
    Empty,
    #[error("no opening hours within ten years (holidays cover them all)")]
    NoHoursAhead,
}

/// Business hours in one time zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Calendar {
    tz: Tz,
    /// Monday first.
    week: [Vec<Shift>; 7],
    holidays: BTreeSet<NaiveDate>,
}

impl Calendar {
    /// Every hour of every day, in UTC: business time is elapsed time.
    pub fn always() -> Self {
        let day = vec![Shift {
            start: 0,
            end: MINUTES_PER_DAY,
        }];
        Self {
            tz: Tz::UTC,
            week: std::array::from_fn(|_| day.clone()),
            holidays: BTreeSet::new(),
        }
    }

    /// A calendar from its weekly shifts (Monday first) and holidays. Shifts may not
    /// overlap, also across midnight into the next day's first shift.
    pub fn new(tz: Tz, mut week: [Vec<Shift>; 7], holidays: BTreeSet<NaiveDate>) -> Result<Self, CalendarError> {
        let mut all = Vec::new();
        for (day, shifts) in week.iter_mut().enumerate() {
            shifts.sort();
            let weekday = weekday(day);
            for s in shifts.iter() {
                if s.end <= s.start || s.end - s.start > MINUTES_PER_DAY || s.end > 2 * MINUTES_PER_DAY {
                    return Err(CalendarError::TooLong(weekday));
                }
                let offset = day as u32 * MINUTES_PER_DAY;
                all.push((offset + s.start, offset + s.end, weekday));
            }
        }
        if all.is_empty() {
            return Err(CalendarError::Empty);
        }
        all.sort_by_key(|&(start, end, _)| (start, end));
        let week_minutes = 7 * MINUTES_PER_DAY;
        for (i, &(_, end, day)) in all.iter().enumerate() {
            // The next shift in the cyclic week (Sunday's overnight shift runs into Monday).
            let (next_start, _, _) = all[(i + 1) % all.len()];
            let next_start = if i + 1 == all.len() {
                next_start + week_minutes
            } else {
                next_start
            };
            if all.len() > 1 && end > next_start {
                return Err(CalendarError::Overlap(day));
            }
        }
        Ok(Self { tz, week, holidays })
    }

    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// Business time in `[from, to)`; zero when `to` is not after `from`.
    pub fn business_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
        let mut total = Duration::zero();
        if to <= from {
            return total;
        }
        for (start, end) in self.open_intervals(from) {
            if start >= to {
                break;
            }
            total += end.min(to) - start;
        }
        total
    }

    /// The instant at which `amount` of business time has passed since `from`. An
    /// amount of zero is `from` itself, even outside opening hours.
    pub fn add_business(&self, from: DateTime<Utc>, amount: Duration) -> Result<DateTime<Utc>, CalendarError> {
        if amount <= Duration::zero() {
            return Ok(from);
        }
        let mut left = amount;
        for (start, end) in self.open_intervals(from) {
            let open = end - start;
            if open >= left {
                return Ok(start + left);
            }
            left -= open;
        }
        Err(CalendarError::NoHoursAhead)
    }

    /// Whether `at` is within opening hours.
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        self.open_intervals(at).next().is_some_and(|(start, _)| start == at)
    }

    /// Opening intervals in UTC, in order, clipped to start at `from` or later.
    fn open_intervals(&self, from: DateTime<Utc>) -> impl Iterator<Item = (DateTime<Utc>, DateTime<Utc>)> + '_ {
        // Yesterday's overnight shift may still be open at `from`.
        let first_day = from.with_timezone(&self.tz).date_naive() - Days::new(1);
        (0..HORIZON_DAYS)
            .filter_map(move |n| first_day.checked_add_days(Days::new(n)))
            .filter(|day| !self.holidays.contains(day))
            .flat_map(move |day| {
                let midnight = day.and_time(NaiveTime::MIN);
                self.week[day.weekday().num_days_from_monday() as usize].iter().map(move |s| {
                    let start = self.instant(midnight + Duration::minutes(i64::from(s.start)));
                    let end = self.instant(midnight + Duration::minutes(i64::from(s.end)));
                    (start.max(from), end)
                })
            })
            .filter(|(start, end)| start < end)
    }

    /// The instant of a local wall-clock time: the first one when it is ambiguous, the
    /// end of the gap when it was skipped.
    fn instant(&self, local: NaiveDateTime) -> DateTime<Utc> {
        if let Some(t) = self.tz.from_local_datetime(&local).earliest() {
            return t.with_timezone(&Utc);
        }
        // In a gap: the first valid minute after it (gaps last at most a few hours).
        let mut probe = local;
        for _ in 0..(4 * 60) {
            probe += Duration::minutes(1);
            if let Some(t) = self.tz.from_local_datetime(&probe).earliest() {
                return t.with_timezone(&Utc);
            }
        }
        // Unreachable with real zone data; treat the time as UTC rather than fail.
        Utc.from_utc_datetime(&local)
    }
}

fn weekday(index: usize) -> chrono::Weekday {
    chrono::Weekday::try_from(u8::try_from(index).unwrap_or(0)).unwrap_or(chrono::Weekday::Mon)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn t(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).unwrap()
    }

    fn shift(start: (u32, u32), end: (u32, u32)) -> Shift {
        Shift::new(t(start.0, start.1), t(end.0, end.1))
    }

    /// Monday to Friday with the same shifts; weekends closed.
    fn weekdays(tz: Tz, shifts: &[Shift], holidays: &[&str]) -> Calendar {
        let day: Vec<Shift> = shifts.to_vec();
        let week = [day.clone(), day.clone(), day.clone(), day.clone(), day, vec![], vec![]];
        let holidays = holidays.iter().map(|d| d.parse().unwrap()).collect();
        Calendar::new(tz, week, holidays).unwrap()
    }

    /// A local time in `tz` as UTC.
    fn at(tz: Tz, local: &str) -> DateTime<Utc> {
        let naive = NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M").unwrap();
        tz.from_local_datetime(&naive).earliest().unwrap().with_timezone(&Utc)
    }

    fn hours(h: i64) -> Duration {
        Duration::hours(h)
    }

    #[test]
    fn adding_business_time() {
        let sh = Tz::Asia__Shanghai;
        let office = weekdays(sh, &[shift((9, 0), (18, 0))], &["2026-10-01", "2026-10-02"]);
        let split = weekdays(sh, &[shift((9, 0), (12, 0)), shift((13, 0), (18, 0))], &[]);
        let night = weekdays(sh, &[shift((22, 0), (6, 0))], &[]);
        let cases: &[(&str, &Calendar, &str, Duration, &str)] = &[
            ("within a day", &office, "2026-11-23 10:00", hours(2), "2026-11-23 12:00"),
            ("before opening", &office, "2026-11-23 07:30", hours(1), "2026-11-23 10:00"),
            ("over the evening", &office, "2026-11-23 17:00", hours(2), "2026-11-24 10:00"),
            ("over the weekend", &office, "2026-11-27 17:00", hours(2), "2026-11-30 10:00"),
            ("from a Saturday", &office, "2026-11-28 11:00", hours(1), "2026-11-30 10:00"),
            (
                "24 business hours",
                &office,
                "2026-11-23 09:00",
                hours(24),
                "2026-11-25 15:00",
            ),
            ("over holidays", &office, "2026-09-30 17:00", hours(2), "2026-10-05 10:00"),
            (
                "exactly at closing",
                &office,
                "2026-11-23 09:00",
                hours(9),
                "2026-11-23 18:00",
            ),
            ("lunch break", &split, "2026-11-23 11:00", hours(2), "2026-11-23 14:00"),
            ("overnight shift", &night, "2026-11-23 23:00", hours(3), "2026-11-24 02:00"),
            (
                "into the next night",
                &night,
                "2026-11-24 05:00",
                hours(2),
                "2026-11-24 23:00",
            ),
            (
                "Friday night ends Saturday morning",
                &night,
                "2026-11-28 05:00",
                hours(2),
                "2026-11-30 23:00",
            ),
            ("zero", &office, "2026-11-28 11:00", Duration::zero(), "2026-11-28 11:00"),
        ];
        for (name, calendar, from, amount, due) in cases {
            let from = at(sh, from);
            let got = calendar.add_business(from, *amount).unwrap();
            assert_eq!(got, at(sh, due), "{name}");
            assert_eq!(calendar.business_between(from, got), *amount, "{name}: round trip");
        }
    }

    #[test]
    fn business_time_between() {
        let sh = Tz::Asia__Shanghai;
        let office = weekdays(sh, &[shift((9, 0), (18, 0))], &["2026-12-25"]);
        let cases: &[(&str, &str, &str, Duration)] = &[
            ("one day", "2026-11-23 00:00", "2026-11-24 00:00", hours(9)),
            ("a week", "2026-11-23 00:00", "2026-11-30 00:00", hours(45)),
            ("weekend only", "2026-11-28 00:00", "2026-11-30 00:00", Duration::zero()),
            ("holiday week", "2026-12-21 00:00", "2026-12-28 00:00", hours(36)),
            ("partial", "2026-11-23 17:30", "2026-11-24 09:30", Duration::minutes(60)),
            ("reversed", "2026-11-24 00:00", "2026-11-23 00:00", Duration::zero()),
        ];
        for (name, from, to, expected) in cases {
            assert_eq!(office.business_between(at(sh, from), at(sh, to)), *expected, "{name}");
        }
    }

    #[test]
    fn daylight_saving_days_have_more_or_fewer_hours() {
        let ny = Tz::America__New_York;
        let berlin = Tz::Europe__Berlin;
        let full = |tz| Calendar::new(tz, std::array::from_fn(|_| vec![shift((0, 0), (0, 0))]), BTreeSet::new()).unwrap();
        // 2026-03-08: New York skips 02:00-03:00; 2026-10-25: Berlin repeats 02:00-03:00.
        assert_eq!(
            full(ny).business_between(at(ny, "2026-03-07 12:00"), at(ny, "2026-03-08 12:00")),
            hours(23)
        );
        assert_eq!(
            full(berlin).business_between(at(berlin, "2026-10-24 12:00"), at(berlin, "2026-10-25 12:00")),
            hours(25)
        );
        // A night shift across the skipped hour is an hour shorter.
        let night = Calendar::new(ny, std::array::from_fn(|_| vec![shift((1, 0), (4, 0))]), BTreeSet::new()).unwrap();
        assert_eq!(
            night.business_between(at(ny, "2026-03-08 00:00"), at(ny, "2026-03-09 00:00")),
            hours(2)
        );
        assert_eq!(
            night.add_business(at(ny, "2026-03-08 01:30"), hours(1)).unwrap(),
            at(ny, "2026-03-08 03:30")
        );
        // And one across the repeated hour is an hour longer.
        let night = Calendar::new(berlin, std::array::from_fn(|_| vec![shift((1, 0), (4, 0))]), BTreeSet::new()).unwrap();
        assert_eq!(
            night.business_between(at(berlin, "2026-10-25 00:00"), at(berlin, "2026-10-26 00:00")),
            hours(4)
        );
        // Office hours keep their local times after the change.
        let office = weekdays(ny, &[shift((9, 0), (17, 0))], &[]);
        assert_eq!(
            office.add_business(at(ny, "2026-03-06 16:00"), hours(2)).unwrap(),
            at(ny, "2026-03-09 10:00")
        );
    }

    #[test]
    fn always_is_elapsed_time() {
        let always = Calendar::always();
        let from = at(Tz::UTC, "2026-03-08 01:00");
        assert_eq!(always.add_business(from, hours(30)).unwrap(), from + hours(30));
        assert_eq!(always.business_between(from, from + hours(50)), hours(50));
        assert!(always.is_open(from));
    }

    #[test]
    fn round_trips_at_many_instants() {
        // Deterministic pseudo-random instants and amounts over a year, four zones.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for tz in [
            Tz::Asia__Shanghai,
            Tz::America__New_York,
            Tz::Europe__Berlin,
            Tz::Australia__Sydney,
        ] {
            let calendar = weekdays(
                tz,
                &[shift((8, 30), (12, 0)), shift((13, 0), (17, 30)), shift((23, 0), (1, 0))],
                &["2026-04-03", "2026-12-25"],
            );
            let base = at(tz, "2026-01-01 00:00");
            for _ in 0..400 {
                let from = base + Duration::minutes(next(365 * 24 * 60) as i64);
                let amount = Duration::minutes(next(80 * 60) as i64);
                let due = calendar.add_business(from, amount).unwrap();
                assert_eq!(calendar.business_between(from, due), amount, "{tz} {from} + {amount}");
                assert!(due >= from);
            }
        }
    }

    #[test]
    fn invalid_calendars_are_refused() {
        let overlap = [
            vec![shift((9, 0), (12, 0)), shift((11, 0), (18, 0))],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
        ];
        assert_eq!(
            Calendar::new(Tz::UTC, overlap, BTreeSet::new()),
            Err(CalendarError::Overlap(chrono::Weekday::Mon))
        );
        // Sunday night runs into Monday's early shift.
        let mut cyclic: [Vec<Shift>; 7] = std::array::from_fn(|_| vec![]);
        cyclic[0] = vec![shift((5, 0), (9, 0))];
        cyclic[6] = vec![shift((22, 0), (6, 0))];
        assert_eq!(
            Calendar::new(Tz::UTC, cyclic, BTreeSet::new()),
            Err(CalendarError::Overlap(chrono::Weekday::Sun))
        );
        assert_eq!(
            Calendar::new(Tz::UTC, std::array::from_fn(|_| vec![]), BTreeSet::new()),
            Err(CalendarError::Empty)
        );
        let mut one: [Vec<Shift>; 7] = std::array::from_fn(|_| vec![]);
        one[2] = vec![shift((9, 0), (10, 0))];
        let all_wednesdays: BTreeSet<NaiveDate> = (0..600)
            .map(|w| "2026-11-25".parse::<NaiveDate>().unwrap() + Days::new(7 * w))
            .collect();
        let closed = Calendar::new(Tz::UTC, one, all_wednesdays).unwrap();
        assert_eq!(
            closed.add_business(at(Tz::UTC, "2026-11-24 00:00"), hours(1)),
            Err(CalendarError::NoHoursAhead)
        );
    }
}

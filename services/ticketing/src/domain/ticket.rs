//! The ticket vocabulary the rules speak: status and its allowed moves, priority.

use std::fmt;

/// Where a ticket stands. `PendingCustomer` waits on the customer (SLA clocks pause);
/// `OnHold` waits on a third party (clocks keep running).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    New,
    Open,
    PendingCustomer,
    OnHold,
    Solved,
    Closed,
}

impl Status {
    /// Whether a ticket may move from `self` to `to`. Closed is final; a solved
    /// ticket reopens (to open) or closes; anything open may be solved.
    pub fn may_become(self, to: Status) -> bool {
        use Status::*;
        match (self, to) {
            (a, b) if a == b => false,
            (Closed, _) => false,
            (_, New) => false,
            (Solved, Open | Closed) => true,
            (Solved, _) => false,
            (New | Open | PendingCustomer | OnHold, _) => true,
        }
    }

    pub fn is_active(self) -> bool {
        !matches!(self, Status::Solved | Status::Closed)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::New => "new",
            Status::Open => "open",
            Status::PendingCustomer => "pending-customer",
            Status::OnHold => "on-hold",
            Status::Solved => "solved",
            Status::Closed => "closed",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    Low,
    Normal,
    High,
    Urgent,
}

impl Priority {
    /// One step up; urgent stays urgent.
    pub fn raised(self) -> Priority {
        match self {
            Priority::Low => Priority::Normal,
            Priority::Normal => Priority::High,
            Priority::High | Priority::Urgent => Priority::Urgent,
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_moves() {
        use Status::*;
        let cases = [
            (New, Open, true),
            (New, Solved, true),
            (Open, PendingCustomer, true),
            (PendingCustomer, Open, true),
            (OnHold, Solved, true),
            (Solved, Open, true),
            (Solved, Closed, true),
            (Solved, PendingCustomer, false),
            (Closed, Open, false),
            (Open, New, false),
            (Open, Open, false),
        ];
        for (from, to, ok) in cases {
            assert_eq!(from.may_become(to), ok, "{from} -> {to}");
        }
    }

    #[test]
    fn priority_rises_to_urgent() {
        assert_eq!(Priority::Low.raised(), Priority::Normal);
        assert_eq!(Priority::High.raised(), Priority::Urgent);
        assert_eq!(Priority::Urgent.raised(), Priority::Urgent);
    }
}

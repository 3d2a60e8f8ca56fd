//! Campaigns: an audience from segments, one message on one channel, runs on a
//! schedule; per recipient a durable delivery, checked (consent, suppression,
//! frequency cap, quiet hours) when due and sent through the channel's provider;
//! opens, clicks, unsubscribes and conversions tracked.
//!
//! - [`template`]: message variables, checked on save and filled per recipient;
//! - [`store`]: campaigns, deliveries, suppressions, the forward queue;
//! - [`runs`]: the scheduler that starts runs and queues their deliveries;
//! - [`dispatch`]: claims due deliveries, decides and sends them;
//! - [`channels`]: the providers (SMTP, HTTP) behind one interface;
//! - [`tracking`]: signed links and the HTTP endpoint for opens, clicks, unsubscribes;
//! - [`contacts`]: the contacts the projection keeps, sealed at rest;
//! - [`forward`]: touches and unsubscribes sent on to customer-profile.

pub mod api;
pub mod attribution;
pub mod channels;
pub mod contacts;
pub mod dispatch;
pub mod forward;
pub mod manage;
pub mod runs;
pub mod send_time;
pub mod store;
pub mod template;
pub mod touches;
pub mod tracking;

use chrono::{DateTime, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use crm_platform::{
    Error, FieldViolation, Result,
    feed::{duration_micros, from_micros, micros},
};
use crm_proto::crm::{customer::v1 as cpb, segmentation::v1 as pb};
use serde::Deserialize;

pub use template::Template;

const MICROS: i64 = 1_000_000;
const HOUR_US: i64 = 3_600 * MICROS;
const DAY_US: i64 = 24 * HOUR_US;

/// A channel a campaign can send on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Sms,
    Email,
    Wechat,
    Push,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::Sms, Channel::Email, Channel::Wechat, Channel::Push];

    pub fn from_proto(c: i32) -> Option<Self> {
        match cpb::ContactChannel::try_from(c).ok()? {
            cpb::ContactChannel::Sms => Some(Self::Sms),
            cpb::ContactChannel::Email => Some(Self::Email),
            cpb::ContactChannel::Wechat => Some(Self::Wechat),
            cpb::ContactChannel::AppPush => Some(Self::Push),
            _ => None,
        }
    }

    pub fn to_proto(self) -> cpb::ContactChannel {
        match self {
            Self::Sms => cpb::ContactChannel::Sms,
            Self::Email => cpb::ContactChannel::Email,
            Self::Wechat => cpb::ContactChannel::Wechat,
            Self::Push => cpb::ContactChannel::AppPush,
        }
    }

    /// The channel of the interactions recorded for it in customer-profile.
    pub fn interaction_channel(self) -> crm_proto::crm::common::v1::Channel {
        use crm_proto::crm::common::v1::Channel as C;
        match self {
            Self::Sms => C::Sms,
            Self::Email => C::Email,
            Self::Wechat => C::Wechat,
            Self::Push => C::App,
        }
    }

    /// The configuration key and log name.
    pub fn key(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Email => "email",
            Self::Wechat => "wechat",
            Self::Push => "push",
        }
    }
}

/// `HH:MM` as minutes after midnight.
pub fn parse_clock(s: &str) -> Option<u32> {
    let t = NaiveTime::parse_from_str(s, "%H:%M").ok()?;
    (s.len() == 5).then(|| t.hour() * 60 + t.minute())
}

/// Quiet hours in minutes after midnight; `start > end` spans midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quiet {
    pub start: u32,
    pub end: u32,
}

impl Quiet {
    /// When a message due at `at` in zone `tz` may go: `at` itself, or the end of
    /// the quiet hours it falls in.
    pub fn release(&self, at: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        if self.start == self.end {
            return at;
        }
        let local = at.with_timezone(&tz);
        let minute = local.hour() * 60 + local.minute();
        let quiet = if self.start < self.end {
            minute >= self.start && minute < self.end
        } else {
            minute >= self.start || minute < self.end
        };
        if !quiet {
            return at;
        }
        let mut date = local.date_naive();
        if self.start > self.end && minute >= self.start {
            date = date.succ_opt().unwrap_or(date);
        }
        local_instant(tz, date, self.end).unwrap_or(at)
    }
}

/// `minutes` after midnight on `date` in `tz` as an instant (the earlier of two in a
/// fold, the first valid minute after a gap).
fn local_instant(tz: Tz, date: chrono::NaiveDate, minutes: u32) -> Option<DateTime<Utc>> {
    let naive = date.and_hms_opt(minutes / 60, minutes % 60, 0)?;
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
        chrono::LocalResult::None => {
            let later = naive + chrono::Duration::hours(1);
            tz.from_local_datetime(&later).earliest().map(|t| t.with_timezone(&Utc))
        }
    }
}

/// When a recipient in `tz` is due in a run that starts at `run_start`: at once, or
/// at `local_minutes` on the run's date in their zone (at once if that has passed).
pub fn due_at(run_start: DateTime<Utc>, local_minutes: Option<u32>, tz: Tz) -> DateTime<Utc> {
    let Some(minutes) = local_minutes else { return run_start };
    let date = run_start.with_timezone(&tz).date_naive();
    match local_instant(tz, date, minutes) {
        Some(t) if t > run_start => t,
        _ => run_start,
    }
}

/// A time zone by IANA name.
pub fn zone(name: &str) -> Option<Tz> {
    name.parse::<Tz>().ok()
}

/// Whether a customer is held back in the control group of `campaign`: a stable
/// draw per (campaign, customer), so every run and replica agrees.
pub fn in_control(campaign: &str, person: &str, share: f64) -> bool {
    if share <= 0.0 {
        return false;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(campaign.as_bytes())
        .chain_update([0u8])
        .chain_update(person.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // Uniform in [0, 1).
    let draw = (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64;
    draw < share
}

/// `[segmentation.campaigns]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct CampaignsConfig {
    /// How often the scheduler and the dispatcher look for due work.
    pub poll_interval_ms: u64,
    /// Deliveries claimed and sent per batch.
    pub batch_size: usize,
    /// Requests in flight to a provider at once.
    pub send_concurrency: usize,
    /// Tries before a delivery fails for good.
    pub max_attempts: i32,
    /// The first retry's delay; doubled for each further one (at most an hour).
    pub retry_base_secs: u64,
    /// How long a claimed delivery is held before it counts as abandoned (a crash).
    pub lease_secs: u64,
    /// Recipients queued per transaction when a run starts.
    pub enqueue_chunk: usize,
    /// Time zone of recipients without a valid `time_zone` attribute.
    pub default_time_zone: String,
    /// Default quiet hours `HH:MM-HH:MM` (recipient's zone); empty for none.
    pub quiet_hours: String,
    /// Default frequency cap per customer and channel: at most this many messages
    /// (0: no cap) within `frequency_window_hours`.
    pub frequency_max_messages: i32,
    pub frequency_window_hours: i64,
    /// The external-id source of a customer's WeChat OpenID.
    pub wechat_id_source: String,
    /// The external-id source of a customer's app push token.
    pub push_token_source: String,
    /// customer-profile's `source` for the interactions this service records there.
    pub interaction_source: String,
    /// Send-time optimisation: the population prior's weight, in engagements.
    pub send_time_prior_weight: f64,
}

impl CampaignsConfig {
    pub fn validate(&self) -> std::result::Result<(), crm_platform::config::ConfigError> {
        use crm_platform::config::ConfigError;
        let key = |k: &str| format!("segmentation.campaigns.{k}");
        if self.poll_interval_ms == 0 {
            return Err(ConfigError::invalid(key("poll_interval_ms"), "at least 1"));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(ConfigError::invalid(key("batch_size"), "1 to 10000"));
        }
        if !(1..=1024).contains(&self.send_concurrency) {
            return Err(ConfigError::invalid(key("send_concurrency"), "1 to 1024"));
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(ConfigError::invalid(key("max_attempts"), "1 to 100"));
        }
        if self.lease_secs < 10 {
            return Err(ConfigError::invalid(key("lease_secs"), "at least 10"));
        }
        if !(1..=100_000).contains(&self.enqueue_chunk) {
            return Err(ConfigError::invalid(key("enqueue_chunk"), "1 to 100000"));
        }
        if zone(&self.default_time_zone).is_none() {
            return Err(ConfigError::invalid(
                key("default_time_zone"),
                "an IANA time zone such as Asia/Shanghai",
            ));
        }
        if !self.quiet_hours.is_empty() && self.quiet().is_none() {
            return Err(ConfigError::invalid(key("quiet_hours"), "HH:MM-HH:MM, or empty"));
        }
        if self.frequency_max_messages < 0 || !(1..=2160).contains(&self.frequency_window_hours) {
            return Err(ConfigError::invalid(
                key("frequency_window_hours"),
                "1 to 2160 (and frequency_max_messages not negative)",
            ));
        }
        if !(0.0..=10_000.0).contains(&self.send_time_prior_weight) {
            return Err(ConfigError::invalid(key("send_time_prior_weight"), "0 to 10000"));
        }
        if self.interaction_source.is_empty() {
            return Err(ConfigError::invalid(key("interaction_source"), "a source id"));
        }
        Ok(())
    }

    /// The configured default quiet hours.
    pub fn quiet(&self) -> Option<Quiet> {
        let (a, b) = self.quiet_hours.split_once('-')?;
        Some(Quiet {
            start: parse_clock(a.trim())?,
            end: parse_clock(b.trim())?,
        })
    }

    pub fn zone(&self) -> Tz {
        zone(&self.default_time_zone).unwrap_or(Tz::UTC)
    }
}

/// A frequency cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub max: i64,
    pub window_us: i64,
}

/// A campaign's validated settings, as the scheduler and dispatcher use them.
#[derive(Debug, Clone)]
pub struct Definition {
    pub channel: Channel,
    pub purpose: cpb::ConsentPurpose,
    pub segments: Vec<String>,
    pub exclude_segments: Vec<String>,
    pub suppression_tags: Vec<String>,
    pub subject: Template,
    pub body: Template,
    pub html_body: Template,
    pub link: String,
    pub wechat_template_id: String,
    pub start_us: Option<i64>,
    pub local_minutes: Option<u32>,
    pub zone: Tz,
    pub repeat_us: Option<i64>,
    pub end_us: Option<i64>,
    /// Send-time optimisation within this window.
    pub send_time_window_us: Option<i64>,
    pub cap: Option<Cap>,
    pub quiet: Option<Quiet>,
    pub control_share: f64,
    pub conversion_window_us: i64,
}

impl Definition {
    /// Every variable the message reads.
    pub fn paths(&self) -> std::collections::BTreeSet<&str> {
        let mut all = self.subject.paths();
        all.extend(self.body.paths());
        all.extend(self.html_body.paths());
        all
    }
}

fn segment_names(names: &[String], field: &str, required: bool, out: &mut Vec<FieldViolation>) -> Vec<String> {
    if required && names.is_empty() {
        out.push(FieldViolation::new(field, "at least one segment"));
    }
    if names.len() > 20 {
        out.push(FieldViolation::new(field, "at most 20"));
    }
    let mut ids = Vec::new();
    for (i, n) in names.iter().enumerate() {
        match n.strip_prefix("segments/").filter(|id| crate::tags::valid_id(id)) {
            Some(id) => ids.push(id.to_owned()),
            None => out.push(FieldViolation::new(format!("{field}[{i}]"), "must be `segments/{segment}`")),
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

fn template(text: &str, field: &str, traits: &dyn Fn(&str) -> bool, out: &mut Vec<FieldViolation>) -> Template {
    Template::parse(text, traits).unwrap_or_else(|e| {
        out.push(FieldViolation::new(field, e.to_string()));
        Template::default()
    })
}

fn check_url(url: &str) -> bool {
    url.parse::<http::Uri>()
        .ok()
        .is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty()))
}

/// Validates a campaign as given (`field` is its path in the request, e.g.
/// `campaign`), reporting every problem at once.
pub fn validate(c: &pb::Campaign, field: &str, traits: &dyn Fn(&str) -> bool, cfg: &CampaignsConfig) -> Result<Definition> {
    validate_with(c, field, traits, cfg, true)
}

/// [`validate`], with the audience optional (a journey's send step has none: the
/// journey chooses its recipients).
pub fn validate_with(
    c: &pb::Campaign,
    field: &str,
    traits: &dyn Fn(&str) -> bool,
    cfg: &CampaignsConfig,
    audience_required: bool,
) -> Result<Definition> {
    let mut v = Vec::new();
    let f = |name: &str| format!("{field}.{name}");
    let n = c.display_name.chars().count();
    if !(1..=100).contains(&n) {
        v.push(FieldViolation::new(f("display_name"), "required, 1 to 100 characters"));
    }
    if c.description.chars().count() > 1000 {
        v.push(FieldViolation::new(f("description"), "at most 1000 characters"));
    }
    let channel = Channel::from_proto(c.channel);
    if channel.is_none() {
        v.push(FieldViolation::new(f("channel"), "required: SMS, EMAIL, WECHAT or APP_PUSH"));
    }
    let purpose = match c.purpose {
        0 => cpb::ConsentPurpose::Marketing,
        p => cpb::ConsentPurpose::try_from(p).unwrap_or_else(|_| {
            v.push(FieldViolation::new(f("purpose"), "not a consent purpose"));
            cpb::ConsentPurpose::Marketing
        }),
    };
    let audience = c.audience.clone().unwrap_or_default();
    if c.audience.is_none() && audience_required {
        v.push(FieldViolation::new(f("audience"), "required"));
    }
    let segments = segment_names(
        &audience.segments,
        &f("audience.segments"),
        c.audience.is_some() && audience_required,
        &mut v,
    );
    let exclude_segments = segment_names(&audience.exclude_segments, &f("audience.exclude_segments"), false, &mut v);
    if audience.suppression_tags.len() > 20 {
        v.push(FieldViolation::new(f("audience.suppression_tags"), "at most 20"));
    }
    let mut suppression_tags = Vec::new();
    for (i, t) in audience.suppression_tags.iter().enumerate() {
        match t.strip_prefix("tags/").filter(|id| crate::tags::valid_id(id)) {
            Some(id) => suppression_tags.push(id.to_owned()),
            None => v.push(FieldViolation::new(
                format!("{}[{i}]", f("audience.suppression_tags")),
                "must be `tags/{tag}`",
            )),
        }
    }
    let m = c.message.clone().unwrap_or_default();
    if c.message.is_none() {
        v.push(FieldViolation::new(f("message"), "required"));
    }
    let body_max = if channel == Some(Channel::Sms) { 500 } else { 5000 };
    let body_len = m.body.chars().count();
    if c.message.is_some() && !(1..=body_max).contains(&body_len) {
        v.push(FieldViolation::new(
            f("message.body"),
            format!("required, at most {body_max} characters"),
        ));
    }
    let needs_subject = matches!(channel, Some(Channel::Email | Channel::Push));
    if c.message.is_some() && needs_subject && m.subject.trim().is_empty() {
        v.push(FieldViolation::new(f("message.subject"), "required for EMAIL and APP_PUSH"));
    }
    if m.subject.chars().count() > 200 {
        v.push(FieldViolation::new(f("message.subject"), "at most 200 characters"));
    }
    if !m.html_body.is_empty() && channel != Some(Channel::Email) {
        v.push(FieldViolation::new(f("message.html_body"), "for EMAIL only"));
    }
    if m.html_body.chars().count() > 100_000 {
        v.push(FieldViolation::new(f("message.html_body"), "at most 100000 characters"));
    }
    if channel == Some(Channel::Wechat) && m.wechat_template_id.trim().is_empty() {
        v.push(FieldViolation::new(f("message.wechat_template_id"), "required for WECHAT"));
    }
    if !m.link.is_empty() && !check_url(&m.link) {
        v.push(FieldViolation::new(f("message.link"), "an http:// or https:// URL"));
    }
    let subject = template(&m.subject, &f("message.subject"), traits, &mut v);
    let body = template(&m.body, &f("message.body"), traits, &mut v);
    let html_body = template(&m.html_body, &f("message.html_body"), traits, &mut v);
    for (t, name) in [(&subject, "subject"), (&body, "body"), (&html_body, "html_body")] {
        if m.link.is_empty() && t.paths().contains(template::LINK_URL) {
            v.push(FieldViolation::new(
                f(&format!("message.{name}")),
                "uses `link_url` but `message.link` is empty",
            ));
        }
    }
    let s = c.schedule.clone().unwrap_or_default();
    let local_minutes = if s.local_time.is_empty() {
        None
    } else {
        let m = parse_clock(&s.local_time);
        if m.is_none() {
            v.push(FieldViolation::new(f("schedule.local_time"), "HH:MM"));
        }
        m
    };
    let zone = if s.default_time_zone.is_empty() {
        cfg.zone()
    } else {
        zone(&s.default_time_zone).unwrap_or_else(|| {
            v.push(FieldViolation::new(
                f("schedule.default_time_zone"),
                "an IANA time zone such as Asia/Shanghai",
            ));
            Tz::UTC
        })
    };
    let repeat_us = s.repeat_interval.as_ref().map(duration_micros);
    if repeat_us.is_some_and(|r| r < HOUR_US) {
        v.push(FieldViolation::new(f("schedule.repeat_interval"), "at least one hour"));
    }
    let send_time_window_us = if s.optimize_send_time {
        let w = s.send_time_window.as_ref().map(duration_micros).unwrap_or(DAY_US);
        if !(HOUR_US..=7 * DAY_US).contains(&w) {
            v.push(FieldViolation::new(f("schedule.send_time_window"), "one hour to 7 days"));
        }
        if local_minutes.is_some() {
            v.push(FieldViolation::new(
                f("schedule.optimize_send_time"),
                "not with `local_time`: choose one way to time the messages",
            ));
        }
        Some(w)
    } else {
        if s.send_time_window.is_some() {
            v.push(FieldViolation::new(
                f("schedule.send_time_window"),
                "only with `optimize_send_time`",
            ));
        }
        None
    };
    let start_us = s.start_time.as_ref().map(micros);
    let end_us = s.end_time.as_ref().map(micros);
    if let (Some(a), Some(b)) = (start_us, end_us)
        && b < a
    {
        v.push(FieldViolation::new(f("schedule.end_time"), "before start_time"));
    }
    let cap = match &c.frequency_cap {
        Some(cap) => {
            let window = cap.window.as_ref().map(duration_micros).unwrap_or(0);
            if cap.max_messages < 1 {
                v.push(FieldViolation::new(f("frequency_cap.max_messages"), "at least 1"));
            }
            if !(HOUR_US..=90 * DAY_US).contains(&window) {
                v.push(FieldViolation::new(f("frequency_cap.window"), "one hour to 90 days"));
            }
            Some(Cap {
                max: i64::from(cap.max_messages),
                window_us: window,
            })
        }
        None if cfg.frequency_max_messages > 0 => Some(Cap {
            max: i64::from(cfg.frequency_max_messages),
            window_us: cfg.frequency_window_hours * HOUR_US,
        }),
        None => None,
    };
    let quiet = match &c.quiet_hours {
        Some(q) => match (parse_clock(&q.start), parse_clock(&q.end)) {
            (Some(start), Some(end)) => Some(Quiet { start, end }),
            _ => {
                v.push(FieldViolation::new(f("quiet_hours"), "start and end as HH:MM"));
                None
            }
        },
        None => cfg.quiet(),
    };
    if !(0.0..=0.5).contains(&c.control_share) {
        v.push(FieldViolation::new(f("control_share"), "0 to 0.5"));
    }
    let conversion_window_us = c.conversion_window.as_ref().map(duration_micros).unwrap_or(7 * DAY_US);
    if !(HOUR_US..=90 * DAY_US).contains(&conversion_window_us) {
        v.push(FieldViolation::new(f("conversion_window"), "one hour to 90 days"));
    }
    if !v.is_empty() {
        return Err(Error::InvalidArgument(v));
    }
    Ok(Definition {
        channel: channel.unwrap_or(Channel::Email),
        purpose,
        segments,
        exclude_segments,
        suppression_tags,
        subject,
        body,
        html_body,
        link: m.link,
        wechat_template_id: m.wechat_template_id,
        start_us,
        local_minutes,
        zone,
        repeat_us,
        end_us,
        send_time_window_us,
        cap,
        quiet,
        control_share: c.control_share,
        conversion_window_us,
    })
}

/// The settings part of a campaign, as stored: what was given, with output-only
/// fields cleared.
pub fn settings(c: &pb::Campaign) -> pb::Campaign {
    pb::Campaign {
        name: String::new(),
        display_name: c.display_name.clone(),
        description: c.description.clone(),
        channel: c.channel,
        purpose: if c.purpose == 0 {
            cpb::ConsentPurpose::Marketing as i32
        } else {
            c.purpose
        },
        audience: c.audience.clone(),
        message: c.message.clone(),
        schedule: c.schedule.clone(),
        frequency_cap: c.frequency_cap,
        quiet_hours: c.quiet_hours.clone(),
        control_share: c.control_share,
        conversion_window: c.conversion_window,
        ..Default::default()
    }
}

/// The start of the run after one that started at `last_start`, if any is due.
/// Runs missed meanwhile (the previous one lasted longer than the interval, or the
/// scheduler was down) are skipped, never fired back to back.
pub fn next_run(def: &Definition, last_start_us: i64, now_us: i64) -> Option<i64> {
    let repeat = def.repeat_us?.max(1);
    let mut next = last_start_us.checked_add(repeat)?;
    if next <= now_us {
        let missed = (now_us - next) / repeat + 1;
        next = next.checked_add(missed.checked_mul(repeat)?)?;
    }
    match def.end_us {
        Some(end) if next > end => None,
        _ => Some(next),
    }
}

/// When a retry after `attempts` failed tries is due: base × 2^(attempts-1), at most an hour.
pub fn backoff_us(base_secs: u64, attempts: i32) -> i64 {
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(0);
    let secs = base_secs.max(1).saturating_mul(1u64 << exp).min(3600);
    i64::try_from(secs).unwrap_or(3600) * MICROS
}

/// A stored campaign as the API shows it.
pub fn to_proto(c: &store::CampaignRow) -> pb::Campaign {
    pb::Campaign {
        name: format!("campaigns/{}", c.id),
        state: c.state as i32,
        runs: c.runs,
        next_run_time: c.next_run_us.map(from_micros),
        create_time: Some(from_micros(c.create_us)),
        update_time: Some(from_micros(c.update_us)),
        etag: format!("\"{}\"", c.revision),
        ..c.settings.clone()
    }
}

/// The feed event of a campaign's change.
pub fn changed_event(c: &store::CampaignRow, deleted: bool, actor: &str) -> crm_platform::feed::NewEvent {
    use prost::Message;
    crm_platform::feed::NewEvent {
        event_type: "crm.segmentation.v1.CampaignChanged",
        subject: format!("campaigns/{}", c.id),
        actor: actor.to_owned(),
        data: pb::CampaignChanged {
            campaign: Some(to_proto(c)),
            deleted,
        }
        .encode_to_vec(),
    }
}

/// The definition of a stored campaign (checked when saved; traits it names may
/// have gone since, which makes those recipients' messages fail to render).
pub fn stored_definition(c: &store::CampaignRow, cfg: &CampaignsConfig) -> Result<Definition> {
    validate_with(&c.settings, "campaign", &|_| true, cfg, c.journey_id.is_empty())
}

/// Whether an order in this status counts as placed (not cancelled or refunded).
pub fn is_placed(status: i32) -> bool {
    matches!(
        cpb::OrderStatus::try_from(status),
        Ok(cpb::OrderStatus::Pending
            | cpb::OrderStatus::Paid
            | cpb::OrderStatus::Shipped
            | cpb::OrderStatus::Completed
            | cpb::OrderStatus::PartiallyRefunded)
    )
}

/// What the projection of customer-profile's feed does for campaigns: keeps the
/// contacts, credits orders to the deliveries before them, forgets the erased.
#[derive(Debug, Clone)]
pub struct ProjectionHooks {
    pub contacts: contacts::Contacts,
    /// customer-profile's `source` for the interactions recorded there.
    pub source: String,
    /// Journeys triggered (or waiting) on interactions and orders.
    pub journeys: Option<crate::journeys::engine::Engine>,
}

impl ProjectionHooks {
    pub async fn customer<C: sea_orm::ConnectionTrait>(&self, conn: &C, id: &str, c: &cpb::Customer) -> Result<()> {
        let now = Utc::now().timestamp_micros();
        self.contacts.save(conn, id, &self.contacts.of(c), now).await
    }

    /// An interaction of `person`: journeys it triggers or ends a wait of.
    pub async fn interaction<C: sea_orm::ConnectionTrait>(
        &self,
        conn: &C,
        person: &str,
        kind: i32,
        category: &str,
    ) -> Result<()> {
        match &self.journeys {
            Some(j) => {
                j.observed(
                    conn,
                    person,
                    crate::journeys::engine::Observed::Interaction { kind, category },
                )
                .await
            }
            None => Ok(()),
        }
    }

    /// An order of `person` (`customers/{c}/orders/{o}`): a conversion of every
    /// delivery within its campaign's window before it; journeys it triggers or
    /// ends a wait of, when `newly_placed` (recorded now, or moved from a status that
    /// was not a placed one).
    pub async fn order<C: sea_orm::ConnectionTrait>(
        &self,
        conn: &C,
        person: &str,
        order: &cpb::Order,
        name: &str,
        categories: &[String],
        newly_placed: bool,
    ) -> Result<()> {
        let placed = is_placed(order.status);
        let Some(place_us) = order.place_time.as_ref().map(crm_platform::feed::micros) else {
            return Ok(());
        };
        if !placed {
            return Ok(());
        }
        // Journeys see an order once: when it is placed, not at each status after.
        if let Some(j) = &self.journeys
            && newly_placed
        {
            j.observed(conn, person, crate::journeys::engine::Observed::Order { categories })
                .await?;
        }
        let conversions = store::convert(conn, &[person], name, place_us, order.total_micros, &order.currency).await?;
        let touches: Vec<touches::Touch> = conversions
            .into_iter()
            .map(|c| touches::Touch {
                control: c.control,
                order: name.to_owned(),
                revenue_micros: order.total_micros,
                currency: order.currency.clone(),
                ..touches::Touch::new(c.key, pb::TouchKind::Converted, c.channel, place_us)
            })
            .collect();
        touches::record(conn, &touches, &self.source, Utc::now().timestamp_micros()).await
    }

    pub async fn erased<C: sea_orm::ConnectionTrait>(&self, conn: &C, ids: &[String]) -> Result<()> {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        store::erase(conn, &ids).await?;
        crate::journeys::store::erase(conn, &ids).await
    }
}

#[cfg(test)]
mod tests;

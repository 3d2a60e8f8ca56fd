//! Tracking: signed, expiring links in every message, and the HTTP endpoint beside
//! gRPC that answers them.
//!
//! - `GET /o/{token}`: the open pixel (a 1×1 GIF, whatever the token);
//! - `GET /c/{token}`: a click, redirected (302) to the campaign's link;
//! - `GET /u/{token}`: a page asking to confirm the unsubscribe (so that mail
//!   scanners following links do not unsubscribe anyone);
//! - `POST /u/{token}`: the unsubscribe itself (RFC 8058 one-click): the person is
//!   suppressed on the channel at once, and the consent withdrawal is queued for
//!   customer-profile.
//!
//! A token names the delivery (campaign, run, person) and its purpose, carries an
//! expiry and an HMAC-SHA256 tag over all of it.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use crm_platform::{
    Result,
    db::begin_write,
    feed::Feed,
    http::{Response, respond},
};
use crm_proto::crm::{customer::v1 as cpb, segmentation::v1 as pb};
use hmac::{KeyInit, Mac};
use prost::Message;
use sea_orm::DatabaseConnection;
use serde::Deserialize;

use super::{
    forward,
    store::{self, Key},
    touches::{self, Touch},
};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Bytes of the HMAC kept in a token.
const TAG_BYTES: usize = 16;

/// `[segmentation.tracking]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct TrackingConfig {
    /// Where the endpoint listens, e.g. `0.0.0.0:8090`; empty: not served by this
    /// process (another replica or an ingress serves it).
    pub listen: String,
    /// The endpoint's address as recipients reach it, e.g. `https://t.shop.example`.
    pub public_url: String,
    /// The HMAC key of the links; the same on every replica. Empty: derived from
    /// `auth.jwt_secret` (development only).
    pub secret: String,
    /// How long links work.
    pub link_ttl_days: u32,
}

impl TrackingConfig {
    pub fn validate(&self) -> std::result::Result<(), crm_platform::config::ConfigError> {
        use crm_platform::config::ConfigError;
        let url_ok = (self.public_url.starts_with("http://") || self.public_url.starts_with("https://"))
            && self.public_url.parse::<http::Uri>().is_ok();
        // Empty: derived from the address listened on (local use).
        if !(url_ok || (self.public_url.is_empty() && !self.listen.is_empty())) {
            return Err(ConfigError::invalid(
                "segmentation.tracking.public_url",
                "an http:// or https:// URL recipients can reach (required when `listen` is empty)",
            ));
        }
        if !self.listen.is_empty() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::invalid("segmentation.tracking.listen", "host:port, or empty"));
        }
        if !(1..=3650).contains(&self.link_ttl_days) {
            return Err(ConfigError::invalid("segmentation.tracking.link_ttl_days", "1 to 3650"));
        }
        Ok(())
    }
}

/// What a link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Open,
    Click,
    Unsubscribe,
}

impl Purpose {
    fn code(self) -> &'static str {
        match self {
            Self::Open => "o",
            Self::Click => "c",
            Self::Unsubscribe => "u",
        }
    }
    fn from_code(s: &str) -> Option<Self> {
        match s {
            "o" => Some(Self::Open),
            "c" => Some(Self::Click),
            "u" => Some(Self::Unsubscribe),
            _ => None,
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Invalid,
    Expired,
}

/// Makes and checks links.
#[derive(Clone)]
pub struct Links {
    mac: Arc<HmacSha256>,
    public_url: String,
    ttl_secs: i64,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

impl Links {
    pub fn new(secret: &[u8], public_url: &str, ttl_days: u32) -> anyhow::Result<Self> {
        anyhow::ensure!(!secret.is_empty(), "the link secret is empty");
        Ok(Self {
            mac: Arc::new(<HmacSha256 as KeyInit>::new_from_slice(secret)?),
            public_url: public_url.trim_end_matches('/').to_owned(),
            ttl_secs: i64::from(ttl_days) * 86_400,
        })
    }

    fn tag(&self, payload: &[u8]) -> Vec<u8> {
        let mut mac = (*self.mac).clone();
        mac.update(payload);
        mac.finalize().into_bytes()[..TAG_BYTES].to_vec()
    }

    /// A token for `purpose` of delivery `key`, valid from `now_secs` for the TTL.
    pub fn token(&self, purpose: Purpose, key: &Key, now_secs: i64) -> String {
        let payload = format!(
            "{}|{}|{}|{}|{}",
            purpose.code(),
            key.campaign_id,
            key.run,
            key.person_id,
            now_secs + self.ttl_secs
        );
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload.as_bytes()),
            URL_SAFE_NO_PAD.encode(self.tag(payload.as_bytes()))
        )
    }

    /// The URL of a token for `purpose`.
    pub fn url(&self, purpose: Purpose, key: &Key, now_secs: i64) -> String {
        format!(
            "{}/{}/{}",
            self.public_url,
            purpose.code(),
            self.token(purpose, key, now_secs)
        )
    }

    /// The purpose and delivery of a genuine, unexpired token.
    pub fn check(&self, token: &str, now_secs: i64) -> std::result::Result<(Purpose, Key), Refused> {
        let (payload, tag) = token.split_once('.').ok_or(Refused::Invalid)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| Refused::Invalid)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| Refused::Invalid)?;
        if tag.len() != TAG_BYTES {
            return Err(Refused::Invalid);
        }
        let mut mac = (*self.mac).clone();
        mac.update(&payload);
        mac.verify_truncated_left(&tag).map_err(|_| Refused::Invalid)?;
        let text = String::from_utf8(payload).map_err(|_| Refused::Invalid)?;
        let parts: Vec<&str> = text.split('|').collect();
        let [code, campaign, run, person, expiry] = parts.as_slice() else {
            return Err(Refused::Invalid);
        };
        let purpose = Purpose::from_code(code).ok_or(Refused::Invalid)?;
        let expiry: i64 = expiry.parse().map_err(|_| Refused::Invalid)?;
        if expiry < now_secs {
            return Err(Refused::Expired);
        }
        Ok((
            purpose,
            Key {
                person_id: (*person).to_owned(),
                campaign_id: (*campaign).to_owned(),
                run: run.parse().map_err(|_| Refused::Invalid)?,
            },
        ))
    }
}

/// The smallest transparent GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0x21, 0xf9,
    0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00,
    0x3b,
];

const HTML: &str = "text/html; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Records what the links report.
#[derive(Clone)]
pub struct Tracker {
    db: DatabaseConnection,
    feed: Feed,
    links: Links,
    source: String,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker").finish_non_exhaustive()
    }
}

/// What a recorded touch led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded now, or before; for a click, where to.
    Done { redirect: Option<String> },
    /// No sent delivery with that key (never sent, or its campaign deleted).
    Unknown,
}

impl Tracker {
    pub fn new(db: DatabaseConnection, feed: Feed, links: Links, source: &str) -> Self {
        Self {
            db,
            feed,
            links,
            source: source.to_owned(),
        }
    }

    pub fn links(&self) -> &Links {
        &self.links
    }

    /// Records `purpose` for delivery `key` at `now_us` (only the first of each kind
    /// counts; a click also counts as an open when none was seen).
    pub async fn record(&self, purpose: Purpose, key: &Key, now_us: i64) -> Result<Recorded> {
        // Run 0 is a preview's (`RenderCampaignMessage`): it tracks nothing.
        if key.run == 0 {
            return Ok(Recorded::Unknown);
        }
        let txn = begin_write(&self.db).await?;
        let sent = store::sent_channel(&txn, key).await?;
        let campaign = store::get(&txn, &key.campaign_id).await?;
        let mut touches = Vec::new();
        let mut redirect = None;
        match (purpose, sent) {
            (Purpose::Open, Some(channel)) => {
                first(&txn, key, channel, now_us, pb::TouchKind::Opened, &mut touches).await?;
            }
            (Purpose::Click, Some(channel)) => {
                first(&txn, key, channel, now_us, pb::TouchKind::Opened, &mut touches).await?;
                first(&txn, key, channel, now_us, pb::TouchKind::Clicked, &mut touches).await?;
                redirect = campaign
                    .as_ref()
                    .and_then(|c| c.settings.message.as_ref())
                    .map(|m| m.link.clone())
                    .filter(|l| !l.is_empty());
            }
            (Purpose::Open | Purpose::Click, None) => return Ok(Recorded::Unknown),
            (Purpose::Unsubscribe, _) => {
                // Honoured whatever became of the delivery or its campaign since: the
                // link is signed. The channel is the delivery's, else the campaign's,
                // else every channel.
                let channel = match sent {
                    Some(c) => Some(c),
                    None => match store::delivery_channel(&txn, key).await? {
                        Some(c) => Some(c),
                        None => campaign.as_ref().map(|c| c.settings.channel).filter(|c| *c != 0),
                    },
                };
                if let Some(c) = sent {
                    first(&txn, key, c, now_us, pb::TouchKind::Unsubscribed, &mut touches).await?;
                }
                let channels: Vec<i32> = match channel {
                    Some(c) => vec![c],
                    None => super::Channel::ALL.iter().map(|c| c.to_proto() as i32).collect(),
                };
                let purpose = campaign
                    .as_ref()
                    .map_or(cpb::ConsentPurpose::Marketing as i32, |c| c.settings.purpose);
                for channel in &channels {
                    store::suppress(&txn, &key.person_id, *channel, "unsubscribed", now_us).await?;
                }
                let withdrawal = cpb::UpdateConsentRequest {
                    name: format!("customers/{}/consent", key.person_id),
                    changes: channels
                        .iter()
                        .map(|channel| cpb::ConsentRecord {
                            purpose,
                            channel: *channel,
                            status: cpb::ConsentStatus::Withdrawn as i32,
                            legal_basis: cpb::LegalBasis::Consent as i32,
                            source: "campaign_unsubscribe".into(),
                            proof_reference: format!("campaigns/{}/runs/{}", key.campaign_id, key.run),
                            ..Default::default()
                        })
                        .collect(),
                    etag: String::new(),
                    request_id: format!("unsubscribe:{}:{}:{}", key.campaign_id, key.run, key.person_id),
                };
                store::push_forwards(&txn, forward::CONSENT, &[withdrawal.encode_to_vec()], now_us).await?;
            }
        }
        touches::record(&txn, &touches, &self.source, now_us).await?;
        txn.commit().await?;
        self.feed.committed();
        Ok(Recorded::Done { redirect })
    }

    /// Answers one request.
    pub async fn handle(&self, req: http::Request<hyper::body::Incoming>) -> Response {
        let path = req.uri().path().trim_start_matches('/');
        if path == "healthz" {
            return respond(http::StatusCode::OK, TEXT, "ok\n");
        }
        let Some((code, token)) = path.split_once('/') else {
            return respond(http::StatusCode::NOT_FOUND, TEXT, "not found\n");
        };
        let now = chrono::Utc::now();
        let checked = self.links.check(token, now.timestamp());
        let method = req.method().clone();
        match (code, &method) {
            ("o", &http::Method::GET) => {
                if let Ok((Purpose::Open, key)) = checked
                    && let Err(err) = self.record(Purpose::Open, &key, now.timestamp_micros()).await
                {
                    tracing::warn!(%err, "recording an open failed");
                }
                let mut r = respond(http::StatusCode::OK, "image/gif", Bytes::from_static(PIXEL));
                r.headers_mut().insert(
                    http::header::CACHE_CONTROL,
                    http::HeaderValue::from_static("no-store, max-age=0"),
                );
                r
            }
            ("c", &http::Method::GET) => match checked {
                Ok((Purpose::Click, key)) => match self.record(Purpose::Click, &key, now.timestamp_micros()).await {
                    Ok(Recorded::Done { redirect: Some(to) }) => redirect(&to),
                    Ok(_) => respond(http::StatusCode::NOT_FOUND, TEXT, "this link leads nowhere any more\n"),
                    Err(err) => {
                        tracing::warn!(%err, "recording a click failed");
                        respond(http::StatusCode::SERVICE_UNAVAILABLE, TEXT, "try again shortly\n")
                    }
                },
                Err(Refused::Expired) => respond(http::StatusCode::GONE, TEXT, "this link has expired\n"),
                _ => respond(http::StatusCode::NOT_FOUND, TEXT, "not found\n"),
            },
            ("u", &http::Method::GET) => match checked {
                Ok((Purpose::Unsubscribe, _)) => respond(
                    http::StatusCode::OK,
                    HTML,
                    format!(
                        "<!doctype html><meta charset=utf-8><title>Unsubscribe</title>\
                         <form method=post action=\"{token}\"><p>Stop receiving these messages?</p>\
                         <button type=submit>Unsubscribe</button></form>\n"
                    ),
                ),
                Err(Refused::Expired) => respond(http::StatusCode::GONE, TEXT, "this link has expired\n"),
                _ => respond(http::StatusCode::NOT_FOUND, TEXT, "not found\n"),
            },
            ("u", &http::Method::POST) => match checked {
                Ok((Purpose::Unsubscribe, key)) => match self.record(Purpose::Unsubscribe, &key, now.timestamp_micros()).await {
                    Ok(_) => respond(
                        http::StatusCode::OK,
                        HTML,
                        "<!doctype html><meta charset=utf-8><title>Unsubscribed</title>\
                             <p>You will not receive these messages any more.</p>\n",
                    ),
                    Err(err) => {
                        tracing::warn!(%err, "recording an unsubscribe failed");
                        respond(http::StatusCode::SERVICE_UNAVAILABLE, TEXT, "try again shortly\n")
                    }
                },
                Err(Refused::Expired) => respond(http::StatusCode::GONE, TEXT, "this link has expired\n"),
                _ => respond(http::StatusCode::NOT_FOUND, TEXT, "not found\n"),
            },
            ("o" | "c" | "u", _) => respond(http::StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n"),
            _ => respond(http::StatusCode::NOT_FOUND, TEXT, "not found\n"),
        }
    }
}

/// Records the first touch of `kind` on a delivery.
async fn first<C: sea_orm::ConnectionTrait>(
    conn: &C,
    key: &Key,
    channel: i32,
    now_us: i64,
    kind: pb::TouchKind,
    touches: &mut Vec<Touch>,
) -> Result<()> {
    let column = match kind {
        pb::TouchKind::Opened => "open_us",
        pb::TouchKind::Clicked => "click_us",
        _ => "unsubscribe_us",
    };
    if store::first_touch(conn, key, column, now_us).await? {
        touches.push(Touch::new(key.clone(), kind, channel, now_us));
    }
    Ok(())
}

fn redirect(to: &str) -> Response {
    let mut r = respond(http::StatusCode::FOUND, TEXT, "");
    if let Ok(v) = http::HeaderValue::from_str(to) {
        r.headers_mut().insert(http::header::LOCATION, v);
        r.headers_mut()
            .insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
        r
    } else {
        respond(http::StatusCode::NOT_FOUND, TEXT, "this link leads nowhere\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key {
            person_id: "0190a6f0-7e4c-7d2e-9d1f-3c4b5a697887".into(),
            campaign_id: "spring-sale".into(),
            run: 2,
        }
    }

    #[test]
    fn tokens_round_trip_and_refuse_tampering_and_age() {
        let links = Links::new(b"secret", "https://t.example/", 30).unwrap();
        let url = links.url(Purpose::Click, &key(), 1_000);
        assert!(url.starts_with("https://t.example/c/"), "{url}");
        let token = url.rsplit('/').next().unwrap();
        assert_eq!(links.check(token, 1_000), Ok((Purpose::Click, key())));
        assert_eq!(links.check(token, 1_000 + 30 * 86_400), Ok((Purpose::Click, key())));
        assert_eq!(links.check(token, 1_001 + 30 * 86_400), Err(Refused::Expired));
        // Another secret, another payload under the same tag, garbage.
        assert_eq!(
            Links::new(b"other", "http://x", 30).unwrap().check(token, 1_000),
            Err(Refused::Invalid)
        );
        let (_, tag) = token.split_once('.').unwrap();
        let forged = format!("{}.{tag}", URL_SAFE_NO_PAD.encode("c|spring-sale|2|someone-else|99999999999"));
        assert_eq!(links.check(&forged, 1_000), Err(Refused::Invalid));
        assert_eq!(links.check("nonsense", 1_000), Err(Refused::Invalid));
        assert_eq!(links.check("", 1_000), Err(Refused::Invalid));
    }
}

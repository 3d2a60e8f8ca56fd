//! The channels' providers behind one interface: e-mail over SMTP, and SMS, WeChat
//! template messages and app push through HTTP provider endpoints; each with its
//! own rate limit.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{
        Mailbox, MultiPart, SinglePart,
        header::{ContentType, HeaderName, HeaderValue},
    },
};
use serde::Deserialize;

use super::Channel;

/// One message to one recipient, rendered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outgoing {
    /// Stable per (campaign, run, customer): the provider deduplicates by it.
    pub idempotency_key: String,
    /// The address: e-mail, E.164 phone number, WeChat OpenID, push token.
    pub to: String,
    pub subject: String,
    pub body: String,
    pub html_body: String,
    /// WeChat template id.
    pub template_id: String,
    /// The tracked link, if the message has one.
    pub url: String,
    /// One-click unsubscribe.
    pub unsubscribe_url: String,
    /// `campaigns/{campaign}` and `customers/{customer}`, for the provider's records.
    pub campaign: String,
    pub customer: String,
}

pub use crm_platform::http::{Failure, HttpClient, check_url};

/// A channel's provider.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Hands the message over; the provider's message id (empty if it gives none).
    async fn send(&self, m: &Outgoing) -> Result<String, Failure>;
    /// Whether a message whose outcome is unknown (a crash mid-send) may be sent
    /// again without arriving twice: the provider deduplicates by idempotency key.
    fn deduplicates(&self) -> bool;
}

/// `[segmentation.channels.<channel>]` settings.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChannelConfig {
    /// E-mail: `smtp://host:port` (plain), `smtp://host:587?tls=required` (STARTTLS),
    /// `smtps://user:password@host:465`. Others: the provider's `http://` endpoint.
    /// Empty: the channel is not available.
    pub url: String,
    /// E-mail only: the sender, e.g. `Shop <news@shop.example>`.
    pub from: String,
    /// HTTP only: sent as `Authorization: Bearer`.
    pub bearer_token: String,
    /// Messages per second at most (0: no limit).
    pub rate_per_sec: f64,
    /// One send's deadline.
    pub timeout_ms: u64,
}

/// `[segmentation.channels]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChannelsConfig {
    pub email: ChannelConfig,
    pub sms: ChannelConfig,
    pub wechat: ChannelConfig,
    pub push: ChannelConfig,
}

impl ChannelsConfig {
    pub fn get(&self, c: Channel) -> &ChannelConfig {
        match c {
            Channel::Email => &self.email,
            Channel::Sms => &self.sms,
            Channel::Wechat => &self.wechat,
            Channel::Push => &self.push,
        }
    }

    pub fn validate(&self) -> Result<(), crm_platform::config::ConfigError> {
        use crm_platform::config::ConfigError;
        for c in Channel::ALL {
            let cfg = self.get(c);
            let key = |k: &str| format!("segmentation.channels.{}.{k}", c.key());
            if cfg.rate_per_sec < 0.0 || !cfg.rate_per_sec.is_finite() {
                return Err(ConfigError::invalid(key("rate_per_sec"), "0 (no limit) or more"));
            }
            if cfg.timeout_ms == 0 {
                return Err(ConfigError::invalid(key("timeout_ms"), "at least 1"));
            }
            if cfg.url.is_empty() {
                continue;
            }
            if c == Channel::Email {
                if !(cfg.url.starts_with("smtp://") || cfg.url.starts_with("smtps://")) {
                    return Err(ConfigError::invalid(key("url"), "smtp:// or smtps://"));
                }
                if cfg.from.parse::<Mailbox>().is_err() {
                    return Err(ConfigError::invalid(
                        key("from"),
                        "a sender such as `Shop <news@shop.example>`",
                    ));
                }
            } else if let Err(e) = check_http(&cfg.url) {
                return Err(ConfigError::invalid(key("url"), e));
            }
        }
        Ok(())
    }
}

fn check_http(url: &str) -> Result<http::Uri, String> {
    check_url(url).map_err(|e| format!("{e} (a provider outside the cluster is reached through an egress proxy that speaks TLS)"))
}

/// At most `rate` acquisitions per second, in bursts of a tenth of a second's worth.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(rate: f64) -> Self {
        let burst = (rate / 10.0).max(1.0);
        Self {
            rate,
            burst,
            state: tokio::sync::Mutex::new((burst, Instant::now())),
        }
    }

    /// Waits for a token (at once when unlimited).
    pub async fn acquire(&self) {
        if self.rate <= 0.0 {
            return;
        }
        loop {
            let wait = {
                let mut s = self.state.lock().await;
                let now = Instant::now();
                let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
                s.0 = (s.0 + refill).min(self.burst);
                s.1 = now;
                if s.0 >= 1.0 {
                    s.0 -= 1.0;
                    return;
                }
                (1.0 - s.0) / self.rate
            };
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }
}

/// The configured providers, each behind its rate limit.
#[derive(Clone, Default)]
pub struct Providers {
    by_channel: HashMap<Channel, (Arc<dyn Provider>, Arc<RateLimiter>)>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_channel.keys()).finish()
    }
}

impl Providers {
    pub fn from_config(cfg: &ChannelsConfig) -> anyhow::Result<Self> {
        let mut by_channel = HashMap::new();
        let http = HttpClient::new();
        for c in Channel::ALL {
            let cc = cfg.get(c);
            if cc.url.is_empty() {
                continue;
            }
            let provider: Arc<dyn Provider> = if c == Channel::Email {
                Arc::new(Smtp::new(cc)?)
            } else {
                Arc::new(HttpProvider::new(c, cc, http.clone())?)
            };
            by_channel.insert(c, (provider, Arc::new(RateLimiter::new(cc.rate_per_sec))));
        }
        Ok(Self { by_channel })
    }

    /// Replaces one channel's provider (tests, benchmarks).
    pub fn with(mut self, c: Channel, provider: Arc<dyn Provider>, rate: f64) -> Self {
        self.by_channel.insert(c, (provider, Arc::new(RateLimiter::new(rate))));
        self
    }

    pub fn has(&self, c: Channel) -> bool {
        self.by_channel.contains_key(&c)
    }

    /// The channels whose providers deduplicate.
    pub fn deduplicating(&self) -> Vec<Channel> {
        self.by_channel
            .iter()
            .filter(|(_, (p, _))| p.deduplicates())
            .map(|(c, _)| *c)
            .collect()
    }

    /// Sends through `c`'s provider, after its rate limit.
    pub async fn send(&self, c: Channel, m: &Outgoing) -> Result<String, Failure> {
        let Some((provider, limit)) = self.by_channel.get(&c) else {
            return Err(Failure::retry(format!("no provider configured for {}", c.key())));
        };
        limit.acquire().await;
        provider.send(m).await
    }
}

// ------------------------------------------------------------ SMTP

/// E-mail through an SMTP relay, over a pool of connections.
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

const LIST_UNSUBSCRIBE: HeaderName = HeaderName::new_from_ascii_str("List-Unsubscribe");
const LIST_UNSUBSCRIBE_POST: HeaderName = HeaderName::new_from_ascii_str("List-Unsubscribe-Post");

impl Smtp {
    pub fn new(cfg: &ChannelConfig) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&cfg.url)?
            .timeout(Some(Duration::from_millis(cfg.timeout_ms)))
            .build();
        Ok(Self {
            transport,
            from: cfg.from.parse()?,
        })
    }

    fn message(&self, m: &Outgoing) -> Result<Message, Failure> {
        let to: Mailbox =
            m.to.parse()
                .map_err(|e| Failure::permanent(format!("not an e-mail address: {e}")))?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(m.subject.clone())
            .message_id(Some(format!("<{}@crm>", m.idempotency_key.replace([':', '/'], "."))));
        if !m.unsubscribe_url.is_empty() {
            // RFC 8058 one-click unsubscribe.
            builder = builder
                .raw_header(HeaderValue::new(LIST_UNSUBSCRIBE, format!("<{}>", m.unsubscribe_url)))
                .raw_header(HeaderValue::new(LIST_UNSUBSCRIBE_POST, "List-Unsubscribe=One-Click".into()));
        }
        let built = if m.html_body.is_empty() {
            builder.singlepart(SinglePart::builder().header(ContentType::TEXT_PLAIN).body(m.body.clone()))
        } else {
            builder.multipart(MultiPart::alternative_plain_html(m.body.clone(), m.html_body.clone()))
        };
        built.map_err(|e| Failure::permanent(format!("message not buildable: {e}")))
    }
}

#[async_trait]
impl Provider for Smtp {
    async fn send(&self, m: &Outgoing) -> Result<String, Failure> {
        let message = self.message(m)?;
        match self.transport.send(message).await {
            Ok(response) => Ok(response.message().next().unwrap_or_default().to_owned()),
            Err(e) if e.is_permanent() => Err(Failure::permanent(format!("the relay refused it: {e}"))),
            // The relay may have taken the message and answered late: SMTP does not
            // deduplicate, so trying again could deliver it twice.
            Err(e) if e.is_timeout() => Err(Failure::permanent(format!(
                "SMTP timed out; outcome unknown, not retried so it cannot arrive twice: {e}"
            ))),
            Err(e) => Err(Failure::retry(format!("SMTP: {e}"))),
        }
    }

    fn deduplicates(&self) -> bool {
        false
    }
}

// ------------------------------------------------------------ HTTP

/// SMS, WeChat template messages or app push through a provider's HTTP endpoint:
/// one JSON `POST` per message with an `Idempotency-Key` header; 2xx is accepted
/// (`{"message_id": ...}` optional), 408/429/5xx are retried, other answers fail.
pub struct HttpProvider {
    channel: Channel,
    uri: http::Uri,
    authorization: String,
    timeout: Duration,
    client: HttpClient,
}

#[derive(serde::Serialize)]
struct Payload<'a> {
    channel: &'static str,
    idempotency_key: &'a str,
    to: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    title: &'a str,
    body: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    template_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    url: &'a str,
    campaign: &'a str,
    customer: &'a str,
}

impl HttpProvider {
    pub fn new(channel: Channel, cfg: &ChannelConfig, client: HttpClient) -> anyhow::Result<Self> {
        Ok(Self {
            channel,
            uri: check_http(&cfg.url).map_err(|e| anyhow::anyhow!(e))?,
            authorization: if cfg.bearer_token.is_empty() {
                String::new()
            } else {
                format!("Bearer {}", cfg.bearer_token)
            },
            timeout: Duration::from_millis(cfg.timeout_ms),
            client,
        })
    }
}

/// The meaning of a provider's answer.
pub fn classify(status: u16, body: &[u8]) -> Result<String, Failure> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        message_id: String,
    }
    match status {
        200..=299 => Ok(serde_json::from_slice::<Answer>(body)
            .map(|a| a.message_id)
            .unwrap_or_default()),
        408 | 429 | 500..=599 => Err(Failure::retry(format!("the provider answered {status}"))),
        _ => {
            let text: String = String::from_utf8_lossy(body)
                .chars()
                .take(200)
                .filter(|c| !c.is_control())
                .collect();
            Err(Failure::permanent(format!("the provider answered {status}: {text}")))
        }
    }
}

#[async_trait]
impl Provider for HttpProvider {
    async fn send(&self, m: &Outgoing) -> Result<String, Failure> {
        let body = serde_json::to_vec(&Payload {
            channel: self.channel.key(),
            idempotency_key: &m.idempotency_key,
            to: &m.to,
            title: &m.subject,
            body: &m.body,
            template_id: &m.template_id,
            url: &m.url,
            campaign: &m.campaign,
            customer: &m.customer,
        })
        .map_err(|e| Failure::permanent(format!("not encodable: {e}")))?;
        let mut headers = vec![("idempotency-key", m.idempotency_key.as_str())];
        if !self.authorization.is_empty() {
            headers.push(("authorization", self.authorization.as_str()));
        }
        let (status, answer) = self
            .client
            .post_json(&self.uri, &headers, body, self.timeout, 64 * 1024)
            .await?;
        classify(status, &answer)
    }

    fn deduplicates(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_answers_map_to_outcomes() {
        assert_eq!(classify(200, br#"{"message_id":"m-1"}"#), Ok("m-1".to_owned()));
        assert_eq!(classify(202, b""), Ok(String::new()));
        for retried in [408, 429, 500, 503] {
            assert!(!classify(retried, b"").unwrap_err().permanent);
        }
        let refused = classify(400, b"invalid phone number").unwrap_err();
        assert!(refused.permanent && refused.message.contains("invalid phone number"));
    }

    #[tokio::test]
    async fn the_rate_limit_spaces_sends() {
        let limit = RateLimiter::new(200.0);
        let start = std::time::Instant::now();
        for _ in 0..40 {
            limit.acquire().await;
        }
        // A burst of 20, then 20 more at 200 per second: at least 100 ms.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(95), "{took:?}");
        let unlimited = RateLimiter::new(0.0);
        let start = std::time::Instant::now();
        for _ in 0..10_000 {
            unlimited.acquire().await;
        }
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn configuration_is_checked() {
        let mut cfg = ChannelsConfig::default();
        for c in Channel::ALL {
            let cc = match c {
                Channel::Email => &mut cfg.email,
                Channel::Sms => &mut cfg.sms,
                Channel::Wechat => &mut cfg.wechat,
                Channel::Push => &mut cfg.push,
            };
            cc.timeout_ms = 1000;
        }
        assert!(cfg.validate().is_ok());
        cfg.sms.url = "https://sms.example".into();
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("segmentation.channels.sms.url")
        );
        cfg.sms.url = "http://sms.example/send".into();
        cfg.email.url = "smtp://127.0.0.1:2525".into();
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("segmentation.channels.email.from")
        );
        cfg.email.from = "Shop <news@shop.example>".into();
        assert!(cfg.validate().is_ok());
    }
}

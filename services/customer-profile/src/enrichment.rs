//! The enrichment endpoint: one HTTP/1.1 `POST` of a JSON [`Query`] per lookup,
//! with a deadline over the whole exchange, and its answer read as firmographics,
//! "nothing known", or a failure that is worth retrying or not.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

use crate::domain::enrichment::{Firmographics, Query, parse};

/// Answers larger than this are refused (an endpoint answers a few hundred bytes).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Found(Box<Firmographics>),
    /// The endpoint knows nothing of the organisation (404, 204, or an empty answer).
    NoData,
}

/// Why a lookup failed; `permanent` ones are not tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub permanent: bool,
    pub message: String,
}

impl Failure {
    fn retry(message: impl Into<String>) -> Self {
        Self {
            permanent: false,
            message: message.into(),
        }
    }
}

/// A configured endpoint.
#[derive(Clone)]
pub struct Endpoint {
    uri: http::Uri,
    authority: String,
    host: String,
    port: u16,
    timeout: Duration,
    bearer_token: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("uri", &self.uri)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Checks an endpoint URL: `http://host[:port][/path]`. Plain HTTP only: an
/// endpoint outside the cluster is reached through an egress proxy or sidecar that
/// terminates TLS.
pub fn check_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(
                "https:// is not supported: point it at an egress proxy or sidecar that speaks TLS to the provider".into(),
            );
        }
        _ => return Err(format!("`{url}` must start with http://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    Ok(uri)
}

impl Endpoint {
    pub fn new(url: &str, timeout: Duration, bearer_token: &str) -> Result<Self, String> {
        let uri = check_url(url)?;
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        Ok(Self {
            uri,
            authority,
            host,
            port,
            timeout,
            bearer_token: bearer_token.to_owned(),
        })
    }

    /// Looks an organisation up, within the configured timeout.
    pub async fn lookup(&self, query: &Query) -> Result<Answer, Failure> {
        let body = serde_json::to_vec(query).map_err(|e| Failure {
            permanent: true,
            message: format!("query not encodable: {e}"),
        })?;
        match tokio::time::timeout(self.timeout, self.exchange(body)).await {
            Ok(answer) => answer,
            Err(_) => Err(Failure::retry(format!("no answer within {} ms", self.timeout.as_millis()))),
        }
    }

    async fn exchange(&self, body: Vec<u8>) -> Result<Answer, Failure> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| Failure::retry(format!("cannot connect to {}: {e}", self.authority)))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::retry(format!("HTTP handshake with {}: {e}", self.authority)))?;
        // The connection is driven beside the request; it ends with this exchange.
        let driver = tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "enrichment connection closed with an error");
            }
        });
        let mut request = http::Request::post(self.uri.clone())
            .header(http::header::HOST, &self.authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json");
        if !self.bearer_token.is_empty() {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {}", self.bearer_token));
        }
        let request = request.body(Full::new(Bytes::from(body))).map_err(|e| Failure {
            permanent: true,
            message: format!("request not buildable: {e}"),
        })?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| Failure::retry(format!("request to {} failed: {e}", self.authority)))?;
            let status = response.status().as_u16();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| Failure::retry(format!("reading the answer (at most {MAX_ANSWER_BYTES} bytes): {e}")))?
                .to_bytes();
            classify(status, &bytes)
        }
        .await;
        driver.abort();
        result
    }
}

/// The meaning of an answer with `status` and `body`: 2xx carries firmographics
/// (or nothing), 404 means nothing known, 408/429/5xx are worth retrying, any other
/// 4xx (and redirects, which are not followed) will not get better by retrying.
pub fn classify(status: u16, body: &[u8]) -> Result<Answer, Failure> {
    match status {
        204 | 404 => Ok(Answer::NoData),
        200..=299 => match parse(body) {
            Ok(Some(found)) => Ok(Answer::Found(Box::new(found))),
            Ok(None) => Ok(Answer::NoData),
            Err(why) => Err(Failure::retry(why)),
        },
        408 | 429 | 500..=599 => Err(Failure::retry(format!("the endpoint answered {status}"))),
        _ => Err(Failure {
            permanent: true,
            message: format!("the endpoint answered {status}: {}", excerpt(body)),
        }),
    }
}

/// The start of an error body, for the log.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text: String = text.chars().take(200).filter(|c| !c.is_control()).collect();
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_outcomes() {
        let found = br#"{"industry": "Software"}"#;
        assert!(matches!(classify(200, found), Ok(Answer::Found(f)) if f.industry == "Software"));
        assert_eq!(classify(200, b"{}"), Ok(Answer::NoData));
        assert_eq!(classify(404, b"not found"), Ok(Answer::NoData));
        assert_eq!(classify(204, b""), Ok(Answer::NoData));
        for retried in [408, 429, 500, 502, 503] {
            assert!(!classify(retried, b"").unwrap_err().permanent, "{retried}");
        }
        let malformed = classify(200, b"<html>").unwrap_err();
        assert!(!malformed.permanent && malformed.message.contains("malformed"));
        for permanent in [301, 400, 401, 403, 422] {
            assert!(classify(permanent, b"bad key").unwrap_err().permanent, "{permanent}");
        }
    }

    #[test]
    fn only_plain_http_urls_are_accepted() {
        assert!(check_url("http://enrich.internal:8080/v1/lookup").is_ok());
        assert!(check_url("http://[::1]:9/x").is_ok());
        assert!(check_url("https://api.example.com").unwrap_err().contains("https"));
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("enrich.internal").is_err());
        let e = Endpoint::new("http://[::1]:9/x", Duration::from_secs(1), "s3cr3t-token").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 9));
        assert!(!format!("{e:?}").contains("s3cr3t"), "the token never prints");
    }
}

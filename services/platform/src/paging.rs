//! Opaque, tamper-evident page tokens (AIP-158) and page-size rules.
//!
//! A token is `base64url(json) . base64url(hmac)`: the position after the last row
//! served, bound to a fingerprint of the query (filter, order, flags) so a token can
//! be neither forged nor reused with a different query.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the HMAC kept in a token: 128 bits is plenty against forgery.
const TAG_LEN: usize = 16;

#[derive(Clone)]
pub struct PageTokens {
    key: Vec<u8>,
}

impl std::fmt::Debug for PageTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokens(..)")
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    /// Query fingerprint.
    q: String,
    /// Position.
    p: T,
}

impl PageTokens {
    /// `secret` must be the same on every replica, or tokens fail across them.
    pub fn new(secret: &[u8]) -> Self {
        // Domain-separate from other uses of the same secret.
        let key = Sha256::new()
            .chain_update(b"crm.page-token.v1\0")
            .chain_update(secret)
            .finalize()
            .to_vec();
        Self { key }
    }

    fn tag(&self, payload: &[u8]) -> Result<HmacSha256> {
        let mut mac = HmacSha256::new_from_slice(&self.key).map_err(Error::internal)?;
        mac.update(payload);
        Ok(mac)
    }

    /// Encodes `position` for the query identified by `fingerprint`.
    pub fn encode<T: Serialize>(&self, fingerprint: &str, position: &T) -> Result<String> {
        let payload = serde_json::to_vec(&Envelope {
            q: fingerprint.to_owned(),
            p: position,
        })
        .map_err(Error::internal)?;
        let tag = self.tag(&payload)?.finalize().into_bytes();
        Ok(format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(&tag[..TAG_LEN])
        ))
    }

    /// Ends a page: `items` was read one past `size`; cuts it to `size` and returns
    /// the token of its last item (`position`) when more follow, else empty.
    pub fn cut<T, P: Serialize>(
        &self,
        fingerprint: &str,
        items: &mut Vec<T>,
        size: u32,
        position: impl Fn(&T) -> P,
    ) -> Result<String> {
        if items.len() <= size as usize {
            return Ok(String::new());
        }
        items.truncate(size as usize);
        match items.last() {
            Some(last) => self.encode(fingerprint, &position(last)),
            None => Ok(String::new()),
        }
    }

    /// Decodes a token produced by [`encode`](Self::encode) for the same query.
    /// Every failure is INVALID_ARGUMENT on `page_token`.
    pub fn decode<T: DeserializeOwned>(&self, fingerprint: &str, token: &str) -> Result<T> {
        let bad = || Error::invalid("page_token", "not a page token issued for this query");
        let (payload, tag) = token.split_once('.').ok_or_else(bad)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| bad())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| bad())?;
        if tag.len() != TAG_LEN {
            return Err(bad());
        }
        self.tag(&payload)?.verify_truncated_left(&tag).map_err(|_| bad())?;
        let envelope: Envelope<T> = serde_json::from_slice(&payload).map_err(|_| bad())?;
        if envelope.q != fingerprint {
            return Err(Error::invalid(
                "page_token",
                "the page token belongs to a different query: keep filter, order_by and the other parameters unchanged while paging",
            ));
        }
        Ok(envelope.p)
    }
}

/// A fingerprint of the query parameters that must stay fixed while paging.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    URL_SAFE_NO_PAD.encode(&hasher.finalize()[..12])
}

/// AIP-158 page size: 0 means `default`, larger than `max` is coerced to `max`,
/// negative is invalid.
pub fn page_size(requested: i32, default: u32, max: u32) -> Result<u32> {
    match requested {
        n if n < 0 => Err(Error::invalid("page_size", "must not be negative")),
        0 => Ok(default),
        n => Ok(u32::try_from(n).unwrap_or(max).min(max)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_cut_and_continues_after_its_last_item() {
        let tokens = PageTokens::new(b"paging-test-secret-0123456789abcdef");
        let mut items = vec![1, 2, 3];
        let next = tokens.cut("q", &mut items, 2, |i| *i).unwrap();
        assert_eq!(items, vec![1, 2]);
        assert_eq!(tokens.decode::<i32>("q", &next).unwrap(), 2);
        let mut last = vec![1, 2];
        assert_eq!(tokens.cut("q", &mut last, 2, |i| *i).unwrap(), "");
        assert_eq!(last, vec![1, 2]);
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Pos {
        t: i64,
        id: String,
    }

    fn pos() -> Pos {
        Pos { t: 42, id: "abc".into() }
    }

    #[test]
    fn round_trip() {
        let tokens = PageTokens::new(b"s3cret");
        let token = tokens.encode("q1", &pos()).unwrap();
        assert_eq!(tokens.decode::<Pos>("q1", &token).unwrap(), pos());
    }

    #[test]
    fn rejects_tampering_other_keys_and_other_queries() {
        let tokens = PageTokens::new(b"s3cret");
        let token = tokens.encode("q1", &pos()).unwrap();
        let (payload, tag) = token.split_once('.').unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(br#"{"q":"q1","p":{"t":0,"id":"zzz"}}"#);
        for bad in [
            format!("{forged_payload}.{tag}"),
            format!("{payload}.AAAAAAAAAAAAAAAAAAAAAA"),
            "garbage".to_owned(),
            String::new(),
        ] {
            assert!(
                matches!(tokens.decode::<Pos>("q1", &bad), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
        assert!(PageTokens::new(b"other").decode::<Pos>("q1", &token).is_err());
        assert!(tokens.decode::<Pos>("q2", &token).is_err());
    }

    #[test]
    fn page_size_rules() {
        assert_eq!(page_size(0, 50, 1000).unwrap(), 50);
        assert_eq!(page_size(10, 50, 1000).unwrap(), 10);
        assert_eq!(page_size(5000, 50, 1000).unwrap(), 1000);
        assert!(page_size(-1, 50, 1000).is_err());
    }

    #[test]
    fn fingerprint_separates_parts() {
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]));
        assert_eq!(fingerprint(&["x"]), fingerprint(&["x"]));
    }
}

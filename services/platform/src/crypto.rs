//! Encryption of sensitive data at rest: AES-256-GCM under named keys (so keys can
//! rotate: the active key seals new data, every listed key opens old data), and keyed
//! blind indexes (HMAC-SHA256 of a normalised value) for exact lookup of encrypted
//! values without decrypting them.
//!
//! A sealed value is `0xE1 | key id length | key id | 12-byte nonce | ciphertext+tag`.
//! The associated data binds a ciphertext to its place (e.g. the row id), so a sealed
//! value copied to another row does not open.

use std::collections::{BTreeMap, HashMap};

use aes_gcm::{
    Aes256Gcm, Key, KeyInit,
    aead::{Aead, Generate, Nonce, Payload},
};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::{Error, Result, config::ConfigError};

const MAGIC: u8 = 0xE1;
const NONCE_LEN: usize = 12;

/// `[encryption]`: keys as standard base64 of 32 random bytes
/// (`head -c32 /dev/urandom | base64`).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct EncryptionConfig {
    /// Id of the key that seals new data; must be in `keys`.
    pub active_key: String,
    /// Key id (`[a-z0-9_-]`, at most 32) -> key. Keep retired keys until the
    /// re-encryption job has moved every row off them.
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// Key of the blind indexes. Changing it invalidates every index: it is not rotated
    /// like the encryption keys.
    pub blind_index_key: String,
}

/// The loaded keys.
#[derive(Clone)]
pub struct Keyring {
    active: String,
    ciphers: HashMap<String, Aes256Gcm>,
    index_key: Vec<u8>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<_> = self.ciphers.keys().collect();
        ids.sort();
        f.debug_struct("Keyring")
            .field("active", &self.active)
            .field("keys", &ids)
            .finish_non_exhaustive()
    }
}

fn decode_key(key: &str, value: &str, min: usize, exact: bool) -> std::result::Result<Vec<u8>, ConfigError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| ConfigError::invalid(key, "not standard base64"))?;
    if (exact && bytes.len() != min) || bytes.len() < min {
        return Err(ConfigError::invalid(
            key,
            format!(
                "must decode to {}{min} bytes, got {}",
                if exact { "" } else { "at least " },
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

impl Keyring {
    pub fn from_config(cfg: &EncryptionConfig) -> std::result::Result<Self, ConfigError> {
        if cfg.active_key.is_empty() {
            return Err(ConfigError::invalid(
                "encryption.active_key",
                "required: set it and encryption.keys.<id> (base64 of 32 random bytes) and encryption.blind_index_key",
            ));
        }
        let mut ciphers = HashMap::new();
        for (id, value) in &cfg.keys {
            let path = format!("encryption.keys.{id}");
            if id.is_empty()
                || id.len() > 32
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            {
                return Err(ConfigError::invalid(path, "key ids are 1 to 32 of [a-z0-9_-]"));
            }
            let key = decode_key(&path, value, 32, true)?;
            let cipher = Aes256Gcm::new_from_slice(&key).map_err(|_| ConfigError::invalid(&path, "not an AES-256 key"))?;
            ciphers.insert(id.clone(), cipher);
        }
        if !ciphers.contains_key(&cfg.active_key) {
            return Err(ConfigError::invalid(
                "encryption.active_key",
                format!("`{}` is not in encryption.keys", cfg.active_key),
            ));
        }
        let index_key = decode_key("encryption.blind_index_key", &cfg.blind_index_key, 32, false)?;
        Ok(Self {
            active: cfg.active_key.clone(),
            ciphers,
            index_key,
        })
    }

    /// Id of the key new data is sealed with.
    pub fn active_key(&self) -> &str {
        &self.active
    }

    /// Encrypts `plaintext` under the active key, bound to `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        let cipher = self
            .ciphers
            .get(&self.active)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("active key missing from the keyring")))?;
        seal_with(cipher, &self.active, plaintext, aad)
    }

    /// Decrypts a value sealed by [`Keyring::seal`] under any known key with the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        let (id, rest) = split(sealed).ok_or_else(|| Error::internal(anyhow::anyhow!("not a sealed value")))?;
        let cipher = self.ciphers.get(id).ok_or_else(|| {
            Error::internal(anyhow::anyhow!(
                "data sealed with key `{id}`, which is not in encryption.keys"
            ))
        })?;
        open_with(cipher, id, rest, aad)
    }

    /// A fresh data key for one owner (e.g. a customer id as `owner`), and its wrapped
    /// form to store: sealed under the active key and bound to `owner`.
    pub fn new_data_key(&self, owner: &[u8]) -> Result<(DataKey, Vec<u8>)> {
        let key = Key::<Aes256Gcm>::generate();
        let wrapped = self.seal(key.as_slice(), &wrap_aad(owner))?;
        Ok((DataKey(Aes256Gcm::new(&key)), wrapped))
    }

    /// Opens a data key wrapped by [`Keyring::new_data_key`] for `owner`.
    pub fn unwrap_data_key(&self, wrapped: &[u8], owner: &[u8]) -> Result<DataKey> {
        let bytes = self.open(wrapped, &wrap_aad(owner))?;
        let cipher = Aes256Gcm::new_from_slice(&bytes)
            .map_err(|_| Error::internal(anyhow::anyhow!("a wrapped data key is not 32 bytes")))?;
        Ok(DataKey(cipher))
    }

    /// A wrapped data key wrapped again under the active key (after a rotation).
    pub fn rewrap_data_key(&self, wrapped: &[u8], owner: &[u8]) -> Result<Vec<u8>> {
        let aad = wrap_aad(owner);
        self.seal(&self.open(wrapped, &aad)?, &aad)
    }

    /// A keyed, deterministic digest of `value` in `domain` (e.g. `phone`), as 32 hex
    /// digits: equal inputs give equal indexes, and the index reveals nothing without
    /// the key.
    pub fn blind_index(&self, domain: &str, value: &str) -> String {
        // The key length was checked at load; HMAC accepts any length anyway.
        let Ok(mut mac) = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.index_key) else {
            return String::new();
        };
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        let digest = mac.finalize().into_bytes();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Key id of values sealed under a [`DataKey`].
pub const DATA_KEY_ID: &str = "dek";

/// A per-owner data key (crypto-shredding): its owner's personal data is sealed under
/// it, and it is stored only wrapped by the keyring, apart from the data. Destroying
/// the wrapped copy makes that data unreadable wherever copies of it remain (backups,
/// caches, replicas).
#[derive(Clone)]
pub struct DataKey(Aes256Gcm);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// Encrypts `plaintext` bound to `aad`; the value names the key id [`DATA_KEY_ID`].
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        seal_with(&self.0, DATA_KEY_ID, plaintext, aad)
    }

    /// Decrypts a value sealed by [`DataKey::seal`] with the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        match split(sealed) {
            Some((DATA_KEY_ID, rest)) => open_with(&self.0, DATA_KEY_ID, rest, aad),
            Some((other, _)) => Err(Error::internal(anyhow::anyhow!("sealed with key `{other}`, not a data key"))),
            None => Err(Error::internal(anyhow::anyhow!("not a sealed value"))),
        }
    }
}

fn wrap_aad(owner: &[u8]) -> Vec<u8> {
    let mut aad = b"data-key:".to_vec();
    aad.extend_from_slice(owner);
    aad
}

fn seal_with(cipher: &Aes256Gcm, id: &str, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    let nonce = Nonce::<Aes256Gcm>::generate();
    let ciphertext = cipher
        .encrypt(&nonce, Payload { msg: plaintext, aad })
        .map_err(|_| Error::internal(anyhow::anyhow!("encryption failed")))?;
    let id = id.as_bytes();
    let mut out = Vec::with_capacity(2 + id.len() + NONCE_LEN + ciphertext.len());
    out.push(MAGIC);
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

fn open_with(cipher: &Aes256Gcm, id: &str, rest: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::<Aes256Gcm>::try_from(nonce).map_err(|_| Error::internal(anyhow::anyhow!("bad nonce")))?;
    cipher
        .decrypt(&nonce, Payload { msg: ciphertext, aad })
        .map_err(|_| Error::internal(anyhow::anyhow!("sealed value does not authenticate under key `{id}`")))
}

/// The key id a sealed value was sealed with.
pub fn key_id(sealed: &[u8]) -> Option<&str> {
    split(sealed).map(|(id, _)| id)
}

fn split(sealed: &[u8]) -> Option<(&str, &[u8])> {
    let (&magic, rest) = sealed.split_first()?;
    let (&len, rest) = rest.split_first()?;
    if magic != MAGIC || rest.len() < usize::from(len) + NONCE_LEN + 16 {
        return None;
    }
    let (id, rest) = rest.split_at(usize::from(len));
    Some((std::str::from_utf8(id).ok()?, rest))
}

/// Is `data` a sealed value?
pub fn is_sealed(data: &[u8]) -> bool {
    split(data).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([byte; 32])
    }

    fn ring(active: &str) -> Keyring {
        Keyring::from_config(&EncryptionConfig {
            active_key: active.into(),
            keys: BTreeMap::from([("k1".into(), key(1)), ("k2".into(), key(2))]),
            blind_index_key: key(9),
        })
        .unwrap()
    }

    #[test]
    fn seals_and_opens_across_rotation() {
        let old = ring("k1");
        let sealed = old.seal(b"+8613800138000", b"row-1").unwrap();
        assert_eq!(key_id(&sealed), Some("k1"));
        assert!(!sealed.windows(5).any(|w| w == b"13800"), "no plaintext in the sealed value");
        let new = ring("k2");
        assert_eq!(new.open(&sealed, b"row-1").unwrap(), b"+8613800138000");
        assert!(new.open(&sealed, b"row-2").is_err(), "bound to its associated data");
        assert_eq!(key_id(&new.seal(b"x", b"").unwrap()), Some("k2"));
        assert_ne!(
            old.seal(b"x", b"").unwrap(),
            old.seal(b"x", b"").unwrap(),
            "fresh nonce per seal"
        );
    }

    #[test]
    fn data_keys_wrap_per_owner_and_shred() {
        let r = ring("k1");
        let (key, wrapped) = r.new_data_key(b"customer-1").unwrap();
        let sealed = key.seal(b"alice@example.com", b"row").unwrap();
        assert_eq!(key_id(&sealed), Some(DATA_KEY_ID));
        let again = ring("k2").unwrap_data_key(&wrapped, b"customer-1").unwrap();
        assert_eq!(again.open(&sealed, b"row").unwrap(), b"alice@example.com");
        assert!(r.unwrap_data_key(&wrapped, b"customer-2").is_err(), "bound to its owner");
        let (other, _) = r.new_data_key(b"customer-1").unwrap();
        assert!(
            other.open(&sealed, b"row").is_err(),
            "another key of the same owner opens nothing"
        );
        assert!(r.open(&sealed, b"row").is_err(), "the keyring alone opens nothing");
        assert!(key.open(&r.seal(b"x", b"").unwrap(), b"").is_err());
    }

    #[test]
    fn tampering_and_garbage_fail_cleanly() {
        let r = ring("k1");
        let mut sealed = r.seal(b"secret", b"").unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(r.open(&sealed, b"").is_err());
        for junk in [&b""[..], b"\xE1", b"\xE1\x05k1", b"plain json"] {
            assert!(r.open(junk, b"").is_err());
            assert!(!is_sealed(junk));
        }
    }

    #[test]
    fn blind_index_is_keyed_and_deterministic() {
        let r = ring("k1");
        let a = r.blind_index("phone", "+8613800138000");
        assert_eq!(a.len(), 32);
        assert_eq!(a, ring("k2").blind_index("phone", "+8613800138000"));
        assert_ne!(a, r.blind_index("email", "+8613800138000"), "domains separate");
        let other = Keyring::from_config(&EncryptionConfig {
            active_key: "k1".into(),
            keys: BTreeMap::from([("k1".into(), key(1))]),
            blind_index_key: key(8),
        })
        .unwrap();
        assert_ne!(a, other.blind_index("phone", "+8613800138000"));
    }

    #[test]
    fn config_errors_name_the_key() {
        let bad = |cfg: EncryptionConfig| Keyring::from_config(&cfg).unwrap_err().to_string();
        let base = EncryptionConfig {
            active_key: "k1".into(),
            keys: BTreeMap::from([("k1".into(), key(1))]),
            blind_index_key: key(9),
        };
        assert!(bad(EncryptionConfig::default()).contains("encryption.active_key"));
        assert!(
            bad(EncryptionConfig {
                active_key: "k3".into(),
                ..base.clone()
            })
            .contains("not in encryption.keys")
        );
        let short = EncryptionConfig {
            keys: BTreeMap::from([("k1".into(), "c2hvcnQ=".into())]),
            ..base.clone()
        };
        assert!(bad(short).contains("encryption.keys.k1"));
        assert!(
            bad(EncryptionConfig {
                blind_index_key: "!!".into(),
                ..base
            })
            .contains("encryption.blind_index_key")
        );
    }
}

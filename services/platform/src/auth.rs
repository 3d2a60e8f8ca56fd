//! Authentication: a bearer JWT becomes a [`Principal`]. What the principal may do
//! is the permissions service's decision (see [`crate::authz`]).

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use tonic::{Request, Status};

use crate::{
    config::{AuthConfig, ConfigError},
    error::{Error, Result},
};

/// Who is calling, as proven by their token.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Principal {
    pub user_id: String,
    /// Set for customer self-service tokens: the caller is this customer and may only
    /// touch `customers/{customer_id}`.
    pub customer_id: Option<String>,
    /// When the token stops being valid (Unix seconds; 0 when unknown). Long-lived
    /// calls such as change-feed streams end then.
    pub expires_at: u64,
}

/// JWT claims the platform reads and `crm token` writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    pub exp: u64,
    #[serde(default)]
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

const MIN_SECRET_LEN: usize = 32;

/// Checks the `auth` section; called by [`crate::config::PlatformConfig::validate`].
pub fn validate_config(cfg: &AuthConfig) -> Result<(), ConfigError> {
    let algorithm = parse_algorithm(&cfg.algorithm)?;
    match (cfg.jwt_secret.is_empty(), cfg.public_key_path.is_empty()) {
        (true, true) => Err(ConfigError::invalid(
            "auth",
            "no token verification key: set auth.jwt_secret (HS256, development) or auth.public_key_path (RS256/ES256)",
        )),
        (false, false) => Err(ConfigError::invalid(
            "auth",
            "set only one of auth.jwt_secret and auth.public_key_path",
        )),
        (false, true) if algorithm != Algorithm::HS256 => Err(ConfigError::invalid(
            "auth.algorithm",
            "auth.jwt_secret needs algorithm HS256",
        )),
        (false, true) if cfg.jwt_secret.len() < MIN_SECRET_LEN => Err(ConfigError::invalid(
            "auth.jwt_secret",
            format!("must be at least {MIN_SECRET_LEN} bytes"),
        )),
        (true, false) if algorithm == Algorithm::HS256 => Err(ConfigError::invalid(
            "auth.algorithm",
            "auth.public_key_path needs algorithm RS256 or ES256",
        )),
        _ => Ok(()),
    }?;
    Ok(())
}

fn parse_algorithm(name: &str) -> Result<Algorithm, ConfigError> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        other => Err(ConfigError::invalid(
            "auth.algorithm",
            format!("`{other}` is not one of HS256, RS256, ES256"),
        )),
    }
}

/// Verifies bearer tokens.
#[derive(Clone)]
pub struct TokenVerifier {
    key: Arc<DecodingKey>,
    validation: Arc<Validation>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("algorithms", &self.validation.algorithms)
            .finish()
    }
}

impl TokenVerifier {
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, ConfigError> {
        validate_config(cfg)?;
        let algorithm = parse_algorithm(&cfg.algorithm)?;
        let key = if cfg.jwt_secret.is_empty() {
            let pem = std::fs::read(&cfg.public_key_path)
                .map_err(|e| ConfigError::invalid("auth.public_key_path", format!("cannot read {}: {e}", cfg.public_key_path)))?;
            let parsed = if algorithm == Algorithm::RS256 {
                DecodingKey::from_rsa_pem(&pem)
            } else {
                DecodingKey::from_ec_pem(&pem)
            };
            parsed.map_err(|e| {
                ConfigError::invalid(
                    "auth.public_key_path",
                    format!("not a {} public key in PEM: {e}", cfg.algorithm),
                )
            })?
        } else {
            DecodingKey::from_secret(cfg.jwt_secret.as_bytes())
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 30;
        if cfg.issuer.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&[&cfg.issuer]);
            // Without this a token that simply omits `iss` would pass.
            validation.required_spec_claims.insert("iss".to_owned());
        }
        if cfg.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&cfg.audience]);
            validation.required_spec_claims.insert("aud".to_owned());
        }
        Ok(Self {
            key: Arc::new(key),
            validation: Arc::new(validation),
        })
    }

    pub fn verify(&self, token: &str) -> Result<Principal> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            let (reason, text) = match e.kind() {
                ErrorKind::ExpiredSignature => ("TOKEN_EXPIRED", "the token has expired"),
                ErrorKind::InvalidIssuer => ("TOKEN_INVALID", "the token's issuer is not accepted"),
                ErrorKind::InvalidAudience => ("TOKEN_INVALID", "the token's audience is not accepted"),
                ErrorKind::InvalidSignature => ("TOKEN_INVALID", "the token's signature does not verify"),
                _ => ("TOKEN_INVALID", "the token is malformed or uses another algorithm"),
            };
            Error::Unauthenticated {
                reason,
                reason_text: text.into(),
            }
        })?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(Error::Unauthenticated {
                reason: "TOKEN_INVALID",
                reason_text: "the token has no subject".into(),
            });
        }
        Ok(Principal {
            user_id: claims.sub,
            customer_id: claims.customer_id,
            expires_at: claims.exp,
        })
    }
}

/// Mints an HS256 token (development and tests; production tokens come from the
/// identity provider).
pub fn mint_hs256(secret: &str, principal: &Principal, ttl: std::time::Duration) -> Result<String> {
    let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or_default();
    let claims = Claims {
        sub: principal.user_id.clone(),
        customer_id: principal.customer_id.clone(),
        exp: now + ttl.as_secs(),
        iat: now,
        iss: None,
        aud: None,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(Error::internal)
}

/// tonic interceptor: verifies `authorization: Bearer <token>` and stores the
/// [`Principal`] in the request extensions. Health and reflection are not wrapped
/// with it, so they need no token.
#[derive(Clone, Debug)]
pub struct Authenticator {
    verifier: TokenVerifier,
}

impl Authenticator {
    pub fn new(verifier: TokenVerifier) -> Self {
        Self { verifier }
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let header = req.metadata().get("authorization").ok_or_else(|| {
            Status::from(Error::Unauthenticated {
                reason: "TOKEN_MISSING",
                reason_text: "send `authorization: Bearer <token>` metadata".into(),
            })
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .ok_or_else(|| {
                Status::from(Error::Unauthenticated {
                    reason: "TOKEN_INVALID",
                    reason_text: "the authorization metadata must be `Bearer <token>`".into(),
                })
            })?;
        let principal = self.verifier.verify(token.trim())?;
        req.extensions_mut().insert(principal);
        Ok(req)
    }
}

/// The principal the [`Authenticator`] stored on the request.
pub fn principal<T>(req: &Request<T>) -> Result<Principal> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Error::Unauthenticated {
            reason: "TOKEN_MISSING",
            reason_text: "no authenticated principal".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-secret-test-secret-test-secret!";

    fn cfg() -> AuthConfig {
        AuthConfig {
            jwt_secret: SECRET.into(),
            public_key_path: String::new(),
            algorithm: "HS256".into(),
            issuer: String::new(),
            audience: String::new(),
        }
    }

    fn user() -> Principal {
        Principal {
            user_id: "u1".into(),
            customer_id: None,
            expires_at: 0,
        }
    }

    #[test]
    fn token_round_trip() {
        let verifier = TokenVerifier::from_config(&cfg()).unwrap();
        let token = mint_hs256(SECRET, &user(), std::time::Duration::from_secs(60)).unwrap();
        let verified = verifier.verify(&token).unwrap();
        let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap();
        assert!(
            (now + 50..=now + 61).contains(&verified.expires_at),
            "{}",
            verified.expires_at
        );
        assert_eq!(
            Principal {
                expires_at: 0,
                ..verified
            },
            user()
        );
    }

    #[test]
    fn rejects_wrong_key_expired_and_garbage() {
        let verifier = TokenVerifier::from_config(&cfg()).unwrap();
        let other = mint_hs256(
            "another-secret-another-secret-12345",
            &user(),
            std::time::Duration::from_secs(60),
        )
        .unwrap();
        assert!(matches!(
            verifier.verify(&other),
            Err(Error::Unauthenticated {
                reason: "TOKEN_INVALID",
                ..
            })
        ));
        let claims = Claims {
            sub: "u".into(),
            customer_id: None,
            exp: 1_000,
            iat: 0,
            iss: None,
            aud: None,
        };
        let expired = jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap();
        assert!(matches!(
            verifier.verify(&expired),
            Err(Error::Unauthenticated {
                reason: "TOKEN_EXPIRED",
                ..
            })
        ));
        assert!(verifier.verify("not.a.token").is_err());
    }

    #[test]
    fn issuer_is_enforced_when_configured() {
        let mut c = cfg();
        c.issuer = "https://idp.example".into();
        let verifier = TokenVerifier::from_config(&c).unwrap();
        let token = mint_hs256(SECRET, &user(), std::time::Duration::from_secs(60)).unwrap();
        assert!(verifier.verify(&token).is_err());
    }

    #[test]
    fn config_rules() {
        let mut c = cfg();
        c.jwt_secret = "short".into();
        assert!(validate_config(&c).unwrap_err().to_string().contains("auth.jwt_secret"));
        c.jwt_secret.clear();
        assert!(validate_config(&c).is_err());
        let mut c = cfg();
        c.algorithm = "none".into();
        assert!(validate_config(&c).is_err());
    }
}

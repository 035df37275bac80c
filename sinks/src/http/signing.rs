//! Standard Webhooks headers: `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
//!
//! The timestamp is the attempt's own time, as the spec has it: receivers (the
//! official libraries, Svix) reject one more than five minutes from their clock, so
//! a commit time would fail every event of a backlog older than that, and every
//! replay. The id, the `Idempotency-Key` and the body stay the same across retries
//! and replays; only the timestamp and the signature over it change.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use pgcdc_schema::Secret;

/// The decoded signing key (the base64 part after `whsec_`).
#[derive(Clone)]
pub(crate) struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

impl SigningKey {
    /// Parses `whsec_<base64>`; the error never contains the secret.
    pub(crate) fn parse(secret: &Secret) -> Result<SigningKey, String> {
        let encoded = secret
            .expose()
            .strip_prefix("whsec_")
            .ok_or_else(|| "must start with `whsec_` (Standard Webhooks secret)".to_owned())?;
        let key = BASE64
            .decode(encoded.trim())
            .map_err(|_| "the part after `whsec_` is not valid base64".to_owned())?;
        if key.is_empty() {
            return Err("the part after `whsec_` is empty".into());
        }
        Ok(SigningKey(key))
    }

    /// The `webhook-signature` header value for these exact body bytes.
    pub(crate) fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // new_from_slice accepts keys of any length for HMAC, so this cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => return String::new(),
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

/// Idempotency key of a batch: `batch-` + the first 32 hex digits of SHA-256 over the
/// item ids joined by `,`. Stable for the same items (every retry); a replay that
/// groups items differently gets a different key, and the items' own ids are in the body.
pub(crate) fn batch_key<'a>(ids: impl Iterator<Item = &'a str>) -> String {
    let mut hasher = Sha256::new();
    for (i, id) in ids.enumerate() {
        if i > 0 {
            hasher.update(b",");
        }
        hasher.update(id.as_bytes());
    }
    let digest = hasher.finalize();
    let mut key = String::with_capacity(38);
    key.push_str("batch-");
    for b in digest.iter().take(16) {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

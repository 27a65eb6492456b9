//! Checking ed25519 signatures on key objects (device keys, cross-signing keys) the way the spec signs JSON.

use base64::Engine;
use ruma::{CanonicalJsonObject, SigningKeyAlgorithm};
use serde_json::Value;

/// Keys and signatures are unpadded base64, but be lenient about padding.
pub fn decode_b64(s: &str) -> Option<Vec<u8>> {
    let trimmed = s.trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(trimmed)
        .ok()
}

/// Whether `object` carries a valid signature by `signer`'s key
/// `ed25519:<key_name>` whose public key is `public_key` (unpadded base64).
pub fn verify(object: &Value, signer: &str, key_name: &str, public_key: &str) -> bool {
    let key_id = format!("ed25519:{key_name}");
    let Some(sig) = object
        .get("signatures")
        .and_then(|s| s.get(signer))
        .and_then(|s| s.get(&key_id))
        .and_then(Value::as_str)
    else {
        return false;
    };
    let (Some(sig), Some(key)) = (decode_b64(sig), decode_b64(public_key)) else {
        return false;
    };
    let Ok(canonical): Result<CanonicalJsonObject, _> = serde_json::from_value(object.clone())
    else {
        return false;
    };
    let Ok(bytes) = ruma::signatures::to_canonical_json_string_for_signing(&canonical) else {
        return false;
    };
    ruma::signatures::verify_canonical_json_bytes(
        &SigningKeyAlgorithm::Ed25519,
        &key,
        &sig,
        bytes.as_bytes(),
    )
    .is_ok()
}

/// The single ed25519 key of a cross-signing key object: `(key name, public key)`.
pub fn cross_signing_key(object: &Value) -> Option<(String, String)> {
    let keys = object.get("keys")?.as_object()?;
    if keys.len() != 1 {
        return None;
    }
    let (id, key) = keys.iter().next()?;
    let name = id.strip_prefix("ed25519:")?;
    Some((name.to_owned(), key.as_str()?.to_owned()))
}

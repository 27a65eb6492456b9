//! Storage-free Matrix federation protocol pieces: server signing keys, PDU hashing, signing and event IDs.
//!
//! The homeserver persists what this crate produces; nothing here does I/O,
//! so every rule is unit-testable on its own.

pub mod discovery;
pub mod request_auth;
pub mod server_keys;

use ruma::{
    CanonicalJsonObject, OwnedEventId, OwnedRoomId, RoomVersionId,
    room_version_rules::RoomVersionRules,
    signatures::{Ed25519KeyPair, KeyPair},
};

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("invalid server signing key: {0}")]
    BadKey(String),
    #[error("event cannot be hashed or signed: {0}")]
    Json(#[from] ruma::signatures::JsonError),
    #[error("unsupported room version {0}")]
    UnsupportedRoomVersion(RoomVersionId),
    #[error("invalid identifier: {0}")]
    Id(#[from] ruma::IdParseError),
    #[error("bad request authentication: {0}")]
    BadAuth(String),
    #[error("event fails verification: {0}")]
    Unverified(#[from] ruma::signatures::VerificationError),
}

/// A server's Ed25519 signing key with its key version (`ed25519:<version>`).
pub struct ServerKey {
    pair: Ed25519KeyPair,
    der: Vec<u8>,
}

impl ServerKey {
    /// A fresh random key; persist `to_der()` to keep it.
    pub fn generate(version: &str) -> Result<Self, FederationError> {
        let der = Ed25519KeyPair::generate();
        Self::from_der(&der, version)
    }

    pub fn from_der(der: &[u8], version: &str) -> Result<Self, FederationError> {
        let pair = Ed25519KeyPair::from_der(der, version.to_owned())
            .map_err(|e| FederationError::BadKey(e.to_string()))?;
        Ok(ServerKey {
            pair,
            der: der.to_vec(),
        })
    }

    /// The PKCS#8 document to store.
    pub fn to_der(&self) -> &[u8] {
        &self.der
    }

    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.pair.version())
    }

    pub fn public_key_base64(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.pair.public_key())
    }

    pub fn pair(&self) -> &impl KeyPair {
        &self.pair
    }
}

pub fn rules_for(version: &RoomVersionId) -> Result<RoomVersionRules, FederationError> {
    version
        .rules()
        .ok_or_else(|| FederationError::UnsupportedRoomVersion(version.clone()))
}

/// Adds the content hash and this server's signature to a PDU under
/// construction, and returns its event ID (the reference hash, room v3+).
pub fn hash_sign_and_id(
    pdu: &mut CanonicalJsonObject,
    origin: &str,
    key: &ServerKey,
    rules: &RoomVersionRules,
) -> Result<OwnedEventId, FederationError> {
    let id = hash_and_id(pdu, rules)?;
    sign_pdu(pdu, origin, key, rules)?;
    Ok(id)
}

/// Adds the content hash to a PDU under construction and returns its event
/// ID. The reference hash leaves signatures out, so the ID is the same
/// whether the PDU is signed now or later ([`sign_pdu`]).
pub fn hash_and_id(
    pdu: &mut CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<OwnedEventId, FederationError> {
    ruma::signatures::add_content_hash_to_event(pdu)?;
    let hash = ruma::signatures::reference_hash(pdu, rules)?;
    Ok(OwnedEventId::try_from(format!("${hash}"))?)
}

/// Adds this server's signature to a hashed PDU (it signs the redacted
/// form, so a PDU redacted since is signed alike).
pub fn sign_pdu(
    pdu: &mut CanonicalJsonObject,
    origin: &str,
    key: &ServerKey,
    rules: &RoomVersionRules,
) -> Result<(), FederationError> {
    Ok(ruma::signatures::sign_event(
        origin,
        &key.pair,
        pdu,
        &rules.redaction,
    )?)
}

/// Whether `origin` has signed the PDU.
pub fn signed_by(pdu: &CanonicalJsonObject, origin: &str) -> bool {
    matches!(
        pdu.get("signatures"),
        Some(ruma::CanonicalJsonValue::Object(s)) if s.contains_key(origin)
    )
}

/// Which servers' signatures an incoming PDU needs (the sender's, and for
/// some membership events the authorising server's).
pub fn servers_to_verify(
    pdu: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<Vec<String>, FederationError> {
    Ok(
        ruma::signatures::required_server_signatures_to_verify_event(pdu, &rules.signatures)?
            .into_iter()
            .map(|s| s.to_string())
            .collect(),
    )
}

/// The outcome of checking a received PDU's hashes and signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PduCheck {
    /// Signatures and content hash match: keep the event as it is.
    Valid,
    /// Signatures match but the content hash does not: the spec says to
    /// keep the redacted form.
    Redact,
}

/// Checks a received PDU's signatures and content hash with the given
/// public keys. A signature failure is an error: the event is dropped.
pub fn check_pdu(
    keys: &ruma::signatures::PublicKeyMap,
    pdu: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<PduCheck, FederationError> {
    match ruma::signatures::verify_event(keys, pdu, rules)? {
        ruma::signatures::Verified::All => Ok(PduCheck::Valid),
        ruma::signatures::Verified::Signatures => Ok(PduCheck::Redact),
    }
}

/// A received PDU's event ID (its reference hash, room v3+).
pub fn event_id_of(
    pdu: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<OwnedEventId, FederationError> {
    let hash = ruma::signatures::reference_hash(pdu, rules)?;
    Ok(OwnedEventId::try_from(format!("${hash}"))?)
}

/// Adds this server's signature to an event another server built (for
/// invites and joins the resident server countersigns).
pub fn countersign_event(
    pdu: &mut CanonicalJsonObject,
    origin: &str,
    key: &ServerKey,
    rules: &RoomVersionRules,
) -> Result<(), FederationError> {
    ruma::signatures::sign_event(origin, &key.pair, pdu, &rules.redaction)?;
    Ok(())
}

/// Room v12+: the room ID is the create event's reference hash with `!`.
pub fn room_id_from_create_event(
    create_event_id: &OwnedEventId,
) -> Result<OwnedRoomId, FederationError> {
    let hash = create_event_id.as_str().trim_start_matches('$');
    Ok(OwnedRoomId::try_from(format!("!{hash}"))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::{CanonicalJsonValue, canonical_json::to_canonical_value};

    fn event() -> CanonicalJsonObject {
        let v = serde_json::json!({
            "type": "m.room.message",
            "room_id": "!r:example.org",
            "sender": "@a:example.org",
            "content": {"body": "hi", "msgtype": "m.text"},
            "origin_server_ts": 1_700_000_000_000u64,
            "depth": 3,
            "prev_events": [],
            "auth_events": [],
        });
        match to_canonical_value(v).unwrap() {
            CanonicalJsonValue::Object(o) => o,
            _ => unreachable!(),
        }
    }

    /// A PDU signed after its ID was taken keeps that ID, and the late
    /// signature verifies like one made at once.
    #[test]
    fn signing_later_keeps_the_event_id() {
        let key = ServerKey::generate("a1").unwrap();
        let rules = rules_for(&RoomVersionId::V12).unwrap();
        let mut now = event();
        let mut later = event();
        let id_now = hash_sign_and_id(&mut now, "example.org", &key, &rules).unwrap();
        let id_later = hash_and_id(&mut later, &rules).unwrap();
        assert!(!signed_by(&later, "example.org"));
        sign_pdu(&mut later, "example.org", &key, &rules).unwrap();
        assert_eq!(id_now, id_later);
        assert_eq!(now, later, "signed now or later, the same PDU");
        assert!(signed_by(&later, "example.org"));
    }

    #[test]
    fn signing_is_deterministic_and_verifiable() {
        let key = ServerKey::generate("a1").unwrap();
        let rules = rules_for(&RoomVersionId::V11).unwrap();
        let mut e1 = event();
        let mut e2 = event();
        let id1 = hash_sign_and_id(&mut e1, "example.org", &key, &rules).unwrap();
        let id2 = hash_sign_and_id(&mut e2, "example.org", &key, &rules).unwrap();
        assert_eq!(id1, id2, "same event, same key: same reference hash");
        assert!(e1.contains_key("hashes") && e1.contains_key("signatures"));

        let mut keys = ruma::signatures::PublicKeyMap::new();
        let mut set = ruma::signatures::PublicKeySet::new();
        set.insert(
            key.key_id(),
            ruma::serde::Base64::parse(key.public_key_base64()).unwrap(),
        );
        keys.insert("example.org".into(), set);
        ruma::signatures::verify_event(&keys, &e1, &rules).unwrap();

        // Tampering with the content breaks the content hash.
        e1.insert(
            "content".into(),
            to_canonical_value(serde_json::json!({"body": "evil"})).unwrap(),
        );
        let verified = ruma::signatures::verify_event(&keys, &e1, &rules).unwrap();
        assert_eq!(verified, ruma::signatures::Verified::Signatures);
    }

    #[test]
    fn key_survives_der_round_trip() {
        let key = ServerKey::generate("k").unwrap();
        let again = ServerKey::from_der(key.to_der(), "k").unwrap();
        assert_eq!(key.public_key_base64(), again.public_key_base64());
        assert!(ServerKey::from_der(b"garbage", "k").is_err());
    }

    #[test]
    fn v12_room_id_is_create_event_hash() {
        let id = OwnedEventId::try_from("$abcDEF123_-").unwrap();
        assert_eq!(
            room_id_from_create_event(&id).unwrap().as_str(),
            "!abcDEF123_-"
        );
    }
}

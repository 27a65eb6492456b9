//! Server key documents: publishing ours (/_matrix/key/v2/server) and checking other servers' self-signed ones.

use std::collections::BTreeMap;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue,
    serde::Base64,
    signatures::{PublicKeyMap, PublicKeySet},
};
use serde_json::{Value, json};

use crate::{FederationError, ServerKey};

/// A key this server used to sign with, kept so old signatures still verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldKey {
    pub key_id: String,
    pub public_key: String,
    pub expired_ts: u64,
}

/// Our signed key document, valid until `valid_until_ts`.
pub fn key_document(
    server_name: &str,
    key: &ServerKey,
    old: &[OldKey],
    valid_until_ts: u64,
) -> Result<Value, FederationError> {
    let old_keys: serde_json::Map<String, Value> = old
        .iter()
        .map(|k| {
            (
                k.key_id.clone(),
                json!({"key": k.public_key, "expired_ts": k.expired_ts}),
            )
        })
        .collect();
    let doc = json!({
        "server_name": server_name,
        "valid_until_ts": valid_until_ts,
        "verify_keys": { key.key_id(): {"key": key.public_key_base64()} },
        "old_verify_keys": old_keys,
    });
    let mut object = to_object(doc)?;
    ruma::signatures::sign_json(server_name, key.pair(), &mut object)?;
    serde_json::to_value(&object).map_err(|e| FederationError::BadKey(e.to_string()))
}

/// Adds a notary signature to a document another server signed.
pub fn countersign(
    document: &Value,
    notary: &str,
    key: &ServerKey,
) -> Result<Value, FederationError> {
    let mut object = to_object(document.clone())?;
    ruma::signatures::sign_json(notary, key.pair(), &mut object)?;
    serde_json::to_value(&object).map_err(|e| FederationError::BadKey(e.to_string()))
}

/// The keys a server published, after checking the document is its own
/// and signed by one of its current keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerKeys {
    pub server_name: String,
    /// key ID -> unpadded base64 public key.
    pub verify_keys: BTreeMap<String, String>,
    pub old_verify_keys: BTreeMap<String, OldKey>,
    pub valid_until_ts: u64,
}

pub fn verify_key_document(
    expected_server: &str,
    document: &Value,
) -> Result<ServerKeys, FederationError> {
    let bad = |m: String| FederationError::BadKey(m);
    let server_name = document["server_name"]
        .as_str()
        .ok_or_else(|| bad("no server_name".into()))?;
    if server_name != expected_server {
        return Err(bad(format!(
            "document is for {server_name}, not {expected_server}"
        )));
    }
    let mut verify_keys = BTreeMap::new();
    for (id, v) in document["verify_keys"]
        .as_object()
        .ok_or_else(|| bad("no verify_keys".into()))?
    {
        let key = v["key"]
            .as_str()
            .ok_or_else(|| bad(format!("verify key {id} has no key")))?;
        verify_keys.insert(id.clone(), key.to_owned());
    }
    let mut old_verify_keys = BTreeMap::new();
    if let Some(old) = document["old_verify_keys"].as_object() {
        for (id, v) in old {
            if let (Some(key), Some(expired_ts)) = (v["key"].as_str(), v["expired_ts"].as_u64()) {
                old_verify_keys.insert(
                    id.clone(),
                    OldKey {
                        key_id: id.clone(),
                        public_key: key.to_owned(),
                        expired_ts,
                    },
                );
            }
        }
    }
    let valid_until_ts = document["valid_until_ts"]
        .as_u64()
        .ok_or_else(|| bad("no valid_until_ts".into()))?;
    // Every verify key must have signed the document (the spec asks for
    // at least the keys listed; unknown algorithms are skipped).
    let mut set = PublicKeySet::new();
    for (id, key) in &verify_keys {
        if id.starts_with("ed25519:") {
            set.insert(
                id.clone(),
                Base64::parse(key).map_err(|e| bad(e.to_string()))?,
            );
        }
    }
    if set.is_empty() {
        return Err(bad("no ed25519 verify key".into()));
    }
    let object = to_object(document.clone())?;
    let sigs = match object.get("signatures") {
        Some(CanonicalJsonValue::Object(s)) => s,
        _ => return Err(bad("unsigned key document".into())),
    };
    let own = match sigs.get(server_name) {
        Some(CanonicalJsonValue::Object(o)) => o.clone(),
        _ => return Err(bad("key document not signed by its server".into())),
    };
    for id in set.keys() {
        if !own.contains_key(id) {
            return Err(bad(format!("key document not signed with {id}")));
        }
    }
    // Check only the origin's own signatures (notaries add theirs).
    let mut only_own = object.clone();
    let mut s = CanonicalJsonObject::new();
    s.insert(server_name.to_owned(), CanonicalJsonValue::Object(own));
    only_own.insert("signatures".into(), CanonicalJsonValue::Object(s));
    let mut map = PublicKeyMap::new();
    map.insert(server_name.to_owned(), set);
    ruma::signatures::verify_json(&map, &only_own)
        .map_err(|e| bad(format!("key document signature: {e}")))?;
    Ok(ServerKeys {
        server_name: server_name.to_owned(),
        verify_keys,
        old_verify_keys,
        valid_until_ts,
    })
}

pub(crate) fn to_object(v: Value) -> Result<CanonicalJsonObject, FederationError> {
    match ruma::canonical_json::to_canonical_value(v) {
        Ok(CanonicalJsonValue::Object(o)) => Ok(o),
        Ok(_) => Err(FederationError::BadKey("not a JSON object".into())),
        Err(e) => Err(FederationError::BadKey(format!("not canonical JSON: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_document_verifies_and_forgeries_do_not() {
        let key = ServerKey::generate("a").unwrap();
        let old = [OldKey {
            key_id: "ed25519:old".into(),
            public_key: "AAAA".into(),
            expired_ts: 5,
        }];
        let doc = key_document("hs.example", &key, &old, 1_000).unwrap();
        let keys = verify_key_document("hs.example", &doc).unwrap();
        assert_eq!(
            keys.verify_keys.get("ed25519:a"),
            Some(&key.public_key_base64())
        );
        assert_eq!(keys.old_verify_keys["ed25519:old"].expired_ts, 5);
        assert_eq!(keys.valid_until_ts, 1_000);
        // Served under another name, or altered: refused.
        assert!(verify_key_document("evil.example", &doc).is_err());
        let mut altered = doc.clone();
        altered["valid_until_ts"] = json!(9_999_999);
        assert!(verify_key_document("hs.example", &altered).is_err());
        // A notary's countersignature does not disturb the origin's.
        let notary = ServerKey::generate("n").unwrap();
        let both = countersign(&doc, "notary.example", &notary).unwrap();
        assert!(verify_key_document("hs.example", &both).is_ok());
    }
}

//! The server's signing key: created on first start, kept in the database, and rotated on request with the retired key still published as an old verify key.

use bellwire_federation::{ServerKey, server_keys::OldKey};
use serde::{Deserialize, Serialize};

use crate::{
    accounts::{now_ms, random_string},
    error::{Error, Result},
    storage::{MetaRead, MetaWrite, Store},
};

/// A key retired by rotation, as kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredOldKey {
    pub key_id: String,
    pub public_key: String,
    pub expired_ts: u64,
}

fn bad(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("server signing key: {e}"))
}

fn encode(key: &ServerKey, version: &str) -> String {
    use base64::Engine;
    format!(
        "{version}:{}",
        base64::engine::general_purpose::STANDARD.encode(key.to_der())
    )
}

/// The current key, made and stored on first start, so that event
/// signatures stay valid across restarts.
pub fn load_or_create(store: &Store) -> Result<ServerKey> {
    use base64::Engine;
    match store.signing_key()? {
        Some(s) => {
            let (version, der) = s.split_once(':').ok_or_else(|| bad("malformed"))?;
            let der = base64::engine::general_purpose::STANDARD
                .decode(der)
                .map_err(bad)?;
            ServerKey::from_der(&der, version).map_err(bad)
        }
        None => {
            let version = random_string(6);
            let key = ServerKey::generate(&version).map_err(bad)?;
            let mut txn = store.transaction();
            txn.put_signing_key(&encode(&key, &version));
            txn.commit()?;
            Ok(key)
        }
    }
}

/// Keys retired by rotation: other servers still verify old events with them.
pub fn old_keys(store: &Store) -> Result<Vec<OldKey>> {
    Ok(store
        .old_signing_keys()?
        .into_iter()
        .map(|k| OldKey {
            key_id: k.key_id,
            public_key: k.public_key,
            expired_ts: k.expired_ts,
        })
        .collect())
}

/// Replaces the signing key with a new one; the old one is published as an
/// old verify key from now on. Returns the new key ID.
pub fn rotate(store: &Store) -> Result<String> {
    let current = load_or_create(store)?;
    let mut old = store.old_signing_keys()?;
    old.push(StoredOldKey {
        key_id: current.key_id(),
        public_key: current.public_key_base64(),
        expired_ts: now_ms(),
    });
    let version = random_string(6);
    let key = ServerKey::generate(&version).map_err(bad)?;
    let mut txn = store.transaction();
    txn.put_old_signing_keys(&old);
    txn.put_signing_key(&encode(&key, &version));
    txn.commit()?;
    Ok(key.key_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_old_key_as_an_old_verify_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        let first = load_or_create(&store).unwrap();
        assert_eq!(
            load_or_create(&store).unwrap().key_id(),
            first.key_id(),
            "the key survives a restart"
        );
        let new_id = rotate(&store).unwrap();
        assert_ne!(new_id, first.key_id());
        assert_eq!(load_or_create(&store).unwrap().key_id(), new_id);
        let old = old_keys(&store).unwrap();
        assert_eq!(old.len(), 1);
        assert_eq!(old[0].key_id, first.key_id());
        assert_eq!(old[0].public_key, first.public_key_base64());
    }
}

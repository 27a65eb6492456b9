//! Other servers' signing keys: fetched from the server itself, checked, cached with their validity, and served to others as a notary.

use std::collections::BTreeMap;

use bellwire_federation::server_keys::{self, ServerKeys};
use ruma::{serde::Base64, signatures::PublicKeyMap};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{FedClient, RemoteError};
use crate::{
    accounts::now_ms,
    storage::{FederationRead, FederationWrite, Store},
};

/// A server's last verified key document, as it sent it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedKeys {
    pub document: Value,
    pub fetched_ts: u64,
}

#[derive(Clone)]
pub struct KeyRing {
    store: Store,
    client: FedClient,
    own_name: String,
    /// (key ID, public key): the current key first, then retired ones.
    own_keys: Vec<(String, String)>,
}

impl KeyRing {
    pub fn new(
        store: Store,
        client: FedClient,
        own_name: String,
        own_keys: Vec<(String, String)>,
    ) -> Self {
        KeyRing {
            store,
            client,
            own_name,
            own_keys,
        }
    }

    fn cached(&self, server: &str) -> Option<ServerKeys> {
        let c = self.store.server_keys(server).ok()??;
        server_keys::verify_key_document(server, &c.document).ok()
    }

    /// The cached document for a server, for the notary endpoint.
    pub fn cached_document(&self, server: &str) -> Option<Value> {
        self.store.server_keys(server).ok()?.map(|c| c.document)
    }

    /// Fetches and caches `server`'s key document from the server itself.
    pub async fn refresh(&self, server: &str) -> Result<ServerKeys, RemoteError> {
        let doc = self
            .client
            .get_unsigned(server, "/_matrix/key/v2/server")
            .await?;
        let keys = server_keys::verify_key_document(server, &doc)
            .map_err(|e| RemoteError::Invalid(e.to_string()))?;
        let mut txn = self.store.transaction();
        txn.put_server_keys(
            server,
            &CachedKeys {
                document: doc,
                fetched_ts: now_ms(),
            },
        );
        if let Err(e) = txn.commit() {
            tracing::warn!("caching the keys of {server}: {e}");
        }
        Ok(keys)
    }

    /// The public key `key_id` of `server`; refetched when unknown or when
    /// the cached document has expired.
    pub async fn public_key(&self, server: &str, key_id: &str) -> Result<String, RemoteError> {
        if server == self.own_name {
            return self
                .own_keys
                .iter()
                .find(|(id, _)| id == key_id)
                .map(|(_, k)| k.clone())
                .ok_or_else(|| RemoteError::Invalid(format!("unknown key {key_id}")));
        }
        if let Some(k) = self.cached(server) {
            if let Some(p) = k.verify_keys.get(key_id)
                && k.valid_until_ts > now_ms()
            {
                return Ok(p.clone());
            }
            if let Some(old) = k.old_verify_keys.get(key_id) {
                return Ok(old.public_key.clone());
            }
        }
        let k = self.refresh(server).await?;
        k.verify_keys
            .get(key_id)
            .cloned()
            .or_else(|| k.old_verify_keys.get(key_id).map(|o| o.public_key.clone()))
            .ok_or_else(|| RemoteError::Invalid(format!("{server} has no key {key_id}")))
    }

    /// Every known key of each server, for checking event signatures.
    pub async fn key_map(&self, servers: &[String]) -> Result<PublicKeyMap, RemoteError> {
        let mut map = PublicKeyMap::new();
        for server in servers {
            let mut set = BTreeMap::new();
            if *server == self.own_name {
                for (id, k) in &self.own_keys {
                    set.insert(id.clone(), parse(k)?);
                }
            } else {
                let keys = match self.cached(server) {
                    Some(k) => k,
                    None => self.refresh(server).await?,
                };
                for (id, k) in &keys.verify_keys {
                    set.insert(id.clone(), parse(k)?);
                }
                for (id, k) in &keys.old_verify_keys {
                    set.insert(id.clone(), parse(&k.public_key)?);
                }
            }
            map.insert(server.clone(), set);
        }
        Ok(map)
    }
}

fn parse(b64: &str) -> Result<Base64, RemoteError> {
    Base64::parse(b64).map_err(|e| RemoteError::Invalid(format!("bad public key: {e}")))
}

//! Other servers' users' device lists: cached while they share a room with one of our users, kept current by m.device_list_update EDUs, refetched after a gap.

use std::collections::BTreeMap;

use reqwest::Method;
use ruma::UserId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Federation, e2ee::KeyQueryResult};
use crate::{
    error::Result,
    storage::{FederationRead, FederationWrite},
};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CachedDevices {
    /// The last update's stream ID, when we followed the updates; `None`
    /// right after a fetch (the answer carries none).
    pub stream_id: Option<u64>,
    pub devices: Map<String, Value>,
    pub master_key: Option<Value>,
    pub self_signing_key: Option<Value>,
}

impl Federation {
    fn cache_devices(&self, user: &UserId, devices: Option<&CachedDevices>) -> Result<()> {
        let mut txn = self.store.transaction();
        txn.set_remote_devices(user, devices);
        Ok(txn.commit()?)
    }

    /// Updates reach us only while we share a room with the user; outside
    /// that a cached list could silently go stale.
    fn may_cache(&self, user: &UserId) -> bool {
        self.rooms.joined_rooms(user).is_ok_and(|r| !r.is_empty())
    }

    fn cached_devices(&self, user: &UserId) -> Option<CachedDevices> {
        if !self.may_cache(user) {
            return None;
        }
        self.store.remote_devices(user).ok().flatten()
    }

    /// Client /keys/query for other servers' users: from the cache where it
    /// can be trusted, from their servers otherwise (and cached then).
    pub async fn query_remote_keys(
        &self,
        wanted: BTreeMap<String, Map<String, Value>>,
    ) -> KeyQueryResult {
        let mut out = KeyQueryResult::default();
        let mut to_fetch: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        for (server, users) in wanted {
            for (user, devices) in users {
                let Ok(uid) = UserId::parse(user.as_str()) else {
                    continue;
                };
                match self.cached_devices(&uid) {
                    Some(c) => {
                        let only: Vec<&str> = devices
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .collect();
                        let list: Map<String, Value> = c
                            .devices
                            .into_iter()
                            .filter(|(d, _)| only.is_empty() || only.contains(&d.as_str()))
                            .collect();
                        out.device_keys.insert(user.clone(), Value::Object(list));
                        if let Some(k) = c.master_key {
                            out.master_keys.insert(user.clone(), k);
                        }
                        if let Some(k) = c.self_signing_key {
                            out.self_signing_keys.insert(user.clone(), k);
                        }
                    }
                    None => {
                        to_fetch
                            .entry(server.clone())
                            .or_default()
                            .insert(user, devices);
                    }
                }
            }
        }
        let asks = to_fetch.into_iter().map(|(server, users)| async move {
            // Fetch whole lists, so what we cache is complete.
            let all: Map<String, Value> = users.keys().map(|u| (u.clone(), json!([]))).collect();
            let body = json!({"device_keys": all});
            let r = self
                .client
                .json(
                    &server,
                    Method::POST,
                    "/_matrix/federation/v1/user/keys/query",
                    Some(&body),
                )
                .await;
            (server, users, r)
        });
        for (server, users, r) in super::e2ee::join_all(asks).await {
            let v = match r {
                Ok(v) => v,
                Err(e) => {
                    out.failures.insert(
                        server,
                        json!({"errcode": "M_UNKNOWN", "error": e.to_string()}),
                    );
                    continue;
                }
            };
            for (user, devices) in users {
                // A server answers only for its own users.
                let Ok(uid) = UserId::parse(user.as_str()) else {
                    continue;
                };
                if uid.server_name().as_str() != server {
                    continue;
                }
                let entry = CachedDevices {
                    stream_id: None,
                    devices: v["device_keys"][&user]
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                    master_key: v["master_keys"].get(&user).cloned(),
                    self_signing_key: v["self_signing_keys"].get(&user).cloned(),
                };
                if self.may_cache(&uid) {
                    let mut txn = self.store.transaction();
                    txn.set_remote_devices(&uid, Some(&entry));
                    if let Err(e) = txn.commit() {
                        tracing::warn!("caching the devices of {uid}: {e}");
                    }
                }
                let only: Vec<&str> = devices
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let list: Map<String, Value> = entry
                    .devices
                    .into_iter()
                    .filter(|(d, _)| only.is_empty() || only.contains(&d.as_str()))
                    .collect();
                out.device_keys.insert(user.clone(), Value::Object(list));
                if let Some(k) = entry.master_key {
                    out.master_keys.insert(user.clone(), k);
                }
                if let Some(k) = entry.self_signing_key {
                    out.self_signing_keys.insert(user.clone(), k);
                }
            }
        }
        out
    }

    /// Applies an m.device_list_update to the cache when it follows on from
    /// what we have; otherwise drops the entry, so the next query refetches.
    pub(crate) fn apply_device_list_update(&self, user: &UserId, content: &Value) -> Result<()> {
        let Some(mut cached) = self.store.remote_devices(user)? else {
            return Ok(());
        };
        let prev: Vec<u64> = content["prev_id"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect();
        let follows = match cached.stream_id {
            Some(s) => prev.is_empty() || prev.iter().all(|p| *p == s),
            None => prev.is_empty(),
        };
        let device = content["device_id"].as_str().unwrap_or_default();
        if !follows || device.is_empty() {
            return self.cache_devices(user, None);
        }
        if content["deleted"].as_bool() == Some(true) {
            cached.devices.remove(device);
        } else if let Some(keys) = content.get("keys").filter(|k| k.is_object()) {
            cached.devices.insert(device.to_owned(), keys.clone());
        } else {
            // A change without the keys: we cannot know the new state.
            return self.cache_devices(user, None);
        }
        cached.stream_id = content["stream_id"].as_u64();
        self.cache_devices(user, Some(&cached))
    }

    pub(crate) fn apply_signing_key_update(&self, user: &UserId, content: &Value) -> Result<()> {
        let Some(mut cached) = self.store.remote_devices(user)? else {
            return Ok(());
        };
        if let Some(k) = content.get("master_key").filter(|k| k.is_object()) {
            cached.master_key = Some(k.clone());
        }
        if let Some(k) = content.get("self_signing_key").filter(|k| k.is_object()) {
            cached.self_signing_key = Some(k.clone());
        }
        self.cache_devices(user, Some(&cached))
    }
}

//! End-to-end encryption across servers: answering other servers' key queries and claims, and asking theirs for our users.

use std::collections::BTreeMap;

use reqwest::Method;
use ruma::{OwnedUserId, UserId};
use serde_json::{Map, Value, json};

use super::{Federation, inbound::enc};
use crate::error::{Error, Result};

/// What a key query gathered, keyed by user ID.
#[derive(Default)]
pub struct KeyQueryResult {
    pub device_keys: Map<String, Value>,
    pub master_keys: Map<String, Value>,
    pub self_signing_keys: Map<String, Value>,
    pub failures: Map<String, Value>,
}

impl Federation {
    /// /user/keys/query: our users' device and cross-signing keys.
    pub fn answer_key_query(&self, origin: &str, body: &Value) -> Result<Value> {
        let wanted = body["device_keys"]
            .as_object()
            .ok_or_else(|| Error::bad_json("device_keys must be an object"))?;
        let mut out = KeyQueryResult::default();
        for (user, devices) in wanted {
            let Ok(user) = UserId::parse(user.as_str()) else {
                continue;
            };
            if user.server_name().as_str() != self.server_name {
                continue;
            }
            let only: Vec<String> = devices
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect();
            // Signatures other users made are shown to the key's owner only
            // among local viewers; a remote server sees the owner's view.
            out.device_keys.insert(
                user.to_string(),
                Value::Object(self.e2ee.device_keys(&user, &user, &only)?),
            );
            if let Some(k) = self.e2ee.cross_signing_for(&user, &user, "master")? {
                out.master_keys.insert(user.to_string(), k);
            }
            if let Some(k) = self.e2ee.cross_signing_for(&user, &user, "self_signing")? {
                out.self_signing_keys.insert(user.to_string(), k);
            }
        }
        tracing::debug!("answered a key query from {origin}");
        Ok(
            json!({"device_keys": out.device_keys, "master_keys": out.master_keys, "self_signing_keys": out.self_signing_keys}),
        )
    }

    pub async fn answer_key_claim(&self, body: &Value) -> Result<Value> {
        let wanted = body["one_time_keys"]
            .as_object()
            .ok_or_else(|| Error::bad_json("one_time_keys must be an object"))?;
        let mut local: BTreeMap<OwnedUserId, BTreeMap<String, String>> = BTreeMap::new();
        for (user, devices) in wanted {
            let Ok(user) = UserId::parse(user.as_str()) else {
                continue;
            };
            if user.server_name().as_str() != self.server_name {
                continue;
            }
            let per: BTreeMap<String, String> = devices
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(d, a)| a.as_str().map(|a| (d.clone(), a.to_owned())))
                .collect();
            local.insert(user, per);
        }
        Ok(json!({"one_time_keys": self.e2ee.claim(&local).await?}))
    }

    /// /user/devices/{userId}: a local user's devices, for device list resyncs.
    pub fn answer_user_devices(&self, user: &UserId) -> Result<Value> {
        if user.server_name().as_str() != self.server_name {
            return Err(Error::forbidden("not a user of this server"));
        }
        let keys = self.e2ee.device_keys(user, user, &[])?;
        let devices: Vec<Value> = keys
            .into_iter()
            .map(|(id, k)| {
                let name = k["unsigned"]["device_display_name"].clone();
                json!({"device_id": id, "keys": k, "device_display_name": name})
            })
            .collect();
        let mut out = json!({
            "user_id": user,
            "stream_id": self.rooms.stream.current(),
            "devices": devices,
        });
        if let Some(k) = self.e2ee.cross_signing_for(user, user, "master")? {
            out["master_key"] = k;
        }
        if let Some(k) = self.e2ee.cross_signing_for(user, user, "self_signing")? {
            out["self_signing_key"] = k;
        }
        Ok(out)
    }

    /// Claims one-time keys of other servers' users (client /keys/claim).
    pub async fn claim_remote_keys(
        &self,
        wanted: BTreeMap<String, Map<String, Value>>,
    ) -> (Map<String, Value>, Map<String, Value>) {
        let (mut keys, mut failures) = (Map::new(), Map::new());
        let asks = wanted.into_iter().map(|(server, users)| async move {
            let body = json!({"one_time_keys": users});
            let r = self
                .client
                .json(
                    &server,
                    Method::POST,
                    "/_matrix/federation/v1/user/keys/claim",
                    Some(&body),
                )
                .await;
            (server, r)
        });
        for (server, r) in join_all(asks).await {
            match r {
                Ok(v) => {
                    for (user, k) in v["one_time_keys"].as_object().into_iter().flatten() {
                        if UserId::parse(user.as_str())
                            .is_ok_and(|u| u.server_name().as_str() == server)
                        {
                            keys.insert(user.clone(), k.clone());
                        }
                    }
                }
                Err(e) => {
                    failures.insert(
                        server,
                        json!({"errcode": "M_UNKNOWN", "error": e.to_string()}),
                    );
                }
            }
        }
        (keys, failures)
    }

    pub fn user_devices_path(user: &UserId) -> String {
        format!("/_matrix/federation/v1/user/devices/{}", enc(user.as_str()))
    }
}

/// Runs the futures concurrently and collects their outputs.
pub(crate) async fn join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let futs: Vec<F> = futs.into_iter().collect();
    let mut out = Vec::with_capacity(futs.len());
    // Few servers per query: sequential awaits of already-created futures
    // would serialise them, so pin them all and poll together.
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if results[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => results[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.extend(results.into_iter().flatten());
    out
}

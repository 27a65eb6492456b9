//! Device keys, one-time keys and fallback keys: upload, query, claim, and removal with the device.

use std::collections::BTreeMap;

use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{E2ee, signatures};
use crate::{
    error::{Error, Result},
    storage::{E2eeRead, E2eeWrite, Txn},
};

/// A device's fallback key and whether it was handed out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FallbackKey {
    pub key_id: String,
    pub key: Value,
    pub used: bool,
}

/// The parts of POST /keys/upload.
#[derive(Debug, Default, Deserialize)]
pub struct Upload {
    #[serde(default)]
    pub device_keys: Option<Value>,
    #[serde(default)]
    pub one_time_keys: Option<Map<String, Value>>,
    #[serde(default)]
    pub fallback_keys: Option<Map<String, Value>>,
}

/// Splits `algorithm:key_id` and checks it looks like one.
fn split_key_id(id: &str) -> Result<(&str, &str)> {
    match id.split_once(':') {
        Some((alg, key)) if !alg.is_empty() && !key.is_empty() && id.len() <= 255 => Ok((alg, key)),
        _ => Err(Error::invalid_param(format!("invalid key ID {id}"))),
    }
}

/// A one-time or fallback key is a bare base64 string or a signed object
/// with a `key` string.
fn check_key_value(id: &str, v: &Value) -> Result<()> {
    let ok = match v {
        Value::String(s) => !s.is_empty(),
        Value::Object(o) => o
            .get("key")
            .and_then(Value::as_str)
            .is_some_and(|k| !k.is_empty()),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::bad_json(format!(
            "key {id} must be a string or an object with a key"
        )))
    }
}

fn validate_device_keys(user: &UserId, device: &str, dk: &Value) -> Result<()> {
    let obj = dk
        .as_object()
        .ok_or_else(|| Error::bad_json("device_keys must be an object"))?;
    if obj.get("user_id").and_then(Value::as_str) != Some(user.as_str()) {
        return Err(Error::invalid_param("device_keys.user_id is not yours"));
    }
    if obj.get("device_id").and_then(Value::as_str) != Some(device) {
        return Err(Error::invalid_param(
            "device_keys.device_id is not this device",
        ));
    }
    if !obj
        .get("algorithms")
        .is_some_and(|a| a.as_array().is_some_and(|a| a.iter().all(Value::is_string)))
    {
        return Err(Error::bad_json(
            "device_keys.algorithms must be a list of strings",
        ));
    }
    let keys = obj
        .get("keys")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::bad_json("device_keys.keys must be an object"))?;
    if !keys.values().all(Value::is_string) {
        return Err(Error::bad_json("device_keys.keys values must be strings"));
    }
    // The device signs its own keys with its ed25519 key; a device whose
    // keys do not verify would only produce undecryptable messages.
    let ed = keys
        .get(&format!("ed25519:{device}"))
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_json("device_keys needs ed25519:<device_id>"))?;
    if !signatures::verify(dk, user.as_str(), device, ed) {
        return Err(Error::InvalidSignature(
            "device_keys are not signed by the device's ed25519 key".into(),
        ));
    }
    Ok(())
}

impl E2ee {
    /// Stores what a device uploads and returns its one-time key counts.
    pub async fn upload(
        &self,
        user: &UserId,
        device: &str,
        up: Upload,
    ) -> Result<BTreeMap<String, u64>> {
        if let Some(dk) = &up.device_keys {
            validate_device_keys(user, device, dk)?;
        }
        if up.one_time_keys.as_ref().is_some_and(|o| o.len() > 1000) {
            return Err(Error::invalid_param(
                "at most 1000 one-time keys per upload",
            ));
        }
        // Checked and stored in one write, so two uploads at once cannot
        // both claim a key ID with different values.
        let changed = self
            .stream
            .write(|w| {
                for (id, v) in up.one_time_keys.iter().flatten() {
                    let (alg, key_id) = split_key_id(id)?;
                    check_key_value(id, v)?;
                    match w.one_time_key(user, device, alg, key_id)? {
                        Some(old) if &old != v => {
                            return Err(Error::invalid_param(format!(
                                "one-time key {id} already exists with another value"
                            )));
                        }
                        _ => w.put_one_time_key(user, device, alg, key_id, v),
                    }
                }
                for (id, v) in up.fallback_keys.iter().flatten() {
                    let (alg, key_id) = split_key_id(id)?;
                    check_key_value(id, v)?;
                    let fb = FallbackKey {
                        key_id: key_id.to_owned(),
                        key: v.clone(),
                        used: false,
                    };
                    w.put_fallback_key(user, device, alg, &fb);
                }
                let Some(dk) = &up.device_keys else {
                    return Ok(false);
                };
                // Keep signatures others (cross-signing) added to the same keys.
                let same_keys = w
                    .device_keys(user, device)?
                    .is_some_and(|o| o.get("keys") == dk.get("keys"));
                if !same_keys {
                    w.put_device_keys(user, device, dk);
                }
                Ok(!same_keys)
            })
            .await?;
        if changed {
            self.device_list_changed(user).await?;
        }
        self.one_time_key_counts(user, device)
    }

    pub fn one_time_key_counts(
        &self,
        user: &UserId,
        device: &str,
    ) -> Result<BTreeMap<String, u64>> {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for alg in self.store.one_time_key_algorithms(user, device)? {
            *counts.entry(alg).or_default() += 1;
        }
        // Clients read a missing signed_curve25519 as "unknown"; say 0.
        counts.entry("signed_curve25519".into()).or_default();
        Ok(counts)
    }

    pub fn unused_fallback_key_types(&self, user: &UserId, device: &str) -> Result<Vec<String>> {
        Ok(self
            .store
            .fallback_keys(user, device)?
            .into_iter()
            .filter(|(_, fb)| !fb.used)
            .map(|(alg, _)| alg)
            .collect())
    }

    /// Device keys of `user` (all devices, or those listed), with the
    /// signatures `viewer` may see merged in.
    pub fn device_keys(
        &self,
        viewer: &UserId,
        user: &UserId,
        only: &[String],
    ) -> Result<Map<String, Value>> {
        let mut out = Map::new();
        for (device, mut dk) in self.store.all_device_keys(user)? {
            if !only.is_empty() && !only.contains(&device) {
                continue;
            }
            self.merge_signatures(viewer, user, &device, &mut dk)?;
            if let Some(name) = self.device_display_name(user, &device)? {
                dk["unsigned"] = json!({"device_display_name": name});
            }
            out.insert(device, dk);
        }
        Ok(out)
    }

    fn device_display_name(&self, user: &UserId, device: &str) -> Result<Option<String>> {
        Ok(self
            .accounts
            .device(user, device)?
            .and_then(|d| d.display_name))
    }

    /// Hands out one key per requested device: a one-time key (each exactly
    /// once: the claim is one write), or the fallback key when none are left.
    pub async fn claim(
        &self,
        wanted: &BTreeMap<OwnedUserId, BTreeMap<String, String>>,
    ) -> Result<Map<String, Value>> {
        self.stream
            .write(|w| {
                let mut out = Map::new();
                for (user, devices) in wanted {
                    let mut per_user = Map::new();
                    for (device, alg) in devices {
                        if let Some((id, key)) = claim_one(w, user, device, alg)? {
                            per_user.insert(device.clone(), json!({ id: key }));
                        }
                    }
                    if !per_user.is_empty() {
                        out.insert(user.to_string(), Value::Object(per_user));
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Forgets everything E2EE about devices that are being deleted.
    pub async fn remove_devices(&self, user: &UserId, devices: &[&str]) -> Result<()> {
        let mut txn = self.store.transaction();
        let mut had_keys = false;
        for d in devices {
            had_keys |= txn.device_keys(user, d)?.is_some();
            txn.delete_device_e2ee(user, d)?;
        }
        txn.commit()?;
        if had_keys {
            self.device_list_changed(user).await?;
        }
        Ok(())
    }
}

/// One device's key for a claim, taken out of `txn`.
fn claim_one(
    txn: &mut Txn<'_>,
    user: &UserId,
    device: &str,
    alg: &str,
) -> Result<Option<(String, Value)>> {
    if let Some((key_id, key)) = txn.first_one_time_key(user, device, alg)? {
        txn.delete_one_time_key(user, device, alg, &key_id);
        return Ok(Some((format!("{alg}:{key_id}"), key)));
    }
    if let Some(mut fb) = txn.fallback_key(user, device, alg)? {
        let id = format!("{alg}:{}", fb.key_id);
        let key = fb.key.clone();
        if !fb.used {
            fb.used = true;
            txn.put_fallback_key(user, device, alg, &fb);
        }
        return Ok(Some((id, key)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{Map, json};

    use super::Upload;
    use crate::test_support::world;

    #[tokio::test]
    async fn one_time_keys_go_once_then_the_fallback_key() {
        let w = world();
        let (alice, bob) = (w.user("alice").await, w.user("bob").await);
        let mut otks = Map::new();
        for i in 0..3 {
            otks.insert(
                format!("signed_curve25519:K{i}"),
                json!({"key": format!("otk{i}"), "signatures": {}}),
            );
        }
        let mut fallback = Map::new();
        fallback.insert(
            "signed_curve25519:F".into(),
            json!({"key": "fb", "fallback": true, "signatures": {}}),
        );
        let up = Upload {
            device_keys: None,
            one_time_keys: Some(otks),
            fallback_keys: Some(fallback),
        };
        let counts = w.s.e2ee.upload(&bob, "PHONE", up).await.unwrap();
        assert_eq!(counts.get("signed_curve25519"), Some(&3));

        let want: BTreeMap<_, _> = [(
            bob.clone(),
            BTreeMap::from([("PHONE".to_owned(), "signed_curve25519".to_owned())]),
        )]
        .into();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let got = w.s.e2ee.claim(&want).await.unwrap();
            let keys = got[bob.as_str()]["PHONE"].as_object().unwrap().clone();
            seen.extend(keys.keys().cloned());
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3, "every claim got a different one-time key");
        assert_eq!(
            w.s.e2ee.unused_fallback_key_types(&bob, "PHONE").unwrap(),
            ["signed_curve25519"]
        );
        let got = w.s.e2ee.claim(&want).await.unwrap();
        assert!(
            got[bob.as_str()]["PHONE"]
                .get("signed_curve25519:F")
                .is_some(),
            "then the fallback key"
        );
        assert!(
            w.s.e2ee
                .unused_fallback_key_types(&bob, "PHONE")
                .unwrap()
                .is_empty()
        );
        // A device that is gone has nothing to claim.
        w.s.e2ee.remove_devices(&bob, &["PHONE"]).await.unwrap();
        assert!(w.s.e2ee.claim(&want).await.unwrap().is_empty());
        let _ = alice;
    }

    #[tokio::test]
    async fn a_one_time_key_id_cannot_change_value() {
        let w = world();
        let bob = w.user("bob").await;
        let up = |v: &str| {
            let mut otks = Map::new();
            otks.insert("signed_curve25519:K".into(), json!({"key": v}));
            Upload {
                device_keys: None,
                one_time_keys: Some(otks),
                fallback_keys: None,
            }
        };
        w.s.e2ee.upload(&bob, "D", up("a")).await.unwrap();
        w.s.e2ee.upload(&bob, "D", up("a")).await.unwrap();
        assert!(w.s.e2ee.upload(&bob, "D", up("b")).await.is_err());
    }
}

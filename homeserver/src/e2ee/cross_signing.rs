//! Cross-signing: a user's master, self-signing and user-signing keys, and signatures uploaded on device and master keys, each verified before it is stored.

use std::collections::BTreeMap;

use ruma::UserId;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{E2ee, signatures};
use crate::{
    error::{Error, Result},
    storage::{E2eeRead, E2eeWrite},
};

pub const KINDS: [&str; 3] = ["master", "self_signing", "user_signing"];

#[derive(Debug, Default, Deserialize)]
pub struct CrossSigningUpload {
    pub master_key: Option<Value>,
    pub self_signing_key: Option<Value>,
    pub user_signing_key: Option<Value>,
}

impl CrossSigningUpload {
    fn by_kind(&self) -> [(&'static str, Option<&Value>); 3] {
        [
            ("master", self.master_key.as_ref()),
            ("self_signing", self.self_signing_key.as_ref()),
            ("user_signing", self.user_signing_key.as_ref()),
        ]
    }
}

fn check_shape(user: &UserId, kind: &str, key: &Value) -> Result<(String, String)> {
    if key.get("user_id").and_then(Value::as_str) != Some(user.as_str()) {
        return Err(Error::invalid_param(format!(
            "{kind} key: user_id is not yours"
        )));
    }
    let usage_ok = key
        .get("usage")
        .and_then(Value::as_array)
        .is_some_and(|u| u.iter().any(|x| x.as_str() == Some(kind)));
    if !usage_ok {
        return Err(Error::invalid_param(format!(
            "{kind} key: usage must include {kind}"
        )));
    }
    signatures::cross_signing_key(key).ok_or_else(|| {
        Error::bad_json(format!(
            "{kind} key: keys must hold exactly one ed25519 key"
        ))
    })
}

impl E2ee {
    pub fn cross_signing_key(&self, user: &UserId, kind: &str) -> Result<Option<Value>> {
        Ok(self.store.cross_signing_key(user, kind)?)
    }

    /// Whether storing `up` would replace keys the user already has, which
    /// needs user-interactive auth (re-uploading the same keys does not).
    pub fn cross_signing_replaces(&self, user: &UserId, up: &CrossSigningUpload) -> Result<bool> {
        for (kind, new) in up.by_kind() {
            if let (Some(new), Some(old)) = (new, self.cross_signing_key(user, kind)?)
                && new.get("keys") != old.get("keys")
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Validates and stores cross-signing keys: the self-signing and
    /// user-signing keys must carry a valid signature by the master key.
    pub async fn upload_cross_signing(&self, user: &UserId, up: CrossSigningUpload) -> Result<()> {
        let master = match &up.master_key {
            Some(m) => Some(m.clone()),
            None => self.cross_signing_key(user, "master")?,
        };
        let mut txn = self.store.transaction();
        let mut any = false;
        for (kind, key) in up.by_kind() {
            let Some(key) = key else { continue };
            check_shape(user, kind, key)?;
            if kind != "master" {
                let m = master.as_ref().ok_or_else(|| {
                    Error::MissingParam(
                        "no master signing key is available: upload one first".into(),
                    )
                })?;
                let (name, public) = signatures::cross_signing_key(m)
                    .ok_or_else(|| Error::bad_json("stored master key is malformed"))?;
                if !signatures::verify(key, user.as_str(), &name, &public) {
                    return Err(Error::InvalidSignature(format!(
                        "{kind} key is not signed by the master key"
                    )));
                }
            }
            txn.put_cross_signing_key(user, kind, key);
            any = true;
        }
        if !any {
            return Err(Error::MissingParam(
                "no cross-signing keys in the request".into(),
            ));
        }
        txn.commit()?;
        self.announce_signing_keys(user)?;
        self.device_list_changed(user).await
    }

    /// Adds to `object` the signatures on `target_key` of `user` that
    /// `viewer` may see: the owner's own, and the viewer's.
    pub(crate) fn merge_signatures(
        &self,
        viewer: &UserId,
        user: &UserId,
        target_key: &str,
        object: &mut Value,
    ) -> Result<()> {
        for (signer, key_id, sig) in self.store.key_signatures(user, target_key)? {
            if signer != user.as_str() && signer != viewer.as_str() {
                continue;
            }
            if !object.get("signatures").is_some_and(Value::is_object) {
                object["signatures"] = json!({});
            }
            object["signatures"][signer.as_str()][key_id.as_str()] = Value::from(sig);
        }
        Ok(())
    }

    /// A cross-signing key as `viewer` sees it (with visible signatures).
    pub fn cross_signing_for(
        &self,
        viewer: &UserId,
        user: &UserId,
        kind: &str,
    ) -> Result<Option<Value>> {
        let Some(mut key) = self.cross_signing_key(user, kind)? else {
            return Ok(None);
        };
        if let Some((_, public)) = signatures::cross_signing_key(&key) {
            self.merge_signatures(viewer, user, &public, &mut key)?;
        }
        Ok(Some(key))
    }

    /// POST /keys/signatures/upload: every signature is checked against
    /// the key it claims to be made with; failures are reported per key.
    pub async fn upload_signatures(
        &self,
        signer: &UserId,
        body: BTreeMap<String, Map<String, Value>>,
    ) -> Result<Map<String, Value>> {
        let mut failures = Map::new();
        let mut changed_users = Vec::new();
        for (target_user, objects) in body {
            let Ok(target) = ruma::OwnedUserId::try_from(target_user.as_str()) else {
                failures.insert(
                    target_user,
                    json!({"*": {"errcode": "M_INVALID_PARAM", "error": "invalid user ID"}}),
                );
                continue;
            };
            for (key_id, object) in objects {
                match self.check_signature_upload(signer, &target, &key_id, &object) {
                    Ok(sigs) => {
                        let mut txn = self.store.transaction();
                        for (signer_key, sig) in sigs {
                            txn.put_key_signature(&target, &key_id, signer, &signer_key, &sig);
                        }
                        txn.commit()?;
                        changed_users.push(target.clone());
                    }
                    Err(e) => {
                        let entry = failures
                            .entry(target.to_string())
                            .or_insert_with(|| json!({}));
                        entry[key_id.as_str()] =
                            json!({"errcode": error_code(&e), "error": e.to_string()});
                    }
                }
            }
        }
        changed_users.dedup();
        for u in changed_users {
            self.device_list_changed(&u).await?;
        }
        Ok(failures)
    }

    /// The signer's valid signatures on one uploaded object, as
    /// `(signer key ID, signature)`.
    fn check_signature_upload(
        &self,
        signer: &UserId,
        target: &UserId,
        key_id: &str,
        object: &Value,
    ) -> Result<Vec<(String, String)>> {
        // What the object must be, and which of the signer's keys may sign it.
        let (stored, signing_key): (Value, Option<(String, String)>) = if target == signer {
            if let Some(dk) = self.store.device_keys(target, key_id)? {
                let ssk = self
                    .cross_signing_key(signer, "self_signing")?
                    .ok_or_else(|| Error::invalid_param("no self-signing key"))?;
                (dk, signatures::cross_signing_key(&ssk))
            } else {
                let master = self
                    .cross_signing_key(target, "master")?
                    .ok_or_else(|| Error::not_found("no such key"))?;
                if signatures::cross_signing_key(&master)
                    .map(|(_, p)| p)
                    .as_deref()
                    != Some(key_id)
                {
                    return Err(Error::not_found("no such key"));
                }
                // The master key is signed by one of the user's devices.
                (master, None)
            }
        } else {
            let master = self
                .cross_signing_key(target, "master")?
                .ok_or_else(|| Error::not_found("no such key"))?;
            if signatures::cross_signing_key(&master)
                .map(|(_, p)| p)
                .as_deref()
                != Some(key_id)
            {
                return Err(Error::invalid_param(
                    "only another user's master key can be signed",
                ));
            }
            let usk = self
                .cross_signing_key(signer, "user_signing")?
                .ok_or_else(|| Error::invalid_param("no user-signing key"))?;
            (master, signatures::cross_signing_key(&usk))
        };
        if stored.get("keys") != object.get("keys") {
            return Err(Error::invalid_param(
                "the signed object does not match the stored key",
            ));
        }
        let sigs = object
            .get("signatures")
            .and_then(|s| s.get(signer.as_str()))
            .and_then(Value::as_object)
            .ok_or_else(|| Error::InvalidSignature("no signature by the uploader".into()))?;
        let mut good = Vec::new();
        for (sig_key_id, sig) in sigs {
            let Some(name) = sig_key_id.strip_prefix("ed25519:") else {
                continue;
            };
            let Some(sig) = sig.as_str() else { continue };
            let public = match &signing_key {
                Some((n, p)) if n == name => Some(p.clone()),
                Some(_) => None,
                // Signing one's own master key with a device key.
                None => self.store.device_keys(signer, name)?.and_then(|dk| {
                    dk.get("keys")
                        .and_then(|k| k.get(sig_key_id))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                }),
            };
            if let Some(public) = public
                && signatures::verify(object, signer.as_str(), name, &public)
            {
                good.push((sig_key_id.clone(), sig.to_owned()));
            }
        }
        if good.is_empty() {
            return Err(Error::InvalidSignature(
                "no signature verifies with the signer's key".into(),
            ));
        }
        Ok(good)
    }
}

fn error_code(e: &Error) -> &'static str {
    match e {
        Error::InvalidSignature(_) => "M_INVALID_SIGNATURE",
        Error::NotFound(_) => "M_NOT_FOUND",
        Error::BadJson(_) => "M_BAD_JSON",
        _ => "M_INVALID_PARAM",
    }
}

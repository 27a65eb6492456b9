//! HTTP pushers: their registry (/pushers); `gateway.rs` delivers to them.

use ruma::UserId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{
    accounts::now_ms,
    error::{Error, Result},
    storage::{Store, UserDataRead, UserDataWrite},
};

/// A pusher as the client registered it, with the time it was set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pusher {
    pub pushkey: String,
    pub kind: String,
    pub app_id: String,
    pub app_display_name: String,
    pub device_display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_tag: Option<String>,
    pub lang: String,
    pub data: Map<String, Value>,
    #[serde(default)]
    pub pushkey_ts: u64,
}

pub fn list(store: &Store, user: &UserId) -> Result<Vec<Pusher>> {
    Ok(store.pushers(user)?)
}

pub fn get(store: &Store, user: &UserId, app_id: &str, pushkey: &str) -> Result<Option<Pusher>> {
    Ok(store.pusher(user, app_id, pushkey)?)
}

pub fn delete(store: &Store, user: &UserId, app_id: &str, pushkey: &str) -> Result<()> {
    let mut txn = store.transaction();
    txn.delete_pusher(user, app_id, pushkey);
    Ok(txn.commit()?)
}

/// Adds or replaces a pusher. Unless `append`, the same app and pushkey are
/// taken away from any other user (a device belongs to one account).
pub fn set(store: &Store, user: &UserId, mut pusher: Pusher, append: bool) -> Result<()> {
    if pusher.kind != "http" {
        return Err(Error::invalid_param(format!(
            "unsupported pusher kind {}",
            pusher.kind
        )));
    }
    let url = pusher
        .data
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::MissingParam("data.url is required for http pushers".into()))?;
    let ok_scheme = url.starts_with("https://") || url.starts_with("http://");
    if !ok_scheme || !url.contains("/_matrix/push/v1/notify") {
        return Err(Error::invalid_param(
            "data.url must be an http(s) URL with the path /_matrix/push/v1/notify",
        ));
    }
    if let Some(f) = pusher.data.get("format")
        && f.as_str() != Some("event_id_only")
    {
        return Err(Error::invalid_param(
            "the only pusher data.format is event_id_only",
        ));
    }
    if pusher.pushkey.is_empty()
        || pusher.pushkey.len() > 512
        || pusher.app_id.is_empty()
        || pusher.app_id.len() > 64
    {
        return Err(Error::invalid_param(
            "pushkey must be 1-512 bytes and app_id 1-64",
        ));
    }
    pusher.pushkey_ts = now_ms();
    let mut txn = store.transaction();
    if !append {
        for (owner, other) in store.all_pushers()? {
            if owner != user && other.app_id == pusher.app_id && other.pushkey == pusher.pushkey {
                txn.delete_pusher(&owner, &other.app_id, &other.pushkey);
            }
        }
    }
    txn.put_pusher(user, &pusher);
    Ok(txn.commit()?)
}

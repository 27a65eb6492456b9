//! HTTP pushers: their registry (/pushers) and the worker that posts notifications to push gateways.

use std::{sync::Arc, time::Duration};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId, push::Action};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::{Push, notifications};
use crate::{
    accounts::now_ms,
    error::{Error, Result},
    rooms::Rooms,
    storage::{Store, Table, keys},
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

/// `(user, app_id, pushkey) -> pusher`.
const PUSHERS: Table<Pusher> = Table::new("pushers");

fn key(user: &UserId, app_id: &str, pushkey: &str) -> Vec<u8> {
    keys::strs(&[user.as_str(), app_id, pushkey])
}

/// One event to push to one user's pushers.
#[derive(Debug)]
pub struct PushJob {
    pub user: OwnedUserId,
    pub room_id: OwnedRoomId,
    pub event_id: String,
    pub actions: Vec<Action>,
}

pub fn list(store: &Store, user: &UserId) -> Result<Vec<Pusher>> {
    Ok(store
        .scan_prefix(PUSHERS, &keys::strs(&[user.as_str()]))?
        .into_iter()
        .map(|(_, p)| p)
        .collect())
}

pub fn delete(store: &Store, user: &UserId, app_id: &str, pushkey: &str) -> Result<()> {
    let mut b = store.batch();
    b.delete(PUSHERS, &key(user, app_id, pushkey));
    Ok(b.commit()?)
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
    let mut b = store.batch();
    if !append {
        for (k, other) in store.scan_prefix(PUSHERS, &[])? {
            let owner = keys::split_strs(&k)
                .and_then(|p| p.first().map(|s| s.to_string()))
                .unwrap_or_default();
            if owner != user.as_str()
                && other.app_id == pusher.app_id
                && other.pushkey == pusher.pushkey
            {
                b.delete(PUSHERS, &k);
            }
        }
    }
    b.put(
        PUSHERS,
        &key(user, &pusher.app_id, &pusher.pushkey),
        &pusher,
    );
    Ok(b.commit()?)
}

/// Drains the push queue; each push goes out on its own task so one slow
/// gateway never holds up the others.
pub async fn run(mut rx: mpsc::UnboundedReceiver<PushJob>, rooms: Rooms, push: Arc<Push>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("push gateway client: {e}; pushes are disabled");
            return;
        }
    };
    while let Some(job) = rx.recv().await {
        let pushers = match list(&push.store, &job.user) {
            Ok(p) if !p.is_empty() => p,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!("pushers of {}: {e}", job.user);
                continue;
            }
        };
        for pusher in pushers {
            let body = match payload(&rooms, &push, &job, &pusher) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("push payload for {}: {e}", job.event_id);
                    continue;
                }
            };
            let (client, store, user) = (client.clone(), push.store.clone(), job.user.clone());
            tokio::spawn(async move { deliver(client, store, user, pusher, body).await });
        }
    }
}

/// Posts with retries (1 s, 4 s, 16 s); a gateway that rejects the pushkey
/// gets the pusher removed, as the push gateway spec asks.
async fn deliver(
    client: reqwest::Client,
    store: Store,
    user: OwnedUserId,
    pusher: Pusher,
    body: Value,
) {
    let Some(url) = pusher.data.get("url").and_then(Value::as_str) else {
        return;
    };
    let mut delay = Duration::from_secs(1);
    for attempt in 0..4 {
        match client.post(url).json(&body).send().await {
            Ok(r) if r.status().is_success() => {
                let reply: Value = r.json().await.unwrap_or(Value::Null);
                let rejected = reply["rejected"].as_array().is_some_and(|l| {
                    l.iter()
                        .any(|k| k.as_str() == Some(pusher.pushkey.as_str()))
                });
                if rejected {
                    tracing::info!(
                        "push gateway rejected a pushkey of {user}; removing the pusher"
                    );
                    if let Err(e) = delete(&store, &user, &pusher.app_id, &pusher.pushkey) {
                        tracing::warn!("removing rejected pusher: {e}");
                    }
                }
                return;
            }
            // A 4xx will not get better by retrying.
            Ok(r) if r.status().is_client_error() => {
                tracing::warn!("push gateway {url} refused a push: {}", r.status());
                return;
            }
            Ok(r) => tracing::warn!(
                "push gateway {url} answered {} (attempt {})",
                r.status(),
                attempt + 1
            ),
            Err(e) => tracing::warn!("push gateway {url}: {e} (attempt {})", attempt + 1),
        }
        tokio::time::sleep(delay).await;
        delay *= 4;
    }
}

/// The push gateway request body. With `format: event_id_only` nothing
/// about the message (sender, content, room name) leaves the server.
fn payload(rooms: &Rooms, push: &Push, job: &PushJob, pusher: &Pusher) -> Result<Value> {
    let joined = rooms.joined_rooms(&job.user)?;
    let unread = notifications::total_unread(&push.store, &job.user, &joined)?;
    let mut data = pusher.data.clone();
    data.remove("url");
    let mut tweaks = Map::new();
    for a in &job.actions {
        if let Action::SetTweak(t) = a
            && let Ok(Value::Object(o)) = serde_json::to_value(t)
            && let (Some(name), value) =
                (o.get("set_tweak").and_then(Value::as_str), o.get("value"))
        {
            tweaks.insert(name.to_owned(), value.cloned().unwrap_or(Value::Bool(true)));
        }
    }
    let device = json!({
        "app_id": pusher.app_id,
        "pushkey": pusher.pushkey,
        "pushkey_ts": pusher.pushkey_ts / 1000,
        "data": data,
        "tweaks": tweaks,
    });
    let mut n = json!({
        "event_id": job.event_id,
        "room_id": job.room_id,
        "counts": {"unread": unread},
        "devices": [device],
        "prio": "high",
    });
    if pusher.data.get("format").and_then(Value::as_str) == Some("event_id_only") {
        return Ok(json!({"notification": n}));
    }
    if let Some(ev) = rooms.event(&job.event_id)? {
        let v = ev.pdu_value();
        let sender = v["sender"].as_str().unwrap_or_default().to_owned();
        n["type"] = v["type"].clone();
        n["sender"] = Value::from(sender.as_str());
        n["content"] = v["content"].clone();
        n["user_is_target"] = Value::Bool(v["state_key"].as_str() == Some(job.user.as_str()));
        if let Some(name) = member_name(rooms, &job.room_id, &sender)? {
            n["sender_display_name"] = Value::from(name);
        }
        if let Some(name) = rooms
            .state_content(&job.room_id, "m.room.name", "")?
            .and_then(|c| c["name"].as_str().map(str::to_owned))
        {
            n["room_name"] = Value::from(name);
        }
        if let Some(alias) = rooms
            .state_content(&job.room_id, "m.room.canonical_alias", "")?
            .and_then(|c| c["alias"].as_str().map(str::to_owned))
        {
            n["room_alias"] = Value::from(alias);
        }
    }
    Ok(json!({"notification": n}))
}

fn member_name(rooms: &Rooms, room: &RoomId, user: &str) -> Result<Option<String>> {
    Ok(rooms
        .state_content(room, "m.room.member", user)?
        .and_then(|c| c["displayname"].as_str().map(str::to_owned)))
}

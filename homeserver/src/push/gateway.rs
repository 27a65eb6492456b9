//! The courier for HTTP pushers: one outbox item at a time, posted to the pusher's push gateway as the push gateway API describes.

use std::{sync::Arc, time::Duration};

use ruma::{EventId, RoomId, UserId, push::Action};
use serde_json::{Map, Value, json};

use super::{
    Push, notifications,
    pusher::{self, Pusher},
};
use crate::{
    error::Result,
    outbox::{Courier, Delivery, Destination, Item, worker::DeliveryFuture},
    rooms::Rooms,
};

pub struct PushCourier {
    client: reqwest::Client,
    rooms: Rooms,
    push: Arc<Push>,
}

impl PushCourier {
    pub fn new(rooms: Rooms, push: Arc<Push>) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(crate::error::Error::internal)?;
        Ok(PushCourier {
            client,
            rooms,
            push,
        })
    }

    async fn send(&self, user: &UserId, pusher: &Pusher, body: &Value) -> Delivery {
        let Some(url) = pusher.data.get("url").and_then(Value::as_str) else {
            return Delivery::Done(1);
        };
        match self.client.post(url).json(body).send().await {
            Ok(r) if r.status().is_success() => {
                let reply: Value = r.json().await.unwrap_or(Value::Null);
                let rejected = reply["rejected"].as_array().is_some_and(|l| {
                    l.iter()
                        .any(|k| k.as_str() == Some(pusher.pushkey.as_str()))
                });
                // The push gateway spec: a rejected pushkey's pusher goes.
                if rejected {
                    tracing::info!(
                        "push gateway rejected a pushkey of {user}; removing the pusher"
                    );
                    if let Err(e) =
                        pusher::delete(&self.push.store, user, &pusher.app_id, &pusher.pushkey)
                    {
                        tracing::warn!("removing rejected pusher: {e}");
                    }
                }
                Delivery::Done(1)
            }
            // A 4xx will not get better by retrying.
            Ok(r) if r.status().is_client_error() => {
                tracing::warn!("push gateway {url} refused a push: {}", r.status());
                Delivery::Done(1)
            }
            Ok(r) => Delivery::Retry(format!("push gateway {url} answered {}", r.status())),
            Err(e) => Delivery::Retry(format!("push gateway {url}: {e}")),
        }
    }
}

impl Courier for PushCourier {
    fn batch_limit(&self) -> usize {
        1
    }

    fn max_backoff(&self) -> Duration {
        Duration::from_secs(300)
    }

    fn deliver<'a>(
        &'a self,
        dest: &'a Destination,
        items: &'a [(u64, Item)],
    ) -> DeliveryFuture<'a> {
        Box::pin(async move {
            let (
                Destination::Pusher {
                    user,
                    app_id,
                    pushkey,
                },
                Some((
                    _,
                    Item::Push {
                        room_id,
                        event_id,
                        actions,
                    },
                )),
            ) = (dest, items.first())
            else {
                return Delivery::Done(items.len().min(1));
            };
            // A pusher deleted since the push was queued gets nothing.
            let pusher = match pusher::get(&self.push.store, user, app_id, pushkey) {
                Ok(Some(p)) => p,
                Ok(None) => return Delivery::Done(1),
                Err(e) => return Delivery::Retry(e.to_string()),
            };
            let body = match payload(
                &self.rooms,
                &self.push,
                user,
                room_id,
                event_id,
                actions,
                &pusher,
            ) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("push payload for {event_id}: {e}");
                    return Delivery::Done(1);
                }
            };
            self.send(user, &pusher, &body).await
        })
    }
}

/// The push gateway request body. With `format: event_id_only` nothing
/// about the message (sender, content, room name) leaves the server.
fn payload(
    rooms: &Rooms,
    push: &Push,
    user: &UserId,
    room_id: &RoomId,
    event_id: &EventId,
    actions: &[Action],
    pusher: &Pusher,
) -> Result<Value> {
    let joined = rooms.joined_rooms(user)?;
    let unread = notifications::total_unread(&push.store, user, &joined)?;
    let mut data = pusher.data.clone();
    data.remove("url");
    let mut tweaks = Map::new();
    for a in actions {
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
        "event_id": event_id,
        "room_id": room_id,
        "counts": {"unread": unread},
        "devices": [device],
        "prio": "high",
    });
    if pusher.data.get("format").and_then(Value::as_str) == Some("event_id_only") {
        return Ok(json!({"notification": n}));
    }
    if let Some(ev) = rooms.event(event_id.as_str())? {
        let v = ev.pdu_value();
        let sender = v["sender"].as_str().unwrap_or_default().to_owned();
        n["type"] = v["type"].clone();
        n["sender"] = Value::from(sender.as_str());
        n["content"] = v["content"].clone();
        n["user_is_target"] = Value::Bool(v["state_key"].as_str() == Some(user.as_str()));
        if let Some(name) = rooms
            .state_content(room_id, "m.room.member", &sender)?
            .and_then(|c| c["displayname"].as_str().map(str::to_owned))
        {
            n["sender_display_name"] = Value::from(name);
        }
        if let Some(name) = rooms
            .state_content(room_id, "m.room.name", "")?
            .and_then(|c| c["name"].as_str().map(str::to_owned))
        {
            n["room_name"] = Value::from(name);
        }
        if let Some(alias) = rooms
            .state_content(room_id, "m.room.canonical_alias", "")?
            .and_then(|c| c["alias"].as_str().map(str::to_owned))
        {
            n["room_alias"] = Value::from(alias);
        }
    }
    Ok(json!({"notification": n}))
}

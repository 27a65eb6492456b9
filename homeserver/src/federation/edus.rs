//! Inbound EDUs (typing, receipts, presence, to-device, device list and signing key updates), each accepted only for users of the sending server.

use std::time::Duration;

use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde_json::{Map, Value};

use super::Federation;
use crate::error::{Error, Result};

impl Federation {
    pub(crate) async fn receive_edu(&self, origin: &str, edu: &Value) -> Result<()> {
        let kind = edu["edu_type"].as_str().unwrap_or_default();
        let content = &edu["content"];
        match kind {
            "m.typing" => {
                let user = self.remote_user(origin, &content["user_id"])?;
                let room = room(&content["room_id"])?;
                if !self.rooms.server_allowed(&room, origin)? {
                    return Err(Error::forbidden("the room's server ACL denies your server"));
                }
                let typing = content["typing"].as_bool().unwrap_or(false);
                self.typing
                    .set(&user, &room, typing, Some(Duration::from_secs(30)))
                    .await
            }
            "m.receipt" => {
                for (room, by_type) in content.as_object().into_iter().flatten() {
                    let Ok(room) = OwnedRoomId::try_from(room.as_str()) else {
                        continue;
                    };
                    if !self.rooms.server_allowed(&room, origin).unwrap_or(false) {
                        continue;
                    }
                    let Some(reads) = by_type.get("m.read").and_then(Value::as_object) else {
                        continue;
                    };
                    for (user, receipt) in reads {
                        let Ok(user) = self.remote_user(origin, &Value::from(user.as_str())) else {
                            continue;
                        };
                        let Some(event) = receipt["event_ids"]
                            .as_array()
                            .and_then(|a| a.first())
                            .and_then(Value::as_str)
                        else {
                            continue;
                        };
                        let thread = receipt["data"]["thread_id"].as_str();
                        if let Err(e) = self
                            .receipts
                            .set(&user, &room, "m.read", event, thread)
                            .await
                        {
                            tracing::debug!("receipt from {origin} ignored: {e}");
                        }
                    }
                }
                Ok(())
            }
            "m.presence" => {
                for p in content["push"].as_array().into_iter().flatten() {
                    let Ok(user) = self.remote_user(origin, &p["user_id"]) else {
                        continue;
                    };
                    let state = p["presence"].as_str().unwrap_or("offline");
                    let status = p.get("status_msg").map(|s| s.as_str().map(str::to_owned));
                    if let Err(e) = self.presence.set(&user, state, status).await {
                        tracing::debug!("presence from {origin} ignored: {e}");
                    }
                }
                Ok(())
            }
            "m.direct_to_device" => {
                let sender = self.remote_user(origin, &content["sender"])?;
                let kind = content["type"]
                    .as_str()
                    .ok_or_else(|| Error::bad_json("to-device EDU without type"))?;
                let message_id = content["message_id"].as_str().unwrap_or_default();
                let messages: Map<String, Value> =
                    content["messages"].as_object().cloned().unwrap_or_default();
                // The origin's device is unknown here; its message ID keys the
                // deduplication instead.
                self.e2ee
                    .send_to_device(
                        &sender,
                        &format!("federation:{origin}"),
                        message_id,
                        kind,
                        messages,
                    )
                    .await
            }
            "m.device_list_update" => {
                let user = self.remote_user(origin, &content["user_id"])?;
                self.apply_device_list_update(&user, content)?;
                self.e2ee.device_list_changed(&user).await
            }
            "m.signing_key_update" => {
                let user = self.remote_user(origin, &content["user_id"])?;
                self.apply_signing_key_update(&user, content)?;
                self.e2ee.device_list_changed(&user).await
            }
            _ => Ok(()),
        }
    }

    /// A user ID from an EDU, which must belong to the server that sent it.
    fn remote_user(&self, origin: &str, v: &Value) -> Result<OwnedUserId> {
        let user = v
            .as_str()
            .and_then(|s| UserId::parse(s).ok())
            .ok_or_else(|| Error::bad_json("invalid user_id"))?;
        if user.server_name().as_str() != origin {
            return Err(Error::forbidden(format!(
                "{origin} may not speak for {user}"
            )));
        }
        Ok(user)
    }
}

fn room(v: &Value) -> Result<OwnedRoomId> {
    v.as_str()
        .and_then(|s| OwnedRoomId::try_from(s).ok())
        .ok_or_else(|| Error::bad_json("invalid room_id"))
}

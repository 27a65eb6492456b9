//! To-device messages: a per-device inbox on the stream, filled by /sendToDevice (idempotent per transaction) and emptied only once the client acknowledges a sync.

use ruma::UserId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::E2ee;
use crate::{
    error::{Error, Result},
    outbox::Item,
    storage::{E2eeRead, E2eeWrite},
};

/// Largest content of one to-device message: an Olm-encrypted room key is
/// a few KiB; anything near this is abuse.
pub const MAX_CONTENT_BYTES: usize = 65_536;
/// Messages handed to one device per sync; the rest wait for the next.
const PER_SYNC: usize = 100;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToDevice {
    #[serde(rename = "type")]
    pub kind: String,
    pub sender: String,
    pub content: Value,
}

impl E2ee {
    /// Queues `messages` (`user -> device or "*" -> content`). Unknown
    /// users and devices are skipped, as the spec allows; other servers'
    /// users wait for federation.
    pub async fn send_to_device(
        &self,
        sender: &UserId,
        sender_device: &str,
        txn: &str,
        kind: &str,
        messages: Map<String, Value>,
    ) -> Result<()> {
        for per_user in messages.values() {
            let per_user = per_user
                .as_object()
                .ok_or_else(|| Error::bad_json("messages must map user IDs to objects"))?;
            for content in per_user.values() {
                if !content.is_object() {
                    return Err(Error::bad_json(
                        "each to-device message content must be an object",
                    ));
                }
                if serde_json::to_vec(content)
                    .map(|b| b.len())
                    .unwrap_or(usize::MAX)
                    > MAX_CONTENT_BYTES
                {
                    return Err(Error::TooLarge {
                        limit: MAX_CONTENT_BYTES,
                    });
                }
            }
        }
        if self.store.to_device_txn_seen(sender, sender_device, txn)? {
            return Ok(());
        }
        // Who gets what: local devices now, other servers' users through
        // their servers.
        let mut deliveries: Vec<(ruma::OwnedUserId, String, ToDevice)> = Vec::new();
        let mut wake = Vec::new();
        let mut remote: std::collections::BTreeMap<String, Map<String, Value>> = Default::default();
        let local_sender = sender.server_name() == self.rooms.server_name;
        for (user, per_user) in &messages {
            let Ok(user) = ruma::OwnedUserId::try_from(user.as_str()) else {
                continue;
            };
            if user.server_name() != self.rooms.server_name {
                // Only our own users' messages travel on; a remote sender's
                // server delivers to other servers itself.
                if local_sender {
                    remote
                        .entry(user.server_name().to_string())
                        .or_default()
                        .insert(user.to_string(), per_user.clone());
                }
                continue;
            }
            let Some(per_user) = per_user.as_object() else {
                continue;
            };
            let devices = self.accounts.devices(&user)?;
            for (device, content) in per_user {
                let message = ToDevice {
                    kind: kind.to_owned(),
                    sender: sender.to_string(),
                    content: content.clone(),
                };
                let targets: Vec<&str> = if device == "*" {
                    devices.iter().map(|(d, _)| d.as_str()).collect()
                } else if devices.iter().any(|(d, _)| d.as_str() == device) {
                    vec![device.as_str()]
                } else {
                    Vec::new()
                };
                for d in targets {
                    deliveries.push((user.clone(), d.to_owned(), message.clone()));
                }
            }
            wake.push(user);
        }
        let edus: Vec<(String, Value)> = remote
            .into_iter()
            .map(|(server, msgs)| {
                let edu = serde_json::json!({"edu_type": "m.direct_to_device", "content": {
                    "sender": sender, "type": kind, "message_id": format!("{sender_device}-{txn}"), "messages": msgs,
                }});
                (server, edu)
            })
            .collect();
        self.stream
            .write(|w| {
                // A retry that raced the first attempt delivers nothing twice.
                if w.to_device_txn_seen(sender, sender_device, txn)? {
                    return Ok(());
                }
                let pos = w.next_pos();
                for (user, device, message) in &deliveries {
                    w.put_to_device(user, device, pos, message);
                }
                w.mark_to_device_txn(sender, sender_device, txn);
                for (server, edu) in &edus {
                    self.rooms.outbox.stage_for_servers(
                        w,
                        std::slice::from_ref(server),
                        &Item::Edu(edu.clone()),
                    );
                }
                w.wake(wake.iter().map(|u| u.as_ref()));
                Ok(())
            })
            .await
    }

    /// Drops what the device has acknowledged (everything up to `acked`).
    pub fn ack_to_device(&self, user: &UserId, device: &str, acked: u64) -> Result<()> {
        let mut txn = self.store.transaction();
        txn.ack_to_device(user, device, acked)?;
        Ok(txn.commit()?)
    }

    /// Messages after `acked` up to `upto`, at most a page, and the
    /// position the client acknowledges by syncing with the next token.
    pub fn pending_to_device(
        &self,
        user: &UserId,
        device: &str,
        acked: u64,
        upto: u64,
    ) -> Result<(Vec<Value>, u64)> {
        let rows = self
            .store
            .to_device(user, device, acked, upto, PER_SYNC + 1)?;
        let truncated = rows.len() > PER_SYNC;
        let mut last = acked;
        let mut events = Vec::new();
        for (pos, m) in rows.into_iter().take(PER_SYNC) {
            last = pos;
            events.push(json!({"type": m.kind, "sender": m.sender, "content": m.content}));
        }
        // Everything up to `upto` was handed out unless the page was full.
        Ok((events, if truncated { last } else { upto }))
    }
}

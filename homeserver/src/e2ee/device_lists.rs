//! Device list changes: a log on the stream of users whose devices or cross-signing keys changed, and who must hear about it (everyone sharing a room, and the user's own devices).

use std::collections::BTreeSet;

use ruma::{OwnedUserId, UserId};

use super::E2ee;
use crate::{
    error::Result,
    storage::{E2eeRead, E2eeWrite},
};

/// What /sync's `device_lists` (and /keys/changes) report.
#[derive(Debug, Default)]
pub struct DeviceListChanges {
    pub changed: BTreeSet<OwnedUserId>,
    pub left: BTreeSet<OwnedUserId>,
}

impl E2ee {
    /// Records that `user`'s devices or keys changed and wakes everyone who
    /// tracks them.
    pub async fn device_list_changed(&self, user: &UserId) -> Result<()> {
        let mut wake = self.rooms.sharers(user)?;
        wake.insert(user.to_owned());
        self.stream
            .write(|w| {
                let pos = w.next_pos();
                w.log_device_list_change(pos, user);
                w.wake(wake.iter().map(|u| u.as_ref()));
                Ok(())
            })
            .await?;
        if user.server_name() == self.rooms.server_name {
            self.announce_remote(user)?;
        }
        Ok(())
    }

    /// Servers other than ours sharing a room with `user`.
    fn servers_sharing(&self, user: &UserId) -> Result<Vec<String>> {
        let mut servers = std::collections::BTreeSet::new();
        for room in self.rooms.joined_rooms(user)? {
            servers.extend(self.rooms.remote_servers(&room)?);
        }
        Ok(servers.into_iter().collect())
    }

    /// Tells servers sharing a room with a local user about their new
    /// master and self-signing keys (m.signing_key_update).
    pub(crate) fn announce_signing_keys(&self, user: &UserId) -> Result<()> {
        if user.server_name() != self.rooms.server_name {
            return Ok(());
        }
        let servers = self.servers_sharing(user)?;
        if servers.is_empty() {
            return Ok(());
        }
        let mut content = serde_json::json!({"user_id": user});
        for (field, kind) in [
            ("master_key", "master"),
            ("self_signing_key", "self_signing"),
        ] {
            if let Some(k) = self.cross_signing_key(user, kind)? {
                content[field] = k;
            }
        }
        let edu = serde_json::json!({"edu_type": "m.signing_key_update", "content": content});
        self.rooms
            .outbox
            .push_to_servers(&servers, crate::outbox::Item::Edu(edu))
    }

    /// Tells servers sharing a room with `user` that their devices changed.
    /// `prev_id` names a position the receiver has not seen, so it refetches
    /// the whole list (/user/devices) rather than trusting one device's keys.
    fn announce_remote(&self, user: &UserId) -> Result<()> {
        let servers = self.servers_sharing(user)?;
        if servers.is_empty() {
            return Ok(());
        }
        let devices = self.device_keys(user, user, &[])?;
        let stream_id = self.stream.current();
        let device_id = devices
            .keys()
            .next()
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        let mut content = serde_json::json!({
            "user_id": user,
            "device_id": device_id,
            "stream_id": stream_id,
            "prev_id": [stream_id.saturating_sub(1)],
            "deleted": false,
        });
        if let Some(k) = devices.get(&device_id) {
            content["keys"] = k.clone();
        }
        let edu = serde_json::json!({"edu_type": "m.device_list_update", "content": content});
        self.rooms
            .outbox
            .push_to_servers(&servers, crate::outbox::Item::Edu(edu))
    }

    /// Whose device lists `viewer` must refetch after `since` (up to
    /// `upto`): users whose keys changed, users who started sharing a room
    /// with the viewer; and in `left`, those who no longer share any.
    pub fn device_list_changes(
        &self,
        viewer: &UserId,
        since: u64,
        upto: u64,
    ) -> Result<DeviceListChanges> {
        let mut out = DeviceListChanges::default();
        let mut own_changed = false;
        for user in self.store.device_list_log(since, upto)? {
            if user == viewer {
                own_changed = true;
            } else if !out.changed.contains(&user) && self.rooms.shares_room(viewer, &user)? {
                out.changed.insert(user);
            }
        }
        let mut gone = BTreeSet::new();
        for (room, ur) in self.rooms.user_rooms(viewer)? {
            let viewer_moved = ur.pos > since && ur.pos <= upto;
            match ur.membership.as_str() {
                // The viewer joined: everyone there is new to track.
                "join" if viewer_moved => out
                    .changed
                    .extend(self.rooms.members_with(&room, &["join"])?),
                "join" => {
                    for (user, membership) in self.rooms.membership_changes(&room, since, upto)? {
                        match membership.as_str() {
                            "join" => {
                                out.changed.insert(user);
                            }
                            "leave" | "ban" => {
                                gone.insert(user);
                            }
                            _ => {}
                        }
                    }
                }
                "leave" | "ban" if viewer_moved => {
                    gone.extend(self.rooms.members_with(&room, &["join"])?)
                }
                _ => {}
            }
        }
        for user in gone {
            if !self.rooms.shares_room(viewer, &user)? {
                out.changed.remove(&user);
                out.left.insert(user);
            }
        }
        out.changed.remove(viewer);
        out.left.remove(viewer);
        // The viewer's own other devices must hear about the viewer's changes.
        if own_changed {
            out.changed.insert(viewer.to_owned());
        }
        Ok(out)
    }
}

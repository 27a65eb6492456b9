//! Room aliases (`#name:server`) and their directory entries.

use ruma::{OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId};
use serde::{Deserialize, Serialize};

use super::Rooms;
use crate::{
    error::{Error, Result},
    storage::{DirectoryRead, DirectoryWrite},
    stream::Write,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AliasRecord {
    pub room_id: OwnedRoomId,
    pub creator: OwnedUserId,
}

impl Rooms {
    pub fn resolve_alias(&self, alias: &RoomAliasId) -> Result<Option<OwnedRoomId>> {
        Ok(self.store.alias(alias)?.map(|a| a.room_id))
    }

    pub async fn set_alias(
        &self,
        alias: &RoomAliasId,
        room_id: &RoomId,
        creator: &UserId,
    ) -> Result<()> {
        if alias.server_name() != self.server_name {
            return Err(Error::invalid_param("alias must be on this server"));
        }
        if self.room(room_id)?.is_none() {
            return Err(Error::not_found("no such room"));
        }
        self.stream
            .write(|w| self.stage_alias(w, alias, room_id, creator))
            .await
    }

    /// Claims `alias` for `room_id` in a write, unless it is taken.
    pub(crate) fn stage_alias(
        &self,
        w: &mut Write<'_>,
        alias: &RoomAliasId,
        room_id: &RoomId,
        creator: &UserId,
    ) -> Result<()> {
        if w.alias(alias)?.is_some() {
            return Err(Error::AliasExists);
        }
        w.put_alias(
            alias,
            &AliasRecord {
                room_id: room_id.to_owned(),
                creator: creator.to_owned(),
            },
        );
        Ok(())
    }

    /// Who may delete: the alias's creator or a room member with power to
    /// change the canonical alias.
    pub async fn delete_alias(&self, alias: &RoomAliasId, user: &UserId) -> Result<()> {
        self.stream
            .write(|w| {
                let record = w
                    .alias(alias)?
                    .ok_or_else(|| Error::not_found("no such alias"))?;
                let allowed = record.creator == user || {
                    let version = self.room(&record.room_id)?.map(|r| r.version);
                    match version.and_then(|v| v.rules()) {
                        Some(rules) => {
                            self.membership_of(&record.room_id, user)?.as_deref() == Some("join")
                                && self.user_power(&record.room_id, user, &rules)? >= 50
                        }
                        None => false,
                    }
                };
                if !allowed {
                    return Err(Error::forbidden("you may not delete this alias"));
                }
                w.delete_alias(alias);
                Ok(())
            })
            .await
    }

    pub fn aliases_of(&self, room_id: &RoomId) -> Result<Vec<String>> {
        // Aliases are few; a scan keeps the table single-keyed.
        Ok(self
            .store
            .aliases()?
            .into_iter()
            .filter(|(_, a)| a.room_id == room_id)
            .map(|(alias, _)| alias)
            .collect())
    }
}

//! User profiles (display name, avatar, custom fields) and their propagation into the member events of the user's rooms.

use ruma::UserId;
use serde_json::{Map, Value};

use crate::{
    accounts::Accounts,
    error::{Error, Result},
    rooms::{NewEvent, Rooms},
};

/// The spec's cap on a whole profile (v1.16: 64 KiB).
const MAX_PROFILE_BYTES: usize = 65_536;

#[derive(Clone)]
pub struct Profiles {
    accounts: Accounts,
    rooms: Rooms,
}

impl Profiles {
    pub fn new(accounts: Accounts, rooms: Rooms) -> Self {
        Profiles { accounts, rooms }
    }

    /// The whole profile, or `None` for an unknown user.
    pub fn get(&self, user: &UserId) -> Result<Option<Map<String, Value>>> {
        let Some(u) = self.accounts.get(user)? else {
            return Ok(None);
        };
        let mut out = u.profile_fields.clone();
        if let Some(n) = u.displayname {
            out.insert("displayname".into(), Value::from(n));
        }
        if let Some(a) = u.avatar_url {
            out.insert("avatar_url".into(), Value::from(a));
        }
        Ok(Some(out))
    }

    /// Sets (or with `None` removes) one field; a new display name or avatar
    /// is written into the user's member event in every joined room.
    pub async fn set(&self, user: &UserId, key: &str, value: Option<Value>) -> Result<()> {
        if key.is_empty() || key.len() > 255 {
            return Err(Error::invalid_param("profile keys are 1-255 bytes"));
        }
        self.accounts
            .update(user, |record| {
                match key {
                    "displayname" | "avatar_url" => {
                        let v = match value {
                            None | Some(Value::Null) => None,
                            Some(Value::String(s)) => Some(s),
                            Some(_) => {
                                return Err(Error::bad_json(format!("{key} must be a string")));
                            }
                        };
                        if key == "avatar_url"
                            && v.as_deref().is_some_and(|u| !u.starts_with("mxc://"))
                        {
                            return Err(Error::invalid_param("avatar_url must be an mxc:// URI"));
                        }
                        if key == "displayname" {
                            record.displayname = v
                        } else {
                            record.avatar_url = v
                        }
                    }
                    _ => match value {
                        None => {
                            record.profile_fields.remove(key);
                        }
                        Some(v) => {
                            record.profile_fields.insert(key.to_owned(), v);
                        }
                    },
                }
                let size = serde_json::to_vec(&record.profile_fields)
                    .map(|b| b.len())
                    .unwrap_or(0)
                    + record.displayname.as_ref().map_or(0, String::len)
                    + record.avatar_url.as_ref().map_or(0, String::len);
                if size > MAX_PROFILE_BYTES {
                    return Err(Error::ProfileTooLarge);
                }
                Ok(())
            })
            .await?;
        if key == "displayname" || key == "avatar_url" {
            self.propagate(user).await;
        }
        Ok(())
    }

    async fn propagate(&self, user: &UserId) {
        let rooms = match self.rooms.joined_rooms(user) {
            Ok(r) => r,
            Err(e) => return tracing::warn!("profile propagation for {user}: {e}"),
        };
        for room in rooms {
            let content = self
                .rooms
                .state_content(&room, "m.room.member", user.as_str())
                .ok()
                .flatten();
            let mut content = content
                .and_then(|c| c.as_object().cloned())
                .unwrap_or_default();
            let fresh = self.rooms.member_event(user, "join", None);
            content.insert("membership".into(), Value::from("join"));
            for k in ["displayname", "avatar_url"] {
                match fresh.get(k) {
                    Some(v) => content.insert(k.into(), v.clone()),
                    None => content.remove(k),
                };
            }
            let event = NewEvent::state("m.room.member", user.as_str(), Value::Object(content));
            if let Err(e) = self.rooms.send(user, &room, event, None).await {
                tracing::warn!("profile propagation for {user} in {room}: {e}");
            }
        }
    }
}

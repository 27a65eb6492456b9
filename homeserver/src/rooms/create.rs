//! Room creation: the initial events a preset implies, in the order the spec gives.

use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomVersionId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{NewEvent, Rooms};
use crate::{
    config::SUPPORTED_ROOM_VERSIONS,
    error::{Error, Result},
};

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CreateRoom {
    pub visibility: Option<String>,
    pub room_alias_name: Option<String>,
    pub name: Option<String>,
    pub topic: Option<String>,
    #[serde(default)]
    pub invite: Vec<OwnedUserId>,
    pub room_version: Option<String>,
    pub creation_content: Option<Map<String, Value>>,
    #[serde(default)]
    pub initial_state: Vec<InitialState>,
    pub preset: Option<String>,
    #[serde(default)]
    pub is_direct: bool,
    pub power_level_content_override: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InitialState {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub state_key: String,
    pub content: Map<String, Value>,
}

impl Rooms {
    pub async fn create_room(&self, creator: &UserId, req: CreateRoom) -> Result<OwnedRoomId> {
        let version = match &req.room_version {
            Some(v) if SUPPORTED_ROOM_VERSIONS.contains(&v.as_str()) => {
                RoomVersionId::try_from(v.as_str()).map_err(|_| Error::UnsupportedRoomVersion)?
            }
            Some(_) => return Err(Error::UnsupportedRoomVersion),
            None => self.default_version.clone(),
        };
        let rules = version.rules().ok_or(Error::UnsupportedRoomVersion)?;
        let v12 = rules.authorization.explicitly_privilege_room_creators;
        let preset = match req.preset.as_deref() {
            Some(p @ ("private_chat" | "trusted_private_chat" | "public_chat")) => p.to_owned(),
            Some(other) => return Err(Error::bad_json(format!("unknown preset {other}"))),
            None if req.visibility.as_deref() == Some("public") => "public_chat".into(),
            None => "private_chat".into(),
        };
        if let Some(v) = &req.visibility
            && v != "public"
            && v != "private"
        {
            return Err(Error::bad_json("visibility must be public or private"));
        }
        let alias = match &req.room_alias_name {
            Some(local) => {
                let alias = OwnedRoomAliasId::try_from(format!("#{local}:{}", self.server_name))
                    .map_err(|e| Error::invalid_param(format!("bad room_alias_name: {e}")))?;
                if self.resolve_alias(&alias)?.is_some() {
                    return Err(Error::RoomInUse("room alias already taken".into()));
                }
                Some(alias)
            }
            None => None,
        };
        let trusted = preset == "trusted_private_chat";

        // Creation content: client-supplied keys, then the ones we own.
        let mut create = req.creation_content.clone().unwrap_or_default();
        create.insert("room_version".into(), Value::from(version.as_str()));
        if !rules.authorization.use_room_create_sender {
            create.insert("creator".into(), Value::from(creator.as_str()));
        } else {
            create.remove("creator");
        }
        if v12 && trusted && !req.invite.is_empty() {
            let extra: Vec<Value> = req.invite.iter().map(|u| Value::from(u.as_str())).collect();
            create.insert("additional_creators".into(), Value::Array(extra));
        }

        let mut users = Map::new();
        if !v12 {
            users.insert(creator.to_string(), Value::from(100));
            if trusted {
                for u in &req.invite {
                    users.insert(u.to_string(), Value::from(100));
                }
            }
        }
        let mut power = json!({
            "users": users,
            "users_default": 0,
            "events": {
                "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
                "m.room.server_acl": 100, "m.room.encryption": 100, "m.room.topic": 50,
            },
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": if preset == "public_chat" { 0 } else { 50 },
            "notifications": {"room": 50},
        });
        if let (Some(over), Some(obj)) = (&req.power_level_content_override, power.as_object_mut())
        {
            for (k, v) in over {
                obj.insert(k.clone(), v.clone());
            }
        }

        let mut events = vec![NewEvent::state(
            "m.room.member",
            creator.as_str(),
            self.member_event(creator, "join", None),
        )];
        events.push(NewEvent::state("m.room.power_levels", "", power));
        if let Some(a) = &alias {
            events.push(NewEvent::state(
                "m.room.canonical_alias",
                "",
                json!({"alias": a.as_str()}),
            ));
        }
        let (join_rule, guest) = if preset == "public_chat" {
            ("public", "forbidden")
        } else {
            ("invite", "can_join")
        };
        events.push(NewEvent::state(
            "m.room.join_rules",
            "",
            json!({"join_rule": join_rule}),
        ));
        events.push(NewEvent::state(
            "m.room.history_visibility",
            "",
            json!({"history_visibility": "shared"}),
        ));
        events.push(NewEvent::state(
            "m.room.guest_access",
            "",
            json!({"guest_access": guest}),
        ));
        for s in &req.initial_state {
            if s.kind == "m.room.create" || s.kind == "m.room.member" {
                return Err(Error::bad_json(format!(
                    "{} cannot be set in initial_state",
                    s.kind
                )));
            }
            events.push(NewEvent::state(
                &s.kind,
                &s.state_key,
                Value::Object(s.content.clone()),
            ));
        }
        if let Some(n) = &req.name {
            events.push(NewEvent::state("m.room.name", "", json!({"name": n})));
        }
        if let Some(t) = &req.topic {
            events.push(NewEvent::state("m.room.topic", "", json!({"topic": t})));
        }
        // Other servers' users are invited afterwards, through their server.
        for invitee in req
            .invite
            .iter()
            .filter(|u| u.server_name() == self.server_name)
        {
            let mut content = json!({"membership": "invite"});
            if req.is_direct {
                content["is_direct"] = Value::Bool(true);
            }
            events.push(NewEvent::state("m.room.member", invitee.as_str(), content));
        }

        // The alias is claimed in the create event's own write: if someone
        // took it meanwhile, no room is created.
        let (room_id, _room) = self
            .create_first_event(
                creator,
                &version,
                Value::Object(create),
                |w, room| match &alias {
                    Some(a) => self.stage_alias(w, a, room, creator).map_err(|e| match e {
                        Error::AliasExists => Error::RoomInUse("room alias already taken".into()),
                        other => other,
                    }),
                    None => Ok(()),
                },
            )
            .await?;
        for ev in events {
            self.send_locked(creator, &room_id, ev, None, |_| Ok(()))
                .await?;
        }
        if req.is_direct && !req.invite.is_empty() {
            self.stream
                .write(|w| {
                    for invitee in &req.invite {
                        self.stage_direct(w, creator, invitee, &room_id)?;
                    }
                    Ok(())
                })
                .await?;
        }
        Ok(room_id)
    }
}

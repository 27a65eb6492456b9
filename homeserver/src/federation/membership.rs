//! Membership across servers: joining, inviting and leaving through make_*/send_* handshakes, from both sides.

use bellwire_federation::{countersign_event, rules_for};
use reqwest::Method;
use ruma::{CanonicalJsonObject, OwnedEventId, OwnedUserId, RoomId, RoomVersionId, UserId};
use serde_json::{Value, json};

use super::{
    Federation,
    inbound::{depth, enc},
};
use crate::{
    config::SUPPORTED_ROOM_VERSIONS,
    error::{Error, Result},
    rooms::{
        NewEvent, auth,
        pdu::{Pdu, stripped_state},
    },
};

impl Federation {
    /// Whether this server can act in the room on its own: it knows the
    /// room and a local user is joined (or nobody else is).
    fn resident(&self, room_id: &RoomId) -> Result<bool> {
        if self.rooms.room(room_id)?.is_none() {
            return Ok(false);
        }
        let local_joined = self
            .rooms
            .members_with(room_id, &["join"])?
            .iter()
            .any(|u| u.server_name() == self.server_name.as_str());
        Ok(local_joined || self.rooms.remote_servers(room_id)?.is_empty())
    }

    /// Joins a local user to a room, through other servers when this one
    /// is not in it. `via`: servers to ask, in order.
    pub async fn join(&self, user: &UserId, room_id: &RoomId, via: &[String]) -> Result<()> {
        if self.resident(room_id)? {
            self.rooms.join(user, room_id).await?;
            return Ok(());
        }
        self.require_enabled()?;
        let mut candidates: Vec<String> = via.to_vec();
        if let Some(ur) = self.rooms.user_room(user, room_id)?
            && ur.membership == "invite"
        {
            candidates.insert(0, ur.sender.server_name().to_string());
        }
        if let Some((_, server)) = room_id.as_str().split_once(':') {
            candidates.push(server.to_owned());
        }
        candidates.retain(|s| *s != self.server_name);
        candidates.dedup();
        if candidates.is_empty() {
            return Err(Error::not_found("no server to join the room through"));
        }
        let mut last = Error::not_found("no server could be reached");
        for server in candidates {
            match self.join_via(user, room_id, &server).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::info!("joining {room_id} via {server} failed: {e}");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn join_via(&self, user: &UserId, room_id: &RoomId, server: &str) -> Result<()> {
        let _joining = self.start_joining(room_id);
        let vers: String = SUPPORTED_ROOM_VERSIONS
            .iter()
            .map(|v| format!("ver={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let uri = format!(
            "/_matrix/federation/v1/make_join/{}/{}?{vers}",
            enc(room_id.as_str()),
            enc(user.as_str())
        );
        let made = self.client.json(server, Method::GET, &uri, None).await?;
        let version = supported_version(&made["room_version"])?;
        let mut template = made["event"].clone();
        if template["type"] != "m.room.member"
            || template["state_key"] != user.as_str()
            || template["sender"] != user.as_str()
        {
            return Err(Error::Remote(format!(
                "{server} offered a join event for someone else"
            )));
        }
        let mut content = self.rooms.member_event(user, "join", None);
        if let Some(via) = template["content"].get("join_authorised_via_users_server") {
            content["join_authorised_via_users_server"] = via.clone();
        }
        template["content"] = content;
        let (object, event_id) = self.rooms.sign_template(template, &version)?;
        let uri = format!(
            "/_matrix/federation/v2/send_join/{}/{}",
            enc(room_id.as_str()),
            enc(event_id.as_str())
        );
        let body = serde_json::to_value(&object).map_err(Error::internal)?;
        let answer = self
            .client
            .json(server, Method::PUT, &uri, Some(&body))
            .await?;

        // Every event of the room's state and auth chain must be signed
        // properly and pass the auth rules against its own auth events.
        let mut all = Vec::new();
        let mut state_ids = Vec::new();
        for (field, is_state) in [("auth_chain", false), ("state", true)] {
            for ev in answer[field].as_array().cloned().unwrap_or_default() {
                let (obj, id) = self.check_incoming(&ev, &version).await?;
                if is_state {
                    state_ids.push(id.clone());
                }
                all.push((depth(&obj), id, obj));
            }
        }
        all.sort_by_key(|(d, _, _)| *d);
        all.dedup_by(|a, b| a.1 == b.1);
        let rules = rules_for(&version).map_err(|_| Error::UnsupportedRoomVersion)?;
        for (_, id, obj) in &all {
            self.rooms.store_outlier(room_id, obj, id)?;
        }
        for (_, id, obj) in &all {
            let pdu = parse_pdu(obj, id)?;
            auth::authorize_against_auth_events(&self.rooms, &rules, &pdu).map_err(|e| {
                Error::Remote(format!(
                    "{server} sent room state that fails the auth rules ({id}): {e}"
                ))
            })?;
        }
        let state: Vec<(OwnedEventId, CanonicalJsonObject)> = all
            .iter()
            .filter(|(_, id, _)| state_ids.contains(id))
            .map(|(_, id, o)| (id.clone(), o.clone()))
            .collect();
        let is_create = |o: &CanonicalJsonObject| matches!(o.get("type"), Some(ruma::CanonicalJsonValue::String(t)) if t == "m.room.create");
        if !state.iter().any(|(_, o)| is_create(o)) {
            return Err(Error::Remote(format!(
                "{server} sent room state without a create event"
            )));
        }
        let joined = match answer.get("event") {
            Some(ev) if ev.is_object() => {
                let (obj, id) = self.check_incoming(ev, &version).await?;
                if id != event_id {
                    return Err(Error::Remote(format!(
                        "{server} returned a different join event"
                    )));
                }
                obj
            }
            _ => object,
        };
        self.rooms
            .join_remote_room(room_id, &version, &state, &joined, &event_id)
            .await
    }

    /// make_join: a join template for a user of the asking server.
    pub fn make_join(
        &self,
        origin: &str,
        room_id: &RoomId,
        user: &UserId,
        versions: &[String],
    ) -> Result<Value> {
        self.make_membership(origin, room_id, user, "join", Some(versions))
    }

    pub fn make_leave(&self, origin: &str, room_id: &RoomId, user: &UserId) -> Result<Value> {
        self.make_membership(origin, room_id, user, "leave", None)
    }

    fn make_membership(
        &self,
        origin: &str,
        room_id: &RoomId,
        user: &UserId,
        membership: &str,
        versions: Option<&[String]>,
    ) -> Result<Value> {
        if user.server_name().as_str() != origin {
            return Err(Error::forbidden(
                "the user does not belong to the asking server",
            ));
        }
        let version = self
            .rooms
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("unknown room"))?;
        if !self.rooms.server_allowed(room_id, origin)? {
            return Err(Error::forbidden("the room's server ACL denies your server"));
        }
        if let Some(v) = versions
            && !v.iter().any(|x| x == version.as_str())
        {
            return Err(Error::IncompatibleRoomVersion(version.to_string()));
        }
        let event = NewEvent::state(
            "m.room.member",
            user.as_str(),
            json!({"membership": membership}),
        );
        let (template, version) = self.rooms.event_template(room_id, user, &event)?;
        // Refuse now rather than after the other server signed it.
        let rules = rules_for(&version).map_err(|_| Error::UnsupportedRoomVersion)?;
        let mut pdu: Pdu = serde_json::from_value(template.clone()).map_err(Error::internal)?;
        pdu.event_id = OwnedEventId::try_from("$template").map_err(Error::internal)?;
        auth::authorize(&self.rooms, &rules, room_id, &pdu)?;
        Ok(json!({"event": template, "room_version": version}))
    }

    /// send_join (v2): accepts the join and answers with the room's state
    /// before it and the auth chain.
    pub async fn send_join(
        &self,
        origin: &str,
        room_id: &RoomId,
        event_id: &str,
        body: Value,
    ) -> Result<Value> {
        let (object, id) = self
            .check_membership_event(origin, room_id, event_id, &body, "join")
            .await?;
        // The state handed back is the state before this join.
        let room_lock = self.rooms.locks.lock(room_id).await;
        let state = self.rooms.current_state(room_id)?;
        let forward = self
            .rooms
            .remote_servers(room_id)?
            .into_iter()
            .filter(|s| s != origin)
            .collect();
        self.rooms
            .accept_remote_locked(room_id, &object, &id, forward)
            .await?;
        drop(room_lock);
        let state_ids: Vec<OwnedEventId> = state.iter().map(|e| e.event_id.clone()).collect();
        let chain = self.rooms.auth_chain(&state_ids)?;
        let mut servers = self.rooms.remote_servers(room_id)?;
        servers.push(self.server_name.clone());
        Ok(json!({
            "origin": self.server_name,
            "state": state.iter().map(|e| self.rooms.federation_pdu(e)).collect::<Result<Vec<_>>>()?,
            "auth_chain": chain.iter().map(|e| self.rooms.federation_pdu(e)).collect::<Result<Vec<_>>>()?,
            "event": object,
            "members_omitted": false,
            "servers_in_room": servers,
        }))
    }

    pub async fn send_leave(
        &self,
        origin: &str,
        room_id: &RoomId,
        event_id: &str,
        body: Value,
    ) -> Result<Value> {
        let (object, id) = self
            .check_membership_event(origin, room_id, event_id, &body, "leave")
            .await?;
        let forward = self
            .rooms
            .remote_servers(room_id)?
            .into_iter()
            .filter(|s| s != origin)
            .collect();
        self.rooms
            .accept_remote(room_id, &object, &id, forward)
            .await?;
        Ok(json!({}))
    }

    async fn check_membership_event(
        &self,
        origin: &str,
        room_id: &RoomId,
        event_id: &str,
        body: &Value,
        membership: &str,
    ) -> Result<(CanonicalJsonObject, OwnedEventId)> {
        let version = self
            .rooms
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("unknown room"))?;
        if !self.rooms.server_allowed(room_id, origin)? {
            return Err(Error::forbidden("the room's server ACL denies your server"));
        }
        let (object, id) = self.check_incoming(body, &version).await?;
        if id.as_str() != event_id {
            return Err(Error::bad_json("the event ID does not match the event"));
        }
        let sender = body["sender"]
            .as_str()
            .and_then(|s| UserId::parse(s).ok())
            .ok_or_else(|| Error::bad_json("invalid sender"))?;
        if sender.server_name().as_str() != origin
            || body["type"] != "m.room.member"
            || body["state_key"] != sender.as_str()
            || body["content"]["membership"] != membership
            || body["room_id"] != room_id.as_str()
        {
            return Err(Error::bad_json(format!(
                "not a {membership} of a user of {origin} in this room"
            )));
        }
        Ok((object, id))
    }

    /// Invites a user of another server: they sign the invite first.
    pub async fn invite(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<&str>,
        is_direct: bool,
    ) -> Result<()> {
        if target.server_name().as_str() == self.server_name {
            self.rooms.invite(sender, room_id, target, reason).await?;
            return Ok(());
        }
        self.require_enabled()?;
        match self.rooms.membership_of(room_id, target)?.as_deref() {
            Some("join") => return Err(Error::forbidden("user is already in the room")),
            Some("ban") => return Err(Error::forbidden("user is banned from the room")),
            _ => {}
        }
        let mut content = json!({"membership": "invite"});
        if let Some(r) = reason {
            content["reason"] = Value::from(r);
        }
        if is_direct {
            content["is_direct"] = Value::Bool(true);
        }
        let event = NewEvent::state("m.room.member", target.as_str(), content);
        let (template, version) = self.rooms.event_template(room_id, sender, &event)?;
        let (object, event_id) = self.rooms.sign_template(template, &version)?;
        let rules = rules_for(&version).map_err(|_| Error::UnsupportedRoomVersion)?;
        auth::authorize(
            &self.rooms,
            &rules,
            room_id,
            &parse_pdu(&object, &event_id)?,
        )?;
        let mut invite_state = Vec::new();
        for kind in [
            "m.room.create",
            "m.room.join_rules",
            "m.room.name",
            "m.room.avatar",
            "m.room.canonical_alias",
            "m.room.encryption",
            "m.room.topic",
        ] {
            if let Some(ev) = self.rooms.state_event(room_id, kind, "")? {
                invite_state.push(stripped_state(&ev));
            }
        }
        if let Some(ev) = self
            .rooms
            .state_event(room_id, "m.room.member", sender.as_str())?
        {
            invite_state.push(stripped_state(&ev));
        }
        let body =
            json!({"event": object, "room_version": version, "invite_room_state": invite_state});
        let uri = format!(
            "/_matrix/federation/v2/invite/{}/{}",
            enc(room_id.as_str()),
            enc(event_id.as_str())
        );
        let answer = self
            .client
            .json(
                target.server_name().as_str(),
                Method::PUT,
                &uri,
                Some(&body),
            )
            .await?;
        let (signed, id) = self.check_incoming(&answer["event"], &version).await?;
        if id != event_id {
            return Err(Error::Remote(
                "the invited server returned a different event".into(),
            ));
        }
        let forward = self
            .rooms
            .remote_servers_for(room_id, &parse_pdu(&signed, &id)?)?;
        self.rooms
            .accept_remote(room_id, &signed, &id, forward)
            .await
    }

    /// PUT /v2/invite: another server invites one of our users.
    pub async fn receive_invite(
        &self,
        origin: &str,
        room_id: &RoomId,
        event_id: &str,
        body: Value,
    ) -> Result<Value> {
        let version = supported_version(&body["room_version"])?;
        let event = &body["event"];
        let sender = event["sender"]
            .as_str()
            .and_then(|s| UserId::parse(s).ok())
            .ok_or_else(|| Error::bad_json("invalid sender"))?;
        if sender.server_name().as_str() != origin {
            return Err(Error::forbidden(
                "the inviter does not belong to the asking server",
            ));
        }
        let target = event["state_key"]
            .as_str()
            .and_then(|s| UserId::parse(s).ok())
            .ok_or_else(|| Error::bad_json("invalid state_key"))?;
        if target.server_name().as_str() != self.server_name
            || event["type"] != "m.room.member"
            || event["content"]["membership"] != "invite"
        {
            return Err(Error::bad_json("not an invite of a user of this server"));
        }
        if event["room_id"] != room_id.as_str() {
            return Err(Error::bad_json("room ID mismatch"));
        }
        if !self.rooms.user_exists(&target)? {
            return Err(Error::not_found("no such user"));
        }
        let (mut object, id) = self.check_incoming(event, &version).await?;
        if id.as_str() != event_id {
            return Err(Error::bad_json("the event ID does not match the event"));
        }
        let rules = rules_for(&version).map_err(|_| Error::UnsupportedRoomVersion)?;
        countersign_event(&mut object, &self.server_name, &self.key, &rules)
            .map_err(Error::internal)?;
        if !self.resident(room_id)? || self.rooms.room(room_id)?.is_none() {
            let mut state: Vec<Value> = body["invite_room_state"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            state.retain(Value::is_object);
            state.truncate(50);
            self.rooms.store_outlier(room_id, &object, &id)?;
            self.rooms.set_invite_state(&target, room_id, &state)?;
            let is_direct = event["content"]["is_direct"].as_bool().unwrap_or(false);
            self.rooms
                .set_outside_membership(&target, room_id, "invite", &id, &sender, is_direct)
                .await?;
        }
        Ok(json!({"event": object}))
    }

    /// Leaves a room, or rejects an invite to a room this server is not in
    /// (through the inviting server).
    pub async fn leave(&self, user: &UserId, room_id: &RoomId, reason: Option<&str>) -> Result<()> {
        let invite = self
            .rooms
            .user_room(user, room_id)?
            .filter(|ur| ur.membership == "invite");
        let Some(invite) = invite.filter(|_| !self.resident(room_id).unwrap_or(true)) else {
            self.rooms.leave(user, room_id, reason).await?;
            return Ok(());
        };
        self.require_enabled()?;
        let server = invite.sender.server_name().to_string();
        let uri = format!(
            "/_matrix/federation/v1/make_leave/{}/{}",
            enc(room_id.as_str()),
            enc(user.as_str())
        );
        let made = self.client.json(&server, Method::GET, &uri, None).await?;
        let version = supported_version(&made["room_version"])?;
        let mut template = made["event"].clone();
        if template["state_key"] != user.as_str() || template["sender"] != user.as_str() {
            return Err(Error::Remote(format!(
                "{server} offered a leave event for someone else"
            )));
        }
        template["content"] = self.rooms.member_event(user, "leave", reason);
        let (object, event_id) = self.rooms.sign_template(template, &version)?;
        let uri = format!(
            "/_matrix/federation/v2/send_leave/{}/{}",
            enc(room_id.as_str()),
            enc(event_id.as_str())
        );
        let body = serde_json::to_value(&object).map_err(Error::internal)?;
        self.client
            .json(&server, Method::PUT, &uri, Some(&body))
            .await?;
        self.rooms.store_outlier(room_id, &object, &event_id)?;
        let sender: OwnedUserId = user.to_owned();
        self.rooms
            .set_outside_membership(user, room_id, "leave", &event_id, &sender, false)
            .await
    }
}

fn supported_version(v: &Value) -> Result<RoomVersionId> {
    let v = v.as_str().unwrap_or("1");
    if !SUPPORTED_ROOM_VERSIONS.contains(&v) {
        return Err(Error::IncompatibleRoomVersion(v.to_owned()));
    }
    RoomVersionId::try_from(v).map_err(|_| Error::UnsupportedRoomVersion)
}

fn parse_pdu(object: &CanonicalJsonObject, id: &OwnedEventId) -> Result<Pdu> {
    let json = serde_json::to_string(object).map_err(Error::internal)?;
    let mut pdu: Pdu = serde_json::from_str(&json).map_err(|e| Error::bad_json(e.to_string()))?;
    pdu.event_id = id.clone();
    Ok(pdu)
}

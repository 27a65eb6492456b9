//! Questions this server asks others for its clients: room aliases, profiles and public room lists on other servers.

use reqwest::Method;
use ruma::{OwnedRoomId, RoomAliasId, UserId};
use serde_json::{Value, json};

use super::{Federation, inbound::enc};
use crate::error::{Error, Result};

impl Federation {
    /// Resolves another server's alias: the room and servers to join via.
    pub async fn remote_alias(&self, alias: &RoomAliasId) -> Result<(OwnedRoomId, Vec<String>)> {
        self.require_enabled()?;
        let server = alias.server_name().to_string();
        let uri = format!(
            "/_matrix/federation/v1/query/directory?room_alias={}",
            enc(alias.as_str())
        );
        let answer = self.client.json(&server, Method::GET, &uri, None).await?;
        let room = answer["room_id"]
            .as_str()
            .and_then(|r| OwnedRoomId::try_from(r).ok())
            .ok_or_else(|| Error::Remote(format!("{server} sent no room ID for {alias}")))?;
        let servers = answer["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
        Ok((room, servers))
    }

    /// Another server's user's profile (all fields, or one).
    pub async fn remote_profile(&self, user: &UserId, field: Option<&str>) -> Result<Value> {
        self.require_enabled()?;
        let mut uri = format!(
            "/_matrix/federation/v1/query/profile?user_id={}",
            enc(user.as_str())
        );
        if let Some(f) = field {
            uri.push_str(&format!("&field={}", enc(f)));
        }
        Ok(self
            .client
            .json(user.server_name().as_str(), Method::GET, &uri, None)
            .await?)
    }

    /// Another server's public room list.
    pub async fn remote_public_rooms(
        &self,
        server: &str,
        limit: Option<usize>,
        since: Option<&str>,
        search: Option<&str>,
    ) -> Result<Value> {
        self.require_enabled()?;
        let mut body = json!({});
        if let Some(l) = limit {
            body["limit"] = json!(l);
        }
        if let Some(s) = since {
            body["since"] = json!(s);
        }
        if let Some(q) = search {
            body["filter"] = json!({"generic_search_term": q});
        }
        Ok(self
            .client
            .json(
                server,
                Method::POST,
                "/_matrix/federation/v1/publicRooms",
                Some(&body),
            )
            .await?)
    }
}

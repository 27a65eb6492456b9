//! A throwaway server (services over a temporary database) for unit tests.

use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde_json::json;

use crate::{
    config::Config,
    rooms::{NewEvent, create::CreateRoom},
    services::Services,
    storage::Store,
};

pub struct World {
    _dir: tempfile::TempDir,
    pub s: Services,
}

/// Must be called inside a Tokio runtime: the services start their workers.
pub fn world() -> World {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), false).expect("store");
    let config = Config::load(
        None,
        [("BELLWIRE_REGISTRATION__MODE".to_owned(), "open".to_owned())],
    )
    .expect("config");
    let s = Services::build(config, store).expect("services");
    World { _dir: dir, s }
}

impl World {
    pub async fn user(&self, name: &str) -> OwnedUserId {
        let id = self
            .s
            .accounts
            .user_id_for_localpart(name)
            .expect("localpart");
        self.s
            .accounts
            .create(&id, None)
            .await
            .expect("create user");
        id
    }

    pub async fn room(&self, creator: &UserId, version: &str, preset: &str) -> OwnedRoomId {
        let req = CreateRoom {
            room_version: Some(version.into()),
            preset: Some(preset.into()),
            ..Default::default()
        };
        self.s
            .rooms
            .create_room(creator, req)
            .await
            .expect("create room")
    }
}

pub fn text(body: &str) -> NewEvent {
    NewEvent::message("m.room.message", json!({"msgtype": "m.text", "body": body}))
}

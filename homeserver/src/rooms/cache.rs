//! What the write path reads for every event, kept in memory: state events parsed once (auth checks, power levels, member names) and each room's member list.

use std::sync::Arc;

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};

use super::pdu::{Pdu, StoredEvent};
use crate::cache::Cache;

/// A stored event with its parsed form.
pub struct Loaded {
    pub stored: StoredEvent,
    pub pdu: Arc<Pdu>,
}

/// State events by ID: a few MiB at most.
pub(crate) type EventCache = Cache<OwnedEventId, Arc<Loaded>>;
/// Each room's members with their membership (local and remote).
pub(crate) type MemberCache = Cache<OwnedRoomId, Arc<Vec<(OwnedUserId, String)>>>;
/// Current state entries by `room \u{ff} type \u{ff} state_key` (what auth
/// looks up for every event).
pub(crate) type StateIdCache = Cache<String, Option<OwnedEventId>>;
/// Each room's record (version, extremities, depth), read for every event.
pub(crate) type RoomCache = Cache<OwnedRoomId, super::RoomRecord>;

pub(crate) fn state_key(room: &ruma::RoomId, kind: &str, state_key: &str) -> String {
    format!("{room}\u{ff}{kind}\u{ff}{state_key}")
}

//! Event authorization: the spec's auth rules (via ruma's state-res) applied to every event before it is accepted.

use ruma::{EventId, RoomId, events::StateEventType, room_version_rules::RoomVersionRules};

use super::{Rooms, pdu::Pdu};
use crate::error::{Error, Result};

/// Checks `pdu` against its auth events and against the room's current
/// state. A failure is the client's fault: M_FORBIDDEN, nothing written.
pub fn authorize(rooms: &Rooms, rules: &RoomVersionRules, room_id: &RoomId, pdu: &Pdu) -> Result<()> {
    let fetch_event = |id: &EventId| -> Option<Pdu> {
        let stored = rooms.event(id.as_str()).ok().flatten()?;
        stored.parse().ok()
    };
    ruma::state_res::check_state_independent_auth_rules(&rules.authorization, pdu, fetch_event)
        .map_err(|e| Error::Forbidden(format!("event not allowed: {e}")))?;
    let fetch_state = |kind: &StateEventType, key: &str| -> Option<Pdu> {
        let id = rooms.state_event_id(room_id, &kind.to_string(), key).ok().flatten()?;
        fetch_event(&id)
    };
    ruma::state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, fetch_state)
        .map_err(|e| Error::Forbidden(format!("event not allowed: {e}")))
}

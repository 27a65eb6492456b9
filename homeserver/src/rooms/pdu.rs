//! The persistent data unit: its stored form, its view for event auth, and its client-facing JSON.

use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
    events::TimelineEventType,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, value::RawValue};

/// An event as we keep it: the signed PDU exactly as built or received,
/// plus local bookkeeping that is not part of the PDU.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEvent {
    pub event_id: OwnedEventId,
    /// Explicit, because v12 create events carry no `room_id`.
    pub room_id: OwnedRoomId,
    pub pos: u64,
    pub pdu: Box<RawValue>,
    /// The state event this one replaced (for `unsigned.prev_content` and
    /// for rewinding state to a point in the timeline).
    #[serde(default)]
    pub replaces_state: Option<OwnedEventId>,
    /// `(device_id, txn_id)` of the local device that sent it.
    #[serde(default)]
    pub txn: Option<(String, String)>,
    #[serde(default)]
    pub rejected: bool,
}

/// The fields of a PDU that event auth and the client format read.
#[derive(Debug, Clone, Deserialize)]
pub struct Pdu {
    #[serde(skip_deserializing, default = "placeholder_event_id")]
    pub event_id: OwnedEventId,
    #[serde(default)]
    pub room_id: Option<OwnedRoomId>,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    pub kind: TimelineEventType,
    pub content: Box<RawValue>,
    #[serde(default)]
    pub state_key: Option<String>,
    #[serde(default)]
    pub prev_events: Vec<OwnedEventId>,
    #[serde(default)]
    pub auth_events: Vec<OwnedEventId>,
    #[serde(default)]
    pub redacts: Option<OwnedEventId>,
    #[serde(default)]
    pub depth: u64,
    #[serde(default)]
    pub unsigned: Option<serde_json::Map<String, Value>>,
    #[serde(skip)]
    pub rejected: bool,
}

fn placeholder_event_id() -> OwnedEventId {
    OwnedEventId::try_from("$placeholder")
        .unwrap_or_else(|_| unreachable!("static event id is valid"))
}

impl StoredEvent {
    pub fn parse(&self) -> Result<Pdu, serde_json::Error> {
        let mut pdu: Pdu = serde_json::from_str(self.pdu.get())?;
        pdu.event_id = self.event_id.clone();
        pdu.rejected = self.rejected;
        Ok(pdu)
    }

    pub fn pdu_value(&self) -> Value {
        serde_json::from_str(self.pdu.get()).unwrap_or(Value::Null)
    }
}

impl Pdu {
    pub fn content_value(&self) -> Value {
        serde_json::from_str(self.content.get()).unwrap_or(Value::Null)
    }

    /// `membership` of an `m.room.member` event.
    pub fn membership(&self) -> Option<String> {
        self.content_value()
            .get("membership")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// The redacted event, from the top-level field (v1-v10) or the content (v11+).
    pub fn redacts_target(&self) -> Option<OwnedEventId> {
        self.redacts.clone().or_else(|| {
            self.content_value()
                .get("redacts")
                .and_then(Value::as_str)
                .and_then(|s| OwnedEventId::try_from(s).ok())
        })
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.room_id.as_deref()
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        self.rejected
    }
}

/// Client-Server API format of an event (`ClientEvent`), as seen by `viewer`.
pub fn client_event(
    stored: &StoredEvent,
    viewer_device: Option<&str>,
    prev_content: Option<Value>,
    now_ms: u64,
) -> Value {
    let Ok(Value::Object(pdu)) = serde_json::from_str::<Value>(stored.pdu.get()) else {
        return Value::Null;
    };
    let mut out = serde_json::Map::new();
    for key in [
        "content",
        "origin_server_ts",
        "sender",
        "type",
        "state_key",
        "redacts",
    ] {
        if let Some(v) = pdu.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    if pdu.get("type").and_then(Value::as_str) == Some("m.room.redaction")
        && !out.contains_key("redacts")
    {
        // v11+ moved `redacts` into content; older clients still read the top level.
        if let Some(r) = pdu.get("content").and_then(|c| c.get("redacts")) {
            out.insert("redacts".into(), r.clone());
        }
    }
    out.insert("event_id".into(), Value::from(stored.event_id.as_str()));
    out.insert("room_id".into(), Value::from(stored.room_id.as_str()));
    let mut unsigned = pdu
        .get("unsigned")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let ts = pdu
        .get("origin_server_ts")
        .and_then(Value::as_u64)
        .unwrap_or(now_ms);
    unsigned.insert("age".into(), Value::from(now_ms.saturating_sub(ts)));
    if let (Some((device, txn)), Some(viewer)) = (&stored.txn, viewer_device)
        && device == viewer
    {
        unsigned.insert("transaction_id".into(), Value::from(txn.as_str()));
    }
    if let Some(prev) = prev_content {
        unsigned.insert("prev_content".into(), prev);
    }
    if let Some(r) = &stored.replaces_state {
        unsigned.insert("replaces_state".into(), Value::from(r.as_str()));
    }
    out.insert("unsigned".into(), Value::Object(unsigned));
    Value::Object(out)
}

/// Stripped state (type, state_key, content, sender) for invite previews.
pub fn stripped_state(stored: &StoredEvent) -> Value {
    let v = stored.pdu_value();
    serde_json::json!({
        "type": v.get("type"),
        "state_key": v.get("state_key"),
        "content": v.get("content"),
        "sender": v.get("sender"),
    })
}

pub fn parse_event_id(s: &str) -> Option<OwnedEventId> {
    EventId::parse(s).ok()
}

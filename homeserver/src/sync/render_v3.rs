//! Renders a collected delta as the Client-Server API's /sync (v3) response.

use serde_json::{Map, Value, json};

use super::collect::{JoinedRoom, RoomTimeline, SyncDelta};

pub fn render(delta: SyncDelta) -> Value {
    let next_batch = if delta.to_device_upto < delta.upto {
        format!("s{}_{}", delta.upto, delta.to_device_upto)
    } else {
        format!("s{}", delta.upto)
    };
    let join: Map<String, Value> = delta
        .joined
        .into_iter()
        .map(|(id, room)| (id.to_string(), joined(room)))
        .collect();
    let invite: Map<String, Value> = delta
        .invited
        .into_iter()
        .map(|(id, state)| (id.to_string(), json!({"invite_state": {"events": state}})))
        .collect();
    let leave: Map<String, Value> = delta
        .left
        .into_iter()
        .map(|(id, t)| (id.to_string(), timeline(t)))
        .collect();
    json!({
        "next_batch": next_batch,
        "rooms": {"join": join, "invite": invite, "leave": leave, "knock": {}},
        "account_data": {"events": events(delta.account_data)},
        "presence": {"events": delta.presence},
        "to_device": {"events": delta.to_device},
        "device_lists": {"changed": delta.device_lists.changed, "left": delta.device_lists.left},
        "device_one_time_keys_count": delta.one_time_key_counts,
        "device_unused_fallback_key_types": delta.unused_fallback_key_types,
    })
}

/// `[{type, content}]` of account data entries.
fn events(entries: Vec<(String, Value)>) -> Vec<Value> {
    entries
        .into_iter()
        .map(|(k, c)| json!({"type": k, "content": c}))
        .collect()
}

fn timeline(t: RoomTimeline) -> Value {
    json!({
        "timeline": {"events": t.events, "limited": t.limited, "prev_batch": format!("t{}", t.prev_batch)},
        "state": {"events": t.state},
        "account_data": {"events": events(t.account_data)},
        "ephemeral": {"events": []},
        "summary": {
            "m.heroes": t.summary.heroes,
            "m.joined_member_count": t.summary.joined,
            "m.invited_member_count": t.summary.invited,
        },
    })
}

fn joined(room: JoinedRoom) -> Value {
    let mut entry = timeline(room.timeline);
    let mut ephemeral = Vec::new();
    if let Some(users) = room.typing {
        ephemeral.push(json!({"type": "m.typing", "content": {"user_ids": users}}));
    }
    if let Some(r) = room.receipts {
        ephemeral.push(r);
    }
    entry["ephemeral"] = json!({"events": ephemeral});
    entry["unread_notifications"] = room.unread.to_json();
    if let Some(threads) = room.unread_threads {
        let per: Map<String, Value> = threads.into_iter().map(|(t, c)| (t, c.to_json())).collect();
        entry["unread_thread_notifications"] = Value::Object(per);
    }
    entry
}

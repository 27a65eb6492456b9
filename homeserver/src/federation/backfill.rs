//! Backfill: history from before this server joined a room, fetched from a server in the room when a client scrolls past the start of what we have.

use reqwest::Method;
use ruma::{CanonicalJsonObject, OwnedEventId, RoomId};

use super::{
    Federation,
    inbound::{depth, enc},
};
use crate::error::Result;

/// At most this many events per /backfill request (the spec lets servers cap it).
const MAX_BACKFILL: usize = 100;

impl Federation {
    /// Fetches up to `limit` events before the room's earliest timeline
    /// event and slots them in below it. Returns how many were added.
    pub async fn backfill(&self, room_id: &RoomId, limit: usize) -> Result<usize> {
        if !self.enabled {
            return Ok(0);
        }
        let Some(earliest) = self.rooms.earliest_timeline_event(room_id)? else {
            return Ok(0);
        };
        // Nothing precedes the create event; no room below position 1.
        if earliest.pos <= 1
            || earliest
                .parse()
                .is_ok_and(|p| p.kind.to_string() == "m.room.create")
        {
            return Ok(0);
        }
        let version = match self.rooms.room_version(room_id)? {
            Some(v) => v,
            None => return Ok(0),
        };
        for server in self.rooms.remote_servers(room_id)? {
            let uri = format!(
                "/_matrix/federation/v1/backfill/{}?v={}&limit={}",
                enc(room_id.as_str()),
                enc(earliest.event_id.as_str()),
                limit.clamp(1, MAX_BACKFILL)
            );
            let answer = match self.client.json(&server, Method::GET, &uri, None).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::info!("backfill of {room_id} from {server} failed: {e}");
                    continue;
                }
            };
            let mut events: Vec<(i64, OwnedEventId, CanonicalJsonObject)> = Vec::new();
            for pdu in answer["pdus"]
                .as_array()
                .into_iter()
                .flatten()
                .take(MAX_BACKFILL)
            {
                if pdu["room_id"] != room_id.as_str() {
                    continue;
                }
                match self.check_incoming(pdu, &version).await {
                    Ok((obj, id)) => {
                        if self.rooms.event(id.as_str())?.is_none_or(|e| e.pos == 0) {
                            events.push((depth(&obj), id, obj));
                        }
                    }
                    Err(e) => tracing::info!("backfilled event from {server} refused: {e}"),
                }
            }
            if events.is_empty() {
                continue;
            }
            // Newest first: each takes the next position down.
            events.sort_by_key(|e| std::cmp::Reverse(e.0));
            events.dedup_by(|a, b| a.1 == b.1);
            for (_, id, obj) in &events {
                if let Err(e) = self.fetch_missing_auth(&server, room_id, obj, id).await {
                    tracing::info!("auth chain of backfilled {id}: {e}");
                }
            }
            let added = self.rooms.insert_backfilled(room_id, &events).await?;
            return Ok(added);
        }
        Ok(0)
    }
}

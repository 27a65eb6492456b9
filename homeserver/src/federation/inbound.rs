//! Inbound transactions: PUT /send/{txnId} is idempotent per origin and transaction; each PDU is checked, its gaps filled, and accepted or refused.

use reqwest::Method;
use ruma::{CanonicalJsonObject, OwnedEventId, OwnedRoomId, RoomId};
use serde_json::{Map, Value, json};

use super::Federation;
use crate::{
    error::{Error, Result},
    storage::{FederationRead, FederationWrite},
};

/// `(origin, txn_id) -> the answer we gave`, so a retried transaction is
/// answered the same and changes nothing. Kept a day: senders retry for
/// minutes, not days.
const TXN_MEMORY_MS: u64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TxnRecord {
    pub answer: Value,
    pub ts: u64,
}

const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;
/// Events fetched to fill one gap before giving up on the rest.
const MAX_MISSING: usize = 50;

impl Federation {
    pub async fn receive_transaction(
        &self,
        origin: &str,
        txn_id: &str,
        body: Value,
    ) -> Result<Value> {
        if let Some(record) = self.store.inbound_txn(origin, txn_id)? {
            return Ok(record.answer);
        }
        if !body.is_object() {
            return Err(Error::bad_json("a transaction is a JSON object"));
        }
        let pdus = match body.get("pdus") {
            Some(Value::Array(a)) => a.clone(),
            None => Vec::new(),
            Some(_) => return Err(Error::bad_json("pdus must be an array")),
        };
        let edus = match body.get("edus") {
            Some(Value::Array(a)) => a.clone(),
            None => Vec::new(),
            Some(_) => return Err(Error::bad_json("edus must be an array")),
        };
        if pdus.len() > MAX_PDUS || edus.len() > MAX_EDUS {
            return Err(Error::bad_json(format!(
                "at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs per transaction"
            )));
        }
        // EDUs first: a room key sent to a device before a message must not
        // reach the client after the message it unlocks.
        for edu in edus {
            if let Err(e) = self.receive_edu(origin, &edu).await {
                tracing::debug!("ignored EDU from {origin}: {e}");
            }
        }
        let mut results = Map::new();
        for pdu in pdus {
            let (id, outcome) = self.receive_pdu(origin, &pdu).await;
            let entry = match outcome {
                Ok(()) => json!({}),
                Err(e) => {
                    tracing::info!("refused PDU {id} from {origin}: {e}");
                    json!({"error": e.to_string()})
                }
            };
            results.insert(id, entry);
        }
        let answer = json!({"pdus": results});
        let mut txn = self.store.transaction();
        let record = TxnRecord {
            answer: answer.clone(),
            ts: crate::accounts::now_ms(),
        };
        txn.put_inbound_txn(origin, txn_id, &record);
        txn.commit()?;
        Ok(answer)
    }
}

/// Forgets transaction answers older than a day, every hour.
pub async fn forget_old_transactions(store: crate::storage::Store) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        let cutoff = crate::accounts::now_ms().saturating_sub(TXN_MEMORY_MS);
        let old = match store.inbound_txns_before(cutoff) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!("cannot read federation transactions: {e}");
                continue;
            }
        };
        let mut txn = store.transaction();
        for (origin, id) in &old {
            txn.delete_inbound_txn(origin, id);
        }
        if let Err(e) = txn.commit() {
            tracing::warn!("cannot forget old federation transactions: {e}");
        }
    }
}

impl Federation {
    /// Returns the event ID (or a placeholder) and what became of it.
    async fn receive_pdu(&self, origin: &str, pdu: &Value) -> (String, Result<()>) {
        let room_id = match pdu
            .get("room_id")
            .and_then(Value::as_str)
            .map(OwnedRoomId::try_from)
        {
            Some(Ok(r)) => r,
            _ => {
                return (
                    "(no room_id)".into(),
                    Err(Error::bad_json("PDU without a valid room_id")),
                );
            }
        };
        if matches!(self.rooms.room_version(&room_id), Ok(None)) {
            // The resident server may send the room's next events before our
            // send_join has returned: wait for the join to finish.
            self.wait_for_join(&room_id).await;
        }
        let version = match self.rooms.room_version(&room_id) {
            Ok(Some(v)) => v,
            Ok(None) => {
                return (
                    "(unknown room)".into(),
                    Err(Error::not_found("this server is not in the room")),
                );
            }
            Err(e) => return ("(error)".into(), Err(e)),
        };
        // A refused event is named by its reference hash when it has one.
        let claimed_id = || {
            bellwire_federation::rules_for(&version)
                .ok()
                .and_then(|rules| {
                    Some(
                        bellwire_federation::event_id_of(
                            &crate::rooms::remote::to_object(pdu.clone()).ok()?,
                            &rules,
                        )
                        .ok()?
                        .to_string(),
                    )
                })
                .unwrap_or_else(|| "(unverified)".to_owned())
        };
        match self.rooms.server_allowed(&room_id, origin) {
            Ok(true) => {}
            Ok(false) => {
                return (
                    claimed_id(),
                    Err(Error::forbidden("the room's server ACL denies your server")),
                );
            }
            Err(e) => return (claimed_id(), Err(e)),
        }
        let (object, event_id) = match self.check_incoming(pdu, &version).await {
            Ok(x) => x,
            Err(e) => return (claimed_id(), Err(e)),
        };
        let outcome = self
            .accept_with_gaps_filled(origin, &room_id, object, &event_id)
            .await;
        (event_id.to_string(), outcome)
    }

    /// Fetches missing auth events and prev events, then accepts the event.
    pub(crate) async fn accept_with_gaps_filled(
        &self,
        origin: &str,
        room_id: &RoomId,
        object: CanonicalJsonObject,
        event_id: &OwnedEventId,
    ) -> Result<()> {
        if self
            .rooms
            .event(event_id.as_str())?
            .is_some_and(|e| e.pos != 0)
        {
            return Ok(());
        }
        self.fetch_missing_auth(origin, room_id, &object, event_id)
            .await?;
        let prevs = ids(&object, "prev_events");
        let mut missing = false;
        for p in &prevs {
            if !self.rooms.has_event(p.as_str())? {
                missing = true;
            }
        }
        if missing {
            // Best effort: events we have not seen between our extremities
            // and this one, oldest first. Whatever stays missing is a gap
            // the timeline simply skips.
            if let Err(e) = self.fetch_missing_events(origin, room_id, event_id).await {
                tracing::info!("could not fill the gap before {event_id}: {e}");
            }
        }
        self.rooms
            .accept_remote(room_id, &object, event_id, Vec::new())
            .await
    }

    pub(crate) async fn fetch_missing_auth(
        &self,
        origin: &str,
        room_id: &RoomId,
        object: &CanonicalJsonObject,
        event_id: &OwnedEventId,
    ) -> Result<()> {
        let mut need = false;
        for a in ids(object, "auth_events") {
            if !self.rooms.has_event(a.as_str())? {
                need = true;
            }
        }
        if !need {
            return Ok(());
        }
        let uri = format!(
            "/_matrix/federation/v1/event_auth/{}/{}",
            enc(room_id.as_str()),
            enc(event_id.as_str())
        );
        let answer = self.client.json(origin, Method::GET, &uri, None).await?;
        let version = self
            .rooms
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("unknown room"))?;
        let mut chain = Vec::new();
        for ev in answer["auth_chain"].as_array().cloned().unwrap_or_default() {
            let (obj, id) = self.check_incoming(&ev, &version).await?;
            chain.push((depth(&obj), id, obj));
        }
        chain.sort_by_key(|(d, _, _)| *d);
        for (_, id, obj) in chain {
            self.rooms.store_outlier(room_id, &obj, &id)?;
        }
        Ok(())
    }

    async fn fetch_missing_events(
        &self,
        origin: &str,
        room_id: &RoomId,
        latest: &OwnedEventId,
    ) -> Result<()> {
        let earliest = self
            .rooms
            .room(room_id)?
            .map(|r| r.extremities)
            .unwrap_or_default();
        let uri = format!(
            "/_matrix/federation/v1/get_missing_events/{}",
            enc(room_id.as_str())
        );
        let body = json!({"earliest_events": earliest, "latest_events": [latest], "limit": MAX_MISSING, "min_depth": 0});
        let answer = self
            .client
            .json(origin, Method::POST, &uri, Some(&body))
            .await?;
        let version = self
            .rooms
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("unknown room"))?;
        let mut events = Vec::new();
        for ev in answer["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .take(MAX_MISSING)
        {
            match self.check_incoming(&ev, &version).await {
                Ok((obj, id)) => events.push((depth(&obj), id, obj)),
                Err(e) => tracing::info!("missing event from {origin} refused: {e}"),
            }
        }
        events.sort_by_key(|(d, _, _)| *d);
        for (_, id, obj) in events {
            self.fetch_missing_auth(origin, room_id, &obj, &id).await?;
            if let Err(e) = self
                .rooms
                .accept_remote(room_id, &obj, &id, Vec::new())
                .await
            {
                tracing::info!("missing event {id} refused: {e}");
            }
        }
        Ok(())
    }
}

pub(crate) fn ids(object: &CanonicalJsonObject, field: &str) -> Vec<OwnedEventId> {
    match object.get(field) {
        Some(ruma::CanonicalJsonValue::Array(a)) => a
            .iter()
            .filter_map(|v| match v {
                ruma::CanonicalJsonValue::String(s) => OwnedEventId::try_from(s.as_str()).ok(),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

pub(crate) fn depth(object: &CanonicalJsonObject) -> i64 {
    match object.get("depth") {
        Some(ruma::CanonicalJsonValue::Integer(i)) => i64::from(*i),
        _ => 0,
    }
}

/// Percent-encodes a path segment.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

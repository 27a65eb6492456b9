//! Federation: the server-server API's services (keys, request auth, inbound transactions, membership handshakes, the courier of the outbox to other servers).

pub mod backfill;
pub mod client;
pub mod device_cache;
pub mod e2ee;
pub mod edus;
pub mod inbound;
pub mod keys;
pub mod media;
pub mod membership;
pub mod queries;
pub mod sender;

use std::{sync::Arc, time::Duration};

use bellwire_federation::{
    PduCheck, ServerKey, check_pdu, event_id_of, request_auth, rules_for, servers_to_verify,
};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, RoomVersionId};

use crate::{
    config::Config,
    e2ee::E2ee,
    ephemeral::{presence::Presence, receipts::Receipts, typing::Typing},
    error::{Error, Result},
    media::Media,
    outbox::{Destination, Outbox},
    rooms::Rooms,
    storage::Store,
};
use client::FedClient;
use keys::KeyRing;

#[derive(Clone)]
pub struct Federation {
    pub enabled: bool,
    pub server_name: String,
    pub client: FedClient,
    pub keys: KeyRing,
    pub key: Arc<ServerKey>,
    /// Keys retired by rotation, still published.
    pub old_keys: Vec<bellwire_federation::server_keys::OldKey>,
    pub outbox: Arc<Outbox>,
    pub store: Store,
    pub rooms: Rooms,
    pub typing: Typing,
    pub receipts: Receipts,
    pub presence: Presence,
    pub e2ee: E2ee,
    pub media: Media,
    /// Rooms we are joining right now: events for them that arrive before
    /// the join completes wait for it instead of being refused.
    joining: Arc<
        std::sync::Mutex<
            std::collections::HashMap<ruma::OwnedRoomId, tokio::sync::watch::Receiver<bool>>,
        >,
    >,
}

pub struct Parts {
    pub store: Store,
    pub key: Arc<ServerKey>,
    pub outbox: Arc<Outbox>,
    pub rooms: Rooms,
    pub typing: Typing,
    pub receipts: Receipts,
    pub presence: Presence,
    pub e2ee: E2ee,
    pub media: Media,
}

impl Federation {
    /// The courier that delivers the outbox to other servers, when
    /// federation is on.
    pub fn courier(&self, config: &Config) -> Option<Arc<dyn crate::outbox::Courier>> {
        let f = config.federation.as_ref()?;
        Some(Arc::new(sender::ServerCourier {
            client: self.client.clone(),
            rooms: self.rooms.clone(),
            our_name: self.server_name.clone(),
            max_backoff: Duration::from_secs(f.max_backoff_secs),
        }))
    }

    /// Builds the service.
    pub fn start(config: &Config, p: Parts) -> Result<Self> {
        let trusted = config
            .federation
            .as_ref()
            .map(|f| f.trusted_ca_certificates.clone())
            .unwrap_or_default();
        let server_name = config.server_name.to_string();
        let client = FedClient::new(server_name.clone(), p.key.clone(), &trusted)?;
        let old_keys = crate::signing_key::old_keys(&p.store)?;
        let mut own_keys = vec![(p.key.key_id(), p.key.public_key_base64())];
        own_keys.extend(
            old_keys
                .iter()
                .map(|k| (k.key_id.clone(), k.public_key.clone())),
        );
        let keys = KeyRing::new(
            p.store.clone(),
            client.clone(),
            server_name.clone(),
            own_keys,
        );
        let enabled = config.federation.is_some();
        if enabled {
            tokio::spawn(inbound::forget_old_transactions(p.store.clone()));
        }
        Ok(Federation {
            enabled,
            server_name,
            client,
            keys,
            key: p.key,
            old_keys,
            outbox: p.outbox,
            store: p.store,
            rooms: p.rooms,
            typing: p.typing,
            receipts: p.receipts,
            presence: p.presence,
            e2ee: p.e2ee,
            media: p.media,
            joining: Arc::default(),
        })
    }

    /// Marks a room as being joined until the returned guard is dropped.
    pub(crate) fn start_joining(&self, room_id: &ruma::RoomId) -> JoinGuard {
        let (tx, rx) = tokio::sync::watch::channel(false);
        self.joining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(room_id.to_owned(), rx);
        JoinGuard {
            room_id: room_id.to_owned(),
            joining: self.joining.clone(),
            _done: tx,
        }
    }

    /// Waits (bounded) for a join of `room_id` in progress, if any.
    pub(crate) async fn wait_for_join(&self, room_id: &ruma::RoomId) {
        let rx = self
            .joining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(room_id)
            .cloned();
        if let Some(mut rx) = rx {
            // The sender is dropped when the join ends, either way.
            let _ = tokio::time::timeout(Duration::from_secs(30), rx.changed()).await;
        }
    }

    pub fn require_enabled(&self) -> Result<()> {
        if self.enabled {
            Ok(())
        } else {
            Err(Error::forbidden("federation is disabled on this server"))
        }
    }

    /// Checks an inbound request's X-Matrix header; returns the origin.
    pub async fn authenticate(
        &self,
        header: Option<&str>,
        method: &str,
        uri: &str,
        body: Option<&CanonicalJsonValue>,
    ) -> Result<String> {
        let header =
            header.ok_or_else(|| Error::Unauthorized("missing X-Matrix authorization".into()))?;
        let auth =
            request_auth::parse_x_matrix(header).map_err(|e| Error::Unauthorized(e.to_string()))?;
        if ruma::ServerName::parse(&auth.origin).is_err() || auth.origin == self.server_name {
            return Err(Error::Unauthorized("invalid origin".into()));
        }
        let public = self
            .keys
            .public_key(&auth.origin, &auth.key)
            .await
            .map_err(|e| Error::Unauthorized(format!("cannot get the origin's key: {e}")))?;
        request_auth::verify_request(&auth, &public, &self.server_name, method, uri, body)
            .map_err(|e| Error::Unauthorized(e.to_string()))?;
        self.outbox
            .retry_now(&Destination::Server(auth.origin.clone()));
        Ok(auth.origin)
    }

    /// The checks on receipt of a PDU that need no room state: format,
    /// signatures of every required server, content hash (a mismatch
    /// keeps the redacted form). Returns the event to keep and its ID.
    pub async fn check_incoming(
        &self,
        pdu: &serde_json::Value,
        version: &RoomVersionId,
    ) -> Result<(CanonicalJsonObject, OwnedEventId)> {
        let rules = rules_for(version).map_err(|_| Error::UnsupportedRoomVersion)?;
        let object = crate::rooms::remote::to_object(pdu.clone())?;
        ruma::state_res::check_pdu_format(&object, &rules.event_format)
            .map_err(|e| Error::bad_json(format!("malformed PDU: {e}")))?;
        let servers =
            servers_to_verify(&object, &rules).map_err(|e| Error::bad_json(e.to_string()))?;
        let mut keys = self.keys.key_map(&servers).await?;
        let verdict = match check_pdu(&keys, &object, &rules) {
            Ok(v) => v,
            Err(_) => {
                // The server may have rotated its key since we cached it.
                for s in &servers {
                    if *s != self.server_name {
                        let _ = self.keys.refresh(s).await;
                    }
                }
                keys = self.keys.key_map(&servers).await?;
                check_pdu(&keys, &object, &rules)
                    .map_err(|e| Error::Forbidden(format!("event signature check failed: {e}")))?
            }
        };
        let event_id = event_id_of(&object, &rules).map_err(|e| Error::bad_json(e.to_string()))?;
        let object = match verdict {
            PduCheck::Valid => object,
            PduCheck::Redact => ruma::canonical_json::redact(object, &rules.redaction, None)
                .map_err(|e| Error::bad_json(e.to_string()))?,
        };
        Ok((object, event_id))
    }
}

/// Ends a "joining" mark when dropped.
pub(crate) struct JoinGuard {
    room_id: ruma::OwnedRoomId,
    joining: Arc<
        std::sync::Mutex<
            std::collections::HashMap<ruma::OwnedRoomId, tokio::sync::watch::Receiver<bool>>,
        >,
    >,
    _done: tokio::sync::watch::Sender<bool>,
}

impl Drop for JoinGuard {
    fn drop(&mut self) {
        self.joining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.room_id);
    }
}

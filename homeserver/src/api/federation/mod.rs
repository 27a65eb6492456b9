//! The server-server HTTP surface: /_matrix/key/* and /_matrix/federation/*, with X-Matrix authentication on every federation route.

pub mod keys;
pub mod queries;
pub mod rooms;

use axum::{
    Router,
    extract::{FromRequest, Request},
    http::header,
    routing::{get, post, put},
};
use ruma::CanonicalJsonValue;
use serde_json::Value;

use crate::{
    api::AppState,
    error::{Error, Result},
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/_matrix/key/v2/server", get(keys::server_keys))
        .route("/_matrix/key/v2/server/{key_id}", get(keys::server_keys))
        .route("/_matrix/key/v2/query", post(keys::query))
        .route("/_matrix/key/v2/query/{server}", get(keys::query_one))
        .route(
            "/.well-known/matrix/server",
            get(queries::well_known_server),
        )
        .route("/_matrix/federation/v1/version", get(queries::version))
        .route(
            "/_matrix/federation/v1/send/{txn_id}",
            put(rooms::send_transaction),
        )
        .route(
            "/_matrix/federation/v1/make_join/{room}/{user}",
            get(rooms::make_join),
        )
        .route(
            "/_matrix/federation/v2/send_join/{room}/{event}",
            put(rooms::send_join),
        )
        .route(
            "/_matrix/federation/v1/make_leave/{room}/{user}",
            get(rooms::make_leave),
        )
        .route(
            "/_matrix/federation/v2/send_leave/{room}/{event}",
            put(rooms::send_leave),
        )
        .route(
            "/_matrix/federation/v2/invite/{room}/{event}",
            put(rooms::invite),
        )
        .route("/_matrix/federation/v1/event/{event}", get(rooms::event))
        .route(
            "/_matrix/federation/v1/state_ids/{room}",
            get(rooms::state_ids),
        )
        .route("/_matrix/federation/v1/state/{room}", get(rooms::state))
        .route(
            "/_matrix/federation/v1/event_auth/{room}/{event}",
            get(rooms::event_auth),
        )
        .route(
            "/_matrix/federation/v1/get_missing_events/{room}",
            post(rooms::get_missing_events),
        )
        .route(
            "/_matrix/federation/v1/backfill/{room}",
            get(rooms::backfill),
        )
        .route(
            "/_matrix/federation/v1/query/profile",
            get(queries::profile),
        )
        .route(
            "/_matrix/federation/v1/query/directory",
            get(queries::directory),
        )
        .route(
            "/_matrix/federation/v1/user/keys/query",
            post(queries::keys_query),
        )
        .route(
            "/_matrix/federation/v1/user/keys/claim",
            post(queries::keys_claim),
        )
        .route(
            "/_matrix/federation/v1/user/devices/{user}",
            get(queries::user_devices),
        )
        .route(
            "/_matrix/federation/v1/publicRooms",
            get(queries::public_rooms).post(queries::public_rooms_post),
        )
        .route(
            "/_matrix/federation/v1/openid/userinfo",
            get(queries::openid_userinfo),
        )
        .route(
            "/_matrix/federation/v1/media/download/{media_id}",
            get(queries::media_download),
        )
        .route(
            "/_matrix/federation/v1/media/thumbnail/{media_id}",
            get(queries::media_thumbnail),
        )
}

/// An authenticated server-server request: the origin that signed it and
/// its JSON body (`{}` when there is none).
pub struct Fed {
    pub origin: String,
    pub body: Value,
}

/// Transactions carry up to 50 PDUs of 64 KiB each.
const MAX_FEDERATION_BODY: usize = 8 * 1024 * 1024;

impl FromRequest<AppState> for Fed {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Error> {
        state.federation.require_enabled()?;
        let method = req.method().as_str().to_owned();
        let uri = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let limit = MAX_FEDERATION_BODY.max(state.config.max_request_bytes);
        // Not the `Bytes` extractor: it stops at axum's default 2 MB, well
        // under what a full transaction may weigh.
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| Error::TooLarge { limit })?;
        if bytes.len() > limit {
            return Err(Error::TooLarge { limit });
        }
        let (body, signed) = if bytes.iter().all(u8::is_ascii_whitespace) {
            (Value::Object(Default::default()), None)
        } else {
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| Error::NotJson(format!("body is not valid JSON: {e}")))?;
            let c: CanonicalJsonValue = ruma::canonical_json::to_canonical_value(v.clone())
                .map_err(|e| Error::bad_json(format!("body is not canonical JSON: {e}")))?;
            (v, Some(c))
        };
        let origin = state
            .federation
            .authenticate(auth.as_deref(), &method, &uri, signed.as_ref())
            .await?;
        Ok(Fed { origin, body })
    }
}

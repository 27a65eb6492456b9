//! HTTP surface: the router, request extractors and thin handlers that call the services.

pub mod client;
pub mod cors;
pub mod extract;
pub mod federation;
pub mod media;

use std::sync::Arc;

use axum::{
    Router,
    http::{StatusCode, Uri},
    response::{IntoResponse, Response},
};

use crate::{error::Error, services::Services};

pub type AppState = Arc<Services>;

pub fn router(services: AppState) -> Router {
    client::routes()
        .merge(media_routes())
        .merge(federation::routes())
        .fallback(|uri: Uri| async move { unrecognized(&uri, false) })
        .method_not_allowed_fallback(|uri: Uri| async move { unrecognized(&uri, true) })
        .with_state(services)
        .layer(axum::middleware::from_fn(cors::cors))
}

/// Matrix paths answer unknown endpoints with the spec's JSON error; every
/// other path is left free for the web client, so it gets a plain 404.
fn unrecognized(uri: &Uri, method_not_allowed: bool) -> Response {
    let path = uri.path();
    if path.starts_with("/_matrix/") || path.starts_with("/.well-known/") {
        return Error::Unrecognized { method_not_allowed }.into_response();
    }
    (StatusCode::NOT_FOUND, "Not Found").into_response()
}

fn media_routes() -> Router<AppState> {
    use axum::routing::{get, post, put};
    Router::new()
        .route("/_matrix/media/v3/upload", post(media::upload))
        .route("/_matrix/media/r0/upload", post(media::upload))
        .route("/_matrix/media/v1/create", post(media::create))
        .route(
            "/_matrix/media/v3/upload/{server}/{media_id}",
            put(media::upload_to),
        )
        .route("/_matrix/media/v3/config", get(media::config))
        .route("/_matrix/media/r0/config", get(media::config))
        .route("/_matrix/client/v1/media/config", get(media::config))
        .route(
            "/_matrix/client/v1/media/download/{server}/{media_id}",
            get(media::download),
        )
        .route(
            "/_matrix/client/v1/media/download/{server}/{media_id}/{file_name}",
            get(media::download_named),
        )
        .route(
            "/_matrix/client/v1/media/thumbnail/{server}/{media_id}",
            get(media::thumbnail),
        )
        .route(
            "/_matrix/client/v1/media/preview_url",
            get(media::preview_url),
        )
        .route(
            "/_matrix/media/v3/download/{server}/{media_id}",
            get(media::legacy_download),
        )
        .route(
            "/_matrix/media/r0/download/{server}/{media_id}",
            get(media::legacy_download),
        )
        .route(
            "/_matrix/media/v3/download/{server}/{media_id}/{file_name}",
            get(media::legacy_download_named),
        )
        .route(
            "/_matrix/media/r0/download/{server}/{media_id}/{file_name}",
            get(media::legacy_download_named),
        )
        .route(
            "/_matrix/media/v3/thumbnail/{server}/{media_id}",
            get(media::legacy_thumbnail),
        )
        .route(
            "/_matrix/media/r0/thumbnail/{server}/{media_id}",
            get(media::legacy_thumbnail),
        )
        .route("/_matrix/media/v3/preview_url", get(media::preview_url))
}

//! HTTP surface: the router, request extractors and thin handlers that call the services.

pub mod client;
pub mod cors;
pub mod extract;
pub mod federation;
pub mod media;

use std::sync::Arc;

use axum::Router;

use crate::services::Services;

pub type AppState = Arc<Services>;

pub fn router(services: AppState) -> Router {
    client::routes()
        .merge(media_routes())
        .merge(federation::routes())
        .fallback(|| async {
            crate::error::Error::Unrecognized {
                method_not_allowed: false,
            }
        })
        .method_not_allowed_fallback(|| async {
            crate::error::Error::Unrecognized {
                method_not_allowed: true,
            }
        })
        .with_state(services)
        .layer(axum::middleware::from_fn(cors::cors))
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

//! HTTP surface: the router, request extractors and thin handlers that call the services.

pub mod client;
pub mod cors;
pub mod extract;

use std::sync::Arc;

use axum::Router;

use crate::services::Services;

pub type AppState = Arc<Services>;

pub fn router(services: AppState) -> Router {
    client::routes()
        .fallback(|| async { crate::error::Error::Unrecognized { method_not_allowed: false } })
        .method_not_allowed_fallback(|| async { crate::error::Error::Unrecognized { method_not_allowed: true } })
        .with_state(services)
        .layer(axum::middleware::from_fn(cors::cors))
}

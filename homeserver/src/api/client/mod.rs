//! Client-Server API routes (`/_matrix/client/{r0,v3}/...`) mapped to their handlers.

pub mod account;
pub mod discovery;
pub mod events;
pub mod rooms;
pub mod sync;

use axum::{
    Router,
    routing::{MethodRouter, get, post, put},
};

use super::AppState;

/// Registers `path` under both the legacy r0 and the current v3 prefix.
fn both(router: Router<AppState>, path: &str, method: MethodRouter<AppState>) -> Router<AppState> {
    router
        .route(&format!("/_matrix/client/r0{path}"), method.clone())
        .route(&format!("/_matrix/client/v3{path}"), method)
}

pub fn routes() -> Router<AppState> {
    let mut r = Router::new()
        .route("/_matrix/client/versions", get(discovery::versions))
        .route("/.well-known/matrix/client", get(discovery::well_known_client))
        .route(
            "/_matrix/client/v1/register/m.login.registration_token/validity",
            get(account::registration_token_validity),
        );
    let table: Vec<(&str, MethodRouter<AppState>)> = vec![
        ("/capabilities", get(discovery::capabilities)),
        ("/register", post(account::register)),
        ("/register/available", get(account::register_available)),
        ("/login", get(account::login_flows).post(account::login)),
        ("/logout", post(account::logout)),
        ("/logout/all", post(account::logout_all)),
        ("/account/whoami", get(account::whoami)),
        ("/account/password", post(account::change_password)),
        ("/devices", get(account::devices)),
        ("/devices/{device_id}", get(account::device).put(account::update_device).delete(account::delete_device)),
        ("/delete_devices", post(account::delete_devices)),
        ("/createRoom", post(rooms::create_room)),
        ("/joined_rooms", get(rooms::joined_rooms)),
        ("/join/{room_id_or_alias}", post(rooms::join_by_id_or_alias)),
        ("/rooms/{room_id}/join", post(rooms::join_by_id_or_alias)),
        ("/rooms/{room_id}/leave", post(rooms::leave)),
        ("/rooms/{room_id}/forget", post(rooms::forget)),
        ("/rooms/{room_id}/invite", post(rooms::invite)),
        ("/rooms/{room_id}/kick", post(rooms::kick)),
        ("/rooms/{room_id}/ban", post(rooms::ban)),
        ("/rooms/{room_id}/unban", post(rooms::unban)),
        ("/rooms/{room_id}/aliases", get(rooms::room_aliases)),
        ("/directory/room/{alias}", get(rooms::get_alias).put(rooms::put_alias).delete(rooms::delete_alias)),
        ("/rooms/{room_id}/send/{event_type}/{txn_id}", put(events::send)),
        ("/rooms/{room_id}/state", get(events::get_state)),
        (
            "/rooms/{room_id}/state/{event_type}",
            get(events::get_state_event_empty_key).put(events::put_state_empty_key),
        ),
        // Clients (ruma, matrix-sdk) send the empty state key as a trailing slash.
        (
            "/rooms/{room_id}/state/{event_type}/",
            get(events::get_state_event_empty_key).put(events::put_state_empty_key),
        ),
        ("/rooms/{room_id}/state/{event_type}/{state_key}", get(events::get_state_event).put(events::put_state)),
        ("/rooms/{room_id}/event/{event_id}", get(events::get_event)),
        ("/rooms/{room_id}/redact/{event_id}/{txn_id}", put(events::redact)),
        ("/rooms/{room_id}/members", get(events::members)),
        ("/rooms/{room_id}/joined_members", get(events::joined_members)),
        ("/rooms/{room_id}/messages", get(events::messages)),
        ("/rooms/{room_id}/context/{event_id}", get(events::context)),
        ("/sync", get(sync::sync)),
        ("/user/{user_id}/filter", post(sync::create_filter)),
        ("/user/{user_id}/filter/{filter_id}", get(sync::get_filter)),
        ("/user/{user_id}/account_data/{type}", get(sync::get_account_data).put(sync::put_account_data)),
        (
            "/user/{user_id}/rooms/{room_id}/account_data/{type}",
            get(sync::get_room_account_data).put(sync::put_room_account_data),
        ),
    ];
    for (path, method) in table {
        r = both(r, path, method);
    }
    r
}

//! Client-Server API routes (`/_matrix/client/{r0,v3}/...`) mapped to their handlers.

pub mod account;
pub mod backup;
pub mod directory;
pub mod discovery;
pub mod ephemeral;
pub mod events;
pub mod keys;
pub mod profile;
pub mod push;
pub mod relations;
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
        .route(
            "/.well-known/matrix/client",
            get(discovery::well_known_client),
        )
        .route(
            "/_matrix/client/v1/register/m.login.registration_token/validity",
            get(account::registration_token_validity),
        )
        .route(
            "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}",
            get(relations::relations),
        )
        .route(
            "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}/{rel_type}",
            get(relations::relations_by_type),
        )
        .route(
            "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}/{rel_type}/{event_type}",
            get(relations::relations_by_type_and_event_type),
        )
        .route(
            "/_matrix/client/v1/rooms/{room_id}/threads",
            get(relations::threads),
        )
        .route(
            "/_matrix/client/v1/room_summary/{room_id_or_alias}",
            get(directory::room_summary),
        )
        // Where MSC3266 served it before it entered the spec.
        .route(
            "/_matrix/client/unstable/im.nheko.summary/rooms/{room_id_or_alias}/summary",
            get(directory::room_summary),
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
        (
            "/devices/{device_id}",
            get(account::device)
                .put(account::update_device)
                .delete(account::delete_device),
        ),
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
        (
            "/directory/room/{alias}",
            get(rooms::get_alias)
                .put(rooms::put_alias)
                .delete(rooms::delete_alias),
        ),
        (
            "/rooms/{room_id}/send/{event_type}/{txn_id}",
            put(events::send),
        ),
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
        (
            "/rooms/{room_id}/state/{event_type}/{state_key}",
            get(events::get_state_event).put(events::put_state),
        ),
        ("/rooms/{room_id}/event/{event_id}", get(events::get_event)),
        (
            "/rooms/{room_id}/redact/{event_id}/{txn_id}",
            put(events::redact),
        ),
        ("/rooms/{room_id}/members", get(events::members)),
        (
            "/rooms/{room_id}/joined_members",
            get(events::joined_members),
        ),
        ("/rooms/{room_id}/messages", get(events::messages)),
        ("/rooms/{room_id}/context/{event_id}", get(events::context)),
        ("/sync", get(sync::sync)),
        ("/user/{user_id}/filter", post(sync::create_filter)),
        (
            "/user/{user_id}/openid/request_token",
            post(account::openid_request_token),
        ),
        ("/user/{user_id}/filter/{filter_id}", get(sync::get_filter)),
        (
            "/user/{user_id}/account_data/{type}",
            get(sync::get_account_data).put(sync::put_account_data),
        ),
        (
            "/user/{user_id}/rooms/{room_id}/account_data/{type}",
            get(sync::get_room_account_data).put(sync::put_room_account_data),
        ),
        ("/user/{user_id}/rooms/{room_id}/tags", get(sync::get_tags)),
        (
            "/user/{user_id}/rooms/{room_id}/tags/{tag}",
            put(sync::put_tag).delete(sync::delete_tag),
        ),
        ("/rooms/{room_id}/typing/{user_id}", put(ephemeral::typing)),
        (
            "/rooms/{room_id}/receipt/{receipt_type}/{event_id}",
            post(ephemeral::receipt),
        ),
        (
            "/rooms/{room_id}/read_markers",
            post(ephemeral::read_markers),
        ),
        (
            "/presence/{user_id}/status",
            get(ephemeral::get_presence).put(ephemeral::put_presence),
        ),
        ("/pushrules/", get(push::get_all)),
        ("/pushrules", get(push::get_all)),
        ("/pushrules/{scope}/", get(push::get_scope)),
        ("/pushrules/{scope}", get(push::get_scope)),
        (
            "/pushrules/{scope}/{kind}/{rule_id}",
            get(push::get_rule)
                .put(push::put_rule)
                .delete(push::delete_rule),
        ),
        (
            "/pushrules/{scope}/{kind}/{rule_id}/enabled",
            get(push::get_enabled).put(push::put_enabled),
        ),
        (
            "/pushrules/{scope}/{kind}/{rule_id}/actions",
            get(push::get_actions).put(push::put_actions),
        ),
        ("/pushers", get(push::get_pushers)),
        ("/pushers/set", post(push::set_pusher)),
        ("/notifications", get(push::get_notifications)),
        ("/profile/{user_id}", get(profile::get_profile)),
        (
            "/profile/{user_id}/{key}",
            get(profile::get_field)
                .put(profile::put_field)
                .delete(profile::delete_field),
        ),
        ("/user_directory/search", post(directory::search_users)),
        (
            "/publicRooms",
            get(directory::public_rooms).post(directory::search_public_rooms),
        ),
        (
            "/directory/list/room/{room_id}",
            get(directory::get_visibility).put(directory::put_visibility),
        ),
        (
            "/rooms/{room_id}/report/{event_id}",
            post(directory::report_event),
        ),
        ("/rooms/{room_id}/report", post(directory::report_room)),
        ("/users/{user_id}/report", post(directory::report_user)),
        ("/keys/upload", post(keys::upload)),
        ("/keys/query", post(keys::query)),
        ("/keys/claim", post(keys::claim)),
        ("/keys/changes", get(keys::changes)),
        (
            "/keys/device_signing/upload",
            post(keys::device_signing_upload),
        ),
        ("/keys/signatures/upload", post(keys::signatures_upload)),
        (
            "/sendToDevice/{event_type}/{txn_id}",
            put(keys::send_to_device),
        ),
        (
            "/room_keys/version",
            get(backup::latest_version).post(backup::create_version),
        ),
        (
            "/room_keys/version/{version}",
            get(backup::get_version)
                .put(backup::put_version)
                .delete(backup::delete_version),
        ),
        (
            "/room_keys/keys",
            get(backup::get_all)
                .put(backup::put_all)
                .delete(backup::delete_all),
        ),
        (
            "/room_keys/keys/{room_id}",
            get(backup::get_room)
                .put(backup::put_room)
                .delete(backup::delete_room),
        ),
        (
            "/room_keys/keys/{room_id}/{session_id}",
            get(backup::get_session)
                .put(backup::put_session)
                .delete(backup::delete_session),
        ),
    ];
    for (path, method) in table {
        r = both(r, path, method);
    }
    r
}

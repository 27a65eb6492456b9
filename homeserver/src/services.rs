//! The services a request can reach, built once at start-up and shared by every handler.

use std::sync::Arc;

use crate::{
    account_data::AccountData,
    accounts::{Accounts, random_string, uia::UiaSessions},
    config::{Config, RegistrationMode},
    directory::{public_rooms::PublicRooms, users::UserDirectory},
    e2ee::E2ee,
    ephemeral::{presence::Presence, receipts::Receipts, typing::Typing},
    error::Result,
    media::Media,
    outbox::{Couriers, Outbox},
    profiles::Profiles,
    push::{Push, gateway::PushCourier},
    ratelimit::RateLimiter,
    rooms::Rooms,
    storage::{MetaRead, MetaWrite, Store},
    stream::{Notifier, Stream},
    sync::{SyncService, filter::Filters},
};

pub struct Services {
    pub config: Config,
    pub accounts: Accounts,
    pub uia: UiaSessions,
    pub rooms: Rooms,
    pub sync: SyncService,
    pub filters: Filters,
    pub account_data: AccountData,
    pub typing: Typing,
    pub receipts: Receipts,
    pub presence: Presence,
    pub push: Arc<Push>,
    pub profiles: Profiles,
    pub public_rooms: PublicRooms,
    pub user_directory: UserDirectory,
    pub rate_limiter: RateLimiter,
    pub e2ee: E2ee,
    pub media: Media,
    pub federation: crate::federation::Federation,
    pub store: Store,
    /// The token `m.login.registration_token` accepts in `token` mode.
    pub registration_token: Option<String>,
}

impl Services {
    pub fn build(config: Config, store: Store) -> Result<Self> {
        let key = Arc::new(crate::signing_key::load_or_create(&store)?);
        let stream = Arc::new(Stream::new(store.clone(), Arc::new(Notifier::default()))?);
        let outbox = Outbox::new(store.clone(), config.server_name.to_string())?;
        let account_data = AccountData::new(store.clone(), stream.clone());
        let push = Push::new(store.clone(), account_data.clone(), outbox.clone());
        let rooms = Rooms::new(
            store.clone(),
            config.server_name.clone(),
            key.clone(),
            stream.clone(),
            account_data.clone(),
            config.default_room_version.clone(),
            push.clone(),
            outbox.clone(),
        );
        let typing = Typing::new(stream.clone(), rooms.clone());
        let receipts = Receipts::new(store.clone(), stream.clone(), rooms.clone());
        let presence = Presence::new(
            store.clone(),
            stream.clone(),
            rooms.clone(),
            account_data.clone(),
            config.presence_enabled,
        );
        let accounts = Accounts::new(store.clone(), stream.clone(), &config.server_name);
        let e2ee = E2ee::new(
            store.clone(),
            stream.clone(),
            rooms.clone(),
            accounts.clone(),
        );
        let sync = SyncService {
            rooms: rooms.clone(),
            account_data: account_data.clone(),
            typing: typing.clone(),
            receipts: receipts.clone(),
            presence: presence.clone(),
            push: push.clone(),
            e2ee: e2ee.clone(),
            store: store.clone(),
            stream: stream.clone(),
            default_limit: config.sync_default_timeline_limit,
            max_timeout_ms: config.sync_max_timeout_ms,
        };
        tokio::spawn(presence.clone().sweep_forever());
        let registration_token = match (config.registration_mode, &config.registration_token) {
            (RegistrationMode::Token, Some(t)) => Some(t.clone()),
            // No token configured: make one, keep it across restarts, and
            // tell the operator, so the first account can be created safely.
            (RegistrationMode::Token, None) => {
                let t = match store.registration_token()? {
                    Some(t) => t,
                    None => {
                        let t = random_string(24);
                        let mut txn = store.transaction();
                        txn.put_registration_token(&t);
                        txn.commit()?;
                        t
                    }
                };
                tracing::warn!(
                    "registration needs the token {t} (set registration.token to choose one)"
                );
                Some(t)
            }
            _ => None,
        };
        let media = Media::new(
            store.clone(),
            stream.clone(),
            config.media.clone(),
            config.server_name.clone(),
        )?;
        let federation = crate::federation::Federation::start(
            &config,
            crate::federation::Parts {
                store: store.clone(),
                key: key.clone(),
                outbox: outbox.clone(),
                rooms: rooms.clone(),
                typing: typing.clone(),
                receipts: receipts.clone(),
                presence: presence.clone(),
                e2ee: e2ee.clone(),
                media: media.clone(),
            },
        )?;
        outbox.start(Couriers {
            servers: federation.courier(&config),
            pushers: Some(Arc::new(PushCourier::new(rooms.clone(), push.clone())?)),
            appservices: None,
        })?;
        Ok(Services {
            accounts: accounts.clone(),
            e2ee,
            media,
            federation,
            uia: UiaSessions::default(),
            filters: Filters::new(store.clone()),
            typing,
            receipts,
            presence,
            push,
            profiles: Profiles::new(accounts.clone(), rooms.clone()),
            public_rooms: PublicRooms::new(store.clone(), rooms.clone(), config.publish_policy),
            user_directory: UserDirectory::new(
                store.clone(),
                rooms.clone(),
                config.user_directory_search_all,
            ),
            rate_limiter: RateLimiter::new(config.rate_limits.clone()),
            store,
            rooms,
            sync,
            account_data,
            registration_token,
            config,
        })
    }
}

impl Services {
    /// Deletes devices with everything hanging off them: tokens, keys,
    /// to-device inbox; users who share a room hear of the change.
    pub async fn remove_devices(&self, user: &ruma::UserId, devices: &[&str]) -> Result<()> {
        self.accounts.delete_devices(user, devices)?;
        self.e2ee.remove_devices(user, devices).await
    }
}

//! Accounts: users, their devices and access tokens, OpenID tokens, and stored sync filters.

use ruma::{OwnedDeviceId, OwnedUserId, UserId};

use super::{Read, Result, Table, Txn, keys};
use crate::{
    accounts::{DeviceRecord, TokenRecord, UserRecord, openid::OpenIdToken},
    sync::filter::Filter,
};

const USERS: Table<UserRecord> = Table::new("users");
/// `(user, device) -> device`.
const DEVICES: Table<DeviceRecord> = Table::new("devices");
/// `access token -> (user, device)`.
const TOKENS: Table<TokenRecord> = Table::new("tokens");
/// `token -> owner and expiry`.
const OPENID_TOKENS: Table<OpenIdToken> = Table::new("openid_tokens");
/// `(user, filter ID) -> filter`.
const FILTERS: Table<Filter> = Table::new("filters");

pub trait AccountRead {
    fn user(&self, user: &UserId) -> Result<Option<UserRecord>>;
    /// Every account (user directory searches over all users).
    fn users(&self) -> Result<Vec<(OwnedUserId, UserRecord)>>;
    fn device(&self, user: &UserId, device: &str) -> Result<Option<DeviceRecord>>;
    fn devices(&self, user: &UserId) -> Result<Vec<(OwnedDeviceId, DeviceRecord)>>;
    fn token(&self, token: &str) -> Result<Option<TokenRecord>>;
    fn openid_token(&self, token: &str) -> Result<Option<OpenIdToken>>;
    fn filter(&self, user: &UserId, id: &str) -> Result<Option<Filter>>;
}

pub trait AccountWrite {
    fn put_user(&mut self, user: &UserId, record: &UserRecord);
    fn put_device(&mut self, user: &UserId, device: &str, record: &DeviceRecord);
    fn delete_device(&mut self, user: &UserId, device: &str);
    fn put_token(&mut self, token: &str, record: &TokenRecord);
    fn delete_token(&mut self, token: &str);
    fn put_openid_token(&mut self, token: &str, record: &OpenIdToken);
    fn put_filter(&mut self, user: &UserId, id: &str, filter: &Filter);
}

impl<R: Read + ?Sized> AccountRead for R {
    fn user(&self, user: &UserId) -> Result<Option<UserRecord>> {
        self.get(USERS, user.as_bytes())
    }

    fn users(&self) -> Result<Vec<(OwnedUserId, UserRecord)>> {
        Ok(self
            .scan_prefix(USERS, &[])?
            .into_iter()
            .filter_map(|(k, u)| {
                let id = std::str::from_utf8(&k)
                    .ok()
                    .and_then(|s| OwnedUserId::try_from(s).ok())?;
                Some((id, u))
            })
            .collect())
    }

    fn device(&self, user: &UserId, device: &str) -> Result<Option<DeviceRecord>> {
        self.get(DEVICES, &keys::strs(&[user.as_str(), device]))
    }

    fn devices(&self, user: &UserId) -> Result<Vec<(OwnedDeviceId, DeviceRecord)>> {
        Ok(self
            .scan_prefix(DEVICES, &keys::strs(&[user.as_str()]))?
            .into_iter()
            .filter_map(|(k, v)| {
                let parts = keys::split_strs(&k)?;
                Some((OwnedDeviceId::from(*parts.get(1)?), v))
            })
            .collect())
    }

    fn token(&self, token: &str) -> Result<Option<TokenRecord>> {
        self.get(TOKENS, token.as_bytes())
    }

    fn openid_token(&self, token: &str) -> Result<Option<OpenIdToken>> {
        self.get(OPENID_TOKENS, token.as_bytes())
    }

    fn filter(&self, user: &UserId, id: &str) -> Result<Option<Filter>> {
        self.get(FILTERS, &keys::strs(&[user.as_str(), id]))
    }
}

impl AccountWrite for Txn<'_> {
    fn put_user(&mut self, user: &UserId, record: &UserRecord) {
        self.put(USERS, user.as_bytes(), record);
    }

    fn put_device(&mut self, user: &UserId, device: &str, record: &DeviceRecord) {
        self.put(DEVICES, &keys::strs(&[user.as_str(), device]), record);
    }

    fn delete_device(&mut self, user: &UserId, device: &str) {
        self.delete(DEVICES, &keys::strs(&[user.as_str(), device]));
    }

    fn put_token(&mut self, token: &str, record: &TokenRecord) {
        self.put(TOKENS, token.as_bytes(), record);
    }

    fn delete_token(&mut self, token: &str) {
        self.delete(TOKENS, token.as_bytes());
    }

    fn put_openid_token(&mut self, token: &str, record: &OpenIdToken) {
        self.put(OPENID_TOKENS, token.as_bytes(), record);
    }

    fn put_filter(&mut self, user: &UserId, id: &str, filter: &Filter) {
        self.put(FILTERS, &keys::strs(&[user.as_str(), id]), filter);
    }
}

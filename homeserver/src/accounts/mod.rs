//! Accounts, devices and access tokens: registration, password checks, login sessions.

pub mod openid;
pub mod uia;

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};
use rand::{Rng, distributions::Alphanumeric};
use ruma::{OwnedDeviceId, OwnedUserId, ServerName, UserId};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    storage::{AccountRead, AccountWrite, Store},
    stream::Stream,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    pub password_hash: Option<String>,
    pub created_ts: u64,
    #[serde(default)]
    pub deactivated: bool,
    #[serde(default)]
    pub displayname: Option<String>,
    #[serde(default)]
    pub avatar_url: Option<String>,
    /// Custom profile fields (spec v1.16), beside the two classic ones.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub profile_fields: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub display_name: Option<String>,
    pub access_token: String,
    pub last_seen_ts: Option<u64>,
    pub last_seen_ip: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
}

/// Who made a request: the owner of a valid access token.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub access_token: String,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn random_string(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

#[derive(Clone)]
pub struct Accounts {
    store: Store,
    stream: Arc<Stream>,
    /// Access tokens seen lately: every request presents one.
    sessions: Arc<crate::cache::Cache<String, TokenRecord>>,
    server_name: ruma::OwnedServerName,
}

impl Accounts {
    pub fn new(store: Store, stream: Arc<Stream>, server_name: &ServerName) -> Self {
        Accounts {
            store,
            stream,
            sessions: Arc::new(crate::cache::Cache::new(4096)),
            server_name: server_name.to_owned(),
        }
    }

    /// Validates a requested localpart (the spec's historical-safe subset).
    pub fn user_id_for_localpart(&self, localpart: &str) -> Result<OwnedUserId> {
        let localpart = localpart.to_lowercase();
        if localpart.is_empty()
            || !localpart
                .chars()
                .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+'))
        {
            return Err(Error::InvalidUsername(
                "user names may contain only a-z, 0-9, and . _ = - / +".into(),
            ));
        }
        let id = format!("@{localpart}:{}", self.server_name);
        if id.len() > 255 {
            return Err(Error::InvalidUsername(
                "user ID longer than 255 bytes".into(),
            ));
        }
        UserId::parse(&id).map_err(|e| Error::InvalidUsername(e.to_string()))
    }

    /// Accepts `@user:server` or a bare localpart, for login.
    pub fn resolve_login_user(&self, user: &str) -> Result<OwnedUserId> {
        if user.starts_with('@') {
            let id = UserId::parse(user)
                .map_err(|_| Error::forbidden("invalid username or password"))?;
            if id.server_name() != self.server_name {
                return Err(Error::forbidden("invalid username or password"));
            }
            Ok(id)
        } else {
            self.user_id_for_localpart(user)
                .map_err(|_| Error::forbidden("invalid username or password"))
        }
    }

    pub fn exists(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.store.user(user_id)?.is_some())
    }

    pub fn get(&self, user_id: &UserId) -> Result<Option<UserRecord>> {
        Ok(self.store.user(user_id)?)
    }

    /// Creates an account. The password is hashed first (slow, off the
    /// async threads); whether the name is free is decided inside the write,
    /// so of two registrations racing for one name exactly one succeeds.
    pub async fn create(&self, user_id: &UserId, password: Option<String>) -> Result<()> {
        let password_hash = match password {
            Some(p) => Some(with_password_hasher(move || hash_password(&p)).await?),
            None => None,
        };
        let record = UserRecord {
            password_hash,
            created_ts: now_ms(),
            deactivated: false,
            displayname: Some(user_id.localpart().to_owned()),
            avatar_url: None,
            profile_fields: Default::default(),
        };
        self.stream
            .write(|w| {
                if w.user(user_id)?.is_some() {
                    return Err(Error::UserInUse);
                }
                w.put_user(user_id, &record);
                Ok(())
            })
            .await
    }

    /// Changes a user's record in one write (password, profile), so two
    /// changes at once never undo each other.
    pub async fn update<T>(
        &self,
        user_id: &UserId,
        change: impl FnOnce(&mut UserRecord) -> Result<T>,
    ) -> Result<T> {
        self.stream
            .write(|w| {
                let mut user = w
                    .user(user_id)?
                    .ok_or_else(|| Error::not_found("no such user"))?;
                let out = change(&mut user)?;
                w.put_user(user_id, &user);
                Ok(out)
            })
            .await
    }

    /// Checks a password; returns `false` for unknown users too, so callers
    /// cannot tell the two apart.
    pub fn check_password(&self, user_id: &UserId, password: &str) -> Result<bool> {
        let Some(user) = self.get(user_id)? else {
            return Ok(false);
        };
        if user.deactivated {
            return Ok(false);
        }
        let Some(hash) = user.password_hash else {
            return Ok(false);
        };
        Ok(PasswordHash::new(&hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false))
    }

    pub async fn set_password(&self, user_id: &UserId, password: String) -> Result<()> {
        let hash = with_password_hasher(move || hash_password(&password)).await?;
        self.update(user_id, |user| {
            user.password_hash = Some(hash);
            Ok(())
        })
        .await
    }

    /// Creates (or re-uses) a device and gives it a fresh access token; an
    /// existing device's old token stops working.
    pub async fn open_session(
        &self,
        user_id: &UserId,
        device_id: Option<&str>,
        display_name: Option<String>,
    ) -> Result<Session> {
        let device_id: OwnedDeviceId = match device_id {
            Some(d) if !d.is_empty() && d.len() <= 255 => d.into(),
            Some(_) => return Err(Error::invalid_param("device_id must be 1-255 bytes")),
            None => random_string(10).to_uppercase().into(),
        };
        let token = format!("bw_{}", random_string(40));
        self.stream
            .write(|w| {
                let record = match w.device(user_id, device_id.as_str())? {
                    Some(mut old) => {
                        w.delete_token(&old.access_token);
                        let (sessions, gone) = (self.sessions.clone(), old.access_token.clone());
                        w.after_commit(move || sessions.invalidate([gone.as_str()]));
                        old.access_token = token.clone();
                        if display_name.is_some() {
                            old.display_name = display_name;
                        }
                        old
                    }
                    None => DeviceRecord {
                        display_name,
                        access_token: token.clone(),
                        last_seen_ts: Some(now_ms()),
                        last_seen_ip: None,
                    },
                };
                w.put_device(user_id, device_id.as_str(), &record);
                w.put_token(
                    &token,
                    &TokenRecord {
                        user_id: user_id.to_owned(),
                        device_id: device_id.clone(),
                    },
                );
                Ok(())
            })
            .await?;
        Ok(Session {
            user_id: user_id.to_owned(),
            device_id,
            access_token: token,
        })
    }

    pub fn authenticate(&self, token: &str) -> Result<Session> {
        let record = match self.sessions.get(token) {
            Some(r) => r,
            None => {
                let generation = self.sessions.generation();
                let r = self
                    .store
                    .token(token)?
                    .ok_or(Error::UnknownToken { soft_logout: false })?;
                self.sessions
                    .insert(generation, token.to_owned(), r.clone());
                r
            }
        };
        Ok(Session {
            user_id: record.user_id,
            device_id: record.device_id,
            access_token: token.to_owned(),
        })
    }

    pub fn devices(&self, user_id: &UserId) -> Result<Vec<(OwnedDeviceId, DeviceRecord)>> {
        Ok(self.store.devices(user_id)?)
    }

    pub fn device(&self, user_id: &UserId, device_id: &str) -> Result<Option<DeviceRecord>> {
        Ok(self.store.device(user_id, device_id)?)
    }

    pub async fn rename_device(
        &self,
        user_id: &UserId,
        device_id: &str,
        name: Option<String>,
    ) -> Result<()> {
        self.stream
            .write(|w| {
                let mut dev = w
                    .device(user_id, device_id)?
                    .ok_or_else(|| Error::not_found("unknown device"))?;
                dev.display_name = name;
                w.put_device(user_id, device_id, &dev);
                Ok(())
            })
            .await
    }

    /// Removes devices and their tokens in one transaction.
    pub fn delete_devices(&self, user_id: &UserId, device_ids: &[&str]) -> Result<()> {
        let mut txn = self.store.transaction();
        let mut gone = Vec::new();
        for d in device_ids {
            if let Some(dev) = txn.device(user_id, d)? {
                txn.delete_token(&dev.access_token);
                txn.delete_device(user_id, d);
                gone.push(dev.access_token);
            }
        }
        txn.commit()?;
        self.sessions.invalidate(gone.iter().map(String::as_str));
        Ok(())
    }
}

/// Argon2id needs ~19 MiB per running hash; one per core keeps a burst of
/// logins from ballooning memory (and from starving other blocking work).
static PASSWORD_HASHERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Runs password hashing or checking off the async threads, bounded.
pub async fn with_password_hasher<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let _permit = PASSWORD_HASHERS.acquire().await.map_err(Error::internal)?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(Error::internal)?
}

fn hash_password(password: &str) -> Result<String> {
    if password.len() > 512 {
        return Err(Error::invalid_param("password longer than 512 bytes"));
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("password hashing failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::Notifier;

    fn accounts() -> (tempfile::TempDir, Accounts) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        let stream = Arc::new(Stream::new(store.clone(), Arc::new(Notifier::default())).unwrap());
        let name = ruma::server_name!("example.org");
        (dir, Accounts::new(store, stream, name))
    }

    #[tokio::test]
    async fn register_login_and_token_rotation() {
        let (_d, acc) = accounts();
        let alice = acc.user_id_for_localpart("Alice").unwrap();
        assert_eq!(alice.as_str(), "@alice:example.org");
        acc.create(&alice, Some("pw".into())).await.unwrap();
        assert!(matches!(
            acc.create(&alice, Some("pw".into())).await,
            Err(Error::UserInUse)
        ));
        assert!(acc.check_password(&alice, "pw").unwrap());
        assert!(!acc.check_password(&alice, "nope").unwrap());
        let s1 = acc.open_session(&alice, Some("DEV"), None).await.unwrap();
        let s2 = acc.open_session(&alice, Some("DEV"), None).await.unwrap();
        assert!(
            acc.authenticate(&s1.access_token).is_err(),
            "old token of a re-used device must die"
        );
        assert_eq!(
            acc.authenticate(&s2.access_token)
                .unwrap()
                .device_id
                .as_str(),
            "DEV"
        );
        acc.delete_devices(&alice, &["DEV"]).unwrap();
        assert!(acc.authenticate(&s2.access_token).is_err());
    }

    /// Six registrations of one new name at once, each with its own
    /// password: exactly one account is made, and its password is the
    /// winner's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_registrations_of_one_name_make_one_account() {
        let (_d, acc) = accounts();
        let bob = acc.user_id_for_localpart("bob").unwrap();
        let tries = (0..6).map(|i| {
            let (acc, bob) = (acc.clone(), bob.clone());
            tokio::spawn(async move { (i, acc.create(&bob, Some(format!("pw{i}"))).await) })
        });
        let mut winners = Vec::new();
        for t in tries {
            let (i, outcome) = t.await.unwrap();
            match outcome {
                Ok(()) => winners.push(i),
                Err(Error::UserInUse) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        let pw = format!("pw{}", winners[0]);
        assert!(acc.check_password(&bob, &pw).unwrap());
    }

    #[test]
    fn bad_localparts_rejected() {
        let (_d, acc) = accounts();
        for bad in ["", "al ice", "ali:ce", "émile"] {
            assert!(
                matches!(
                    acc.user_id_for_localpart(bad),
                    Err(Error::InvalidUsername(_))
                ),
                "{bad}"
            );
        }
    }
}

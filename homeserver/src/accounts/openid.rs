//! OpenID tokens: short-lived proofs of identity a user hands to a third party, which checks them with /openid/userinfo.

use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use super::{Accounts, now_ms, random_string};
use crate::{
    error::{Error, Result},
    storage::{AccountRead, AccountWrite},
};

/// An hour, as Synapse and the spec's examples use.
pub const LIFETIME_MS: u64 = 3600 * 1000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenIdToken {
    pub user_id: OwnedUserId,
    pub expires_ts: u64,
}

impl Accounts {
    pub fn issue_openid_token(&self, user: &UserId) -> Result<(String, u64)> {
        let token = random_string(32);
        let record = OpenIdToken {
            user_id: user.to_owned(),
            expires_ts: now_ms() + LIFETIME_MS,
        };
        let mut txn = self.store.transaction();
        txn.put_openid_token(&token, &record);
        txn.commit()?;
        Ok((token, LIFETIME_MS / 1000))
    }

    /// The user a valid, unexpired token belongs to.
    pub fn openid_user(&self, token: &str) -> Result<OwnedUserId> {
        match self.store.openid_token(token)? {
            Some(t) if t.expires_ts > now_ms() => Ok(t.user_id),
            _ => Err(Error::UnknownToken { soft_logout: false }),
        }
    }
}

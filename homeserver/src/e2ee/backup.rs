//! Server-side key backup: versions with their auth data, and the encrypted room keys stored under the current version.

use ruma::UserId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::E2ee;
use crate::{
    error::{Error, Result},
    storage::{Read, Table, keys},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupVersion {
    pub algorithm: String,
    pub auth_data: Value,
    /// Bumped on every change to the keys, so clients can tell.
    pub etag: u64,
    /// Deleted versions stay as tombstones so their numbers are never reused.
    #[serde(default)]
    pub deleted: bool,
}

/// `(user, version) -> version`.
const BACKUP_VERSIONS: Table<BackupVersion> = Table::new("backup_versions");
/// `(user, version, room, session) -> KeyBackupData`.
const BACKUP_KEYS: Table<Value> = Table::new("backup_keys");

fn vkey(user: &UserId, version: u64) -> Vec<u8> {
    keys::KeyBuf::new()
        .str(user.as_str())
        .u64(version)
        .into_vec()
}

fn keys_prefix(user: &UserId, version: u64) -> keys::KeyBuf {
    keys::KeyBuf::new().str(user.as_str()).u64(version)
}

pub fn parse_version(v: &str) -> Result<u64> {
    v.parse()
        .map_err(|_| Error::not_found("unknown backup version"))
}

/// Which of two backups of the same session to keep (the spec's rules):
/// a verified key beats an unverified one, then the lower first message
/// index, then the lower forwarded count.
fn better(new: &Value, old: &Value) -> bool {
    let verified = |v: &Value| v["is_verified"].as_bool().unwrap_or(false);
    let index = |v: &Value| v["first_message_index"].as_u64().unwrap_or(u64::MAX);
    let forwarded = |v: &Value| v["forwarded_count"].as_u64().unwrap_or(u64::MAX);
    if verified(new) != verified(old) {
        return verified(new);
    }
    if index(new) != index(old) {
        return index(new) < index(old);
    }
    forwarded(new) < forwarded(old)
}

fn check_key_data(v: &Value) -> Result<()> {
    let ok = v["first_message_index"].is_u64()
        && v["forwarded_count"].is_u64()
        && v["is_verified"].is_boolean()
        && v["session_data"].is_object();
    if ok {
        Ok(())
    } else {
        Err(Error::bad_json(
            "key backup data needs first_message_index, forwarded_count, is_verified and session_data",
        ))
    }
}

impl E2ee {
    /// The newest version, deleted or not.
    fn newest_version(&self, user: &UserId) -> Result<Option<(u64, BackupVersion)>> {
        let prefix = keys::strs(&[user.as_str()]);
        let end = vkey(user, u64::MAX);
        Ok(self
            .store
            .scan(BACKUP_VERSIONS, &prefix, &end, None, true, 1)?
            .pop()
            .and_then(|(k, v)| keys::trailing_u64(&k).map(|n| (n, v))))
    }

    /// The current backup: the newest version, unless it was deleted.
    fn latest_version(&self, user: &UserId) -> Result<Option<(u64, BackupVersion)>> {
        Ok(self.newest_version(user)?.filter(|(_, v)| !v.deleted))
    }

    fn version(&self, user: &UserId, version: Option<&str>) -> Result<(u64, BackupVersion)> {
        match version {
            None => self
                .latest_version(user)?
                .ok_or_else(|| Error::not_found("no backup")),
            Some(v) => {
                let n = parse_version(v)?;
                let b = self
                    .store
                    .get(BACKUP_VERSIONS, &vkey(user, n))?
                    .filter(|b| !b.deleted)
                    .ok_or_else(|| Error::not_found("unknown backup version"))?;
                Ok((n, b))
            }
        }
    }

    fn key_count(&self, user: &UserId, version: u64) -> Result<usize> {
        Ok(self
            .store
            .scan_prefix(BACKUP_KEYS, &keys_prefix(user, version).into_vec())?
            .len())
    }

    pub fn create_backup(
        &self,
        user: &UserId,
        algorithm: String,
        auth_data: Value,
    ) -> Result<String> {
        if !auth_data.is_object() {
            return Err(Error::bad_json("auth_data must be an object"));
        }
        let next = self.newest_version(user)?.map_or(1, |(n, _)| n + 1);
        self.store.put(
            BACKUP_VERSIONS,
            &vkey(user, next),
            &BackupVersion {
                algorithm,
                auth_data,
                etag: 0,
                deleted: false,
            },
        )?;
        Ok(next.to_string())
    }

    pub fn backup_info(&self, user: &UserId, version: Option<&str>) -> Result<Value> {
        let (n, b) = self.version(user, version)?;
        Ok(json!({
            "algorithm": b.algorithm,
            "auth_data": b.auth_data,
            "count": self.key_count(user, n)?,
            "etag": b.etag.to_string(),
            "version": n.to_string(),
        }))
    }

    pub fn update_backup(
        &self,
        user: &UserId,
        version: &str,
        algorithm: String,
        auth_data: Value,
        body_version: Option<String>,
    ) -> Result<()> {
        let (n, mut b) = self.version(user, Some(version))?;
        if body_version.is_some_and(|v| v != version) {
            return Err(Error::invalid_param(
                "version in the body does not match the path",
            ));
        }
        if algorithm != b.algorithm {
            return Err(Error::invalid_param(
                "the algorithm of a backup cannot change",
            ));
        }
        if !auth_data.is_object() {
            return Err(Error::bad_json("auth_data must be an object"));
        }
        b.auth_data = auth_data;
        Ok(self.store.put(BACKUP_VERSIONS, &vkey(user, n), &b)?)
    }

    pub fn delete_backup(&self, user: &UserId, version: &str) -> Result<()> {
        let (n, mut b) = self.version(user, Some(version))?;
        let mut batch = self.store.batch();
        b.deleted = true;
        batch.put(BACKUP_VERSIONS, &vkey(user, n), &b);
        for (k, _) in self
            .store
            .scan_prefix(BACKUP_KEYS, &keys_prefix(user, n).into_vec())?
        {
            batch.delete(BACKUP_KEYS, &k);
        }
        Ok(batch.commit()?)
    }

    /// Stores keys (`room -> session -> data`) into the current version only.
    pub fn put_backup_keys(
        &self,
        user: &UserId,
        version: &str,
        rooms: &Map<String, Value>,
    ) -> Result<Value> {
        let current = self.latest_version(user)?;
        let requested = parse_version(version).ok();
        let Some((n, mut b)) = current.filter(|(n, _)| Some(*n) == requested) else {
            return Err(Error::WrongRoomKeysVersion {
                current_version: self.latest_version(user)?.map(|(n, _)| n.to_string()),
            });
        };
        let mut batch = self.store.batch();
        let mut changed = false;
        for (room, sessions) in rooms {
            let sessions = sessions
                .get("sessions")
                .and_then(Value::as_object)
                .ok_or_else(|| Error::bad_json("each room needs a sessions object"))?;
            for (session, data) in sessions {
                check_key_data(data)?;
                let k = keys_prefix(user, n).str(room).str(session).into_vec();
                let keep_old = self
                    .store
                    .get(BACKUP_KEYS, &k)?
                    .is_some_and(|old| !better(data, &old));
                if !keep_old {
                    batch.put(BACKUP_KEYS, &k, data);
                    changed = true;
                }
            }
        }
        if changed {
            b.etag += 1;
            batch.put(BACKUP_VERSIONS, &vkey(user, n), &b);
        }
        batch.commit()?;
        Ok(json!({"etag": b.etag.to_string(), "count": self.key_count(user, n)?}))
    }

    /// Keys of a version: all (`room == None`), one room's, or one session.
    pub fn get_backup_keys(
        &self,
        user: &UserId,
        version: &str,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<Value> {
        let (n, _) = self.version(user, Some(version))?;
        let mut prefix = keys_prefix(user, n);
        if let Some(r) = room {
            prefix = prefix.str(r);
        }
        if let (Some(_), Some(s)) = (room, session) {
            let k = prefix.str(s).into_vec();
            return self
                .store
                .get(BACKUP_KEYS, &k)?
                .ok_or_else(|| Error::not_found("no such session in the backup"));
        }
        let base_len = keys_prefix(user, n).into_vec().len();
        let mut rooms: Map<String, Value> = Map::new();
        for (k, data) in self.store.scan_prefix(BACKUP_KEYS, &prefix.into_vec())? {
            let Some(parts) = k.get(base_len..).and_then(keys::split_strs) else {
                continue;
            };
            let (Some(r), Some(s)) = (parts.first(), parts.get(1)) else {
                continue;
            };
            let entry = rooms
                .entry(r.to_string())
                .or_insert_with(|| json!({"sessions": {}}));
            entry["sessions"][*s] = data;
        }
        Ok(match room {
            Some(r) => rooms.remove(r).unwrap_or_else(|| json!({"sessions": {}})),
            None => json!({"rooms": rooms}),
        })
    }

    pub fn delete_backup_keys(
        &self,
        user: &UserId,
        version: &str,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<Value> {
        let (n, mut b) = self.version(user, Some(version))?;
        let mut prefix = keys_prefix(user, n);
        if let Some(r) = room {
            prefix = prefix.str(r);
            if let Some(s) = session {
                prefix = prefix.str(s);
            }
        }
        let mut batch = self.store.batch();
        for (k, _) in self.store.scan_prefix(BACKUP_KEYS, &prefix.into_vec())? {
            batch.delete(BACKUP_KEYS, &k);
        }
        b.etag += 1;
        batch.put(BACKUP_VERSIONS, &vkey(user, n), &b);
        batch.commit()?;
        Ok(json!({"etag": b.etag.to_string(), "count": self.key_count(user, n)?}))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::better;

    #[test]
    fn verified_then_lower_index_then_fewer_forwards_wins() {
        let k = |verified: bool, index: u64, forwarded: u64| json!({"is_verified": verified, "first_message_index": index, "forwarded_count": forwarded, "session_data": {}});
        assert!(better(&k(true, 9, 9), &k(false, 0, 0)));
        assert!(!better(&k(false, 0, 0), &k(true, 9, 9)));
        assert!(better(&k(false, 1, 5), &k(false, 2, 0)));
        assert!(better(&k(false, 2, 0), &k(false, 2, 1)));
        assert!(
            !better(&k(false, 2, 1), &k(false, 2, 1)),
            "an equal key keeps the stored one"
        );
    }
}

//! Server-side key backup: versions with their auth data, and the encrypted room keys stored under the current version.

use ruma::UserId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::E2ee;
use crate::{
    error::{Error, Result},
    storage::{E2eeRead, E2eeWrite},
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
    fn key_count(&self, user: &UserId, version: u64) -> Result<usize> {
        Ok(self.store.backup_sessions(user, version, None)?.len())
    }

    /// A new backup version, numbered after the newest (in one write, so
    /// two created at once get different numbers).
    pub async fn create_backup(
        &self,
        user: &UserId,
        algorithm: String,
        auth_data: Value,
    ) -> Result<String> {
        if !auth_data.is_object() {
            return Err(Error::bad_json("auth_data must be an object"));
        }
        let backup = BackupVersion {
            algorithm,
            auth_data,
            etag: 0,
            deleted: false,
        };
        self.stream
            .write(|w| {
                let next = w.newest_backup(user)?.map_or(1, |(n, _)| n + 1);
                w.put_backup(user, next, &backup);
                Ok(next.to_string())
            })
            .await
    }

    pub fn backup_info(&self, user: &UserId, version: Option<&str>) -> Result<Value> {
        let (n, b) = version_in(&self.store, user, version)?;
        Ok(json!({
            "algorithm": b.algorithm,
            "auth_data": b.auth_data,
            "count": self.key_count(user, n)?,
            "etag": b.etag.to_string(),
            "version": n.to_string(),
        }))
    }

    pub async fn update_backup(
        &self,
        user: &UserId,
        version: &str,
        algorithm: String,
        auth_data: Value,
        body_version: Option<String>,
    ) -> Result<()> {
        if body_version.is_some_and(|v| v != version) {
            return Err(Error::invalid_param(
                "version in the body does not match the path",
            ));
        }
        if !auth_data.is_object() {
            return Err(Error::bad_json("auth_data must be an object"));
        }
        self.stream
            .write(|w| {
                let (n, mut b) = version_in(&**w, user, Some(version))?;
                if algorithm != b.algorithm {
                    return Err(Error::invalid_param(
                        "the algorithm of a backup cannot change",
                    ));
                }
                b.auth_data = auth_data;
                w.put_backup(user, n, &b);
                Ok(())
            })
            .await
    }

    pub async fn delete_backup(&self, user: &UserId, version: &str) -> Result<()> {
        self.stream
            .write(|w| {
                let (n, mut b) = version_in(&**w, user, Some(version))?;
                b.deleted = true;
                w.put_backup(user, n, &b);
                w.delete_backup_sessions(user, n, None, None)?;
                Ok(())
            })
            .await
    }

    /// Stores keys (`room -> session -> data`) into the current version only.
    pub async fn put_backup_keys(
        &self,
        user: &UserId,
        version: &str,
        rooms: &Map<String, Value>,
    ) -> Result<Value> {
        let requested = parse_version(version).ok();
        let (n, etag) = self
            .stream
            .write(|w| {
                let current = latest_in(&**w, user)?;
                let Some((n, mut b)) = current.clone().filter(|(n, _)| Some(*n) == requested)
                else {
                    return Err(Error::WrongRoomKeysVersion {
                        current_version: current.map(|(n, _)| n.to_string()),
                    });
                };
                let mut changed = false;
                for (room, sessions) in rooms {
                    let sessions = sessions
                        .get("sessions")
                        .and_then(Value::as_object)
                        .ok_or_else(|| Error::bad_json("each room needs a sessions object"))?;
                    for (session, data) in sessions {
                        check_key_data(data)?;
                        let keep_old = w
                            .backup_session(user, n, room, session)?
                            .is_some_and(|old| !better(data, &old));
                        if !keep_old {
                            w.put_backup_session(user, n, room, session, data);
                            changed = true;
                        }
                    }
                }
                if changed {
                    b.etag += 1;
                    w.put_backup(user, n, &b);
                }
                Ok((n, b.etag))
            })
            .await?;
        Ok(json!({"etag": etag.to_string(), "count": self.key_count(user, n)?}))
    }

    /// Keys of a version: all (`room == None`), one room's, or one session.
    pub fn get_backup_keys(
        &self,
        user: &UserId,
        version: &str,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<Value> {
        let (n, _) = version_in(&self.store, user, Some(version))?;
        if let (Some(r), Some(s)) = (room, session) {
            return self
                .store
                .backup_session(user, n, r, s)?
                .ok_or_else(|| Error::not_found("no such session in the backup"));
        }
        let mut rooms: Map<String, Value> = Map::new();
        for (r, s, data) in self.store.backup_sessions(user, n, room)? {
            let entry = rooms.entry(r).or_insert_with(|| json!({"sessions": {}}));
            entry["sessions"][s.as_str()] = data;
        }
        Ok(match room {
            Some(r) => rooms.remove(r).unwrap_or_else(|| json!({"sessions": {}})),
            None => json!({"rooms": rooms}),
        })
    }

    pub async fn delete_backup_keys(
        &self,
        user: &UserId,
        version: &str,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<Value> {
        let (n, etag) = self
            .stream
            .write(|w| {
                let (n, mut b) = version_in(&**w, user, Some(version))?;
                w.delete_backup_sessions(user, n, room, session)?;
                b.etag += 1;
                w.put_backup(user, n, &b);
                Ok((n, b.etag))
            })
            .await?;
        Ok(json!({"etag": etag.to_string(), "count": self.key_count(user, n)?}))
    }

    /// The current backup version, if any.
    pub fn latest_backup(&self, user: &UserId) -> Result<Option<(u64, BackupVersion)>> {
        latest_in(&self.store, user)
    }
}

/// The current backup: the newest version, unless it was deleted.
fn latest_in(r: &impl E2eeRead, user: &UserId) -> Result<Option<(u64, BackupVersion)>> {
    Ok(r.newest_backup(user)?.filter(|(_, v)| !v.deleted))
}

/// A version by number, or the current one.
fn version_in(
    r: &impl E2eeRead,
    user: &UserId,
    version: Option<&str>,
) -> Result<(u64, BackupVersion)> {
    match version {
        None => latest_in(r, user)?.ok_or_else(|| Error::not_found("no backup")),
        Some(v) => {
            let n = parse_version(v)?;
            let b = r
                .backup(user, n)?
                .filter(|b| !b.deleted)
                .ok_or_else(|| Error::not_found("unknown backup version"))?;
            Ok((n, b))
        }
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

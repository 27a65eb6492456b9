//! End-to-end encryption keys as the server keeps them: device, one-time and fallback keys, cross-signing keys and signatures, the device list log, to-device inboxes, and key backups.

use ruma::{OwnedUserId, UserId};
use serde_json::Value;

use super::{Read, Result, Table, Txn, keys};
use crate::e2ee::{backup::BackupVersion, keys::FallbackKey, to_device::ToDevice};

/// `(user, device) -> signed device keys`.
const DEVICE_KEYS: Table<Value> = Table::new("device_keys");
/// `(user, device, algorithm, key ID) -> key`.
const ONE_TIME_KEYS: Table<Value> = Table::new("one_time_keys");
/// `(user, device, algorithm) -> fallback key`.
const FALLBACK_KEYS: Table<FallbackKey> = Table::new("fallback_keys");
/// `(user, master / self_signing / user_signing) -> key`.
const CROSS_SIGNING_KEYS: Table<Value> = Table::new("cross_signing_keys");
/// `(target user, device ID or key, signer, signer key ID) -> signature`.
const KEY_SIGNATURES: Table<String> = Table::new("key_signatures");
/// `pos -> user whose devices or keys changed`.
const DEVICE_LIST_LOG: Table<OwnedUserId> = Table::new("device_list_log");
/// `(user, device, pos) -> message`, until acknowledged.
const TO_DEVICE: Table<ToDevice> = Table::new("to_device");
/// `(sender, device, txn ID) -> seen`.
const TO_DEVICE_TXNS: Table<bool> = Table::new("to_device_txns");
/// `(user, version) -> backup version`.
const BACKUP_VERSIONS: Table<BackupVersion> = Table::new("backup_versions");
/// `(user, version, room, session) -> KeyBackupData`.
const BACKUP_KEYS: Table<Value> = Table::new("backup_keys");

fn device_key(user: &UserId, device: &str) -> Vec<u8> {
    keys::strs(&[user.as_str(), device])
}

fn inbox_key(user: &UserId, device: &str, pos: u64) -> Vec<u8> {
    keys::KeyBuf::new()
        .str(user.as_str())
        .str(device)
        .u64(pos)
        .into_vec()
}

fn pos_key(pos: u64) -> Vec<u8> {
    keys::KeyBuf::new().u64(pos).into_vec()
}

fn version_key(user: &UserId, version: u64) -> Vec<u8> {
    keys::KeyBuf::new()
        .str(user.as_str())
        .u64(version)
        .into_vec()
}

/// The backup keys under a version, a room of it, or one session.
fn backup_prefix(
    user: &UserId,
    version: u64,
    room: Option<&str>,
    session: Option<&str>,
) -> Vec<u8> {
    let mut k = keys::KeyBuf::new().str(user.as_str()).u64(version);
    if let Some(r) = room {
        k = k.str(r);
        if let Some(s) = session {
            k = k.str(s);
        }
    }
    k.into_vec()
}

/// One backed-up session: `(room, session, data)`.
pub type BackedUpSession = (String, String, Value);

pub trait E2eeRead {
    fn device_keys(&self, user: &UserId, device: &str) -> Result<Option<Value>>;
    /// Every device's keys of `user`, by device ID.
    fn all_device_keys(&self, user: &UserId) -> Result<Vec<(String, Value)>>;
    fn one_time_key(
        &self,
        user: &UserId,
        device: &str,
        algorithm: &str,
        key_id: &str,
    ) -> Result<Option<Value>>;
    /// The algorithm of each one-time key a device has left.
    fn one_time_key_algorithms(&self, user: &UserId, device: &str) -> Result<Vec<String>>;
    /// The first one-time key of `algorithm` left: `(key ID, key)`.
    fn first_one_time_key(
        &self,
        user: &UserId,
        device: &str,
        algorithm: &str,
    ) -> Result<Option<(String, Value)>>;
    fn fallback_key(
        &self,
        user: &UserId,
        device: &str,
        algorithm: &str,
    ) -> Result<Option<FallbackKey>>;
    /// `(algorithm, key)` of every fallback key of a device.
    fn fallback_keys(&self, user: &UserId, device: &str) -> Result<Vec<(String, FallbackKey)>>;
    fn cross_signing_key(&self, user: &UserId, kind: &str) -> Result<Option<Value>>;
    /// `(signer, signer key ID, signature)` of signatures on `target_key`.
    fn key_signatures(
        &self,
        user: &UserId,
        target_key: &str,
    ) -> Result<Vec<(String, String, String)>>;
    /// Users whose devices changed with `after < pos <= upto`.
    fn device_list_log(&self, after: u64, upto: u64) -> Result<Vec<OwnedUserId>>;
    /// Inbox messages with `after < pos <= upto`, at most `limit`.
    fn to_device(
        &self,
        user: &UserId,
        device: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, ToDevice)>>;
    fn to_device_txn_seen(&self, sender: &UserId, device: &str, txn: &str) -> Result<bool>;
    /// The newest backup version of `user`, deleted or not.
    fn newest_backup(&self, user: &UserId) -> Result<Option<(u64, BackupVersion)>>;
    fn backup(&self, user: &UserId, version: u64) -> Result<Option<BackupVersion>>;
    fn backup_session(
        &self,
        user: &UserId,
        version: u64,
        room: &str,
        session: &str,
    ) -> Result<Option<Value>>;
    /// The sessions of a version, or of one room of it.
    fn backup_sessions(
        &self,
        user: &UserId,
        version: u64,
        room: Option<&str>,
    ) -> Result<Vec<BackedUpSession>>;
}

pub trait E2eeWrite {
    fn put_device_keys(&mut self, user: &UserId, device: &str, keys: &Value);
    fn put_one_time_key(
        &mut self,
        user: &UserId,
        device: &str,
        algorithm: &str,
        key_id: &str,
        key: &Value,
    );
    fn delete_one_time_key(&mut self, user: &UserId, device: &str, algorithm: &str, key_id: &str);
    fn put_fallback_key(&mut self, user: &UserId, device: &str, algorithm: &str, key: &FallbackKey);
    /// Everything E2EE a device had: its keys and its inbox.
    fn delete_device_e2ee(&mut self, user: &UserId, device: &str) -> Result<()>;
    fn put_cross_signing_key(&mut self, user: &UserId, kind: &str, key: &Value);
    fn put_key_signature(
        &mut self,
        user: &UserId,
        target_key: &str,
        signer: &UserId,
        signer_key: &str,
        signature: &str,
    );
    fn log_device_list_change(&mut self, pos: u64, user: &UserId);
    fn put_to_device(&mut self, user: &UserId, device: &str, pos: u64, message: &ToDevice);
    /// Drops inbox messages up to `upto` (acknowledged).
    fn ack_to_device(&mut self, user: &UserId, device: &str, upto: u64) -> Result<()>;
    fn mark_to_device_txn(&mut self, sender: &UserId, device: &str, txn: &str);
    fn put_backup(&mut self, user: &UserId, version: u64, backup: &BackupVersion);
    fn put_backup_session(
        &mut self,
        user: &UserId,
        version: u64,
        room: &str,
        session: &str,
        data: &Value,
    );
    /// Deletes the backed-up sessions of a version, one room, or one session.
    fn delete_backup_sessions(
        &mut self,
        user: &UserId,
        version: u64,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<()>;
}

impl<R: Read + ?Sized> E2eeRead for R {
    fn device_keys(&self, user: &UserId, device: &str) -> Result<Option<Value>> {
        self.get(DEVICE_KEYS, &device_key(user, device))
    }

    fn all_device_keys(&self, user: &UserId) -> Result<Vec<(String, Value)>> {
        Ok(self
            .scan_prefix(DEVICE_KEYS, &keys::strs(&[user.as_str()]))?
            .into_iter()
            .filter_map(|(k, v)| Some((keys::split_strs(&k)?.get(1)?.to_string(), v)))
            .collect())
    }

    fn one_time_key(
        &self,
        user: &UserId,
        device: &str,
        algorithm: &str,
        key_id: &str,
    ) -> Result<Option<Value>> {
        self.get(
            ONE_TIME_KEYS,
            &keys::strs(&[user.as_str(), device, algorithm, key_id]),
        )
    }

    fn one_time_key_algorithms(&self, user: &UserId, device: &str) -> Result<Vec<String>> {
        Ok(self
            .scan_prefix(ONE_TIME_KEYS, &device_key(user, device))?
            .into_iter()
            .filter_map(|(k, _)| Some(keys::split_strs(&k)?.get(2)?.to_string()))
            .collect())
    }

    fn first_one_time_key(
        &self,
        user: &UserId,
        device: &str,
        algorithm: &str,
    ) -> Result<Option<(String, Value)>> {
        let prefix = keys::strs(&[user.as_str(), device, algorithm]);
        Ok(self
            .scan(ONE_TIME_KEYS, &prefix, &prefix, None, false, 1)?
            .pop()
            .and_then(|(k, v)| Some((keys::split_strs(&k)?.get(3)?.to_string(), v))))
    }

    fn fallback_key(
        &self,
        user: &UserId,
        device: &str,
        algorithm: &str,
    ) -> Result<Option<FallbackKey>> {
        self.get(
            FALLBACK_KEYS,
            &keys::strs(&[user.as_str(), device, algorithm]),
        )
    }

    fn fallback_keys(&self, user: &UserId, device: &str) -> Result<Vec<(String, FallbackKey)>> {
        Ok(self
            .scan_prefix(FALLBACK_KEYS, &device_key(user, device))?
            .into_iter()
            .filter_map(|(k, fb)| Some((keys::split_strs(&k)?.get(2)?.to_string(), fb)))
            .collect())
    }

    fn cross_signing_key(&self, user: &UserId, kind: &str) -> Result<Option<Value>> {
        self.get(CROSS_SIGNING_KEYS, &keys::strs(&[user.as_str(), kind]))
    }

    fn key_signatures(
        &self,
        user: &UserId,
        target_key: &str,
    ) -> Result<Vec<(String, String, String)>> {
        Ok(self
            .scan_prefix(KEY_SIGNATURES, &keys::strs(&[user.as_str(), target_key]))?
            .into_iter()
            .filter_map(|(k, sig)| {
                let parts = keys::split_strs(&k)?;
                Some((parts.get(2)?.to_string(), parts.get(3)?.to_string(), sig))
            })
            .collect())
    }

    fn device_list_log(&self, after: u64, upto: u64) -> Result<Vec<OwnedUserId>> {
        let until = upto.checked_add(1).map(pos_key);
        Ok(self
            .scan(
                DEVICE_LIST_LOG,
                &[],
                &pos_key(after.saturating_add(1)),
                until.as_deref(),
                false,
                usize::MAX,
            )?
            .into_iter()
            .map(|(_, u)| u)
            .collect())
    }

    fn to_device(
        &self,
        user: &UserId,
        device: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, ToDevice)>> {
        let prefix = device_key(user, device);
        let until = upto.checked_add(1).map(|u| inbox_key(user, device, u));
        Ok(self
            .scan(
                TO_DEVICE,
                &prefix,
                &inbox_key(user, device, after.saturating_add(1)),
                until.as_deref(),
                false,
                limit,
            )?
            .into_iter()
            .map(|(k, m)| (keys::trailing_u64(&k).unwrap_or(0), m))
            .collect())
    }

    fn to_device_txn_seen(&self, sender: &UserId, device: &str, txn: &str) -> Result<bool> {
        self.contains(TO_DEVICE_TXNS, &keys::strs(&[sender.as_str(), device, txn]))
    }

    fn newest_backup(&self, user: &UserId) -> Result<Option<(u64, BackupVersion)>> {
        let prefix = keys::strs(&[user.as_str()]);
        Ok(self
            .scan(
                BACKUP_VERSIONS,
                &prefix,
                &version_key(user, u64::MAX),
                None,
                true,
                1,
            )?
            .pop()
            .and_then(|(k, v)| keys::trailing_u64(&k).map(|n| (n, v))))
    }

    fn backup(&self, user: &UserId, version: u64) -> Result<Option<BackupVersion>> {
        self.get(BACKUP_VERSIONS, &version_key(user, version))
    }

    fn backup_session(
        &self,
        user: &UserId,
        version: u64,
        room: &str,
        session: &str,
    ) -> Result<Option<Value>> {
        self.get(
            BACKUP_KEYS,
            &backup_prefix(user, version, Some(room), Some(session)),
        )
    }

    fn backup_sessions(
        &self,
        user: &UserId,
        version: u64,
        room: Option<&str>,
    ) -> Result<Vec<BackedUpSession>> {
        let base_len = backup_prefix(user, version, None, None).len();
        Ok(self
            .scan_prefix(BACKUP_KEYS, &backup_prefix(user, version, room, None))?
            .into_iter()
            .filter_map(|(k, data)| {
                let parts = keys::split_strs(k.get(base_len..)?)?;
                Some((parts.first()?.to_string(), parts.get(1)?.to_string(), data))
            })
            .collect())
    }
}

impl E2eeWrite for Txn<'_> {
    fn put_device_keys(&mut self, user: &UserId, device: &str, keys: &Value) {
        self.put(DEVICE_KEYS, &device_key(user, device), keys);
    }

    fn put_one_time_key(
        &mut self,
        user: &UserId,
        device: &str,
        algorithm: &str,
        key_id: &str,
        key: &Value,
    ) {
        self.put(
            ONE_TIME_KEYS,
            &keys::strs(&[user.as_str(), device, algorithm, key_id]),
            key,
        );
    }

    fn delete_one_time_key(&mut self, user: &UserId, device: &str, algorithm: &str, key_id: &str) {
        self.delete(
            ONE_TIME_KEYS,
            &keys::strs(&[user.as_str(), device, algorithm, key_id]),
        );
    }

    fn put_fallback_key(
        &mut self,
        user: &UserId,
        device: &str,
        algorithm: &str,
        key: &FallbackKey,
    ) {
        self.put(
            FALLBACK_KEYS,
            &keys::strs(&[user.as_str(), device, algorithm]),
            key,
        );
    }

    fn delete_device_e2ee(&mut self, user: &UserId, device: &str) -> Result<()> {
        let k = device_key(user, device);
        self.delete(DEVICE_KEYS, &k);
        for (key, _) in self.scan_prefix(ONE_TIME_KEYS, &k)? {
            self.delete(ONE_TIME_KEYS, &key);
        }
        for (key, _) in self.scan_prefix(FALLBACK_KEYS, &k)? {
            self.delete(FALLBACK_KEYS, &key);
        }
        for (key, _) in self.scan_prefix(TO_DEVICE, &k)? {
            self.delete(TO_DEVICE, &key);
        }
        Ok(())
    }

    fn put_cross_signing_key(&mut self, user: &UserId, kind: &str, key: &Value) {
        self.put(CROSS_SIGNING_KEYS, &keys::strs(&[user.as_str(), kind]), key);
    }

    fn put_key_signature(
        &mut self,
        user: &UserId,
        target_key: &str,
        signer: &UserId,
        signer_key: &str,
        signature: &str,
    ) {
        let k = keys::strs(&[user.as_str(), target_key, signer.as_str(), signer_key]);
        self.put(KEY_SIGNATURES, &k, &signature.to_owned());
    }

    fn log_device_list_change(&mut self, pos: u64, user: &UserId) {
        self.put(DEVICE_LIST_LOG, &pos_key(pos), &user.to_owned());
    }

    fn put_to_device(&mut self, user: &UserId, device: &str, pos: u64, message: &ToDevice) {
        self.put(TO_DEVICE, &inbox_key(user, device, pos), message);
    }

    fn ack_to_device(&mut self, user: &UserId, device: &str, upto: u64) -> Result<()> {
        let prefix = device_key(user, device);
        let until = upto.checked_add(1).map(|u| inbox_key(user, device, u));
        for (k, _) in self.scan(
            TO_DEVICE,
            &prefix,
            &prefix,
            until.as_deref(),
            false,
            usize::MAX,
        )? {
            self.delete(TO_DEVICE, &k);
        }
        Ok(())
    }

    fn mark_to_device_txn(&mut self, sender: &UserId, device: &str, txn: &str) {
        self.put(
            TO_DEVICE_TXNS,
            &keys::strs(&[sender.as_str(), device, txn]),
            &true,
        );
    }

    fn put_backup(&mut self, user: &UserId, version: u64, backup: &BackupVersion) {
        self.put(BACKUP_VERSIONS, &version_key(user, version), backup);
    }

    fn put_backup_session(
        &mut self,
        user: &UserId,
        version: u64,
        room: &str,
        session: &str,
        data: &Value,
    ) {
        self.put(
            BACKUP_KEYS,
            &backup_prefix(user, version, Some(room), Some(session)),
            data,
        );
    }

    fn delete_backup_sessions(
        &mut self,
        user: &UserId,
        version: u64,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<()> {
        let prefix = backup_prefix(user, version, room, room.and(session));
        for (k, _) in self.scan_prefix(BACKUP_KEYS, &prefix)? {
            self.delete(BACKUP_KEYS, &k);
        }
        Ok(())
    }
}

//! What federation keeps: other servers' key documents, the answers given to their transactions, and their users' device lists while we share a room.

use ruma::UserId;

use super::{Read, Result, Table, Txn, keys};
use crate::federation::{device_cache::CachedDevices, inbound::TxnRecord, keys::CachedKeys};

/// `server -> its last verified key document`.
const SERVER_KEYS: Table<CachedKeys> = Table::new("server_keys");
/// `(origin, txn ID) -> the answer given`.
const FED_TXNS: Table<TxnRecord> = Table::new("federation_txns");
/// `user -> cached device list`.
const REMOTE_DEVICES: Table<CachedDevices> = Table::new("remote_devices");

pub trait FederationRead {
    fn server_keys(&self, server: &str) -> Result<Option<CachedKeys>>;
    fn inbound_txn(&self, origin: &str, txn_id: &str) -> Result<Option<TxnRecord>>;
    /// `(origin, txn ID)` of every remembered transaction older than `cutoff`.
    fn inbound_txns_before(&self, cutoff: u64) -> Result<Vec<(String, String)>>;
    fn remote_devices(&self, user: &UserId) -> Result<Option<CachedDevices>>;
}

pub trait FederationWrite {
    fn put_server_keys(&mut self, server: &str, keys: &CachedKeys);
    fn put_inbound_txn(&mut self, origin: &str, txn_id: &str, record: &TxnRecord);
    fn delete_inbound_txn(&mut self, origin: &str, txn_id: &str);
    /// Caches (or with `None` forgets) a remote user's device list.
    fn set_remote_devices(&mut self, user: &UserId, devices: Option<&CachedDevices>);
}

impl<R: Read + ?Sized> FederationRead for R {
    fn server_keys(&self, server: &str) -> Result<Option<CachedKeys>> {
        self.get(SERVER_KEYS, server.as_bytes())
    }

    fn inbound_txn(&self, origin: &str, txn_id: &str) -> Result<Option<TxnRecord>> {
        self.get(FED_TXNS, &keys::strs(&[origin, txn_id]))
    }

    fn inbound_txns_before(&self, cutoff: u64) -> Result<Vec<(String, String)>> {
        Ok(self
            .scan_prefix(FED_TXNS, b"")?
            .into_iter()
            .filter(|(_, r)| r.ts < cutoff)
            .filter_map(|(k, _)| {
                let parts = keys::split_strs(&k)?;
                Some((parts.first()?.to_string(), parts.get(1)?.to_string()))
            })
            .collect())
    }

    fn remote_devices(&self, user: &UserId) -> Result<Option<CachedDevices>> {
        self.get(REMOTE_DEVICES, user.as_bytes())
    }
}

impl FederationWrite for Txn<'_> {
    fn put_server_keys(&mut self, server: &str, keys: &CachedKeys) {
        self.put(SERVER_KEYS, server.as_bytes(), keys);
    }

    fn put_inbound_txn(&mut self, origin: &str, txn_id: &str, record: &TxnRecord) {
        self.put(FED_TXNS, &keys::strs(&[origin, txn_id]), record);
    }

    fn delete_inbound_txn(&mut self, origin: &str, txn_id: &str) {
        self.delete(FED_TXNS, &keys::strs(&[origin, txn_id]));
    }

    fn set_remote_devices(&mut self, user: &UserId, devices: Option<&CachedDevices>) {
        match devices {
            Some(d) => self.put(REMOTE_DEVICES, user.as_bytes(), d),
            None => self.delete(REMOTE_DEVICES, user.as_bytes()),
        }
    }
}

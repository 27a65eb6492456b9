//! End-to-end encryption support: device and one-time keys, cross-signing, to-device messages, device list changes and key backup. The server only moves keys; it never sees plaintext.

pub mod backup;
pub mod cross_signing;
pub mod device_lists;
pub mod keys;
pub mod signatures;
pub mod to_device;

use std::sync::Arc;

use crate::{accounts::Accounts, rooms::Rooms, storage::Store, stream::Stream};

/// Shared state of the E2EE services.
#[derive(Clone)]
pub struct E2ee {
    pub(crate) store: Store,
    pub(crate) stream: Arc<Stream>,
    pub(crate) rooms: Rooms,
    pub(crate) accounts: Accounts,
}

impl E2ee {
    pub fn new(store: Store, stream: Arc<Stream>, rooms: Rooms, accounts: Accounts) -> Self {
        E2ee {
            store,
            stream,
            rooms,
            accounts,
        }
    }
}

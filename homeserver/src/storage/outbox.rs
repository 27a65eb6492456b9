//! The outbox's rows: items waiting for each destination, in order of their sequence numbers.

use ruma::OwnedUserId;

use super::{Read, Result, Table, Txn, keys};
use crate::outbox::{Destination, Item};

/// `(destination, seq) -> item`.
const OUTBOX: Table<Item> = Table::new("outbox");

fn prefix(dest: &Destination) -> Vec<u8> {
    match dest {
        Destination::Server(s) => keys::strs(&["s", s]),
        Destination::Pusher {
            user,
            app_id,
            pushkey,
        } => keys::strs(&["p", user.as_str(), app_id, pushkey]),
        Destination::AppService(id) => keys::strs(&["a", id]),
    }
}

fn row_key(dest: &Destination, seq: u64) -> Vec<u8> {
    let mut k = prefix(dest);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn destination_of(key: &[u8]) -> Option<Destination> {
    let parts = keys::split_strs(key.get(..key.len().checked_sub(8)?)?)?;
    match parts.as_slice() {
        ["s", s] => Some(Destination::Server((*s).to_owned())),
        ["p", user, app_id, pushkey] => Some(Destination::Pusher {
            user: OwnedUserId::try_from(*user).ok()?,
            app_id: (*app_id).to_owned(),
            pushkey: (*pushkey).to_owned(),
        }),
        ["a", id] => Some(Destination::AppService((*id).to_owned())),
        _ => None,
    }
}

pub trait OutboxRead {
    /// Up to `limit` items for `dest`, oldest first, with their sequence numbers.
    fn outbox_items(&self, dest: &Destination, limit: usize) -> Result<Vec<(u64, Item)>>;
    /// Every destination with something queued.
    fn outbox_destinations(&self) -> Result<Vec<Destination>>;
    /// The highest sequence number queued (0: none).
    fn outbox_last_seq(&self) -> Result<u64>;
}

pub trait OutboxWrite {
    fn put_outbox_item(&mut self, dest: &Destination, seq: u64, item: &Item);
    fn delete_outbox_item(&mut self, dest: &Destination, seq: u64);
}

impl<R: Read + ?Sized> OutboxRead for R {
    fn outbox_items(&self, dest: &Destination, limit: usize) -> Result<Vec<(u64, Item)>> {
        let p = prefix(dest);
        Ok(self
            .scan(OUTBOX, &p, &p, None, false, limit)?
            .into_iter()
            .map(|(k, item)| (keys::trailing_u64(&k).unwrap_or(0), item))
            .collect())
    }

    fn outbox_destinations(&self) -> Result<Vec<Destination>> {
        let mut out: Vec<Destination> = Vec::new();
        for (k, _) in self.scan_prefix(OUTBOX, b"")? {
            if let Some(d) = destination_of(&k)
                && out.last() != Some(&d)
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    fn outbox_last_seq(&self) -> Result<u64> {
        Ok(self
            .scan_prefix(OUTBOX, b"")?
            .iter()
            .filter_map(|(k, _)| keys::trailing_u64(k))
            .max()
            .unwrap_or(0))
    }
}

impl OutboxWrite for Txn<'_> {
    fn put_outbox_item(&mut self, dest: &Destination, seq: u64, item: &Item) {
        self.put(OUTBOX, &row_key(dest, seq), item);
    }

    fn delete_outbox_item(&mut self, dest: &Destination, seq: u64) {
        self.delete(OUTBOX, &row_key(dest, seq));
    }
}

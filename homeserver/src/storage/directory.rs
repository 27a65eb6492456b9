//! The directory: room aliases, the public room list, and content reports.

use ruma::{OwnedRoomId, RoomAliasId, RoomId};

use super::{Read, Result, Table, Txn, keys};
use crate::{reports::Report, rooms::aliases::AliasRecord};

/// `alias -> room and creator`.
const ALIASES: Table<AliasRecord> = Table::new("aliases");
/// `room -> listed`.
const PUBLIC_ROOMS: Table<bool> = Table::new("public_rooms");
/// `(ts, random) -> report`, oldest first.
const REPORTS: Table<Report> = Table::new("reports");

pub trait DirectoryRead {
    fn alias(&self, alias: &RoomAliasId) -> Result<Option<AliasRecord>>;
    /// Every alias and its record (aliases are few).
    fn aliases(&self) -> Result<Vec<(String, AliasRecord)>>;
    fn is_public(&self, room: &RoomId) -> Result<bool>;
    fn public_rooms(&self) -> Result<Vec<OwnedRoomId>>;
}

pub trait DirectoryWrite {
    fn put_alias(&mut self, alias: &RoomAliasId, record: &AliasRecord);
    fn delete_alias(&mut self, alias: &RoomAliasId);
    fn set_public(&mut self, room: &RoomId, public: bool);
    /// Files a report under its time and `nonce`.
    fn put_report(&mut self, nonce: &str, report: &Report);
}

impl<R: Read + ?Sized> DirectoryRead for R {
    fn alias(&self, alias: &RoomAliasId) -> Result<Option<AliasRecord>> {
        self.get(ALIASES, alias.as_bytes())
    }

    fn aliases(&self) -> Result<Vec<(String, AliasRecord)>> {
        Ok(self
            .scan_prefix(ALIASES, &[])?
            .into_iter()
            .filter_map(|(k, a)| Some((String::from_utf8(k).ok()?, a)))
            .collect())
    }

    fn is_public(&self, room: &RoomId) -> Result<bool> {
        self.contains(PUBLIC_ROOMS, room.as_bytes())
    }

    fn public_rooms(&self) -> Result<Vec<OwnedRoomId>> {
        Ok(self
            .scan_prefix(PUBLIC_ROOMS, &[])?
            .into_iter()
            .filter_map(|(k, _)| {
                std::str::from_utf8(&k)
                    .ok()
                    .and_then(|s| OwnedRoomId::try_from(s).ok())
            })
            .collect())
    }
}

impl DirectoryWrite for Txn<'_> {
    fn put_alias(&mut self, alias: &RoomAliasId, record: &AliasRecord) {
        self.put(ALIASES, alias.as_bytes(), record);
    }

    fn delete_alias(&mut self, alias: &RoomAliasId) {
        self.delete(ALIASES, alias.as_bytes());
    }

    fn set_public(&mut self, room: &RoomId, public: bool) {
        if public {
            self.put(PUBLIC_ROOMS, room.as_bytes(), &true);
        } else {
            self.delete(PUBLIC_ROOMS, room.as_bytes());
        }
    }

    fn put_report(&mut self, nonce: &str, report: &Report) {
        let key = keys::KeyBuf::new().u64(report.ts).str(nonce).into_vec();
        self.put(REPORTS, &key, report);
    }
}

//! The media repository's records: each file's metadata, thumbnails, per-user usage, and open upload reservations.

use ruma::UserId;

use super::{Read, Result, Table, Txn, keys};
use crate::media::{MediaRecord, thumbnail::ThumbnailRecord};

/// `(server, media ID) -> record`.
const MEDIA: Table<MediaRecord> = Table::new("media");
/// `user -> bytes uploaded`.
const MEDIA_USAGE: Table<u64> = Table::new("media_usage");
/// `(user, media ID) -> expiry`: open reservations, so counting them never
/// scans all media.
const MEDIA_PENDING: Table<u64> = Table::new("media_pending");
/// `(server, media ID, width, height, method) -> thumbnail`.
const THUMBNAILS: Table<ThumbnailRecord> = Table::new("media_thumbnails");

fn thumb_key(server: &str, id: &str, width: u32, height: u32, method: &str) -> Vec<u8> {
    keys::strs(&[server, id, &width.to_string(), &height.to_string(), method])
}

pub trait MediaRead {
    fn media(&self, server: &str, id: &str) -> Result<Option<MediaRecord>>;
    fn media_usage(&self, user: &UserId) -> Result<u64>;
    /// `(media ID, expiry)` of a user's open reservations.
    fn reservations(&self, user: &UserId) -> Result<Vec<(String, u64)>>;
    fn thumbnail(
        &self,
        server: &str,
        id: &str,
        width: u32,
        height: u32,
        method: &str,
    ) -> Result<Option<ThumbnailRecord>>;
}

pub trait MediaWrite {
    fn put_media(&mut self, server: &str, id: &str, record: &MediaRecord);
    fn set_media_usage(&mut self, user: &UserId, bytes: u64);
    fn put_reservation(&mut self, user: &UserId, id: &str, expires: u64);
    fn delete_reservation(&mut self, user: &UserId, id: &str);
    fn put_thumbnail(
        &mut self,
        server: &str,
        id: &str,
        width: u32,
        height: u32,
        method: &str,
        record: &ThumbnailRecord,
    );
}

impl<R: Read + ?Sized> MediaRead for R {
    fn media(&self, server: &str, id: &str) -> Result<Option<MediaRecord>> {
        self.get(MEDIA, &keys::strs(&[server, id]))
    }

    fn media_usage(&self, user: &UserId) -> Result<u64> {
        Ok(self.get(MEDIA_USAGE, user.as_bytes())?.unwrap_or(0))
    }

    fn reservations(&self, user: &UserId) -> Result<Vec<(String, u64)>> {
        Ok(self
            .scan_prefix(MEDIA_PENDING, &keys::strs(&[user.as_str()]))?
            .into_iter()
            .filter_map(|(k, expires)| Some((keys::split_strs(&k)?.get(1)?.to_string(), expires)))
            .collect())
    }

    fn thumbnail(
        &self,
        server: &str,
        id: &str,
        width: u32,
        height: u32,
        method: &str,
    ) -> Result<Option<ThumbnailRecord>> {
        self.get(THUMBNAILS, &thumb_key(server, id, width, height, method))
    }
}

impl MediaWrite for Txn<'_> {
    fn put_media(&mut self, server: &str, id: &str, record: &MediaRecord) {
        self.put(MEDIA, &keys::strs(&[server, id]), record);
    }

    fn set_media_usage(&mut self, user: &UserId, bytes: u64) {
        self.put(MEDIA_USAGE, user.as_bytes(), &bytes);
    }

    fn put_reservation(&mut self, user: &UserId, id: &str, expires: u64) {
        self.put(MEDIA_PENDING, &keys::strs(&[user.as_str(), id]), &expires);
    }

    fn delete_reservation(&mut self, user: &UserId, id: &str) {
        self.delete(MEDIA_PENDING, &keys::strs(&[user.as_str(), id]));
    }

    fn put_thumbnail(
        &mut self,
        server: &str,
        id: &str,
        width: u32,
        height: u32,
        method: &str,
        record: &ThumbnailRecord,
    ) {
        self.put(
            THUMBNAILS,
            &thumb_key(server, id, width, height, method),
            record,
        );
    }
}

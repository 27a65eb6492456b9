//! Server-wide singletons in the `meta` table: the signing key and the retired ones, the generated registration token, and the stream's reserved position.

use super::{Read, Result, Table, Txn};
use crate::signing_key::StoredOldKey;

/// `"signing_key" -> "<version>:<base64 PKCS#8>"` and the registration token.
const META_TEXT: Table<String> = Table::new("meta");
/// `"old_signing_keys" -> keys retired by rotation`.
const OLD_KEYS: Table<Vec<StoredOldKey>> = Table::new("meta");
/// `"stream_position" -> the highest position reserved`.
const POSITION: Table<u64> = Table::new("meta");

const SIGNING_KEY: &[u8] = b"signing_key";
const OLD_SIGNING_KEYS: &[u8] = b"old_signing_keys";
const REGISTRATION_TOKEN: &[u8] = b"registration_token";
const STREAM_POSITION: &[u8] = b"stream_position";

pub trait MetaRead {
    fn signing_key(&self) -> Result<Option<String>>;
    fn old_signing_keys(&self) -> Result<Vec<StoredOldKey>>;
    fn registration_token(&self) -> Result<Option<String>>;
    fn reserved_position(&self) -> Result<Option<u64>>;
}

pub trait MetaWrite {
    fn put_signing_key(&mut self, encoded: &str);
    fn put_old_signing_keys(&mut self, keys: &[StoredOldKey]);
    fn put_registration_token(&mut self, token: &str);
    fn put_reserved_position(&mut self, pos: u64);
}

impl<R: Read + ?Sized> MetaRead for R {
    fn signing_key(&self) -> Result<Option<String>> {
        self.get(META_TEXT, SIGNING_KEY)
    }

    fn old_signing_keys(&self) -> Result<Vec<StoredOldKey>> {
        Ok(self.get(OLD_KEYS, OLD_SIGNING_KEYS)?.unwrap_or_default())
    }

    fn registration_token(&self) -> Result<Option<String>> {
        self.get(META_TEXT, REGISTRATION_TOKEN)
    }

    fn reserved_position(&self) -> Result<Option<u64>> {
        self.get(POSITION, STREAM_POSITION)
    }
}

impl MetaWrite for Txn<'_> {
    fn put_signing_key(&mut self, encoded: &str) {
        self.put(META_TEXT, SIGNING_KEY, &encoded.to_owned());
    }

    fn put_old_signing_keys(&mut self, keys: &[StoredOldKey]) {
        self.put(OLD_KEYS, OLD_SIGNING_KEYS, &keys.to_vec());
    }

    fn put_registration_token(&mut self, token: &str) {
        self.put(META_TEXT, REGISTRATION_TOKEN, &token.to_owned());
    }

    fn put_reserved_position(&mut self, pos: u64) {
        self.put(POSITION, STREAM_POSITION, &pos);
    }
}

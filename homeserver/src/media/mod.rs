//! The media repository: files on disk under random IDs with their metadata in the database, atomic uploads, quotas, async (create-then-upload) media.

pub mod preview;
pub mod thumbnail;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use ruma::{OwnedServerName, UserId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{
    accounts::{now_ms, random_string},
    config::MediaConfig,
    error::{Error, Result},
    storage::{MediaRead, MediaWrite, Store},
    stream::Stream,
};

/// How long a created-but-not-uploaded media ID stays reserved.
const UNUSED_EXPIRY_MS: u64 = 24 * 60 * 60 * 1000;
/// Reserved-but-empty IDs one user may hold at once.
const MAX_PENDING_PER_USER: usize = 100;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MediaRecord {
    pub uploader: String,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub size: u64,
    pub sha256: String,
    pub created_ts: u64,
    /// Created with /create and not uploaded yet.
    #[serde(default)]
    pub pending: bool,
    #[serde(default)]
    pub expires_ts: Option<u64>,
    /// Whether the legacy unauthenticated endpoints may serve it (fixed at
    /// upload time, so switching them off freezes them for newer media).
    #[serde(default)]
    pub legacy_ok: bool,
}

#[derive(Clone)]
pub struct Media {
    pub(crate) store: Store,
    stream: Arc<Stream>,
    pub(crate) config: Arc<MediaConfig>,
    server_name: OwnedServerName,
    /// Bounds concurrent image decodes (each may need tens of MiB).
    pub(crate) decoders: Arc<tokio::sync::Semaphore>,
    /// Reserved IDs whose upload is being received right now.
    receiving: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// Marks a reserved ID as being received until dropped.
pub struct UploadClaim {
    id: String,
    receiving: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Drop for UploadClaim {
    fn drop(&mut self) {
        self.receiving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Media IDs we hand out are `[A-Za-z0-9]`; anything else is not ours and
/// could be a path trick, so it never reaches the file system.
pub fn valid_media_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Media {
    pub fn new(
        store: Store,
        stream: Arc<Stream>,
        config: MediaConfig,
        server_name: OwnedServerName,
    ) -> Result<Self> {
        std::fs::create_dir_all(config.path.join("tmp")).map_err(|e| {
            Error::Internal(format!("media directory {}: {e}", config.path.display()))
        })?;
        // Uploads interrupted by a crash leave temp files only; never served.
        if let Ok(entries) = std::fs::read_dir(config.path.join("tmp")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Media {
            store,
            stream,
            config: Arc::new(config),
            server_name,
            decoders: Arc::new(tokio::sync::Semaphore::new(2)),
            receiving: Default::default(),
        })
    }

    pub fn server_name(&self) -> &str {
        self.server_name.as_str()
    }

    /// `<root>/<ab>/<cd>/<id>`: sharded so no directory grows huge.
    pub fn file_path(&self, server: &str, id: &str) -> PathBuf {
        let shard = |r: std::ops::Range<usize>| id.get(r).unwrap_or("_").to_owned();
        self.config
            .path
            .join(server)
            .join(shard(0..2))
            .join(shard(2..4))
            .join(id)
    }

    pub fn record(&self, server: &str, id: &str) -> Result<Option<MediaRecord>> {
        if !valid_media_id(id) {
            return Ok(None);
        }
        let rec = self.store.media(server, id)?;
        // Expired reservations are as good as gone.
        Ok(rec.filter(|r| !(r.pending && r.expires_ts.is_some_and(|t| t < now_ms()))))
    }

    fn usage(&self, user: &UserId) -> Result<u64> {
        Ok(self.store.media_usage(user)?)
    }

    fn check_quota(&self, user: &UserId, adding: u64) -> Result<()> {
        let quota = self.config.user_quota_bytes;
        if quota > 0 && self.usage(user)?.saturating_add(adding) > quota {
            return Err(Error::forbidden("upload quota exceeded"));
        }
        Ok(())
    }

    /// Refuses a declared body length over the limit or the quota before
    /// anything is read.
    pub fn check_declared(&self, user: &UserId, declared: Option<u64>) -> Result<()> {
        if let Some(n) = declared {
            if n > self.config.max_upload_bytes {
                return Err(Error::TooLarge {
                    limit: self.config.max_upload_bytes as usize,
                });
            }
            self.check_quota(user, n)?;
        }
        Ok(())
    }

    /// Reserves a media ID to upload into later (`/create`); the count of
    /// open reservations is checked inside the write.
    pub async fn create(&self, user: &UserId) -> Result<(String, u64)> {
        let now = now_ms();
        let id = random_string(24);
        let expires = now + UNUSED_EXPIRY_MS;
        let rec = MediaRecord {
            uploader: user.to_string(),
            content_type: None,
            filename: None,
            size: 0,
            sha256: String::new(),
            created_ts: now,
            pending: true,
            expires_ts: Some(expires),
            legacy_ok: self.config.legacy_unauthenticated_downloads,
        };
        let server = self.server_name.as_str();
        let opened = self
            .stream
            .write(|w| {
                let mut open = 0;
                for (old, until) in w.reservations(user)? {
                    if until < now {
                        w.delete_reservation(user, &old);
                    } else {
                        open += 1;
                    }
                }
                if open >= MAX_PENDING_PER_USER {
                    // The expired ones above are still cleared.
                    return Ok(false);
                }
                w.put_media(server, &id, &rec);
                w.put_reservation(user, &id, expires);
                Ok(true)
            })
            .await?;
        if !opened {
            return Err(Error::LimitExceeded {
                retry_after_ms: 60_000,
            });
        }
        Ok((id, expires))
    }

    /// Claims a reserved ID for one upload at a time (`None`: another is running).
    pub fn claim_upload(&self, id: &str) -> Option<UploadClaim> {
        let mut set = self.receiving.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(id.to_owned()).then(|| UploadClaim {
            id: id.to_owned(),
            receiving: self.receiving.clone(),
        })
    }

    /// Checks that `user` may upload into a reserved ID.
    pub fn check_reserved(&self, user: &UserId, server: &str, id: &str) -> Result<()> {
        if server != self.server_name.as_str() {
            return Err(Error::not_found(
                "media IDs of other servers cannot be uploaded to",
            ));
        }
        let rec = self
            .record(server, id)?
            .ok_or_else(|| Error::not_found("unknown or expired media ID"))?;
        if rec.uploader != user.as_str() {
            return Err(Error::forbidden(
                "this media ID was created by another user",
            ));
        }
        if !rec.pending {
            return Err(Error::CannotOverwriteMedia);
        }
        Ok(())
    }

    /// Stores an upload whose body arrives in `chunks`: into a temp file,
    /// fsynced, then renamed into place, and only then recorded, so a crash
    /// never leaves a half file that would be served.
    pub async fn store_upload<S>(
        &self,
        user: &UserId,
        id: Option<&str>,
        content_type: Option<String>,
        filename: Option<String>,
        chunks: &mut S,
    ) -> Result<String>
    where
        S: ChunkSource,
    {
        let id = match id {
            Some(id) => id.to_owned(),
            None => random_string(24),
        };
        let limit = self.config.max_upload_bytes;
        let tmp = self.config.path.join("tmp").join(random_string(16));
        let io = |e: std::io::Error| Error::Internal(format!("media storage: {e}"));
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
        let mut size: u64 = 0;
        let mut hasher = Sha256::new();
        let result: Result<()> = async {
            while let Some(chunk) = chunks.next_chunk().await? {
                size += chunk.len() as u64;
                if size > limit {
                    return Err(Error::TooLarge {
                        limit: limit as usize,
                    });
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(io)?;
            }
            file.sync_all().await.map_err(io)?;
            Ok(())
        }
        .await;
        drop(file);
        if let Err(e) = result.and_then(|_| self.check_quota(user, size)) {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        let dest = self.file_path(self.server_name.as_str(), &id);
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io)?;
        }
        tokio::fs::rename(&tmp, &dest).await.map_err(io)?;
        sync_dir(dest.parent()).await;
        let rec = MediaRecord {
            uploader: user.to_string(),
            content_type,
            filename,
            size,
            sha256: hex(&hasher.finalize()),
            created_ts: now_ms(),
            pending: false,
            expires_ts: None,
            legacy_ok: self.config.legacy_unauthenticated_downloads,
        };
        let server = self.server_name.as_str();
        self.stream
            .write(|w| {
                w.put_media(server, &id, &rec);
                let used = w.media_usage(user)?;
                w.set_media_usage(user, used.saturating_add(size));
                w.delete_reservation(user, &id);
                Ok(())
            })
            .await?;
        Ok(id)
    }

    /// Keeps a copy of another server's media (fetched over federation),
    /// written the same crash-safe way as uploads.
    pub async fn store_remote(
        &self,
        server: &str,
        id: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> Result<()> {
        if !valid_media_id(id) || ruma::ServerName::parse(server).is_err() {
            return Err(Error::not_found("invalid media ID"));
        }
        if bytes.len() as u64 > self.config.max_upload_bytes {
            return Err(Error::TooLarge {
                limit: self.config.max_upload_bytes as usize,
            });
        }
        let io = |e: std::io::Error| Error::Internal(format!("media storage: {e}"));
        let tmp = self.config.path.join("tmp").join(random_string(16));
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
        file.write_all(bytes).await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        drop(file);
        let dest = self.file_path(server, id);
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io)?;
        }
        tokio::fs::rename(&tmp, &dest).await.map_err(io)?;
        sync_dir(dest.parent()).await;
        let mut hasher = Sha256::new();
        hasher.update(bytes);
        let rec = MediaRecord {
            uploader: String::new(),
            content_type: Some(content_type.to_owned()),
            filename: None,
            size: bytes.len() as u64,
            sha256: hex(&hasher.finalize()),
            created_ts: now_ms(),
            pending: false,
            expires_ts: None,
            legacy_ok: self.config.legacy_unauthenticated_downloads,
        };
        let mut txn = self.store.transaction();
        txn.put_media(server, id, &rec);
        Ok(txn.commit()?)
    }

    /// Waits (up to `timeout`) for a reserved ID to be uploaded.
    pub async fn wait_uploaded(
        &self,
        server: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<MediaRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let rec = self
                .record(server, id)?
                .ok_or_else(|| Error::not_found("media not found"))?;
            if !rec.pending {
                return Ok(rec);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::NotYetUploaded);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Where an upload's bytes come from (the HTTP body in production).
pub trait ChunkSource {
    fn next_chunk(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Option<axum::body::Bytes>>> + Send;
}

async fn sync_dir(dir: Option<&Path>) {
    // The rename is durable only once the directory entry is.
    if let Some(d) = dir
        && let Ok(f) = tokio::fs::File::open(d).await
    {
        let _ = f.sync_all().await;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

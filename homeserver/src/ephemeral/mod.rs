//! Ephemeral room and user data that flows through /sync beside the timeline: typing, receipts, presence.

pub mod presence;
pub mod receipts;
pub mod typing;

use crate::{error::Result, storage::Store, sync::stream::StreamPositions};

/// Takes a fresh stream position for data that lives outside the database
/// (typing), recording it so that a restart never hands out a position a
/// client has already seen in a `since` token.
pub(crate) async fn advance_stream(store: &Store, stream: &StreamPositions) -> Result<u64> {
    let _writer = stream.writer.lock().await;
    let pos = stream.next();
    let mut batch = store.batch();
    stream.record(&mut batch, pos);
    batch.commit()?;
    stream.publish(pos);
    Ok(pos)
}

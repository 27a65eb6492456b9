//! The durable outbound queue: PDUs and EDUs waiting for each destination server, written in the same batch as the event.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

use crate::{
    error::Result,
    storage::{Batch, Store, Table, keys},
};

/// One item for one destination.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Outgoing {
    /// A PDU, loaded from the event table when the transaction is built.
    Pdu(ruma::OwnedEventId),
    /// An EDU as sent (`edu_type` and `content`).
    Edu(Value),
}

/// `(destination, seq) -> item`; deleted once the destination accepted it.
pub(crate) const QUEUE: Table<Outgoing> = Table::new("federation_queue");

pub struct OutboundQueue {
    store: Store,
    seq: AtomicU64,
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
    /// Destinations that got their first item since start: the sender
    /// spawns a worker for each.
    new_destinations: mpsc::UnboundedSender<String>,
    pub(crate) our_name: String,
}

impl OutboundQueue {
    pub fn new(
        store: Store,
        our_name: String,
    ) -> Result<(Arc<Self>, mpsc::UnboundedReceiver<String>)> {
        let mut max = 0;
        let mut pending = Vec::new();
        for (k, _) in store.scan_prefix(QUEUE, b"")? {
            max = max.max(keys::trailing_u64(&k).unwrap_or(0));
            if let Some(dest) = keys::split_strs(&k[..k.len().saturating_sub(8)])
                .and_then(|p| p.first().map(|d| d.to_string()))
                && !pending.contains(&dest)
            {
                pending.push(dest);
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        // Sequence numbers name transactions, so they must never repeat,
        // also after a restart with an empty queue: start above the clock.
        let start = (max + 1).max(crate::accounts::now_ms().saturating_mul(1000));
        let queue = Arc::new(OutboundQueue {
            store,
            seq: AtomicU64::new(start),
            wakers: Mutex::default(),
            new_destinations: tx,
            our_name,
        });
        // Whatever was queued before a restart is sent again.
        for dest in pending {
            queue.waker(&dest);
        }
        Ok((queue, rx))
    }

    pub(crate) fn prefix(dest: &str) -> Vec<u8> {
        keys::strs(&[dest])
    }

    /// Adds `item` for each destination to `batch`; call `wake` after commit.
    pub fn stage(&self, batch: &mut Batch<'_>, dests: &[String], item: &Outgoing) {
        for dest in dests.iter().filter(|d| **d != self.our_name) {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            batch.put(
                QUEUE,
                &keys::KeyBuf::new().str(dest).u64(seq).into_vec(),
                item,
            );
        }
    }

    /// Queues and wakes at once (EDUs that have no batch of their own).
    pub fn push(&self, dests: &[String], item: Outgoing) -> Result<()> {
        if dests.iter().all(|d| *d == self.our_name) {
            return Ok(());
        }
        let mut batch = self.store.batch();
        self.stage(&mut batch, dests, &item);
        batch.commit()?;
        self.wake(dests);
        Ok(())
    }

    pub fn wake(&self, dests: &[String]) {
        for d in dests.iter().filter(|d| **d != self.our_name) {
            self.waker(d).notify_one();
        }
    }

    /// The destination's notifier, creating it (and its worker) on first use.
    pub(crate) fn waker(&self, dest: &str) -> Arc<Notify> {
        let mut map = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get(dest) {
            return n.clone();
        }
        let n = Arc::new(Notify::new());
        n.notify_one();
        map.insert(dest.to_owned(), n.clone());
        let _ = self.new_destinations.send(dest.to_owned());
        n
    }

    /// Up to `limit` queued items for `dest`, oldest first.
    pub(crate) fn peek(&self, dest: &str, limit: usize) -> Result<Vec<(Vec<u8>, Outgoing)>> {
        let p = Self::prefix(dest);
        Ok(self.store.scan(QUEUE, &p, &p, None, false, limit)?)
    }

    /// Drops what is stale once a server has been unreachable: typing and
    /// presence would show a state long gone when it comes back. PDUs,
    /// receipts, to-device messages and device list updates stay.
    pub(crate) fn drop_stale_ephemeral(&self, dest: &str) -> Result<usize> {
        let stale: Vec<Vec<u8>> = self
            .peek(dest, 100_000)?
            .into_iter()
            .filter(|(_, item)| matches!(item, Outgoing::Edu(e) if matches!(e["edu_type"].as_str(), Some("m.typing" | "m.presence"))))
            .map(|(k, _)| k)
            .collect();
        if !stale.is_empty() {
            self.remove(&stale)?;
        }
        Ok(stale.len())
    }

    pub(crate) fn remove(&self, keys: &[Vec<u8>]) -> Result<()> {
        let mut batch = self.store.batch();
        for k in keys {
            batch.delete(QUEUE, k);
        }
        Ok(batch.commit()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(q: &OutboundQueue, dest: &str) -> Vec<u64> {
        q.peek(dest, 100)
            .unwrap()
            .iter()
            .filter_map(|(k, _)| keys::trailing_u64(k))
            .collect()
    }

    /// Sequence numbers name outbound transactions: they keep rising across
    /// a restart even when the queue was empty, so a receiver never takes a
    /// new transaction for one it already answered.
    #[tokio::test]
    async fn sequence_numbers_never_repeat_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let edu = Outgoing::Edu(serde_json::json!({"edu_type": "m.typing"}));
        let first = {
            let store = Store::open(dir.path(), false).unwrap();
            let (q, _rx) = OutboundQueue::new(store, "us.example".into()).unwrap();
            q.push(&["them.example".into(), "us.example".into()], edu.clone())
                .unwrap();
            let s = seqs(&q, "them.example");
            assert_eq!(s.len(), 1, "queued for the other server only");
            assert!(seqs(&q, "us.example").is_empty());
            let keys: Vec<Vec<u8>> = q
                .peek("them.example", 100)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            q.remove(&keys).unwrap();
            s[0]
        };
        let store = Store::open(dir.path(), false).unwrap();
        let (q, _rx) = OutboundQueue::new(store, "us.example".into()).unwrap();
        q.push(&["them.example".into()], edu).unwrap();
        assert!(seqs(&q, "them.example")[0] > first);
    }

    /// While a server is down, its typing and presence updates go stale and
    /// are dropped; messages, receipts and to-device messages wait.
    #[tokio::test]
    async fn an_unreachable_server_gets_no_stale_typing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        let (q, _rx) = OutboundQueue::new(store, "us.example".into()).unwrap();
        let dest = vec!["them.example".to_owned()];
        for kind in [
            "m.typing",
            "m.receipt",
            "m.presence",
            "m.direct_to_device",
            "m.typing",
        ] {
            q.push(&dest, Outgoing::Edu(serde_json::json!({"edu_type": kind})))
                .unwrap();
        }
        q.push(
            &dest,
            Outgoing::Pdu(ruma::OwnedEventId::try_from("$event").unwrap()),
        )
        .unwrap();
        assert_eq!(q.drop_stale_ephemeral("them.example").unwrap(), 3);
        let left: Vec<String> = q
            .peek("them.example", 100)
            .unwrap()
            .into_iter()
            .map(|(_, i)| match i {
                Outgoing::Edu(e) => e["edu_type"].as_str().unwrap_or_default().to_owned(),
                Outgoing::Pdu(id) => id.to_string(),
            })
            .collect();
        assert_eq!(left, ["m.receipt", "m.direct_to_device", "$event"]);
    }
}

//! The durable outbox: what waits for each destination (another server, a push gateway, an application service), written in the same transaction as what caused it, and sent by one worker per destination.

pub mod worker;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, push::Action};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;

use crate::{
    error::Result,
    storage::{OutboxRead, OutboxWrite, Store, Txn},
    stream::Write,
};
pub use worker::{Courier, Couriers, Delivery};

/// Where queued items go; each destination has its own worker and backoff.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// Another homeserver (federation transactions).
    Server(String),
    /// One HTTP pusher of one local user.
    Pusher {
        user: OwnedUserId,
        app_id: String,
        pushkey: String,
    },
    /// An application service, by registration ID.
    AppService(String),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Server(s) => write!(f, "server {s}"),
            Destination::Pusher { user, app_id, .. } => write!(f, "pusher {app_id} of {user}"),
            Destination::AppService(id) => write!(f, "application service {id}"),
        }
    }
}

/// One queued item.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Item {
    /// A timeline event, loaded when it is sent.
    Pdu(OwnedEventId),
    /// An EDU as sent (`edu_type` and `content`).
    Edu(Value),
    /// A notification for a push gateway: the event and what the user's
    /// push rules decided (the payload is built when it is sent, with the
    /// unread count of that moment).
    Push {
        room_id: OwnedRoomId,
        event_id: OwnedEventId,
        actions: Vec<Action>,
    },
}

pub struct Outbox {
    store: Store,
    seq: AtomicU64,
    wakers: Mutex<HashMap<Destination, Arc<Notify>>>,
    /// Wakes a destination's worker early from its backoff.
    retry_now: Mutex<HashMap<Destination, Arc<Notify>>>,
    /// Set once the workers run: new destinations get a worker through it.
    spawner: OnceLock<tokio::sync::mpsc::UnboundedSender<Destination>>,
    our_name: String,
}

impl Outbox {
    pub fn new(store: Store, our_name: String) -> Result<Arc<Self>> {
        let max = store.outbox_last_seq()?;
        // Sequence numbers name federation transactions, so they must never
        // repeat, also after a restart with an empty outbox: start above the clock.
        let start = (max + 1).max(crate::accounts::now_ms().saturating_mul(1000));
        Ok(Arc::new(Outbox {
            store,
            seq: AtomicU64::new(start),
            wakers: Mutex::default(),
            retry_now: Mutex::default(),
            spawner: OnceLock::new(),
            our_name,
        }))
    }

    /// Starts a worker for every destination with queued items (what was
    /// queued before a restart is sent again), and for each new one later.
    pub fn start(self: &Arc<Self>, couriers: Couriers) -> Result<()> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        if self.spawner.set(tx).is_err() {
            return Ok(());
        }
        tokio::spawn(worker::dispatch(rx, self.clone(), Arc::new(couriers)));
        for d in self.store.outbox_destinations()? {
            self.waker(&d).notify_one();
        }
        Ok(())
    }

    fn for_us(&self, dest: &Destination) -> bool {
        matches!(dest, Destination::Server(s) if *s == self.our_name)
    }

    /// Adds `item` for each destination to `txn`; call `wake` after commit.
    pub fn stage_txn(&self, txn: &mut Txn<'_>, dests: &[Destination], item: &Item) {
        for dest in dests.iter().filter(|d| !self.for_us(d)) {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            txn.put_outbox_item(dest, seq, item);
        }
    }

    /// Adds `item` for each destination to a write, and wakes their
    /// workers once it is committed.
    pub fn stage(self: &Arc<Self>, w: &mut Write<'_>, dests: &[Destination], item: &Item) {
        if dests.iter().all(|d| self.for_us(d)) {
            return;
        }
        self.stage_txn(w, dests, item);
        let (me, dests) = (self.clone(), dests.to_vec());
        w.after_commit(move || me.wake(&dests));
    }

    /// Queues for servers: the federation form of [`Outbox::stage`].
    pub fn stage_for_servers(self: &Arc<Self>, w: &mut Write<'_>, servers: &[String], item: &Item) {
        let dests: Vec<Destination> = servers.iter().cloned().map(Destination::Server).collect();
        self.stage(w, &dests, item);
    }

    /// Queues and wakes at once, in a transaction of its own (EDUs that
    /// belong to no other write).
    pub fn push(&self, dests: &[Destination], item: Item) -> Result<()> {
        if dests.iter().all(|d| self.for_us(d)) {
            return Ok(());
        }
        let mut txn = self.store.transaction();
        self.stage_txn(&mut txn, dests, &item);
        txn.commit()?;
        self.wake(dests);
        Ok(())
    }

    /// [`Outbox::push`] to servers.
    pub fn push_to_servers(&self, servers: &[String], item: Item) -> Result<()> {
        let dests: Vec<Destination> = servers.iter().cloned().map(Destination::Server).collect();
        self.push(&dests, item)
    }

    pub fn wake(&self, dests: &[Destination]) {
        for d in dests.iter().filter(|d| !self.for_us(d)) {
            self.waker(d).notify_one();
        }
    }

    /// The destination heard from us lately (it sent us something): its
    /// worker stops backing off.
    pub fn retry_now(&self, dest: &Destination) {
        if let Some(n) = self
            .retry_now
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(dest)
        {
            n.notify_one();
        }
    }

    pub(crate) fn retry_notifier(&self, dest: &Destination) -> Arc<Notify> {
        self.retry_now
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(dest.clone())
            .or_default()
            .clone()
    }

    /// The destination's notifier, creating it (and its worker, once the
    /// workers run) on first use.
    pub(crate) fn waker(&self, dest: &Destination) -> Arc<Notify> {
        let mut map = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get(dest) {
            return n.clone();
        }
        let Some(spawner) = self.spawner.get() else {
            // Not started yet: `start` finds the queued rows itself.
            return Arc::new(Notify::new());
        };
        let n = Arc::new(Notify::new());
        n.notify_one();
        map.insert(dest.clone(), n.clone());
        let _ = spawner.send(dest.clone());
        n
    }

    /// Up to `limit` queued items for `dest`, oldest first, with their
    /// sequence numbers.
    pub(crate) fn peek(&self, dest: &Destination, limit: usize) -> Result<Vec<(u64, Item)>> {
        Ok(self.store.outbox_items(dest, limit)?)
    }

    /// Drops the queued items `stale` picks for `dest`.
    pub(crate) fn drop_where(
        &self,
        dest: &Destination,
        stale: impl Fn(&Item) -> bool,
    ) -> Result<usize> {
        let seqs: Vec<u64> = self
            .peek(dest, 100_000)?
            .into_iter()
            .filter(|(_, item)| stale(item))
            .map(|(seq, _)| seq)
            .collect();
        if !seqs.is_empty() {
            self.remove(dest, &seqs)?;
        }
        Ok(seqs.len())
    }

    pub(crate) fn remove(&self, dest: &Destination, seqs: &[u64]) -> Result<()> {
        let mut txn = self.store.transaction();
        for seq in seqs {
            txn.delete_outbox_item(dest, *seq);
        }
        Ok(txn.commit()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn them() -> Destination {
        Destination::Server("them.example".into())
    }

    fn seqs(o: &Outbox, dest: &Destination) -> Vec<u64> {
        o.peek(dest, 100)
            .unwrap()
            .iter()
            .map(|(seq, _)| *seq)
            .collect()
    }

    /// Sequence numbers name outbound transactions: they keep rising across
    /// a restart even when the outbox was empty, so a receiver never takes a
    /// new transaction for one it already answered.
    #[tokio::test]
    async fn sequence_numbers_never_repeat_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let edu = Item::Edu(serde_json::json!({"edu_type": "m.typing"}));
        let first = {
            let store = Store::open(dir.path(), false).unwrap();
            let o = Outbox::new(store, "us.example".into()).unwrap();
            o.push(
                &[them(), Destination::Server("us.example".into())],
                edu.clone(),
            )
            .unwrap();
            let s = seqs(&o, &them());
            assert_eq!(s.len(), 1, "queued for the other server only");
            assert!(seqs(&o, &Destination::Server("us.example".into())).is_empty());
            o.remove(&them(), &s).unwrap();
            s[0]
        };
        let store = Store::open(dir.path(), false).unwrap();
        let o = Outbox::new(store, "us.example".into()).unwrap();
        o.push(&[them()], edu).unwrap();
        assert!(seqs(&o, &them())[0] > first);
    }

    /// Destinations of every kind keep their own rows, and their keys
    /// name them again after a restart.
    #[tokio::test]
    async fn destinations_are_separate_queues_that_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let pusher = Destination::Pusher {
            user: OwnedUserId::try_from("@bob:us.example").unwrap(),
            app_id: "app".into(),
            pushkey: "key".into(),
        };
        let service = Destination::AppService("bridge".into());
        {
            let store = Store::open(dir.path(), false).unwrap();
            let o = Outbox::new(store, "us.example".into()).unwrap();
            let event = Item::Pdu(OwnedEventId::try_from("$e").unwrap());
            o.push(&[them(), pusher.clone(), service.clone()], event)
                .unwrap();
        }
        let store = Store::open(dir.path(), false).unwrap();
        let o = Outbox::new(store.clone(), "us.example".into()).unwrap();
        let found = store.outbox_destinations().unwrap();
        for d in [them(), pusher, service] {
            assert_eq!(o.peek(&d, 10).unwrap().len(), 1, "{d}");
            assert!(found.contains(&d), "{d} in {found:?}");
        }
    }

    /// While a server is down, its typing and presence updates go stale and
    /// are dropped; messages, receipts and to-device messages wait.
    #[tokio::test]
    async fn dropping_stale_items_keeps_the_rest_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        let o = Outbox::new(store, "us.example".into()).unwrap();
        for kind in [
            "m.typing",
            "m.receipt",
            "m.presence",
            "m.direct_to_device",
            "m.typing",
        ] {
            o.push(&[them()], Item::Edu(serde_json::json!({"edu_type": kind})))
                .unwrap();
        }
        o.push(
            &[them()],
            Item::Pdu(OwnedEventId::try_from("$event").unwrap()),
        )
        .unwrap();
        let dropped = o
            .drop_where(&them(), crate::federation::sender::stale_when_unreachable)
            .unwrap();
        assert_eq!(dropped, 3);
        let left: Vec<String> = o
            .peek(&them(), 100)
            .unwrap()
            .into_iter()
            .map(|(_, i)| match i {
                Item::Edu(e) => e["edu_type"].as_str().unwrap_or_default().to_owned(),
                Item::Pdu(id) => id.to_string(),
                Item::Push { .. } => "push".into(),
            })
            .collect();
        assert_eq!(left, ["m.receipt", "m.direct_to_device", "$event"]);
    }
}

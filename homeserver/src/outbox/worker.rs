//! One worker per destination: takes queued items in order, hands them to the courier of that kind of destination, removes what was delivered, and backs off while the destination is unreachable.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use tokio::sync::mpsc;

use super::{Destination, Item, Outbox};

/// What a courier made of a batch.
pub enum Delivery {
    /// The first `n` items are done with (delivered, or dropped for good).
    Done(usize),
    /// Nothing was delivered; try again after a backoff.
    Retry(String),
}

pub type DeliveryFuture<'a> = Pin<Box<dyn Future<Output = Delivery> + Send + 'a>>;

/// Delivers items to one kind of destination (federation transactions,
/// push gateway requests, application service transactions).
pub trait Courier: Send + Sync {
    /// At most this many items are offered per delivery.
    fn batch_limit(&self) -> usize;
    /// Delivers `items` (oldest first, with their sequence numbers).
    fn deliver<'a>(&'a self, dest: &'a Destination, items: &'a [(u64, Item)])
    -> DeliveryFuture<'a>;
    /// Items not worth keeping once a delivery failed (they would show a
    /// state long gone when the destination comes back).
    fn stale_when_unreachable(&self, _item: &Item) -> bool {
        false
    }
    /// The longest wait between retries.
    fn max_backoff(&self) -> Duration;
}

/// The courier of each kind of destination; a kind without one keeps its
/// items queued (federation while it is disabled).
#[derive(Default)]
pub struct Couriers {
    pub servers: Option<Arc<dyn Courier>>,
    pub pushers: Option<Arc<dyn Courier>>,
    pub appservices: Option<Arc<dyn Courier>>,
}

impl Couriers {
    fn for_dest(&self, dest: &Destination) -> Option<Arc<dyn Courier>> {
        match dest {
            Destination::Server(_) => self.servers.clone(),
            Destination::Pusher { .. } => self.pushers.clone(),
            Destination::AppService(_) => self.appservices.clone(),
        }
    }
}

/// Spawns a worker for each destination the outbox announces.
pub(super) async fn dispatch(
    mut new_destinations: mpsc::UnboundedReceiver<Destination>,
    outbox: Arc<Outbox>,
    couriers: Arc<Couriers>,
) {
    while let Some(dest) = new_destinations.recv().await {
        let Some(courier) = couriers.for_dest(&dest) else {
            continue;
        };
        tokio::spawn(run(dest, outbox.clone(), courier));
    }
}

async fn run(dest: Destination, outbox: Arc<Outbox>, courier: Arc<dyn Courier>) {
    let wake = outbox.waker(&dest);
    let retry_now = outbox.retry_notifier(&dest);
    let mut backoff = Duration::from_secs(1);
    loop {
        let items = match outbox.peek(&dest, courier.batch_limit()) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("outbox of {dest}: {e}");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        if items.is_empty() {
            wake.notified().await;
            continue;
        }
        match courier.deliver(&dest, &items).await {
            Delivery::Done(n) => {
                let done: Vec<u64> = items.iter().take(n).map(|(seq, _)| *seq).collect();
                if let Err(e) = outbox.remove(&dest, &done) {
                    tracing::error!("outbox of {dest}: {e}");
                }
                backoff = Duration::from_secs(1);
            }
            Delivery::Retry(why) => {
                tracing::info!("sending to {dest} failed, retrying in {backoff:?}: {why}");
                if let Err(e) = outbox.drop_where(&dest, |i| courier.stale_when_unreachable(i)) {
                    tracing::error!("outbox of {dest}: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = retry_now.notified() => {}
                }
                backoff = (backoff * 2).min(courier.max_backoff());
            }
        }
    }
}

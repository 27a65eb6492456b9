//! Sends the outbound queue: one worker per destination, batching PDUs and EDUs into transactions, backing off when the server is down.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use super::{
    client::FedClient,
    queue::{OutboundQueue, Outgoing},
};
use crate::{accounts::now_ms, rooms::Rooms};

const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;

/// Wakes a destination's worker early from its backoff (the server just
/// talked to us, so it is probably back).
#[derive(Default)]
pub struct Backoffs {
    retry_now: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Backoffs {
    fn notifier(&self, dest: &str) -> Arc<Notify> {
        self.retry_now
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(dest.to_owned())
            .or_default()
            .clone()
    }
    pub fn heard_from(&self, dest: &str) {
        if let Some(n) = self
            .retry_now
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(dest)
        {
            n.notify_one();
        }
    }
}

pub async fn run(
    mut new_destinations: mpsc::UnboundedReceiver<String>,
    queue: Arc<OutboundQueue>,
    client: FedClient,
    rooms: Rooms,
    backoffs: Arc<Backoffs>,
    max_backoff: Duration,
) {
    while let Some(dest) = new_destinations.recv().await {
        let worker = Worker {
            dest: dest.clone(),
            queue: queue.clone(),
            client: client.clone(),
            rooms: rooms.clone(),
            retry_now: backoffs.notifier(&dest),
            max_backoff,
        };
        tokio::spawn(worker.run());
    }
}

struct Worker {
    dest: String,
    queue: Arc<OutboundQueue>,
    client: FedClient,
    rooms: Rooms,
    retry_now: Arc<Notify>,
    max_backoff: Duration,
}

impl Worker {
    async fn run(self) {
        let wake = self.queue.waker(&self.dest);
        let mut backoff = Duration::from_secs(1);
        loop {
            let items = match self.queue.peek(&self.dest, MAX_PDUS + MAX_EDUS) {
                Ok(i) => i,
                Err(e) => {
                    tracing::error!("federation queue for {}: {e}", self.dest);
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            if items.is_empty() {
                wake.notified().await;
                continue;
            }
            let (mut pdus, mut edus, mut sent) = (Vec::new(), Vec::new(), Vec::new());
            for (key, item) in items {
                match item {
                    Outgoing::Pdu(id) if pdus.len() < MAX_PDUS => {
                        if let Ok(Some(ev)) = self.rooms.event(id.as_str()) {
                            let mut v = ev.pdu_value();
                            if let Some(o) = v.as_object_mut() {
                                o.remove("unsigned");
                            }
                            pdus.push(v);
                        }
                        sent.push(key);
                    }
                    Outgoing::Edu(e) if edus.len() < MAX_EDUS => {
                        edus.push(e);
                        sent.push(key);
                    }
                    _ => break,
                }
            }
            // Named by the queue rows it carries: a retry of the same batch
            // reuses the ID, so the receiver answers it from its record.
            let seq = |k: Option<&Vec<u8>>| {
                k.and_then(|k| crate::storage::keys::trailing_u64(k))
                    .unwrap_or(0)
            };
            let txn_id = format!("{}-{}", seq(sent.first()), seq(sent.last()));
            let body = json!({
                "origin": self.queue.our_name,
                "origin_server_ts": now_ms(),
                "pdus": pdus,
                "edus": edus,
            });
            let uri = format!("/_matrix/federation/v1/send/{txn_id}");
            match self
                .client
                .json(&self.dest, Method::PUT, &uri, Some(&body))
                .await
            {
                Ok(answer) => {
                    log_rejections(&self.dest, &answer);
                    if let Err(e) = self.queue.remove(&sent) {
                        tracing::error!("federation queue for {}: {e}", self.dest);
                    }
                    backoff = Duration::from_secs(1);
                }
                Err(e) => {
                    tracing::info!(
                        "federation to {} failed, retrying in {:?}: {e}",
                        self.dest,
                        backoff
                    );
                    if let Err(e) = self.queue.drop_stale_ephemeral(&self.dest) {
                        tracing::error!("federation queue for {}: {e}", self.dest);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.retry_now.notified() => {}
                    }
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }
}

fn log_rejections(dest: &str, answer: &Value) {
    if let Some(pdus) = answer["pdus"].as_object() {
        for (id, result) in pdus {
            if let Some(err) = result.get("error") {
                tracing::info!("{dest} rejected {id}: {err}");
            }
        }
    }
}

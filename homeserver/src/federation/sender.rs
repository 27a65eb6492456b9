//! The courier for other servers: outbox items for a server, batched into federation transactions (50 PDUs, 100 EDUs).

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::client::FedClient;
use crate::{
    accounts::now_ms,
    outbox::{Courier, Delivery, Destination, Item, worker::DeliveryFuture},
    rooms::Rooms,
};

const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;

pub struct ServerCourier {
    pub client: FedClient,
    pub rooms: Rooms,
    pub our_name: String,
    pub max_backoff: Duration,
}

/// Typing and presence a server missed while unreachable would show a
/// state long gone when it comes back; PDUs, receipts, to-device messages
/// and device list updates keep.
pub fn stale_when_unreachable(item: &Item) -> bool {
    matches!(item, Item::Edu(e) if matches!(e["edu_type"].as_str(), Some("m.typing" | "m.presence")))
}

impl Courier for ServerCourier {
    fn batch_limit(&self) -> usize {
        MAX_PDUS + MAX_EDUS
    }

    fn max_backoff(&self) -> Duration {
        self.max_backoff
    }

    fn stale_when_unreachable(&self, item: &Item) -> bool {
        stale_when_unreachable(item)
    }

    fn deliver<'a>(
        &'a self,
        dest: &'a Destination,
        items: &'a [(u64, Item)],
    ) -> DeliveryFuture<'a> {
        Box::pin(async move {
            let Destination::Server(server) = dest else {
                return Delivery::Done(items.len());
            };
            let (mut pdus, mut edus, mut taken) = (Vec::new(), Vec::new(), 0usize);
            for (_, item) in items {
                match item {
                    Item::Pdu(id) if pdus.len() < MAX_PDUS => match self.rooms.event(id.as_str()) {
                        Ok(Some(ev)) => match self.rooms.federation_pdu(&ev) {
                            Ok(v) => pdus.push(v),
                            Err(e) => tracing::error!("{id} for {server}: {e}"),
                        },
                        Ok(None) => {}
                        Err(e) => return Delivery::Retry(e.to_string()),
                    },
                    Item::Edu(e) if edus.len() < MAX_EDUS => edus.push(e.clone()),
                    // Pushes never go to servers.
                    Item::Push { .. } => {}
                    _ => break,
                }
                taken += 1;
            }
            // Named by the outbox rows it carries: a retry of the same batch
            // reuses the ID, so the receiver answers it from its record.
            let first = items.first().map_or(0, |(s, _)| *s);
            let last = items.get(taken.saturating_sub(1)).map_or(0, |(s, _)| *s);
            let body = json!({
                "origin": self.our_name,
                "origin_server_ts": now_ms(),
                "pdus": pdus,
                "edus": edus,
            });
            let uri = format!("/_matrix/federation/v1/send/{first}-{last}");
            match self
                .client
                .json(server, Method::PUT, &uri, Some(&body))
                .await
            {
                Ok(answer) => {
                    log_rejections(server, &answer);
                    Delivery::Done(taken)
                }
                Err(e) => Delivery::Retry(e.to_string()),
            }
        })
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

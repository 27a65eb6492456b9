//! Content reports (events, rooms, users) kept for the server's administrators.

use serde::{Deserialize, Serialize};

use crate::{
    accounts::{now_ms, random_string},
    error::Result,
    storage::{DirectoryWrite, Store},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub reporter: String,
    pub room_id: Option<String>,
    pub event_id: Option<String>,
    pub user_id: Option<String>,
    pub reason: Option<String>,
    pub score: Option<i64>,
    pub ts: u64,
}

pub fn file(store: &Store, mut report: Report) -> Result<()> {
    report.ts = now_ms();
    tracing::info!(
        "report from {} (room {:?}, event {:?}, user {:?}): {:?}",
        report.reporter,
        report.room_id,
        report.event_id,
        report.user_id,
        report.reason
    );
    let mut txn = store.transaction();
    txn.put_report(&random_string(8), &report);
    Ok(txn.commit()?)
}

//! Content reports (events, rooms, users) kept for the server's administrators.

use serde::{Deserialize, Serialize};

use crate::{
    accounts::{now_ms, random_string},
    error::Result,
    storage::{Store, Table, keys},
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

/// `(ts, random) -> report`, oldest first.
const REPORTS: Table<Report> = Table::new("reports");

pub fn file(store: &Store, mut report: Report) -> Result<()> {
    report.ts = now_ms();
    let key = keys::KeyBuf::new()
        .u64(report.ts)
        .str(&random_string(8))
        .into_vec();
    tracing::info!(
        "report from {} (room {:?}, event {:?}, user {:?}): {:?}",
        report.reporter,
        report.room_id,
        report.event_id,
        report.user_id,
        report.reason
    );
    Ok(store.put(REPORTS, &key, &report)?)
}

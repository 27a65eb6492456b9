//! Ephemeral room and user data that flows through /sync beside the timeline: typing, receipts, presence.

pub mod presence;
pub mod receipts;
pub mod typing;

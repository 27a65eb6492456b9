//! Directories: the public room list and user search.

pub mod public_rooms;
pub mod users;

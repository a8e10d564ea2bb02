//! Watch: the hub that state machine applies feed, and the sessions (one per
//! client stream) that deliver each watcher's events in revision order,
//! exactly once, catching up from the store's history when behind.

mod hub;
mod session;

pub use hub::Hub;
pub use session::{CreateArgs, Output, Request, Session, SessionSettings, WatchPermission};

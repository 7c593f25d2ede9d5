//! The wall clock, for the edges only (the service's idle advance and lag metrics, the live
//! simulator). The engine never reads it: time is an argument there.

use crate::event::{millis, Millis};

/// Now, as event-time milliseconds since the Unix epoch.
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

//! Process resource limits the agent adjusts at start.

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use tracing::{debug, warn};

/// Raises the soft limit on open files to the hard limit: every TCP subscriber holds a
/// descriptor, and the usual soft limit (1024) is below what `max-clients` allows.
pub fn raise_open_files() {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => debug!(from = soft, to = hard, "raised the open-files limit"),
            Err(e) => warn!(soft, hard, "could not raise the open-files limit: {e}"),
        },
        Ok(_) => {}
        Err(e) => warn!("could not read the open-files limit: {e}"),
    }
}

/// The current soft limit on open files.
pub fn open_files() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

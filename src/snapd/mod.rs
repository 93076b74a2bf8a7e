//! Reading the snap configuration from snapd.
//!
//! Two routes, chosen by the environment:
//! - `POST /v2/snapctl` on the snap socket with `$SNAP_COOKIE` and `get -d <keys>`: needs no
//!   plug, and inside the configure hook it sees the values being set;
//! - without a cookie, `GET /v2/snaps/$SNAP_INSTANCE_NAME/conf` on the main socket (root, or
//!   the `snapd-control` interface), which returns the committed document.
//!
//! Both give the configuration as a JSON object; [`values::apply`] turns it into settings.

// Public so the fuzz targets (fuzz/) can decode arbitrary answers.
pub mod envelope;
mod http;
pub mod values;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};

pub use envelope::decode;

/// The socket every snap may use (`/v2/snapctl`).
pub const SNAP_SOCKET: &str = "/run/snapd-snap.socket";
/// The main API socket (root or `snapd-control`).
pub const SNAPD_SOCKET: &str = "/run/snapd.socket";
/// Bounds each whole request: connect, write, status and body.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// The largest answer read: a configuration is a few hundred bytes, and an answer that never
/// ended once took `--check` to 1.4 GB of memory within [`TIMEOUT`].
pub const MAX_ANSWER: usize = 1 << 20;
/// The instance name used when `--snap` is given outside a snap.
const DEFAULT_INSTANCE: &str = "pocketses";

/// Why the snap configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapdError {
    #[error("cannot talk to snapd at {socket}: {reason}")]
    Unreachable { socket: String, reason: String },
    #[error("snapd at {socket} did not answer within {} s", TIMEOUT.as_secs())]
    Timeout { socket: String },
    #[error("snapd answered HTTP {status}: {message}{}", kind.as_ref().map(|k| format!(" ({k})")).unwrap_or_default())]
    Api {
        status: u16,
        message: String,
        kind: Option<String>,
    },
    #[error("snapd's answer is larger than {} MiB; refusing it (socket {socket})", MAX_ANSWER >> 20)]
    TooLarge { socket: String },
    #[error("unexpected answer from snapd: {what}; received: {received}")]
    Protocol { what: String, received: String },
}

/// Where and how to ask for the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `snapctl get -d` with the snap's (or the hook's) context cookie.
    Snapctl { socket: PathBuf, cookie: String },
    /// The REST conf endpoint for a snap instance.
    Conf { socket: PathBuf, instance: String },
}

impl Route {
    /// The route the environment allows: snapctl when `SNAP_COOKIE` is set, else the REST
    /// endpoint for `SNAP_INSTANCE_NAME` (or `pocketses`).
    pub fn from_env() -> Route {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let socket = |name: &str, default: &str| PathBuf::from(var(name).unwrap_or(default.into()));
        match var("SNAP_COOKIE") {
            Some(cookie) => Route::Snapctl {
                socket: socket("POCKETSES_SNAP_SOCKET", SNAP_SOCKET),
                cookie,
            },
            None => Route::Conf {
                socket: socket("POCKETSES_SNAPD_SOCKET", SNAPD_SOCKET),
                instance: var("SNAP_INSTANCE_NAME").unwrap_or(DEFAULT_INSTANCE.into()),
            },
        }
    }

    /// The snap's configuration document; keys that are not set are absent.
    pub async fn read(&self, keys: &[&str]) -> Result<Map<String, Value>, SnapdError> {
        match self {
            Route::Snapctl { socket, cookie } => {
                let mut args = vec!["get", "-d"];
                args.extend_from_slice(keys);
                let body = json!({ "context-id": cookie, "args": args });
                let result = http::request(socket, "/v2/snapctl", Some(&body)).await?;
                envelope::snapctl_stdout(result)
            }
            Route::Conf { socket, instance } => {
                // Without `keys`: asking for several fails the whole request when one is unset.
                let path = format!("/v2/snaps/{instance}/conf");
                let result = http::request(socket, &path, None).await?;
                envelope::object(result, "the configuration document")
            }
        }
    }
}

//! One HTTP/1.1 request to snapd over a unix socket, bounded in time by
//! [`TIMEOUT`](super::TIMEOUT) and in size by [`MAX_ANSWER`](super::MAX_ANSWER).

use std::path::Path;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::{header, Method, Request};
use hyper_util::client::legacy::Client;
use hyperlocal::{UnixClientExt, UnixConnector, Uri};
use serde_json::Value;

use super::{envelope, SnapdError, MAX_ANSWER, TIMEOUT};

/// Sends a GET (no body) or a POST of `body` and returns the envelope's `result`.
pub async fn request(socket: &Path, path: &str, body: Option<&Value>) -> Result<Value, SnapdError> {
    let shown = socket.display().to_string();
    let (status, bytes) = tokio::time::timeout(TIMEOUT, exchange(socket, path, body))
        .await
        .map_err(|_| SnapdError::Timeout {
            socket: shown.clone(),
        })?
        .map_err(|failure| match failure {
            Failure::TooLarge => SnapdError::TooLarge { socket: shown },
            Failure::Transport(reason) => SnapdError::Unreachable {
                socket: shown,
                reason,
            },
        })?;
    envelope::decode(status, &bytes)
}

enum Failure {
    /// The body went past [`MAX_ANSWER`].
    TooLarge,
    /// The transport's error, as text with its causes.
    Transport(String),
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Transport(chain(&e))
    }
}

/// The raw exchange; the body is read up to [`MAX_ANSWER`] bytes, never kept whole beyond.
async fn exchange(
    socket: &Path,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Bytes), Failure> {
    let client: Client<UnixConnector, Full<Bytes>> = Client::unix();
    // snapd's Go server requires a Host header; its own client sends this one.
    let builder = Request::builder()
        .uri(hyper::Uri::from(Uri::new(socket, path)))
        .header(header::HOST, "localhost");
    let request = match body {
        Some(json) => builder
            .method(Method::POST)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json.to_string()))),
        None => builder.method(Method::GET).body(Full::new(Bytes::new())),
    }?;
    let response = client.request(request).await?;
    let status = response.status().as_u16();
    let bytes = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| match e.downcast::<LengthLimitError>() {
            Ok(_) => Failure::TooLarge,
            Err(e) => Failure::Transport(chain(&*e)),
        })?
        .to_bytes();
    Ok((status, bytes))
}

/// An error with its causes, e.g. "client error (Connect): No such file or directory".
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

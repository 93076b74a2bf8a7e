//! One HTTP/1.1 request to snapd over a unix socket, bounded by [`TIMEOUT`](super::TIMEOUT).

use std::path::Path;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{header, Method, Request};
use hyper_util::client::legacy::Client;
use hyperlocal::{UnixClientExt, UnixConnector, Uri};
use serde_json::Value;

use super::{envelope, SnapdError, TIMEOUT};

/// Sends a GET (no body) or a POST of `body` and returns the envelope's `result`.
pub async fn request(socket: &Path, path: &str, body: Option<&Value>) -> Result<Value, SnapdError> {
    let shown = socket.display().to_string();
    let (status, bytes) = tokio::time::timeout(TIMEOUT, exchange(socket, path, body))
        .await
        .map_err(|_| SnapdError::Timeout {
            socket: shown.clone(),
        })?
        .map_err(|reason| SnapdError::Unreachable {
            socket: shown,
            reason,
        })?;
    envelope::decode(status, &bytes)
}

/// The raw exchange; errors are the transport's, as text with their causes.
async fn exchange(socket: &Path, path: &str, body: Option<&Value>) -> Result<(u16, Bytes), String> {
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
    }
    .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(chain)?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(chain)?
        .to_bytes();
    Ok((status, bytes))
}

/// An error with its causes, e.g. "client error (Connect): No such file or directory".
fn chain(e: impl std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

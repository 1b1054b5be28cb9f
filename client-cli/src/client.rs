//! The transport: one HTTP/1.1 request to hearthd over its Unix socket, one JSON answer back.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use hearth_protocol::api::ApiError;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

use crate::error::{ApiFailure, Unreachable};

/// The largest answer read from hearthd. Real answers are a few KiB; this only stops a
/// confused peer on the socket from filling memory.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// How much of an unexpected answer to quote in an error message.
const QUOTE_CHARS: usize = 200;

pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(socket: PathBuf, timeout: Duration) -> Client {
        Client { socket, timeout }
    }

    /// Sends one request and returns the answer body of a 2xx answer.
    ///
    /// Errors: [`Unreachable`] when nothing could be sent, [`ApiFailure`] when hearthd
    /// refused the request, and a plain error with context for anything else.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let what = format!("{method} {path}");
        match tokio::time::timeout(self.timeout, self.exchange(method, path, body, &what)).await {
            Ok(answer) => answer,
            Err(_elapsed) => Err(anyhow!(
                "hearthd did not answer {what} within {} s. It may still finish the work; \
                 check with `hearth status` or the matching list command.",
                self.timeout.as_secs()
            )),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Value> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|cause| Unreachable {
                socket: self.socket.clone(),
                cause,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("starting HTTP with hearthd failed")?;
        // The connection future drives the socket; its errors also surface through
        // `send_request`, which is where we report them.
        tokio::spawn(connection);

        let payload = match body {
            Some(value) => serde_json::to_vec(value).context("encoding the request")?,
            None => Vec::new(),
        };
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "localhost")
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(Full::new(Bytes::from(payload)))
            .with_context(|| format!("building the request {what}"))?;

        let response = sender.send_request(request).await.with_context(|| {
            // hearthd drops connections from other users without a word.
            format!(
                "hearthd closed the connection without answering {what}; it may have \
                     stopped, or it runs as another user (it answers only its own user)"
            )
        })?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("reading hearthd's answer to {what}"))?
            .to_bytes();
        interpret(status, &bytes, what)
    }
}

/// Turns a status and body into the answer or the error it stands for.
fn interpret(status: StatusCode, body: &[u8], what: &str) -> Result<Value> {
    if status.is_success() {
        return serde_json::from_slice(body).with_context(|| {
            format!(
                "hearthd sent a malformed answer to {what} (status {status}, body {})",
                quote(body)
            )
        });
    }
    match serde_json::from_slice::<ApiError>(body) {
        Ok(ApiError { error }) => Err(ApiFailure {
            status: status.as_u16(),
            code: error.code,
            message: error.message,
        }
        .into()),
        Err(_) => Err(anyhow!(
            "hearthd refused {what} with status {status} and no error message (body {})",
            quote(body)
        )),
    }
}

/// A short, printable excerpt of a body for an error message.
fn quote(body: &[u8]) -> String {
    if body.is_empty() {
        return "empty".to_owned();
    }
    let text = String::from_utf8_lossy(body);
    let mut excerpt: String = text.chars().take(QUOTE_CHARS).collect();
    if text.chars().nth(QUOTE_CHARS).is_some() {
        excerpt.push('…');
    }
    format!("{excerpt:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{EXIT_FAILURE, EXIT_UNREACHABLE, exit_code};
    use hyper::Response;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use serde_json::json;
    use std::convert::Infallible;
    use std::path::Path;
    use tokio::net::UnixListener;
    use tokio::sync::mpsc;

    /// What the canned server saw of a request.
    #[derive(Debug)]
    struct Seen {
        method: Method,
        path: String,
        host: Option<String>,
        content_type: Option<String>,
        body: Vec<u8>,
    }

    /// Serves every connection on `socket` with `status` and `body`, reporting each request.
    fn serve(
        socket: &Path,
        status: StatusCode,
        answer: &'static str,
    ) -> mpsc::UnboundedReceiver<Seen> {
        let listener = UnixListener::bind(socket).expect("bind test socket");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let header = |name| {
                            req.headers()
                                .get(name)
                                .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
                                .map(str::to_owned)
                        };
                        let (host, content_type) = (header(HOST), header(CONTENT_TYPE));
                        let method = req.method().clone();
                        let path = req.uri().to_string();
                        let body = req.into_body().collect().await.expect("body").to_bytes();
                        let _ = tx.send(Seen {
                            method,
                            path,
                            host,
                            content_type,
                            body: body.to_vec(),
                        });
                        let mut response = Response::new(Full::new(Bytes::from(answer)));
                        *response.status_mut() = status;
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        });
        rx
    }

    fn client(socket: &Path) -> Client {
        Client::new(socket.to_owned(), Duration::from_secs(5))
    }

    #[tokio::test]
    async fn success_body_passes_through_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("hearthd.sock");
        let answer = r#"{"member_id":"ab","listen_addrs":["/ip4/127.0.0.1/tcp/1"],"peers":0,"groups":2,"new_field":[1,2]}"#;
        let mut seen = serve(&socket, StatusCode::OK, answer);

        let got = client(&socket)
            .call(Method::GET, "/v1/status", None)
            .await
            .unwrap();
        assert_eq!(got, serde_json::from_str::<Value>(answer).unwrap());

        let request = seen.recv().await.unwrap();
        assert_eq!(request.method, Method::GET);
        assert_eq!(request.path, "/v1/status");
        assert_eq!(request.host.as_deref(), Some("localhost"));
        assert_eq!(request.content_type.as_deref(), Some("application/json"));
        assert!(request.body.is_empty());
    }

    #[tokio::test]
    async fn request_body_is_sent_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("hearthd.sock");
        let mut seen = serve(&socket, StatusCode::CREATED, r#"{"group_id":"00ff"}"#);

        let body = json!({"name": "Thursday circle", "purpose": null});
        let got = client(&socket)
            .call(Method::POST, "/v1/groups", Some(&body))
            .await
            .unwrap();
        assert_eq!(got, json!({"group_id": "00ff"}));

        let request = seen.recv().await.unwrap();
        assert_eq!(request.method, Method::POST);
        assert_eq!(
            serde_json::from_slice::<Value>(&request.body).unwrap(),
            body
        );
    }

    #[tokio::test]
    async fn api_error_becomes_exit_1_with_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("hearthd.sock");
        let _seen = serve(
            &socket,
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":"group_not_found","message":"No group is called \"x\"."}}"#,
        );

        let err = client(&socket)
            .call(Method::GET, "/v1/groups/x", None)
            .await
            .unwrap_err();
        assert_eq!(exit_code(&err), EXIT_FAILURE);
        assert_eq!(format!("{err:#}"), "No group is called \"x\".");
        let failure = err.downcast_ref::<ApiFailure>().unwrap();
        assert_eq!(
            (failure.status, failure.code.as_str()),
            (404, "group_not_found")
        );
    }

    #[tokio::test]
    async fn missing_socket_becomes_exit_3() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nobody-here.sock");

        let err = client(&socket)
            .call(Method::GET, "/v1/status", None)
            .await
            .unwrap_err();
        assert_eq!(exit_code(&err), EXIT_UNREACHABLE);
        let message = format!("{err:#}");
        assert!(
            message.starts_with("hearthd is not running (no socket at "),
            "{message}"
        );
        assert!(message.contains(&socket.display().to_string()), "{message}");
    }

    #[tokio::test]
    async fn stale_socket_becomes_exit_3() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("hearthd.sock");
        // Binding leaves the socket file behind after the listener is gone, as a crash does.
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());

        let err = client(&socket)
            .call(Method::GET, "/v1/status", None)
            .await
            .unwrap_err();
        assert_eq!(exit_code(&err), EXIT_UNREACHABLE);
        assert!(format!("{err:#}").contains("refuses connections"));
    }

    #[tokio::test]
    async fn malformed_success_body_is_an_error_with_context() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("hearthd.sock");
        let _seen = serve(&socket, StatusCode::OK, "<html>not json</html>");

        let err = client(&socket)
            .call(Method::GET, "/v1/groups", None)
            .await
            .unwrap_err();
        assert_eq!(exit_code(&err), EXIT_FAILURE);
        let message = format!("{err:#}");
        assert!(
            message.contains("malformed answer to GET /v1/groups"),
            "{message}"
        );
        assert!(message.contains("not json"), "{message}");
    }

    #[tokio::test]
    async fn silence_times_out_with_exit_1() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("hearthd.sock");
        // Accepts connections but never answers.
        let listener = UnixListener::bind(&socket).unwrap();
        let _held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });

        let client = Client::new(socket, Duration::from_millis(200));
        let err = client
            .call(Method::POST, "/v1/join", None)
            .await
            .unwrap_err();
        assert_eq!(exit_code(&err), EXIT_FAILURE);
        assert!(format!("{err:#}").contains("did not answer POST /v1/join"));
    }

    #[tokio::test]
    async fn dropped_connection_is_exit_1_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("hearthd.sock");
        // What hearthd does to a connection from another user.
        let listener = UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });

        let err = client(&socket)
            .call(Method::GET, "/v1/status", None)
            .await
            .unwrap_err();
        assert_eq!(exit_code(&err), EXIT_FAILURE);
        let message = format!("{err:#}");
        assert!(message.contains("closed the connection"), "{message}");
        assert!(message.contains("another user"), "{message}");
    }

    #[test]
    fn error_status_without_api_error_body_is_reported_with_status() {
        let err =
            interpret(StatusCode::BAD_GATEWAY, b"upstream down", "GET /v1/peers").unwrap_err();
        assert!(err.downcast_ref::<ApiFailure>().is_none());
        let message = format!("{err:#}");
        assert!(message.contains("502"), "{message}");
        assert!(message.contains("upstream down"), "{message}");
    }

    #[test]
    fn empty_success_body_is_malformed_not_a_panic() {
        let err = interpret(StatusCode::OK, b"", "GET /v1/status").unwrap_err();
        assert!(format!("{err:#}").contains("body empty"));
    }

    #[test]
    fn quotes_are_short_and_printable() {
        let long = vec![b'a'; 1000];
        let q = quote(&long);
        assert!(q.chars().count() < QUOTE_CHARS + 5);
        assert!(q.contains('…'));
        assert_eq!(quote(b"\x1b[2J"), "\"\\u{1b}[2J\"");
    }
}

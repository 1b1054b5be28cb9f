//! Driving a daemon through its local API, and following its change events.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use hearth::client::Client;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// How long any one wait of the harness lasts before it reports the daemon stuck.
pub const PATIENCE: Duration = Duration::from_secs(300);

pub struct Api {
    client: Client,
}

impl Api {
    pub fn new(socket: &Path) -> Api {
        Api {
            client: Client::new(socket.to_owned(), PATIENCE),
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.client.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.client.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value> {
        self.client.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.client.call(Method::DELETE, path, None).await
    }

    /// Adds an agreement and returns its id.
    pub async fn add_agreement(&self, group: &str, text: &str) -> Result<String> {
        let added = self
            .post(
                &format!("/v1/groups/{group}/agreements"),
                &serde_json::json!({ "text": text }),
            )
            .await?;
        Ok(added["id"]
            .as_str()
            .ok_or_else(|| anyhow!("no id in {added}"))?
            .to_owned())
    }

    /// Whether the daemon shows agreement `id` of `group`.
    pub async fn has_agreement(&self, group: &str, id: &str) -> bool {
        self.get(&format!("/v1/groups/{group}/agreements/{id}"))
            .await
            .is_ok()
    }

    /// The epoch the daemon writes `group` under, if it holds the current key.
    pub async fn writing_epoch(&self, group: &str) -> Result<Option<u64>> {
        let groups = self.get("/v1/groups").await?;
        Ok(groups
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| g["group_id"] == group)
            .and_then(|g| g["epoch"].as_u64()))
    }
}

/// A daemon's `/v1/events` stream, as a wake-up signal: something changed.
pub struct Events {
    socket: PathBuf,
    ticks: mpsc::UnboundedReceiver<()>,
}

impl Events {
    /// Subscribes; changes from the moment this returns are signalled.
    pub async fn subscribe(socket: &Path) -> Result<Events> {
        let stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(Method::GET)
            .uri("/v1/events")
            .header(hyper::header::HOST, "localhost")
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        if !response.status().is_success() {
            bail!("/v1/events answered {}", response.status());
        }
        let (tx, ticks) = mpsc::unbounded_channel();
        let mut body = response.into_body();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                if frame.is_data() && tx.send(()).is_err() {
                    break;
                }
            }
        });
        Ok(Events {
            socket: socket.to_owned(),
            ticks,
        })
    }

    /// Waits until `check` holds, checking again after each event.
    pub async fn until<F, Fut>(&mut self, what: &str, mut check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + PATIENCE;
        loop {
            // Events from before this check are covered by it.
            while self.ticks.try_recv().is_ok() {}
            if check().await {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.ticks.recv()).await {
                Ok(Some(())) => {}
                Ok(None) => bail!(
                    "the event stream of {} ended while waiting for {what}",
                    self.socket.display()
                ),
                Err(_) => bail!("timed out waiting for {what}"),
            }
        }
    }
}

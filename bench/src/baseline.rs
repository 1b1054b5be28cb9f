//! The plaintext baseline: the same automerge changes hearth syncs, synced by automerge's
//! own sync protocol over plain TCP between this process and a child process.
//!
//! Frames on the wire: one kind byte, a 4-byte big-endian length, the payload. The child
//! holds an empty document; the parent names the heads it must reach, and the child says
//! when it has them.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use automerge::sync::{Message, State, SyncDoc};
use automerge::{Automerge, ChangeHash, ReadDoc};
use hearth_protocol::doc::{GroupDocument, agreement_id};
use hearth_protocol::ids::MemberId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SYNC: u8 = 0;
const TARGET: u8 = 1;
const REACHED: u8 = 2;
/// A frame larger than this is a bug in the harness, not data.
const MAX_FRAME: usize = 256 * 1024 * 1024;

/// A document built from the same kind of changes as hearth's `agreement add`, one
/// change per agreement.
pub struct Workload {
    doc: GroupDocument,
    author: MemberId,
    next: usize,
}

impl Workload {
    /// The document of a group this workload's member created (so it holds the
    /// agreements container every agreement goes in).
    pub fn new() -> Result<Workload> {
        let mut id = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        let author = MemberId(id);
        let mut doc = GroupDocument::new(author.actor_id());
        doc.init("Circle", "")?;
        Ok(Workload {
            doc,
            author,
            next: 0,
        })
    }

    /// Adds one agreement worded as the hearth scenarios word theirs.
    pub fn add(&mut self, text: &str) -> Result<Vec<automerge::Change>> {
        let mut id = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        self.next += 1;
        let id = agreement_id(&self.author, id);
        let created_at = 1_790_000_000 + self.next as i64;
        Ok(self.doc.insert_agreement(&id, text, created_at)?)
    }

    /// The document as plain automerge.
    pub fn automerge(&mut self) -> Result<Automerge> {
        Ok(Automerge::load(&self.doc.save())?)
    }
}

/// A child process holding an empty document, connected to us over TCP.
pub struct Peer {
    child: Child,
    stream: TcpStream,
    state: State,
    pub bytes: u64,
}

impl Peer {
    /// Starts `hearth-bench baseline-peer` and accepts its connection.
    pub async fn start() -> Result<Peer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let exe = std::env::current_exe().context("finding hearth-bench itself")?;
        let child = Command::new(exe)
            .args(["baseline-peer", &addr.to_string()])
            .stdin(Stdio::null())
            .spawn()
            .context("starting the baseline peer")?;
        let (stream, _) = tokio::time::timeout(Duration::from_secs(60), listener.accept())
            .await
            .context("the baseline peer did not connect")??;
        stream.set_nodelay(true)?;
        Ok(Peer {
            child,
            stream,
            state: State::new(),
            bytes: 0,
        })
    }

    /// Syncs `doc` to the peer until it holds `doc`'s heads; returns the time it took.
    pub async fn sync_until_current(&mut self, doc: &mut Automerge) -> Result<Duration> {
        let start = Instant::now();
        let heads: Vec<u8> = doc.get_heads().iter().flat_map(|h| h.0).collect();
        self.send(TARGET, &heads).await?;
        if let Some(msg) = doc.generate_sync_message(&mut self.state) {
            self.send(SYNC, &msg.encode()).await?;
        }
        loop {
            let (kind, payload) = read_frame(&mut self.stream, &mut self.bytes).await?;
            match kind {
                SYNC => {
                    doc.receive_sync_message(&mut self.state, Message::decode(&payload)?)?;
                    if let Some(msg) = doc.generate_sync_message(&mut self.state) {
                        self.send(SYNC, &msg.encode()).await?;
                    }
                }
                REACHED => return Ok(start.elapsed()),
                other => bail!("the baseline peer sent an unknown frame kind {other}"),
            }
        }
    }

    async fn send(&mut self, kind: u8, payload: &[u8]) -> Result<()> {
        write_frame(&mut self.stream, kind, payload, &mut self.bytes).await
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child side: an empty document that takes whatever the parent syncs.
pub async fn serve_peer(parent: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect(parent).await?;
    stream.set_nodelay(true)?;
    let mut doc = Automerge::new();
    let mut state = State::new();
    let mut target: Vec<ChangeHash> = Vec::new();
    let mut ignored = 0u64;
    loop {
        let (kind, payload) = match read_frame(&mut stream, &mut ignored).await {
            Ok(frame) => frame,
            // The parent is done with us.
            Err(_) => return Ok(()),
        };
        match kind {
            TARGET => {
                target = payload
                    .chunks_exact(32)
                    .map(|c| ChangeHash(c.try_into().expect("32-byte chunk")))
                    .collect();
            }
            SYNC => {
                doc.receive_sync_message(&mut state, Message::decode(&payload)?)?;
                if let Some(msg) = doc.generate_sync_message(&mut state) {
                    write_frame(&mut stream, SYNC, &msg.encode(), &mut ignored).await?;
                }
            }
            other => bail!("the parent sent an unknown frame kind {other}"),
        }
        if !target.is_empty() && target.iter().all(|h| doc.get_change_by_hash(h).is_some()) {
            target.clear();
            write_frame(&mut stream, REACHED, &[], &mut ignored).await?;
        }
    }
}

async fn write_frame(
    stream: &mut TcpStream,
    kind: u8,
    payload: &[u8],
    bytes: &mut u64,
) -> Result<()> {
    let len = u32::try_from(payload.len()).context("frame too large")?;
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(kind);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame).await?;
    *bytes += frame.len() as u64;
    Ok(())
}

async fn read_frame(stream: &mut TcpStream, bytes: &mut u64) -> Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        bail!("a frame of {len} bytes");
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    *bytes += 5 + len as u64;
    Ok((head[0], payload))
}

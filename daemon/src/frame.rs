//! Reading and writing length-prefixed wire frames on a libp2p stream.

use anyhow::Context;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use hearth_protocol::wire::{self, Bounded};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub async fn write_msg<W, T>(w: &mut W, msg: &T) -> anyhow::Result<()>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    w.write_all(&wire::encode_frame(msg))
        .await
        .context("writing to peer")?;
    w.flush().await.context("flushing to peer")
}

/// Reads one message of at most `max_len` bytes; `None` when the peer closed the stream
/// cleanly between frames. The announced length is checked before anything is allocated.
pub async fn read_msg<R, T>(r: &mut R, max_len: usize) -> anyhow::Result<Option<T>>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned + Bounded,
{
    let mut prefix = [0u8; 4];
    match r.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e).context("reading from peer"),
    }
    let len = wire::frame_len(prefix)?;
    if len > max_len {
        anyhow::bail!("peer sent a {len}-byte message where at most {max_len} are expected");
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.context("reading from peer")?;
    Ok(Some(wire::decode(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::wire::{MAX_FRAME_LEN, SyncMessage};

    #[tokio::test]
    async fn oversized_prefix_is_refused_without_reading_more() {
        let mut bytes: &[u8] = &((MAX_FRAME_LEN as u32) + 1).to_be_bytes();
        let r: anyhow::Result<Option<SyncMessage>> = read_msg(&mut bytes, MAX_FRAME_LEN).await;
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn round_trip_and_clean_eof() {
        let msg = SyncMessage::Reveal {
            slots: vec![hearth_protocol::wire::RevealSlot(
                [1; hearth_protocol::session::SLOT_LEN],
            )],
        };
        let mut buf = Vec::new();
        write_msg(&mut buf, &msg).await.unwrap();
        let mut slice = buf.as_slice();
        let back: Option<SyncMessage> = read_msg(&mut slice, MAX_FRAME_LEN).await.unwrap();
        assert_eq!(back, Some(msg));
        let eof: Option<SyncMessage> = read_msg(&mut slice, MAX_FRAME_LEN).await.unwrap();
        assert_eq!(eof, None);
    }
}

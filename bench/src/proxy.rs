//! A TCP relay on loopback that counts every byte it carries, both ways: how the harness
//! measures what a sync puts on the wire, for hearth and its baseline alike.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Proxy {
    addr: SocketAddr,
    bytes: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Relays connections made to a fresh loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = bytes.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        relay(inbound, outbound, counter).await;
                    }
                });
            }
        });
        Ok(Proxy {
            addr,
            bytes,
            accept,
        })
    }

    /// Bytes carried so far, both directions together.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The relay's address as a libp2p multiaddr.
    pub fn multiaddr(&self) -> String {
        format!("/ip4/{}/tcp/{}", self.addr.ip(), self.addr.port())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(a: TcpStream, b: TcpStream, counter: Arc<AtomicU64>) {
    // Without this the relay itself would add Nagle delays neither side asked for.
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    let one = tokio::spawn(pipe(ar, bw, counter.clone()));
    let other = tokio::spawn(pipe(br, aw, counter));
    let _ = tokio::join!(one, other);
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counter: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                counter.fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// The TCP address of a loopback libp2p multiaddr such as `/ip4/127.0.0.1/tcp/4001`.
pub fn socket_addr(multiaddr: &str) -> Option<SocketAddr> {
    let mut parts = multiaddr.split('/').skip(1);
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("ip4"), Some(ip), Some("tcp"), Some(port)) => {
            Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_loopback_multiaddrs() {
        assert_eq!(
            socket_addr("/ip4/127.0.0.1/tcp/4001"),
            Some("127.0.0.1:4001".parse().unwrap())
        );
        assert_eq!(socket_addr("/ip6/::1/tcp/4001"), None);
        assert_eq!(socket_addr("/ip4/127.0.0.1/udp/4001"), None);
    }

    #[tokio::test]
    async fn counts_both_directions() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = server.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(b"abc").await.unwrap();
        });
        let proxy = Proxy::start(target).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 3];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"abc");
        assert_eq!(proxy.bytes(), 8);
    }
}

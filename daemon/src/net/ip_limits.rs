//! Inbound connection limits per remote IP address.
//!
//! libp2p's own `connection_limits` counts per peer id, and peer ids cost nothing to make,
//! so one host could fill every inbound slot. This behaviour counts inbound connections
//! (pending, i.e. still in the Noise/Yamux handshake, and established) per remote IP and
//! denies one over the limit before any handshake work is done for it.
//!
//! The addresses several daemons on one machine share (`127.0.0.1`, `::1`) get the limits
//! in [`LOOPBACK_LIMITS`]: tests and benchmarks run dozens of daemons there. Every other
//! address, other loopback addresses such as `127.0.0.2` included, gets [`IP_LIMITS`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure, NetworkBehaviour,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// How many inbound connections one remote address may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Still in the transport handshake.
    pub pending: usize,
    /// Established.
    pub established: usize,
}

/// Any address but the shared loopback ones: a handful of daemons behind one address
/// (say, a NAT), and no more.
pub const IP_LIMITS: Limits = Limits {
    pending: 4,
    established: 8,
};

/// `127.0.0.1` and `::1`: as many as the daemon takes in all (see `net`), so that the
/// end-to-end tests (up to six daemons) and hearth-bench (a hub with 32 peers) run on one
/// machine. Someone who can reach these addresses runs on the same computer, outside what
/// a limit per address can defend against.
pub const LOOPBACK_LIMITS: Limits = Limits {
    pending: super::MAX_PENDING_INCOMING as usize,
    established: super::MAX_ESTABLISHED_INCOMING as usize,
};

/// The limits that apply to `ip`.
pub fn limits_for(ip: IpAddr) -> Limits {
    if ip == IpAddr::V4(Ipv4Addr::LOCALHOST) || ip == IpAddr::V6(Ipv6Addr::LOCALHOST) {
        LOOPBACK_LIMITS
    } else {
        IP_LIMITS
    }
}

/// The origin limits count `addr` under: its IPv4 address, or its IPv6 address's /64
/// (a host is handed a whole /64 and can take any address in it), `::1` as itself.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => Some(ip.into()),
        Some(Protocol::Ip6(ip)) if ip == Ipv6Addr::LOCALHOST => Some(ip.into()),
        Some(Protocol::Ip6(ip)) => {
            let prefix = u128::from(ip) & !((1u128 << 64) - 1);
            Some(IpAddr::V6(Ipv6Addr::from(prefix)))
        }
        _ => None,
    }
}

/// The remote IP address said no: too many connections from it.
#[derive(Debug)]
pub struct TooMany {
    pub established: bool,
}

impl std::fmt::Display for TooMany {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.established {
            "established"
        } else {
            "pending"
        };
        write!(f, "too many {what} inbound connections from one address")
    }
}

impl std::error::Error for TooMany {}

#[derive(Default)]
pub struct Behaviour {
    pending: HashMap<ConnectionId, IpAddr>,
    established: HashMap<ConnectionId, IpAddr>,
}

impl Behaviour {
    fn count(map: &HashMap<ConnectionId, IpAddr>, ip: IpAddr) -> usize {
        map.values().filter(|i| **i == ip).count()
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(ip) = ip_of(remote) else {
            return Ok(());
        };
        let limits = limits_for(ip);
        if Self::count(&self.pending, ip) >= limits.pending
            || Self::count(&self.established, ip) >= limits.established
        {
            return Err(ConnectionDenied::new(TooMany {
                established: Self::count(&self.established, ip) >= limits.established,
            }));
        }
        self.pending.insert(connection_id, ip);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _peer: PeerId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.pending.remove(&connection_id);
        let Some(ip) = ip_of(remote) else {
            return Ok(dummy::ConnectionHandler);
        };
        if Self::count(&self.established, ip) >= limits_for(ip).established {
            return Err(ConnectionDenied::new(TooMany { established: true }));
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                if let ConnectedPoint::Listener { send_back_addr, .. } = e.endpoint
                    && let Some(ip) = ip_of(send_back_addr)
                {
                    self.pending.remove(&e.connection_id);
                    self.established.insert(e.connection_id, ip);
                }
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.established.remove(&connection_id);
            }
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.pending.remove(&connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_shared_loopback_addresses_get_the_loopback_limits() {
        assert_eq!(limits_for("127.0.0.1".parse().unwrap()), LOOPBACK_LIMITS);
        assert_eq!(limits_for("::1".parse().unwrap()), LOOPBACK_LIMITS);
        assert_eq!(limits_for("127.0.0.2".parse().unwrap()), IP_LIMITS);
        assert_eq!(limits_for("192.168.1.20".parse().unwrap()), IP_LIMITS);
        const { assert!(IP_LIMITS.established < LOOPBACK_LIMITS.established) };
    }

    #[test]
    fn every_address_of_one_ipv6_64_counts_as_one_origin() {
        let at = |a: &str| ip_of(&a.parse::<Multiaddr>().unwrap());
        let one = at("/ip6/2001:db8:1:2::7/tcp/4001");
        assert_eq!(one, at("/ip6/2001:db8:1:2:ffff:1:2:3/tcp/9"));
        assert_ne!(one, at("/ip6/2001:db8:1:3::7/tcp/4001"));
        assert_eq!(at("/ip6/::1/tcp/1"), Some("::1".parse().unwrap()));
        assert_ne!(at("/ip4/10.0.0.1/tcp/1"), at("/ip4/10.0.0.2/tcp/1"));
    }
}

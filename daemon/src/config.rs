//! Command-line flags and environment, resolved into the daemon's configuration.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use libp2p::Multiaddr;

/// hearthd: keeps your peer-support group's shared life in sync with the other members'
/// devices, end-to-end encrypted, with no server.
#[derive(Debug, Parser)]
#[command(name = "hearthd", version)]
pub struct Args {
    /// Where hearthd keeps its encrypted store (env: HEARTH_DATA_DIR)
    /// [default: the XDG data dir, hearth/]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// The local API socket (env: HEARTH_SOCKET) [default:
    /// $XDG_RUNTIME_DIR/hearth/hearthd.sock, else hearthd.sock in the data dir]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Address to listen on for other members' daemons (repeatable)
    /// [default: /ip4/0.0.0.0/tcp/0]
    #[arg(long = "listen", value_name = "MULTIADDR")]
    pub listen: Vec<Multiaddr>,

    /// Do not announce or discover hearth daemons on the local network (mDNS)
    #[arg(long)]
    pub no_mdns: bool,

    /// Lock after this long without a client request, e.g. `30m` (needs a passphrase).
    #[arg(long, value_name = "DURATION", value_parser = parse_auto_lock)]
    pub auto_lock: Option<std::time::Duration>,
}

fn parse_auto_lock(text: &str) -> Result<std::time::Duration, String> {
    match hearth_protocol::duration::parse_duration(text)? {
        0 => Err("--auto-lock must be at least one second, e.g. `30m`".to_owned()),
        secs => Ok(std::time::Duration::from_secs(secs)),
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub mdns: bool,
    /// Lock after this long without a client request.
    pub auto_lock: Option<std::time::Duration>,
}

/// An environment variable as a path; set-but-empty counts as unset (as in the CLI).
fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl Args {
    /// Flags win over the environment, which wins over the defaults.
    pub fn resolve(self) -> anyhow::Result<Config> {
        let data_dir = match self.data_dir.or_else(|| env_path("HEARTH_DATA_DIR")) {
            Some(d) => d,
            None => dirs::data_dir()
                .context("no data directory is known for this user; pass --data-dir or set HEARTH_DATA_DIR")?
                .join("hearth"),
        };
        let runtime_dir = env_path("XDG_RUNTIME_DIR");
        let socket = self
            .socket
            .or_else(|| env_path("HEARTH_SOCKET"))
            .unwrap_or_else(|| {
                hearth_protocol::api::default_socket_path(runtime_dir.as_deref(), &data_dir)
            });
        let listen = if self.listen.is_empty() {
            vec!["/ip4/0.0.0.0/tcp/0".parse().expect("a constant multiaddr")]
        } else {
            self.listen
        };
        Ok(Config {
            data_dir,
            socket,
            listen,
            mdns: !self.no_mdns,
            auto_lock: self.auto_lock,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_listen_on_all_interfaces_with_mdns() {
        let args = Args::parse_from(["hearthd", "--data-dir", "/tmp/h", "--socket", "/tmp/h.sock"]);
        let c = args.resolve().unwrap();
        assert_eq!(
            c.listen,
            vec!["/ip4/0.0.0.0/tcp/0".parse::<Multiaddr>().unwrap()]
        );
        assert!(c.mdns);
        assert_eq!(c.socket, PathBuf::from("/tmp/h.sock"));
    }

    #[test]
    fn bad_listen_address_is_a_usage_error() {
        assert!(Args::try_parse_from(["hearthd", "--listen", "not-an-address"]).is_err());
    }
}

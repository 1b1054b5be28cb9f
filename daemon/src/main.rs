use clap::Parser;
use tracing_subscriber::EnvFilter;

/// What hearthd logs unless `HEARTH_LOG` says otherwise: its own lines at `info` (which
/// carry no address, peer, member or group id), and nothing of the crates it uses. Their
/// lines name addresses (libp2p's mDNS logs every peer it finds, with its IP address and
/// port; even its errors name this device's interfaces), and a stranger can make them
/// write warnings at will, which would leave a timeline of its visits.
pub const DEFAULT_LOG_FILTER: &str = "off,hearthd=info";

/// Every freed block is wiped, so what a locked daemon dropped is gone (see `wipe`).
#[global_allocator]
static ALLOCATOR: hearthd::wipe::WipeOnFree = hearthd::wipe::WipeOnFree;

fn main() -> std::process::ExitCode {
    // No core dumps, and no other process of this user may read our memory or attach a
    // debugger (as ssh-agent does): an unlocked daemon's memory holds every key.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        eprintln!(
            "hearthd: cannot keep other programs from reading its memory: {}",
            std::io::Error::last_os_error()
        );
    }
    let filter = std::env::var("HEARTH_LOG")
        .ok()
        .filter(|f| !f.trim().is_empty())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, never in a redirected log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match hearthd::config::Args::parse().resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hearthd: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hearthd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(hearthd::daemon::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hearthd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

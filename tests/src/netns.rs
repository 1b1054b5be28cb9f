//! A private test network of Linux network namespaces, for end-to-end tests that need
//! multicast (mDNS) between daemons, which does not work between daemons on 127.0.0.1.
//!
//! Layout of one [`TestNet`] with `n` members (`<id>` is `hth<pid>-<counter>`):
//!
//! ```text
//!  netns <id>-0          netns <id>-1                   netns <id>s ("switch")
//!  lo, veth0             lo, veth0                      lo, br0 (bridge, no address)
//!  10.X.Y.1/24           10.X.Y.2/24                    p0, p1, ... (bridge ports)
//!     veth0 <-------------------------------------------> p0
//!                           veth0 <---------------------> p1
//! ```
//!
//! Isolation from real interfaces: every interface is created inside a namespace made here
//! (the veth pairs are created in the switch namespace with their member end placed
//! directly into the member namespace), nothing is created in, moved into or routed through
//! the namespace the tests run in, no namespace gets a default route, and the switch
//! namespace's bridge has no address. The only L2 segment a member can reach is the bridge,
//! whose only ports are other members' veths. So traffic cannot reach a real interface, and
//! two `TestNet`s can never see each other (even if their subnets collided).
//!
//! Multicast: the veths and the bridge have the MULTICAST flag, the bridge has IGMP/MLD
//! snooping off (so it floods 224.0.0.251 to every port without waiting for joins), STP off
//! and no forward delay, and each member routes 224.0.0.0/4 out of its veth.
//!
//! Start daemons with [`TestNet::start_daemon`]: hearthd runs via `ip netns exec`, which
//! execs it, so the [`Daemon`]'s pid is hearthd's own (checked at start), and its Unix
//! socket, on the shared filesystem, is used from the test's namespace as usual.
//!
//! Drop order: declare the `TestNet` before the daemons started in it, so they are dropped
//! (killed) first. Dropping the `TestNet` kills whatever still runs in its namespaces and
//! deletes them (also on panic). Namespaces left behind by a test process that died
//! (SIGKILL, abort) are swept when the next `TestNet` is created.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, bail};

use crate::{Daemon, Launch, bin};

/// Every namespace this module makes starts with this, then the pid of the process that
/// made it and a `-`.
const PREFIX: &str = "hth";
/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Serializes namespace creation and sweeping between test processes (first use of
/// `ip netns add` turns /run/netns into a mount point, which is racy).
const LOCK_FILE: &str = "/run/hearth-testnet.lock";
/// Most members one net can have (addresses .1 to .250).
pub const MAX_MEMBERS: usize = 250;
/// The bridge, in the switch namespace.
const BRIDGE: &str = "br0";
/// A member's interface, in its own namespace.
const MEMBER_IF: &str = "veth0";

/// One private network: `n` member namespaces on a bridge in a switch namespace.
#[derive(Debug)]
pub struct TestNet {
    /// `hth<pid>-<counter>`: unique among live processes and within this process.
    id: String,
    /// The second and third octets of the net's 10.X.Y.0/24.
    subnet: [u8; 2],
    /// Member namespace names, by index.
    members: Vec<String>,
    /// Every namespace made so far (members and switch), deleted on drop.
    created: Vec<String>,
}

impl TestNet {
    /// Makes a net of `n` member namespaces (10.X.Y.1 ... 10.X.Y.n, /24), all on one bridge.
    ///
    /// `Ok(None)` (after printing why on stderr) when this environment cannot do it: not
    /// root, no `ip` (iproute2), or no network namespaces, bridges or veths. Errors for
    /// anything failing after that.
    pub fn new(n: usize) -> anyhow::Result<Option<TestNet>> {
        if n > MAX_MEMBERS {
            bail!("a TestNet has at most {MAX_MEMBERS} members, not {n}");
        }
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(skip("not running as root"));
        }
        match Command::new("ip").arg("-V").stdin(Stdio::null()).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Ok(skip(&format!(
                    "`ip -V` failed ({}): is iproute2 installed?",
                    out.status
                )));
            }
            Err(e) => return Ok(skip(&format!("cannot run `ip` (iproute2): {e}"))),
        }

        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let id = format!("{PREFIX}{pid}-{counter}");
        // 10.100.0.0 - 10.255.255.0: unique per instance within a process; across processes
        // it is spread by pid, and a collision would be harmless (separate bridges).
        let index = (pid.wrapping_mul(97).wrapping_add(counter)) % (156 * 256);
        let subnet = [100 + (index / 256) as u8, (index % 256) as u8];

        let _lock = lock();
        sweep_stale();

        let mut net = TestNet {
            id,
            subnet,
            members: Vec::new(),
            created: Vec::new(),
        };
        // The steps whose failure means "this environment cannot", rather than a bug.
        let switch = net.switch();
        if let Err(e) = net.add_namespace(&switch) {
            return Ok(skip(&format!("cannot create a network namespace: {e:#}")));
        }
        if let Err(e) = ip_in(
            &switch,
            &[
                "link",
                "add",
                BRIDGE,
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
                "mcast_snooping",
                "0",
            ],
        ) {
            return Ok(skip(&format!("cannot create a bridge: {e:#}")));
        }
        ip_in(&switch, &["link", "set", BRIDGE, "multicast", "on", "up"])?;
        ip_in(&switch, &["link", "set", "lo", "up"])?;

        for i in 0..n {
            let ns = format!("{}-{i}", net.id);
            net.add_namespace(&ns)?;
            let port = format!("p{i}");
            let made = ip_in(
                &switch,
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", MEMBER_IF, "netns", &ns,
                ],
            );
            if let Err(e) = made {
                if i == 0 {
                    return Ok(skip(&format!("cannot create a veth pair: {e:#}")));
                }
                return Err(e);
            }
            ip_in(&switch, &["link", "set", &port, "master", BRIDGE])?;
            ip_in(&switch, &["link", "set", &port, "multicast", "on", "up"])?;
            let addr = format!("{}/24", net.addr(i));
            ip_in(&ns, &["link", "set", "lo", "up"])?;
            ip_in(&ns, &["addr", "add", &addr, "dev", MEMBER_IF])?;
            ip_in(&ns, &["link", "set", MEMBER_IF, "multicast", "on", "up"])?;
            ip_in(&ns, &["route", "add", "224.0.0.0/4", "dev", MEMBER_IF])?;
            net.members.push(ns);
        }
        Ok(Some(net))
    }

    /// How many members the net has.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The name of member `i`'s namespace (for `ip netns exec`).
    pub fn namespace(&self, i: usize) -> &str {
        &self.members[i]
    }

    /// The name of the switch namespace, which holds the bridge.
    pub fn switch(&self) -> String {
        format!("{}s", self.id)
    }

    /// Member `i`'s address (10.X.Y.i+1).
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        assert!(i < MAX_MEMBERS, "no member {i}");
        Ipv4Addr::new(10, self.subnet[0], self.subnet[1], i as u8 + 1)
    }

    /// The net's subnet, `10.X.Y.0/24`.
    pub fn subnet(&self) -> String {
        format!("10.{}.{}.0/24", self.subnet[0], self.subnet[1])
    }

    /// Takes member `i` off the bridge: its veth stays up with its address, but nothing it
    /// sends reaches anyone (the switch end is then a lone port with no address, in a
    /// namespace that does not forward).
    pub fn detach(&self, i: usize) -> anyhow::Result<()> {
        ip_in(
            &self.switch(),
            &["link", "set", &format!("p{i}"), "nomaster"],
        )
    }

    /// Puts member `i` back on the bridge.
    pub fn attach(&self, i: usize) -> anyhow::Result<()> {
        ip_in(
            &self.switch(),
            &["link", "set", &format!("p{i}"), "master", BRIDGE],
        )
    }

    /// Runs `ip ARGS` in member `i`'s namespace.
    pub fn ip(&self, i: usize, args: &[&str]) -> anyhow::Result<()> {
        ip_in(&self.members[i], args)
    }

    /// How to launch hearthd in member `i`'s namespace: through `ip netns exec`, listening
    /// on the member's address (random port), mDNS on.
    pub fn launch(&self, i: usize) -> Launch {
        Launch {
            wrapper: ["ip", "netns", "exec", self.namespace(i)]
                .map(Into::into)
                .to_vec(),
            net_args: vec!["--listen".into(), format!("/ip4/{}/tcp/0", self.addr(i))],
            log_filter: crate::TEST_LOG_FILTER.to_owned(),
        }
    }

    /// Starts hearthd in member `i`'s namespace (see [`TestNet::launch`]) with `data_dir`,
    /// waits until its API answers, and checks that the daemon's pid is hearthd itself,
    /// running in that namespace (so stopping or killing the [`Daemon`] reaches hearthd).
    pub fn start_daemon(&self, i: usize, name: &str, data_dir: &Path) -> Daemon {
        let daemon = Daemon::start_with(name, data_dir, self.launch(i));
        self.check_in_namespace(i, &daemon);
        daemon
    }

    /// Panics unless `daemon`'s pid is a hearthd running in member `i`'s namespace.
    pub fn check_in_namespace(&self, i: usize, daemon: &Daemon) {
        let pid = daemon.pid().expect("the daemon is running");
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .unwrap_or_else(|e| panic!("{}: no /proc/{pid}/exe: {e}", daemon.name));
        let hearthd = std::fs::canonicalize(bin("hearthd")).expect("the hearthd binary");
        assert_eq!(
            exe, hearthd,
            "{}: pid {pid} is not hearthd (is the wrapper still in between?)",
            daemon.name
        );
        let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .unwrap_or_else(|e| panic!("{}: network namespace of pid {pid}: {e}", daemon.name));
        let ours = std::fs::metadata(Path::new(NETNS_DIR).join(self.namespace(i)))
            .expect("the member's namespace file");
        assert!(
            theirs.dev() == ours.dev() && theirs.ino() == ours.ino(),
            "{}: pid {pid} is not in namespace {}",
            daemon.name,
            self.namespace(i)
        );
    }

    fn add_namespace(&mut self, ns: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", ns])?;
        self.created.push(ns.to_owned());
        Ok(())
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Members first, the switch (created first) last.
        for ns in self.created.iter().rev() {
            remove_namespace(ns);
        }
    }
}

/// Prints why the test net cannot be made here, for tests that then skip.
fn skip(reason: &str) -> Option<TestNet> {
    eprintln!("TestNet unavailable, skipping: {reason}");
    None
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip`")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip -n NS ARGS`.
fn ip_in(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

/// Kills whatever still runs in `ns` (only ever our own test daemons) and deletes it; its
/// interfaces go with it (a veth pair dies with either end, the bridge with the switch).
fn remove_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip")
        .args(["netns", "pids", ns])
        .stdin(Stdio::null())
        .output()
    {
        for pid in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2) on a process inside a namespace this module made.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    if let Err(e) = ip(&["netns", "del", ns]) {
        eprintln!("TestNet: could not delete namespace {ns}: {e:#}");
    }
}

/// Deletes namespaces with our prefix whose creating process is gone.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("TestNet: removing stale namespace {name} (process {pid} is gone)");
            remove_namespace(&name);
        }
    }
}

/// An exclusive flock on [`LOCK_FILE`], released when the file is dropped (best effort:
/// no lock if the file cannot be opened).
fn lock() -> Option<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .ok()?;
    // SAFETY: flock(2) on a file descriptor we own.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    Some(file)
}

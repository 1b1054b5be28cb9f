//! mDNS between daemons in separate network namespaces on a private bridge: they find and
//! connect to each other with no `peer add`, and a daemon whose namespace is off the bridge
//! finds nobody until it is put on it. Daemons that share no group are dropped within
//! seconds and not dialled again, while members stay connected.
//!
//! Needs root and iproute2; skips (with the reason printed) where the test network cannot
//! be made.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use hearth_tests::Daemon;
use hearth_tests::netns::TestNet;

/// Generous: discovery normally takes well under a second.
const DEADLINE: Duration = Duration::from_secs(30);
/// How long a dropped stranger must stay apart: several of mDNS's probes and answers.
const APART_FOR: Duration = Duration::from_secs(15);
/// How long the off-bridge daemon must keep seeing nobody: its first three mDNS queries go
/// out within 1.5 s of its start (libp2p-mdns probes at 0, 0.5, 1.5, 3.5 s ...).
const ALONE_FOR: Duration = Duration::from_secs(2);

/// The IPv4 addresses of the peers `d` lists as connected (`hearth peer list --json`).
fn peer_ips(d: &Daemon) -> Option<Vec<Ipv4Addr>> {
    let peers = d.try_json(&["peer", "list"]).ok()?;
    let mut ips = Vec::new();
    for peer in peers.as_array()? {
        // A peer may be listed with several addresses (one per connection), all its own.
        let mut found: Vec<Ipv4Addr> = peer["addrs"]
            .as_array()?
            .iter()
            .filter_map(|a| {
                a.as_str()?
                    .strip_prefix("/ip4/")?
                    .split('/')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        found.sort();
        found.dedup();
        ips.extend(found);
    }
    ips.sort();
    Some(ips)
}

/// Waits until each `(daemon, expected)` lists the peers at `expected`: at least those if
/// `exactly` is false, exactly those (one connected peer per address) if it is true.
fn wait_for_peers(what: &str, exactly: bool, want: &[(&Daemon, Vec<Ipv4Addr>)]) {
    let start = Instant::now();
    loop {
        let seen: Vec<_> = want.iter().map(|(d, _)| peer_ips(d)).collect();
        let fits = |expected: &Vec<Ipv4Addr>, seen: &Option<Vec<Ipv4Addr>>| match seen {
            Some(seen) if exactly => seen == expected,
            Some(seen) => expected.iter().all(|ip| seen.contains(ip)),
            None => false,
        };
        if want.iter().zip(&seen).all(|((_, e), s)| fits(e, s)) {
            return;
        }
        if start.elapsed() > DEADLINE {
            let mut report = String::new();
            for ((d, expected), seen) in want.iter().zip(&seen) {
                report += &format!(
                    "\n{}: expected {expected:?}, sees {seen:?}; its log:\n{}",
                    d.name,
                    d.log()
                );
            }
            panic!("timed out after {DEADLINE:?} waiting for {what}{report}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Names of the network interfaces in the test's own namespace.
fn own_links() -> BTreeSet<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("run ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().to_owned())
        .collect()
}

#[test]
fn daemons_on_the_bridge_find_each_other_over_mdns_and_no_one_else() {
    let links_before = own_links();
    let Some(net) = TestNet::new(3).expect("making the test network") else {
        eprintln!("SKIPPED netns_mdns: the test network cannot be made here (see above)");
        return;
    };
    let added: Vec<_> = own_links().difference(&links_before).cloned().collect();
    assert!(
        added.is_empty(),
        "the test network added interfaces to the test's own namespace: {added:?}"
    );
    // Member 2 is off the bridge to begin with.
    net.detach(2).expect("take member 2 off the bridge");

    let dir = tempfile::tempdir().expect("temp dir");
    let a = net.start_daemon(0, "a", &dir.path().join("a"));
    let b = net.start_daemon(1, "b", &dir.path().join("b"));
    let mut c = net.start_daemon(2, "c", &dir.path().join("c"));
    let c_started = Instant::now();
    let (ip_a, ip_b, ip_c) = (net.addr(0), net.addr(1), net.addr(2));

    // No `peer add` anywhere: only mDNS can bring a and b together.
    wait_for_peers(
        "a and b to find each other over mDNS",
        false,
        &[(&a, vec![ip_b]), (&b, vec![ip_a])],
    );
    eprintln!(
        "a and b connected {:?} after c started",
        c_started.elapsed()
    );

    // c, off the bridge, has had several rounds of queries (and a's and b's multicast
    // answers to each other) by now, and must have seen none of it.
    loop {
        assert_eq!(
            peer_ips(&c),
            Some(vec![]),
            "c, off the bridge, found a peer"
        );
        assert_eq!(peer_ips(&a), Some(vec![ip_b]), "a sees someone besides b");
        assert_eq!(peer_ips(&b), Some(vec![ip_a]), "b sees someone besides a");
        if c_started.elapsed() >= ALONE_FOR {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // a and b become fellow members (b dials the address in a's invite), so they stay
    // connected; c shares no group with anyone.
    let group = a.create_group("Circle");
    a.invite(&b, &group);

    // The same daemon, its namespace now on the bridge, finds both (a restart starts its
    // mDNS queries afresh instead of waiting for its next backed-off one).
    net.attach(2).expect("put member 2 on the bridge");
    c.stop();
    c.restart();
    net.check_in_namespace(2, &c);
    let c_restarted = Instant::now();
    wait_for_peers(
        "all three to find each other once c is on the bridge",
        true,
        &[
            (&a, vec![ip_b, ip_c]),
            (&b, vec![ip_a, ip_c]),
            (&c, vec![ip_a, ip_b]),
        ],
    );
    eprintln!(
        "all three connected {:?} after c restarted on the bridge",
        c_restarted.elapsed()
    );

    // c shares no group: it is dropped on both sides and, though mDNS keeps reporting it,
    // not dialled again; a and b stay connected.
    wait_for_peers(
        "c to be dropped as a stranger",
        true,
        &[(&a, vec![ip_b]), (&b, vec![ip_a]), (&c, vec![])],
    );
    let dropped = Instant::now();
    while dropped.elapsed() < APART_FOR {
        assert_eq!(peer_ips(&c), Some(vec![]), "c was dialled again");
        assert_eq!(peer_ips(&a), Some(vec![ip_b]), "a sees someone besides b");
        assert_eq!(peer_ips(&b), Some(vec![ip_a]), "b sees someone besides a");
        std::thread::sleep(Duration::from_millis(200));
    }
}

//! Concurrency failures other group-key systems have hit, kept as regression tests: two
//! removals at once must not wedge the group, a member admitted while someone is removed
//! must still get the new key, and a person removed while being let back in (as a new
//! membership) ends up exactly once in the group.

use hearth_protocol::api::Role;
use rand_core::OsRng;

mod common;
use common::*;

/// What every daemon does after it takes in envelopes (`Node::maintain`): forward keys it
/// is expected to, and, as the most senior member, start an epoch someone departed still
/// holds. Then everyone syncs; repeated until nothing changes.
fn settle(devices: &mut [Device]) {
    for _ in 0..4 {
        for d in devices.iter_mut() {
            let me = d.id();
            if !d.group.roster().is_member(&me) {
                continue;
            }
            d.group.forward_keys(&mut OsRng).unwrap();
            let senior = d
                .group
                .roster()
                .members()
                .min_by_key(|(_, m)| m.rank)
                .is_some_and(|(id, _)| *id == me);
            if senior {
                d.group.rotate_if_needed(&mut OsRng).unwrap();
            }
        }
        sync_all(devices);
    }
}

/// The group is alive: every device holding the same envelopes shows the same members,
/// each current member holds the current epoch's key and writes, and every other current
/// member reads what it wrote.
fn assert_not_wedged(devices: &mut [Device]) {
    let members: Vec<_> = devices
        .iter()
        .filter(|d| d.group.roster().is_member(&d.id()))
        .map(|d| d.id())
        .collect();
    for d in devices.iter() {
        if members.contains(&d.id()) {
            let roster: Vec<_> = d.group.roster().members().map(|(id, _)| *id).collect();
            let mut expected = members.clone();
            expected.sort();
            assert_eq!(roster, expected, "rosters differ");
            let current = d.group.roster().current_epoch().epoch;
            assert!(
                d.group.readable_epochs().contains(&current),
                "a member lacks the current key"
            );
        }
    }
    for (i, d) in devices.iter_mut().enumerate() {
        if members.contains(&d.id()) {
            d.group
                .add_agreement(&format!("alive {i}"), 0, &mut OsRng)
                .unwrap();
        }
    }
    sync_all(devices);
    for d in devices.iter() {
        if members.contains(&d.id()) {
            let shown = texts(d);
            for (i, other) in devices.iter().enumerate() {
                if members.contains(&other.id()) {
                    assert!(shown.contains(&format!("alive {i}")), "{shown:?}");
                }
            }
        }
    }
}

/// Two facilitators each remove a different member at the same time, each unaware of the
/// other's removal: both removals stand, and the group goes on.
#[test]
fn two_concurrent_removals_do_not_wedge_the_group() {
    let mut a = creator();
    let f = admit(&mut a, Role::Facilitator);
    let mut devices = vec![a, f];
    for _ in 0..3 {
        let m = admit(&mut devices[0], Role::Member);
        devices.push(m);
    }
    sync_all(&mut devices);
    let (x, y) = (devices[2].id(), devices[3].id());
    devices[0].group.remove_member(x, &mut OsRng).unwrap();
    devices[1].group.remove_member(y, &mut OsRng).unwrap();
    settle(&mut devices);
    for d in &devices {
        if d.id() != x && d.id() != y {
            assert!(!d.group.roster().is_member(&x) && !d.group.roster().is_member(&y));
        }
    }
    assert_not_wedged(&mut devices);
}

/// The same member removed by two facilitators at once: one epoch or two, the group
/// settles on one membership and goes on.
#[test]
fn two_concurrent_removals_of_one_member_do_not_wedge_the_group() {
    let mut a = creator();
    let f = admit(&mut a, Role::Facilitator);
    let mut devices = vec![a, f];
    for _ in 0..2 {
        let m = admit(&mut devices[0], Role::Member);
        devices.push(m);
    }
    sync_all(&mut devices);
    let x = devices[2].id();
    devices[0].group.remove_member(x, &mut OsRng).unwrap();
    devices[1].group.remove_member(x, &mut OsRng).unwrap();
    settle(&mut devices);
    assert!(!devices[0].group.roster().is_member(&x));
    assert_not_wedged(&mut devices);
}

/// One facilitator admits a newcomer while another removes a member, neither aware of the
/// other: the newcomer is a member, the removed one is not, and the newcomer holds the key
/// of the epoch the removal started (it is forwarded), so it reads what follows.
#[test]
fn a_member_admitted_during_a_removal_gets_the_new_key() {
    let mut a = creator();
    let f = admit(&mut a, Role::Facilitator);
    let mut devices = vec![a, f];
    let x = admit(&mut devices[0], Role::Member);
    devices.push(x);
    sync_all(&mut devices);
    let x_id = devices[2].id();
    let removal = devices[0].group.remove_member(x_id, &mut OsRng).unwrap();
    let newcomer = admit(&mut devices[1], Role::Member);
    let n_id = newcomer.id();
    devices.push(newcomer);
    settle(&mut devices);
    for d in devices.iter().filter(|d| d.id() != x_id) {
        assert!(d.group.roster().is_member(&n_id));
        assert!(!d.group.roster().is_member(&x_id));
    }
    let removal_epoch = removal.own.header().epoch;
    let n = devices.iter().find(|d| d.id() == n_id).unwrap();
    assert!(
        n.group.readable_epochs().iter().any(|e| *e > removal_epoch),
        "the newcomer never got a key from after the removal"
    );
    assert_not_wedged(&mut devices);
}

/// A person is removed by one facilitator while another, unaware, lets them back in as a
/// new membership (a new identity, as every invite makes): the old membership stays
/// removed, the new one is a member, and the old one reads nothing written after.
#[test]
fn a_removal_concurrent_with_a_readmission_leaves_one_membership() {
    let mut a = creator();
    let f = admit(&mut a, Role::Facilitator);
    let mut devices = vec![a, f];
    let p = admit(&mut devices[0], Role::Member);
    devices.push(p);
    sync_all(&mut devices);
    let old = devices[2].id();
    devices[0].group.remove_member(old, &mut OsRng).unwrap();
    let again = admit(&mut devices[1], Role::Member);
    let new = again.id();
    let mut old_device = devices.remove(2);
    devices.push(again);
    settle(&mut devices);
    for d in &devices {
        assert!(d.group.roster().is_member(&new));
        assert!(!d.group.roster().is_member(&old));
        assert!(d.group.roster().departed().contains_key(&old));
    }
    assert_not_wedged(&mut devices);
    // The old membership's device, given everything, reads none of it.
    let current = devices[0].group.roster().current_epoch().epoch;
    give(&devices[0], &mut old_device);
    assert!(!old_device.group.readable_epochs().contains(&current));
    assert!(!texts(&old_device).iter().any(|t| t.starts_with("alive")));
}

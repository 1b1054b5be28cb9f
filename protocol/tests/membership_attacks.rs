//! Attacks on membership resolution by hostile members (and removed ones), found by a
//! review and kept as regression tests: each scenario is built as the attacker would build
//! it, and the test asserts that it fails.

use std::collections::BTreeSet;

use hearth_protocol::api::Role;
use hearth_protocol::crypto::SecretKey;
use hearth_protocol::envelope::{Body, Envelope, Header, ZERO_HASH};
use hearth_protocol::ids::MemberId;
use hearth_protocol::lockbox::Lockbox;
use hearth_protocol::membership::{Action, RosterOp, Rotation, key_check};
use rand_core::OsRng;

mod common;
use common::*;

/// A member writes an operation naming a hash nobody has. Honest operations name only
/// operations that took effect, so removal and admission still work, and a joiner gets
/// only the key its own admission started.
#[test]
fn a_dangling_dependency_cannot_freeze_membership_or_leak_an_old_key() {
    let mut a = creator();
    let m = admit(&mut a, Role::Member);
    let mut devices = vec![a, m];
    sync_all(&mut devices);
    // Something confidential written before anyone else joins.
    devices[0]
        .group
        .add_agreement("written before the joiner came", 0, &mut OsRng)
        .unwrap();
    sync_all(&mut devices);
    let epoch_before = devices[0].group.current_epoch().0;

    // The hostile member writes a rename naming a hash nobody holds.
    let heads = devices[1].group.membership().heads();
    let mut deps = heads;
    deps.push([0xAB; 32]);
    forge_roster(
        &mut devices[1],
        RosterOp {
            deps,
            action: Action::Rename { name: "x".into() },
        },
        None,
    );
    sync_all(&mut devices);
    let m_id = devices[1].id();

    // The facilitator removes the hostile member: honest operations never name the
    // stuck one, so the removal takes effect.
    devices[0].group.remove_member(m_id, &mut OsRng).unwrap();
    sync_all(&mut devices);
    assert!(!devices[0].group.roster().is_member(&m_id));

    // An admission takes effect, and the joiner holds only the epoch it started.
    let j = admit(&mut devices[0], Role::Member);
    assert!(j.group.roster().is_member(&j.id()));
    assert_ne!(devices[0].group.current_epoch().0, epoch_before);
    assert!(!j.group.readable_epochs().contains(&epoch_before));
    // (The charter as it stands reaches the joiner in the snapshot; the envelopes that
    // wrote it stay sealed to it.)
    let mut j = j;
    give(&devices[0], &mut j);
    assert!(!j.group.readable_epochs().contains(&epoch_before));
}

/// A member rotates to a key only it holds. A rotation that leaves out members its author
/// knew of does not take effect, so nobody is locked out and the member can be removed.
#[test]
fn a_rotation_leaving_members_out_cannot_lock_them_out() {
    let mut a = creator();
    let m = admit(&mut a, Role::Member);
    let mut devices = vec![a, m];
    let b = admit(&mut devices[0], Role::Member);
    devices.push(b);
    sync_all(&mut devices);

    let mkey = SecretKey::random(&mut OsRng);
    let epoch = devices[1].group.membership().highest_epoch() + 1;
    let me = devices[1].keys.public();
    let lockbox = Lockbox::seal(
        &devices[1].keys,
        &me,
        devices[1].group.id(),
        epoch,
        &mkey,
        &mut OsRng,
    );
    let deps = devices[1].group.membership().heads();
    let gid = devices[1].group.id();
    let selfish = forge_roster(
        &mut devices[1],
        RosterOp {
            deps,
            action: Action::Rotate {
                rotation: Rotation {
                    epoch,
                    lockboxes: vec![lockbox],
                    check: key_check(&mkey, &gid, epoch),
                },
            },
        },
        None,
    );
    sync_all(&mut devices);
    let m_id = devices[1].id();
    // A rotation that leaves out members its author knew of does not take effect.
    assert!(!devices[0].group.roster().is_effective(&selfish.hash()));
    devices[0]
        .group
        .add_agreement("hello", 0, &mut OsRng)
        .unwrap();
    devices[0].group.remove_member(m_id, &mut OsRng).unwrap();
    devices[2].group.rotate(&mut OsRng).unwrap();
    sync_all(&mut devices);
    assert!(!devices[2].group.roster().is_member(&m_id));
}

/// X removes Y while A removes X. X's removal does not stand, and it leaves no trace: Y is
/// a member in full and can leave.
#[test]
fn an_overruled_removal_leaves_no_cut_behind() {
    let mut a = creator();
    let x = admit(&mut a, Role::Facilitator); // rank 1
    let mut devices = vec![a, x];
    let w = admit(&mut devices[0], Role::Member); // rank 2
    devices.push(w);
    let y = admit(&mut devices[0], Role::Member); // rank 3
    devices.push(y);
    sync_all(&mut devices);
    let (x_id, y_id) = (devices[1].id(), devices[3].id());

    // X removes Y; concurrently W renames; A sees W's rename (not X's removal) and removes X.
    devices[1].group.remove_member(y_id, &mut OsRng).unwrap();
    devices[2].group.rename("w", &mut OsRng).unwrap();
    let (a_dev, rest) = devices.split_at_mut(1);
    give(&rest[1], &mut a_dev[0]);
    devices[0].group.remove_member(x_id, &mut OsRng).unwrap();
    sync_all(&mut devices);

    for d in &devices {
        assert!(!d.group.roster().is_member(&x_id));
        assert!(d.group.roster().is_member(&y_id), "Y was removed after all");
    }
    // Y is a member in full: its leaving takes effect everywhere.
    devices[3].group.leave(&mut OsRng).unwrap();
    sync_all(&mut devices);
    // (X, removed, can read nothing after its removal, so it is left out.)
    for d in devices.iter().filter(|d| d.id() != x_id) {
        assert!(!d.group.roster().is_member(&y_id));
    }
    assert!(devices[0].group.roster().needs_rotation());
    devices[0].group.rotate(&mut OsRng).unwrap();
    assert!(
        !devices[0]
            .group
            .roster()
            .current_epoch()
            .holders
            .contains(&y_id)
    );
}

/// A member floods operations naming nothing, hoping to push an earlier rotation out of
/// the next add's deps, so that its key would be forwarded to the newcomer.
#[test]
fn a_flood_of_operations_cannot_get_a_pre_admission_key_forwarded() {
    let mut a = creator();
    let m = admit(&mut a, Role::Member);
    let mut devices = vec![a, m];
    let b = admit(&mut devices[0], Role::Member);
    devices.push(b);
    sync_all(&mut devices);

    // B starts an epoch and writes under it.
    let q = devices[2].group.rotate(&mut OsRng).unwrap().own.hash();
    devices[2]
        .group
        .add_agreement("said before the joiner came", 0, &mut OsRng)
        .unwrap();
    sync_all(&mut devices);

    // M writes renames naming nothing until at least 64 of its ops sort before Q.
    let mut below = 0;
    while below < 70 {
        let env = forge_roster(
            &mut devices[1],
            RosterOp {
                deps: vec![],
                action: Action::Rename { name: "m".into() },
            },
            None,
        );
        if env.hash() < q {
            below += 1;
        }
    }
    sync_all(&mut devices);
    // One head per author: a flood of one member's operations cannot push Q out.
    assert!(devices[0].group.membership().heads().contains(&q));

    let q_epoch = devices[0].group.roster().rotations()[&q].epoch;
    let j = admit(&mut devices[0], Role::Member);
    assert!(!j.group.readable_epochs().contains(&q_epoch));
    let j_id = j.id();
    devices.push(j);
    assert!(
        devices[0]
            .group
            .roster()
            .forwards_due()
            .iter()
            .all(|f| !(f.member == j_id && f.rotation == q))
    );
    let _ = devices[0].group.forward_keys(&mut OsRng).unwrap();
    sync_all(&mut devices);
    let j = devices.last().unwrap();
    assert!(!j.group.readable_epochs().contains(&q_epoch));
}

/// A removed member keeps writing rotations (at the highest epoch number) for everyone.
/// A device takes at most a few keys from an author past its cut, and uses keys only of
/// epochs that took effect.
#[test]
fn a_removed_member_cannot_hand_out_keys() {
    let mut a = creator();
    let r = admit(&mut a, Role::Member);
    let mut devices = vec![a, r];
    let b = admit(&mut devices[0], Role::Member);
    devices.push(b);
    sync_all(&mut devices);
    let r_id = devices[1].id();
    devices[0].group.remove_member(r_id, &mut OsRng).unwrap();
    // R does not learn of it (or ignores it) and keeps an old key.
    let (old_epoch, old_key) = {
        let (e, k) = devices[1].group.current_epoch();
        (e, k.unwrap().clone())
    };
    let (a_dev, rest) = devices.split_at_mut(1);
    give(&a_dev[0], &mut rest[1]);

    let recipients: Vec<_> = devices.iter().map(|d| d.keys.public()).collect();
    let group_id = devices[1].group.id();
    let mut bogus = BTreeSet::new();
    for _ in 0..12 {
        let k = SecretKey::random(&mut OsRng);
        let lockboxes = recipients
            .iter()
            .map(|to| {
                Lockbox::seal(
                    &devices[1].keys,
                    to,
                    devices[1].group.id(),
                    u32::MAX,
                    &k,
                    &mut OsRng,
                )
            })
            .collect();
        forge_roster(
            &mut devices[1],
            RosterOp {
                deps: vec![],
                action: Action::Rotate {
                    rotation: Rotation {
                        epoch: u32::MAX,
                        lockboxes,
                        check: key_check(&k, &group_id, u32::MAX),
                    },
                },
            },
            Some((old_epoch, old_key.clone())),
        );
        bogus.insert(*k.expose());
    }
    // Only R's own envelopes go to A and B (what a receive-only session takes).
    let r_log: Vec<Envelope> = everything(&devices[1])
        .into_iter()
        .filter(|e| e.header().author == r_id)
        .collect();
    devices[0].group.ingest(r_log.clone());
    devices[2].group.ingest(r_log);
    assert!(!devices[0].group.roster().is_member(&r_id));
    // A removed member can hand a device only a few keys, and they are never written under.
    for d in [&devices[0], &devices[2]] {
        let taken = d
            .group
            .epoch_keys()
            .filter(|(_, k)| bogus.contains(k.expose()))
            .count();
        assert!(
            taken <= hearth_protocol::group::MAX_UNCOUNTED_GRANTS,
            "{taken}"
        );
    }
    // Honest epochs keep their ordinary numbers.
    devices[0].group.rotate(&mut OsRng).unwrap();
    assert!(devices[0].group.current_epoch().0 < 100);
}

/// A member writes two changes with the same automerge sequence number, one under the
/// epoch a joiner cannot read and one under the next. The joiner cannot check the second
/// against the first, so it holds it back rather than show something others refused.
#[test]
fn an_automerge_fork_across_an_epoch_cannot_split_a_joiners_document() {
    use hearth_protocol::doc::{GroupDocument, agreement_id};
    let mut a = creator();
    let m = admit(&mut a, Role::Member);
    let mut devices = vec![a, m];
    sync_all(&mut devices);
    // The epoch M holds now: X, admitted next, never gets its content key.
    let (old_epoch, old_key) = {
        let (e, k) = devices[1].group.current_epoch();
        (e, k.unwrap().clone())
    };
    let x = admit(&mut devices[0], Role::Member);
    devices.push(x);
    sync_all(&mut devices);
    let (new_epoch, new_key) = {
        let (e, k) = devices[1].group.current_epoch();
        (e, k.unwrap().clone())
    };
    assert_ne!(old_epoch, new_epoch);

    // M makes two alternative changes with the same automerge seq.
    let actor = devices[1].id().actor_id();
    let saved = devices[1].group.snapshot();
    let id = |n: u8| agreement_id(&devices[1].id(), [n; 8]);
    let c1 = GroupDocument::load(&saved, actor.clone())
        .unwrap()
        .insert_agreement(&id(1), "seen by the old members", 0)
        .unwrap();
    let c2 = GroupDocument::load(&saved, actor)
        .unwrap()
        .insert_agreement(&id(2), "seen by the joiner", 0)
        .unwrap();
    let seal = |d: &mut Device, changes: Vec<automerge::Change>, epoch: u32, key: &SecretKey| {
        let prior = d.group.head(&d.id()).copied();
        let header = Header {
            version: 1,
            group_id: d.group.id(),
            epoch,
            author: d.id(),
            seq: prior.map_or(1, |h| h.seq + 1),
            prev: prior.map_or(ZERO_HASH, |h| h.hash),
            change_head: changes.last().unwrap().hash().0,
        };
        let body = Body::Changes {
            changes: changes.iter().map(|c| c.raw_bytes().to_vec()).collect(),
        };
        let env = Envelope::seal(&d.keys, header, &body, key, &mut OsRng);
        d.group.ingest(vec![env]);
    };
    seal(&mut devices[1], c1, old_epoch, &old_key);
    seal(&mut devices[1], c2, new_epoch, &new_key);
    sync_all(&mut devices);
    assert_eq!(
        devices[0].group.version_vector(),
        devices[2].group.version_vector()
    );
    let (ta, tx) = (texts(&devices[0]), texts(&devices[2]));
    assert!(ta.contains("seen by the old members") && !ta.contains("seen by the joiner"));
    // The joiner cannot tell what came before "two", so it waits rather than differ.
    assert!(!tx.contains("seen by the joiner"), "{tx:?}");
}

/// A removed facilitator writes a removal of its remover naming only its own add as
/// seen (with `upto` either what it really saw or zero).
fn backdating(upto_zero: bool) -> (Vec<Device>, MemberId, MemberId, SecretKey) {
    let mut a = creator();
    let x = admit(&mut a, Role::Facilitator); // rank 1
    let mut devices = vec![a, x];
    let j = admit(&mut devices[0], Role::Member); // rank 2
    devices.push(j);
    sync_all(&mut devices);
    let (a_id, x_id) = (devices[0].id(), devices[1].id());
    let x_add = devices[0]
        .group
        .roster()
        .get(&x_id)
        .unwrap()
        .added_by_op
        .unwrap();

    // An ordinary junior act, then A removes X; everyone (X included) sees it.
    devices[2].group.rename("jo", &mut OsRng).unwrap();
    sync_all(&mut devices);
    let a_seen = devices[1].group.head(&a_id).unwrap().seq;
    devices[0].group.remove_member(x_id, &mut OsRng).unwrap();
    sync_all(&mut devices);
    for d in &devices {
        assert!(!d.group.roster().is_member(&x_id));
    }

    // Later, X writes "Remove A" claiming to have seen nothing but its own add, with a
    // fresh key for itself and J (sealed under an old key everyone still has).
    let old = devices[1]
        .group
        .epoch_keys()
        .next()
        .map(|(e, k)| (e, k.clone()))
        .unwrap();
    let k = SecretKey::random(&mut OsRng);
    let epoch = devices[1].group.membership().highest_epoch() + 1;
    let gid = devices[1].group.id();
    let lockboxes = [devices[1].keys.public(), devices[2].keys.public()]
        .iter()
        .map(|to| Lockbox::seal(&devices[1].keys, to, gid, epoch, &k, &mut OsRng))
        .collect();
    forge_roster(
        &mut devices[1],
        RosterOp {
            deps: vec![x_add],
            action: Action::Remove {
                member: a_id,
                upto: if upto_zero { 0 } else { a_seen },
                rotation: Rotation {
                    epoch,
                    lockboxes,
                    check: key_check(&k, &gid, epoch),
                },
            },
        },
        Some(old),
    );
    // Only X's own log travels (what a receive-only session accepts from it).
    let x_log: Vec<Envelope> = everything(&devices[1])
        .into_iter()
        .filter(|e| e.header().author == x_id)
        .collect();
    devices[0].group.ingest(x_log.clone());
    devices[2].group.ingest(x_log);
    (devices, a_id, x_id, k)
}

#[test]
fn a_removed_facilitator_cannot_come_back_by_backdating() {
    let (mut devices, a_id, x_id, k) = backdating(false);
    for d in &devices {
        assert!(!d.group.roster().is_member(&x_id));
        assert!(d.group.roster().is_member(&a_id));
    }
    assert_ne!(
        devices[0].group.current_epoch().1.map(|c| *c.expose()),
        Some(*k.expose())
    );
    devices[0].group.add_agreement("hi", 0, &mut OsRng).unwrap();
}

#[test]
fn a_removed_facilitator_cannot_wipe_the_membership() {
    let (devices, a_id, x_id, _) = backdating(true);
    let j_id = devices[2].id();
    for d in &devices {
        let r = d.group.roster();
        assert!(r.is_member(&a_id) && r.is_member(&j_id));
        assert!(!r.is_member(&x_id));
    }
}

/// How long one device takes to take in a flood of membership operations (run with
/// `--ignored --nocapture`; a figure, not a check).
#[test]
#[ignore]
fn cost_of_a_flood_of_membership_operations() {
    for n in [500usize, 1000, 2000] {
        let mut a = creator();
        let m = admit(&mut a, Role::Member);
        let mut devices = vec![a, m];
        sync_all(&mut devices);
        for _ in 0..n {
            let deps = devices[1].group.membership().heads();
            forge_roster(
                &mut devices[1],
                RosterOp {
                    deps,
                    action: Action::Rename { name: "m".into() },
                },
                None,
            );
        }
        let all = everything(&devices[1]);
        let fresh = admit(&mut devices[0], Role::Member);
        let mut g = fresh.group;
        let t = std::time::Instant::now();
        g.ingest(all);
        eprintln!(
            "{n} roster ops: ingest on one device took {:?}",
            t.elapsed()
        );
    }
}

/// A co-facilitator removes the creator claiming to have seen none of its log.
#[test]
fn a_co_facilitator_cannot_brick_the_group_with_upto_zero() {
    let mut a = creator();
    let x = admit(&mut a, Role::Facilitator);
    let mut devices = vec![a, x];
    let j = admit(&mut devices[0], Role::Member);
    devices.push(j);
    sync_all(&mut devices);
    let a_id = devices[0].id();
    let k = SecretKey::random(&mut OsRng);
    let epoch = devices[1].group.membership().highest_epoch() + 1;
    let gid = devices[1].group.id();
    let lockboxes = [devices[1].keys.public(), devices[2].keys.public()]
        .iter()
        .map(|to| Lockbox::seal(&devices[1].keys, to, gid, epoch, &k, &mut OsRng))
        .collect();
    let deps = devices[1].group.membership().heads();
    forge_roster(
        &mut devices[1],
        RosterOp {
            deps,
            action: Action::Remove {
                member: a_id,
                upto: 0,
                rotation: Rotation {
                    epoch,
                    lockboxes,
                    check: key_check(&k, &gid, epoch),
                },
            },
        },
        None,
    );
    sync_all(&mut devices);
    // A removal claiming to have seen less of the creator than it depends on is void.
    for d in &devices {
        let r = d.group.roster();
        assert_eq!(r.len(), 3);
        assert!(r.is_member(&a_id));
    }
    let j_id = devices[2].id();
    devices[0].group.remove_member(j_id, &mut OsRng).unwrap();
    assert!(!devices[0].group.roster().is_member(&j_id));
}

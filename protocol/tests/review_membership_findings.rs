//! REVIEW TESTS (added by the membership review; not part of the project's suite).
//! Each test demonstrates a finding of the review: it asserts the *buggy* behaviour, so a
//! passing test means the bug is present. Delete this file once the findings are fixed.
//! Copy kept at /tmp/review_tests/review_membership_findings.rs.

use std::collections::BTreeSet;

use hearth_protocol::api::Role;
use hearth_protocol::crypto::SecretKey;
use hearth_protocol::envelope::{Body, Envelope, Header, ZERO_HASH};
use hearth_protocol::group::{Access, Group, GroupError, KeyGrant, VersionVector};
use hearth_protocol::identity::DeviceKeys;
use hearth_protocol::ids::MemberId;
use hearth_protocol::lockbox::Lockbox;
use hearth_protocol::membership::{Action, RosterOp, Rotation};
use rand_core::OsRng;

struct Device {
    keys: DeviceKeys,
    group: Group,
}

impl Device {
    fn id(&self) -> MemberId {
        self.keys.member_id()
    }
}

fn creator() -> Device {
    let keys = DeviceKeys::generate(&mut OsRng);
    let (group, _, _) = Group::create(&keys, "Circle", "Support", &mut OsRng).unwrap();
    Device { keys, group }
}

fn everything(d: &Device) -> Vec<Envelope> {
    d.group
        .missing_for(&VersionVector::new(), usize::MAX, usize::MAX)
}

/// What the daemon's `admit` hands a joiner: the *current* epoch's key after the add, the
/// roster keys of every other epoch, and the snapshot.
fn admit(by: &mut Device, role: Role) -> Device {
    let keys = DeviceKeys::generate(&mut OsRng);
    let written = by
        .group
        .add_member(keys.public(), role, "new", 0, &mut OsRng)
        .unwrap();
    let (epoch, key) = by.group.current_epoch();
    let mut grants = vec![KeyGrant {
        epoch,
        rotation: Some(written.own.hash()),
        access: Access::Full(key.unwrap().clone()),
    }];
    grants.extend(
        by.group
            .roster_history()
            .into_iter()
            .filter(|(e, r, _)| !(*e == epoch && *r == Some(written.own.hash())))
            .map(|(e, r, k)| KeyGrant {
                epoch: e,
                rotation: r,
                access: Access::Roster(k),
            }),
    );
    let snapshot = by.group.snapshot();
    let mut group = Group::restore(*by.group.info(), &keys, grants, Some(&snapshot)).unwrap();
    group.ingest(everything(by));
    Device { keys, group }
}

fn sync_all(devices: &mut [Device]) {
    for _ in 0..2 {
        for to in 0..devices.len() {
            for from in 0..devices.len() {
                if from != to {
                    let theirs = devices[to].group.version_vector();
                    let missing = devices[from]
                        .group
                        .missing_for(&theirs, usize::MAX, usize::MAX);
                    devices[to].group.ingest(missing);
                }
            }
        }
    }
}

fn give(from: &Device, to: &mut Device) {
    let theirs = to.group.version_vector();
    let missing = from.group.missing_for(&theirs, usize::MAX, usize::MAX);
    to.group.ingest(missing);
}

/// A hostile author's hand-made membership operation, sealed under the current epoch it
/// holds, continuing its own log correctly.
fn forge_roster(d: &mut Device, op: RosterOp, epoch_key: Option<(u32, SecretKey)>) -> Envelope {
    let (epoch, key) = match epoch_key {
        Some(x) => x,
        None => {
            let (e, k) = d.group.current_epoch();
            (e, k.unwrap().clone())
        }
    };
    let prior = d.group.head(&d.id()).copied();
    let header = Header {
        version: 1,
        group_id: d.group.id(),
        epoch,
        author: d.id(),
        seq: prior.map_or(1, |h| h.seq + 1),
        prev: prior.map_or(ZERO_HASH, |h| h.hash),
        change_head: prior.map_or(ZERO_HASH, |h| h.change_head),
    };
    let env = Envelope::seal(&d.keys, header, &Body::Roster(op), &key, &mut OsRng);
    let r = d.group.ingest(vec![env.clone()]);
    assert!(r.accepted.contains(&env), "forged op not accepted: {r:?}");
    env
}

fn texts(d: &Device) -> BTreeSet<String> {
    d.group
        .read()
        .unwrap()
        .agreements
        .values()
        .map(|a| a.text.clone())
        .collect()
}

/// Finding 1: one membership operation naming a hash that does not exist stalls every
/// later membership operation on every device (they name it, directly or not, so Kahn's
/// algorithm never reaches them): the hostile member cannot be removed, and an add never
/// takes effect, so the joiner is handed the key of the epoch *before* its admission.
#[test]
fn review_dangling_dep_freezes_membership_and_leaks_previous_epoch_key() {
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

    // The facilitator removes the hostile member: the removal is written but never counts.
    devices[0].group.remove_member(m_id, &mut OsRng).unwrap();
    sync_all(&mut devices);
    assert!(
        devices[0].group.roster().is_member(&m_id),
        "removal took effect (bug fixed?)"
    );
    assert!(devices[1].group.roster().is_member(&m_id));

    // The facilitator admits someone: the add never takes effect, current_epoch is still
    // the old one, and the joiner is given that old epoch's FULL key.
    let j = admit(&mut devices[0], Role::Member);
    assert!(!j.group.roster().is_member(&j.id()));
    assert_eq!(devices[0].group.current_epoch().0, epoch_before);
    assert!(
        j.group.readable_epochs().contains(&epoch_before),
        "joiner holds the pre-admission epoch key"
    );
    let mut j = j;
    give(&devices[0], &mut j);
    assert!(
        texts(&j).contains("written before the joiner came"),
        "joiner cannot read pre-admission content (bug fixed?)"
    );
}

/// Finding 2: a member's Rotate that hands the new key only to itself is "well formed"
/// and becomes the current epoch; nobody else holds its key, the author is the designated
/// forwarder, and every other member can no longer write, rotate or remove anyone.
#[test]
fn review_selfish_rotation_locks_out_every_other_member() {
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
    forge_roster(
        &mut devices[1],
        RosterOp {
            deps,
            action: Action::Rotate {
                rotation: Rotation {
                    epoch,
                    lockboxes: vec![lockbox],
                },
            },
        },
        None,
    );
    sync_all(&mut devices);
    let m_id = devices[1].id();
    assert!(!devices[0].group.roster().needs_rotation());
    assert!(matches!(
        devices[0].group.add_agreement("hello", 0, &mut OsRng),
        Err(GroupError::NoEpochKey(_))
    ));
    assert!(matches!(
        devices[0].group.remove_member(m_id, &mut OsRng),
        Err(GroupError::NoEpochKey(_))
    ));
    assert!(matches!(
        devices[2].group.rotate(&mut OsRng),
        Err(GroupError::NoEpochKey(_))
    ));
    // The only forwarder due is the attacker itself.
    assert!(
        devices[0]
            .group
            .roster()
            .forwards_due()
            .iter()
            .all(|f| f.by == m_id)
    );
}

/// Finding 3: a cut found in an early pass from a removal that a later pass voids is kept
/// ("cuts only tighten"): the member stays a member but every act of its from then on is
/// void, forever, including leaving.
#[test]
fn review_overridden_removal_leaves_a_member_who_can_never_leave() {
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
    // Y is a member; Y leaves; nobody (Y included) sees it.
    devices[3].group.leave(&mut OsRng).unwrap();
    devices[3].group.rename("still here?", &mut OsRng).unwrap();
    sync_all(&mut devices);
    for d in &devices {
        assert!(
            d.group.roster().is_member(&y_id),
            "Y's leave took effect (bug fixed?)"
        );
        assert!(!d.group.roster().needs_rotation());
    }
    // ...and so Y's device keeps being a member that is sent every future epoch key.
    devices[0].group.rotate(&mut OsRng).unwrap();
    sync_all(&mut devices);
    assert!(
        devices[0]
            .group
            .roster()
            .current_epoch()
            .holders
            .contains(&y_id)
    );
}

/// Finding 4: more than 64 heads (a member writing operations with empty deps) makes
/// honest operations name only some of what their author saw; a rotation left out is then
/// "concurrent" with a later add, and its key is forwarded to the joiner, who reads what
/// was written under it before it joined.
#[test]
fn review_truncated_deps_forward_a_pre_admission_key() {
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
    assert!(!devices[0].group.membership().heads().contains(&q));

    let j = admit(&mut devices[0], Role::Member);
    devices.push(j);
    // A hands on what it is "due" to forward.
    let fwd = devices[0].group.forward_keys(&mut OsRng).unwrap();
    assert!(fwd.is_some(), "no forward due (bug fixed?)");
    sync_all(&mut devices);
    let j = devices.last().unwrap();
    assert!(
        texts(j).contains("said before the joiner came"),
        "joiner cannot read pre-admission content (bug fixed?)"
    );
}

/// Finding 5: a removed member keeps pushing its own envelopes (receive-only sessions take
/// them) and any known author's lockboxes are taken as full keys whether or not its act
/// counts. Eight post-removal rotations at epoch u32::MAX become the eight "newest" keys
/// every member proves in sessions; all later honest epochs saturate at u32::MAX and are
/// never proven, so a member admitted later is recognised by nobody.
#[test]
fn review_removed_member_floods_epoch_keys() {
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
    let mut bogus = BTreeSet::new();
    for _ in 0..8 {
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
    let proven: Vec<[u8; 32]> = devices[0]
        .group
        .epoch_keys()
        .take(8)
        .map(|(_, k)| *k.expose())
        .collect();
    assert!(
        proven.iter().all(|k| bogus.contains(k)),
        "the 8 proven keys are not all the removed member's (bug fixed?)"
    );
    // The next honest rotation saturates at u32::MAX, behind R's keys.
    devices[0].group.rotate(&mut OsRng).unwrap();
    assert_eq!(devices[0].group.current_epoch().0, u32::MAX);
    let current = *devices[0].group.current_epoch().1.unwrap().expose();
    let proven: Vec<[u8; 32]> = devices[0]
        .group
        .epoch_keys()
        .take(8)
        .map(|(_, k)| *k.expose())
        .collect();
    assert!(!proven.contains(&current), "current key is proven");
}

/// Finding 7: the relaxed automerge seq check (`exactly == false` when an envelope between
/// is sealed here) lets one author's envelope count on a device that cannot read the
/// envelope before it, and be ineffective on every device that can: same envelopes,
/// different documents, for good (a joiner never gets older content keys).
#[test]
fn review_relaxed_seq_check_diverges_a_joiner() {
    use hearth_protocol::doc::{AgreementRecord, GroupDocument};
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
    let rec = |t: &str| AgreementRecord {
        text: t.into(),
        author: String::new(),
        created_at: 0,
    };
    let c1 = GroupDocument::load(&saved, actor.clone())
        .unwrap()
        .insert_agreement("one", &rec("seen by the old members"))
        .unwrap();
    let c2 = GroupDocument::load(&saved, actor)
        .unwrap()
        .insert_agreement("two", &rec("seen by the joiner"))
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
    assert!(
        tx.contains("seen by the joiner"),
        "joiner agrees (bug fixed?): {tx:?}"
    );
}

/// Finding 0: a removed facilitator undoes its own removal *after the fact* by writing a
/// removal of its remover that names only its own add as seen. Kahn takes it before the
/// remover's removal whenever that removal causally follows any roster operation by a
/// member junior to the attacker, so the attacker's "concurrent" removal wins. With
/// `upto: 0` the stale cut it leaves behind voids every act of the creator instead, the
/// adds included: the group is left with the creator alone, unable to act.
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
                rotation: Rotation { epoch, lockboxes },
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
fn review_removed_facilitator_regains_membership_by_backdating() {
    let (mut devices, a_id, x_id, k) = backdating(false);
    for d in &devices {
        assert!(
            d.group.roster().is_member(&x_id),
            "X stays removed (bug fixed?)"
        );
        assert!(
            !d.group.roster().is_member(&a_id),
            "A survives (bug fixed?)"
        );
    }
    // X holds the current epoch key; the creator cannot write any more.
    assert_eq!(
        devices[1].group.current_epoch().1.map(|k| *k.expose()),
        Some(*k.expose())
    );
    assert!(devices[0].group.add_agreement("hi", 0, &mut OsRng).is_err());
}

#[test]
fn review_removed_facilitator_wipes_the_membership_with_upto_zero() {
    let (devices, a_id, x_id, _) = backdating(true);
    let j_id = devices[2].id();
    for d in &devices {
        let r = d.group.roster();
        assert!(r.is_member(&a_id));
        assert!(
            !r.is_member(&x_id) && !r.is_member(&j_id),
            "J still a member"
        );
        assert_eq!(r.len(), 1);
    }
}

/// Finding (cost): every recorded operation re-resolves the whole graph, and `finish`
/// walks every member's ancestors against every rotation, so replaying N roster ops costs
/// O(N^2) or worse. Run with `--ignored --nocapture` to see the times.
#[test]
#[ignore]
fn review_roster_op_flood_cost() {
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

//! Benchmarks of hearth-protocol's hot paths. Each group puts the real function beside a
//! plaintext or primitive baseline, so the results read as ratios: what the envelope
//! layer (sealing, signing, hash chains, lockboxes) costs over automerge alone.
//!
//! Run: `cargo bench -p hearth-protocol --bench hot_paths`.
//! `cargo test -p hearth-protocol --benches` runs each benchmark once, as a smoke test.
//!
//! Fixtures are built through the public API only (no test helpers), and each is checked
//! once before it is timed, so a benchmark cannot silently measure a rejected envelope.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use hearth_protocol::api::Role;
use hearth_protocol::doc::{GroupDocument, agreement_id};
use hearth_protocol::envelope::{Body, Envelope};
use hearth_protocol::group::{
    Access, Group, KeyGrant, MIN_SEGMENT_POSITIONS, VersionVector, open_snapshot, seal_snapshot,
};
use hearth_protocol::identity::MemberKeys;
use hearth_protocol::membership::GroupInfo;
use rand_core::OsRng;

const NOW: i64 = 1_700_000_000;
/// Agreements in a catch-up batch, and in the history of the writing and snapshot benches.
const AGREEMENTS: usize = 1_000;
/// Members of the group one of them is removed from (so the rotation has 31 lockboxes).
const MEMBERS: usize = 32;
const TEXT: &str = "We keep what is said here in the circle.";

/// What a device stores to rebuild its `Group`. `Group` is not `Clone`, so benchmarks that
/// consume one rebuild it from this in untimed setup, the way the daemon restarts.
struct Device {
    keys: MemberKeys,
    grants: Vec<KeyGrant>,
    snapshot: Option<Vec<u8>>,
}

impl Device {
    /// Restores from the stored grants and replays the stored envelopes.
    fn rebuild(&self, info: GroupInfo, stored: &[Envelope]) -> Group {
        let mut group = Group::restore(
            info,
            &self.keys,
            self.grants.clone(),
            self.snapshot.as_deref(),
        )
        .expect("restore");
        let replayed = group.ingest_stored(stored.to_vec());
        assert_eq!(replayed.accepted.len(), stored.len(), "replay not accepted");
        group
    }
}

fn everything(group: &Group) -> Vec<Envelope> {
    group.missing_for(&VersionVector::new(), usize::MAX, usize::MAX)
}

fn create() -> (Group, Device) {
    let keys = MemberKeys::generate(&mut OsRng);
    let (group, key, _) = Group::create(&keys, "Circle", "Support", &mut OsRng).expect("create");
    let grants = vec![KeyGrant {
        epoch: 0,
        rotation: None,
        access: Access::Full(key),
    }];
    let device = Device {
        keys,
        grants,
        snapshot: None,
    };
    (group, device)
}

/// What the daemon hands a joiner on admission: the current epoch's key after the add,
/// the roster keys of every other epoch, and the snapshot.
fn admit(by: &mut Group) -> Device {
    let keys = MemberKeys::generate(&mut OsRng);
    let written = by
        .add_member(keys.public(), Role::Member, "new", NOW, &mut OsRng)
        .expect("add member");
    let rotation = Some(written.own.hash());
    let (epoch, key) = by.current_epoch();
    let mut grants = vec![KeyGrant {
        epoch,
        rotation,
        access: Access::Full(key.expect("current key").clone()),
    }];
    grants.extend(
        by.roster_history()
            .into_iter()
            .filter(|(e, r, _)| !(*e == epoch && *r == rotation))
            .map(|(epoch, rotation, key)| KeyGrant {
                epoch,
                rotation,
                access: Access::Roster(key),
            }),
    );
    Device {
        keys,
        grants,
        snapshot: Some(by.snapshot()),
    }
}

/// Two members; the creator writes `AGREEMENTS` agreements (one envelope each) after the
/// second member was admitted, which has not received them yet.
struct CatchUp {
    writer: Group,
    writer_keys: MemberKeys,
    info: GroupInfo,
    receiver: Device,
    /// What the receiver already holds (the log up to its admission).
    before: Vec<Envelope>,
    /// The agreements it lacks.
    batch: Vec<Envelope>,
    /// The same, once the writer has restated its log as segments.
    compacted: Vec<Envelope>,
}

impl CatchUp {
    fn build() -> CatchUp {
        let (mut writer, writer_device) = create();
        let receiver = admit(&mut writer);
        let info = *writer.info();
        let before = everything(&writer);
        for _ in 0..AGREEMENTS {
            writer.add_agreement(TEXT, NOW, &mut OsRng).expect("write");
        }
        let theirs = receiver.rebuild(info, &before).version_vector();
        let batch = writer.missing_for(&theirs, usize::MAX, usize::MAX);
        let restated = writer.compact_own(MIN_SEGMENT_POSITIONS, true, &mut OsRng);
        assert!(!restated.is_empty(), "the writer's log was restated");
        let compacted = writer.missing_for(&theirs, usize::MAX, usize::MAX);
        let fixture = CatchUp {
            writer,
            writer_keys: writer_device.keys,
            info,
            receiver,
            before,
            batch,
            compacted,
        };
        // The batch must be accepted, opened and applied in full, or the numbers lie.
        let mut receiver = fixture.fresh_receiver();
        let ingested = receiver.ingest(fixture.batch.clone());
        assert_eq!(ingested.accepted.len(), AGREEMENTS);
        assert_eq!(ingested.ineffective + ingested.rejected, 0);
        assert_eq!(receiver.read().agreements.len(), AGREEMENTS);
        let mut receiver = fixture.fresh_receiver();
        let ingested = receiver.ingest(fixture.compacted.clone());
        assert_eq!(ingested.ineffective + ingested.rejected, 0);
        assert_eq!(receiver.read().agreements.len(), AGREEMENTS);
        fixture
    }

    fn fresh_receiver(&self) -> Group {
        self.receiver.rebuild(self.info, &self.before)
    }
}

/// The same document as plain automerge: the creation change, saved as a joiner's
/// snapshot would be, then `AGREEMENTS` changes of one agreement each.
struct Plain {
    base: Vec<u8>,
    changes: Vec<automerge::Change>,
    doc: GroupDocument,
}

impl Plain {
    fn build() -> Plain {
        let keys = MemberKeys::generate(&mut OsRng);
        let author = keys.member_id();
        let mut doc = GroupDocument::new(author.actor_id());
        doc.init("Circle", "Support").expect("init");
        let base = doc.save();
        let mut changes = Vec::with_capacity(AGREEMENTS);
        for i in 0..AGREEMENTS {
            let made = doc
                .insert_agreement(&agreement_id(&author, (i as u64).to_le_bytes()), TEXT, NOW)
                .expect("insert");
            assert_eq!(made.len(), 1);
            changes.extend(made);
        }
        Plain { base, changes, doc }
    }
}

fn fresh_actor() -> automerge::ActorId {
    MemberKeys::generate(&mut OsRng).member_id().actor_id()
}

/// One agreement write on a group with 1,000 agreements of history: automerge alone,
/// sealing + signing its change, and the whole `Group::add_agreement` (edit, seal, sign,
/// then the own envelope through `ingest`). Each iteration adds to the history, as in a
/// long-lived daemon; the cost grows only slightly with it (under 15% from 1,000 to 8,000).
fn write_agreement(c: &mut Criterion, fixture: &mut CatchUp, plain: &mut Plain) {
    let group = &mut fixture.writer;
    let writer_keys = &fixture.writer_keys;
    let author = writer_keys.member_id();
    // Sealing alone: the writer's newest header, with one agreement's change as the body.
    let header = *fixture.batch.last().expect("batch").header();
    let epoch_key = group.current_epoch().1.expect("current key").clone();
    let body = Body::Changes {
        changes: vec![plain.changes.last().expect("change").raw_bytes().to_vec()],
    };
    let plain = &mut plain.doc;

    let mut g = c.benchmark_group("write_agreement");
    let mut n = AGREEMENTS;
    g.bench_function("automerge_insert_agreement", |b| {
        b.iter(|| {
            n += 1;
            plain
                .insert_agreement(&agreement_id(&author, (n as u64).to_le_bytes()), TEXT, NOW)
                .expect("insert")
        })
    });
    g.bench_function("envelope_seal_sign", |b| {
        b.iter(|| {
            Envelope::seal(
                writer_keys,
                header,
                black_box(&body),
                &epoch_key,
                &mut OsRng,
            )
        })
    });
    g.bench_function("group_add_agreement", |b| {
        b.iter(|| group.add_agreement(TEXT, NOW, &mut OsRng).expect("write"))
    });
    g.finish();
}

/// A second member catching up on 1,000 envelopes in one `ingest`: hash chain, one
/// signature for the run, 1,000 decryptions, one batched automerge apply. Baseline: the
/// same number of plain changes applied in one batch to a document loaded from the same
/// kind of snapshot (the receiver also starts from its admission snapshot).
fn ingest_catch_up(c: &mut Criterion, fixture: &CatchUp, plain: &Plain) {
    let mut g = c.benchmark_group("ingest_catch_up_1000");
    g.bench_function("automerge_apply_batch", |b| {
        b.iter_batched(
            || {
                let doc = GroupDocument::load(&plain.base, fresh_actor()).expect("load");
                (doc, plain.changes.clone())
            },
            |(mut doc, changes)| {
                doc.apply(changes).expect("apply");
                doc
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("group_ingest", |b| {
        b.iter_batched(
            || (fixture.fresh_receiver(), fixture.batch.clone()),
            |(mut receiver, batch)| {
                let ingested = receiver.ingest(batch);
                (receiver, ingested)
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("group_ingest_segments", |b| {
        b.iter_batched(
            || (fixture.fresh_receiver(), fixture.compacted.clone()),
            |(mut receiver, batch)| {
                let ingested = receiver.ingest(batch);
                (receiver, ingested)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// Why a run is authenticated by its hash chain and one signature: an Ed25519
/// verification against the blake3 chain hash of the same envelope.
fn verify_vs_hash(c: &mut Criterion) {
    let (mut group, device) = create();
    let (_, written) = group.add_agreement(TEXT, NOW, &mut OsRng).expect("write");
    let env = written.own;
    let author = device.keys.public();
    env.verify(&author).expect("genuine signature");

    let mut g = c.benchmark_group("envelope_check");
    g.bench_function("blake3_chain_hash", |b| b.iter(|| black_box(&env).hash()));
    g.bench_function("ed25519_verify", |b| {
        b.iter(|| black_box(&env).verify(&author).expect("verify"))
    });
    g.finish();
}

/// A joiner's snapshot of a document with 1,000 agreements: plain automerge save and
/// load, against the same with the snapshot sealed and opened under the epoch key.
fn snapshot(c: &mut Criterion, writer: &mut Group) {
    let (epoch, key) = writer.current_epoch();
    let key = key.expect("current key").clone();
    let group_id = writer.id();
    let saved = writer.snapshot();
    let sealed = seal_snapshot(&key, &group_id, epoch, &saved, &mut OsRng);
    let opened = open_snapshot(&key, &group_id, epoch, &sealed).expect("open");
    let actor = fresh_actor();
    let loaded = GroupDocument::load(&opened, actor.clone()).expect("load");
    assert_eq!(loaded.read().agreements.len(), AGREEMENTS);

    let mut g = c.benchmark_group("snapshot_1000");
    g.bench_function("automerge_save", |b| b.iter(|| writer.snapshot()));
    g.bench_function("save_and_seal", |b| {
        b.iter(|| {
            let saved = writer.snapshot();
            seal_snapshot(&key, &group_id, epoch, &saved, &mut OsRng)
        })
    });
    g.bench_function("automerge_load", |b| {
        b.iter_batched(
            || actor.clone(),
            |actor| GroupDocument::load(black_box(&saved), actor).expect("load"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("open_and_load", |b| {
        b.iter_batched(
            || actor.clone(),
            |actor| {
                let opened =
                    open_snapshot(&key, &group_id, epoch, black_box(&sealed)).expect("open");
                GroupDocument::load(&opened, actor).expect("load")
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Removing one member of 32: the facilitator building the removal (a rotation with a
/// lockbox for each of the 31 who stay), and another member ingesting it (signature,
/// membership resolution, opening its lockbox). Baseline: that member ingesting one
/// agreement envelope written at the same point of the facilitator's log.
fn remove_member(c: &mut Criterion) {
    let (mut facilitator, facilitator_device) = create();
    let receiver_device = admit(&mut facilitator);
    // The other members only need identities: they never act here.
    let mut victim = None;
    while facilitator.roster().len() < MEMBERS {
        let keys = MemberKeys::generate(&mut OsRng);
        facilitator
            .add_member(keys.public(), Role::Member, "member", NOW, &mut OsRng)
            .expect("add member");
        victim = Some(keys.member_id());
    }
    let victim = victim.expect("a member to remove");
    let info = *facilitator.info();
    let stored = everything(&facilitator);
    // Both from the same point of the log, each on its own rebuilt copy of the facilitator.
    let removal = facilitator_device
        .rebuild(info, &stored)
        .remove_member(victim, &mut OsRng)
        .expect("remove")
        .own;
    let (_, agreement) = facilitator_device
        .rebuild(info, &stored)
        .add_agreement(TEXT, NOW, &mut OsRng)
        .expect("write");
    let agreement = agreement.own;
    let ingested = receiver_device
        .rebuild(info, &stored)
        .ingest(vec![agreement.clone()]);
    assert_eq!(ingested.accepted.len(), 1);
    assert_eq!(ingested.ineffective, 0);
    let mut check = receiver_device.rebuild(info, &stored);
    assert_eq!(check.roster().len(), MEMBERS);
    let epoch_before = check.current_epoch().0;
    let ingested = check.ingest(vec![removal.clone()]);
    assert_eq!(ingested.accepted.len(), 1);
    assert!(ingested.roster_changed);
    assert_eq!(check.roster().len(), MEMBERS - 1);
    let (epoch_after, key_after) = check.current_epoch();
    assert!(epoch_after > epoch_before && key_after.is_some());

    let mut g = c.benchmark_group("remove_member_of_32");
    g.bench_function("build_removal", |b| {
        b.iter_batched(
            || facilitator_device.rebuild(info, &stored),
            |mut facilitator| {
                let written = facilitator
                    .remove_member(victim, &mut OsRng)
                    .expect("remove");
                (facilitator, written)
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("ingest_agreement_baseline", |b| {
        b.iter_batched(
            || {
                (
                    receiver_device.rebuild(info, &stored),
                    vec![agreement.clone()],
                )
            },
            |(mut receiver, envelopes)| {
                let ingested = receiver.ingest(envelopes);
                (receiver, ingested)
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("ingest_removal", |b| {
        b.iter_batched(
            || {
                (
                    receiver_device.rebuild(info, &stored),
                    vec![removal.clone()],
                )
            },
            |(mut receiver, envelopes)| {
                let ingested = receiver.ingest(envelopes);
                (receiver, ingested)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn hot_paths(c: &mut Criterion) {
    // Built once and shared: the 1,000 writes take under a second in release but about
    // 20 s in the unoptimised `cargo test --benches` build. `write_agreement` grows the
    // writer's history, so it runs after the benchmarks that read that history.
    let mut fixture = CatchUp::build();
    let mut plain = Plain::build();
    ingest_catch_up(c, &fixture, &plain);
    snapshot(c, &mut fixture.writer);
    write_agreement(c, &mut fixture, &mut plain);
    verify_vs_hash(c);
    remove_member(c);
}

fn config() -> Criterion {
    // Small samples: the suite should finish in minutes on a 2-core machine; the ratios
    // within a group matter here, not the last percent.
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = hot_paths
}
criterion_main!(benches);

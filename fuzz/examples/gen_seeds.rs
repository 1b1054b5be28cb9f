//! Writes a small seed corpus of valid inputs to `fuzz/corpus/<target>/` (gitignored),
//! so the fuzzers start from real envelopes, messages, tokens, snapshots and automerge
//! changes instead of rediscovering the formats. Run from `fuzz/`:
//! `cargo run --example gen_seeds`.

use std::path::Path;

use hearth_fuzz::{FixedRng, creator, fixed_epoch_key, fixture_group, member, record, stranger};
use hearth_protocol::api::Role;
use hearth_protocol::doc::{GroupDocument, agreement_id};
use hearth_protocol::envelope::{Body, Envelope, Header, ZERO_HASH};
use hearth_protocol::group::{Group, seal_snapshot};
use hearth_protocol::identity::MemberKeys;
use hearth_protocol::ids::GroupId;
use hearth_protocol::invite::{Admission, InviteToken, JoinAccept, JoinRequest, Joiner};
use hearth_protocol::session::SLOT_LEN;
use hearth_protocol::wire::{RevealSlot, SyncMessage, VvEntry, WIRE_VERSION, encode_frame};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn body_bytes(env: &Envelope, key: &hearth_protocol::crypto::SecretKey) -> Vec<u8> {
    postcard::to_stdvec(&env.open(key).unwrap()).unwrap()
}

/// What `group`'s facilitator hands a member it admitted with `add` (the current epoch).
fn admission(group: &mut Group, add: &Envelope) -> Admission {
    let (epoch, key) = group.current_epoch();
    Admission {
        info: *group.info(),
        epoch,
        rotation: add.hash(),
        epoch_key: key.unwrap().clone(),
        roster_history: group
            .roster_history()
            .into_iter()
            .filter(|(e, _, _)| *e != epoch)
            .collect(),
        snapshot: group.snapshot().into(),
    }
}

/// The replica of a member admitted as `admission` says.
fn replica(keys: &MemberKeys, admission: &Admission, log: &[Envelope]) -> Group {
    let welcome = admission.welcome();
    let mut g =
        Group::restore(welcome.info, keys, welcome.grants, Some(&welcome.snapshot)).unwrap();
    g.ingest(log.to_vec());
    g
}

fn main() {
    let mut rng = FixedRng::new(99);
    let (mut group, key, log) = fixture_group();
    let snap = group.snapshot();
    let info = *group.info();

    // The member's own replica, and an agreement it writes (hostile-member seed body).
    let m = member();
    let m_admission = admission(&mut group, &log[1]);
    let mut gm = replica(m, &m_admission, &log);
    let m_env = gm.add_agreement("Phones away", 1, &mut rng).unwrap().1.own;
    let m_body = body_bytes(&m_env, &key);
    // The member renames the group, at the document level (a change only the creator may
    // make: a hostile member's).
    let mut dm = automerge::AutoCommit::load(&snap)
        .unwrap()
        .with_actor(m.member_id().actor_id());
    automerge::transaction::Transactable::put(&mut dm, automerge::ROOT, "name", "Renamed").unwrap();
    let rename_hash = dm.commit().unwrap();
    let rename = vec![dm.get_change_by_hash(&rename_hash).unwrap()];
    let rename_body = postcard::to_stdvec(&Body::Changes {
        changes: rename.iter().map(|c| c.raw_bytes().to_vec()).collect(),
    })
    .unwrap();
    // The creator adds the stranger, who then writes.
    let s = stranger();
    let add_s = group
        .add_member(s.public(), Role::Member, "stranger", 0, &mut rng)
        .unwrap()
        .own;
    let add_body = body_bytes(&add_s, &key);
    let s_admission = admission(&mut group, &add_s);
    let mut gs = replica(
        s,
        &s_admission,
        &[log[0].clone(), log[1].clone(), add_s.clone()],
    );
    let s_env = gs.add_agreement("Listen first", 2, &mut rng).unwrap().1.own;
    let s_body = body_bytes(&s_env, &key);

    // group_ingest: records (see fuzz_targets/group_ingest.rs for the flags).
    write("group_ingest", "member-agreement", &record(2, &m_body));
    write("group_ingest", "member-rename", &record(2, &rename_body));
    write(
        "group_ingest",
        "add-then-write",
        &[
            record(1 | 0x80, &add_body),
            record(3, &s_body),
            record(2, &m_body),
        ]
        .concat(),
    );
    write(
        "group_ingest",
        "raw-replay",
        &[record(0, log[0].as_bytes()), record(0, m_env.as_bytes())].concat(),
    );

    // envelope: real envelopes, one openable with the target's fixed key.
    write("envelope", "fixture-0", log[0].as_bytes());
    write("envelope", "member", m_env.as_bytes());
    let header = Header {
        version: 0,
        group_id: GroupId([3; 16]),
        epoch: 0,
        author: creator().member_id(),
        seq: 1,
        prev: ZERO_HASH,
        change_head: ZERO_HASH,
    };
    let body = postcard::from_bytes::<Body>(&m_body).unwrap();
    let openable = Envelope::seal(creator(), header, &body, &fixed_epoch_key(), &mut rng);
    write("envelope", "openable", openable.as_bytes());

    // envelope_open: body plaintexts.
    write("envelope_open", "changes", &m_body);
    write("envelope_open", "rename", &rename_body);
    write("envelope_open", "add", &add_body);

    // wire: frame bodies of every message kind (the first 4 bytes double as a prefix).
    let token = InviteToken {
        group_id: info.group_id,
        facilitator: creator().member_id(),
        secret: [4; 32],
        expires_at: 1_900_000_000,
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
    };
    let req = JoinRequest::new(s, &token, "stranger", b"peer-s", b"peer-c", &mut rng);
    let joiner = Joiner {
        invite_id: req.invite_id,
        identity: s.public(),
        name: "stranger".into(),
    };
    let accept = JoinAccept::new(
        creator(),
        &joiner,
        &token.secret,
        &s_admission,
        b"peer-s",
        b"peer-c",
        &mut rng,
    );
    let sync = [
        SyncMessage::Hello {
            version: WIRE_VERSION,
            nonce: [1; 32],
            key: [2; 32],
        },
        SyncMessage::Reveal {
            slots: vec![RevealSlot([3; SLOT_LEN]); 8],
        },
        SyncMessage::Have {
            group_id: info.group_id,
            heads: vec![VvEntry {
                author: m.member_id(),
                seq: 1,
                hash: [4; 32],
            }],
        },
        SyncMessage::Envelopes {
            group_id: info.group_id,
            envelopes: log.iter().map(|e| e.as_bytes().to_vec()).collect(),
        },
    ];
    for (i, msg) in sync.iter().enumerate() {
        write("wire", &format!("sync-{i}"), &encode_frame(msg)[4..]);
    }
    use hearth_protocol::wire::JoinMessage;
    for (i, msg) in [
        JoinMessage::Request(req),
        JoinMessage::Accept(Box::new(accept)),
        JoinMessage::Reject,
    ]
    .iter()
    .enumerate()
    {
        write("wire", &format!("join-{i}"), &encode_frame(msg)[4..]);
    }

    // invite_token: a real token.
    write("invite_token", "token", token.encode().as_bytes());

    // snapshot: saved documents, a lone change chunk, and a sealed snapshot.
    write("snapshot", "fixture", &snap);
    write("snapshot", "member-doc", &dm.save());
    write("snapshot", "change-chunk", rename[0].raw_bytes());
    let mut d = GroupDocument::new(m.member_id().actor_id());
    d.init("Circle", "").unwrap();
    d.insert_agreement(&agreement_id(&m.member_id(), [1; 8]), "t", 3)
        .unwrap();
    write("snapshot", "agreement-doc", &d.save());
    write(
        "snapshot",
        "sealed",
        &seal_snapshot(&fixed_epoch_key(), &GroupId([3; 16]), 0, &snap, &mut rng),
    );
    println!("seed corpus written to fuzz/corpus/");
}

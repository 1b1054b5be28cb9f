//! The daemon's state: this device's identity, its groups and their logs, kept in memory
//! and in the encrypted store. Every change goes through here, so the local API and the
//! peer sessions see one consistent state.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use hearth_protocol::api::{self, Role};
use hearth_protocol::crypto::SecretKey;
use hearth_protocol::envelope::Envelope;
use hearth_protocol::group::{Group, GroupError, VersionVector, Written};
use hearth_protocol::identity::{DeviceKeys, PublicIdentity};
use hearth_protocol::ids::{GroupId, MemberId};
use hearth_protocol::session::{self, Side};
use rand_core::OsRng;
use tokio::sync::watch;

use crate::records::{self, GroupRecord, IDENTITY_KEY};
use crate::store::{Store, StoreError, Table, WriteOp};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("no group called {0:?} here; `hearth group list` shows the groups this device is in")]
    GroupNotFound(String),
    #[error("{0:?} names more than one group; use the group id from `hearth group list`")]
    AmbiguousGroup(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("could not reach the other daemon: {0}")]
    Unreachable(String),
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl From<GroupError> for NodeError {
    fn from(e: GroupError) -> Self {
        match e {
            GroupError::TooLong { .. } | GroupError::Empty(_) => NodeError::Invalid(e.to_string()),
            GroupError::NotFacilitator | GroupError::NotMember => {
                NodeError::Forbidden(e.to_string())
            }
            other => NodeError::Internal(other.to_string()),
        }
    }
}

/// One group this device belongs to.
pub struct Slot {
    pub group: Group,
}

pub struct Node {
    keys: DeviceKeys,
    store: Store,
    groups: Mutex<BTreeMap<GroupId, Slot>>,
    /// Bumped whenever any group accepts new envelopes; sessions wake on it to push.
    changed: watch::Sender<u64>,
    /// Bumped whenever this device joins or creates a group: sessions then restart so
    /// their handshake covers it.
    groups_changed: watch::Sender<u64>,
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Node {
    /// Loads (or on first start creates) this device's identity, then rebuilds every group
    /// from its stored envelopes.
    pub fn open(store: Store) -> Result<Node, NodeError> {
        let keys = match store.get(Table::Meta, IDENTITY_KEY)? {
            Some(bytes) => DeviceKeys::from_secret_bytes(&bytes).ok_or_else(|| {
                NodeError::Internal("the stored device identity is malformed".into())
            })?,
            None => {
                let keys = DeviceKeys::generate(&mut OsRng);
                store.write(vec![WriteOp::Put {
                    table: Table::Meta,
                    key: IDENTITY_KEY.to_vec(),
                    value: keys.to_secret_bytes().to_vec(),
                }])?;
                keys
            }
        };
        let node = Node {
            keys,
            store,
            groups: Mutex::new(BTreeMap::new()),
            changed: watch::channel(0).0,
            groups_changed: watch::channel(0).0,
        };
        for (_, raw) in node.store.scan(Table::Groups, &[])? {
            let record: GroupRecord = postcard::from_bytes(&raw)
                .map_err(|_| NodeError::Internal("a stored group record is malformed".into()))?;
            let id = record.info.group_id;
            let slot = node.load_slot(record)?;
            node.lock().insert(id, slot);
        }
        Ok(node)
    }

    /// Reads a group's record from the store again (after a failed write).
    fn reload_slot(&self, id: &GroupId) -> Result<Slot, NodeError> {
        let raw = self
            .store
            .get(Table::Groups, &records::group_key(&self.store, id))?
            .ok_or_else(|| NodeError::Internal("a group vanished from the store".into()))?;
        let record: GroupRecord = postcard::from_bytes(&raw)
            .map_err(|_| NodeError::Internal("a stored group record is malformed".into()))?;
        self.load_slot(record)
    }

    /// Rebuilds a group from its record, its epoch keys and its stored envelopes.
    fn load_slot(&self, record: GroupRecord) -> Result<Slot, NodeError> {
        let prefix = records::group_key(&self.store, &record.info.group_id);
        let mut keys = Vec::new();
        for (_, v) in self.store.scan(Table::EpochKeys, &prefix)? {
            let (epoch, bytes): (u32, [u8; 32]) = postcard::from_bytes(&v)
                .map_err(|_| NodeError::Internal("a stored epoch key is malformed".into()))?;
            keys.push((epoch, SecretKey::from_bytes(bytes)));
        }
        let mut group = Group::restore(
            record.info,
            keys,
            record.snapshot.as_deref(),
            self.keys.member_id(),
        )?;
        let mut envelopes = Vec::new();
        for (_, bytes) in self.store.scan(Table::Envelopes, &prefix)? {
            match Envelope::decode(bytes.to_vec()) {
                Ok(env) => envelopes.push(env),
                Err(e) => tracing::warn!("skipping a malformed stored envelope: {e}"),
            }
        }
        let stored = envelopes.len();
        let result = group.ingest_stored(envelopes);
        if result.accepted.len() != stored {
            tracing::warn!(
                stored,
                accepted = result.accepted.len(),
                "some stored envelopes were not accepted"
            );
        }
        Ok(Slot { group })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<GroupId, Slot>> {
        // A panic while holding the lock would be a bug; the state is still usable.
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn keys(&self) -> &DeviceKeys {
        &self.keys
    }

    pub fn member_id(&self) -> MemberId {
        self.keys.member_id()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn subscribe_groups(&self) -> watch::Receiver<u64> {
        self.groups_changed.subscribe()
    }

    fn bump_groups(&self) {
        self.groups_changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn group_count(&self) -> usize {
        self.lock().len()
    }

    /// Finds a group by id or by its (unique) name.
    pub fn resolve_group(&self, text: &str) -> Result<GroupId, NodeError> {
        let groups = self.lock();
        if let Ok(id) = text.parse::<GroupId>()
            && groups.contains_key(&id)
        {
            return Ok(id);
        }
        let matches: Vec<GroupId> = groups
            .iter()
            .filter(|(_, s)| s.group.read().is_ok_and(|d| d.name == text))
            .map(|(id, _)| *id)
            .collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(NodeError::GroupNotFound(text.to_owned())),
            _ => Err(NodeError::AmbiguousGroup(text.to_owned())),
        }
    }

    /// Runs `f` on a group's slot; errors if the group is unknown.
    pub fn with_slot<T>(
        &self,
        id: &GroupId,
        f: impl FnOnce(&mut Slot) -> Result<T, NodeError>,
    ) -> Result<T, NodeError> {
        let mut groups = self.lock();
        let slot = groups
            .get_mut(id)
            .ok_or_else(|| NodeError::GroupNotFound(id.to_hex()))?;
        f(slot)
    }

    /// Persists `env` (plus `extra` ops) in one durable transaction, then records it. If
    /// the store refuses, the group is rebuilt from the store so memory matches disk.
    fn commit_own(
        &self,
        groups: &mut BTreeMap<GroupId, Slot>,
        id: &GroupId,
        written: Written,
        extra: Vec<WriteOp>,
    ) -> Result<(), NodeError> {
        // Everything the write let in was accepted into memory: store all of it.
        let mut ops: Vec<WriteOp> = written
            .accepted
            .iter()
            .map(|e| records::put_envelope(&self.store, e))
            .collect();
        ops.extend(extra);
        if let Err(e) = self.store.write(ops) {
            self.recover(groups, id);
            return Err(e.into());
        }
        self.bump();
        Ok(())
    }

    /// After a failed store write, memory has run ahead of disk. Rebuilds the group from
    /// disk; if even that fails, drops it from memory rather than serve (and sign after)
    /// envelopes that are not stored.
    fn recover(&self, groups: &mut BTreeMap<GroupId, Slot>, id: &GroupId) {
        match self.reload_slot(id) {
            Ok(slot) => {
                groups.insert(*id, slot);
            }
            Err(e) => {
                tracing::error!("a group could not be reloaded after a failed write: {e}");
                groups.remove(id);
            }
        }
    }

    pub fn create_group(&self, name: &str, purpose: &str) -> Result<GroupId, NodeError> {
        let (group, epoch_key, first) = Group::create(&self.keys, name, purpose, &mut OsRng)?;
        let id = group.id();
        let record = GroupRecord {
            info: *group.info(),
            snapshot: None,
        };
        self.store.write(vec![
            records::put_group(&self.store, &record),
            records::put_epoch_key(&self.store, &id, 0, &epoch_key),
            records::put_envelope(&self.store, &first),
        ])?;
        self.lock().insert(id, Slot { group });
        self.bump();
        self.bump_groups();
        Ok(id)
    }

    pub fn list_groups(&self) -> Vec<api::GroupSummary> {
        self.lock()
            .iter()
            .map(|(id, s)| api::GroupSummary {
                group_id: id.to_hex(),
                name: s.group.read().map(|d| d.name).unwrap_or_default(),
                members: s.group.membership().len(),
            })
            .collect()
    }

    pub fn group_detail(&self, id: &GroupId) -> Result<api::GroupDetail, NodeError> {
        self.with_slot(id, |s| {
            let doc = s.group.read()?;
            let members = s
                .group
                .membership()
                .iter()
                .map(|(m, info)| api::MemberInfo {
                    member_id: m.to_hex(),
                    role: info.role,
                })
                .collect();
            Ok(api::GroupDetail {
                group_id: id.to_hex(),
                name: doc.name.clone(),
                purpose: doc.purpose.clone(),
                members,
                agreements: agreements_of(&doc),
            })
        })
    }

    pub fn agreements(&self, id: &GroupId) -> Result<Vec<api::Agreement>, NodeError> {
        self.with_slot(id, |s| Ok(agreements_of(&s.group.read()?)))
    }

    pub fn add_agreement(&self, id: &GroupId, text: &str) -> Result<String, NodeError> {
        let mut groups = self.lock();
        let slot = groups
            .get_mut(id)
            .ok_or_else(|| NodeError::GroupNotFound(id.to_hex()))?;
        let now = i64::try_from(now_unix()).unwrap_or(i64::MAX);
        let (agreement_id, env) = slot
            .group
            .add_agreement(&self.keys, text, now, &mut OsRng)?;
        self.commit_own(&mut groups, id, env, Vec::new())?;
        Ok(agreement_id)
    }

    /// Admits `member` by the invite `invite_id`, if `proves` accepts the invite: looks the
    /// invite up, checks it, adds the member and deletes the invite, all under the state
    /// lock and with the add and the deletion in one transaction, so an invite admits at
    /// most one member however many requests race. A failed check burns the invite.
    pub fn admit(
        &self,
        invite_id: &[u8; 16],
        proves: impl FnOnce(&records::InviteRecord) -> bool,
        member: PublicIdentity,
    ) -> Result<(Admission, records::InviteRecord), NodeError> {
        let mut groups = self.lock();
        let burn = WriteOp::Delete {
            table: Table::Invites,
            key: invite_id.to_vec(),
        };
        let Some(raw) = self.store.get(Table::Invites, invite_id)? else {
            return Err(NodeError::Forbidden("unknown or used invite".into()));
        };
        let record: records::InviteRecord = postcard::from_bytes(&raw)
            .map_err(|_| NodeError::Internal("a stored invite is malformed".into()))?;
        if record.expires_at <= now_unix() || !proves(&record) {
            self.store.write(vec![burn])?;
            return Err(NodeError::Forbidden(
                "expired invite or failed proof".into(),
            ));
        }
        let id = record.group_id;
        let slot = groups
            .get_mut(&id)
            .ok_or_else(|| NodeError::GroupNotFound(id.to_hex()))?;
        let env = slot
            .group
            .add_member(&self.keys, member, Role::Member, &mut OsRng)?;
        let epoch = slot.group.current_epoch();
        let epoch_key = slot
            .group
            .epoch_key(epoch)
            .cloned()
            .ok_or_else(|| NodeError::Internal("no key for the current epoch".into()))?;
        let snapshot = zeroize::Zeroizing::new(slot.group.snapshot());
        let info = *slot.group.info();
        self.commit_own(&mut groups, &id, env, vec![burn])?;
        Ok((
            Admission {
                info,
                epoch,
                epoch_key,
                snapshot,
            },
            record,
        ))
    }

    /// Stores a group this device has just joined.
    pub fn install_joined(
        &self,
        welcome: hearth_protocol::invite::Welcome,
    ) -> Result<GroupId, NodeError> {
        let id = welcome.info.group_id;
        if self.lock().contains_key(&id) {
            return Err(NodeError::Conflict(
                "this device is already a member of that group".into(),
            ));
        }
        let group = Group::restore(
            welcome.info,
            [(welcome.epoch, welcome.epoch_key.clone())],
            Some(&welcome.snapshot),
            self.keys.member_id(),
        )?;
        let record = GroupRecord {
            info: welcome.info,
            snapshot: Some(welcome.snapshot.to_vec()),
        };
        self.store.write(vec![
            records::put_group(&self.store, &record),
            records::put_epoch_key(&self.store, &id, welcome.epoch, &welcome.epoch_key),
        ])?;
        self.lock().insert(id, Slot { group });
        self.bump();
        self.bump_groups();
        Ok(id)
    }

    /// Whether this device holds group `id` at all.
    pub fn has_group(&self, id: &GroupId) -> bool {
        self.lock().contains_key(id)
    }

    /// Checks, persists and records envelopes a peer sent. Returns how many were new, and
    /// how many were refused for now (the buffer for out-of-order envelopes was full).
    pub fn ingest(
        &self,
        id: &GroupId,
        envelopes: Vec<Envelope>,
    ) -> Result<(usize, usize), NodeError> {
        let mut groups = self.lock();
        let Some(slot) = groups.get_mut(id) else {
            return Ok((0, 0));
        };
        let result = slot.group.ingest(envelopes);
        if result.rejected > 0 || result.ineffective > 0 {
            tracing::warn!(
                rejected = result.rejected,
                ineffective = result.ineffective,
                "dropped envelopes that failed checks"
            );
        }
        if result.forks > 0 {
            tracing::warn!(
                authors = result.forks,
                "a member signed two different histories; that member's log is frozen here"
            );
        }
        if result.accepted.is_empty() {
            return Ok((0, result.refused));
        }
        let ops = result
            .accepted
            .iter()
            .map(|e| records::put_envelope(&self.store, e))
            .collect();
        if let Err(e) = self.store.write(ops) {
            // The peer will resend what the rebuilt group lacks.
            self.recover(&mut groups, id);
            return Err(e.into());
        }
        drop(groups);
        self.bump();
        Ok((result.accepted.len(), result.refused))
    }

    pub fn version_vector(&self, id: &GroupId) -> VersionVector {
        self.lock()
            .get(id)
            .map(|s| s.group.version_vector())
            .unwrap_or_default()
    }

    /// Envelopes `known` lacks, each author's in order, within the given budgets.
    pub fn missing(
        &self,
        id: &GroupId,
        known: &VersionVector,
        max_count: usize,
        max_bytes: usize,
    ) -> Vec<Envelope> {
        self.lock()
            .get(id)
            .map(|s| s.group.missing_for(known, max_count, max_bytes))
            .unwrap_or_default()
    }

    /// A peer's version vector, rewound where it disagrees with our logs (a fork).
    pub fn reconcile_heads(&self, id: &GroupId, theirs: VersionVector) -> VersionVector {
        match self.lock().get(id) {
            Some(s) => s.group.reconcile_heads(theirs),
            None => theirs,
        }
    }

    /// The tags proving this device's groups to a peer in a session with `transcript`.
    pub fn group_proofs(&self, transcript: &[u8; 32], my_side: Side) -> Vec<[u8; 32]> {
        self.lock()
            .values()
            .filter_map(|s| {
                let epoch = s.group.current_epoch();
                let key = s.group.epoch_key(epoch)?;
                Some(session::group_tag(
                    key,
                    &s.group.id(),
                    epoch,
                    transcript,
                    my_side,
                ))
            })
            .collect()
    }

    /// The groups whose tag the peer (on `their_side`) presented.
    pub fn matched_groups(
        &self,
        transcript: &[u8; 32],
        their_side: Side,
        tags: &[[u8; 32]],
    ) -> Vec<GroupId> {
        self.lock()
            .values()
            .filter(|s| {
                let epoch = s.group.current_epoch();
                s.group.epoch_key(epoch).is_some_and(|key| {
                    let expected =
                        session::group_tag(key, &s.group.id(), epoch, transcript, their_side);
                    session::tag_matches(&expected, tags)
                })
            })
            .map(|s| s.group.id())
            .collect()
    }

    /// Whether `member` (with exactly this identity) belongs to group `id`.
    pub fn has_member(&self, id: &GroupId, member: &PublicIdentity) -> bool {
        self.lock().get(id).is_some_and(|s| {
            s.group
                .membership()
                .get(&member.member_id())
                .is_some_and(|m| m.identity == *member)
        })
    }

    /// Whether this device already sees itself in group `id`'s membership (a joiner does
    /// once the facilitator's add has synced).
    pub fn sees_self_in(&self, id: &GroupId) -> bool {
        let me = self.member_id();
        self.lock()
            .get(id)
            .is_some_and(|s| s.group.membership().is_member(&me))
    }

    /// Whether this device is a facilitator of group `id`.
    pub fn is_facilitator(&self, id: &GroupId) -> bool {
        self.lock().get(id).is_some_and(|s| {
            s.group
                .membership()
                .get(&self.member_id())
                .is_some_and(|m| m.role == Role::Facilitator)
        })
    }
}

/// What a facilitator's daemon hands a member it has just added.
pub struct Admission {
    pub info: hearth_protocol::membership::GroupInfo,
    pub epoch: u32,
    pub epoch_key: SecretKey,
    /// The document in plaintext: wiped on drop.
    pub snapshot: zeroize::Zeroizing<Vec<u8>>,
}

fn agreements_of(doc: &hearth_protocol::doc::GroupDoc) -> Vec<api::Agreement> {
    let mut list: Vec<api::Agreement> = doc
        .agreements
        .iter()
        .map(|(id, a)| api::Agreement {
            id: id.clone(),
            text: a.text.clone(),
            author: a.author.clone(),
            created_at: a.created_at,
        })
        .collect();
    // Display order: by the author's clock, then id so every device shows the same order.
    list.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::invite::Welcome;

    fn node(dir: &std::path::Path) -> Node {
        Node::open(Store::open(dir).unwrap()).unwrap()
    }

    /// Stores an invite as `join::create_invite` would, without the network.
    fn invite(a: &Node, group: &GroupId, id: [u8; 16], expires_at: u64) {
        let record = records::InviteRecord {
            group_id: *group,
            secret: [5; 32],
            expires_at,
        };
        a.store()
            .write(vec![WriteOp::Put {
                table: Table::Invites,
                key: id.to_vec(),
                value: records::encode(&record),
            }])
            .unwrap();
    }

    /// A facilitator node with a group, and a member node that joined it and synced.
    fn pair(tmp: &std::path::Path) -> (Node, Node, GroupId) {
        let a = node(&tmp.join("a"));
        let b = node(&tmp.join("b"));
        let group = a.create_group("Circle", "").unwrap();
        invite(&a, &group, [1; 16], now_unix() + 60);
        let (admission, _) = a.admit(&[1; 16], |_| true, b.keys().public()).unwrap();
        b.install_joined(Welcome {
            info: admission.info,
            epoch: admission.epoch,
            epoch_key: admission.epoch_key,
            snapshot: admission.snapshot,
        })
        .unwrap();
        let all = a.missing(&group, &VersionVector::new(), usize::MAX, usize::MAX);
        assert_eq!(b.ingest(&group, all).unwrap(), (2, 0));
        (a, b, group)
    }

    fn stored_envelopes(n: &Node) -> usize {
        n.store().scan(Table::Envelopes, &[]).unwrap().len()
    }

    #[test]
    fn a_tampered_envelope_from_a_peer_is_neither_applied_nor_stored() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, group) = pair(tmp.path());
        a.add_agreement(&group, "what is said here stays here")
            .unwrap();
        let vv = b.version_vector(&group);
        let genuine = a.missing(&group, &vv, usize::MAX, usize::MAX);
        assert_eq!(genuine.len(), 1);
        let mut bytes = genuine[0].as_bytes().to_vec();
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        let tampered = Envelope::decode(bytes).unwrap();

        let before = stored_envelopes(&b);
        assert_eq!(b.ingest(&group, vec![tampered]).unwrap(), (0, 0));
        assert!(b.agreements(&group).unwrap().is_empty());
        assert_eq!(stored_envelopes(&b), before);

        assert_eq!(b.ingest(&group, genuine).unwrap(), (1, 0));
        assert_eq!(b.agreements(&group).unwrap().len(), 1);
        assert_eq!(stored_envelopes(&b), before + 1);
    }

    #[test]
    fn an_invite_admits_one_member_and_a_failed_proof_burns_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, _b, group) = pair(tmp.path());
        let c = DeviceKeys::generate(&mut OsRng).public();
        // The invite that admitted b is gone.
        assert!(matches!(
            a.admit(&[1; 16], |_| true, c),
            Err(NodeError::Forbidden(_))
        ));
        // A wrong proof burns a live invite: the right one afterwards fails too.
        invite(&a, &group, [2; 16], now_unix() + 60);
        assert!(a.admit(&[2; 16], |_| false, c).is_err());
        assert!(a.admit(&[2; 16], |_| true, c).is_err());
        // An expired invite admits nobody.
        invite(&a, &group, [3; 16], now_unix() - 1);
        assert!(a.admit(&[3; 16], |_| true, c).is_err());
        assert_eq!(a.group_detail(&group).unwrap().members.len(), 2);
    }

    #[test]
    fn state_is_rebuilt_from_the_store_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, group) = pair(tmp.path());
        a.add_agreement(&group, "kept").unwrap();
        let vv = b.version_vector(&group);
        b.ingest(&group, a.missing(&group, &vv, usize::MAX, usize::MAX))
            .unwrap();
        let before = b.group_detail(&group).unwrap();
        drop(b);
        let b = node(&tmp.path().join("b"));
        assert_eq!(b.group_detail(&group).unwrap(), before);
        assert_eq!(b.version_vector(&group), a.version_vector(&group));
    }
}

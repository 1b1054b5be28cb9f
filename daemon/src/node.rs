//! The daemon's state: this device's groups, its identity in each, and their logs, kept in
//! memory and in the encrypted store. Every change goes through here, so the local API and the
//! peer sessions see one consistent state.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use hearth_protocol::api::{self, Role};
use hearth_protocol::code::SpokenCode;
use hearth_protocol::envelope::Envelope;
pub use hearth_protocol::group::Standing;
use hearth_protocol::group::{
    Access, Group, GroupError, KeyGrant, MIN_SEGMENT_POSITIONS, VersionVector, Written,
};
use hearth_protocol::identity::{MemberKeys, PublicIdentity, safety_number};
use hearth_protocol::ids::{GroupId, MemberId};
use hearth_protocol::invite::{Admission, Joiner};
use hearth_protocol::session::{self, SessionKey, Side};
use hearth_protocol::wire::{MAX_REVEAL_SLOTS, RevealSlot};
use rand_core::OsRng;
use tokio::sync::{broadcast, watch};

use crate::records::{self, GroupRecord, LEGACY_IDENTITY_KEY, LegacyGroupRecord};
use crate::store::{Store, StoreError, Table, WriteOp};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("no group called {0:?} here; `hearth group list` shows the groups this device is in")]
    GroupNotFound(String),
    #[error("{0:?} names more than one group; use the group id from `hearth group list`")]
    AmbiguousGroup(String),
    #[error("{0}")]
    MemberNotFound(String),
    #[error("{0}; `hearth agreement list GROUP` shows the agreements this device has")]
    AgreementNotFound(String),
    #[error("{0}")]
    InviteNotFound(String),
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

impl NodeError {
    /// Joining a group this device is a member of.
    pub fn already_member() -> NodeError {
        NodeError::Conflict(
            "this device is already a member of that group; `hearth group list` shows it".into(),
        )
    }
}

impl From<GroupError> for NodeError {
    fn from(e: GroupError) -> Self {
        match e {
            GroupError::TooLong { .. } | GroupError::Empty(_) | GroupError::RemoveSelf => {
                NodeError::Invalid(e.to_string())
            }
            GroupError::NotFacilitator | GroupError::NotMember => {
                NodeError::Forbidden(e.to_string())
            }
            GroupError::NoSuchMember(_) => NodeError::MemberNotFound(e.to_string()),
            GroupError::AlreadyMember(_)
            | GroupError::NeedsRotation
            | GroupError::Departed(_)
            | GroupError::LastFacilitator
            | GroupError::Full
            | GroupError::NoEpochKey(_) => NodeError::Conflict(e.to_string()),
            other => NodeError::Internal(other.to_string()),
        }
    }
}

/// One group this device belongs to.
pub struct Slot {
    pub group: Group,
}

pub struct Node {
    store: Store,
    groups: Mutex<BTreeMap<GroupId, Slot>>,
    /// Bumped whenever any group accepts new envelopes; sessions wake on it to push.
    changed: watch::Sender<u64>,
    /// Which group's content or membership changed, for clients following `/v1/events`.
    group_events: broadcast::Sender<GroupId>,
    /// Bumped whenever this device joins, creates or forgets a group: sessions then
    /// restart so their handshake covers exactly the groups it holds.
    groups_changed: watch::Sender<u64>,
    /// A group in which this device now counts someone new as a member: sessions that do
    /// not share it restart, as the peer may be that member.
    widened: broadcast::Sender<GroupId>,
    /// Bumped whenever a group's membership changes. Live sessions do not restart on it
    /// (they re-check the peer's standing before every batch); a supervisor that found
    /// nothing in common with a peer tries again at once, as the peer may now count.
    rosters_changed: watch::Sender<u64>,
    /// Per group, the furthest any peer has confirmed holding this device's own log.
    acks: Mutex<BTreeMap<GroupId, u64>>,
    /// Bumped when an entry of `acks` advances (a departure waits on it). Separate from
    /// `changed`: every version vector a peer sends would otherwise wake every session.
    acks_changed: watch::Sender<u64>,
    /// The spoken codes this daemon made (the open ones are also in the store), and what
    /// became of them.
    codes: Mutex<crate::codes::Codes>,
    /// Rations spoken-code exchanges per peer and per network origin.
    code_limiter: Mutex<crate::codes::Limiter>,
}

/// Group change events held for a slow `/v1/events` client before it is told to resync.
const GROUP_EVENTS_BUFFER: usize = 256;
/// How many of its own envelopes past the newest few a device lets gather after its writes
/// before it restates them as a segment (serving a peer that is behind does it sooner).
const COMPACT_AFTER_WRITES: u64 = 256;

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Node {
    /// Rebuilds every group from its stored record and envelopes.
    pub fn open(store: Store) -> Result<Node, NodeError> {
        let node = Node {
            store,
            groups: Mutex::new(BTreeMap::new()),
            changed: watch::channel(0).0,
            group_events: broadcast::channel(GROUP_EVENTS_BUFFER).0,
            groups_changed: watch::channel(0).0,
            widened: broadcast::channel(GROUP_EVENTS_BUFFER).0,
            rosters_changed: watch::channel(0).0,
            acks: Mutex::new(BTreeMap::new()),
            acks_changed: watch::channel(0).0,
            codes: Mutex::new(crate::codes::Codes::default()),
            code_limiter: Mutex::new(crate::codes::Limiter::default()),
        };
        for key in node.store.scan_keys(Table::Groups, &[])? {
            let alias: Option<[u8; 16]> = key.as_slice().try_into().ok();
            if !alias.is_some_and(|a| node.store.has_group_key(&a)) {
                // Its key slot is gone, so nothing of it can be read.
                tracing::warn!(
                    "a group's storage key is missing from the store's key slots; its records \
                     cannot be read and are skipped"
                );
                continue;
            }
            let Some(raw) = node.store.get(Table::Groups, &key)? else {
                continue;
            };
            let record = match postcard::from_bytes::<GroupRecord>(&raw) {
                Ok(record) => record,
                Err(_) => node.migrate_group_record(&raw)?,
            };
            let id = record.info.group_id;
            let slot = node.load_slot(&record)?;
            node.lock().insert(id, slot);
        }
        // Every group now holds its own keys: the shared identity is no longer needed.
        if node.store.get(Table::Meta, LEGACY_IDENTITY_KEY)?.is_some() {
            node.store.write(vec![WriteOp::Delete {
                table: Table::Meta,
                key: LEGACY_IDENTITY_KEY.to_vec(),
            }])?;
        }
        node.restore_codes()?;
        node.purge_invites()?;
        Ok(node)
    }

    /// Takes the open spoken codes kept in the store back into memory.
    fn restore_codes(&self) -> Result<(), NodeError> {
        let now = now_unix();
        let mut codes = self.codes();
        for (_, raw) in self.store.scan(Table::Invites, b"code")? {
            let Ok(record) = postcard::from_bytes::<records::CodeRecord>(&raw) else {
                continue;
            };
            let Ok(code) = SpokenCode::from_parts(record.channel, record.words) else {
                continue;
            };
            if record.expires_at > now {
                codes.restore(record.group_id, &code, record.expires_at);
            }
        }
        Ok(())
    }

    fn codes(&self) -> std::sync::MutexGuard<'_, crate::codes::Codes> {
        self.codes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes expired invites and spoken codes (and any of a group this device no longer
    /// holds) from the store, and forgets the words of expired codes. Runs at start, every
    /// minute, and whenever invites are made, listed or withdrawn.
    pub fn purge_invites(&self) -> Result<usize, NodeError> {
        let now = now_unix();
        // A stored code that is no longer live in memory (burnt, used, withdrawn) goes too,
        // in case its own deletion failed: restored after a restart, it would offer fresh
        // guesses.
        let live: std::collections::BTreeSet<u16> = {
            let mut codes = self.codes();
            codes.prune(now);
            (1..=hearth_protocol::code::MAX_CHANNEL)
                .filter(|c| codes.at_hello(*c, now).is_some())
                .collect()
        };
        let groups = self.lock();
        let mut ops = Vec::new();
        for (key, raw) in self.store.scan(Table::Invites, &[])? {
            let keep = if key.starts_with(b"code") {
                postcard::from_bytes::<records::CodeRecord>(&raw).is_ok_and(|c| {
                    c.expires_at > now
                        && groups.contains_key(&c.group_id)
                        && live.contains(&c.channel)
                })
            } else {
                postcard::from_bytes::<records::InviteRecord>(&raw)
                    .is_ok_and(|i| i.expires_at > now && groups.contains_key(&i.group_id))
            };
            if !keep {
                ops.push(WriteOp::Delete {
                    table: Table::Invites,
                    key: key.to_vec(),
                });
            }
        }
        let purged = ops.len();
        if purged > 0 {
            self.store.write(ops)?;
        }
        Ok(purged)
    }

    /// The open invites (tokens and spoken codes) of `group`, soonest to expire first.
    pub fn list_invites(&self, group: &GroupId) -> Result<api::InviteList, NodeError> {
        self.check_can_invite(group)?;
        self.purge_invites()?;
        let now = now_unix();
        let mut out = Vec::new();
        for (_, record) in self.stored_tokens(group)? {
            if record.expires_at <= now {
                continue;
            }
            out.push(api::OpenInvite {
                id: hearth_protocol::invite::invite_handle(&record.secret),
                kind: api::InviteKind::Token,
                expires_at: record.expires_at,
            });
        }
        for (channel, expires_at) in self.codes().open_of(group, now) {
            out.push(api::OpenInvite {
                id: channel.to_string(),
                kind: api::InviteKind::Code,
                expires_at,
            });
        }
        out.sort_by(|a, b| (a.expires_at, &a.id).cmp(&(b.expires_at, &b.id)));
        Ok(api::InviteList {
            group_id: group.to_hex(),
            group_name: self.group_name(group)?,
            invites: out,
        })
    }

    /// The invite tokens of `group` in the store (expired ones included), with their keys.
    fn stored_tokens(
        &self,
        group: &GroupId,
    ) -> Result<Vec<(Vec<u8>, records::InviteRecord)>, NodeError> {
        let mut out = Vec::new();
        for (key, raw) in self.store.scan(Table::Invites, &[])? {
            if key.starts_with(b"code") {
                continue;
            }
            match postcard::from_bytes::<records::InviteRecord>(&raw) {
                Ok(record) if record.group_id == *group => out.push((key, record)),
                _ => {}
            }
        }
        Ok(out)
    }

    fn group_name(&self, group: &GroupId) -> Result<String, NodeError> {
        self.with_slot(group, |s| Ok(s.group.name()))
    }

    /// Withdraws the open invite `id` of `group` (a token's handle or a code's number), so
    /// nobody can join with it any more.
    pub fn withdraw_invite(
        &self,
        group: &GroupId,
        id: &str,
    ) -> Result<api::InviteWithdrawn, NodeError> {
        self.check_can_invite(group)?;
        self.purge_invites()?;
        let id = id.trim().to_ascii_lowercase();
        let now = now_unix();
        let not_found = || {
            NodeError::InviteNotFound(format!(
                "no open invite {id:?} in this group (it may have been used, withdrawn or have \
                 expired); `hearth invite list GROUP` shows the open ones"
            ))
        };
        if let Ok(channel) = id.parse::<u16>()
            && id.len() <= 3
        {
            let _groups = self.lock();
            if !self.codes().withdraw(group, channel, now) {
                return Err(not_found());
            }
            self.store.write(vec![WriteOp::Delete {
                table: Table::Invites,
                key: records::code_key(channel),
            }])?;
            self.bump();
            drop(_groups);
            return Ok(api::InviteWithdrawn {
                group_id: group.to_hex(),
                group_name: self.group_name(group)?,
                id,
                kind: api::InviteKind::Code,
            });
        }
        let _groups = self.lock();
        let matches: Vec<Vec<u8>> = self
            .stored_tokens(group)?
            .into_iter()
            .filter(|(_, record)| hearth_protocol::invite::invite_handle(&record.secret) == id)
            .map(|(key, _)| key)
            .collect();
        match matches.as_slice() {
            [] => Err(not_found()),
            // Usually one; two open tokens whose 32-bit handles collide are both withdrawn.
            keys => {
                let ops = keys
                    .iter()
                    .map(|key| WriteOp::Delete {
                        table: Table::Invites,
                        key: key.clone(),
                    })
                    .collect();
                self.store.write(ops)?;
                drop(_groups);
                Ok(api::InviteWithdrawn {
                    group_id: group.to_hex(),
                    group_name: self.group_name(group)?,
                    id,
                    kind: api::InviteKind::Token,
                })
            }
        }
    }

    /// Only a facilitator of a group this device holds may make, list or withdraw invites.
    pub fn check_can_invite(&self, group: &GroupId) -> Result<(), NodeError> {
        if !self.has_group(group) {
            return Err(NodeError::GroupNotFound(group.to_hex()));
        }
        if !self.is_facilitator(group) {
            return Err(NodeError::Forbidden(
                "only a facilitator of this group can invite; ask one of them".into(),
            ));
        }
        Ok(())
    }

    /// Rewrites a group record from a store that kept one identity for every group, giving
    /// the group that identity as its own.
    fn migrate_group_record(&self, raw: &[u8]) -> Result<GroupRecord, NodeError> {
        let malformed = || NodeError::Internal("a stored group record is malformed".into());
        let legacy: LegacyGroupRecord = postcard::from_bytes(raw).map_err(|_| malformed())?;
        let keys = self
            .store
            .get(Table::Meta, LEGACY_IDENTITY_KEY)?
            .filter(|k| MemberKeys::from_secret_bytes(k).is_some())
            .ok_or_else(malformed)?;
        let record = GroupRecord {
            info: legacy.info,
            snapshot: legacy.snapshot,
            keys: keys.to_vec(),
            introducer: None,
        };
        self.store
            .write(vec![records::put_group(&self.store, &record)])?;
        Ok(record)
    }

    /// Reads a group's record from the store again (after a failed write).
    fn reload_slot(&self, id: &GroupId) -> Result<Slot, NodeError> {
        let raw = self
            .store
            .get(Table::Groups, &records::group_key(&self.store, id))?
            .ok_or_else(|| NodeError::Internal("a group vanished from the store".into()))?;
        let record: GroupRecord = postcard::from_bytes(&raw)
            .map_err(|_| NodeError::Internal("a stored group record is malformed".into()))?;
        self.load_slot(&record)
    }

    /// Rebuilds a group from its record, its epoch keys and its stored envelopes.
    fn load_slot(&self, record: &GroupRecord) -> Result<Slot, NodeError> {
        let prefix = records::group_key(&self.store, &record.info.group_id);
        let mut grants = Vec::new();
        for (_, v) in self.store.scan(Table::EpochKeys, &prefix)? {
            let stored: records::KeyGrantRecord = postcard::from_bytes(&v)
                .map_err(|_| NodeError::Internal("a stored epoch key is malformed".into()))?;
            grants.push(stored.grant());
        }
        let keys = MemberKeys::from_secret_bytes(&record.keys).ok_or_else(|| {
            NodeError::Internal("a group's stored membership keys are malformed".into())
        })?;
        let mut group = Group::restore(record.info, &keys, grants, record.snapshot.as_deref())?;
        if let Some(facilitator) = record.introducer {
            group.set_introducer(facilitator);
        }
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

    /// This device's identity in group `id`.
    pub fn member_keys(&self, id: &GroupId) -> Result<MemberKeys, NodeError> {
        self.with_slot(id, |s| Ok(s.group.member_keys().clone()))
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

    pub fn subscribe_rosters(&self) -> watch::Receiver<u64> {
        self.rosters_changed.subscribe()
    }

    /// Groups in which this device counts someone new as a member, as that happens.
    pub fn subscribe_widened(&self) -> broadcast::Receiver<GroupId> {
        self.widened.subscribe()
    }

    /// Changes whenever what this device could share with a peer may have changed (its
    /// groups, or a membership in one).
    pub fn view_version(&self) -> u64 {
        self.groups_changed
            .borrow()
            .wrapping_add(*self.rosters_changed.borrow())
    }

    fn bump_groups(&self) {
        self.groups_changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A membership changed: sessions wake (to re-check who may receive what) and idle
    /// supervisors retry.
    fn bump_rosters(&self) {
        self.rosters_changed.send_modify(|n| *n = n.wrapping_add(1));
        self.bump();
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wakes sessions and tells clients that group `id` changed.
    fn bump_group(&self, id: &GroupId) {
        self.bump();
        // No client listening is not an error.
        let _ = self.group_events.send(*id);
    }

    /// Groups whose content or membership changes from now on, as they change.
    pub fn group_events(&self) -> broadcast::Receiver<GroupId> {
        self.group_events.subscribe()
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
            .filter(|(_, s)| s.group.name() == text)
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
        if let Some(slot) = groups.get_mut(id) {
            let compacted = slot
                .group
                .compact_own(COMPACT_AFTER_WRITES, true, &mut OsRng);
            ops.extend(records::put_compacted(&self.store, &compacted));
        }
        if let Err(e) = self.store.write(ops) {
            self.recover(groups, id);
            return Err(e.into());
        }
        self.bump_group(id);
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

    pub fn create_group(
        &self,
        name: &str,
        purpose: &str,
        my_name: Option<&str>,
    ) -> Result<GroupId, NodeError> {
        // A membership identity of its own, so this group cannot be linked to others.
        let keys = MemberKeys::generate(&mut OsRng);
        let (mut group, epoch_key, first) = Group::create(&keys, name, purpose, &mut OsRng)?;
        let renamed = match my_name {
            Some(n) => Some(group.rename(n, &mut OsRng)?),
            None => None,
        };
        let id = group.id();
        self.store
            .create_group_key(&records::group_alias(&self.store, &id))?;
        let record = GroupRecord {
            info: *group.info(),
            snapshot: None,
            keys: keys.to_secret_bytes().to_vec(),
            introducer: None,
        };
        let grant = KeyGrant {
            epoch: 0,
            rotation: None,
            access: Access::Full(epoch_key),
        };
        let mut ops = vec![
            records::put_group(&self.store, &record),
            records::put_envelope(&self.store, &first),
        ];
        ops.extend(records::put_key_grants(&self.store, &id, &[grant]));
        ops.extend(
            renamed
                .iter()
                .flat_map(|w| &w.accepted)
                .map(|e| records::put_envelope(&self.store, e)),
        );
        self.store.write(ops)?;
        self.lock().insert(id, Slot { group });
        self.bump_group(&id);
        self.bump_groups();
        Ok(id)
    }

    pub fn list_groups(&self) -> Vec<api::GroupSummary> {
        self.lock()
            .iter()
            .map(|(id, s)| api::GroupSummary {
                group_id: id.to_hex(),
                name: s.group.name(),
                members: s.group.roster().len(),
                epoch: s.group.writing_epoch(),
            })
            .collect()
    }

    pub fn agreement(&self, id: &GroupId, agreement: &str) -> Result<api::Agreement, NodeError> {
        self.with_slot(id, |s| {
            let record = s.group.agreement(agreement).ok_or_else(|| {
                NodeError::AgreementNotFound(format!("no agreement {agreement:?} here"))
            })?;
            Ok(api::Agreement {
                id: agreement.to_owned(),
                text: record.text,
                author: record.author.to_hex(),
                created_at: record.created_at,
            })
        })
    }

    pub fn group_detail(&self, id: &GroupId) -> Result<api::GroupDetail, NodeError> {
        self.with_slot(id, |s| {
            let doc = s.group.read();
            let members = self.member_infos(&s.group)?;
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
        self.with_slot(id, |s| Ok(agreements_of(&s.group.read())))
    }

    pub fn add_agreement(&self, id: &GroupId, text: &str) -> Result<String, NodeError> {
        let mut groups = self.lock();
        let slot = groups
            .get_mut(id)
            .ok_or_else(|| NodeError::GroupNotFound(id.to_hex()))?;
        // Someone who left may still hold the current key: start a new epoch first, stored
        // on its own so it is never lost if the write then fails.
        if let Some(rotated) = slot.group.rotate_if_needed(&mut OsRng)? {
            self.commit_own(&mut groups, id, rotated, Vec::new())?;
        }
        let slot = groups
            .get_mut(id)
            .ok_or_else(|| NodeError::GroupNotFound(id.to_hex()))?;
        let now = i64::try_from(now_unix()).unwrap_or(i64::MAX);
        let (agreement_id, env) = slot.group.add_agreement(text, now, &mut OsRng)?;
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
        proves: impl FnOnce(&records::InviteRecord) -> Option<Joiner>,
    ) -> Result<(Admission, records::InviteRecord, Joiner), NodeError> {
        let groups = self.lock();
        let burn = WriteOp::Delete {
            table: Table::Invites,
            key: invite_id.to_vec(),
        };
        let Some(raw) = self.store.get(Table::Invites, invite_id)? else {
            return Err(NodeError::Forbidden("unknown or used invite".into()));
        };
        let record: records::InviteRecord = postcard::from_bytes(&raw)
            .map_err(|_| NodeError::Internal("a stored invite is malformed".into()))?;
        self.admit_locked(groups, record, vec![burn], proves)
    }

    /// Admits the joiner of a spoken-code exchange whose code matched: `secret` is what
    /// the exchange agreed, kept in memory only (the code registry already made sure the
    /// code admits at most one exchange).
    pub fn admit_by_code(
        &self,
        group: &GroupId,
        secret: &[u8; 32],
        proves: impl FnOnce(&records::InviteRecord) -> Option<Joiner>,
    ) -> Result<(Admission, records::InviteRecord, Joiner), NodeError> {
        let groups = self.lock();
        let record = records::InviteRecord {
            group_id: *group,
            secret: *secret,
            expires_at: now_unix().saturating_add(crate::join::JOIN_TIMEOUT.as_secs()),
        };
        self.admit_locked(groups, record, Vec::new(), proves)
    }

    fn admit_locked(
        &self,
        mut groups: std::sync::MutexGuard<'_, BTreeMap<GroupId, Slot>>,
        record: records::InviteRecord,
        burn: Vec<WriteOp>,
        proves: impl FnOnce(&records::InviteRecord) -> Option<Joiner>,
    ) -> Result<(Admission, records::InviteRecord, Joiner), NodeError> {
        let joiner = (record.expires_at > now_unix())
            .then(|| proves(&record))
            .flatten();
        let Some(joiner) = joiner else {
            if !burn.is_empty() {
                self.store.write(burn)?;
            }
            return Err(NodeError::Forbidden(
                "expired invite or failed proof".into(),
            ));
        };
        if let Err(e) = crate::join::check_name(&joiner.name) {
            if !burn.is_empty() {
                self.store.write(burn)?;
            }
            return Err(e);
        }
        let id = record.group_id;
        let slot = groups
            .get_mut(&id)
            .ok_or_else(|| NodeError::GroupNotFound(id.to_hex()))?;
        let now = i64::try_from(now_unix()).unwrap_or(i64::MAX);
        let written =
            slot.group
                .add_member(joiner.identity, Role::Member, &joiner.name, now, &mut OsRng)?;
        // The newcomer gets exactly the key its own admission started, and only if that
        // admission took effect (never the key of an epoch from before it).
        let add = written.own.hash();
        let admitted = slot.group.roster().is_effective(&add);
        let Some((epoch, epoch_key)) = slot.group.rotation_key(&add).filter(|_| admitted) else {
            self.commit_own(&mut groups, &id, written, burn)?;
            return Err(NodeError::Conflict(
                "the admission was written but has not taken effect (the membership is \
                 changing concurrently); make a new invite once it has settled"
                    .into(),
            ));
        };
        let roster_history = slot
            .group
            .roster_history()
            .into_iter()
            .filter(|(e, r, _)| !(*e == epoch && *r == Some(written.own.hash())))
            .collect();
        let admission = Admission {
            info: *slot.group.info(),
            epoch,
            rotation: written.own.hash(),
            epoch_key,
            roster_history,
            snapshot: zeroize::Zeroizing::new(slot.group.snapshot()),
        };
        self.commit_own(&mut groups, &id, written, burn)?;
        drop(groups);
        self.bump_rosters();
        Ok((admission, record, joiner))
    }

    /// Stores a group this device has just joined with the membership keys `keys`, trusting
    /// `facilitator` (who admitted it) until the admission syncs.
    pub fn install_joined(
        &self,
        welcome: hearth_protocol::invite::Welcome,
        keys: &MemberKeys,
        facilitator: PublicIdentity,
    ) -> Result<GroupId, NodeError> {
        let id = welcome.info.group_id;
        if self.sees_self_in(&id) {
            return Err(NodeError::already_member());
        }
        // A copy kept from a membership that ended, or one whose admission never arrived,
        // gives way to the new membership.
        if self.has_group(&id) {
            self.forget_group(&id)?;
        }
        let mut group = Group::restore(
            welcome.info,
            keys,
            welcome.grants.iter().cloned(),
            Some(&welcome.snapshot),
        )?;
        group.set_introducer(facilitator);
        self.store
            .create_group_key(&records::group_alias(&self.store, &id))?;
        let record = GroupRecord {
            info: welcome.info,
            snapshot: Some(welcome.snapshot.to_vec()),
            keys: keys.to_secret_bytes().to_vec(),
            introducer: Some(facilitator),
        };
        let mut ops = vec![records::put_group(&self.store, &record)];
        ops.extend(records::put_key_grants(&self.store, &id, &welcome.grants));
        self.store.write(ops)?;
        self.lock().insert(id, Slot { group });
        self.bump_group(&id);
        self.bump_groups();
        Ok(id)
    }

    /// The members of a group as the API shows them, with this device's verification marks.
    fn member_infos(&self, group: &Group) -> Result<Vec<api::MemberInfo>, NodeError> {
        let id = group.id();
        let roster = group.roster();
        let me = group.member_keys().member_id();
        let verified = |m: &MemberId, identity: &PublicIdentity| -> Result<bool, NodeError> {
            let mark = self
                .store
                .get(Table::Verified, &records::verified_key(&self.store, &id, m))?;
            Ok(mark.is_some_and(|bytes| bytes[..] == identity.to_bytes()[..]))
        };
        // Names of departed members this device had verified: a current member going by
        // the same name but unverified has a different key.
        let mut verified_departed_names = std::collections::BTreeSet::new();
        for (m, d) in roster.departed() {
            if !d.name.is_empty() && verified(m, &d.identity)? {
                verified_departed_names.insert(d.name.clone());
            }
        }
        let mut out = Vec::new();
        for (m, member) in roster.members() {
            let is_verified = *m == me || verified(m, &member.identity)?;
            out.push(api::MemberInfo {
                member_id: m.to_hex(),
                name: member.name.clone(),
                role: member.role,
                verified: is_verified,
                joined_at: member.joined_at,
                you: *m == me,
                key_changed: !is_verified && verified_departed_names.contains(&member.name),
            });
        }
        // Seniority order: the creator first, then in order of admission.
        out.sort_by_key(|i| {
            i.member_id
                .parse::<MemberId>()
                .ok()
                .and_then(|m| roster.get(&m).map(|x| x.rank))
        });
        Ok(out)
    }

    pub fn members(&self, id: &GroupId) -> Result<Vec<api::MemberInfo>, NodeError> {
        self.with_slot(id, |s| self.member_infos(&s.group))
    }

    /// Finds a current member of a group by member id, or by a name exactly one has.
    pub fn resolve_member(&self, id: &GroupId, text: &str) -> Result<MemberId, NodeError> {
        self.with_slot(id, |s| {
            let roster = s.group.roster();
            if let Ok(m) = text.parse::<MemberId>()
                && roster.is_member(&m)
            {
                return Ok(m);
            }
            let named: Vec<MemberId> = roster
                .members()
                .filter(|(_, m)| !m.name.is_empty() && m.name == text)
                .map(|(id, _)| *id)
                .collect();
            match named.as_slice() {
                [one] => Ok(*one),
                [] => Err(NodeError::MemberNotFound(format!(
                    "no current member called {text:?} in this group; `hearth member list` \
                     shows who is in it"
                ))),
                _ => Err(NodeError::MemberNotFound(format!(
                    "{text:?} names more than one member; use the member id from \
                     `hearth member list`"
                ))),
            }
        })
    }

    /// The safety number of this device and `member`, and whether it was confirmed. With
    /// `confirm`, marks the member verified first.
    pub fn safety_number(
        &self,
        id: &GroupId,
        member: &MemberId,
        confirm: bool,
    ) -> Result<api::SafetyNumber, NodeError> {
        self.with_slot(id, |s| {
            let identity = s
                .group
                .roster()
                .get(member)
                .map(|m| m.identity)
                .ok_or_else(|| {
                    NodeError::MemberNotFound(format!("{member} is not a member of this group"))
                })?;
            let me = s.group.member_keys().public();
            if *member == me.member_id() {
                return Err(NodeError::Invalid(
                    "that is you: a safety number is compared with someone else; \
                     `hearth member list` shows the others"
                        .into(),
                ));
            }
            let key = records::verified_key(&self.store, id, member);
            if confirm {
                self.store.write(vec![WriteOp::Put {
                    table: Table::Verified,
                    key: key.clone(),
                    value: identity.to_bytes().to_vec(),
                }])?;
            }
            let verified = self
                .store
                .get(Table::Verified, &key)?
                .is_some_and(|b| b[..] == identity.to_bytes()[..]);
            Ok(api::SafetyNumber {
                safety_number: safety_number(&me, &identity),
                verified,
            })
        })
    }

    /// Runs one membership act of this device on a group and stores what it wrote.
    fn membership_act(
        &self,
        id: &GroupId,
        act: impl FnOnce(&mut Group) -> Result<Written, GroupError>,
    ) -> Result<(), NodeError> {
        let mut groups = self.lock();
        let slot = groups
            .get_mut(id)
            .ok_or_else(|| NodeError::GroupNotFound(id.to_hex()))?;
        let written = act(&mut slot.group)?;
        self.commit_own(&mut groups, id, written, Vec::new())?;
        drop(groups);
        // Live sessions re-check the standing of their peer; none restarts.
        self.bump_rosters();
        Ok(())
    }

    pub fn set_role(
        &self,
        id: &GroupId,
        member: &MemberId,
        role: Role,
    ) -> Result<api::MemberInfo, NodeError> {
        self.membership_act(id, |g| g.set_role(*member, role, &mut OsRng))?;
        self.members(id)?
            .into_iter()
            .find(|m| m.member_id == member.to_hex())
            .ok_or_else(|| NodeError::Internal("the member vanished".into()))
    }

    /// Removes a member and starts a new epoch without them. Returns that epoch.
    pub fn remove_member(&self, id: &GroupId, member: &MemberId) -> Result<u32, NodeError> {
        self.membership_act(id, |g| g.remove_member(*member, &mut OsRng))?;
        self.with_slot(id, |s| Ok(s.group.current_epoch().0))
    }

    /// Writes this device's departure from a group. Returns the departure's place in this
    /// device's log, which a peer's acknowledgement must reach.
    pub fn write_leave(&self, id: &GroupId) -> Result<u64, NodeError> {
        let mut seq = 0;
        self.membership_act(id, |g| {
            let w = g.leave(&mut OsRng)?;
            seq = w.own.header().seq;
            Ok(w)
        })?;
        Ok(seq)
    }

    /// Records how far a peer has this device's log of a group (from its version vector).
    /// Only a head that names an envelope of this device's log, hash and all, counts: a
    /// peer cannot confirm what it does not hold.
    pub fn note_peer_has(&self, id: &GroupId, vv: &VersionVector) {
        let confirmed = self.lock().get(id).and_then(|s| {
            let g = &s.group;
            let (seq, hash) = vv.get(&g.member_keys().member_id())?;
            g.holds(&g.member_keys().member_id(), *seq, hash)
                .then_some(*seq)
        });
        let Some(seq) = confirmed.as_ref() else {
            return;
        };
        let mut acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        let entry = acks.entry(*id).or_default();
        if *seq > *entry {
            *entry = *seq;
            drop(acks);
            self.acks_changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes when a peer confirms holding more of this device's log ([`Node::acknowledged`]).
    pub fn subscribe_acks(&self) -> watch::Receiver<u64> {
        self.acks_changed.subscribe()
    }

    /// The furthest any peer has confirmed holding this device's log of a group.
    pub fn acknowledged(&self, id: &GroupId) -> u64 {
        self.acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    /// Destroys this device's copy of a group: every record of it, in one transaction, then
    /// the group's own storage key, so what redb's freed pages still hold opens with no key.
    pub fn forget_group(&self, id: &GroupId) -> Result<(), NodeError> {
        let mut groups = self.lock();
        let prefix = records::group_key(&self.store, id);
        let mut ops = vec![WriteOp::Delete {
            table: Table::Groups,
            key: prefix.clone(),
        }];
        for table in [Table::Envelopes, Table::EpochKeys, Table::Verified] {
            for (key, _) in self.store.scan(table, &prefix)? {
                ops.push(WriteOp::Delete {
                    table,
                    key: key.to_vec(),
                });
            }
        }
        for (key, raw) in self.store.scan(Table::Invites, &[])? {
            // Open invites and spoken codes of the group go too.
            let of_group = if key.starts_with(b"code") {
                postcard::from_bytes::<records::CodeRecord>(&raw).is_ok_and(|c| c.group_id == *id)
            } else {
                postcard::from_bytes::<records::InviteRecord>(&raw).is_ok_and(|i| i.group_id == *id)
            };
            if of_group {
                ops.push(WriteOp::Delete {
                    table: Table::Invites,
                    key: key.to_vec(),
                });
            }
        }
        self.store.write(ops)?;
        self.codes().forget_group(id);
        self.store
            .shred_group_key(&records::group_alias(&self.store, id))?;
        groups.remove(id);
        drop(groups);
        self.bump_groups();
        let _ = self.group_events.send(*id);
        Ok(())
    }

    /// What a device does on its own after a membership change it learned of: hands keys
    /// to members who lack them where it is the one expected to, and, if someone who left
    /// still holds the current key, starts a new epoch when it is the most senior member
    /// (anyone else does before their next write).
    fn maintain(&self, group: &mut Group) -> Vec<Envelope> {
        let mut out = Vec::new();
        match group.forward_keys(&mut OsRng) {
            Ok(Some(w)) => out.extend(w.accepted),
            Ok(None) => {}
            Err(e) => tracing::debug!("could not forward keys yet: {e}"),
        }
        let me = group.member_keys().member_id();
        let senior = group
            .roster()
            .members()
            .min_by_key(|(_, m)| m.rank)
            .is_some_and(|(id, _)| *id == me);
        if senior {
            match group.rotate_if_needed(&mut OsRng) {
                Ok(Some(w)) => out.extend(w.accepted),
                Ok(None) => {}
                Err(e) => tracing::debug!("could not start a new epoch yet: {e}"),
            }
        }
        out
    }

    /// Makes a spoken invite code for `group` (facilitators only), on a channel no open
    /// code of this daemon uses.
    pub fn open_code(&self, group: &GroupId, ttl_secs: u64) -> Result<api::CodeCreated, NodeError> {
        if ttl_secs == 0 || ttl_secs > api::MAX_CODE_TTL_SECS {
            return Err(NodeError::Invalid(format!(
                "a spoken code must last between 1 second and {} minutes",
                api::MAX_CODE_TTL_SECS / 60
            )));
        }
        self.check_can_invite(group)?;
        self.purge_invites()?;
        let now = now_unix();
        let expires_at = now.saturating_add(ttl_secs);
        let mut codes = self.codes();
        let Some(code) = codes.open(*group, expires_at, now, &mut OsRng) else {
            return Err(NodeError::Conflict(format!(
                "every code number (1 to {}) holds an open code; withdraw some with \
                 `hearth invite withdraw`, or wait for them to expire",
                hearth_protocol::code::MAX_CHANNEL
            )));
        };
        let record = records::CodeRecord {
            group_id: *group,
            channel: code.channel(),
            words: *code.words(),
            expires_at,
        };
        if let Err(e) = self.store.write(vec![WriteOp::Put {
            table: Table::Invites,
            key: records::code_key(code.channel()),
            value: records::encode(&record),
        }]) {
            if let Some(generation) = codes.generation(code.channel()) {
                codes.finish(code.channel(), generation, api::CodeState::Failed, None);
            }
            return Err(e.into());
        }
        Ok(api::CodeCreated {
            code: code.to_string(),
            channel: code.channel(),
            expires_at,
        })
    }

    /// The live code on `channel`, if any, for an exchange starting now. A hello changes
    /// nothing: only a checked confirmation uses a code up.
    pub fn code_at_hello(&self, channel: u16) -> Option<crate::codes::Live> {
        self.codes().at_hello(channel, now_unix())
    }

    /// Records the check of a confirmation on `channel` (see [`crate::codes::Codes::checked`]).
    /// Memory only, so the answer goes out after the same work whatever the outcome; the
    /// caller then calls [`Node::drop_code_record`] for a used or burnt code.
    pub fn code_checked(
        &self,
        channel: u16,
        generation: Option<u64>,
        source: crate::codes::Source,
        guess: crate::codes::Guess,
    ) -> crate::codes::Checked {
        let checked = self
            .codes()
            .checked(channel, generation, source, guess, now_unix());
        // Whoever waits on a code hears of a match, a wrong guess, or of an attempt on
        // another number.
        self.bump();
        checked
    }

    /// Holds the join a matched code began for the facilitator's approval, showing who
    /// asks; false if the code has moved on (a newer code on the channel).
    pub fn await_code_approval(
        &self,
        channel: u16,
        generation: u64,
        group: &GroupId,
        joiner: &Joiner,
    ) -> Result<bool, NodeError> {
        let me = self.member_keys(group)?.public();
        let number = safety_number(&me, &joiner.identity);
        let held = self.codes().await_approval(
            channel,
            generation,
            joiner.identity.member_id().to_hex(),
            joiner.name.clone(),
            number,
        );
        self.bump();
        Ok(held)
    }

    /// The facilitator's answer so far to the join held on `channel` (of `generation`).
    pub fn code_approval(&self, channel: u16, generation: u64) -> Option<bool> {
        self.codes().approval(channel, generation)
    }

    /// The facilitator approves or declines the join held on `channel` of `group`.
    pub fn decide_code(
        &self,
        group: &GroupId,
        channel: u16,
        decision: &api::CodeApproval,
    ) -> Result<api::CodeStatus, NodeError> {
        self.check_can_invite(group)?;
        let status = self
            .codes()
            .decide(
                group,
                channel,
                decision.member_id.as_deref(),
                decision.approve,
            )
            .map_err(NodeError::Conflict)?;
        self.bump();
        Ok(status)
    }

    /// Deletes the stored record of the code on `channel` (used or burnt).
    pub fn drop_code_record(&self, channel: u16) -> Result<(), NodeError> {
        let _groups = self.lock();
        let key = records::code_key(channel);
        // A new code may have been made on the channel since: keep that one.
        if self.codes().at_hello(channel, now_unix()).is_some() {
            return Ok(());
        }
        self.store.write(vec![WriteOp::Delete {
            table: Table::Invites,
            key,
        }])?;
        Ok(())
    }

    /// Whether a spoken-code exchange from `peer` at `origin` may start now.
    pub fn code_attempt_allowed(&self, peer: &[u8], origin: Option<crate::codes::Origin>) -> bool {
        self.code_limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(peer, origin, std::time::Instant::now())
    }

    /// Records how a join that a matched code (of `generation`) began ended, for whoever
    /// waits on it; a newer code on the channel is left alone.
    pub fn set_code_state(
        &self,
        channel: u16,
        generation: u64,
        state: api::CodeState,
        joined: Option<(MemberId, String)>,
    ) {
        self.codes().finish(
            channel,
            generation,
            state,
            joined.map(|(m, n)| (m.to_hex(), n)),
        );
        self.bump();
    }

    /// Ends a join of the code on `channel` that is still under way as `failed` (its task
    /// ended early: an error, or the daemon stopping).
    pub fn fail_pending_code(&self, channel: u16, generation: u64) {
        if self.codes().fail_if_pending(channel, generation) {
            self.bump();
        }
    }

    /// What became of a code this daemon made for `group`.
    pub fn code_status(&self, group: &GroupId, channel: u16) -> Result<api::CodeStatus, NodeError> {
        self.codes()
            .status(group, channel, now_unix())
            .ok_or_else(|| {
                NodeError::Invalid(format!(
                    "this daemon has no spoken code {channel} for that group (it may have \
                     ended over an hour ago)"
                ))
            })
    }

    /// Whether this device holds group `id` at all.
    pub fn has_group(&self, id: &GroupId) -> bool {
        self.lock().contains_key(id)
    }

    /// Whether `member` is a current member of group `id` in this device's view.
    pub fn is_current_member(&self, id: &GroupId, member: &MemberId) -> bool {
        self.lock()
            .get(id)
            .is_some_and(|s| s.group.roster().is_member(member))
    }

    /// Whether this device holds group `id` with a membership that has not ended (a copy
    /// kept after leaving or being removed does not count: joining again replaces it).
    pub fn is_in(&self, id: &GroupId) -> bool {
        self.lock().get(id).is_some_and(|s| {
            let g = &s.group;
            !g.roster()
                .departed()
                .contains_key(&g.member_keys().member_id())
        })
    }

    /// Checks, persists and records envelopes a peer sent. Returns how many were new, and
    /// how many were refused for now (the buffer for out-of-order envelopes was full).
    /// A membership change wakes every session, which re-checks its peer's standing.
    pub fn ingest(&self, id: &GroupId, envelopes: Vec<Envelope>) -> Result<Ingest, NodeError> {
        let mut groups = self.lock();
        let Some(slot) = groups.get_mut(id) else {
            return Ok(Ingest::default());
        };
        let revealed_to = slot.group.reveal_to();
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
        let mut accepted = result.accepted;
        if result.roster_changed {
            accepted.extend(self.maintain(&mut slot.group));
        }
        // Someone this device now counts as a member may be connected already, in a session
        // that could not share the group with them: sessions without it start again.
        let widened = result.roster_changed
            && slot
                .group
                .reveal_to()
                .iter()
                .any(|p| !revealed_to.contains(p));
        if !accepted.is_empty() {
            // Content a member this device admitted cannot read (written concurrently with
            // the admission) is re-sealed for it.
            match slot.group.reseal_due(&mut OsRng) {
                Ok(Some(w)) => accepted.extend(w.accepted),
                Ok(None) => {}
                Err(e) => tracing::debug!("could not re-seal for a new member yet: {e}"),
            }
        }
        if accepted.is_empty() && result.superseded.is_empty() {
            drop(groups);
            if result.roster_changed {
                self.bump_rosters();
            }
            if widened {
                // No session listening is not an error.
                let _ = self.widened.send(*id);
            }
            return Ok(Ingest {
                accepted: 0,
                refused: result.refused,
                roster_changed: result.roster_changed,
            });
        }
        let mut ops: Vec<WriteOp> = result
            .superseded
            .iter()
            .map(|(author, seq)| records::delete_envelope(&self.store, id, author, *seq))
            .collect();
        ops.extend(
            accepted
                .iter()
                .map(|e| records::put_envelope(&self.store, e)),
        );
        if let Err(e) = self.store.write(ops) {
            // The peer will resend what the rebuilt group lacks.
            self.recover(&mut groups, id);
            return Err(e.into());
        }
        drop(groups);
        self.bump_group(id);
        if result.roster_changed {
            self.bump_rosters();
        }
        if widened {
            // No session listening is not an error.
            let _ = self.widened.send(*id);
        }
        Ok(Ingest {
            accepted: accepted.len(),
            refused: result.refused,
            roster_changed: result.roster_changed,
        })
    }

    pub fn version_vector(&self, id: &GroupId) -> VersionVector {
        self.lock()
            .get(id)
            .map(|s| s.group.version_vector())
            .unwrap_or_default()
    }

    /// Envelopes `known` lacks, each author's in order, within the given budgets, whoever
    /// asks (tests read a node's whole log with it; sessions use
    /// [`Node::missing_for_member`]).
    #[cfg(test)]
    pub fn missing(
        &self,
        id: &GroupId,
        known: &VersionVector,
        max_count: usize,
        max_bytes: usize,
    ) -> Vec<Envelope> {
        self.missing_if(id, known, max_count, max_bytes, |_| true)
    }

    /// What `known` lacks of group `id`, if `allowed` holds for the group: the check and the
    /// read happen under one lock.
    fn missing_if(
        &self,
        id: &GroupId,
        known: &VersionVector,
        max_count: usize,
        max_bytes: usize,
        allowed: impl Fn(&Group) -> bool,
    ) -> Vec<Envelope> {
        let mut groups = self.lock();
        self.compact_to_serve(&mut groups, id);
        groups
            .get(id)
            .filter(|s| allowed(&s.group))
            .map(|s| s.group.missing_for(known, max_count, max_bytes))
            .unwrap_or_default()
    }

    /// A peer that is behind gets this device's own log as segments where it can: what is
    /// loose is restated as a new segment (earlier ones are left as they are, so the peer
    /// is not kept waiting while they are encoded again).
    fn compact_to_serve(&self, groups: &mut BTreeMap<GroupId, Slot>, id: &GroupId) {
        let Some(slot) = groups.get_mut(id) else {
            return;
        };
        let compacted = slot
            .group
            .compact_own(MIN_SEGMENT_POSITIONS, false, &mut OsRng);
        if !compacted.is_empty()
            && let Err(e) = self
                .store
                .write(records::put_compacted(&self.store, &compacted))
        {
            tracing::warn!("could not store a compacted log: {e}");
            self.recover(groups, id);
        }
    }

    /// A peer's version vector, rewound where it disagrees with our logs (a fork).
    pub fn reconcile_heads(&self, id: &GroupId, theirs: VersionVector) -> VersionVector {
        match self.lock().get(id) {
            Some(s) => s.group.reconcile_heads(theirs),
            None => theirs,
        }
    }

    /// This side's reveal slots for a session: in each group, its identity sealed for every
    /// member it counts as current there (see [`Group::reveal_to`]), padded and shuffled.
    pub fn reveal_slots(
        &self,
        session_key: &SessionKey,
        transcript: &[u8; 32],
        my_side: Side,
    ) -> Vec<RevealSlot> {
        // The sealing (an X25519 per recipient) runs outside the lock.
        let plan: Vec<(GroupId, MemberKeys, Vec<PublicIdentity>)> = self
            .lock()
            .values()
            .map(|s| {
                let g = &s.group;
                (g.id(), g.member_keys().clone(), g.reveal_to())
            })
            .collect();
        let mut slots = Vec::new();
        for (group, keys, recipients) in plan {
            slots.extend(session::seal_reveals(
                &keys,
                &group,
                session_key,
                transcript,
                my_side,
                &recipients,
            ));
        }
        if slots.len() > MAX_REVEAL_SLOTS {
            tracing::warn!(
                "more members in all groups than one session can reveal to; a random \
                 {MAX_REVEAL_SLOTS} of them are revealed to"
            );
        }
        session::pad_slots(&mut slots, MAX_REVEAL_SLOTS, &mut OsRng);
        slots.into_iter().map(RevealSlot).collect()
    }

    /// The groups a session shares, with the peer's identity in each: those where a slot
    /// the peer addressed to this device's membership opened, from a peer this device
    /// revealed itself to (so each side learns the other's identity, or neither does).
    pub fn open_reveals(
        &self,
        their_key: &[u8; 32],
        transcript: &[u8; 32],
        their_side: Side,
        slots: &[RevealSlot],
    ) -> BTreeMap<GroupId, PublicIdentity> {
        let slots: Vec<[u8; session::SLOT_LEN]> = slots.iter().map(|s| s.0).collect();
        let openers: Vec<session::Opener> = self
            .lock()
            .values()
            .filter_map(|s| {
                let g = &s.group;
                session::Opener::new(g.member_keys(), &g.id(), their_key, transcript, their_side)
            })
            .collect();
        let opened: Vec<(GroupId, PublicIdentity)> = openers
            .iter()
            .filter_map(|o| Some((o.group(), o.open(&slots)?)))
            .collect();
        let groups = self.lock();
        opened
            .into_iter()
            .filter(|(id, peer)| groups.get(id).is_some_and(|s| s.group.reveals_to(peer)))
            .collect()
    }

    /// Where `peer` (with exactly this identity) stands in group `id` in this device's view.
    pub fn standing(&self, id: &GroupId, peer: &PublicIdentity) -> Standing {
        self.lock()
            .get(id)
            .map_or(Standing::Unknown, |s| s.group.standing(peer))
    }

    /// Envelopes of group `id` that `peer` lacks according to `known`, if `peer` is a
    /// member in this device's view; nothing otherwise. The check and the read happen
    /// under one lock, so a removal ingested meanwhile cannot slip envelopes through.
    pub fn missing_for_member(
        &self,
        id: &GroupId,
        peer: &PublicIdentity,
        known: &VersionVector,
        max_count: usize,
        max_bytes: usize,
    ) -> Vec<Envelope> {
        self.missing_if(id, known, max_count, max_bytes, |group| {
            group.standing(peer) == Standing::Member
        })
    }

    /// Whether this device already sees itself in group `id`'s membership (a joiner does
    /// once the facilitator's add has synced).
    pub fn sees_self_in(&self, id: &GroupId) -> bool {
        self.lock().get(id).is_some_and(|s| {
            let g = &s.group;
            g.roster().is_member(&g.member_keys().member_id())
        })
    }

    /// Whether this device is a facilitator of group `id`.
    pub fn is_facilitator(&self, id: &GroupId) -> bool {
        self.lock().get(id).is_some_and(|s| {
            let g = &s.group;
            g.roster().is_facilitator(&g.member_keys().member_id())
        })
    }
}

/// What [`Node::ingest`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ingest {
    pub accepted: usize,
    pub refused: usize,
    pub roster_changed: bool,
}

fn agreements_of(doc: &hearth_protocol::doc::GroupDoc) -> Vec<api::Agreement> {
    let mut list: Vec<api::Agreement> = doc
        .agreements
        .iter()
        .map(|(id, a)| api::Agreement {
            id: id.clone(),
            text: a.text.clone(),
            author: a.author.to_hex(),
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

    fn node(dir: &std::path::Path) -> Node {
        Node::open(Store::open_unprotected(dir).unwrap()).unwrap()
    }

    /// A joiner as a verified join request names it.
    fn joiner(identity: PublicIdentity, name: &str) -> Option<Joiner> {
        Some(Joiner {
            invite_id: [0; 16],
            identity,
            name: name.into(),
        })
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

    /// `b` joins `group` of `a` by an invite with id `invite_id`, as `join::settle_in` would
    /// store it (before any sync); returns its new membership keys.
    fn join(a: &Node, b: &Node, group: &GroupId, invite_id: [u8; 16]) -> MemberKeys {
        invite(a, group, invite_id, now_unix() + 60);
        let keys = MemberKeys::generate(&mut OsRng);
        let (admission, _, _) = a.admit(&invite_id, |_| joiner(keys.public(), "B")).unwrap();
        let facilitator = a.member_keys(group).unwrap().public();
        b.install_joined(admission.welcome(), &keys, facilitator)
            .unwrap();
        keys
    }

    /// Stale codes on every channel (as a daemon that ran for a long time left them)
    /// used to make `open_code` search for a free channel for ever.
    #[test]
    fn stale_codes_are_purged_and_never_stop_a_new_code() {
        let tmp = tempfile::tempdir().unwrap();
        let a = node(&tmp.path().join("a"));
        let group = a.create_group("Circle", "", None).unwrap();
        let ops = (1..=hearth_protocol::code::MAX_CHANNEL)
            .map(|c| WriteOp::Put {
                table: Table::Invites,
                key: records::code_key(c),
                value: records::encode(&records::CodeRecord {
                    group_id: group,
                    channel: c,
                    words: [1, 2, 3],
                    expires_at: now_unix() - 1,
                }),
            })
            .collect();
        a.store().write(ops).unwrap();
        invite(&a, &group, [9; 16], now_unix() - 1);
        let (tx, rx) = std::sync::mpsc::channel();
        let a = std::sync::Arc::new(a);
        let worker = a.clone();
        std::thread::spawn(move || tx.send(worker.open_code(&group, 60).map(|c| c.channel)));
        let made = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("open_code must not search for ever")
            .unwrap();
        // Everything stale is gone from the store; only the new code is left.
        let left = a.store().scan(Table::Invites, &[]).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, records::code_key(made));
    }

    #[test]
    fn invites_can_be_listed_and_withdrawn_and_a_withdrawn_invite_admits_nobody() {
        let tmp = tempfile::tempdir().unwrap();
        let a = node(&tmp.path().join("a"));
        let group = a.create_group("Circle", "", None).unwrap();
        invite(&a, &group, [1; 16], now_unix() + 60);
        invite(&a, &group, [2; 16], now_unix() - 1);
        let code = a.open_code(&group, 600).unwrap();
        let listed = a.list_invites(&group).unwrap();
        assert_eq!(listed.group_name, "Circle");
        let list = listed.invites;
        assert_eq!(list.len(), 2, "{list:?}");
        let token = list
            .iter()
            .find(|i| i.kind == api::InviteKind::Token)
            .unwrap();
        assert_eq!(token.id, hearth_protocol::invite::invite_handle(&[5; 32]));
        let spoken = list
            .iter()
            .find(|i| i.kind == api::InviteKind::Code)
            .unwrap();
        assert_eq!(spoken.id, code.channel.to_string());
        // The expired one was purged from the store.
        assert!(a.store().get(Table::Invites, &[2; 16]).unwrap().is_none());

        let withdrawn = a.withdraw_invite(&group, &token.id.to_uppercase()).unwrap();
        assert_eq!(withdrawn.kind, api::InviteKind::Token);
        let keys = MemberKeys::generate(&mut OsRng);
        assert!(a.admit(&[1; 16], |_| joiner(keys.public(), "B")).is_err());
        a.withdraw_invite(&group, &spoken.id).unwrap();
        assert!(a.code_at_hello(code.channel).is_none());
        assert_eq!(
            a.code_status(&group, code.channel).unwrap().state,
            api::CodeState::Withdrawn
        );
        assert!(a.list_invites(&group).unwrap().invites.is_empty());
        assert!(matches!(
            a.withdraw_invite(&group, &spoken.id),
            Err(NodeError::InviteNotFound(_))
        ));
        assert!(a.store().scan(Table::Invites, &[]).unwrap().is_empty());
    }

    /// A hello names a channel and tests nothing: any number of them leave the code open;
    /// the first checked wrong confirmation burns it, and its record goes from the store.
    /// A burnt code whose stored record was not deleted (the write failed) is deleted by
    /// the next purge, so a restart cannot bring it back with fresh guesses.
    #[test]
    fn a_burnt_code_left_in_the_store_is_purged_and_not_restored() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a");
        let a = node(&dir);
        let group = a.create_group("Circle", "", None).unwrap();
        let c = a.open_code(&group, 600).unwrap().channel;
        let live = a.code_at_hello(c).unwrap();
        use crate::codes::{Checked, Guess, Source};
        for i in 1..=crate::codes::MAX_WRONG as u8 {
            let checked = a.code_checked(
                c,
                Some(live.generation),
                Source::Peer([i; 32]),
                Guess::Wrong,
            );
            assert_eq!(
                checked == Checked::Burnt,
                i == crate::codes::MAX_WRONG as u8
            );
        }
        // The record is still stored, as after a failed delete.
        assert!(
            a.store()
                .get(Table::Invites, &records::code_key(c))
                .unwrap()
                .is_some()
        );
        a.purge_invites().unwrap();
        assert!(
            a.store()
                .get(Table::Invites, &records::code_key(c))
                .unwrap()
                .is_none()
        );
        drop(a);
        assert!(node(&dir).code_at_hello(c).is_none());
    }

    #[test]
    fn only_a_checked_wrong_guess_burns_a_code_and_it_survives_a_restart_until_then() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a");
        let a = node(&dir);
        let group = a.create_group("Circle", "", None).unwrap();
        let code = a.open_code(&group, 600).unwrap();
        let c = code.channel;
        for _ in 0..50 {
            assert!(a.code_at_hello(c).is_some());
        }
        drop(a);
        let a = node(&dir);
        let live = a
            .code_at_hello(c)
            .expect("the open code survives a restart");
        assert_eq!(live.code.to_string(), code.code);
        assert_eq!(
            a.code_status(&group, c).unwrap().state,
            api::CodeState::Open
        );
        let other = if c == 1 { 2 } else { 1 };
        use crate::codes::{Checked, Guess, Source};
        let from = |i: u8| Source::Peer([i; 32]);
        assert_eq!(
            a.code_checked(other, None, from(0), Guess::Wrong),
            Checked::NoCode
        );
        assert_eq!(a.code_status(&group, c).unwrap().other_attempts, 1);
        // Wrong guesses from two sources leave it open (and its record stored)...
        for i in 1..crate::codes::MAX_WRONG as u8 {
            assert_eq!(
                a.code_checked(c, Some(live.generation), from(i), Guess::Wrong),
                Checked::Wrong
            );
            a.drop_code_record(c).unwrap();
        }
        drop(a);
        let a = node(&dir);
        let live = a
            .code_at_hello(c)
            .expect("still open after two wrong guesses");
        // ...the third burns it (the count starts again after a restart: see the docs).
        for i in 1..=crate::codes::MAX_WRONG as u8 {
            let checked = a.code_checked(c, Some(live.generation), from(i), Guess::Wrong);
            let last = i == crate::codes::MAX_WRONG as u8;
            assert_eq!(checked == Checked::Burnt, last, "{i}: {checked:?}");
        }
        a.drop_code_record(c).unwrap();
        assert_eq!(
            a.code_status(&group, c).unwrap().state,
            api::CodeState::WrongCode
        );
        assert!(a.store().scan(Table::Invites, b"code").unwrap().is_empty());
    }

    /// A facilitator node with a group, and a member node that joined it and synced.
    fn pair(tmp: &std::path::Path) -> (Node, Node, GroupId) {
        let a = node(&tmp.join("a"));
        let b = node(&tmp.join("b"));
        let group = a.create_group("Circle", "", None).unwrap();
        join(&a, &b, &group, [1; 16]);
        // The joiner and its facilitator recognise each other before the joiner's own
        // admission has reached it by sync.
        assert_recognise_each_other(&a, &b, group);
        let all = a.missing(&group, &VersionVector::new(), usize::MAX, usize::MAX);
        assert_eq!(b.ingest(&group, all).unwrap().accepted, 2);
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
        assert_eq!(b.ingest(&group, vec![tampered]).unwrap().accepted, 0);
        assert!(b.agreements(&group).unwrap().is_empty());
        assert_eq!(stored_envelopes(&b), before);

        assert_eq!(b.ingest(&group, genuine).unwrap().accepted, 1);
        assert_eq!(b.agreements(&group).unwrap().len(), 1);
        assert_eq!(stored_envelopes(&b), before + 1);
    }

    #[test]
    fn an_invite_admits_one_member_and_a_failed_proof_burns_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, _b, group) = pair(tmp.path());
        let c = MemberKeys::generate(&mut OsRng).public();
        // The invite that admitted b is gone.
        assert!(matches!(
            a.admit(&[1; 16], |_| joiner(c, "C")),
            Err(NodeError::Forbidden(_))
        ));
        // A wrong proof burns a live invite: the right one afterwards fails too.
        invite(&a, &group, [2; 16], now_unix() + 60);
        assert!(a.admit(&[2; 16], |_| None).is_err());
        assert!(a.admit(&[2; 16], |_| joiner(c, "C")).is_err());
        // An expired invite admits nobody.
        invite(&a, &group, [3; 16], now_unix() - 1);
        assert!(a.admit(&[3; 16], |_| joiner(c, "C")).is_err());
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
        // Both still recognise each other after the restart.
        assert_recognise_each_other(&a, &b, group);
    }

    type Shared = BTreeMap<GroupId, PublicIdentity>;

    /// The reveal exchange of one session between two nodes: the groups the dialer and
    /// the listener each end up sharing, with the identity each learnt of the other.
    fn meet(dialer: &Node, listener: &Node) -> (Shared, Shared) {
        let (dk, lk) = (
            SessionKey::generate(&mut OsRng),
            SessionKey::generate(&mut OsRng),
        );
        let t = session::transcript(&session::Hellos {
            dialer_peer: b"dialer",
            listener_peer: b"listener",
            dialer_nonce: &[1; 32],
            listener_nonce: &[2; 32],
            dialer_key: &dk.public(),
            listener_key: &lk.public(),
        });
        let from_dialer = dialer.reveal_slots(&dk, &t, Side::Dialer);
        let from_listener = listener.reveal_slots(&lk, &t, Side::Listener);
        (
            dialer.open_reveals(&lk.public(), &t, Side::Listener, &from_listener),
            listener.open_reveals(&dk.public(), &t, Side::Dialer, &from_dialer),
        )
    }

    /// In a session either one dials, each learns the other's identity in `group`.
    fn assert_recognise_each_other(a: &Node, b: &Node, group: GroupId) {
        let id = |n: &Node| n.member_keys(&group).unwrap().public();
        for (dialer, listener) in [(a, b), (b, a)] {
            let (seen_by_dialer, seen_by_listener) = meet(dialer, listener);
            assert_eq!(seen_by_dialer, BTreeMap::from([(group, id(listener))]));
            assert_eq!(seen_by_listener, BTreeMap::from([(group, id(dialer))]));
        }
    }

    /// A member that missed many epochs (it was away while others were admitted) is still
    /// recognised both ways, so it can catch up: epochs play no part in meeting.
    #[test]
    fn a_member_many_epochs_behind_still_recognises_and_is_recognised() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, group) = pair(tmp.path());
        for i in 0..12u8 {
            invite(&a, &group, [10 + i; 16], now_unix() + 60);
            let newcomer = MemberKeys::generate(&mut OsRng).public();
            a.admit(&[10 + i; 16], |_| joiner(newcomer, "N")).unwrap();
        }
        let (behind, ahead) = (
            b.with_slot(&group, |s| Ok(s.group.current_epoch().0))
                .unwrap(),
            a.with_slot(&group, |s| Ok(s.group.current_epoch().0))
                .unwrap(),
        );
        assert!(ahead >= behind + 12, "{behind} {ahead}");
        assert_recognise_each_other(&a, &b, group);
    }

    /// An ex-member meeting a member learns nothing: not its identity in the group, not
    /// even that it is in the group. Neither side shares the group, whether the removed
    /// device has heard of its removal or not, and the member tells it nothing.
    #[test]
    fn an_ex_member_meeting_a_member_learns_no_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, group) = pair(tmp.path());
        let removed = b.member_keys(&group).unwrap().public();
        a.remove_member(&group, &removed.member_id()).unwrap();
        // B has not heard of its removal: it still counts A as a member.
        assert_eq!(
            b.standing(&group, &a.member_keys(&group).unwrap().public()),
            Standing::Member
        );
        for (dialer, listener) in [(&a, &b), (&b, &a)] {
            let (x, y) = meet(dialer, listener);
            assert!(x.is_empty() && y.is_empty(), "{x:?} {y:?}");
        }
        // Nor does a departure that has reached the ex-member change that.
        let all = a.missing(&group, &VersionVector::new(), usize::MAX, usize::MAX);
        b.ingest(&group, all).unwrap();
        let (x, y) = meet(&a, &b);
        assert!(x.is_empty() && y.is_empty());
    }

    /// Identities in two groups cannot be linked, and the same device can come back to a
    /// group it was removed from as a new membership.
    #[test]
    fn each_membership_has_its_own_identity_and_a_removed_member_can_come_back() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, group) = pair(tmp.path());
        let other = b.create_group("Other", "", None).unwrap();
        let in_group = b.member_keys(&group).unwrap().public();
        let in_other = b.member_keys(&other).unwrap().public();
        assert_ne!(in_group.signing, in_other.signing);
        assert_ne!(in_group.agreement, in_other.agreement);

        a.remove_member(&group, &in_group.member_id()).unwrap();
        b.forget_group(&group).unwrap();
        let keys = join(&a, &b, &group, [7; 16]);
        let all = a.missing(&group, &VersionVector::new(), usize::MAX, usize::MAX);
        b.ingest(&group, all).unwrap();
        assert!(b.sees_self_in(&group));
        let members = a.members(&group).unwrap();
        assert_eq!(members.len(), 2);
        assert!(
            members
                .iter()
                .any(|m| m.member_id == keys.member_id().to_hex())
        );
        // The old membership's removal stands: it is still departed.
        assert_eq!(a.standing(&group, &in_group), Standing::Departed);
        assert_recognise_each_other(&a, &b, group);
    }

    /// What a session sends follows the peer's standing as it changes: a member gets what
    /// it lacks; once removed, nothing, on the same session.
    #[test]
    fn a_removed_peer_is_sent_nothing_from_the_moment_of_its_removal() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, group) = pair(tmp.path());
        let peer = b.member_keys(&group).unwrap().public();
        let stranger = MemberKeys::generate(&mut OsRng).public();
        assert_eq!(a.standing(&group, &peer), Standing::Member);
        assert_eq!(a.standing(&group, &stranger), Standing::Unknown);

        a.add_agreement(&group, "for B").unwrap();
        let known = b.version_vector(&group);
        let lacks = a.missing_for_member(&group, &peer, &known, usize::MAX, usize::MAX);
        assert_eq!(lacks.len(), 1);
        assert!(
            a.missing_for_member(&group, &stranger, &known, usize::MAX, usize::MAX)
                .is_empty()
        );

        a.remove_member(&group, &peer.member_id()).unwrap();
        assert_eq!(a.standing(&group, &peer), Standing::Departed);
        a.add_agreement(&group, "not for B").unwrap();
        assert!(
            a.missing_for_member(&group, &peer, &known, usize::MAX, usize::MAX)
                .is_empty()
        );
        // Its standing changes on its own device too once the removal reaches it.
        let me_on_b = a.member_keys(&group).unwrap().public();
        assert_eq!(b.standing(&group, &me_on_b), Standing::Member);
        let all = a.missing(&group, &known, usize::MAX, usize::MAX);
        let roster_changed = b.ingest(&group, all).unwrap().roster_changed;
        assert!(roster_changed);
        assert_eq!(b.standing(&group, &peer), Standing::Departed);
    }
}

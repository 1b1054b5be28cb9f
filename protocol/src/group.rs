//! One group's replicated state, and the rules for accepting envelopes into it.
//!
//! A [`Group`] holds the root of trust ([`GroupInfo`]), the epoch keys this device has,
//! every member's log and its head (the version vector), the membership resolved from the
//! logs' membership operations and the automerge document built from the content that
//! counts. [`Group::ingest`] is the only way anything from a peer, or from this device's
//! own store, changes that state; this device's own acts go through it too.
//!
//! Accepting an envelope into a log and giving it effect are separate steps. Acceptance
//! needs only the author's identity (known once anyone has added them) and the hash chain,
//! so every device accepts the same logs whatever it can read. Effect needs the epoch's
//! key, and for content, that the author counts at that point of its log
//! ([`Roster::counts`]): a member removed or gone has its acts after the cut withheld,
//! unless content a member counts built on them (automerge needs a change's dependencies
//! to apply it).

use std::collections::{BTreeMap, BTreeSet};

use rand_core::CryptoRngCore;

use crate::api::Role;
use crate::crypto::{SecretKey, XNONCE_LEN};
use crate::doc::{self, AgreementRecord, DocError, GroupDoc, GroupDocument, Rules};
use crate::envelope::{Body, Envelope, EnvelopeError, Hash, Header, Sealing, ZERO_HASH, body_key};
use crate::identity::{MemberKeys, PublicIdentity};
use crate::ids::{GroupId, MemberId};
use crate::lockbox::Lockbox;
use crate::membership::{
    Action, GroupInfo, MAX_MEMBERS, MAX_NAME_LEN, Membership, OpRecord, Roster, RosterOp, Rotation,
};

/// Most envelopes held back (waiting for an earlier envelope or for their author's add).
pub const MAX_PENDING: usize = 50_000;
/// Most bytes held back in all.
pub const MAX_PENDING_BYTES: usize = 64 << 20;
/// Most envelopes held back for one author.
pub const MAX_PENDING_PER_AUTHOR: usize = 10_000;
/// Most envelopes held back for an author that is not a member here: not (yet) known to
/// be one, or departed.
pub const MAX_PENDING_PER_UNKNOWN_AUTHOR: usize = 1_000;
/// Most envelopes, and bytes, held back for all such authors together: identities are
/// free to make, and however many a stranger or a former member makes, members'
/// out-of-order envelopes keep the rest of the buffer.
pub const MAX_PENDING_OUTSIDERS: usize = 2_000;
pub const MAX_PENDING_OUTSIDER_BYTES: usize = 8 << 20;
/// How far past its cut a departed author's log grows on this device: far enough for the
/// acts concurrent with its departure that can undo it (a senior facilitator's
/// counter-removal), and no further, so a former member cannot make others store and
/// forward without end. What lies beyond waits (bounded above) until the departure is
/// undone, if ever.
pub const MAX_PAST_CUT: u64 = 64;
/// Most different re-sealings of one envelope kept while none checks out.
pub const MAX_RESEAL_CANDIDATES: usize = 4;
/// Most operations of an author past its cut that this device takes keys from.
pub const MAX_UNCOUNTED_GRANTS: usize = 8;
/// Highest sequence number accepted (keeps index arithmetic far from overflow).
pub const MAX_SEQ: u64 = 1 << 48;
/// An author's newest envelopes, never compacted: a member being admitted at the same time
/// may need them re-sealed, and re-sealing works on envelopes, not segments.
pub const KEEP_RECENT: u64 = 64;
/// Fewest positions worth a segment of their own.
pub const MIN_SEGMENT_POSITIONS: u64 = 32;

/// The newest envelope of one author that this device has accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHead {
    pub seq: u64,
    pub hash: Hash,
    /// The author's newest automerge change as its signed header states it.
    pub change_head: Hash,
}

/// author -> (highest sequence number, hash of that envelope).
pub type VersionVector = BTreeMap<MemberId, (u64, Hash)>;

/// How this device can read one epoch's envelopes.
#[derive(Clone)]
pub enum Access {
    /// The epoch key itself: content and membership operations.
    Full(SecretKey),
    /// Only the epoch's roster body key: membership operations, as a member admitted
    /// after the epoch is given.
    Roster(SecretKey),
}

/// An epoch key (or roster key) this device holds.
#[derive(Clone)]
pub struct KeyGrant {
    pub epoch: u32,
    /// Envelope hash of the rotation that started the epoch (none for the first epoch).
    pub rotation: Option<Hash>,
    pub access: Access,
}

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("{what} is too long ({len} characters; at most {max})")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("only a facilitator can do that")]
    NotFacilitator,
    #[error(
        "this device is not (or not yet) a member of the group; if it has just joined, \
         wait until it has synced with the facilitator's daemon"
    )]
    NotMember,
    #[error("{0} is not a member of this group")]
    NoSuchMember(MemberId),
    #[error("{0} is already a member of this group")]
    AlreadyMember(MemberId),
    #[error(
        "that identity ({0}) left or was removed; a person who comes back joins with a new \
         invite, which gives them a new identity in the group"
    )]
    Departed(MemberId),
    #[error("to leave the group yourself, use leave rather than remove")]
    RemoveSelf,
    #[error("the group would have no facilitator left; make another member a facilitator first")]
    LastFacilitator,
    #[error("the group already has {MAX_MEMBERS} members, the most hearth supports")]
    Full,
    #[error(
        "this device does not hold the key of the group's current epoch yet (it changed \
         while this device was away); wait until it has synced with another member"
    )]
    NoEpochKey(u32),
    #[error("someone who has left still holds the group's current key; start a new epoch first")]
    NeedsRotation,
    #[error("the group's root of trust does not check out (group id does not match its creator)")]
    NotAuthentic,
    #[error(transparent)]
    Doc(#[from] doc::DocError),
    #[error("this device's own envelope was not accepted: {0}")]
    OwnEnvelope(String),
}

/// Envelopes this device wrote (the last is the act asked for; a rotation may come first),
/// with every envelope their writing let in: the caller stores all of `accepted`.
#[derive(Debug)]
pub struct Written {
    pub own: Envelope,
    pub accepted: Vec<Envelope>,
}

impl Written {
    fn after(mut self, earlier: Option<Written>) -> Written {
        if let Some(mut e) = earlier {
            e.accepted.append(&mut self.accepted);
            self.accepted = e.accepted;
        }
        self
    }
}

/// A run of this device's own log restated as one segment: store `segment` and delete the
/// items that ended at `replaced` (the segment itself ends at the last of them).
#[derive(Debug)]
pub struct Compacted {
    pub segment: Envelope,
    pub replaced: Vec<u64>,
}

/// What [`Group::ingest`] did with a batch.
#[derive(Debug, Default)]
pub struct Ingested {
    /// Newly accepted envelopes, each author's in sequence order: store and forward these.
    pub accepted: Vec<Envelope>,
    /// Items (author, last position) dropped because an accepted segment restates them:
    /// delete these from the store.
    pub superseded: Vec<(MemberId, u64)>,
    /// Envelopes dropped: wrong group, bad signature, broken hash chain, or over the cap.
    pub rejected: usize,
    /// Accepted envelopes whose content can have no effect (a malformed body, changes
    /// that are not the author's own, a body that contradicts its signed header).
    pub ineffective: usize,
    /// Authors newly caught forking their log.
    pub forks: usize,
    /// Out-of-order envelopes not buffered because the buffer was full: the sender should
    /// be asked again later.
    pub refused: usize,
    /// Whether the membership changed.
    pub roster_changed: bool,
}

/// What checking an envelope's changes came to.
enum ContentCheck {
    Taken,
    /// The change before them is not known here yet.
    Wait,
    /// They are not the author's next changes as its signed header states them.
    Bad,
    /// A segment that says something else than the author's envelopes held here.
    Fork,
}

/// What opening an accepted envelope gave. Short-lived (one per envelope opened), so the
/// size of its largest variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Opened {
    Body(Body),
    /// Authenticated under a key we hold, but not a body we can use.
    Malformed,
    /// No key we hold opens it (yet).
    NoKey,
}

/// Where an item waits in the out-of-order buffer: its author, last and first position.
type PendingKey = (MemberId, u64, u64);

pub struct Group {
    info: GroupInfo,
    device: MemberKeys,
    membership: Membership,
    keys: BTreeMap<u32, Vec<KeyGrant>>,
    heads: BTreeMap<MemberId, LogHead>,
    doc: GroupDocument,
    /// Who may change what in `doc`: content that breaks them never counts.
    rules: Rules,
    /// Every accepted envelope and segment, per author, by the last log position it holds
    /// (what peers may lack). A device may hold a segment beside envelopes it restates.
    logs: BTreeMap<MemberId, BTreeMap<u64, Envelope>>,
    /// Keyed by author, last position and first position: a segment and the envelope at
    /// its last position can both wait here (either may be what continues the log).
    pending: BTreeMap<PendingKey, Envelope>,
    pending_bytes: usize,
    /// How many envelopes, and bytes, of each author wait in `pending`.
    pending_per_author: BTreeMap<MemberId, (usize, usize)>,
    /// Authors whose logs are frozen on this device, with the first seq whose content is
    /// excluded: caught signing two different envelopes for one place in their log (a
    /// fork), or sending changes that crash automerge.
    frozen: BTreeMap<MemberId, u64>,
    /// Log positions whose content has no effect (counted once each).
    ineffective: BTreeSet<(MemberId, u64)>,
    /// Accepted envelopes no key held here opens yet.
    sealed: BTreeSet<(MemberId, u64)>,
    /// Membership operations with lockboxes for this device whose keys are not taken yet.
    lockbox_ops: BTreeSet<Hash>,
    /// Per author past its cut, how many operations of it this device took keys from.
    uncounted_grants: BTreeMap<MemberId, usize>,
    /// Full keys handed to this device outside the logs (creation, admission).
    outside_grants: Vec<(u32, Option<Hash>)>,
    /// Automerge sequence numbers (first, last) of each opened, well-formed content
    /// envelope: what counts when the document is rebuilt.
    content: BTreeMap<(MemberId, u64), (u64, u64)>,
    /// Changes re-sealed for this device, by the place of the envelope they belong to.
    /// Candidates from different members, until one checks out against the original's
    /// signed header; then only that one.
    reseals: BTreeMap<(MemberId, u64), Vec<Vec<Vec<u8>>>>,
    /// Segments re-sealed for this device (`ends`, `bundle`), by the place of the segment
    /// they restate; candidates as for `reseals`.
    segment_reseals: BTreeMap<(MemberId, u64), Vec<SegmentBody>>,
    /// Envelopes this device has re-sealed for members it admitted.
    resealed: BTreeSet<(MemberId, u64)>,
    /// Automerge sequence number of every change checked here, by hash.
    change_seqs: BTreeMap<Hash, u64>,
    /// Opened content not applied: its author does not count at that point (yet).
    withheld: BTreeMap<(MemberId, u64), Vec<automerge::Change>>,
    /// Per author, the newest log position whose content was applied because it counts.
    applied_upto: BTreeMap<MemberId, u64>,
    /// The snapshot this device joined with, if any: the base to rebuild the document on.
    base: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// The facilitator who admitted this device, trusted until the admission arrives.
    introducer: Option<PublicIdentity>,
}

/// Where another membership stands in a group, in this device's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// A member: it is sent the group.
    Member,
    /// It left or was removed: it is sent nothing but this device's head of its own log.
    Departed,
    /// The facilitator who admitted this device, before the admission has reached it: it
    /// is told what this device holds (so it sends what is lacking), and sent nothing.
    Introducer,
    /// Not known here as a member (its admission has not reached this device).
    Unknown,
}

fn check_text(
    what: &'static str,
    text: &str,
    max: usize,
    allow_empty: bool,
) -> Result<(), GroupError> {
    let len = text.chars().count();
    if !allow_empty && text.trim().is_empty() {
        return Err(GroupError::Empty(what));
    }
    if len > max {
        return Err(GroupError::TooLong { what, len, max });
    }
    Ok(())
}

impl Group {
    /// Creates a new group with this device as creator and facilitator. Returns the group,
    /// its first epoch key (which the caller must store) and its first envelope (the
    /// document's initial state), which the caller must store.
    pub fn create(
        me: &MemberKeys,
        name: &str,
        purpose: &str,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Group, SecretKey, Envelope), GroupError> {
        check_text("the group name", name, doc::MAX_NAME_LEN, false)?;
        check_text("the purpose", purpose, doc::MAX_PURPOSE_LEN, true)?;
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        let info = GroupInfo {
            group_id: GroupId::derive(&me.public().signing, &nonce),
            creator: me.public(),
            nonce,
        };
        let epoch_key = SecretKey::random(rng);
        let grant = KeyGrant {
            epoch: 0,
            rotation: None,
            access: Access::Full(epoch_key.clone()),
        };
        let mut group = Group::restore(info, me, [grant], None)?;
        let changes = group.doc.init(name, purpose)?;
        let written = group
            .seal_changes(changes, rng)?
            .ok_or_else(|| GroupError::OwnEnvelope("initial state made no change".into()))?;
        Ok((group, epoch_key, written.own))
    }

    /// Rebuilds a group from what the store holds: its root, the keys this device was
    /// handed outside the logs and, for a member who joined, the snapshot it joined with.
    /// Feed the stored envelopes to [`Group::ingest_stored`] afterwards.
    pub fn restore(
        info: GroupInfo,
        me: &MemberKeys,
        grants: impl IntoIterator<Item = KeyGrant>,
        snapshot: Option<&[u8]>,
    ) -> Result<Group, GroupError> {
        if !info.is_authentic() {
            return Err(GroupError::NotAuthentic);
        }
        let actor = me.member_id().actor_id();
        let creator = info.creator.member_id();
        let (doc, rules) = match snapshot {
            Some(bytes) => {
                let doc = GroupDocument::load(bytes, actor)?;
                let rules = Rules::of_document(&creator, &doc);
                (doc, rules)
            }
            None => (GroupDocument::new(actor), Rules::new(&creator)),
        };
        let mut group = Group {
            membership: Membership::new(&info),
            info,
            device: me.clone(),
            keys: BTreeMap::new(),
            heads: BTreeMap::new(),
            doc,
            rules,
            logs: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_bytes: 0,
            pending_per_author: BTreeMap::new(),
            frozen: BTreeMap::new(),
            ineffective: BTreeSet::new(),
            sealed: BTreeSet::new(),
            lockbox_ops: BTreeSet::new(),
            uncounted_grants: BTreeMap::new(),
            outside_grants: Vec::new(),
            content: BTreeMap::new(),
            change_seqs: BTreeMap::new(),
            reseals: BTreeMap::new(),
            segment_reseals: BTreeMap::new(),
            resealed: BTreeSet::new(),
            withheld: BTreeMap::new(),
            applied_upto: BTreeMap::new(),
            base: snapshot.map(|b| zeroize::Zeroizing::new(b.to_vec())),
            introducer: None,
        };
        for grant in grants {
            if matches!(grant.access, Access::Full(_)) {
                group.outside_grants.push((grant.epoch, grant.rotation));
            }
            group.grant(grant);
        }
        Ok(group)
    }

    pub fn id(&self) -> GroupId {
        self.info.group_id
    }

    pub fn info(&self) -> &GroupInfo {
        &self.info
    }

    pub fn roster(&self) -> &Roster {
        self.membership.roster()
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    fn me(&self) -> MemberId {
        self.device.member_id()
    }

    /// Adds a key unless an equal one is held. Returns whether it was new.
    fn grant(&mut self, grant: KeyGrant) -> bool {
        let held = self.keys.entry(grant.epoch).or_default();
        let same = |g: &KeyGrant| {
            g.rotation == grant.rotation
                && match (&g.access, &grant.access) {
                    (Access::Full(a), Access::Full(b)) | (Access::Roster(a), Access::Roster(b)) => {
                        a == b
                    }
                    _ => false,
                }
        };
        if held.iter().any(same) {
            return false;
        }
        held.push(grant);
        true
    }

    /// The epochs this device can read content of.
    pub fn readable_epochs(&self) -> Vec<u32> {
        self.keys
            .iter()
            .filter(|(_, gs)| gs.iter().any(|g| matches!(g.access, Access::Full(_))))
            .map(|(e, _)| *e)
            .collect()
    }

    /// The epoch new envelopes are written under, and its key if this device holds it.
    pub fn current_epoch(&self) -> (u32, Option<&SecretKey>) {
        let current = self.roster().current_epoch();
        (current.epoch, self.full_key(current.epoch, current.op))
    }

    /// This device's keys in this group (its membership identity).
    pub fn member_keys(&self) -> &MemberKeys {
        &self.device
    }

    /// Trusts `facilitator` (who admitted this device) as a member until this device sees
    /// its own admission in the logs, which the facilitator is the first to bring.
    pub fn set_introducer(&mut self, facilitator: PublicIdentity) {
        self.introducer = Some(facilitator);
    }

    /// Where `peer`, with exactly this identity, stands in this group in this device's view.
    pub fn standing(&self, peer: &PublicIdentity) -> Standing {
        let roster = self.roster();
        let id = peer.member_id();
        if roster.get(&id).is_some_and(|m| m.identity == *peer) {
            Standing::Member
        } else if roster
            .departed()
            .get(&id)
            .is_some_and(|d| d.identity == *peer)
        {
            Standing::Departed
        } else if self.introducer == Some(*peer) && !roster.is_member(&self.me()) {
            Standing::Introducer
        } else {
            Standing::Unknown
        }
    }

    /// Whom this device reveals its identity in this group to when it meets a peer: every
    /// member it counts as current but itself; before it sees its own admission, only the
    /// facilitator who admitted it; once it left or was removed, no one.
    pub fn reveal_to(&self) -> Vec<PublicIdentity> {
        let roster = self.roster();
        let me = self.me();
        if roster.is_member(&me) {
            roster
                .members()
                .filter(|(id, _)| **id != me)
                .map(|(_, m)| m.identity)
                .collect()
        } else if roster.departed().contains_key(&me) {
            Vec::new()
        } else {
            self.introducer.into_iter().collect()
        }
    }

    /// Whether a session may share this group with `peer`: exactly when this device
    /// revealed itself to it (see [`Group::reveal_to`]).
    pub fn reveals_to(&self, peer: &PublicIdentity) -> bool {
        self.reveal_to().contains(peer)
    }

    /// Every full epoch key held, newest epoch first (for recognising peers in a session).
    pub fn epoch_keys(&self) -> impl Iterator<Item = (u32, &SecretKey)> {
        self.keys.iter().rev().flat_map(|(e, gs)| {
            gs.iter().filter_map(move |g| match &g.access {
                Access::Full(k) => Some((*e, k)),
                Access::Roster(_) => None,
            })
        })
    }

    /// Roster keys of every epoch held, for a member being admitted now: it may follow who
    /// belongs, from the group's start, but read no content written before it joined.
    pub fn roster_history(&self) -> Vec<(u32, Option<Hash>, SecretKey)> {
        let group = self.id();
        self.keys
            .iter()
            .flat_map(|(e, gs)| {
                gs.iter().map(move |g| {
                    let key = match &g.access {
                        Access::Full(k) => body_key(k, &group, *e, Sealing::Roster),
                        Access::Roster(k) => k.clone(),
                    };
                    (*e, g.rotation, key)
                })
            })
            .collect()
    }

    pub fn read(&self) -> GroupDoc {
        self.doc.read()
    }

    /// The group's name, without reading the whole document.
    pub fn name(&self) -> String {
        self.doc.name()
    }

    /// One agreement by id, without reading the whole document.
    pub fn agreement(&self, id: &str) -> Option<AgreementRecord> {
        self.doc.agreement(id)
    }

    /// The epoch this device writes under: the current one, if it holds its key.
    pub fn writing_epoch(&self) -> Option<u32> {
        match self.current_epoch() {
            (epoch, Some(_)) => Some(epoch),
            (_, None) => None,
        }
    }

    /// A saved copy of the document, for a joining member.
    pub fn snapshot(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    #[cfg(test)]
    fn snapshot_clone(&self) -> Vec<u8> {
        self.doc.clone_saved()
    }

    pub fn version_vector(&self) -> VersionVector {
        self.heads
            .iter()
            .map(|(a, h)| (*a, (h.seq, h.hash)))
            .collect()
    }

    pub fn head(&self, author: &MemberId) -> Option<&LogHead> {
        self.heads.get(author)
    }

    /// Envelopes that a peer with version vector `theirs` lacks, each author's in order,
    /// at most `max_count` of them and `max_bytes` in all.
    pub fn missing_for(
        &self,
        theirs: &VersionVector,
        max_count: usize,
        max_bytes: usize,
    ) -> Vec<Envelope> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for (author, log) in &self.logs {
            let mut reached = theirs.get(author).map_or(0, |(s, _)| *s);
            for env in log.range(reached.saturating_add(1)..).map(|(_, e)| e) {
                if env.first() > reached + 1 {
                    // A gap: nothing here continues what the peer has.
                    break;
                }
                if out.len() >= max_count || bytes + env.as_bytes().len() > max_bytes {
                    return out;
                }
                bytes += env.as_bytes().len();
                out.push(env.clone());
                reached = env.header().seq;
            }
        }
        out
    }

    /// Reads a peer's version vector: where the peer's (seq, hash) for an author differs
    /// from the envelope we hold at that seq, one of us holds a branch of a fork. Returns
    /// the vector to send against, rewound so that our envelope at that seq goes to the
    /// peer, whose `ingest` will then detect the fork (and ours, when it sends its own).
    pub fn reconcile_heads(&self, mut theirs: VersionVector) -> VersionVector {
        for (author, (seq, hash)) in theirs.iter_mut() {
            let Some(ours) = self.item_ending_at(author, *seq) else {
                continue;
            };
            if ours.chain_hash() != *hash {
                // Rewind to before our item, where this device knows the chain hash.
                let before = ours.first() - 1;
                if let Some(h) = self.chain_hash_at(author, before) {
                    *seq = before;
                    *hash = h;
                }
            }
        }
        theirs
    }

    /// Authors this device has caught forking their log.
    pub fn forked_authors(&self) -> impl Iterator<Item = &MemberId> {
        self.frozen.keys()
    }

    fn require_member(&self) -> Result<(), GroupError> {
        if self.roster().is_member(&self.me()) {
            Ok(())
        } else {
            Err(GroupError::NotMember)
        }
    }

    fn require_facilitator(&self) -> Result<(), GroupError> {
        self.require_member()?;
        if self.roster().is_facilitator(&self.me()) {
            Ok(())
        } else {
            Err(GroupError::NotFacilitator)
        }
    }

    /// Adds an agreement written by this device. Returns its id and the envelopes to store.
    pub fn add_agreement(
        &mut self,
        text: &str,
        now_unix: i64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(String, Written), GroupError> {
        check_text("the agreement", text, doc::MAX_AGREEMENT_LEN, false)?;
        self.require_member()?;
        if self.roster().needs_rotation() {
            return Err(GroupError::NeedsRotation);
        }
        let mut raw = [0u8; 8];
        rng.fill_bytes(&mut raw);
        let id = doc::agreement_id(&self.me(), raw);
        let changes = self.doc.insert_agreement(&id, text, now_unix)?;
        let env = self
            .seal_changes(changes, rng)?
            .ok_or_else(|| GroupError::OwnEnvelope("agreement made no change".into()))?;
        Ok((id, env))
    }

    /// A facilitator on this device admits a member, starting an epoch that includes them
    /// (so the newcomer can read nothing written before). Returns the envelope to store.
    pub fn add_member(
        &mut self,
        member: PublicIdentity,
        role: Role,
        name: &str,
        now_unix: i64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Written, GroupError> {
        self.require_facilitator()?;
        check_text("the member's name", name, MAX_NAME_LEN, true)?;
        let id = member.member_id();
        if self.roster().is_member(&id) {
            return Err(GroupError::AlreadyMember(id));
        }
        if self.roster().departed().contains_key(&id) {
            return Err(GroupError::Departed(id));
        }
        if self.roster().len() >= MAX_MEMBERS {
            return Err(GroupError::Full);
        }
        let mut recipients = self.member_identities();
        recipients.push(member);
        let rotation = self.new_rotation(&recipients, rng);
        let seen = self.heads.iter().map(|(a, h)| (*a, h.seq)).collect();
        self.write_roster(
            Action::Add {
                member,
                role,
                name: name.to_owned(),
                at: now_unix,
                rotation,
                seen,
            },
            rng,
        )
    }

    /// A facilitator makes `member` a facilitator or a member.
    pub fn set_role(
        &mut self,
        member: MemberId,
        role: Role,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Written, GroupError> {
        self.require_facilitator()?;
        let roster = self.roster();
        let current = roster
            .get(&member)
            .ok_or(GroupError::NoSuchMember(member))?;
        let facilitators = roster
            .members()
            .filter(|(_, m)| m.role == Role::Facilitator)
            .count();
        if current.role == Role::Facilitator && role == Role::Member && facilitators == 1 {
            return Err(GroupError::LastFacilitator);
        }
        self.write_roster(Action::SetRole { member, role }, rng)
    }

    /// A facilitator removes `member`: their acts after what this device has seen of their
    /// log are void, and a new epoch starts without them.
    pub fn remove_member(
        &mut self,
        member: MemberId,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Written, GroupError> {
        self.require_facilitator()?;
        if member == self.me() {
            return Err(GroupError::RemoveSelf);
        }
        if !self.roster().is_member(&member) {
            return Err(GroupError::NoSuchMember(member));
        }
        let upto = self.heads.get(&member).map_or(0, |h| h.seq);
        let recipients: Vec<PublicIdentity> = self
            .member_identities()
            .into_iter()
            .filter(|p| p.member_id() != member)
            .collect();
        let rotation = self.new_rotation(&recipients, rng);
        self.write_roster(
            Action::Remove {
                member,
                upto,
                rotation,
            },
            rng,
        )
    }

    /// This device leaves the group. The remaining members start a new epoch.
    pub fn leave(&mut self, rng: &mut impl CryptoRngCore) -> Result<Written, GroupError> {
        self.require_member()?;
        self.write_roster(Action::Leave, rng)
    }

    /// Starts a new epoch for the current members.
    pub fn rotate(&mut self, rng: &mut impl CryptoRngCore) -> Result<Written, GroupError> {
        self.require_member()?;
        let recipients = self.member_identities();
        let rotation = self.new_rotation(&recipients, rng);
        self.write_roster(Action::Rotate { rotation }, rng)
    }

    /// Sets this device's display name in the group.
    pub fn rename(
        &mut self,
        name: &str,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Written, GroupError> {
        check_text("the name", name, MAX_NAME_LEN, false)?;
        self.require_member()?;
        self.write_roster(
            Action::Rename {
                name: name.to_owned(),
            },
            rng,
        )
    }

    /// Starts a new epoch if someone no longer a member holds the current key (after a
    /// member left, or concurrent changes), so nothing is written under it, or if this
    /// device was never given the current key (so it is not locked out of writing).
    pub fn rotate_if_needed(
        &mut self,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Option<Written>, GroupError> {
        let stale = self.roster().needs_rotation() || self.current_epoch().1.is_none();
        if stale && self.roster().is_member(&self.me()) {
            return self.rotate(rng).map(Some);
        }
        Ok(None)
    }

    /// Hands epoch keys to members who should hold them but were never given them (admitted
    /// concurrently with a rotation, or left out of one that did not take effect), where
    /// this device is the one expected to ([`crate::membership::ForwardDue`]) and holds the
    /// key. Each handover is sealed under an epoch its recipient already holds.
    pub fn forward_keys(
        &mut self,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Option<Written>, GroupError> {
        let me = self.me();
        // (rotation to hand over, epoch to seal under and its key's rotation) -> recipients
        let mut plan: BTreeMap<(Hash, u32, Option<Hash>), Vec<MemberId>> = BTreeMap::new();
        for due in self.roster().forwards_due().iter().filter(|d| d.by == me) {
            if self.full_key(due.epoch, Some(due.rotation)).is_none() {
                continue;
            }
            let Some((epoch, sealing)) = self.shared_epoch(&due.member) else {
                continue;
            };
            plan.entry((due.rotation, epoch, sealing))
                .or_default()
                .push(due.member);
        }
        let mut written: Option<Written> = None;
        for ((rotation, seal_epoch, seal_rotation), members) in plan {
            let epoch = self.roster().rotations()[&rotation].epoch;
            let (Some(key), Some(seal_key)) = (
                self.full_key(epoch, Some(rotation)).cloned(),
                self.full_key(seal_epoch, seal_rotation).cloned(),
            ) else {
                continue;
            };
            let recipients: Vec<PublicIdentity> = members
                .iter()
                .filter_map(|m| self.roster().get(m).map(|x| x.identity))
                .collect();
            let lockboxes =
                Lockbox::seal_all(&self.device, &recipients, self.id(), epoch, &key, rng);
            let op = RosterOp {
                deps: self.membership.heads(),
                action: Action::Forward {
                    rotation,
                    lockboxes,
                },
            };
            // Keep what was written even if a later handover fails: it is in memory and
            // must be stored.
            match self.append_sealed(Body::Roster(op), seal_epoch, seal_key, rng) {
                Ok(w) => written = Some(w.after(written)),
                Err(e) if written.is_none() => return Err(e),
                Err(_) => break,
            }
        }
        Ok(written)
    }

    /// The full key of the epoch started by `rotation` (none: the group's first epoch).
    fn full_key(&self, epoch: u32, rotation: Option<Hash>) -> Option<&SecretKey> {
        self.keys.get(&epoch)?.iter().find_map(|g| match &g.access {
            Access::Full(k) if g.rotation == rotation => Some(k),
            _ => None,
        })
    }

    /// The epoch and key started by the rotation in the envelope `op`, if this device holds
    /// them (an admission hands the newcomer exactly this key).
    pub fn rotation_key(&self, op: &Hash) -> Option<(u32, SecretKey)> {
        self.keys.iter().find_map(|(e, gs)| {
            gs.iter().find_map(|g| match &g.access {
                Access::Full(k) if g.rotation == Some(*op) => Some((*e, k.clone())),
                _ => None,
            })
        })
    }

    /// The newest epoch whose key both this device and `member` hold.
    fn shared_epoch(&self, member: &MemberId) -> Option<(u32, Option<Hash>)> {
        let roster = self.roster();
        let creator = self.info.creator.member_id();
        self.keys
            .iter()
            .rev()
            .flat_map(|(e, gs)| gs.iter().map(move |g| (*e, g)))
            .filter(|(_, g)| matches!(g.access, Access::Full(_)))
            .find(|(_, g)| match g.rotation {
                Some(op) => roster
                    .rotations()
                    .get(&op)
                    .is_some_and(|k| k.holders.contains(member)),
                None => *member == creator,
            })
            .map(|(e, g)| (e, g.rotation))
    }

    fn member_identities(&self) -> Vec<PublicIdentity> {
        self.roster().members().map(|(_, m)| m.identity).collect()
    }

    fn new_rotation(
        &self,
        recipients: &[PublicIdentity],
        rng: &mut impl CryptoRngCore,
    ) -> Rotation {
        // Numbered from epochs that took effect only: a key someone handed out in a
        // rotation that did not count must not push the numbering anywhere.
        let epoch = self.membership.highest_epoch().saturating_add(1);
        let key = SecretKey::random(rng);
        let lockboxes = Lockbox::seal_all(&self.device, recipients, self.id(), epoch, &key, rng);
        Rotation {
            epoch,
            lockboxes,
            check: crate::membership::key_check(&key, &self.id(), epoch),
        }
    }

    fn write_roster(
        &mut self,
        action: Action,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Written, GroupError> {
        let op = RosterOp {
            deps: self.membership.heads(),
            action,
        };
        if self.current_epoch().1.is_some() {
            return self.append_own(Body::Roster(op), rng);
        }
        // Without the current key (it never reached this device), a membership act is
        // sealed under the newest effective epoch whose key this device holds.
        let (epoch, key) = self
            .roster()
            .epochs()
            .iter()
            .rev()
            .find_map(|e| self.full_key(e.epoch, e.op).map(|k| (e.epoch, k.clone())))
            .ok_or(GroupError::NoEpochKey(self.roster().current_epoch().epoch))?;
        self.append_sealed(Body::Roster(op), epoch, key, rng)
    }

    /// Seals this device's new automerge changes as its next envelope (none if empty).
    fn seal_changes(
        &mut self,
        changes: Vec<automerge::Change>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Option<Written>, GroupError> {
        if changes.is_empty() {
            return Ok(None);
        }
        let changes = changes
            .into_iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect();
        self.append_own(Body::Changes { changes }, rng).map(Some)
    }

    /// Seals `body` as this device's next envelope under the current epoch.
    fn append_own(
        &mut self,
        body: Body,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Written, GroupError> {
        let (epoch, key) = match self.current_epoch() {
            (epoch, Some(key)) => (epoch, key.clone()),
            (epoch, None) => return Err(GroupError::NoEpochKey(epoch)),
        };
        self.append_sealed(body, epoch, key, rng)
    }

    /// Seals `body` as this device's next envelope under `epoch` and runs it through
    /// [`Group::ingest`], the same path every peer's envelope takes.
    fn append_sealed(
        &mut self,
        body: Body,
        epoch: u32,
        key: SecretKey,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Written, GroupError> {
        let author = self.me();
        let prior = self.heads.get(&author).copied();
        let change_head = match &body {
            Body::Changes { changes } => changes
                .last()
                .and_then(|c| automerge::Change::from_bytes(c.clone()).ok())
                .map(|c| c.hash().0)
                .unwrap_or(ZERO_HASH),
            Body::Roster(_)
            | Body::Reseal { .. }
            | Body::Segment { .. }
            | Body::ResealSegment { .. } => prior.map_or(ZERO_HASH, |h| h.change_head),
        };
        let header = Header {
            version: 0,
            group_id: self.info.group_id,
            epoch,
            author,
            seq: prior.map_or(1, |h| h.seq + 1),
            prev: prior.map_or(ZERO_HASH, |h| h.hash),
            change_head,
        };
        let env = Envelope::seal(&self.device, header, &body, &key, rng);
        let result = self.ingest(vec![env.clone()]);
        // The own envelope may release others waiting for it (say, a new member's): all of
        // them were accepted into memory and must all be stored.
        if !result.accepted.contains(&env) {
            return Err(GroupError::OwnEnvelope(format!("{result:?}")));
        }
        Ok(Written {
            own: env,
            accepted: result.accepted,
        })
    }

    /// Checks and applies envelopes from anywhere (a peer, or this device's store).
    ///
    /// An author's envelopes are accepted as a contiguous run continuing its log: each
    /// names the previous one's hash, and one verified signature on the newest envelope of
    /// the run authenticates the whole run. Envelopes that cannot be checked yet (a gap
    /// in the log, or an author not yet known) wait in a bounded buffer. Automerge changes
    /// from the whole batch are applied in one call.
    pub fn ingest(&mut self, envelopes: Vec<Envelope>) -> Ingested {
        self.ingest_with(envelopes, true)
    }

    /// [`Group::ingest`] for this device's own store: trusted to be bounded already, so
    /// the pending buffer's caps do not apply (a restart must never drop stored envelopes).
    pub fn ingest_stored(&mut self, envelopes: Vec<Envelope>) -> Ingested {
        self.ingest_with(envelopes, false)
    }

    fn ingest_with(&mut self, envelopes: Vec<Envelope>, capped: bool) -> Ingested {
        let mut out = Ingested::default();
        for env in envelopes {
            self.buffer(env, capped, &mut out);
        }
        let roster_before = self.roster().clone();
        loop {
            let mut fresh: Vec<(MemberId, u64)> = Vec::new();
            let authors: Vec<MemberId> = {
                let mut a: Vec<MemberId> = self.pending.keys().map(|(a, _, _)| *a).collect();
                a.dedup();
                a
            };
            for author in authors {
                if self.frozen.contains_key(&author) {
                    continue;
                }
                let Some(identity) = self.membership.known(&author).copied() else {
                    continue;
                };
                for env in self.take_verified_run(author, &identity, &mut out) {
                    let h = *env.header();
                    self.heads.insert(
                        author,
                        LogHead {
                            seq: h.seq,
                            hash: env.chain_hash(),
                            change_head: h.change_head,
                        },
                    );
                    self.logs
                        .entry(author)
                        .or_default()
                        .insert(h.seq, env.clone());
                    out.accepted.push(env);
                    fresh.push((author, h.seq));
                }
            }
            let progress = !fresh.is_empty();
            self.open_positions(fresh, &mut out);
            // Resolve once for everything opened, take the keys that operations of authors
            // who count hand this device, and open what those keys unseal; repeat.
            loop {
                self.membership.refresh();
                if !self.take_due_keys() {
                    break;
                }
                let sealed: Vec<(MemberId, u64)> = self.sealed.iter().copied().collect();
                self.open_positions(sealed, &mut out);
            }
            if !progress {
                break;
            }
        }
        if !out.superseded.is_empty() {
            // An envelope accepted and then restated by a segment in the same batch is not
            // to be stored.
            let gone: BTreeSet<(MemberId, u64)> = out.superseded.iter().copied().collect();
            out.accepted
                .retain(|e| !gone.contains(&(e.header().author, e.header().seq)));
        }
        out.roster_changed = *self.roster() != roster_before;
        self.settle_content(&mut out);
        out
    }

    /// Puts one envelope in the pending buffer, unless it is foreign, already held, proof
    /// of a fork, from a frozen author, or over the buffer's bounds. The bounds never apply
    /// to an envelope that continues a known author's log (it leaves the buffer at once),
    /// so a buffer filled by a hostile member delays only out-of-order envelopes.
    fn buffer(&mut self, env: Envelope, capped: bool, out: &mut Ingested) {
        let h = *env.header();
        if h.group_id != self.info.group_id || h.seq == 0 || h.seq > MAX_SEQ {
            out.rejected += 1;
            return;
        }
        let known = self.heads.get(&h.author).map_or(0, |x| x.seq);
        if h.seq <= known {
            self.check_for_fork(&env, out);
            return;
        }
        if self.frozen.contains_key(&h.author) {
            return;
        }
        let key = (h.author, h.seq, env.first());
        if self.pending.contains_key(&key) {
            // Never let a later arrival displace a buffered envelope: a forger could
            // otherwise evict the genuine one.
            return;
        }
        let is_member = self.roster().is_member(&h.author);
        let size = env.as_bytes().len();
        let (author_count, _) = self
            .pending_per_author
            .get(&h.author)
            .copied()
            .unwrap_or_default();
        // Only a member's one envelope at the next position may bypass the bounds; a
        // segment never does (any number of them could claim to continue the log).
        let in_order = is_member && env.span().is_none() && h.seq == known + 1;
        let over = self.pending_bytes + size > MAX_PENDING_BYTES
            || self.pending.len() >= MAX_PENDING
            || author_count >= MAX_PENDING_PER_AUTHOR
            || (!is_member && {
                let (count, bytes) = self.pending_of_outsiders();
                author_count >= MAX_PENDING_PER_UNKNOWN_AUTHOR
                    || count >= MAX_PENDING_OUTSIDERS
                    || bytes + size > MAX_PENDING_OUTSIDER_BYTES
            });
        if capped && over && !in_order {
            out.refused += 1;
            return;
        }
        self.pending_bytes += size;
        let entry = self.pending_per_author.entry(h.author).or_default();
        entry.0 += 1;
        entry.1 += size;
        self.pending.insert(key, env);
    }

    /// An envelope at or below the author's head must be the one we hold; a validly
    /// signed different one proves the author forked its log.
    fn check_for_fork(&mut self, env: &Envelope, out: &mut Ingested) {
        let h = env.header();
        // Only where both end at one position can two items be compared: a segment states
        // the hash of the envelope it restates last.
        let Some(held) = self.item_ending_at(&h.author, h.seq) else {
            return;
        };
        if held.chain_hash() == env.chain_hash() {
            return;
        }
        let signed = self
            .membership
            .known(&h.author)
            .is_some_and(|id| env.verify(id).is_ok());
        if signed && !self.frozen.contains_key(&h.author) {
            let next = self.heads.get(&h.author).map_or(1, |x| x.seq + 1);
            self.frozen.insert(h.author, next);
            self.drop_pending_of(h.author);
            out.forks += 1;
        } else if !signed {
            out.rejected += 1;
        }
    }

    fn drop_pending_of(&mut self, author: MemberId) {
        let keys: Vec<PendingKey> = self
            .pending
            .range((author, 0, 0)..=(author, u64::MAX, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            self.take_pending(&key);
        }
    }

    fn take_pending(&mut self, key: &PendingKey) -> Option<Envelope> {
        let env = self.pending.remove(key)?;
        let size = env.as_bytes().len();
        self.pending_bytes -= size;
        let author = env.header().author;
        if let Some((n, bytes)) = self.pending_per_author.get_mut(&author) {
            *n -= 1;
            *bytes -= size;
            if *n == 0 {
                self.pending_per_author.remove(&author);
            }
        }
        Some(env)
    }

    /// Envelopes and bytes waiting from authors that are not members here.
    fn pending_of_outsiders(&self) -> (usize, usize) {
        let roster = self.roster();
        self.pending_per_author
            .iter()
            .filter(|(a, _)| !roster.is_member(a))
            .fold((0, 0), |(n, b), (_, (an, ab))| (n + an, b + ab))
    }

    /// Removes from `pending` the longest run of `author`'s envelopes and segments that
    /// continues its log and is covered by valid signatures; drops any that break the
    /// chain or are not covered.
    fn take_verified_run(
        &mut self,
        author: MemberId,
        identity: &PublicIdentity,
        out: &mut Ingested,
    ) -> Vec<Envelope> {
        let head = self.heads.get(&author).copied();
        // Drop stale entries left behind by an earlier batch.
        let stale: Vec<PendingKey> = self
            .pending
            .range((author, 0, 0)..=(author, head.map_or(0, |h| h.seq), u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            self.take_pending(&key);
        }
        let mut reached = head.map_or(0, |h| h.seq);
        let mut prev = head.map_or(ZERO_HASH, |h| h.hash);
        let mut run = Vec::new();
        let limit = self
            .roster()
            .departed()
            .get(&author)
            .map_or(u64::MAX, |d| d.cut.saturating_add(MAX_PAST_CUT));
        // The envelope at the next position, or a segment that spans it.
        while let Some((key, first, stated_prev)) = self
            .pending
            .range((author, reached + 1, 0)..=(author, u64::MAX, u64::MAX))
            .find(|(_, e)| e.first() <= reached + 1)
            .map(|(k, e)| (*k, e.first(), e.header().prev))
        {
            if key.1 > limit {
                break;
            }
            // A segment may start inside what this device holds (it restates envelopes
            // held one by one here): it must then continue the item ending before it.
            let expected = if first == reached + 1 {
                Some(prev)
            } else {
                self.chain_hash_at(&author, first - 1)
            };
            if expected != Some(stated_prev) {
                // A fork or a forgery: the author's log cannot continue through it.
                self.take_pending(&key);
                out.rejected += 1;
                break;
            }
            let env = &self.pending[&key];
            prev = env.chain_hash();
            reached = env.header().seq;
            run.push(key);
        }
        let mut envs: Vec<Envelope> = run.iter().filter_map(|k| self.take_pending(k)).collect();
        // Fast path: one signature over the newest item covers the envelopes before it by
        // hash chain. A segment's contents are bound to the chain by its own signature only.
        let covered = envs.last().is_some_and(|e| e.verify(identity).is_ok())
            && envs
                .iter()
                .filter(|e| e.span().is_some())
                .all(|e| e.verify(identity).is_ok());
        if !covered {
            // Slow path, bounded by the genuine envelopes: keep the prefix whose every
            // signature verifies and drop the rest.
            let keep = envs
                .iter()
                .position(|e| e.verify(identity).is_err())
                .unwrap_or(envs.len());
            out.rejected += envs.len() - keep;
            envs.truncate(keep);
        }
        envs
    }

    /// The envelope at `author`'s log position `seq`, or a segment that spans it.
    fn item_at(&self, author: &MemberId, seq: u64) -> Option<&Envelope> {
        let (_, env) = self.logs.get(author)?.range(seq..).next()?;
        (env.first() <= seq).then_some(env)
    }

    /// The envelope or segment that ends at `author`'s log position `seq`.
    fn item_ending_at(&self, author: &MemberId, seq: u64) -> Option<&Envelope> {
        self.logs.get(author)?.get(&seq)
    }

    /// What the author's envelope after position `seq` must name as `prev`, where this
    /// device knows it (zero before the first position).
    /// Whether this device holds `author`'s log item at `seq` with exactly that hash.
    pub fn holds(&self, author: &MemberId, seq: u64, hash: &Hash) -> bool {
        self.chain_hash_at(author, seq)
            .is_some_and(|h| crate::crypto::ct_eq(&h, hash))
    }

    fn chain_hash_at(&self, author: &MemberId, seq: u64) -> Option<Hash> {
        if seq == 0 {
            return Some(ZERO_HASH);
        }
        self.item_ending_at(author, seq).map(Envelope::chain_hash)
    }

    /// The author's newest automerge change once its position `seq` is applied, as the
    /// signed header of the item ending there states it (zero before the first position).
    fn change_head_at(&self, author: &MemberId, seq: u64) -> Option<Hash> {
        if seq == 0 {
            return Some(ZERO_HASH);
        }
        self.item_ending_at(author, seq)
            .map(|e| e.header().change_head)
    }

    /// Opens an accepted envelope with whichever key held for its epoch authenticates it.
    fn open_envelope(&self, env: &Envelope) -> Opened {
        let Some(grants) = self.keys.get(&env.header().epoch) else {
            return Opened::NoKey;
        };
        for grant in grants {
            let opened = match &grant.access {
                Access::Full(k) => env.open(k),
                Access::Roster(k) => env.open_with(k, Sealing::Roster),
            };
            match opened {
                Ok(body) => return Opened::Body(body),
                Err(EnvelopeError::Decrypt) => continue,
                Err(_) => return Opened::Malformed,
            }
        }
        Opened::NoKey
    }

    /// Opens the envelopes at these log positions: records membership operations (noting
    /// those with lockboxes for this device) and queues content. Positions no key opens
    /// stay sealed, unless someone re-sealed their changes for this device.
    fn open_positions(&mut self, positions: Vec<(MemberId, u64)>, out: &mut Ingested) {
        for (author, seq) in positions {
            let Some(env) = self.item_ending_at(&author, seq).cloned() else {
                continue;
            };
            let h = *env.header();
            let prior_head = self.change_head_at(&author, env.first() - 1);
            match self.open_envelope(&env) {
                Opened::NoKey => {
                    let taken = if env.span().is_some() {
                        self.take_segment_reseal(&env, out)
                    } else {
                        self.take_reseal(author, seq, &h)
                    };
                    if !taken {
                        self.sealed.insert((author, seq));
                        continue;
                    }
                }
                Opened::Malformed => self.mark_ineffective(author, seq, out),
                Opened::Body(Body::Segment { ends, bundle }) => {
                    match self.take_segment(&env, &ends, &bundle, out) {
                        ContentCheck::Taken => {}
                        ContentCheck::Wait => {
                            self.sealed.insert((author, seq));
                            continue;
                        }
                        ContentCheck::Bad => self.mark_ineffective(author, seq, out),
                        ContentCheck::Fork => {
                            let from = (env.first()..=seq)
                                .find(|p| !self.content.contains_key(&(author, *p)))
                                .unwrap_or(seq + 1);
                            let at = self.frozen.entry(author).or_insert(from);
                            *at = (*at).min(from);
                            self.drop_pending_of(author);
                            out.forks += 1;
                            self.mark_ineffective(author, seq, out);
                        }
                    }
                }
                Opened::Body(Body::Roster(op)) => {
                    if Some(h.change_head) != prior_head {
                        self.mark_ineffective(author, seq, out);
                    } else {
                        let me = self.me();
                        if op.action.lockboxes().iter().any(|b| b.recipient == me) {
                            self.lockbox_ops.insert(env.hash());
                        }
                        self.membership.record(OpRecord {
                            hash: env.hash(),
                            author,
                            seq,
                            op,
                        });
                    }
                }
                Opened::Body(Body::Changes { changes }) => {
                    match self.take_content(author, seq, &h, changes, false) {
                        ContentCheck::Taken => {}
                        ContentCheck::Wait => {
                            self.sealed.insert((author, seq));
                            continue;
                        }
                        ContentCheck::Bad | ContentCheck::Fork => {
                            self.mark_ineffective(author, seq, out)
                        }
                    }
                }
                Opened::Body(Body::Reseal {
                    author: target_author,
                    seq: target_seq,
                    changes,
                }) => {
                    // A re-sealing changes nothing of its writer's own automerge sequence.
                    if Some(h.change_head) != prior_head {
                        self.mark_ineffective(author, seq, out);
                    } else {
                        let target = (target_author, target_seq);
                        push_candidate(self.reseals.entry(target).or_default(), changes);
                        self.resealing_arrived(author, target, out);
                    }
                }
                Opened::Body(Body::ResealSegment {
                    author: target_author,
                    seq: target_seq,
                    ends,
                    bundle,
                }) => {
                    if Some(h.change_head) != prior_head {
                        self.mark_ineffective(author, seq, out);
                    } else {
                        let target = (target_author, target_seq);
                        let candidates = self.segment_reseals.entry(target).or_default();
                        push_candidate(candidates, (ends, bundle));
                        self.resealing_arrived(author, target, out);
                    }
                }
            }
            self.sealed.remove(&(author, seq));
        }
    }

    /// After `author` re-sealed `target`: this device notes what it re-sealed itself, and
    /// opens the target if it was waiting for that.
    fn resealing_arrived(&mut self, author: MemberId, target: (MemberId, u64), out: &mut Ingested) {
        if author == self.me() {
            self.resealed.insert(target);
        }
        if self.sealed.contains(&target) {
            self.open_positions(vec![target], out);
        }
    }

    /// Opens a sealed segment with a re-sealing of it, as [`Group::take_reseal`] does for an
    /// envelope: the first candidate that checks out against the segment's signed header
    /// is taken; one that does not is dropped, and never counts as the author's fork.
    fn take_segment_reseal(&mut self, env: &Envelope, out: &mut Ingested) -> bool {
        let key = (env.header().author, env.header().seq);
        let candidates = self.segment_reseals.remove(&key).unwrap_or_default();
        let (taken, kept) = try_candidates(candidates, |(ends, bundle)| {
            self.take_segment(env, ends, bundle, out)
        });
        if !kept.is_empty() {
            self.segment_reseals.insert(key, kept);
        }
        taken
    }

    /// Checks a segment's changes (the author's own, continuing exactly from the change the
    /// item before it names, ending at its signed head) and queues those of positions not
    /// already taken from envelopes held here.
    fn take_segment(
        &mut self,
        env: &Envelope,
        ends: &[u64],
        bundle: &[u8],
        out: &mut Ingested,
    ) -> ContentCheck {
        let h = *env.header();
        let first = env.first();
        let Some(prior_head) = self.change_head_at(&h.author, first - 1) else {
            return ContentCheck::Bad;
        };
        let Some(after) = self.change_seq(&prior_head) else {
            return ContentCheck::Wait;
        };
        let Some(positions) = decode_segment(ends, bundle) else {
            return ContentCheck::Bad;
        };
        let actor = h.author.actor_id();
        let all: Vec<&automerge::Change> = positions.iter().flatten().collect();
        let contiguous = all
            .iter()
            .zip(after + 1..)
            .all(|(c, seq)| c.actor_id() == &actor && c.seq() == seq);
        let signed_head = all.last().is_some_and(|c| c.hash().0 == h.change_head);
        if !contiguous || !signed_head || positions.iter().any(Vec::is_empty) {
            return ContentCheck::Bad;
        }
        // Where this device holds the author's envelopes, the segment must restate exactly
        // their changes, and only content: anything else is the author signing two
        // histories.
        for (seq, changes) in (first..).zip(&positions) {
            if let Some(&(lo, hi)) = self.content.get(&(h.author, seq)) {
                let same = changes.first().is_some_and(|c| c.seq() == lo)
                    && changes.last().is_some_and(|c| c.seq() == hi)
                    && changes
                        .iter()
                        .all(|c| self.change_seqs.get(&c.hash().0) == Some(&c.seq()));
                if !same {
                    return ContentCheck::Fork;
                }
            } else if let Some(held) = self.item_ending_at(&h.author, seq)
                && held.span().is_none()
                && seq != h.seq
                && !self.sealed.contains(&(h.author, seq))
            {
                // Held, opened and not content: a membership operation, a re-sealing or
                // an envelope without effect.
                return ContentCheck::Fork;
            }
        }
        // Positions are judged in order, as their envelopes would be: from the first that
        // breaks the rules on, no position has effect (as after such an envelope, whose
        // author's next changes would wait for it forever).
        let broken = (first..)
            .zip(&positions)
            .find(|(seq, changes)| {
                !self.content.contains_key(&(h.author, *seq)) && !self.rules.allow(changes)
            })
            .map_or(u64::MAX, |(seq, _)| seq);
        // Items wholly inside the segment are restated by it (every position checked above
        // or taken below): drop them here and from the store.
        let inside: Vec<u64> = self
            .logs
            .get(&h.author)
            .map(|log| {
                log.range(first..h.seq)
                    .filter(|(_, e)| e.first() >= first)
                    .map(|(k, _)| *k)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(log) = self.logs.get_mut(&h.author) {
            for k in inside {
                log.remove(&k);
                self.sealed.remove(&(h.author, k));
                out.superseded.push((h.author, k));
            }
        }
        for (seq, changes) in (first..).zip(positions) {
            if self.content.contains_key(&(h.author, seq)) {
                continue;
            }
            if seq >= broken {
                self.mark_ineffective(h.author, seq, out);
                continue;
            }
            for c in &changes {
                self.change_seqs.insert(c.hash().0, c.seq());
            }
            let range = (
                changes.first().map_or(0, |c| c.seq()),
                changes.last().map_or(0, |c| c.seq()),
            );
            self.content.insert((h.author, seq), range);
            self.withheld.insert((h.author, seq), changes);
        }
        ContentCheck::Taken
    }

    /// Restates runs of this device's own content envelopes (and earlier segments) as
    /// segments, leaving the newest [`KEEP_RECENT`] as they are. A run holds one epoch's
    /// content only, and nothing a known admission needs re-sealed; it is restated once it
    /// holds at least `min_loose` envelopes not in a segment yet. With `merge`, a run may
    /// begin with earlier segments, which it then restates too (fewer, larger segments,
    /// at the cost of decoding and encoding them again). Returns what to store and delete.
    pub fn compact_own(
        &mut self,
        min_loose: u64,
        merge: bool,
        rng: &mut impl CryptoRngCore,
    ) -> Vec<Compacted> {
        let me = self.me();
        let Some(head) = self.heads.get(&me).copied() else {
            return Vec::new();
        };
        let limit = head.seq.saturating_sub(KEEP_RECENT);
        // Positions of this device after what an admission had seen, under an epoch
        // before the admission's: the newcomer needs them re-sealed.
        let mut reseal_from: Vec<(u64, u32)> = Vec::new();
        for record in self.membership.ops() {
            if let Action::Add { rotation, seen, .. } = &record.op.action {
                let from = seen.iter().find(|(a, _)| *a == me).map_or(0, |(_, s)| *s);
                reseal_from.push((from, rotation.epoch));
            }
        }
        let Some(log) = self.logs.get(&me) else {
            return Vec::new();
        };
        let mut runs: Vec<Vec<(u64, Envelope)>> = Vec::new();
        let mut run: Vec<(u64, Envelope)> = Vec::new();
        for (&seq, env) in log.range(..=limit) {
            let epoch = env.header().epoch;
            let content = match env.span() {
                Some(_) => merge,
                None => {
                    self.content.contains_key(&(me, seq)) && !self.ineffective.contains(&(me, seq))
                }
            };
            let resealable = reseal_from
                .iter()
                .any(|(from, e)| seq > *from && epoch < *e);
            let continues = run.last().is_none_or(|(last, e)| {
                *last + 1 == env.first()
                    && e.header().epoch == epoch
                    && seq - run[0].1.first() < crate::envelope::MAX_SEGMENT_POSITIONS
            });
            if !continues || !content || resealable {
                runs.push(std::mem::take(&mut run));
            }
            if content && !resealable {
                run.push((seq, env.clone()));
            }
        }
        runs.push(run);
        let mut out = Vec::new();
        for run in runs {
            let loose = run.iter().filter(|(_, e)| e.span().is_none()).count() as u64;
            let worth = run.len() > 1 && loose >= min_loose.max(1);
            if worth {
                out.extend(self.restate(&run, rng));
            }
        }
        out
    }

    /// Seals one run of this device's own items as a segment and puts it in their place;
    /// splits the run if the segment would be too large to send.
    fn restate(&mut self, run: &[(u64, Envelope)], rng: &mut impl CryptoRngCore) -> Vec<Compacted> {
        self.restate_one(run, rng).unwrap_or_default()
    }

    fn restate_one(
        &mut self,
        run: &[(u64, Envelope)],
        rng: &mut impl CryptoRngCore,
    ) -> Option<Vec<Compacted>> {
        let me = self.me();
        let (first_env, last_env) = (&run.first()?.1, &run.last()?.1);
        let first = first_env.first();
        let epoch = last_env.header().epoch;
        let key = self
            .keys
            .get(&epoch)?
            .iter()
            .find_map(|g| match &g.access {
                Access::Full(k) if last_env.open(k).is_ok() => Some(k.clone()),
                _ => None,
            })?;
        let mut ends = Vec::with_capacity(run.len());
        let mut hashes = Vec::new();
        for (seq, env) in run {
            let positions = match env.open(&key).ok()? {
                Body::Changes { changes } => vec![
                    changes
                        .into_iter()
                        .map(automerge::Change::from_bytes)
                        .collect::<Result<Vec<_>, _>>()
                        .ok()?,
                ],
                Body::Segment { ends, bundle } => decode_segment(&ends, &bundle)?,
                _ => return None,
            };
            debug_assert_eq!(positions.len() as u64, seq - env.first() + 1);
            for changes in positions {
                ends.push(changes.last()?.seq());
                hashes.extend(changes.iter().map(automerge::Change::hash));
            }
        }
        let bundle = self.doc.bundle(hashes).ok()?;
        let header = Header {
            version: 0,
            group_id: self.info.group_id,
            epoch,
            author: me,
            seq: last_env.header().seq,
            prev: self.chain_hash_at(&me, first - 1)?,
            change_head: last_env.header().change_head,
        };
        let span = crate::envelope::Span {
            first,
            last_hash: last_env.chain_hash(),
        };
        let body = Body::Segment { ends, bundle };
        let segment = Envelope::seal_segment(&self.device, header, span, &body, &key, rng);
        if segment.as_bytes().len() > crate::envelope::MAX_ENVELOPE_LEN {
            // Too large to send as one: restate each half on its own.
            let (a, b) = run.split_at(run.len() / 2);
            let mut out = Vec::new();
            for half in [a, b] {
                if half.len() > 1 {
                    out.extend(self.restate(half, rng));
                }
            }
            return Some(out);
        }
        let log = self.logs.get_mut(&me)?;
        let replaced: Vec<u64> = run.iter().map(|(s, _)| *s).collect();
        for s in &replaced {
            log.remove(s);
        }
        log.insert(header.seq, segment.clone());
        Some(vec![Compacted { segment, replaced }])
    }

    /// Opens a sealed content envelope with changes someone re-sealed for this device: the
    /// first candidate that checks out against the envelope's signed header is taken; one
    /// that does not is dropped (a hostile member's forgery must neither spoil the original
    /// nor stand in the way of the genuine re-sealing). Returns whether one was taken.
    fn take_reseal(&mut self, author: MemberId, seq: u64, h: &Header) -> bool {
        let candidates = self.reseals.remove(&(author, seq)).unwrap_or_default();
        let (taken, kept) = try_candidates(candidates, |changes| {
            self.take_content(author, seq, h, changes.clone(), true)
        });
        if !kept.is_empty() {
            self.reseals.insert((author, seq), kept);
        }
        taken
    }

    /// Checks the changes of the content envelope at `(author, seq)` with header `h` and
    /// queues them. Re-sealed changes must also each name the one before (the original's
    /// signature covers only the last through `change_head`).
    fn take_content(
        &mut self,
        author: MemberId,
        seq: u64,
        h: &Header,
        changes: Vec<Vec<u8>>,
        resealed: bool,
    ) -> ContentCheck {
        // The author's change before these is the one the previous envelope's signed
        // header names; its sequence number must be known here (opened, or in the snapshot
        // this device joined with) to check that these continue it exactly.
        let Some(prior_head) = self.change_head_at(&author, seq - 1) else {
            // The position before lies inside a segment: only a forked log puts an
            // envelope there.
            return ContentCheck::Bad;
        };
        let Some(after) = self.change_seq(&prior_head) else {
            return ContentCheck::Wait;
        };
        let Some(cs) = checked_changes(changes, h, after) else {
            return ContentCheck::Bad;
        };
        let chained = cs.windows(2).all(|w| w[1].deps().contains(&w[0].hash()));
        if resealed && !chained {
            return ContentCheck::Bad;
        }
        // Not recorded as content, so nothing of it is ever applied, nor rescued.
        if !self.rules.allow(&cs) {
            return ContentCheck::Bad;
        }
        let first = cs.first().map_or(0, |c| c.seq());
        let last = cs.last().map_or(0, |c| c.seq());
        for c in &cs {
            self.change_seqs.insert(c.hash().0, c.seq());
        }
        self.content.insert((author, seq), (first, last));
        self.withheld.insert((author, seq), cs);
        ContentCheck::Taken
    }

    /// Re-seals, under the current epoch, content that members this device admitted cannot
    /// read and did not get in their snapshot: envelopes after what this device had seen
    /// when it admitted them, written under an earlier epoch (by authors who had not yet
    /// learned of the admission). Each such envelope is re-sealed once.
    pub fn reseal_due(
        &mut self,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Option<Written>, GroupError> {
        let me = self.me();
        let mut targets: BTreeSet<(MemberId, u64)> = BTreeSet::new();
        for record in self.membership.ops() {
            let Action::Add {
                member,
                rotation,
                seen,
                ..
            } = &record.op.action
            else {
                continue;
            };
            let newcomer = member.member_id();
            if record.author != me
                || !self.roster().is_effective(&record.hash)
                || !self.roster().is_member(&newcomer)
            {
                continue;
            }
            let seen: BTreeMap<MemberId, u64> = seen.iter().copied().collect();
            for (author, log) in &self.logs {
                if *author == newcomer {
                    continue;
                }
                let from = seen.get(author).copied().unwrap_or(0);
                // Only the author's envelopes from before it learned of the admission: its
                // log moves to the new epoch then, and the scan stops there, so this costs
                // the few envelopes in between, not the author's whole history since.
                for env in log.range(from.saturating_add(1)..).map(|(_, e)| e) {
                    let h = env.header();
                    if h.epoch >= rotation.epoch {
                        break;
                    }
                    if self.content.contains_key(&(h.author, h.seq)) {
                        targets.insert((h.author, h.seq));
                    }
                }
            }
        }
        let mut written: Option<Written> = None;
        for target in targets {
            if self.resealed.contains(&target) {
                continue;
            }
            let Some(env) = self.item_ending_at(&target.0, target.1).cloned() else {
                continue;
            };
            let body = match self.open_envelope(&env) {
                Opened::Body(Body::Changes { changes }) => Body::Reseal {
                    author: target.0,
                    seq: target.1,
                    changes,
                },
                Opened::Body(Body::Segment { ends, bundle }) => Body::ResealSegment {
                    author: target.0,
                    seq: target.1,
                    ends,
                    bundle,
                },
                _ => continue,
            };
            match self.append_own(body, rng) {
                Ok(w) => written = Some(w.after(written)),
                Err(e) if written.is_none() => return Err(e),
                Err(_) => break,
            }
        }
        Ok(written)
    }

    /// The automerge sequence number of a change this device has checked or holds in its
    /// document (zero for no change).
    fn change_seq(&mut self, hash: &Hash) -> Option<u64> {
        if *hash == ZERO_HASH {
            return Some(0);
        }
        if let Some(seq) = self.change_seqs.get(hash) {
            return Some(*seq);
        }
        self.doc.change_seq(hash)
    }

    fn mark_ineffective(&mut self, author: MemberId, seq: u64, out: &mut Ingested) {
        if self.ineffective.insert((author, seq)) {
            out.ineffective += 1;
        }
    }

    /// Takes the epoch keys that lockboxes for this device hand it, from any accepted
    /// operation: which keys a device holds must not depend on the order things arrived in
    /// (a member may have written under a rotation whose author was removed concurrently).
    /// A key is taken only if it matches its rotation's check value. What a key is used for
    /// is decided by the roster alone: numbering and writing follow epochs that took effect.
    /// An author past its cut (removed) can hand this device at most a few keys. Returns
    /// whether a new key was taken.
    fn take_due_keys(&mut self) -> bool {
        let me = self.me();
        let pending: Vec<OpRecord> = self
            .lockbox_ops
            .iter()
            .filter_map(|h| self.membership.op(h))
            .cloned()
            .collect();
        let mut new = false;
        for record in pending {
            let (rotation, check) = match &record.op.action {
                Action::Forward { rotation, .. } => {
                    match self
                        .membership
                        .op(rotation)
                        .and_then(|r| r.op.action.rotation())
                    {
                        Some(r) => (*rotation, r.check),
                        // The rotation it forwards has not arrived yet: try again later.
                        None => continue,
                    }
                }
                action => match action.rotation() {
                    Some(r) => (record.hash, r.check),
                    None => {
                        self.lockbox_ops.remove(&record.hash);
                        continue;
                    }
                },
            };
            self.lockbox_ops.remove(&record.hash);
            if !self.roster().counts(&record.author, record.seq) {
                let taken = self.uncounted_grants.entry(record.author).or_default();
                if *taken >= MAX_UNCOUNTED_GRANTS {
                    continue;
                }
                *taken += 1;
            }
            let Some(sender) = self.membership.known(&record.author).copied() else {
                continue;
            };
            for b in record.op.action.lockboxes() {
                if b.recipient != me || b.group_id != self.info.group_id {
                    continue;
                }
                let Ok(key) = b.open(&self.device, &sender) else {
                    continue;
                };
                if !crate::crypto::ct_eq(
                    &crate::membership::key_check(&key, &self.info.group_id, b.epoch),
                    &check,
                ) {
                    continue;
                }
                new |= self.grant(KeyGrant {
                    epoch: b.epoch,
                    rotation: Some(rotation),
                    access: Access::Full(key),
                });
            }
        }
        new
    }

    /// Gives effect to content according to the roster: applies withheld content whose
    /// author now counts; rebuilds the document if applied content no longer counts.
    fn settle_content(&mut self, out: &mut Ingested) {
        let roster = self.membership.roster();
        let stale = self
            .applied_upto
            .iter()
            .any(|(author, &seq)| !roster.counts(author, seq));
        if stale {
            return self.rebuild(out);
        }
        let ready: Vec<(MemberId, u64)> = self
            .withheld
            .keys()
            .filter(|(a, s)| roster.counts(a, *s) && self.frozen.get(a).is_none_or(|f| *s < *f))
            .copied()
            .collect();
        let mut batch = Vec::with_capacity(ready.len());
        for key in ready {
            if let Some(changes) = self.withheld.remove(&key) {
                let upto = self.applied_upto.entry(key.0).or_default();
                *upto = (*upto).max(key.1);
                batch.push(EnvelopeChanges {
                    author: key.0,
                    seq: key.1,
                    changes,
                });
            }
        }
        if self.apply_changes(batch, out) {
            self.rescue(out);
        }
    }

    /// Applies withheld content that applied content depends on: a member counted built
    /// on it before learning its author was removed, and automerge cannot apply a change
    /// without its dependencies. The same rule on every device gives the same document.
    fn rescue(&mut self, out: &mut Ingested) {
        loop {
            let missing: BTreeSet<automerge::ChangeHash> =
                self.doc.missing_deps().into_iter().collect();
            if missing.is_empty() || self.withheld.is_empty() {
                return;
            }
            let needed: Vec<(MemberId, u64)> = self
                .withheld
                .iter()
                .filter(|(_, cs)| cs.iter().any(|c| missing.contains(&c.hash())))
                .map(|(k, _)| *k)
                .collect();
            if needed.is_empty() {
                return;
            }
            let batch: Vec<EnvelopeChanges> = needed
                .into_iter()
                .filter_map(|key| {
                    let changes = self.withheld.remove(&key)?;
                    Some(EnvelopeChanges {
                        author: key.0,
                        seq: key.1,
                        changes,
                    })
                })
                .collect();
            if !self.apply_changes(batch, out) {
                return;
            }
        }
    }

    /// Applies the envelopes' changes in one automerge call; if automerge refuses the
    /// batch, applies envelope by envelope so one bad envelope cannot sink the rest. If
    /// automerge panics, the document is rebuilt without the envelope that made it.
    /// Returns false if it rebuilt (the rebuild settles everything itself).
    fn apply_changes(&mut self, changes: Vec<EnvelopeChanges>, out: &mut Ingested) -> bool {
        if changes.is_empty() {
            return true;
        }
        let all: Vec<automerge::Change> = changes
            .iter()
            .flat_map(|e| e.changes.iter().cloned())
            .collect();
        match self.doc.apply(all) {
            Ok(()) => return true,
            Err(DocError::Panicked) => {
                self.rebuild(out);
                return false;
            }
            Err(_) => {}
        }
        for e in changes {
            match self.doc.apply(e.changes) {
                Ok(()) => {}
                Err(DocError::Panicked) => {
                    self.freeze(e.author, e.seq, out);
                    self.rebuild(out);
                    return false;
                }
                Err(_) => self.drop_content(e.author, e.seq, out),
            }
        }
        true
    }

    /// Marks one envelope's content as having no effect, for good.
    fn drop_content(&mut self, author: MemberId, seq: u64, out: &mut Ingested) {
        self.content.remove(&(author, seq));
        self.mark_ineffective(author, seq, out);
    }

    /// Excludes an author's content from `seq` on: it sent something that crashed automerge.
    fn freeze(&mut self, author: MemberId, seq: u64, out: &mut Ingested) {
        let at = self.frozen.entry(author).or_insert(seq);
        *at = (*at).min(seq);
        self.drop_pending_of(author);
        self.drop_content(author, seq, out);
    }

    /// Rebuilds the document from its base and the content that counts (and what it
    /// depends on), one envelope at a time, freezing the author of any envelope that makes
    /// automerge panic and starting again without it. Slow, but only a membership change
    /// that voids applied content, or a hostile member's input, brings it about.
    fn rebuild(&mut self, out: &mut Ingested) {
        'again: loop {
            let fresh = self
                .base
                .as_ref()
                .and_then(|b| GroupDocument::load(b, self.me().actor_id()).ok());
            let mut doc = fresh.unwrap_or_else(|| GroupDocument::new(self.me().actor_id()));
            let mut withheld = BTreeMap::new();
            let mut applied_upto = BTreeMap::new();
            let positions: Vec<(MemberId, u64)> = self.content.keys().copied().collect();
            // A segment is decoded once for all its positions.
            let mut segment: Option<(MemberId, u64, Vec<Vec<automerge::Change>>)> = None;
            for (author, seq) in positions {
                if self.frozen.get(&author).is_some_and(|f| seq >= *f) {
                    continue;
                }
                let parsed: Vec<automerge::Change> = if let Some(env) =
                    self.item_ending_at(&author, seq).cloned()
                    && env.span().is_none()
                {
                    let changes = match self.open_envelope(&env) {
                        Opened::Body(Body::Changes { changes }) => changes,
                        Opened::NoKey => {
                            match self.reseals.get(&(author, seq)).and_then(|c| c.first()) {
                                Some(changes) => changes.clone(),
                                None => continue,
                            }
                        }
                        _ => continue,
                    };
                    changes
                        .into_iter()
                        .filter_map(|b| automerge::Change::from_bytes(b).ok())
                        .collect()
                } else {
                    let Some(env) = self.item_at(&author, seq).cloned() else {
                        continue;
                    };
                    let key = (author, env.header().seq);
                    if segment.as_ref().is_none_or(|(a, s, _)| (*a, *s) != key) {
                        let decoded = match self.open_envelope(&env) {
                            Opened::Body(Body::Segment { ends, bundle }) => {
                                decode_segment(&ends, &bundle)
                            }
                            Opened::NoKey => self
                                .segment_reseals
                                .get(&key)
                                .and_then(|c| c.first())
                                .and_then(|(ends, bundle)| decode_segment(ends, bundle)),
                            _ => None,
                        };
                        segment = decoded.map(|d| (key.0, key.1, d));
                    }
                    let Some((_, _, positions)) = &segment else {
                        continue;
                    };
                    let index = usize::try_from(seq - env.first()).unwrap_or(usize::MAX);
                    let Some(changes) = positions.get(index) else {
                        continue;
                    };
                    changes.clone()
                };
                if !self.roster().counts(&author, seq) {
                    withheld.insert((author, seq), parsed);
                    continue;
                }
                match doc.apply(parsed) {
                    Ok(()) => {
                        let upto: &mut u64 = applied_upto.entry(author).or_default();
                        *upto = (*upto).max(seq);
                    }
                    Err(DocError::Panicked) => {
                        self.freeze(author, seq, out);
                        continue 'again;
                    }
                    Err(_) => self.drop_content(author, seq, out),
                }
            }
            self.doc = doc;
            self.withheld = withheld;
            self.applied_upto = applied_upto;
            self.rescue(out);
            return;
        }
    }
}

/// Keeps a re-sealing candidate, unless it is known or there are enough already.
fn push_candidate<T: PartialEq>(candidates: &mut Vec<T>, candidate: T) {
    if candidates.len() < MAX_RESEAL_CANDIDATES && !candidates.contains(&candidate) {
        candidates.push(candidate);
    }
}

/// Tries re-sealing candidates in turn: the first that checks out is taken and kept alone;
/// those that must wait are kept; the rest are dropped (a hostile member's forgery must
/// neither spoil the original nor stand in the way of the genuine one). Returns whether
/// one was taken, and what to keep.
fn try_candidates<T>(
    candidates: Vec<T>,
    mut check: impl FnMut(&T) -> ContentCheck,
) -> (bool, Vec<T>) {
    let mut kept = Vec::new();
    for candidate in candidates {
        match check(&candidate) {
            ContentCheck::Taken => return (true, vec![candidate]),
            ContentCheck::Wait => kept.push(candidate),
            ContentCheck::Bad | ContentCheck::Fork => {}
        }
    }
    (false, kept)
}

/// A segment's body as it travels: each position's last automerge sequence number, and the
/// bundle.
type SegmentBody = (Vec<u64>, Vec<u8>);

/// The automerge changes of one log position.
struct EnvelopeChanges {
    author: MemberId,
    seq: u64,
    changes: Vec<automerge::Change>,
}

/// Parses an envelope's automerge changes and checks they are the author's own next ones:
/// its actor id, sequence numbers continuing exactly from `after` (the author's change its
/// previous envelope's header names), and the signed head last.
fn checked_changes(
    raw: Vec<Vec<u8>>,
    header: &Header,
    after: u64,
) -> Option<Vec<automerge::Change>> {
    let actor = header.author.actor_id();
    let changes: Vec<automerge::Change> = raw
        .into_iter()
        .map(crate::doc::parse_canonical_change)
        .collect::<Option<_>>()?;
    let contiguous = changes
        .iter()
        .zip(after + 1..)
        .all(|(c, seq)| c.actor_id() == &actor && c.seq() == seq);
    let signed_head = changes.last()?.hash().0 == header.change_head;
    (contiguous && signed_head).then_some(changes)
}

/// Decodes a segment's bundle and splits its changes by position (`ends` holds each
/// position's last automerge sequence number). None if it does not decode, if `ends` is not
/// strictly increasing, or if a change falls outside every position.
fn decode_segment(ends: &[u64], bundle: &[u8]) -> Option<Vec<Vec<automerge::Change>>> {
    if ends.is_empty() || ends.windows(2).any(|w| w[0] >= w[1]) {
        return None;
    }
    let max_changes = ends
        .len()
        .saturating_mul(crate::envelope::MAX_CHANGES_PER_ENVELOPE);
    let mut changes = std::panic::catch_unwind(|| {
        automerge::Bundle::try_from(bundle)
            .ok()
            .and_then(|b| b.to_changes().ok())
    })
    .ok()
    .flatten()?;
    if changes.len() > max_changes {
        return None;
    }
    changes.sort_by_key(automerge::Change::seq);
    let mut positions: Vec<Vec<automerge::Change>> = vec![Vec::new(); ends.len()];
    let mut at = 0;
    for change in changes {
        while at < ends.len() && change.seq() > ends[at] {
            at += 1;
        }
        positions.get_mut(at)?.push(change);
    }
    Some(positions)
}

/// Seals a snapshot for a joining member under the epoch's snapshot key.
pub fn seal_snapshot(
    epoch_key: &SecretKey,
    group_id: &GroupId,
    epoch: u32,
    snapshot: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Vec<u8> {
    let key = snapshot_key(epoch_key, group_id, epoch);
    let (nonce, ct) = crate::crypto::seal(&key, &snapshot_aad(group_id, epoch), snapshot, rng);
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    out
}

pub fn open_snapshot(
    epoch_key: &SecretKey,
    group_id: &GroupId,
    epoch: u32,
    sealed: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, crate::crypto::OpenError> {
    if sealed.len() < XNONCE_LEN {
        return Err(crate::crypto::OpenError);
    }
    let (nonce, ct) = sealed.split_at(XNONCE_LEN);
    let nonce: [u8; XNONCE_LEN] = nonce.try_into().map_err(|_| crate::crypto::OpenError)?;
    let key = snapshot_key(epoch_key, group_id, epoch);
    crate::crypto::open(&key, &snapshot_aad(group_id, epoch), &nonce, ct)
}

fn snapshot_key(epoch_key: &SecretKey, group_id: &GroupId, epoch: u32) -> SecretKey {
    crate::crypto::derive_key(
        epoch_key.expose(),
        &[
            crate::crypto::labels::SNAPSHOT_KEY,
            group_id.as_bytes(),
            &epoch.to_be_bytes(),
        ],
    )
}

fn snapshot_aad(group_id: &GroupId, epoch: u32) -> Vec<u8> {
    let mut ad = group_id.as_bytes().to_vec();
    ad.extend_from_slice(&epoch.to_be_bytes());
    ad
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_core::OsRng;

    struct Device {
        keys: MemberKeys,
        group: Group,
    }

    impl Device {
        fn id(&self) -> MemberId {
            self.keys.member_id()
        }
    }

    fn creator() -> Device {
        let keys = MemberKeys::generate(&mut OsRng);
        let (group, _, _) = Group::create(&keys, "Circle", "Support", &mut OsRng).unwrap();
        Device { keys, group }
    }

    /// Every envelope `d` holds.
    fn everything(d: &Device) -> Vec<Envelope> {
        d.group
            .missing_for(&VersionVector::new(), usize::MAX, usize::MAX)
    }

    /// `by` admits a new device, which starts from what an admission hands it (the new
    /// epoch's key, roster keys of earlier epochs, the snapshot) and then every envelope.
    fn admit(by: &mut Device, role: Role) -> Device {
        let keys = MemberKeys::generate(&mut OsRng);
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
                .filter(|(e, _, _)| *e != epoch)
                .map(|(e, r, k)| KeyGrant {
                    epoch: e,
                    rotation: r,
                    access: Access::Roster(k),
                }),
        );
        let snapshot = by.group.snapshot();
        let mut group = Group::restore(*by.group.info(), &keys, grants, Some(&snapshot)).unwrap();
        group.ingest(everything(by));
        assert!(group.roster().is_member(&keys.member_id()));
        Device { keys, group }
    }

    /// A creator plus `n` members, all holding every envelope.
    fn setup(n: usize) -> Vec<Device> {
        let mut devices = vec![creator()];
        for _ in 0..n {
            let d = admit(&mut devices[0], Role::Member);
            devices.push(d);
        }
        sync_all(&mut devices);
        devices
    }

    /// Hands every device every envelope any device holds that it lacks.
    fn sync_all(devices: &mut [Device]) {
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

    fn agree(d: &mut Device, text: &str) -> Written {
        d.group.add_agreement(text, 0, &mut OsRng).unwrap().1
    }

    fn texts(d: &Device) -> BTreeSet<String> {
        texts_of(&d.group)
    }

    #[test]
    fn members_write_and_converge() {
        let mut d = setup(2);
        for (i, dev) in d.iter_mut().enumerate() {
            agree(dev, &format!("agreement {i}"));
        }
        sync_all(&mut d);
        let views: Vec<GroupDoc> = d.iter().map(|x| x.group.read()).collect();
        assert_eq!(views[0].agreements.len(), 3);
        assert!(views.iter().all(|v| v == &views[0]));
        assert_eq!(d[1].group.version_vector(), d[2].group.version_vector());
        assert_eq!(d[1].group.roster(), d[0].group.roster());
    }

    #[test]
    fn a_joiner_reads_the_snapshot_but_no_envelope_from_before_its_admission() {
        let mut a = creator();
        agree(&mut a, "before");
        let b = admit(&mut a, Role::Member);
        // The content is there, from the snapshot, but the envelope that carried it is not
        // readable to B: it was sealed under an epoch whose content key B never got.
        assert!(texts(&b).contains("before"));
        assert!(!b.group.readable_epochs().contains(&0));
        assert!(!b.group.sealed.is_empty());
        let mut a = a;
        agree(&mut a, "after");
        let mut b = b;
        b.group.ingest(everything(&a));
        assert!(texts(&b).contains("after"));
    }

    #[test]
    fn a_write_concurrent_with_an_admission_is_resealed_for_the_newcomer() {
        let mut d = setup(1);
        // B writes while A admits J: A's snapshot for J lacks B's write, sealed under the
        // epoch before J's admission.
        let concurrent = agree(&mut d[1], "written during the admission");
        let mut j = admit(&mut d[0], Role::Member);
        assert!(!texts(&j).contains("written during the admission"));
        // A then receives B's write and re-seals it under the current epoch.
        d[0].group.ingest(concurrent.accepted.clone());
        let resealed = d[0]
            .group
            .reseal_due(&mut OsRng)
            .unwrap()
            .expect("A re-seals");
        assert!(
            d[0].group.reseal_due(&mut OsRng).unwrap().is_none(),
            "only once"
        );
        j.group.ingest(concurrent.accepted.clone());
        j.group.ingest(resealed.accepted.clone());
        assert!(texts(&j).contains("written during the admission"));
        // B learns of the admission and writes on; J follows B's changes from there.
        let all = everything(&d[0]);
        d[1].group.ingest(all);
        let later = agree(&mut d[1], "B after the admission");
        j.group.ingest(later.accepted.clone());
        assert!(texts(&j).contains("B after the admission"));
        assert!(
            !j.group
                .readable_epochs()
                .contains(&concurrent.own.header().epoch)
        );
    }

    #[test]
    fn a_forged_resealing_neither_spoils_the_original_nor_blocks_the_genuine_one() {
        let mut d = setup(2);
        let concurrent = agree(&mut d[1], "written during the admission");
        let mut j = admit(&mut d[0], Role::Member);
        let target = *concurrent.own.header();
        // C, a hostile member, re-seals made-up changes for B's envelope first.
        let all = everything(&d[0]);
        d[2].group.ingest(all);
        let mut fake_doc =
            GroupDocument::load(&d[2].group.snapshot_clone(), d[1].id().actor_id()).unwrap();
        let fake = write_agreement(&mut fake_doc, d[1].id(), "forged")
            .into_iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect();
        let forged = d[2]
            .group
            .append_own(
                Body::Reseal {
                    author: target.author,
                    seq: target.seq,
                    changes: fake,
                },
                &mut OsRng,
            )
            .unwrap();
        d[0].group.ingest(concurrent.accepted.clone());
        let genuine = d[0].group.reseal_due(&mut OsRng).unwrap().unwrap();
        j.group.ingest(concurrent.accepted.clone());
        j.group.ingest(forged.accepted.clone());
        let r = j.group.ingest(genuine.accepted.clone());
        assert_eq!(r.ineffective, 0);
        assert!(texts(&j).contains("written during the admission"));
        assert!(!texts(&j).contains("forged"));
    }

    #[test]
    fn stranger_envelopes_are_not_applied() {
        let mut d = setup(1);
        // A stranger holding the epoch key (say, a leaked key) but never admitted.
        let stranger = MemberKeys::generate(&mut OsRng);
        let (epoch, key) = d[0].group.current_epoch();
        let header = Header {
            version: 0,
            group_id: d[0].group.id(),
            epoch,
            author: stranger.member_id(),
            seq: 1,
            prev: ZERO_HASH,
            change_head: ZERO_HASH,
        };
        let env = Envelope::seal(
            &stranger,
            header,
            &Body::Roster(RosterOp {
                deps: vec![],
                action: Action::SetRole {
                    member: stranger.member_id(),
                    role: Role::Facilitator,
                },
            }),
            key.unwrap(),
            &mut OsRng,
        );
        let r = d[1].group.ingest(vec![env]);
        assert!(r.accepted.is_empty());
        assert!(!d[1].group.roster().is_member(&stranger.member_id()));
    }

    #[test]
    fn tampered_envelope_is_rejected_and_not_applied() {
        let mut d = setup(1);
        let env = agree(&mut d[0], "no phones").own;
        let mut bytes = env.as_bytes().to_vec();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        let forged = Envelope::decode(bytes).unwrap();
        let r = d[1].group.ingest(vec![forged]);
        assert_eq!(r.rejected, 1);
        assert!(r.accepted.is_empty());
        assert!(!texts(&d[1]).contains("no phones"));
        // The genuine envelope still goes through afterwards.
        assert_eq!(d[1].group.ingest(vec![env]).accepted.len(), 1);
        assert!(texts(&d[1]).contains("no phones"));
    }

    /// Seals `body` as `keys`' envelope at `seq` after `prev`, under `g`'s current epoch.
    fn craft(
        g: &Group,
        keys: &MemberKeys,
        seq: u64,
        prev: Hash,
        change_head: Hash,
        body: &Body,
    ) -> Envelope {
        let (epoch, key) = g.current_epoch();
        let header = Header {
            version: 0,
            group_id: g.id(),
            epoch,
            author: keys.member_id(),
            seq,
            prev,
            change_head,
        };
        Envelope::seal(keys, header, body, key.unwrap(), &mut OsRng)
    }

    /// An agreement as `author`'s device writes one, in a copy of the document.
    fn write_agreement(
        doc: &mut GroupDocument,
        author: MemberId,
        text: &str,
    ) -> Vec<automerge::Change> {
        let id = doc::agreement_id(
            &author,
            rand_core::RngCore::next_u64(&mut OsRng).to_le_bytes(),
        );
        doc.insert_agreement(&id, text, 0).unwrap()
    }

    fn next_of(d: &Device) -> (u64, Hash, Hash) {
        d.group
            .head(&d.id())
            .map_or((1, ZERO_HASH, ZERO_HASH), |h| {
                (h.seq + 1, h.hash, h.change_head)
            })
    }

    #[test]
    fn member_cannot_pass_off_changes_as_anothers() {
        let d = setup(1);
        // B edits with A's actor id: the envelope verifies (B signed it) but its changes
        // are attributed to A, so they must not apply.
        let mut forged_doc =
            GroupDocument::load(&d[1].group.snapshot_clone(), d[0].id().actor_id()).unwrap();
        let changes: Vec<Vec<u8>> = write_agreement(&mut forged_doc, d[0].id(), "hijacked")
            .into_iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect();
        let head = automerge::Change::from_bytes(changes[0].clone())
            .unwrap()
            .hash()
            .0;
        let (seq, prev, _) = next_of(&d[1]);
        let env = craft(
            &d[1].group,
            &d[1].keys,
            seq,
            prev,
            head,
            &Body::Changes { changes },
        );
        let mut d = d;
        let r = d[0].group.ingest(vec![env]);
        assert_eq!(r.ineffective, 1);
        assert!(!texts(&d[0]).contains("hijacked"));
    }

    /// `d`'s next envelope, made as a hostile device makes one: raw automerge operations
    /// with its own actor id, in a copy of its document that has also taken `seen` in.
    fn hostile(
        d: &Device,
        seen: &[automerge::Change],
        edit: impl FnOnce(&mut automerge::AutoCommit),
    ) -> (Envelope, Vec<automerge::Change>) {
        let mut copy = GroupDocument::load(&d.group.snapshot_clone(), d.id().actor_id()).unwrap();
        copy.apply(seen.to_vec()).unwrap();
        let changes = copy.craft(edit);
        let (seq, prev, _) = next_of(d);
        let body = Body::Changes {
            changes: changes.iter().map(|c| c.raw_bytes().to_vec()).collect(),
        };
        let head = changes.last().unwrap().hash().0;
        (craft(&d.group, &d.keys, seq, prev, head, &body), changes)
    }

    fn container(doc: &automerge::AutoCommit) -> automerge::ObjId {
        use automerge::ReadDoc;
        doc.get(automerge::ROOT, "agreements").unwrap().unwrap().1
    }

    /// The agreements container and the object of the agreement `id`, in `doc`.
    fn objects(doc: &automerge::AutoCommit, id: &str) -> (automerge::ObjId, automerge::ObjId) {
        use automerge::ReadDoc;
        let container = container(doc);
        let record = doc.get(&container, id).unwrap().unwrap().1;
        (container, record)
    }

    #[test]
    fn every_device_shows_the_real_author_whatever_the_record_says() {
        use automerge::transaction::Transactable;
        let mut d = setup(2);
        let (b, c) = (d[1].id(), d[2].id());
        let id = doc::agreement_id(&c, [7; 8]);
        // C writes its own agreement but names B in the `author` field.
        let (env, _) = hostile(&d[2], &[], |doc| {
            let container = container(doc);
            let record = doc
                .put_object(&container, &id, automerge::ObjType::Map)
                .unwrap();
            doc.put(&record, "text", "B says: phones on").unwrap();
            doc.put(&record, "author", b.to_hex()).unwrap();
            doc.put(&record, "created_at", 1).unwrap();
        });
        for dev in d.iter_mut() {
            assert_eq!(dev.group.ingest(vec![env.clone()]).ineffective, 0);
            assert_eq!(dev.group.agreement(&id).unwrap().author, c);
            assert_eq!(dev.group.read().agreements[&id].author, c);
        }
        let joiner = admit(&mut d[0], Role::Member);
        assert_eq!(joiner.group.agreement(&id).unwrap().author, c);
    }

    #[test]
    fn a_member_cannot_change_anothers_records_or_the_container() {
        use automerge::transaction::Transactable;
        type Attack = fn(&mut automerge::AutoCommit, &str);
        let attacks: [(&str, Attack); 4] = [
            ("edit B's text", |doc, id| {
                let (_, record) = objects(doc, id);
                doc.put(&record, "text", "hijacked").unwrap();
            }),
            ("delete B's agreement", |doc, id| {
                let (container, _) = objects(doc, id);
                doc.delete(&container, id).unwrap();
            }),
            ("replace B's agreement", |doc, id| {
                let (container, _) = objects(doc, id);
                let record = doc
                    .put_object(&container, id, automerge::ObjType::Map)
                    .unwrap();
                doc.put(&record, "text", "hijacked").unwrap();
                doc.put(&record, "created_at", 1).unwrap();
            }),
            ("replace the agreements container", |doc, _| {
                doc.put_object(automerge::ROOT, "agreements", automerge::ObjType::Map)
                    .unwrap();
            }),
        ];
        for (what, attack) in attacks {
            let mut d = setup(2);
            let (id, _) = d[1]
                .group
                .add_agreement("Phones away", 5, &mut OsRng)
                .unwrap();
            sync_all(&mut d);
            let before = d[0].group.read();
            let (env, _) = hostile(&d[2], &[], |doc| attack(doc, &id));
            for dev in d.iter_mut() {
                let r = dev.group.ingest(vec![env.clone()]);
                assert_eq!((r.accepted.len(), r.ineffective), (1, 1), "{what}");
                assert_eq!(dev.group.read(), before, "{what}");
            }
            assert_eq!(restarted(&d[0]).read(), before, "{what}");
            // An honest member writing afterwards is unaffected, everywhere.
            agree(&mut d[1], "We start on time");
            sync_all(&mut d);
            let joiner = admit(&mut d[0], Role::Member);
            for g in d.iter().map(|x| &x.group).chain([&joiner.group]) {
                assert_eq!(g.agreement(&id).unwrap().text, "Phones away", "{what}");
                assert!(texts_of(g).contains("We start on time"), "{what}");
            }
        }
    }

    /// B, being removed, edits A's agreement; C, colluding, builds on the edit. C's
    /// change counts, but what it depends on breaks the rules: it is never rescued, so
    /// C's change never applies either, on any device in any order.
    #[test]
    fn a_change_built_on_a_forbidden_one_never_applies() {
        use automerge::transaction::Transactable;
        let mut d = setup(3);
        let (id, _) = d[0]
            .group
            .add_agreement("Phones away", 5, &mut OsRng)
            .unwrap();
        sync_all(&mut d);
        let b = d[1].id();
        let removal = d[0].group.remove_member(b, &mut OsRng).unwrap();
        let (edit, edit_changes) = hostile(&d[1], &[], |doc| {
            let (_, record) = objects(doc, &id);
            doc.put(&record, "text", "hijacked").unwrap();
        });
        let c = d[2].id();
        let (on_top, _) = hostile(&d[2], &edit_changes, |doc| {
            let (container, _) = objects(doc, &id);
            let record = doc
                .put_object(
                    &container,
                    doc::agreement_id(&c, [1; 8]),
                    automerge::ObjType::Map,
                )
                .unwrap();
            doc.put(&record, "text", "built on the edit").unwrap();
            doc.put(&record, "created_at", 1).unwrap();
        });
        d[0].group.ingest(vec![edit.clone()]);
        d[0].group.ingest(vec![on_top.clone()]);
        d[3].group.ingest(vec![on_top]);
        d[3].group.ingest(removal.accepted);
        d[3].group.ingest(vec![edit]);
        for g in [&d[0].group, &d[3].group, &restarted(&d[0])] {
            assert_eq!(g.agreement(&id).unwrap().text, "Phones away");
            assert!(!texts_of(g).contains("built on the edit"));
        }
        let honest = agree(&mut d[3], "We listen");
        d[0].group.ingest(honest.accepted);
        assert_eq!(texts(&d[0]), texts(&d[3]));
        assert!(texts(&d[0]).contains("We listen"));
    }

    #[test]
    fn a_members_duplicate_changes_cannot_sink_others_in_the_same_batch() {
        let mut d = setup(1);
        let b_actor = d[1].id().actor_id();
        // Two different automerge changes with B's actor and the same seq.
        let mut one = GroupDocument::load(&d[0].group.snapshot_clone(), b_actor.clone()).unwrap();
        let mut two = GroupDocument::load(&d[0].group.snapshot_clone(), b_actor).unwrap();
        let c1 = write_agreement(&mut one, d[1].id(), "one");
        let c2 = write_agreement(&mut two, d[1].id(), "two");
        let raw: Vec<Vec<u8>> = c1
            .iter()
            .chain(c2.iter())
            .map(|c| c.raw_bytes().to_vec())
            .collect();
        let (seq, prev, _) = next_of(&d[1]);
        let hostile = craft(
            &d[1].group,
            &d[1].keys,
            seq,
            prev,
            c2[0].hash().0,
            &Body::Changes { changes: raw },
        );
        let honest = agree(&mut d[0], "honest").own;
        let r = d[0].group.ingest(vec![hostile]);
        assert_eq!(r.ineffective, 1);
        assert!(texts(&d[0]).contains("honest"));
        assert!(!texts(&d[0]).contains("one") && !texts(&d[0]).contains("two"));
        let _ = honest;
    }

    #[test]
    fn a_write_returns_every_envelope_it_let_in() {
        let mut d = setup(0);
        let a = &mut d[0];
        let j = MemberKeys::generate(&mut OsRng);
        // J's first envelope arrives before J's add: it waits.
        let early = craft(
            &a.group,
            &j,
            1,
            ZERO_HASH,
            ZERO_HASH,
            &Body::Roster(RosterOp {
                deps: vec![],
                action: Action::Rename { name: "j".into() },
            }),
        );
        assert!(a.group.ingest(vec![early.clone()]).accepted.is_empty());
        // The add lets it in: both must be reported, or the daemon would store only one.
        let written = a
            .group
            .add_member(j.public(), Role::Member, "", 0, &mut OsRng)
            .unwrap();
        assert_eq!(written.accepted.len(), 2);
        assert!(written.accepted.contains(&written.own));
        assert!(written.accepted.contains(&early));
    }

    #[test]
    fn a_signed_fork_is_detected_and_stops_the_authors_log() {
        let mut d = setup(1);
        let (seq, prev, head) = next_of(&d[1]);
        let body = |name: &str| {
            Body::Roster(RosterOp {
                deps: vec![],
                action: Action::Rename { name: name.into() },
            })
        };
        let x = craft(&d[1].group, &d[1].keys, seq, prev, head, &body("x"));
        let y = craft(&d[1].group, &d[1].keys, seq, prev, head, &body("y"));
        assert_eq!(d[0].group.ingest(vec![x]).accepted.len(), 1);
        let r = d[0].group.ingest(vec![y]);
        assert_eq!(r.forks, 1);
        assert_eq!(d[0].group.forked_authors().count(), 1);
    }

    #[test]
    fn a_forged_envelope_cannot_evict_a_buffered_genuine_one() {
        let mut d = setup(1);
        let e1 = agree(&mut d[1], "first").own;
        let e2 = agree(&mut d[1], "second").own;
        // The genuine seq n+1 waits for seq n; a forgery for seq n+1 then arrives.
        d[0].group.ingest(vec![e2.clone()]);
        let forger = MemberKeys::generate(&mut OsRng);
        let mut forged = craft(
            &d[1].group,
            &forger,
            e2.header().seq,
            e1.hash(),
            ZERO_HASH,
            &Body::Changes { changes: vec![] },
        );
        forged = Envelope::decode({
            let mut bytes = forged.into_bytes();
            bytes[21..37].copy_from_slice(d[1].id().as_bytes());
            bytes
        })
        .unwrap();
        d[0].group.ingest(vec![forged]);
        let r = d[0].group.ingest(vec![e1]);
        assert_eq!(r.accepted.len(), 2);
        assert!(texts(&d[0]).contains("first") && texts(&d[0]).contains("second"));
    }

    #[test]
    fn a_removed_member_gets_no_new_key_and_its_later_acts_are_void() {
        let mut d = setup(2);
        let b_id = d[1].id();
        let old_epoch = d[1].group.current_epoch().0;
        let removal = d[0].group.remove_member(b_id, &mut OsRng).unwrap();
        // B, not yet aware, adds an agreement; nobody builds on it.
        let late = agree(&mut d[1], "written after removal");
        let marker = agree(&mut d[0], "marker after removal");
        let (new_epoch, _) = d[0].group.current_epoch();
        assert!(new_epoch > old_epoch);
        // B receives everything (say, through a careless relay): it still cannot open
        // anything of the new epoch.
        let all = everything(&d[0]);
        d[1].group.ingest(all);
        assert!(!texts(&d[1]).contains("marker after removal"));
        assert!(!d[1].group.readable_epochs().contains(&new_epoch));
        assert!(
            d[1].group
                .sealed
                .contains(&(d[0].id(), marker.own.header().seq))
        );
        // A and C apply the removal; B's late write does not count for them.
        d[2].group.ingest(removal.accepted.clone());
        for dev in [0, 2] {
            d[dev].group.ingest(late.accepted.clone());
            d[dev].group.ingest(marker.accepted.clone());
            assert!(!d[dev].group.roster().is_member(&b_id));
            assert!(!texts(&d[dev]).contains("written after removal"));
            assert!(texts(&d[dev]).contains("marker after removal"));
        }
        assert!(d[2].group.readable_epochs().contains(&new_epoch));
    }

    #[test]
    fn content_a_member_built_on_survives_its_authors_removal() {
        let mut d = setup(2);
        let b_id = d[1].id();
        let removal = d[0].group.remove_member(b_id, &mut OsRng).unwrap();
        // B writes concurrently; C sees B's write before the removal and writes on top.
        let late = agree(&mut d[1], "B's concurrent agreement");
        d[2].group.ingest(late.accepted.clone());
        let on_top = agree(&mut d[2], "C's agreement after seeing B's");
        // Different delivery orders on A and on a fresh replica end in the same document.
        d[0].group.ingest(late.accepted.clone());
        d[0].group.ingest(on_top.accepted.clone());
        d[2].group.ingest(removal.accepted.clone());
        let a = texts(&d[0]);
        assert!(a.contains("C's agreement after seeing B's"));
        assert!(a.contains("B's concurrent agreement"));
        assert_eq!(a, texts(&d[2]));
    }

    /// A removed member that goes on writing cannot make others store and forward its log
    /// without end: past its cut, a device takes in only a bounded stretch of it.
    #[test]
    fn a_removed_members_log_grows_only_a_bounded_stretch_past_its_cut() {
        let mut d = setup(2);
        let b_id = d[1].id();
        let removal = d[0].group.remove_member(b_id, &mut OsRng).unwrap();
        let cut = d[0].group.roster().departed()[&b_id].cut;
        // B, unaware, writes on: far more than the stretch.
        let mut late = Vec::new();
        for i in 0..(MAX_PAST_CUT + 40) {
            late.extend(agree(&mut d[1], &format!("late {i}")).accepted);
        }
        for dev in [0, 2] {
            if dev == 2 {
                d[2].group.ingest(removal.accepted.clone());
            }
            d[dev].group.ingest(late.clone());
            let head = d[dev].group.head(&b_id).map_or(0, |h| h.seq);
            assert_eq!(head, cut + MAX_PAST_CUT, "device {dev}");
        }
        // Nor is more of it forwarded.
        let forwarded = d[0]
            .group
            .missing_for(&VersionVector::new(), usize::MAX, usize::MAX)
            .into_iter()
            .filter(|e| e.header().author == b_id && e.header().seq > cut)
            .count() as u64;
        assert_eq!(forwarded, MAX_PAST_CUT);
        // What waits beyond it is bounded like any outsider's.
        assert!(d[0].group.pending_of_outsiders().0 <= MAX_PENDING_PER_UNKNOWN_AUTHOR);
    }

    /// Identities are free: however many a stranger makes, what waits for them together
    /// stays bounded, and a member's out-of-order envelopes still find room.
    #[test]
    fn fresh_identities_cannot_fill_the_buffer_members_need() {
        let mut d = setup(2);
        let (epoch, key) = d[0].group.current_epoch();
        let key = key.unwrap().clone();
        let mut flood = Vec::new();
        for _ in 0..(MAX_PENDING_OUTSIDERS / 100 + 5) {
            let stranger = MemberKeys::generate(&mut OsRng);
            for seq in 2..102u64 {
                let header = Header {
                    version: 0,
                    group_id: d[0].group.id(),
                    epoch,
                    author: stranger.member_id(),
                    seq,
                    prev: [seq as u8; 32],
                    change_head: ZERO_HASH,
                };
                let body = Body::Changes {
                    changes: vec![vec![0; 2048]],
                };
                flood.push(Envelope::seal(&stranger, header, &body, &key, &mut OsRng));
            }
        }
        let r = d[0].group.ingest(flood);
        assert!(r.accepted.is_empty());
        assert!(r.refused > 0);
        let (count, bytes) = d[0].group.pending_of_outsiders();
        assert!(count <= MAX_PENDING_OUTSIDERS, "{count}");
        assert!(bytes <= MAX_PENDING_OUTSIDER_BYTES, "{bytes}");
        // B's second write arrives before its first: it waits, and both then apply.
        let first = agree(&mut d[1], "first");
        let second = agree(&mut d[1], "second");
        let r = d[0].group.ingest(second.accepted.clone());
        assert_eq!(r.refused, 0);
        d[0].group.ingest(first.accepted.clone());
        assert!(texts(&d[0]).contains("first") && texts(&d[0]).contains("second"));
    }

    #[test]
    fn two_facilitators_removing_each_other_resolve_the_same_everywhere() {
        let mut d = setup(0);
        let f = admit(&mut d[0], Role::Facilitator);
        d.push(f);
        let m = admit(&mut d[0], Role::Member);
        d.push(m);
        sync_all(&mut d);
        let (a_id, f_id) = (d[0].id(), d[1].id());
        let by_a = d[0].group.remove_member(f_id, &mut OsRng).unwrap();
        let by_f = d[1].group.remove_member(a_id, &mut OsRng).unwrap();
        // Deliver in opposite orders.
        d[2].group.ingest(by_a.accepted.clone());
        d[2].group.ingest(by_f.accepted.clone());
        d[0].group.ingest(by_f.accepted.clone());
        d[1].group.ingest(by_a.accepted.clone());
        let rosters: Vec<&Roster> = d.iter().map(|x| x.group.roster()).collect();
        assert_eq!(rosters[0], rosters[1]);
        assert_eq!(rosters[0], rosters[2]);
        // The senior facilitator (the creator) stays; the other is removed.
        assert!(rosters[0].is_member(&a_id));
        assert!(!rosters[0].is_member(&f_id));
    }

    #[test]
    fn after_a_member_leaves_the_next_write_starts_a_new_epoch() {
        let mut d = setup(2);
        let c_id = d[2].id();
        let gone = d[2].group.leave(&mut OsRng).unwrap();
        d[0].group.ingest(gone.accepted.clone());
        assert!(!d[0].group.roster().is_member(&c_id));
        assert!(d[0].group.roster().needs_rotation());
        let before = d[0].group.current_epoch().0;
        assert!(matches!(
            d[0].group.add_agreement("too early", 0, &mut OsRng),
            Err(GroupError::NeedsRotation)
        ));
        assert!(d[0].group.rotate_if_needed(&mut OsRng).unwrap().is_some());
        agree(&mut d[0], "after C left");
        let (after, _) = d[0].group.current_epoch();
        assert!(after > before);
        assert!(!d[0].group.roster().needs_rotation());
        assert!(!d[0].group.roster().current_epoch().holders.contains(&c_id));
        let all = everything(&d[0]);
        d[1].group.ingest(all);
        assert!(texts(&d[1]).contains("after C left"));
        let all = everything(&d[0]);
        d[2].group.ingest(all);
        assert!(!texts(&d[2]).contains("after C left"));
    }

    #[test]
    fn a_member_admitted_concurrently_with_a_rotation_is_forwarded_its_key() {
        let mut d = setup(1);
        // B rotates while A admits J: J's add did not see B's rotation.
        let rotation = d[1].group.rotate(&mut OsRng).unwrap();
        let mut j = admit(&mut d[0], Role::Member);
        d.push(Device {
            keys: j.keys.clone(),
            group: std::mem::replace(
                &mut j.group,
                Group::restore(*d[0].group.info(), &j.keys, [], None).unwrap(),
            ),
        });
        d[0].group.ingest(rotation.accepted.clone());
        let due = d[0].group.roster().forwards_due().to_vec();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].member, d[2].id());
        let forwarded = d[0]
            .group
            .forward_keys(&mut OsRng)
            .unwrap()
            .expect("A forwards");
        sync_all(&mut d);
        assert!(d[0].group.roster().forwards_due().is_empty());
        let r = d[2].group.roster().current_epoch().epoch;
        assert!(d[2].group.readable_epochs().contains(&r));
        let _ = forwarded;
    }

    /// `n` agreements written by `d`.
    fn write_many(d: &mut Device, n: usize, tag: &str) {
        for i in 0..n {
            agree(d, &format!("{tag} {i}"));
        }
    }

    fn bytes_of(envelopes: &[Envelope]) -> usize {
        envelopes.iter().map(|e| e.as_bytes().len()).sum()
    }

    #[test]
    fn a_compacted_log_brings_a_member_up_to_date_in_a_fraction_of_the_bytes() {
        let mut d = setup(1);
        let behind = d[1].group.version_vector();
        write_many(&mut d[0], 400, "agreement");
        let plain = d[0].group.missing_for(&behind, usize::MAX, usize::MAX);
        let compacted = d[0]
            .group
            .compact_own(MIN_SEGMENT_POSITIONS, true, &mut OsRng);
        assert_eq!(compacted.len(), 1, "one run of content");
        let segment = &compacted[0].segment;
        let span = *segment.span().unwrap();
        assert_eq!(
            segment.header().seq,
            d[0].group.head(&d[0].id()).unwrap().seq - KEEP_RECENT
        );
        assert_eq!(
            compacted[0].replaced.len() as u64,
            segment.header().seq - span.first + 1
        );
        let sent = d[0].group.missing_for(&behind, usize::MAX, usize::MAX);
        assert!(
            bytes_of(&sent) * 4 < bytes_of(&plain),
            "{} bytes compacted against {} plain",
            bytes_of(&sent),
            bytes_of(&plain)
        );
        let r = d[1].group.ingest(sent);
        assert_eq!((r.rejected, r.ineffective), (0, 0));
        assert_eq!(texts(&d[1]), texts(&d[0]));
        assert_eq!(texts(&d[1]).len(), 400);
        assert_eq!(d[1].group.version_vector(), d[0].group.version_vector());
        // And it writes on top of what it took from the segment.
        agree(&mut d[1], "after the segment");
        sync_all(&mut d);
        assert_eq!(texts(&d[0]), texts(&d[1]));
    }

    #[test]
    fn a_member_holding_some_envelopes_takes_the_segment_that_restates_them() {
        let mut d = setup(1);
        write_many(&mut d[0], 150, "early");
        sync_all(&mut d);
        write_many(&mut d[0], 150, "late");
        let compacted = d[0]
            .group
            .compact_own(MIN_SEGMENT_POSITIONS, true, &mut OsRng);
        assert!(!compacted.is_empty());
        let sent = d[0]
            .group
            .missing_for(&d[1].group.version_vector(), usize::MAX, usize::MAX);
        assert!(sent.iter().any(|e| e.span().is_some()));
        let r = d[1].group.ingest(sent);
        assert_eq!((r.rejected, r.ineffective), (0, 0));
        assert!(
            !r.superseded.is_empty(),
            "envelopes the segment restates are dropped"
        );
        assert_eq!(texts(&d[1]).len(), 300);
        assert_eq!(texts(&d[1]), texts(&d[0]));
        // A third device gets the same from the member as from the author.
        let mut late = admit(&mut d[0], Role::Member);
        late.group.ingest(everything(&d[1]));
        sync_all(&mut d);
        assert_eq!(
            late.group.version_vector().get(&d[0].id()),
            d[1].group.version_vector().get(&d[0].id())
        );
    }

    #[test]
    fn compacting_again_merges_segments_and_a_restart_rebuilds_the_same_document() {
        let mut d = setup(1);
        write_many(&mut d[0], 200, "first");
        let once = d[0]
            .group
            .compact_own(MIN_SEGMENT_POSITIONS, true, &mut OsRng);
        assert_eq!(once.len(), 1);
        sync_all(&mut d);
        write_many(&mut d[0], 200, "second");
        let again = d[0]
            .group
            .compact_own(MIN_SEGMENT_POSITIONS, true, &mut OsRng);
        assert_eq!(again.len(), 1);
        assert_eq!(
            again[0].segment.first(),
            once[0].segment.first(),
            "the second segment restates the first one too"
        );
        assert!(again[0].replaced.contains(&once[0].segment.header().seq));
        let stored = everything(&d[0]);
        assert_eq!(stored.iter().filter(|e| e.span().is_some()).count(), 1);
        // A restart feeds the store back in: same document, same heads.
        let grants: Vec<KeyGrant> = d[0].group.keys.values().flatten().cloned().collect();
        let mut restarted = Group::restore(*d[0].group.info(), &d[0].keys, grants, None).unwrap();
        let r = restarted.ingest_stored(stored);
        assert_eq!((r.rejected, r.ineffective), (0, 0));
        assert_eq!(restarted.read(), d[0].group.read());
        assert_eq!(restarted.version_vector(), d[0].group.version_vector());
        // The member, which held the first segment, takes the merged one.
        let all = everything(&d[0]);
        let r = d[1].group.ingest(all);
        assert_eq!(r.rejected, 0);
        assert_eq!(texts(&d[1]).len(), 400);
    }

    #[test]
    fn a_tampered_segment_is_rejected_and_changes_nothing() {
        let mut d = setup(1);
        let behind = d[1].group.version_vector();
        write_many(&mut d[0], 200, "agreement");
        d[0].group
            .compact_own(MIN_SEGMENT_POSITIONS, true, &mut OsRng);
        let sent = d[0].group.missing_for(&behind, usize::MAX, usize::MAX);
        for at in [10, 140, 300] {
            let mut bad = sent.clone();
            let i = bad.iter().position(|e| e.span().is_some()).unwrap();
            let mut bytes = bad[i].as_bytes().to_vec();
            bytes[at] ^= 1;
            let Ok(env) = Envelope::decode(bytes) else {
                continue;
            };
            bad[i] = env;
            bad.truncate(i + 1);
            let mut copy = Group::restore(
                *d[1].group.info(),
                &d[1].keys,
                d[1].group.keys.values().flatten().cloned(),
                None,
            )
            .unwrap();
            copy.ingest(everything(&d[1]));
            let before = copy.read();
            let r = copy.ingest(bad);
            assert!(r.rejected >= 1, "flip at {at} went unnoticed");
            assert_eq!(copy.read(), before);
        }
    }

    #[test]
    fn a_signed_segment_contradicting_an_envelope_is_a_fork() {
        let mut d = setup(1);
        write_many(&mut d[0], 100, "agreement");
        sync_all(&mut d);
        let author = d[0].id();
        let head = *d[0].group.head(&author).unwrap();
        let (epoch, key) = d[0].group.current_epoch();
        let key = key.unwrap().clone();
        let forged = Envelope::seal_segment(
            &d[0].keys,
            Header {
                version: 0,
                group_id: d[0].group.id(),
                epoch,
                author,
                seq: head.seq,
                prev: d[1].group.chain_hash_at(&author, 9).unwrap(),
                change_head: head.change_head,
            },
            crate::envelope::Span {
                first: 10,
                last_hash: [9; 32],
            },
            &Body::Segment {
                ends: (10..=head.seq).collect(),
                bundle: Vec::new(),
            },
            &key,
            &mut OsRng,
        );
        let r = d[1].group.ingest(vec![forged]);
        assert_eq!(r.forks, 1);
        assert!(d[1].group.forked_authors().any(|a| *a == author));
    }

    /// `d`'s group as its daemon would rebuild it after a restart: the keys it was handed
    /// outside the logs, then everything it holds.
    fn restarted(d: &Device) -> Group {
        let grants: Vec<KeyGrant> = d
            .group
            .keys
            .values()
            .flatten()
            .filter(|g| d.group.outside_grants.contains(&(g.epoch, g.rotation)))
            .cloned()
            .collect();
        let mut group = Group::restore(*d.group.info(), &d.keys, grants, None).unwrap();
        group.ingest_stored(everything(d));
        group
    }

    /// A segment signed by `keys` restating its positions `first..=last.seq`.
    fn craft_segment(
        on: &Group,
        keys: &MemberKeys,
        first: u64,
        last: &LogHead,
        change_head: Hash,
        ends: Vec<u64>,
        bundle: Vec<u8>,
    ) -> Envelope {
        let (epoch, key) = on.current_epoch();
        let author = keys.member_id();
        Envelope::seal_segment(
            keys,
            Header {
                version: 0,
                group_id: on.id(),
                epoch,
                author,
                seq: last.seq,
                prev: on.chain_hash_at(&author, first - 1).unwrap(),
                change_head,
            },
            crate::envelope::Span {
                first,
                last_hash: last.hash,
            },
            &Body::Segment { ends, bundle },
            key.unwrap(),
            &mut OsRng,
        )
    }

    fn texts_of(g: &Group) -> BTreeSet<String> {
        g.read()
            .agreements
            .values()
            .map(|a| a.text.clone())
            .collect()
    }

    #[test]
    fn a_segment_that_does_not_open_erases_nothing_from_the_store() {
        let mut d = setup(1);
        let m = d[1].id();
        let first = d[1].group.head(&m).map_or(1, |h| h.seq + 1);
        agree(&mut d[1], "m before");
        d[1].group.rotate(&mut OsRng).unwrap();
        agree(&mut d[1], "m after");
        sync_all(&mut d);
        agree(&mut d[0], "creator under the member's epoch");
        sync_all(&mut d);
        let (epochs, before) = (d[0].group.readable_epochs(), texts(&d[0]));
        agree(&mut d[1], "m unsent");
        let head = *d[1].group.head(&m).unwrap();
        let ends = (1..=head.seq - first + 1).collect();
        let forged = craft_segment(
            &d[0].group,
            &d[1].keys,
            first,
            &head,
            head.change_head,
            ends,
            vec![1, 2, 3],
        );
        let r = d[0].group.ingest(vec![forged]);
        assert!(
            r.superseded.is_empty(),
            "nothing is dropped for a segment that does not open"
        );
        let again = restarted(&d[0]);
        assert_eq!(texts_of(&again), before);
        assert_eq!(again.readable_epochs(), epochs);
    }

    #[test]
    fn a_segment_restating_held_envelopes_differently_is_a_fork() {
        let mut d = setup(1);
        let m = d[1].id();
        let first = d[1].group.head(&m).map_or(1, |h| h.seq + 1);
        let mut alt = GroupDocument::load(&d[1].group.doc.save(), m.actor_id()).unwrap();
        agree(&mut d[1], "real 1");
        agree(&mut d[1], "real 2");
        sync_all(&mut d);
        agree(&mut d[1], "real 3");
        let head = *d[1].group.head(&m).unwrap();
        let mut cs = Vec::new();
        for i in 1..=3 {
            cs.extend(write_agreement(&mut alt, m, &format!("forged {i}")));
        }
        let bundle = alt.bundle(cs.iter().map(|c| c.hash()).collect()).unwrap();
        let ends = cs.iter().map(|c| c.seq()).collect();
        let head_change = cs.last().unwrap().hash().0;
        let forged = craft_segment(
            &d[0].group,
            &d[1].keys,
            first,
            &head,
            head_change,
            ends,
            bundle,
        );
        let before = d[0].group.read();
        let r = d[0].group.ingest(vec![forged]);
        assert_eq!(r.forks, 1);
        assert!(r.superseded.is_empty());
        assert_eq!(d[0].group.read(), before);
        assert_eq!(restarted(&d[0]).read(), before);
    }

    #[test]
    fn a_segment_claiming_to_continue_a_log_never_bypasses_the_pending_bounds() {
        let mut d = setup(1);
        let author = d[0].id();
        let head = d[1].group.head(&author).map_or(0, |h| h.seq);
        let (epoch, key) = d[1].group.current_epoch();
        let key = key.unwrap().clone();
        let forged = Envelope::seal_segment(
            &d[1].keys,
            Header {
                version: 0,
                group_id: d[1].group.id(),
                epoch,
                author,
                seq: head + 5,
                prev: [7; 32],
                change_head: ZERO_HASH,
            },
            crate::envelope::Span {
                first: 1,
                last_hash: [7; 32],
            },
            &Body::Segment {
                ends: vec![],
                bundle: vec![0; 1000],
            },
            &key,
            &mut OsRng,
        );
        // A buffer all but full: only the next envelope of a log may still get in.
        d[1].group.pending_bytes = MAX_PENDING_BYTES - 10;
        let r = d[1].group.ingest(vec![forged]);
        assert_eq!(r.refused, 1);
        assert!(d[1].group.pending.is_empty());
    }

    /// A member writes while offline during an admission it has not heard of, and restates
    /// those writes (or not) before the newcomer gets them: the newcomer must end up with
    /// all of them, and with what the member writes afterwards.
    fn writes_during_an_admission_reach_the_newcomer(compact: bool) {
        let mut d = setup(1);
        let mut newcomer = admit(&mut d[0], Role::Member);
        write_many(&mut d[1], 120, "offline");
        if compact {
            let restated = d[1]
                .group
                .compact_own(MIN_SEGMENT_POSITIONS, false, &mut OsRng);
            assert!(!restated.is_empty());
        }
        let from_member = everything(&d[1]);
        d[0].group.ingest(from_member);
        d[0].group.reseal_due(&mut OsRng).unwrap();
        newcomer.group.ingest(everything(&d[0]));
        let from_facilitator = everything(&d[0]);
        d[1].group.ingest(from_facilitator);
        agree(&mut d[1], "after the admission");
        let from_member = everything(&d[1]);
        d[0].group.ingest(from_member);
        newcomer.group.ingest(everything(&d[0]));
        assert_eq!(texts(&d[0]).len(), 121);
        assert_eq!(texts(&newcomer), texts(&d[0]));
        // And after a restart, from its own store.
        assert_eq!(texts_of(&restarted_joiner(&newcomer, &d[0])), texts(&d[0]));
    }

    /// A joiner rebuilt from the keys it was handed and the snapshot of its admission.
    fn restarted_joiner(joiner: &Device, facilitator: &Device) -> Group {
        let grants: Vec<KeyGrant> = joiner.group.keys.values().flatten().cloned().collect();
        let base = joiner.group.base.as_ref().map(|b| b.to_vec());
        let mut group = Group::restore(
            *facilitator.group.info(),
            &joiner.keys,
            grants,
            base.as_deref(),
        )
        .unwrap();
        group.ingest_stored(everything(joiner));
        group
    }

    #[test]
    fn writes_during_an_admission_reach_the_newcomer_as_envelopes() {
        writes_during_an_admission_reach_the_newcomer(false);
    }

    #[test]
    fn writes_during_an_admission_reach_the_newcomer_as_a_resealed_segment() {
        writes_during_an_admission_reach_the_newcomer(true);
    }

    /// A segment and the envelope at its last position both wait in the buffer when they
    /// arrive early: either may be what continues the log. (When the buffer kept only the
    /// first to arrive, some delivery orders left the rest of the author's log waiting for
    /// good; these orders found it.)
    #[test]
    fn a_segment_and_the_envelope_at_its_last_position_wait_side_by_side() {
        let mut d = setup(1);
        agree(&mut d[0], "before");
        write_many(
            &mut d[0],
            (KEEP_RECENT + MIN_SEGMENT_POSITIONS) as usize,
            "w",
        );
        let mut log = everything(&d[0]);
        assert!(
            !d[0]
                .group
                .compact_own(MIN_SEGMENT_POSITIONS, true, &mut OsRng)
                .is_empty()
        );
        log.extend(everything(&d[0]));
        let observer = MemberKeys::generate(&mut OsRng);
        let grants = || {
            d[0].group
                .keys
                .values()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
        };
        for seed in 0..60 {
            let mut fresh = Group::restore(*d[0].group.info(), &observer, grants(), None).unwrap();
            let mut shuffled = log.clone();
            shuffle(&mut shuffled, seed);
            for chunk in shuffled.chunks(5) {
                fresh.ingest(chunk.to_vec());
            }
            assert_eq!(
                fresh.version_vector(),
                d[0].group.version_vector(),
                "order {seed}"
            );
            assert!(fresh.pending.is_empty(), "order {seed}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Any interleaving and duplication of the same envelopes gives the same state.
        #[test]
        fn any_delivery_order_converges(seed in any::<u64>(), dup in 0usize..3, compact in any::<bool>()) {
            let mut d = setup(2);
            for round in 0..2 {
                for (i, dev) in d.iter_mut().enumerate() {
                    agree(dev, &format!("r{round} by {i}"));
                }
            }
            let mut log: Vec<Envelope> = everything(&d[0])
                .into_iter()
                .chain(d.iter().skip(1).flat_map(everything))
                .collect();
            if compact {
                // The author's segment arrives beside the envelopes it restates.
                write_many(&mut d[0], (KEEP_RECENT + MIN_SEGMENT_POSITIONS) as usize, "bulk");
                log.extend(everything(&d[0]));
                prop_assert!(!d[0].group.compact_own(MIN_SEGMENT_POSITIONS, true, &mut OsRng).is_empty());
                log.extend(everything(&d[0]));
            }
            let observer = MemberKeys::generate(&mut OsRng);
            let grants = || {
                d[0].group.keys.values().flatten().cloned().collect::<Vec<_>>()
            };
            let mut fresh = Group::restore(*d[0].group.info(), &observer, grants(), None).unwrap();
            let mut shuffled: Vec<Envelope> = log.iter().cycle().take(log.len() * (dup + 1)).cloned().collect();
            shuffle(&mut shuffled, seed);
            for chunk in shuffled.chunks(5) {
                fresh.ingest(chunk.to_vec());
            }
            let mut reference = Group::restore(*d[0].group.info(), &observer, grants(), None).unwrap();
            reference.ingest(log.clone());
            prop_assert_eq!(fresh.read(), reference.read());
            prop_assert_eq!(fresh.version_vector(), reference.version_vector());
            let bulk = if compact { (KEEP_RECENT + MIN_SEGMENT_POSITIONS) as usize } else { 0 };
            prop_assert_eq!(fresh.read().agreements.len(), 6 + bulk);
            prop_assert!(fresh.pending.is_empty());
            prop_assert_eq!(fresh.pending_bytes, 0);
            prop_assert!(fresh.pending_per_author.is_empty());
        }

        /// Membership operations made concurrently on different replicas, then delivered
        /// in any order with duplicates, resolve to the same roster and document on every
        /// replica.
        #[test]
        fn concurrent_membership_ops_converge(
            ops in proptest::collection::vec((0usize..4, 0usize..6, 0usize..4), 1..8),
            seed in any::<u64>(),
        ) {
            // Two facilitators (A, F) and two members, then a burst of concurrent ops.
            let mut d = setup(0);
            let f = admit(&mut d[0], Role::Facilitator);
            d.push(f);
            for _ in 0..2 {
                let m = admit(&mut d[0], Role::Member);
                d.push(m);
            }
            sync_all(&mut d);
            let ids: Vec<MemberId> = d.iter().map(Device::id).collect();
            for (actor, kind, target) in ops {
                let dev = &mut d[actor];
                let target = ids[target];
                // Errors (not a facilitator, not a member any more, ...) are fine: the op
                // is simply not written on that replica.
                let _ = match kind {
                    0 => dev.group.remove_member(target, &mut OsRng).map(|_| ()),
                    1 => dev.group.set_role(target, Role::Facilitator, &mut OsRng).map(|_| ()),
                    2 => dev.group.set_role(target, Role::Member, &mut OsRng).map(|_| ()),
                    3 => dev.group.rotate(&mut OsRng).map(|_| ()),
                    4 => dev.group.leave(&mut OsRng).map(|_| ()),
                    _ => dev.group.add_agreement("concurrent", 0, &mut OsRng).map(|_| ()),
                };
            }
            let all: Vec<Envelope> = d.iter().flat_map(everything).collect();
            for (i, dev) in d.iter_mut().enumerate() {
                let mut mine: Vec<Envelope> = all.iter().chain(all.iter()).cloned().collect();
                shuffle(&mut mine, seed.wrapping_add(i as u64));
                for chunk in mine.chunks(3) {
                    dev.group.ingest(chunk.to_vec());
                }
            }
            // Keys owed to members admitted concurrently with a rotation are forwarded.
            for _ in 0..3 {
                for dev in d.iter_mut() {
                    let _ = dev.group.forward_keys(&mut OsRng);
                }
                sync_all(&mut d);
            }
            // Every device still in the group (in its own view) sees the same roster; a
            // removed device cannot read what followed its removal, so its view stops there.
            let current: Vec<&Device> = d
                .iter()
                .filter(|x| x.group.roster().is_member(&x.id()))
                .collect();
            // Every device may have left or been removed (all four leaving at once, say):
            // then no view is left to compare.
            prop_assume!(!current.is_empty());
            for dev in &current {
                prop_assert_eq!(dev.group.roster(), current[0].group.roster());
            }
            // Devices that can read the same content show the same document.
            for pair in current.windows(2) {
                if pair[0].group.readable_epochs() == pair[1].group.readable_epochs() {
                    prop_assert_eq!(pair[0].group.read(), pair[1].group.read());
                }
            }
        }
    }

    fn shuffle<T>(items: &mut [T], seed: u64) {
        let mut s = seed;
        for i in (1..items.len()).rev() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            items.swap(i, (s >> 33) as usize % (i + 1));
        }
    }
}

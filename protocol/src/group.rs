//! One group's replicated state, and the rules for accepting envelopes into it.
//!
//! A [`Group`] holds the root of trust ([`GroupInfo`]), the epoch keys this device has,
//! the head of every member's log (the version vector), the membership derived from the
//! logs and the automerge document. [`Group::ingest`] is the only way anything from a
//! peer, or from this device's own store, changes that state.

use std::collections::BTreeMap;

use rand_core::CryptoRngCore;

use crate::api::Role;
use crate::crypto::{SecretKey, XNONCE_LEN};
use crate::doc::{self, AgreementRecord, DocError, GroupDoc, GroupDocument};
use crate::envelope::{Body, Envelope, Hash, Header, ZERO_HASH};
use crate::identity::{DeviceKeys, PublicIdentity};
use crate::ids::{GroupId, MemberId};
use crate::membership::{GroupInfo, Membership};

/// Most envelopes held back (waiting for an earlier envelope or for their author's add).
pub const MAX_PENDING: usize = 50_000;
/// Most bytes held back in all.
pub const MAX_PENDING_BYTES: usize = 64 << 20;
/// Most envelopes held back for one author.
pub const MAX_PENDING_PER_AUTHOR: usize = 10_000;
/// Most envelopes held back for an author not (yet) known to be a member.
pub const MAX_PENDING_PER_UNKNOWN_AUTHOR: usize = 1_000;
/// Highest sequence number accepted (keeps index arithmetic far from overflow).
pub const MAX_SEQ: u64 = 1 << 48;

/// The newest envelope of one author that this device has accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHead {
    pub seq: u64,
    pub hash: Hash,
    pub change_head: Hash,
    /// Sequence number of the author's newest automerge change (0 if none).
    pub change_seq: u64,
}

/// author -> (highest sequence number, hash of that envelope).
pub type VersionVector = BTreeMap<MemberId, (u64, Hash)>;

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
    #[error("no key for epoch {0}")]
    NoEpochKey(u32),
    #[error("the group's root of trust does not check out (group id does not match its creator)")]
    NotAuthentic,
    #[error(transparent)]
    Doc(#[from] doc::DocError),
    #[error("this device's own envelope was not accepted: {0}")]
    OwnEnvelope(String),
}

/// An envelope this device wrote, with every envelope its writing let in (its own, and
/// any that were waiting for it): the caller stores all of `accepted`.
#[derive(Debug)]
pub struct Written {
    pub own: Envelope,
    pub accepted: Vec<Envelope>,
}

/// What [`Group::ingest`] did with a batch.
#[derive(Debug, Default)]
pub struct Ingested {
    /// Newly accepted envelopes, each author's in sequence order: store and forward these.
    pub accepted: Vec<Envelope>,
    /// Envelopes dropped: wrong group, bad signature, broken hash chain, or over the cap.
    pub rejected: usize,
    /// Accepted envelopes whose content had no effect (undecryptable body, changes that
    /// are not the author's own next ones, a body that contradicts its signed header).
    pub ineffective: usize,
    /// Authors newly caught forking their log.
    pub forks: usize,
    /// Out-of-order envelopes not buffered because the buffer was full: the sender should
    /// be asked again later.
    pub refused: usize,
}

pub struct Group {
    info: GroupInfo,
    membership: Membership,
    epoch_keys: BTreeMap<u32, SecretKey>,
    heads: BTreeMap<MemberId, LogHead>,
    doc: GroupDocument,
    /// Every accepted envelope, per author in sequence order (what peers may lack).
    logs: BTreeMap<MemberId, Vec<Envelope>>,
    pending: BTreeMap<(MemberId, u64), Envelope>,
    pending_bytes: usize,
    /// How many envelopes of each author wait in `pending`.
    pending_per_author: BTreeMap<MemberId, usize>,
    /// Authors whose logs are frozen on this device, with the first seq whose content is
    /// excluded: caught signing two different envelopes for one place in their log (a
    /// fork), or sending changes that crash automerge.
    frozen: BTreeMap<MemberId, u64>,
    /// Accepted envelopes whose content had no effect (skipped when rebuilding).
    ineffective: std::collections::BTreeSet<Hash>,
    /// The snapshot this device joined with, if any: the base to rebuild the document on.
    base: Option<zeroize::Zeroizing<Vec<u8>>>,
    me: MemberId,
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
    /// Creates a new group with this device as creator and facilitator. Returns the group
    /// and its first envelope (the document's initial state), which the caller must store.
    pub fn create(
        me: &DeviceKeys,
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
        let mut group = Group::restore(info, [(0, epoch_key.clone())], None, me.member_id())?;
        let written = group
            .edit(me, rng, |d| {
                d.name = name.to_owned();
                d.purpose = purpose.to_owned();
            })?
            .ok_or_else(|| GroupError::OwnEnvelope("initial state made no change".into()))?;
        Ok((group, epoch_key, written.own))
    }

    /// Rebuilds a group from what the store holds: its root, its epoch keys and, for a
    /// member who joined, the snapshot it joined with. Feed the stored envelopes to
    /// [`Group::ingest`] afterwards.
    pub fn restore(
        info: GroupInfo,
        epoch_keys: impl IntoIterator<Item = (u32, SecretKey)>,
        snapshot: Option<&[u8]>,
        me: MemberId,
    ) -> Result<Group, GroupError> {
        if !info.is_authentic() {
            return Err(GroupError::NotAuthentic);
        }
        let doc = match snapshot {
            Some(bytes) => GroupDocument::load(bytes, me.actor_id())?,
            None => GroupDocument::new(me.actor_id()),
        };
        Ok(Group {
            membership: Membership::new(&info),
            info,
            epoch_keys: epoch_keys.into_iter().collect(),
            heads: BTreeMap::new(),
            doc,
            logs: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_bytes: 0,
            pending_per_author: BTreeMap::new(),
            frozen: BTreeMap::new(),
            ineffective: Default::default(),
            base: snapshot.map(|b| zeroize::Zeroizing::new(b.to_vec())),
            me,
        })
    }

    pub fn id(&self) -> GroupId {
        self.info.group_id
    }

    pub fn info(&self) -> &GroupInfo {
        &self.info
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The newest epoch this device holds a key for.
    pub fn current_epoch(&self) -> u32 {
        self.epoch_keys.keys().next_back().copied().unwrap_or(0)
    }

    pub fn epoch_key(&self, epoch: u32) -> Option<&SecretKey> {
        self.epoch_keys.get(&epoch)
    }

    pub fn read(&self) -> Result<GroupDoc, GroupError> {
        Ok(self.doc.read()?)
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
            let their_seq = theirs.get(author).map_or(0, |(s, _)| *s);
            let from = usize::try_from(their_seq).unwrap_or(usize::MAX);
            for env in log.iter().skip(from) {
                if out.len() >= max_count || bytes + env.as_bytes().len() > max_bytes {
                    return out;
                }
                bytes += env.as_bytes().len();
                out.push(env.clone());
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
            let Some(log) = self.logs.get(author) else {
                continue;
            };
            let Some(ours) = usize::try_from(*seq)
                .ok()
                .and_then(|s| log.get(s.checked_sub(1)?))
            else {
                continue;
            };
            if ours.hash() != *hash {
                *seq -= 1;
                *hash = if *seq == 0 {
                    ZERO_HASH
                } else {
                    log[*seq as usize - 1].hash()
                };
            }
        }
        theirs
    }

    /// Authors this device has caught forking their log.
    pub fn forked_authors(&self) -> impl Iterator<Item = &MemberId> {
        self.frozen.keys()
    }

    /// Adds an agreement written by this device. Returns its id and the envelope to store.
    pub fn add_agreement(
        &mut self,
        me: &DeviceKeys,
        text: &str,
        now_unix: i64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(String, Written), GroupError> {
        check_text("the agreement", text, doc::MAX_AGREEMENT_LEN, false)?;
        let mut raw = [0u8; 8];
        rng.fill_bytes(&mut raw);
        let id = hex::encode(raw);
        let record = AgreementRecord {
            text: text.to_owned(),
            author: me.member_id().to_hex(),
            created_at: now_unix,
        };
        if !self.membership.is_member(&me.member_id()) {
            return Err(GroupError::NotMember);
        }
        let changes = self.doc.insert_agreement(&id, &record)?;
        let env = self
            .seal_changes(me, changes, rng)?
            .ok_or_else(|| GroupError::OwnEnvelope("agreement made no change".into()))?;
        Ok((id, env))
    }

    /// A facilitator on this device adds a member. Returns the envelope to store.
    pub fn add_member(
        &mut self,
        me: &DeviceKeys,
        member: PublicIdentity,
        role: Role,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Written, GroupError> {
        match self.membership.get(&me.member_id()) {
            Some(m) if m.role == Role::Facilitator => {}
            Some(_) => return Err(GroupError::NotFacilitator),
            None => return Err(GroupError::NotMember),
        }
        self.append_own(me, Body::Add { member, role }, rng)
    }

    fn edit(
        &mut self,
        me: &DeviceKeys,
        rng: &mut impl CryptoRngCore,
        edit: impl FnOnce(&mut GroupDoc),
    ) -> Result<Option<Written>, GroupError> {
        if !self.membership.is_member(&me.member_id()) {
            return Err(GroupError::NotMember);
        }
        let changes = self.doc.edit(edit)?;
        self.seal_changes(me, changes, rng)
    }

    /// Seals this device's new automerge changes as its next envelope (none if empty).
    fn seal_changes(
        &mut self,
        me: &DeviceKeys,
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
        self.append_own(me, Body::Changes { changes }, rng)
            .map(Some)
    }

    /// Seals `body` as this device's next envelope and runs it through [`Group::ingest`],
    /// the same path every peer's envelope takes.
    fn append_own(
        &mut self,
        me: &DeviceKeys,
        body: Body,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Written, GroupError> {
        let author = me.member_id();
        let epoch = self.current_epoch();
        let key = self
            .epoch_keys
            .get(&epoch)
            .ok_or(GroupError::NoEpochKey(epoch))?
            .clone();
        let prior = self.heads.get(&author).copied();
        let change_head = match &body {
            Body::Changes { changes } => changes
                .last()
                .and_then(|c| automerge::Change::from_bytes(c.clone()).ok())
                .map(|c| c.hash().0)
                .unwrap_or(ZERO_HASH),
            Body::Add { .. } => prior.map_or(ZERO_HASH, |h| h.change_head),
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
        let env = Envelope::seal(me, header, &body, &key, rng);
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
    /// in the log, or an author not yet known to be a member) wait in a bounded buffer.
    /// Automerge changes from the whole batch are applied in one call.
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

        let mut changes: Vec<EnvelopeChanges> = Vec::new();
        loop {
            let mut progress = false;
            let authors: Vec<MemberId> = {
                let mut a: Vec<MemberId> = self.pending.keys().map(|(a, _)| *a).collect();
                a.dedup();
                a
            };
            for author in authors {
                if self.frozen.contains_key(&author) {
                    continue;
                }
                let Some(identity) = self.membership.get(&author).map(|m| m.identity) else {
                    continue;
                };
                let run = self.take_verified_run(author, &identity, &mut out);
                for env in run {
                    self.apply_accepted(&env, &mut changes, &mut out);
                    self.logs.entry(author).or_default().push(env.clone());
                    out.accepted.push(env);
                    progress = true;
                }
            }
            if !progress {
                break;
            }
        }
        self.apply_changes(changes, &mut out);
        out
    }

    /// Puts one envelope in the pending buffer, unless it is foreign, already held, proof
    /// of a fork, from a frozen author, or over the buffer's bounds. The bounds never apply
    /// to an envelope that continues a member's log (it leaves the buffer at once), so a
    /// buffer filled by a hostile member delays only out-of-order envelopes.
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
        let key = (h.author, h.seq);
        if self.pending.contains_key(&key) {
            // Never let a later arrival displace a buffered envelope: a forger could
            // otherwise evict the genuine one.
            return;
        }
        let is_member = self.membership.is_member(&h.author);
        let author_count = self.pending_per_author.get(&h.author).copied().unwrap_or(0);
        let in_order = is_member && h.seq == known + 1;
        let over = self.pending_bytes + env.as_bytes().len() > MAX_PENDING_BYTES
            || self.pending.len() >= MAX_PENDING
            || author_count >= MAX_PENDING_PER_AUTHOR
            || (!is_member && author_count >= MAX_PENDING_PER_UNKNOWN_AUTHOR);
        if capped && over && !in_order {
            out.refused += 1;
            return;
        }
        self.pending_bytes += env.as_bytes().len();
        *self.pending_per_author.entry(h.author).or_default() += 1;
        self.pending.insert(key, env);
    }

    /// An envelope at or below the author's head must be the one we hold; a validly
    /// signed different one proves the author forked its log.
    fn check_for_fork(&mut self, env: &Envelope, out: &mut Ingested) {
        let h = env.header();
        let Some(held) = self
            .logs
            .get(&h.author)
            .and_then(|log| log.get(usize::try_from(h.seq - 1).ok()?))
        else {
            return;
        };
        if held.hash() == env.hash() {
            return;
        }
        let signed = self
            .membership
            .get(&h.author)
            .is_some_and(|m| env.verify(&m.identity).is_ok());
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
        let keys: Vec<(MemberId, u64)> = self
            .pending
            .range((author, 0)..=(author, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            self.take_pending(&key);
        }
    }

    fn take_pending(&mut self, key: &(MemberId, u64)) -> Option<Envelope> {
        let env = self.pending.remove(key)?;
        self.pending_bytes -= env.as_bytes().len();
        let author = env.header().author;
        if let Some(n) = self.pending_per_author.get_mut(&author) {
            *n -= 1;
            if *n == 0 {
                self.pending_per_author.remove(&author);
            }
        }
        Some(env)
    }

    /// Removes from `pending` the longest run of `author`'s envelopes that continues its
    /// log and is covered by a valid signature; drops any that break the chain or are
    /// not covered.
    fn take_verified_run(
        &mut self,
        author: MemberId,
        identity: &PublicIdentity,
        out: &mut Ingested,
    ) -> Vec<Envelope> {
        let head = self.heads.get(&author).copied();
        // Drop stale entries left behind by an earlier batch.
        let stale: Vec<(MemberId, u64)> = self
            .pending
            .range((author, 0)..=(author, head.map_or(0, |h| h.seq)))
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            self.take_pending(&key);
        }
        let mut seq = head.map_or(1, |h| h.seq + 1);
        let mut prev = head.map_or(ZERO_HASH, |h| h.hash);
        let mut run = Vec::new();
        while let Some(env) = self.pending.get(&(author, seq)) {
            if env.header().prev != prev {
                // A fork or a forgery: the author's log cannot continue through it.
                self.take_pending(&(author, seq));
                out.rejected += 1;
                break;
            }
            prev = env.hash();
            run.push(seq);
            seq += 1;
        }
        let mut envs: Vec<Envelope> = run
            .iter()
            .filter_map(|s| self.take_pending(&(author, *s)))
            .collect();
        // Fast path: one signature over the newest envelope covers the run by hash chain.
        if envs.last().is_some_and(|e| e.verify(identity).is_err()) {
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

    /// Advances the author's head and applies the envelope's body if it is well formed.
    fn apply_accepted(
        &mut self,
        env: &Envelope,
        changes: &mut Vec<EnvelopeChanges>,
        out: &mut Ingested,
    ) {
        let h = *env.header();
        let prior = self.heads.get(&h.author).copied();
        let prior_change_head = prior.map_or(ZERO_HASH, |x| x.change_head);
        let prior_change_seq = prior.map_or(0, |x| x.change_seq);
        // Whatever the body holds, the log moves on: every device agrees on the log.
        // A body with no effect leaves the author's automerge position where it was.
        let mut head = LogHead {
            seq: h.seq,
            hash: env.hash(),
            change_head: prior_change_head,
            change_seq: prior_change_seq,
        };
        let effective = match self.epoch_keys.get(&h.epoch).map(|k| env.open(k)) {
            Some(Ok(Body::Add { member, role })) if h.change_head == prior_change_head => {
                self.membership.record_add(h.author, member, role);
                true
            }
            Some(Ok(Body::Changes { changes: raw })) => {
                match checked_changes(raw, &h, prior_change_seq) {
                    Some(cs) => {
                        head.change_head = h.change_head;
                        head.change_seq = prior_change_seq + cs.len() as u64;
                        changes.push(EnvelopeChanges {
                            author: h.author,
                            seq: h.seq,
                            hash: head.hash,
                            changes: cs,
                        });
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        };
        if !effective {
            self.ineffective.insert(head.hash);
            out.ineffective += 1;
        }
        self.heads.insert(h.author, head);
    }

    /// Applies the accepted envelopes' changes in one automerge call; if automerge refuses
    /// the batch, applies envelope by envelope so one bad envelope cannot sink the rest.
    /// If automerge panics, the document is rebuilt without the envelope that made it.
    fn apply_changes(&mut self, changes: Vec<EnvelopeChanges>, out: &mut Ingested) {
        if changes.is_empty() {
            return;
        }
        let all: Vec<automerge::Change> = changes
            .iter()
            .flat_map(|e| e.changes.iter().cloned())
            .collect();
        match self.doc.apply(all) {
            Ok(()) => return,
            Err(DocError::Panicked) => return self.rebuild(out),
            Err(_) => {}
        }
        for e in changes {
            match self.doc.apply(e.changes) {
                Ok(()) => {}
                Err(DocError::Panicked) => {
                    self.freeze(e.author, e.seq, e.hash, out);
                    return self.rebuild(out);
                }
                Err(_) => {
                    self.ineffective.insert(e.hash);
                    out.ineffective += 1;
                }
            }
        }
    }

    /// Excludes an author's content from `seq` on: it sent something that crashed automerge.
    fn freeze(&mut self, author: MemberId, seq: u64, hash: Hash, out: &mut Ingested) {
        let at = self.frozen.entry(author).or_insert(seq);
        *at = (*at).min(seq);
        self.drop_pending_of(author);
        self.ineffective.insert(hash);
        out.ineffective += 1;
    }

    /// Rebuilds the document from its base and every effective envelope, one envelope at a
    /// time, freezing the author of any envelope that makes automerge panic and starting
    /// again without it. Slow, but only a hostile member's input brings it about, and each
    /// pass freezes one more author, so it ends.
    fn rebuild(&mut self, out: &mut Ingested) {
        'again: loop {
            let fresh = self
                .base
                .as_ref()
                .and_then(|b| GroupDocument::load(b, self.me.actor_id()).ok());
            let mut doc = fresh.unwrap_or_else(|| GroupDocument::new(self.me.actor_id()));
            let mut work = Vec::new();
            for (author, log) in &self.logs {
                let stop = self.frozen.get(author).copied().unwrap_or(u64::MAX);
                for env in log.iter().take_while(|e| e.header().seq < stop) {
                    if !self.ineffective.contains(&env.hash()) {
                        work.push(env.clone());
                    }
                }
            }
            for env in work {
                let h = *env.header();
                let Some(Ok(Body::Changes { changes })) =
                    self.epoch_keys.get(&h.epoch).map(|k| env.open(k))
                else {
                    continue;
                };
                let parsed: Vec<automerge::Change> = changes
                    .into_iter()
                    .filter_map(|b| automerge::Change::from_bytes(b).ok())
                    .collect();
                if let Err(DocError::Panicked) = doc.apply(parsed) {
                    self.freeze(h.author, h.seq, env.hash(), out);
                    continue 'again;
                }
            }
            self.doc = doc;
            return;
        }
    }
}

/// The automerge changes of one accepted envelope.
struct EnvelopeChanges {
    author: MemberId,
    seq: u64,
    hash: Hash,
    changes: Vec<automerge::Change>,
}

/// Parses an envelope's automerge changes and checks they are the author's own next ones:
/// its actor id, sequence numbers continuing the author's last, and the signed head last.
fn checked_changes(
    raw: Vec<Vec<u8>>,
    header: &Header,
    prior_change_seq: u64,
) -> Option<Vec<automerge::Change>> {
    let actor = header.author.actor_id();
    let changes: Vec<automerge::Change> = raw
        .into_iter()
        .map(crate::doc::parse_canonical_change)
        .collect::<Option<_>>()?;
    let contiguous = changes
        .iter()
        .zip(prior_change_seq + 1..)
        .all(|(c, seq)| c.actor_id() == &actor && c.seq() == seq);
    let signed_head = changes.last()?.hash().0 == header.change_head;
    (contiguous && signed_head).then_some(changes)
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
        keys: DeviceKeys,
        group: Group,
    }

    /// A creator plus `n` members who joined from a snapshot, each with all envelopes.
    fn setup(n: usize) -> (Vec<Device>, Vec<Envelope>) {
        let a = DeviceKeys::generate(&mut OsRng);
        let (mut ga, key, first) = Group::create(&a, "Circle", "Support", &mut OsRng).unwrap();
        let mut log = vec![first];
        let mut others = Vec::new();
        for _ in 0..n {
            let k = DeviceKeys::generate(&mut OsRng);
            log.push(
                ga.add_member(&a, k.public(), Role::Member, &mut OsRng)
                    .unwrap()
                    .own,
            );
            others.push(k);
        }
        let snap = ga.snapshot();
        let mut devices = vec![Device { keys: a, group: ga }];
        for k in others {
            let mut g = Group::restore(
                *devices[0].group.info(),
                [(0, key.clone())],
                Some(&snap),
                k.member_id(),
            )
            .unwrap();
            let r = g.ingest(log.clone());
            assert_eq!(r.accepted.len(), log.len());
            devices.push(Device { keys: k, group: g });
        }
        (devices, log)
    }

    #[test]
    fn members_write_and_converge() {
        let (mut d, mut log) = setup(2);
        for (i, dev) in d.iter_mut().enumerate() {
            let env = dev
                .group
                .add_agreement(&dev.keys, &format!("agreement {i}"), 0, &mut OsRng)
                .unwrap()
                .1
                .own;
            log.push(env);
        }
        for dev in &mut d {
            dev.group.ingest(log.clone());
        }
        let views: Vec<GroupDoc> = d.iter().map(|x| x.group.read().unwrap()).collect();
        assert_eq!(views[0].agreements.len(), 3);
        assert!(views.iter().all(|v| v == &views[0]));
        assert_eq!(d[1].group.version_vector(), d[2].group.version_vector());
    }

    #[test]
    fn stranger_envelopes_are_not_applied() {
        let (mut d, _) = setup(1);
        // A stranger with the epoch key (say, a leaked key) but no membership.
        let stranger = DeviceKeys::generate(&mut OsRng);
        let key = d[0].group.epoch_key(0).unwrap().clone();
        let header = Header {
            version: 0,
            group_id: d[0].group.id(),
            epoch: 0,
            author: stranger.member_id(),
            seq: 1,
            prev: ZERO_HASH,
            change_head: ZERO_HASH,
        };
        let env = Envelope::seal(
            &stranger,
            header,
            &Body::Add {
                member: stranger.public(),
                role: Role::Facilitator,
            },
            &key,
            &mut OsRng,
        );
        let r = d[1].group.ingest(vec![env]);
        assert!(r.accepted.is_empty());
        assert!(!d[1].group.membership().is_member(&stranger.member_id()));
    }

    #[test]
    fn tampered_envelope_is_rejected_and_not_applied() {
        let (mut d, _) = setup(1);
        let (a, rest) = d.split_at_mut(1);
        let env = a[0]
            .group
            .add_agreement(&a[0].keys, "no phones", 0, &mut OsRng)
            .unwrap()
            .1
            .own;
        let mut bytes = env.as_bytes().to_vec();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        let forged = Envelope::decode(bytes).unwrap();
        let r = rest[0].group.ingest(vec![forged]);
        assert_eq!(r.rejected, 1);
        assert!(r.accepted.is_empty());
        assert!(rest[0].group.read().unwrap().agreements.is_empty());
        // The genuine envelope still goes through afterwards.
        assert_eq!(rest[0].group.ingest(vec![env]).accepted.len(), 1);
    }

    #[test]
    fn member_cannot_pass_off_changes_as_anothers() {
        let (mut d, _) = setup(1);
        // b edits with a's actor id: the envelope verifies (b signed it) but its changes
        // are attributed to a, so they must not apply.
        let a_id = d[0].keys.member_id();
        let mut forged_doc = GroupDocument::load(&d[1].group.snapshot(), a_id.actor_id()).unwrap();
        let changes = forged_doc
            .edit(|g| g.purpose = "hijacked".into())
            .unwrap()
            .into_iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect();
        let b = &d[1];
        let env = {
            let key = b.group.epoch_key(0).unwrap().clone();
            let header = Header {
                version: 0,
                group_id: b.group.id(),
                epoch: 0,
                author: b.keys.member_id(),
                seq: 1,
                prev: ZERO_HASH,
                change_head: ZERO_HASH,
            };
            Envelope::seal(
                &b.keys,
                header,
                &Body::Changes { changes },
                &key,
                &mut OsRng,
            )
        };
        let r = d[0].group.ingest(vec![env]);
        assert_eq!(r.ineffective, 1);
        assert_eq!(d[0].group.read().unwrap().purpose, "Support");
    }

    /// Seals `body` as `keys`' envelope at `seq` after `prev`, with `change_head`.
    fn craft(
        g: &Group,
        keys: &DeviceKeys,
        seq: u64,
        prev: Hash,
        change_head: Hash,
        body: &Body,
    ) -> Envelope {
        let header = Header {
            version: 0,
            group_id: g.id(),
            epoch: 0,
            author: keys.member_id(),
            seq,
            prev,
            change_head,
        };
        Envelope::seal(keys, header, body, g.epoch_key(0).unwrap(), &mut OsRng)
    }

    #[test]
    fn a_members_duplicate_changes_cannot_sink_others_in_the_same_batch() {
        let (d, log) = setup(1);
        let b = &d[1];
        // Two different automerge changes with b's actor and the same seq.
        let snap = GroupDocument::load(&d[0].group.snapshot_clone(), b.keys.member_id().actor_id());
        let mut one = snap.unwrap();
        let mut two =
            GroupDocument::load(&d[0].group.snapshot_clone(), b.keys.member_id().actor_id())
                .unwrap();
        let c1 = one.edit(|g| g.purpose = "one".into()).unwrap();
        let c2 = two.edit(|g| g.purpose = "two".into()).unwrap();
        let raw: Vec<Vec<u8>> = c1
            .iter()
            .chain(c2.iter())
            .map(|c| c.raw_bytes().to_vec())
            .collect();
        let head = c2[0].hash().0;
        let hostile = craft(
            &b.group,
            &b.keys,
            1,
            ZERO_HASH,
            head,
            &Body::Changes { changes: raw },
        );
        // An honest agreement from a, delivered in the same batch.
        let mut a = d.into_iter().next().unwrap();
        let honest = a
            .group
            .add_agreement(&a.keys, "honest", 0, &mut OsRng)
            .unwrap()
            .1
            .own;
        let mut fresh = Group::restore(
            *a.group.info(),
            [(0, a.group.epoch_key(0).unwrap().clone())],
            None,
            DeviceKeys::generate(&mut OsRng).member_id(),
        )
        .unwrap();
        let mut batch = log.clone();
        batch.push(hostile);
        batch.push(honest);
        let r = fresh.ingest(batch);
        assert_eq!(r.ineffective, 1);
        let view = fresh.read().unwrap();
        assert_eq!(view.name, "Circle");
        assert_eq!(view.purpose, "Support");
        assert_eq!(view.agreements.len(), 1);
    }

    #[test]
    fn a_write_returns_every_envelope_it_let_in() {
        let (mut d, _) = setup(0);
        let a = &mut d[0];
        let j = DeviceKeys::generate(&mut OsRng);
        // J's first envelope arrives before J's add: it waits.
        let early = craft(
            &a.group,
            &j,
            1,
            ZERO_HASH,
            ZERO_HASH,
            &Body::Changes { changes: vec![] },
        );
        assert!(a.group.ingest(vec![early.clone()]).accepted.is_empty());
        // The add lets it in: both must be reported, or the daemon would store only one.
        let written = a
            .group
            .add_member(&a.keys, j.public(), Role::Member, &mut OsRng)
            .unwrap();
        assert_eq!(written.accepted.len(), 2);
        assert!(written.accepted.contains(&written.own));
        assert!(written.accepted.contains(&early));
    }

    #[test]
    fn a_signed_fork_is_detected_and_stops_the_authors_log() {
        let (mut d, _) = setup(1);
        let (a, rest) = d.split_at_mut(1);
        let b = &rest[0];
        let prev = b
            .group
            .head(&b.keys.member_id())
            .map_or(ZERO_HASH, |h| h.hash);
        let x = craft(
            &b.group,
            &b.keys,
            1,
            prev,
            ZERO_HASH,
            &Body::Add {
                member: b.keys.public(),
                role: Role::Member,
            },
        );
        let y = craft(
            &b.group,
            &b.keys,
            1,
            prev,
            ZERO_HASH,
            &Body::Add {
                member: DeviceKeys::generate(&mut OsRng).public(),
                role: Role::Member,
            },
        );
        assert_eq!(a[0].group.ingest(vec![x]).accepted.len(), 1);
        let r = a[0].group.ingest(vec![y]);
        assert_eq!(r.forks, 1);
        assert_eq!(a[0].group.forked_authors().count(), 1);
    }

    #[test]
    fn a_forged_envelope_cannot_evict_a_buffered_genuine_one() {
        let (mut d, _) = setup(1);
        let (a, rest) = d.split_at_mut(1);
        let b = &mut rest[0];
        let e1 = b
            .group
            .add_agreement(&b.keys, "first", 0, &mut OsRng)
            .unwrap()
            .1
            .own;
        let e2 = b
            .group
            .add_agreement(&b.keys, "second", 0, &mut OsRng)
            .unwrap()
            .1
            .own;
        // The genuine seq 2 waits for seq 1; a forgery for seq 2 then arrives.
        a[0].group.ingest(vec![e2.clone()]);
        let forger = DeviceKeys::generate(&mut OsRng);
        let mut forged = craft(
            &b.group,
            &forger,
            2,
            e1.hash(),
            ZERO_HASH,
            &Body::Changes { changes: vec![] },
        );
        forged = Envelope::decode({
            let mut bytes = forged.into_bytes();
            bytes[21..37].copy_from_slice(b.keys.member_id().as_bytes());
            bytes
        })
        .unwrap();
        a[0].group.ingest(vec![forged]);
        let r = a[0].group.ingest(vec![e1]);
        assert_eq!(r.accepted.len(), 2);
        let texts: Vec<String> = a[0]
            .group
            .read()
            .unwrap()
            .agreements
            .values()
            .map(|x| x.text.clone())
            .collect();
        assert_eq!(texts.len(), 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Any interleaving and duplication of the same envelopes gives the same state.
        #[test]
        fn any_delivery_order_converges(seed in any::<u64>(), dup in 0usize..3) {
            let (mut d, mut log) = setup(2);
            for round in 0..2 {
                for (i, dev) in d.iter_mut().enumerate() {
                    let env = dev.group
                        .add_agreement(&dev.keys, &format!("r{round} by {i}"), 0, &mut OsRng)
                        .unwrap().1.own;
                    log.push(env);
                }
            }
            let a = &d[0];
            let mut fresh = Group::restore(
                *a.group.info(),
                [(0, a.group.epoch_key(0).unwrap().clone())],
                None,
                DeviceKeys::generate(&mut OsRng).member_id(),
            ).unwrap();
            let mut shuffled: Vec<Envelope> = log.iter().cycle().take(log.len() * (dup + 1)).cloned().collect();
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            // Deliver in a few uneven batches.
            for chunk in shuffled.chunks(5) {
                fresh.ingest(chunk.to_vec());
            }
            let mut reference = Group::restore(
                *a.group.info(),
                [(0, a.group.epoch_key(0).unwrap().clone())],
                None,
                DeviceKeys::generate(&mut OsRng).member_id(),
            ).unwrap();
            reference.ingest(log.clone());
            prop_assert_eq!(fresh.read().unwrap(), reference.read().unwrap());
            prop_assert_eq!(fresh.version_vector(), reference.version_vector());
            prop_assert_eq!(fresh.read().unwrap().agreements.len(), 6);
            // Everything delivered was taken out of the buffer, and its accounting agrees.
            prop_assert!(fresh.pending.is_empty());
            prop_assert_eq!(fresh.pending_bytes, 0);
            prop_assert!(fresh.pending_per_author.is_empty());
        }
    }
}

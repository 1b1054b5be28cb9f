//! Who belongs to a group, derived only from signed, sealed membership operations.
//!
//! The root of trust is [`GroupInfo`]: the group id is a hash of the creator's signing key
//! and a nonce, so anyone holding the id can check who created the group. The creator is
//! the first facilitator. Every later change is a [`RosterOp`] in some member's log: it
//! names the membership operations its author had seen (`deps`), so the operations form a
//! causal graph, and [`Membership`] resolves that graph to one [`Roster`] the same way on
//! every device, whatever order the operations arrived in. docs/protocol.md states the
//! rules; in short:
//!
//! - operations are taken in a causal order, concurrent ones by seniority (the member
//!   admitted earlier first), then by member id and sequence number;
//! - adds, role changes and removals need a facilitator; leaving and rotating need a
//!   member; each is judged in the state the order has reached;
//! - a removal (or leaving) cuts the member's log at the point the remover had seen: the
//!   member's later acts, including ones concurrent with the removal, are void. A cut
//!   found late restarts the resolution with that cut known from the beginning, until no
//!   new cut appears;
//! - every add and removal carries a new epoch key (a rotation); a member who leaves is
//!   followed by a rotation from any remaining member.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::api::Role;
use crate::envelope::Hash;
use crate::identity::PublicIdentity;
use crate::ids::{GroupId, MemberId};
use crate::lockbox::Lockbox;

/// Most membership operations one operation may name as seen.
pub const MAX_DEPS: usize = 256;
/// How far beyond the newest epoch so far a rotation may number its epoch (numbers stay
/// far from overflow, so an epoch never has to share its number by saturation).
pub const MAX_EPOCH_STEP: u32 = 1024;
/// Most members a group may have (and so lockboxes one rotation may carry).
pub const MAX_MEMBERS: usize = 256;
/// Longest display name, in characters.
pub const MAX_NAME_LEN: usize = 64;

/// The self-certifying root of a group: its id, creator and the nonce that binds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    pub group_id: GroupId,
    pub creator: PublicIdentity,
    pub nonce: [u8; 16],
}

impl GroupInfo {
    /// Whether the group id really is derived from the creator's key and the nonce.
    pub fn is_authentic(&self) -> bool {
        GroupId::derive(&self.creator.signing, &self.nonce) == self.group_id
    }
}

/// A new epoch key, one lockbox per member who is to hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    pub epoch: u32,
    pub lockboxes: Vec<Lockbox>,
    /// [`key_check`] of the key: every recipient checks its lockbox opens to the same key,
    /// so an author cannot hand different members different keys.
    pub check: [u8; 32],
}

/// A commitment to an epoch key that reveals nothing of it:
/// `HKDF(key, "hearth v1 epoch key check" || group_id || epoch)`.
pub fn key_check(key: &crate::crypto::SecretKey, group: &GroupId, epoch: u32) -> [u8; 32] {
    *crate::crypto::derive_key(
        key.expose(),
        &[
            crate::crypto::labels::EPOCH_KEY_CHECK,
            group.as_bytes(),
            &epoch.to_be_bytes(),
        ],
    )
    .expose()
}

impl Rotation {
    pub fn recipients(&self) -> BTreeSet<MemberId> {
        self.lockboxes.iter().map(|b| b.recipient).collect()
    }
}

/// One membership act, sealed in an envelope of its author's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterOp {
    /// Envelope hashes of the membership operations that were the newest ones the author
    /// had seen (the heads of the graph in its view).
    pub deps: Vec<Hash>,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// A facilitator admits a member and starts an epoch that includes them.
    Add {
        member: PublicIdentity,
        role: Role,
        name: String,
        /// Seconds since the Unix epoch on the facilitator's clock: display only.
        at: i64,
        rotation: Rotation,
        /// The facilitator's log heads (author, seq) when it took the newcomer's snapshot:
        /// content after these, written under an earlier epoch, is not in the snapshot and
        /// is re-sealed for the newcomer.
        seen: Vec<(MemberId, u64)>,
    },
    /// A facilitator makes a member a facilitator, or a facilitator a member.
    SetRole { member: MemberId, role: Role },
    /// A facilitator removes a member, whose acts after its log's `upto` are void, and
    /// starts an epoch without them.
    Remove {
        member: MemberId,
        upto: u64,
        rotation: Rotation,
    },
    /// The author leaves; any remaining member then rotates.
    Leave,
    /// A member starts a new epoch for the members it sees.
    Rotate { rotation: Rotation },
    /// A member hands keys of a rotation (named by its envelope hash) to members who were
    /// admitted concurrently with it and so were not given them.
    Forward {
        rotation: Hash,
        lockboxes: Vec<Lockbox>,
    },
    /// The author's own display name.
    Rename { name: String },
}

impl Action {
    pub fn rotation(&self) -> Option<&Rotation> {
        match self {
            Action::Add { rotation, .. }
            | Action::Remove { rotation, .. }
            | Action::Rotate { rotation } => Some(rotation),
            _ => None,
        }
    }

    /// Every lockbox the action carries.
    pub fn lockboxes(&self) -> &[Lockbox] {
        match self {
            Action::Forward { lockboxes, .. } => lockboxes,
            other => other.rotation().map_or(&[], |r| &r.lockboxes),
        }
    }
}

/// A membership operation as recorded from an accepted envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpRecord {
    /// Hash of the envelope that carries it.
    pub hash: Hash,
    pub author: MemberId,
    /// Sequence number of that envelope in the author's log.
    pub seq: u64,
    pub op: RosterOp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub identity: PublicIdentity,
    pub role: Role,
    pub name: String,
    /// When the facilitator admitted them (display only; 0 for the creator).
    pub joined_at: i64,
    /// Seniority: 0 for the creator, then in order of admission.
    pub rank: u32,
    /// Envelope hash of the add that admitted them (none for the creator).
    pub added_by_op: Option<Hash>,
    pub added_by: Option<MemberId>,
}

/// Why someone is no longer a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    Removed { by: MemberId },
    Left,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departed {
    pub identity: PublicIdentity,
    pub name: String,
    pub how: Departure,
    /// Their acts (membership and content) from their log's `cut + 1` on are void.
    pub cut: u64,
}

/// An epoch started by an effective rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochRecord {
    /// Hash of the envelope that carries the rotation (none for the group's first epoch).
    pub op: Option<Hash>,
    pub epoch: u32,
    /// Who was given its key: the rotation's recipients and any forwarded to later.
    /// Shared: every resolution pass starts from the same sets and few of them change.
    pub holders: Arc<BTreeSet<MemberId>>,
}

/// A rotation's epoch and who holds its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedRotation {
    pub epoch: u32,
    pub holders: Arc<BTreeSet<MemberId>>,
}

/// A current member who should hold an epoch's key but was never given it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardDue {
    pub rotation: Hash,
    pub epoch: u32,
    pub member: MemberId,
    /// The member expected to hand the key on: the one who admitted `member` if it holds
    /// the key and is still here, otherwise the most senior holder.
    pub by: MemberId,
}

/// The resolved membership of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    members: BTreeMap<MemberId, Member>,
    departed: BTreeMap<MemberId, Departed>,
    /// Effective epochs in resolution order, the group's first epoch first.
    epochs: Vec<EpochRecord>,
    /// Hashes of the operations that took effect.
    effective: BTreeSet<Hash>,
    forwards_due: Vec<ForwardDue>,
    /// Every well-formed rotation recorded, effective or not.
    keyed: BTreeMap<Hash, KeyedRotation>,
}

impl Roster {
    /// Every well-formed rotation recorded, effective or not, by its envelope hash.
    pub fn rotations(&self) -> &BTreeMap<Hash, KeyedRotation> {
        &self.keyed
    }

    pub fn get(&self, id: &MemberId) -> Option<&Member> {
        self.members.get(id)
    }

    pub fn is_member(&self, id: &MemberId) -> bool {
        self.members.contains_key(id)
    }

    pub fn is_facilitator(&self, id: &MemberId) -> bool {
        self.members
            .get(id)
            .is_some_and(|m| m.role == Role::Facilitator)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn members(&self) -> impl Iterator<Item = (&MemberId, &Member)> {
        self.members.iter()
    }

    pub fn departed(&self) -> &BTreeMap<MemberId, Departed> {
        &self.departed
    }

    pub fn epochs(&self) -> &[EpochRecord] {
        &self.epochs
    }

    /// The epoch new envelopes should be written under: the newest effective one.
    pub fn current_epoch(&self) -> &EpochRecord {
        self.epochs
            .last()
            .expect("a roster always has the group's first epoch")
    }

    /// Whether the current epoch's key is held by someone who is no longer a member, so
    /// that a member must start a new epoch before writing.
    pub fn needs_rotation(&self) -> bool {
        self.current_epoch()
            .holders
            .iter()
            .any(|h| !self.members.contains_key(h))
    }

    pub fn is_effective(&self, op: &Hash) -> bool {
        self.effective.contains(op)
    }

    pub fn forwards_due(&self) -> &[ForwardDue] {
        &self.forwards_due
    }

    /// Whether an act at `seq` of `author`'s log counts: the author was admitted and the
    /// act is not after a cut (their removal or departure).
    pub fn counts(&self, author: &MemberId, seq: u64) -> bool {
        if self.members.contains_key(author) {
            return true;
        }
        self.departed.get(author).is_some_and(|d| seq <= d.cut)
    }
}

/// Every membership operation recorded for a group, and the roster they resolve to.
#[derive(Debug, Clone)]
pub struct Membership {
    info: GroupInfo,
    ops: BTreeMap<Hash, OpRecord>,
    /// Every identity ever named by an add (and the creator): what envelope signatures
    /// are checked against. Only grows, so which envelopes are accepted never depends on
    /// the order they arrived in.
    known: BTreeMap<MemberId, PublicIdentity>,
    roster: Roster,
    /// Operations were recorded since the roster was last resolved.
    dirty: bool,
}

impl Membership {
    pub fn new(info: &GroupInfo) -> Membership {
        let mut known = BTreeMap::new();
        known.insert(info.creator.member_id(), info.creator);
        let ops = BTreeMap::new();
        let roster = resolve(info, &ops);
        Membership {
            info: *info,
            ops,
            known,
            roster,
            dirty: false,
        }
    }

    /// Records an operation from an accepted envelope. The roster is resolved again at
    /// the next [`Membership::refresh`] (once per batch, however many operations came).
    pub fn record(&mut self, record: OpRecord) {
        if self.ops.contains_key(&record.hash) {
            return;
        }
        if let Action::Add { member, .. } = &record.op.action {
            self.known.insert(member.member_id(), *member);
        }
        self.ops.insert(record.hash, record);
        self.dirty = true;
    }

    /// Resolves the roster again if operations were recorded since. Returns whether the
    /// roster changed.
    pub fn refresh(&mut self) -> bool {
        if !self.dirty {
            return false;
        }
        self.dirty = false;
        let roster = resolve(&self.info, &self.ops);
        let changed = roster != self.roster;
        self.roster = roster;
        changed
    }

    /// The roster as of the last [`Membership::refresh`].
    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    /// The signing identity of anyone ever admitted, for checking their envelopes.
    pub fn known(&self, id: &MemberId) -> Option<&PublicIdentity> {
        self.known.get(id)
    }

    pub fn ops(&self) -> impl Iterator<Item = &OpRecord> {
        self.ops.values()
    }

    pub fn op(&self, hash: &Hash) -> Option<&OpRecord> {
        self.ops.get(hash)
    }

    /// The heads of the graph of operations that took effect: each author's newest such
    /// operation that no other one names. The `deps` of the next operation written here.
    /// Only effective operations are named, so an operation that never resolves (one
    /// naming something nobody has) cannot hold back what honest members do next.
    pub fn heads(&self) -> Vec<Hash> {
        let effective: Vec<&OpRecord> = self
            .ops
            .values()
            .filter(|r| self.roster.is_effective(&r.hash))
            .collect();
        let mut named: BTreeSet<Hash> = BTreeSet::new();
        let mut newest: BTreeMap<MemberId, (u64, Hash)> = BTreeMap::new();
        for r in &effective {
            named.extend(r.op.deps.iter().copied());
            let entry = newest.entry(r.author).or_insert((r.seq, r.hash));
            if r.seq > entry.0 {
                named.insert(entry.1);
                *entry = (r.seq, r.hash);
            } else if r.seq < entry.0 {
                named.insert(r.hash);
            }
        }
        let mut heads: Vec<Hash> = newest
            .values()
            .map(|(_, h)| *h)
            .filter(|h| !named.contains(h))
            .collect();
        heads.truncate(MAX_DEPS);
        heads
    }

    /// The newest epoch number of any rotation that took effect, for naming the next one.
    pub fn highest_epoch(&self) -> u32 {
        self.roster
            .epochs()
            .iter()
            .map(|e| e.epoch)
            .max()
            .unwrap_or(0)
    }
}

/// The causal graph of the operations: each operation's parents are the operations it
/// names and its author's previous operation. Operations naming something not (yet)
/// recorded wait, and so does everything after them.
struct Graph<'a> {
    ops: Vec<&'a OpRecord>,
    parents: Vec<Vec<usize>>,
    children: Vec<Vec<usize>>,
    /// Whether every operation an operation names (transitively) is recorded.
    complete: Vec<bool>,
    /// Who each operation's rotation (if it carries one) gives the key to.
    recipients: Vec<Option<Arc<BTreeSet<MemberId>>>>,
    /// Every well-formed rotation, as a pass starts out knowing them.
    keyed: BTreeMap<Hash, KeyedRotation>,
    /// Ancestor sets already computed: a resolve asks for the same ones in every pass.
    ancestors: RefCell<BTreeMap<usize, Rc<BTreeSet<usize>>>>,
    /// Per operation, the members its ancestors removed or saw leave; asked in every pass.
    seen_gone: RefCell<BTreeMap<usize, Rc<BTreeSet<MemberId>>>>,
}

impl<'a> Graph<'a> {
    fn new(group: GroupId, ops: &'a BTreeMap<Hash, OpRecord>) -> Graph<'a> {
        let list: Vec<&OpRecord> = ops.values().collect();
        let index: BTreeMap<Hash, usize> =
            list.iter().enumerate().map(|(i, r)| (r.hash, i)).collect();
        let mut previous_of_author: BTreeMap<(MemberId, u64), usize> = BTreeMap::new();
        for (i, r) in list.iter().enumerate() {
            previous_of_author.insert((r.author, r.seq), i);
        }
        let mut parents = vec![Vec::new(); list.len()];
        let mut complete = vec![true; list.len()];
        for (i, r) in list.iter().enumerate() {
            for dep in r.op.deps.iter().take(MAX_DEPS) {
                match index.get(dep) {
                    Some(&j) if j != i => parents[i].push(j),
                    Some(_) => complete[i] = false,
                    None => complete[i] = false,
                }
            }
            if let Some((_, &j)) = previous_of_author
                .range((r.author, 0)..(r.author, r.seq))
                .next_back()
            {
                parents[i].push(j);
            }
            parents[i].sort_unstable();
            parents[i].dedup();
        }
        let mut children = vec![Vec::new(); list.len()];
        for (i, ps) in parents.iter().enumerate() {
            for &p in ps {
                children[p].push(i);
            }
        }
        let recipients: Vec<Option<Arc<BTreeSet<MemberId>>>> = list
            .iter()
            .map(|r| r.op.action.rotation().map(|rot| Arc::new(rot.recipients())))
            .collect();
        let keyed = list
            .iter()
            .zip(&recipients)
            .filter_map(|(r, holders)| {
                let rotation = r.op.action.rotation()?;
                let holders = holders.as_ref()?;
                rotation_well_formed(group, r.author, rotation, holders).then(|| {
                    (
                        r.hash,
                        KeyedRotation {
                            epoch: rotation.epoch,
                            holders: holders.clone(),
                        },
                    )
                })
            })
            .collect();
        Graph {
            ops: list,
            parents,
            children,
            complete,
            recipients,
            keyed,
            ancestors: RefCell::default(),
            seen_gone: RefCell::default(),
        }
    }

    /// Where a removal at `i` of `member` with `upto` cuts the member's log: `upto`, but
    /// not past the member's first operation the removal did not see. `None` if `upto`
    /// falls short of an operation of the member the removal did see (depends on).
    fn seen_cut(&self, i: usize, member: &MemberId, upto: u64) -> Option<u64> {
        let ancestors = self.ancestors(i);
        let mut seen = 0;
        let mut unseen = u64::MAX;
        for (j, r) in self.ops.iter().enumerate() {
            if r.author != *member {
                continue;
            }
            if ancestors.contains(&j) {
                seen = seen.max(r.seq);
            } else {
                unseen = unseen.min(r.seq);
            }
        }
        if upto < seen {
            return None;
        }
        Some(upto.min(unseen.saturating_sub(1)).max(seen))
    }

    /// Indices of every ancestor of `i`.
    fn ancestors(&self, i: usize) -> Rc<BTreeSet<usize>> {
        if let Some(known) = self.ancestors.borrow().get(&i) {
            return known.clone();
        }
        let mut seen = BTreeSet::new();
        let mut stack = self.parents[i].clone();
        while let Some(j) = stack.pop() {
            if seen.insert(j) {
                stack.extend(self.parents[j].iter().copied());
            }
        }
        let seen = Rc::new(seen);
        self.ancestors.borrow_mut().insert(i, seen.clone());
        seen
    }

    /// Members that operation `i`'s author saw leave or be removed (even if that did not
    /// stand in the end).
    fn seen_gone(&self, i: usize) -> Rc<BTreeSet<MemberId>> {
        if let Some(known) = self.seen_gone.borrow().get(&i) {
            return known.clone();
        }
        let gone: Rc<BTreeSet<MemberId>> = Rc::new(
            self.ancestors(i)
                .iter()
                .filter_map(|&j| {
                    let op = self.ops[j];
                    match &op.op.action {
                        Action::Remove { member, .. } => Some(*member),
                        Action::Leave => Some(op.author),
                        _ => None,
                    }
                })
                .collect(),
        );
        self.seen_gone.borrow_mut().insert(i, gone.clone());
        gone
    }
}

/// Resolves the recorded operations into a roster. Deterministic in the set of operations.
///
/// Which removals and departures stand is settled first, greedily by seniority: a probe
/// pass (no one departs) finds the plausible ones and everyone's rank; then, from the most
/// senior author down, each is tried on top of those already accepted and kept only if, in
/// a full pass with all the cuts known from the start, it and every one kept before it take
/// effect. So a cut is only ever made by a removal or departure that takes effect, and a
/// later candidate can never undo an earlier, more senior one. One pass per candidate.
fn resolve(info: &GroupInfo, ops: &BTreeMap<Hash, OpRecord>) -> Roster {
    let graph = Graph::new(info.group_id, ops);
    let probe = Pass::run(info, &graph, Removals::Probe);
    let mut candidates: Vec<usize> = (0..graph.ops.len())
        .filter(|&i| {
            matches!(
                graph.ops[i].op.action,
                Action::Remove { .. } | Action::Leave
            ) && probe.effective.contains(&graph.ops[i].hash)
        })
        .collect();
    candidates.sort_by_key(|&i| {
        let r = graph.ops[i];
        (
            probe.ranks.get(&r.author).copied().unwrap_or(u32::MAX),
            r.author,
            r.seq,
            i,
        )
    });
    let mut decided: BTreeMap<usize, (MemberId, u64)> = BTreeMap::new();
    // The pass of the last candidate kept; the pass with no cuts is run only if none is.
    let mut current: Option<Pass> = None;
    for i in candidates {
        let r = graph.ops[i];
        let author_cut = decided
            .values()
            .filter(|(m, _)| *m == r.author)
            .map(|(_, c)| *c)
            .min();
        if author_cut.is_some_and(|c| r.seq > c) {
            continue;
        }
        let cut = match &r.op.action {
            Action::Leave => (r.author, r.seq),
            Action::Remove { member, upto, .. } => match graph.seen_cut(i, member, *upto) {
                Some(c) => (*member, c),
                None => continue,
            },
            _ => continue,
        };
        let mut tentative = decided.clone();
        tentative.insert(i, cut);
        let pass = Pass::run(info, &graph, Removals::Decided(&tentative));
        let all_stand = tentative
            .keys()
            .all(|j| pass.effective.contains(&graph.ops[*j].hash));
        if all_stand {
            decided = tentative;
            current = Some(pass);
        }
    }
    current
        .unwrap_or_else(|| Pass::run(info, &graph, Removals::Decided(&decided)))
        .finish(&graph)
}

/// How a pass treats removals and departures.
#[derive(Clone, Copy)]
enum Removals<'a> {
    /// Judge each on its own (authority, form) but let nobody depart: which are plausible.
    Probe,
    /// Only these (by graph index, with the member each cuts and where) take effect, with
    /// their cuts known from the start of the pass.
    Decided(&'a BTreeMap<usize, (MemberId, u64)>),
}

struct Pass {
    group: GroupId,
    members: BTreeMap<MemberId, Member>,
    departed: BTreeMap<MemberId, Departed>,
    epochs: Vec<EpochRecord>,
    effective: BTreeSet<Hash>,
    /// The cuts of the decided removals and departures, known from the start.
    cuts: BTreeMap<MemberId, u64>,
    /// Which removal and departure operations may take effect (by graph index).
    decided: Option<BTreeMap<usize, (MemberId, u64)>>,
    /// Seniority of everyone admitted in this pass, departed or not.
    ranks: BTreeMap<MemberId, u32>,
    /// Every well-formed rotation recorded, effective or not, by its envelope hash: its
    /// epoch and who holds its key. Keys of rotations that did not take effect were still
    /// handed out, and content may have been written under them.
    keyed: BTreeMap<Hash, KeyedRotation>,
    /// Graph index of the add that admitted each member.
    add_index: BTreeMap<MemberId, usize>,
    next_rank: u32,
}

impl Pass {
    fn run(info: &GroupInfo, graph: &Graph<'_>, removals: Removals<'_>) -> Pass {
        let creator = info.creator.member_id();
        let decided = match removals {
            Removals::Probe => None,
            Removals::Decided(d) => Some(d.clone()),
        };
        let mut cuts: BTreeMap<MemberId, u64> = BTreeMap::new();
        for (member, cut) in decided.iter().flat_map(|d| d.values()) {
            let entry = cuts.entry(*member).or_insert(*cut);
            *entry = (*entry).min(*cut);
        }
        let mut pass = Pass {
            group: info.group_id,
            members: BTreeMap::from([(
                creator,
                Member {
                    identity: info.creator,
                    role: Role::Facilitator,
                    name: String::new(),
                    joined_at: 0,
                    rank: 0,
                    added_by_op: None,
                    added_by: None,
                },
            )]),
            departed: BTreeMap::new(),
            epochs: vec![EpochRecord {
                op: None,
                epoch: 0,
                holders: Arc::new(BTreeSet::from([creator])),
            }],
            effective: BTreeSet::new(),
            cuts,
            decided,
            ranks: BTreeMap::from([(creator, 0)]),
            keyed: graph.keyed.clone(),
            add_index: BTreeMap::new(),
            next_rank: 1,
        };
        // Kahn's algorithm; among the operations ready at once, the most senior author's
        // first. Seniority is read when an operation becomes ready, which is after its
        // author's own admission for any operation that names what its author had seen.
        let mut waiting: Vec<usize> = graph.parents.iter().map(Vec::len).collect();
        let mut ready: BTreeSet<(u32, MemberId, u64, usize)> = BTreeSet::new();
        let key = |pass: &Pass, i: usize| {
            let r = graph.ops[i];
            let rank = pass.members.get(&r.author).map_or(u32::MAX, |m| m.rank);
            (rank, r.author, r.seq, i)
        };
        for (i, (&w, &complete)) in waiting.iter().zip(&graph.complete).enumerate() {
            if w == 0 && complete {
                ready.insert(key(&pass, i));
            }
        }
        while let Some(next) = ready.pop_first() {
            let i = next.3;
            pass.apply(graph, i);
            for &c in &graph.children[i] {
                waiting[c] -= 1;
                if waiting[c] == 0 && graph.complete[c] {
                    ready.insert(key(&pass, c));
                }
            }
        }
        pass
    }

    fn apply(&mut self, graph: &Graph<'_>, i: usize) {
        let r = graph.ops[i];
        let author = r.author;
        if self.cuts.get(&author).is_some_and(|c| r.seq > *c) {
            return;
        }
        let Some(me) = self.members.get(&author) else {
            return;
        };
        let facilitator = me.role == Role::Facilitator;
        let applied = match &r.op.action {
            Action::Add {
                member,
                role,
                name,
                at,
                rotation,
                ..
            } => {
                let id = member.member_id();
                let fresh = !self.members.contains_key(&id) && !self.departed.contains_key(&id);
                if facilitator
                    && fresh
                    && valid_name(name)
                    && self.rotation_fits(graph, i, rotation, Some(id), None)
                {
                    self.members.insert(
                        id,
                        Member {
                            identity: *member,
                            role: *role,
                            name: name.clone(),
                            joined_at: *at,
                            rank: self.next_rank,
                            added_by_op: Some(r.hash),
                            added_by: Some(author),
                        },
                    );
                    self.ranks.insert(id, self.next_rank);
                    self.next_rank += 1;
                    self.add_index.insert(id, i);
                    self.start_epoch(graph, i, rotation);
                    true
                } else {
                    false
                }
            }
            Action::SetRole { member, role } => match self.members.get_mut(member) {
                Some(m) if facilitator => {
                    m.role = *role;
                    true
                }
                _ => false,
            },
            Action::Remove {
                member,
                upto,
                rotation,
            } => {
                // In a decided pass only decided removals count, with their settled cut;
                // a probe judges each on its own and lets nobody depart.
                let decided = match &self.decided {
                    Some(d) => d.get(&i).map(|(_, cut)| Some(*cut)),
                    None => Some(None),
                };
                let fits = facilitator
                    && *member != author
                    && self.members.contains_key(member)
                    && graph.seen_cut(i, member, *upto).is_some()
                    && self.rotation_fits(graph, i, rotation, None, Some(*member));
                match decided {
                    Some(cut) if fits => {
                        if let Some(cut) = cut {
                            self.depart(*member, Departure::Removed { by: author }, cut);
                        }
                        self.start_epoch(graph, i, rotation);
                        true
                    }
                    _ => false,
                }
            }
            Action::Leave => match &self.decided {
                Some(d) => match d.get(&i) {
                    Some((_, cut)) => {
                        let cut = *cut;
                        self.depart(author, Departure::Left, cut);
                        true
                    }
                    None => false,
                },
                None => true,
            },
            Action::Rotate { rotation } => {
                if self.rotation_fits(graph, i, rotation, None, None) {
                    self.start_epoch(graph, i, rotation);
                    true
                } else {
                    false
                }
            }
            Action::Forward {
                rotation,
                lockboxes,
            } => match self.keyed.get_mut(rotation) {
                Some(keyed) if keyed.holders.contains(&author) => {
                    let epoch = keyed.epoch;
                    let group = self.group;
                    let fine = lockboxes.len() <= MAX_MEMBERS
                        && lockboxes
                            .iter()
                            .all(|b| b.group_id == group && b.sender == author && b.epoch == epoch);
                    if fine {
                        Arc::make_mut(&mut keyed.holders)
                            .extend(lockboxes.iter().map(|b| b.recipient));
                    }
                    fine
                }
                _ => false,
            },
            Action::Rename { name } => {
                let ok = valid_name(name);
                if ok && let Some(m) = self.members.get_mut(&author) {
                    m.name = name.clone();
                }
                ok
            }
        };
        if applied {
            self.effective.insert(r.hash);
            self.keep_a_facilitator();
        }
    }

    /// A group left with members but no facilitator (the last ones stepped down or left
    /// at once) would have nobody to invite or remove: its most senior member becomes one.
    fn keep_a_facilitator(&mut self) {
        if self.members.values().any(|m| m.role == Role::Facilitator) {
            return;
        }
        if let Some(m) = self.members.values_mut().min_by_key(|m| m.rank) {
            m.role = Role::Facilitator;
        }
    }

    /// A rotation takes effect if it is well formed ([`rotation_ok`]), its epoch number is
    /// not far beyond the epochs so far, and it gives the key to every member its author
    /// must have known of: still present, and admitted by an operation the rotation depends
    /// on (the creator always). A member admitted concurrently is sent the key later.
    fn rotation_fits(
        &self,
        graph: &Graph<'_>,
        i: usize,
        rotation: &Rotation,
        include: Option<MemberId>,
        exclude: Option<MemberId>,
    ) -> bool {
        let Some(recipients) = &graph.recipients[i] else {
            return false;
        };
        // Well formed (judged once, when the graph was built: the same in every pass), and
        // it includes and leaves out whom the operation requires.
        let well_formed = graph.keyed.contains_key(&graph.ops[i].hash);
        if !well_formed
            || include.is_some_and(|m| !recipients.contains(&m))
            || exclude.is_some_and(|m| recipients.contains(&m))
        {
            return false;
        }
        let newest = self.epochs.iter().map(|e| e.epoch).max().unwrap_or(0);
        if rotation.epoch > newest.saturating_add(MAX_EPOCH_STEP) {
            return false;
        }
        // Recipients first: in an honest rotation that settles nearly every member. Both
        // are sorted by id, so one walk through each answers it.
        let mut recipients_in_order = recipients.iter().peekable();
        let mut history = None;
        self.members.iter().all(|(id, m)| {
            while recipients_in_order.next_if(|r| *r < id).is_some() {}
            if recipients_in_order.peek() == Some(&id) || Some(*id) == exclude {
                return true;
            }
            // Members the author saw leave or be removed (even if that did not stand in
            // the end) may be left out: the author had every reason to.
            let (seen_gone, ancestors) =
                history.get_or_insert_with(|| (graph.seen_gone(i), graph.ancestors(i)));
            if seen_gone.contains(id) {
                return true;
            }
            let known = match m.added_by_op {
                None => true,
                Some(_) => self
                    .add_index
                    .get(id)
                    .is_some_and(|a| ancestors.contains(a)),
            };
            !known
        })
    }

    /// Records the epoch that operation `i` (carrying `rotation`) starts.
    fn start_epoch(&mut self, graph: &Graph<'_>, i: usize, rotation: &Rotation) {
        self.epochs.push(EpochRecord {
            op: Some(graph.ops[i].hash),
            epoch: rotation.epoch,
            holders: graph.recipients[i].clone().unwrap_or_default(),
        });
    }

    fn depart(&mut self, member: MemberId, how: Departure, cut: u64) {
        if let Some(m) = self.members.remove(&member) {
            self.departed.insert(
                member,
                Departed {
                    identity: m.identity,
                    name: m.name,
                    how,
                    cut,
                },
            );
        }
    }

    fn finish(mut self, graph: &Graph<'_>) -> Roster {
        // Forwards seen after an epoch started count for it too.
        for record in &mut self.epochs {
            if let Some(keyed) = record.op.and_then(|op| self.keyed.get(&op)) {
                record.holders = keyed.holders.clone();
            }
        }
        let index_of: BTreeMap<Hash, usize> = graph
            .ops
            .iter()
            .enumerate()
            .map(|(i, r)| (r.hash, i))
            .collect();
        let mut forwards_due = Vec::new();
        for (id, member) in &self.members {
            // Epochs started before the member's admission stay closed to them; the
            // creator was there from the start.
            let before = match self.add_index.get(id) {
                Some(&add) => graph.ancestors(add),
                None => Rc::default(),
            };
            for (op, keyed) in &self.keyed {
                if keyed.holders.contains(id) {
                    continue;
                }
                if index_of.get(op).is_some_and(|at| before.contains(at)) {
                    continue;
                }
                let adder = member
                    .added_by
                    .filter(|a| keyed.holders.contains(a) && self.members.contains_key(a));
                let senior = keyed
                    .holders
                    .iter()
                    .filter_map(|h| self.members.get(h).map(|m| (m.rank, *h)))
                    .min()
                    .map(|(_, h)| h);
                if let Some(by) = adder.or(senior) {
                    forwards_due.push(ForwardDue {
                        rotation: *op,
                        epoch: keyed.epoch,
                        member: *id,
                        by,
                    });
                }
            }
        }
        Roster {
            members: self.members,
            departed: self.departed,
            epochs: self.epochs,
            effective: self.effective,
            forwards_due,
            keyed: self.keyed,
        }
    }
}

/// A rotation is well formed when its author sent every lockbox, all for the rotation's
/// own epoch and to distinct recipients, the author among them. Whom the operation must
/// include or leave out is checked by the pass ([`Pass::rotation_fits`]). Whether the
/// recipients match the membership is not judged here: concurrent changes make honest
/// views differ. A current member left out is sent the key later ([`ForwardDue`]); a key
/// held by someone no longer a member makes the next writer start a new epoch
/// ([`Roster::needs_rotation`]).
fn rotation_well_formed(
    group: GroupId,
    author: MemberId,
    rotation: &Rotation,
    recipients: &BTreeSet<MemberId>,
) -> bool {
    rotation.lockboxes.len() <= MAX_MEMBERS
        && recipients.len() == rotation.lockboxes.len()
        && rotation
            .lockboxes
            .iter()
            .all(|b| b.group_id == group && b.sender == author && b.epoch == rotation.epoch)
        && recipients.contains(&author)
}

fn valid_name(name: &str) -> bool {
    name.chars().count() <= MAX_NAME_LEN && !name.chars().any(char::is_control)
}

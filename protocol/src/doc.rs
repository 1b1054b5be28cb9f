//! The group's shared document (automerge), and who may change what in it.
//!
//! Every device writes with the fixed actor id of its member id, so each change is
//! attributable to exactly one member and can be checked against that member's signed
//! envelopes; [`Rules`] says which members' operations each part of the document takes.

use std::collections::BTreeMap;

use automerge::legacy::{Key, ObjectId, OpType};
use automerge::{ActorId, AutoCommit, Change, ExpandedChange, ObjType, ReadDoc, Value};

use crate::ids::MemberId;

/// Longest group name accepted.
pub const MAX_NAME_LEN: usize = 200;
/// Longest purpose accepted (the practice asks for twelve words or fewer; this is a hard cap).
pub const MAX_PURPOSE_LEN: usize = 1_000;
/// Longest agreement text accepted.
pub const MAX_AGREEMENT_LEN: usize = 4_000;

/// The root key of the agreements container.
const AGREEMENTS: &str = "agreements";

/// The document as read: what every device shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupDoc {
    pub name: String,
    pub purpose: String,
    /// Keyed by agreement id, so concurrent additions on different devices all survive.
    pub agreements: BTreeMap<String, AgreementRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgreementRecord {
    pub text: String,
    /// The member whose change made the record: the actor of the operation that created
    /// its object, never a field its writer fills in.
    pub author: MemberId,
    /// Author's wall clock, seconds since the Unix epoch: for display only.
    pub created_at: i64,
}

/// Errors are boxed: automerge's are large and these travel through every write path.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("automerge rejected the data: {0}")]
    Automerge(Box<automerge::AutomergeError>),
    /// automerge panicked on the data. The document it was working on may be
    /// inconsistent and must be rebuilt.
    #[error("automerge could not process the data (it is malformed)")]
    Panicked,
    #[error(
        "the group document has no list of agreements yet; wait until this device has \
         synced with the group's creator"
    )]
    NoAgreements,
}

/// Runs automerge on data from others. automerge can panic on crafted input (found by
/// fuzzing), and a panic must not take the daemon down: it becomes an error.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, DocError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| DocError::Panicked)
}

/// Parses one change from others and checks it is in automerge's canonical encoding: a
/// change that does not re-encode to itself (a stale checksum, an odd column) could be
/// applied but would make every later snapshot fail to load.
pub fn parse_canonical_change(bytes: Vec<u8>) -> Option<Change> {
    guarded(|| {
        let change = Change::from_bytes(bytes).ok()?;
        let reencoded = Change::from(change.decode());
        (reencoded.hash() == change.hash() && reencoded.raw_bytes() == change.raw_bytes())
            .then_some(change)
    })
    .ok()
    .flatten()
}

/// Who may change what in the document (docs/protocol.md, "Who may change what").
///
/// A change is judged on its own, with only facts every device shares: the group's creator
/// and the agreements container the creator's first change made. So every device that
/// holds a change judges it the same way, whatever else it holds, and a change that breaks
/// the rules is never applied anywhere (nor is anything that depends on it: automerge
/// cannot apply a change without its dependencies).
#[derive(Debug, Clone)]
pub struct Rules {
    creator: ActorId,
    /// The op counter of the agreements container (the creator's op made it), once the
    /// creator's first change, or a snapshot holding it, has been seen here.
    agreements: Option<u64>,
}

impl Rules {
    /// Rules of a group by `creator`, whose first change is still to be seen.
    pub fn new(creator: &MemberId) -> Rules {
        Rules {
            creator: creator.actor_id(),
            agreements: None,
        }
    }

    /// Rules of a group whose document so far is `doc` (the snapshot a member joined with).
    pub fn of_document(creator: &MemberId, doc: &GroupDocument) -> Rules {
        let mut rules = Rules::new(creator);
        if let Ok(Some((Value::Object(ObjType::Map), automerge::ObjId::Id(counter, actor, _)))) =
            doc.doc.get(automerge::ROOT, AGREEMENTS)
            && actor == rules.creator
        {
            rules.agreements = Some(counter);
        }
        rules
    }

    /// Whether every operation of these changes (one envelope's, or one position of a
    /// segment) is allowed. Only if all are does the creator's first change among them fix
    /// the agreements container.
    pub fn allow(&mut self, changes: &[Change]) -> bool {
        let mut agreements = self.agreements;
        for change in changes {
            // Decoding a crafted change can panic: that is a change not allowed.
            let Ok(expanded) = guarded(|| change.decode()) else {
                return false;
            };
            if !self.allows(&expanded, &mut agreements) {
                return false;
            }
        }
        self.agreements = agreements;
        true
    }

    fn allows(&self, change: &ExpandedChange, agreements: &mut Option<u64>) -> bool {
        let actor = &change.actor_id;
        let by_creator = *actor == self.creator;
        let first = by_creator && change.seq == 1;
        for (i, op) in change.operations.iter().enumerate() {
            // Saturating: a crafted start_op near the top must not overflow (a panic).
            let id = change.start_op.get().saturating_add(i as u64);
            // automerge retires a predecessor wherever it is, not only at the op's own
            // key: an op naming another member's op as a predecessor deletes that op.
            if op.pred.iter().any(|p| p.actor() != actor) {
                return false;
            }
            let allowed = match &op.obj {
                ObjectId::Root => match &op.key {
                    Key::Map(key) if key == AGREEMENTS => {
                        // Known already if a snapshot held it: then it is this very op.
                        let makes = first
                            && agreements.is_none_or(|known| known == id)
                            && op.pred.is_empty()
                            && op.action == OpType::Make(ObjType::Map);
                        if makes {
                            *agreements = Some(id);
                        }
                        makes
                    }
                    Key::Map(_) => by_creator,
                    Key::Seq(_) => false,
                },
                ObjectId::Id(obj)
                    if obj.actor() == &self.creator && Some(obj.counter()) == *agreements =>
                {
                    match &op.key {
                        Key::Map(key) => {
                            owns_key(actor, key)
                                && matches!(op.action, OpType::Make(ObjType::Map) | OpType::Delete)
                        }
                        Key::Seq(_) => false,
                    }
                }
                // An agreement, or anything inside one or made by a member: its maker's.
                ObjectId::Id(obj) => obj.actor() == actor,
            };
            if !allowed {
                return false;
            }
        }
        true
    }
}

/// Whether `actor` may add, replace or retire the agreement at `key`: its own (the key
/// starts with its member id), or one of the form every member used before keys were
/// owned (16 hex digits).
fn owns_key(actor: &ActorId, key: &str) -> bool {
    let legacy = key.len() == 16 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    legacy || key.starts_with(&actor.to_hex_string())
}

/// A new agreement id owned by `author`: its member id and 8 random bytes, in hex.
pub fn agreement_id(author: &MemberId, random: [u8; 8]) -> String {
    format!("{}{}", author.to_hex(), hex::encode(random))
}

impl From<automerge::AutomergeError> for DocError {
    fn from(e: automerge::AutomergeError) -> Self {
        DocError::Automerge(Box::new(e))
    }
}

pub struct GroupDocument {
    doc: AutoCommit,
}

impl GroupDocument {
    pub fn new(actor: ActorId) -> GroupDocument {
        GroupDocument {
            doc: AutoCommit::new().with_actor(actor),
        }
    }

    /// Loads a saved document (a snapshot) and writes as `actor` from now on.
    pub fn load(saved: &[u8], actor: ActorId) -> Result<GroupDocument, DocError> {
        let doc = guarded(|| AutoCommit::load(saved))??.with_actor(actor);
        Ok(GroupDocument { doc })
    }

    /// The current state. Lenient by design: a field of the wrong type reads as its
    /// default and a malformed agreement is skipped, rather than one member making the
    /// group unreadable.
    pub fn read(&self) -> GroupDoc {
        let mut agreements = BTreeMap::new();
        if let Some(obj) = self.agreements() {
            for key in self.doc.keys(&obj) {
                if let Some(record) = self.record(&obj, &key) {
                    agreements.insert(key, record);
                }
            }
        }
        GroupDoc {
            name: self.text(&automerge::ROOT, "name"),
            purpose: self.text(&automerge::ROOT, "purpose"),
            agreements,
        }
    }

    /// The group's name, read without the rest of the document.
    pub fn name(&self) -> String {
        self.text(&automerge::ROOT, "name")
    }

    /// One agreement by id, read without the rest of the document (a malformed entry
    /// reads as absent, as in [`Self::read`]).
    pub fn agreement(&self, id: &str) -> Option<AgreementRecord> {
        self.record(&self.agreements()?, id)
    }

    /// The agreements container, if the document has one.
    fn agreements(&self) -> Option<automerge::ObjId> {
        match self.doc.get(automerge::ROOT, AGREEMENTS) {
            Ok(Some((Value::Object(ObjType::Map), obj))) => Some(obj),
            _ => None,
        }
    }

    /// The agreement at `key`. Its author is the actor of the op that made its object; a
    /// stored `author` field (documents from before) is ignored.
    fn record(&self, agreements: &automerge::ObjId, key: &str) -> Option<AgreementRecord> {
        let Ok(Some((Value::Object(ObjType::Map), obj))) = self.doc.get(agreements, key) else {
            return None;
        };
        let automerge::ObjId::Id(_, actor, _) = &obj else {
            return None;
        };
        let author = MemberId(actor.to_bytes().try_into().ok()?);
        let text = autosurgeon::hydrate_prop::<_, String, _, _>(&self.doc, &obj, "text").ok()?;
        let created_at =
            autosurgeon::hydrate_prop::<_, i64, _, _>(&self.doc, &obj, "created_at").ok()?;
        Some(AgreementRecord {
            text,
            author,
            created_at,
        })
    }

    /// A string at `obj`'s `prop`, or empty if absent or not a string.
    fn text(&self, obj: &automerge::ObjId, prop: &str) -> String {
        autosurgeon::hydrate_prop::<_, Option<String>, _, _>(&self.doc, obj, prop)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// The group's first change, by its creator: the name, the purpose and the (empty)
    /// agreements container, which only this change may make.
    pub fn init(&mut self, name: &str, purpose: &str) -> Result<Vec<Change>, DocError> {
        use automerge::transaction::Transactable;
        self.doc
            .put_object(automerge::ROOT, AGREEMENTS, ObjType::Map)?;
        self.doc.put(automerge::ROOT, "name", name)?;
        self.doc.put(automerge::ROOT, "purpose", purpose)?;
        Ok(self.commit())
    }

    /// Adds one agreement by this device's member, under an id it owns
    /// ([`agreement_id`]), touching only its own entry (constant cost in the group's size).
    pub fn insert_agreement(
        &mut self,
        id: &str,
        text: &str,
        created_at: i64,
    ) -> Result<Vec<Change>, DocError> {
        use automerge::transaction::Transactable;
        let agreements = self.agreements().ok_or(DocError::NoAgreements)?;
        let record = self.doc.put_object(&agreements, id, ObjType::Map)?;
        self.doc.put(&record, "text", text)?;
        self.doc.put(&record, "created_at", created_at)?;
        Ok(self.commit())
    }

    /// Commits pending operations as one change and returns it.
    fn commit(&mut self) -> Vec<Change> {
        let Some(hash) = self.doc.commit() else {
            return Vec::new();
        };
        self.doc.get_change_by_hash(&hash).into_iter().collect()
    }

    /// Applies changes received from others, all at once (automerge is far faster in batch).
    /// After [`DocError::Panicked`] the document must be rebuilt.
    pub fn apply(&mut self, changes: Vec<Change>) -> Result<(), DocError> {
        if changes.is_empty() {
            return Ok(());
        }
        guarded(|| self.doc.apply_changes_batch(changes))??;
        Ok(())
    }

    /// Hashes of changes that received changes depend on but the document lacks (those
    /// changes wait inside automerge until their dependencies arrive).
    pub fn missing_deps(&mut self) -> Vec<automerge::ChangeHash> {
        guarded(|| self.doc.get_missing_deps(&[])).unwrap_or_default()
    }

    /// The sequence number of a change this document holds, by hash.
    pub fn change_seq(&mut self, hash: &[u8; 32]) -> Option<u64> {
        let hash = automerge::ChangeHash(*hash);
        guarded(|| self.doc.get_change_by_hash(&hash).map(|c| c.seq()))
            .ok()
            .flatten()
    }

    /// These changes (which the document must hold) as one automerge bundle: the compact,
    /// columnar encoding `save()` uses, so a long run costs a few bytes per change.
    pub fn bundle(&mut self, hashes: Vec<automerge::ChangeHash>) -> Result<Vec<u8>, DocError> {
        let bundle = guarded(|| self.doc.document().bundle(hashes))??;
        Ok(bundle.bytes().to_vec())
    }

    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    #[cfg(test)]
    pub(crate) fn clone_saved(&self) -> Vec<u8> {
        self.doc.clone().save()
    }

    /// Makes a change with raw automerge operations, as a hostile device can.
    #[cfg(test)]
    pub(crate) fn craft(&mut self, edit: impl FnOnce(&mut AutoCommit)) -> Vec<Change> {
        edit(&mut self.doc);
        self.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(n: u8) -> ActorId {
        ActorId::from(&[n; 16][..])
    }

    /// Found by fuzzing: automerge 0.12 panics parsing this chunk (a bundle chunk whose
    /// column runs past its end). hearth must refuse it, not panic.
    #[test]
    fn a_chunk_that_makes_automerge_panic_is_refused() {
        let bytes = hex::decode("856f4a837dda677103c40101d7b1f3de34428cd9584e9bb017106353696565020202020202020202020202020202020202020201012701856f4a831ada677101c40101cfb1f3b09e02020202020210bdfacb726f019d2c6e99d308013b02041523320142045607572c70027f0103007f0103047c1065333d6234373463333661396e3365657a067eec4f3cdb64120aa9a3b1010400000110974699a6466167726510bdfa76cb6f9d2c6e99d30823040204152934974699a699d30801040204152934018301c40101cfb1f3b09e00fd").unwrap();
        assert!(parse_canonical_change(bytes).is_none());
    }

    fn member(n: u8) -> MemberId {
        MemberId([n; 16])
    }

    /// The creator's (member 1's) document with its first change, and that change.
    fn created() -> (GroupDocument, Vec<Change>) {
        let mut a = GroupDocument::new(actor(1));
        let first = a.init("Thursday circle", "Support each other").unwrap();
        (a, first)
    }

    /// A member's copy of the document, made from `changes`.
    fn joined(n: u8, changes: &[Change]) -> GroupDocument {
        let mut d = GroupDocument::new(actor(n));
        d.apply(changes.to_vec()).unwrap();
        d
    }

    fn id(n: u8, i: u8) -> String {
        agreement_id(&member(n), [i; 8])
    }

    /// The container of `d` and the object of the agreement at `key`.
    fn objects(d: &GroupDocument, key: &str) -> (automerge::ObjId, automerge::ObjId) {
        let container = d.agreements().unwrap();
        let record = d.doc.get(&container, key).unwrap().unwrap().1;
        (container, record)
    }

    #[test]
    fn concurrent_agreements_both_survive() {
        let (mut a, base) = created();
        let mut b = joined(2, &base);
        let from_a = a.insert_agreement(&id(1, 1), "What is said here stays here", 1);
        let from_b = b.insert_agreement(&id(2, 1), "Phones away", 2);
        a.apply(from_b.unwrap()).unwrap();
        b.apply(from_a.unwrap()).unwrap();
        assert_eq!(a.read(), b.read());
        let read = a.read();
        assert_eq!(read.agreements.len(), 2);
        assert_eq!(read.agreements[&id(1, 1)].author, member(1));
        assert_eq!(read.agreements[&id(2, 1)].author, member(2));
    }

    #[test]
    fn one_agreement_and_the_name_read_alone_match_the_whole_read() {
        let (mut a, _) = created();
        a.insert_agreement(&id(1, 1), "we listen", 7).unwrap();
        let expected = AgreementRecord {
            text: "we listen".into(),
            author: member(1),
            created_at: 7,
        };
        assert_eq!(a.name(), "Thursday circle");
        assert_eq!(a.agreement(&id(1, 1)), Some(expected.clone()));
        assert_eq!(a.read().agreements[&id(1, 1)], expected);
        assert_eq!(a.agreement("missing"), None);
        assert_eq!(GroupDocument::new(actor(2)).agreement(&id(1, 1)), None);
    }

    #[test]
    fn an_agreement_needs_the_creators_container() {
        let mut d = GroupDocument::new(actor(2));
        assert!(matches!(
            d.insert_agreement(&id(2, 1), "x", 1),
            Err(DocError::NoAgreements)
        ));
    }

    #[test]
    fn save_load_round_trip() {
        let (mut a, _) = created();
        a.insert_agreement(&id(1, 1), "kept", 1).unwrap();
        let loaded = GroupDocument::load(&a.save(), actor(2)).unwrap();
        assert_eq!(loaded.read(), a.read());
    }

    /// Every change honest code writes keeps the rules, on every device that judges it.
    #[test]
    fn honest_writes_keep_the_rules() {
        let (mut a, first) = created();
        let mut b = joined(2, &first);
        let mut rules = Rules::new(&member(1));
        assert!(rules.allow(&first));
        let from_b = b.insert_agreement(&id(2, 1), "Phones away", 2).unwrap();
        let from_a = a.insert_agreement(&id(1, 1), "Start on time", 3).unwrap();
        assert!(rules.allow(&from_b));
        assert!(rules.allow(&from_a));
        // A member who joined with a snapshot judges the same way.
        let mut snapshot = Rules::of_document(&member(1), &b);
        assert!(snapshot.allow(&first) && snapshot.allow(&from_a));
        b.apply(from_a).unwrap();
        assert!(snapshot.allow(&b.insert_agreement(&id(2, 2), "Breathe", 4).unwrap()));
    }

    /// What the code before owned ids wrote: 16-hex ids and an `author` field, which is
    /// now ignored (the reader takes the author from the op that made the record).
    #[test]
    fn records_written_before_owned_ids_keep_the_rules_and_read_their_real_author() {
        use automerge::transaction::Transactable;
        let (a, first) = created();
        let mut b = joined(2, &first);
        let container = a.agreements().unwrap();
        let record = b
            .doc
            .put_object(&container, "0123456789abcdef", ObjType::Map)
            .unwrap();
        b.doc.put(&record, "text", "old").unwrap();
        b.doc.put(&record, "author", member(1).to_hex()).unwrap();
        b.doc.put(&record, "created_at", 5).unwrap();
        let old = b.commit();
        let mut rules = Rules::new(&member(1));
        assert!(rules.allow(&first) && rules.allow(&old));
        assert_eq!(b.agreement("0123456789abcdef").unwrap().author, member(2));
    }

    /// Member 3 (not the creator) crafts changes with its own actor id: each breaks a rule.
    #[test]
    fn operations_the_rules_forbid_are_refused() {
        use automerge::transaction::Transactable;
        let (mut a, first) = created();
        let b_first = joined(2, &first)
            .insert_agreement(&id(2, 1), "mine", 1)
            .unwrap();
        a.apply(b_first.clone()).unwrap();
        let mut rules = Rules::new(&member(1));
        assert!(rules.allow(&first) && rules.allow(&b_first));
        let (container, theirs) = objects(&a, &id(2, 1));
        type Attempt<'a> = Box<dyn Fn(&mut AutoCommit) + 'a>;
        let attempts: Vec<(&str, Attempt)> = vec![
            (
                "edit another's record",
                Box::new(|d| d.put(&theirs, "text", "x").unwrap()),
            ),
            (
                "delete another's record",
                Box::new(|d| d.delete(&container, id(2, 1)).unwrap()),
            ),
            (
                "add under another's id",
                Box::new(|d| {
                    d.put_object(&container, id(2, 9), ObjType::Map).unwrap();
                }),
            ),
            (
                "a scalar in the container",
                Box::new(|d| d.put(&container, id(3, 1), 1).unwrap()),
            ),
            (
                "set the name",
                Box::new(|d| d.put(automerge::ROOT, "name", "x").unwrap()),
            ),
            (
                "a new root key",
                Box::new(|d| d.put(automerge::ROOT, "roles", "x").unwrap()),
            ),
            (
                "replace the container",
                Box::new(|d| {
                    d.put_object(automerge::ROOT, AGREEMENTS, ObjType::Map)
                        .unwrap();
                }),
            ),
            (
                "delete the container",
                Box::new(|d| d.delete(automerge::ROOT, AGREEMENTS).unwrap()),
            ),
        ];
        for (what, attempt) in attempts {
            let mut c = joined(3, &[first.clone(), b_first.clone()].concat());
            attempt(&mut c.doc);
            let crafted = c.commit();
            assert!(!rules.clone().allow(&crafted), "{what} was allowed");
        }
        // The creator may not make a second container later either.
        a.doc
            .put_object(automerge::ROOT, AGREEMENTS, ObjType::Map)
            .unwrap();
        assert!(!rules.allow(&a.commit()));
    }

    #[test]
    fn malformed_fields_from_a_member_do_not_make_the_group_unreadable() {
        use automerge::transaction::Transactable;
        let (mut a, _) = created();
        a.insert_agreement(&id(1, 1), "kept", 1).unwrap();
        let container = a.agreements().unwrap();
        a.doc.put(&container, "bad", 42).unwrap();
        let odd = a.doc.put_object(&container, "odd", ObjType::Map).unwrap();
        a.doc.put(&odd, "text", 1).unwrap();
        a.doc.put(automerge::ROOT, "purpose", 7).unwrap();
        a.doc.commit();
        let read = a.read();
        assert_eq!(read.name, "Thursday circle");
        assert_eq!(read.purpose, "");
        assert_eq!(read.agreements.keys().collect::<Vec<_>>(), [&id(1, 1)]);
        // A container replaced with a string (the rules forbid it; a snapshot may hold
        // anything) hides the agreements, but the group still reads.
        a.doc.put(automerge::ROOT, AGREEMENTS, "oops").unwrap();
        a.doc.commit();
        assert!(a.read().agreements.is_empty());
    }

    /// A crafted document (found by fuzzing) on which automerge's own loader panics: it must
    /// come back as an error, not take the daemon down.
    #[test]
    fn a_snapshot_that_panics_automerge_is_an_error() {
        let crafted = hex::decode(
            "856f4a830aa9c1b300bb010110635269eb067eec4f3cdb64120aa9a3b101105c6071e7c30236706d\
             b9380403d864626939e27a75e1d21e780f808af13bd6060102030213022302400256020a01040206\
             15332102230234014208560957038001027f007f017f077f007f007f070003040000037f01030479\
             0a61677265656d656e7473046e616d65077075727041736502613106617574686f720a6372656174\
             65645f6174047465787407000701077f0002017f0003017f3902067c00161416780374070000",
        )
        .unwrap();
        assert!(std::panic::catch_unwind(|| AutoCommit::load(&crafted)).is_err());
        assert!(matches!(
            GroupDocument::load(&crafted, actor(1)),
            Err(DocError::Panicked)
        ));
    }

    #[test]
    fn garbage_snapshot_is_an_error() {
        assert!(GroupDocument::load(b"not automerge", actor(1)).is_err());
    }
}

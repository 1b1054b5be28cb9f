//! The group's shared document: an automerge document mapped with autosurgeon.
//!
//! Every device writes with the fixed actor id of its member id, so each change is
//! attributable to exactly one member and can be checked against that member's signed
//! envelopes.

use std::collections::BTreeMap;

use automerge::{ActorId, AutoCommit, Change};
use autosurgeon::{Hydrate, Reconcile, reconcile};

/// Longest group name accepted.
pub const MAX_NAME_LEN: usize = 200;
/// Longest purpose accepted (the practice asks for twelve words or fewer; this is a hard cap).
pub const MAX_PURPOSE_LEN: usize = 1_000;
/// Longest agreement text accepted.
pub const MAX_AGREEMENT_LEN: usize = 4_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Reconcile, Hydrate)]
pub struct GroupDoc {
    #[autosurgeon(missing = "Default::default")]
    pub name: String,
    #[autosurgeon(missing = "Default::default")]
    pub purpose: String,
    /// Keyed by agreement id, so concurrent additions on different devices all survive.
    #[autosurgeon(missing = "Default::default")]
    pub agreements: BTreeMap<String, AgreementRecord>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Reconcile, Hydrate)]
pub struct AgreementRecord {
    pub text: String,
    /// Member id (hex) of the author.
    pub author: String,
    /// Author's wall clock, seconds since the Unix epoch: for display only.
    pub created_at: i64,
}

/// Errors are boxed: automerge's are large and these travel through every write path.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("the group document does not have the expected shape: {0}")]
    Shape(Box<autosurgeon::HydrateError>),
    #[error("could not write to the group document: {0}")]
    Write(Box<autosurgeon::ReconcileError>),
    #[error("automerge rejected the data: {0}")]
    Automerge(Box<automerge::AutomergeError>),
    /// automerge panicked on the data. The document it was working on may be
    /// inconsistent and must be rebuilt.
    #[error("automerge could not process the data (it is malformed)")]
    Panicked,
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

impl From<autosurgeon::HydrateError> for DocError {
    fn from(e: autosurgeon::HydrateError) -> Self {
        DocError::Shape(Box::new(e))
    }
}
impl From<autosurgeon::ReconcileError> for DocError {
    fn from(e: autosurgeon::ReconcileError) -> Self {
        DocError::Write(Box::new(e))
    }
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

    /// The current state. Lenient by design: any member can write any automerge
    /// operation, so a field of the wrong type reads as its default and a malformed
    /// agreement is skipped, rather than one member making the group unreadable.
    pub fn read(&self) -> Result<GroupDoc, DocError> {
        use automerge::{ObjType, ReadDoc};
        let text = |prop: &str| {
            autosurgeon::hydrate_prop::<_, Option<String>, _, _>(&self.doc, automerge::ROOT, prop)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        let mut agreements = BTreeMap::new();
        if let Ok(Some((automerge::Value::Object(ObjType::Map), obj))) =
            self.doc.get(automerge::ROOT, "agreements")
        {
            for key in self.doc.keys(&obj) {
                if let Ok(record) = autosurgeon::hydrate_prop::<_, AgreementRecord, _, _>(
                    &self.doc,
                    &obj,
                    key.as_str(),
                ) {
                    agreements.insert(key, record);
                }
            }
        }
        Ok(GroupDoc {
            name: text("name"),
            purpose: text("purpose"),
            agreements,
        })
    }

    /// The group's name, read without the rest of the document.
    pub fn name(&self) -> String {
        autosurgeon::hydrate_prop::<_, Option<String>, _, _>(&self.doc, automerge::ROOT, "name")
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// One agreement by id, read without the rest of the document (a malformed entry
    /// reads as absent, as in [`Self::read`]).
    pub fn agreement(&self, id: &str) -> Option<AgreementRecord> {
        use automerge::{ObjType, ReadDoc};
        match self.doc.get(automerge::ROOT, "agreements") {
            Ok(Some((automerge::Value::Object(ObjType::Map), obj))) => {
                autosurgeon::hydrate_prop::<_, Option<AgreementRecord>, _, _>(&self.doc, &obj, id)
                    .ok()
                    .flatten()
            }
            _ => None,
        }
    }

    /// Applies `edit` to the whole current state and returns the automerge change it made
    /// (none if it changed nothing). Costs a pass over the document: for setting up a
    /// group; frequent actions use a targeted method such as [`Self::insert_agreement`].
    pub fn edit(&mut self, edit: impl FnOnce(&mut GroupDoc)) -> Result<Vec<Change>, DocError> {
        let mut state = self.read()?;
        edit(&mut state);
        reconcile(&mut self.doc, &state)?;
        Ok(self.commit())
    }

    /// Adds one agreement, touching only its own entry (constant cost in the group's size).
    pub fn insert_agreement(
        &mut self,
        id: &str,
        record: &AgreementRecord,
    ) -> Result<Vec<Change>, DocError> {
        use automerge::{ObjType, ReadDoc, transaction::Transactable};
        let agreements = match self.doc.get(automerge::ROOT, "agreements")? {
            Some((automerge::Value::Object(ObjType::Map), obj)) => obj,
            _ => self
                .doc
                .put_object(automerge::ROOT, "agreements", ObjType::Map)?,
        };
        autosurgeon::reconcile_prop(&mut self.doc, agreements, id, record)?;
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

    #[test]
    fn concurrent_agreements_both_survive() {
        let mut a = GroupDocument::new(actor(1));
        let base = a
            .edit(|d| {
                d.name = "Thursday circle".into();
            })
            .unwrap();
        let mut b = GroupDocument::new(actor(2));
        b.apply(base).unwrap();
        let from_a = a
            .edit(|d| {
                d.agreements.insert(
                    "a1".into(),
                    AgreementRecord {
                        text: "What is said here stays here".into(),
                        author: "a".into(),
                        created_at: 1,
                    },
                );
            })
            .unwrap();
        let from_b = b
            .edit(|d| {
                d.agreements.insert(
                    "b1".into(),
                    AgreementRecord {
                        text: "Phones away".into(),
                        author: "b".into(),
                        created_at: 2,
                    },
                );
            })
            .unwrap();
        a.apply(from_b).unwrap();
        b.apply(from_a).unwrap();
        assert_eq!(a.read().unwrap(), b.read().unwrap());
        assert_eq!(a.read().unwrap().agreements.len(), 2);
    }

    #[test]
    fn edit_that_changes_nothing_makes_no_change() {
        let mut a = GroupDocument::new(actor(1));
        a.edit(|d| d.name = "x".into()).unwrap();
        assert!(a.edit(|_| {}).unwrap().is_empty());
    }

    #[test]
    fn one_agreement_and_the_name_read_alone_match_the_whole_read() {
        let mut a = GroupDocument::new(actor(1));
        a.edit(|d| d.name = "Circle".into()).unwrap();
        let record = AgreementRecord {
            text: "we listen".into(),
            author: "ab".into(),
            created_at: 7,
        };
        a.insert_agreement("x1", &record).unwrap();
        assert_eq!(a.name(), "Circle");
        assert_eq!(a.agreement("x1"), Some(record));
        assert_eq!(a.agreement("missing"), None);
        assert_eq!(GroupDocument::new(actor(2)).agreement("x1"), None);
    }

    #[test]
    fn save_load_round_trip() {
        let mut a = GroupDocument::new(actor(1));
        a.edit(|d| d.purpose = "Support each other".into()).unwrap();
        let loaded = GroupDocument::load(&a.save(), actor(2)).unwrap();
        assert_eq!(loaded.read().unwrap(), a.read().unwrap());
    }

    #[test]
    fn malformed_fields_from_a_member_do_not_make_the_group_unreadable() {
        use automerge::transaction::Transactable;
        let mut a = GroupDocument::new(actor(1));
        a.edit(|d| d.name = "Circle".into()).unwrap();
        a.insert_agreement(
            "good",
            &AgreementRecord {
                text: "kept".into(),
                author: "a".into(),
                created_at: 1,
            },
        )
        .unwrap();
        let agreements = match automerge::ReadDoc::get(&a.doc, automerge::ROOT, "agreements") {
            Ok(Some((_, obj))) => obj,
            other => panic!("no agreements map: {other:?}"),
        };
        a.doc.put(&agreements, "bad", 42).unwrap();
        a.doc.put(automerge::ROOT, "purpose", 7).unwrap();
        a.doc.commit();
        let read = a.read().unwrap();
        assert_eq!(read.name, "Circle");
        assert_eq!(read.purpose, "");
        assert_eq!(read.agreements.keys().collect::<Vec<_>>(), ["good"]);
        // A member who replaces the whole map with a string hides agreements but the
        // group still reads, and a new agreement repairs the map.
        a.doc.put(automerge::ROOT, "agreements", "oops").unwrap();
        a.doc.commit();
        assert!(a.read().unwrap().agreements.is_empty());
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

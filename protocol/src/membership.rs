//! Who belongs to a group, derived only from signed, sealed membership operations.
//!
//! The root of trust is [`GroupInfo`]: the group id is a hash of the creator's signing key
//! and a nonce, so anyone holding the id can check who created the group. The creator is
//! the first facilitator; a facilitator's `Add` admits a member. Roles only grow in this
//! version, so applying the same set of operations in any causal order gives the same
//! membership.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::Role;
use crate::identity::PublicIdentity;
use crate::ids::{GroupId, MemberId};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub identity: PublicIdentity,
    pub role: Role,
}

/// One facilitator act, as recorded from an author's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct AddOp {
    author: MemberId,
    member: [u8; 64],
    role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    creator: PublicIdentity,
    /// Every add seen, effective or not yet: an add by someone who is not (yet) a
    /// facilitator takes effect if and when its author becomes one.
    ops: std::collections::BTreeSet<AddOp>,
    members: BTreeMap<MemberId, Member>,
}

impl Membership {
    pub fn new(info: &GroupInfo) -> Membership {
        let mut m = Membership {
            creator: info.creator,
            ops: Default::default(),
            members: BTreeMap::new(),
        };
        m.recompute();
        m
    }

    /// Records an add found in `author`'s log. Returns whether the membership changed.
    ///
    /// The membership is the least fixpoint of all recorded adds: start from the creator
    /// as facilitator and apply every add whose author is a facilitator until nothing
    /// changes. Roles never shrink in this version, so the fixpoint is the same whatever
    /// order the adds arrived in.
    pub fn record_add(&mut self, author: MemberId, member: PublicIdentity, role: Role) -> bool {
        let op = AddOp {
            author,
            member: member.to_bytes(),
            role,
        };
        if !self.ops.insert(op) {
            return false;
        }
        let before = self.members.clone();
        self.recompute();
        before != self.members
    }

    fn recompute(&mut self) {
        let mut members = BTreeMap::new();
        members.insert(
            self.creator.member_id(),
            Member {
                identity: self.creator,
                role: Role::Facilitator,
            },
        );
        loop {
            let mut changed = false;
            for op in &self.ops {
                let author_is_facilitator = members
                    .get(&op.author)
                    .is_some_and(|m: &Member| m.role == Role::Facilitator);
                if !author_is_facilitator {
                    continue;
                }
                let identity = identity_from_bytes(&op.member);
                let entry = members.entry(identity.member_id()).or_insert_with(|| {
                    changed = true;
                    Member {
                        identity,
                        role: op.role,
                    }
                });
                if op.role == Role::Facilitator && entry.role != Role::Facilitator {
                    entry.role = Role::Facilitator;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        self.members = members;
    }

    pub fn get(&self, id: &MemberId) -> Option<&Member> {
        self.members.get(id)
    }

    pub fn is_member(&self, id: &MemberId) -> bool {
        self.members.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&MemberId, &Member)> {
        self.members.iter()
    }
}

fn identity_from_bytes(bytes: &[u8; 64]) -> PublicIdentity {
    let mut signing = [0u8; 32];
    let mut agreement = [0u8; 32];
    signing.copy_from_slice(&bytes[..32]);
    agreement.copy_from_slice(&bytes[32..]);
    PublicIdentity { signing, agreement }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::DeviceKeys;
    use proptest::prelude::*;
    use rand_core::OsRng;

    fn info(creator: &DeviceKeys) -> GroupInfo {
        let nonce = [9; 16];
        GroupInfo {
            group_id: GroupId::derive(&creator.public().signing, &nonce),
            creator: creator.public(),
            nonce,
        }
    }

    #[test]
    fn group_info_is_self_certifying() {
        let creator = DeviceKeys::generate(&mut OsRng);
        let mut gi = info(&creator);
        assert!(gi.is_authentic());
        gi.creator = DeviceKeys::generate(&mut OsRng).public();
        assert!(!gi.is_authentic());
    }

    #[test]
    fn only_facilitators_add() {
        let creator = DeviceKeys::generate(&mut OsRng);
        let b = DeviceKeys::generate(&mut OsRng).public();
        let c = DeviceKeys::generate(&mut OsRng).public();
        let stranger = DeviceKeys::generate(&mut OsRng).member_id();
        let mut m = Membership::new(&info(&creator));
        assert!(!m.record_add(stranger, b, Role::Member));
        assert!(m.record_add(creator.member_id(), b, Role::Member));
        assert!(!m.record_add(b.member_id(), c, Role::Member));
        assert_eq!(m.len(), 2);
        // b's earlier add takes effect once b is made a facilitator.
        assert!(m.record_add(creator.member_id(), b, Role::Facilitator));
        assert!(m.is_member(&c.member_id()));
    }

    proptest! {
        /// Any order and duplication of a set of adds yields the same membership.
        #[test]
        fn adds_converge_in_any_order(
            ops in proptest::collection::vec((0usize..6, 0usize..6, any::<bool>()), 1..20),
            seed in any::<u64>(),
        ) {
            let keys: Vec<DeviceKeys> = (0..6).map(|_| DeviceKeys::generate(&mut OsRng)).collect();
            let gi = info(&keys[0]);
            // Author 0 is the creator; ops name (author, target, facilitator?).
            let ops: Vec<(MemberId, PublicIdentity, Role)> = ops
                .into_iter()
                .map(|(a, t, f)| (
                    keys[a].member_id(),
                    keys[t].public(),
                    if f { Role::Facilitator } else { Role::Member },
                ))
                .collect();
            let run = |order: &[usize]| {
                let mut m = Membership::new(&gi);
                for &i in order {
                    let (a, t, r) = ops[i];
                    m.record_add(a, t, r);
                }
                m.iter().map(|(id, mem)| (*id, mem.role)).collect::<Vec<_>>()
            };
            let forward: Vec<usize> = (0..ops.len()).collect();
            let mut shuffled: Vec<usize> = forward.iter().chain(forward.iter()).copied().collect();
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(run(&forward), run(&shuffled));
        }
    }
}

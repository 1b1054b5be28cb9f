//! Meeting a peer: each side reveals its member identity in a group only to the members it
//! counts as current, and learns the peer's only if the peer counts it as one.
//!
//! Both sides send a fresh nonce and a fresh X25519 key `E`. The transcript binds both
//! libp2p peer ids (which Noise authenticated), both nonces and both `E`. Each side then
//! sends one **reveal slot** per (group, member it counts as current in that group):
//! its identity in the group and a signature over the transcript, sealed under a key from
//! X25519 of its `E` with that member's agreement key. Only the holder of that member's
//! secret can find or open the slot; to anyone else slots are random bytes, padded to a
//! power of two. A removed member, whom no current member addresses, learns nothing, and
//! a stranger learns only the rough number of slots. A group is shared in the session only
//! when each side opened a slot from the other: each then knows the other counts it as a
//! member, and the peer's identity is one it counts as a member too.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use rand_core::CryptoRngCore;
use x25519_dalek::{PublicKey as DhPublic, StaticSecret};
use zeroize::Zeroizing;

use crate::crypto::{self, SecretKey, labels};
use crate::identity::{MemberKeys, PublicIdentity};
use crate::ids::GroupId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Dialer,
    Listener,
}

impl Side {
    fn byte(self) -> u8 {
        match self {
            Side::Dialer => 0,
            Side::Listener => 1,
        }
    }
    pub fn other(self) -> Side {
        match self {
            Side::Dialer => Side::Listener,
            Side::Listener => Side::Dialer,
        }
    }
}

/// Bytes of the lookup that lets a recipient find its slot without trying each one.
const LOOKUP_LEN: usize = 16;
/// Identity (64) and signature (64), sealed.
const SEALED_LEN: usize = 64 + 64 + crypto::TAG_LEN;
/// One reveal slot on the wire.
pub const SLOT_LEN: usize = LOOKUP_LEN + SEALED_LEN;
/// Slots are padded to a power of two, at least this many, so a peer learns only a rough
/// count of the sender's groups and members.
pub const MIN_SLOTS: usize = 8;

/// This side's X25519 key for one session. Used for that session only; wiped on drop.
pub struct SessionKey {
    secret: StaticSecret,
    public: [u8; 32],
}

impl SessionKey {
    pub fn generate(rng: &mut impl CryptoRngCore) -> SessionKey {
        let secret = StaticSecret::random_from_rng(rng);
        let public = DhPublic::from(&secret).to_bytes();
        SessionKey { secret, public }
    }

    pub fn public(&self) -> [u8; 32] {
        self.public
    }
}

/// What the two sides said before anything else, in dialer-then-listener order.
pub struct Hellos<'a> {
    pub dialer_peer: &'a [u8],
    pub listener_peer: &'a [u8],
    pub dialer_nonce: &'a [u8; 32],
    pub listener_nonce: &'a [u8; 32],
    pub dialer_key: &'a [u8; 32],
    pub listener_key: &'a [u8; 32],
}

/// The hash both sides bind their reveals to.
pub fn transcript(h: &Hellos<'_>) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(labels::SESSION_TRANSCRIPT);
    for part in [h.dialer_peer, h.listener_peer] {
        hasher.update(&(part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    for part in [
        h.dialer_nonce,
        h.listener_nonce,
        h.dialer_key,
        h.listener_key,
    ] {
        hasher.update(part);
    }
    *hasher.finalize().as_bytes()
}

/// What `sender` signs to reveal its identity in `group` in the session `transcript`.
fn reveal_message(transcript: &[u8; 32], sender: Side, group: &GroupId) -> Vec<u8> {
    let mut m = transcript.to_vec();
    m.push(sender.byte());
    m.extend_from_slice(group.as_bytes());
    m
}

/// The lookup and key of the slot `sender` addresses to the member with agreement key
/// `recipient` in `group`, from their X25519 secret `shared`; `None` if the exchange was
/// with a low-order point (it would give a value anyone can compute).
fn slot_keys(
    shared: &[u8; 32],
    transcript: &[u8; 32],
    sender: Side,
    group: &GroupId,
    sender_key: &[u8; 32],
    recipient: &[u8; 32],
) -> Option<([u8; LOOKUP_LEN], SecretKey)> {
    if crypto::ct_eq(shared, &[0; 32]) {
        return None;
    }
    let context: [&[u8]; 5] = [
        transcript,
        &[sender.byte()],
        group.as_bytes(),
        sender_key,
        recipient,
    ];
    let derive = |label: &[u8]| {
        let mut info: Vec<&[u8]> = vec![label];
        info.extend_from_slice(&context);
        crypto::derive_key(shared, &info)
    };
    let mut lookup = [0u8; LOOKUP_LEN];
    lookup.copy_from_slice(&derive(labels::SESSION_REVEAL_LOOKUP).expose()[..LOOKUP_LEN]);
    Some((lookup, derive(labels::SESSION_REVEAL_KEY)))
}

/// AEAD under a key used for one slot only, so a fixed nonce is safe.
fn cipher(key: &SecretKey) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(key.expose().into())
}

/// Seals `me`'s identity in `group`, with its signature over the transcript, for each of
/// `recipients`; recipients with an unusable agreement key get no slot.
pub fn seal_reveals(
    me: &MemberKeys,
    group: &GroupId,
    session: &SessionKey,
    transcript: &[u8; 32],
    sender: Side,
    recipients: &[PublicIdentity],
) -> Vec<[u8; SLOT_LEN]> {
    let signature = me.sign(
        labels::SIG_SESSION,
        &reveal_message(transcript, sender, group),
    );
    let mut plaintext = Zeroizing::new([0u8; 128]);
    plaintext[..64].copy_from_slice(&me.public().to_bytes());
    plaintext[64..].copy_from_slice(&signature);
    recipients
        .iter()
        .filter_map(|r| {
            let shared = Zeroizing::new(
                session
                    .secret
                    .diffie_hellman(&DhPublic::from(r.agreement))
                    .to_bytes(),
            );
            let (lookup, key) = slot_keys(
                &shared,
                transcript,
                sender,
                group,
                &session.public,
                &r.agreement,
            )?;
            let sealed = cipher(&key)
                .encrypt(
                    &Nonce::default(),
                    Payload {
                        msg: &plaintext[..],
                        aad: &lookup,
                    },
                )
                .expect("ChaCha20-Poly1305 cannot fail on an in-memory buffer");
            let mut slot = [0u8; SLOT_LEN];
            slot[..LOOKUP_LEN].copy_from_slice(&lookup);
            slot[LOOKUP_LEN..].copy_from_slice(&sealed);
            Some(slot)
        })
        .collect()
}

/// Keeps a random `max` of `slots` if there are more, pads them with random ones to a power
/// of two (at least [`MIN_SLOTS`], at most `max`) and shuffles them, so neither their
/// number nor their order tells which groups they belong to.
pub fn pad_slots(slots: &mut Vec<[u8; SLOT_LEN]>, max: usize, rng: &mut impl CryptoRngCore) {
    shuffle(slots, rng);
    slots.truncate(max);
    let target = slots.len().max(MIN_SLOTS).next_power_of_two().min(max);
    while slots.len() < target {
        let mut filler = [0u8; SLOT_LEN];
        rng.fill_bytes(&mut filler);
        slots.push(filler);
    }
    shuffle(slots, rng);
}

/// Fisher-Yates with the caller's generator.
fn shuffle<T>(items: &mut [T], rng: &mut impl CryptoRngCore) {
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// How this device finds and opens the slot a peer addressed to its membership in `group`.
pub struct Opener {
    group: GroupId,
    lookup: [u8; LOOKUP_LEN],
    key: SecretKey,
    transcript: [u8; 32],
    sender: Side,
}

impl Opener {
    /// `None` if the peer's session key is a low-order point.
    pub fn new(
        me: &MemberKeys,
        group: &GroupId,
        their_key: &[u8; 32],
        transcript: &[u8; 32],
        sender: Side,
    ) -> Option<Opener> {
        let shared = me.agree(their_key);
        let (lookup, key) = slot_keys(
            &shared,
            transcript,
            sender,
            group,
            their_key,
            &me.public().agreement,
        )?;
        Some(Opener {
            group: *group,
            lookup,
            key,
            transcript: *transcript,
            sender,
        })
    }

    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The peer's identity in this group, if one of `slots` is addressed to this
    /// membership, opens, and carries a valid signature over this session.
    pub fn open(&self, slots: &[[u8; SLOT_LEN]]) -> Option<PublicIdentity> {
        let slot = slots
            .iter()
            .find(|s| crypto::ct_eq(&s[..LOOKUP_LEN], &self.lookup))?;
        let plain = cipher(&self.key)
            .decrypt(
                &Nonce::default(),
                Payload {
                    msg: &slot[LOOKUP_LEN..],
                    aad: &self.lookup,
                },
            )
            .ok()
            .map(Zeroizing::new)?;
        let identity = PublicIdentity::from_bytes(plain[..64].try_into().ok()?);
        let signature: [u8; 64] = plain[64..128].try_into().ok()?;
        identity
            .verify(
                labels::SIG_SESSION,
                &reveal_message(&self.transcript, self.sender, &self.group),
                &signature,
            )
            .ok()?;
        Some(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    struct Pair {
        dialer: SessionKey,
        listener: SessionKey,
        transcript: [u8; 32],
    }

    fn pair() -> Pair {
        let dialer = SessionKey::generate(&mut OsRng);
        let listener = SessionKey::generate(&mut OsRng);
        let transcript = transcript(&Hellos {
            dialer_peer: b"d",
            listener_peer: b"l",
            dialer_nonce: &[1; 32],
            listener_nonce: &[2; 32],
            dialer_key: &dialer.public(),
            listener_key: &listener.public(),
        });
        Pair {
            dialer,
            listener,
            transcript,
        }
    }

    #[test]
    fn only_the_addressed_member_opens_a_reveal_and_learns_the_identity() {
        let p = pair();
        let g = GroupId([1; 16]);
        let (alice, bob, carol) = (
            MemberKeys::generate(&mut OsRng),
            MemberKeys::generate(&mut OsRng),
            MemberKeys::generate(&mut OsRng),
        );
        // Alice (dialing) addresses Bob only.
        let mut slots = seal_reveals(
            &alice,
            &g,
            &p.dialer,
            &p.transcript,
            Side::Dialer,
            &[bob.public()],
        );
        pad_slots(&mut slots, 1024, &mut OsRng);
        assert_eq!(slots.len(), MIN_SLOTS);
        let opener = |who: &MemberKeys, group: &GroupId, t: &[u8; 32], side: Side| {
            Opener::new(who, group, &p.dialer.public(), t, side).unwrap()
        };
        assert_eq!(
            opener(&bob, &g, &p.transcript, Side::Dialer).open(&slots),
            Some(alice.public())
        );
        // Carol, whom Alice does not count as a member, finds nothing.
        assert_eq!(
            opener(&carol, &g, &p.transcript, Side::Dialer).open(&slots),
            None
        );
        // Nor does Bob under another group, session or side.
        assert_eq!(
            opener(&bob, &GroupId([2; 16]), &p.transcript, Side::Dialer).open(&slots),
            None
        );
        assert_eq!(opener(&bob, &g, &[9; 32], Side::Dialer).open(&slots), None);
        assert_eq!(
            opener(&bob, &g, &p.transcript, Side::Listener).open(&slots),
            None
        );
    }

    #[test]
    fn a_reveal_relayed_into_another_session_does_not_open() {
        let (a, b) = (pair(), pair());
        let g = GroupId([1; 16]);
        let (alice, bob) = (
            MemberKeys::generate(&mut OsRng),
            MemberKeys::generate(&mut OsRng),
        );
        let slots = seal_reveals(
            &alice,
            &g,
            &a.dialer,
            &a.transcript,
            Side::Dialer,
            &[bob.public()],
        );
        let other = Opener::new(&bob, &g, &a.dialer.public(), &b.transcript, Side::Dialer);
        assert_eq!(other.unwrap().open(&slots), None);
        let _ = b.listener;
    }

    #[test]
    fn a_tampered_slot_opens_as_nothing() {
        let p = pair();
        let g = GroupId([1; 16]);
        let (alice, bob) = (
            MemberKeys::generate(&mut OsRng),
            MemberKeys::generate(&mut OsRng),
        );
        let mut slots = seal_reveals(
            &alice,
            &g,
            &p.listener,
            &p.transcript,
            Side::Listener,
            &[bob.public()],
        );
        slots[0][SLOT_LEN - 1] ^= 1;
        let opener = Opener::new(
            &bob,
            &g,
            &p.listener.public(),
            &p.transcript,
            Side::Listener,
        )
        .unwrap();
        assert_eq!(opener.open(&slots), None);
    }

    #[test]
    fn a_low_order_session_key_opens_nothing_and_is_sealed_to_by_no_one() {
        let p = pair();
        let g = GroupId([1; 16]);
        let bob = MemberKeys::generate(&mut OsRng);
        // The identity point has order one: every exchange with it gives zero.
        assert!(Opener::new(&bob, &g, &[0; 32], &p.transcript, Side::Dialer).is_none());
        let low = PublicIdentity::from_bytes(&{
            let mut b = bob.public().to_bytes();
            b[32..].fill(0);
            b
        });
        let alice = MemberKeys::generate(&mut OsRng);
        assert!(
            seal_reveals(&alice, &g, &p.dialer, &p.transcript, Side::Dialer, &[low]).is_empty()
        );
    }

    #[test]
    fn padding_hides_the_count_within_a_power_of_two() {
        let mut slots = vec![[0u8; SLOT_LEN]; 9];
        pad_slots(&mut slots, 1024, &mut OsRng);
        assert_eq!(slots.len(), 16);
        let mut none = Vec::new();
        pad_slots(&mut none, 1024, &mut OsRng);
        assert_eq!(none.len(), MIN_SLOTS);
        // Past the cap, a random subset is kept: every slot is as likely to stay.
        let mut many: Vec<[u8; SLOT_LEN]> = (0..40u8).map(|i| [i; SLOT_LEN]).collect();
        pad_slots(&mut many, 32, &mut OsRng);
        assert_eq!(many.len(), 32);
    }
}

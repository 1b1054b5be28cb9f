#![no_main]
//! The reveal slots a peer sends in a session handshake are opened before the peer is
//! known to be anyone: `session::Opener::new` takes the peer's session key as sent, and
//! `Opener::open` reads its slots. Input: the peer's 32-byte session key, then slots of
//! `SLOT_LEN` bytes. With the first input byte even, the slots are taken raw; with it odd,
//! the harness seals an honest slot from the member to the creator and XORs the input in,
//! so the AEAD and signature paths past a matching lookup are reached too. Opening must
//! never panic, and must give back an identity only for an untouched honest slot.

use hearth_fuzz::{FixedRng, creator, fixture, member};
use hearth_protocol::session::{self, Opener, SLOT_LEN, SessionKey, Side};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((key, rest)) = data.split_first_chunk::<32>() else {
        return;
    };
    let group = fixture().info.group_id;
    let transcript = [7u8; 32];
    let mut slots: Vec<[u8; SLOT_LEN]> = rest
        .chunks_exact(SLOT_LEN)
        .take(64)
        .map(|c| c.try_into().expect("exact chunk"))
        .collect();
    if key[0] % 2 == 0 {
        if let Some(opener) = Opener::new(creator(), &group, key, &transcript, Side::Dialer) {
            let _ = opener.open(&slots);
        }
        return;
    }
    let sender = SessionKey::generate(&mut FixedRng::new(u64::from(key[1])));
    let honest = session::seal_reveals(
        member(),
        &group,
        &sender,
        &transcript,
        Side::Dialer,
        &[creator().public()],
    );
    let mut slot = honest[0];
    let touched = rest.iter().take(SLOT_LEN).any(|b| *b != 0);
    for (s, x) in slot.iter_mut().zip(rest) {
        *s ^= x;
    }
    slots.insert(0, slot);
    let opener = Opener::new(
        creator(),
        &group,
        &sender.public(),
        &transcript,
        Side::Dialer,
    )
    .expect("an honest session key");
    let opened = opener.open(&slots[..1]);
    if !touched {
        assert_eq!(opened, Some(member().public()));
    } else {
        assert_eq!(opened, None);
    }
});

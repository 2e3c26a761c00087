//! `bundle::decode` on an arbitrary body and declared count: it never panics, never allocates
//! beyond what the body can hold, returns exactly the declared number of jobs when it succeeds,
//! and what it returns survives a round trip (encoding the pieces and decoding them again gives
//! the same bytes).
//!
//! Input layout: `[declared: 1 byte] [bundle body …]`; the seeds in
//! `fuzz/seeds/park_bundle_decode` are built that way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pagerelay::amqp::bundle;

fuzz_target!(|data: &[u8]| {
    let Some((declared, body)) = data.split_first() else {
        return;
    };
    let declared = usize::from(*declared);
    let Ok(pieces) = bundle::decode(body, declared) else {
        return;
    };
    assert_eq!(pieces.len(), declared);
    assert!(!pieces.is_empty());
    let encode = |pieces: &[bundle::Piece]| {
        bundle::encode(pieces.iter().map(|p| (&p.properties, p.body.as_slice())))
    };
    let once = encode(&pieces);
    let again = bundle::decode(&once, declared).expect("an encoded bundle decodes");
    assert_eq!(encode(&again), once);
});

//! Untrusted bytes as a miner's trail: never panic, anything accepted is canonical, and its
//! address is the hash of exactly those bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_proto::{Encode, Trail};

fuzz_target!(|data: &[u8]| {
    if let Ok(trail) = Trail::from_bytes(data) {
        assert_eq!(trail.to_bytes(), data, "accepted a non-canonical encoding");
        assert_eq!(trail.hash(), Trail::hash_bytes(data));
    }
});

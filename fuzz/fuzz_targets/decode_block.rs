//! Untrusted bytes as a block: never panic, and anything accepted is canonical.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_proto::{Block, Encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(block) = Block::from_wire(data) {
        assert_eq!(block.to_bytes(), data, "accepted a non-canonical encoding");
        let _ = block.verify_body();
        let _ = block.hash();
    }
});

//! Untrusted bytes as a signed transaction: never panic, and anything accepted is canonical.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_proto::{Encode, SignedTx};

fuzz_target!(|data: &[u8]| {
    if let Ok(tx) = SignedTx::from_wire(data) {
        assert_eq!(tx.to_bytes(), data, "accepted a non-canonical encoding");
        let _ = tx.verify("trellis-fuzz");
        let _ = tx.hash();
    }
});

//! Untrusted bytes as every message the consensus engine decodes from peers, value sync or its
//! WAL (`trellis_consensus::TrellisCodec`): never panic, and anything accepted is canonical
//! (re-encoding gives back the exact input).
//!
//! The first byte picks the message type (modulo the number of types, in the order of
//! [`decode`]'s arms); the rest is the message. Seeds: `consensus/tests/wire.rs` writes them.
#![no_main]

use arc_malachitebft_app_channel::app::consensus::{LivenessMsg, ProposedValue, SignedConsensusMsg};
use arc_malachitebft_app_channel::app::streaming::StreamMessage;
use arc_malachitebft_app_channel::app::types::codec::Codec;
use arc_malachitebft_app_channel::app::types::core::{ExtendedCommitCertificate, PolkaCertificate, ValidatorProof};
use arc_malachitebft_sync::{Request, Response, Status};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use trellis_consensus::{BlockPart, TrellisCodec, TrellisContext};

/// Decodes `bytes` as a `T`; if that succeeds, its encoding must be `bytes` again.
fn canonical<T>(bytes: &[u8])
where
    TrellisCodec: Codec<T>,
{
    let Ok(value) = Codec::<T>::decode(&TrellisCodec, Bytes::copy_from_slice(bytes)) else { return };
    let again = Codec::<T>::encode(&TrellisCodec, &value).expect("encoding a decoded message cannot fail");
    assert_eq!(&again[..], bytes, "accepted a non-canonical encoding");
}

/// Message types, in selector order (keep in step with `consensus/tests/wire.rs`).
const TYPES: u8 = 11;

fn decode(selector: u8, bytes: &[u8]) {
    match selector % TYPES {
        // Gossip (consensus network).
        0 => canonical::<SignedConsensusMsg<TrellisContext>>(bytes),
        1 => canonical::<LivenessMsg<TrellisContext>>(bytes),
        2 => canonical::<StreamMessage<BlockPart>>(bytes),
        3 => canonical::<BlockPart>(bytes),
        4 => canonical::<ValidatorProof<TrellisContext>>(bytes),
        // Value sync.
        5 => canonical::<Status<TrellisContext>>(bytes),
        6 => canonical::<Request<TrellisContext>>(bytes),
        7 => canonical::<Response<TrellisContext>>(bytes),
        // WAL entries, and the commit certificates the node stores and serves.
        8 => canonical::<ProposedValue<TrellisContext>>(bytes),
        9 => canonical::<PolkaCertificate<TrellisContext>>(bytes),
        _ => canonical::<ExtendedCommitCertificate<TrellisContext>>(bytes),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some((&selector, bytes)) = data.split_first() {
        decode(selector, bytes);
    }
});

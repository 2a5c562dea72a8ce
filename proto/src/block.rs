//! Blocks: a header committing to the parent, the transactions and the resulting state, and
//! the transactions themselves.

use serde::{Deserialize, Serialize};

use crate::codec::{decode, decode_seq, Decode, DecodeError, Encode, Reader};
use crate::crypto::{decode_chain_id, encode_chain_id, verify_batch, Address, SignatureError, SignedItem, SigningKind};
use crate::hash::{Hash, HashDomain};
use crate::merkle::MerkleTree;
use crate::tx::SignedTx;
use crate::Height;

/// Most transactions in one block.
pub const MAX_BLOCK_TXS: usize = 10_000;
/// Largest encoded block, in bytes (fits one gossip message of the consensus engine).
pub const MAX_BLOCK_BYTES: usize = 4 * 1024 * 1024;
/// Smallest possible encoded signed transaction (a `JoinJob`), used to bound lengths.
const MIN_SIGNED_TX_BYTES: usize = 32 + 8 + 8 + 1 + 8 + 64;

/// What a block commits to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    pub chain_id: String,
    pub height: Height,
    /// Proposer's clock, milliseconds since the Unix epoch; never decreases along the chain.
    pub time_ms: u64,
    /// Hash of the parent block's header (`Hash::ZERO` for height 1).
    pub parent: Hash,
    /// Merkle root over the hashes of the block's transactions, in order.
    pub tx_root: Hash,
    /// State root after executing this block.
    pub state_root: Hash,
    pub proposer: Address,
    /// The proposer's next beacon onion layer (the preimage of the layer it revealed last), or
    /// `Hash::ZERO` when it has no onion committed. Mixed into the chain's beacon; fixed in
    /// advance, so no choice of the proposer changes it.
    pub beacon_reveal: Hash,
}

impl Encode for BlockHeader {
    fn encode_to(&self, out: &mut Vec<u8>) {
        encode_chain_id(&self.chain_id, out);
        self.height.encode_to(out);
        self.time_ms.encode_to(out);
        self.parent.encode_to(out);
        self.tx_root.encode_to(out);
        self.state_root.encode_to(out);
        self.proposer.encode_to(out);
        self.beacon_reveal.encode_to(out);
    }
}

impl Decode for BlockHeader {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            chain_id: decode_chain_id(reader)?,
            height: Decode::decode_from(reader)?,
            time_ms: Decode::decode_from(reader)?,
            parent: Decode::decode_from(reader)?,
            tx_root: Decode::decode_from(reader)?,
            state_root: Decode::decode_from(reader)?,
            proposer: Decode::decode_from(reader)?,
            beacon_reveal: Decode::decode_from(reader)?,
        })
    }
}

impl BlockHeader {
    /// The block's identifier.
    pub fn hash(&self) -> Hash {
        Hash::of(HashDomain::BlockHeader, self)
    }
}

/// Why a block's body does not match its header or carries a bad signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("header tx root {header} does not match the transactions' root {computed}")]
    TxRootMismatch { header: Hash, computed: Hash },
    #[error("transaction {index}: {source}")]
    Signature { index: usize, source: SignatureError },
}

/// A header and its transactions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Block {
    pub header: BlockHeader,
    pub txs: Vec<SignedTx>,
}

impl Encode for Block {
    fn encode_to(&self, out: &mut Vec<u8>) {
        self.header.encode_to(out);
        crate::codec::encode_seq(&self.txs, out);
    }
}

impl Decode for Block {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            header: Decode::decode_from(reader)?,
            txs: decode_seq(reader, "block transactions", MAX_BLOCK_TXS, MIN_SIGNED_TX_BYTES)?,
        })
    }
}

impl Block {
    pub fn hash(&self) -> Hash {
        self.header.hash()
    }

    /// The Merkle root over `txs`' hashes, as a header's `tx_root` must be.
    pub fn compute_tx_root(txs: &[SignedTx]) -> Hash {
        let leaves: Vec<[u8; 32]> = txs.iter().map(|tx| tx.hash().0).collect();
        MerkleTree::from_data(&leaves).root()
    }

    /// Decodes a block received from outside, enforcing [`MAX_BLOCK_BYTES`].
    pub fn from_wire(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_BLOCK_BYTES {
            return Err(DecodeError::LengthTooLarge {
                what: "block",
                len: bytes.len() as u64,
                max: MAX_BLOCK_BYTES as u64,
            });
        }
        decode(bytes)
    }

    /// Checks the tx root and every transaction signature (batched) against the header's chain.
    pub fn verify_body(&self) -> Result<(), BlockError> {
        let computed = Self::compute_tx_root(&self.txs);
        if computed != self.header.tx_root {
            return Err(BlockError::TxRootMismatch { header: self.header.tx_root, computed });
        }
        let payloads: Vec<Vec<u8>> = self.txs.iter().map(|signed| signed.tx.to_bytes()).collect();
        let items: Vec<SignedItem<'_>> = self
            .txs
            .iter()
            .zip(&payloads)
            .map(|(signed, payload)| SignedItem {
                key: &signed.tx.sender,
                kind: SigningKind::Transaction,
                payload,
                signature: &signed.signature,
            })
            .collect();
        verify_batch(&self.header.chain_id, &items).map_err(|source| match source {
            SignatureError::BadSignatureInBatch { index } => BlockError::Signature { index, source },
            other => BlockError::Signature { index: 0, source: other },
        })
    }
}

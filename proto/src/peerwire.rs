//! The peer network's wire vocabulary besides blobs: the greeting two peers trade when they
//! connect ([`Hello`], over `/trellis/hello/1`) and the batches of signed transactions gossiped on
//! the chain's transaction topic ([`TxBatch`]).
//!
//! Layout (canonical encoding, [`crate::codec`]):
//!
//! ```text
//! hello     len32 ‖ chain id ‖ 32-byte genesis fingerprint ‖ u16 consensus port (0: none)
//! tx batch  u32 count ‖ count × (len32 ‖ signed transaction)
//! ```
//!
//! Guarantees: decoding never panics and allocates no more than the input justifies; a chain id
//! longer than [`crate::crypto::MAX_CHAIN_ID_LEN`], a batch of more than [`MAX_BATCH_TXS`]
//! transactions, a transaction over [`crate::tx::MAX_TX_BYTES`] and trailing bytes are errors.
//! Each transaction in a batch is carried as its own byte string so that one that does not decode
//! is still one the receiver can name; [`TxBatch::decode`] rejects the whole batch, so a peer that
//! gossips bytes that are not transactions is caught at once.

use crate::codec::{
    decode, decode_bytes, decode_string, encode_bytes, encode_len, Decode, DecodeError, Encode, Reader,
};
use crate::crypto::MAX_CHAIN_ID_LEN;
use crate::hash::Hash;
use crate::tx::{SignedTx, MAX_TX_BYTES};

/// Most transactions in one gossiped batch.
pub const MAX_BATCH_TXS: usize = 2000;

/// What a peer says about itself when it connects: which chain it follows (the id and the
/// fingerprint of its genesis, so that two chains that share an id do not mix) and the TCP port
/// its consensus network listens on (the IP is the one the connection came from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub chain_id: String,
    pub genesis: Hash,
    /// 0 when the peer runs no consensus network that others may dial.
    pub consensus_port: u16,
}

impl Encode for Hello {
    fn encode_to(&self, out: &mut Vec<u8>) {
        encode_bytes(self.chain_id.as_bytes(), out);
        self.genesis.encode_to(out);
        self.consensus_port.encode_to(out);
    }
}

impl Decode for Hello {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Hello {
            chain_id: decode_string(reader, "chain id", MAX_CHAIN_ID_LEN)?,
            genesis: Hash::decode_from(reader)?,
            consensus_port: u16::decode_from(reader)?,
        })
    }
}

impl Hello {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode(bytes)
    }

    /// What a tool that follows no chain says (it may fetch blobs, and is not routed to).
    pub fn client() -> Self {
        Hello { chain_id: String::new(), genesis: Hash::ZERO, consensus_port: 0 }
    }

    /// Whether `other` follows the same chain as `self`.
    pub fn same_chain(&self, other: &Hello) -> bool {
        self.chain_id == other.chain_id && self.genesis == other.genesis
    }
}

/// Signed transactions gossiped together.
#[derive(Debug, Clone, PartialEq)]
pub struct TxBatch(pub Vec<SignedTx>);

impl TxBatch {
    /// The canonical bytes: each transaction as a byte string.
    pub fn encode(txs: &[SignedTx]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_len(txs.len(), &mut out);
        for tx in txs {
            encode_bytes(&tx.to_bytes(), &mut out);
        }
        out
    }

    /// Reads a batch; any transaction that does not decode makes the whole batch an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        // Each transaction takes at least its length prefix and one byte.
        let count = reader.read_len("transaction batch", MAX_BATCH_TXS, 5)?;
        let mut txs = Vec::with_capacity(count);
        for _ in 0..count {
            let tx = decode_bytes(&mut reader, "gossiped transaction", MAX_TX_BYTES)?;
            txs.push(SignedTx::from_wire(&tx)?);
        }
        reader.finish()?;
        Ok(TxBatch(txs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keypair;
    use crate::tx::{Transaction, TxKind};
    use crate::{Address, Amount};

    fn transfer(nonce: u64) -> SignedTx {
        let key = Keypair::from_seed([7; 32]);
        Transaction {
            sender: key.public_key(),
            nonce,
            fee: Amount(1),
            kind: TxKind::Transfer { to: Address([3; 20]), amount: Amount(5) },
        }
        .sign("chain", &key)
    }

    #[test]
    fn a_hello_has_one_byte_form_and_bounds_its_chain_id() {
        let hello = Hello { chain_id: "trellis-devnet".into(), genesis: Hash([9; 32]), consensus_port: 26001 };
        let bytes = hello.to_bytes();
        assert_eq!(Hello::from_bytes(&bytes).unwrap(), hello);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(Hello::from_bytes(&longer), Err(DecodeError::TrailingBytes { .. })));
        let too_long = Hello { chain_id: "x".repeat(MAX_CHAIN_ID_LEN + 1), ..hello.clone() };
        assert!(matches!(Hello::from_bytes(&too_long.to_bytes()), Err(DecodeError::LengthTooLarge { .. })));
        for cut in 0..bytes.len() {
            assert!(Hello::from_bytes(&bytes[..cut]).is_err(), "a hello cut at {cut} decoded");
        }
        let other_genesis = Hello { genesis: Hash([8; 32]), ..hello.clone() };
        assert!(!hello.same_chain(&other_genesis), "same id, other genesis: another chain");
        assert!(hello.same_chain(&Hello { consensus_port: 0, ..hello.clone() }));
    }

    #[test]
    fn a_batch_reads_back_and_one_bad_transaction_spoils_it() {
        let txs: Vec<SignedTx> = (0..3).map(transfer).collect();
        let bytes = TxBatch::encode(&txs);
        assert_eq!(TxBatch::decode(&bytes).unwrap(), TxBatch(txs.clone()));
        assert_eq!(TxBatch::decode(&TxBatch::encode(&[])).unwrap(), TxBatch(Vec::new()));
        // The last transaction's last byte dropped (its length prefix fixed up): not a transaction.
        let mut spoiled = TxBatch::encode(&txs[..2]);
        let mut last = txs[2].to_bytes();
        last.pop();
        encode_bytes(&last, &mut spoiled);
        spoiled[..4].copy_from_slice(&3u32.to_le_bytes());
        assert!(TxBatch::decode(&spoiled).is_err());
        // A count that the bytes cannot hold is refused before anything is allocated.
        let mut lying = (MAX_BATCH_TXS as u32).to_le_bytes().to_vec();
        lying.extend_from_slice(&[0; 16]);
        assert!(matches!(
            TxBatch::decode(&lying),
            Err(DecodeError::UnexpectedEnd { .. } | DecodeError::LengthTooLarge { .. })
        ));
        let over = ((MAX_BATCH_TXS + 1) as u32).to_le_bytes();
        assert!(matches!(TxBatch::decode(&over), Err(DecodeError::LengthTooLarge { .. })));
        let mut trailing = bytes.clone();
        trailing.push(1);
        assert!(TxBatch::decode(&trailing).is_err());
    }
}

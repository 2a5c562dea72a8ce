//! Keys, addresses and domain-separated ed25519 signatures.
//!
//! A signature is never over raw bytes: the signed message is
//! `"trellis-sig-v1" ‖ len(chain_id) ‖ chain_id ‖ kind ‖ payload` (see [`signing_preimage`]),
//! so a signature made for one chain or one kind of message is useless for any other.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::codec::{encode_bytes, DecodeError, Reader};
use crate::hash::{parse_hex_array, HexError};

/// The longest chain id accepted, in bytes.
pub const MAX_CHAIN_ID_LEN: usize = 64;

/// What a signature is for. The tag is part of the signed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningKind {
    Transaction = 1,
    Vote = 2,
    Proposal = 3,
    ProposalPart = 4,
    ValidatorProof = 5,
    VoteExtension = 6,
}

/// The exact bytes an ed25519 signature covers.
pub fn signing_preimage(chain_id: &str, kind: SigningKind, payload: &[u8]) -> Vec<u8> {
    const PREFIX: &[u8] = b"trellis-sig-v1";
    let mut out = Vec::with_capacity(PREFIX.len() + 4 + chain_id.len() + 1 + payload.len());
    out.extend_from_slice(PREFIX);
    encode_bytes(chain_id.as_bytes(), &mut out);
    out.push(kind as u8);
    out.extend_from_slice(payload);
    out
}

/// Why a signature or key was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    #[error("public key is not a valid ed25519 point")]
    InvalidPublicKey,
    #[error("public key has small order and is not accepted")]
    WeakPublicKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("signature {index} of the batch does not verify")]
    BadSignatureInBatch { index: usize },
    #[error("batch has {messages} messages, {signatures} signatures and {keys} keys")]
    BatchShape { messages: usize, signatures: usize, keys: usize },
}

/// An ed25519 public key (32 bytes, compressed Edwards point).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);
crate::canonical_newtype!(PublicKey);

/// An account address: the first 20 bytes of blake3(public key).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Address(pub [u8; 20]);
crate::canonical_newtype!(Address);

/// An ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);
crate::canonical_newtype!(Signature);

impl PublicKey {
    pub fn address(&self) -> Address {
        let digest = blake3::hash(&self.0);
        let mut out = [0u8; 20];
        out.copy_from_slice(&digest.as_bytes()[..20]);
        Address(out)
    }

    fn verifying_key(&self) -> Result<VerifyingKey, SignatureError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| SignatureError::InvalidPublicKey)?;
        if key.is_weak() {
            return Err(SignatureError::WeakPublicKey);
        }
        Ok(key)
    }

    /// Verifies `signature` over `payload` of `kind` on chain `chain_id`, with the strict
    /// rules (canonical scalars, no small-order points).
    pub fn verify(
        &self,
        chain_id: &str,
        kind: SigningKind,
        payload: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        let key = self.verifying_key()?;
        let message = signing_preimage(chain_id, kind, payload);
        key.verify_strict(&message, &ed25519_dalek::Signature::from_bytes(&signature.0))
            .map_err(|_| SignatureError::BadSignature)
    }
}

/// One item of a batch verification: who signed what.
pub struct SignedItem<'a> {
    pub key: &'a PublicKey,
    pub kind: SigningKind,
    pub payload: &'a [u8],
    pub signature: &'a Signature,
}

/// Verifies many signatures at once (ed25519 batch verification, roughly twice as fast per
/// signature as one by one). If the batch fails, each item is checked on its own so the error
/// names the first bad one. See `docs/adr/0001-dependencies.md` for how batch and single
/// verification relate.
pub fn verify_batch(chain_id: &str, items: &[SignedItem<'_>]) -> Result<(), SignatureError> {
    if items.is_empty() {
        return Ok(());
    }
    let mut keys = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        keys.push(item.key.verifying_key().map_err(|_| SignatureError::BadSignatureInBatch { index })?);
    }
    let messages: Vec<Vec<u8>> = items.iter().map(|item| signing_preimage(chain_id, item.kind, item.payload)).collect();
    let message_refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    let signatures: Vec<ed25519_dalek::Signature> =
        items.iter().map(|item| ed25519_dalek::Signature::from_bytes(&item.signature.0)).collect();
    if ed25519_dalek::verify_batch(&message_refs, &signatures, &keys).is_ok() {
        return Ok(());
    }
    for (index, item) in items.iter().enumerate() {
        if item.key.verify(chain_id, item.kind, item.payload, item.signature).is_err() {
            return Err(SignatureError::BadSignatureInBatch { index });
        }
    }
    // Every item verified alone although the batch failed: refuse rather than guess.
    Err(SignatureError::BatchShape { messages: items.len(), signatures: items.len(), keys: items.len() })
}

/// A secret signing key. Its `Debug` never shows the secret.
pub struct Keypair {
    signing: SigningKey,
}

impl Keypair {
    /// A key from a 32-byte seed (the same seed serves Malachite's ed25519 scheme).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self { signing: SigningKey::from_bytes(&seed) }
    }

    /// A fresh key from the operating system's randomness.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
        Self::from_seed(seed)
    }

    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key().to_bytes())
    }

    pub fn address(&self) -> Address {
        self.public_key().address()
    }

    /// Signs `payload` as a message of `kind` on chain `chain_id`.
    pub fn sign(&self, chain_id: &str, kind: SigningKind, payload: &[u8]) -> Signature {
        Signature(self.signing.sign(&signing_preimage(chain_id, kind, payload)).to_bytes())
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({})", self.address())
    }
}

macro_rules! hex_display {
    ($ty:ident, $len:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($ty), hex::encode(self.0))
            }
        }
        impl FromStr for $ty {
            type Err = HexError;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                parse_hex_array::<$len>(text).map($ty)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&hex::encode(self.0))
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
hex_display!(PublicKey, 32);
hex_display!(Address, 20);
hex_display!(Signature, 64);

/// Reads a chain id: UTF-8, at most [`MAX_CHAIN_ID_LEN`] bytes.
pub fn decode_chain_id(reader: &mut Reader<'_>) -> Result<String, DecodeError> {
    crate::codec::decode_string(reader, "chain id", MAX_CHAIN_ID_LEN)
}

/// Writes a chain id.
pub fn encode_chain_id(chain_id: &str, out: &mut Vec<u8>) {
    encode_bytes(chain_id.as_bytes(), out);
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAIN: &str = "trellis-test";

    #[test]
    fn sign_and_verify() {
        let key = Keypair::from_seed([7; 32]);
        let sig = key.sign(CHAIN, SigningKind::Transaction, b"payload");
        key.public_key().verify(CHAIN, SigningKind::Transaction, b"payload", &sig).unwrap();
    }

    #[test]
    fn signatures_are_bound_to_chain_and_kind_and_payload() {
        let key = Keypair::from_seed([7; 32]);
        let pk = key.public_key();
        let sig = key.sign(CHAIN, SigningKind::Transaction, b"payload");
        assert_eq!(
            pk.verify("other-chain", SigningKind::Transaction, b"payload", &sig),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(pk.verify(CHAIN, SigningKind::Vote, b"payload", &sig), Err(SignatureError::BadSignature));
        assert_eq!(pk.verify(CHAIN, SigningKind::Transaction, b"payloaD", &sig), Err(SignatureError::BadSignature));
    }

    #[test]
    fn tampered_signature_bytes_are_rejected() {
        let key = Keypair::from_seed([3; 32]);
        let sig = key.sign(CHAIN, SigningKind::Vote, b"m");
        for i in 0..64 {
            let mut bad = sig;
            bad.0[i] ^= 0x01;
            assert!(key.public_key().verify(CHAIN, SigningKind::Vote, b"m", &bad).is_err(), "flip at byte {i}");
        }
    }

    #[test]
    fn invalid_and_weak_keys_are_rejected() {
        let sig = Signature([0; 64]);
        // The identity point has small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            PublicKey(identity).verify(CHAIN, SigningKind::Vote, b"m", &sig),
            Err(SignatureError::WeakPublicKey)
        );
        // y = 2 is not on the curve.
        let mut off_curve = [0u8; 32];
        off_curve[0] = 2;
        assert_eq!(
            PublicKey(off_curve).verify(CHAIN, SigningKind::Vote, b"m", &sig),
            Err(SignatureError::InvalidPublicKey)
        );
    }

    #[test]
    fn batch_verification_names_the_bad_item() {
        let keys: Vec<Keypair> = (0..5u8).map(|i| Keypair::from_seed([i + 1; 32])).collect();
        let pks: Vec<PublicKey> = keys.iter().map(Keypair::public_key).collect();
        let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10]).collect();
        let mut sigs: Vec<Signature> =
            keys.iter().zip(&payloads).map(|(k, p)| k.sign(CHAIN, SigningKind::Transaction, p)).collect();
        let items = |sigs: &[Signature]| -> Result<(), SignatureError> {
            let items: Vec<SignedItem<'_>> = (0..5)
                .map(|i| SignedItem {
                    key: &pks[i],
                    kind: SigningKind::Transaction,
                    payload: &payloads[i],
                    signature: &sigs[i],
                })
                .collect();
            verify_batch(CHAIN, &items)
        };
        assert_eq!(items(&sigs), Ok(()));
        sigs[3].0[10] ^= 0x80;
        assert_eq!(items(&sigs), Err(SignatureError::BadSignatureInBatch { index: 3 }));
    }

    #[test]
    fn address_is_prefix_of_blake3_of_key() {
        let key = Keypair::from_seed([9; 32]);
        let pk = key.public_key();
        assert_eq!(&pk.address().0[..], &blake3::hash(&pk.0).as_bytes()[..20]);
        assert_eq!(pk.address().to_string().parse::<Address>().unwrap(), pk.address());
    }
}

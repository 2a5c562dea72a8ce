//! Transactions: every kind of state change, signed by its sender.

use serde::{Deserialize, Serialize};

use crate::codec::{decode, Decode, DecodeError, Encode, Reader};
use crate::consensus::{DoubleProposalEvidence, EquivocationEvidence};
use crate::crypto::{Address, Keypair, PublicKey, Signature, SignatureError, SigningKind};
use crate::hash::{Hash, HashDomain};
use crate::job::{Aggregate, JobId, JobSpec, Verdict, WorkCommitment, WorkReveal};
use crate::{canonical_struct, canonical_tag_enum, Amount};

/// Largest encoded signed transaction accepted, in bytes.
pub const MAX_TX_BYTES: usize = 64 * 1024;

/// What a bond is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Validator,
    Miner,
}
canonical_tag_enum!(Role, "role" { Validator = 1, Miner = 2 });

/// The state change a transaction asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum TxKind {
    Transfer {
        to: Address,
        amount: Amount,
    },
    Bond {
        role: Role,
        amount: Amount,
    },
    Unbond {
        role: Role,
        amount: Amount,
    },
    SubmitJob {
        spec: JobSpec,
        escrow: Amount,
    },
    JoinJob {
        job: JobId,
    },
    CommitWork(WorkCommitment),
    RevealWork(WorkReveal),
    Verdict(Verdict),
    CommitAggregate(Aggregate),
    CancelJob {
        job: JobId,
    },
    ReportEquivocation(EquivocationEvidence),
    /// A validator commits to a beacon onion: `tip` is the `layers`-th onion hash of a seed only
    /// it knows; each block it proposes reveals the next layer down (`docs/adr/0004`).
    CommitBeacon {
        tip: Hash,
        layers: u32,
    },
    /// A proposer signed two blocks for one height and round. Boxed: its two claims would
    /// otherwise double the size of every transaction held in memory.
    ReportDoubleProposal(Box<DoubleProposalEvidence>),
}

impl TxKind {
    /// A short name for logs, errors and RPC.
    pub fn name(&self) -> &'static str {
        match self {
            TxKind::Transfer { .. } => "transfer",
            TxKind::Bond { .. } => "bond",
            TxKind::Unbond { .. } => "unbond",
            TxKind::SubmitJob { .. } => "submit_job",
            TxKind::JoinJob { .. } => "join_job",
            TxKind::CommitWork(_) => "commit_work",
            TxKind::RevealWork(_) => "reveal_work",
            TxKind::Verdict(_) => "verdict",
            TxKind::CommitAggregate(_) => "commit_aggregate",
            TxKind::CancelJob { .. } => "cancel_job",
            TxKind::ReportEquivocation(_) => "report_equivocation",
            TxKind::CommitBeacon { .. } => "commit_beacon",
            TxKind::ReportDoubleProposal(_) => "report_double_proposal",
        }
    }
}

impl Encode for TxKind {
    fn encode_to(&self, out: &mut Vec<u8>) {
        match self {
            TxKind::Transfer { to, amount } => {
                out.push(1);
                to.encode_to(out);
                amount.encode_to(out);
            }
            TxKind::Bond { role, amount } => {
                out.push(2);
                role.encode_to(out);
                amount.encode_to(out);
            }
            TxKind::Unbond { role, amount } => {
                out.push(3);
                role.encode_to(out);
                amount.encode_to(out);
            }
            TxKind::SubmitJob { spec, escrow } => {
                out.push(4);
                spec.encode_to(out);
                escrow.encode_to(out);
            }
            TxKind::JoinJob { job } => {
                out.push(5);
                job.encode_to(out);
            }
            TxKind::CommitWork(commitment) => {
                out.push(6);
                commitment.encode_to(out);
            }
            TxKind::Verdict(verdict) => {
                out.push(7);
                verdict.encode_to(out);
            }
            TxKind::CommitAggregate(aggregate) => {
                out.push(8);
                aggregate.encode_to(out);
            }
            TxKind::CancelJob { job } => {
                out.push(9);
                job.encode_to(out);
            }
            TxKind::ReportEquivocation(evidence) => {
                out.push(10);
                evidence.encode_to(out);
            }
            TxKind::RevealWork(reveal) => {
                out.push(11);
                reveal.encode_to(out);
            }
            TxKind::CommitBeacon { tip, layers } => {
                out.push(12);
                tip.encode_to(out);
                layers.encode_to(out);
            }
            TxKind::ReportDoubleProposal(evidence) => {
                out.push(13);
                evidence.encode_to(out);
            }
        }
    }
}

impl Decode for TxKind {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match u8::decode_from(reader)? {
            1 => TxKind::Transfer { to: Decode::decode_from(reader)?, amount: Decode::decode_from(reader)? },
            2 => TxKind::Bond { role: Decode::decode_from(reader)?, amount: Decode::decode_from(reader)? },
            3 => TxKind::Unbond { role: Decode::decode_from(reader)?, amount: Decode::decode_from(reader)? },
            4 => TxKind::SubmitJob { spec: Decode::decode_from(reader)?, escrow: Decode::decode_from(reader)? },
            5 => TxKind::JoinJob { job: Decode::decode_from(reader)? },
            6 => TxKind::CommitWork(Decode::decode_from(reader)?),
            7 => TxKind::Verdict(Decode::decode_from(reader)?),
            8 => TxKind::CommitAggregate(Decode::decode_from(reader)?),
            9 => TxKind::CancelJob { job: Decode::decode_from(reader)? },
            10 => TxKind::ReportEquivocation(Decode::decode_from(reader)?),
            11 => TxKind::RevealWork(Decode::decode_from(reader)?),
            12 => TxKind::CommitBeacon { tip: Decode::decode_from(reader)?, layers: Decode::decode_from(reader)? },
            13 => TxKind::ReportDoubleProposal(Box::new(Decode::decode_from(reader)?)),
            tag => return Err(DecodeError::UnknownTag { what: "transaction kind", tag }),
        })
    }
}

/// An unsigned transaction. The chain id is not in the body: it is bound by the signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub sender: PublicKey,
    /// Must equal the sender account's next nonce.
    pub nonce: u64,
    pub fee: Amount,
    pub kind: TxKind,
}
canonical_struct!(Transaction { sender, nonce, fee, kind });

impl Transaction {
    pub fn sender_address(&self) -> Address {
        self.sender.address()
    }

    /// Signs the transaction for `chain_id`. The key must be the sender's.
    pub fn sign(self, chain_id: &str, key: &Keypair) -> SignedTx {
        debug_assert_eq!(key.public_key(), self.sender, "signing with a key other than the sender's");
        let signature = key.sign(chain_id, SigningKind::Transaction, &self.to_bytes());
        SignedTx { tx: self, signature }
    }
}

/// A transaction with its sender's signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedTx {
    pub tx: Transaction,
    pub signature: Signature,
}
canonical_struct!(SignedTx { tx, signature });

impl SignedTx {
    /// The transaction's identifier: the hash of its whole signed encoding.
    pub fn hash(&self) -> Hash {
        Hash::of(HashDomain::Transaction, self)
    }

    /// Checks the signature for `chain_id` (strict rules).
    pub fn verify(&self, chain_id: &str) -> Result<(), SignatureError> {
        self.tx.sender.verify(chain_id, SigningKind::Transaction, &self.tx.to_bytes(), &self.signature)
    }

    /// Decodes a transaction received from outside, enforcing [`MAX_TX_BYTES`].
    pub fn from_wire(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_TX_BYTES {
            return Err(DecodeError::LengthTooLarge {
                what: "transaction",
                len: bytes.len() as u64,
                max: MAX_TX_BYTES as u64,
            });
        }
        decode(bytes)
    }
}

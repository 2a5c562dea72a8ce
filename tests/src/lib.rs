//! `trellis-tests`: the seeded simulator ([`sim`]). Validators run Malachite's Tendermint driver,
//! the node's mempool and the chain's contracts over a simulated network with Byzantine
//! validators, grinding proposers, floods, partitions and crashes, and every height is checked
//! for safety and liveness (`docs/simulator.md`). The CI scenarios live in
//! `tests/simulator.rs`, the long-run command in `src/bin/simulate.rs`. The end-to-end tests
//! that start real `trellis` processes are the node's own (`node/tests/`).

pub mod sim;

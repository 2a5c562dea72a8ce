//! `trellis-tests`: end-to-end tests that start real `trellis` processes on 127.0.0.1 and
//! drive them as users do, and the seeded simulator of consensus and contracts ([`sim`]).
//! Helpers live here; the scenarios live in `tests/tests/`, the long-run simulator command in
//! `src/bin/simulate.rs`.

pub mod sim;

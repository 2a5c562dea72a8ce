//! `trellis-tests`: end-to-end tests that start real `trellis` processes on 127.0.0.1 and
//! drive them as users do. Helpers for locating the built binary live here; the scenarios
//! live in `tests/tests/`.

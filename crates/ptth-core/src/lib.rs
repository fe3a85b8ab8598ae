//! Sans-IO core of PTTH: the mechanism catalogue, setup validation, stream-ID mapping and scopes.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

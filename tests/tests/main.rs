//! Every end-to-end test in one binary: each file of this directory is a module, run as
//! `cargo test -p ptth-tests --test e2e [MODULE::]`. Linked once instead of once per file.

mod auth;
mod bad_setups;
mod browser;
mod closed_stderr;
mod edge_credential;
mod edge_forwarding;
mod edge_reload;
mod edge_scopes;
mod edge_setup;
mod embed;
mod fuzz_regressions;
mod gateway_behaviour;
mod grpc;
mod h3_client;
mod h3_mechanisms;
mod library_mode;
mod lingering_close;
mod observe;
mod operator;
mod ops_gateway;
mod ops_origin;
mod port_mappings;
mod public_connect;
mod public_connect_limits;
mod public_connect_udp;
mod public_h2;
mod reverse_connect;
mod reverse_connect_udp;
mod tcp_mechanisms;
mod uncovered_claims;
mod upstreams;
mod websocket;

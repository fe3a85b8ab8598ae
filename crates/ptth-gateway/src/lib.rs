//! ptth-gateway.

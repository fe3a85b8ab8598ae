//! ptth-auth.

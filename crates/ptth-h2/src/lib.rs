//! ptth-h2.

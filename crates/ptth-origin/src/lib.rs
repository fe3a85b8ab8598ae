//! ptth-origin.

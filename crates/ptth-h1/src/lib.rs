//! ptth-h1.

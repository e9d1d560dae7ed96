//! Aviary Rust server SDK (being written).

//! Protocols the gateway terminates on both sides.

pub mod postgres;

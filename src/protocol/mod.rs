//! Protocols the gateway terminates on both sides.

pub mod postgres;
pub mod ssh;

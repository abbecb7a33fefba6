//! What client and gateway agree on: header names, tunnel close codes, and
//! the CSV form of an exec answer.

pub mod csv;

//! The masking tracker under libFuzzer: arbitrary pipelines of
//! Parse/Bind/Describe/Execute/Close/Sync and SQL-level PREPARE/DEALLOCATE/
//! DISCARD through the real client and server hooks, against the simulated
//! PostgreSQL of tests/support/pgsim.rs. No Execute under column rules may
//! return the ruled column in clear.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/pgsim.rs"]
mod pgsim;

fuzz_target!(|data: &[u8]| {
    pgsim::check(data);
});

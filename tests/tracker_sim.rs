//! The masking tracker against a simulated PostgreSQL (tests/support/pgsim.rs):
//! the review's stale-Describe attack and 20000 random pipelines of
//! Parse/Bind/Describe/Execute/Close/Sync and SQL-level PREPARE/DEALLOCATE/
//! DISCARD; no Execute under column rules may return the ruled column in
//! clear. `scripts/fuzz.sh` runs the same model under libFuzzer (`tracker`).

#[path = "support/pgsim.rs"]
mod pgsim;

#[test]
fn the_stale_describe_attack_is_masked() {
    // Parse s2 "select name", Describe s2, Sync; simple query
    // "deallocate s2; prepare s2 as select ssn"; Bind "" s2; Execute ""; Sync.
    let program = [0, 2, 2, 2, 6, 0, 7, 39, 1, 2, 4, 0, 6, 0];
    let out = pgsim::run(&program);
    assert!(
        out.windows(b"[REDACTED]".len()).any(|w| w == b"[REDACTED]"),
        "the ruled column was not masked"
    );
    pgsim::check(&program);
}

#[test]
fn random_pipelines_never_return_a_ruled_column_in_clear() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // Ops weighted towards the ones that matter (Parse, Describe, the
    // SQL-level swap, Bind, Execute), arguments from a small space.
    const OPS: [u8; 12] = [0, 0, 1, 1, 2, 3, 4, 4, 5, 6, 7, 7];
    for _ in 0..20_000 {
        let len = 2 + (next() % 24) as usize;
        let program: Vec<u8> = (0..len)
            .flat_map(|_| {
                let op = OPS[(next() % OPS.len() as u64) as usize];
                [op, (next() % 54) as u8]
            })
            .collect();
        pgsim::check(&program);
    }
}

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

#[test]
fn a_rebind_past_the_tracking_limit_is_masked() {
    use pgsim::{cstrs, frame};
    let mut f = Vec::new();
    // A harmless statement, described; then more named portals than the
    // tracker keeps, so it stops recording new binds.
    f.extend(frame(
        b'P',
        &[&cstrs(&["p0", "select name from t"])[..], &[0, 0]].concat(),
    ));
    f.extend(frame(b'D', &[b"S".as_slice(), &cstrs(&["p0"])].concat()));
    for i in 0..10_001 {
        let portal = format!("b{i}");
        f.extend(frame(
            b'B',
            &[&cstrs(&[&portal, "p0"])[..], &[0, 0, 0, 0, 0, 0]].concat(),
        ));
    }
    f.extend(frame(b'S', b""));
    // Rebind b0 to the ruled query and run it.
    f.extend(frame(
        b'P',
        &[&cstrs(&["x", "select ssn from t"])[..], &[0, 0]].concat(),
    ));
    f.extend(frame(
        b'B',
        &[&cstrs(&["b0", "x"])[..], &[0, 0, 0, 0, 0, 0]].concat(),
    ));
    f.extend(frame(b'E', &[&cstrs(&["b0"])[..], &[0, 0, 0, 0]].concat()));
    f.extend(frame(b'S', b""));
    let out = pgsim::run_frames(&f);
    let secret = pgsim::SECRET.as_bytes();
    assert!(
        !out.windows(secret.len()).any(|w| w == secret),
        "clear SSN after a rebind"
    );
    assert!(out.windows(10).any(|w| w == b"[REDACTED]"), "not masked");
}

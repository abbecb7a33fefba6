//! Issue 13, item 11: pgjdbc (Debian's libpostgresql-jdbc-java) through
//! Custody under column rules and detectors. A PreparedStatement executed
//! past prepareThreshold becomes a named server statement that pgjdbc binds
//! and executes without a new Describe; its rows must be masked exactly as
//! its first execution's, with text and binary transfer, and unruled
//! columns must read as they do directly.

mod support;

use std::process::Command;

use support::*;

const JAR: &str = "/usr/share/java/postgresql.jar";

fn jdbc(host: &str, port: u16, user: &str, password: &str) -> Vec<String> {
    let url = format!("jdbc:postgresql://{host}:{port}/app");
    let out = Command::new("java")
        .args(["-cp", JAR])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/jdbc/JdbcCheck.java"
        ))
        .args([&url, user, password])
        .output()
        .expect("java (scripts/test.sh installs default-jdk-headless)");
    assert!(
        out.status.success(),
        "JdbcCheck via {host}:{port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// "binary 6: 1|Ann|..." → ("binary", "6", ["1", "Ann", ...]).
fn split(line: &str) -> (String, String, Vec<String>) {
    let (head, row) = line.split_once(": ").unwrap();
    let (mode, iter) = head.rsplit_once(' ').unwrap();
    (
        mode.into(),
        iter.into(),
        row.split('|').map(String::from).collect(),
    )
}

#[test]
fn pgjdbc_server_prepared_statements_are_masked_like_their_first_execution() {
    let pg = pg();
    pg.admin(
        "drop table if exists jdbc_people; create table jdbc_people (id int primary key, name text, email text, ssn text, addr inet, seen timestamp);
         insert into jdbc_people values
           (1, 'Ann', 'ann@example.com', '111-22-3333', '10.1.2.3', '2024-01-02 03:04:05'),
           (2, 'Bob', 'bob@example.com', '222-33-4444', '192.168.7.9/24', '2024-02-03 04:05:06'),
           (3, 'Cy', null, '333-44-5555', null, null);
         grant select on jdbc_people to app;",
    );
    let direct = jdbc("127.0.0.1", pg.port, "app", support::PG_PASSWORD);
    let key = signing_key().display().to_string();
    let gw = Gateway::start(&format!(
        "\n[connections.masking]\ndetectors = [\"email\", \"ip_address\"]\nhash_key = \"file:{key}\"\ncolumns = {{ \"jdbc_people.ssn\" = \"redact\" }}\n"
    ));
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let through = jdbc(&addr.ip().to_string(), addr.port(), "anything", "unused");
    assert_eq!(
        through.len(),
        direct.len(),
        "same number of rows:\n{through:#?}"
    );

    let first_of = |mode: &str| -> Vec<Vec<String>> {
        through
            .iter()
            .map(|l| split(l))
            .filter(|(m, i, _)| m == mode && i == "1")
            .map(|(_, _, r)| r)
            .collect()
    };
    for (d, t) in direct.iter().zip(&through) {
        let (mode, iter, drow) = split(d);
        let (tmode, titer, trow) = split(t);
        assert_eq!((&mode, &iter), (&tmode, &titer), "rows in the same order");
        if mode.contains("count") {
            assert_eq!(drow, trow, "{t}: an unruled aggregate reads as directly");
            continue;
        }
        // Unruled columns (id, name, seen) read exactly as directly.
        assert_eq!(
            (&drow[0], &drow[1], &drow[5]),
            (&trow[0], &trow[1], &trow[5]),
            "{t} vs direct {d}"
        );
        assert!(!t.contains("@example.com"), "{t}: email masked");
        assert!(
            !t.contains("-22-") && !t.contains("-33-") && !t.contains("-44-"),
            "{t}: ssn masked"
        );
        assert!(
            !t.contains("10.1.2.3") && !t.contains("192.168"),
            "{t}: inet masked"
        );
        // Masked columns are what the first execution showed, on every execution.
        let first = first_of(&mode);
        let id: usize = trow[0].parse().unwrap();
        assert_eq!(first[id - 1], trow, "{t}: masked like execution 1");
    }
    // The rule's marker and the detector's are really there (not blanked rows).
    assert!(
        through.iter().any(|l| l.contains("[EMAIL]")),
        "{through:#?}"
    );
    assert!(through
        .iter()
        .all(|l| !l.contains("count") || l.contains("|Cy")));
}

//! Tests of the guardrails: every rule kind, the review's attacks
//! (issue 11) and the holes an attacker's read of the first fix found.

use super::*;

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn rails(
        deny: &[&str],
        approval: &[&str],
        read_only: bool,
        patterns: &[&str],
    ) -> Guardrails {
        let cfg = GuardrailsConfig {
            deny: deny.iter().map(|s| s.to_string()).collect(),
            require_approval: approval.iter().map(|s| s.to_string()).collect(),
            read_only,
            deny_patterns: patterns.iter().map(|s| s.to_string()).collect(),
            allow_unparsed: false,
            approval_patterns: Vec::new(),
            approvers: Vec::new(),
            approvals_required: 1,
            approval_expires: std::time::Duration::from_secs(3600),
            approval_window: None,
        };
        Guardrails::new(&cfg).unwrap()
    }

    fn denied(v: Verdict) -> String {
        match v {
            Verdict::Deny { rule, .. } => rule,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[test]
    fn design_md_rules() {
        let g = rails(
            &[
                "drop",
                "truncate",
                "delete_without_where",
                "update_without_where",
            ],
            &[],
            false,
            &[],
        );
        assert_eq!(denied(g.check("DROP TABLE users")), "drop");
        assert_eq!(denied(g.check("truncate users")), "truncate");
        assert_eq!(denied(g.check("delete from users")), "delete_without_where");
        assert_eq!(
            denied(g.check("update users set x = 1")),
            "update_without_where"
        );
        assert_eq!(g.check("delete from users where id = 1"), Verdict::Allow);
        assert_eq!(
            g.check("update users set x = 1 where id = 2"),
            Verdict::Allow
        );
        assert_eq!(g.check("select * from users"), Verdict::Allow);
        // Inside a CTE, and as one statement of several: the whole query is refused.
        assert_eq!(
            denied(g.check("with d as (delete from users returning id) select count(*) from d")),
            "delete_without_where"
        );
        assert_eq!(
            denied(g.check("select 1; drop table users; select 2")),
            "drop"
        );
        // EXPLAIN ANALYZE executes its statement; plain EXPLAIN does not.
        assert_eq!(
            denied(g.check("explain analyze delete from users")),
            "delete_without_where"
        );
        assert_eq!(g.check("explain delete from users"), Verdict::Allow);
    }

    #[test]
    fn kinds_and_read_only() {
        let g = rails(
            &["grant", "revoke", "create_role", "copy_program", "alter"],
            &[],
            false,
            &[],
        );
        assert_eq!(denied(g.check("grant select on t to bob")), "grant");
        assert_eq!(denied(g.check("revoke all on t from bob")), "revoke");
        assert_eq!(denied(g.check("create role evil login")), "create_role");
        assert_eq!(
            denied(g.check("copy t to program 'curl evil'")),
            "copy_program"
        );
        assert_eq!(denied(g.check("alter table t add column c int")), "alter");
        let ro = rails(&[], &[], true, &[]);
        for ok in [
            "select 1",
            "show search_path",
            "explain select 1",
            "begin",
            "copy t to stdout",
            "set search_path = public",
        ] {
            assert_eq!(ro.check(ok), Verdict::Allow, "{ok}");
        }
        for bad in [
            "insert into t values (1)",
            "update t set a = 1 where b",
            "create table x (a int)",
            "explain analyze insert into t values (1)",
            "select * into newt from t",
            "copy t from stdin",
        ] {
            assert_eq!(denied(ro.check(bad)), "read_only", "{bad}");
        }
    }

    #[test]
    fn patterns_approval_and_unparsed() {
        let g = rails(&[], &["delete", "ddl"], false, &[r"pg_sleep\("]);
        assert_eq!(
            denied(g.check("SELECT   PG_SLEEP(10)")),
            "pattern pg_sleep\\("
        );
        assert_eq!(
            g.check("delete from t where id = 1"),
            Verdict::NeedsApproval {
                rule: "delete".into()
            }
        );
        assert_eq!(
            g.check("create index on t (a)"),
            Verdict::NeedsApproval { rule: "ddl".into() }
        );
        assert_eq!(denied(g.check("selec wat from")), "unparsed");
        assert_eq!(g.check(""), Verdict::Allow);
    }

    #[test]
    fn no_hiding_in_prepare_or_backslash_literals() {
        let g = rails(&["drop", "delete_without_where"], &[], false, &[]);
        assert_eq!(
            denied(g.check("prepare p as delete from users")),
            "delete_without_where"
        );
        // Read with backslash escapes (standard_conforming_strings off), this is a DROP.
        assert_eq!(
            denied(g.check(r"select 'a\', ' ; drop table users; --'")),
            "drop"
        );
        assert_eq!(g.check(r"select 'C:\temp'"), Verdict::Allow);
        assert!(Guardrails::new(&GuardrailsConfig {
            deny: vec!["dorp".into()],
            ..Default::default()
        })
        .is_err());
    }
}

#[cfg(test)]
mod approval_tests {
    use super::*;

    fn rails(deny_patterns: &[&str], approval: &[&str], approval_patterns: &[&str]) -> Guardrails {
        let cfg = GuardrailsConfig {
            deny: Vec::new(),
            require_approval: approval.iter().map(|s| s.to_string()).collect(),
            read_only: false,
            deny_patterns: deny_patterns.iter().map(|s| s.to_string()).collect(),
            allow_unparsed: false,
            approval_patterns: approval_patterns.iter().map(|s| s.to_string()).collect(),
            approvers: Vec::new(),
            approvals_required: 1,
            approval_expires: std::time::Duration::from_secs(3600),
            approval_window: None,
        };
        Guardrails::new(&cfg).unwrap()
    }

    #[test]
    fn patterns_hold_and_denials_win_over_holds() {
        let r = rails(&["from secrets"], &["delete"], &["from payroll"]);
        assert!(matches!(
            r.check("select * from payroll"),
            Verdict::NeedsApproval { .. }
        ));
        assert_eq!(r.check("select 1"), Verdict::Allow);
        // A held statement in the same Query as a denied one: denied, so no
        // approval can ever carry the denied part.
        assert!(matches!(
            r.check("delete from t where id = 1; select * from secrets"),
            Verdict::Deny { .. }
        ));
        assert!(matches!(
            r.check("delete from secrets where id = 1"),
            Verdict::Deny { .. }
        ));
    }
}

#[cfg(test)]
mod attack_tests {
    use super::*;

    use super::tests::rails;

    fn rule(v: Verdict) -> String {
        match v {
            Verdict::Deny { rule, .. } | Verdict::NeedsApproval { rule } => rule,
            Verdict::Allow => "allow".into(),
        }
    }

    #[test]
    fn dml_inside_copy_is_classified() {
        let ro = rails(&[], &[], true, &[]);
        assert_eq!(
            rule(ro.check("copy (delete from victim returning *) to stdout")),
            "read_only"
        );
        let g = rails(&["delete_without_where"], &["delete"], false, &[]);
        assert_eq!(
            rule(g.check("copy (delete from victim returning *) to stdout")),
            "delete_without_where"
        );
        assert_eq!(
            rule(g.check("COPY (DELETE FROM victim WHERE id = 1 RETURNING *) TO STDOUT")),
            "delete"
        );
        assert_eq!(rule(ro.check("copy victim to stdout")), "allow");
    }

    #[test]
    fn every_spelling_of_role_management() {
        let g = rails(&["create_role"], &[], false, &[]);
        for sql in [
            "create user mallory",
            "CREATE USER mallory WITH SUPERUSER PASSWORD 'x'",
            "create group admins",
            "create role r login",
            "alter user app with superuser",
            "alter group admins add user mallory",
            "alter role app set search_path = x",
            "drop user mallory",
            "drop group admins",
            "alter role app rename to bob",
        ] {
            assert_eq!(rule(g.check(sql)), "create_role", "{sql}");
        }
    }

    #[test]
    fn nested_and_opaque_code() {
        let g = rails(&["delete_without_where", "drop"], &[], false, &[]);
        assert_eq!(
            rule(g.check("create rule r as on insert to t do also delete from victim")),
            "delete_without_where"
        );
        assert_eq!(
            rule(g.check("prepare p as delete from victim")),
            "delete_without_where"
        );
        assert_eq!(
            rule(g.check("explain (analyze, format json) delete from victim")),
            "delete_without_where"
        );
        assert_eq!(
            rule(g.check("explain (analyze false) delete from victim")),
            "allow"
        );
        // A DO block or a procedure may do anything: every rule applies.
        assert!(matches!(
            g.check("do $$ begin delete from victim; end $$"),
            Verdict::Deny { .. }
        ));
        assert!(matches!(g.check("call cleanup()"), Verdict::Deny { .. }));
        let ro = rails(&[], &[], true, &[]);
        assert_eq!(rule(ro.check("select setval('s', 1)")), "read_only");
        assert_eq!(
            rule(ro.check("select pg_terminate_backend(1)")),
            "read_only"
        );
        assert_eq!(rule(ro.check("select lower('A')")), "allow");
    }

    #[test]
    fn unsafe_client_encodings_are_refused() {
        let g = rails(&[], &[], false, &[]);
        for sql in [
            "set client_encoding = 'SJIS'",
            "SET client_encoding TO sjis",
            "set names 'Shift_JIS'",
            "set session client_encoding to 'big5'",
            "select set_config('client_encoding', 'GBK', false)",
            "select pg_catalog.set_config('CLIENT_ENCODING', 'UTF8', false)",
            "select set_config('client_' || 'encoding', 'SJIS', false)",
            r"select set_config(E'client\x5fencoding', 'SJIS', false)",
        ] {
            assert_eq!(rule(g.check(sql)), "client_encoding", "{sql}");
        }
        for ok in [
            "set client_encoding = 'UTF8'",
            "set client_encoding to 'LATIN1'",
            "reset client_encoding",
            "select set_config('search_path', 'public', false)",
        ] {
            assert_eq!(rule(g.check(ok)), "allow", "{ok}");
        }
        assert!(encoding_refusal("set names 'sjis'", DEFAULT_MAX_INSPECTED).is_some());
        assert!(encoding_refusal("select 1", DEFAULT_MAX_INSPECTED).is_none());
    }

    #[test]
    fn patterns_see_through_quoting() {
        let g = rails(&[], &[], false, &[r"pg_sleep\(", "from payroll"]);
        for sql in [
            r#"select "pg_sleep"(0.1)"#,
            r#"select U&"pg\005fsleep"(0.1)"#,
            "select pg_catalog.pg_sleep (0.1)",
            "select * from public.payroll",
            r#"select * from "payroll""#,
            r#"select * from "public"."payroll""#,
            "select * from/**/payroll",
        ] {
            assert!(rule(g.check(sql)).starts_with("pattern"), "{sql}");
        }
        assert_eq!(
            rule(g.check("select * from payroll_archive")),
            "pattern from payroll"
        );
        assert_eq!(rule(g.check("select 1")), "allow");
    }

    #[test]
    fn oversized_statements_are_refused_before_parsing() {
        let g = rails(&[], &[], false, &[]).with_limit(1024);
        let big = format!("select {}1", "1,".repeat(600));
        assert_eq!(rule(g.check(&big)), "statement_size");
        // Under the byte limit, but too many tokens to parse cheaply.
        let dense = format!("select {}1", "1,".repeat(200));
        assert_eq!(rule(g.check(&dense)), "statement_size");
        let text = format!("select '{}'", "x".repeat(900));
        assert_eq!(rule(g.check(&text)), "allow");
        assert_eq!(rule(g.check("select 1")), "allow");
    }
}

#[cfg(test)]
mod review_tests {
    use super::tests::rails;
    use super::*;

    fn denied(v: &Verdict) -> bool {
        matches!(v, Verdict::Deny { .. })
    }

    #[test]
    fn a_reading_that_fails_to_parse_is_not_a_free_pass() {
        let ro = rails(&[], &[], true, &[]);
        // The standard reading (what PostgreSQL runs) nests past the
        // decoder's depth; the escaped reading is one harmless SELECT.
        let deep = format!(
            r"select 'a\', 1; drop table if exists victim; select {}1; --' as b",
            "1+".repeat(200)
        );
        assert!(denied(&ro.check(&deep)), "{:?}", ro.check(&deep));
        // A word reserved in the parser's grammar but not in older servers'.
        assert!(denied(
            &ro.check("drop table if exists victim, system_user")
        ));
        // Only an unterminated literal lets the other reading decide.
        assert_eq!(ro.check(r"select 'C:\temp\'"), Verdict::Allow);
    }

    #[test]
    fn writes_the_first_walk_missed() {
        let g = rails(
            &["update_without_where", "delete_without_where"],
            &[],
            false,
            &[],
        );
        assert!(denied(&g.check(
            "insert into victim select * from victim on conflict (id) do update set salary = 0"
        )));
        assert_eq!(
            g.check("insert into victim values (1) on conflict (id) do update set salary = 0 where victim.id = 1"),
            Verdict::Allow
        );
        assert_eq!(
            g.check("insert into victim values (1) on conflict do nothing"),
            Verdict::Allow
        );
        assert!(denied(&g.check(
            "merge into victim using (select 1) s on true when matched then delete"
        )));
        let ro = rails(&[], &[], true, &[]);
        assert!(denied(
            &ro.check("copy (select 'x') to '/var/lib/postgresql/x'")
        ));
        assert!(denied(&ro.check("copy victim from '/etc/passwd'")));
        assert!(denied(
            &ro.check("select dblink_send_query('c', 'delete from t')")
        ));
    }

    #[test]
    fn the_sjis_reading_of_the_same_bytes_must_pass_too() {
        let g = rails(&["drop"], &[], false, &[]);
        let mut attack = b"select E'".to_vec();
        attack.extend_from_slice(&[0xC2, 0x81, 0x5C]);
        attack.extend_from_slice(b"'; drop table victim; --'");
        let text = std::str::from_utf8(&attack).unwrap();
        assert_eq!(g.check(text), Verdict::Allow, "as UTF-8 it is one SELECT");
        assert!(denied(&g.check_multibyte_view(&attack)));
        // Ordinary non-ASCII text is untouched.
        assert_eq!(
            g.check_multibyte_view("select 'naïve café', E'résumé\\n'".as_bytes()),
            Verdict::Allow
        );
    }

    #[test]
    fn writing_pg_settings_cannot_switch_the_encoding() {
        let g = rails(&[], &[], false, &[]);
        let v = g.check("update pg_settings set setting = 'SJIS' where name = 'client_encoding'");
        assert!(
            matches!(&v, Verdict::Deny { rule, .. } if rule == "client_encoding"),
            "{v:?}"
        );
        assert_eq!(g.check("select * from pg_settings"), Verdict::Allow);
        assert!(encoding_refusal(
            "update pg_catalog.pg_settings set setting = 'x' where name = 'y'",
            DEFAULT_MAX_INSPECTED
        )
        .is_some());
    }

    #[test]
    fn read_only_cannot_be_switched_off() {
        let ro = rails(&[], &[], true, &[]);
        for sql in [
            "set default_transaction_read_only = off",
            "SET transaction_read_only TO false",
            "begin read write",
            "start transaction isolation level serializable, read write",
            "set session characteristics as transaction read write",
            "set transaction read write",
            "select set_config('default_transaction_read_only', 'off', false)",
            "select set_config('transaction_' || 'read_only', 'off', false)",
        ] {
            assert!(denied(&ro.check(sql)), "{sql}");
        }
        for ok in [
            "begin",
            "begin read only",
            "set transaction_read_only = on",
            "reset default_transaction_read_only",
            "set default_transaction_read_only to default",
            "select set_config('search_path', 'public', false)",
        ] {
            assert_eq!(ro.check(ok), Verdict::Allow, "{ok}");
        }
        // Connections that are not read_only may do as they like.
        let rw = rails(&[], &[], false, &[]);
        assert_eq!(rw.check("begin read write"), Verdict::Allow);
    }

    #[test]
    fn allow_unparsed_never_skips_the_rules() {
        let g = Guardrails::new(&GuardrailsConfig {
            read_only: true,
            allow_unparsed: true,
            ..Default::default()
        })
        .unwrap();
        assert!(denied(&g.check("delete from victim system_user")));
        let patterns_only = Guardrails::new(&GuardrailsConfig {
            allow_unparsed: true,
            deny_patterns: vec!["secret".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(patterns_only.check("selec wat"), Verdict::Allow);
        assert!(denied(&patterns_only.check("selec secret")));
    }
}

//! What each node PostgreSQL's parser finds means in guardrail rule
//! vocabulary: the rules it falls under and whether it writes.

use super::guardrails::RULES;
use super::sqltree::Found;

/// What one (possibly nested) statement does, in rule vocabulary.
#[derive(Debug)]
pub(super) struct Kind {
    pub rule: &'static str,
    pub implied: &'static [&'static str],
    pub what: &'static str,
    pub writes: bool,
}

impl Kind {
    pub fn rules(&self) -> impl Iterator<Item = &'static str> + '_ {
        std::iter::once(self.rule).chain(self.implied.iter().copied())
    }
}

pub(super) const fn k(
    rule: &'static str,
    implied: &'static [&'static str],
    what: &'static str,
    writes: bool,
) -> Kind {
    Kind {
        rule,
        implied,
        what,
        writes,
    }
}

/// Functions that change data or the server when called from a SELECT.
const WRITE_FUNCTIONS: &[&str] = &[
    "setval",
    "nextval",
    "lo_import",
    "lo_export",
    "lo_unlink",
    "lo_create",
    "lo_creat",
    "lo_from_bytea",
    "lo_put",
    "lowrite",
    "lo_truncate",
    "lo_truncate64",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_promote",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_stat_reset",
    "pg_stat_reset_shared",
    "pg_stat_reset_single_table_counters",
    "pg_stat_reset_single_function_counters",
    "pg_stat_reset_slru",
    "pg_stat_reset_replication_slot",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_replication_origin_create",
    "pg_replication_origin_drop",
    "pg_logical_emit_message",
    "pg_notify",
    "pg_import_system_collations",
    "dblink",
    "dblink_exec",
    "dblink_send_query",
    "dblink_open",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
];

/// Code guardrails cannot see into (a DO block, a procedure) may do anything.
pub(super) const EVERYTHING: &[&str] = RULES;

pub(super) fn kind_of(f: &Found) -> Option<Kind> {
    Some(match f {
        Found::Dml {
            stmt: "DeleteStmt",
            has_where: false,
        } => k(
            "delete_without_where",
            &["delete"],
            "DELETE without WHERE",
            true,
        ),
        Found::Dml {
            stmt: "DeleteStmt", ..
        } => k("delete", &[], "DELETE", true),
        Found::Dml {
            has_where: false, ..
        } => k(
            "update_without_where",
            &["update"],
            "UPDATE without WHERE",
            true,
        ),
        Found::Dml { .. } => k("update", &[], "UPDATE", true),
        Found::Copy {
            is_program: true, ..
        } => k("copy_program", &[], "COPY ... PROGRAM", true),
        Found::Copy {
            to_file: true,
            is_from,
            ..
        } => k(
            "copy_program",
            if *is_from { &["insert"] } else { &[] },
            "COPY to or from a server file",
            true,
        ),
        Found::Copy { is_from: true, .. } => k("insert", &[], "COPY FROM", true),
        Found::Copy { .. } => k("read", &[], "COPY TO", false),
        Found::Grant { is_grant: true, .. } => k("grant", &[], "GRANT", true),
        Found::Grant { .. } => k("revoke", &[], "REVOKE", true),
        // OBJECT_ROLE in PostgreSQL's ObjectType.
        Found::Rename { rename_type: 34 } => {
            k("alter", &["ddl", "create_role"], "ALTER ROLE", true)
        }
        Found::Rename { .. } => k("alter", &["ddl"], "ALTER", true),
        Found::SelectInto => k("ddl", &[], "SELECT INTO", true),
        Found::Upsert { has_where: false } => k(
            "update_without_where",
            &["update"],
            "INSERT ... ON CONFLICT DO UPDATE without WHERE",
            true,
        ),
        Found::Upsert { .. } => k("update", &[], "INSERT ... ON CONFLICT DO UPDATE", true),
        Found::SettingsTable => return None,
        Found::Call { name, .. } => {
            let short = name.rsplit('.').next().unwrap_or(name);
            if !WRITE_FUNCTIONS.contains(&short) {
                return None;
            }
            k(
                "write_function",
                &[],
                "a call of a function that writes",
                true,
            )
        }
        Found::Set { .. } => return None,
        Found::Stmt(s) => by_statement(s)?,
    })
}

fn by_statement(s: &str) -> Option<Kind> {
    Some(match s {
        "SelectStmt" | "VariableShowStmt" | "TransactionStmt" | "DeclareCursorStmt"
        | "FetchStmt" | "ClosePortalStmt" | "DiscardStmt" | "DeallocateStmt" | "PrepareStmt"
        | "ExecuteStmt" | "ListenStmt" | "UnlistenStmt" | "ConstraintsSetStmt" | "ExplainStmt"
        | "ExplainAnalyze" | "ReturnStmt" => return None,
        "InsertStmt" => k("insert", &[], "INSERT", true),
        "LockingClause" => k("other", &[], "SELECT ... FOR UPDATE/SHARE", true),
        "MergeStmt" => k(
            "update",
            &[
                "insert",
                "delete",
                "update_without_where",
                "delete_without_where",
            ],
            "MERGE",
            true,
        ),
        "TruncateStmt" => k("truncate", &["ddl"], "TRUNCATE", true),
        "CreateRoleStmt" => k("create_role", &["ddl"], "CREATE ROLE", true),
        "AlterRoleStmt" | "AlterRoleSetStmt" => {
            k("alter", &["ddl", "create_role"], "ALTER ROLE", true)
        }
        "DropRoleStmt" => k("drop", &["ddl", "create_role"], "DROP ROLE", true),
        "DoStmt" => k(
            "ddl",
            EVERYTHING,
            "DO block (code guardrails cannot see into)",
            true,
        ),
        "CallStmt" => k(
            "ddl",
            EVERYTHING,
            "CALL (a procedure guardrails cannot see into)",
            true,
        ),
        s if s.starts_with("Drop") => k("drop", &["ddl"], "DROP", true),
        s if s.starts_with("Alter") || s == "ReassignOwnedStmt" => {
            k("alter", &["ddl"], "ALTER", true)
        }
        s if s.starts_with("Create")
            || s.starts_with("Define")
            || matches!(
                s,
                "IndexStmt"
                    | "ViewStmt"
                    | "RuleStmt"
                    | "CommentStmt"
                    | "SecLabelStmt"
                    | "CompositeTypeStmt"
                    | "ReindexStmt"
                    | "ClusterStmt"
                    | "RefreshMatViewStmt"
                    | "ImportForeignSchemaStmt"
            ) =>
        {
            k("ddl", &[], "DDL", true)
        }
        // VariableSetStmt is a Found::Set; every other statement (NOTIFY,
        // VACUUM, LOCK, CHECKPOINT, LOAD, …) counts as a write.
        _ => k("other", &[], "data-changing or administrative", true),
    })
}

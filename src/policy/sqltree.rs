//! A complete, allocation-free walk over PostgreSQL's own parse tree.
//!
//! pg_query hands back the tree as prost structs that derive `Serialize`.
//! Instead of a hand-written visitor over ~270 node types (which would miss
//! the next one added), this module is a `serde::Serializer` that records
//! only what guardrails need while serde drives it through every field:
//! each statement node met anywhere in the tree, whether a DELETE/UPDATE has
//! a WHERE, COPY's direction, and the names and first constant argument of
//! function calls. Nothing is copied except those few strings.

use serde::ser::{self, Serialize};

/// One node met in the tree that guardrails classify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A statement node (`…Stmt`) other than the kinds below.
    Stmt(&'static str),
    /// DELETE or UPDATE, and whether it has a WHERE.
    Dml {
        stmt: &'static str,
        has_where: bool,
    },
    Copy {
        is_from: bool,
        is_program: bool,
        /// `COPY … TO/FROM 'server file'`.
        to_file: bool,
    },
    /// `INSERT … ON CONFLICT DO UPDATE`, and whether that update has a WHERE.
    Upsert {
        has_where: bool,
    },
    /// A reference to `pg_settings` (writing it calls set_config).
    SettingsTable,
    Grant {
        stmt: &'static str,
        is_grant: bool,
    },
    Rename {
        rename_type: i32,
    },
    /// `SELECT … INTO`.
    SelectInto,
    /// A function call: its (possibly qualified) name, lower-cased, and
    /// its first argument when that is a string constant.
    Call {
        name: String,
        first_arg: Option<String>,
    },
    /// `SET`/`RESET`: the variable name (empty for RESET ALL) and the first
    /// argument when it is a constant.
    Set {
        name: String,
        first_arg: Option<String>,
        reset: bool,
    },
}

/// Walks `node` (any pg_query protobuf value) and returns what it met, in order.
pub fn walk<T: Serialize + ?Sized>(node: &T) -> Vec<Found> {
    let mut w = Walker::default();
    // The walker never fails: serde errors only come from the walker itself.
    let _ = node.serialize(&mut w);
    w.found
}

#[derive(Debug)]
struct Frame {
    name: &'static str,
    field: &'static str,
    /// Index in the sequence currently being serialized under `field`.
    index: usize,
    /// Index into `found` of the entry this frame produced, if any.
    entry: Option<usize>,
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    found: Vec<Found>,
    /// The next value is the direct value of the top frame's field.
    fresh: bool,
}

impl Walker {
    fn top(&self) -> Option<&Frame> {
        self.stack.last()
    }

    /// The frame `up` levels below the top (0 = top).
    fn frame(&self, up: usize) -> Option<&Frame> {
        self.stack.len().checked_sub(up + 1).map(|i| &self.stack[i])
    }

    fn entry_mut(&mut self, up: usize) -> Option<&mut Found> {
        let i = self.frame(up)?.entry?;
        self.found.get_mut(i)
    }

    fn push(&mut self, name: &'static str) {
        let entry = match name {
            "DeleteStmt" | "UpdateStmt" => Some(Found::Dml {
                stmt: name,
                has_where: false,
            }),
            "CopyStmt" => Some(Found::Copy {
                is_from: false,
                is_program: false,
                to_file: false,
            }),
            "GrantStmt" | "GrantRoleStmt" => Some(Found::Grant {
                stmt: name,
                is_grant: false,
            }),
            "RenameStmt" => Some(Found::Rename { rename_type: 0 }),
            "FuncCall" => Some(Found::Call {
                name: String::new(),
                first_arg: None,
            }),
            "VariableSetStmt" => Some(Found::Set {
                name: String::new(),
                first_arg: None,
                reset: false,
            }),
            // SELECT … FOR UPDATE/SHARE writes row locks: PostgreSQL refuses
            // it in a read-only transaction, and so does read_only.
            "LockingClause" => Some(Found::Stmt("LockingClause")),
            n if n.ends_with("Stmt") && n != "RawStmt" => Some(Found::Stmt(n)),
            _ => None,
        };
        let entry = entry.map(|e| {
            self.found.push(e);
            self.found.len() - 1
        });
        self.stack.push(Frame {
            name,
            field: "",
            index: 0,
            entry,
        });
        self.fresh = false;
    }

    fn pop(&mut self) {
        self.stack.pop();
        self.fresh = false;
    }

    fn field(&mut self, key: &'static str) {
        if let Some(f) = self.stack.last_mut() {
            f.field = key;
            f.index = 0;
        }
        self.fresh = true;
    }

    /// A value became known: `Some`, a bool, an integer.
    fn some(&mut self) {
        if !self.fresh {
            return;
        }
        self.fresh = false;
        let Some(top) = self.top() else { return };
        match (top.name, top.field) {
            ("DeleteStmt" | "UpdateStmt", "where_clause") => {
                if let Some(Found::Dml { has_where, .. }) = self.entry_mut(0) {
                    *has_where = true;
                }
            }
            ("SelectStmt", "into_clause") => self.found.push(Found::SelectInto),
            ("OnConflictClause", "where_clause") => {
                if let Some(Found::Upsert { has_where }) = self.entry_mut(0) {
                    *has_where = true;
                }
            }
            _ => {}
        }
    }

    fn flag(&mut self, v: bool) {
        if !self.fresh {
            return;
        }
        self.fresh = false;
        let Some(top) = self.top() else { return };
        let field = top.field;
        match self.entry_mut(0) {
            Some(Found::Copy { is_from, .. }) if field == "is_from" => *is_from = v,
            Some(Found::Copy { is_program, .. }) if field == "is_program" => *is_program = v,
            Some(Found::Grant { is_grant, .. }) if field == "is_grant" => *is_grant = v,
            Some(Found::Set { reset, .. }) if field == "kind" => *reset = v,
            _ => {}
        }
    }

    fn int(&mut self, v: i64) {
        if !self.fresh {
            return;
        }
        let (name, field) = self.top().map(|t| (t.name, t.field)).unwrap_or(("", ""));
        // OnConflictClause.action: ONCONFLICT_UPDATE = 3 (proto enum); the
        // clause's WHERE comes after it and is marked in some().
        if name == "OnConflictClause" && field == "action" && v == 3 {
            self.found.push(Found::Upsert { has_where: false });
            let at = self.found.len() - 1;
            if let Some(t) = self.stack.last_mut() {
                t.entry = Some(at);
            }
            self.fresh = false;
            return;
        }
        match self.entry_mut(0) {
            Some(Found::Rename { rename_type }) if field == "rename_type" => {
                *rename_type = v as i32
            }
            // VariableSetStmt.kind: VAR_SET_VALUE = 1, VAR_SET_DEFAULT = 2,
            // VAR_SET_CURRENT = 3, VAR_SET_MULTI = 4, VAR_RESET = 5, VAR_RESET_ALL = 6.
            Some(Found::Set { reset, .. }) if field == "kind" => *reset = v >= 5,
            _ => {}
        }
        self.fresh = false;
    }

    fn string(&mut self, v: &str) {
        let fresh = std::mem::take(&mut self.fresh);
        if !fresh {
            return;
        }
        let top = self.top().map(|t| (t.name, t.field));
        // FuncCall.funcname is a list of String{sval}: [FuncCall funcname] [Node node] [String sval].
        if top == Some(("String", "sval")) {
            let name_part =
                matches!(self.frame(2), Some(f) if f.name == "FuncCall" && f.field == "funcname");
            if name_part {
                if let Some(Found::Call { name, .. }) = self.entry_mut(2) {
                    if !name.is_empty() {
                        name.push('.');
                    }
                    name.push_str(&v.to_lowercase());
                }
                return;
            }
            // A string constant as the first argument:
            // [FuncCall|VariableSetStmt args#0] [Node node] [AConst val] [String sval].
            let first_arg = matches!(self.frame(1), Some(f) if f.name == "AConst")
                && matches!(self.frame(3), Some(f) if (f.name == "FuncCall" || f.name == "VariableSetStmt") && f.field == "args" && f.index == 0);
            if first_arg {
                match self.entry_mut(3) {
                    Some(Found::Call { first_arg, .. }) | Some(Found::Set { first_arg, .. }) => {
                        *first_arg = Some(v.to_string())
                    }
                    _ => {}
                }
            }
            return;
        }
        if top == Some(("RangeVar", "relname")) && v.eq_ignore_ascii_case("pg_settings") {
            self.found.push(Found::SettingsTable);
            return;
        }
        if top == Some(("CopyStmt", "filename")) && !v.is_empty() {
            if let Some(Found::Copy { to_file, .. }) = self.entry_mut(0) {
                *to_file = true;
            }
            return;
        }
        if top == Some(("VariableSetStmt", "name")) {
            if let Some(Found::Set { name, .. }) = self.entry_mut(0) {
                *name = v.to_lowercase();
            }
        }
    }
}

#[derive(Debug)]
pub struct Never;

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sql tree walk")
    }
}

impl std::error::Error for Never {}

impl ser::Error for Never {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Never
    }
}

type R = Result<(), Never>;

impl ser::Serializer for &mut Walker {
    type Ok = ();
    type Error = Never;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, v: bool) -> R {
        self.flag(v);
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> R {
        self.int(v.into());
        Ok(())
    }
    fn serialize_i16(self, v: i16) -> R {
        self.int(v.into());
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> R {
        self.int(v.into());
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> R {
        self.int(v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> R {
        self.int(v.into());
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> R {
        self.int(v.into());
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> R {
        self.int(v.into());
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> R {
        self.int(v as i64);
        Ok(())
    }
    fn serialize_f32(self, _: f32) -> R {
        self.fresh = false;
        Ok(())
    }
    fn serialize_f64(self, _: f64) -> R {
        self.fresh = false;
        Ok(())
    }
    fn serialize_char(self, _: char) -> R {
        self.fresh = false;
        Ok(())
    }
    fn serialize_str(self, v: &str) -> R {
        self.string(v);
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> R {
        self.fresh = false;
        Ok(())
    }
    fn serialize_none(self) -> R {
        self.fresh = false;
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> R {
        self.some();
        // The Option's payload is still the field's direct value.
        self.fresh = true;
        value.serialize(self)
    }
    fn serialize_unit(self) -> R {
        self.fresh = false;
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> R {
        self.fresh = false;
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> R {
        self.fresh = false;
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, value: &T) -> R {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> R {
        // Oneof wrappers (`Node::DeleteStmt(..)`, `Val::Sval(..)`): the
        // payload struct names itself in serialize_struct.
        value.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, Never> {
        self.fresh = false;
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, Never> {
        self.fresh = false;
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Never> {
        self.fresh = false;
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Never> {
        self.fresh = false;
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self, Never> {
        self.fresh = false;
        Ok(self)
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Self, Never> {
        self.push(name);
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Self, Never> {
        self.push(variant);
        Ok(self)
    }
}

impl ser::SerializeSeq for &mut Walker {
    type Ok = ();
    type Error = Never;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> R {
        let r = value.serialize(&mut **self);
        if let Some(f) = self.stack.last_mut() {
            f.index += 1;
        }
        self.fresh = false;
        r
    }
    fn end(self) -> R {
        Ok(())
    }
}

/// Tuples carry no field names: their elements are walked as they come.
macro_rules! walk_elements {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for &mut Walker {
            type Ok = ();
            type Error = Never;
            fn $method<T: ?Sized + Serialize>(&mut self, value: &T) -> R {
                value.serialize(&mut **self)
            }
            fn end(self) -> R {
                Ok(())
            }
        }
    )*};
}

walk_elements!(
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for &mut Walker {
    type Ok = ();
    type Error = Never;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, _: &T) -> R {
        Ok(())
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> R {
        value.serialize(&mut **self)
    }
    fn end(self) -> R {
        Ok(())
    }
}

impl ser::SerializeStruct for &mut Walker {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, key: &'static str, value: &T) -> R {
        self.field(key);
        let r = value.serialize(&mut **self);
        self.fresh = false;
        r
    }
    fn end(self) -> R {
        self.pop();
        Ok(())
    }
}

impl ser::SerializeStructVariant for &mut Walker {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, key: &'static str, value: &T) -> R {
        self.field(key);
        let r = value.serialize(&mut **self);
        self.fresh = false;
        r
    }
    fn end(self) -> R {
        self.pop();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(sql: &str) -> Vec<Found> {
        let tree = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).unwrap();
        walk(&tree.protobuf)
    }

    #[test]
    fn sees_nested_statements_and_where() {
        let f = found("copy (delete from victim returning *) to stdout");
        assert_eq!(
            f,
            vec![
                Found::Copy {
                    is_from: false,
                    is_program: false,
                    to_file: false
                },
                Found::Dml {
                    stmt: "DeleteStmt",
                    has_where: false
                }
            ]
        );
        let f = found("with d as (update t set a = 1 where b returning 1) select * from d");
        assert!(f.contains(&Found::Dml {
            stmt: "UpdateStmt",
            has_where: true
        }));
        assert!(found("copy t from program 'x'").contains(&Found::Copy {
            is_from: true,
            is_program: true,
            to_file: true
        }));
        assert!(found("select * into x from t").contains(&Found::SelectInto));
        assert_eq!(
            found("create user bob"),
            vec![Found::Stmt("CreateRoleStmt")]
        );
    }

    #[test]
    fn function_calls_and_set() {
        let f = found("select pg_catalog.set_config('client_encoding', 'SJIS', false)");
        assert!(f.contains(&Found::Call {
            name: "pg_catalog.set_config".into(),
            first_arg: Some("client_encoding".into())
        }));
        let f = found("select set_config('client_' || 'encoding', 'SJIS', false)");
        assert!(f.contains(&Found::Call {
            name: "set_config".into(),
            first_arg: None
        }));
        assert_eq!(
            found("set client_encoding to 'SJIS'"),
            vec![Found::Set {
                name: "client_encoding".into(),
                first_arg: Some("SJIS".into()),
                reset: false
            }]
        );
        assert_eq!(
            found("set names 'sjis'"),
            vec![Found::Set {
                name: "client_encoding".into(),
                first_arg: Some("sjis".into()),
                reset: false
            }]
        );
        assert_eq!(
            found("reset all"),
            vec![Found::Set {
                name: String::new(),
                first_arg: None,
                reset: true
            }]
        );
        let f = found("select \"PG_SLEEP\"(1), lower(name) from t");
        assert!(f.contains(&Found::Call {
            name: "pg_sleep".into(),
            first_arg: None
        }));
    }
}

//! Which upstream columns the masking rules cover. RowDescription names a
//! column by (table OID, attribute number); this map, read from the catalog
//! on the session's own upstream connection before the client's first byte,
//! turns that into the rule for `schema.table.column`.

use std::collections::HashMap;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::codec::{self, put_frame};
use super::upstream::{read_frame, Io};
use super::PgError;
use crate::mask::{Engine, Strategy};

pub type Rule = Option<(Strategy, String)>;

#[derive(Debug, Default)]
pub struct Catalog {
    /// (table OID, attnum) → rule, only for columns a rule covers.
    pub columns: HashMap<(u32, i16), (Strategy, String)>,
    /// (schema, table) → rule per column position, for `COPY table TO STDOUT`.
    pub tables: HashMap<(String, String), Vec<Rule>>,
}

impl Catalog {
    pub fn rule(&self, table_oid: u32, attnum: i16) -> Option<&(Strategy, String)> {
        self.columns.get(&(table_oid, attnum))
    }
}

/// Glob (`*`, `?`) to an ILIKE pattern literal, quotes doubled.
fn like(glob: &str) -> String {
    let mut out = String::new();
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out
}

pub fn query(engine: &Engine) -> String {
    let names: Vec<String> = engine
        .column_patterns()
        .iter()
        .map(|p| like(p.rsplit('.').next().unwrap_or(p)))
        .collect();
    let filter = if names.iter().any(|n| n == "%") {
        String::new()
    } else {
        let list: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
        format!(
            " and a.attrelid in (select attrelid from pg_attribute where attnum > 0 and attname ilike any (array[{}]))",
            list.join(", ")
        )
    };
    // The client may have set search_path to shadow catalog names: pin it.
    format!(
        "set search_path = pg_catalog, pg_temp; select a.attrelid::int8, a.attnum, n.nspname, c.relname, a.attname \
         from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace \
         where a.attnum > 0 and not a.attisdropped and c.relkind in ('r', 'p', 'v', 'm', 'f') \
         and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg_toast%'{filter} \
         order by a.attrelid, a.attnum; reset search_path"
    )
}

/// Runs the catalog query on an idle, logged-in upstream connection.
pub async fn load(
    stream: &mut Box<dyn Io>,
    buf: &mut BytesMut,
    engine: &Engine,
) -> Result<Catalog, PgError> {
    let limit = super::upstream::LOGIN_TIMEOUT;
    tokio::time::timeout(limit, read_catalog(stream, buf, engine))
        .await
        .map_err(|_| PgError::Timeout(limit.as_secs()))?
}

async fn read_catalog(
    stream: &mut Box<dyn Io>,
    buf: &mut BytesMut,
    engine: &Engine,
) -> Result<Catalog, PgError> {
    let sql = query(engine);
    let mut out = BytesMut::new();
    let mut body = sql.into_bytes();
    body.push(0);
    put_frame(&mut out, b'Q', &body);
    stream.write_all(&out).await?;
    let mut cat = Catalog::default();
    let mut error = None;
    loop {
        let (tag, frame) = read_frame(stream, buf, 1 << 20).await?;
        match tag {
            b'D' => {
                let row = codec::text_row(&frame)?;
                if row.len() != 5 {
                    return Err(PgError::Protocol("unexpected catalog row".into()));
                }
                let (Some(oid), Some(attnum), Some(schema), Some(table), Some(col)) = (
                    row[0].as_deref(),
                    row[1].as_deref(),
                    row[2].clone(),
                    row[3].clone(),
                    row[4].as_deref(),
                ) else {
                    continue;
                };
                let (Ok(oid), Ok(attnum)) = (oid.parse::<u32>(), attnum.parse::<i16>()) else {
                    continue;
                };
                let rule = engine
                    .column_rule(Some((&schema, &table)), col)
                    .map(|(s, p)| (s, p.to_string()));
                if let Some(r) = &rule {
                    cat.columns.insert((oid, attnum), r.clone());
                }
                cat.tables.entry((schema, table)).or_default().push(rule);
            }
            b'E' => error = Some(codec::error_fields(&frame).1),
            b'Z' => break,
            _ => {}
        }
    }
    match error {
        Some(e) => Err(PgError::Protocol(format!(
            "catalog lookup for masking failed: {e}"
        ))),
        None => Ok(cat),
    }
}

#[cfg(test)]
mod tests {
    use super::like;

    #[test]
    fn globs_become_like_patterns() {
        assert_eq!(like("ssn"), "ssn");
        assert_eq!(like("e*_x?"), "e%\\_x_");
        assert_eq!(like("o'brien"), "o''brien");
    }
}

/// How long a connection's column-rule catalog is reused before it is read again.
const CATALOG_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// Catalogs per connection, shared by this instance's sessions.
#[derive(Default)]
pub struct Cache {
    entries: std::sync::Mutex<HashMap<String, (std::time::Instant, std::sync::Arc<Catalog>)>>,
}

impl Cache {
    /// The catalog for `connection`, read on `stream` when stale.
    pub async fn get(
        &self,
        connection: &str,
        engine: &Engine,
        stream: &mut Box<dyn Io>,
        buf: &mut BytesMut,
    ) -> Result<std::sync::Arc<Catalog>, PgError> {
        if !engine.has_column_rules() {
            return Ok(Default::default());
        }
        if let Ok(cache) = self.entries.lock() {
            if let Some((at, c)) = cache.get(connection) {
                if at.elapsed() < CATALOG_TTL {
                    return Ok(c.clone());
                }
            }
        }
        let fresh = std::sync::Arc::new(load(stream, buf, engine).await?);
        if let Ok(mut cache) = self.entries.lock() {
            cache.insert(
                connection.to_string(),
                (std::time::Instant::now(), fresh.clone()),
            );
        }
        Ok(fresh)
    }
}

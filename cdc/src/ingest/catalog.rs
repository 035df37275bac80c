//! Catalog look-ups the decoder needs: the decoding kind of each column type
//! (domains resolved to their base, enums to text, arrays to their element)
//! and each table's primary key. Cached per connection session.

use std::collections::HashMap;

use pgcdc_schema::value::PgType;

use crate::replication::ReplicationError;

/// Type and key information from the source's catalog.
pub(crate) struct Catalog {
    client: tokio_postgres::Client,
    types: HashMap<u32, PgType>,
    type_names: HashMap<u32, String>,
}

/// Deepest domain/array nesting we follow before giving up (catalog cycles cannot happen, but
/// we never trust a loop bound to data).
const MAX_TYPE_DEPTH: usize = 16;

impl Catalog {
    /// Wraps an ordinary connection to the source.
    pub(crate) fn new(client: tokio_postgres::Client) -> Self {
        Catalog {
            client,
            types: HashMap::new(),
            type_names: HashMap::new(),
        }
    }

    /// The connection, for other look-ups on the same session.
    pub(crate) fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    /// The decoding kind of the type with this OID.
    pub(crate) async fn resolve_type(&mut self, oid: u32) -> Result<PgType, ReplicationError> {
        if let Some(t) = PgType::from_builtin_oid(oid) {
            return Ok(t);
        }
        if let Some(t) = self.types.get(&oid) {
            return Ok(t.clone());
        }
        let t = self.lookup(oid, 0).await?;
        self.types.insert(oid, t.clone());
        Ok(t)
    }

    /// The type's name as Postgres spells it in `pg_type` (`int4`, `_text`), for
    /// schema events; cached.
    pub(crate) async fn type_name(&mut self, oid: u32) -> Result<String, ReplicationError> {
        if let Some(name) = self.type_names.get(&oid) {
            return Ok(name.clone());
        }
        let row = self
            .client
            .query_opt("SELECT typname::text FROM pg_type WHERE oid = $1", &[&oid])
            .await?;
        let name = match row {
            Some(row) => row.try_get::<_, String>(0)?,
            None => format!("oid:{oid}"),
        };
        self.type_names.insert(oid, name.clone());
        Ok(name)
    }

    async fn lookup(&self, oid: u32, depth: usize) -> Result<PgType, ReplicationError> {
        if let Some(t) = PgType::from_builtin_oid(oid) {
            return Ok(t);
        }
        if depth > MAX_TYPE_DEPTH {
            return Ok(PgType::Other);
        }
        let row = self
            .client
            .query_opt(
                "SELECT typtype::text, typbasetype, typelem, typcategory::text FROM pg_type WHERE oid = $1",
                &[&oid],
            )
            .await?;
        let Some(row) = row else {
            return Ok(PgType::Other);
        };
        let typtype: String = row.get(0);
        let base: u32 = row.get(1);
        let elem: u32 = row.get(2);
        let category: String = row.get(3);
        Ok(match (typtype.as_str(), category.as_str()) {
            ("d", _) => Box::pin(self.lookup(base, depth + 1)).await?,
            ("e", _) => PgType::Text,
            (_, "A") if elem != 0 => {
                PgType::Array(Box::new(Box::pin(self.lookup(elem, depth + 1)).await?))
            }
            _ => PgType::Other,
        })
    }

    /// Writes a non-transactional heartbeat message into the WAL, so that the slot
    /// moves even when nothing else is written.
    pub(crate) async fn heartbeat(&self) -> Result<(), tokio_postgres::Error> {
        self.client
            .execute(
                "SELECT pg_logical_emit_message(false, 'pgcdc.heartbeat', '')",
                &[],
            )
            .await
            .map(|_| ())
    }

    /// OIDs of the partitioned tables this table is a partition of, nearest first
    /// (empty for a table that is no partition).
    pub(crate) async fn partition_ancestors(
        &self,
        table_oid: u32,
    ) -> Result<Vec<u32>, ReplicationError> {
        let rows = self
            .client
            .query(
                "SELECT relid::oid FROM pg_partition_ancestors($1::oid::regclass) WHERE relid::oid <> $1::oid",
                &[&table_oid],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get::<_, u32>(0)).collect())
    }

    /// Primary key column names of the table, in key order (empty when it has none).
    pub(crate) async fn primary_key(
        &self,
        table_oid: u32,
    ) -> Result<Vec<String>, ReplicationError> {
        let rows = self
            .client
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[]) \
                 WHERE i.indrelid = $1 AND i.indisprimary \
                 ORDER BY array_position(i.indkey::int2[], a.attnum)",
                &[&table_oid],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }
}

//! Which captured table a Relation message belongs to, matched by OID: a renamed
//! table stays captured, a partition attached since the start maps to its captured
//! root, and anything else stops the reader (see `ReaderError::UnplacedRelation`).

use std::time::Duration;

use pgcdc_schema::{Lsn, TableName};

use super::catalog::Catalog;
use super::reader_error::ReaderError;
use crate::source::identity::Capture;

/// How long a partition attached by a just-decoded transaction may take to show in
/// the catalog (the commit is in the WAL before it is visible to other sessions).
const ATTACH_VISIBLE_WITHIN: Duration = Duration::from_secs(2);

/// The captured table a Relation message belongs to (None: one of the publication's
/// other tables), matched by OID; a rename is warned about once per new name.
pub(super) async fn place_relation(
    rel: &crate::pgoutput::Relation,
    at: Lsn,
    capture: &mut Capture,
    catalog: &Catalog,
    publication: &str,
) -> Result<Option<TableName>, ReaderError> {
    let now = TableName {
        schema: rel.namespace.clone(),
        table: rel.name.clone(),
    };
    if let Some(identity) = capture.tables.get(&rel.id).cloned() {
        if let Some(before) = capture.names.get(&rel.id).filter(|b| **b != now) {
            tracing::warn!(table = %identity, from = %before, to = %now, oid = rel.id,
                "captured table renamed: it stays captured (matched by OID), its events now carry the new name and reach the same sinks and triggers; update source.tables (and sinks' and triggers' table names) to the new name");
        }
        capture.names.insert(rel.id, now);
        return Ok(Some(identity));
    }
    if capture.skipped.contains(&rel.id) {
        return Ok(None);
    }
    // Not known at start: a partition attached to a captured table since, or else
    // something that cannot be placed. (With publish_via_partition_root pgoutput sends
    // the new partition's Relation too, though its changes come under the root's.)
    // The walsender may decode the attaching transaction a moment before other
    // sessions see it committed, so the catalog is asked again for a short while.
    let deadline = tokio::time::Instant::now() + ATTACH_VISIBLE_WITHIN;
    loop {
        for ancestor in catalog.partition_ancestors(rel.id).await? {
            if let Some(identity) = capture.tables.get(&ancestor).cloned() {
                tracing::info!(table = %identity, partition = %now, oid = rel.id, "new partition of a captured table: captured");
                capture.tables.insert(rel.id, identity.clone());
                capture.names.insert(rel.id, now);
                return Ok(Some(identity));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(ReaderError::UnplacedRelation {
        lsn: at,
        oid: rel.id,
        table: now,
        publication: publication.to_string(),
    })
}

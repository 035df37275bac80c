//! May the role replicate? The REPLICATION attribute (or superuser) in plain
//! Postgres and in the managed services that keep it (Google Cloud SQL, Azure
//! Database for PostgreSQL, where an admin runs `ALTER ROLE ... WITH
//! REPLICATION`), or membership in the role a managed service grants it
//! through instead (Amazon RDS and Aurora: `GRANT rds_replication TO ...`,
//! while `rolreplication` stays false).

use pgcdc_schema::quote_ident;
use tokio_postgres::Client;

use super::{fail, ok, sql_message, Check};

/// Roles through which a managed service grants logical replication, and the service.
/// In plain Postgres membership in a role never grants REPLICATION, so a
/// membership found here is trusted as the service's grant, not re-checked.
const MANAGED_REPLICATION_ROLES: &[(&str, &str)] = &[("rds_replication", "Amazon RDS / Aurora")];

/// The role check, and whether the role is a superuser.
pub(super) async fn check_role(client: &Client) -> (Check, bool) {
    let names: Vec<&str> = MANAGED_REPLICATION_ROLES.iter().map(|(r, _)| *r).collect();
    // pg_has_role(.., 'MEMBER') follows membership chains (rds_superuser -> rds_replication).
    let row = client
        .query_one(
            "SELECT current_user::text, r.rolreplication, r.rolsuper, \
             ARRAY(SELECT m.rolname::text FROM pg_roles m \
                   WHERE m.rolname = ANY($1) AND pg_has_role(current_user, m.oid, 'MEMBER') \
                   ORDER BY m.rolname) \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[&names],
        )
        .await;
    let row = match row {
        Ok(row) => row,
        Err(e) => {
            return (
                fail("role", sql_message(&e), "check the source connection"),
                false,
            )
        }
    };
    let user: String = row.get(0);
    let replication: bool = row.get(1);
    let superuser: bool = row.get(2);
    let granted_by: Vec<String> = row.get(3);
    (judge(&user, replication, superuser, &granted_by), superuser)
}

/// The verdict from what the catalog said.
fn judge(user: &str, replication: bool, superuser: bool, granted_by: &[String]) -> Check {
    if superuser {
        return ok("role", format!("{user} is a superuser"));
    }
    if replication {
        return ok("role", format!("{user} has the REPLICATION attribute"));
    }
    if let Some(role) = granted_by.first() {
        let service = MANAGED_REPLICATION_ROLES
            .iter()
            .find(|(r, _)| r == role)
            .map_or("a managed service", |(_, s)| s);
        return ok(
            "role",
            format!(
                "{user} is a member of {role}, which grants logical replication on {service} \
                 (elsewhere membership does not: there the role needs the REPLICATION attribute)"
            ),
        );
    }
    let quoted = quote_ident(user);
    fail(
        "role",
        format!("role {user} lacks the REPLICATION attribute"),
        format!(
            "as a superuser run ALTER ROLE {quoted} REPLICATION; — on Amazon RDS/Aurora: \
             GRANT rds_replication TO {quoted}; on Google Cloud SQL (as a cloudsqlsuperuser) \
             or Azure Database for PostgreSQL (as the admin, azure_pg_admin): \
             ALTER ROLE {quoted} WITH REPLICATION;"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(c: &Check) -> String {
        match &c.outcome {
            Ok(d) => format!("ok {d}"),
            Err(p) => format!("FAIL {p}"),
        }
    }

    #[test]
    fn role_verdicts_name_how_the_role_may_replicate() {
        assert!(text(&judge("u", true, false, &[])).contains("REPLICATION attribute"));
        assert!(text(&judge("u", false, true, &[])).contains("superuser"));
        let rds = text(&judge("u", false, false, &["rds_replication".to_owned()]));
        assert!(
            rds.starts_with("ok") && rds.contains("rds_replication") && rds.contains("RDS"),
            "{rds}"
        );
        let none = text(&judge("my user", false, false, &[]));
        assert!(
            none.starts_with("FAIL")
                && none.contains("ALTER ROLE \"my user\" REPLICATION")
                && none.contains("GRANT rds_replication TO \"my user\"")
                && none.contains("Cloud SQL")
                && none.contains("Azure"),
            "{none}"
        );
    }
}

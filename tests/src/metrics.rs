//! A running pgcdc's `/metrics`, read as a test reads it.

/// The value of `series` (a name with its labels, as printed) on the `/metrics`
/// of the admin API at `admin` (`http://host:port`); 0 when it is not there yet.
pub async fn metric(admin: &str, series: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("{admin}/metrics"))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0))
}

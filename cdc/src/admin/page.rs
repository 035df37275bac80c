//! The status page at `GET /`: one self-contained HTML file (inline CSS and
//! vanilla JS, no CDN, no build step) that polls `/api/status` and
//! `/api/audit` every 2 s and drives the DLQ replay/drop endpoints.

use axum::http::header;
use axum::response::IntoResponse;

/// The page, compiled into the binary so it works wherever pgcdc runs.
const STATUS_PAGE: &str = include_str!("status_page.html");

/// Scripts and styles are inline; the page talks only to this API, so the
/// policy allows nothing else (no third-party script can reach the token).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Serves the status page.
pub(crate) async fn status_page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // The page carries buttons that act with the admin token: no framing.
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        STATUS_PAGE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        let page = STATUS_PAGE.to_ascii_lowercase();
        for needle in ["<script src", "<link", "@import", "url(", "https://"] {
            assert!(!page.contains(needle), "the page references {needle:?}");
        }
        // The SVG namespace is an identifier, not a fetch; it is the only URL.
        let urls = page.matches("http://").count();
        let svg_ns = page.matches("http://www.w3.org/2000/svg").count();
        assert_eq!(
            urls, svg_ns,
            "the page holds a URL besides the SVG namespace"
        );
    }

    #[test]
    fn the_page_polls_the_api_and_offers_the_dlq_actions() {
        for needle in [
            "\"/api/status\"",
            "/api/audit?sink=",
            "/dlq/",
            "dataset.action",
            "Bearer ",
            "sessionStorage",
            "resync-list",
        ] {
            assert!(STATUS_PAGE.contains(needle), "the page lacks {needle:?}");
        }
    }

    #[tokio::test]
    async fn served_as_html_with_a_strict_policy() {
        let resp = status_page().await.into_response();
        let h = resp.headers();
        assert_eq!(
            h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
            Some("text/html; charset=utf-8")
        );
        let csp = h
            .get(header::CONTENT_SECURITY_POLICY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(csp.contains("connect-src 'self'") && csp.contains("default-src 'none'"));
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        assert!(body.starts_with(b"<!doctype html>"));
    }
}

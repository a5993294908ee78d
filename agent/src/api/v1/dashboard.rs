//! The web dashboard served from 4006: one page, its script and its style,
//! built into the binary (`dashboard/`); no outside resource is ever
//! loaded (the Content-Security-Policy allows this origin only). The files
//! hold no data and need no login; everything they show comes from the
//! API, with the session the page's login opened.

use super::https::Body;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                      form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The file at `path`, if it is one of the dashboard's.
pub fn serve(path: &str) -> Option<Response<Body>> {
    let (text, kind) = match path {
        "/" => return Some(redirect("/ui/")),
        // Browsers ask for it; there is none (and a 404 would be a console error).
        "/favicon.ico" => return Some(no_content()),
        "/ui" | "/ui/" => (INDEX, "text/html; charset=utf-8"),
        "/ui/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/ui/app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())).map_err(|n| match n {}).boxed());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    Some(response)
}

fn no_content() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).map_err(|n| match n {}).boxed());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

fn redirect(to: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).map_err(|n| match n {}).boxed());
    *response.status_mut() = StatusCode::FOUND;
    response.headers_mut().insert(header::LOCATION, HeaderValue::from_static(to));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_carry_a_policy_that_allows_this_origin_only() {
        for path in ["/ui/", "/ui/app.js", "/ui/app.css"] {
            let response = serve(path).expect(path);
            let policy = response.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(policy.starts_with("default-src 'none'") && !policy.contains("http"), "{policy}");
        }
        assert_eq!(serve("/").unwrap().status(), StatusCode::FOUND);
        assert!(serve("/ui/../etc/passwd").is_none() && serve("/api/v1/status").is_none());
        // The page loads nothing but its own two files.
        assert!(!INDEX.contains("http://") && !INDEX.contains("https://") && !SCRIPT.contains("innerHTML"));
    }
}

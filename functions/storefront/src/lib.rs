//! The storefront component: serves the web app under `web/` (embedded at build time by
//! `build.rs`) the way a static file server does, with a content type per extension,
//! an ETag per file and `If-None-Match` revalidation, and `index.html` for client-side
//! routes (paths with no file extension). The gateway routes `/`, `/assets/…` and
//! `/shop/…` here; everything else stays the API's.

use shop_domain::api::{ApiError, Response};

pub struct EmbeddedFile {
    /// Relative to `web/`, e.g. `assets/app.js`.
    pub path: &'static str,
    pub body: &'static [u8],
    /// A quoted strong validator derived from the content.
    pub etag: &'static str,
}

mod embedded {
    use super::EmbeddedFile;
    include!(concat!(env!("OUT_DIR"), "/files.rs"));
}

pub use embedded::FILES;

/// The `content-type` for a file name; text types say their charset.
pub fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Whether `If-None-Match` (a list of tags, or `*`) names `etag`. Weak comparison, as
/// RFC 9110 asks for this header: `W/"x"` matches `"x"`.
pub fn not_modified(if_none_match: Option<&str>, etag: &str) -> bool {
    let Some(header) = if_none_match else {
        return false;
    };
    header
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

fn find(files: &'static [EmbeddedFile], path: &str) -> Option<&'static EmbeddedFile> {
    files
        .binary_search_by(|file| file.path.cmp(path))
        .ok()
        .map(|i| &files[i])
}

/// A path names a client-side route (answered with the app's `index.html`) when it is
/// not under `assets/` and its last segment has no extension: `/shop/orders/o-1` is a
/// page of the app, `/assets/missing.js` and `/logo.png` are missing files.
fn is_client_route(relative: &str) -> bool {
    relative.split('/').next() != Some("assets") && !relative.rsplit('/').next().unwrap_or("").contains('.')
}

/// Answers `GET path` from `files`.
pub fn serve(files: &'static [EmbeddedFile], method: &str, path: &str, if_none_match: Option<&str>) -> Response {
    if method != "GET" {
        let mut response = Response::error(&ApiError::method_not_allowed("GET"));
        response.headers.push(("allow".into(), "GET".into()));
        return response;
    }
    let relative = path.trim_start_matches('/');
    let wanted = if relative.is_empty() || relative.ends_with('/') {
        format!("{relative}index.html")
    } else {
        relative.to_string()
    };
    let file = match find(files, &wanted) {
        Some(file) => file,
        None if is_client_route(relative.trim_end_matches('/')) => match find(files, "index.html") {
            Some(index) => index,
            None => return Response::error(&ApiError::not_found("the storefront has no index.html")),
        },
        None => return Response::error(&ApiError::not_found(format!("no file {path}"))),
    };
    // Files keep their names across versions (no build step fingerprints them), so a
    // browser revalidates each use; unchanged files cost a body-less 304.
    let headers = vec![
        ("etag".to_string(), file.etag.to_string()),
        ("cache-control".to_string(), "no-cache".to_string()),
    ];
    if not_modified(if_none_match, file.etag) {
        return Response {
            status: 304,
            headers,
            body: Vec::new(),
        };
    }
    let mut headers = headers;
    headers.push(("content-type".into(), content_type(file.path).into()));
    Response {
        status: 200,
        headers,
        body: file.body.to_vec(),
    }
}

#[cfg(target_arch = "wasm32")]
mod adapter {
    use spin_sdk::http::{Request, Response};
    use spin_sdk::http_component;

    #[http_component]
    fn handle(req: Request) -> Response {
        let if_none_match = req.header("if-none-match").and_then(|v| v.as_str());
        guest_kit::reply(crate::serve(
            crate::FILES,
            &req.method().to_string(),
            req.path(),
            if_none_match,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static FIXTURE: &[EmbeddedFile] = &[
        EmbeddedFile {
            path: "assets/app.js",
            body: b"export {}",
            etag: "\"js1\"",
        },
        EmbeddedFile {
            path: "index.html",
            body: b"<!doctype html>",
            etag: "\"idx\"",
        },
    ];

    fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
        response
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn files_are_served_with_their_type_and_validator() {
        let js = serve(FIXTURE, "GET", "/assets/app.js", None);
        assert_eq!(js.status, 200);
        assert_eq!(js.body, b"export {}");
        assert_eq!(header(&js, "content-type"), Some("text/javascript; charset=utf-8"));
        assert_eq!(header(&js, "etag"), Some("\"js1\""));
        assert_eq!(header(&js, "cache-control"), Some("no-cache"));
        let index = serve(FIXTURE, "GET", "/", None);
        assert_eq!(
            (index.status, index.body.as_slice()),
            (200, b"<!doctype html>".as_slice())
        );
        assert_eq!(header(&index, "content-type"), Some("text/html; charset=utf-8"));
    }

    #[test]
    fn client_routes_get_the_app_and_missing_files_a_json_404() {
        for route in ["/shop", "/shop/cart", "/shop/orders/o-1", "/shop/products/p-1/"] {
            let page = serve(FIXTURE, "GET", route, None);
            assert_eq!(page.status, 200, "{route}");
            assert_eq!(page.body, b"<!doctype html>", "{route}");
        }
        for missing in ["/assets/nope.js", "/assets/dir", "/assets/", "/logo.png", "/shop/x.css"] {
            let answer = serve(FIXTURE, "GET", missing, None);
            assert_eq!(answer.status, 404, "{missing}");
            assert_eq!(header(&answer, "content-type"), Some("application/json"));
            assert_eq!(answer.json_body()["error"]["code"], "not_found");
        }
    }

    #[test]
    fn a_known_validator_gets_a_bodyless_304() {
        for tag in ["\"js1\"", "W/\"js1\"", "\"old\", \"js1\"", "*"] {
            let answer = serve(FIXTURE, "GET", "/assets/app.js", Some(tag));
            assert_eq!(answer.status, 304, "{tag}");
            assert!(answer.body.is_empty());
            assert_eq!(header(&answer, "etag"), Some("\"js1\""));
        }
        assert_eq!(serve(FIXTURE, "GET", "/assets/app.js", Some("\"old\"")).status, 200);
    }

    #[test]
    fn only_get_is_served() {
        let answer = serve(FIXTURE, "POST", "/", None);
        assert_eq!(answer.status, 405);
        assert_eq!(header(&answer, "allow"), Some("GET"));
    }

    /// The embedded app is whole: an index, a known type for every file, and every
    /// module import, stylesheet and script it names is one of the files.
    #[test]
    fn the_embedded_app_references_only_files_it_has() {
        assert!(find(FILES, "index.html").is_some());
        assert!(FILES.windows(2).all(|w| w[0].path < w[1].path), "sorted for lookup");
        for file in FILES {
            assert_ne!(content_type(file.path), "application/octet-stream", "{}", file.path);
            let text = std::str::from_utf8(file.body).unwrap_or("");
            let dir = file.path.rsplit_once('/').map_or("", |(d, _)| d);
            for reference in references(text) {
                let target = resolve(dir, &reference);
                assert!(find(FILES, &target).is_some(), "{} names {reference}", file.path);
            }
        }
    }

    /// `from "./x.js"`, `import "./x.js"`, `href="/assets/x"`, `src="/assets/x"`.
    fn references(text: &str) -> Vec<String> {
        let mut found = Vec::new();
        for marker in ["from \"", "import \"", "href=\"", "src=\""] {
            for piece in text.split(marker).skip(1) {
                let target = piece.split('"').next().unwrap_or("");
                if target.starts_with("./") || target.starts_with("../") || target.starts_with("/assets/") {
                    found.push(target.to_string());
                }
            }
        }
        found
    }

    fn resolve(dir: &str, reference: &str) -> String {
        if let Some(absolute) = reference.strip_prefix('/') {
            return absolute.to_string();
        }
        let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
        for part in reference.split('/') {
            match part {
                "." => {}
                ".." => {
                    parts.pop();
                }
                other => parts.push(other),
            }
        }
        parts.join("/")
    }
}

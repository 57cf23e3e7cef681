//! The `spin-*` request headers Spin sets for a component, so components that read
//! them (spin-sdk's routers do) behave the same on this host.

use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::router::RouteMatch;

pub const FULL_URL: &str = "spin-full-url";
pub const PATH_INFO: &str = "spin-path-info";
pub const MATCHED_ROUTE: &str = "spin-matched-route";
pub const COMPONENT_ROUTE: &str = "spin-component-route";
pub const RAW_COMPONENT_ROUTE: &str = "spin-raw-component-route";
pub const BASE_PATH: &str = "spin-base-path";
pub const CLIENT_ADDR: &str = "spin-client-addr";
const PATH_MATCH_PREFIX: &str = "spin-path-match-";

/// The values for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpinHeaders {
    pub full_url: String,
    pub path_info: String,
    pub matched_route: String,
    pub component_route: String,
    pub raw_component_route: String,
    pub client_addr: String,
    pub params: Vec<(String, String)>,
}

impl SpinHeaders {
    /// For a request that arrived from outside and matched `route`.
    /// `host` is the request's `Host` header (Spin uses `localhost` when it is absent).
    pub fn for_route(
        route: &RouteMatch<'_>,
        scheme: &str,
        host: Option<&str>,
        path_and_query: &str,
        client: SocketAddr,
    ) -> Self {
        let raw = route.raw_route.to_string();
        // Spin reports an empty matched route for an exact root route.
        let matched_route = if route.pattern.to_string() == "/" {
            String::new()
        } else {
            raw.clone()
        };
        Self {
            full_url: format!("{scheme}://{}{path_and_query}", host.unwrap_or("localhost")),
            path_info: route.path_info.clone(),
            matched_route,
            component_route: route.pattern.without_wildcard(),
            raw_component_route: raw,
            client_addr: client.to_string(),
            params: route.params.clone(),
        }
    }

    /// For a request reaching a component through `http://<id>.spin.internal/...`:
    /// Spin treats it as if the route `/...` had matched, from an unspecified client.
    pub fn for_chained(path: &str, path_and_query: &str) -> Self {
        Self {
            full_url: format!("http://localhost{path_and_query}"),
            path_info: path.to_string(),
            matched_route: "/...".into(),
            component_route: String::new(),
            raw_component_route: "/...".into(),
            client_addr: "0.0.0.0:0".into(),
            params: Vec::new(),
        }
    }

    /// Writes the headers, replacing any `spin-*` header the caller sent so a client
    /// cannot spoof what the host asserts.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let spoofed: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("spin-"))
            .cloned()
            .collect();
        for name in spoofed {
            headers.remove(name);
        }
        let mut set = |name: &str, value: &str| {
            if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                headers.insert(n, v);
            }
        };
        set(FULL_URL, &self.full_url);
        set(PATH_INFO, &self.path_info);
        set(MATCHED_ROUTE, &self.matched_route);
        set(COMPONENT_ROUTE, &self.component_route);
        set(RAW_COMPONENT_ROUTE, &self.raw_component_route);
        set(BASE_PATH, "/");
        set(CLIENT_ADDR, &self.client_addr);
        for (name, value) in &self.params {
            let name = format!("{PATH_MATCH_PREFIX}{}", name.to_ascii_lowercase().replace('_', "-"));
            set(&name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::http::router::{Route, RoutePattern, Router};

    fn headers_for(route: &str, path_and_query: &str) -> HeaderMap {
        let router = Router::new(vec![Route {
            pattern: RoutePattern::parse(route).unwrap(),
            raw: route.into(),
            component: "c".into(),
        }]);
        let path = path_and_query.split('?').next().unwrap();
        let m = router.route(path).expect("route matches");
        let mut h = HeaderMap::new();
        h.insert("spin-full-url", HeaderValue::from_static("spoofed"));
        SpinHeaders::for_route(
            &m,
            "http",
            Some("127.0.0.1:3000"),
            path_and_query,
            "127.0.0.1:5555".parse().unwrap(),
        )
        .apply(&mut h);
        h
    }

    fn get<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
        h.get(name).map(|v| v.to_str().unwrap()).unwrap_or("<missing>")
    }

    #[test]
    fn exact_route() {
        let h = headers_for("/hello", "/hello?x=1");
        assert_eq!(get(&h, FULL_URL), "http://127.0.0.1:3000/hello?x=1");
        assert_eq!(get(&h, PATH_INFO), "");
        assert_eq!(get(&h, MATCHED_ROUTE), "/hello");
        assert_eq!(get(&h, COMPONENT_ROUTE), "/hello");
        assert_eq!(get(&h, RAW_COMPONENT_ROUTE), "/hello");
        assert_eq!(get(&h, BASE_PATH), "/");
        assert_eq!(get(&h, CLIENT_ADDR), "127.0.0.1:5555");
    }

    #[test]
    fn wildcard_route() {
        let h = headers_for("/api/...", "/api/a/b?q=2");
        assert_eq!(get(&h, FULL_URL), "http://127.0.0.1:3000/api/a/b?q=2");
        assert_eq!(get(&h, PATH_INFO), "/a/b");
        assert_eq!(get(&h, MATCHED_ROUTE), "/api/...");
        assert_eq!(get(&h, COMPONENT_ROUTE), "/api");
        assert_eq!(get(&h, RAW_COMPONENT_ROUTE), "/api/...");
        let root = headers_for("/...", "/");
        assert_eq!(get(&root, PATH_INFO), "/");
        assert_eq!(get(&root, COMPONENT_ROUTE), "");
    }

    #[test]
    fn parameters_become_path_match_headers() {
        let h = headers_for("/users/:user_id", "/users/7");
        assert_eq!(get(&h, "spin-path-match-user-id"), "7");
    }
}

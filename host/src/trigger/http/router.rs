//! Spin's HTTP routing: exact routes, `:name` parameters and a trailing `/...`
//! wildcard; the most specific matching route wins.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A parsed `route` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    segments: Vec<Segment>,
    wildcard: bool,
}

impl RoutePattern {
    /// Parses a route as Spin does: a missing leading `/` is implied, one trailing `/`
    /// is ignored, and a final `/...` (or `/*`) segment is the wildcard.
    pub fn parse(route: &str) -> Result<Self, String> {
        let parts: Vec<&str> = route.split('/').filter(|s| !s.is_empty()).collect();
        let mut segments = Vec::new();
        let mut wildcard = false;
        for (i, part) in parts.iter().enumerate() {
            if *part == "..." || *part == "*" {
                if i + 1 != parts.len() {
                    return Err(format!("route `{route}`: `...` is only allowed as the last segment"));
                }
                wildcard = true;
            } else if let Some(name) = part.strip_prefix(':') {
                if name.is_empty() {
                    return Err(format!("route `{route}`: parameter segment needs a name, e.g. `:id`"));
                }
                segments.push(Segment::Param(name.to_string()));
            } else if part.contains("...") {
                return Err(format!("route `{route}`: `...` must be a whole segment"));
            } else {
                segments.push(Segment::Literal(part.to_string()));
            }
        }
        Ok(Self { segments, wildcard })
    }

    /// Spin's precedence among routes matching the same path, compared segment by
    /// segment from the left: a literal beats a parameter, which beats the wildcard;
    /// a route that ends exactly where the path ends beats a wildcard matching nothing.
    fn precedence_key(&self) -> Vec<u8> {
        const END: u8 = 4;
        const LITERAL: u8 = 3;
        const PARAM: u8 = 2;
        const WILDCARD: u8 = 1;
        let mut key: Vec<u8> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => LITERAL,
                Segment::Param(_) => PARAM,
            })
            .collect();
        key.push(if self.wildcard { WILDCARD } else { END });
        key
    }

    /// Matches a request path (no query). On success returns the captured parameters
    /// and the path info (the part a trailing wildcard absorbed, `""` for exact routes).
    fn matches(&self, path: &str) -> Option<(Vec<(String, String)>, String)> {
        let mut rest = path;
        let mut params = Vec::new();
        for segment in &self.segments {
            let trimmed = rest.trim_start_matches('/');
            if trimmed.is_empty() {
                return None;
            }
            let end = trimmed.find('/').unwrap_or(trimmed.len());
            let value = &trimmed[..end];
            match segment {
                Segment::Literal(l) if l == value => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => params.push((name.clone(), value.to_string())),
            }
            rest = &trimmed[end..];
        }
        if self.wildcard {
            Some((params, rest.to_string()))
        } else if rest.trim_matches('/').is_empty() {
            Some((params, String::new()))
        } else {
            None
        }
    }

    /// The route with the wildcard removed (Spin's `spin-component-route`).
    pub fn without_wildcard(&self) -> String {
        let mut s = String::new();
        for seg in &self.segments {
            s.push('/');
            match seg {
                Segment::Literal(l) => s.push_str(l),
                Segment::Param(p) => {
                    s.push(':');
                    s.push_str(p);
                }
            }
        }
        s
    }
}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base = self.without_wildcard();
        match (base.is_empty(), self.wildcard) {
            (true, true) => f.write_str("/..."),
            (true, false) => f.write_str("/"),
            (false, true) => write!(f, "{base}/..."),
            (false, false) => f.write_str(&base),
        }
    }
}

/// One routable entry: a pattern and the component behind it.
#[derive(Debug, Clone)]
pub struct Route {
    pub pattern: RoutePattern,
    /// The route as written in the manifest.
    pub raw: String,
    pub component: String,
}

/// The outcome of routing a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch<'a> {
    pub component: &'a str,
    pub raw_route: &'a str,
    pub pattern: &'a RoutePattern,
    pub path_info: String,
    pub params: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Builds a router; routes are sorted by precedence so `route` can stop at the
    /// first match (matching routes never disagree on a segment's position, so the
    /// lexicographic order of their keys is the segment-by-segment order).
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.pattern.precedence_key()));
        Self { routes }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn route(&self, path: &str) -> Option<RouteMatch<'_>> {
        self.routes.iter().find_map(|r| {
            let (params, path_info) = r.pattern.matches(path)?;
            Some(RouteMatch {
                component: &r.component,
                raw_route: &r.raw,
                pattern: &r.pattern,
                path_info,
                params,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(&str, &str)]) -> Router {
        Router::new(
            routes
                .iter()
                .map(|(r, c)| Route {
                    pattern: RoutePattern::parse(r).unwrap(),
                    raw: r.to_string(),
                    component: c.to_string(),
                })
                .collect(),
        )
    }

    fn target(r: &Router, path: &str) -> Option<(String, String)> {
        r.route(path).map(|m| (m.component.to_string(), m.path_info))
    }

    #[test]
    fn most_specific_route_wins() {
        let r = router(&[
            ("/...", "root"),
            ("/api/...", "api"),
            ("/api/users/...", "users"),
            ("/api/health", "health"),
        ]);
        assert_eq!(target(&r, "/"), Some(("root".into(), "/".into())));
        assert_eq!(target(&r, "/other/x"), Some(("root".into(), "/other/x".into())));
        assert_eq!(target(&r, "/api"), Some(("api".into(), "".into())));
        assert_eq!(target(&r, "/api/orders/1"), Some(("api".into(), "/orders/1".into())));
        assert_eq!(target(&r, "/api/users/7"), Some(("users".into(), "/7".into())));
        assert_eq!(target(&r, "/api/health"), Some(("health".into(), "".into())));
        assert_eq!(
            target(&r, "/api/health/deep"),
            Some(("api".into(), "/health/deep".into()))
        );
    }

    #[test]
    fn exact_routes_do_not_match_longer_paths() {
        let r = router(&[("/hello", "hello")]);
        assert_eq!(target(&r, "/hello"), Some(("hello".into(), "".into())));
        assert_eq!(target(&r, "/hello/"), Some(("hello".into(), "".into())));
        assert_eq!(target(&r, "/hello/x"), None);
        assert_eq!(target(&r, "/hell"), None);
        assert_eq!(target(&r, "/"), None);
    }

    #[test]
    fn precedence_is_decided_segment_by_segment() {
        let r = router(&[("/foo/...", "wild"), ("/foo/:id", "param"), ("/:a/b", "first-param")]);
        assert_eq!(r.route("/foo/1").unwrap().component, "param");
        assert_eq!(r.route("/foo/1/2").unwrap().component, "wild");
        assert_eq!(r.route("/foo/b").unwrap().component, "param");
        assert_eq!(r.route("/bar/b").unwrap().component, "first-param");
        let r = router(&[("/foo", "exact"), ("/foo/...", "wild")]);
        assert_eq!(r.route("/foo").unwrap().component, "exact");
        assert_eq!(r.route("//foo/").unwrap().component, "exact");
        assert_eq!(r.route("/foobar"), None);
    }

    #[test]
    fn parameters_are_captured_and_rank_below_literals() {
        let r = router(&[("/users/:id", "one"), ("/users/me", "me")]);
        assert_eq!(r.route("/users/me").unwrap().component, "me");
        let m = r.route("/users/42").unwrap();
        assert_eq!(m.component, "one");
        assert_eq!(m.params, vec![("id".to_string(), "42".to_string())]);
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(RoutePattern::parse("/a/b/...").unwrap().to_string(), "/a/b/...");
        assert_eq!(RoutePattern::parse("/a/").unwrap().to_string(), "/a");
        assert_eq!(RoutePattern::parse("/").unwrap().to_string(), "/");
        assert_eq!(RoutePattern::parse("/...").unwrap().without_wildcard(), "");
        assert_eq!(RoutePattern::parse("a/*").unwrap().to_string(), "/a/...");
        assert!(RoutePattern::parse("/.../x").is_err());
        assert!(RoutePattern::parse("/x...").is_err());
    }
}

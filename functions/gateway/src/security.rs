//! Headers on every answer of the gateway, for a browser app served from the same
//! origin as the API (the storefront): scripts, styles and calls only from this origin,
//! no framing, no MIME sniffing, no referrer to other sites.

/// No inline script or style anywhere: the storefront loads everything from files.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

pub const HEADERS: [(&str, &str); 4] = [
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("x-frame-options", "DENY"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn directive(name: &str) -> Vec<&'static str> {
        CONTENT_SECURITY_POLICY
            .split(';')
            .map(str::trim)
            .find_map(|d| d.strip_prefix(name).filter(|rest| rest.starts_with(' ')))
            .map(|sources| sources.split_whitespace().collect())
            .unwrap_or_default()
    }

    #[test]
    fn only_this_origin_may_script_style_or_frame_the_shop() {
        for kind in ["script-src", "style-src", "connect-src"] {
            assert_eq!(directive(kind), ["'self'"], "{kind}");
        }
        assert_eq!(directive("frame-ancestors"), ["'none'"]);
        assert_eq!(directive("object-src"), ["'none'"]);
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }
}

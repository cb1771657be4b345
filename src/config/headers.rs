//! The checks of a route's header rules (`request_headers`,
//! `response_headers`, `respond.headers`) and the `respond.location`
//! template language.
//!
//! Guarantees: a rule names a valid header, sets a valid value (no CR, LF
//! or NUL), and never names a header portico owns: the hop-by-hop headers,
//! Host and the framing headers, the request id header, and on requests
//! also x-forwarded-*, Early-Data, Expect and every claim header of any JWT policy
//! (in every spelling an upstream may read as the same name), so a rule
//! can neither forge nor drop what the edge rules guarantee. A template
//! has only known placeholders.

use super::error::ConfigError;
use super::model::{HeaderRulesConfig, LoadedConfig, RouteConfig};
use http::{HeaderName, HeaderValue};
use std::collections::BTreeMap;

/// One piece of a `location` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    /// The host the client named, without port.
    Host,
    /// The request's (normalised) path.
    Path,
    /// The path and, when there is one, `?` and the query.
    PathAndQuery,
}

/// Parses a template: text with `{host}`, `{path}` and `{path_and_query}`.
pub fn parse_template(t: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(TemplatePart::Literal(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| "unclosed \"{\" in template".to_string())?;
        parts.push(match &after[..close] {
            "host" => TemplatePart::Host,
            "path" => TemplatePart::Path,
            "path_and_query" => TemplatePart::PathAndQuery,
            other => {
                return Err(format!(
                    "unknown placeholder \"{{{other}}}\" (known: {{host}}, {{path}}, {{path_and_query}})"
                ))
            }
        });
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err("stray \"}\" in template".to_string());
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Literal(rest.to_string()));
    }
    Ok(parts)
}

/// Headers no rule may name, on requests and responses alike.
const OWNED_EVERYWHERE: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    "content-length",
];

/// Headers no request rule may name besides those: what portico sets on
/// the upstream request.
const OWNED_ON_REQUESTS: &[&str] = &[
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "early-data",
    // Answered by portico's own 100 Continue, never forwarded.
    "expect",
];

/// Which side of the exchange a rule acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

/// Why a rule may not name `name` (already lower case), if it may not.
fn owned_reason(lc: &LoadedConfig, side: Side, name: &str) -> Option<&'static str> {
    // An upstream may read `x_user_id` as `x-user-id`: compare as it would.
    let canon = name.replace('_', "-");
    if OWNED_EVERYWHERE.contains(&canon.as_str()) {
        return Some("a hop-by-hop or framing header");
    }
    let request_id = lc.config.server.request_id_header.get_ref();
    if canon.eq_ignore_ascii_case(&request_id.replace('_', "-")) {
        return Some("the request id header");
    }
    if side == Side::Request {
        if OWNED_ON_REQUESTS.contains(&canon.as_str()) {
            return Some("set by portico on every upstream request");
        }
        let claim = lc
            .config
            .auth
            .values()
            .flat_map(|p| p.forward_claims.values())
            .any(|h| canon.eq_ignore_ascii_case(&h.get_ref().replace('_', "-")));
        if claim {
            return Some("a claim header of a JWT policy");
        }
    }
    None
}

/// Checks one header name of a rule: valid, and not one portico owns.
pub fn check_name(lc: &LoadedConfig, side: Side, name: &str) -> Result<HeaderName, String> {
    let h = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("\"{name}\" is not a valid header name"))?;
    match owned_reason(lc, side, h.as_str()) {
        Some(why) => Err(format!(
            "header \"{name}\" may not be changed by a rule: {why}"
        )),
        None => Ok(h),
    }
}

/// Checks one `name = "value"` of a rule.
pub fn check_pair(
    lc: &LoadedConfig,
    side: Side,
    name: &str,
    value: &str,
) -> Result<(HeaderName, HeaderValue), String> {
    let n = check_name(lc, side, name)?;
    let v = HeaderValue::from_str(value)
        .map_err(|_| format!("header \"{name}\": value is not a valid header value"))?;
    Ok((n, v))
}

/// Every check of a route's header rules and `respond` headers/location.
pub(super) fn check_route(lc: &LoadedConfig, r: &RouteConfig) -> Result<(), ConfigError> {
    check_rules(lc, Side::Request, &r.request_headers)?;
    check_rules(lc, Side::Response, &r.response_headers)?;
    if let Some(resp) = &r.respond {
        let headers: &BTreeMap<String, String> = &resp.get_ref().headers;
        for (n, v) in headers {
            check_pair(lc, Side::Response, n, v)
                .map_err(|e| lc.error_at(resp, format!("respond.headers: {e}")))?;
            if n.eq_ignore_ascii_case("content-type") || n.eq_ignore_ascii_case("location") {
                return Err(lc.error_at(
                    resp,
                    format!(
                        "respond.headers: set \"{n}\" with respond.content_type / respond.location"
                    ),
                ));
            }
        }
        let location = &resp.get_ref().location;
        if !location.is_empty() {
            parse_template(location)
                .map_err(|e| lc.error_at(resp, format!("respond.location: {e}")))?;
        }
    }
    Ok(())
}

fn check_rules(
    lc: &LoadedConfig,
    side: Side,
    rules: &HeaderRulesConfig,
) -> Result<(), ConfigError> {
    let key = match side {
        Side::Request => "request_headers",
        Side::Response => "response_headers",
    };
    for (n, v) in rules.set.get_ref() {
        check_pair(lc, side, n, v)
            .map_err(|e| lc.error_at(&rules.set, format!("{key}.set: {e}")))?;
    }
    for n in &rules.remove {
        check_name(lc, side, n.get_ref())
            .map_err(|e| lc.error_at(n, format!("{key}.remove: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        use TemplatePart::*;
        assert_eq!(
            parse_template("https://{host}{path_and_query}").unwrap(),
            vec![Literal("https://".into()), Host, PathAndQuery]
        );
        assert_eq!(
            parse_template("{host}:8443{path}x").unwrap(),
            vec![Host, Literal(":8443".into()), Path, Literal("x".into())]
        );
        assert!(parse_template("https://{hots}/").is_err());
        assert!(parse_template("https://{host").is_err());
        assert!(parse_template("https://host}").is_err());
    }
}

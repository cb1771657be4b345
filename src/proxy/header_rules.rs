//! A route's header rules, compiled: `request_headers` and
//! `response_headers` (set replaces, remove removes), and the `respond`
//! answer's extra headers and `Location` template.
//!
//! Guarantees: names and values are parsed once per snapshot (which names
//! a rule may touch is `crate::config::headers`'s check); applying a rule
//! set allocates nothing but the clones of its values; a route without
//! rules costs one emptiness check per request.

use crate::config::headers::{check_name, check_pair, parse_template, Side, TemplatePart};
use crate::config::{ConfigError, HeaderRulesConfig, LoadedConfig};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use std::collections::BTreeMap;
use toml::Spanned;

/// One `{ set, remove }` table.
#[derive(Debug, Default)]
pub struct HeaderRules {
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderRules {
    /// Compiles a rules table for `side`.
    pub fn build(
        lc: &LoadedConfig,
        side: Side,
        c: &HeaderRulesConfig,
    ) -> Result<HeaderRules, ConfigError> {
        let set = pairs(lc, side, &c.set, c.set.get_ref())?;
        let remove = c
            .remove
            .iter()
            .map(|n| check_name(lc, side, n.get_ref()).map_err(|e| lc.error_at(n, e)))
            .collect::<Result<_, _>>()?;
        Ok(HeaderRules { set, remove })
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// Removes, then sets (each set name replaces every earlier value).
    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
    }
}

/// `name = "value"` pairs of a table at `at`, checked for `side`.
pub fn pairs<T>(
    lc: &LoadedConfig,
    side: Side,
    at: &Spanned<T>,
    map: &BTreeMap<String, String>,
) -> Result<Vec<(HeaderName, HeaderValue)>, ConfigError> {
    map.iter()
        .map(|(n, v)| check_pair(lc, side, n, v).map_err(|e| lc.error_at(at, e)))
        .collect()
}

/// A `respond.location` template, expanded per request.
#[derive(Debug)]
pub struct Template {
    parts: Vec<TemplatePart>,
    /// Bytes of the literal parts, to size the expansion once.
    literal_len: usize,
}

impl Template {
    pub fn parse(t: &str) -> Result<Template, String> {
        let parts = parse_template(t)?;
        let literal_len = parts
            .iter()
            .map(|p| match p {
                TemplatePart::Literal(s) => s.len(),
                _ => 0,
            })
            .sum();
        Ok(Template { parts, literal_len })
    }

    /// The value for a request to `uri` naming `host` (without port):
    /// `None` when the result is not a header value, or the template needs
    /// a host and the request named none.
    pub fn expand(&self, host: &str, uri: &Uri) -> Option<HeaderValue> {
        if host.is_empty() && self.parts.contains(&TemplatePart::Host) {
            return None;
        }
        let path = uri.path();
        let path_and_query = uri.path_and_query().map_or(path, |pq| pq.as_str());
        let mut out = String::with_capacity(self.literal_len + host.len() + path_and_query.len());
        for p in &self.parts {
            out.push_str(match p {
                TemplatePart::Literal(s) => s,
                TemplatePart::Host => host,
                TemplatePart::Path => path,
                TemplatePart::PathAndQuery => path_and_query,
            });
        }
        HeaderValue::try_from(out).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_host_path_and_query() {
        let t = Template::parse("https://{host}{path_and_query}").unwrap();
        let uri: Uri = "/a/b?x=1".parse().unwrap();
        assert_eq!(
            t.expand("example.com", &uri).unwrap(),
            "https://example.com/a/b?x=1"
        );
        let t = Template::parse("https://{host}:8443{path}").unwrap();
        assert_eq!(
            t.expand("example.com", &uri).unwrap(),
            "https://example.com:8443/a/b"
        );
    }
}

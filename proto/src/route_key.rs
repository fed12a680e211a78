//! Route keys: `GET /pets/{id}`, `ANY /files/{proxy+}`, `$default`.

use std::fmt;

/// A parsed route key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RouteKey {
    /// Catches every request no other route matches.
    Default,
    Route {
        method: RouteMethod,
        segments: Vec<PathSegment>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RouteMethod {
    Any,
    /// An upper-case HTTP method token.
    Method(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathSegment {
    Literal(String),
    /// `{name}`: exactly one segment.
    Param(String),
    /// `{name+}`: one or more segments; only last.
    Greedy(String),
}

pub const MAX_ROUTE_KEY_LEN: usize = 1024;

impl RouteKey {
    pub fn parse(key: &str) -> Result<RouteKey, String> {
        if key.len() > MAX_ROUTE_KEY_LEN {
            return Err(format!("longer than {MAX_ROUTE_KEY_LEN} characters"));
        }
        if key == "$default" {
            return Ok(RouteKey::Default);
        }
        let Some((method, path)) = key.split_once(' ') else {
            return Err(format!(
                "{key:?} is not a route key: expected \"METHOD /path\", \"ANY /path\" or \"$default\""
            ));
        };
        let method = parse_method(method)?;
        let segments = parse_path(path)?;
        Ok(RouteKey::Route { method, segments })
    }

    /// The names of the path parameters, in order.
    pub fn param_names(&self) -> Vec<&str> {
        match self {
            RouteKey::Default => Vec::new(),
            RouteKey::Route { segments, .. } => segments
                .iter()
                .filter_map(|s| match s {
                    PathSegment::Param(n) | PathSegment::Greedy(n) => Some(n.as_str()),
                    PathSegment::Literal(_) => None,
                })
                .collect(),
        }
    }

    /// Two keys conflict when they would match exactly the same requests.
    pub fn shape(&self) -> String {
        match self {
            RouteKey::Default => "$default".to_string(),
            RouteKey::Route { method, segments } => {
                let mut s = match method {
                    RouteMethod::Any => "ANY ".to_string(),
                    RouteMethod::Method(m) => format!("{m} "),
                };
                if segments.is_empty() {
                    s.push('/');
                }
                for seg in segments {
                    s.push('/');
                    match seg {
                        PathSegment::Literal(l) => s.push_str(l),
                        PathSegment::Param(_) => s.push_str("{}"),
                        PathSegment::Greedy(_) => s.push_str("{+}"),
                    }
                }
                s
            }
        }
    }
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteKey::Default => f.write_str("$default"),
            RouteKey::Route { method, segments } => {
                match method {
                    RouteMethod::Any => f.write_str("ANY ")?,
                    RouteMethod::Method(m) => write!(f, "{m} ")?,
                }
                if segments.is_empty() {
                    f.write_str("/")?;
                }
                for seg in segments {
                    match seg {
                        PathSegment::Literal(l) => write!(f, "/{l}")?,
                        PathSegment::Param(n) => write!(f, "/{{{n}}}")?,
                        PathSegment::Greedy(n) => write!(f, "/{{{n}+}}")?,
                    }
                }
                Ok(())
            }
        }
    }
}

fn parse_method(method: &str) -> Result<RouteMethod, String> {
    if method == "ANY" {
        return Ok(RouteMethod::Any);
    }
    if method.is_empty() || method.len() > 32 || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "method {method:?} must be ANY or an upper-case HTTP method such as GET"
        ));
    }
    Ok(RouteMethod::Method(method.to_string()))
}

/// Characters allowed in a literal path segment: RFC 3986 `pchar` without braces.
fn is_segment_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%".contains(&b)
}

pub fn is_param_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn parse_path(path: &str) -> Result<Vec<PathSegment>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("path {path:?} must start with /"));
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let mut segments = Vec::with_capacity(parts.len());
    let mut names: Vec<&str> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err(format!("path {path:?} has an empty segment"));
        }
        if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let (name, greedy) = match inner.strip_suffix('+') {
                Some(n) => (n, true),
                None => (inner, false),
            };
            if !is_param_name(name) {
                return Err(format!(
                    "path parameter {part:?} needs a name of letters, digits, '_', '-' or '.'"
                ));
            }
            if names.contains(&name) {
                return Err(format!("path parameter {name:?} appears twice"));
            }
            names.push(name);
            if greedy {
                if i + 1 != parts.len() {
                    return Err(format!(
                        "greedy parameter {part:?} must be the last segment of the path"
                    ));
                }
                segments.push(PathSegment::Greedy(name.to_string()));
            } else {
                segments.push(PathSegment::Param(name.to_string()));
            }
        } else if part.bytes().all(is_segment_char) {
            segments.push(PathSegment::Literal(part.to_string()));
        } else {
            return Err(format!(
                "path segment {part:?} has characters not allowed in a URL path (use {{name}} for parameters)"
            ));
        }
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_route_forms() {
        assert_eq!(RouteKey::parse("$default").unwrap(), RouteKey::Default);
        let k = RouteKey::parse("GET /pets/{id}/files/{proxy+}").unwrap();
        assert_eq!(k.param_names(), vec!["id", "proxy"]);
        assert_eq!(k.to_string(), "GET /pets/{id}/files/{proxy+}");
        assert_eq!(k.shape(), "GET /pets/{}/files/{+}");
        assert_eq!(RouteKey::parse("ANY /").unwrap().to_string(), "ANY /");
    }

    #[test]
    fn rejects_bad_keys_with_reasons() {
        for (key, fragment) in [
            ("GET", "not a route key"),
            ("get /x", "upper-case"),
            ("GET x", "must start with /"),
            ("GET /a//b", "empty segment"),
            ("GET /{proxy+}/x", "last segment"),
            ("GET /{a}/{a}", "twice"),
            ("GET /a b", "not allowed"),
            ("GET /{}", "needs a name"),
        ] {
            let err = RouteKey::parse(key).unwrap_err();
            assert!(err.contains(fragment), "{key}: {err}");
        }
    }
}

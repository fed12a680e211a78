//! Parameter mapping expressions of non-proxy `http` integrations, in AWS's syntax.

/// Where a mapped request value goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestTarget {
    Header(String),
    Query(String),
}

/// Where a mapped request value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestSource {
    Path(String),
    Query(String),
    Header(String),
    StageVariable(String),
    RequestId,
    Static(String),
}

/// Where a mapped response header value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseSource {
    BackendHeader(String),
    Static(String),
}

pub fn parse_request_target(key: &str) -> Result<RequestTarget, String> {
    if let Some(name) = key.strip_prefix("integration.request.header.") {
        return header_name(name).map(RequestTarget::Header);
    }
    if let Some(name) = key.strip_prefix("integration.request.querystring.") {
        return non_empty(name).map(RequestTarget::Query);
    }
    Err(format!(
        "{key:?} must be integration.request.header.NAME or integration.request.querystring.NAME (path parameters go straight into the uri as {{name}})"
    ))
}

pub fn parse_request_source(value: &str) -> Result<RequestSource, String> {
    if let Some(s) = quoted(value) {
        return Ok(RequestSource::Static(s.to_string()));
    }
    if let Some(n) = value.strip_prefix("method.request.path.") {
        return non_empty(n).map(RequestSource::Path);
    }
    if let Some(n) = value.strip_prefix("method.request.querystring.") {
        return non_empty(n).map(RequestSource::Query);
    }
    if let Some(n) = value.strip_prefix("method.request.header.") {
        return header_name(n).map(RequestSource::Header);
    }
    if let Some(n) = value.strip_prefix("stageVariables.") {
        return non_empty(n).map(RequestSource::StageVariable);
    }
    if value == "context.requestId" {
        return Ok(RequestSource::RequestId);
    }
    Err(format!(
        "{value:?} must be method.request.{{path|querystring|header}}.NAME, stageVariables.NAME, context.requestId or a quoted 'static value'"
    ))
}

pub fn parse_response_source(value: &str) -> Result<ResponseSource, String> {
    if let Some(s) = quoted(value) {
        return Ok(ResponseSource::Static(s.to_string()));
    }
    if let Some(n) = value.strip_prefix("integration.response.header.") {
        return header_name(n).map(ResponseSource::BackendHeader);
    }
    Err(format!(
        "{value:?} must be integration.response.header.NAME or a quoted 'static value'"
    ))
}

fn quoted(value: &str) -> Option<&str> {
    value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .filter(|_| value.len() >= 2)
}

fn non_empty(name: &str) -> Result<String, String> {
    if name.is_empty() || name.len() > 256 {
        Err("the name after the last '.' must have 1 to 256 characters".to_string())
    } else {
        Ok(name.to_string())
    }
}

pub fn header_name(name: &str) -> Result<String, String> {
    if crate::validate::is_header_name(name) {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!("{name:?} is not a valid HTTP header name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_aws_expressions() {
        assert_eq!(
            parse_request_target("integration.request.header.X-Id").unwrap(),
            RequestTarget::Header("x-id".into())
        );
        assert_eq!(
            parse_request_source("method.request.path.id").unwrap(),
            RequestSource::Path("id".into())
        );
        assert_eq!(
            parse_request_source("'a b'").unwrap(),
            RequestSource::Static("a b".into())
        );
        assert_eq!(
            parse_response_source("integration.response.header.Etag").unwrap(),
            ResponseSource::BackendHeader("etag".into())
        );
        assert!(parse_request_source("'").is_err());
        assert!(parse_request_target("integration.request.path.id").is_err());
    }
}

//! Reading a declarative file (YAML or JSON) into a validated [`Document`].

use crate::model::Document;
use crate::validate::ValidationErrors;

/// Operator files larger than this are refused before parsing.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// By file extension; YAML when unknown (YAML is a superset of JSON).
    pub fn from_path(path: &std::path::Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("the file is {0} bytes; at most {MAX_DOCUMENT_BYTES} are accepted")]
    TooLarge(usize),
    /// Malformed syntax, an unknown field or a value of the wrong type, with its field path.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(#[from] ValidationErrors),
}

impl DocumentError {
    /// The field paths named by this error, for callers that report them one by one.
    pub fn field_paths(&self) -> Vec<String> {
        match self {
            DocumentError::TooLarge(_) => Vec::new(),
            DocumentError::Parse { path, .. } => vec![path.clone()],
            DocumentError::Invalid(v) => v.0.iter().map(|e| e.path.clone()).collect(),
        }
    }
}

/// Parses and validates; nothing partial ever comes out.
pub fn parse_document(text: &str, format: Format) -> Result<Document, DocumentError> {
    let doc: Document = if format == Format::Yaml && text.trim().is_empty() {
        Document::default()
    } else {
        parse_value(text, format)?
    };
    doc.validate()?;
    Ok(doc)
}

/// Parses any model type (an API, a document, a request body) without validating it; errors
/// carry the field path.
pub fn parse_value<T: serde::de::DeserializeOwned>(
    text: &str,
    format: Format,
) -> Result<T, DocumentError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(DocumentError::TooLarge(text.len()));
    }
    match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(&mut de).map_err(parse_error)
        }
        Format::Yaml => {
            let de = serde_norway::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(parse_error)
        }
    }
}

fn parse_error<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> DocumentError {
    let path = e.path().to_string();
    DocumentError::Parse {
        path: if path == "." {
            "(document)".to_string()
        } else {
            path
        },
        message: without_path_prefix(&e.inner().to_string(), &e.path().to_string()),
    }
}

/// serde_norway puts the path it knows in front of its messages; the path is reported apart.
fn without_path_prefix(message: &str, path: &str) -> String {
    message
        .strip_prefix(path)
        .and_then(|rest| rest.strip_prefix(": "))
        .unwrap_or(message)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../docs/examples/petstore.yaml");

    #[test]
    fn the_documented_example_is_valid() {
        let doc = parse_document(EXAMPLE, Format::Yaml).unwrap();
        assert_eq!(doc.apis[0].routes.len(), 6);
        let json = serde_json::to_string(&doc).unwrap();
        assert_eq!(parse_document(&json, Format::Json).unwrap(), doc);
    }

    #[test]
    fn parse_errors_name_the_field() {
        let bad = EXAMPLE.replace("timeout_ms: 5000", "timeout_ms: soon");
        let err = parse_document(&bad, Format::Yaml).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("apis[0].routes[1].integration.timeout_ms:"),
            "{err}"
        );
        assert_eq!(
            err.to_string().matches("timeout_ms").count(),
            1,
            "the path is said once: {err}"
        );

        let bad = EXAMPLE.replace(
            "    kind: http\n    routes:",
            "    kind: http\n    colour: red\n    routes:",
        );
        let err = parse_document(&bad, Format::Yaml).unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");

        let err = parse_document("{\"apis\": [", Format::Json).unwrap_err();
        assert!(matches!(err, DocumentError::Parse { .. }), "{err}");
    }

    #[test]
    fn validation_reports_every_error_with_its_path() {
        let bad = EXAMPLE
            .replace(
                "uri: http://${stageVariables.backend}/pets/{id}",
                "uri: http://${stageVariables.backend}/pets/{petId}",
            )
            .replace("key: GET /health", "key: GET /health/{x+}/y")
            .replace("deployment: petstore-v1", "deployment: petstore-v9")
            .replace("backend: 127.0.0.1:9000", "other: x");
        let err = parse_document(&bad, Format::Yaml).unwrap_err();
        let paths = err.field_paths();
        assert!(
            paths.contains(&"apis[0].routes[1].integration.uri".to_string()),
            "{err}"
        );
        assert!(
            paths.contains(&"apis[0].routes[4].key".to_string()),
            "{err}"
        );
        assert!(
            paths.contains(&"apis[0].stages[1].deployment".to_string()),
            "{err}"
        );
        assert!(
            paths.contains(&"apis[0].stages[0].variables".to_string()),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("{petId} is not a path parameter of route GET /pets/{id}"),
            "{err}"
        );
    }

    #[test]
    fn the_region_follows_the_endpoint_mode() {
        let api = |fields: &str| format!("apis:\n  - {{ id: a, kind: http{fields} }}\n");
        for ok in [
            "",
            ", endpoint: edge",
            ", endpoint: regional, region: eu-west-1",
            ", endpoint: private",
            ", endpoint: private, region: eu-west-1",
        ] {
            let doc = parse_document(&api(ok), Format::Yaml);
            assert!(doc.is_ok(), "{ok:?}: {}", doc.unwrap_err());
        }
        for (bad, says) in [
            (", endpoint: regional", "needs its home region"),
            (", region: eu-west-1", "served in every region"),
            (
                ", endpoint: edge, region: eu-west-1",
                "served in every region",
            ),
            (", endpoint: regional, region: EU_West", "must be 1 to 63"),
            (", endpoint: private, region: -x", "must be 1 to 63"),
        ] {
            let err = parse_document(&api(bad), Format::Yaml).unwrap_err();
            assert_eq!(err.field_paths(), ["apis[0].region"], "{bad:?}: {err}");
            assert!(err.to_string().contains(says), "{bad:?}: {err}");
        }
        let err = parse_document(&api(", endpoint: public"), Format::Yaml).unwrap_err();
        assert!(err.to_string().starts_with("apis[0].endpoint:"), "{err}");
    }

    #[test]
    fn rejects_out_of_place_and_conflicting_fields() {
        let doc = r#"
apis:
  - id: Bad_Id
    kind: websocket
    routes:
      - key: GET /a/{x}
        integration: { type: mock, uri: "http://x" }
      - key: GET /a/{y}
        integration: { type: http_proxy, uri: "http://h/", timeout_ms: 10 }
"#;
        let err = parse_document(doc, Format::Yaml).unwrap_err().to_string();
        for fragment in [
            "apis[0].id:",
            "apis[0].kind: websocket APIs are not supported yet",
            "apis[0].routes[0].integration.uri: does not apply to type mock",
            "apis[0].routes[1].key: \"GET /a/{y}\" matches the same requests as routes[0]",
            "apis[0].routes[1].integration.timeout_ms: 10 is outside",
        ] {
            assert!(err.contains(fragment), "missing {fragment:?} in {err}");
        }
    }
}

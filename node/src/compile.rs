//! Turns a validated [`Document`] into the immutable [`EdgeConfig`] the request pipeline reads.
//!
//! Everything that can be decided before a request arrives is decided here: stage variables are
//! substituted, backend authorities parsed, header names built, regexes compiled. A request
//! then only fills in path parameters.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::uri::Authority;
use http::{HeaderMap, Method, StatusCode};
use portico_proto::mapping::{self, RequestSource, RequestTarget, ResponseSource};
use portico_proto::{
    Document, EndpointMode, FieldError, GatewayResponse, GatewayResponseType, Integration,
    IntegrationType, Route, RouteKey, Stage, TemplatePart, UriTemplate, ValidationErrors,
};
use regex::Regex;
use rustc_hash::FxHashMap;

use crate::metrics::{Metrics, StageMetrics};
use crate::router::Router;
use crate::server::Listener;

/// One immutable revision of everything the edge serves. Swapped whole; a request holds one.
#[derive(Debug, Default)]
pub struct EdgeConfig {
    pub revision: u64,
    pub apis: FxHashMap<String, CompiledApi>,
}

#[derive(Debug)]
pub struct CompiledApi {
    pub id: Arc<str>,
    /// The one listener that serves the API (from its endpoint mode); on the other it does not
    /// exist.
    pub listener: Listener,
    pub stages: FxHashMap<String, Arc<CompiledStage>>,
    /// The `$default` stage, served at the root path.
    pub default_stage: Option<Arc<CompiledStage>>,
}

#[derive(Debug)]
pub struct CompiledStage {
    pub api_id: Arc<str>,
    pub name: Arc<str>,
    pub router: Router,
    pub routes: Vec<CompiledRoute>,
    pub gateway_responses: BTreeMap<GatewayResponseType, GatewayResponse>,
    pub metrics: Arc<StageMetrics>,
}

#[derive(Debug)]
pub struct CompiledRoute {
    /// The route key as the operator wrote it, for logs and errors.
    pub key: Arc<str>,
    pub integration: CompiledIntegration,
}

#[derive(Debug)]
pub enum CompiledIntegration {
    HttpProxy(BackendCall),
    Http(HttpCall),
    Mock(MockResponse),
}

/// A backend and how to build the request path for it.
#[derive(Debug)]
pub struct BackendCall {
    pub backend: Backend,
    pub path: Vec<PathPart>,
    pub method: Option<Method>,
    pub timeout: Duration,
    /// `$default` routes forward the whole request path below the stage, as AWS HTTP APIs do.
    pub append_request_path: bool,
    /// A literal part holds `?`: the template has a query of its own.
    pub template_query: bool,
}

#[derive(Debug, Clone)]
pub struct Backend {
    pub https: bool,
    pub authority: Authority,
    pub host_header: HeaderValue,
    /// Pool key: scheme and authority.
    pub key: Arc<str>,
}

#[derive(Debug)]
pub enum PathPart {
    Literal(Box<str>),
    /// Index into the route's path parameters.
    Param(usize),
}

impl PathPart {
    /// Whether a template's literal parts hold a `?`: it has a query of its own (parameters
    /// come from a request path, which has none).
    pub fn has_query(path: &[PathPart]) -> bool {
        path.iter()
            .any(|p| matches!(p, PathPart::Literal(l) if l.contains('?')))
    }
}

/// A non-proxy call: only mapped parameters go to the backend, and its status is mapped back.
#[derive(Debug)]
pub struct HttpCall {
    pub call: BackendCall,
    pub headers: Vec<(HeaderName, Source)>,
    pub query: Vec<(String, Source)>,
    pub responses: Vec<ResponseMapping>,
}

#[derive(Debug)]
pub enum Source {
    Param(usize),
    Query(String),
    Header(HeaderName),
    RequestId,
    Static(String),
}

#[derive(Debug)]
pub struct ResponseMapping {
    pub pattern: Option<Regex>,
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, ResponseValue)>,
}

#[derive(Debug)]
pub enum ResponseValue {
    BackendHeader(HeaderName),
    Static(HeaderValue),
}

#[derive(Debug)]
pub struct MockResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Compiles a document that has passed [`Document::validate`]. What validation cannot see
/// (a stage variable that makes a URI invalid) is reported with the stage's field path.
pub fn compile(
    doc: &Document,
    revision: u64,
    metrics: &Metrics,
) -> Result<EdgeConfig, ValidationErrors> {
    doc.validate()?;
    let mut errors = Vec::new();
    let mut apis = FxHashMap::default();
    for (i, api) in doc.apis.iter().enumerate() {
        let api_id: Arc<str> = api.id.as_str().into();
        let mut compiled = CompiledApi {
            id: api_id.clone(),
            listener: listener_for(api.endpoint),
            stages: FxHashMap::default(),
            default_stage: None,
        };
        for (j, stage) in api.stages.iter().enumerate() {
            let path = format!("apis[{i}].stages[{j}]");
            let (routes, responses) = match &stage.deployment {
                None => (&api.routes, &api.gateway_responses),
                Some(dep) => {
                    // validate() guarantees the deployment exists.
                    let Some(d) = doc
                        .deployments
                        .iter()
                        .find(|d| d.api == api.id && &d.id == dep)
                    else {
                        continue;
                    };
                    (&d.snapshot.routes, &d.snapshot.gateway_responses)
                }
            };
            match compile_stage(&api_id, stage, routes, responses, metrics) {
                Ok(s) => {
                    let s = Arc::new(s);
                    if stage.name == "$default" {
                        compiled.default_stage = Some(s.clone());
                    }
                    compiled.stages.insert(stage.name.clone(), s);
                }
                Err(message) => errors.push(FieldError { path, message }),
            }
        }
        apis.insert(api.id.clone(), compiled);
    }
    if errors.is_empty() {
        Ok(EdgeConfig { revision, apis })
    } else {
        Err(ValidationErrors(errors))
    }
}

/// Private APIs are served on the private listener only; edge-optimized and regional APIs on
/// the public one. (Which regional APIs an edge receives at all is the control plane's choice.)
pub fn listener_for(endpoint: EndpointMode) -> Listener {
    match endpoint {
        EndpointMode::Private => Listener::Private,
        EndpointMode::Edge | EndpointMode::Regional => Listener::Public,
    }
}

fn compile_stage(
    api_id: &Arc<str>,
    stage: &Stage,
    routes: &[Route],
    responses: &BTreeMap<GatewayResponseType, GatewayResponse>,
    metrics: &Metrics,
) -> Result<CompiledStage, String> {
    let mut router = Router::default();
    let mut compiled = Vec::with_capacity(routes.len());
    for (index, route) in routes.iter().enumerate() {
        let key = RouteKey::parse(&route.key)?;
        let integration = compile_integration(&key, &route.integration, &stage.variables)
            .map_err(|e| format!("route {:?}: {e}", route.key))?;
        router.insert(&key, index);
        compiled.push(CompiledRoute {
            key: route.key.as_str().into(),
            integration,
        });
    }
    Ok(CompiledStage {
        api_id: api_id.clone(),
        name: stage.name.as_str().into(),
        router,
        routes: compiled,
        gateway_responses: responses.clone(),
        metrics: metrics.stage(api_id, &stage.name),
    })
}

fn compile_integration(
    key: &RouteKey,
    ig: &Integration,
    vars: &BTreeMap<String, String>,
) -> Result<CompiledIntegration, String> {
    let params = key.param_names();
    let param_index = |name: &str| params.iter().position(|p| *p == name);
    Ok(match ig.kind {
        IntegrationType::Mock => {
            let mut headers = HeaderMap::new();
            for (k, v) in &ig.headers {
                headers.append(header_name(k)?, header_value(v)?);
            }
            CompiledIntegration::Mock(MockResponse {
                status: status(ig.status.unwrap_or(200))?,
                headers,
                body: Bytes::from(ig.body.clone().unwrap_or_default()),
            })
        }
        IntegrationType::HttpProxy => {
            CompiledIntegration::HttpProxy(backend_call(key, ig, vars, &param_index)?)
        }
        IntegrationType::Http => {
            let call = backend_call(key, ig, vars, &param_index)?;
            let mut headers = Vec::new();
            let mut query = Vec::new();
            for (target, source) in &ig.request_parameters {
                let source = match mapping::parse_request_source(source)? {
                    RequestSource::Path(n) => Source::Param(
                        param_index(&n).ok_or_else(|| format!("no path parameter {n:?}"))?,
                    ),
                    RequestSource::Query(n) => Source::Query(n),
                    RequestSource::Header(n) => Source::Header(header_name(&n)?),
                    RequestSource::RequestId => Source::RequestId,
                    RequestSource::Static(s) => Source::Static(s),
                    RequestSource::StageVariable(n) => Source::Static(
                        vars.get(&n)
                            .cloned()
                            .ok_or_else(|| format!("stage variable {n:?} is not set"))?,
                    ),
                };
                match mapping::parse_request_target(target)? {
                    RequestTarget::Header(h) => headers.push((header_name(&h)?, source)),
                    RequestTarget::Query(q) => query.push((q, source)),
                }
            }
            let mut responses = Vec::new();
            for r in &ig.responses {
                let pattern = match &r.selection_pattern {
                    None => None,
                    Some(p) => Some(
                        regex::RegexBuilder::new(&format!("^(?:{p})$"))
                            .size_limit(1 << 16)
                            .build()
                            .map_err(|e| e.to_string())?,
                    ),
                };
                let mut mapped = Vec::new();
                for (h, v) in &r.headers {
                    let value = match mapping::parse_response_source(v)? {
                        ResponseSource::BackendHeader(n) => {
                            ResponseValue::BackendHeader(header_name(&n)?)
                        }
                        ResponseSource::Static(s) => ResponseValue::Static(header_value(&s)?),
                    };
                    mapped.push((header_name(h)?, value));
                }
                responses.push(ResponseMapping {
                    pattern,
                    status: status(r.status)?,
                    headers: mapped,
                });
            }
            // Patterns are tried in order; the default (no pattern) only when none matched.
            responses.sort_by_key(|r| r.pattern.is_none());
            CompiledIntegration::Http(HttpCall {
                call,
                headers,
                query,
                responses,
            })
        }
    })
}

fn backend_call(
    key: &RouteKey,
    ig: &Integration,
    vars: &BTreeMap<String, String>,
    param_index: &dyn Fn(&str) -> Option<usize>,
) -> Result<BackendCall, String> {
    let uri = ig.uri.as_deref().ok_or("uri is required")?;
    let template = UriTemplate::parse(uri)?;
    let mut authority = String::new();
    for part in &template.authority {
        match part {
            TemplatePart::Literal(l) => authority.push_str(l),
            TemplatePart::StageVariable(n) => authority.push_str(
                vars.get(n)
                    .ok_or_else(|| format!("stage variable {n:?} is not set"))?,
            ),
            TemplatePart::PathParam(_) => return Err("the host may not use path parameters".into()),
        }
    }
    let parsed: Authority = authority.parse().map_err(|e| {
        format!("uri {uri:?} gives backend authority {authority:?}, which is invalid: {e}")
    })?;
    if parsed.host().is_empty() || authority.contains('@') {
        return Err(format!(
            "uri {uri:?} gives backend authority {authority:?}, which has no host or has user info"
        ));
    }
    let mut path = Vec::new();
    let mut literal = String::new();
    for part in &template.path_and_query {
        match part {
            TemplatePart::Literal(l) => literal.push_str(l),
            TemplatePart::StageVariable(n) => literal.push_str(
                vars.get(n)
                    .ok_or_else(|| format!("stage variable {n:?} is not set"))?,
            ),
            TemplatePart::PathParam(n) => {
                if !literal.is_empty() {
                    path.push(PathPart::Literal(std::mem::take(&mut literal).into()));
                }
                path.push(PathPart::Param(
                    param_index(n).ok_or_else(|| format!("no path parameter {n:?}"))?,
                ));
            }
        }
    }
    if !literal.is_empty() {
        path.push(PathPart::Literal(literal.into()));
    }
    // Checked here so that the request path need not be: path parameters come from a valid
    // request path, and queries are valid or percent-encoded.
    let sample: String = path
        .iter()
        .map(|p| match p {
            PathPart::Literal(l) => l,
            PathPart::Param(_) => "p",
        })
        .collect();
    if !sample.is_empty() {
        let invalid = |e: &dyn std::fmt::Display| {
            format!("uri {uri:?} gives an invalid backend path {sample:?}: {e}")
        };
        match http::uri::PathAndQuery::try_from(sample.as_str()) {
            Ok(p) if p.as_str() == sample => {}
            // A `#` parses, as the start of a fragment, which a request target cannot have.
            Ok(_) => return Err(invalid(&"it has a fragment")),
            Err(e) => return Err(invalid(&e)),
        }
    }
    let template_query = PathPart::has_query(&path);
    let port = parsed
        .port_u16()
        .unwrap_or(if template.https { 443 } else { 80 });
    let scheme = if template.https { "https" } else { "http" };
    Ok(BackendCall {
        backend: Backend {
            https: template.https,
            host_header: header_value(parsed.as_str())?,
            key: format!("{scheme}://{}:{port}", parsed.host()).into(),
            authority: parsed,
        },
        path,
        method: match &ig.method {
            Some(m) => Some(Method::from_bytes(m.as_bytes()).map_err(|e| e.to_string())?),
            None => None,
        },
        timeout: Duration::from_millis(ig.timeout_ms),
        append_request_path: matches!(key, RouteKey::Default),
        template_query,
    })
}

fn header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(s.as_bytes()).map_err(|_| format!("{s:?} is not a valid header name"))
}

fn header_value(s: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(s).map_err(|_| format!("{s:?} is not a valid header value"))
}

fn status(code: u16) -> Result<StatusCode, String> {
    StatusCode::from_u16(code).map_err(|_| format!("{code} is not an HTTP status"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_proto::{Format, parse_document};

    #[test]
    fn compiles_the_documented_example() {
        let text = include_str!("../../docs/examples/petstore.yaml");
        let doc = parse_document(text, Format::Yaml).unwrap();
        let cfg = compile(&doc, 7, &Metrics::default()).unwrap();
        let api = &cfg.apis["petstore"];
        let prod = &api.stages["prod"];
        assert_eq!(prod.routes.len(), 6);
        let CompiledIntegration::HttpProxy(call) = &prod.routes[1].integration else {
            panic!("route 1 is a proxy");
        };
        assert_eq!(&*call.backend.key, "http://127.0.0.1:9000");
        assert_eq!(call.timeout, Duration::from_secs(5));
        assert_eq!(
            api.stages["canary"].routes.len(),
            1,
            "canary serves the pinned deployment"
        );
    }

    #[test]
    fn the_endpoint_mode_picks_the_listener() {
        let doc = parse_document(
            r#"
apis:
  - { id: everywhere, kind: http }
  - { id: home, kind: http, endpoint: regional, region: eu-1 }
  - { id: inside, kind: http, endpoint: private }
"#,
            Format::Yaml,
        )
        .unwrap();
        let cfg = compile(&doc, 1, &Metrics::default()).unwrap();
        assert_eq!(cfg.apis["everywhere"].listener, Listener::Public);
        assert_eq!(cfg.apis["home"].listener, Listener::Public);
        assert_eq!(cfg.apis["inside"].listener, Listener::Private);
    }

    #[test]
    fn a_backend_path_that_is_no_uri_path_is_refused() {
        let doc = parse_document(
            r#"
apis:
  - id: a
    kind: http
    routes:
      - key: GET /x/{id}
        integration: { type: http_proxy, uri: "http://127.0.0.1:9/v/${stageVariables.p}/{id}?q=1" }
    stages:
      - { name: ok, variables: { p: fine } }
      - { name: bad, variables: { p: "a#b" } }
"#,
            Format::Yaml,
        )
        .unwrap();
        let err = compile(&doc, 1, &Metrics::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("stages[1]"), "{err}");
        assert!(
            err.contains("invalid backend path \"/v/a#b/p?q=1\""),
            "{err}"
        );
    }

    #[test]
    fn a_stage_variable_that_breaks_the_uri_names_the_stage() {
        let text = include_str!("../../docs/examples/petstore.yaml")
            .replace("backend: 127.0.0.1:9000", "backend: a:b:c");
        let doc = parse_document(&text, Format::Yaml).unwrap();
        let err = compile(&doc, 1, &Metrics::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("apis[0].stages[0]: route \"GET /pets\""),
            "{err}"
        );
    }
}

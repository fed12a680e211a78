//! Validation of a whole document. Every error names the field path that is wrong, e.g.
//! `apis[0].routes[3].integration.uri: ...`, and all errors are reported at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::mapping;
use crate::model::*;
use crate::route_key::RouteKey;
use crate::template::UriTemplate;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a document; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

pub const MAX_APIS: usize = 10_000;
pub const MAX_ROUTES_PER_API: usize = 3_000;
pub const MAX_STAGES_PER_API: usize = 100;
pub const MAX_STAGE_VARIABLES: usize = 100;
pub const MAX_MOCK_BODY: usize = 1024 * 1024;
pub const MAX_SELECTION_PATTERN: usize = 256;

pub fn is_api_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

pub fn is_object_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
}

pub fn is_stage_name(name: &str) -> bool {
    name == "$default"
        || (!name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'))
}

pub fn is_stage_variable_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn is_stage_variable_value(v: &str) -> bool {
    v.len() <= 512
        && v.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-._~:/?#&=,".contains(&c))
}

pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

pub fn is_header_value(v: &str) -> bool {
    v.len() <= 8192 && v.bytes().all(|c| c == b'\t' || (0x20..0x7f).contains(&c))
}

fn is_method_token(m: &str) -> bool {
    !m.is_empty() && m.len() <= 32 && m.bytes().all(|c| c.is_ascii_uppercase())
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

impl Document {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = Errors::default();
        if self.apis.len() > MAX_APIS {
            errs.push("apis", format!("at most {MAX_APIS} APIs"));
        }
        let mut ids = BTreeSet::new();
        for (i, api) in self.apis.iter().enumerate() {
            let p = format!("apis[{i}]");
            if !ids.insert(api.id.as_str()) {
                errs.push(
                    format!("{p}.id"),
                    format!("API id {:?} is used twice", api.id),
                );
            }
            validate_api(&p, api, &mut errs);
        }

        let mut deployments: BTreeMap<(&str, &str), &Deployment> = BTreeMap::new();
        for (i, d) in self.deployments.iter().enumerate() {
            let p = format!("deployments[{i}]");
            if !is_object_id(&d.id) {
                errs.push(
                    format!("{p}.id"),
                    "must be 1 to 128 letters, digits, '-', '_' or '.'",
                );
            }
            if !ids.contains(d.api.as_str()) {
                errs.push(
                    format!("{p}.api"),
                    format!("no API with id {:?} in this document", d.api),
                );
            }
            if deployments
                .insert((d.api.as_str(), d.id.as_str()), d)
                .is_some()
            {
                errs.push(
                    format!("{p}.id"),
                    format!("deployment {:?} of API {:?} appears twice", d.id, d.api),
                );
            }
            validate_snapshot(&format!("{p}.snapshot"), &d.snapshot, &mut errs);
        }

        for (i, api) in self.apis.iter().enumerate() {
            for (j, stage) in api.stages.iter().enumerate() {
                let p = format!("apis[{i}].stages[{j}]");
                let routes = match &stage.deployment {
                    None => &api.routes,
                    Some(dep) => match deployments.get(&(api.id.as_str(), dep.as_str())) {
                        Some(d) => &d.snapshot.routes,
                        None => {
                            errs.push(
                                format!("{p}.deployment"),
                                format!(
                                    "no deployment {dep:?} of API {:?} in this document",
                                    api.id
                                ),
                            );
                            continue;
                        }
                    },
                };
                check_stage_variables_defined(&p, stage, routes, &mut errs);
            }
        }

        if errs.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errs.0))
        }
    }
}

fn validate_api(p: &str, api: &Api, errs: &mut Errors) {
    if !is_api_id(&api.id) {
        errs.push(
            format!("{p}.id"),
            format!("{:?} must be a lower-case DNS label: 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'", api.id),
        );
    }
    if api.name.len() > 1024 {
        errs.push(format!("{p}.name"), "at most 1024 characters");
    }
    if api.description.len() > 4096 {
        errs.push(format!("{p}.description"), "at most 4096 characters");
    }
    validate_definition(p, api.kind, &api.routes, &api.gateway_responses, errs);
    match (&api.region, api.endpoint) {
        (Some(region), _) if !is_region(region) => errs.push(
            format!("{p}.region"),
            format!("{region:?} must be 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'"),
        ),
        (None, EndpointMode::Regional) => errs.push(
            format!("{p}.region"),
            "a regional API needs its home region",
        ),
        (Some(_), EndpointMode::Edge) => errs.push(
            format!("{p}.region"),
            "an edge-optimized API is served in every region; set endpoint: regional to pin it to one",
        ),
        _ => {}
    }

    if api.stages.len() > MAX_STAGES_PER_API {
        errs.push(
            format!("{p}.stages"),
            format!("at most {MAX_STAGES_PER_API} stages"),
        );
    }
    let mut names = BTreeSet::new();
    for (j, stage) in api.stages.iter().enumerate() {
        let sp = format!("{p}.stages[{j}]");
        if !is_stage_name(&stage.name) {
            errs.push(
                format!("{sp}.name"),
                format!(
                    "{:?} must be 1 to 128 of A-Z, a-z, 0-9, '-' and '_', or $default",
                    stage.name
                ),
            );
        }
        if !names.insert(stage.name.as_str()) {
            errs.push(
                format!("{sp}.name"),
                format!("stage {:?} appears twice", stage.name),
            );
        }
        if stage.variables.len() > MAX_STAGE_VARIABLES {
            errs.push(
                format!("{sp}.variables"),
                format!("at most {MAX_STAGE_VARIABLES} variables"),
            );
        }
        for (k, v) in &stage.variables {
            if !is_stage_variable_name(k) {
                errs.push(
                    format!("{sp}.variables.{k}"),
                    "name must match [A-Za-z0-9_]{1,64}",
                );
            }
            if !is_stage_variable_value(v) {
                errs.push(
                    format!("{sp}.variables.{k}"),
                    "value must be at most 512 of A-Z, a-z, 0-9 and -._~:/?#&=,",
                );
            }
        }
    }
}

/// Regions become DNS labels in edge certificates, so they follow the same rule as API ids.
pub fn is_region(s: &str) -> bool {
    is_api_id(s)
}

fn validate_snapshot(p: &str, s: &ApiSnapshot, errs: &mut Errors) {
    validate_definition(p, s.kind, &s.routes, &s.gateway_responses, errs);
}

fn validate_definition(
    p: &str,
    kind: ApiKind,
    routes: &[Route],
    responses: &BTreeMap<GatewayResponseType, GatewayResponse>,
    errs: &mut Errors,
) {
    if kind == ApiKind::Websocket {
        errs.push(
            format!("{p}.kind"),
            "websocket APIs are not supported yet; use http or rest",
        );
    }
    if routes.len() > MAX_ROUTES_PER_API {
        errs.push(
            format!("{p}.routes"),
            format!("at most {MAX_ROUTES_PER_API} routes"),
        );
    }
    let mut shapes = BTreeMap::new();
    for (i, route) in routes.iter().enumerate() {
        let rp = format!("{p}.routes[{i}]");
        match RouteKey::parse(&route.key) {
            Ok(key) => {
                if let Some(first) = shapes.insert(key.shape(), i) {
                    errs.push(
                        format!("{rp}.key"),
                        format!(
                            "{:?} matches the same requests as routes[{first}]",
                            route.key
                        ),
                    );
                }
                validate_integration(&format!("{rp}.integration"), &key, &route.integration, errs);
            }
            Err(e) => errs.push(format!("{rp}.key"), e),
        }
    }
    for (ty, r) in responses {
        let gp = format!("{p}.gateway_responses.{}", ty.as_str());
        if let Some(s) = r.status
            && !(100..=599).contains(&s)
        {
            errs.push(
                format!("{gp}.status"),
                format!("{s} is not an HTTP status (100-599)"),
            );
        }
        validate_headers(&format!("{gp}.headers"), &r.headers, errs);
        if r.body.as_ref().is_some_and(|b| b.len() > MAX_MOCK_BODY) {
            errs.push(format!("{gp}.body"), "at most 1 MiB");
        }
    }
}

fn validate_headers(p: &str, headers: &BTreeMap<String, String>, errs: &mut Errors) {
    for (k, v) in headers {
        if !is_header_name(k) {
            errs.push(format!("{p}.{k}"), "not a valid HTTP header name");
        }
        if !is_header_value(v) {
            errs.push(
                format!("{p}.{k}"),
                "value must be printable ASCII, at most 8192 bytes",
            );
        }
    }
}

fn validate_integration(p: &str, key: &RouteKey, ig: &Integration, errs: &mut Errors) {
    let proxied = matches!(ig.kind, IntegrationType::HttpProxy | IntegrationType::Http);
    if !(MIN_INTEGRATION_TIMEOUT_MS..=MAX_INTEGRATION_TIMEOUT_MS).contains(&ig.timeout_ms) {
        errs.push(
            format!("{p}.timeout_ms"),
            format!(
                "{} is outside {MIN_INTEGRATION_TIMEOUT_MS}..={MAX_INTEGRATION_TIMEOUT_MS}",
                ig.timeout_ms
            ),
        );
    }
    let ty = ig.kind.as_str();
    let only = |field: &str, errs: &mut Errors, set: bool, types: &str| {
        if set {
            errs.push(
                format!("{p}.{field}"),
                format!("does not apply to type {ty}; only to {types}"),
            );
        }
    };
    if proxied {
        match &ig.uri {
            None => errs.push(format!("{p}.uri"), format!("required for type {ty}")),
            Some(uri) => match UriTemplate::parse(uri) {
                Err(e) => errs.push(format!("{p}.uri"), e),
                Ok(t) => {
                    let params = key.param_names();
                    for name in t.path_params() {
                        if !params.contains(&name) {
                            errs.push(
                                format!("{p}.uri"),
                                format!("{{{name}}} is not a path parameter of route {key} (it has: {})", if params.is_empty() { "none".to_string() } else { params.join(", ") }),
                            );
                        }
                    }
                }
            },
        }
        if let Some(m) = &ig.method
            && !is_method_token(m)
        {
            errs.push(
                format!("{p}.method"),
                format!("{m:?} must be an upper-case HTTP method"),
            );
        }
        only("status", errs, ig.status.is_some(), "mock");
        only("headers", errs, !ig.headers.is_empty(), "mock");
        only("body", errs, ig.body.is_some(), "mock");
    } else {
        only("uri", errs, ig.uri.is_some(), "http_proxy and http");
        only("method", errs, ig.method.is_some(), "http_proxy and http");
        if let Some(s) = ig.status
            && !(100..=599).contains(&s)
        {
            errs.push(
                format!("{p}.status"),
                format!("{s} is not an HTTP status (100-599)"),
            );
        }
        validate_headers(&format!("{p}.headers"), &ig.headers, errs);
        if ig.body.as_ref().is_some_and(|b| b.len() > MAX_MOCK_BODY) {
            errs.push(format!("{p}.body"), "at most 1 MiB");
        }
    }
    if ig.kind == IntegrationType::Http {
        let params = key.param_names();
        for (k, v) in &ig.request_parameters {
            let kp = format!("{p}.request_parameters.{k}");
            if let Err(e) = mapping::parse_request_target(k) {
                errs.push(kp.clone(), e);
            }
            match mapping::parse_request_source(v) {
                Err(e) => errs.push(kp, e),
                Ok(mapping::RequestSource::Path(n)) if !params.contains(&n.as_str()) => {
                    errs.push(kp, format!("{n:?} is not a path parameter of route {key}"))
                }
                Ok(_) => {}
            }
        }
        let mut defaults = 0;
        for (i, r) in ig.responses.iter().enumerate() {
            let rp = format!("{p}.responses[{i}]");
            if !(100..=599).contains(&r.status) {
                errs.push(
                    format!("{rp}.status"),
                    format!("{} is not an HTTP status (100-599)", r.status),
                );
            }
            match &r.selection_pattern {
                None => defaults += 1,
                Some(pat) if pat.len() > MAX_SELECTION_PATTERN => errs.push(
                    format!("{rp}.selection_pattern"),
                    format!("at most {MAX_SELECTION_PATTERN} characters"),
                ),
                Some(pat) => {
                    if let Err(e) = regex::RegexBuilder::new(&format!("^(?:{pat})$"))
                        .size_limit(1 << 16)
                        .build()
                    {
                        errs.push(
                            format!("{rp}.selection_pattern"),
                            format!("not a regular expression: {e}"),
                        );
                    }
                }
            }
            for (h, v) in &r.headers {
                if !is_header_name(h) {
                    errs.push(format!("{rp}.headers.{h}"), "not a valid HTTP header name");
                }
                if let Err(e) = mapping::parse_response_source(v) {
                    errs.push(format!("{rp}.headers.{h}"), e);
                }
            }
        }
        if defaults > 1 {
            errs.push(
                format!("{p}.responses"),
                "at most one response without a selection_pattern (the default)",
            );
        }
    } else {
        only(
            "request_parameters",
            errs,
            !ig.request_parameters.is_empty(),
            "http",
        );
        only("responses", errs, !ig.responses.is_empty(), "http");
    }
}

/// A stage must define every stage variable its routes' integrations use.
fn check_stage_variables_defined(p: &str, stage: &Stage, routes: &[Route], errs: &mut Errors) {
    let mut missing: BTreeMap<String, &str> = BTreeMap::new();
    for route in routes {
        let ig = &route.integration;
        let from_uri = ig
            .uri
            .as_deref()
            .and_then(|u| UriTemplate::parse(u).ok())
            .map(|t| t.stage_variables().map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default();
        let from_params =
            ig.request_parameters
                .values()
                .filter_map(|v| match mapping::parse_request_source(v) {
                    Ok(mapping::RequestSource::StageVariable(n)) => Some(n),
                    _ => None,
                });
        for name in from_uri.into_iter().chain(from_params) {
            if !stage.variables.contains_key(&name) {
                missing.entry(name).or_insert(route.key.as_str());
            }
        }
    }
    for (name, route) in missing {
        errs.push(
            format!("{p}.variables"),
            format!(
                "stage {:?} does not set {name:?}, which route {route:?} uses",
                stage.name
            ),
        );
    }
}

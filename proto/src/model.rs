//! The operator's model: APIs, routes, integrations, stages, deployments and gateway responses.
//!
//! These types are what a declarative file holds and what the admin API and the Raft log will
//! carry, so they stay encodable by bincode: no `flatten`, internal tags or skipped fields.
//! Optional fields are `Option` with `#[serde(default)]` instead.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A whole declarative file: the APIs and any pinned deployments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    #[serde(default)]
    pub apis: Vec<Api>,
    /// Immutable snapshots that stages may pin. A stage with no `deployment` serves the API's
    /// current definition.
    #[serde(default)]
    pub deployments: Vec<Deployment>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiKind {
    Http,
    Rest,
    Websocket,
}

impl ApiKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKind::Http => "http",
            ApiKind::Rest => "rest",
            ApiKind::Websocket => "websocket",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    /// Lower-case DNS label; the API answers at `{id}.{domain suffix}`.
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub kind: ApiKind,
    /// Which edges serve the API: every edge (`edge`, the default), the edges of `region`
    /// (`regional`), or the private listeners of edges that have one (`private`).
    #[serde(default)]
    pub endpoint: EndpointMode,
    /// The home region: required for `regional`; for `private`, limits it to that region.
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub gateway_responses: BTreeMap<GatewayResponseType, GatewayResponse>,
    #[serde(default)]
    pub stages: Vec<Stage>,
}

/// Where an API is served (AWS's endpoint configuration types).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum EndpointMode {
    /// Edge-optimized: every edge in every region.
    #[default]
    Edge,
    /// Only edges of the API's home region; other edges never receive it.
    Regional,
    /// Only the private listener of edges that have one; never a public listener.
    Private,
}

impl EndpointMode {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointMode::Edge => "edge",
            EndpointMode::Regional => "regional",
            EndpointMode::Private => "private",
        }
    }
}

impl Api {
    /// The part of an API that a deployment freezes.
    pub fn snapshot(&self) -> ApiSnapshot {
        ApiSnapshot {
            kind: self.kind,
            routes: self.routes.clone(),
            gateway_responses: self.gateway_responses.clone(),
        }
    }
}

/// What a deployment freezes: everything that decides how a request is served, but not the
/// stages (which point at deployments) nor the API's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSnapshot {
    pub kind: ApiKind,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub gateway_responses: BTreeMap<GatewayResponseType, GatewayResponse>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    pub id: String,
    /// The id of the API this deployment belongs to.
    pub api: String,
    #[serde(default)]
    pub description: String,
    pub snapshot: ApiSnapshot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `METHOD /path/{param}/{proxy+}`, `ANY /path`, or `$default`.
    pub key: String,
    pub integration: Integration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntegrationType {
    /// Forward the request as it is (method, path, query, headers, body) and the response back.
    HttpProxy,
    /// Non-proxy HTTP: only mapped parameters are sent; the backend status is mapped through
    /// `responses`.
    Http,
    /// Answer from the gateway itself.
    Mock,
}

impl IntegrationType {
    pub fn as_str(self) -> &'static str {
        match self {
            IntegrationType::HttpProxy => "http_proxy",
            IntegrationType::Http => "http",
            IntegrationType::Mock => "mock",
        }
    }
}

pub const DEFAULT_INTEGRATION_TIMEOUT_MS: u64 = 29_000;
pub const MIN_INTEGRATION_TIMEOUT_MS: u64 = 50;
/// Longer than AWS allows on purpose: long-polling and slow report backends are real.
pub const MAX_INTEGRATION_TIMEOUT_MS: u64 = 3_600_000;

fn default_timeout_ms() -> u64 {
    DEFAULT_INTEGRATION_TIMEOUT_MS
}

/// One flat object for every integration type, as in AWS: which fields apply depends on `type`,
/// and validation says which are missing or out of place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Integration {
    #[serde(rename = "type")]
    pub kind: IntegrationType,
    /// `http_proxy`, `http`: absolute http(s) URI template. `{name}` inserts a path parameter of
    /// the route (`{proxy}` for `{proxy+}`); `${stageVariables.name}` inserts a stage variable.
    #[serde(default)]
    pub uri: Option<String>,
    /// `http_proxy`, `http`: the method sent to the backend; the client's method when absent.
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// `http`: `integration.request.{header|querystring}.NAME` → `method.request.{path|querystring|header}.NAME`,
    /// `stageVariables.NAME`, `context.requestId` or a quoted static `'value'`.
    #[serde(default)]
    pub request_parameters: BTreeMap<String, String>,
    /// `http`: how backend statuses map to client statuses; the first whose `selection_pattern`
    /// matches the backend status wins, else the one without a pattern.
    #[serde(default)]
    pub responses: Vec<IntegrationResponse>,
    /// `mock`: the status to answer with (200 when absent).
    #[serde(default)]
    pub status: Option<u16>,
    /// `mock`: response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `mock`: response body.
    #[serde(default)]
    pub body: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationResponse {
    /// A regular expression matched against the whole backend status code, e.g. `5\d\d`.
    #[serde(default)]
    pub selection_pattern: Option<String>,
    pub status: u16,
    /// Response header → `integration.response.header.NAME` or a quoted static `'value'`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// `[A-Za-z0-9_-]{1,128}`, or `$default` to serve the API at the root path.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A deployment id of this API. When absent the stage serves the API's current definition.
    #[serde(default)]
    pub deployment: Option<String>,
    /// Control plane: every change of the API's definition becomes a new deployment that this
    /// stage then serves, so each change stays in the history. (A standalone edge serves the
    /// current definition either way.)
    #[serde(default)]
    pub auto_deploy: bool,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

/// Why the gateway itself answered. Names follow AWS's gateway response types; those for
/// phases Portico has not built yet are accepted so that files stay portable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GatewayResponseType {
    #[serde(rename = "DEFAULT_4XX")]
    Default4xx,
    #[serde(rename = "DEFAULT_5XX")]
    Default5xx,
    AccessDenied,
    ApiConfigurationError,
    AuthorizerConfigurationError,
    AuthorizerFailure,
    BadRequestParameters,
    BadRequestBody,
    ExpiredToken,
    IntegrationFailure,
    IntegrationTimeout,
    InvalidApiKey,
    InvalidSignature,
    MissingAuthenticationToken,
    QuotaExceeded,
    RequestTooLarge,
    ResourceNotFound,
    Throttled,
    Unauthorized,
    UnsupportedMediaType,
    WafFiltered,
}

impl GatewayResponseType {
    pub fn as_str(self) -> &'static str {
        use GatewayResponseType::*;
        match self {
            Default4xx => "DEFAULT_4XX",
            Default5xx => "DEFAULT_5XX",
            AccessDenied => "ACCESS_DENIED",
            ApiConfigurationError => "API_CONFIGURATION_ERROR",
            AuthorizerConfigurationError => "AUTHORIZER_CONFIGURATION_ERROR",
            AuthorizerFailure => "AUTHORIZER_FAILURE",
            BadRequestParameters => "BAD_REQUEST_PARAMETERS",
            BadRequestBody => "BAD_REQUEST_BODY",
            ExpiredToken => "EXPIRED_TOKEN",
            IntegrationFailure => "INTEGRATION_FAILURE",
            IntegrationTimeout => "INTEGRATION_TIMEOUT",
            InvalidApiKey => "INVALID_API_KEY",
            InvalidSignature => "INVALID_SIGNATURE",
            MissingAuthenticationToken => "MISSING_AUTHENTICATION_TOKEN",
            QuotaExceeded => "QUOTA_EXCEEDED",
            RequestTooLarge => "REQUEST_TOO_LARGE",
            ResourceNotFound => "RESOURCE_NOT_FOUND",
            Throttled => "THROTTLED",
            Unauthorized => "UNAUTHORIZED",
            UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            WafFiltered => "WAF_FILTERED",
        }
    }

    /// The status used when the operator customized nothing.
    pub fn default_status(self) -> u16 {
        use GatewayResponseType::*;
        match self {
            Default4xx => 400,
            Default5xx => 500,
            AccessDenied
            | ExpiredToken
            | InvalidApiKey
            | InvalidSignature
            | MissingAuthenticationToken
            | WafFiltered => 403,
            ApiConfigurationError | AuthorizerConfigurationError | AuthorizerFailure => 500,
            BadRequestParameters | BadRequestBody => 400,
            // AWS uses 504 for both; a refused or reset connection is a bad gateway, not a
            // timeout, and operators read the difference off dashboards.
            IntegrationFailure => 502,
            IntegrationTimeout => 504,
            QuotaExceeded | Throttled => 429,
            RequestTooLarge => 413,
            ResourceNotFound => 404,
            Unauthorized => 401,
            UnsupportedMediaType => 415,
        }
    }
}

/// An operator's override of one gateway response type. Body and header values may use
/// `$context.error.message`, `$context.error.responseType` and `$context.requestId`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayResponse {
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<String>,
}

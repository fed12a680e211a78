//! The errors of each pipeline phase, and the one function that turns any of them into the
//! gateway's response (customizable per API through gateway responses).

use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use portico_proto::{GatewayResponse, GatewayResponseType};

use crate::body::ResponseBody;
use crate::compile::CompiledStage;

/// Phase "route": which API, stage and route a request is for.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("bad request: {reason}")]
    BadHost { reason: String },
    #[error(
        "the Host {host:?} does not name an API: call https://{{api-id}}.{suffix}/{{stage}}/..."
    )]
    NoApiInHost { host: String, suffix: String },
    /// Also the answer for an API served only on the other listener, which must not tell the
    /// two apart.
    #[error("no API {api:?} is served here")]
    UnknownApi { api: String },
    #[error("API {api:?} has no stage {stage:?}; its stages are: {known}")]
    UnknownStage {
        api: String,
        stage: String,
        known: String,
    },
    #[error("no route of API {api:?} stage {stage:?} matches {method} {path}{}", allowed_hint(.allowed))]
    NoRoute {
        api: String,
        stage: String,
        method: String,
        path: String,
        allowed: Vec<String>,
    },
    #[error("the request body has {length} bytes; this edge accepts at most {limit}")]
    BodyTooLarge { length: u64, limit: u64 },
}

fn allowed_hint(allowed: &[String]) -> String {
    if allowed.is_empty() {
        String::new()
    } else {
        format!(" (routes for this path accept: {})", allowed.join(", "))
    }
}

/// Phase "integrate": calling the backend or answering from the gateway.
#[derive(Debug, thiserror::Error)]
pub enum IntegrationError {
    #[error("the backend {backend} did not answer within {}ms", .after.as_millis())]
    Timeout { backend: String, after: Duration },
    #[error("could not connect to the backend {backend}: {reason}")]
    Connect { backend: String, reason: String },
    #[error("the backend {backend} failed: {reason}")]
    Backend { backend: String, reason: String },
    #[error("the request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("reading the request body failed: {reason}")]
    ClientBody { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Integration(#[from] IntegrationError),
}

impl GatewayError {
    pub fn response_type(&self) -> GatewayResponseType {
        use GatewayResponseType as T;
        match self {
            GatewayError::Route(RouteError::BodyTooLarge { .. })
            | GatewayError::Integration(IntegrationError::BodyTooLarge { .. }) => {
                T::RequestTooLarge
            }
            GatewayError::Route(RouteError::BadHost { .. }) => T::Default4xx,
            GatewayError::Route(_) => T::ResourceNotFound,
            GatewayError::Integration(e) => match e {
                IntegrationError::Timeout { .. } => T::IntegrationTimeout,
                IntegrationError::Connect { .. } | IntegrationError::Backend { .. } => {
                    T::IntegrationFailure
                }
                IntegrationError::BodyTooLarge { .. } => T::RequestTooLarge,
                IntegrationError::ClientBody { .. } => T::BadRequestBody,
            },
        }
    }
}

/// The single mapping from an error to what the client sees. `stage` is known once routing
/// got that far; its gateway responses may override status, headers and body.
pub fn gateway_response(
    err: &GatewayError,
    stage: Option<&CompiledStage>,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let ty = err.response_type();
    let message = err.to_string();
    let custom = stage.and_then(|s| custom_response(&s.gateway_responses, ty));
    let status = custom
        .and_then(|c| c.status)
        .unwrap_or_else(|| ty.default_status());
    let request_id = String::from_utf8_lossy(request_id.as_bytes());
    let substitute = |s: &str| {
        s.replace("$context.error.messageString", &json_escape(&message))
            .replace("$context.error.message", &json_escape(&message))
            .replace("$context.error.responseType", ty.as_str())
            .replace("$context.requestId", &request_id)
    };
    let body = match custom.and_then(|c| c.body.as_deref()) {
        Some(template) => substitute(template),
        None => serde_json::json!({
            "message": message,
            "type": ty.as_str(),
            "requestId": request_id,
        })
        .to_string(),
    };
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in custom.map(|c| &c.headers).into_iter().flatten() {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&substitute(value)),
        ) {
            headers.insert(n, v);
        }
    }
    response
}

/// AWS's fallback: a type without its own override uses DEFAULT_4XX or DEFAULT_5XX.
fn custom_response(
    responses: &std::collections::BTreeMap<GatewayResponseType, GatewayResponse>,
    ty: GatewayResponseType,
) -> Option<&GatewayResponse> {
    responses.get(&ty).or_else(|| match ty.default_status() {
        400..=499 => responses.get(&GatewayResponseType::Default4xx),
        500..=599 => responses.get(&GatewayResponseType::Default5xx),
        _ => None,
    })
}

fn json_escape(s: &str) -> String {
    let quoted = serde_json::Value::String(s.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

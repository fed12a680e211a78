//! Phase "integrate": build the backend request, call it, shape its response.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Response, Uri};

use crate::body::{RequestBody, ResponseBody, UpstreamBody};
use crate::compile::{
    BackendCall, CompiledIntegration, HttpCall, MockResponse, PathPart, ResponseValue, Source,
};
use crate::error::IntegrationError;
use crate::fields::Fields;
use crate::request::ClientRequest;
use crate::request_id::REQUEST_ID;
use crate::upstream::{BackendBody, RequestHead};
use crate::worker::Worker;

static HOST: HeaderName = header::HOST;
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What the integration needs to know about the request besides the request itself.
pub struct CallContext<'a> {
    /// Raw path parameter values, in route-key order.
    pub params: &'a [&'a str],
    /// The request path below the stage, e.g. `/pets/7`.
    pub stage_path: &'a str,
    pub request_id: &'a HeaderValue,
    /// The client's address, ready for X-Forwarded-For.
    pub client_ip: &'a HeaderValue,
    pub scheme: &'static str,
    /// When the request's head was complete: the integration's timeout counts from here.
    pub started: Instant,
}

/// The integration's answer, and how long the backend took to answer.
pub struct Outcome {
    pub response: Response<ResponseBody>,
    pub latency: Option<Duration>,
}

/// An integration ready to be called: everything it needs from the request, worked out
/// before anything is awaited. Keeping this apart from [`call`] keeps the future a request
/// awaits small (see `pipeline.rs`).
// Built once per request and called by reference, never moved around: boxing the large
// variant would only add an allocation per proxied request.
#[allow(clippy::large_enum_variant)]
pub enum Prepared<'c> {
    Mock {
        mock: &'c MockResponse,
        body: UpstreamBody,
    },
    Backend {
        call: &'c BackendCall,
        /// The `http` integration's response mappings; `None` for `http_proxy`.
        mappings: Option<&'c HttpCall>,
        request: BackendRequest,
        body: UpstreamBody,
        deadline: Instant,
    },
}

/// The integration's request, from the client's.
pub fn prepare<'c>(
    worker: &Worker,
    integration: &'c CompiledIntegration,
    ctx: &CallContext<'_>,
    req: ClientRequest,
) -> Prepared<'c> {
    let ClientRequest {
        method,
        uri,
        fields,
        body,
        ..
    } = req;
    let (call, mappings, request) = match integration {
        CompiledIntegration::Mock(mock) => {
            return Prepared::Mock {
                mock,
                body: limit(worker, body),
            };
        }
        CompiledIntegration::HttpProxy(call) => {
            (call, None, proxy_request(call, ctx, method, &uri, fields))
        }
        CompiledIntegration::Http(http) => (
            &http.call,
            Some(http),
            http_request(http, ctx, method, &uri, &fields),
        ),
    };
    Prepared::Backend {
        call,
        mappings,
        request,
        body: limit(worker, body),
        // The timeout is bounded by validation (MAX_INTEGRATION_TIMEOUT_MS), so this sum
        // cannot overflow; the fallback only keeps the path free of a panic.
        deadline: ctx.started.checked_add(call.timeout).unwrap_or(ctx.started),
    }
}

/// Calls the integration. `started` is when the request's head was complete: the
/// integration's latency counts from there (routing takes microseconds; a clock read per
/// request is saved).
///
/// Takes the prepared call by reference and polls the backend call and its deadline side by
/// side rather than through `tokio::time::timeout`: each would have been one more copy of the
/// backend call's future per request.
pub async fn call(
    worker: &Worker,
    prepared: &mut Prepared<'_>,
    started: Instant,
) -> Result<Outcome, IntegrationError> {
    let (call, mappings, request, body, deadline) = match prepared {
        Prepared::Mock { mock, body } => {
            // Read the request body to its end before answering, so the connection stays
            // usable and a client still uploading does not see a reset.
            drain(worker, body).await?;
            return Ok(Outcome {
                response: mock_response(mock),
                latency: None,
            });
        }
        Prepared::Backend {
            call,
            mappings,
            request,
            body,
            deadline,
        } => (*call, *mappings, request, body, *deadline),
    };
    let fields = request.forwarded.fields();
    let head = RequestHead {
        method: &request.method,
        path: &request.path,
        headers: &request.headers,
        set: &fields.0[..fields.1],
    };
    let mut sent = pin!(worker.pool.send(&call.backend, head, body));
    let mut timer = pin!(tokio::time::sleep_until(deadline.into()));
    let sent = poll_fn(|cx| match sent.as_mut().poll(cx) {
        Poll::Ready(result) => Poll::Ready(Some(result)),
        Poll::Pending => timer.as_mut().poll(cx).map(|()| None),
    });
    let response = match sent.await {
        Some(Ok(response)) => response,
        Some(Err(IntegrationError::BodyTooLarge { .. })) => {
            return Err(IntegrationError::BodyTooLarge {
                limit: worker.settings.max_body_bytes,
            });
        }
        Some(Err(e)) => return Err(e),
        None => {
            return Err(IntegrationError::Timeout {
                backend: call.backend.key.to_string(),
                after: call.timeout,
            });
        }
    };
    let latency = started.elapsed();
    Ok(Outcome {
        response: match mappings {
            // The backend client has already consumed the response's connection-level fields.
            None => response.map(ResponseBody::backend),
            Some(http) => map_http_response(http, response),
        },
        latency: Some(latency),
    })
}

async fn drain(worker: &Worker, body: &mut UpstreamBody) -> Result<(), IntegrationError> {
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        if let Err(e) = frame {
            return Err(if e.is::<http_body_util::LengthLimitError>() {
                IntegrationError::BodyTooLarge {
                    limit: worker.settings.max_body_bytes,
                }
            } else {
                IntegrationError::ClientBody {
                    reason: e.to_string(),
                }
            });
        }
    }
    Ok(())
}

fn limit(worker: &Worker, body: RequestBody) -> UpstreamBody {
    let max = usize::try_from(worker.settings.max_body_bytes).unwrap_or(usize::MAX);
    http_body_util::Limited::new(body, max)
}

/// A backend request before it is written.
pub struct BackendRequest {
    method: Method,
    /// Valid by construction (see `compile::backend_call`).
    path: String,
    /// Sent except for the fields `forwarded` sets.
    headers: Fields,
    forwarded: Forwarded,
}

fn mock_response(mock: &MockResponse) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(mock.body.clone()));
    *response.status_mut() = mock.status;
    *response.headers_mut() = mock.headers.clone();
    response
}

/// `http_proxy`: the client's request as it is, addressed to the backend. Its fields are
/// end-to-end ones already (the protocol layer took the rest).
fn proxy_request(
    call: &BackendCall,
    ctx: &CallContext<'_>,
    method: Method,
    uri: &Uri,
    headers: Fields,
) -> BackendRequest {
    let original_host = original_host(uri, &headers);
    let forwarded = Forwarded::new(call, ctx, &headers, original_host);
    BackendRequest {
        method: call.method.clone().unwrap_or(method),
        path: render_path(call, ctx, uri.query(), &[]),
        headers,
        forwarded,
    }
}

/// `http`: a new request carrying only the mapped parameters and the body.
fn http_request(
    http: &HttpCall,
    ctx: &CallContext<'_>,
    method: Method,
    uri: &Uri,
    client: &Fields,
) -> BackendRequest {
    let mut headers = HeaderMap::new();
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
    ] {
        if let Some(v) = client.value(name.as_str()) {
            headers.insert(name, v);
        }
    }
    // Path parameters and client query values arrive percent-encoded and are passed on as
    // they came; the other sources are plain text.
    let lookup = |source: &Source| -> Option<Mapped> {
        match source {
            Source::Param(i) => ctx.params.get(*i).map(|s| Mapped::Encoded(s.to_string())),
            Source::Query(name) => {
                query_value(uri.query(), name).map(|v| Mapped::Encoded(v.to_string()))
            }
            Source::Header(h) => client
                .get(h.as_str())
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(|v| Mapped::Plain(v.to_string())),
            Source::RequestId => ctx
                .request_id
                .to_str()
                .ok()
                .map(|v| Mapped::Plain(v.to_string())),
            Source::Static(s) => Some(Mapped::Plain(s.clone())),
        }
    };
    for (name, source) in &http.headers {
        let value = lookup(source).map(Mapped::into_inner);
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(name.clone(), v);
        }
    }
    let query: Vec<String> = http
        .query
        .iter()
        .filter_map(|(name, source)| {
            lookup(source).map(|m| {
                let value = match m {
                    Mapped::Encoded(v) => v,
                    Mapped::Plain(v) => percent_encode(&v),
                };
                format!("{}={value}", percent_encode(name))
            })
        })
        .collect();
    let original_host = original_host(uri, client);
    let headers = Fields::from_map(&headers);
    let forwarded = Forwarded::new(&http.call, ctx, &headers, original_host);
    BackendRequest {
        method: http.call.method.clone().unwrap_or(method),
        path: render_path(&http.call, ctx, None, &query),
        headers,
        forwarded,
    }
}

fn map_http_response(http: &HttpCall, response: Response<BackendBody>) -> Response<ResponseBody> {
    let (mut parts, mut body) = response.into_parts();
    // The mappings read the backend's fields; none of them is passed on otherwise.
    body.move_fields_into(&mut parts.headers);
    let status = parts.status.as_str();
    let mapping = http
        .responses
        .iter()
        .find(|r| r.pattern.as_ref().is_none_or(|p| p.is_match(status)));
    let mut out = Response::new(ResponseBody::backend(body));
    let headers = out.headers_mut();
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        headers.insert(header::CONTENT_TYPE, ct.clone());
    }
    match mapping {
        // No mapping matched and there is no default: AWS answers 500 here; passing the
        // backend's status through tells the operator more.
        None => *out.status_mut() = parts.status,
        Some(m) => {
            *out.status_mut() = m.status;
            for (name, value) in &m.headers {
                let v = match value {
                    ResponseValue::Static(v) => Some(v.clone()),
                    ResponseValue::BackendHeader(h) => parts.headers.get(h).cloned(),
                };
                if let Some(v) = v {
                    out.headers_mut().insert(name.clone(), v);
                }
            }
        }
    }
    out
}

/// The host the client asked for. Both sources are checked already (the URI by its parser,
/// the field by the head's), so the bytes are taken as they are.
fn original_host(uri: &Uri, headers: &Fields) -> Option<Bytes> {
    match uri.authority() {
        Some(a) => Some(Bytes::copy_from_slice(a.as_str().as_bytes())),
        None => headers.raw_value("host"),
    }
}

/// The fields this hop sets on a backend request, in place of any the client sent.
struct Forwarded {
    host: HeaderValue,
    /// Every X-Forwarded-For field the client sent, in order, then this hop's client.
    forwarded_for: HeaderValue,
    proto: HeaderValue,
    request_id: HeaderValue,
    forwarded_host: Option<Bytes>,
}

impl Forwarded {
    fn new(
        call: &BackendCall,
        ctx: &CallContext<'_>,
        headers: &Fields,
        original_host: Option<Bytes>,
    ) -> Forwarded {
        let mut chain = headers.get_all("x-forwarded-for").peekable();
        let forwarded_for = match chain.peek() {
            None => ctx.client_ip.clone(),
            Some(_) => {
                let mut joined: Vec<&[u8]> = chain.collect();
                joined.push(ctx.client_ip.as_bytes());
                HeaderValue::from_bytes(&joined.join(&b", "[..]))
                    .unwrap_or_else(|_| ctx.client_ip.clone())
            }
        };
        Forwarded {
            host: call.backend.host_header.clone(),
            forwarded_for,
            proto: HeaderValue::from_static(ctx.scheme),
            request_id: ctx.request_id.clone(),
            forwarded_host: original_host,
        }
    }

    /// The fields as (name, value) pairs: the first `.1` of the array.
    fn fields(&self) -> ([(&'static HeaderName, &[u8]); 5], usize) {
        let fields = [
            (&HOST, self.host.as_bytes()),
            (&X_FORWARDED_FOR, self.forwarded_for.as_bytes()),
            (&X_FORWARDED_PROTO, self.proto.as_bytes()),
            (&REQUEST_ID, self.request_id.as_bytes()),
            (
                &X_FORWARDED_HOST,
                self.forwarded_host
                    .as_deref()
                    .unwrap_or(self.host.as_bytes()),
            ),
        ];
        (fields, if self.forwarded_host.is_some() { 5 } else { 4 })
    }
}

/// The backend path: the template with path parameters filled in, the request path appended
/// for `$default` routes, and the template's, the client's and mapped query strings joined.
fn render_path(
    call: &BackendCall,
    ctx: &CallContext<'_>,
    client_query: Option<&str>,
    mapped_query: &[String],
) -> String {
    let mut s = String::with_capacity(128);
    for part in &call.path {
        match part {
            PathPart::Literal(l) => s.push_str(l),
            PathPart::Param(i) => s.push_str(ctx.params.get(*i).copied().unwrap_or("")),
        }
    }
    let template_query = match call.template_query.then(|| s.find('?')).flatten() {
        Some(i) => {
            let q = s[i + 1..].to_string();
            s.truncate(i);
            Some(q)
        }
        None => None,
    };
    if call.append_request_path {
        let tail = ctx.stage_path.trim_start_matches('/');
        if !s.ends_with('/') {
            s.push('/');
        }
        s.push_str(tail);
    }
    if s.is_empty() {
        s.push('/');
    }
    let mut first = true;
    let mut push_query = |s: &mut String, q: &str| {
        if q.is_empty() {
            return;
        }
        s.push(if first { '?' } else { '&' });
        first = false;
        s.push_str(q);
    };
    if let Some(q) = template_query {
        push_query(&mut s, &q);
    }
    if let Some(q) = client_query {
        push_query(&mut s, q);
    }
    for pair in mapped_query {
        push_query(&mut s, pair);
    }
    s
}

/// A mapped request value, and whether it is already percent-encoded.
enum Mapped {
    Encoded(String),
    Plain(String),
}

impl Mapped {
    fn into_inner(self) -> String {
        match self {
            Mapped::Encoded(v) | Mapped::Plain(v) => v,
        }
    }
}

fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::Backend;
    use std::sync::Arc;

    fn call(path: Vec<PathPart>, append: bool) -> BackendCall {
        let template_query = PathPart::has_query(&path);
        BackendCall {
            backend: Backend {
                https: false,
                authority: "b:1".parse().unwrap(),
                host_header: HeaderValue::from_static("b:1"),
                key: Arc::from("http://b:1"),
            },
            path,
            method: None,
            timeout: Duration::from_secs(1),
            append_request_path: append,
            template_query,
        }
    }

    fn ctx<'a>(params: &'a [&'a str], stage_path: &'a str, id: &'a HeaderValue) -> CallContext<'a> {
        CallContext {
            params,
            stage_path,
            request_id: id,
            client_ip: id,
            scheme: "http",
            started: Instant::now(),
        }
    }

    #[test]
    fn renders_paths_and_joins_queries() {
        let id = HeaderValue::from_static("r");
        let c = call(
            vec![
                PathPart::Literal("/pets/".into()),
                PathPart::Param(0),
                PathPart::Literal("?v=1".into()),
            ],
            false,
        );
        let p = render_path(
            &c,
            &ctx(&["7"], "/x", &id),
            Some("a=b"),
            &["q=x%20y".into()],
        );
        assert_eq!(p.as_str(), "/pets/7?v=1&a=b&q=x%20y");

        let d = call(vec![], true);
        let p = render_path(&d, &ctx(&[], "/deep/path", &id), None, &[]);
        assert_eq!(p.as_str(), "/deep/path");
        let p = render_path(&d, &ctx(&[], "", &id), None, &[]);
        assert_eq!(p.as_str(), "/");
    }

    #[test]
    fn finds_query_values() {
        assert_eq!(query_value(Some("a=1&b=2&c"), "b"), Some("2"));
        assert_eq!(query_value(Some("a=1&c"), "c"), Some(""));
        assert_eq!(query_value(None, "a"), None);
    }
}

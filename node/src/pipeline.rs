//! The request pipeline: one closed sequence of phases, read top to bottom in [`handle`].
//!
//! DESIGN.md's full sequence is route → endpoint policy → CORS → authorize → throttle → quota →
//! validate → cache lookup → transform request → integrate → transform response → cache store →
//! respond. Phases that are not built yet are absent here, not stubbed. Each phase returns its
//! own error type; [`crate::error::gateway_response`] is the only place errors become
//! responses, and the access log line and metrics are emitted once, when the response body is
//! finished ([`crate::body::Finish`]).
//!
//! The phases before the integration's call run without waiting ([`before_call`]), so the
//! integration's call is the only future [`handle`] awaits. Each layer of nested futures is
//! copied whole when it is created, and the layers a request went through used to copy 11 KiB
//! per request, a tenth of the edge's user-space instructions (bench/callgrind.sh).
//!
//! The endpoint policy's listener rule (a private API only on the private listener, which
//! serves nothing else) is applied by route as it looks up the API, not after: an API the
//! listener does not serve must get the very answer an unknown API gets, before its stages,
//! routes or gateway responses could show. Its resource-policy half is not built yet.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::Response;
use http::uri::PathAndQuery;

use crate::access_log::AccessRecord;
use crate::body::{Finish, ResponseBody};
use crate::compile::{CompiledStage, EdgeConfig};
use crate::error::{GatewayError, RouteError, gateway_response};
use crate::fields::content_length;
use crate::integration::{self, CallContext, Prepared};
use crate::request::ClientRequest;
use crate::request_id;
use crate::server::{ConnState, Listener};
use crate::worker::Worker;

/// What the phases learn about a request, for the response and the access log.
struct Exchange<'c> {
    /// When the request's head was complete.
    started: Instant,
    record: AccessRecord,
    stage: Option<&'c CompiledStage>,
}

/// The entry point for every request on every connection (HTTP/1.1 and HTTP/2).
pub async fn handle(
    worker: &Worker,
    conn: &Arc<ConnState>,
    req: ClientRequest,
) -> Result<Response<ResponseBody>, Infallible> {
    let config = worker.config.current();
    let mut exchange = Exchange::begin(worker, conn, &req);

    // Phases 1 and 2, and the backend request.
    let result = match before_call(worker, &config, conn, &mut exchange, req) {
        // Phase 3 — integrate: call the backend, or answer from the gateway.
        Ok(ref mut prepared) => match integration::call(worker, prepared, exchange.started).await {
            Ok(outcome) => {
                exchange.record.integration_latency = outcome.latency;
                Ok(outcome.response)
            }
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e),
    };

    // Phase 4 — respond.
    Ok(exchange.respond(worker, conn, result))
}

/// The phases up to the integration's call, which need not wait for anything.
fn before_call<'c>(
    worker: &Worker,
    config: &'c EdgeConfig,
    conn: &ConnState,
    exchange: &mut Exchange<'c>,
    req: ClientRequest,
) -> Result<Prepared<'c>, GatewayError> {
    // Phase 1 — route: the API from the Host (among those this connection's listener serves),
    // the stage from the first path segment, the route from the rest of the path.
    let path = exchange.record.path.clone();
    let routed = route(worker, config, conn.listener, &req, path.path(), exchange)?;
    let route = &routed.stage.routes[routed.route];
    exchange.record.route_key = Some(route.key.clone());

    // Phase 2 — request limits: a declared body over the limit is refused before any backend
    // is called (a chunked body is cut off by the integration's body stream instead).
    check_declared_length(worker, &req)?;

    // Phase 3, first half: the backend request, built from the client's.
    let ctx = CallContext {
        params: &routed.params,
        stage_path: routed.stage_path,
        request_id: &exchange.record.request_id,
        client_ip: &conn.peer_ip,
        scheme: "http",
        started: exchange.started,
    };
    Ok(integration::prepare(worker, &route.integration, &ctx, req))
}

impl<'c> Exchange<'c> {
    fn begin(worker: &Worker, conn: &ConnState, req: &ClientRequest) -> Exchange<'c> {
        let started = Instant::now();
        conn.request_started();
        Exchange {
            record: AccessRecord {
                request_id: request_id::for_request(&req.fields),
                source_ip: conn.peer.ip(),
                method: req.method.clone(),
                path: req
                    .uri
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
                protocol: req.version,
                request_time: worker.access_log.request_time(),
                api_id: None,
                stage: None,
                route_key: None,
                status: 0,
                integration_latency: None,
                error_type: None,
            },
            stage: None,
            started,
        }
    }

    /// The response, and the books to close when its body is done. The request id travels with
    /// the books ([`ResponseBody::request_id`]) and the protocol layer writes it: inserting it
    /// into the header map cost a map allocation and a hash per request.
    fn respond(
        mut self,
        worker: &Worker,
        conn: &Arc<ConnState>,
        result: Result<Response<ResponseBody>, GatewayError>,
    ) -> Response<ResponseBody> {
        let mut response = match result {
            Ok(response) => response,
            Err(err) => {
                let request_id = &self.record.request_id;
                tracing::debug!(?request_id, error = %err, "gateway error");
                self.record.error_type = Some(err.response_type().as_str());
                gateway_response(&err, self.stage, &self.record.request_id)
            }
        };
        self.record.status = response.status().as_u16();
        let metrics = match self.stage {
            Some(stage) => stage.metrics.clone(),
            None => worker.metrics.unmatched.clone(),
        };
        response.body_mut().set_finish(Box::new(Finish {
            record: self.record,
            started: self.started,
            bytes: 0,
            metrics,
            access_log: worker.access_log.clone(),
            connection: conn.clone(),
        }));
        response
    }
}

struct Routed<'p, 'c> {
    stage: &'c CompiledStage,
    route: usize,
    params: Vec<&'p str>,
    /// The request path below the stage.
    stage_path: &'p str,
}

fn route<'p, 'c>(
    worker: &Worker,
    config: &'c EdgeConfig,
    listener: Listener,
    req: &ClientRequest,
    path: &'p str,
    exchange: &mut Exchange<'c>,
) -> Result<Routed<'p, 'c>, RouteError> {
    let suffix = &worker.settings.domain_suffix;
    let host = request_host(req)?;
    let api_id = api_id_from_host(host, suffix).ok_or_else(|| RouteError::NoApiInHost {
        host: host.to_string(),
        suffix: suffix.clone(),
    })?;
    let api = config
        .apis
        .get(api_id)
        .or_else(|| config.apis.get(&api_id.to_ascii_lowercase()))
        // Endpoint policy, listener rule: on the other listener the API does not exist.
        .filter(|api| api.listener == listener)
        .ok_or_else(|| RouteError::UnknownApi {
            api: api_id.to_string(),
        })?;

    let rest = path.strip_prefix('/').unwrap_or(path);
    let first = &rest[..rest.bytes().position(|b| b == b'/').unwrap_or(rest.len())];
    let (stage, stage_path) = match api.stages.get(first) {
        Some(stage) if first != "$default" => (&**stage, &path[1 + first.len()..]),
        _ => match &api.default_stage {
            Some(stage) => (&**stage, path),
            None => {
                let mut known: Vec<&str> = api.stages.keys().map(String::as_str).collect();
                known.sort_unstable();
                return Err(RouteError::UnknownStage {
                    api: api.id.to_string(),
                    stage: first.to_string(),
                    known: if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    },
                });
            }
        },
    };
    // Known from here on: a route miss is logged against the stage and answered with the
    // stage's own gateway responses.
    exchange.record.api_id = Some(stage.api_id.clone());
    exchange.record.stage = Some(stage.name.clone());
    exchange.stage = Some(stage);
    match stage.router.find(&req.method, stage_path) {
        Some(m) => Ok(Routed {
            stage,
            route: m.route,
            params: m.params,
            stage_path,
        }),
        None => Err(RouteError::NoRoute {
            api: api.id.to_string(),
            stage: stage.name.to_string(),
            method: req.method.to_string(),
            path: if stage_path.is_empty() {
                "/".into()
            } else {
                stage_path.to_string()
            },
            allowed: stage.router.methods_for_path(stage_path),
        }),
    }
}

/// The host a request is for: the URI's authority (HTTP/2, absolute-form), else the one Host
/// header. RFC 9112 §3.2: an HTTP/1.1 request without a Host, or with more than one, is a 400.
fn request_host(req: &ClientRequest) -> Result<&str, RouteError> {
    if let Some(h) = req.uri.host() {
        return Ok(h);
    }
    let mut hosts = req.fields.get_all("host");
    match (hosts.next(), hosts.next()) {
        (Some(h), None) => std::str::from_utf8(h).map_err(|_| RouteError::BadHost {
            reason: "the Host header is not valid text".into(),
        }),
        (Some(_), Some(_)) => Err(RouteError::BadHost {
            reason: format!(
                "the request has {} Host headers; exactly one is allowed",
                req.fields.get_all("host").count()
            ),
        }),
        (None, _) if req.version == http::Version::HTTP_11 => Err(RouteError::BadHost {
            reason: "the request has no Host header".into(),
        }),
        (None, _) => Ok(""),
    }
}

/// `demo.portico.localhost:8080` → `demo`.
fn api_id_from_host<'h>(host: &'h str, suffix: &str) -> Option<&'h str> {
    let host = match host.bytes().rposition(|b| b == b':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.len() <= suffix.len() + 1 {
        return None;
    }
    let (label, tail) = host.split_at(host.len() - suffix.len());
    if !tail.eq_ignore_ascii_case(suffix) {
        return None;
    }
    let label = label.strip_suffix('.')?;
    (!label.is_empty() && !label.contains('.')).then_some(label)
}

fn check_declared_length(worker: &Worker, req: &ClientRequest) -> Result<(), RouteError> {
    let declared = req.fields.get("content-length").and_then(content_length);
    match declared {
        Some(length) if length > worker.settings.max_body_bytes => Err(RouteError::BodyTooLarge {
            length,
            limit: worker.settings.max_body_bytes,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::api_id_from_host;

    #[test]
    fn api_id_comes_from_the_first_label() {
        let s = "portico.localhost";
        assert_eq!(api_id_from_host("demo.portico.localhost", s), Some("demo"));
        assert_eq!(
            api_id_from_host("demo.portico.localhost:8080", s),
            Some("demo")
        );
        assert_eq!(api_id_from_host("Demo.PORTICO.localhost.", s), Some("Demo"));
        assert_eq!(api_id_from_host("portico.localhost", s), None);
        assert_eq!(api_id_from_host("a.b.portico.localhost", s), None);
        assert_eq!(api_id_from_host("demoportico.localhost", s), None);
        assert_eq!(api_id_from_host("127.0.0.1:8080", s), None);
    }
}

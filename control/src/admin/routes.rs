//! The admin API's routes. Each handler reads the state or proposes one command; errors name
//! the field that is wrong.

// Parsing helpers return the finished error response; they run once per admin request, off any
// hot path, so its size does not matter.
#![allow(clippy::result_large_err)]

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use portico_proto::{Api, Document, Format};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{self, AuthError};
use super::{Backend, Outcome, ProposeError, error, json_response, openapi, unavailable};
use crate::raft::Member;
use crate::state::{Applied, Command, Proposal, Rejection, Role, State, Versioned};

pub async fn handle<B: Backend>(backend: &B, req: &Request<Bytes>) -> Outcome {
    let path = req.uri().path().trim_end_matches('/');
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    if method == Method::GET && segments == ["v1", "openapi.json"] {
        return done(json_response(StatusCode::OK, &openapi::document()));
    }
    // Scraped by Prometheus without a token, like the edges' ops listener (bind the admin API
    // to a private address).
    if method == Method::GET && segments == ["metrics"] {
        let mut r = http::Response::new(http_body_util::Full::new(Bytes::from(backend.metrics())));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return done(r);
    }
    if segments.first() != Some(&"v1") {
        return done(error(
            StatusCode::NOT_FOUND,
            "not_found",
            "the admin API lives under /v1/ (see /v1/openapi.json)",
            &[],
        ));
    }

    let state = backend.state();
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let role = match auth::authenticate(&state, authorization) {
        Ok(role) => role,
        // A token this follower has not replicated yet may be brand new: the leader knows
        // every committed token, so it decides.
        Err(AuthError::Invalid) if !req.headers().contains_key(super::FORWARDED) => {
            match backend.leader_elsewhere() {
                Some(leader_admin) => return Outcome::Forward { leader_admin },
                None => return done(auth_error(AuthError::Invalid)),
            }
        }
        Err(e) => return done(auth_error(e)),
    };
    let writes = !matches!(method, Method::GET | Method::HEAD);
    // Join tokens may admit and promote a control node, and nothing else.
    let joining = method == Method::POST
        && matches!(
            &segments[1..],
            ["cluster", "join"] | ["cluster", "members", _, "promote"]
        );
    if role == Role::Edge || (role == Role::Join && !joining) {
        return done(auth_error(AuthError::Forbidden));
    }
    if writes
        && !joining
        && let Err(e) = auth::require_admin(role)
    {
        return done(auth_error(e));
    }
    if !writes && !query_flag(req, "consistency", "stale") {
        match backend.read_barrier().await {
            Ok(()) => {}
            Err(ProposeError::NotLeader { leader_admin }) => {
                return Outcome::Forward { leader_admin };
            }
            Err(e) => return done(propose_error(e)),
        }
    }
    let state = backend.state();

    match (method, &segments[1..]) {
        (Method::GET, ["apis"]) => {
            let items: Vec<Value> = state.apis.values().map(|a| versioned(a, "api")).collect();
            done(json_response(
                StatusCode::OK,
                &json!({"revision": state.revision, "items": items}),
            ))
        }
        (Method::GET, ["apis", id]) => match state.apis.get(*id) {
            Some(a) => done(json_response(StatusCode::OK, &versioned(a, "api"))),
            None => done(not_found("api", id)),
        },
        (Method::PUT, ["apis", id]) => {
            let api: Api = match parse_body(req) {
                Ok(api) => api,
                Err(resp) => return done(resp),
            };
            if api.id != *id {
                return done(error(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "the body's id differs from the id in the path",
                    &[("id".into(), format!("{:?} is not {id:?}", api.id))],
                ));
            }
            let if_revision = match if_match(req) {
                Ok(r) => r,
                Err(resp) => return done(resp),
            };
            let id = id.to_string();
            write(
                backend,
                Command::PutApi { api, if_revision },
                "apis[0].",
                move |s| {
                    s.apis
                        .get(&id)
                        .map(|a| versioned(a, "api"))
                        .unwrap_or(Value::Null)
                },
            )
            .await
        }
        (Method::DELETE, ["apis", id]) => {
            let if_revision = match if_match(req) {
                Ok(r) => r,
                Err(resp) => return done(resp),
            };
            let command = Command::DeleteApi {
                id: id.to_string(),
                if_revision,
            };
            write(backend, command, "", |s| json!({"revision": s.revision})).await
        }
        (Method::GET, ["apis", id, "deployments"]) => {
            if !state.apis.contains_key(*id) {
                return done(not_found("api", id));
            }
            let items: Vec<Value> = state
                .deployments
                .get(*id)
                .map(|m| m.values().map(|d| versioned(d, "deployment")).collect())
                .unwrap_or_default();
            done(json_response(
                StatusCode::OK,
                &json!({"revision": state.revision, "items": items}),
            ))
        }
        (Method::POST, ["apis", id, "deployments"]) => {
            #[derive(Deserialize, Default)]
            #[serde(deny_unknown_fields)]
            struct NewDeployment {
                #[serde(default)]
                description: String,
                #[serde(default)]
                stage: Option<String>,
            }
            let body: NewDeployment = if req.body().is_empty() {
                NewDeployment::default()
            } else {
                match parse_body(req) {
                    Ok(b) => b,
                    Err(resp) => return done(resp),
                }
            };
            let deployment_id = new_deployment_id();
            let (api, dep) = (id.to_string(), deployment_id.clone());
            let command = Command::Deploy {
                api: id.to_string(),
                id: deployment_id,
                description: body.description,
                stage: body.stage,
            };
            write(backend, command, "", move |s| {
                s.deployments
                    .get(&api)
                    .and_then(|m| m.get(&dep))
                    .map(|d| versioned(d, "deployment"))
                    .unwrap_or(Value::Null)
            })
            .await
        }
        (Method::POST, ["apply"]) => {
            let document: Document = match parse_body(req) {
                Ok(d) => d,
                Err(resp) => return done(resp),
            };
            let command = Command::ApplyDocument { document };
            let changes = plan(&state, &command);
            if let Err(rejection) = &changes {
                return done(rejection_response(rejection, ""));
            }
            let changes = changes.unwrap_or_default();
            if query_flag(req, "dry_run", "true") {
                return done(json_response(
                    StatusCode::OK,
                    &json!({"dry_run": true, "revision": state.revision, "changes": changes}),
                ));
            }
            if changes.iter().all(|c| c["action"] == "unchanged") {
                return done(json_response(
                    StatusCode::OK,
                    &json!({"dry_run": false, "revision": state.revision, "changes": changes}),
                ));
            }
            write(
                backend,
                command,
                "",
                move |s| json!({"dry_run": false, "revision": s.revision, "changes": changes}),
            )
            .await
        }
        (Method::GET, ["tokens"]) => {
            if role != Role::Admin {
                return done(auth_error(AuthError::Forbidden));
            }
            let items: Vec<Value> = state
                .tokens
                .values()
                .map(|t| json!({"id": t.value.id, "name": t.value.name, "role": t.value.role, "created_at_ms": t.created_at_ms}))
                .collect();
            done(json_response(StatusCode::OK, &json!({"items": items})))
        }
        (Method::POST, ["tokens"]) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct NewToken {
                name: String,
                role: Role,
            }
            let body: NewToken = match parse_body(req) {
                Ok(b) => b,
                Err(resp) => return done(resp),
            };
            let minted = match auth::mint(&body.name, body.role) {
                Ok(m) => m,
                Err(e) => {
                    return done(error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        &e.to_string(),
                        &[],
                    ));
                }
            };
            let mut answer = json!({"id": minted.record.id, "name": body.name, "role": body.role, "token": minted.token,
                "note": "the token is shown once; store it now"});
            // An edge enrols before it trusts anything: its join token carries the CA's
            // fingerprint, which it checks the control node's certificate chain against.
            if body.role == Role::Edge {
                let Some(join) = crate::sync::enrol::join_token(&state, &minted.token) else {
                    return done(unavailable("the cluster has no CA yet"));
                };
                answer["join_token"] = json!(join);
                answer["note"] = json!(
                    "the join token is shown once; start an edge with: portico edge --control HOST:7443 --region REGION --join-token JOIN_TOKEN"
                );
            }
            write(
                backend,
                Command::CreateToken {
                    token: minted.record,
                },
                "",
                move |_| answer,
            )
            .await
        }
        (Method::DELETE, ["tokens", id]) => {
            write(
                backend,
                Command::DeleteToken { id: id.to_string() },
                "",
                |s| json!({"revision": s.revision}),
            )
            .await
        }
        (Method::GET, ["cluster", "edges"]) => {
            let answer = if query_flag(req, "scope", "local") {
                backend.local_edges()
            } else {
                backend
                    .cluster_edges(authorization.map(str::to_string))
                    .await
            };
            done(json_response(StatusCode::OK, &answer))
        }
        (Method::DELETE, ["cluster", "edges", id]) => {
            write(
                backend,
                Command::RemoveEdge { id: id.to_string() },
                "",
                |s| json!({"revision": s.revision}),
            )
            .await
        }
        (Method::GET, ["cluster", "status"]) => {
            done(json_response(StatusCode::OK, &backend.cluster_status()))
        }
        (Method::POST, ["cluster", "join"]) => {
            let member: Member = match parse_body(req) {
                Ok(m) => m,
                Err(resp) => return done(resp),
            };
            for (field, addr) in [
                ("raft_addr", &member.raft_addr),
                ("admin_addr", &member.admin_addr),
            ] {
                if super::client::parse_target(addr)
                    .1
                    .parse::<std::net::SocketAddr>()
                    .is_err()
                {
                    return done(error(
                        StatusCode::BAD_REQUEST,
                        "invalid",
                        &format!("{field}: {addr:?} is not an ip:port address"),
                        &[(field.into(), "not an ip:port address".into())],
                    ));
                }
            }
            match backend.join(member).await {
                Ok(grant) => done(json_response(
                    StatusCode::OK,
                    &serde_json::to_value(&grant).unwrap_or(Value::Null),
                )),
                Err(ProposeError::NotLeader { leader_admin }) => Outcome::Forward { leader_admin },
                Err(e) => done(propose_error(e)),
            }
        }
        (Method::POST, ["cluster", "members", id, "promote"])
        | (Method::DELETE, ["cluster", "members", id]) => {
            let Ok(id) = id.parse::<u64>() else {
                return done(error(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "the member id must be a number",
                    &[],
                ));
            };
            let result = if req.method() == Method::DELETE {
                backend.remove_member(id).await
            } else {
                backend.promote(id).await
            };
            match result {
                Ok(()) => done(json_response(StatusCode::OK, &backend.cluster_status())),
                Err(ProposeError::NotLeader { leader_admin }) => Outcome::Forward { leader_admin },
                Err(e) => done(propose_error(e)),
            }
        }
        (_, ["apis", ..] | ["apply"] | ["tokens", ..] | ["cluster", ..]) => done(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this method is not supported on this path (see /v1/openapi.json)",
            &[],
        )),
        _ => done(error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no such resource: {path} (see /v1/openapi.json)"),
            &[],
        )),
    }
}

fn done(r: http::Response<http_body_util::Full<Bytes>>) -> Outcome {
    Outcome::Done(r)
}

/// Proposes `command`; on success answers with what `view` reads from the state after it.
async fn write<B: Backend>(
    backend: &B,
    command: Command,
    strip_prefix: &str,
    view: impl FnOnce(&State) -> Value,
) -> Outcome {
    match backend.propose(command).await {
        Ok(Applied::Done { .. }) => done(json_response(StatusCode::OK, &view(&backend.state()))),
        Ok(Applied::Rejected { rejection, .. }) | Err(ProposeError::Rejected(rejection)) => {
            done(rejection_response(&rejection, strip_prefix))
        }
        Err(ProposeError::NotLeader { leader_admin }) => Outcome::Forward { leader_admin },
        Err(e) => done(propose_error(e)),
    }
}

/// What applying `command` now would change, object by object (for `apply` and its dry run).
fn plan(state: &State, command: &Command) -> Result<Vec<Value>, Rejection> {
    state.validate(command)?;
    let mut next = state.clone();
    if let Applied::Rejected { rejection, .. } = next.apply(
        state.revision + 1,
        &Proposal {
            at_ms: 0,
            command: command.clone(),
        },
    ) {
        return Err(rejection);
    }
    let Command::ApplyDocument { document } = command else {
        return Ok(Vec::new());
    };
    let mut changes = Vec::new();
    for api in &document.apis {
        let before = state.apis.get(&api.id).map(|a| &a.value);
        let after = next.apis.get(&api.id).map(|a| &a.value);
        let action = match (before, after) {
            (None, _) => "create",
            (Some(b), Some(a)) if b == a => "unchanged",
            _ => "update",
        };
        changes.push(json!({"kind": "api", "id": api.id, "action": action, "before": before, "after": after}));
    }
    for d in &document.deployments {
        let exists = state
            .deployments
            .get(&d.api)
            .is_some_and(|m| m.contains_key(&d.id));
        changes.push(json!({"kind": "deployment", "id": format!("{}/{}", d.api, d.id),
            "action": if exists { "unchanged" } else { "create" }, "before": Value::Null, "after": d}));
    }
    Ok(changes)
}

fn versioned<T: serde::Serialize>(v: &Versioned<T>, name: &str) -> Value {
    json!({
        "revision": v.revision,
        "created_at_ms": v.created_at_ms,
        "updated_at_ms": v.updated_at_ms,
        name: v.value,
    })
}

fn parse_body<T: serde::de::DeserializeOwned>(
    req: &Request<Bytes>,
) -> Result<T, http::Response<http_body_util::Full<Bytes>>> {
    let text = std::str::from_utf8(req.body()).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the body is not UTF-8 text",
            &[],
        )
    })?;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let format = if content_type.contains("yaml") {
        Format::Yaml
    } else {
        Format::Json
    };
    portico_proto::document::parse_value(text, format).map_err(|e| match e {
        portico_proto::DocumentError::Parse { path, message } => error(
            StatusCode::BAD_REQUEST,
            "invalid",
            &format!("{path}: {message}"),
            &[(path, message)],
        ),
        other => error(StatusCode::BAD_REQUEST, "invalid", &other.to_string(), &[]),
    })
}

fn if_match(
    req: &Request<Bytes>,
) -> Result<Option<u64>, http::Response<http_body_util::Full<Bytes>>> {
    match req.headers().get(header::IF_MATCH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .map(|s| s.trim().trim_matches('"'))
            .and_then(|s| s.parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "If-Match must be a revision number (0 means: must not exist yet)",
                    &[("If-Match".into(), "not a number".into())],
                )
            }),
    }
}

fn query_flag(req: &Request<Bytes>, key: &str, value: &str) -> bool {
    req.uri()
        .query()
        .is_some_and(|q| q.split('&').any(|pair| pair == format!("{key}={value}")))
}

fn new_deployment_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let mut salt = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt);
    format!("d{ms:x}{:02x}{:02x}", salt[0], salt[1])
}

fn not_found(kind: &str, id: &str) -> http::Response<http_body_util::Full<Bytes>> {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("{kind} {id:?} not found"),
        &[],
    )
}

fn auth_error(e: AuthError) -> http::Response<http_body_util::Full<Bytes>> {
    match e {
        AuthError::Forbidden => error(StatusCode::FORBIDDEN, "forbidden", &e.to_string(), &[]),
        _ => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                &e.to_string(),
                &[],
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            r
        }
    }
}

fn rejection_response(
    r: &Rejection,
    strip_prefix: &str,
) -> http::Response<http_body_util::Full<Bytes>> {
    match r {
        Rejection::Invalid(messages) => {
            let fields: Vec<(String, String)> = messages
                .iter()
                .map(|m| match m.split_once(": ") {
                    Some((path, msg)) => (
                        path.strip_prefix(strip_prefix).unwrap_or(path).to_string(),
                        msg.to_string(),
                    ),
                    None => (String::new(), m.clone()),
                })
                .collect();
            let summary = fields
                .iter()
                .map(|(p, m)| {
                    if p.is_empty() {
                        m.clone()
                    } else {
                        format!("{p}: {m}")
                    }
                })
                .collect::<Vec<_>>()
                .join("; ");
            error(StatusCode::BAD_REQUEST, "invalid", &summary, &fields)
        }
        Rejection::NotFound { .. } => {
            error(StatusCode::NOT_FOUND, "not_found", &r.to_string(), &[])
        }
        Rejection::Conflict { .. } => error(StatusCode::CONFLICT, "conflict", &r.to_string(), &[]),
        Rejection::AlreadyExists { .. } => {
            error(StatusCode::CONFLICT, "already_exists", &r.to_string(), &[])
        }
    }
}

fn propose_error(e: ProposeError) -> http::Response<http_body_util::Full<Bytes>> {
    match e {
        ProposeError::NoQuorum => unavailable(
            "no quorum: the write could not be committed in time; retry when a majority of control nodes is reachable",
        ),
        ProposeError::NotLeader { .. } => unavailable("no leader is known; retry shortly"),
        ProposeError::Rejected(r) => rejection_response(&r, ""),
        ProposeError::Internal(m) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &m, &[]),
    }
}

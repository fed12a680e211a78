//! A small client for the admin API, used by the CLI commands.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::Full;
use portico_control::admin::client;
use serde_json::Value;

/// Where `portico dev` keeps its token, relative to its data directory.
pub const DEV_TOKEN_FILE: &str = "admin.token";

pub struct AdminClient {
    server: String,
    token: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl AdminClient {
    /// The token comes from `PORTICO_TOKEN`, else from the dev data directory.
    pub fn new(server: &str, dev_data: &Path) -> Result<AdminClient> {
        let token = match std::env::var("PORTICO_TOKEN") {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                let path: PathBuf = dev_data.join(DEV_TOKEN_FILE);
                std::fs::read_to_string(&path)
                    .map(|t| t.trim().to_string())
                    .with_context(|| format!("no admin token: set PORTICO_TOKEN, or run `portico dev` (which writes {})", path.display()))?
            }
        };
        AdminClient::with_token(server, &token)
    }

    /// `https://` servers are verified against the cluster CA in `PORTICO_CA_CERT` (a PEM file,
    /// e.g. a control node's `ca.pem`).
    pub fn with_token(server: &str, token: &str) -> Result<AdminClient> {
        let tls = match std::env::var("PORTICO_CA_CERT") {
            Ok(path) if !path.is_empty() => {
                let pem = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read PORTICO_CA_CERT {path}"))?;
                Some(client::client_tls(&pem).map_err(|e| anyhow::anyhow!("{path}: {e}"))?)
            }
            _ => None,
        };
        Ok(AdminClient {
            server: server.to_string(),
            token: token.to_string(),
            tls,
        })
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Value)> {
        self.call_with(method, path, content_type, body, None).await
    }

    /// A delete or replace that only happens while the object is at `revision`.
    pub async fn ok_with_if_match(
        &self,
        method: Method,
        path: &str,
        revision: u64,
    ) -> Result<Value> {
        let (status, value) = self
            .call_with(
                method,
                path,
                "application/json",
                Bytes::new(),
                Some(revision),
            )
            .await?;
        check(status, value)
    }

    async fn call_with(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
        if_match: Option<u64>,
    ) -> Result<(StatusCode, Value)> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, client::parse_target(&self.server).1)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, content_type);
        if let Some(r) = if_match {
            req = req.header(header::IF_MATCH, r.to_string());
        }
        let req = req.body(Full::new(body))?;
        let resp = client::send(
            &self.server,
            self.tls.as_ref(),
            req,
            Duration::from_secs(30),
        )
        .await
        .with_context(|| format!("the admin API at {} could not be reached", self.server))?;
        let status = resp.status();
        let bytes = resp.into_body();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, value))
    }

    /// Like [`call`], but an error status becomes an error naming the fields that are wrong.
    pub async fn ok(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<Value> {
        let (status, value) = self.call(method, path, content_type, body).await?;
        check(status, value)
    }
}

fn check(status: StatusCode, value: Value) -> Result<Value> {
    if status.is_success() {
        return Ok(value);
    }
    let err = &value["error"];
    let mut message = format!(
        "{} {}",
        status.as_u16(),
        err["message"].as_str().unwrap_or("request failed")
    );
    if let Some(fields) = err["fields"].as_array().filter(|f| f.len() > 1) {
        for f in fields {
            message.push_str(&format!(
                "\n  {}: {}",
                f["path"].as_str().unwrap_or(""),
                f["message"].as_str().unwrap_or("")
            ));
        }
    }
    bail!(message)
}

//! A small client for the admin API, used by the CLI commands.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Where `portico dev` keeps its token, relative to its data directory.
pub const DEV_TOKEN_FILE: &str = "admin.token";
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

pub struct AdminClient {
    server: String,
    token: String,
}

impl AdminClient {
    /// The token comes from `PORTICO_TOKEN`, else from the dev data directory.
    pub fn new(server: &str, dev_data: &std::path::Path) -> Result<AdminClient> {
        let token = match std::env::var("PORTICO_TOKEN") {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                let path: PathBuf = dev_data.join(DEV_TOKEN_FILE);
                std::fs::read_to_string(&path)
                    .map(|t| t.trim().to_string())
                    .with_context(|| format!("no admin token: set PORTICO_TOKEN, or run `portico dev` (which writes {})", path.display()))?
            }
        };
        Ok(AdminClient {
            server: server.to_string(),
            token,
        })
    }

    pub fn with_token(server: &str, token: &str) -> AdminClient {
        AdminClient {
            server: server.to_string(),
            token: token.to_string(),
        }
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
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(&self.server)
                .await
                .with_context(|| format!("cannot reach the admin API at {}", self.server))?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, &self.server)
                .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
                .header(header::CONTENT_TYPE, content_type);
            if let Some(r) = if_match {
                req = req.header(header::IF_MATCH, r.to_string());
            }
            let req = req.body(Full::new(body))?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| anyhow!("reading the answer: {e}"))?
                .to_bytes();
            let value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            Ok::<_, anyhow::Error>((status, value))
        };
        tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .map_err(|_| {
                anyhow!(
                    "the admin API at {} did not answer within 30 s",
                    self.server
                )
            })?
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

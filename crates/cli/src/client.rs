//! A small HTTPS client for the Plinth API, used by the CLI. (The agent
//! has its own in `plinth-agent`, so its static build carries only the
//! agent's dependencies.)

use reqwest::{Method, StatusCode, header};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// A failed call, with the exit code the CLI uses for it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server could not be reached (exit 6).
    #[error("cannot reach {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    /// The server answered with an error.
    #[error("{detail}{}", field.as_ref().map(|f| format!(" (field `{f}`)")).unwrap_or_default())]
    Api { status: u16, code: String, detail: String, field: Option<String> },
    /// Local input was wrong: a file, a flag, the configuration (exit 2).
    #[error("{0}")]
    Input(String),
    /// A local operation failed: a checksum, a file that cannot be written (exit 1).
    #[error("{0}")]
    Local(String),
}

impl ClientError {
    /// Process exit code: 2 usage/input, 3 not found, 4 conflict or stale
    /// revision, 5 authentication, 6 connection, 7 rejected as invalid, 1 other.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Input(_) => 2,
            ClientError::Local(_) => 1,
            ClientError::Connect { .. } => 6,
            ClientError::Api { status, .. } => match status {
                404 => 3,
                409 | 412 => 4,
                401 | 403 => 5,
                400 | 413 | 415 => 7,
                _ => 1,
            },
        }
    }
}

/// A response with a JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    /// Revision from the ETag, if any.
    pub revision: Option<u64>,
    pub body: Value,
}

/// An API client.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    endpoint: String,
    token: Option<String>,
}

impl Client {
    /// A client for `endpoint` (e.g. `https://plinth.example:8092`) trusting
    /// the system's roots plus `ca_cert` when given.
    /// A client of the API at `endpoint`. A plain `http://` endpoint is
    /// refused unless `allow_http`: passwords and tokens would cross the
    /// network in the clear.
    pub fn new(
        endpoint: &str,
        token: Option<String>,
        ca_cert: Option<&Path>,
        allow_http: bool,
    ) -> Result<Client, ClientError> {
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        if !endpoint.starts_with("https://") && !endpoint.starts_with("http://") {
            return Err(ClientError::Input(format!("endpoint `{endpoint}` needs a scheme, e.g. https://{endpoint}")));
        }
        if endpoint.starts_with("http://") && !allow_http {
            return Err(ClientError::Input(format!(
                "endpoint `{endpoint}` is plain HTTP: a password or token would cross the network in the clear; \
                 use https://, or pass --allow-http (PLINTH_ALLOW_HTTP=1) for a local test"
            )));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("plinth-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| ClientError::Input(format!("CA certificate {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ClientError::Input(format!("CA certificate {}: {e}", path.display())))?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder.build().map_err(|e| ClientError::Input(format!("HTTP client: {e}")))?;
        Ok(Client { http, endpoint, token })
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn connect_error(&self, e: reqwest::Error) -> ClientError {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message = format!("{message}: {s}");
            source = s.source();
        }
        if message.contains("certificate") || message.contains("UnknownIssuer") {
            message.push_str(" (pass --ca-cert with the server's <data-dir>/tls/ca.pem)");
        }
        ClientError::Connect { endpoint: self.endpoint.clone(), message }
    }

    async fn reply(&self, resp: reqwest::Response) -> Result<Reply, ClientError> {
        let status = resp.status();
        let revision = resp
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim_start_matches("W/").trim_matches('"').parse().ok());
        let bytes = resp.bytes().await.map_err(|e| self.connect_error(e))?;
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if status.is_success() {
            return Ok(Reply { status, revision, body });
        }
        let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
        Err(ClientError::Api {
            status: status.as_u16(),
            code: text("error").unwrap_or_else(|| status.to_string()),
            detail: text("detail").unwrap_or_else(|| format!("server answered {status}")),
            field: text("field"),
        })
    }

    /// Calls `method path` with an optional JSON body and `If-Match` revision.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<u64>,
    ) -> Result<Reply, ClientError> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.endpoint));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            let ct = if method == Method::PATCH { "application/merge-patch+json" } else { "application/json" };
            req = req.header(header::CONTENT_TYPE, ct).body(b.to_string());
        }
        if let Some(r) = if_match {
            req = req.header(header::IF_MATCH, format!("\"{r}\""));
        }
        let resp = req.send().await.map_err(|e| self.connect_error(e))?;
        self.reply(resp).await
    }

    /// Exchanges a username and password for a token.
    pub async fn login(&self, username: &str, password: &str, ttl_secs: Option<u64>) -> Result<Value, ClientError> {
        let mut body = serde_json::json!({"description": "plinth login"});
        if let Some(t) = ttl_secs {
            body["ttl_secs"] = t.into();
        }
        let resp = self
            .http
            .post(format!("{}/api/v1/auth/token", self.endpoint))
            .basic_auth(username, Some(password))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| self.connect_error(e))?;
        Ok(self.reply(resp).await?.body)
    }

    /// `GET path` answered with text (a job log).
    pub async fn text(&self, path: &str) -> Result<String, ClientError> {
        let mut req = self.http.get(format!("{}{path}", self.endpoint));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| self.connect_error(e))?;
        if resp.status().is_success() {
            resp.text().await.map_err(|e| self.connect_error(e))
        } else {
            Err(self.reply(resp).await.err().unwrap_or(ClientError::Input("refused".into())))
        }
    }

    /// Opens the event stream; returns the raw response to read lines from.
    pub async fn events(&self, query: &str) -> Result<reqwest::Response, ClientError> {
        let mut req = self.http.get(format!("{}/api/v1/events{query}", self.endpoint));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| self.connect_error(e))?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(self.reply(resp).await.err().unwrap_or(ClientError::Input("event stream refused".into())))
        }
    }
}

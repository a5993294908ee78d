//! The management API's client, for the CLI's `--server`: one HTTPS
//! request per call over TLS 1.3 with the appliance's certificate pinned
//! (like the replication link), and the control socket's requests mapped
//! onto the API's routes, so a command prints the same from a workstation
//! as on the appliance.

use super::local::{Reply, Request};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{header, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// What any call may take beyond the wait it asks the appliance for.
const CALL_SLACK: Duration = Duration::from_secs(60);
/// Verify and failover wait this long for their answer (a large volume or
/// journal); beyond it the CLI says the operation may still be running.
const LONG_WAIT: Duration = Duration::from_secs(24 * 3600);
/// A firewall that drops the connection is told apart from a slow answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The biggest answer read (an audit trail of 10,000 entries fits).
const ANSWER_BYTES_MAX: usize = 64 << 20;

pub struct Remote {
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    runtime: tokio::runtime::Runtime,
    /// `Authorization: Bearer` value: a session or an API token.
    pub bearer: Option<String>,
}

/// An answer: its status and JSON body.
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    /// The body of a 200, or the server's error as ours.
    pub fn ok(self) -> Result<Value> {
        if self.status == StatusCode::OK {
            return Ok(self.body);
        }
        let said = self.body.get("error").and_then(Value::as_str).unwrap_or("no reason given").to_string();
        bail!("{said} (HTTP {})", self.status.as_u16())
    }
}

/// `https://HOST:PORT` (the port defaults to 4006) into host and port.
pub fn parse_server(url: &str) -> Result<(String, u16)> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow!("--server {url:?}: must start with https:// (the API is HTTPS only)"))?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        bail!("--server {url:?}: give only https://HOST or https://HOST:PORT");
    }
    let (host, port) = match rest.rsplit_once(':') {
        // An IPv6 address without a port: [::1].
        Some((h, p)) if !p.contains(']') => {
            (h.to_string(), p.parse::<u16>().with_context(|| format!("--server {url:?}: port {p:?}"))?)
        }
        _ => (rest.to_string(), crate::config::API_PORT_DEFAULT),
    };
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_string(), port))
}

impl Remote {
    pub fn new(server: &str, fingerprint: &str) -> Result<Remote> {
        let (host, port) = parse_server(server)?;
        let pinned = crate::config::parse_fingerprint(fingerprint).context("--fingerprint")?;
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
        Ok(Remote { host, port, tls: crate::wire::tls::https_client_config(pinned)?, runtime, bearer: None })
    }

    /// One request; `wait` is how long the appliance may take.
    pub fn call(&self, method: Method, path: &str, body: Option<Value>, wait: Duration) -> Result<Answer> {
        let exchange = self.exchange(method, path, body);
        self.runtime.block_on(async { tokio::time::timeout(wait + CALL_SLACK, exchange).await }).map_err(|_| {
            anyhow!(
                "{}:{} did not answer within {:?}; the operation may still be running there (see `status` and \
                     `audit-log`)",
                self.host,
                self.port,
                wait + CALL_SLACK
            )
        })?
    }

    async fn exchange(&self, method: Method, path: &str, body: Option<Value>) -> Result<Answer> {
        let place = format!("{}:{}", self.host, self.port);
        let connect = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                anyhow!(
                    "connecting to the management API at {place}: no answer within {CONNECT_TIMEOUT:?} (is this \
                     workstation on a management network of the appliance?)"
                )
            })?
            .with_context(|| format!("connecting to the management API at {place}"))?;
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .map_err(|_| anyhow!("{:?} is not a host name or address", self.host))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS with {place} (is --fingerprint the appliance's?)"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .context("HTTP with the management API")?;
        tokio::spawn(connection);
        let data = body.map(|b| serde_json::to_vec(&b)).transpose()?.unwrap_or_default();
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("/api/v1/{path}"))
            .header(header::HOST, place.as_str())
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(bearer) = &self.bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {bearer}"));
        }
        let response = sender.send_request(request.body(Full::new(Bytes::from(data)))?).await?;
        let status = response.status();
        let bytes = http_body_util::Limited::new(response.into_body(), ANSWER_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the answer: {e}"))?
            .to_bytes();
        let body = match bytes.is_empty() {
            true => Value::Null,
            false => serde_json::from_slice(&bytes).context("the answer is not JSON")?,
        };
        Ok(Answer { status, body })
    }

    /// A control-socket request through the API: the same `Reply`.
    pub fn ask(&self, request: &Request) -> Result<Reply> {
        // Names go into the path: one that is not plain could name another
        // route (`db/failover?`).
        let vpg = match request {
            Request::GroupCheckpoint { group: vpg, .. }
            | Request::Checkpoint { vpg, .. }
            | Request::Move { vpg, .. }
            | Request::MoveBack { vpg, .. }
            | Request::Reverse { vpg, .. }
            | Request::ClearAlert { vpg, .. }
            | Request::Verify { vpg, .. }
            | Request::Failover { vpg, .. }
            | Request::Export { vpg, .. }
            | Request::TestFailoverStart { vpg, .. }
            | Request::TestFailoverStop { vpg } => vpg,
        };
        crate::config::validate_name("--vpg", vpg)?;
        let wait = |ms: u64| Duration::from_millis(ms);
        let (method, path, body, waits) = match request {
            Request::GroupCheckpoint { group, tag } => {
                (Method::POST, format!("groups/{group}/checkpoints"), json!({ "tag": tag }), wait(60_000))
            }
            Request::Checkpoint { vpg, tag, wait_ms } => (
                Method::POST,
                format!("vpgs/{vpg}/checkpoints"),
                json!({ "tag": tag, "wait_ms": wait_ms }),
                wait(*wait_ms),
            ),
            Request::Move { vpg, wait_ms, cancel } => (
                Method::POST,
                format!("vpgs/{vpg}/move"),
                json!({ "wait_ms": wait_ms, "cancel": cancel }),
                wait(*wait_ms),
            ),
            Request::MoveBack { vpg, wait_ms, cancel } => (
                Method::POST,
                format!("vpgs/{vpg}/move-back"),
                json!({ "wait_ms": wait_ms, "cancel": cancel }),
                // Each step may take the wait.
                wait(*wait_ms) * 4,
            ),
            Request::Reverse { vpg, wait_ms } => {
                (Method::POST, format!("vpgs/{vpg}/reverse"), json!({ "wait_ms": wait_ms }), wait(*wait_ms))
            }
            Request::ClearAlert { vpg, .. } => (Method::POST, format!("vpgs/{vpg}/clear-alert"), json!({}), wait(0)),
            Request::Verify { vpg, repair } => {
                (Method::POST, format!("vpgs/{vpg}/verify"), json!({ "repair": repair }), LONG_WAIT)
            }
            Request::Failover { vpg, checkpoint, serve } => (
                Method::POST,
                format!("vpgs/{vpg}/failover"),
                json!({ "checkpoint": checkpoint, "serve": serve }),
                LONG_WAIT,
            ),
            Request::TestFailoverStart { vpg, checkpoint } => (
                Method::POST,
                format!("vpgs/{vpg}/test-failover"),
                json!({ "checkpoint": checkpoint }),
                Duration::from_secs(600),
            ),
            Request::TestFailoverStop { vpg } => {
                (Method::DELETE, format!("vpgs/{vpg}/test-failover"), json!({}), wait(0))
            }
            Request::Export { .. } => bail!("an export through the API is opened with `open_export`"),
        };
        let answer = self.call(method, &path, Some(body), waits)?;
        match answer.status {
            StatusCode::OK => serde_json::from_value(answer.body).context("the API's answer is not a reply"),
            _ => Ok(super::local::failure(anyhow!("{}", answer.ok().expect_err("not 200")))),
        }
    }

    /// Opens an export; returns its API id and the reply to print.
    pub fn open_export(&self, vpg: &str, checkpoint: &str) -> Result<(u64, Reply)> {
        crate::config::validate_name("--vpg", vpg)?;
        let path = format!("vpgs/{vpg}/exports");
        let body = self
            .call(Method::POST, &path, Some(json!({ "checkpoint": checkpoint })), Duration::from_secs(600))?
            .ok()?;
        let export = body["export"].as_u64().context("the API did not say which export it opened")?;
        let exports = serde_json::from_value(body["exports"].clone()).unwrap_or_default();
        let message = body["message"].as_str().map(str::to_string);
        Ok((export, Reply { id: body["id"].as_u64(), exports, message, ..Reply::done(String::new()) }))
    }

    pub fn close_export(&self, export: u64) -> Result<()> {
        self.call(Method::DELETE, &format!("exports/{export}"), None, Duration::ZERO)?.ok().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert_eq!(parse_server("https://10.0.0.5").unwrap(), ("10.0.0.5".into(), 4006));
        assert_eq!(parse_server("https://dr.example:4006/").unwrap(), ("dr.example".into(), 4006));
        assert_eq!(parse_server("https://[fd00::5]:4006").unwrap(), ("fd00::5".into(), 4006));
        assert_eq!(parse_server("https://[fd00::5]").unwrap(), ("fd00::5".into(), 4006));
        for bad in ["http://10.0.0.5", "10.0.0.5", "https://", "https://a/b", "https://u@h", "https://h:x"] {
            assert!(parse_server(bad).is_err(), "{bad}");
        }
    }
}

//! Sends one dispatch: a pooled hyper-util client over rustls (ring, webpki roots), a second
//! client that accepts any certificate for `ignoreSslErrors`, an SSRF guard on the resolved
//! address (and on IP literals), one deadline over connect, TLS, send and response, a cap on the
//! response body read, no redirects, and the reserved headers.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::policy::{Outcome, parse_retry_after};
use super::signing;
use crate::model::{Call, Dispatch, SigningKeys};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type HttpsClient = Client<hyper_rustls::HttpsConnector<GuardedConnector>, Full<Bytes>>;

/// Headers hookd sets on every call, overriding the headers template whatever its case.
pub const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "content-type",
    "x-apify-webhook",
    "x-apify-webhook-dispatch-id",
    "x-apify-request-origin",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// Settings of the sender, from `[delivery]`.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    pub timeout_ms: u64,
    pub response_body_bytes_max: usize,
    pub allow_private_targets: bool,
    pub idle_connections_per_target_max: usize,
    /// Sign every call (Standard Webhooks headers).
    pub sign: bool,
}

/// The result of one call.
#[derive(Clone, Debug)]
pub struct Sent {
    pub call: Call,
    pub outcome: Outcome,
}

pub struct Sender {
    strict: HttpsClient,
    insecure: HttpsClient,
    config: SenderConfig,
    user_agent: String,
}

impl Sender {
    pub fn new(config: SenderConfig) -> Result<Sender, rustls::Error> {
        let build = |insecure: bool| -> Result<HttpsClient, rustls::Error> {
            let mut http = HttpConnector::new_with_resolver(GuardedResolver {
                allow_private: config.allow_private_targets,
            });
            http.enforce_http(false);
            http.set_nodelay(true);
            http.set_connect_timeout(Some(Duration::from_millis(config.timeout_ms)));
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls_config(insecure)?)
                .https_or_http()
                .enable_http1()
                .wrap_connector(GuardedConnector {
                    inner: http,
                    allow_private: config.allow_private_targets,
                });
            Ok(Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                // Below the usual 5 s keep-alive of Node receivers, to dodge the stale
                // connection race; a failed call is retried by the schedule anyway.
                .pool_idle_timeout(Duration::from_secs(4))
                .pool_max_idle_per_host(config.idle_connections_per_target_max)
                .build(https))
        };
        Ok(Sender {
            strict: build(false)?,
            insecure: build(true)?,
            user_agent: format!("hookd/{}", env!("CARGO_PKG_VERSION")),
            config,
        })
    }

    /// Whether calls are signed (`delivery.sign`): without it no pass reads signing keys.
    pub fn signs(&self) -> bool {
        self.config.sign
    }

    /// Makes one call for `d`, signed with `signing` when `delivery.sign` is on; `now_ms`
    /// reads the clock (start and end of the call).
    pub async fn send(
        &self,
        d: &Dispatch,
        signing: Option<&SigningKeys>,
        now_ms: impl Fn() -> u64,
    ) -> Sent {
        let started_ms = now_ms();
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let signing = signing.filter(|_| self.config.sign);
        let result = tokio::time::timeout(timeout, self.exchange(d, signing, started_ms)).await;
        let finished_ms = now_ms();
        let (error_message, response_status, response_body, outcome) = match result {
            Err(_) => (
                Some(format!("Request timed out after {} ms", self.config.timeout_ms)),
                None,
                None,
                Outcome::Failed { retry_after_ms: None },
            ),
            Ok(Err(e)) => {
                (Some(describe(&*e)), None, None, Outcome::Failed { retry_after_ms: None })
            }
            Ok(Ok((status, retry_after, body))) => {
                let body = Some(String::from_utf8_lossy(&body).into_owned());
                if (200..300).contains(&status) {
                    (None, Some(status), body, Outcome::Delivered)
                } else {
                    let retry_after_ms = if status == 429 || status == 503 {
                        retry_after.and_then(|v| parse_retry_after(&v, finished_ms))
                    } else {
                        None
                    };
                    (
                        Some(format!("Endpoint responded with HTTP status code {status}")),
                        Some(status),
                        body,
                        Outcome::Failed { retry_after_ms },
                    )
                }
            }
        };
        Sent {
            call: Call { started_ms, finished_ms, error_message, response_status, response_body },
            outcome,
        }
    }

    async fn exchange(
        &self,
        d: &Dispatch,
        signing: Option<&SigningKeys>,
        started_ms: u64,
    ) -> Result<(u16, Option<String>, Vec<u8>), BoxError> {
        let uri: Uri = d.request_url.parse()?;
        let mut req = Request::post(uri);
        for (name, value) in &d.headers {
            // Framing headers are refused at create; webhooks stored before that are
            // skipped here rather than sent with a body of another length.
            if !RESERVED_HEADERS.iter().any(|r| r.eq_ignore_ascii_case(name))
                && !crate::template::is_framing_header(name)
            {
                req = req.header(name.as_str(), value.as_str());
            }
        }
        let mut req = req
            .header(header::CONTENT_TYPE, "application/json")
            .header("X-Apify-Webhook", d.webhook_id.as_str())
            .header("X-Apify-Webhook-Dispatch-Id", d.id.as_str())
            .header("X-Apify-Request-Origin", "WEBHOOK")
            .header(header::USER_AGENT, self.user_agent.as_str());
        if let Some(keys) = signing {
            // The dispatch id is the message id: stable across retries, so receivers dedupe.
            let timestamp_s = started_ms / 1000;
            let signature =
                signing::signature_header(keys, started_ms, &d.id, timestamp_s, d.body.as_bytes());
            req = req
                .header("webhook-id", d.id.as_str())
                .header("webhook-timestamp", timestamp_s.to_string())
                .header("webhook-signature", signature);
        }
        let req = req.body(Full::new(Bytes::from(d.body.clone())))?;
        let client = if d.ignore_ssl_errors { &self.insecure } else { &self.strict };
        let resp = client.request(req).await?;
        let status = resp.status().as_u16();
        let retry_after =
            resp.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(String::from);
        let cap = self.config.response_body_bytes_max;
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        while buf.len() < cap {
            let Some(frame) = body.frame().await else { break };
            // A body that breaks off after the status is still an answer: keep what came.
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data() {
                let room = cap - buf.len();
                buf.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
        // Dropping the rest of the body closes the connection instead of reading it all.
        Ok((status, retry_after, buf))
    }
}

/// The error and its causes, outermost first, without repeats.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    format!("Cannot send request: {}", parts.join(": "))
}

/// Whether hookd refuses to connect to `ip` unless `allow_private_targets` is set: anything
/// that is not a global unicast address, judging embedded IPv4 by its IPv4 address.
pub fn is_forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10 CGNAT
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0/24
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18/15 benchmarking
        || o[0] >= 240 // 240/4 reserved
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_forbidden_v4(v4);
    }
    let s = ip.segments();
    // ::a.b.c.d (IPv4-compatible, deprecated) and ::, ::1.
    if s[..6] == [0, 0, 0, 0, 0, 0] {
        return true;
    }
    // NAT64 64:ff9b::/96: judge the embedded IPv4.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_forbidden_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    // 6to4 2002::/16: the IPv4 is in segments 1 and 2.
    if s[0] == 0x2002 {
        return is_forbidden_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    let global_unicast = (s[0] & 0xe000) == 0x2000;
    let teredo_etc = s[0] == 0x2001 && s[1] < 0x0200; // 2001::/23
    let documentation = (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] & 0xfff0) == 0x3ff0;
    !global_unicast || teredo_etc || documentation
}

fn forbidden_error(ip: IpAddr) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!(
            "target address {ip} is not a public address (set delivery.allow_private_targets to allow it)"
        ),
    )
}

/// Resolves with the system resolver and drops forbidden addresses, so the connector only
/// ever connects to vetted ones (no DNS rebinding window).
#[derive(Clone)]
struct GuardedResolver {
    allow_private: bool,
}

type ResolveFuture =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>> + Send>>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let total = addrs.len();
            let allowed: Vec<SocketAddr> =
                addrs.into_iter().filter(|a| allow_private || !is_forbidden_ip(a.ip())).collect();
            if allowed.is_empty() && total > 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "{host} resolves only to non-public addresses (set delivery.allow_private_targets to allow them)"
                    ),
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}

/// Checks IP-literal hosts, which `HttpConnector` connects to without asking the resolver.
#[derive(Clone)]
struct GuardedConnector {
    inner: HttpConnector<GuardedResolver>,
    allow_private: bool,
}

type ConnectFuture = Pin<
    Box<
        dyn Future<Output = Result<hyper_util::rt::TokioIo<tokio::net::TcpStream>, BoxError>>
            + Send,
    >,
>;

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if !self.allow_private {
            let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = host.parse::<IpAddr>()
                && is_forbidden_ip(ip)
            {
                return Box::pin(async move { Err(forbidden_error(ip).into()) });
            }
        }
        let fut = self.inner.call(uri);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

fn tls_config(insecure: bool) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    Ok(if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        builder.with_root_certificates(roots).with_no_client_auth()
    })
}

/// `ignoreSslErrors`: any certificate is accepted, but the handshake signature is still checked.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_addresses() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2001:db8::1",
            "2001::1",
            "3fff::1",
        ] {
            assert!(is_forbidden_ip(bad.parse().unwrap()), "{bad} should be forbidden");
        }
        for good in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::",
        ] {
            assert!(!is_forbidden_ip(good.parse().unwrap()), "{good} should be allowed");
        }
    }
}

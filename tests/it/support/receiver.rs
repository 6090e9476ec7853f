//! A real HTTP/1.1 receiver on loopback for delivery tests: it records every request and
//! answers as a script says (a status, extra headers, a hang, or a dropped connection),
//! optionally over TLS with a self-signed certificate.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == &name.to_ascii_lowercase()).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }
}

/// What the receiver does with a request.
#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    StatusWith(u16, Vec<(String, String)>),
    /// Read the request, then send nothing for this long and close.
    Hang(Duration),
    /// Close the connection without an answer.
    Drop,
    /// Answer with this status after waiting this long.
    Delayed(Duration, u16),
    /// Write these bytes as the answer, wait, then close (malformed, partial or slow answers).
    Raw(Vec<u8>, Duration),
    /// This status with a body of this many bytes, streamed.
    Huge(u16, usize),
}

type Script = Arc<dyn Fn(&Received, usize) -> Reply + Send + Sync>;

pub struct Receiver {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    script: Arc<Mutex<Script>>,
}

impl Receiver {
    /// A receiver on 127.0.0.1 (port 0 picks one) answering by `script(request, index)`.
    pub fn start(
        port: u16,
        script: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        Receiver::start_inner(port, Arc::new(script), None)
    }

    /// The same over TLS with a self-signed certificate for `localhost`.
    pub fn start_tls(
        script: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        Receiver::start_inner(0, Arc::new(script), Some(Arc::new(config)))
    }

    fn start_inner(port: u16, script: Script, tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind receiver");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let r = Receiver {
            addr,
            received: Arc::default(),
            connections: Arc::default(),
            stop: Arc::default(),
            script: Arc::new(Mutex::new(script)),
        };
        let (received, connections, stop, script) =
            (r.received.clone(), r.connections.clone(), r.stop.clone(), r.script.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        connections.fetch_add(1, Ordering::SeqCst);
                        let (received, script, tls) =
                            (received.clone(), script.clone(), tls.clone());
                        std::thread::spawn(move || {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                            match tls {
                                None => serve(stream, &received, &script),
                                Some(cfg) => {
                                    let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                                        return;
                                    };
                                    serve(
                                        rustls::StreamOwned::new(conn, stream),
                                        &received,
                                        &script,
                                    );
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        r
    }

    pub fn set_script(&self, script: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static) {
        *self.script.lock().unwrap() = Arc::new(script);
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// TCP connections accepted (including ones that never sent a request).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Serves requests on one connection (keep-alive) until the peer closes it.
fn serve<S: Read + Write>(stream: S, received: &Mutex<Vec<Received>>, script: &Mutex<Script>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let req = Received { path, headers, body, at: Instant::now() };
        let index = {
            let mut r = received.lock().unwrap();
            r.push(req.clone());
            r.len() - 1
        };
        let script = script.lock().unwrap().clone();
        let (status, extra) = match script(&req, index) {
            Reply::Status(s) => (s, Vec::new()),
            Reply::StatusWith(s, h) => (s, h),
            Reply::Hang(d) => {
                std::thread::sleep(d);
                return;
            }
            Reply::Drop => return,
            Reply::Delayed(d, s) => {
                std::thread::sleep(d);
                (s, Vec::new())
            }
            Reply::Raw(bytes, wait) => {
                let stream = reader.get_mut();
                let _ = stream.write_all(&bytes);
                let _ = stream.flush();
                std::thread::sleep(wait);
                return;
            }
            Reply::Huge(status, len) => {
                let stream = reader.get_mut();
                let head = format!("HTTP/1.1 {status} X\r\nContent-Length: {len}\r\n\r\n");
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                let mut left = len;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if stream.write_all(&chunk[..n]).is_err() {
                        return; // the client stopped reading: that is the point
                    }
                    left -= n;
                }
                return;
            }
        };
        let mut resp = format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\n");
        for (n, v) in extra {
            resp.push_str(&format!("{n}: {v}\r\n"));
        }
        resp.push_str("\r\nok");
        let stream = reader.get_mut();
        if stream.write_all(resp.as_bytes()).is_err() || stream.flush().is_err() {
            return;
        }
    }
}

/// A port on 127.0.0.1 with nothing listening on it (bound, then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Waits until `f` holds, polling; panics with `what` after `within`.
pub fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    super::wait_until(within, what, || f().then_some(()));
}

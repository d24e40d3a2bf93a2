//! A minimal HTTP/1.1 client for tests of cmqd's HTTP port: one request per
//! connection (`Connection: close`), the whole answer read to the end.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a test waits for an HTTP answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

pub fn get(addr: SocketAddr, path: &str) -> HttpReply {
    request(addr, "GET", path, &[])
}

/// Sends one request and reads the reply (the body as sent: this client
/// asks for no compression and cmqd sends `Content-Length` bodies).
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpReply {
    send(addr, method, path, headers, b"")
}

/// Like [`request`], with a body (sent with its `Content-Length`).
pub fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpReply {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).expect("connect to the HTTP port");
    s.set_read_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("send request");
    s.write_all(body).expect("send body");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read reply");
    parse(&raw)
}

fn parse(raw: &[u8]) -> HttpReply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end: {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status code");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    HttpReply { status, headers, body: body.to_owned() }
}

/// A scrape of `/metrics`, parsed by the `prometheus-parse` crate.
pub struct Metrics {
    pub text: String,
    pub scrape: prometheus_parse::Scrape,
}

impl Metrics {
    pub fn scrape(addr: SocketAddr) -> Metrics {
        let r = get(addr, "/metrics");
        assert_eq!(r.status, 200, "{}", r.body);
        let lines = r.body.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("a valid Prometheus text page");
        Metrics { text: r.body, scrape }
    }

    /// The value of sample `name` with exactly these labels (others may
    /// exist on the sample only if `labels` names a subset: it must match
    /// every label given). Panics if there is not exactly one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self.values(name, labels);
        assert_eq!(found.len(), 1, "{name}{labels:?}: {} samples in\n{}", found.len(), self.text);
        found[0]
    }

    /// 0 when the series does not exist yet.
    pub fn value_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.values(name, labels).first().copied().unwrap_or(0.0)
    }

    pub fn values(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        use prometheus_parse::Value;
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
                Value::Summary(_) => f64::NAN,
            })
            .collect()
    }

    /// Distinct values of `label` on samples of `name`.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter_map(|s| s.labels.get(label).map(str::to_owned))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

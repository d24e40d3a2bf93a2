//! One HTTP/1.1 exchange on a blocking stream: write a `POST`, read the
//! response head with `httparse`, read and discard a bounded body.
//!
//! Once a complete response head has arrived the outcome is its status: a
//! body that is too long, malformed or slow only means the connection is not
//! reused (the receiver has answered; waiting for the rest of its body would
//! change nothing).

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use super::url::Target;
use super::PushTask;

/// Bytes of a response head (status line and headers) we accept; also the
/// read buffer's size. Receivers answer a push with a few hundred bytes.
pub const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Headers in one response head.
pub const RESPONSE_HEADERS_MAX: usize = 64;
/// Response body bytes read (and discarded) to keep a connection reusable;
/// a longer body closes the connection instead.
pub const RESPONSE_BODY_BYTES_MAX: usize = 64 * 1024;
/// Interim (1xx) responses skipped before the final one.
pub const INTERIM_RESPONSES_MAX: usize = 4;
/// Bytes of the request head we write (the task's own headers included).
pub const REQUEST_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Largest request body: a 1 MiB message rendered as JSON with every byte
/// escaped (`\u00XX`, 6 bytes) stays below this.
pub const REQUEST_BODY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Bodies up to this size are copied behind the head and sent with one
/// write (one segment for small pushes); larger ones are written separately.
pub const COALESCE_BODY_BYTES_MAX: usize = 64 * 1024;

const _: () = assert!(RESPONSE_HEADERS_MAX * 4 < RESPONSE_HEAD_BYTES_MAX);
const _: () = assert!(COALESCE_BODY_BYTES_MAX <= REQUEST_BODY_BYTES_MAX);

/// The `User-Agent` of pushes.
pub const USER_AGENT: &str = concat!("cmqd-push/", env!("CARGO_PKG_VERSION"));

/// Headers the pool writes itself; a task may not set them (they decide how
/// the request is framed and routed).
const RESERVED_HEADERS: [&str; 6] =
    ["host", "content-length", "transfer-encoding", "connection", "content-type", "user-agent"];

/// The request head for `task`, or why it cannot be sent (never retryable).
pub fn request_head(target: &Target, task: &PushTask, out: &mut Vec<u8>) -> Result<(), String> {
    if task.body.len() > REQUEST_BODY_BYTES_MAX {
        return Err(format!("push body of {} bytes exceeds {REQUEST_BODY_BYTES_MAX}", task.body.len()));
    }
    if !valid_value(task.content_type) {
        return Err("invalid content type".into());
    }
    out.clear();
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(target.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(target.host_header.as_bytes());
    out.extend_from_slice(b"\r\nUser-Agent: ");
    out.extend_from_slice(USER_AGENT.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(task.content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(task.body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\nConnection: keep-alive\r\n");
    for (name, value) in &task.headers {
        if !valid_name(name) {
            return Err(format!("invalid header name {name:?}"));
        }
        if RESERVED_HEADERS.iter().any(|r| r.eq_ignore_ascii_case(name)) {
            return Err(format!("header {name} is set by the push client"));
        }
        if !valid_value(value) {
            return Err(format!("header {name} has a control character in its value"));
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if out.len() > REQUEST_HEAD_BYTES_MAX {
        return Err(format!("request head of {} bytes exceeds {REQUEST_HEAD_BYTES_MAX}", out.len()));
    }
    Ok(())
}

/// RFC 9110 token characters.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Visible characters, spaces and tabs (and obs-text); never CR, LF or NUL.
fn valid_value(value: &str) -> bool {
    value.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Writes head and body; small bodies go out in the head's write.
pub fn write_request<W: Write>(w: &mut W, head: &mut Vec<u8>, body: &[u8]) -> io::Result<()> {
    if body.len() <= COALESCE_BODY_BYTES_MAX {
        head.extend_from_slice(body);
        w.write_all(head)?;
    } else {
        w.write_all(head)?;
        w.write_all(body)?;
    }
    w.flush()
}

/// A complete response head was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The body was read to its end, the server keeps the connection open,
    /// and nothing else arrived: the connection may carry the next push.
    pub reusable: bool,
}

/// No complete response head.
#[derive(Debug)]
pub enum ReadError {
    /// Reading failed (timeouts included).
    Io { err: io::Error, got_any: bool },
    /// The connection ended before a complete head.
    Closed { got_any: bool },
    /// Not a valid HTTP/1.x response.
    Malformed(String),
}

impl ReadError {
    /// True when the server sent nothing at all: on a reused keep-alive
    /// connection that usually means the server had closed it while idle.
    pub fn nothing_received(&self) -> bool {
        match self {
            ReadError::Io { got_any, err } => !got_any && err.kind() != io::ErrorKind::TimedOut,
            ReadError::Closed { got_any } => !got_any,
            ReadError::Malformed(_) => false,
        }
    }

    pub fn reason(&self) -> String {
        match self {
            ReadError::Io { err, .. } if is_timeout(err) => "timed out waiting for the response".into(),
            ReadError::Io { err, .. } => format!("reading the response: {err}"),
            ReadError::Closed { got_any: false } => "connection closed before any response".into(),
            ReadError::Closed { got_any: true } => "connection closed in the middle of the response head".into(),
            ReadError::Malformed(m) => format!("malformed response: {m}"),
        }
    }
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock)
}

/// How the response body is delimited.
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the server closes the connection: never read, the connection is dropped.
    UntilClose,
}

/// Reads one response from `r` into `buf` (of [`RESPONSE_HEAD_BYTES_MAX`] bytes).
pub fn read_response<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<Response, ReadError> {
    let mut rd = Reader { r, buf, start: 0, end: 0, got_any: false };
    let mut interim = 0;
    let (status, keep_alive, framing) = loop {
        let head = rd.head()?;
        if (100..200).contains(&head.0) {
            if head.0 == 101 {
                return Err(ReadError::Malformed("unexpected 101 Switching Protocols".into()));
            }
            interim += 1;
            if interim > INTERIM_RESPONSES_MAX {
                return Err(ReadError::Malformed("too many interim responses".into()));
            }
            continue;
        }
        break head;
    };
    let body_ok = match framing {
        Framing::None => true,
        Framing::Length(n) => n <= RESPONSE_BODY_BYTES_MAX as u64 && rd.discard(n as usize).is_ok(),
        Framing::Chunked => rd.chunked().is_ok(),
        Framing::UntilClose => false,
    };
    // Bytes beyond the response: the server is confused (or pipelining); do not reuse.
    let clean = rd.start == rd.end;
    Ok(Response { status, reusable: keep_alive && body_ok && clean })
}

struct Reader<'a, R> {
    r: &'a mut R,
    buf: &'a mut [u8],
    start: usize,
    end: usize,
    got_any: bool,
}

impl<R: Read> Reader<'_, R> {
    /// Reads more bytes after those buffered; Ok(false) at end of stream.
    fn fill(&mut self) -> Result<bool, ReadError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            return Err(ReadError::Malformed(format!("more than {} bytes without an end", self.buf.len())));
        }
        loop {
            match self.r.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.end += n;
                    self.got_any = true;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(ReadError::Io { err, got_any: self.got_any }),
            }
        }
    }

    /// One response head: status, keep-alive, body framing.
    fn head(&mut self) -> Result<(u16, bool, Framing), ReadError> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; RESPONSE_HEADERS_MAX];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf[self.start..self.end]) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = resp.code.unwrap_or(0);
                    let parsed = interpret(resp.version.unwrap_or(1), status, resp.headers);
                    self.start += n;
                    return parsed.map(|(k, f)| (status, k, f));
                }
                Ok(httparse::Status::Partial) => {
                    if self.end - self.start >= RESPONSE_HEAD_BYTES_MAX.min(self.buf.len()) {
                        return Err(ReadError::Malformed(format!("head longer than {RESPONSE_HEAD_BYTES_MAX} bytes")));
                    }
                    if !self.fill()? {
                        return Err(ReadError::Closed { got_any: self.got_any });
                    }
                }
                Err(e) => return Err(ReadError::Malformed(e.to_string())),
            }
        }
    }

    /// Skips `n` body bytes.
    fn discard(&mut self, mut n: usize) -> Result<(), ReadError> {
        loop {
            let take = n.min(self.end - self.start);
            self.start += take;
            n -= take;
            if n == 0 {
                return Ok(());
            }
            if !self.fill()? {
                return Err(ReadError::Closed { got_any: true });
            }
        }
    }

    /// At least `n` bytes buffered.
    fn need(&mut self, n: usize) -> Result<(), ReadError> {
        while self.end - self.start < n {
            if !self.fill()? {
                return Err(ReadError::Closed { got_any: true });
            }
        }
        Ok(())
    }

    /// Skips a chunked body and its trailers, at most [`RESPONSE_BODY_BYTES_MAX`] bytes of data.
    fn chunked(&mut self) -> Result<(), ReadError> {
        let mut total: u64 = 0;
        loop {
            let size = loop {
                match httparse::parse_chunk_size(&self.buf[self.start..self.end]) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        self.start += used;
                        break size;
                    }
                    Ok(httparse::Status::Partial) => {
                        if !self.fill()? {
                            return Err(ReadError::Closed { got_any: true });
                        }
                    }
                    Err(_) => return Err(ReadError::Malformed("invalid chunk size".into())),
                }
            };
            if size == 0 {
                break;
            }
            total = total.saturating_add(size);
            if total > RESPONSE_BODY_BYTES_MAX as u64 {
                return Err(ReadError::Malformed("response body too long".into()));
            }
            self.discard(size as usize)?;
            self.need(2)?;
            if &self.buf[self.start..self.start + 2] != b"\r\n" {
                return Err(ReadError::Malformed("chunk not followed by CRLF".into()));
            }
            self.start += 2;
        }
        // Trailer section, ended by an empty line.
        loop {
            let mut headers = [httparse::EMPTY_HEADER; RESPONSE_HEADERS_MAX];
            match httparse::parse_headers(&self.buf[self.start..self.end], &mut headers) {
                Ok(httparse::Status::Complete((used, _))) => {
                    self.start += used;
                    return Ok(());
                }
                Ok(httparse::Status::Partial) => {
                    if !self.fill()? {
                        return Err(ReadError::Closed { got_any: true });
                    }
                }
                Err(e) => return Err(ReadError::Malformed(format!("trailers: {e}"))),
            }
        }
    }
}

/// Keep-alive and body framing from a response head (RFC 9112 §6.3).
fn interpret(version: u8, status: u16, headers: &[httparse::Header<'_>]) -> Result<(bool, Framing), ReadError> {
    let mut close = false;
    let mut keep_alive_token = false;
    let mut chunked = false;
    let mut other_coding = false;
    let mut length: Option<u64> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                let t = token.trim_ascii();
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive_token |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in h.value.split(|b| *b == b',') {
                let c = coding.trim_ascii();
                if c.is_empty() {
                    continue;
                }
                // Only a final "chunked" delimits the body.
                chunked = c.eq_ignore_ascii_case(b"chunked");
                other_coding |= !chunked;
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let v = h.value.trim_ascii();
            if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                return Err(ReadError::Malformed("invalid Content-Length".into()));
            }
            let n: u64 = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
            if length.is_some_and(|prev| prev != n) {
                return Err(ReadError::Malformed("conflicting Content-Length headers".into()));
            }
            length = Some(n);
        }
    }
    let mut keep_alive = if version >= 1 { !close } else { keep_alive_token && !close };
    let framing = if status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::None
    } else if chunked {
        if length.is_some() {
            // Both: a smuggling pattern; the body is read as chunked but the connection is not trusted after.
            keep_alive = false;
        }
        Framing::Chunked
    } else if other_coding {
        Framing::UntilClose
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    if matches!(framing, Framing::UntilClose) {
        keep_alive = false;
    }
    Ok((keep_alive, framing))
}

/// A stream whose every read and write must finish by `deadline`.
pub struct Deadline<S> {
    pub inner: S,
    pub deadline: Instant,
}

/// Streams whose blocking reads and writes can be given a timeout.
pub trait SetTimeouts {
    fn set_read_timeout_to(&self, timeout: Duration) -> io::Result<()>;
    fn set_write_timeout_to(&self, timeout: Duration) -> io::Result<()>;
}

impl SetTimeouts for std::net::TcpStream {
    fn set_read_timeout_to(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }

    fn set_write_timeout_to(&self, timeout: Duration) -> io::Result<()> {
        self.set_write_timeout(Some(timeout))
    }
}

impl<S> Deadline<S> {
    /// Time left, or a timeout error when none is.
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "push timed out"));
        }
        Ok(left)
    }
}

impl<S: SetTimeouts + Read> Read for Deadline<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.set_read_timeout_to(self.left()?)?;
        self.inner.read(buf).map_err(as_timeout)
    }
}

impl<S: SetTimeouts + Write> Write for Deadline<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.set_write_timeout_to(self.left()?)?;
        self.inner.write(buf).map_err(as_timeout)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A socket timeout shows as WouldBlock on Unix; call it what it is.
fn as_timeout(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(io::ErrorKind::TimedOut, "push timed out")
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// Yields its input in pieces of `step` bytes, then end of stream.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn read_all(data: &[u8], step: usize) -> Result<Response, ReadError> {
        let mut buf = vec![0u8; RESPONSE_HEAD_BYTES_MAX];
        read_response(&mut Trickle { data, step }, &mut buf)
    }

    fn check(data: &[u8]) -> Result<Response, ReadError> {
        let whole = read_all(data, usize::MAX);
        for step in [1, 2, 3, 7] {
            let r = read_all(data, step);
            assert_eq!(format!("{whole:?}"), format!("{r:?}"), "same result reading {step} bytes at a time");
        }
        whole
    }

    fn ok(status: u16, reusable: bool) -> String {
        format!("{:?}", Ok::<_, ReadError>(Response { status, reusable }))
    }

    #[test]
    fn content_length() {
        let r = check(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(format!("{r:?}"), ok(200, true));
        let r = check(b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(format!("{r:?}"), ok(500, true));
    }

    #[test]
    fn chunked() {
        let r = check(b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-T: 1\r\n\r\n");
        assert_eq!(format!("{r:?}"), ok(202, true));
        let r = check(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n");
        assert_eq!(format!("{r:?}"), ok(200, true));
    }

    #[test]
    fn not_reusable() {
        for data in [
            &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\nuntil close",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10001\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        ] {
            let r = check(data);
            assert_eq!(format!("{r:?}"), ok(200, false), "{}", String::from_utf8_lossy(data));
        }
        // Bytes after the response in the same read (later ones are caught by the idle check).
        let r = read_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", usize::MAX);
        assert_eq!(format!("{r:?}"), ok(200, false));
        let r = check(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(format!("{r:?}"), ok(200, true));
    }

    #[test]
    fn no_body_statuses_and_interim() {
        let r = check(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(format!("{r:?}"), ok(204, true));
        let r = check(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(format!("{r:?}"), ok(200, true));
        assert!(matches!(check(b"HTTP/1.1 101 Switching\r\n\r\n"), Err(ReadError::Malformed(_))));
    }

    #[test]
    fn errors() {
        assert!(matches!(check(b""), Err(ReadError::Closed { got_any: false })));
        assert!(matches!(check(b"HTTP/1.1 200 OK\r\nContent-"), Err(ReadError::Closed { got_any: true })));
        for garbage in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"\x00\x01\x02\x03",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        ] {
            assert!(matches!(check(garbage), Err(ReadError::Malformed(_))), "{}", String::from_utf8_lossy(garbage));
        }
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() <= RESPONSE_HEAD_BYTES_MAX {
            big.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(matches!(check(&big), Err(ReadError::Malformed(_))));
        let many: Vec<u8> =
            [&b"HTTP/1.1 200 OK\r\n"[..], &b"A: b\r\n".repeat(RESPONSE_HEADERS_MAX + 1), b"\r\n"].concat();
        assert!(matches!(check(&many), Err(ReadError::Malformed(_))));
    }

    /// Every truncation of valid responses is an error or a non-reusable
    /// success, never a panic; every byte flip is handled too.
    #[test]
    fn truncations_and_flips_never_panic() {
        let samples: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x\r\nhello\r\n0\r\nT: 1\r\n\r\n",
            b"HTTP/1.0 503 Busy\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nbad",
        ];
        for s in samples {
            let full = read_all(s, usize::MAX).expect("complete sample");
            assert!(full.reusable);
            for cut in 0..s.len() {
                if let Ok(r) = read_all(&s[..cut], 3) {
                    assert!(!r.reusable, "truncated at {cut} but reusable");
                }
            }
            for i in 0..s.len() {
                for x in [0u8, b'\r', b'\n', b'0', 0xff] {
                    let mut m = s.to_vec();
                    m[i] = x;
                    let _ = read_all(&m, 5);
                }
            }
        }
    }

    fn task(headers: Vec<(String, String)>) -> PushTask {
        PushTask {
            id: 1,
            url: "http://h:8080/p?q".into(),
            body: Bytes::from_static(b"{}"),
            content_type: "text/plain",
            headers,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn request_golden() {
        let target = crate::push::url::parse("http://h:8080/p?q").unwrap();
        let t = task(vec![("X-CMQ-Signature".into(), "sha256=00".into())]);
        let mut head = Vec::new();
        request_head(&target, &t, &mut head).unwrap();
        let mut wire = Vec::new();
        write_request(&mut wire, &mut head, &t.body).unwrap();
        let want = format!(
            "POST /p?q HTTP/1.1\r\nHost: h:8080\r\nUser-Agent: {USER_AGENT}\r\nContent-Type: text/plain\r\n\
             Content-Length: 2\r\nConnection: keep-alive\r\nX-CMQ-Signature: sha256=00\r\n\r\n{{}}"
        );
        assert_eq!(String::from_utf8(wire).unwrap(), want);
    }

    #[test]
    fn request_refuses_bad_headers() {
        let target = crate::push::url::parse("http://h/").unwrap();
        let mut head = Vec::new();
        for (n, v) in [
            ("X-A", "b\r\nX-Evil: 1"),
            ("X-A", "b\n"),
            ("X-A", "b\0"),
            ("Bad Name", "v"),
            ("", "v"),
            ("Content-Length", "0"),
            ("transfer-encoding", "chunked"),
            ("HOST", "x"),
        ] {
            let r = request_head(&target, &task(vec![(n.into(), v.into())]), &mut head);
            assert!(r.is_err(), "{n:?}: {v:?}");
        }
        let big = task(vec![("X-Big".into(), "a".repeat(REQUEST_HEAD_BYTES_MAX))]);
        assert!(request_head(&target, &big, &mut head).is_err());
        let mut huge = task(vec![]);
        huge.body = Bytes::from(vec![b'a'; REQUEST_BODY_BYTES_MAX + 1]);
        assert!(request_head(&target, &huge, &mut head).is_err());
    }
}

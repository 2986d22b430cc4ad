//! A tiny HTTP/1.0 client for tests: one `GET` over a `TcpStream`, read to the end (an
//! HTTP/1.0 server closes the connection after its answer), with timeouts.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long connecting, writing the request and each read of the answer may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP answer: its status code, headers (names lowercased) and body.
///
/// # Examples
///
/// ```no_run
/// let answer = test_support::http_get("127.0.0.1:9090".parse()?, "/-/ready")?;
/// assert_eq!(answer.status, 200);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    /// The status code (`200`, `404`, …).
    pub status: u16,
    /// Every header as `(name in lowercase, value)`, in order.
    pub headers: Vec<(String, String)>,
    /// The body, as text (invalid UTF-8 replaced).
    pub body: String,
}

impl HttpAnswer {
    /// The value of header `name` (any case), if present.
    ///
    /// # Examples
    ///
    /// ```
    /// let answer = test_support::HttpAnswer {
    ///     status: 200,
    ///     headers: vec![("content-type".into(), "text/plain".into())],
    ///     body: String::new(),
    /// };
    /// assert_eq!(answer.header("Content-Type"), Some("text/plain"));
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

/// `GET path` (which may carry a query) from the server at `addr`, as HTTP/1.0.
///
/// # Errors
///
/// The connection, the write or a read failed or timed out, or the answer is not HTTP.
///
/// # Examples
///
/// ```no_run
/// let answer = test_support::http_get("127.0.0.1:9090".parse()?, "/api/v1/query?query=up")?;
/// println!("{}", answer.body);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<HttpAnswer> {
    request(addr, "GET", path)
}

/// As [`http_get`], with any method (`HEAD`, `POST` with no body, …).
///
/// # Errors
///
/// As [`http_get`].
///
/// # Examples
///
/// ```no_run
/// let answer = test_support::http_request("127.0.0.1:9090".parse()?, "HEAD", "/metrics")?;
/// assert!(answer.body.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> io::Result<HttpAnswer> {
    request(addr, method, path)
}

fn request(addr: SocketAddr, method: &str, path: &str) -> io::Result<HttpAnswer> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse(&raw).ok_or_else(|| {
        let head = String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned();
        io::Error::new(io::ErrorKind::InvalidData, format!("not an HTTP answer: {head:?}"))
    })
}

/// An answer's status line, headers and body.
fn parse(raw: &[u8]) -> Option<HttpAnswer> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_string()))
        })
        .collect::<Option<Vec<_>>>()?;
    let body = String::from_utf8_lossy(&raw[end + 4..]).into_owned();
    Some(HttpAnswer { status, headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_reads_as_status_headers_and_body() {
        let raw =
            b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\nX-A: b: c\r\n\r\nnope\r\n";
        let answer = parse(raw).unwrap();
        assert_eq!(answer.status, 404);
        assert_eq!(answer.header("content-type"), Some("text/plain"));
        assert_eq!(answer.header("X-A"), Some("b: c"));
        assert_eq!(answer.body, "nope\r\n");
    }

    #[test]
    fn what_is_not_http_is_refused() {
        assert_eq!(parse(b"+PONG\r\n"), None);
        assert_eq!(parse(b"SSH-2.0-x\r\n\r\n"), None);
        assert_eq!(parse(b"HTTP/1.0 200 OK\r\n"), None, "the head never ends");
    }
}

//! HTTP/1.1 framing, shared by the upstream server and the client: lines, headers, and bodies
//! framed by content-length or chunked encoding (with trailers).

use std::io::{self, BufRead};

/// One line up to `\n`, without the line ending; `None` at a clean end of stream.
pub(super) fn read_line(r: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    if r.read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(Some(line))
}

pub(super) fn bad(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Header lines up to the empty line: names lowercased, values trimmed (lossy), order kept.
pub(super) fn read_headers(r: &mut impl BufRead) -> io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?.ok_or_else(|| bad("connection closed inside the headers"))?;
        if line.is_empty() {
            return Ok(headers);
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| bad("header line without ':'"))?;
        let name = String::from_utf8_lossy(&line[..colon])
            .trim()
            .to_ascii_lowercase();
        let value = String::from_utf8_lossy(&line[colon + 1..])
            .trim()
            .to_string();
        headers.push((name, value));
    }
}

pub(super) fn find_all<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

pub(super) fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    find(headers, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}

/// A chunked body; its trailers (names lowercased) go to `trailers`.
fn read_chunked(r: &mut impl BufRead, trailers: &mut Vec<(String, String)>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)?.ok_or_else(|| bad("connection closed inside a chunked body"))?;
        let text = String::from_utf8_lossy(&line);
        let size_text = text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| bad(format!("bad chunk size line {text:?}")))?;
        if size == 0 {
            // Trailer lines up to the empty line (or the end of the connection).
            while let Some(line) = read_line(r)?.filter(|l| !l.is_empty()) {
                let line = String::from_utf8_lossy(&line).into_owned();
                if let Some((n, v)) = line.split_once(':') {
                    trailers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        read_line(r)?;
    }
}

/// A body framed by content-length or chunked encoding; else empty (a request) or up to the
/// end of the connection (a response, when `to_close`).
pub(super) fn read_body(
    r: &mut impl BufRead,
    headers: &[(String, String)],
    to_close: bool,
    trailers: &mut Vec<(String, String)>,
) -> io::Result<Vec<u8>> {
    if is_chunked(headers) {
        return read_chunked(r, trailers);
    }
    if let Some(len) = find(headers, "content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| bad(format!("bad content-length {len:?}")))?;
        let mut body = vec![0; len];
        r.read_exact(&mut body).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("body shorter than its content-length {len}: {e}"),
            )
        })?;
        return Ok(body);
    }
    let mut body = Vec::new();
    if to_close {
        r.read_to_end(&mut body)?;
    }
    Ok(body)
}

//! A local server speaking the Hugging Face Hub's `resolve` protocol, for tests of downloads through
//! hf-hub (HF_ENDPOINT).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Serves `dir` as repository `org/tiny` at revision `main` over the Hub's `resolve` protocol (HF_ENDPOINT),
/// with byte ranges; records each request's path and authorization header in `log`.
pub fn serve(dir: PathBuf, log: Arc<Mutex<Vec<String>>>) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(match stream.try_clone() {
                Ok(s) => s,
                Err(_) => continue,
            });
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let (mut range, mut auth) = (None, String::new());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_lowercase();
                if let Some(v) = lower.strip_prefix("range: bytes=") {
                    range = Some(v.trim().to_string());
                }
                if lower.starts_with("authorization:") {
                    auth = line.trim().to_string();
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
            let file = path.strip_prefix("/org/tiny/resolve/main/").map(|f| dir.join(f));
            log.lock().map(|mut l| l.push(format!("{path} {auth}"))).ok();
            let mut out = stream;
            let body = file.and_then(|f| std::fs::read(f).ok());
            let Some(body) = body else {
                let _ = out.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                continue;
            };
            let (start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
                Some((a, b)) => (a.parse().unwrap_or(0), if b.is_empty() { body.len() - 1 } else { b.parse().unwrap_or(0) }),
                None => (0, body.len() - 1),
            };
            let part = &body[start..=end.min(body.len() - 1)];
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\netag: \"e{}\"\r\nx-repo-commit: 0123456789abcdef\r\ncontent-range: bytes {start}-{end}/{}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len(),
                body.len(),
                part.len()
            );
            let _ = out.write_all(head.as_bytes());
            let _ = out.write_all(part);
        }
    });
    Ok(format!("http://{addr}"))
}


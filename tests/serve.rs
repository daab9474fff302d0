//! `emollama serve`: a real browser (Debian's chromium, headless, through chromium-driver and WebDriver)
//! uploads a real clip and sees the label, the probabilities, the reasoning and the contact sheet; the API
//! answers exactly what `predict` writes; bad requests get clear 4xx; 50 concurrent requests finish or
//! get 429 with bounded memory; uploads are deleted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::repo;

/// A running `emollama serve`, stopped (SIGTERM, by its id) when dropped.
struct Server {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Server {
    fn start(model: &Path, cache: &Path, tmpdir: &Path, extra: &[&str]) -> Server {
        let log = tmpdir.join(format!("serve-{}.log", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)));
        let mut child = Command::new(env!("CARGO_BIN_EXE_emollama"))
            .args(["serve", "--model", model.to_str().expect("utf8"), "--addr", "127.0.0.1:0"])
            .args(extra)
            .current_dir(repo())
            .env("XDG_CACHE_HOME", cache)
            .env("TMPDIR", tmpdir)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn emollama serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(180)).unwrap_or_else(|_| panic!("the server did not start: {}", std::fs::read_to_string(&log).unwrap_or_default()));
        let addr = line.strip_prefix("listening on http://").and_then(|a| a.strip_suffix('/')).unwrap_or_else(|| panic!("unexpected first line `{line}`")).to_string();
        Server { child, addr, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The server's peak resident memory so far (VmHWM), in KiB.
    fn peak_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("/proc status");
        status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).expect("VmHWM")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child by its id.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let t0 = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "the server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A response: status, headers (lowercase names) and body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|h| h.0 == name).map(|h| h.1.as_str())
    }
}

/// One HTTP/1.1 request on its own connection. The whole body is written even when the server answers
/// early (a refused upload), then the answer is read.
fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(300))).expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write head");
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no response to {method} {path}: {}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).expect("status line");
    let headers: Vec<(String, String)> = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|h| h.0 == "transfer-encoding" && h.1.contains("chunked")) {
        body = dechunk(&body);
    }
    Reply { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..end]).trim(), 16).unwrap_or(0);
        if n == 0 || b.len() < end + 2 + n {
            break;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + n]);
        b = &b[(end + 4 + n).min(b.len())..];
    }
    out
}

const BOUNDARY: &str = "emollama-test-boundary-7d3f";

/// A multipart/form-data body: (field, file name, bytes).
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, file, bytes) in parts {
        b.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match file {
            Some(f) => b.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes()),
            None => b.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
        }
        b.extend_from_slice(bytes);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

fn upload(server: &Server, path: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Reply {
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    request(&server.addr, "POST", path, &[("Content-Type", &ct)], &multipart(parts))
}

fn post_json(server: &Server, path: &str, body: &serde_json::Value, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    request(&server.addr, "POST", path, &headers, body.to_string().as_bytes())
}

/// The upload folders the servers made under `tmpdir` that still exist.
/// Upload folders (`req-N`) still there after waiting up to 10 s: a request's folder is removed just after
/// its answer is sent.
fn leftover_requests(tmpdir: &Path) -> Vec<PathBuf> {
    let reqs = || -> Vec<PathBuf> { leftover_uploads(tmpdir).into_iter().filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("req-"))).collect() };
    let t0 = Instant::now();
    while !reqs().is_empty() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    reqs()
}

fn leftover_uploads(tmpdir: &Path) -> Vec<PathBuf> {
    let mut left = Vec::new();
    for d in std::fs::read_dir(tmpdir).expect("tmpdir").flatten().filter(|e| e.file_name().to_string_lossy().starts_with("emollama-serve-")) {
        left.push(d.path());
        left.extend(std::fs::read_dir(d.path()).into_iter().flatten().flatten().map(|e| e.path()));
    }
    left
}

#[test]
fn the_api_answers_what_predict_writes_and_refuses_bad_requests_with_clear_4xx() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let run = common::train_with_faces(tmp.path(), &cache, 12);
    let tmpdir = tmp.path().join("tmp");
    std::fs::create_dir_all(&tmpdir).expect("tmpdir");
    let asr = emollama::model::asr::default_model_dir();
    assert!(asr.join("model.bin").is_file(), "{} is missing: run `just fetch-models`", asr.display());
    let server = Server::start(&run, &cache, &tmpdir, &["--max-upload-mb", "1", "--max-seconds", "30", "--asr-model", asr.to_str().expect("utf8")]);

    let health = request(&server.addr, "GET", "/v1/health", &[], b"");
    assert_eq!((health.status, health.json()["status"].as_str()), (200, Some("ok")));
    let model = request(&server.addr, "GET", "/v1/model", &[], b"").json();
    assert_eq!(model["recipe_name"], "faces");
    assert_eq!(model["labels"].as_array().map(Vec::len), Some(6));
    assert!(model["recipe"].as_str().is_some_and(|r| r.contains("[front_end.face]")), "{model}");
    assert_eq!(model["face_front_end"], true);

    // A real clip with a face: the same line as `emollama predict` writes for it (same key, label,
    // probabilities and reasoning); the file is named by the server, not the client.
    let clip = common::media("single_face.mp4");
    let bytes = std::fs::read(&clip).expect("clip");
    let r = upload(&server, "/v1/predict", &[("file", Some("../../etc/single_face.mp4"), &bytes)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let line = r.json();
    let o = Command::new(env!("CARGO_BIN_EXE_emollama"))
        .args(["predict", "--model", run.to_str().expect("utf8"), "--input", clip.to_str().expect("utf8"), "--no-progress", "--max-seconds", "30", "--asr-model", asr.to_str().expect("utf8")])
        .current_dir(repo())
        .env("XDG_CACHE_HOME", &cache)
        .output()
        .expect("predict");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cli: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one predict line");
    for k in ["key", "ok", "label", "label_from", "scores", "scores_from", "emotion_prompt_scores", "reasoning", "faces", "peak_frame_s", "modalities", "transcript", "transcript_source"] {
        assert_eq!(line[k], cli[k], "`{k}` differs from predict's: {line} vs {cli}");
    }
    assert_eq!(line["id"], "single_face");
    assert_eq!(line["input"], "upload:single_face", "the client's name, never the server's path: {line}");
    assert!(line["faces"]["frames_with_face"].as_u64().unwrap_or(0) > 0, "{line}");

    // The streamed form: stages in order, the contact sheet, tokens that add up to the reasoning, then
    // the same line.
    let r = upload(&server, "/v1/predict?stream=true", &[("file", Some("clip.mp4"), &bytes)]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events: Vec<(String, serde_json::Value)> = r
        .text()
        .split("\n\n")
        .filter_map(|block| {
            let event = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((event.to_string(), serde_json::from_str(data).ok()?))
        })
        .collect();
    let stages: Vec<&str> = events.iter().filter(|e| e.0 == "stage").filter_map(|e| e.1["stage"].as_str()).collect();
    // The model's prompt carries a transcript and none was given: speech-to-text runs.
    assert_eq!(stages, ["decoding", "faces", "transcript", "encoders", "scores", "generation"], "{events:?}");
    let sheet = events.iter().find(|e| e.0 == "sheet").and_then(|e| e.1["png"].as_str()).expect("a contact sheet");
    assert!(sheet.starts_with("data:image/png;base64,iVBORw0KGgo"), "a PNG");
    let streamed: String = events.iter().filter(|e| e.0 == "token").filter_map(|e| e.1["text"].as_str()).collect();
    let result = &events.last().expect("events").1;
    assert_eq!(events.last().map(|e| e.0.as_str()), Some("result"));
    assert_eq!(result["key"], line["key"]);
    assert_eq!(result["reasoning"].as_str(), Some(streamed.as_str()), "the tokens add up to the reasoning");
    assert!(!streamed.is_empty());

    // Speech: an audio file transcribed by the server (ASR), the transcript in the line.
    let wav = std::fs::read(common::media("jfk.wav")).expect("jfk");
    let r = upload(&server, "/v1/predict", &[("file", Some("jfk.wav"), &wav)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!((j["transcript_source"].as_str(), j["modalities"].clone()), (Some("asr"), serde_json::json!(["audio"])), "{j}");
    let wer = emollama::model::asr::word_error_rate(
        "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.",
        j["transcript"].as_str().expect("transcript"),
    );
    assert!(wer <= 0.10, "WER {wer}: {j}");
    // A given transcript is used as given.
    let r = upload(&server, "/v1/predict", &[("file", Some("jfk.wav"), &wav), ("transcript", None, b"I am so happy today")]);
    assert_eq!((r.status, r.json()["transcript"].as_str(), r.json()["transcript_source"].as_str()), (200, Some("I am so happy today"), Some("given")));

    // Bad requests, each a clear 4xx.
    let r = request(&server.addr, "POST", "/v1/predict", &[("Content-Type", &format!("multipart/form-data; boundary={BOUNDARY}"))], b"--emollama-test-boundary-7d3f\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nno closing boundary");
    assert_eq!(r.status, 400, "malformed multipart: {}", r.text());
    assert!(r.json()["error"]["message"].as_str().is_some_and(|m| m.contains("malformed multipart")), "{}", r.text());
    let r = request(&server.addr, "POST", "/v1/predict", &[("Content-Type", "multipart/form-data")], b"x");
    assert_eq!(r.status, 400, "multipart without a boundary: {}", r.text());
    let r = upload(&server, "/v1/predict", &[("transcript", None, b"hello")]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("no `file` field"), "{}", r.text());
    // Not media, whatever its extension says.
    let r = upload(&server, "/v1/predict", &[("file", Some("holiday.mp4"), b"these bytes are text, not a video, even if the name ends in .mp4")]);
    assert_eq!(r.status, 415, "{}", r.text());
    assert!(r.text().contains("not a readable video or audio file"), "{}", r.text());
    assert!(!r.text().contains(tmpdir.to_str().expect("utf8")), "no server path in errors: {}", r.text());
    // Over --max-upload-mb 1 (the Pexels clip is 1.6 MB): announced and streamed.
    let big = std::fs::read(common::media("WolfgangLanger_Pexels.mp4")).expect("big clip");
    assert!(big.len() > 1024 * 1024);
    let r = upload(&server, "/v1/predict", &[("file", Some("big.mp4"), &big)]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("larger than the limit"), "{}", r.text());
    let mut chunked_big = Vec::new();
    let body = multipart(&[("file", Some("big.mp4"), &big[..1024 * 1024 + 4096])]);
    chunked_big.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
    chunked_big.extend_from_slice(&body);
    chunked_big.extend_from_slice(b"\r\n0\r\n\r\n");
    let r = request_chunked(&server.addr, &format!("multipart/form-data; boundary={BOUNDARY}"), &chunked_big);
    assert_eq!(r.status, 413, "streamed without a length: {}", r.text());
    // Over --max-seconds 30 (31 s of silence, under the size limit): probed, refused before the model.
    let long = tmp.path().join("long.wav");
    std::fs::write(&long, wav_silence(31 * 16000)).expect("long wav");
    let r = upload(&server, "/v1/predict", &[("file", Some("long.wav"), &std::fs::read(&long).expect("long"))]);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("over the limit of 30 s"), "{}", r.text());
    // URL fetching is off by default.
    let r = post_json(&server, "/v1/predict", &serde_json::json!({"url": "https://example.com/clip.mp4"}), None);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("--allow-url"), "{}", r.text());
    let r = request(&server.addr, "POST", "/v1/predict", &[("Content-Type", "text/plain")], b"hello");
    assert_eq!(r.status, 415, "{}", r.text());

    // OpenAI-compatible text chat with the loaded LLM (greedy: the same answer twice), and streamed.
    let ask = serde_json::json!({"model": "faces", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How does the person feel?"}], "max_tokens": 6});
    let a = post_json(&server, "/v1/chat/completions", &ask, None);
    assert_eq!(a.status, 200, "{}", a.text());
    let a = a.json();
    assert_eq!(a["object"], "chat.completion");
    assert_eq!(a["choices"][0]["message"]["role"], "assistant");
    assert!(a["choices"][0]["message"]["content"].as_str().is_some_and(|c| !c.is_empty()), "{a}");
    assert!(a["usage"]["completion_tokens"].as_u64().is_some_and(|n| (1..=6).contains(&n)), "{a}");
    assert_eq!(post_json(&server, "/v1/chat/completions", &ask, None).json()["choices"], a["choices"]);
    let mut streamed_ask = ask.clone();
    streamed_ask["stream"] = serde_json::json!(true);
    let s = post_json(&server, "/v1/chat/completions", &streamed_ask, None);
    let chunks: Vec<String> = s.text().split("\n\n").filter_map(|b| b.strip_prefix("data: ").map(str::to_string)).collect();
    assert_eq!(chunks.last().map(String::as_str), Some("[DONE]"));
    let text: String = chunks.iter().filter_map(|c| serde_json::from_str::<serde_json::Value>(c).ok()).filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_string)).collect();
    assert_eq!(Some(text.as_str()), a["choices"][0]["message"]["content"].as_str(), "the streamed chunks add up to the answer");
    let r = post_json(&server, "/v1/chat/completions", &serde_json::json!({"messages": []}), None);
    assert_eq!(r.status, 400, "{}", r.text());
    let r = post_json(&server, "/v1/chat/completions", &serde_json::json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}), None);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("text only"), "{}", r.text());

    // Every upload deleted after use; the private folder itself is removed on SIGTERM.
    let left = leftover_requests(&tmpdir);
    assert!(left.is_empty(), "upload folders left behind: {left:?}");
    let log = server.log();
    let status = server.stop();
    assert!(status.success(), "{status:?}: {log}");
    assert!(leftover_uploads(&tmpdir).is_empty(), "{:?}", leftover_uploads(&tmpdir));
    eprintln!("api test: {:.1} s", t0.elapsed().as_secs_f64());
}

/// A body sent with `Transfer-Encoding: chunked` (no announced length).
fn request_chunked(addr: &str, content_type: &str, chunked: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let head = format!("POST /v1/predict HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nContent-Type: {content_type}\r\n\r\n");
    s.write_all(head.as_bytes()).expect("head");
    let _ = s.write_all(chunked);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no response: {text}"));
    let body = text.split_once("\r\n\r\n").map(|b| b.1.as_bytes().to_vec()).unwrap_or_default();
    Reply { status, headers: Vec::new(), body }
}

/// A 16 kHz mono 16-bit WAV of `samples` zero samples.
fn wav_silence(samples: u32) -> Vec<u8> {
    let data = samples * 2;
    let mut h = Vec::new();
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&(36 + data).to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&16000u32.to_le_bytes());
    h.extend_from_slice(&32000u32.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data.to_le_bytes());
    h.resize(h.len() + data as usize, 0);
    h
}

#[test]
fn url_fetching_refuses_private_addresses_and_tokens_guard_the_api() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let run = common::train_with_faces(tmp.path(), &cache, 12);
    let tmpdir = tmp.path().join("tmp");
    std::fs::create_dir_all(&tmpdir).expect("tmpdir");
    let server = Server::start(&run, &cache, &tmpdir, &["--allow-url", "--token", "s3cret", "--transcript", "none"]);
    // The page and the health check are open; the API needs the token.
    assert_eq!(request(&server.addr, "GET", "/", &[], b"").status, 200);
    assert_eq!(request(&server.addr, "GET", "/v1/health", &[], b"").status, 200);
    let r = request(&server.addr, "GET", "/v1/model", &[], b"");
    assert_eq!((r.status, r.header("www-authenticate")), (401, Some("Bearer")));
    let r = request(&server.addr, "GET", "/v1/model", &[("Authorization", "Bearer wrong!")], b"");
    assert_eq!(r.status, 401);
    let r = request(&server.addr, "GET", "/v1/model", &[("Authorization", "Bearer s3cret")], b"");
    assert_eq!((r.status, r.json()["url_fetching"].as_bool()), (200, Some(true)));
    let r = post_json(&server, "/v1/predict", &serde_json::json!({"url": "https://example.com/a.mp4"}), None);
    assert_eq!(r.status, 401);
    // Private, loopback, link-local (cloud metadata) addresses: refused before any connection; the
    // server's own port included.
    for url in [server.url("/v1/health"), "http://localhost:9/clip.mp4".into(), "http://10.0.0.8/clip.mp4".into(), "http://169.254.169.254/latest/meta-data/".into(), "http://[::1]:80/clip.mp4".into(), "http://192.168.1.20:8080/clip.mp4".into()] {
        let r = post_json(&server, "/v1/predict", &serde_json::json!({"url": url}), Some("s3cret"));
        assert_eq!(r.status, 403, "{url}: {}", r.text());
        assert!(r.text().contains("not a public address"), "{url}: {}", r.text());
    }
    for url in ["file:///etc/passwd", "ftp://example.com/clip.mp4", "not a url"] {
        let r = post_json(&server, "/v1/predict", &serde_json::json!({"url": url}), Some("s3cret"));
        assert_eq!(r.status, 400, "{url}: {}", r.text());
    }
    let r = post_json(&server, "/v1/predict", &serde_json::json!({"url": "https://example.com/a.mp4", "path": "/etc/passwd"}), Some("s3cret"));
    assert_eq!(r.status, 400, "unknown keys are refused: {}", r.text());
    drop(server);

    // Any address but loopback needs a token.
    let o = Command::new(env!("CARGO_BIN_EXE_emollama"))
        .args(["serve", "--model", run.to_str().expect("utf8"), "--addr", "0.0.0.0:0"])
        .current_dir(repo())
        .env("XDG_CACHE_HOME", &cache)
        .env_remove("EMOLLAMA_SERVE_TOKEN")
        .output()
        .expect("spawn");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a loopback address"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn fifty_concurrent_requests_finish_or_get_429_with_bounded_memory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let run = common::train_with_faces(tmp.path(), &cache, 12);
    let tmpdir = tmp.path().join("tmp");
    std::fs::create_dir_all(&tmpdir).expect("tmpdir");
    let server = Server::start(&run, &cache, &tmpdir, &["--queue", "3", "--transcript", "none"]);
    let before = server.peak_kib();
    let clip = std::fs::read(common::media("single_face.mp4")).expect("clip");
    let addr = server.addr.clone();
    let t0 = Instant::now();
    let statuses: Vec<(u16, serde_json::Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                let (addr, clip) = (&addr, &clip);
                s.spawn(move || {
                    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
                    let r = request(addr, "POST", "/v1/predict", &[("Content-Type", &ct)], &multipart(&[("file", Some("c.mp4"), clip)]));
                    (r.status, r.json())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client thread")).collect()
    });
    let seconds = t0.elapsed().as_secs_f64();
    let ok = statuses.iter().filter(|s| s.0 == 200).count();
    let busy = statuses.iter().filter(|s| s.0 == 429).count();
    assert_eq!(ok + busy, 50, "every request finished or got 429: {:?}", statuses.iter().filter(|s| s.0 != 200 && s.0 != 429).collect::<Vec<_>>());
    assert!(ok >= 1 && busy >= 1, "{ok} finished, {busy} got 429");
    let keys: std::collections::BTreeSet<&str> = statuses.iter().filter(|s| s.0 == 200).filter_map(|s| s.1["key"].as_str()).collect();
    assert_eq!(keys.len(), 1, "the same clip, the same line");
    assert!(statuses.iter().filter(|s| s.0 == 429).all(|s| s.1["error"]["message"].as_str().is_some_and(|m| m.contains("queue is full"))));
    // Still serving, nothing left in flight, and one more request is answered.
    let health = request(&server.addr, "GET", "/v1/health", &[], b"").json();
    assert_eq!(health["in_flight"], 0, "{health}");
    assert_eq!(upload(&server, "/v1/predict", &[("file", Some("c.mp4"), &clip)]).status, 200);
    let peak = server.peak_kib();
    eprintln!("50 concurrent requests: {ok} answered, {busy} got 429 in {seconds:.1} s; server peak RSS (VmHWM) {:.0} MiB (after loading {:.0} MiB)", peak as f64 / 1024.0, before as f64 / 1024.0);
    assert!(peak < 2 * 1024 * 1024, "peak RSS {peak} KiB: memory not bounded");
    assert!(peak < before + 1024 * 1024, "peak {peak} KiB against {before} KiB after loading");
    let left = leftover_requests(&tmpdir);
    assert!(left.is_empty(), "upload folders left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_uploads_a_real_clip_and_sees_the_label_probabilities_reasoning_and_contact_sheet() {
    use fantoccini::{ClientBuilder, Locator};
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let run = common::train_with_faces(tmp.path(), &cache, 12);
    let tmpdir = tmp.path().join("tmp");
    std::fs::create_dir_all(&tmpdir).expect("tmpdir");
    let server = Server::start(&run, &cache, &tmpdir, &["--transcript", "none"]);

    // chromium-driver on a free port, stopped by its id at the end.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port");
    let driver = which("chromedriver").expect("chromedriver is missing: `apt-get install chromium chromium-driver` (tools/setup.sh)");
    let chromium = which("chromium").expect("chromium is missing: `apt-get install chromium chromium-driver` (tools/setup.sh)");
    let mut driver = Command::new(driver).arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn chromedriver");
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(30), "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let profile = tmp.path().join("chromium-profile");
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), serde_json::json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"binary": chromium, "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,1500", format!("--user-data-dir={}", profile.display())]}),
    );
    let outcome = async {
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new()).capabilities(caps).connect(&format!("http://127.0.0.1:{port}")).await.expect("a WebDriver session");
        c.goto(&server.url("/")).await.expect("open the page");
        let line = c.wait().at_most(Duration::from_secs(30)).for_element(Locator::Css("#model-line")).await.expect("model line");
        // The model's description is filled in from /v1/model.
        let t = Instant::now();
        while !line.text().await.expect("text").starts_with("Model: faces") {
            assert!(t.elapsed() < Duration::from_secs(30), "the page did not describe the model");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let clip = common::media("WolfgangLanger_Pexels.mp4");
        c.find(Locator::Css("#file")).await.expect("file input").send_keys(clip.to_str().expect("utf8")).await.expect("choose the file");
        c.find(Locator::Css("#go")).await.expect("button").click().await.expect("submit");
        let state = c.wait().at_most(Duration::from_secs(240)).for_element(Locator::Css("body[data-state=done], body[data-state=error]")).await.expect("a result or an error");
        let error = c.find(Locator::Css("#error")).await.expect("error").text().await.unwrap_or_default();
        assert_eq!(state.attr("data-state").await.expect("state").as_deref(), Some("done"), "the page shows an error: {error}");
        let label = c.find(Locator::Css("#label")).await.expect("label").text().await.expect("text");
        let labels = ["neutral", "angry", "happy", "sad", "worried", "surprise"];
        assert!(labels.contains(&label.as_str()), "label `{label}`");
        // One bar per class, the percentages adding up to 100, the top one the label when the label
        // comes from the scores.
        let rows = c.execute("return [...document.querySelectorAll('#probs li')].map(li => [li.querySelector('.name').textContent, li.querySelector('.value').textContent, li.querySelector('.fill').getBoundingClientRect().width])", vec![]).await.expect("bars");
        let rows = rows.as_array().expect("rows").clone();
        assert_eq!(rows.len(), 6, "{rows:?}");
        let total: f64 = rows.iter().filter_map(|r| r[1].as_str()).filter_map(|v| v.trim_end_matches('%').parse::<f64>().ok()).sum();
        assert!((total - 100.0).abs() < 0.5, "{rows:?}");
        assert!(rows.iter().all(|r| r[2].as_f64().is_some()), "{rows:?}");
        assert!(rows[0][2].as_f64() > rows[5][2].as_f64(), "bars sorted by probability, drawn to scale: {rows:?}");
        let reasoning = c.find(Locator::Css("#reasoning")).await.expect("reasoning").text().await.expect("text");
        assert!(!reasoning.trim().is_empty(), "the reasoning is shown");
        // The same clip through the API: the page shows what the API answers.
        let api = upload(&server, "/v1/predict", &[("file", Some("w.mp4"), &std::fs::read(&clip).expect("clip"))]).json();
        assert_eq!(api["reasoning"].as_str().map(str::trim), Some(reasoning.trim()));
        assert_eq!(api["label"].as_str(), Some(label.as_str()));
        // The contact sheet: a decoded image, the progress list with every stage.
        let sheet = c.execute("const i = document.getElementById('sheet'); return [i.complete, i.naturalWidth, i.naturalHeight, document.getElementById('sheet-section').hidden]", vec![]).await.expect("sheet");
        assert_eq!(sheet[0], true);
        assert!(sheet[1].as_u64().unwrap_or(0) > 600 && sheet[2].as_u64().unwrap_or(0) > 300 && sheet[3] == false, "{sheet}");
        let stages = c.execute("return [...document.querySelectorAll('#stages li')].map(li => li.dataset.stage)", vec![]).await.expect("stages");
        assert_eq!(stages, serde_json::json!(["upload", "decoding", "faces", "encoders", "scores", "generation"]));
        let out = test_output();
        c.set_window_size(1000, 1250).await.expect("window");
        c.execute("document.getElementById('result-h').scrollIntoView()", vec![]).await.expect("scroll");
        std::fs::write(out.join("serve-page.png"), c.screenshot().await.expect("screenshot")).expect("write screenshot");
        // A narrow window (a phone): nothing wider than the viewport.
        c.set_window_size(380, 1400).await.expect("narrow");
        let widths = c.execute("return [document.documentElement.scrollWidth, document.documentElement.clientWidth]", vec![]).await.expect("widths");
        assert!(widths[0].as_u64() <= widths[1].as_u64(), "horizontal scrolling in a narrow window: {widths}");
        std::fs::write(out.join("serve-page-narrow.png"), c.screenshot().await.expect("screenshot")).expect("write screenshot");
        eprintln!("screenshots: {}", out.display());
        c.close().await.expect("close the session");
    };
    // Stop chromedriver whatever happened.
    let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(outcome)).await;
    let _ = driver.kill();
    let _ = driver.wait();
    if let Err(panic) = result {
        eprintln!("server log:\n{}", server.log());
        std::panic::resume_unwind(panic);
    }
    eprintln!("browser test: {:.1} s", t0.elapsed().as_secs_f64());
}

/// `target/<profile>/test-output/`: where the browser test leaves its screenshots.
fn test_output() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_emollama"));
    let dir = exe.parent().unwrap_or(Path::new(".")).join("test-output");
    std::fs::create_dir_all(&dir).expect("test output folder");
    dir
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|f| f.is_file()))
}

/// `--model zero-shot` is served like any model: an uploaded clip gets the line `predict` writes for it,
/// with the cues the zero-shot model read.
#[test]
fn the_zero_shot_model_is_served() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tmpdir = tmp.path().join("tmp");
    std::fs::create_dir_all(&tmpdir).expect("tmpdir");
    // The user's cache, where `just fetch-models` put SmolLM2 and Whisper.
    let cache = emollama::storage::cache_root("").parent().expect("cache parent").to_path_buf();
    let server = Server::start(Path::new("zero-shot"), &cache, &tmpdir, &[]);
    let model = request(&server.addr, "GET", "/v1/model", &[], b"").json();
    assert_eq!(model["recipe_name"], "zero-shot", "{model}");
    let clip = common::media("single_face.mp4");
    let r = upload(&server, "/v1/predict", &[("file", Some("single_face.mp4"), &std::fs::read(&clip).expect("clip"))]);
    assert_eq!(r.status, 200, "{}", r.text());
    let line = r.json();
    let o = Command::new(env!("CARGO_BIN_EXE_emollama")).args(["predict", "--model", "zero-shot", "--input", clip.to_str().expect("utf8"), "--no-progress"]).current_dir(repo()).output().expect("predict");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cli: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one predict line");
    for k in ["key", "label", "scores", "reasoning", "cues"] {
        assert_eq!(line[k], cli[k], "`{k}` differs from predict's: {line} vs {cli}");
    }
    assert_eq!(line["cues"]["face"]["dominant"], "happy", "{line}");
}

//! `kiln serve` end to end: the server is started on a free port with SmolLM2 and driven by
//! the official `openai` Python client (`tests/serve/test_openai.py`) and by a load script
//! (`tests/serve/load.py`: 32 concurrent streams with disconnects, then a shutdown under load).
//! Protocol details the Python client hides (raw SSE framing, malformed bodies, oversized
//! bodies, a client that vanishes) are checked here over a plain TCP socket.

use kiln_e2e::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MODEL: &str = "smollm2-135m-instruct-q4_1.gguf";
const MODEL_ID: &str = "smollm2";
const KEY: &str = "test-key";

/// A running `kiln serve`, killed when dropped.
struct Server {
    child: Child,
    addr: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        let mut c = Command::new(kiln_bin());
        c.args(["serve", "-m", model.to_str().unwrap(), "--alias", MODEL_ID])
            .args(["--host", "127.0.0.1", "--port", "0", "--api-key", KEY])
            .args(["-t", "2"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("kiln serve starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("kiln serve listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        // Keep stderr drained (and kept, for failure messages).
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let s = Server {
            child,
            addr,
            stderr,
        };
        s.wait_ready();
        s
    }

    fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `/health` says ok (the model loads in the background).
    fn wait_ready(&self) {
        let t0 = Instant::now();
        loop {
            let (status, body) = self.request("GET", "/health", None, &[]);
            if status == 200 {
                assert!(body.contains("\"status\":\"ok\""), "{body}");
                return;
            }
            // While loading, it answers 503 with a status.
            assert_eq!(status, 503, "{body}");
            assert!(body.contains("loading"), "{body}");
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "not ready: {body}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One HTTP/1.1 request over a fresh connection: (status, body).
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[&str],
    ) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        if let Some(b) = body {
            req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        if let Some(b) = body {
            // A server may refuse an oversized body before reading it all.
            let _ = s.write_all(b);
        }
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    fn post(&self, path: &str, json: &str) -> (u16, String) {
        self.request(
            "POST",
            path,
            Some(json.as_bytes()),
            &[
                "Content-Type: application/json",
                &format!("Authorization: Bearer {KEY}"),
            ],
        )
    }

    /// Sends SIGTERM and waits for the exit status (code).
    fn terminate(mut self, within: Duration) -> Option<i32> {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { kill(self.child.id() as i32, 15) };
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(
                t0.elapsed() < within,
                "the server did not stop in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True when python3 with the `openai` package is available (CI installs it); otherwise the
/// Python parts are skipped with a message, or fail when models are required.
fn python_ok() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !models_required(),
            "python3 with `openai` is missing (pip install -r scripts/requirements-test.txt)"
        );
        eprintln!("skipped: python3 with the `openai` package is not installed");
    }
    ok
}

fn python(script: &str, args: &[&str]) -> (bool, String) {
    let o = Command::new("python3")
        .arg(workspace().join("tests/serve").join(script))
        .args(args)
        .output()
        .expect("python3 runs");
    let (out, err) = texts(&o);
    (o.status.success(), format!("{out}\n{err}"))
}

#[test]
fn openai_client_suite_and_raw_protocol() {
    let Some(model) = model(MODEL) else { return };
    // A 1024-position context, so that a too-long prompt is cheap to send.
    let server = Server::start(&model, &["--parallel", "4", "--ctx", "1024"]);

    raw_protocol(&server);

    if python_ok() {
        let wat = workspace().join("samplers/examples/wat-ban/ban.wat");
        let (ok, out) = python(
            "test_openai.py",
            &[&server.base(), KEY, MODEL_ID, wat.to_str().unwrap()],
        );
        assert!(
            ok,
            "openai client suite failed:\n{out}\nserver log:\n{}",
            server.log()
        );
        eprintln!("{out}");
    }
    let log = server.log();
    assert_eq!(server.terminate(Duration::from_secs(30)), Some(0), "{log}");
}

/// What the openai client would hide.
fn raw_protocol(s: &Server) {
    // Malformed JSON: 400 in the OpenAI error shape.
    let (st, body) = s.post("/v1/chat/completions", "{\"model\": ");
    assert_eq!(st, 400, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{body}");
    // A body over the limit: 413, and the server carries on.
    let big = vec![b' '; 9 << 20];
    let (st, _) = s.request(
        "POST",
        "/v1/chat/completions",
        Some(&big),
        &[
            "Content-Type: application/json",
            &format!("Authorization: Bearer {KEY}"),
        ],
    );
    assert_eq!(st, 413);
    // No key: 401.
    let (st, _) = s.request("GET", "/v1/models", None, &[]);
    assert_eq!(st, 401);
    // Unknown endpoint: 404 in the error shape.
    let (st, body) = s.request("GET", "/v1/nothing", None, &[]);
    assert_eq!(st, 404, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    // Hostile text in a field is escaped in the error, not echoed raw.
    let (st, body) = s.post(
        "/v1/chat/completions",
        "{\"model\": \"\\u001b[31mred\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}",
    );
    assert_eq!(st, 404, "{body}");
    assert!(
        !body.contains('\u{1b}') && !body.contains("\\u001b"),
        "{body}"
    );

    // SSE framing: `data: {json}` events, exactly one finish_reason, `data: [DONE]` last.
    let (st, body) = s.post(
        "/v1/completions",
        &format!(
            "{{\"model\": \"{MODEL_ID}\", \"prompt\": \"Once upon a time\", \"max_tokens\": 8, \
             \"temperature\": 0, \"stream\": true}}"
        ),
    );
    assert_eq!(st, 200, "{body}");
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
    let mut finishes = 0;
    for e in &events[..events.len() - 1] {
        let v: serde_json::Value = serde_json::from_str(e).expect("each event is JSON");
        finishes += v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| !c["finish_reason"].is_null())
            .count();
    }
    assert_eq!(finishes, 1, "{body}");

    // A client that vanishes mid-stream: its sequence is cancelled, the slot frees up.
    {
        let mut c = TcpStream::connect(&s.addr).unwrap();
        let body = format!(
            "{{\"model\": \"{MODEL_ID}\", \"prompt\": \"A long tale:\", \"max_tokens\": 2000, \
             \"ignore_eos\": true, \"stream\": true}}"
        );
        write!(
            c,
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut first = [0u8; 256];
        let _ = c.read(&mut first).unwrap();
        drop(c);
    }
    let t0 = Instant::now();
    loop {
        let (_, h) = s.request("GET", "/health", None, &[]);
        let v: serde_json::Value = serde_json::from_str(&h).unwrap();
        if v["slots"]["busy"] == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the abandoned sequence still runs: {h}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Tokenize / detokenize round trip.
    let (st, body) = s.post(
        "/tokenize",
        "{\"content\": \"Hello world\", \"with_pieces\": true}",
    );
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<u64> = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert!(!ids.is_empty());
    let (st, body) = s.post("/detokenize", &format!("{{\"tokens\": {ids:?}}}"));
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("\"Hello world\""), "{body}");
    let (st, _) = s.post("/detokenize", "{\"tokens\": [4000000000]}");
    assert_eq!(st, 400);

    // Metrics in the Prometheus text format.
    let (st, m) = s.request("GET", "/metrics", None, &[]);
    assert_eq!(st, 200);
    assert!(m.contains("kiln_requests_total"), "{m}");
    assert!(m.contains("kiln_time_to_first_token_seconds"), "{m}");
}

#[test]
fn concurrent_streams_with_disconnects_then_shutdown_under_load() {
    let Some(model) = model(MODEL) else { return };
    if !python_ok() {
        return;
    }
    // 32 streams on 8 slots (the rest queue), a quarter of the clients disconnecting.
    let server = Server::start(&model, &["--parallel", "8", "--ctx", "512"]);
    let pid = server.child.id().to_string();
    let (ok, out) = python("load.py", &[&server.base(), KEY, MODEL_ID, &pid]);
    assert!(
        ok,
        "load test failed:\n{out}\nserver log:\n{}",
        server.log()
    );
    eprintln!("{out}");
    drop(server);

    // SIGTERM while 8 streams run: each completes whole, then the server exits 0.
    let mut server = Server::start(&model, &["--parallel", "8", "--grace", "60"]);
    let pid = server.child.id().to_string();
    let (ok, out) = python(
        "load.py",
        &[&server.base(), KEY, MODEL_ID, &pid, "shutdown"],
    );
    assert!(
        ok,
        "shutdown test failed:\n{out}\nserver log:\n{}",
        server.log()
    );
    let t0 = Instant::now();
    let code = loop {
        if let Some(st) = server.child.try_wait().unwrap() {
            break st.code();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the server did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0), "{}", server.log());
    eprintln!("{out}");
}

#[test]
fn a_model_that_fails_to_load_is_reported_by_health() {
    let dir = std::env::temp_dir().join(format!("kiln-serve-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("truncated.gguf");
    // A GGUF header that claims more than the file holds.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&5u64.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    std::fs::write(&bad, &bytes).unwrap();
    let mut c = Command::new(kiln_bin());
    c.args(["serve", "-m", bad.to_str().unwrap(), "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let o = c.output().expect("kiln serve runs");
    let (out, err) = texts(&o);
    std::fs::remove_dir_all(&dir).ok();
    // The file is checked before listening: a clear error and a failing exit, no panic.
    assert!(!o.status.success(), "{out}{err}");
    assert!(err.contains("truncated.gguf"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_full_queue_answers_429_and_the_server_recovers() {
    let Some(model) = model(MODEL) else { return };
    // One slot and a queue of one: a third concurrent request is refused at once.
    let server = std::sync::Arc::new(Server::start(
        &model,
        &["--parallel", "1", "--queue", "1", "--ctx", "512"],
    ));
    let long = format!(
        "{{\"model\": \"{MODEL_ID}\", \"prompt\": \"Count:\", \"max_tokens\": 300, \
         \"ignore_eos\": true}}"
    );
    let running: Vec<_> = (0..2)
        .map(|_| {
            let s = server.clone();
            let body = long.clone();
            std::thread::spawn(move || s.post("/v1/completions", &body).0)
        })
        .collect();
    // Wait until one runs and one waits.
    let t0 = Instant::now();
    loop {
        let (_, h) = server.request("GET", "/health", None, &[]);
        let v: serde_json::Value = serde_json::from_str(&h).unwrap();
        if v["slots"]["busy"] == 1 && v["queue"] == 1 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{h}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (st, body) = server.post("/v1/completions", &long);
    assert_eq!(st, 429, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"]["message"].as_str().is_some(), "{body}");
    for t in running {
        assert_eq!(t.join().unwrap(), 200);
    }
    // Afterwards requests are served again.
    let (st, body) = server.post(
        "/v1/completions",
        &format!("{{\"model\": \"{MODEL_ID}\", \"prompt\": \"Hi\", \"max_tokens\": 2}}"),
    );
    assert_eq!(st, 200, "{body}");
}

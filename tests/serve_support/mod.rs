//! What the `mla serve` tests share: a server on an ephemeral port (stopped with SIGTERM when
//! dropped), JSON requests over the blocking client `mla bench serve` uses, and `mla generate`
//! for the offline engine's answers.

#![allow(dead_code)]

#[path = "../../src/bench/http_client.rs"]
pub mod http_client;

use http_client::{send, Response};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(120);

pub struct Server {
    pub child: Child,
    pub address: String,
    /// The server's log so far (stderr), collected on another thread.
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    /// `mla serve --port 0` with `args`, once it listens and its model is loaded.
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mla"))
            .args(["serve", "--port", "0", "--kv-cache-memory", "32MB"])
            .args(args)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start mla serve");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on http://") {
                    let rest = &line[at + "listening on http://".len()..];
                    let _ = tx.send(rest.split_whitespace().next().unwrap().to_string());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let address = rx
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|_| panic!("mla serve did not start: {}", log.lock().unwrap()));
        let server = Server {
            child,
            address,
            log,
        };
        let start = Instant::now();
        while server.get("/health").status != 200 {
            assert!(
                start.elapsed() < TIMEOUT,
                "the model did not load: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn get(&self, path: &str) -> Response {
        send(&self.address, "GET", path, &[], b"", TIMEOUT).expect("GET")
    }

    /// POST `body` to `path` with extra `headers`.
    pub fn post_raw(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        send(&self.address, "POST", path, headers, body, TIMEOUT).expect("POST")
    }

    /// POST JSON; the status and the JSON answer.
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.post_raw(path, &[], body.to_string().as_bytes());
        let status = r.status;
        let text = r.text().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A streamed request's events' JSON, up to `[DONE]` (which must come).
    pub fn stream(&self, path: &str, body: &Value) -> Vec<Value> {
        let mut r = self.post_raw(path, &[], body.to_string().as_bytes());
        assert_eq!(r.status, 200);
        let mut out = Vec::new();
        while let Some(data) = r.next_event().unwrap() {
            if data == "[DONE]" {
                return out;
            }
            out.push(serde_json::from_str(&data).unwrap());
        }
        panic!("the stream ended without [DONE]: {out:?}");
    }

    /// A metric's value from /metrics.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").text().unwrap();
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let status = self.terminate();
        std::mem::forget(self);
        status
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > TIMEOUT {
                let _ = self.child.kill();
                panic!("mla serve did not stop: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The streamed text of choice `index` (completions' `text`, chat's `delta.content`).
pub fn streamed_text(events: &[Value], index: usize) -> String {
    events
        .iter()
        .flat_map(|e| e["choices"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["index"] == index)
        .map(|c| {
            c["text"]
                .as_str()
                .or(c["delta"]["content"].as_str())
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

/// `command` run to its end; its stdout. Fails the test, with its stderr, if it did not succeed.
pub fn mla_ok(command: &mut Command) -> Vec<u8> {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `mla generate --prompts` over `lines` with `args`: each output line's text, in order.
pub fn offline(model: &Path, lines: &[Value], args: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&input, text.join("\n")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_mla"));
    command
        .args(["generate", "--model", model.to_str().unwrap(), "--prompts"])
        .args([
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ])
        .args(args);
    mla_ok(&mut command);
    std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// The shipped MLA demo model.
pub fn demo_model() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo-mla")
}

/// The demo model with a chat template in its tokenizer_config.json (it ships none).
pub fn chat_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(demo_model()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let path = dir.path().join("tokenizer_config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["chat_template"] = Value::String(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:".into(),
    );
    std::fs::write(&path, config.to_string()).unwrap();
    dir
}

//! `mla serve` under faults and load: every bad input gets its status and an OpenAI error
//! object naming the problem; a full queue answers 429 with Retry-After; a client that goes
//! away frees its blocks; SIGTERM lets running requests finish and exits 0.

mod serve_support;

use serde_json::{json, Value};
use serve_support::{demo_model, Server};
use std::time::{Duration, Instant};

fn error_of(server: &Server, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
    let r = server.post_raw(path, headers, body);
    let status = r.status;
    let v: Value = serde_json::from_str(&r.text().unwrap()).unwrap();
    let e = &v["error"];
    assert!(e["message"].is_string() && e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    (status, v)
}

#[test]
fn bad_requests_get_their_status_and_an_error_that_names_the_problem() {
    let model = demo_model();
    let server = Server::start(&[
        "--model",
        model.to_str().unwrap(),
        "--api-key",
        "sekret",
        "--max-body-bytes",
        "2000",
    ]);
    let key = [("Authorization", "Bearer sekret")];
    let cases: Vec<(&[u8], u16, &str)> = vec![
        (b"{\"prompt\": \"x\",", 400, "malformed JSON"),
        (
            b"{\"prompt\": \"x\", \"temperature\": \"hot\"}",
            400,
            "expected f32",
        ),
        (
            b"{\"prompt\": \"x\", \"temperature\": 3}",
            400,
            "temperature",
        ),
        (b"{\"prompt\": \"x\", \"top_p\": 0}", 400, "top_p"),
        (b"{\"prompt\": \"x\", \"n\": 0}", 400, "`n`"),
        (b"{\"prompt\": \"x\", \"max_tokens\": 0}", 400, "max_tokens"),
        (b"{\"prompt\": \"x\", \"logprobs\": 21}", 400, "logprobs"),
        (
            b"{\"prompt\": \"x\", \"presence_penalty\": 5}",
            400,
            "presence_penalty",
        ),
        (b"{\"prompt\": [1, 99999]}", 400, "99999"),
        (
            b"{\"prompt\": \"x\", \"max_tokens\": 100000}",
            400,
            "maximum context length",
        ),
        (b"{\"prompt\": \"x\", \"model\": \"gpt-4\"}", 404, "gpt-4"),
        (b"{\"prompt\": []}", 400, "empty"),
    ];
    for (body, status, needle) in cases {
        let (got, v) = error_of(&server, "/v1/completions", &key, body);
        assert_eq!(got, status, "{}: {v}", String::from_utf8_lossy(body));
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{needle}: {v}"
        );
    }
    // A prompt longer than the context.
    let long = json!({"prompt": vec![5; 600]}).to_string();
    let (status, v) = error_of(&server, "/v1/completions", &key, long.as_bytes());
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("prompt")),
        "{v}"
    );
    // Over the body limit; no or a wrong key.
    let big = json!({"prompt": "a".repeat(3000)}).to_string();
    let (status, v) = error_of(&server, "/v1/completions", &key, big.as_bytes());
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (413, Some("request_too_large"))
    );
    let ok = br#"{"prompt": "It is", "max_tokens": 2}"#;
    for headers in [&[][..], &[("Authorization", "Bearer nope")][..]] {
        let (status, v) = error_of(&server, "/v1/completions", headers, ok);
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (401, Some("invalid_api_key"))
        );
    }
    assert_eq!(server.post_raw("/v1/completions", &key, ok).status, 200);
    // An endpoint this server does not have.
    let (status, v) = error_of(&server, "/v1/embeddings", &key, ok);
    assert_eq!(status, 404, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/v1/embeddings"));
    // Health and metrics need no key.
    assert_eq!(server.get("/health").status, 200);
    assert_eq!(server.get("/metrics").status, 200);
}

#[test]
fn a_full_queue_answers_429_and_a_gone_client_frees_its_blocks() {
    let server = Server::start(&[
        "--model",
        demo_model().to_str().unwrap(),
        "--max-num-seqs",
        "1",
        "--max-waiting",
        "1",
    ]);
    let long = json!({"prompt": "It is", "max_tokens": 400, "ignore_eos": true, "stream": true});
    // The first runs (its stream is open, its first token read), the second waits.
    let mut first = server.post_raw("/v1/completions", &[], long.to_string().as_bytes());
    assert_eq!(first.status, 200);
    assert!(first.next_event().unwrap().is_some());
    let waiting = std::thread::scope(|scope| {
        let second = scope.spawn(|| {
            server.post(
                "/v1/completions",
                &json!({"prompt": "Emma", "max_tokens": 2}),
            )
        });
        let start = Instant::now();
        while server.metric("mla:num_requests_waiting") < 1.0 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no request waiting"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let third = server.post_raw(
            "/v1/completions",
            &[],
            br#"{"prompt": "x", "max_tokens": 2}"#,
        );
        let retry = third.header("retry-after").map(str::to_string);
        let status = third.status;
        let v: Value = serde_json::from_str(&third.text().unwrap()).unwrap();
        assert_eq!((status, retry.as_deref()), (429, Some("1")), "{v}");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        // The first client goes away mid-stream: its request is aborted and the second runs.
        drop(first);
        second.join().unwrap()
    });
    assert_eq!(waiting.0, 200, "{}", waiting.1);
    let start = Instant::now();
    while server.metric("mla:kv_cache_usage_perc") > 0.0
        || server.metric("mla:num_requests_running") > 0.0
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "blocks still in use"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.metric("mla:request_aborted_total"), 1.0);
    // Every block back in the pool; each request the engine took (the gone stream, the one that
    // waited; not the one refused with 429) ended once.
    assert_eq!(server.metric("mla:kv_cache_blocks_used"), 0.0);
    assert!(server.metric("mla:kv_cache_blocks_total") > 0.0);
    assert_eq!(server.metric("mla:request_accepted_total"), 2.0);
}

#[test]
fn sigterm_finishes_running_requests_and_exits_0() {
    let server = Server::start(&["--model", demo_model().to_str().unwrap()]);
    let body = json!({"prompt": "It is", "max_tokens": 200, "ignore_eos": true, "stream": true});
    let mut r = server.post_raw("/v1/completions", &[], body.to_string().as_bytes());
    assert!(r.next_event().unwrap().is_some());
    let reader = std::thread::spawn(move || {
        let (mut events, mut done) = (1, false);
        while let Some(data) = r.next_event().unwrap() {
            done |= data == "[DONE]";
            events += 1;
        }
        (events, done)
    });
    let status = server.stop();
    let (events, done) = reader.join().unwrap();
    assert!(done && events > 100, "{events} events, done {done}");
    assert_eq!(status.code(), Some(0));
}

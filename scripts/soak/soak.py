"""Soak test of a running `mla serve` (Python 3.11 standard library only): N requests of random
prompt lengths, lengths and sampling parameters from a few concurrent clients, about a tenth of
them abandoned part-way (the socket closed after a random number of streamed chunks, or before
the response). Exits non-zero if any invariant fails:

- every request either completes once, well formed (each choice one finish reason, `[DONE]`
  last on streams, no error), or was abandoned by this client;
- the server's counters agree: every request (choice) the engine accepted ended exactly once
  (accepted = succeeded + aborted), it accepted every request the client saw started and none
  it never sent, and it finished at least the ones the client saw complete;
- afterwards nothing runs or waits and no cache block is held (`mla:kv_cache_blocks_used` 0);
- the cache was small enough to preempt (`mla:num_preemptions_total` > 0);
- the server's resident memory (VmRSS of --pid, the peak sampled within each window of
  --rss-window requests) grows by less than --max-rss-growth from the 2nd window to the last.

    python3 scripts/soak/soak.py --url http://127.0.0.1:8000 --pid PID [--requests 10000]
"""

import argparse
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse

WORDS = (
    "it is a truth universally acknowledged that single man in possession of good fortune must "
    "be want wife however little known the feelings or views such may on his first entering "
    "neighbourhood this so well fixed minds surrounding families he considered rightful property "
    "some one other their daughters Emma Woodhouse handsome clever and rich with comfortable "
    "home happy disposition seemed to unite best blessings existence had lived nearly twenty "
    "years world very distress vex her Elizabeth Darcy Bennet Jane Bingley Netherfield Pemberley"
).split()
STOPS = ["\n", ".", " the", ",", " and", "!"]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--pid", type=int, required=True, help="the server's process id (for VmRSS)")
    p.add_argument("--requests", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=12)
    p.add_argument("--abort-fraction", type=float, default=0.1)
    p.add_argument("--max-prompt-words", type=int, default=96)
    p.add_argument("--max-tokens", type=int, default=64, help="the largest max_tokens asked")
    p.add_argument("--chat", action="store_true", help="mix in chats (the model has a template)")
    p.add_argument("--rss-window", type=int, help="requests per RSS window (default: a tenth)")
    p.add_argument("--max-rss-growth", type=float, default=0.05)
    p.add_argument("--timeout", type=float, default=300, help="seconds one request may take")
    p.add_argument("--seed", type=int, default=1, help="the request mix's seed")
    p.add_argument("--summary-json", help="also write the summary here")
    args = p.parse_args(argv)
    args.rss_window = args.rss_window or max(1, args.requests // 10)
    return args


def make_request(rng, args, token_pool):
    """One random request: (path, body, plan), plan saying how the client will treat it."""
    chat = args.chat and rng.random() < 0.25
    words = rng.randint(1, args.max_prompt_words)
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    body = {"max_tokens": rng.choice([1, 2, rng.randint(1, args.max_tokens), args.max_tokens])}
    if chat:
        body["messages"] = [{"role": "user", "content": text}]
    elif rng.random() < 0.3:
        body["prompt"] = [rng.choice(token_pool) for _ in range(words)]
    else:
        body["prompt"] = text
    body["temperature"] = rng.choice([0.0, 0.0, 0.5, 0.8, 1.0, 1.3, 2.0])
    if rng.random() < 0.3:
        body["top_p"] = round(rng.uniform(0.05, 1.0), 3)
    if rng.random() < 0.3:
        body["top_k"] = rng.choice([-1, 0, 1, 2, 5, 40])
    if rng.random() < 0.1:
        body["min_p"] = round(rng.uniform(0.0, 0.5), 3)
    if rng.random() < 0.7:
        body["seed"] = rng.randrange(1 << 63)
    if rng.random() < 0.1:
        body[rng.choice(["presence_penalty", "frequency_penalty"])] = round(rng.uniform(-2, 2), 2)
    if rng.random() < 0.1:
        body["repetition_penalty"] = round(rng.uniform(0.5, 2.0), 2)
    stops = []
    if rng.random() < 0.3:
        stops = rng.sample(STOPS, rng.randint(1, 2))
        body["stop"] = stops if len(stops) > 1 or rng.random() < 0.5 else stops[0]
    elif rng.random() < 0.2:
        body["min_tokens"] = rng.randint(0, body["max_tokens"])
    if rng.random() < 0.3:
        body["ignore_eos"] = True
    if rng.random() < 0.05:
        body["n"] = 2
    if not chat and rng.random() < 0.1:
        body["logprobs"] = rng.randint(0, 3)
    elif chat and rng.random() < 0.1:
        body["logprobs"] = True
        body["top_logprobs"] = rng.randint(0, 3)
    if not chat and "logprobs" not in body and rng.random() < 0.05:
        body["echo"] = True  # the server has no log-probabilities of prompts
    stream = rng.random() < 0.5
    if stream:
        body["stream"] = True
        if rng.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
    # Abandoned: a stream after `chunks` chunks (0: once its headers came), or any request a
    # moment after it was sent, before reading its answer (`chunks` None).
    abandon = None
    if rng.random() < args.abort_fraction:
        if stream and rng.random() < 0.8:
            abandon = {"chunks": rng.randint(0, max(0, body["max_tokens"] // 2))}
        else:
            abandon = {"chunks": None, "after": rng.uniform(0.0, 0.05)}
    path = "/v1/chat/completions" if chat else "/v1/completions"
    return path, body, {"chat": chat, "stream": stream, "stops": stops, "abandon": abandon}


class Stats:
    """What the clients saw, under one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.done = 0  # requests whose handling ended, however
        self.completed = 0  # requests completed and valid
        self.completed_choices = 0
        self.abandoned_started = 0  # streams abandoned after their headers (choices)
        self.abandoned_early = 0  # requests abandoned before any answer (choices)
        self.abandoned_requests = 0
        self.completed_anyway = 0  # streams marked to abandon that ended first
        self.finish_reasons = {}
        self.output_tokens = 0
        self.violations = []

    def violation(self, index, what):
        with self.lock:
            self.violations.append(f"request {index}: {what}")


def finish_of(choice):
    return choice.get("finish_reason")


def check_whole(index, answer, body, plan, stats):
    """A whole (non-streamed) answer: n choices, each once, each with a finish reason."""
    n = body.get("n", 1)
    choices = answer.get("choices")
    if not isinstance(choices, list) or sorted(c.get("index") for c in choices) != list(range(n)):
        return stats.violation(index, f"choices are not 0..{n - 1} once each: {answer}")
    for c in choices:
        if finish_of(c) not in ("stop", "length"):
            return stats.violation(index, f"choice without a finish reason: {c}")
        text = c["message"]["content"] if plan["chat"] else c["text"]
        if not isinstance(text, str):
            return stats.violation(index, f"choice without text: {c}")
        check_stops(index, text, body, plan, stats)
    usage = answer.get("usage") or {}
    tokens = usage.get("completion_tokens", -1)
    if not 0 <= tokens <= n * body["max_tokens"]:
        return stats.violation(index, f"usage {usage} for max_tokens {body['max_tokens']}, n {n}")
    if all(finish_of(c) == "length" for c in choices) and tokens != n * body["max_tokens"]:
        return stats.violation(index, f"finished by length after {tokens} tokens: {answer}")
    record(stats, [finish_of(c) for c in choices], tokens)


def check_stops(index, text, body, plan, stats):
    """No stop string in a choice's own text (an echoed prompt may hold one)."""
    if body.get("echo"):
        return
    for s in plan["stops"]:
        if s in text:
            stats.violation(index, f"stop string {s!r} in the output {text!r}")


def record(stats, reasons, tokens):
    with stats.lock:
        stats.completed += 1
        stats.completed_choices += len(reasons)
        stats.output_tokens += tokens
        for r in reasons:
            stats.finish_reasons[r] = stats.finish_reasons.get(r, 0) + 1


def read_events(response):
    """The data of each server-sent event, as it arrives."""
    data = None
    while True:
        line = response.readline()
        if not line:
            if data is not None:
                yield data
            return
        line = line.decode().rstrip("\r\n")
        if not line:
            if data is not None:
                yield data
                data = None
        elif line.startswith("data:"):
            d = line[5:].removeprefix(" ")
            data = d if data is None else data + "\n" + d


def run_stream(index, response, body, plan, stats):
    """Reads a stream to `[DONE]` (or abandons it); True if it was abandoned."""
    n = body.get("n", 1)
    texts, finishes, usage, done = [""] * n, [[] for _ in range(n)], None, False
    stop_after = plan["abandon"]["chunks"] if plan["abandon"] else None
    for chunks, data in enumerate(read_events(response)):
        if stop_after is not None and chunks >= stop_after:
            return True
        if done:
            return stats.violation(index, f"an event after [DONE]: {data}")
        if data == "[DONE]":
            done = True
            continue
        event = json.loads(data)
        if "error" in event:
            return stats.violation(index, f"error in the stream: {event}")
        if event.get("usage"):
            usage = event["usage"]
        for c in event.get("choices", []):
            i = c["index"]
            texts[i] += (c.get("delta", {}).get("content") or "") if plan["chat"] else c["text"]
            if finish_of(c) is not None:
                finishes[i].append(finish_of(c))
    if not done:
        return stats.violation(index, "the stream ended without [DONE]")
    if any(len(f) != 1 or f[0] not in ("stop", "length") for f in finishes):
        return stats.violation(index, f"finish reasons per choice {finishes}")
    for t in texts:
        check_stops(index, t, body, plan, stats)
    tokens = 0
    if body.get("stream_options", {}).get("include_usage"):
        tokens = (usage or {}).get("completion_tokens", -1)
        if not 0 <= tokens <= n * body["max_tokens"]:
            return stats.violation(index, f"usage {usage} for max_tokens {body['max_tokens']}")
    if plan["abandon"]:
        with stats.lock:
            stats.completed_anyway += 1
    record(stats, [f[0] for f in finishes], tokens)
    return False


def one_request(index, host, port, args, token_pool, stats):
    rng = random.Random(args.seed * 1_000_003 + index)
    path, body, plan = make_request(rng, args, token_pool)
    n = body.get("n", 1)
    conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        abandon = plan["abandon"]
        if abandon and abandon["chunks"] is None:
            time.sleep(abandon["after"])
            conn.close()
            with stats.lock:
                stats.abandoned_early += n
                stats.abandoned_requests += 1
            return
        response = conn.getresponse()
        if response.status != 200:
            return stats.violation(index, f"status {response.status}: {response.read()[:300]!r}")
        if plan["stream"]:
            if run_stream(index, response, body, plan, stats):
                conn.close()
                with stats.lock:
                    stats.abandoned_started += n
                    stats.abandoned_requests += 1
        else:
            check_whole(index, json.loads(response.read()), body, plan, stats)
    except Exception as e:  # a hung, refused or malformed request is a violation, not a crash
        stats.violation(index, f"{type(e).__name__}: {e}")
    finally:
        conn.close()
        with stats.lock:
            stats.done += 1


def get(host, port, path, body=None):
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        if body is None:
            conn.request("GET", path)
        else:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def metrics(host, port):
    """/metrics as {name (with labels): value}."""
    status, text = get(host, port, "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def sample_rss(args, stats, peaks, stop):
    """The peak VmRSS of each window of --rss-window finished requests, every 0.1 s."""
    while not stop.is_set():
        with stats.lock:
            window = min(stats.done, args.requests - 1) // args.rss_window
        try:
            kib = rss_kib(args.pid)
        except (OSError, RuntimeError):
            return  # the server is gone: the requests report it
        peaks[window] = max(peaks.get(window, 0), kib)
        stop.wait(0.1)


def settle(host, port, timeout=60.0):
    """The metrics once nothing runs, waits or holds a block, and the counters stand still."""
    start, last = time.monotonic(), None
    while True:
        m = metrics(host, port)
        key = tuple(
            m.get(k)
            for k in (
                "mla:request_accepted_total",
                'mla:request_success_total{finished_reason="stop"}',
                'mla:request_success_total{finished_reason="length"}',
                "mla:request_aborted_total",
            )
        )
        idle = (
            m["mla:num_requests_running"] == 0
            and m["mla:num_requests_waiting"] == 0
            and m["mla:kv_cache_blocks_used"] == 0
        )
        if idle and key == last:
            return m, True
        if time.monotonic() - start > timeout:
            return m, False
        last = key if idle else None
        time.sleep(0.5)


def server_checks(m, settled, stats, sent_choices):
    """The server's counters against what the clients saw."""
    v = []
    accepted = m["mla:request_accepted_total"]
    success = sum(
        m.get(f'mla:request_success_total{{finished_reason="{r}"}}', 0) for r in ("stop", "length")
    )
    aborted = m["mla:request_aborted_total"]
    if not settled:
        v.append(
            f"the server did not settle: running {m['mla:num_requests_running']}, waiting "
            f"{m['mla:num_requests_waiting']}, blocks used {m['mla:kv_cache_blocks_used']}"
        )
    if accepted != success + aborted:
        v.append(f"accepted {accepted} != succeeded {success} + aborted {aborted}")
    seen = stats.completed_choices + stats.abandoned_started
    if not seen <= accepted <= seen + stats.abandoned_early:
        v.append(
            f"accepted {accepted} outside [{seen}, {seen + stats.abandoned_early}] (completed "
            f"{stats.completed_choices}, abandoned {stats.abandoned_started} started and "
            f"{stats.abandoned_early} early)"
        )
    if accepted > sent_choices:
        v.append(f"accepted {accepted} of {sent_choices} choices sent")
    if success < stats.completed_choices:
        v.append(f"succeeded {success} < {stats.completed_choices} completed by the clients")
    if m["mla:kv_cache_blocks_used"] != 0:
        v.append(f"{m['mla:kv_cache_blocks_used']} cache blocks still held")
    if m["mla:num_preemptions_total"] == 0:
        v.append("no preemption: the cache is too large for this soak")
    return v, accepted, success, aborted


def main(argv):
    args = parse_args(argv)
    url = urllib.parse.urlsplit(args.url)
    host, port = url.hostname, url.port or 80
    status, text = get(host, port, "/tokenize", {"prompt": " ".join(WORDS)})
    if status != 200:
        sys.exit(f"soak: /tokenize answered {status}: {text}")
    token_pool = sorted(set(json.loads(text)["tokens"]))
    sent_choices = sum(
        make_request(random.Random(args.seed * 1_000_003 + i), args, token_pool)[1].get("n", 1)
        for i in range(args.requests)
    )
    stats, peaks, stop = Stats(), {}, threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(args, stats, peaks, stop), daemon=True)
    sampler.start()
    next_index, index_lock = [0], threading.Lock()

    def worker():
        while True:
            with index_lock:
                i = next_index[0]
                if i >= args.requests:
                    return
                next_index[0] += 1
            one_request(i, host, port, args, token_pool, stats)

    start = time.monotonic()

    def progress():
        while not stop.is_set():
            stop.wait(10)
            with stats.lock:
                done, bad = stats.done, len(stats.violations)
            print(f"soak: {done}/{args.requests} done, {bad} violations, "
                  f"{time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)

    threading.Thread(target=progress, daemon=True).start()
    workers = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.monotonic() - start
    stop.set()
    sampler.join()
    m, settled = settle(host, port)
    violations = list(stats.violations)
    server_v, accepted, success, aborted = server_checks(m, settled, stats, sent_choices)
    violations += server_v
    windows = sorted(peaks)
    growth, first, last = None, None, None
    if len(windows) >= 3 and windows[1] == 1:
        first, last = peaks[1], peaks[windows[-1]]
        growth = (last - first) / first
        if growth >= args.max_rss_growth:
            violations.append(
                f"VmRSS grew {growth:.1%} from window 2 ({first} KiB) to the last ({last} KiB)"
            )
    else:
        violations.append(f"RSS sampled in windows {windows}: fewer than 3 windows to compare")
    summary = {
        "requests": args.requests,
        "choices_sent": sent_choices,
        "completed": stats.completed,
        "completed_choices": stats.completed_choices,
        "abandoned": stats.abandoned_requests,
        "abandoned_choices_after_headers": stats.abandoned_started,
        "abandoned_choices_before_answer": stats.abandoned_early,
        "completed_though_marked_to_abandon": stats.completed_anyway,
        "finish_reasons": stats.finish_reasons,
        "server_accepted": accepted,
        "server_succeeded": success,
        "server_aborted": aborted,
        "preemptions": m["mla:num_preemptions_total"],
        "kv_cache_blocks_total": m["mla:kv_cache_blocks_total"],
        "kv_cache_blocks_used_after": m["mla:kv_cache_blocks_used"],
        "generation_tokens": m["mla:generation_tokens_total"],
        "rss_window_peaks_kib": [peaks[w] for w in windows],
        "rss_window_2_kib": first,
        "rss_last_window_kib": last,
        "rss_growth": growth,
        "wall_s": round(wall, 1),
        "requests_per_s": round(args.requests / wall, 2),
        "violations": len(violations),
    }
    for v in violations[:50]:
        print(f"soak: VIOLATION {v}", file=sys.stderr)
    if len(violations) > 50:
        print(f"soak: ... and {len(violations) - 50} more", file=sys.stderr)
    print(json.dumps(summary, indent=1))
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary, f, indent=1)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

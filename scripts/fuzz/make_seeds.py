#!/usr/bin/env python3
"""Writes the committed seed corpus of the fuzz targets (fuzz/seeds/<target>/): small valid
inputs of every kind each parser takes (files named ok-*: their body must return Ok) and a few
invalid ones (err-*: it must return an error). tests/fuzz_replay.rs checks both. Run from the
repository root; the output is the same every time."""

import json
import os
import shutil
import struct

ROOT = "fuzz/seeds"


def put(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(ROOT, target, name), "wb") as f:
        f.write(data)


def safetensors(tensors, metadata=None):
    """tensors: (name, dtype, shape, raw bytes) in order; returns the file's bytes."""
    header, offset, blob = {}, 0, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blob += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob


def f32(*v):
    return struct.pack("<%df" % len(v), *v)


def half(n):
    return bytes(range(2 * n))


def prefixed(b):
    return struct.pack("<H", len(b)) + b


def seeds_safetensors():
    t = "safetensors"
    one = safetensors(
        [("embed.weight", "F32", [2, 3], f32(1, 2, 3, 4, 5, 6)),
         ("norm.weight", "BF16", [4], half(4)),
         ("proj.weight", "F16", [2, 2], half(4))],
        {"format": "pt"},
    )
    put(t, "ok-single", b"\x00" + one)
    put(t, "ok-empty-tensor", b"\x00" + safetensors([("e", "F32", [0, 5], b"")]))
    put(t, "ok-scalar", b"\x00" + safetensors([("s", "F32", [], f32(7))]))
    put(t, "ok-unsupported-dtype", b"\x00" + safetensors([("i", "I64", [1], bytes(8)), ("f", "F32", [1], f32(1))]))
    a = safetensors([("a.weight", "F32", [2], f32(1, 2))])
    b = safetensors([("b.weight", "BF16", [3], half(3)), ("c.weight", "F16", [1], half(1))])
    index = json.dumps({
        "metadata": {"total_size": 18},
        "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                       "b.weight": "model-00002-of-00002.safetensors",
                       "c.weight": "model-00002-of-00002.safetensors"},
    }).encode()
    put(t, "ok-sharded", b"\x01" + prefixed(index) + prefixed(a) + b)
    bad_index = json.dumps({"weight_map": {"a.weight": "../model-00001-of-00002.safetensors"}}).encode()
    put(t, "err-escaping-shard", b"\x01" + prefixed(bad_index) + prefixed(a) + b)
    put(t, "err-truncated", b"\x00" + one[:-3])
    put(t, "err-header-past-end", b"\x00" + struct.pack("<Q", 1 << 40) + b"{}")


def seeds_config():
    t = "config_json"
    dirs = sorted(os.listdir("tests/fixtures"))
    for d in dirs:
        with open(os.path.join("tests/fixtures", d, "config.json"), "rb") as f:
            put(t, "ok-fixture-" + d, f.read())
    for d in ("demo-mla", "demo-mha"):
        with open(os.path.join("models", d, "config.json"), "rb") as f:
            put(t, "ok-" + d, f.read())
    # Every dimension at its limit (config/json_keys.rs: dim_limit), experts at u64's.
    with open("tests/fixtures/llama-gqa/config.json") as f:
        c = json.load(f)
    c.update(hidden_size=1 << 20, intermediate_size=1 << 20, vocab_size=1 << 20, head_dim=1 << 20,
             num_hidden_layers=1024, num_attention_heads=4096, num_key_value_heads=4096)
    put(t, "ok-limits-llama", json.dumps(c))
    with open("tests/fixtures/v3/config.json") as f:
        c = json.load(f)
    c.update(hidden_size=1 << 20, num_hidden_layers=1024, first_k_dense_replace=0,
             moe_intermediate_size=1 << 20, n_routed_experts=1 << 20, n_group=1, topk_group=1,
             n_shared_experts=1 << 20, num_experts_per_tok=1 << 20)
    put(t, "ok-limits-deepseek", json.dumps(c))
    put(t, "err-not-object", "[1, 2]")
    put(t, "err-unknown-type", '{"model_type": "gpt2"}')
    put(t, "err-bad-type", '{"model_type": "llama", "hidden_size": "48"}')


TEMPLATES = {
    # DeepSeek-V2-Chat's style (as tests/batch_cli.rs uses it).
    "deepseek": "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}{{ message['content'] + '\n\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}",
    # ChatML (Qwen2).
    "chatml": "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    # Llama 3.
    "llama3": "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    # Mistral: alternation enforced with raise_exception, Python string methods.
    "mistral": "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'].strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% endif %}{% endfor %}",
    # Filters, macros, namespaces, slicing.
    "features": "{%- macro fmt(m) -%}{{ m.role | upper }}={{ m.content | replace('a', 'b') | length }}{%- endmacro -%}{% set ns = namespace(n=0) %}{% for m in messages[1:] %}{% set ns.n = ns.n + 1 %}{{ fmt(m) }}{% if not loop.last %}|{% endif %}{% endfor %}{{ ns.n }}{{ messages | map(attribute='role') | join(',') }}{{ '%d' | format(3) }}{{ 'x'.startswith('x') }}{{ [1, 2][-1] }}{{ {'a': 1}.get('a') }}",
}


def seeds_chat():
    t = "chat_template"
    for name, source in TEMPLATES.items():
        kind = "err" if name == "mistral" else "ok"  # mistral refuses a system message
        put(t, kind + "-raw-" + name, source)
        put(t, kind + "-config-" + name, json.dumps({
            "bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>",
            "add_bos_token": True, "chat_template": source}))
    put(t, "ok-config-named-list", json.dumps({
        "bos_token": "<s>", "chat_template": [
            {"name": "tool_use", "template": "{{ tools }}"},
            {"name": "default", "template": TEMPLATES["chatml"]}]}))
    put(t, "err-config-no-template", '{"bos_token": "<s>"}')
    put(t, "err-raw-syntax", "{% for m in messages %}{{ m.content }")
    put(t, "err-raw-raise", "{{ raise_exception('no system role') }}")
    # What the fuzzer found: minijinja's `format` filter panicked on a key holding a character
    # of more than one byte (tests/fuzz_replay.rs: a_template_engine_panic_is_the_templates_error).
    put(t, "err-raw-format-key-multibyte", b"ms.co)elsd }}{{ '%(add_generation_\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xffprompt' | format(3) }}bugor\x9c\x90n\x04\x84\xdf\x92 }")
    # Single steps that would build a huge value, refused by src/template_limits.rs.
    put(t, "err-raw-huge-list-printed", "{{ 444444444444 * [1] }}")
    put(t, "err-raw-huge-format-width", "{{ '%99999999999s' | format(3) }}")
    put(t, "err-raw-chained-joins", "{{ messages | map(attribute='content') | join('x' * 5000) | join('y' * 5000) }}")


def seeds_request_line():
    t = "request_line"
    put(t, "ok-prompt", '{"id": 1, "prompt": "It is a truth"}')
    put(t, "ok-overrides", '{"id": "a", "prompt": "x", "max_tokens": 8, "temperature": 0.7, "top_k": 40, '
        '"top_p": 0.9, "seed": 3, "min_p": 0.05, "presence_penalty": 0.5, "frequency_penalty": -0.5, '
        '"repetition_penalty": 1.1, "min_tokens": 2, "logprobs": 5, "stop": ["\\n", "."], "ignore_eos": true}')
    put(t, "ok-messages", '{"id": [1, {"k": null}], "messages": [{"role": "system", "content": "Be brief."}, '
        '{"role": "user", "content": "Hi"}], "stop": "User:"}')
    put(t, "ok-lines", b'\xef\xbb\xbf{"id": 1, "prompt": "a"}\r\n\n{"id": 2, "prompt": "b", "top_p": 2}\n\xff\n')
    put(t, "err-array", "[1, 2]")
    put(t, "err-both", '{"id": 1, "prompt": "x", "messages": []}')
    put(t, "err-stop", '{"id": 1, "prompt": "x", "stop": [""]}')
    put(t, "err-unknown-key", '{"id": 1, "prompt": "x", "colour": 1}')


def seeds_openai():
    t = "openai_body"
    put(t, "ok-completion-text", '{"model": "stand-in", "prompt": "Hello", "max_tokens": 8, "temperature": 0.8, '
        '"top_p": 0.95, "top_k": 40, "min_p": 0.1, "seed": 7, "stop": ["\\n"], "n": 2, "stream": true, '
        '"stream_options": {"include_usage": true}, "presence_penalty": 0.1, "frequency_penalty": 0.2, '
        '"repetition_penalty": 1.05, "ignore_eos": false, "min_tokens": 1, "logprobs": 3}')
    put(t, "ok-completion-ids", '{"prompt": [1, 2, 3], "echo": true, "max_tokens": 4}')
    put(t, "ok-completion-batch", '{"prompt": [[1, 2], [3]], "n": 3, "stop": "x"}')
    put(t, "ok-completion-texts", '{"prompt": ["a", "bc"], "user": "ignored", "best_of": 1}')
    put(t, "ok-chat", '{"model": "stand-in", "messages": [{"role": "system", "content": "Be brief."}, '
        '{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]}], '
        '"logprobs": true, "top_logprobs": 2, "max_completion_tokens": 16, "temperature": 0}')
    put(t, "ok-tokenize", '{"prompt": "Hello there"}')
    put(t, "ok-detokenize", '{"tokens": [72, 105], "model": "stand-in"}')
    # An err- seed must be refused by every endpoint: prompts as ids, which /tokenize refuses.
    put(t, "err-range", '{"prompt": [1], "temperature": 3, "n": 0, "max_tokens": 0}')
    put(t, "err-image-part", '{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}')
    put(t, "err-too-long", '{"prompt": [1, 2], "max_tokens": 100000}')


if __name__ == "__main__":
    for target in ("safetensors", "config_json", "chat_template", "request_line", "openai_body"):
        shutil.rmtree(os.path.join(ROOT, target), ignore_errors=True)
        os.makedirs(os.path.join(ROOT, target))
    seeds_safetensors()
    seeds_config()
    seeds_chat()
    seeds_request_line()
    seeds_openai()

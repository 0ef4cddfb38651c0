"""The official OpenAI Python client against `mla serve` at sys.argv[1] (the model `austen`,
API key `sekret`): completions and chats, whole and streamed, equal to each other; usage; `n`
and logprobs; the model list; a bad request and a wrong key raising the client's errors. Run by openai-check.sh."""

import sys

import openai
from openai import OpenAI

client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="sekret")
models = [m.id for m in client.models.list()]
assert models == ["austen"], models

done = client.completions.create(model="austen", prompt="It is a truth", max_tokens=12, temperature=0)
text = done.choices[0].text
assert done.choices[0].finish_reason == "length", done
assert done.usage.completion_tokens == 12 and done.usage.total_tokens > 12, done.usage
streamed = "".join(
    chunk.choices[0].text
    for chunk in client.completions.create(
        model="austen", prompt="It is a truth", max_tokens=12, temperature=0, stream=True
    )
    if chunk.choices
)
assert streamed == text, (streamed, text)

messages = [{"role": "user", "content": "Who is Emma?"}]
chat = client.chat.completions.create(model="austen", messages=messages, max_tokens=10, seed=3)
content = chat.choices[0].message.content
assert chat.choices[0].message.role == "assistant" and content, chat
chunks = list(
    client.chat.completions.create(
        model="austen", messages=messages, max_tokens=10, seed=3, stream=True,
        stream_options={"include_usage": True},
    )
)
assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
assert chunks[-1].usage.completion_tokens == 10, chunks[-1]

two = client.completions.create(model="austen", prompt="Emma", max_tokens=8, n=2, seed=1, logprobs=2)
assert [c.index for c in two.choices] == [0, 1] and two.choices[0].text != two.choices[1].text, two
assert all(len(c.logprobs.tokens) == 8 and len(c.logprobs.top_logprobs[0]) == 2 for c in two.choices)
scored = client.chat.completions.create(
    model="austen", messages=messages, max_tokens=4, logprobs=True, top_logprobs=3
)
assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in scored.choices[0].logprobs.content)

try:
    client.completions.create(model="austen", prompt="x", temperature=5)
    raise AssertionError("temperature 5 was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and "temperature" in str(e), e
try:
    OpenAI(base_url=sys.argv[1] + "/v1", api_key="wrong").models.list()
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401, e
print(f"openai {openai.__version__}: completions, chats, streams, choices, logprobs, models and errors as expected")

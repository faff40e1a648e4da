"""Checks `chatglm serve --test-engine` with the official `openai` Python client.

Usage: python openai_client.py BASE_URL

The test engine answers with the last user message, one character per token: the base model
`echo` echoes it, `demo-upper` upper-cases it. A prompt counts one token per character of the
system message, past turns and query, plus 2.
"""

import sys

import openai


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAIL: {what}")
    print(f"ok: {what}")


def main(base):
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)

    ids = [m.id for m in client.models.list()]
    check(ids == ["echo", "demo-upper"], f"models.list -> {ids}")

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "你好, ChatGLM!"},
    ]
    r = client.chat.completions.create(
        model="echo", messages=messages, temperature=0.5, top_p=0.9, max_tokens=64, seed=1
    )
    choice = r.choices[0]
    check(choice.message.role == "assistant", "non-streaming: role assistant")
    check(choice.message.content == "你好, ChatGLM!", f"non-streaming: content {choice.message.content!r}")
    check(choice.finish_reason == "stop", "non-streaming: finish_reason stop")
    prompt = len("Be brief.") + len("Hi") + len("Hello") + len("你好, ChatGLM!") + 2
    check(
        (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens)
        == (prompt, 12, prompt + 12),
        f"non-streaming: usage {r.usage}",
    )

    r = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "abcdef"}], max_tokens=3
    )
    check(
        (r.choices[0].message.content, r.choices[0].finish_reason) == ("abc", "length"),
        "non-streaming: max_tokens gives finish_reason length",
    )

    stream = client.chat.completions.create(
        model="demo-upper",
        messages=[{"role": "user", "content": "stream me, please"}],
        stream=True,
        stop=["PLEASE"],
    )
    roles, text, finish, usage, chunks = [], "", None, None, 0
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            if c.delta.content:
                text += c.delta.content
            if c.finish_reason:
                finish = c.finish_reason
    check(roles == ["assistant"], "streaming: one role delta")
    check(text == "STREAM ME, ", f"streaming: content deltas {text!r} (cut at the stop string)")
    check(chunks > 5, f"streaming: {chunks} chunks")
    check(finish == "stop", "streaming: finish_reason stop")
    check(usage is not None and usage.prompt_tokens == len("stream me, please") + 2, f"streaming: usage {usage}")

    try:
        client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "x"}], temperature=5
        )
        check(False, "temperature 5 is rejected")
    except openai.BadRequestError as e:
        check("temperature" in str(e) and "between 0 and 2" in str(e), f"400 names the field: {e}")
    try:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
        check(False, "unknown model is rejected")
    except openai.NotFoundError as e:
        check("gpt-4" in str(e), "404 for an unknown model")


if __name__ == "__main__":
    main(sys.argv[1].rstrip("/"))

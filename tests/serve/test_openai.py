"""`kiln serve` with the official `openai` Python client.

Run by tests/serve.rs against a server it starts:
    python3 tests/serve/test_openai.py BASE_URL API_KEY MODEL_ID WAT_SAMPLER_PATH

Covers chat and completions (streamed and not), logprobs, n, seed reproducibility,
json_schema and json_object, tool calls (forced, streamed), an uploaded sampler, error cases,
and the invariants peer suites check: at temperature 0 the streamed text equals the
non-streamed text; exactly one chunk carries each choice's finish_reason; with include_usage
the last chunk carries the usage and empty choices; a bad request gets a 4xx and the server
stays healthy.
"""

import json
import sys
import unittest
import urllib.error
import urllib.request

import openai

BASE, KEY, MODEL, WAT = sys.argv[1:5]
del sys.argv[1:5]

client = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=120)
ROOT = BASE.rsplit("/v1", 1)[0]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def http(method, path, body=None, key=KEY, ctype="application/json"):
    """A raw request: (status, parsed JSON or text)."""
    req = urllib.request.Request(ROOT + path, data=body, method=method)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    if body is not None:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            data = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        data = e.read()
        status = e.code
    try:
        return status, json.loads(data)
    except ValueError:
        return status, data.decode("utf-8", "replace")


def collect_chat(stream):
    """Text, finish chunks per choice, usage chunk, tool call deltas of a chat stream."""
    text, finishes, usage, calls, last = {}, {}, None, {}, None
    for chunk in stream:
        last = chunk
        if chunk.usage is not None:
            usage = chunk
        for c in chunk.choices:
            if c.delta.content:
                text[c.index] = text.get(c.index, "") + c.delta.content
            for tc in c.delta.tool_calls or []:
                calls.setdefault(c.index, []).append(tc)
            if c.finish_reason is not None:
                finishes.setdefault(c.index, []).append(c.finish_reason)
    return text, finishes, usage, calls, last


class Models(unittest.TestCase):
    def test_list(self):
        ids = [m.id for m in client.models.list().data]
        self.assertEqual(ids, [MODEL])


class Chat(unittest.TestCase):
    def test_answer_and_usage(self):
        r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24)
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(len(r.choices), 1)
        c = r.choices[0]
        self.assertEqual(c.message.role, "assistant")
        self.assertTrue(c.message.content.strip())
        self.assertIn(c.finish_reason, ("stop", "length"))
        self.assertGreater(r.usage.prompt_tokens, 5)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)

    def test_stream_equals_whole_at_temperature_0(self):
        kw = dict(model=MODEL, messages=QUESTION, temperature=0, max_tokens=32)
        whole = client.chat.completions.create(**kw)
        text, finishes, usage, _, last = collect_chat(
            client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
        )
        self.assertEqual(text[0], whole.choices[0].message.content)
        self.assertEqual(finishes, {0: [whole.choices[0].finish_reason]})
        # The last chunk carries the usage and no choices.
        self.assertIs(last, usage)
        self.assertEqual(last.choices, [])
        self.assertEqual(usage.usage.completion_tokens, whole.usage.completion_tokens)

    def test_max_completion_tokens_is_honoured(self):
        r = client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_completion_tokens=3, temperature=1, seed=5
        )
        self.assertLessEqual(r.usage.completion_tokens, 3)
        if r.usage.completion_tokens == 3:
            self.assertEqual(r.choices[0].finish_reason, "length")

    def test_n_and_seed_reproducibility(self):
        kw = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}],
                  temperature=1.0, max_tokens=16, n=3)
        a = client.chat.completions.create(seed=42, **kw)
        b = client.chat.completions.create(seed=42, **kw)
        c = client.chat.completions.create(seed=43, **kw)
        self.assertEqual([x.index for x in a.choices], [0, 1, 2])
        ta = [x.message.content for x in a.choices]
        self.assertEqual(ta, [x.message.content for x in b.choices])
        self.assertNotEqual(ta, [x.message.content for x in c.choices])
        self.assertGreater(len(set(ta)), 1, "the choices of one request differ")

    def test_streamed_n_has_one_finish_per_choice(self):
        _, finishes, _, _, _ = collect_chat(client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=8, n=2, seed=1, stream=True))
        self.assertEqual(sorted(finishes), [0, 1])
        for f in finishes.values():
            self.assertEqual(len(f), 1)

    def test_logprobs(self):
        r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0,
                                           max_tokens=6, logprobs=True, top_logprobs=3)
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), r.usage.completion_tokens)
        for t in content:
            self.assertLessEqual(t.logprob, 0.0)
            self.assertEqual(len(t.top_logprobs), 3)
            self.assertEqual(t.top_logprobs[0].token, t.token)  # greedy picks the top token
            self.assertEqual(bytes(t.bytes).decode("utf-8", "replace"), t.token)

    def test_stop(self):
        kw = dict(model=MODEL, messages=QUESTION, temperature=0, max_tokens=32)
        whole = client.chat.completions.create(**kw).choices[0].message.content
        self.assertGreater(len(whole), 12, whole)
        stop = whole[8:11]  # a text the greedy answer reaches after a few tokens
        r = client.chat.completions.create(stop=["never-generated", stop], **kw)
        self.assertEqual(r.choices[0].message.content, whole[: whole.index(stop)])
        self.assertEqual(r.choices[0].finish_reason, "stop")

    def test_json_schema(self):
        schema = {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "population": {"type": "integer"},
                "capital": {"type": "boolean"},
            },
            "required": ["city", "population", "capital"],
            "additionalProperties": False,
        }
        r = client.chat.completions.create(
            model=MODEL, temperature=0, max_tokens=64,
            messages=[{"role": "user", "content": "Describe Paris as JSON."}],
            response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}},
        )
        v = json.loads(r.choices[0].message.content)
        self.assertEqual(set(v), {"city", "population", "capital"})
        self.assertIsInstance(v["city"], str)
        self.assertIsInstance(v["population"], int)
        self.assertIsInstance(v["capital"], bool)

    def test_json_object(self):
        r = client.chat.completions.create(
            model=MODEL, temperature=0, max_tokens=48,
            messages=[{"role": "user", "content": "Give me a JSON object with a name."}],
            response_format={"type": "json_object"},
        )
        if r.choices[0].finish_reason == "stop":
            json.loads(r.choices[0].message.content)

    def test_unsupported_schema_keyword_is_named(self):
        with self.assertRaises(openai.BadRequestError) as e:
            client.chat.completions.create(
                model=MODEL, messages=QUESTION,
                response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"oneOf": [{"type": "string"}]}}},
            )
        self.assertIn("oneOf", str(e.exception))

    def test_forced_tool_call(self):
        tools = [{"type": "function", "function": {
            "name": "get_weather", "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                           "required": ["city"]}}}]
        msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
        r = client.chat.completions.create(model=MODEL, messages=msgs, tools=tools, tool_choice="required",
                                           temperature=0, max_tokens=64)
        c = r.choices[0]
        self.assertEqual(c.finish_reason, "tool_calls")
        self.assertEqual(c.message.tool_calls[0].function.name, "get_weather")
        self.assertIn("city", json.loads(c.message.tool_calls[0].function.arguments))
        # Streamed: the call arrives as a tool_calls delta.
        _, finishes, _, calls, _ = collect_chat(client.chat.completions.create(
            model=MODEL, messages=msgs, tools=tools, stream=True, temperature=0, max_tokens=64,
            tool_choice={"type": "function", "function": {"name": "get_weather"}}))
        self.assertEqual(finishes, {0: ["tool_calls"]})
        self.assertEqual(calls[0][0].function.name, "get_weather")
        # The result goes back through the template.
        follow = msgs + [
            {"role": "assistant", "content": None, "tool_calls": [c.message.tool_calls[0].model_dump()]},
            {"role": "tool", "tool_call_id": c.message.tool_calls[0].id, "content": "22 °C and sunny"},
        ]
        r = client.chat.completions.create(model=MODEL, messages=follow, tools=tools, temperature=0, max_tokens=16)
        self.assertIn(r.choices[0].finish_reason, ("stop", "length", "tool_calls"))


class Completions(unittest.TestCase):
    def test_stream_equals_whole(self):
        kw = dict(model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=16)
        whole = client.completions.create(**kw)
        self.assertEqual(whole.object, "text_completion")
        self.assertIn("Paris", whole.choices[0].text)
        text, finishes = "", []
        for chunk in client.completions.create(stream=True, **kw):
            for c in chunk.choices:
                text += c.text
                if c.finish_reason:
                    finishes.append(c.finish_reason)
        self.assertEqual(text, whole.choices[0].text)
        self.assertEqual(finishes, [whole.choices[0].finish_reason])

    def test_default_max_tokens_is_16_and_prompts_can_be_lists(self):
        r = client.completions.create(model=MODEL, prompt=["Once upon a time", "In a hole"], seed=3,
                                      extra_body={"ignore_eos": True})
        self.assertEqual(len(r.choices), 2)
        self.assertEqual(r.usage.completion_tokens, 32)

    def test_logit_bias_and_penalties(self):
        prompt = "The capital of France is"
        status, tok = http("POST", "/tokenize", json.dumps({"content": " Paris"}).encode())
        paris = tok["tokens"][0]
        plain = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=3)
        self.assertTrue(plain.choices[0].text.startswith(" Paris"), plain.choices[0].text)
        biased = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=3,
                                           logit_bias={str(paris): -100})
        self.assertFalse(biased.choices[0].text.startswith(" Paris"), biased.choices[0].text)
        # The greedy continuation repeats itself; a frequency penalty changes it.
        kw = dict(model=MODEL, prompt=prompt, temperature=0, max_tokens=40)
        looping = client.completions.create(**kw).choices[0].text
        penalized = client.completions.create(frequency_penalty=1.5, **kw).choices[0].text
        self.assertNotEqual(looping, penalized)
        repeat = client.completions.create(extra_body={"repetition_penalty": 1.5}, **kw).choices[0].text
        self.assertNotEqual(looping, repeat)
        # Out-of-range values are refused by name.
        for field, value in (("frequency_penalty", 3), ("top_p", 1.5), ("logit_bias", {"x": 1})):
            with self.assertRaises(openai.BadRequestError) as e:
                client.completions.create(model=MODEL, prompt=prompt, **{field: value})
            self.assertIn(field, str(e.exception))

    def test_logprobs(self):
        r = client.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=4, temperature=0, logprobs=2)
        lp = r.choices[0].logprobs
        self.assertEqual(len(lp.tokens), 4)
        self.assertEqual(len(lp.top_logprobs[0]), 2)
        self.assertEqual("".join(lp.tokens), r.choices[0].text)


class Samplers(unittest.TestCase):
    def test_uploaded_sampler_bans_a_token(self):
        with open(WAT, "rb") as f:
            status, up = http("POST", "/v1/samplers", f.read(), ctype="application/wasm")
        self.assertEqual(status, 200, up)
        # Without a key it is refused.
        self.assertEqual(http("POST", "/v1/samplers", b"\0asm", key=None)[0], 401)
        prompt = "The capital of France is"
        free = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4,
                                         extra_body={"sampler": {"name": up["id"], "config": {}}})
        self.assertTrue(free.choices[0].text.startswith(" Paris"), free.choices[0].text)
        # The id of the word it chose, by the model's own tokenizer.
        status, tok = http("POST", "/tokenize", json.dumps({"content": " Paris"}).encode())
        self.assertEqual(status, 200, tok)
        paris = tok["tokens"][0]
        status, back = http("POST", "/detokenize", json.dumps({"tokens": tok["tokens"]}).encode())
        self.assertEqual(back["content"], " Paris")
        banned = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4,
                                           extra_body={"sampler": {"name": up["id"], "config": {"ban": [paris]}}})
        self.assertFalse(banned.choices[0].text.startswith(" Paris"), banned.choices[0].text)
        self.assertTrue(banned.choices[0].text)
        status, listing = http("GET", "/v1/samplers")
        self.assertIn(up["id"], [s["id"] for s in listing["data"]])
        self.assertEqual(http("DELETE", "/v1/samplers/" + up["id"])[0], 200)
        self.assertEqual(http("DELETE", "/v1/samplers/" + up["id"])[0], 404)

    def test_bad_module_is_refused_with_a_clear_error(self):
        status, body = http("POST", "/v1/samplers", b"\0asm\x01\0\0\0garbage", ctype="application/wasm")
        self.assertEqual(status, 400)
        self.assertIn("sampler", body["error"]["message"])


class Errors(unittest.TestCase):
    def test_errors_and_health(self):
        with self.assertRaises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=QUESTION)
        with self.assertRaises(openai.BadRequestError) as e:
            client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=7)
        self.assertEqual(e.exception.body["param"], "temperature")
        with self.assertRaises(openai.BadRequestError) as e:
            client.chat.completions.create(model=MODEL, messages=QUESTION, extra_body={"frobnicate": 1})
        self.assertIn("frobnicate", str(e.exception))
        with self.assertRaises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL, messages=[])
        with self.assertRaises(openai.BadRequestError) as e:
            client.completions.create(model=MODEL, prompt="word " * 1500, max_tokens=10)
        self.assertIn("context", str(e.exception))
        with self.assertRaises(openai.BadRequestError):
            client.completions.create(model=MODEL, prompt="x", echo=True)
        with self.assertRaises(openai.AuthenticationError):
            openai.OpenAI(base_url=BASE, api_key="wrong", max_retries=0).models.list()
        status, body = http("POST", "/v1/chat/completions", b"{not json")
        self.assertEqual(status, 400)
        self.assertEqual(body["error"]["type"], "invalid_request_error")
        status, health = http("GET", "/health", key=None)
        self.assertEqual(status, 200)
        self.assertEqual(health["status"], "ok")
        self.assertEqual(health["slots"]["busy"], 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)

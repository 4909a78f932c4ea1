"""The SDK examples LLMWise shows its users, in one place: the Quickstart (``/docs/``) prints them
and the API reference (``/docs/api/``, the OpenAPI schema's ``x-codeSamples``) shows them on the
SDK-compatible operations. ``tests/gateway/test_api_docs_live.py`` runs them as printed.

Each is plain text with ``{base_url}`` where the server's own URL goes (:func:`sdk_example`).
"""

from __future__ import annotations

from typing import Final

BASE_URL_PLACEHOLDER: Final = "{base_url}"

PYTHON_OPENAI: Final = """\
import os

from openai import OpenAI

client = OpenAI(
    base_url="{base_url}/v1",
    api_key=os.environ["LLMWISE_API_KEY"],
)

completion = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Say hello in French."}],
    max_tokens=100,
)
print(completion.choices[0].message.content)
print(completion.usage.total_tokens, "tokens")
"""

PYTHON_OPENAI_STREAM: Final = """\
import os

from openai import OpenAI

client = OpenAI(base_url="{base_url}/v1", api_key=os.environ["LLMWISE_API_KEY"])

stream = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Write a haiku about the sea."}],
    max_tokens=100,
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
    if chunk.usage:  # the last chunk, sent because of include_usage
        print(f"\\n{chunk.usage.total_tokens} tokens")
"""

PYTHON_ANTHROPIC: Final = """\
import os

from anthropic import Anthropic

client = Anthropic(base_url="{base_url}", api_key=os.environ["LLMWISE_API_KEY"])

message = client.messages.create(
    model="claude-haiku-4.5",
    max_tokens=256,
    messages=[{"role": "user", "content": "Say hello in Italian."}],
)
print(message.content[0].text)

with client.messages.stream(
    model="claude-haiku-4.5",
    max_tokens=256,
    messages=[{"role": "user", "content": "Write a haiku about mountains."}],
) as stream:
    for text in stream.text_stream:
        print(text, end="", flush=True)
print()
"""

NODE_OPENAI: Final = """\
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: "{base_url}/v1",
  apiKey: process.env.LLMWISE_API_KEY,
});

const completion = await client.chat.completions.create({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: "Say hello in Spanish." }],
  max_tokens: 100,
});
console.log(completion.choices[0].message.content);

// Streaming
const stream = await client.chat.completions.create({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: "Write a haiku about rain." }],
  max_tokens: 100,
  stream: true,
  stream_options: { include_usage: true },
});
for await (const chunk of stream) {
  process.stdout.write(chunk.choices[0]?.delta?.content ?? "");
  if (chunk.usage) console.log(`\\n${chunk.usage.total_tokens} tokens`);
}
"""

# Further examples the reference shows (the Quickstart keeps to the ones above).
NODE_ANTHROPIC: Final = """\
import Anthropic from "@anthropic-ai/sdk";

const client = new Anthropic({ baseURL: "{base_url}", apiKey: process.env.LLMWISE_API_KEY });

const message = await client.messages.create({
  model: "claude-haiku-4.5",
  max_tokens: 256,
  messages: [{ role: "user", content: "Say hello in Italian." }],
});
console.log(message.content[0].text);
"""

PYTHON_OPENAI_MODELS: Final = """\
import os

from openai import OpenAI

client = OpenAI(base_url="{base_url}/v1", api_key=os.environ["LLMWISE_API_KEY"])
for model in client.models.list():
    print(model.id, model.owned_by)
"""

NODE_OPENAI_MODELS: Final = """\
import OpenAI from "openai";

const client = new OpenAI({ baseURL: "{base_url}/v1", apiKey: process.env.LLMWISE_API_KEY });
for await (const model of client.models.list()) console.log(model.id, model.owned_by);
"""

# The Quickstart's examples, by the name its page gives each (``data-example``).
QUICKSTART: Final = {
    "python_openai": PYTHON_OPENAI,
    "python_openai_stream": PYTHON_OPENAI_STREAM,
    "python_anthropic": PYTHON_ANTHROPIC,
    "node_openai": NODE_OPENAI,
}


def sdk_example(source: str, *, base_url: str) -> str:
    """``source`` written for the server at ``base_url``."""
    return source.replace(BASE_URL_PLACEHOLDER, base_url)

#!/usr/bin/env python3
"""Chat templates rendered by Python's jinja2 set up as transformers' apply_chat_template sets it
up (trim_blocks, lstrip_blocks, loop controls, its tojson and raise_exception; tools and
documents passed as None), for the engine's renderer to match (tests/chat_templates.rs).

    pip install Jinja2==3.1.6
    python3 tools/chat_template_fixtures.py > tests/fixtures/chat_templates.json

The templates are written for this test: each exercises what a real model's template relies on
(tags on their own lines, indented tags, tojson of nested values, loop controls, namespaces,
Python string methods).
"""

import json
import os

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' filter: json.dumps with these defaults (no HTML escaping, unlike jinja2's).
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


TEMPLATES = {
    # One tag per line, as many chat models write them: without trim_blocks every line would
    # leave a newline behind.
    "tags_on_their_own_lines": """{% for message in messages %}
{% if message['role'] == 'system' %}
{{ '<|system|>\\n' + message['content'] + eos_token }}
{% elif message['role'] == 'user' %}
{{ '<|user|>\\n' + message['content'] + eos_token }}
{% else %}
{{ '<|assistant|>\\n' + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}""",
    # Indented tags: lstrip_blocks removes the indentation before a tag, not before text.
    "indented_tags": """{{ bos_token }}
    {% for m in messages %}
        {% if m.role == 'user' %}
[INST] {{ m.content | trim }} [/INST]
        {% elif m.role == 'assistant' %}
  {{ m.content }}{{ eos_token }}
        {% endif %}
    {% endfor %}
{%- if add_generation_prompt %} answer:{% endif %}""",
    # tojson of strings, numbers, nested maps and lists, with each keyword; loop controls and a
    # namespace; tools and documents are none.
    "tojson_and_loop_controls": """{% set ns = namespace(turns=0) %}
{% for m in messages %}
{% if m.role == 'system' %}{% continue %}{% endif %}
{% set ns.turns = ns.turns + 1 %}
{{ m.role }}: {{ m.content | tojson }}
{% if ns.turns >= 2 %}{% break %}{% endif %}
{% endfor %}
{{ {'name': 'lookup', 'args': [1, 2.5, 3.0, none, true, false], 'meta': {'q': 'é"<&>\\\\', 'n': -7}} | tojson }}
{{ {'b': 1, 'a': [1, {'z': []}], 'e': {}} | tojson(indent=2) }}
{{ {'b': 1, 'a': 'x'} | tojson(sort_keys=true) }}
{{ ['x', 'y', {'k': 'v'}] | tojson(separators=[',', ':']) }}
{{ 'naïve ✓' | tojson(ensure_ascii=true) }}
{{ {10: 'a', 9: 'b', none: 'c', true: 'd', 2.5: 'e'} | tojson }} {{ {10: 'a', 9: 'b'} | tojson(sort_keys=true) }}
{{ [0.00001, 0.0001, 1e16, 1.5e16, 123456789012345678] | tojson }}
{% if tools is none %}no tools{% endif %}
{% if documents is none %} no documents{% endif %}
turns: {{ ns.turns }}""",
    # Python string methods through the pycompat layer, a message-order check that would raise,
    # and whitespace control mixed with trim_blocks.
    "python_string_methods": """{%- if messages[0]['role'] == 'assistant' -%}
{{ raise_exception('Conversations must start with the user or system') }}
{%- endif -%}
{% for m in messages %}
{% set text = m['content'].strip() %}
{% if m['role'] == 'system' %}
### {{ text.upper() }}
{% elif m['role'] == 'user' %}
Q{{ loop.index }}: {{ text.replace('\\n', ' ') }} ({{ text.split() | length }} words{{ ', ends with ?' if text.endswith('?') }})
{% else %}
A{{ loop.index }}: {{ text.title() if text.startswith('yes') else text }}
{% endif %}
{% endfor %}
{% if add_generation_prompt %}A:{% endif %}""",
}

# The templates this project ships, rendered from their files (the test checks the file is unchanged).
SHIPPED = ["assets/chat-templates/vicuna.jinja"]
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

CONVERSATION = [
    {"role": "system", "content": "  Be brief.  "},
    {"role": "user", "content": "What is \"tau\" in speculative decoding?\nExplain <briefly> & clearly?"},
    {"role": "assistant", "content": "yes: tokens committed per step, é ✓"},
    {"role": "user", "content": "And a second question"},
]


def main():
    env = environment()
    cases = []
    templates = dict(TEMPLATES)
    for path in SHIPPED:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            templates[path] = f.read()
    for name, source in templates.items():
        template = env.from_string(source)
        for add_generation_prompt in (True, False):
            text = template.render(
                messages=CONVERSATION,
                add_generation_prompt=add_generation_prompt,
                bos_token="<s>",
                eos_token="</s>",
                tools=None,
                documents=None,
            )
            cases.append(
                {
                    "name": name,
                    "template": source,
                    "add_generation_prompt": add_generation_prompt,
                    "text": text,
                }
            )
    fixture = {
        "made_by": "tools/chat_template_fixtures.py, jinja2 " + jinja2.__version__,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "messages": CONVERSATION,
        "cases": cases,
    }
    print(json.dumps(fixture, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Chat-template test vectors for tests/test_chat_template.c: conversations
rendered by the models' own Jinja chat templates, with transformers' own
renderer (transformers.utils.chat_template_utils.render_jinja_template, what
apply_chat_template runs: jinja2's ImmutableSandboxedEnvironment with
trim_blocks / lstrip_blocks, raise_exception and the bos_token / eos_token /
add_generation_prompt variables). No torch needed.

Templates:
  smollm2   SmolLM2-135M-Instruct's tokenizer.chat_template, read from the
            model's GGUF (--model) with the gguf package (chatml with a
            default system prompt);
  the *.jinja files of tests/data/chat_templates/ (their sources are in the
            README there): Meta-Llama-3-8B-Instruct (llama3),
            Llama-2-13b-chat-hf (llama2), Mixtral-8x7B-Instruct-v0.1
            (mistral), Mistral-7B-Instruct-v0.1 (mistral-v0.1).

Each conversation is rendered with add_generation_prompt false and true.
What Tandem does differently from a plain render, applied here explicitly:
  - BOS: for templates that start the prompt with bos_token the expected
    text is the rendering with that leading bos_token removed (asserted to be
    there): engine/chat_template.h leaves BOS to the tokenizer;
  - roles other than system/user/assistant, and an empty conversation, are
    errors for every template (the templates would render "tool" turns);
  - llama2 and mistral*: a system message anywhere but first, or a
    conversation with no message after the system one, is an error (the
    Llama-2 template would silently drop the former and render nothing for
    the latter);
  - mistral*: these templates raise on a system message; a leading one is
    folded into the first user message as "SYSTEM\\nUSER" (what llama.cpp does)
    and that conversation is rendered by the template;
  - whatever the template raises on (roles not alternating) is an error.

Output: a text file, one record per line (hex: the bytes in hex, "-" when
empty):
  T <name> <family> <hex template>
  C <name> <case> <gen 0|1> <expected hex, or ! for an error> <n> (<role> <hex content>)*
"""
import argparse
import os
import sys

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jinja2  # noqa: E402
from gguf import GGUFReader  # noqa: E402
from transformers.utils.chat_template_utils import render_jinja_template  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "chat_templates")

# name -> (file, family, bos_token, eos_token); smollm2 comes from the GGUF
TEMPLATES = [
    ("llama3", "Meta-Llama-3-8B-Instruct.jinja", "llama3", "<|begin_of_text|>", "<|eot_id|>"),
    ("llama2", "Llama-2-13b-chat-hf.jinja", "llama2", "<s>", "</s>"),
    ("mixtral", "Mixtral-8x7B-Instruct-v0.1.jinja", "mistral", "<s>", "</s>"),
    ("mistral01", "Mistral-7B-Instruct-v0.1.jinja", "mistral-v0.1", "<s>", "</s>"),
]
BOS_FAMILIES = {"llama3", "llama2", "mistral", "mistral-v0.1"}

S, U, A = "system", "user", "assistant"
CASES = [
    ("sys_user", [(S, "You are a helpful assistant."), (U, "Hello! What is 2+2?")]),
    ("multi_turn", [(S, "Be brief."), (U, "Hi"), (A, "Hello, how can I help?"), (U, "Tell me a joke.")]),
    ("multi_turn_ends_assistant", [(U, "Hi"), (A, "Hi there"), (U, "Who are you"), (A, "An assistant.")]),
    ("no_system", [(U, "What is the capital of France?")]),
    ("no_system_multi", [(U, "one"), (A, "two"), (U, "three")]),
    ("unicode", [(S, "Tu es un assistant. 你好 — ñ"), (U, "Ünïcödé ✓ 🙂 日本語\nzweite Zeile"),
                 (A, "Ça va 👍"), (U, "مرحبا")]),
    ("empty_content", [(S, ""), (U, "")]),
    ("empty_user", [(U, ""), (A, ""), (U, "x")]),
    ("whitespace", [(S, "  padded system \n"), (U, "\n\t hello  \n"), (A, "   I am an assistant   "),
                    (U, " \u3000next\u00a0\u2009 ")]),
    ("whitespace_only", [(S, " \n "), (U, " \t\r\n\u000b\u000c\u001c\u0085\u2028 ")]),
    ("inner_whitespace", [(U, "a  b\n\nc\t d")]),
    ("special_text", [(U, "<|im_end|> [INST] <<SYS>> <|eot_id|> </s> {{ x }} {% if %}")]),
    ("quotes_backslash", [(S, "say \"hi\" and 'bye' \\n"), (U, "C:\\path\\n")]),
    # errors everywhere
    ("tool_role", [(U, "call it"), ("tool", "42")]),
    ("function_role", [("function", "x"), (U, "y")]),
    # errors for llama2 / mistral only
    ("two_users", [(U, "a"), (U, "b")]),
    ("assistant_first", [(A, "hello"), (U, "hi")]),
    ("system_only", [(S, "only a system message")]),
    ("system_middle", [(U, "a"), (S, "b")]),
    ("two_systems", [(S, "a"), (S, "b"), (U, "c")]),
    ("system_assistant", [(S, "sys"), (A, "no user")]),
]


def tandem_rule_error(family, msgs):
    """Why Tandem refuses msgs for family before rendering, or None."""
    if not msgs:
        return "empty"
    for role, _ in msgs:
        if role not in (S, U, A):
            return "role"
    if family in ("llama2", "mistral", "mistral-v0.1"):
        start = 1 if msgs[0][0] == S else 0
        if start == len(msgs):
            return "no user"
        if any(role == S for role, _ in msgs[start:]):
            return "system not first"
    return None


def render(tmpl, msgs, gen, bos, eos):
    chat = [{"role": r, "content": c} for r, c in msgs]
    out, _ = render_jinja_template([chat], chat_template=tmpl, add_generation_prompt=gen, bos_token=bos,
                                   eos_token=eos)
    return out[0]


def expected(name, family, tmpl, msgs, gen, bos, eos):
    if tandem_rule_error(family, msgs):
        return None
    if family in ("mistral", "mistral-v0.1") and msgs[0][0] == S:
        msgs = [(U, msgs[0][1] + "\n" + msgs[1][1])] + list(msgs[2:]) if msgs[1][0] == U else msgs
    try:
        text = render(tmpl, msgs, gen, bos, eos)
    except jinja2.exceptions.TemplateError:
        return None
    if family in BOS_FAMILIES:
        if not text.startswith(bos):
            sys.exit(f"chat_template_vectors: {name}: the rendering does not start with {bos!r}: {text[:60]!r}")
        text = text[len(bos):]
    return text


def hx(s):
    b = s.encode("utf-8") if isinstance(s, str) else s
    return b.hex() if b else "-"


def gguf_string(reader, key):
    f = reader.fields[key]
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="SmolLM2-135M-Instruct GGUF")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    reader = GGUFReader(args.model)
    tokens = reader.fields["tokenizer.ggml.tokens"]

    def token(key):
        i = int(reader.fields[key].parts[reader.fields[key].data[0]][0])
        return bytes(tokens.parts[tokens.data[i]]).decode("utf-8")

    templates = [("smollm2", gguf_string(reader, "tokenizer.chat_template"), "chatml",
                  token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id"))]
    for name, fname, family, bos, eos in TEMPLATES:
        with open(os.path.join(DATA, fname), encoding="utf-8", newline="") as fh:
            templates.append((name, fh.read(), family, bos, eos))

    lines = []
    n_ok = n_err = 0
    for name, tmpl, family, bos, eos in templates:
        lines.append(f"T {name} {family} {hx(tmpl)}")
        for case, msgs in CASES:
            for gen in (False, True):
                exp = expected(name, family, tmpl, msgs, gen, bos, eos)
                if exp is None:
                    n_err += 1
                else:
                    n_ok += 1
                fields = ["C", name, case, "1" if gen else "0", "!" if exp is None else hx(exp), str(len(msgs))]
                for role, content in msgs:
                    fields += [role, hx(content)]
                lines.append(" ".join(fields))
    # sanity: the things this file exists to pin down
    smol = templates[0][1]
    assert "You are a helpful AI assistant named SmolLM" in smol, "SmolLM2's template lost its default system prompt"
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, args.out)
    print(f"chat_template_vectors: {len(templates)} templates, {n_ok} renderings, {n_err} expected errors -> {args.out}")


if __name__ == "__main__":
    main()

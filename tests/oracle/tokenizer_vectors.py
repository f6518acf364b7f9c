#!/usr/bin/env python3
"""Tokenizer test vectors for tests/test_tokenizer.c, from Hugging Face
`tokenizers` (the Rust library transformers uses) built from the model's GGUF
metadata by transformers' own GGUF converter (no torch needed on that path).

The tokenizer: transformers.integrations.gguf.gguf_tokenizer_mapping turns the
file's tokenizer.ggml.* keys into a `tokenizers.Tokenizer` (vocabulary,
merges, control tokens as special added tokens). transformers knows no
"smollm" pre-tokenizer and would fall back to plain GPT-2 splitting, so the
pre-tokenizer is set to SmolLM2's own (its tokenizer.json: Digits with
individual digits, then ByteLevel with GPT-2's regex), which is also what
llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM does.

The corpus (below, plus seeded random strings) covers code, whitespace runs,
digits, emoji, CJK, accents, mixed scripts, contractions, control characters,
chat-template text with special tokens, and invalid UTF-8.

Invalid UTF-8: Hugging Face only takes Python str, so those cases (and every
other case too, as a check) are also derived independently: the bytes are
decoded with surrogateescape, so each byte outside a well-formed sequence
becomes one lone surrogate (a character outside \\s, \\p{L}, \\p{N}, like the
U+FFFD engine/tokenizer.c puts in its place for the regexes); the `regex`
module splits with the pre-tokenizer's patterns; each piece goes back to its
original bytes and through Hugging Face's BPE model (Tokenizer.model.tokenize).
The script asserts the derivation equals Hugging Face's encode on every valid
case before it trusts it for the invalid ones. Expected decodes of invalid
cases are the token bytes run through Python's lossy decoder
(errors="replace": one U+FFFD per maximal ill-formed subsequence, as Rust's
from_utf8_lossy); for valid cases Hugging Face's decode is used and checked to
equal the same.

Pre-tokenizer splits (td_tokenizer_split) for "gpt-2", "smollm" and
"llama-bpe" come from Hugging Face's own pre-tokenizers (ByteLevel; Digits +
ByteLevel; Split(Llama-3 regex) + ByteLevel), checked against the `regex`
module, which alone gives the invalid UTF-8 cases and llama.cpp's "default"
chain (which Hugging Face has no equivalent of).

Output: a text file, one record per line (hex: the bytes in hex, "-" when
empty):
  C <case> <hex>                       a corpus entry
  T <case> <parse_special> <n> <ids>   expected ids (no BOS)
  D <case> <parse_special> <special> <hex>
                                       expected decode of those ids (special:
                                       control tokens rendered)
  S <pre> <case> <n> <ends>            expected pre-tokenizer piece ends
"""
import argparse
import os
import random
import sys

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # not "PyTorch was not found": it is not needed here
try:
    import gguf
    import regex
    from tokenizers import Regex, pre_tokenizers
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (GGUF_TOKENIZER_MAPPING,
                                                                        convert_gguf_tokenizer)
    from transformers.convert_slow_tokenizer import bytes_to_unicode
except ImportError as e:  # scripts/setup installs them
    sys.exit(f"tokenizer_vectors.py: {e} (run scripts/setup)")

SEED = 20240611
N_RANDOM = 400
N_RANDOM_BYTES = 60

GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# llama.cpp's LLAMA_VOCAB_PRE_TYPE_DEFAULT chain
DEFAULT_RES = [r"[\p{P}\$\+<=>\^~\|]+", GPT2_RE, r"\p{N}+", r"[0-9][0-9][0-9]"]
CHAINS = {
    "gpt-2": [GPT2_RE],
    "smollm": [r"\p{N}", GPT2_RE],
    "llama-bpe": [LLAMA3_RE],
    "default": DEFAULT_RES,
}
HF_PRE = {
    "gpt-2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "smollm": lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
    "llama-bpe": lambda: pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated"),
                                                  pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
}

CHAT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat's 12+30? Answer in one word.<|im_end|>\n<|im_start|>assistant\n")

CORPUS = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n\n", " \n \n", "\r\n", "a\r\nb\r\n", "\n \n\n \t\t \n",
    "Hello world", " Hello World!", "Hello, world! How's it going?",
    "I'm fine; they'll see, we've done it, you'd say it's OK and he's gone.",
    "DON'T SHOUT, I'M HERE, HE'S GONE, THEY'LL SEE, WE'VE WON, YOU'D KNOW, IT'S 'D",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'Ve 'ſ 'K",  # U+017F, U+212A fold to s, k
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "int main(void) {\n\tfor (int i = 0; i < 10; i++) {\n\t\tprintf(\"%d\\n\", i);\n\t}\n\treturn 0;\n}\n",
    '{"key": [1, 2.5, -3e10], "nested": {"a": null, "b": true}}',
    "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>",
    "a" + " " * 50 + "b", " " * 300 + "end", "\t\t\t\tx", "   \n\n   \n", "end   ", "x  \n  y",
    "a\u00a0b\u3000c\u2003d\u0085e\u200bf\u2028g\u202fh\u1680i\u180ej",
    "12345678901234567890", "3.14159", "1,000,000", "v1.2.3", "2024-01-01T12:00:00Z", " 42", "x1y22z333",
    "\u0663\u0664\u0665 \u0966\u0967", "\u2460\u2461 \u216b \u00bd \u00b2",
    "\U0001F600\U0001F44D\U0001F3FD\U0001F1FA\U0001F1F8 \u2764\ufe0f \U0001F468\u200d\U0001F469\u200d\U0001F467",
    "\U0001F680 rocket", "emoji\U0001F600\U0001F600\U0001F600x",
    "你好，世界！这是一个测试。", "日本語のテキストとカタカナ ー", "한국어 텍스트입니다", "中文English混合123",
    "Café naïve résumé façade Ångström", "e\u0301 a\u0308 n\u0303", "Ελληνικά κείμενα", "Русский текст, ёлка",
    "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีครับ", "Hello世界123abc\U0001F600",
    "!!!???...---", "\u00abquotes\u00bb \u201csmart\u201d \u2018single\u2019", "a\u2014b\u2013c",
    "$100 + 50% = ???", "~^|<=>+$", "a\x00b", "\x01\x02\x1b[31mred\x1b[0m\x7f",
    CHAT, "<|im_start|><|im_end|>", "<|endoftext|>", "text<|endoftext|>more", "<|im_start|", "<|im_start|>>",
    "< |im_start|>", "<empty_output><reponame>x<|im_end|", " <|im_end|> ", "<|im_end|><|im_end|>\n\n",
    "The quick brown fox jumps over the lazy dog. " * 8,
    "ied 4 \u00bd months", "F\u00fchrer", "\u1780\u17b6\u179a", "\U00010000\U0010FFFD",
]

INVALID = [
    b"\xff", b"abc\xffdef", b"\xe4\xb8", b"\xe4\xb8\xad\xe6", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
    b"\x80\x80 x", b" \xfe\xff!", b"12\xff34", b"<|im_start|>\xff<|im_end|>", b"a\xe2\x82", b"\xf0\x9f\x98A",
    b"\xe2\x82\xac\xe2\x82", b"hello \xe4\xb8world", b"\xf0\x9f\x98\x80\xf0\x9f", b"  \xff  ", b"\xc3", b"x\xc3\xa9\xc3",
]

RANDOM_POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", "      \t\n\r",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "éèêàçñüößøåÉÅ", "你好世界中文測試日本語", "한국어", "Ελληνικάрусский",
    "\U0001F600\U0001F680\U0001F44D\u2764\ufe0f\u200d", "'s'S'll'VE'd", "\u00a0\u3000\u2003\u0085",
]
SPECIAL_SNIPPETS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start", "im_end|>", "<repo_name>", "<"]


def random_cases(rng):
    out = []
    for _ in range(N_RANDOM):
        s = []
        for _ in range(rng.randint(1, 40)):
            if rng.random() < 0.05:
                s.append(rng.choice(SPECIAL_SNIPPETS))
            else:
                pool = rng.choice(RANDOM_POOLS)
                s.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 6))))
        out.append("".join(s).encode())
    for _ in range(N_RANDOM_BYTES):
        b = bytearray()
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.4:
                b += rng.choice(["ab", " x", "中", "é", "\U0001F600", "12", " ", "\n", "<|im_end|>"]).encode()
            elif r < 0.7:  # a truncated sequence
                c = rng.choice(["中", "é", "\U0001F600", "€"]).encode()
                b += c[:rng.randint(1, len(c) - 1)]
            else:
                b.append(rng.randint(0x80, 0xFF))
        out.append(bytes(b))
    return out


def load_tokenizer(path):
    r = gguf.GGUFReader(path)
    d = {}
    for k, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items():
        f = r.fields.get("tokenizer." + k)
        if f is not None:
            d[name] = f.contents()
    if d.get("pre_tokenizer_type") != "smollm":
        sys.exit(f"tokenizer_vectors.py: {path}: expected the smollm pre-tokenizer, got {d.get('pre_tokenizer_type')}")
    tok, _ = convert_gguf_tokenizer(r.fields["general.architecture"].contents(), d)
    tok.pre_tokenizer = HF_PRE["smollm"]()
    return tok, d["tokens"], d["token_type"]


class Oracle:
    def __init__(self, tok, tokens, types):
        self.tok = tok
        u2b = {u: b for b, u in bytes_to_unicode().items()}
        self.b2u = bytes_to_unicode()
        self.types = types
        self.control = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (2, 3) and t}
        self.user = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 4 and t}
        self.piece = []
        for t, ty in zip(tokens, types):
            if ty in (2, 3, 4):
                self.piece.append(t.encode())
            else:
                self.piece.append(b"".join(bytes([u2b[c]]) if c in u2b else c.encode() for c in t))
        self.chains = {name: [regex.compile(p) for p in pats] for name, pats in CHAINS.items()}

    def split(self, data, chain):
        """Pieces of data (bytes) by the regex chain, as byte strings."""
        pieces = [data.decode("utf-8", "surrogateescape")]
        for pat in self.chains[chain]:
            out = []
            for p in pieces:
                pos = 0
                for m in pat.finditer(p):
                    if m.start() == m.end():
                        continue
                    if m.start() > pos:
                        out.append(p[pos:m.start()])
                    out.append(m.group())
                    pos = m.end()
                if pos < len(p):
                    out.append(p[pos:])
            pieces = out
        return [p.encode("utf-8", "surrogateescape") for p in pieces]

    def segments(self, data, parse_special):
        """Leftmost-longest special-token matching: [(is_special, bytes or id)]."""
        specials = dict(self.user)
        if parse_special:
            specials.update(self.control)
        enc = sorted(((t.encode(), i) for t, i in specials.items()), key=lambda x: -len(x[0]))
        out, seg, i = [], 0, 0
        while i < len(data):
            hit = next(((t, tid) for t, tid in enc if data.startswith(t, i)), None)
            if hit is None:
                i += 1
                continue
            if i > seg:
                out.append((False, data[seg:i]))
            out.append((True, hit[1]))
            i += len(hit[0])
            seg = i
        if seg < len(data):
            out.append((False, data[seg:]))
        return out

    def derive_ids(self, data, parse_special):
        ids = []
        for special, x in self.segments(data, parse_special):
            if special:
                ids.append(x)
                continue
            for piece in self.split(x, "smollm"):
                ids += [t.id for t in self.tok.model.tokenize("".join(self.b2u[b] for b in piece))]
        return ids

    def derive_decode(self, ids, special):
        raw = b"".join(b"" if (self.types[i] in (2, 3, 5) and not special) else self.piece[i] for i in ids)
        return raw.decode("utf-8", "replace").encode()


def hexs(b):
    return b.hex() if b else "-"


def byte_ends(text, offsets):
    """Character offsets of pieces -> byte offsets of their ends."""
    pos = [0]
    for c in text:
        pos.append(pos[-1] + len(c.encode()))
    return [pos[e] for _, (_, e) in offsets]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    tok, tokens, types = load_tokenizer(args.model)
    o = Oracle(tok, tokens, types)
    cases = [c.encode() for c in CORPUS] + INVALID + random_cases(random.Random(SEED))
    lines = ["# tokenizer vectors: tests/oracle/tokenizer_vectors.py; do not edit"]
    n_hf = n_derived = 0
    for ci, data in enumerate(cases):
        lines.append(f"C {ci} {hexs(data)}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        for ps in (0, 1):
            ids = o.derive_ids(data, ps)
            if text is not None:
                tok.encode_special_tokens = not ps
                hf = tok.encode(text, add_special_tokens=False).ids
                if hf != ids:
                    sys.exit(f"tokenizer_vectors.py: case {ci} {data!r} parse_special={ps}: derivation {ids} != "
                             f"Hugging Face {hf}")
                n_hf += 1
            else:
                n_derived += 1
            lines.append(f"T {ci} {ps} {len(ids)} {' '.join(map(str, ids))}".rstrip())
            for special in (0, 1):
                dec = o.derive_decode(ids, special)
                if text is not None:
                    hf = tok.decode(ids, skip_special_tokens=not special).encode()
                    if hf != dec:
                        sys.exit(f"tokenizer_vectors.py: case {ci} decode special={special}: {dec!r} != Hugging Face "
                                 f"{hf!r}")
                    if special and hf != data:
                        sys.exit(f"tokenizer_vectors.py: case {ci}: Hugging Face does not round-trip: {hf!r}")
                lines.append(f"D {ci} {ps} {special} {hexs(dec)}")
        for pre in CHAINS:
            pieces = o.split(data, pre)
            ends = [sum(map(len, pieces[:i + 1])) for i in range(len(pieces))]
            if text is not None and pre in HF_PRE:
                hf = byte_ends(text, HF_PRE[pre]().pre_tokenize_str(text))
                if hf != ends:
                    sys.exit(f"tokenizer_vectors.py: case {ci} {data!r} pre {pre}: regex {ends} != Hugging Face {hf}")
            lines.append(f"S {pre} {ci} {len(ends)} {' '.join(map(str, ends))}".rstrip())
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, args.out)
    print(f"tokenizer_vectors.py: {len(cases)} cases, {n_hf} encodings compared with Hugging Face, "
          f"{n_derived} derived (invalid UTF-8), -> {args.out}")


if __name__ == "__main__":
    main()

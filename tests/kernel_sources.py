"""A scanner of the kernel sources (csrc/): which float arithmetic a CUDA file does itself, and
which shared functions (``FASTXAI_HD`` in csrc/*.h) each backend reaches. Used by
tests/test_cuda_sources.py, which says the rules.

It is a tokenizer, not a C++ parser: it sees float values by their declarations in the same file
(in scope: to the end of the block, or of the body a parameter list or for-loop header opens),
so ``auto``, which would hide one, is reported too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

CSRC = Path(__file__).resolve().parent.parent / "csrc"

FLOAT_TYPES = {"float", "double", "T", "__half", "__nv_bfloat16", "half"}
AGGREGATE_TYPES = {"Vec4"}  # vectors of elements: name.v[i] is a float
QUALIFIERS = {"const", "*", "&", "__restrict__", "volatile", "__shared__", "constexpr", "static"}
FLOAT_CALLS = {
    "Elem_load", "float_cast", "__half2float", "__bfloat162float", "__int_as_float", "__uint_as_float",
    "__shfl_xor_sync", "__shfl_sync", "__shfl_down_sync", "__shfl_up_sync",
}  # fmt: skip
ARITHMETIC = {"+", "-", "*", "/", "+=", "-=", "*=", "/=", "<", ">", "<=", ">=", "==", "!="}
BEFORE_UNARY = {"(", "[", ",", "=", "?", ":", "return", "{", ";"} | ARITHMETIC
# Math functions and rounding intrinsics: float arithmetic that belongs in csrc/float32.h.
MATH_CALL = re.compile(
    r"^(?:__f(?:add|sub|mul|div|ma|sqrt|rcp|rsqrt)\w*|__h\w*(?:add|sub|mul|div|fma|neg|sqrt)\w*"
    r"|__[a-z0-9]*(?:exp|log|sin|cos|pow|tan)\w*|__fdividef|__saturatef"
    r"|(?:sqrt|rsqrt|cbrt|exp|exp2|expm1|log|log2|log10|log1p|sin|cos|tan|sincos|pow|fma|fmax|fmin"
    r"|fabs|floor|ceil|trunc|round|rint|fmod|hypot|erf)f?|fadd|fsub|fmul|fdiv|fsqrt)$"
)
FLOAT_LITERAL = re.compile(r"^(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?[fF]?$|^\d+[eE][+-]?\d+[fF]?$")
TOKEN = re.compile(
    r"\s*(?:(?P<name>[A-Za-z_]\w*(?:::[A-Za-z_]\w*)*)|(?P<number>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?"
    r"[fFuUlLxX0-9a-fA-F]*)|(?P<op><<<|>>>|<<=|>>=|->|\+\+|--|<<|>>|<=|>=|==|!=|&&|\|\||[-+*/%&|^]=|\S))"
)


def strip(source: str) -> str:
    """Comments, string and character literals and preprocessor lines removed."""
    source = re.sub(r"/\*.*?\*/", " ", source, flags=re.S)
    source = re.sub(r"//[^\n]*", "", source)
    source = re.sub(r'"(?:\\.|[^"\\])*"' + r"|'(?:\\.|[^'\\])*'", '""', source)
    return "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("#"))


def tokens(source: str) -> list[str]:
    """Tokens of stripped source; Elem<T>::f and casts to float become one name each."""
    source = re.sub(r"Elem<[^<>;]*>::(\w+)", r"Elem_\1", strip(source))
    source = re.sub(r"static_cast<\s*(?:const\s+)?(?:float|double)\s*>", "float_cast", source)
    source = re.sub(r"(?:static|reinterpret|const)_cast<[^()]*?>(?=\s*\()", "cast", source)
    return [m.group(m.lastgroup or "op") for m in TOKEN.finditer(source) if m.group(0).strip()]


def _last(name: str) -> str:
    return name.rsplit("::", 1)[-1]


Scopes = dict[str, list[tuple[int, int]]]  # name -> token ranges where it is declared


def _brackets(toks: list[str]) -> tuple[dict[int, int], list[int], list[int]]:
    """Matching bracket of each bracket, and the innermost open `(` and `{` at each token (-1: none)."""
    match: dict[int, int] = {}
    stacks: dict[str, list[int]] = {"(": [], "[": [], "{": []}
    closing = {")": "(", "]": "[", "}": "{"}
    paren, brace = [-1] * len(toks), [-1] * len(toks)
    for i, tok in enumerate(toks):
        paren[i] = stacks["("][-1] if stacks["("] else -1
        brace[i] = stacks["{"][-1] if stacks["{"] else -1
        if tok in stacks:
            stacks[tok].append(i)
        elif tok in closing and stacks[closing[tok]]:
            j = stacks[closing[tok]].pop()
            match[i], match[j] = j, i
    return match, paren, brace


def _declarations(toks: list[str]) -> tuple[Scopes, Scopes]:
    """(float scalars, float arrays / pointers / element vectors) declared in toks, each with the
    token ranges it is visible in: to the end of its block, or of the body its parameter list or
    for-loop header opens."""
    match, paren, brace = _brackets(toks)
    scalars: Scopes = {}
    indexed: Scopes = {}

    def scope(j: int) -> tuple[int, int]:
        p = paren[j]
        if p >= 0 and p in match and toks[match[p] + 1 : match[p] + 2] == ["{"]:
            return j, match.get(match[p] + 1, len(toks))
        return j, match.get(brace[j], len(toks))

    for i, tok in enumerate(toks):
        if tok not in FLOAT_TYPES | AGGREGATE_TYPES or toks[i - 1 : i] in (["typename"], ["class"]):
            continue
        j, pointer = i + 1, tok in AGGREGATE_TYPES
        if pointer and toks[j : j + 1] == ["<"]:  # Vec4<T>
            j = toks.index(">", j) + 1
        while j < len(toks) and toks[j] in QUALIFIERS:
            pointer |= toks[j] == "*"
            j += 1
        while j + 1 < len(toks) and re.fullmatch(r"[A-Za-z_]\w*", toks[j]):
            if toks[j + 1] == "(":
                break  # a function returning float: its calls are not values here
            table = indexed if pointer or toks[j + 1] == "[" else scalars
            table.setdefault(toks[j], []).append(scope(j))
            # further declarators of the same statement: `float a, b;` (not `float a, Index b`)
            k = match.get(j + 1, j) + 1 if toks[j + 1] == "[" else j + 1
            if toks[k : k + 1] == [","] and toks[k + 2 : k + 3] in ([";"], [","], ["="], ["["]):
                j = k + 1
                continue
            break
    return scalars, indexed


def _declared(scopes: Scopes, name: str, i: int) -> bool:
    return any(start <= i <= end for start, end in scopes.get(_last(name), ()))


def _float_before(
    toks: list[str], i: int, match: dict[int, int], scalars: Scopes, indexed: Scopes, calls: set[str]
) -> bool:
    """Whether the operand ending at toks[i] is a float value."""
    tok = toks[i]
    if FLOAT_LITERAL.match(tok):
        return True
    if tok == "]":
        j = match.get(i, 0) - 1
        if j >= 2 and toks[j - 1] == ".":
            j -= 2
        return j >= 0 and _declared(indexed, toks[j], j)
    if tok == ")":
        j = match.get(i, 0) - 1
        return j >= 0 and _last(toks[j]) in calls
    return _declared(scalars, tok, i)


def _float_after(toks: list[str], i: int, scalars: Scopes, indexed: Scopes, calls: set[str]) -> bool:
    """Whether the operand starting at toks[i] (after unary signs and parentheses) is a float."""
    while i < len(toks) and toks[i] in {"(", "-", "+", "!"}:
        i += 1
    if i >= len(toks):
        return False
    tok, after = toks[i], toks[i + 1 : i + 2]
    if FLOAT_LITERAL.match(tok):
        return True
    if after == ["("]:
        return _last(tok) in calls
    if after == ["["] or (after == ["."] and toks[i + 3 : i + 4] == ["["]):
        return _declared(indexed, tok, i)
    return _declared(scalars, tok, i)


def arithmetic(source: str, float_functions: Iterable[str] = ()) -> list[str]:
    """The float arithmetic in a kernel file: one line of context per finding."""
    toks = tokens(source)
    match, _, _ = _brackets(toks)
    scalars, indexed = _declarations(toks)
    calls = FLOAT_CALLS | set(float_functions)
    found = []
    for i, tok in enumerate(toks):
        context = " ".join(toks[max(0, i - 4) : i + 5])
        if tok == "auto":
            found.append(f"`auto` (hides a value's type): {context}")
        elif re.fullmatch(r"[A-Za-z_]\w*(?:::\w+)*", tok) and toks[i + 1 : i + 2] == ["("]:
            if MATH_CALL.match(_last(tok)):
                found.append(f"math function {tok}: {context}")
        elif tok in ARITHMETIC and 0 < i < len(toks) - 1:
            unary = toks[i - 1] in BEFORE_UNARY
            if unary and tok == "-" and _float_after(toks, i + 1, scalars, indexed, calls):
                found.append(f"negation of a float: {context}")
            elif not unary and (
                _float_before(toks, i - 1, match, scalars, indexed, calls)
                or _float_after(toks, i + 1, scalars, indexed, calls)
            ):
                found.append(f"float operator {tok}: {context}")
    return found


# ---- shared functions ------------------------------------------------------------------------

Key = tuple[str, str]  # (namespace, function)


def _block_end(text: str, start: int) -> int:
    """Index of the `}` closing the `{` at text[start]."""
    depth = 0
    for k in range(start, len(text)):
        depth += (text[k] == "{") - (text[k] == "}")
        if depth == 0:
            return k
    return len(text)


def shared_functions(headers: Mapping[str, str]) -> tuple[dict[Key, set[Key]], set[str]]:
    """The FASTXAI_HD functions of the headers with the shared functions each calls, and the
    names of those that return float."""
    found: dict[Key, str] = {}
    usings: dict[str, dict[str, str]] = {}
    float_names = set()
    for text in headers.values():
        text = strip(text)
        # (start, end, name) of each namespace block
        spans = [
            (m.end(), _block_end(text, m.end() - 1), m.group(1))
            for m in re.finditer(r"namespace\s+(\w+)\s*\{", text)
        ]

        def namespace_at(pos: int, spans: list[tuple[int, int, str]] = spans) -> str:
            inside = [s for s in spans if s[0] < pos < s[1]]
            return min(inside, key=lambda s: s[1] - s[0])[2] if inside else ""

        for m in re.finditer(r"using\s+(\w+)::(\w+)\s*;", text):
            usings.setdefault(namespace_at(m.start()), {})[m.group(2)] = m.group(1)
        for m in re.finditer(r"FASTXAI_HD\s+([\w:]+)\s+(\w+)\s*\(", text):
            opening = text.index("{", m.end())
            key = (namespace_at(m.start()), m.group(2))
            found[key] = text[opening : _block_end(text, opening)]
            if m.group(1) == "float":
                float_names.add(m.group(2))
    graph = {key: set(calls(text, key[0], found, usings.get(key[0], {}))) for key, text in found.items()}
    return graph, float_names


def calls(text: str, namespace: str, functions: Iterable[Key], usings: Mapping[str, str]) -> Iterable[Key]:
    """The shared functions that text calls, names resolved in `namespace` and its `using`s."""
    known = set(functions)
    for m in re.finditer(r"\b((?:\w+::)*)(\w+)\s*\(", text):
        qualifier, name = m.group(1).rstrip(":").split("::")[-1], m.group(2)
        for key in ((qualifier, name),) if qualifier else ((namespace, name), (usings.get(name, ""), name)):
            if key in known:
                yield key
                break


def reached(graph: Mapping[Key, set[Key]], roots: Iterable[Key]) -> set[Key]:
    """The shared functions roots call, directly or through others."""
    seen, stack = set(), list(roots)
    while stack:
        key = stack.pop()
        if key not in seen:
            seen.add(key)
            stack.extend(graph.get(key, ()))
    return seen


def backend_roots(sources: Iterable[str], graph: Mapping[Key, set[Key]]) -> set[Key]:
    """The shared functions a backend's files call by name."""
    roots: set[Key] = set()
    for text in sources:
        text = strip(text)
        usings = {m.group(2): m.group(1) for m in re.finditer(r"using\s+(\w+)::(\w+)\s*;", text)}
        roots.update(calls(text, "", graph, usings))
    return roots


def one_sided(headers: Mapping[str, str], cpu: Iterable[str], cuda: Iterable[str]) -> dict[str, list[str]]:
    """Shared functions that only one backend reaches (or neither): {"cpu only": [...], ...}."""
    graph, _ = shared_functions(headers)
    on_cpu = reached(graph, backend_roots(cpu, graph))
    on_cuda = reached(graph, backend_roots(cuda, graph))
    names = {
        "cpu only": on_cpu - on_cuda,
        "cuda only": on_cuda - on_cpu,
        "unused": set(graph) - on_cpu - on_cuda,
    }
    return {where: sorted(f"{ns}::{name}" for ns, name in keys) for where, keys in names.items() if keys}


def body(sources: Mapping[str, str], name: str) -> str:
    """The body of the first definition of function `name` in sources."""
    for text in sources.values():
        text = strip(text)
        for m in re.finditer(rf"\b{name}\s*\(", text):
            depth, close = 0, m.end() - 1
            for close in range(m.end() - 1, len(text)):
                depth += (text[close] == "(") - (text[close] == ")")
                if depth == 0:
                    break
            if re.match(r"\s*(?:const\s*)?\{", text[close + 1 :]):
                start = text.index("{", close)
                return text[start : _block_end(text, start)]
    raise AssertionError(f"no definition of {name}")


# ---- the sources ------------------------------------------------------------------------------


def _read(paths: Iterable[Path]) -> dict[str, str]:
    return {str(path.relative_to(CSRC)): path.read_text() for path in sorted(paths)}


HEADERS = _read(p for p in CSRC.glob("*.h") if "FASTXAI_HD" in p.read_text())
CPU = _read([*CSRC.glob("cpu/*.cpp"), *CSRC.glob("cpu/*.h")])
CUDA = _read([*CSRC.glob("cuda/*.cu"), *CSRC.glob("cuda/*.cuh")])

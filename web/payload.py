"""Decode a raw callback request into one flat field dict, without Flask.

Exotel sends the same callback as a form POST, a multipart POST, a JSON POST
or a bare GET query string (https://developer.exotel.com/api/statuscallback,
https://support.exotel.com/support/solutions/articles/48283-working-with-passthru-applet,
https://developer.exotel.com/api/ccm-make-call-agent-connecting-to-a-number), so the edge
accepts all of them and hands :func:`worker.calls.callbacks.event_from_fields` one
shape. Taking plain values (content type, body bytes, query pairs) keeps this
fast, testable and independent of the web framework.

Decisions, each tested:

- Query-string pairs are always merged in; the body wins over the query. For
  form and multipart bodies the merge happens per flat key (query first, then
  body); a JSON body replaces query keys at the top level.
- Repeated keys: the last one wins (a list would make every field's type
  depend on the sender).
- Flattened form keys (``Legs[1][Insights][DetailedStatus]``) become nested
  dicts and lists. Canonical integers (``0``, ``1`` … not ``01``) index a
  list, ``[]`` appends, other segments are dict keys; holes in a list are
  filled with ``{}``, but all the lists of one callback hold at most
  :data:`MAX_LIST_SLOTS` slots in total and no more gaps than items (plus
  :data:`FREE_GAPS`), so a few bytes of ``a[100][100]`` cannot become
  thousands of stored ``{}``. An index over :data:`MAX_INDEX` or more than
  :data:`MAX_KEY_DEPTH` bracket segments is a 400 ("too deeply nested"), as is
  a key used both as a scalar and as a container. Keys that are not of the
  ``name[seg]...`` form (``a[b``, ``[x]``) stay flat. JSON keys are never
  expanded.
- Bodies must be UTF-8 whatever ``charset`` says (it is tolerated, not
  honoured); NUL or another control character (other than tab, CR, LF) in a
  form key or value (each would be stored as a six-byte JSON escape),
  NaN/Infinity, or JSON nested deeper than :data:`MAX_JSON_DEPTH` is a 400.
- An empty (or all-whitespace) body is fine with any content type. A
  non-empty body needs one of the three supported types, else 415: that
  includes ``text/plain`` and a missing content type, so data is never
  silently ignored.
- Multipart: fields only, file parts (with a ``filename``) are skipped; a
  missing or malformed boundary, or an unterminated body, is a 400.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import unquote

__all__ = ["MAX_BODY_BYTES", "PayloadError", "decode_body"]

MAX_BODY_BYTES = 64 * 1024
MAX_FIELDS = 1000
MAX_INDEX = 100
#: List slots (items and the ``{}`` filling holes) in all the lists of one callback.
MAX_LIST_SLOTS = 256
#: List gaps allowed beyond one per item (``Legs[2]`` alone is fine).
FREE_GAPS = 8
MAX_KEY_DEPTH = 8
MAX_JSON_DEPTH = 32

_FORM = "application/x-www-form-urlencoded"
_MULTIPART = "multipart/form-data"
_JSON = "application/json"

# name[seg][seg]...: the name has no brackets, each segment no brackets.
_NESTED_KEY_RE = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])+)")
_SEGMENT_RE = re.compile(r"\[([^\[\]]*)\]")
_INDEX_RE = re.compile(r"0|[1-9][0-9]*")
_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM_RE = re.compile(rf"\s*;\s*({_TCHARS})\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^;\s]*)\s*", re.DOTALL)
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
# RFC 2046 bchars; the last character may not be a space.
_BOUNDARY_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


class PayloadError(ValueError):
    """A request body we refuse; ``status`` is the HTTP status, str() the one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        reason = " ".join(reason.split())  # one line, whatever went in
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _header_params(value: str) -> tuple[str, dict[str, str]]:
    """Split ``type/sub; a=1; b="x"`` into the lower-cased value and its parameters.

    Parameters that do not parse are ignored: only ``boundary``, ``name`` and
    ``filename`` matter here, and each caller checks for the one it needs.
    """
    head, _, _ = value.partition(";")
    params: dict[str, str] = {}
    pos = len(head)
    while pos < len(value):
        match = _PARAM_RE.match(value, pos)
        if match is None:
            break
        name, raw = match.group(1).lower(), match.group(2)
        if raw.startswith('"'):
            raw = _QUOTED_PAIR_RE.sub(r"\1", raw[1:-1])
        params.setdefault(name, raw)
        pos = match.end()
    return head.strip().lower(), params


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError(400, "body is not valid UTF-8") from None


_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _check_nul(pairs: Sequence[tuple[str, str]]) -> None:
    # One search over everything: this runs on every callback.
    found = _CONTROL_RE.search("".join(k + v for k, v in pairs))
    if found is None:
        return
    if found.group() == "\x00":
        raise PayloadError(400, "NUL byte in a field name or value")
    if any("\x00" in k or "\x00" in v for k, v in pairs):
        raise PayloadError(400, "NUL byte in a field name or value")
    raise PayloadError(400, "control character in a field name or value")


def _parse_form(body: bytes) -> list[tuple[str, str]]:
    """``parse_qsl(keep_blank_values=True, errors="strict")``, without its per-field overhead.

    A piece without ``=`` is a name with an empty value; empty pieces are
    skipped; only ``&`` separates. The names are unquoted in one call, joined
    by ``&`` (and remembered for the next callback with the same names), then
    the values in another: none is left raw in them, so when the result holds
    exactly as many as went in, no ``%26`` was decoded and it splits back
    into the same pieces (else each is unquoted on its own). Invalid UTF-8
    fails one call exactly when it fails a piece, ``&`` being ASCII.
    """
    text = _utf8(body)
    if text.count("&") + 1 > MAX_FIELDS:
        raise PayloadError(400, f"too many fields (limit {MAX_FIELDS})")
    if "+" in text:
        text = text.replace("+", " ")
    names: list[str] = []
    values: list[str] = []
    for piece in text.split("&"):
        if piece:
            name, _, value = piece.partition("=")
            names.append(name)
            values.append(value)
    if "%" in text:
        try:
            if len(names) <= _SHAPE_MAX_NAMES and sum(map(len, names)) <= _SHAPE_MAX_CHARS:
                names = list(_unquote_names(tuple(names)))
            else:
                names = _unquote_all(names)
            values = _unquote_all(values)
        except UnicodeDecodeError:
            raise PayloadError(400, "body is not valid UTF-8") from None
    return list(zip(names, values, strict=True))


def _unquote_all(items: list[str]) -> list[str]:
    """Each item percent-decoded (strict UTF-8), in one ``unquote`` call when no ``%26``
    was decoded (the result then splits back into as many items)."""
    joined = "&".join(items)
    if "%" not in joined:
        return items
    decoded = unquote(joined, encoding="utf-8", errors="strict").split("&")
    if len(decoded) == len(items):
        return decoded
    return [unquote(item, encoding="utf-8", errors="strict") for item in items]


@functools.lru_cache(maxsize=256)
def _unquote_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """:func:`_unquote_all` of a form's names, remembered: Exotel sends the same names
    (``Legs%5B0%5D%5BStatus%5D`` ...) in every callback of a kind. An invalid one
    raises and is not remembered."""
    return tuple(_unquote_all(list(names)))


def _parse_multipart(body: bytes, params: dict[str, str]) -> list[tuple[str, str]]:
    """RFC 7578 fields, by hand: the stdlib email parser guesses where we want a 400."""
    boundary = params.get("boundary")
    if not boundary:
        raise PayloadError(400, "multipart body without a boundary")
    if not _BOUNDARY_RE.fullmatch(boundary):
        raise PayloadError(400, "malformed multipart boundary")
    delimiter = b"\r\n--" + boundary.encode("ascii")
    chunks = (b"\r\n" + body).split(delimiter)
    if len(chunks) < 2:
        raise PayloadError(400, "multipart body does not contain its boundary")
    pairs: list[tuple[str, str]] = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            return pairs  # close delimiter; the epilogue is ignored
        if len(pairs) >= MAX_FIELDS:
            raise PayloadError(400, f"too many fields (limit {MAX_FIELDS})")
        line_end = chunk.find(b"\r\n")
        if line_end < 0 or chunk[:line_end].strip(b" \t"):
            raise PayloadError(400, "malformed multipart delimiter line")
        rest = chunk[line_end + 2 :]
        if rest.startswith(b"\r\n"):
            raise PayloadError(400, "multipart part without a name")  # no headers at all
        head, sep, content = rest.partition(b"\r\n\r\n")
        if not sep:
            raise PayloadError(400, "multipart part without a header/body separator")
        name: str | None = None
        is_file = False
        for line in _utf8(head).split("\r\n"):
            field, colon, value = line.partition(":")
            if not colon:
                raise PayloadError(400, "malformed multipart part header")
            if field.strip().lower() != "content-disposition":
                continue
            disposition, disp_params = _header_params(value)
            if disposition != "form-data":
                raise PayloadError(400, "multipart part is not form-data")
            name = disp_params.get("name")
            is_file = "filename" in disp_params or "filename*" in disp_params
        if is_file:
            continue
        if name is None:
            raise PayloadError(400, "multipart part without a name")
        pairs.append((name, _utf8(content)))
    raise PayloadError(400, "multipart body is not terminated by its close delimiter")


def _reject_constant(value: str) -> Any:
    raise PayloadError(400, f"JSON body contains {value}, which is not JSON")


def _parse_float(value: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise PayloadError(400, "JSON number out of range")
    return number


def _json_depth_and_nul(root: Any, *, check_nul: bool) -> None:
    """Walk the decoded value iteratively: depth over the limit or NUL is a 400."""
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > MAX_JSON_DEPTH:
                raise PayloadError(400, f"JSON nested deeper than {MAX_JSON_DEPTH}")
            for key, value in node.items():
                if check_nul and "\x00" in key:
                    raise PayloadError(400, "NUL byte in a field name or value")
                stack.append((value, depth + 1))
        elif isinstance(node, list):
            if depth > MAX_JSON_DEPTH:
                raise PayloadError(400, f"JSON nested deeper than {MAX_JSON_DEPTH}")
            stack.extend((value, depth + 1) for value in node)
        elif check_nul and isinstance(node, str) and "\x00" in node:
            raise PayloadError(400, "NUL byte in a field name or value")


def _parse_json(body: bytes) -> dict[str, Any]:
    text = _utf8(body).lstrip("\ufeff")
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float)
    except RecursionError:
        raise PayloadError(400, f"JSON nested deeper than {MAX_JSON_DEPTH}") from None
    except ValueError as exc:  # JSONDecodeError, and int() over the digit limit
        if isinstance(exc, PayloadError):
            raise
        raise PayloadError(400, "body is not valid JSON") from None
    if not isinstance(value, dict):
        raise PayloadError(400, "JSON body must be an object")
    # A raw NUL cannot survive json.loads (control characters are refused), but
    # the escape \u0000 can; fewer brackets than the limit cannot nest too deep.
    check_nul = b"\\u0000" in body
    if check_nul or body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH:
        _json_depth_and_nul(value, check_nul=check_nul)
    return value


class _Arr:
    """A list being built from ``[n]`` keys: positions may arrive in any order."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: dict[int, Any] = {}


def _split_key(key: str) -> list[str]:
    """``Legs[0][Status]`` -> ``["Legs", "0", "Status"]``; anything else stays one key."""
    if "[" not in key:
        return [key]
    match = _NESTED_KEY_RE.fullmatch(key)
    if match is None:
        return [key]
    segments = _SEGMENT_RE.findall(match.group(2))
    if len(segments) > MAX_KEY_DEPTH:
        raise PayloadError(400, f"field name too deeply nested (limit {MAX_KEY_DEPTH})")
    return [match.group(1), *segments]


def _is_index(segment: str) -> bool:
    return segment == "" or _INDEX_RE.fullmatch(segment) is not None


#: Keys up to this long have their split remembered (``Legs[0][Status]`` recurs
#: in every callback); a bounded cache, so odd keys cannot grow it.
_CACHED_KEY_CHARS = 128


def _key_path(key: str) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    """The key's segments, and for each whether it is a list index."""
    path = tuple(_split_key(key))
    return path, tuple(_is_index(segment) for segment in path)


_cached_key_path = functools.lru_cache(maxsize=1024)(_key_path)


def _slot(node: dict[str, Any] | _Arr, segment: str) -> str | int:
    """Where ``segment`` goes in ``node``: a dict key, or a list position."""
    if isinstance(node, dict):
        return segment
    if segment == "":
        position = max(node.items, default=-1) + 1
    else:
        position = int(segment) if len(segment) <= 3 else MAX_INDEX + 1
    if position > MAX_INDEX:
        raise PayloadError(400, f"list index over {MAX_INDEX} in a field name")
    return position


def _child(node: dict[str, Any] | _Arr, slot: str | int) -> Any:
    return node.get(str(slot)) if isinstance(node, dict) else node.items.get(int(slot))


def _put(node: dict[str, Any] | _Arr, slot: str | int, value: Any) -> None:
    if isinstance(node, dict):
        node[str(slot)] = value
    else:
        node.items[int(slot)] = value


def _conflict(key: str) -> PayloadError:
    return PayloadError(400, f"field {key[:64]!r} is used both as a value and as a container")


_CONTAINERS = (dict, _Arr)


def _expand(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Flat pairs -> nested fields; last value wins, shapes must agree."""
    root: dict[str, Any] = {}
    nested = False
    for key, value in pairs:
        if "[" not in key:  # the common, flat case
            if isinstance(root.get(key), _CONTAINERS):
                raise _conflict(key)
            root[key] = value
            continue
        path, indexes = _cached_key_path(key) if len(key) <= _CACHED_KEY_CHARS else _key_path(key)
        nested = nested or len(path) > 1
        node: dict[str, Any] | _Arr = root
        for depth, segment in enumerate(path[:-1]):
            slot = _slot(node, segment)
            want_list = indexes[depth + 1]
            child = _child(node, slot)
            if child is None:
                child = _Arr() if want_list else {}
                _put(node, slot, child)
            elif not isinstance(child, _Arr if want_list else dict):
                raise _conflict(key)
            node = child
        slot = _slot(node, path[-1])
        existing = _child(node, slot)
        if isinstance(existing, dict | _Arr):
            raise _conflict(key)
        _put(node, slot, value)
    if not nested:
        return root
    _count_slots(root)
    return {k: _freeze(v) if isinstance(v, _CONTAINERS) else v for k, v in root.items()}


class _Leaf:
    """Where a value goes in a shape: the index of its pair."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


#: Shapes are remembered for field lists up to this many names and characters in all.
_SHAPE_MAX_NAMES = 128
_SHAPE_MAX_CHARS = 4096


@functools.lru_cache(maxsize=256)
def _shape(names: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    """What :func:`_expand` makes of these names, with each value's pair index in its place.

    Everything :func:`_expand` decides (nesting, which repeat wins, list sizes and
    holes, every 400) depends on the names alone, never on the values, and
    Exotel sends the same names in every callback of a kind: it is worked out
    once per list of names. A list that :func:`_expand` refuses raises here and
    is not remembered.
    """
    return tuple(_expand([(name, _Leaf(i)) for i, name in enumerate(names)]).items())


def _fill(node: Any, values: Sequence[str]) -> Any:
    if type(node) is _Leaf:
        return values[node.index]
    if type(node) is dict:
        return {key: _fill(child, values) for key, child in node.items()}
    return [_fill(child, values) for child in node]


def _expand_by_shape(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """:func:`_expand`, with the shape of a list of names with nested keys remembered."""
    names = tuple(name for name, _ in pairs)
    if (
        len(names) > _SHAPE_MAX_NAMES
        or not any("[" in name for name in names)
        or sum(map(len, names)) > _SHAPE_MAX_CHARS
    ):
        return _expand(pairs)
    values = [value for _, value in pairs]
    return {
        key: values[node.index] if type(node) is _Leaf else _fill(node, values)
        for key, node in _shape(names)
    }


def _count_slots(root: dict[str, Any]) -> None:
    """400 when the lists would hold over MAX_LIST_SLOTS slots, or many more gaps than items.

    Each gap is stored as ``{}``; with at most one gap per item sent, the
    padding costs fewer bytes than the keys that asked for it.
    """
    total = gaps = 0
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, _Arr):
            size = max(node.items, default=-1) + 1
            total += size
            gaps += size - len(node.items)
            if total > MAX_LIST_SLOTS:
                raise PayloadError(
                    400, f"list fields too long: over {MAX_LIST_SLOTS} list items in all"
                )
            stack.extend(node.items.values())
        elif isinstance(node, dict):
            stack.extend(node.values())
    if gaps > total - gaps + FREE_GAPS:
        raise PayloadError(400, "list fields with more gaps than items (Legs[0], Legs[1], ...)")


def _freeze(node: Any) -> Any:
    """Replace the builders with plain lists, filling holes with ``{}``."""
    if isinstance(node, _Arr):
        size = max(node.items, default=-1) + 1
        return [_freeze(node.items[i]) if i in node.items else {} for i in range(size)]
    if isinstance(node, dict):
        return {key: _freeze(value) for key, value in node.items()}
    return node


def _is_json_suffix(media_type: str) -> bool:
    return media_type.startswith("application/") and media_type.endswith("+json")


def _decode(
    content_type: str | None, body: bytes, query: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    if len(body) > MAX_BODY_BYTES:
        raise PayloadError(413, f"body over {MAX_BODY_BYTES} bytes")
    query_pairs = list(query)
    if len(query_pairs) > MAX_FIELDS:
        raise PayloadError(400, f"too many fields (limit {MAX_FIELDS})")
    _check_nul(query_pairs)
    if not body.strip():
        return _expand(query_pairs)
    media_type, params = _header_params(content_type or "")
    if media_type == _FORM:
        pairs = _parse_form(body)
    elif media_type == _MULTIPART:
        pairs = _parse_multipart(body, params)
    elif media_type == _JSON or _is_json_suffix(media_type):
        fields = _expand(query_pairs)
        fields.update(_parse_json(body))
        return fields
    else:
        shown = media_type[:64] or "none"
        raise PayloadError(415, f"unsupported content type {shown!r}")
    _check_nul(pairs)
    if len(query_pairs) + len(pairs) > MAX_FIELDS:
        raise PayloadError(400, f"too many fields (limit {MAX_FIELDS})")
    return _expand_by_shape([*query_pairs, *pairs])


def decode_body(
    content_type: str | None, body: bytes, query: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """All the callback's fields, query first then body; raises only PayloadError."""
    try:
        return _decode(content_type, body, query)
    except PayloadError:
        raise
    except RecursionError:
        raise PayloadError(400, "body nested too deeply") from None
    except (ValueError, TypeError, UnicodeError, OverflowError):
        raise PayloadError(400, "malformed body") from None
    except Exception:  # noqa: BLE001 - the edge must answer 400, never 500, on odd input
        raise PayloadError(400, "malformed body") from None

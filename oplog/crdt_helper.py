"""Writing ``crdt`` rows without learning Yjs.

A row of a ``crdt`` table is one JSON document held as a Yjs document (pycrdt). By
convention the JSON is the root map named :data:`ROOT` (``"doc"``); other roots may
exist in the CRDT state but never show in the table. A producer edits its copy of
the document and publishes each edit as an op of kind ``crdt`` with
``data = {"update": "<base64 Yjs update>"}``::

    writer = DocumentWriter()
    update = writer.set("title", "Minutes")           # {"title": "Minutes"}
    writer.set(("attendees",), ["ana", "bo"])         # a nested list
    writer.append("attendees", "cy")
    op_data = DocumentWriter.data(update)             # {"update": "..."}

Concurrent edits by different writers merge: edits of different keys all survive,
two sets of the same key keep one of them (the same one on every peer), and list
appends interleave. To edit on top of what is already committed, load the row's
state (``_oplog_meta.state``) or the updates you have seen with :meth:`load`.

:func:`to_json` is the rendering the materializer writes into the table, so a
producer can preview exactly what readers will see.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

try:
    from pycrdt import Array, Doc, Map
except ModuleNotFoundError as e:  # a producer-only install has no pycrdt (pyproject.toml extras)
    raise ModuleNotFoundError(
        "oplog.crdt_helper needs pycrdt, which the base install leaves out: pip install 'oplog[crdt]'", name=e.name
    ) from e

ROOT = "doc"
MAX_SAFE_INTEGER = 2**53  # integral floats below this render as JSON integers

PathPart = str | int
Path = str | Sequence[PathPart]


def decode_update(text: str) -> bytes:
    """The bytes of a base64 update; raises ValueError if ``text`` is not base64."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"not base64: {e}") from None


def encode_update(update: bytes) -> str:
    return base64.b64encode(update).decode()


def to_json(doc: Doc[Any]) -> Any:
    """The plain JSON value of ``doc``'s root map (what the table shows).

    Yjs numbers are doubles, so integral numbers render as integers (``1``, not
    ``1.0``) while they are exact; binary values render as base64 text; anything JSON
    has no form for (sub-documents) renders as null.
    """
    return _plain(doc.get(ROOT, type=Map).to_py())


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if value.is_integer() and abs(value) < MAX_SAFE_INTEGER:
            return int(value)
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode()
    return None


def _shared(value: Any) -> Any:
    """A plain JSON value as what pycrdt stores: dicts and lists become Map/Array."""
    if isinstance(value, dict):
        return Map({str(k): _shared(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return Array([_shared(v) for v in value])
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _parts(path: Path) -> list[PathPart]:
    """``"a.0.b"`` or ``("a", 0, "b")``; in a text path, digits index lists."""
    if isinstance(path, str):
        parts: list[PathPart] = [int(p) if p.isdigit() else p for p in path.split(".")]
    else:
        parts = list(path)
    if not parts:
        raise ValueError("a path needs at least one part")
    return parts


def _index(part: PathPart) -> int:
    if isinstance(part, bool) or not isinstance(part, int):
        raise TypeError(f"list index {part!r} must be an integer")
    return part


def _child(node: Map[Any] | Array[Any], part: PathPart) -> Any:
    return node[str(part)] if isinstance(node, Map) else node[_index(part)]


class DocumentWriter:
    """One producer's copy of one row's document; each edit returns its update.

    ``client_id`` identifies this writer inside the CRDT; leave it unset (random)
    unless a test needs repeatable bytes. Two live writers must never share one.
    """

    def __init__(self, state: bytes | str | None = None, *, client_id: int | None = None) -> None:
        self.doc: Doc[Any] = Doc(client_id=client_id)
        if state is not None:
            self.load(state)

    @staticmethod
    def data(update: str) -> dict[str, str]:
        """The ``data`` of a ``crdt`` op carrying ``update``."""
        return {"update": update}

    def load(self, update: bytes | str) -> None:
        """Merge an update or a state seen elsewhere (another writer, the table)."""
        self.doc.apply_update(decode_update(update) if isinstance(update, str) else update)

    def state(self) -> str:
        """The whole document as one base64 update."""
        return encode_update(self.doc.get_update())

    def to_json(self) -> Any:
        return to_json(self.doc)

    def set(self, path: Path, value: Any) -> str:
        """Set the map key or list index at ``path``; missing parent maps are created."""
        parts = _parts(path)
        return self._edit(lambda: self._set(parts, value))

    def delete(self, path: Path) -> str:
        """Remove the map key or list element at ``path``."""
        parts = _parts(path)

        def edit() -> None:
            parent = self._container(parts[:-1], create=False)
            if isinstance(parent, Map):
                del parent[str(parts[-1])]
            else:
                del parent[_index(parts[-1])]

        return self._edit(edit)

    def append(self, path: Path, value: Any) -> str:
        """Append ``value`` to the list at ``path`` (created empty if missing)."""
        parts = _parts(path)

        def edit() -> None:
            parent = self._container(parts[:-1], create=True)
            if isinstance(parent, Map) and str(parts[-1]) not in parent:
                parent[str(parts[-1])] = Array()
            target = _child(parent, parts[-1])
            if not isinstance(target, Array):
                raise TypeError(f"{'.'.join(map(str, parts))} is not a list")
            target.append(_shared(value))

        return self._edit(edit)

    def _set(self, parts: list[PathPart], value: Any) -> None:
        parent = self._container(parts[:-1], create=True)
        if isinstance(parent, Map):
            parent[str(parts[-1])] = _shared(value)
        else:
            index = _index(parts[-1])
            del parent[index]
            parent.insert(index, _shared(value))

    def _container(self, parts: Sequence[PathPart], *, create: bool) -> Map[Any] | Array[Any]:
        node: Map[Any] | Array[Any] = self.doc.get(ROOT, type=Map)
        for part in parts:
            if isinstance(node, Map) and str(part) not in node:
                if not create:
                    raise KeyError(str(part))
                node[str(part)] = Map()
            child = _child(node, part)
            if not isinstance(child, (Map, Array)):
                raise TypeError(f"{part!r} holds a {type(child).__name__}, not a map or list")
            node = child
        return node

    def _edit(self, edit: Any) -> str:
        before = self.doc.get_state()
        with self.doc.transaction():
            edit()
        return encode_update(self.doc.get_update(before))

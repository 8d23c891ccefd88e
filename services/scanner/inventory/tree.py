"""The flattened file tree of an image, in memory (paths only, with what the scanner learnt of each file).

Layers apply in order (image-spec layer.md): each layer's entries are collected in a delta tree while its
tar streams, with its whiteouts; at the layer's end the whiteouts delete from the lower layers (opaque
`D/.wh..wh..opq` empties D, `D/.wh.x` deletes D/x and its subtree; never the same layer's entries), then the
delta merges in: a directory over a directory keeps the children, anything else replaces the path.
Symbolic links are resolved only inside the tree, as if the image root were `/` (chroot semantics): a link
can never lead outside the image.
"""

from __future__ import annotations

from collections.abc import Iterator

from services.scanner.inventory.limits import HostileLayerError
from services.scanner.inventory.parsers import Found

DIR, FILE, LINK, OTHER = "d", "f", "l", "o"


class Node:
    __slots__ = ("children", "found", "implicit", "kind", "layer", "link", "text")

    def __init__(self, kind: str, layer: int, *, link: str | None = None, found: tuple[Found, ...] | None = None,
                 text: bytes | None = None, implicit: bool = False) -> None:
        self.kind = kind
        self.layer = layer
        self.children: dict[str, Node] | None = {} if kind == DIR else None
        self.link = link
        self.found = found
        self.text = text
        self.implicit = implicit

    def copy_as_hardlink(self, layer: int) -> Node:
        return Node(self.kind if self.kind != DIR else OTHER, layer, link=self.link, found=self.found,
                    text=self.text)


def normalise(name: str, *, max_bytes: int = 4096) -> str:
    """A tar entry name as a relative path ("./usr/bin/" -> "usr/bin"); HostileLayerError for absolute
    names and `..` components (path traversal)."""
    if len(name) > max_bytes:
        raise HostileLayerError(f"a path of {len(name)} bytes (limit {max_bytes})")
    if "\0" in name:
        raise HostileLayerError("a path with a NUL byte")
    if name.startswith("/"):
        stripped = name.lstrip("/")
        if stripped and not stripped.startswith("./"):
            raise HostileLayerError(f"absolute path in a layer: {name[:200]!r}")
        name = stripped
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise HostileLayerError(f"path traversal in a layer: {name[:200]!r}")
        parts.append(part)
    return "/".join(parts)


class Tree:
    def __init__(self) -> None:
        self.root = Node(DIR, -1)

    def lookup(self, path: str) -> Node | None:
        """The node at `path`, following no links."""
        node = self.root
        for part in path.split("/") if path else ():
            if node.children is None:
                return None
            nxt = node.children.get(part)
            if nxt is None:
                return None
            node = nxt
        return node

    def add(self, path: str, node: Node, layer: int) -> None:
        parts = path.split("/")
        cur = self.root
        for part in parts[:-1]:
            assert cur.children is not None
            nxt = cur.children.get(part)
            if nxt is None or nxt.children is None:
                nxt = Node(DIR, layer, implicit=True)
                cur.children[part] = nxt
            cur = nxt
        assert cur.children is not None
        old = cur.children.get(parts[-1])
        if old is not None and old.kind == DIR and node.kind == DIR:
            old.layer, old.implicit = layer, False  # a directory over a directory keeps its children
            return
        cur.children[parts[-1]] = node

    def remove(self, path: str) -> None:
        parent_path, _, leaf = path.rpartition("/")
        parent = self.lookup(parent_path)
        if parent is not None and parent.children is not None:
            parent.children.pop(leaf, None)

    def empty(self, path: str) -> None:
        node = self.lookup(path)
        if node is not None and node.children is not None:
            node.children.clear()

    def merge(self, delta: Tree) -> None:
        _merge(self, self.root, delta.root, "")

    def resolve(self, path: str, *, max_hops: int = 40) -> Node | None:
        """The node at `path` with every symbolic link followed inside the tree (absolute targets from the
        image root, `..` never above it); None when missing or looping."""
        pending = [p for p in path.split("/") if p]
        stack: list[Node] = [self.root]
        hops = 0
        while pending:
            part = pending.pop(0)
            if part == ".":
                continue
            if part == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            cur = stack[-1]
            if cur.children is None:
                return None
            nxt = cur.children.get(part)
            if nxt is None:
                return None
            if nxt.kind == LINK and nxt.link is not None:
                hops += 1
                if hops > max_hops:
                    return None
                target = [p for p in nxt.link.split("/") if p]
                if nxt.link.startswith("/"):
                    stack = [self.root]
                pending = target + pending
                continue
            stack.append(nxt)
        return stack[-1]

    def walk(self) -> Iterator[tuple[str, Node]]:
        """(path, node) of every node, depth first."""
        todo: list[tuple[str, Node]] = [("", self.root)]
        while todo:
            prefix, node = todo.pop()
            for name, child in (node.children or {}).items():
                path = f"{prefix}/{name}" if prefix else name
                yield path, child
                if child.children:
                    todo.append((path, child))


def _merge(base: Tree, target: Node, delta: Node, prefix: str) -> None:
    assert target.children is not None and delta.children is not None
    for name, node in delta.children.items():
        old = target.children.get(name)
        path = f"{prefix}/{name}" if prefix else name
        if node.kind == DIR and old is not None:
            if old.kind == LINK and node.implicit:
                # entries under a path that is a link below (e.g. lib -> usr/lib): they land where it leads
                dest = base.resolve(path)
                if dest is not None and dest.children is not None:
                    _merge(base, dest, node, path)
                    continue
            if old.kind == DIR:
                if not node.implicit:
                    old.layer = node.layer
                _merge(base, old, node, path)
                continue
        target.children[name] = node

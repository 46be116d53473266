"""Reading a user's YAML file (task, price table) safely: hostile YAML refused before
anything builds on it, syntax errors as one line, and the line of any key found again.

A leaf module (it knows no schema), so the task schema and the price table both read
their files through it without depending on each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tunewise.errors import TunewiseError
from tunewise.text import MAX_DEPTH, surrogate_in

MAX_YAML_VALUES = 100_000
"""Most values a task file may expand to through YAML aliases; far above any real task,
far below a "billion laughs" document (10 levels of 9 aliases: 9**10 values)."""


def node_line(root: yaml.Node | None, loc: tuple[Any, ...], exact: bool = False
               ) -> int | None:
    """Line (1-based) of the YAML node at ``loc``, or of its deepest existing parent (None
    instead with ``exact``)."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for part in loc:
        nxt = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    nxt, line = value, key.start_mark.line + 1
                    break
        elif (isinstance(node, yaml.SequenceNode) and isinstance(part, int)
              and part < len(node.value)):
            nxt = node.value[part]
            line = nxt.start_mark.line + 1
        if nxt is None:
            return None if exact else line
        node = nxt
    return line


def value_line(root: yaml.Node | None, loc: tuple[str, ...]) -> int | None:
    """File line of the first line of the value at ``loc``: the line after ``key: |`` for a
    block scalar, else the key's own line (None when ``loc`` is not in the file)."""
    line = node_line(root, loc, exact=True)
    node = root
    for key in loc:
        node = next((v for k, v in getattr(node, "value", []) if k.value == key), None)
        if node is None:
            return line
    if getattr(node, "style", None) in ("|", ">"):
        return node.start_mark.line + 2
    return node.start_mark.line + 1


def duplicate_key(node: yaml.Node | None, loc: tuple[str, ...] = (),
                   visited: set[int] | None = None) -> tuple[str, int] | None:
    """The first key given twice in one mapping, as (dotted path, line), or None.

    PyYAML silently keeps the last of two equal keys, so a pasted block that repeats
    ``target:`` would quietly change the task; this finds it instead. A node reached again
    through an alias was already checked: each node is walked once, so an alias bomb costs
    its size on the page, not its expansion.
    """
    visited = set() if visited is None else visited
    if node is None or id(node) in visited:
        return None
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                return ".".join((*loc, name)), key.start_mark.line + 1
            seen.add(name)
            found = duplicate_key(value, (*loc, name), visited)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = duplicate_key(item, (*loc, str(i)), visited)
            if found:
                return found
    return None


def _children(node: yaml.Node) -> list[tuple[str, yaml.Node, int]]:
    """(name, child node, line) of a mapping's values or a sequence's items."""
    if isinstance(node, yaml.MappingNode):
        return [(str(k.value), v, k.start_mark.line + 1) for k, v in node.value]
    if isinstance(node, yaml.SequenceNode):
        return [(str(i), v, v.start_mark.line + 1) for i, v in enumerate(node.value)]
    return []


def _expanded_sizes(root: yaml.Node) -> dict[int, int]:
    """Values each node stands for once aliases are expanded, by ``id(node)``.

    Each node is sized once (children first, without recursion), so a document whose
    aliases expand to billions of values is measured in the time it takes to read it.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, ready = stack.pop()
        if id(node) in sizes:
            continue
        kids = [child for _, child, _ in _children(node)]
        if ready:
            sizes[id(node)] = 1 + sum(sizes[id(k)] for k in kids)
        else:
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
    return sizes


def _compose(text: str, path: Path) -> yaml.Node | None:
    """The YAML node graph of ``text``, refusing hostile YAML before anything builds on it:
    nesting deeper than MAX_DEPTH (found from the parser's events, which never recurse),
    aliases that expand beyond MAX_YAML_VALUES, or a string holding a lone surrogate (a
    ``"\\ud800"`` escape).

    Raises:
        TunewiseError: naming the line; yaml.YAMLError for YAML that does not parse.
    """
    depth, top_key, key_next = 0, None, False  # key_next: the root mapping's next is a key
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if depth == 1 and key_next and isinstance(event, yaml.ScalarEvent):
            top_key = event.value
        if depth == 1 and isinstance(event, yaml.NodeEvent):
            key_next = not key_next
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            key_next = key_next if depth > 1 else isinstance(event, yaml.MappingStartEvent)
            if depth > MAX_DEPTH:
                raise TunewiseError(f"nested more than {MAX_DEPTH} levels deep", path=path,
                                    line=event.start_mark.line + 1, field=top_key)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is None:
        return None
    sizes = _expanded_sizes(root)
    if sizes[id(root)] > MAX_YAML_VALUES:
        node, loc, line = root, [], root.start_mark.line + 1
        while True:  # descend to the first value that is too big on its own
            big = next(((name, child, at) for name, child, at in _children(node)
                        if sizes[id(child)] > MAX_YAML_VALUES), None)
            if big is None:
                break
            loc.append(big[0])
            node, line = big[1], big[2]
        raise TunewiseError(
            f"YAML aliases expand to {sizes[id(node)]:,} values (more than "
            f"{MAX_YAML_VALUES:,}); a task file never needs that many",
            path=path, line=line, field=".".join(loc) or None)
    for node in _all_nodes(root):
        if isinstance(node, yaml.ScalarNode) and surrogate_in(str(node.value)):
            raise TunewiseError("a lone surrogate (an unpaired \\ud800-\\udfff escape) is not "
                                "text", path=path, line=node.start_mark.line + 1)
    return root


def _all_nodes(root: yaml.Node) -> list[yaml.Node]:
    """Every node of the graph once (keys included), in document order."""
    seen: set[int] = set()
    out: list[yaml.Node] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        if isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in reversed(node.value) for n in reversed(pair))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
    return out


def read_yaml(text: str, path: Path | str) -> tuple[Any, yaml.Node | None]:
    """YAML text as (data, node tree) for a user's file, with hostile YAML refused (see
    :func:`_compose`) and syntax errors as one line naming the line.

    Raises:
        TunewiseError: the YAML does not parse, nests too deep, expands too far through
            aliases, or holds a lone surrogate.
    """
    path = Path(path)
    try:
        root = _compose(text, path)
        return yaml.safe_load(text), root
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start and mark and start.line != mark.line:
            problem += f" ({context} that starts on line {start.line + 1})"
        raise TunewiseError(
            f"not valid YAML: {problem}", path=path, line=mark.line + 1 if mark else None
        ) from None

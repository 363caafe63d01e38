"""Reading a YAML file that may be hostile: one document as PyYAML's node graph, refused
in one line (file, line, key) when it is not UTF-8 text, holds a character YAML forbids,
nests too deep, repeats a key, or grows past a bound once its aliases are expanded (the
"billion laughs": a few lines of nested anchors that would build gigabytes).

Nothing is constructed here. The graph is measured first, linearly in its size, so that
constructing, printing or checking a value afterwards costs at most MAX_NODES."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import yaml

#: Most nodes a configuration file may hold once its aliases are expanded: far above any
#: real configuration (the largest setting, 1000 bucket bounds, is 1000 nodes).
MAX_NODES = 20_000
#: Deepest nesting of collections: a configuration needs five or six levels.
MAX_DEPTH = 32
#: libyaml's parser when PyYAML has it (its wheels do): linear where the pure-Python
#: scanner is quadratic in nesting depth, and it stops at 1000 levels by itself.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Fail = Callable[[str], BaseException]


def compose(path: str, fail: Fail,
            what: str = "config file") -> Tuple[yaml.SafeLoader, Optional[yaml.Node]]:
    """The loader and root node of the file at ``path`` (None for an empty file). Every
    problem raises ``fail(message)`` with a one-line message that starts with the file."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise fail(f"{path}: cannot read the {what}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise fail(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                   f"{exc.start}); expected a UTF-8 YAML file") from None
    try:
        loader, root = _parse(text)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, e.g. NUL
        line = text.count("\n", 0, exc.position) + 1
        raise fail(f"{path}:{line}: invalid YAML: character {_char(exc.character)} at "
                   f"offset {exc.position} is not allowed in YAML") from None
    except RecursionError:  # the pure-Python composer, some hundred levels down
        raise fail(f"{path}: invalid YAML: nested deeper than {MAX_DEPTH} levels") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        problem = getattr(exc, "problem", None) or str(exc)
        raise fail(f"{where}: invalid YAML: {_one_line(problem)}") from None
    if root is not None:
        try:
            check(root, path, fail)
        except BaseException:
            loader.dispose()
            raise
    return loader, root


def _parse(text: str) -> Tuple[yaml.SafeLoader, Optional[yaml.Node]]:
    """The loader and root node; libyaml's parser first (linear, and it stops at 1000
    levels), the pure-Python one when libyaml finds a problem other than depth, because its
    messages say more ("expected ',' or ']', but got '<stream end>'")."""
    loader = _Loader(text)
    try:
        return loader, loader.get_single_node()
    except yaml.YAMLError as exc:
        loader.dispose()
        if _Loader is yaml.SafeLoader or "depth" in str(getattr(exc, "problem", "")):
            raise
    loader = yaml.SafeLoader(text)
    try:
        return loader, loader.get_single_node()
    except BaseException:
        loader.dispose()
        raise


def construct(loader: yaml.SafeLoader, node: yaml.Node, where: str, fail: Fail) -> object:
    """The Python value of a node already measured by ``check``. A scalar Python cannot
    hold (an integer of more than 4300 digits) is refused in one line too."""
    try:
        return loader.construct_object(node, deep=True)
    except (ValueError, OverflowError) as exc:
        raise fail(f"{where}: {_one_line(str(exc))[:120]}") from None
    except yaml.YAMLError as exc:
        raise fail(f"{where}: invalid YAML: "
                   f"{_one_line(getattr(exc, 'problem', None) or str(exc))}") from None


def check(root: yaml.Node, path: str, fail: Fail) -> None:
    """Refuse a graph too large once expanded, too deep, or with a repeated key."""
    sizes: Dict[int, Tuple[int, int]] = {}  # id(node) -> (expanded nodes, depth)
    _measure(root, sizes)
    size, depth = sizes[id(root)]
    if size <= MAX_NODES and depth <= MAX_DEPTH:
        _no_duplicate_keys(root, path, fail)
        return
    trail: List[str] = []
    node, visited = root, set()
    while True:  # down to the smallest part that is too large or too deep, for the message
        size, depth = sizes[id(node)]
        visited.add(id(node))
        child = _largest_child(node, sizes)
        if (child is None or id(child[1]) in visited  # a leaf of the excess, or a cycle
                or (size > MAX_NODES and sizes[id(child[1])][0] <= MAX_NODES)
                or (size <= MAX_NODES and sizes[id(child[1])][1] <= MAX_DEPTH)):
            problem = (f"more than {MAX_NODES} values once its aliases are expanded"
                       if size > MAX_NODES else f"nested deeper than {MAX_DEPTH} levels")
            key = ".".join(trail) or "the document"
            raise fail(f"{path}:{node.start_mark.line + 1}: {key}: {problem}")
        key, node = child
        if key is not None:
            trail.append(key)


def _measure(root: yaml.Node, sizes: Dict[int, Tuple[int, int]]) -> None:
    """Expanded size and depth of every node, without recursion and in time linear in the
    graph (a node shared by aliases is measured once). A cycle counts as endless."""
    endless = (MAX_NODES + 1, MAX_DEPTH + 1)
    stack: List[Tuple[yaml.Node, bool]] = [(root, False)]
    pending = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if done:
            pending.discard(key)
            size, depth = 1, 1
            for child in children:
                c_size, c_depth = sizes.get(id(child), endless)
                size, depth = min(size + c_size, MAX_NODES + 1), max(depth, c_depth + 1)
            sizes[key] = (size, min(depth, MAX_DEPTH + 1))
            continue
        if key in pending:  # reached again while measuring itself: a cycle
            sizes[key] = endless
            continue
        pending.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)


def _children(node: yaml.Node) -> List[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _largest_child(node: yaml.Node, sizes: Dict[int, Tuple[int, int]]):
    """(key or None, child) of the child that makes ``node`` too large or deep."""
    if isinstance(node, yaml.MappingNode):
        pairs = [(k.value if isinstance(k, yaml.ScalarNode) else None, v)
                 for k, v in node.value]
    elif isinstance(node, yaml.SequenceNode):
        pairs = [(None, v) for v in node.value]
    else:
        return None
    if not pairs:
        return None
    return max(pairs, key=lambda kv: sizes[id(kv[1])])


def _no_duplicate_keys(root: yaml.Node, path: str, fail: Fail) -> None:
    """A repeated key would silently win over the first (a second user of the same name,
    a setting given twice): refuse it, naming its full key."""
    seen_nodes = set()
    stack: List[Tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, trail = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys = set()
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                name = f"{trail}.{key_node.value}" if trail else key_node.value
                if key_node.value in keys:
                    raise fail(f"{path}:{key_node.start_mark.line + 1}: "
                               f"{_one_line(name)[:120]}: duplicate key")
                keys.add(key_node.value)
                stack.append((value_node, name))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, f"{trail}[{i}]") for i, child in enumerate(node.value))


def _char(character: object) -> str:
    return f"U+{ord(character):04X}" if isinstance(character, str) else repr(character)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())

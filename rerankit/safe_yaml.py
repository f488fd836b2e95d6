"""YAML for config files, read with PyYAML's safe loader under a size budget.

A few kilobytes of nested aliases (``&a [*b, *b, ...]``) expand into billions of nodes when
built ("billion laughs"); a config never needs more than a few thousand. The document's node
graph is measured as it would expand — without building it — and refused past the budget.

A mapping that repeats a key is refused too: PyYAML keeps the last value silently, so a
setting written twice would change the run without a word.
"""

from __future__ import annotations

from typing import Any

import yaml

# Nodes a config may expand to once every alias is resolved.
MAX_NODES = 100_000


class YAMLTooLargeError(ValueError):
    """The document would expand past MAX_NODES nodes (or refers to itself)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, raising a ConstructorError at a key a mapping already holds. Keys
    brought in by a merge (``<<: *base``) may still be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {key!r} (first on line {first_line[key]})",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, memo: dict[int, int], active: set[int]) -> int:
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise YAMLTooLargeError("an alias refers to a node that contains it")
    active.add(key)
    if isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    else:
        children = []
    size = 1
    for child in children:
        size += _expanded_size(child, memo, active)
        if size > MAX_NODES:
            raise YAMLTooLargeError(f"expands past {MAX_NODES} nodes (nested aliases?)")
    active.discard(key)
    memo[key] = size
    return size


def load(text: str) -> Any:
    """The document in ``text`` (None when empty); yaml.YAMLError (a repeated key among them)
    or YAMLTooLargeError."""
    loader = _UniqueKeyLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YAMLTooLargeError("nested too deeply") from None
        if node is None:
            return None
        _expanded_size(node, {}, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()

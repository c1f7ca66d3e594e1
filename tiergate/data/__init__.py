"""Data sets and input parsing: built-in corpora, any JSONL/CSV of ``text``/``label``, RFC 822 mail."""

from tiergate.data.datasets import Dataset, Example, load_dataset, split_of_hash
from tiergate.data.items import Item, make_item, make_items

__all__ = ["Dataset", "Example", "Item", "load_dataset", "make_item", "make_items", "split_of_hash"]

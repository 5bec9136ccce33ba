"""Data sources other than text corpora, by name: each returns (tokenizer, batch source, validation blocks).

Text corpora (kjv, shakespeare, files) are handled by data/prepare.py; this registry holds generated data.
"""

from __future__ import annotations

SOURCES: dict = {}

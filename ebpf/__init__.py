"""eBPF C sources, compiled at runtime by bcc; SRC_DIR lets the loader find them as package data."""

from pathlib import Path

SRC_DIR = Path(__file__).parent

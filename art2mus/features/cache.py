"""Content-addressed embedding shards: one directory per (modality, encoder id, shaping params).

Layout under the shard root (a DVC `persist: true` output, so re-runs keep it):

    shards/<modality>-<namespace>/namespace.json          what the namespace is (readable)
    shards/<modality>-<namespace>/part-000001.safetensors  "sha256" uint8 [N, 32], "embeddings" float32 [N, D]

The namespace hashes everything that shapes an embedding besides the file's content: the encoder
id (which names its weights), the preprocessing version and, for audio, the sample rate and crop.
A file is looked up by its content hash (the manifest's sha256), so renaming or re-listing files
costs nothing and a new file costs one embedding. Shards are written whole and atomically, one per
`shard_size` new embeddings, so an interrupted run keeps every shard it finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from art2mus.io import atomic_path, open_safetensors, write_json_atomic

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the shard layout changes
SHARD_GLOB = "part-*.safetensors"
NAMESPACE_FILE = "namespace.json"
HASH_BYTES = 32


def namespace_of(modality: str, encoder_id: str, shaping: dict[str, Any]) -> str:
    """Short hash naming one cache namespace."""
    key = {"cache_version": CACHE_VERSION, "modality": modality, "encoder_id": encoder_id, "shaping": shaping}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def hashes_to_tensor(hashes: list[str]) -> torch.Tensor:
    """Hex sha256 strings -> uint8 [N, 32]."""
    if not hashes:
        return torch.zeros(0, HASH_BYTES, dtype=torch.uint8)
    return torch.frombuffer(bytearray(b"".join(bytes.fromhex(value) for value in hashes)), dtype=torch.uint8).reshape(
        len(hashes), HASH_BYTES
    ).clone()


def tensor_to_hashes(tensor: torch.Tensor) -> list[str]:
    return [bytes(row.tolist()).hex() for row in tensor]


class EmbeddingCache:
    """Embeddings of one namespace, keyed by file content hash."""

    def __init__(
        self,
        shards_root: Path,
        modality: str,
        encoder_id: str,
        shared_space: str | None,
        shaping: dict[str, Any],
    ) -> None:
        self.modality = modality
        self.encoder_id = encoder_id
        self.shared_space = shared_space
        self.shaping = dict(shaping)
        self.namespace = namespace_of(modality, encoder_id, self.shaping)
        self.directory = Path(shards_root) / f"{modality}-{self.namespace}"
        self.rows: dict[str, tuple[Path, int]] = {}  # content hash -> (shard, row)
        self.dim: int | None = None
        self.scan()

    def scan(self) -> None:
        """Index every readable shard of this namespace; damaged or foreign shards are skipped."""
        from safetensors import safe_open

        self.rows.clear()
        for shard in sorted(self.directory.glob(SHARD_GLOB)):
            try:
                with safe_open(str(shard), framework="pt") as handle:
                    metadata = handle.metadata() or {}
                    hashes = tensor_to_hashes(handle.get_tensor("sha256"))
                    dim = int(handle.get_slice("embeddings").get_shape()[1])
            except Exception as error:  # a damaged file: its items are simply embedded again
                logger.warning("features: skipping unreadable shard %s (%s)", shard, error)
                continue
            if metadata.get("namespace") != self.namespace:
                logger.warning("features: skipping shard %s of another namespace", shard)
                continue
            self.dim = dim
            for row, content_hash in enumerate(hashes):
                self.rows.setdefault(content_hash, (shard, row))

    def __contains__(self, content_hash: str) -> bool:
        return content_hash in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def missing(self, hashes: Iterable[str]) -> list[str]:
        """The hashes (unique, in first-seen order) that have no embedding yet."""
        return [value for value in dict.fromkeys(hashes) if value not in self.rows]

    def next_shard_path(self) -> Path:
        existing = [int(path.stem.split("-")[1]) for path in self.directory.glob(SHARD_GLOB)
                    if path.stem.split("-")[1].isdigit()]
        number = max(existing, default=0) + 1
        return self.directory / f"part-{number:06d}.safetensors"

    def add(self, hashes: list[str], embeddings: torch.Tensor) -> Path | None:
        """Store embeddings [N, D] for N content hashes as one new shard; returns its path."""
        from safetensors.torch import save_file

        if len(hashes) != len(embeddings):
            raise ValueError(f"{len(hashes)} hashes for {len(embeddings)} embeddings")
        if not hashes:
            return None
        embeddings = embeddings.detach().to("cpu", torch.float32).contiguous()
        if self.dim is not None and embeddings.shape[1] != self.dim:
            raise ValueError(f"embedding size {embeddings.shape[1]} differs from the cache's {self.dim}")
        self.directory.mkdir(parents=True, exist_ok=True)
        if not (self.directory / NAMESPACE_FILE).is_file():
            write_json_atomic(self.describe(), self.directory / NAMESPACE_FILE)
        path = self.next_shard_path()
        metadata = {"namespace": self.namespace, "modality": self.modality, "encoder_id": self.encoder_id,
                    "cache_version": str(CACHE_VERSION)}
        with atomic_path(path) as tmp:
            save_file({"sha256": hashes_to_tensor(hashes), "embeddings": embeddings}, str(tmp), metadata=metadata)
        self.dim = int(embeddings.shape[1])
        for row, content_hash in enumerate(hashes):
            self.rows.setdefault(content_hash, (path, row))
        return path

    def get(self, hashes: list[str]) -> torch.Tensor:
        """Embeddings [len(hashes), D] in the given order (every hash must be cached); a shard damaged since
        `scan` is an UnreadableFile naming it."""
        matrix = torch.zeros(len(hashes), self.dim or 0)
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for position, content_hash in enumerate(hashes):
            shard, row = self.rows[content_hash]
            by_shard.setdefault(shard, []).append((position, row))
        for shard, pairs in by_shard.items():
            with open_safetensors(shard) as handle:
                stored = handle.get_tensor("embeddings")
            positions = torch.tensor([position for position, _ in pairs])
            rows = torch.tensor([row for _, row in pairs])
            matrix[positions] = stored[rows]
        return matrix

    def describe(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "modality": self.modality, "encoder_id": self.encoder_id,
                "shared_space": self.shared_space, "shaping": self.shaping, "cache_version": CACHE_VERSION}

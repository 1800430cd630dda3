"""GPTQ at the speed of the hardware: llmcompressor's own GPTQ, minus the work it repeats or moves.

Measured on the H100 (docs/benchmarks.md): with llmcompressor's defaults a sample costs ~17 ms per
decoder layer, of which ~8.5 ms was copying the cached layer inputs to the CPU and back (pageable
memcpy) and ~4.5 ms the fp32 Hessian products, 5 of 7 of them repeated: q/k/v read one tensor and
gate/up another, yet each Linear's hook multiplies it again. Two paths (`gptq_path`):

- `exact` leaves every number as it was, so the checkpoint is bit for bit the default path's (tested
  on tiny, measured at full size): `cached_inputs` keeps the cached layer inputs on the GPU as far as
  they fit (`resident_samples`) and the rest in pinned CPU memory, and `SharedInputGPTQModifier` computes
  2·XᵀX once per input tensor and adds it to each Hessian, the additions llmcompressor does, in the
  same order on the same values.
- `fast` (the default) adds what changes rounding and is judged by quality instead (the proxy's
  paired difference to `exact`, tests/compress/test_gptq.py): sdpa attention during calibration where
  llmcompressor forces eager (`sdpa_for_eager`), and Hessian products from the bf16 inputs on tensor
  cores with fp32 accumulation. GPTQ's error feedback turns any change of rounding into ~9% of int8
  values moved by a few steps, so bit identity is the wrong test for these.

Worth proposing upstream: one hook per distinct input instead of one per Linear, and sdpa during
calibration for unpadded batches.
"""

import collections
import contextlib
import logging
import time

import torch
from compressed_tensors.utils import get_execution_device
from llmcompressor.modifiers.gptq import GPTQModifier
from llmcompressor.modifiers.gptq.helpers import accumulate_hessian, make_empty_hessian
from llmcompressor.pipelines.cache import IntermediatesCache, IntermediateValue
from pydantic import PrivateAttr

from exatrack.core import console
from exatrack.core.basics import ExatrackError

log = logging.getLogger(__name__)
# Share of the GPU memory left free after loading the model that the cached layer inputs may take:
# the rest is for one layer's forward (eager attention materialises heads x seq^2 scores).
CACHE_SHARE = 0.6


class SharedInputGPTQModifier(GPTQModifier):
    """GPTQModifier with one Hessian product per distinct input, a progress bar over the Linears with
    an ETA, and the solve's seconds kept for the caller's time split."""

    # The last input seen and its product. Holding the tensor keeps its memory from being reused, so
    # `is` cannot mistake the next batch's input (allocated at the same address) for this one.
    _last_input: torch.Tensor | None = PrivateAttr(default=None)
    _last_product: tuple[torch.Tensor, torch.Tensor] | None = PrivateAttr(default=None)
    # Private, so the recipe llmcompressor saves beside the checkpoint reads as without it.
    _bf16_products: bool = PrivateAttr(default=False)
    _progress: object = PrivateAttr(default=None)
    _solve_seconds: float = PrivateAttr(default=0.0)

    @property
    def solve_seconds(self) -> float:
        return self._solve_seconds

    def calibrate_module(self, module, args, _output):
        if not isinstance(module, torch.nn.Linear):
            return super().calibrate_module(module, args, _output)
        inp = args[0]
        if inp is not self._last_input:
            self._last_product = self._product(inp, module)
            self._last_input = inp
        product, samples = self._last_product
        if module not in self._num_samples:
            self._hessians[module] = torch.zeros_like(product)
            self._num_samples[module] = torch.zeros((), device=product.device)
        self._hessians[module] += product
        self._num_samples[module] += samples

    def _product(self, inp: torch.Tensor, module) -> tuple[torch.Tensor, torch.Tensor]:
        """torch.mm's fp32 output from bf16 inputs runs on CUDA only; a float32 model (CPU) keeps
        llmcompressor's products whatever the path."""
        hessian = make_empty_hessian(module, device=get_execution_device(module))
        if self._bf16_products and inp.dtype == torch.bfloat16 and hessian.device.type == "cuda":
            return bf16_hessian(inp, hessian)
        return accumulate_hessian(inp, module, hessian, torch.zeros((), device=hessian.device))

    def on_calibration_start(self, state, event, **kwargs):
        super().on_calibration_start(state, event, **kwargs)
        self._progress = console.bar(total=len(self._module_names), desc="GPTQ", unit="linear")

    def on_sequential_epoch_end(self, state, event, modules, **kwargs):
        self._last_input = self._last_product = None
        waiting = len(self._num_samples)  # the Linears calibrated and not yet solved
        started = time.perf_counter()
        super().on_sequential_epoch_end(state, event, modules, **kwargs)
        self._solve_seconds += time.perf_counter() - started
        self._progress.update(waiting - len(self._num_samples))

    def on_finalize(self, state, **kwargs):
        if self._progress is not None:
            self._progress.close()
        return super().on_finalize(state, **kwargs)


def bf16_hessian(inp: torch.Tensor, hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What llmcompressor's accumulate_hessian adds for a Linear (llmcompressor/modifiers/gptq/helpers.py:
    (√2·X)(√2·X)ᵀ over the input's rows, one sample per leading index), with the product on tensor cores
    from the bf16 input, accumulated in fp32 (torch.mm's out_dtype), instead of on the fp32 upcast."""
    rows = inp.to(hessian.device).reshape(-1, inp.shape[-1])
    hessian += torch.mm(rows.t(), rows, out_dtype=torch.float32).mul_(2)
    samples = inp.shape[0] if inp.dim() > 2 else 1
    return hessian, torch.full((), float(samples), device=hessian.device)


def speed_up(modifiers: list, path: str) -> list:
    """The recipe's modifiers with each GPTQModifier swapped for the same-configured fast one."""
    swapped = []
    for m in modifiers:
        if type(m) is GPTQModifier:
            m = SharedInputGPTQModifier(**{name: getattr(m, name) for name in m.model_fields_set})
            m._bf16_products = path == "fast"
        swapped.append(m)
    return swapped


def attention(path: str):
    """The context oneshot runs in: sdpa in eager's place on the fast path."""
    return sdpa_for_eager() if path == "fast" else contextlib.nullcontext(collections.Counter())


@contextlib.contextmanager
def sdpa_for_eager():
    """llmcompressor forces eager attention during calibration (llmcompressor/utils/helpers.py,
    use_eager_attention), because its traced graph adds the eager causal mask. The decoder layers run
    outside that graph (llmcompressor/pipelines/sequential/helpers.py: SequentialTracer.is_leaf_module
    keeps every sequential target a leaf), and their attention looks up `ALL_ATTENTION_FUNCTIONS
    .get_interface("eager", eager_attention_forward)` (transformers/models/exaone4/modeling_exaone4.py),
    which returns a registered "eager" entry first. The mask builders are leaves of the graph too
    (llmcompressor's _get_autowrap_functions), run per sample, and look their builder up in
    `ALL_MASK_ATTENTION_FUNCTIONS[config._attn_implementation]` (transformers/masking_utils.py,
    create_causal_mask). So registering transformers' own sdpa attention and sdpa mask under "eager"
    swaps both and leaves the graph as it is. sdpa's mask builder returns None for a causal mask that
    needs no materialising (no padding, no window shorter than the sequence: `_ignore_causal_mask_sdpa`),
    and sdpa then runs is_causal, its flash kernel; so an unpadded sample caches no seq x seq mask
    between layers (half of what a 2048-token sample cached) and copies none per layer. Yields the
    attention calls counted by kind: "causal" (no mask) and "masked"."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    calls = collections.Counter()

    def attention_forward(module, query, key, value, attention_mask, **kwargs):
        calls["causal" if attention_mask is None else "masked"] += 1
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    ALL_ATTENTION_FUNCTIONS["eager"] = attention_forward
    ALL_MASK_ATTENTION_FUNCTIONS["eager"] = sdpa_mask
    try:
        yield calls
    finally:
        del ALL_ATTENTION_FUNCTIONS["eager"], ALL_MASK_ATTENTION_FUNCTIONS["eager"]  # the local overrides only
        log.info("calibration attention through sdpa: %s", dict(calls))


def sample_bytes(model, length: int, path: str) -> int:
    """What llmcompressor's cache holds for a sample of `length` tokens between decoder layers: the
    hidden states and the rotary cos/sin in the model's dtype, and on the exact path the eager causal
    mask (length x length; the fast path's unpadded samples have none, `sdpa_for_eager`)."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    mask_width = length if path == "exact" else 0
    return length * (config.hidden_size + mask_width + 2 * head_dim) * model.dtype.itemsize


def resident_samples(model, samples: int, seq_len: int, path: str) -> int:
    """How many samples' cached layer inputs stay on the GPU: as many as fit in CACHE_SHARE of what is
    free beside the model, below a memory cap set with torch.cuda.set_per_process_memory_fraction too;
    0 for a model on the CPU."""
    device = next(model.parameters()).device
    if not torch.cuda.is_available() or device.type != "cuda":
        return 0
    free, total = torch.cuda.mem_get_info(device)
    capped = torch.cuda.get_per_process_memory_fraction(device) * total - torch.cuda.memory_reserved(device)
    return min(samples, int(CACHE_SHARE * min(free, capped) // sample_bytes(model, seq_len, path)))


def cpu_bytes(model, lengths: list[int], path: str, resident: int) -> int:
    """The most the cache will hold in CPU memory: the samples past `resident`, taken as the longest
    (llmcompressor shuffles them), and one sample more, since a layer's output is stored before the
    input it replaces is dropped."""
    longest = sorted(lengths, reverse=True)
    moved = longest[:len(lengths) - resident]
    return sum(sample_bytes(model, n, path) for n in moved) + (sample_bytes(model, longest[0], path) if moved else 0)


def check_cpu_memory(model, lengths: list[int], path: str, resident: int) -> None:
    """A cache larger than the memory the system has free ends in the kernel's OOM kill partway through
    calibration, with no message in the run; refused before it starts instead."""
    import psutil

    needed, available = cpu_bytes(model, lengths, path, resident), psutil.virtual_memory().available
    if needed > available:
        raise ExatrackError(f"calibration's cached layer inputs need {needed / 2**30:.1f} GiB of CPU memory "
                            f"({len(lengths) - resident} samples of up to {max(lengths)} tokens) and "
                            f"{available / 2**30:.1f} GiB is free; lower num_samples or max_seq_len")


@contextlib.contextmanager
def cached_inputs(model, samples: int, resident: int):
    """oneshot's options for the cached layer inputs, the first `resident` samples' on the GPU and the
    rest in pinned CPU memory (`GpuFirstCache`), and the tag saying where they stayed. All on the GPU
    is llmcompressor's own `sequential_offload_device`.

    Not llmcompressor's `sequential_prefetch` (llmcompressor/pipelines/cache.py, iter_prefetch) for
    the rest: it onloads the next batch on a second CUDA stream without making that stream wait for
    the compute stream's use of the memory it reuses, and on the H100 it moved 9% of the int8 values,
    which no mere copy may do."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        yield {}, "cpu"
    elif resident >= samples:
        yield {"sequential_offload_device": str(device)}, "gpu"
    else:
        log.info("calibration inputs: %d of %d samples on the GPU, the rest in pinned CPU memory", resident, samples)
        with gpu_first(resident):
            yield {}, f"gpu {resident}/{samples}, rest pinned cpu"


@contextlib.contextmanager
def gpu_first(resident: int):
    """The sequential pipeline builds its cache through its module's name for the class
    (llmcompressor/pipelines/sequential/pipeline.py: `IntermediatesCache.from_dataloader`), so pointing
    that name at a `GpuFirstCache` for the length of a oneshot changes where the inputs stay and
    nothing else."""
    from llmcompressor.pipelines.sequential import pipeline

    class Cache(GpuFirstCache):
        pass

    Cache.resident = resident
    pipeline.IntermediatesCache = Cache
    try:
        yield
    finally:
        pipeline.IntermediatesCache = IntermediatesCache


class GpuFirstCache(IntermediatesCache):
    """llmcompressor's layer-input cache (llmcompressor/pipelines/cache.py) keeping the first `resident`
    batches on the GPU and copying the others to pinned CPU memory, where its own copy is pageable: a
    pageable copy is staged through a driver buffer and blocks; a pinned one is a DMA at the link's speed
    that also lets its `_onload_value` (non_blocking to the accelerator) queue the way back without a
    wait.

    Both copies are queued on the compute stream, so every use of a batch's values comes after the copy
    that made them, and torch's pinned allocator keeps a block from reuse until the copies queued on it
    have run (CachingHostAllocator's record_event for non_blocking copies). So copies change no value:
    on the H200, half of 128 samples moved, the int8 weights equalled the all-GPU run's
    (docs/benchmarks.md, issue 25)."""

    resident = 0

    def update(self, batch_index: int, values: dict):
        device = None if batch_index < self.resident else self.offload_device
        self.batch_intermediates[batch_index].update({k: self._offload_value(v, device) for k, v in values.items()})

    @classmethod
    def _offload_value(cls, value, offload_device, onload_device=None) -> IntermediateValue:
        if isinstance(value, torch.Tensor) and value.is_cuda and offload_device is not None \
                and torch.device(offload_device).type == "cpu":
            host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
            return IntermediateValue(host.copy_(value, non_blocking=True), onload_device or value.device)
        return super()._offload_value(value, offload_device, onload_device)

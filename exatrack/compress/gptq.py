"""GPTQ at the speed of the hardware: llmcompressor's own GPTQ, minus the work it repeats or moves.

Measured on the H100 (docs/benchmarks.md): with llmcompressor's defaults a sample costs ~17 ms per
decoder layer, of which ~8.5 ms was copying the cached layer inputs to the CPU and back (pageable
memcpy) and ~4.5 ms the fp32 Hessian products, 5 of 7 of them repeated: q/k/v read one tensor and
gate/up another, yet each Linear's hook multiplies it again. So:

- `calibration_options` keeps the cached layer inputs on the GPU when they fit (llmcompressor's own
  `sequential_offload_device`), and
- `SharedInputGPTQModifier` computes 2·XᵀX once per input tensor and adds it to each Hessian, the
  additions llmcompressor does, in the same order on the same values.

Both leave every number as it was: the checkpoint is bit-for-bit the default path's (tested on tiny,
measured at full size). What remains is llmcompressor forcing eager attention during calibration and
running every layer twice (calibrate, then propagate the quantized outputs). Worth proposing upstream:
one hook per distinct input instead of one per Linear.
"""

import logging
import time

import torch
from compressed_tensors.utils import get_execution_device
from llmcompressor.modifiers.gptq import GPTQModifier
from llmcompressor.modifiers.gptq.helpers import accumulate_hessian, make_empty_hessian
from pydantic import PrivateAttr

from exatrack.core import console

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
            empty = make_empty_hessian(module, device=get_execution_device(module))
            self._last_product = accumulate_hessian(inp, module, empty, torch.zeros((), device=empty.device))
            self._last_input = inp
        product, samples = self._last_product
        if module not in self._num_samples:
            self._hessians[module] = torch.zeros_like(product)
            self._num_samples[module] = torch.zeros((), device=product.device)
        self._hessians[module] += product
        self._num_samples[module] += samples

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


def speed_up(modifiers: list) -> list:
    """The recipe's modifiers with each GPTQModifier swapped for the same-configured fast one."""
    return [SharedInputGPTQModifier(**{name: getattr(m, name) for name in m.model_fields_set})
            if type(m) is GPTQModifier else m for m in modifiers]


def calibration_options(model, samples: int, seq_len: int) -> dict:
    """oneshot's options: the cached layer inputs stay on the GPU when they fit. Each sample caches
    the hidden states, the eager causal mask and the rotary cos/sin, all in the model's dtype."""
    if not torch.cuda.is_available():
        return {}
    device = next(model.parameters()).device
    if device.type != "cuda":
        return {}
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_sample = seq_len * (config.hidden_size + seq_len + 2 * head_dim) * model.dtype.itemsize
    free, _ = torch.cuda.mem_get_info(device)
    if samples * per_sample > CACHE_SHARE * free:
        log.info("calibration inputs (%.1f GiB) stay in CPU memory: they would not fit beside the model",
                 samples * per_sample / 2**30)
        return {}
    return {"sequential_offload_device": str(device)}

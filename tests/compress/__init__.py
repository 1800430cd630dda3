"""Tests of exatrack/compress: recipes, quantize and its GPTQ path, prune, distill, sft."""

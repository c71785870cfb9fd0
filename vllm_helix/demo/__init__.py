# SPDX-License-Identifier: Apache-2.0
"""Demo tooling, apart from the runtime: the embedded demo checkpoint (`model`: `vllm-helix demo-model`) and
the one-command demo server (`server`: `vllm-helix serve-demo`)."""

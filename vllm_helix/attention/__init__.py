"""The Helix attention backend for vLLM's v1 attention interface."""

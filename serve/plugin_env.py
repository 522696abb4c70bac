"""The names limachat's own processes and its vLLM plugin (serve/vllm_plugin.py) share: the environment
variables `limachat serve` sets for vLLM's processes, and the per-request keys the plugin reads. Typed
settings, the launcher and the fluency scorer import these, never the module that patches vLLM."""

ENABLE = "LIMACHAT_VLLM_PLUGIN"  # set to 1 by `limachat serve` (serve/server.py)
# Replaces every patch's own version range: lets a test check how the plugin stands aside.
RANGE_OVERRIDE = "LIMACHAT_VLLM_PATCH_RANGE"
ADAPTER_ROOTS = "LIMACHAT_ADAPTER_ROOTS"  # set by `limachat serve`: the folders adapters load from at run time
STATIC_ADAPTERS = "LIMACHAT_STATIC_ADAPTERS"  # and the adapters it names on the command line (os.pathsep-joined)
CACHED_PROMPT = "limachat_cached_prompt"  # vllm_xargs key: prompt log-probabilities may start after the cache

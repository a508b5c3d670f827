"""Reasoning generation with vLLM on a GPU; gradients stay in transformers.

    pip install 'greater[vllm]'

    from greater.inference.backends.vllm import VLLMGenerator
    generator = VLLMGenerator("HuggingFaceTB/SmolLM2-135M-Instruct", stop_ids={2})
    greater.optimize(model, tokenizer, task, config, generator=generator)

vLLM keeps its own copy of the weights, so give it a fraction of the GPU memory
(`gpu_memory_utilization`) and leave the rest to the transformers model used for gradients.
"""

from __future__ import annotations

from greater.errors import GreaterError
from greater.inference.generation import Generator


class VLLMGenerator(Generator):
    """The `greater.inference.generation.Generator` interface on a vLLM engine: greedy, token ids in, token ids out.

    It has no shared-prefix decoder (vLLM keeps its own cache), so selection regenerates and re-scores."""

    def __init__(
        self,
        model: str,
        *,
        stop_ids: set[int],
        gpu_memory_utilization: float = 0.4,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        **engine_kwargs,
    ) -> None:
        try:
            from vllm import LLM, SamplingParams  # optional (greater[vllm], GPU only)
        except ImportError as exc:
            raise GreaterError("the vLLM backend needs vLLM: pip install 'greater[vllm]' (GPU only)") from exc
        super().__init__()
        self._sampling = SamplingParams
        self.stop_ids = set(stop_ids)
        self.llm = LLM(
            model=model,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            trust_remote_code=trust_remote_code,
            **engine_kwargs,
        )

    def generate(self, contexts: list[tuple[int, ...]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuations of `contexts` (stop token excluded), in order."""
        if max_new_tokens <= 0 or not contexts:
            return [[] for _ in contexts]
        params = self._sampling(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=sorted(self.stop_ids))
        prompts = [{"prompt_token_ids": list(c)} for c in contexts]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [before_stop_token(list(o.outputs[0].token_ids), self.stop_ids) for o in outputs]


def before_stop_token(tokens: list[int], stop_ids: set[int]) -> list[int]:
    """Tokens before the first stop token (vLLM may include the stop token in its output)."""
    return next((tokens[:i] for i, t in enumerate(tokens) if t in stop_ids), tokens)

"""The transformers fallback engine: ``model.generate`` with a token streamer, one request at a time on a worker
thread."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from tritonrag.devices import limit_torch_memory, pick_device
from tritonrag.errors import InvalidInput
from tritonrag.generation.engine import GenerationSink
from tritonrag.generation.sampling import Completion, SamplingParams
from tritonrag.generation.stop_strings import StopMatcher
from tritonrag.generation.structured import structured_unsupported
from tritonrag.generation.worker_thread import WorkerThreadEngine
from tritonrag.settings import GeneratorSettings

# Called with each new piece of answer text; returns False to cancel the generation.
OnText = Callable[[str], bool]


class TransformersGenerator:
    """Token-by-token generation with transformers' ``generate`` (the fallback engine; one request at a time)."""

    def __init__(self, settings: GeneratorSettings, device: str = "auto") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.settings = settings
        self.device = pick_device(device)
        limit_torch_memory(self.device, settings.gpu_memory_utilization)
        dtype = getattr(torch, settings.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(settings.model)
        self.model = AutoModelForCausalLM.from_pretrained(settings.model, dtype=dtype).to(self.device).eval()
        self._lock = threading.Lock()

    def generate(self, prompt: str, params: SamplingParams, on_text: OnText) -> Completion:
        """Generate for ``prompt``, calling ``on_text`` with each piece of answer text as it is decoded."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        if params.structured is not None:  # nothing here would constrain the tokens (TransformersEngine.submit)
            raise structured_unsupported("transformers")
        inputs = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        if prompt_tokens > self.settings.max_prompt_tokens:
            raise InvalidInput(
                f"prompt has {prompt_tokens} tokens; the limit is {self.settings.max_prompt_tokens} "
                "(lower top_k or shorten the question)"
            )
        streamer = _DecodeStreamer(self.tokenizer, StopMatcher(params.stop), on_text, prompt_tokens)

        class _Halt(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), streamer.halted, dtype=torch.bool, device=input_ids.device)

        sampling = params.temperature > 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "do_sample": sampling,
            "repetition_penalty": params.repetition_penalty,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([_Halt()]),
            "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        }
        if sampling:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with self._lock, torch.inference_mode():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            self.model.generate(**inputs, **kwargs)
        streamer.finish()
        if streamer.cancelled:
            reason = "cancelled"
        elif streamer.matcher.stopped or streamer.generated < params.max_tokens:
            reason = "stop"
        else:
            reason = "length"
        return Completion(reason, prompt_tokens, streamer.generated)


class _DecodeStreamer:
    """A transformers streamer that decodes token by token and forwards stop-filtered text."""

    def __init__(self, tokenizer: Any, matcher: StopMatcher, on_text: OnText, prompt_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.matcher = matcher
        self.on_text = on_text
        self.prompt_tokens = prompt_tokens
        self.token_ids: list[int] = []
        self.sent_chars = 0
        self.generated = 0
        self.cancelled = False
        self._prompt_seen = False

    @property
    def halted(self) -> bool:
        return self.cancelled or self.matcher.stopped

    def put(self, value: Any) -> None:
        ids = value.reshape(-1).tolist()
        if not self._prompt_seen:  # generate() first hands the streamer the prompt
            self._prompt_seen = True
            return
        eos = self.tokenizer.eos_token_id
        for token in ids:
            if self.halted:
                return
            self.generated += 1
            if token == eos or token in getattr(self.tokenizer, "all_special_ids", ()):
                continue
            self.token_ids.append(token)
            text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the next token
                continue
            self._emit(self.matcher.feed(text[self.sent_chars :]))
            self.sent_chars = len(text)

    def _emit(self, text: str) -> None:
        if text and not self.cancelled and not self.on_text(text):
            self.cancelled = True

    def end(self) -> None:
        pass

    def finish(self) -> None:
        if not self.cancelled:
            self._emit(self.matcher.flush())


class TransformersEngine(WorkerThreadEngine):
    """The transformers fallback: one worker thread generates the queued requests one at a time."""

    name = "transformers"

    def __init__(self, settings: GeneratorSettings, device: str = "auto") -> None:
        self.generator = TransformersGenerator(settings, device)
        super().__init__()

    def submit(self, prompt: str, params: SamplingParams, sink: GenerationSink) -> str:
        """Queue the request; one asking for structured output (which this engine cannot constrain) is answered at
        once, before it is queued, with ``sink.on_error(Unsupported(...))``."""
        if params.structured is not None:
            sink.on_error(structured_unsupported(self.name))
            return f"{self.name}-refused-{next(self._ids)}"
        return super().submit(prompt, params, sink)

    def _generate(self, prompt: str, params: SamplingParams, sink: GenerationSink) -> Completion:
        return self.generator.generate(prompt, params, functools.partial(self._forward, sink))

    def _forward(self, sink: GenerationSink, text: str) -> bool:
        return not self._stopping and sink.on_text(text, 1)

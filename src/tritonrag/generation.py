"""Text generation: validated sampling parameters, stop-string streaming, and the transformers engine."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import GeneratorSettings, pick_device
from .errors import InvalidInput
from .gpu_memory import limit_torch_memory
from .validation import as_float, as_int


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings, validated against the server's limits."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    repetition_penalty: float = 1.0

    @classmethod
    def from_request(cls, raw: Mapping[str, Any], settings: GeneratorSettings) -> SamplingParams:
        """Build from a mapping of request values (missing keys take the configured defaults)."""
        known = {"max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "repetition_penalty"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise InvalidInput(f"unknown sampling parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        max_tokens = as_int(raw.get("max_tokens", settings.max_tokens_default), "max_tokens")
        if not 1 <= max_tokens <= settings.max_tokens_limit:
            raise InvalidInput(f"max_tokens must be between 1 and {settings.max_tokens_limit}, got {max_tokens}")
        temperature = as_float(raw.get("temperature", settings.temperature_default), "temperature")
        if not 0.0 <= temperature <= 2.0:
            raise InvalidInput(f"temperature must be between 0 and 2, got {temperature}")
        top_p = as_float(raw.get("top_p", settings.top_p_default), "top_p")
        if not 0.0 < top_p <= 1.0:
            raise InvalidInput(f"top_p must be in (0, 1], got {top_p}")
        top_k = as_int(raw.get("top_k", 0), "top_k")
        if top_k < 0:
            raise InvalidInput(f"top_k must be >= 0 (0 disables it), got {top_k}")
        penalty = as_float(raw.get("repetition_penalty", settings.repetition_penalty_default), "repetition_penalty")
        if not 0.5 <= penalty <= 2.0:
            raise InvalidInput(f"repetition_penalty must be between 0.5 and 2, got {penalty}")
        seed = raw.get("seed")
        seed = None if seed is None else as_int(seed, "seed")
        stop = raw.get("stop") or ()
        if isinstance(stop, str):
            stop = (stop,)
        if not isinstance(stop, (list, tuple)):
            raise InvalidInput(f"stop must be a string or a list of strings, got {stop!r}")
        stop = tuple(stop)
        if len(stop) > settings.max_stop_strings:
            raise InvalidInput(f"at most {settings.max_stop_strings} stop strings, got {len(stop)}")
        for s in stop:
            if not isinstance(s, str) or not s or len(s) > settings.max_stop_chars:
                raise InvalidInput(f"each stop string must be 1 to {settings.max_stop_chars} characters, got {s!r}")
        return cls(max_tokens, temperature, top_p, top_k, stop, seed, penalty)


class StopMatcher:
    """Turn a stream of text deltas into safe-to-send text, cutting at the first stop string.

    Text that could still turn into a stop string is held back until it cannot, so a stop string is
    never sent, even when it arrives split over several tokens.
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Add ``delta``; return the text that is now certain to be part of the answer."""
        if self.stopped:
            return ""
        text = self._held + delta
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:n]):
                    keep = max(keep, n)
                    break
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """At the end of generation, release held-back text that never became a stop string."""
        held, self._held = self._held, ""
        return "" if self.stopped else held


@dataclass(frozen=True)
class Completion:
    """How a generation ended."""

    finish_reason: str  # "stop" (stop string or end of sequence), "length", or "cancelled"
    prompt_tokens: int
    completion_tokens: int


# Called with each new piece of answer text; returns False to cancel the generation.
OnText = Callable[[str], bool]


class TransformersEngine:
    """Token-by-token generation with transformers' ``generate`` (the fallback engine; one request at a time)."""

    def __init__(self, settings: GeneratorSettings) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.settings = settings
        self.device = pick_device(settings.device)
        limit_torch_memory(self.device, settings.gpu_memory_utilization)
        dtype = getattr(torch, settings.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(settings.model)
        self.model = AutoModelForCausalLM.from_pretrained(settings.model, dtype=dtype).to(self.device).eval()
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def generate(self, prompt: str, params: SamplingParams, on_text: OnText) -> Completion:
        """Generate for ``prompt``, calling ``on_text`` with each piece of answer text as it is decoded."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

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

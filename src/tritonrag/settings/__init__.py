"""Settings: the packaged defaults (defaults.toml) with a user TOML named by $TRITONRAG_CONFIG on top.

Each setting has one owner: a section per component, read by that component only. Placement and batching are
not settings: the deployment spec (tritonrag.deploy.spec) owns them.
"""

from tritonrag.settings.loader import (
    CONFIG_ENV,
    GENERATOR_ENGINES,
    HOME_ENV,
    default_home,
    load_settings,
    override,
    resolve_model_ref,
)
from tritonrag.settings.sections import (
    CACHE_BACKENDS,
    RERANKER_KINDS,
    CacheSettings,
    ChunkingSettings,
    EmbedderSettings,
    GeneratorSettings,
    IndexSettings,
    IngressSettings,
    PromptBuilderSettings,
    RagSettings,
    RerankerSettings,
    RetrieverSettings,
    ServerSettings,
    Settings,
)

__all__ = [
    "CACHE_BACKENDS", "CONFIG_ENV", "GENERATOR_ENGINES", "HOME_ENV", "RERANKER_KINDS", "CacheSettings",
    "ChunkingSettings", "EmbedderSettings", "GeneratorSettings", "IndexSettings", "IngressSettings",
    "PromptBuilderSettings", "RagSettings", "RerankerSettings", "RetrieverSettings", "ServerSettings", "Settings",
    "default_home", "load_settings", "override", "resolve_model_ref",
]

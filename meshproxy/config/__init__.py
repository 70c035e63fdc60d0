"""
Load and validate the meshproxy YAML configuration.

L{loadConfig} and L{parseConfig} turn YAML into a tree of frozen values
(L{Section<meshproxy.config.section.Section>}s) rooted at L{MeshConfig}.
Validation finds every problem in one pass and raises one L{ConfigError}
listing them all, each message starting with the path of the offending key
(C{routers[0].timeouts.total: ...}), so that a user fixes a config in one
round trip and the process exits before binding any port.

Keys are camelCase in YAML and attributes carry the same names. Durations are
strings with a unit (C{"250ms"}, C{"10s"}, C{"5m"}, C{"1h"}) and are stored as
float seconds. Relative paths (a file namer's C{root}, C{admin.stateDir}) are
relative to the directory of the config file.

The modules:
 - L{schema} and L{policies}: the classes (the top of the tree, and a
   router's sections);
 - L{loading}: YAML in, L{ConfigError} out, and the checks that depend on
   the host;
 - L{checks} and L{endpoints}: the checks of single values (durations,
   names, addresses, endpoint descriptions), which know nothing of the rest;
 - L{fields}, L{section} and L{problems}: the small validation engine: the
   types of values, the sections (frozen, refusing unknown keys, their
   problems in the proxy's order) and the problems, with their key paths.
"""

from meshproxy.config.checks import parseDuration
from meshproxy.config.loading import (
    ConfigError,
    configWarnings,
    hostProblems,
    loadConfig,
    parseConfig,
)
from meshproxy.config.policies import (
    BoundNameConfig,
    BudgetConfig,
    ClassifierConfig,
    ClientConfig,
    FailureAccrualConfig,
    Http2Config,
    IdentifierConfig,
    LatencyEjectionConfig,
    LimitsConfig,
    LoadBalancerConfig,
    RetriesConfig,
    ServerConfig,
    TimeoutsConfig,
    TrustConfig,
)
from meshproxy.config.schema import (
    AdminConfig,
    FileNamerConfig,
    MeshConfig,
    NamerConfig,
    RouterConfig,
    StaticNamerConfig,
    jsonSchema,
)
from meshproxy.config.security import (
    CertificateConfig,
    ClientCertificatesConfig,
    PolicyConfig,
    PolicyRuleConfig,
    TLSConfig,
    UpstreamTLSConfig,
)
from meshproxy.config.telemetry import (
    AccessLogConfig,
    BatchConfig,
    ExporterConfig,
    TelemetryConfig,
    TracingConfig,
)

__all__ = [
    "AccessLogConfig",
    "BatchConfig",
    "ExporterConfig",
    "TelemetryConfig",
    "TracingConfig",
    "AdminConfig",
    "CertificateConfig",
    "ClientCertificatesConfig",
    "PolicyConfig",
    "PolicyRuleConfig",
    "TLSConfig",
    "UpstreamTLSConfig",
    "BoundNameConfig",
    "BudgetConfig",
    "ClassifierConfig",
    "ClientConfig",
    "ConfigError",
    "FailureAccrualConfig",
    "Http2Config",
    "FileNamerConfig",
    "IdentifierConfig",
    "LatencyEjectionConfig",
    "LimitsConfig",
    "LoadBalancerConfig",
    "MeshConfig",
    "NamerConfig",
    "RetriesConfig",
    "RouterConfig",
    "ServerConfig",
    "StaticNamerConfig",
    "TimeoutsConfig",
    "TrustConfig",
    "configWarnings",
    "hostProblems",
    "jsonSchema",
    "loadConfig",
    "parseConfig",
    "parseDuration",
]

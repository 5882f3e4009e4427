from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("cluster", "token", "csr_pem", "agent_version")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    token: str
    csr_pem: bytes
    agent_version: str
    def __init__(self, cluster: _Optional[str] = ..., token: _Optional[str] = ..., csr_pem: _Optional[bytes] = ..., agent_version: _Optional[str] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("certificate_pem", "ca_bundle_pem")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: bytes
    ca_bundle_pem: bytes
    def __init__(self, certificate_pem: _Optional[bytes] = ..., ca_bundle_pem: _Optional[bytes] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "ack", "nack", "heartbeat", "discovery", "csr", "ca", "probes")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    CA_FIELD_NUMBER: _ClassVar[int]
    PROBES_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    ack: Ack
    nack: Nack
    heartbeat: Heartbeat
    discovery: DiscoveryReport
    csr: IntermediateRequest
    ca: CaReport
    probes: ProbeReport
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., nack: _Optional[_Union[Nack, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., discovery: _Optional[_Union[DiscoveryReport, _Mapping]] = ..., csr: _Optional[_Union[IntermediateRequest, _Mapping]] = ..., ca: _Optional[_Union[CaReport, _Mapping]] = ..., probes: _Optional[_Union[ProbeReport, _Mapping]] = ...) -> None: ...

class HubMessage(_message.Message):
    __slots__ = ("intent", "heartbeat", "certificate")
    INTENT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    intent: IntentPush
    heartbeat: Heartbeat
    certificate: IntermediateIssued
    def __init__(self, intent: _Optional[_Union[IntentPush, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., certificate: _Optional[_Union[IntermediateIssued, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("cluster", "agent_version", "protocol_version", "applied_version")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSION_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    agent_version: str
    protocol_version: str
    applied_version: str
    def __init__(self, cluster: _Optional[str] = ..., agent_version: _Optional[str] = ..., protocol_version: _Optional[str] = ..., applied_version: _Optional[str] = ...) -> None: ...

class IntentPush(_message.Message):
    __slots__ = ("version", "content", "content_type")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    version: str
    content: bytes
    content_type: str
    def __init__(self, version: _Optional[str] = ..., content: _Optional[bytes] = ..., content_type: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("version", "error")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    version: str
    error: str
    def __init__(self, version: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_unix_ms", "desired_version")
    SENT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DESIRED_VERSION_FIELD_NUMBER: _ClassVar[int]
    sent_unix_ms: int
    desired_version: str
    def __init__(self, sent_unix_ms: _Optional[int] = ..., desired_version: _Optional[str] = ...) -> None: ...

class DiscoveryReport(_message.Message):
    __slots__ = ("cluster", "gateway", "services")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    gateway: Gateway
    services: _containers.RepeatedCompositeFieldContainer[Service]
    def __init__(self, cluster: _Optional[str] = ..., gateway: _Optional[_Union[Gateway, _Mapping]] = ..., services: _Optional[_Iterable[_Union[Service, _Mapping]]] = ...) -> None: ...

class Gateway(_message.Message):
    __slots__ = ("address", "port")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    address: str
    port: int
    def __init__(self, address: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("namespace", "name", "ports", "labels", "subsets", "selector")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SUBSETS_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    ports: _containers.RepeatedCompositeFieldContainer[ServicePort]
    labels: _containers.ScalarMap[str, str]
    subsets: _containers.RepeatedCompositeFieldContainer[Subset]
    selector: _containers.ScalarMap[str, str]
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., ports: _Optional[_Iterable[_Union[ServicePort, _Mapping]]] = ..., labels: _Optional[_Mapping[str, str]] = ..., subsets: _Optional[_Iterable[_Union[Subset, _Mapping]]] = ..., selector: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ServicePort(_message.Message):
    __slots__ = ("name", "number", "protocol")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    name: str
    number: int
    protocol: str
    def __init__(self, name: _Optional[str] = ..., number: _Optional[int] = ..., protocol: _Optional[str] = ...) -> None: ...

class Subset(_message.Message):
    __slots__ = ("name", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class IntermediateRequest(_message.Message):
    __slots__ = ("request_id", "csr_pem", "ttl_seconds")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    csr_pem: bytes
    ttl_seconds: int
    def __init__(self, request_id: _Optional[str] = ..., csr_pem: _Optional[bytes] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class IntermediateIssued(_message.Message):
    __slots__ = ("request_id", "certificate_pem", "chain_pem", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    certificate_pem: bytes
    chain_pem: bytes
    error: str
    def __init__(self, request_id: _Optional[str] = ..., certificate_pem: _Optional[bytes] = ..., chain_pem: _Optional[bytes] = ..., error: _Optional[str] = ...) -> None: ...

class CaReport(_message.Message):
    __slots__ = ("bundle", "intermediate", "issuer", "not_after_unix", "error", "warnings")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    INTERMEDIATE_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    bundle: _containers.RepeatedScalarFieldContainer[str]
    intermediate: str
    issuer: str
    not_after_unix: int
    error: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, bundle: _Optional[_Iterable[str]] = ..., intermediate: _Optional[str] = ..., issuer: _Optional[str] = ..., not_after_unix: _Optional[int] = ..., error: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class ProbeReport(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ProbeResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ProbeResult, _Mapping]]] = ...) -> None: ...

class ProbeResult(_message.Message):
    __slots__ = ("cluster", "address", "port", "reachable", "error", "latency_ms")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    address: str
    port: int
    reachable: bool
    error: str
    latency_ms: int
    def __init__(self, cluster: _Optional[str] = ..., address: _Optional[str] = ..., port: _Optional[int] = ..., reachable: _Optional[bool] = ..., error: _Optional[str] = ..., latency_ms: _Optional[int] = ...) -> None: ...

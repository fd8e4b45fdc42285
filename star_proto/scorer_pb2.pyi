from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_SYSTEM: _ClassVar[Role]
    ROLE_USER: _ClassVar[Role]
    ROLE_ASSISTANT: _ClassVar[Role]

class CutKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CUT_KIND_UNSPECIFIED: _ClassVar[CutKind]
    CUT_KIND_WORDS: _ClassVar[CutKind]
    CUT_KIND_GUARD_TOKENS: _ClassVar[CutKind]
    CUT_KIND_OFFSETS: _ClassVar[CutKind]

class StarConvention(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAR_CONVENTION_UNSPECIFIED: _ClassVar[StarConvention]
    STAR_CONVENTION_RAW: _ClassVar[StarConvention]
    STAR_CONVENTION_PUBLISHED: _ClassVar[StarConvention]
ROLE_UNSPECIFIED: Role
ROLE_SYSTEM: Role
ROLE_USER: Role
ROLE_ASSISTANT: Role
CUT_KIND_UNSPECIFIED: CutKind
CUT_KIND_WORDS: CutKind
CUT_KIND_GUARD_TOKENS: CutKind
CUT_KIND_OFFSETS: CutKind
STAR_CONVENTION_UNSPECIFIED: StarConvention
STAR_CONVENTION_RAW: StarConvention
STAR_CONVENTION_PUBLISHED: StarConvention

class Message(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: Role
    content: str
    def __init__(self, role: _Optional[_Union[Role, str]] = ..., content: _Optional[str] = ...) -> None: ...

class Conversation(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ...) -> None: ...

class CutSpec(_message.Message):
    __slots__ = ("kind", "every", "offsets")
    KIND_FIELD_NUMBER: _ClassVar[int]
    EVERY_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    kind: CutKind
    every: int
    offsets: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, kind: _Optional[_Union[CutKind, str]] = ..., every: _Optional[int] = ..., offsets: _Optional[_Iterable[int]] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("end", "p_safe")
    END_FIELD_NUMBER: _ClassVar[int]
    P_SAFE_FIELD_NUMBER: _ClassVar[int]
    end: int
    p_safe: float
    def __init__(self, end: _Optional[int] = ..., p_safe: _Optional[float] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("conversation", "cuts", "temperature", "priority", "convention", "safe_classes")
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    CUTS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CONVENTION_FIELD_NUMBER: _ClassVar[int]
    SAFE_CLASSES_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    cuts: CutSpec
    temperature: float
    priority: int
    convention: StarConvention
    safe_classes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ..., cuts: _Optional[_Union[CutSpec, _Mapping]] = ..., temperature: _Optional[float] = ..., priority: _Optional[int] = ..., convention: _Optional[_Union[StarConvention, str]] = ..., safe_classes: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("segments", "part", "parts", "complete", "guard_tokens")
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    GUARD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    part: int
    parts: int
    complete: bool
    guard_tokens: int
    def __init__(self, segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ..., part: _Optional[int] = ..., parts: _Optional[int] = ..., complete: _Optional[bool] = ..., guard_tokens: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "retry_after_seconds")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    retry_after_seconds: float
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., retry_after_seconds: _Optional[float] = ...) -> None: ...

class ScoreStreamRequest(_message.Message):
    __slots__ = ("request_id", "request", "cancel")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    request: ScoreRequest
    cancel: bool
    def __init__(self, request_id: _Optional[str] = ..., request: _Optional[_Union[ScoreRequest, _Mapping]] = ..., cancel: _Optional[bool] = ...) -> None: ...

class ScoreStreamResponse(_message.Message):
    __slots__ = ("request_id", "result", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    result: ScoreResponse
    error: Error
    def __init__(self, request_id: _Optional[str] = ..., result: _Optional[_Union[ScoreResponse, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class JudgeRequest(_message.Message):
    __slots__ = ("conversations", "p_unsafe_only")
    CONVERSATIONS_FIELD_NUMBER: _ClassVar[int]
    P_UNSAFE_ONLY_FIELD_NUMBER: _ClassVar[int]
    conversations: _containers.RepeatedCompositeFieldContainer[Conversation]
    p_unsafe_only: bool
    def __init__(self, conversations: _Optional[_Iterable[_Union[Conversation, _Mapping]]] = ..., p_unsafe_only: _Optional[bool] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("p_unsafe", "categories", "text")
    P_UNSAFE_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    p_unsafe: float
    categories: _containers.RepeatedScalarFieldContainer[str]
    text: str
    def __init__(self, p_unsafe: _Optional[float] = ..., categories: _Optional[_Iterable[str]] = ..., text: _Optional[str] = ...) -> None: ...

class JudgeResponse(_message.Message):
    __slots__ = ("verdicts",)
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    verdicts: _containers.RepeatedCompositeFieldContainer[Verdict]
    def __init__(self, verdicts: _Optional[_Iterable[_Union[Verdict, _Mapping]]] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("name", "preset", "safe_word", "unsafe_word", "safe_token_id", "unsafe_token_id", "fingerprint", "max_conversation_tokens", "max_cuts", "server_version", "backend", "max_message_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    SAFE_WORD_FIELD_NUMBER: _ClassVar[int]
    UNSAFE_WORD_FIELD_NUMBER: _ClassVar[int]
    SAFE_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    UNSAFE_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    MAX_CONVERSATION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_CUTS_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    preset: str
    safe_word: str
    unsafe_word: str
    safe_token_id: int
    unsafe_token_id: int
    fingerprint: str
    max_conversation_tokens: int
    max_cuts: int
    server_version: str
    backend: str
    max_message_bytes: int
    def __init__(self, name: _Optional[str] = ..., preset: _Optional[str] = ..., safe_word: _Optional[str] = ..., unsafe_word: _Optional[str] = ..., safe_token_id: _Optional[int] = ..., unsafe_token_id: _Optional[int] = ..., fingerprint: _Optional[str] = ..., max_conversation_tokens: _Optional[int] = ..., max_cuts: _Optional[int] = ..., server_version: _Optional[str] = ..., backend: _Optional[str] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class ModerateRequest(_message.Message):
    __slots__ = ("open", "delta", "close")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    open: ModerateOpen
    delta: str
    close: ModerateClose
    def __init__(self, open: _Optional[_Union[ModerateOpen, _Mapping]] = ..., delta: _Optional[str] = ..., close: _Optional[_Union[ModerateClose, _Mapping]] = ...) -> None: ...

class ModerateOpen(_message.Message):
    __slots__ = ("conversation", "every", "unsafe_below", "consecutive", "temperature", "cut_kind", "convention", "safe_classes")
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    EVERY_FIELD_NUMBER: _ClassVar[int]
    UNSAFE_BELOW_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    CUT_KIND_FIELD_NUMBER: _ClassVar[int]
    CONVENTION_FIELD_NUMBER: _ClassVar[int]
    SAFE_CLASSES_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    every: int
    unsafe_below: float
    consecutive: int
    temperature: float
    cut_kind: CutKind
    convention: StarConvention
    safe_classes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ..., every: _Optional[int] = ..., unsafe_below: _Optional[float] = ..., consecutive: _Optional[int] = ..., temperature: _Optional[float] = ..., cut_kind: _Optional[_Union[CutKind, str]] = ..., convention: _Optional[_Union[StarConvention, str]] = ..., safe_classes: _Optional[_Iterable[str]] = ...) -> None: ...

class ModerateClose(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModerateResponse(_message.Message):
    __slots__ = ("segment", "stop", "complete")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    segment: Segment
    stop: ModerateStop
    complete: bool
    def __init__(self, segment: _Optional[_Union[Segment, _Mapping]] = ..., stop: _Optional[_Union[ModerateStop, _Mapping]] = ..., complete: _Optional[bool] = ...) -> None: ...

class ModerateStop(_message.Message):
    __slots__ = ("offset", "cut", "p_safe")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    CUT_FIELD_NUMBER: _ClassVar[int]
    P_SAFE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    cut: int
    p_safe: float
    def __init__(self, offset: _Optional[int] = ..., cut: _Optional[int] = ..., p_safe: _Optional[float] = ...) -> None: ...

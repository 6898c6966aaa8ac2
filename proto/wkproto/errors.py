"""The codec's own error types: every bad byte string ends in one of these, nothing else."""


class ProtocolError(Exception):
    """Input that is not valid WKProto."""


class MalformedFrame(ProtocolError):
    """A frame whose body does not match the layout of its type and version."""


class FrameTooLarge(ProtocolError):
    """A remaining length above the 1 MiB cap."""


class UnknownFrameType(ProtocolError):
    """A frame type outside 1..12."""


class CryptoError(ProtocolError):
    """A key, ciphertext or msgKey that does not verify."""

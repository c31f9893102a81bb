"""The exception tree; each docstring is the default message.

PixStreamError
├── PermanentError      the input is at fault: a stable `code`, 4xx at the edge, the job fails
│   ├── InvalidSpec, InvalidParams, UnknownOperation
│   ├── UnsupportedFormat, CorruptImage, TooManyPixels, TooManyFrames, TooLarge
│   ├── RendererCrashed (code worker_crashed), RenderTimedOut (code render_timeout)
│   └── SourceUnavailable, DestinationRefused
└── TransientError      a dependency is at fault: retried with backoff, then dead-lettered;
                        503 at the edge
"""

from __future__ import annotations


class PixStreamError(Exception):
    """PixStream failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class PermanentError(PixStreamError):
    """The request cannot be processed as given."""

    code = "permanent_error"
    #: Whether the job the record names is failed for it. False: the record is not that
    #: job's to fail (another request under its id), so it is only dead-lettered.
    fails_job = True


class InvalidSpec(PermanentError):
    """The job spec is not valid."""

    code = "invalid_spec"


class InvalidParams(PermanentError):
    """The parameters of a step are not valid."""

    code = "invalid_params"


class UnknownOperation(PermanentError):
    """No such operation."""

    code = "unknown_operation"


class UnsupportedFormat(PermanentError):
    """The file is not an image in an allowed format (JPEG, PNG, WebP, GIF, TIFF, AVIF)."""

    code = "unsupported_format"


class CorruptImage(PermanentError):
    """The image data is corrupt or truncated."""

    code = "corrupt_image"


class TooManyPixels(PermanentError):
    """The image has more pixels than allowed."""

    code = "too_many_pixels"


class TooManyFrames(PermanentError):
    """The animated image has more frames than allowed."""

    code = "too_many_frames"


class RendererCrashed(PermanentError):
    """The renderer process died or ran out of memory on this image."""

    # Permanent: the render pool gives each child its own address-space limit, so running out
    # of it (or being killed) says the input needs more than allowed, not that the host is busy.
    code = "worker_crashed"


class RenderTimedOut(PermanentError):
    """The render took longer than allowed (a CPU bomb: cheap to send, costly to compute)."""

    # Permanent: the same input and steps take the same time again. The child is killed, so
    # the core it held is free for the next task at once.
    code = "render_timeout"


class TooLarge(PermanentError):
    """The upload is larger than allowed."""

    code = "too_large"


class SourceUnavailable(PermanentError):
    """The job's source image cannot be found or fetched."""

    code = "source_unavailable"


class DestinationRefused(PermanentError):
    """The destination address is not allowed (loopback, private, link-local or metadata)."""

    code = "destination_refused"


class TransientError(PixStreamError):
    """A dependency failed; the operation may succeed if retried."""


class AnimationNotSupported(PermanentError):
    """The output format cannot hold an animation; convert animated inputs to GIF or WebP."""

    code = "animation_not_supported"


class InvalidEvent(PermanentError):
    """The message is not a valid PixStream CloudEvent."""

    code = "invalid_event"


class SourceForbidden(PermanentError):
    """The job's `source.key` is outside the prefixes jobs may read (SOURCE_KEY_PREFIXES)."""

    code = "source_forbidden"


class JobIdConflict(PermanentError):
    """A job with this id exists for another request; that job is left untouched."""

    code = "job_id_conflict"
    fails_job = False

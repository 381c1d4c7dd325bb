"""User-facing errors: each carries a one-line message the CLI prints and the API returns."""


class MediFlowError(Exception):
    """A problem with the user's input or environment, not a bug: shown as one line, no traceback."""


class DatasetError(MediFlowError):
    """The dataset folder is missing, empty, has too few classes or holds bad files."""


class ImageDecodeError(MediFlowError):
    """Bytes that are not a supported, intact image.

    `reason`: the same refusal for a server log line: no file name and no value quoted from the
    file (a library's exception text can quote a header element, e.g. a birth date). Defaults to the
    message without its leading "name: ".
    """

    def __init__(self, message: str, *, reason: str | None = None):
        super().__init__(message)
        self.reason = reason if reason is not None else message.split(": ", 1)[-1]


class ImageTooLargeError(ImageDecodeError):
    """An image whose declared pixel count is absurd (a decompression bomb)."""


class WeightsUnavailableError(MediFlowError):
    """Pretrained weights cannot be found or downloaded."""


class CheckpointError(MediFlowError):
    """A checkpoint file is missing, unreadable or not a MediFlow checkpoint."""
